//! Celery's `task-sent` event (protocol §7.4), sent by a client for every task it sends
//! when `task_send_sent_event` is set, so monitors show a task as PENDING from the moment
//! it leaves the client.

use std::sync::atomic::{AtomicU64, Ordering};

use celeriac_core::broker::Publish;
use celeriac_core::events::{event, WireEvent};
use serde_json::{json, Map, Value};
use tracing::warn;

use crate::App;

/// The Lamport clock of this process's `task-sent` events (receivers ignore it, as clients
/// do not synchronize, but Celery advances it for every event).
static CLOCK: AtomicU64 = AtomicU64::new(0);

/// A client's event hostname, as Celery's: `gen<pid>@<host>`.
fn client_hostname() -> String {
    format!(
        "gen{}@{}",
        std::process::id(),
        celeriac_core::message::hostname()
    )
}

/// The `task-sent` events of `publishes`; empty unless the app sends them.
pub(crate) fn task_sent_events(app: &App, publishes: &[Publish]) -> Vec<WireEvent> {
    if !app.config().task_send_sent_event {
        return Vec::new();
    }
    let hostname = client_hostname();
    publishes
        .iter()
        .map(|p| {
            let h = &p.message.headers;
            let field = |name: &str| h.get(name).cloned().unwrap_or(Value::Null);
            let mut fields = Map::new();
            fields.insert("uuid".into(), field("id"));
            fields.insert("root_id".into(), field("root_id"));
            fields.insert("parent_id".into(), field("parent_id"));
            fields.insert("name".into(), field("task"));
            fields.insert("args".into(), field("argsrepr"));
            fields.insert("kwargs".into(), field("kwargsrepr"));
            fields.insert(
                "retries".into(),
                json!(h.get("retries").and_then(Value::as_u64).unwrap_or(0)),
            );
            fields.insert("eta".into(), field("eta"));
            fields.insert("expires".into(), field("expires"));
            fields.insert("queue".into(), json!(p.queue));
            fields.insert("exchange".into(), json!(p.queue));
            fields.insert("routing_key".into(), json!(p.queue));
            let clock = CLOCK.fetch_add(1, Ordering::Relaxed) + 1;
            WireEvent::from_value(&event("task-sent", &hostname, clock, fields))
        })
        .collect()
}

/// Sends the events after their tasks were published. A monitor missing an event is not
/// worth failing a send that happened: a failure is logged.
pub(crate) async fn send_task_sent(app: &App, events: Vec<WireEvent>) {
    if events.is_empty() {
        return;
    }
    let Ok(broker) = app.broker().await else {
        return;
    };
    let Some(sender) = broker.events() else {
        return;
    };
    if let Err(e) = sender.send_events(&client_hostname(), &events).await {
        warn!("could not send task-sent events: {e}");
    }
}
