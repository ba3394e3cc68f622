//! The pools that run bodies inside the worker process: `async`, `threads` and `solo`.
//!
//! An async body runs as a task of the worker's runtime; a plain `fn` body runs on the
//! runtime's blocking threads (`async`) or on the pool's own threads (`threads`, `solo`).
//! Code cannot be killed inside a process: at the hard limit (or a terminate) an async body
//! is cancelled at its next await and a plain `fn` is left to return. Either way the ending
//! is reported at once, and the slot stays taken until the code really stops, so the worker
//! never runs more than `-c` bodies at a time.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::task::{panic_failure, SoftLimit, TaskBody, TaskError};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;

use super::threads::ThreadSet;
use super::{Ending, Job, Pool, PoolKind, PoolStats, Slot, Slots, StopReason};

/// How long a stopped body may take to really stop before the warning says it did not.
const STOP_GRACE: Duration = Duration::from_secs(1);

pub(crate) struct InProcessPool {
    kind: PoolKind,
    slots: Slots,
    size: Mutex<usize>,
    threads: Option<ThreadSet>,
    /// Running jobs by job number: task id and the way to stop it.
    running: Mutex<HashMap<u64, (String, oneshot::Sender<StopReason>)>>,
    next_job: AtomicU64,
    busy: AtomicUsize,
}

impl InProcessPool {
    pub(crate) fn asynchronous(size: usize) -> InProcessPool {
        InProcessPool::new(PoolKind::Async, size, None)
    }

    pub(crate) fn threads(size: usize) -> InProcessPool {
        InProcessPool::new(
            PoolKind::Threads,
            size,
            Some(ThreadSet::new(size, "celeriac-pool")),
        )
    }

    pub(crate) fn solo() -> InProcessPool {
        InProcessPool::new(PoolKind::Solo, 1, Some(ThreadSet::new(1, "celeriac-solo")))
    }

