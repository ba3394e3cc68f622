//! The revocations this worker knows: read from the broker's shared record before each
//! fetch and every `revoke_poll_interval`, so a revoke reaches every worker and survives
//! their restarts. A revoke with `terminate` stops the task where the pool runs it.

use std::collections::HashSet;
use std::sync::Mutex;

use celeriac_core::broker::Signal;
use celeriac_core::control::{ControlRequest, RECORDED_ARGUMENT};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::control_commands::argument;
use crate::mailbox::{error, ok};
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

    /// Celery's `revoke(task_id, terminate, signal)` and `terminate(signal, task_id)`
    /// broadcasts. A revoke sent by a celeriac client is already in the durable record; one
    /// from a Python client is recorded here, so it outlives this worker's restarts and
    /// reaches the celeriac workers that were not listening.
    pub(crate) async fn remote_revoke(&self, request: &ControlRequest, terminate: bool) -> Value {
        let ids = task_ids(argument(request, "task_id"));
        let terminate =
            terminate || argument(request, "terminate").and_then(Value::as_bool) == Some(true);
        let signal = match argument(request, "signal").map(parse_signal) {
            None => Signal::TERM,
            Some(Some(signal)) => signal,
            Some(None) => return error(format!("unknown signal {}", request.arguments["signal"])),
        };
        lock(&self.revoked).ids.extend(ids.iter().cloned());
        let recorded = argument(request, RECORDED_ARGUMENT).and_then(Value::as_bool) == Some(true);
        if !recorded {
            self.record_remote_revoke(&ids, terminate.then_some(signal))
                .await;
        }
        if !terminate {
            info!("Tasks flagged as revoked: {}", ids.join(", "));
            return ok(format!("tasks {} flagged as revoked", python_set(&ids)));
        }
        let terminated: Vec<&str> = ids
            .iter()
            .filter(|id| self.pool.terminate(id, signal.0))
            .map(String::as_str)
            .collect();
        for id in &terminated {
            info!(task_id = %id, "Terminating {id} ({})", signal.name());
        }
        if terminated.is_empty() {
            ok("terminate: tasks unknown")
        } else {
            ok(format!("terminate: {}", terminated.join(", ")))
        }
    }

    async fn record_remote_revoke(&self, ids: &[String], terminate: Option<Signal>) {
        if let Some(revocations) = self.broker.revocations() {
            if let Err(e) = revocations.revoke(ids, terminate).await {
                warn!("could not record a broadcast revoke durably: {e}");
            }
        }
        // As Celery 5.7's worker: a task not started yet reads REVOKED at once; one this
        // worker terminates stores `terminated` when it ends, after this.
        for id in ids {
            self.completer.mark_revoked(id).await;
        }
    }

    pub(crate) fn is_revoked(&self, id: &str) -> bool {
        lock(&self.revoked).ids.contains(id)
    }
}

/// `task_id` is one id or a list of them (Celery accepts both).
fn task_ids(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(id)) => vec![id.clone()],
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// A signal as Celery's `signals.signum` takes it: a name (`KILL`, `SIGKILL`) or a number.
fn parse_signal(value: &Value) -> Option<Signal> {
    match value {
        Value::String(name) => Signal::parse(name),
        Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()).map(Signal),
        _ => None,
    }
}

/// A Python set's repr, as Celery's reply prints the ids: `{'a', 'b'}`.
fn python_set(ids: &[String]) -> String {
    if ids.is_empty() {
        return "set()".into();
    }
    let items: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    format!("{{{}}}", items.join(", "))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
