//! The worker's phases and the handle that moves it through them.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running,
    /// Stop fetching; finish running tasks.
    Draining,
    /// Stop running tasks now.
    Stopping,
}

/// Asks a running worker to stop; cheap to clone and send anywhere.
#[derive(Clone)]
pub struct ShutdownHandle {
    pub(crate) phase: Arc<watch::Sender<Phase>>,
}

impl ShutdownHandle {
    /// Warm shutdown: finish running tasks (up to the deadline), return the rest.
    pub fn graceful(&self) {
        self.phase.send_if_modified(|p| {
            let changed = *p < Phase::Draining;
            *p = (*p).max(Phase::Draining);
            changed
        });
    }

    /// Cold shutdown: stop running tasks now; late-ack ones go back to their queues.
    pub fn now(&self) {
        self.phase.send_replace(Phase::Stopping);
    }

    /// What a signal does: the first asks for a graceful stop, the second for a cold one.
    pub fn escalate(&self) {
        if *self.phase.borrow() == Phase::Running {
            self.graceful();
        } else {
            self.now();
        }
    }
}
