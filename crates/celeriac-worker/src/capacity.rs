//! A count of places (execution slots, the prefetch window) that can grow and shrink while
//! places are taken: a shrink takes free places at once and busy ones as they come back.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct Capacity {
    semaphore: Arc<Semaphore>,
}

impl Capacity {
    pub(crate) fn new(n: usize) -> Capacity {
        Capacity {
            semaphore: Arc::new(Semaphore::new(n)),
        }
    }

    /// Waits for a place; `None` once closed.
    pub(crate) async fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.semaphore.clone().acquire_owned().await.ok()
    }

    pub(crate) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.semaphore.clone().try_acquire_owned().ok()
    }

    pub(crate) fn grow(&self, n: usize) {
        self.semaphore.add_permits(n);
    }

    pub(crate) fn shrink(&self, n: usize) {
        let forgotten = self.semaphore.forget_permits(n);
        let owed = n - forgotten;
        if owed > 0 {
            let semaphore = self.semaphore.clone();
            tokio::spawn(async move {
                if let Ok(permits) = semaphore.acquire_many_owned(owed as u32).await {
                    permits.forget();
                }
            });
        }
    }

    /// Grows or shrinks from `from` places to `to`.
    pub(crate) fn resize(&self, from: usize, to: usize) {
        if to > from {
            self.grow(to - from);
        } else if from > to {
            self.shrink(from - to);
        }
    }

    pub(crate) fn close(&self) {
        self.semaphore.close();
    }
}
