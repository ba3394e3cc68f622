//! Celery's remote control ("pidbox") on RabbitMQ (protocol §4.6 and §8, vectors 23 and 24).
//!
//! * A request is published to the fanout exchange `celery.pidbox` with routing key `""`,
//!   `delivery_mode` 2 and headers `clock` and `expires` (now + timeout), as kombu's
//!   `Mailbox._publish` sends it; every worker's mailbox queue gets a copy.
//! * A worker's mailbox is `<hostname>.celery.pidbox` (exclusive, auto-delete, Celery's
//!   `control_queue_ttl` / `control_queue_expires`), declared and consumed with no acks on a
//!   connection of its own: an exclusive queue lives and dies with its connection, so a
//!   worker that goes away takes its mailbox with it. After a lost connection the inbox
//!   declares it again and goes on (requests sent meanwhile are lost, as in Celery).
//! * A reply goes to `reply.celery.pidbox` (direct) with routing key = the caller's oid,
//!   `delivery_mode` 1 and headers `ticket` and `clock` (kombu's `_publish_reply`).
//! * A caller that wants replies declares `<oid>.reply.celery.pidbox` on a channel of the
//!   publisher connection before it publishes, and consumes it until its deadline or limit.
//!
//! Every name and argument is in `topology.rs`. Malformed messages are logged and skipped.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use lapin::options::BasicConsumeOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection};
use serde_json::Value;
use tracing::{debug, warn};

use celeriac_core::control::{ControlInbox, ControlRequest, Mailbox, ReplyAddress};
use celeriac_core::json::to_python_json;
use celeriac_core::{BrokerError, ErrorKind};

use crate::broker::AmqpBroker;
use crate::codec::from_amqp;
use crate::session::{
    connect, next_delivery, reopen_with_backoff, unreachable, Declare, OutProps, Outgoing, Session,
};
use crate::topology::{self, PIDBOX_EXCHANGE};
use crate::url::AmqpUrl;

/// Celery's persistent delivery mode: kombu publishes requests by exchange *name*, so the
/// exchange's `transient` setting does not apply to them (vector 23 shows 2).
const REQUEST_DELIVERY_MODE: u8 = 2;
/// Replies are published through an `Exchange(delivery_mode='transient')` (vector 23: 1).
const REPLY_DELIVERY_MODE: u8 = 1;

/// Properties as kombu's producer sets them for a JSON message: content type and encoding,
/// `priority` 0, `delivery_mode`, and the headers table.
pub(crate) fn json_properties(delivery_mode: u8, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(delivery_mode)
        .with_priority(0)
        .with_headers(headers)
}

/// A request body as published to `celery.pidbox`, valid for `ttl` seconds.
pub(crate) fn request_message(body: &Value, clock: u64, ttl: f64) -> Outgoing {
    let expires = Utc::now().timestamp_micros() as f64 / 1e6 + ttl;
    let mut headers = FieldTable::default();
    headers.insert("clock".into(), clock_value(clock));
    headers.insert("expires".into(), AMQPValue::Double(expires));
    Outgoing {
        exchange: PIDBOX_EXCHANGE.into(),
        routing_key: String::new(),
        declare: Declare::CeleryExchanges,
        props: OutProps::Built(json_properties(REQUEST_DELIVERY_MODE, headers)),
        body: to_python_json(body).into_bytes(),
    }
}

/// Publishes a request body to every worker's mailbox (with confirm, retried through
/// reconnects like every publish), valid for `ttl` seconds. This is the one place requests
/// are published: `broadcast` and the revoke that `Revocations::revoke` casts both use it.
pub(crate) async fn publish_request(
    session: &Session,
    body: &Value,
    ttl: f64,
) -> Result<(), BrokerError> {
    let out = request_message(body, session.tick(), ttl);
    session.send(std::slice::from_ref(&out)).await
}

/// A reply as kombu's `_publish_reply` sends it.
fn reply_message(to: &ReplyAddress, ticket: &str, clock: u64, body: &Value) -> Outgoing {
    let mut headers = FieldTable::default();
    headers.insert(
        "ticket".into(),
        AMQPValue::LongString(LongString::from(ticket.as_bytes())),
    );
    headers.insert("clock".into(), clock_value(clock));
    Outgoing {
        exchange: to.exchange.clone(),
        routing_key: to.routing_key.clone(),
        // kombu declares the reply exchange before each reply.
        declare: Declare::CeleryExchanges,
        props: OutProps::Built(json_properties(REPLY_DELIVERY_MODE, headers)),
        body: to_python_json(body).into_bytes(),
    }
}