    fn new(kind: PoolKind, size: usize, threads: Option<ThreadSet>) -> InProcessPool {
        InProcessPool {
            kind,
            slots: Slots::new(size),
            size: Mutex::new(size),
            threads,
            running: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    /// Starts the body; the slot goes with it and is given back when the code has really
    /// stopped.
    fn start(&self, slot: Slot, body: TaskBody<Value>) -> Running {
        match body {
            TaskBody::Async(future) => Running::Task(tokio::spawn(async move {
                let result = future.await;
                drop(slot);
                result
            })),
            TaskBody::Blocking(call) => {
                let (done, result) = oneshot::channel();
                let work = move || {
                    let ended = std::panic::catch_unwind(AssertUnwindSafe(call))
                        .unwrap_or_else(|payload| Err(panic_failure(payload)));
                    drop(slot);
                    let _ = done.send(ended);
                };
                match &self.threads {
                    Some(threads) => threads.submit(work),
                    None => {
                        tokio::task::spawn_blocking(work);
                    }
                }
                Running::Thread(result)
            }
        }
    }

    async fn execute(&self, slot: Slot, job: Job, stop: oneshot::Receiver<StopReason>) -> Ending {
        let Job {
            task,
            args,
            kwargs,
            ctx,
            soft_limit,
            hard_limit,
        } = job;
        let soft_handle = ctx.soft_limit_handle();
        let task_id = ctx.id.clone();
        let body = match task.call(args, kwargs, ctx) {
            Ok(body) => body,
            Err(arg_error) => {
                return Ending::Finished(Err(TaskError::failure(
                    "TypeError",
                    arg_error.to_string(),
                )))
            }
        };
        let mut running = self.start(slot, body);
        let ending = tokio::select! {
            ended = running.finished() => return Ending::Finished(ended),
            never = soft_timer(soft_limit, &soft_handle) => never,
            limit = hard_timer(hard_limit) => Ending::HardTimeLimit(limit),
            reason = stop_request(stop) => Ending::Stopped(reason),
        };
        running.abort();
        let pool = self.kind.name();
        let name = task.name();
        tokio::spawn(async move {
            if tokio::time::timeout(STOP_GRACE, running.finished())
                .await
                .is_err()
            {
                warn!("Task {name}[{task_id}] did not stop: code running on the {pool} pool cannot be killed, so it keeps its slot until it returns (use -P process to enforce hard limits)");
            }
        });
        ending
    }
}

/// A body that was started: a task of the runtime, or a closure on a thread.
enum Running {
    Task(JoinHandle<Result<Value, TaskError>>),
    Thread(oneshot::Receiver<Result<Value, TaskError>>),
}

impl Running {
    /// The body's result once its code has stopped.
    async fn finished(&mut self) -> Result<Value, TaskError> {
        let cancelled = || TaskError::failure("RuntimeError", "task was cancelled");
        match self {
            Running::Task(handle) => match handle.await {
                Ok(result) => result,
                Err(e) if e.is_panic() => Err(panic_failure(e.into_panic())),
                Err(_) => Err(cancelled()),
            },
            Running::Thread(result) => result.await.unwrap_or_else(|_| Err(cancelled())),
        }
    }

    /// Cancels an async body at its next await (a thread cannot be stopped).
    fn abort(&self) {
        if let Running::Task(handle) = self {
            handle.abort();
        }
    }
}

pub(crate) async fn soft_timer<T>(limit: Option<Duration>, handle: &SoftLimit) -> T {
    if let Some(limit) = limit {
        tokio::time::sleep(limit).await;
        handle.trip();
    }
    std::future::pending().await
}

pub(crate) async fn hard_timer(limit: Option<Duration>) -> Duration {
    match limit {
        Some(limit) => {
            tokio::time::sleep(limit).await;
            limit
        }
        None => std::future::pending().await,
    }
}

async fn stop_request(stop: oneshot::Receiver<StopReason>) -> StopReason {
    match stop.await {
        Ok(reason) => reason,
        // The pool dropped the sender: nobody will ever stop this task from outside.
        Err(_) => std::future::pending().await,
    }
}

#[async_trait]
impl Pool for InProcessPool {
    async fn reserve(&self) -> Option<Slot> {
        self.slots.reserve().await
    }

    async fn run(&self, slot: Slot, job: Job) -> Ending {
        let number = self.next_job.fetch_add(1, Ordering::Relaxed);
        let (stop, stop_rx) = oneshot::channel();
        lock(&self.running).insert(number, (job.ctx.id.clone(), stop));
        self.busy.fetch_add(1, Ordering::Relaxed);
        let ending = self.execute(slot, job, stop_rx).await;
        self.busy.fetch_sub(1, Ordering::Relaxed);
        lock(&self.running).remove(&number);
        ending
    }

    fn terminate(&self, task_id: &str, _signal: i32) -> bool {
        let mut running = lock(&self.running);
        let numbers: Vec<u64> = running
            .iter()
            .filter(|(_, (id, _))| id == task_id)
            .map(|(n, _)| *n)
            .collect();
        for n in &numbers {
            if let Some((_, stop)) = running.remove(n) {
                let _ = stop.send(StopReason::Terminate);
            }
        }
        !numbers.is_empty()
    }

    fn terminate_all(&self) {
        for (_, (_, stop)) in lock(&self.running).drain() {
            let _ = stop.send(StopReason::Cold);
        }
    }

    fn resize(&self, target: usize) {
        if self.kind == PoolKind::Solo {
            warn!("the solo pool runs one task at a time: not resized to {target}");
            return;
        }
        let target = target.max(1);
        let mut size = lock(&self.size);
        self.slots.resize(*size, target);
        if let Some(threads) = &self.threads {
            threads.resize(target);
        }
        *size = target;
    }

    fn size(&self) -> usize {
        *lock(&self.size)
    }

    async fn shutdown(&self) {
        self.slots.close();
        if let Some(threads) = &self.threads {
            threads.stop();
        }
    }

    fn stats(&self) -> PoolStats {
        PoolStats {
            kind: self.kind.name(),
            size: self.size(),
            busy: self.busy.load(Ordering::Relaxed),
            pids: vec![std::process::id()],
            children_started: 0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
