//! Celery's remote control on Redis (protocol §8.1, vector 22): requests are PUBLISHed to
//! the fanout channel `/<db>.celery.pidbox` in kombu's envelope; a worker replies with an
//! LPUSH to the caller's list `<oid>.reply.celery.pidbox`, which the caller BRPOPs. A caller
//! registers its list in `_kombu.binding.reply.celery.pidbox` so Python workers find it.

use std::pin::Pin;

use celeriac_core::control::{ControlInbox, ControlRequest, Mailbox, ReplyAddress};
use futures_core::Stream;
use redis::aio::{PubSubSink, PubSubStream};

use super::*;

/// The reply exchange Celery's callers name in `reply_to`.
const REPLY_EXCHANGE: &str = "reply.celery.pidbox";
/// The longest a caller's BRPOP blocks before it checks its deadline again (kombu: 1 s).
const POLL: Duration = Duration::from_secs(1);

/// kombu's envelope around a JSON control body.
pub(super) fn envelope(
    body: &Value,
    headers: Value,
    delivery_mode: u8,
    exchange: &str,
    key: &str,
) -> String {
    envelope_json(&to_python_json(body), headers, delivery_mode, exchange, key)
}

/// [`envelope`] of a body already written as JSON.
pub(super) fn envelope_json(
    body: &str,
    headers: Value,
    delivery_mode: u8,
    exchange: &str,
    key: &str,
) -> String {
    let mut props = Map::new();
    props.insert("delivery_mode".into(), json!(delivery_mode));
    props.insert(
        "delivery_info".into(),
        json!({"exchange": exchange, "routing_key": key}),
    );
    props.insert("priority".into(), json!(0));
    props.insert("body_encoding".into(), json!("base64"));
    props.insert(
        "delivery_tag".into(),
        json!(uuid::Uuid::new_v4().to_string()),
    );
    let mut env = Map::new();
    env.insert("body".into(), json!(B64.encode(body)));
    env.insert("content-encoding".into(), json!("utf-8"));
    env.insert("content-type".into(), json!("application/json"));
    env.insert("headers".into(), headers);
    env.insert("properties".into(), Value::Object(props));
    to_python_json(&Value::Object(env))
}

/// A request as PUBLISHed to the pidbox channel, valid for `ttl` seconds.
pub(super) fn request_envelope(body: &Value, clock: u64, ttl: f64) -> String {
    let expires = Utc::now().timestamp_micros() as f64 / 1e6 + ttl;
    let headers = json!({"clock": clock, "expires": expires});
    envelope(body, headers, 2, "celery.pidbox", "")
}

/// The JSON body and headers of an envelope; `None` when it is not one.
pub(super) fn open_envelope(raw: &[u8]) -> Option<(Value, Value)> {
    let env: Value = serde_json::from_slice(raw).ok()?;
    let body = env.get("body")?.as_str()?;
    let bytes = match env
        .pointer("/properties/body_encoding")
        .and_then(Value::as_str)
    {
        Some("base64") => B64.decode(body).ok()?,
        _ => body.as_bytes().to_vec(),
    };
    let body = serde_json::from_slice(&bytes).ok()?;
    Some((body, env.get("headers").cloned().unwrap_or(Value::Null)))
}

pub(super) fn pubsub_error(e: RedisError, display: &str) -> BrokerError {
    BrokerError::new(
        ErrorKind::Unreachable,
        format!("cannot open a pub/sub connection to {display}: {e}"),
    )
}

/// One worker's subscription to the pidbox channel; resubscribes after a lost connection.
struct RedisInbox {
    client: redis::Client,
    channel: String,
    display: String,
    subscription: Option<(PubSubSink, PubSubStream)>,
}

