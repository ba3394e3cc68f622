//! The revocations this worker knows: read from the broker's shared record before each
//! fetch and every `revoke_poll_interval`, so a revoke reaches every worker and survives
//! their restarts. A revoke with `terminate` stops the task where the pool runs it.

use std::collections::HashSet;
use std::sync::Mutex;

use tracing::{debug, info, warn};

use crate::worker::Shared;

#[derive(Default)]
pub(crate) struct RevokedSet {
    cursor: u64,
    ids: HashSet<String>,
    /// The last read failed (warned once, until a read succeeds again).
    failing: bool,
}

pub(crate) type Revoked = Mutex<RevokedSet>;

impl Shared {
    pub(crate) async fn sync_revocations(&self) {
        let Some(revocations) = self.broker.revocations() else {
            return;
        };
        let cursor = lock(&self.revoked).cursor;
        match revocations.revocations_since(cursor).await {
            Ok((items, next)) => {
                let mut set = lock(&self.revoked);
                if std::mem::take(&mut set.failing) {
                    info!("reading revocations again");
                }
                set.cursor = next.max(set.cursor);
                for r in items {
                    if r.terminate && self.pool.terminate(&r.task_id, r.signal.0) {
                        info!(task_id = %r.task_id, "terminating revoked task");
                    }
                    set.ids.insert(r.task_id);
                }
            }
            Err(e) => {
                // Polled every `revoke_poll_interval`: one warning per outage, not per poll.
                let mut set = lock(&self.revoked);
                if !std::mem::replace(&mut set.failing, true) {
                    warn!("could not read revocations (retrying quietly): {e}");
                } else {
                    debug!("could not read revocations: {e}");
                }
            }
        }
    }

    /// Every id revoked as far as this worker knows (`inspect revoked`).
    pub(crate) fn revoked_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.revoked).ids.iter().cloned().collect();
        ids.sort_unstable();
        ids
    }

    pub(crate) fn is_revoked(&self, id: &str) -> bool {
        lock(&self.revoked).ids.contains(id)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
