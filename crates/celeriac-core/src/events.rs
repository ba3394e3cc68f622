//! Celery's events (protocol §7): what workers and clients tell monitors (`celery events`,
//! Flower) about themselves and their tasks. An event is a JSON object with `type`,
//! `hostname`, `timestamp`, `utcoffset`, `pid`, `clock` and the fields of its type.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::json::{json_list, to_python_json, ObjectWriter};
use crate::BrokerError;

/// The routing key of an event type: `worker-heartbeat` → `worker.heartbeat`.
pub fn routing_key(event_type: &str) -> String {
    event_type.replace('-', ".")
}

/// The routing key of Celery's batched task events: one message carries a list of them.
pub const TASK_MULTI: &str = "task.multi";

/// Task events in one `task.multi` message at most.
pub const MULTI_MAX: usize = 256;

/// An event as it goes on the wire: Celery's JSON object, written once, with its type.
#[derive(Debug, Clone, PartialEq)]
pub struct WireEvent {
    pub event_type: String,
    pub json: String,
}

impl WireEvent {
    /// An event built as a [`Value`] (by [`event`]).
    pub fn from_value(event: &Value) -> WireEvent {
        WireEvent {
            event_type: event
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            json: to_python_json(event),
        }
    }

    /// An event of `event_type` written straight to JSON: `fields` first, then the common
    /// fields, as [`event`] orders them.
    pub fn build(
        event_type: &str,
        hostname: &str,
        clock: u64,
        fields: impl FnOnce(&mut ObjectWriter),
    ) -> WireEvent {
        let mut w = ObjectWriter::new();
        fields(&mut w);
        w.str("type", event_type)
            .str("hostname", hostname)
            .f64("timestamp", now_seconds())
            .f64("utcoffset", utcoffset_hours())
            .u64("pid", u64::from(std::process::id()))
            .u64("clock", clock);
        WireEvent {
            event_type: event_type.to_string(),
            json: w.finish(),
        }
    }

    /// The event as a [`Value`] (for receivers in the same process and tests).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }
}

fn now_seconds() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// One message of a batch of events, as a Celery worker publishes them (protocol §7.3).
#[derive(Debug, PartialEq)]
pub enum EventMessage<'a> {
    /// A worker event (or any non-task event) alone, with its own routing key.
    Single { routing_key: String, json: &'a str },
    /// Task events together, in order, under [`TASK_MULTI`]: the JSON list.
    Multi(String),
}

/// How `events` go on the wire: task events in `task.multi` lists of at most
/// [`MULTI_MAX`] (one message instead of one per event, as Celery's worker sends them),
/// every other event alone. Task events keep their order among themselves.
pub fn event_messages(events: &[WireEvent]) -> Vec<EventMessage<'_>> {
    let mut out = Vec::new();
    let mut multi: Vec<&str> = Vec::new();
    for event in events {
        if event.event_type.starts_with("task-") {
            multi.push(&event.json);
            if multi.len() == MULTI_MAX {
                out.push(EventMessage::Multi(json_list(&std::mem::take(&mut multi))));
            }
        } else {
            out.push(EventMessage::Single {
                routing_key: routing_key(&event.event_type),
                json: &event.json,
            });
        }
    }
    if !multi.is_empty() {
        out.push(EventMessage::Multi(json_list(&multi)));
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
    e.insert("timestamp".into(), json!(now_seconds()));
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
    /// Publishes events of `hostname` as [`event_messages`] groups them. Nobody has to
    /// listen: on Redis, events nobody hears are lost, as in Celery.
    async fn send_events(&self, hostname: &str, events: &[WireEvent]) -> Result<(), BrokerError>;
    /// Receives every event sent on this broker from now on.
    async fn receive_events(&self) -> Result<Box<dyn EventStream>, BrokerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_events_travel_together_and_worker_events_alone() {
        let e = |kind: &str, n: u64| WireEvent::from_value(&json!({"type": kind, "clock": n}));
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
                    json: &events[1].json
                },
                EventMessage::Multi(format!("[{}, {}]", events[0].json, events[2].json)),
            ]
        );
        let many: Vec<WireEvent> = (0..MULTI_MAX as u64 + 1)
            .map(|n| e("task-succeeded", n))
            .collect();
        let messages = event_messages(&many);
        assert_eq!(messages.len(), 2, "split at MULTI_MAX");
        assert_eq!(
            messages[1],
            EventMessage::Multi(format!("[{}]", many[MULTI_MAX].json))
        );
    }

    #[test]
    fn built_events_match_value_events() {
        let built = WireEvent::build("task-started", "w1@h", 7, |w| {
            w.str("uuid", "t1");
        });
        let mut fields = Map::new();
        fields.insert("uuid".into(), json!("t1"));
        let mut valued = event("task-started", "w1@h", 7, fields);
        let mut parsed = built.to_value();
        assert!(
            (parsed["timestamp"].as_f64().unwrap() - valued["timestamp"].as_f64().unwrap()).abs()
                < 5.0
        );
        parsed["timestamp"] = json!(0);
        valued["timestamp"] = json!(0);
        assert_eq!(parsed, valued);
        assert_eq!(built.event_type, "task-started");
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