/// A clock as py-amqp encodes an int: `I` when it fits 32 bits, else `l`.
fn clock_value(clock: u64) -> AMQPValue {
    match i32::try_from(clock) {
        Ok(c) => AMQPValue::LongInt(c),
        Err(_) => AMQPValue::LongLongInt(i64::try_from(clock).unwrap_or(i64::MAX)),
    }
}

/// A message header as JSON (`Null` when absent).
pub(crate) fn header(props: &BasicProperties, name: &str) -> Value {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
        .map(from_amqp)
        .unwrap_or(Value::Null)
}

/// The `clock` header: any integer type (Python and lapin pick different ones), else 0.
fn clock_of(props: &BasicProperties) -> u64 {
    let clock = header(props, "clock");
    clock
        .as_u64()
        .or_else(|| clock.as_f64().map(|f| f.max(0.0) as u64))
        .unwrap_or(0)
}

/// A delivery's JSON body, or `None` when it is not JSON.
pub(crate) fn json_body(data: &[u8]) -> Option<Value> {
    serde_json::from_slice(data).ok()
}

/// A request from a delivery; `None` when it is not one.
fn parse_request(d: &lapin::message::Delivery) -> Option<ControlRequest> {
    ControlRequest::from_body(&json_body(&d.data)?, clock_of(&d.properties))
}

/// Whether RabbitMQ refused a declare because another connection holds the exclusive queue.
fn is_locked(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p)
        if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)))
}

/// One worker's mailbox queue, consumed on a connection of its own.
struct AmqpInbox {
    url: AmqpUrl,
    hostname: String,
    /// Closed with the broker: the inbox then ends instead of reconnecting.
    session: std::sync::Arc<Session>,
    /// The consumer with its connection (dropping both closes them, deleting the queue).
    link: Option<(Connection, lapin::Consumer)>,
}

impl AmqpInbox {
    /// Connects, declares the mailbox as Celery's worker does and consumes it (no acks).
    async fn open(&self) -> Result<(Connection, lapin::Consumer), BrokerError> {
        let queue = topology::pidbox_queue(&self.hostname);
        let conn = connect(&self.url, "celeriac pidbox").await?;
        let fail = |e: lapin::Error| {
            if is_locked(&e) {
                BrokerError::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "a node named {} is already using the mailbox {queue} on RabbitMQ at \
                         {} (give each worker a unique node name with -n)",
                        self.hostname,
                        self.url.place()
                    ),
                )
            } else {
                unreachable(&self.url, e)
            }
        };
        let ch = conn.create_channel().await.map_err(fail)?;
        topology::declare_pidbox_queue(&ch, &self.hostname)
            .await
            .map_err(fail)?;
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "celeriac-pidbox".into(),
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
        let opened = reopen_with_backoff(
            &self.session,
            "remote control",
            "remote control: listening again",
            || self.open(),
        )
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
impl ControlInbox for AmqpInbox {
    async fn next(&mut self) -> Option<ControlRequest> {
        loop {
            if self.link.is_none() && !self.reopen().await {
                return None;
            }
            let (_, consumer) = self.link.as_mut()?;
            let Some(d) = next_delivery(consumer).await else {
                warn!("remote control: lost the connection of the mailbox; reconnecting");
                self.link = None;
                continue;
            };
            match parse_request(&d) {
                Some(request) => return Some(request),
                None => warn!(
                    "remote control: ignoring a malformed message in {}",
                    topology::pidbox_queue(&self.hostname)
                ),
            }
        }
    }
}

#[async_trait]
impl Mailbox for AmqpBroker {
    async fn listen(&self, hostname: &str) -> Result<Box<dyn ControlInbox>, BrokerError> {
        let mut inbox = AmqpInbox {
            url: self.session.url.clone(),
            hostname: hostname.to_string(),
            session: self.session.clone(),
            link: None,
        };
        // The first attempt's error is the caller's (a duplicate node name, a server away);
        // later outages are retried inside the inbox.
        inbox.link = Some(inbox.open().await?);
        Ok(Box::new(inbox))
    }

    async fn reply(
        &self,
        to: &ReplyAddress,
        ticket: &str,
        clock: u64,
        body: &Value,
    ) -> Result<(), BrokerError> {
        // A reply nobody waits for any more (the caller's queue is gone) is dropped by the
        // direct exchange, which is what Celery expects too.
        let out = reply_message(to, ticket, clock, body);
        self.session.send(std::slice::from_ref(&out)).await
    }

