//! The remote-control commands about the queues a worker consumes: `add_consumer`,
//! `cancel_consumer` and `active_queues`, with Celery 5.7's replies. The consumer's
//! [`QueueSet`](celeriac_core::broker::QueueSet) changes in place: messages already in hand
//! keep running, whatever happens to their queue.

use celeriac_core::control::ControlRequest;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::control_commands::argument;
use crate::mailbox::{error, ok};
use crate::worker::Shared;

impl Shared {
    /// The queues consumed now (as started, when the broker cannot change them).
    pub(crate) fn consumed_queues(&self) -> Vec<String> {
        match self.consumer.queue_set() {
            Some(set) => set.queues(),
            None => self.config.queues.clone(),
        }
    }

    /// `add_consumer(queue, exchange, exchange_type, routing_key)`: celeriac queues are
    /// Celery's default topology (a direct exchange named after the queue), so only
    /// `queue` matters.
    pub(crate) async fn add_consumer(&self, request: &ControlRequest) -> Value {
        let Some(queue) = queue_argument(request) else {
            return error("add_consumer needs a queue name");
        };
        let Some(set) = self.consumer.queue_set() else {
            return error(format!(
                "{} cannot change the queues of a running worker",
                self.broker.display_url()
            ));
        };
        match set.add_queue(&queue).await {
            Ok(true) => info!("Started consuming from {queue}"),
            Ok(false) => info!("Already consuming from {queue}"),
            Err(e) => {
                warn!("add_consumer {queue}: {e}");
                return error(format!("cannot consume from {queue}: {e}"));
            }
        }
        ok(format!("add consumer {queue}"))
    }

    /// `cancel_consumer(queue)`: stops fetching from `queue`.
    pub(crate) async fn cancel_consumer(&self, request: &ControlRequest) -> Value {
        let Some(queue) = queue_argument(request) else {
            return error("cancel_consumer needs a queue name");
        };
        let Some(set) = self.consumer.queue_set() else {
            return error(format!(
                "{} cannot change the queues of a running worker",
                self.broker.display_url()
            ));
        };
        match set.cancel_queue(&queue).await {
            Ok(true) => info!("Stopped consuming from {queue}"),
            Ok(false) => info!("Was not consuming from {queue}"),
            Err(e) => {
                warn!("cancel_consumer {queue}: {e}");
                return error(format!("cannot stop consuming from {queue}: {e}"));
            }
        }
        ok(format!("no longer consuming from {queue}"))
    }

    /// The consumed queues as kombu describes them (Celery's default topology: a direct
    /// exchange named after the queue).
    pub(crate) fn active_queues(&self) -> Value {
        let queues: Vec<Value> = self
            .consumed_queues()
            .iter()
            .map(|q| {
                json!({
                    "name": q,
                    "exchange": {"name": q, "type": "direct", "arguments": null, "durable": true,
                                 "passive": false, "auto_delete": false, "delivery_mode": null,
                                 "no_declare": false},
                    "routing_key": q, "queue_arguments": null, "binding_arguments": null,
                    "consumer_arguments": null, "durable": true, "exclusive": false,
                    "auto_delete": false, "no_ack": false, "alias": null, "bindings": [],
                    "no_declare": null, "expires": null, "message_ttl": null,
                    "max_length": null, "max_length_bytes": null, "max_priority": null,
                })
            })
            .collect();
        json!(queues)
    }
}

fn queue_argument(request: &ControlRequest) -> Option<String> {
    argument(request, "queue")
        .and_then(Value::as_str)
        .filter(|q| !q.is_empty())
        .map(str::to_string)
}
