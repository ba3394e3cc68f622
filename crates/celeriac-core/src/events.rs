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

/// The sender's offset from UTC in hours, positive west of UTC, as Python's
/// `time.timezone / 3600` (UTC: `0.0`).
pub fn utcoffset_hours() -> f64 {
    let east = chrono::Local::now().offset().local_minus_utc();
    -(east as f64) / 3600.0
}

/// An event of `event_type` with the common fields and `fields`.
pub fn event(event_type: &str, hostname: &str, clock: u64, fields: Map<String, Value>) -> Value {
    let mut e = Map::new();
    e.insert("type".into(), json!(event_type));
    e.extend(fields);
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
