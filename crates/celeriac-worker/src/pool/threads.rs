//! A bounded set of OS threads of the worker's own (not the runtime's unbounded blocking
//! pool): `-P threads` runs plain `fn` bodies here, `-P solo` on one such thread.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Work = Box<dyn FnOnce() + Send>;

enum Order {
    Run(Work),
    /// One thread ends after its current work (shrinking).
    Exit,
}

pub(crate) struct ThreadSet {
    sender: Mutex<mpsc::Sender<Order>>,
    receiver: Arc<Mutex<mpsc::Receiver<Order>>>,
    size: Mutex<usize>,
    name: &'static str,
}

impl ThreadSet {
    pub(crate) fn new(size: usize, name: &'static str) -> ThreadSet {
        let (sender, receiver) = mpsc::channel();
        let set = ThreadSet {
            sender: Mutex::new(sender),
            receiver: Arc::new(Mutex::new(receiver)),
            size: Mutex::new(0),
            name,
        };
        set.resize(size);
        set
    }

    /// Hands `work` to the next free thread (callers hold a slot, so one is free or about
    /// to be).
    pub(crate) fn submit(&self, work: impl FnOnce() + Send + 'static) {
        let sent = lock(&self.sender).send(Order::Run(Box::new(work)));
        if let Err(mpsc::SendError(Order::Run(work))) = sent {
            // Every thread is gone (shutdown): run it on a thread of its own rather than
            // drop it, so its ending is still reported.
            std::thread::spawn(work);
        }
    }

    pub(crate) fn resize(&self, target: usize) {
        let mut size = lock(&self.size);
        while *size < target {
            *size += 1;
            let receiver = self.receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{}", self.name, *size))
                .spawn(move || serve(&receiver));
            if let Err(e) = spawned {
                tracing::error!("cannot start a pool thread: {e}");
                *size -= 1;
                return;
            }
        }
        while *size > target {
            *size -= 1;
            let _ = lock(&self.sender).send(Order::Exit);
        }
    }

    /// Every thread ends once the work queued before this finishes.
    pub(crate) fn stop(&self) {
        self.resize(0);
    }
}

fn serve(receiver: &Mutex<mpsc::Receiver<Order>>) {
    loop {
        let order = lock(receiver).recv();
        match order {
            Ok(Order::Run(work)) => work(),
            Ok(Order::Exit) | Err(_) => return,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
