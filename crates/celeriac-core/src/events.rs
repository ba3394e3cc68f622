//! Celery's events (protocol §7): what workers and clients tell monitors (`celery events`,
//! Flower) about themselves and their tasks. An event is a JSON object with `type`,
//! `hostname`, `timestamp`, `utcoffset`, `pid`, `clock` and the fields of its type.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::BrokerError;

/// The routing key of an event type: `worker-heartbeat` → `worker.heartbeat`.
pub fn routing_key(event_type: &str) -> String {
    event_type.replace('-', ".")
}

/// The routing key of Celery's batched task events: one message carries a list of them.
pub const TASK_MULTI: &str = "task.multi";

/// Task events in one `task.multi` message at most.
pub const MULTI_MAX: usize = 256;

/// One message of a batch of events, as a Celery worker publishes them (protocol §7.3).
#[derive(Debug, PartialEq)]
pub enum EventMessage<'a> {
    /// A worker event (or any non-task event) alone, with its own routing key.
    Single {
        routing_key: String,
        event: &'a Value,
    },
    /// Task events together, in order, under [`TASK_MULTI`].
    Multi(Vec<&'a Value>),
}

/// How `events` go on the wire: task events in `task.multi` lists of at most
/// [`MULTI_MAX`] (one message instead of one per event, as Celery's worker sends them),
/// every other event alone. Task events keep their order among themselves.
pub fn event_messages(events: &[Value]) -> Vec<EventMessage<'_>> {
    let mut out = Vec::new();
    let mut multi: Vec<&Value> = Vec::new();
    for event in events {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        if kind.starts_with("task-") {
            multi.push(event);
            if multi.len() == MULTI_MAX {
                out.push(EventMessage::Multi(std::mem::take(&mut multi)));
            }
        } else {
            out.push(EventMessage::Single {
                routing_key: routing_key(kind),
                event,
            });
        }
    }
    if !multi.is_empty() {
        out.push(EventMessage::Multi(multi));
    }
    out
}

/// The sender's offset from UTC in hours, positive west of UTC, as Python's
/// `time.timezone / 3600` (UTC: `0.0`). Looked up at most once a minute: the time zone
/// lookup costs more than the rest of an event, and an offset changes twice a year.
pub fn utcoffset_hours() -> f64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    // (minute of the lookup, seconds east of UTC); i64::MIN: never looked up.
    static LOOKED_UP_AT: AtomicI64 = AtomicI64::new(i64::MIN);
    static EAST: AtomicI64 = AtomicI64::new(0);
    let minute = chrono::Utc::now().timestamp() / 60;
    if LOOKED_UP_AT.load(Ordering::Relaxed) != minute {
        let east = chrono::Local::now().offset().local_minus_utc();
        EAST.store(i64::from(east), Ordering::Relaxed);
        LOOKED_UP_AT.store(minute, Ordering::Relaxed);
    }
    -(EAST.load(Ordering::Relaxed) as f64) / 3600.0
}

/// An event of `event_type`: `fields` with the common fields added (Python's `Event()`
/// puts them after the event's own fields too).
pub fn event(event_type: &str, hostname: &str, clock: u64, fields: Map<String, Value>) -> Value {
    let mut e = fields;
    e.insert("type".into(), json!(event_type));
    e.insert("hostname".into(), json!(hostname));
    e.insert(
        "timestamp".into(),
        json!(chrono::Utc::now().timestamp_micros() as f64 / 1e6),
    );
    e.insert("utcoffset".into(), json!(utcoffset_hours()));
    e.insert("pid".into(), json!(std::process::id()));
    e.insert("clock".into(), json!(clock));
    Value::Object(e)
}

/// Events received from the broker.
#[async_trait]
pub trait EventStream: Send {
    /// The next event; `None` once closed. A `task.multi` batch comes one event at a time.
    async fn next(&mut self) -> Option<Value>;
}

/// Celery's event exchange (`celeryev`) on a broker.
#[async_trait]
pub trait Events: Send + Sync {
    /// Publishes events of `hostname` (each with its own routing key, from its `type`).
    /// Nobody has to listen: on Redis, events nobody hears are lost, as in Celery.
    async fn send_events(&self, hostname: &str, events: &[Value]) -> Result<(), BrokerError>;
    /// Receives every event sent on this broker from now on.
    async fn receive_events(&self) -> Result<Box<dyn EventStream>, BrokerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_events_travel_together_and_worker_events_alone() {
        let e = |kind: &str, n: u64| json!({"type": kind, "clock": n});
        let events = vec![
            e("task-received", 1),
            e("worker-heartbeat", 2),
            e("task-started", 3),
        ];
        assert_eq!(
            event_messages(&events),
            vec![
                EventMessage::Single {
                    routing_key: "worker.heartbeat".into(),
                    event: &events[1]
                },
                EventMessage::Multi(vec![&events[0], &events[2]]),
            ]
        );
        let many: Vec<Value> = (0..MULTI_MAX as u64 + 1)
            .map(|n| e("task-succeeded", n))
            .collect();
        let messages = event_messages(&many);
        assert_eq!(messages.len(), 2, "split at MULTI_MAX");
        assert!(matches!(&messages[1], EventMessage::Multi(last) if last.len() == 1));
    }

    #[test]
    fn events_carry_celerys_common_fields() {
        let mut fields = Map::new();
        fields.insert("uuid".into(), json!("t1"));
        let e = event("task-started", "w1@h", 7, fields);
        assert_eq!(e["type"], json!("task-started"));
        assert_eq!(e["uuid"], json!("t1"));
        assert_eq!(e["clock"], json!(7));
        assert!(e["timestamp"].as_f64().unwrap() > 1.7e9 && e["utcoffset"].is_f64());
        assert_eq!(routing_key("worker-heartbeat"), "worker.heartbeat");
    }
}
