//! The requests this worker holds, for `inspect active|reserved|scheduled|query_task`: each
//! delivery in hand is tracked from receipt until its outcome is carried out, with whether
//! it waits (reserved), is held for its ETA (scheduled) or runs (active).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use celeriac_core::message::TaskMessage;
use celeriac_core::time::to_iso;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Where a tracked request is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stage {
    Reserved,
    /// Held here until its ETA (brokers without delayed delivery).
    Scheduled(DateTime<Utc>),
    /// Running since this unix time; acked already or not.
    Active {
        since: f64,
        acknowledged: bool,
    },
}

struct Entry {
    msg: Arc<TaskMessage>,
    queue: String,
    redelivered: bool,
    stage: Stage,
}

#[derive(Default)]
pub(crate) struct Tracked {
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, Entry>>,
}

/// One tracked request; dropping it stops tracking it.
pub(crate) struct TrackGuard<'a> {
    tracked: &'a Tracked,
    number: u64,
}

impl Tracked {
    pub(crate) fn enter(
        &self,
        msg: Arc<TaskMessage>,
        queue: &str,
        redelivered: bool,
    ) -> TrackGuard<'_> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            msg,
            queue: queue.to_string(),
            redelivered,
            stage: Stage::Reserved,
        };
        self.lock().insert(number, entry);
        TrackGuard {
            tracked: self,
            number,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Celery's request infos of the requests in a stage (`safe`: args as repr strings).
    pub(crate) fn infos(
        &self,
        keep: impl Fn(&Stage) -> bool,
        hostname: &str,
        safe: bool,
    ) -> Vec<(Stage, Value)> {
        self.lock()
            .values()
            .filter(|e| keep(&e.stage))
            .map(|e| (e.stage, info(e, hostname, safe)))
            .collect()
    }

    /// `query_task`: id → `[state, info]` for the ids held here.
    pub(crate) fn query(&self, ids: &[String], hostname: &str) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        for e in self.lock().values() {
            let id = &e.msg.headers.id;
            if ids.contains(id) {
                let state = match e.stage {
                    Stage::Reserved => "reserved",
                    Stage::Scheduled(_) => "scheduled",
                    Stage::Active { .. } => "active",
                };
                out.insert(id.clone(), json!([state, info(e, hostname, false)]));
            }
        }
        out
    }
}

impl TrackGuard<'_> {
    pub(crate) fn set(&self, stage: Stage) {
        if let Some(e) = self.tracked.lock().get_mut(&self.number) {
            e.stage = stage;
        }
    }
}

impl Drop for TrackGuard<'_> {
    fn drop(&mut self) {
        self.tracked.lock().remove(&self.number);
    }
}

/// The request info object of protocol §8.4.
fn info(e: &Entry, hostname: &str, safe: bool) -> Value {
    let h = &e.msg.headers;
    let (args, kwargs) = if safe {
        (
            json!(h.argsrepr.clone().unwrap_or_default()),
            json!(h.kwargsrepr.clone().unwrap_or_default()),
        )
    } else {
        (json!(e.msg.args), json!(e.msg.kwargs))
    };
    let (time_start, acknowledged, pid) = match e.stage {
        Stage::Active {
            since,
            acknowledged,
        } => (json!(since), acknowledged, json!(std::process::id())),
        _ => (Value::Null, false, Value::Null),
    };
    let name = h.shadow.clone().unwrap_or_else(|| h.task.clone());
    json!({
        "id": h.id,
        "name": name,
        "args": args,
        "kwargs": kwargs,
        "type": h.task,
        "hostname": hostname,
        "time_start": time_start,
        "acknowledged": acknowledged,
        "delivery_info": {
            "exchange": "",
            "routing_key": e.queue,
            "priority": e.msg.properties.priority,
            "redelivered": e.redelivered,
        },
        "worker_pid": pid,
    })
}

/// A scheduled request as `inspect scheduled` lists it.
pub(crate) fn scheduled_entry(stage: Stage, info: Value) -> Value {
    let eta = match stage {
        Stage::Scheduled(eta) => json!(to_iso(eta)),
        _ => Value::Null,
    };
    // Celery's timer priority for ETA entries.
    json!({"eta": eta, "priority": 6, "request": info})
}
