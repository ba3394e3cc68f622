//! The message of one tick: an ordinary protocol-2 task call by name with the entry's
//! options, plus Celery beat's `celery_beat_task: true` header (vector 25).

use celeriac_core::broker::Publish;
use celeriac_core::canvas::Router;
use celeriac_core::message::{CallSpec, TaskMessage};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::Entry;

pub(crate) fn tick_publish(
    entry: &Entry,
    router: &dyn Router,
    origin: &str,
    now: DateTime<Utc>,
) -> Publish {
    let options = &entry.options;
    let mut spec = CallSpec::new(entry.task.clone())
        .args(entry.args.clone())
        .kwargs(entry.kwargs.clone());
    spec.priority = options.priority;
    spec.expires = options
        .expires
        .and_then(|secs| TimeDelta::try_milliseconds((secs * 1000.0) as i64))
        .map(|d| now + d);
    spec.origin = Some(origin.to_string());
    spec.headers
        .insert("celery_beat_task".to_string(), Value::Bool(true));
    // With Celery's default exchange a routing key names the queue.
    let queue = options
        .queue
        .clone()
        .or_else(|| options.routing_key.clone())
        .unwrap_or_else(|| router.queue_for(&entry.task));
    Publish {
        queue,
        priority: options.priority,
        not_before: None,
        message: TaskMessage::new_call(spec).to_raw(),
    }
}
