//! A call's [`CallOptions`] as the options Celery keeps in a signature (protocol §2.6), so a
//! typed call put in a workflow keeps its countdown, queue, priority and the rest.

use celeriac_core::time::to_iso;
use serde_json::{json, Map, Value};

use crate::client::CallOptions;

pub(crate) fn call_options_map(o: &CallOptions) -> Map<String, Value> {
    let mut options = Map::new();
    let mut put = |key: &str, value: Value| {
        options.insert(key.to_string(), value);
    };
    if let Some(id) = &o.task_id {
        put("task_id", json!(id));
    }
    if let Some(countdown) = o.countdown {
        put("countdown", json!(countdown.as_secs_f64()));
    }
    if let Some(eta) = o.eta {
        put("eta", json!(to_iso(eta)));
    }
    if let Some(after) = o.expires_in {
        put("expires", json!(after.as_secs_f64()));
    } else if let Some(at) = o.expires_at {
        put("expires", json!(to_iso(at)));
    }
    if let Some(priority) = o.priority {
        put("priority", json!(priority.min(9)));
    }
    if let Some(queue) = &o.queue {
        put("queue", json!(queue));
    }
    if !o.headers.is_empty() {
        put("headers", Value::Object(o.headers.clone()));
    }
    if let Some(ignore) = o.ignore_result {
        put("ignore_result", json!(ignore));
    }
    if let Some(limit) = o.time_limit {
        put("time_limit", json!(limit.as_secs_f64()));
    }
    if let Some(limit) = o.soft_time_limit {
        put("soft_time_limit", json!(limit.as_secs_f64()));
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_the_options_a_call_sets_are_kept() {
        let o = CallOptions {
            countdown: Some(Duration::from_millis(1500)),
            queue: Some("math".into()),
            priority: Some(12),
            ..CallOptions::default()
        };
        let map = call_options_map(&o);
        assert_eq!(
            Value::Object(map),
            json!({"countdown": 1.5, "priority": 9, "queue": "math"})
        );
        assert!(call_options_map(&CallOptions::default()).is_empty());
    }
}
