//! Celery's events on Redis (protocol §7.1, vector 20): each event is PUBLISHed in kombu's
//! envelope to `/<db>.celeryev/<routing key>` (Celery makes `celeryev` a fanout exchange on
//! Redis, so events travel by pub/sub); monitors PSUBSCRIBE `/<db>.celeryev/*`. Task
//! events go together in `task.multi` lists, as Celery's worker sends them.

use std::collections::VecDeque;
use std::pin::Pin;

use celeriac_core::events::{
    event_messages, EventMessage, EventStream, Events, WireEvent, TASK_MULTI,
};
use futures_core::Stream;
use redis::aio::{PubSubSink, PubSubStream};

use super::mailbox::{envelope_json, open_envelope, pubsub_error};
use super::*;

struct RedisEvents {
    _sink: PubSubSink,
    stream: PubSubStream,
    pending: VecDeque<Value>,
}

#[async_trait]
impl EventStream for RedisEvents {
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            let stream = &mut self.stream;
            let message = std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await?;
            match open_envelope(message.get_payload_bytes()) {
                Some((Value::Array(events), _)) => self.pending.extend(events),
                Some((event @ Value::Object(_), _)) => return Some(event),
                _ => warn!("events: ignoring a malformed message"),
            }
        }
    }
}

#[async_trait]
impl Events for RedisBroker {
    async fn send_events(&self, hostname: &str, events: &[WireEvent]) -> Result<(), BrokerError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for message in event_messages(events) {
            let (key, body) = match &message {
                EventMessage::Single { routing_key, json } => (routing_key.as_str(), *json),
                EventMessage::Multi(list) => (TASK_MULTI, list.as_str()),
            };
            let headers = json!({ "hostname": hostname });
            pipe.cmd("PUBLISH")
                .arg(self.inner.keys.event_channel(key))
                .arg(envelope_json(body, headers, 1, "celeryev", key))
                .ignore();
        }
        self.inner.cmd.pipe::<()>("send events", true, &pipe).await
    }

    async fn receive_events(&self) -> Result<Box<dyn EventStream>, BrokerError> {
        let display = self.display_url();
        let pubsub = self
            .inner
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| pubsub_error(e, &display))?;
        let (mut sink, stream) = pubsub.split();
        sink.psubscribe(self.inner.keys.event_pattern())
            .await
            .map_err(|e| pubsub_error(e, &display))?;
        Ok(Box::new(RedisEvents {
            _sink: sink,
            stream,
            pending: VecDeque::new(),
        }))
    }
}
