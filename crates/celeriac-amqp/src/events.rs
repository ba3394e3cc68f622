//! Celery's events on RabbitMQ (protocol §4.6 and §7, vectors 21 and 24).
//!
//! * A sender publishes each event to the topic exchange `celeryev` with routing key = its
//!   type with `-` replaced by `.` (`worker.heartbeat`, `task.succeeded`), as Celery's
//!   `EventDispatcher` does: `delivery_mode` 1 (transient: events are news, not records),
//!   JSON, header `hostname`. Nobody listening means the exchange drops them, as in Celery.
//! * A receiver declares its own `celeryev.<uuid>` queue (exclusive, auto-delete, Celery's
//!   `event_queue_ttl` / `event_queue_expires`) bound with `#`, on a connection of its own,
//!   and consumes it with no acks. A body may be one event or a list (`task.multi`, what a
//!   Python worker sends for buffered task events); lists come out one event at a time.
//!   After a lost connection the receiver declares its queue again and goes on (events sent
//!   meanwhile are lost, as in Celery).
//!
//! Every name and argument is in `topology.rs`. Malformed messages are logged and skipped.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::BasicConsumeOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Connection;
use serde_json::Value;
use tracing::warn;

#[cfg(test)]
use celeriac_core::events::routing_key;
use celeriac_core::events::{
    event_messages, EventMessage, EventStream, Events, WireEvent, TASK_MULTI,
};
#[cfg(test)]
use celeriac_core::json::to_python_json;
use celeriac_core::BrokerError;

use crate::broker::AmqpBroker;
use crate::mailbox::{json_body, json_properties};
use crate::session::{
    connect, next_delivery, reopen_with_backoff, unreachable, Declare, OutProps, Outgoing, Session,
};
use crate::topology::{self, EVENT_EXCHANGE};
use crate::url::AmqpUrl;

/// Celery's `EventDispatcher(delivery_mode=1)`.
const EVENT_DELIVERY_MODE: u8 = 1;

/// One event alone, as Celery's dispatcher publishes it.
#[cfg(test)]
fn event_message(hostname: &str, event: &Value) -> Outgoing {
    let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
    outgoing(hostname, &routing_key(kind), &to_python_json(event))
}

/// One message of a batch, as Celery's dispatcher publishes it: an event alone, or task
/// events in a `task.multi` list.
fn wire_message(hostname: &str, message: &EventMessage<'_>) -> Outgoing {
    match message {
        EventMessage::Single { routing_key, json } => outgoing(hostname, routing_key, json),
        EventMessage::Multi(list) => outgoing(hostname, TASK_MULTI, list),
    }
}

fn outgoing(hostname: &str, routing_key: &str, body: &str) -> Outgoing {
    let mut headers = FieldTable::default();
    headers.insert(
        "hostname".into(),
        AMQPValue::LongString(LongString::from(hostname.as_bytes())),
    );
    Outgoing {
        exchange: EVENT_EXCHANGE.into(),
        routing_key: routing_key.to_string(),
        declare: Declare::CeleryExchanges,
        props: OutProps::Built(json_properties(EVENT_DELIVERY_MODE, headers)),
        body: body.as_bytes().to_vec(),
    }
}

/// A monitor's event queue, consumed on a connection of its own.
struct AmqpEvents {
    url: AmqpUrl,
    /// The queue's id (`celeryev.<id>`), kept across reconnects as Celery's receiver does.
    id: String,
    /// Closed with the broker: the stream then ends instead of reconnecting.
    session: Arc<Session>,
    link: Option<(Connection, lapin::Consumer)>,
    /// The rest of a `task.multi` list.
    pending: VecDeque<Value>,
}

impl AmqpEvents {
    /// Connects, declares the queue as Celery's `EventReceiver` does and consumes it.
    async fn open(&self) -> Result<(Connection, lapin::Consumer), BrokerError> {
        let conn = connect(&self.url, "celeriac events").await?;
        let fail = |e: lapin::Error| unreachable(&self.url, e);
        let ch = conn.create_channel().await.map_err(fail)?;
        topology::declare_event_queue(&ch, &self.id)
            .await
            .map_err(fail)?;
        let consumer = ch
            .basic_consume(
                topology::event_queue(&self.id).as_str().into(),
                "celeriac-events".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(fail)?;
        Ok((conn, consumer))
    }

    /// Opens again until it works (`session::reopen_with_backoff`); `false` once the
    /// broker is closed.
    async fn reopen(&mut self) -> bool {
        let opened =
            reopen_with_backoff(&self.session, "events", "events: receiving again", || {
                self.open()
            })
            .await;
        match opened {
            Some(link) => {
                self.link = Some(link);
                true
            }
            None => false,
        }
    }
}

#[async_trait]
impl EventStream for AmqpEvents {
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.link.is_none() && !self.reopen().await {
                return None;
            }
            let (_, consumer) = self.link.as_mut()?;
            let Some(d) = next_delivery(consumer).await else {
                warn!("events: lost the connection of the event queue; reconnecting");
                self.link = None;
                continue;
            };
            match json_body(&d.data) {
                Some(Value::Array(events)) => self
                    .pending
                    .extend(events.into_iter().filter(Value::is_object)),
                Some(event @ Value::Object(_)) => return Some(event),
                _ => warn!("events: ignoring a malformed message"),
            }
        }
    }
}

#[async_trait]
impl Events for AmqpBroker {
    async fn send_events(&self, hostname: &str, events: &[WireEvent]) -> Result<(), BrokerError> {
        if events.is_empty() {
            return Ok(());
        }
        let out: Vec<Outgoing> = event_messages(events)
            .iter()
            .map(|m| wire_message(hostname, m))
            .collect();
        self.session.send(&out).await
    }

    async fn receive_events(&self) -> Result<Box<dyn EventStream>, BrokerError> {
        let mut stream = AmqpEvents {
            url: self.session.url.clone(),
            id: uuid::Uuid::new_v4().to_string(),
            session: self.session.clone(),
            link: None,
            pending: VecDeque::new(),
        };
        // Declared and consumed before returning, so every event sent afterwards arrives.
        stream.link = Some(stream.open().await?);
        Ok(Box::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::from_table;
    use serde_json::json;

    #[test]
    fn events_carry_vector_21_properties() {
        let out = event_message("w1@h", &json!({"type": "worker-heartbeat", "freq": 2.0}));
        assert_eq!(
            (out.exchange.as_str(), out.routing_key.as_str()),
            ("celeryev", "worker.heartbeat")
        );
        let OutProps::Built(p) = &out.props else {
            panic!("built properties")
        };
        assert_eq!(p.delivery_mode(), &Some(1));
        assert_eq!(p.priority(), &Some(0));
        let encoding = p.content_encoding().as_ref().map(|s| s.as_str());
        assert_eq!(encoding, Some("utf-8"));
        let headers = from_table(p.headers().as_ref().unwrap());
        assert_eq!(headers.get("hostname"), Some(&json!("w1@h")));
        assert_eq!(
            out.body,
            br#"{"type": "worker-heartbeat", "freq": 2.0}"#.to_vec()
        );
    }
}
