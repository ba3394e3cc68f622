//! Celery's remote-control (pidbox) messages that celeriac sends. Every broker carries the
//! same body; only the envelope differs (a Redis PUBLISH, an AMQP `celery.pidbox` publish).

use serde_json::{json, Map, Value};

use crate::broker::Signal;

/// The body of Celery's `revoke` broadcast (vectors 22 and 23) as a cast: no `ticket` and no
/// `reply_to`, so no worker answers. `task_id` is a list, which Celery's handler accepts.
pub fn revoke_broadcast(task_ids: &[String], terminate: Option<Signal>) -> Map<String, Value> {
    let signal = terminate.unwrap_or(Signal::TERM).name();
    let mut body = Map::new();
    body.insert("method".into(), json!("revoke"));
    body.insert(
        "arguments".into(),
        json!({"task_id": task_ids, "terminate": terminate.is_some(), "signal": signal}),
    );
    body.insert("destination".into(), Value::Null);
    body.insert("pattern".into(), Value::Null);
    body.insert("matcher".into(), Value::Null);
    body
}

/// How long a broadcast stays valid, as Celery's `broadcast` sets `expires` (now + timeout).
pub const BROADCAST_TTL_SECONDS: f64 = 1.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_body_has_vector_23_fields_without_reply() {
        let b = revoke_broadcast(&["a".into()], None);
        assert_eq!(
            Value::Object(b),
            json!({"method": "revoke",
                   "arguments": {"task_id": ["a"], "terminate": false, "signal": "SIGTERM"},
                   "destination": null, "pattern": null, "matcher": null})
        );
        let b = revoke_broadcast(&["a".into()], Some(Signal::KILL));
        assert_eq!(b["arguments"]["terminate"], json!(true));
        assert_eq!(b["arguments"]["signal"], json!("SIGKILL"));
    }

    #[test]
    fn signals_parse_as_celery_accepts_them() {
        assert_eq!(Signal::parse("SIGKILL"), Some(Signal::KILL));
        assert_eq!(Signal::parse("kill"), Some(Signal::KILL));
        assert_eq!(Signal::parse("15"), Some(Signal::TERM));
        assert_eq!(Signal::parse("SIGNOPE"), None);
        assert_eq!(Signal::parse("0"), None);
        assert_eq!(Signal(34).name(), "34");
    }
}