impl RedisInbox {
    async fn subscribe(&mut self) -> Result<(), BrokerError> {
        let pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| pubsub_error(e, &self.display))?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(&self.channel)
            .await
            .map_err(|e| pubsub_error(e, &self.display))?;
        self.subscription = Some((sink, stream));
        Ok(())
    }

    /// Subscribes again until it works, with backoff, warning once per outage.
    async fn resubscribe(&mut self) {
        let mut pause = Duration::from_millis(100);
        let mut warned = false;
        while let Err(e) = self.subscribe().await {
            if !std::mem::replace(&mut warned, true) {
                warn!("remote control: {e}; retrying");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        if warned {
            info!("remote control: listening again");
        }
    }
}

#[async_trait]
impl ControlInbox for RedisInbox {
    async fn next(&mut self) -> Option<ControlRequest> {
        loop {
            if self.subscription.is_none() {
                self.resubscribe().await;
            }
            let (_, stream) = self.subscription.as_mut()?;
            let message = std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await;
            let Some(message) = message else {
                self.subscription = None;
                continue;
            };
            let parsed = open_envelope(message.get_payload_bytes()).and_then(|(body, headers)| {
                let clock = headers.get("clock").and_then(Value::as_u64).unwrap_or(0);
                ControlRequest::from_body(&body, clock)
            });
            match parsed {
                Some(request) => return Some(request),
                None => warn!(
                    "remote control: ignoring a malformed message on {}",
                    self.channel
                ),
            }
        }
    }
}

#[async_trait]
impl Mailbox for RedisBroker {
    async fn listen(&self, _hostname: &str) -> Result<Box<dyn ControlInbox>, BrokerError> {
        let mut inbox = RedisInbox {
            client: self.inner.client.clone(),
            channel: self.inner.keys.pidbox_channel(),
            display: self.display_url(),
            subscription: None,
        };
        inbox.subscribe().await?;
        Ok(Box::new(inbox))
    }

    async fn reply(
        &self,
        to: &ReplyAddress,
        ticket: &str,
        clock: u64,
        body: &Value,
    ) -> Result<(), BrokerError> {
        let headers = json!({"ticket": ticket, "clock": clock});
        let env = envelope(body, headers, 1, &to.exchange, &to.routing_key);
        let key = self.inner.keys.reply_list(&to.routing_key);
        self.inner
            .cmd
            .query::<()>(
                "remote-control reply",
                true,
                redis::cmd("LPUSH").arg(&key).arg(env),
            )
            .await
    }

    async fn broadcast(
        &self,
        request: &ControlRequest,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, BrokerError> {
        let keys = &self.inner.keys;
        let body = request.to_body();
        let clock = self.tick().max(request.clock);
        let envelope = request_envelope(&body, clock, timeout.as_secs_f64());
        let (Some(ticket), Some(to)) = (&request.ticket, &request.reply_to) else {
            let publish = redis::cmd("PUBLISH")
                .arg(keys.pidbox_channel())
                .arg(envelope)
                .clone();
            self.inner
                .cmd
                .query::<()>("remote-control cast", true, &publish)
                .await?;
            return Ok(Vec::new());
        };
        let list = keys.reply_list(&to.routing_key);
        let mut pipe = redis::pipe();
        pipe.sadd(
            keys.binding(REPLY_EXCHANGE),
            Keys::reply_binding_member(&to.routing_key),
        )
        .ignore()
        .cmd("PUBLISH")
        .arg(keys.pidbox_channel())
        .arg(envelope)
        .ignore();
        self.inner
            .cmd
            .pipe::<()>("remote-control request", true, &pipe)
            .await?;
        self.collect_replies(&list, ticket, timeout, limit).await
    }
}

impl RedisBroker {
    /// BRPOPs `list` on a connection of its own (a blocking pop would stall the shared one)
    /// until the deadline or `limit` replies with `ticket`; replies for other tickets are
    /// dropped (each caller here has its own list).
    async fn collect_replies(
        &self,
        list: &str,
        ticket: &str,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, BrokerError> {
        let mut conn = self
            .inner
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| pubsub_error(e, &self.display_url()))?;
        let deadline = Instant::now() + timeout;
        let mut replies = Vec::new();
        while replies.len() < limit.unwrap_or(usize::MAX) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let wait = left.min(POLL).as_secs_f64().max(0.01);
            let popped: Option<(String, Vec<u8>)> = redis::cmd("BRPOP")
                .arg(list)
                .arg(wait)
                .query_async(&mut conn)
                .await
                .map_err(|e| pubsub_error(e, &self.display_url()))?;
            let Some((_, raw)) = popped else { continue };
            match open_envelope(&raw) {
                Some((body, headers))
                    if headers.get("ticket").and_then(Value::as_str) == Some(ticket) =>
                {
                    replies.push(body)
                }
                Some(_) => debug!("remote control: dropping a reply for another request"),
                None => warn!("remote control: ignoring a malformed reply in {list}"),
            }
        }
        Ok(replies)
    }
}