    async fn broadcast(
        &self,
        request: &ControlRequest,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, BrokerError> {
        let body = request.to_body();
        let ttl = timeout.as_secs_f64();
        // The request's clock is the caller's: the published one comes after it.
        self.session.observe_clock(request.clock);
        let (Some(ticket), Some(to)) = (&request.ticket, &request.reply_to) else {
            publish_request(&self.session, &body, ttl).await?;
            return Ok(Vec::new());
        };
        // The reply queue must exist before the request goes out, or early replies are lost.
        let (link, ch) = self.session.temp_channel().await?;
        let url = &self.session.url;
        let mut consumer = open_reply_queue(&ch, &to.routing_key)
            .await
            .map_err(|e| unreachable(url, e))?;
        publish_request(&self.session, &body, ttl).await?;
        let replies = self
            .collect_replies(&mut consumer, ticket, timeout, limit)
            .await;
        drop(consumer);
        // Closing the channel cancels the consumer, so the auto-delete queue goes too.
        self.session.give_back(&link, ch).await;
        Ok(replies)
    }
}

/// Declares a caller's reply queue (as Celery's `app.control`) and consumes it (no acks).
async fn open_reply_queue(ch: &lapin::Channel, oid: &str) -> lapin::Result<lapin::Consumer> {
    topology::declare_reply_queue(ch, oid).await?;
    ch.basic_consume(
        topology::reply_queue(oid).as_str().into(),
        "celeriac-pidbox-reply".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

impl AmqpBroker {
    /// The replies carrying `ticket` until `timeout` passes or `limit` came; others are
    /// dropped (each celeriac caller has its own reply queue), and so are replies whose
    /// `expires` header has passed (kombu's rule; workers set none).
    async fn collect_replies(
        &self,
        consumer: &mut lapin::Consumer,
        ticket: &str,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut replies = Vec::new();
        while replies.len() < limit.unwrap_or(usize::MAX) {
            let d = match tokio::time::timeout_at(deadline, next_delivery(consumer)).await {
                Ok(Some(d)) => d,
                Ok(None) => {
                    warn!("remote control: the reply queue was lost before the deadline");
                    break;
                }
                Err(_) => break,
            };
            self.session.observe_clock(clock_of(&d.properties));
            let expires = header(&d.properties, "expires").as_f64().unwrap_or(0.0);
            let now = Utc::now().timestamp_micros() as f64 / 1e6;
            match json_body(&d.data) {
                Some(_) if expires > 0.0 && now > expires => {
                    debug!("remote control: dropping an expired reply")
                }
                Some(body) if header(&d.properties, "ticket").as_str() == Some(ticket) => {
                    replies.push(body)
                }
                Some(_) => debug!("remote control: dropping a reply for another request"),
                None => warn!("remote control: ignoring a malformed reply"),
            }
        }
        replies
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::from_table;
    use serde_json::json;

    #[test]
    fn requests_and_replies_carry_vector_23_properties() {
        let body = json!({"method": "ping", "arguments": {}});
        let out = request_message(&body, 5, 1.0);
        assert_eq!(
            (out.exchange.as_str(), out.routing_key.as_str()),
            ("celery.pidbox", "")
        );
        let OutProps::Built(p) = &out.props else {
            panic!("built properties")
        };
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.priority(), &Some(0));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        let headers = from_table(p.headers().as_ref().unwrap());
        assert_eq!(headers["clock"], json!(5));
        assert!(headers["expires"].as_f64().unwrap() > 1.7e9);

        let to = ReplyAddress {
            exchange: "reply.celery.pidbox".into(),
            routing_key: "oid".into(),
        };
        let out = reply_message(&to, "t1", 7, &json!({"w@h": {"ok": "pong"}}));
        assert_eq!(
            (out.exchange.as_str(), out.routing_key.as_str()),
            ("reply.celery.pidbox", "oid")
        );
        let OutProps::Built(p) = &out.props else {
            panic!("built properties")
        };
        assert_eq!(p.delivery_mode(), &Some(1));
        let headers = from_table(p.headers().as_ref().unwrap());
        assert_eq!(
            headers,
            json!({"ticket": "t1", "clock": 7})
                .as_object()
                .unwrap()
                .clone()
        );
        assert_eq!(out.body, br#"{"w@h": {"ok": "pong"}}"#.to_vec());
    }
}
