//! The connection state every part of the engine shares: the URL, the publisher link (one
//! channel, in confirm mode unless `confirm_publish=false`, reconnected with backoff), what
//! has been declared on it, and the wire form of outgoing messages. The broker, its
//! consumers, the revocation follower and the rpc result backend all publish through one
//! [`Session`]; none of them depends on another.
//!
//! Topology is declared when first needed, never up front: a producer that sends plain tasks
//! declares only their queues; the delay ladder comes with the first ETA publish (or a worker
//! start), the dead-letter queue with the first dead letter, Celery's broadcast exchanges with
//! the first broadcast (or a worker start).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use serde_json::{json, Value};
use tracing::{info, warn};

use celeriac_core::broker::{Publish, RawMessage};
use celeriac_core::{BrokerError, ErrorKind};

use crate::codec::properties_for;
use crate::topology::{self, DEAD_LETTERS, DELAY_BITS};
use crate::url::AmqpUrl;

/// How long a publish keeps retrying through a broken connection before it fails.
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `frame_max` asked for when the URL gives none. lapin keeps 32 frames of buffer each way
/// per connection, so RabbitMQ's 128 KiB default costs 8 MiB per connection (a worker has
/// two); 64 KiB halves that. Bodies of any size still go through (split into frames); a
/// properties/headers frame must fit in it (`?frame_max=131072` for bigger headers).
const DEFAULT_FRAME_MAX: u32 = 65_536;
/// Publishes queued on the channel per step of a batch (see `send_all`).
const PUBLISH_CHUNK: usize = 256;

/// Dead-letter bookkeeping headers (removed again when listing or requeueing).
pub(crate) const DL_ID: &str = "x-celeriac-dead-letter-id";
pub(crate) const DL_REASON: &str = "x-celeriac-dead-letter-reason";
pub(crate) const DL_QUEUE: &str = "x-celeriac-dead-letter-queue";
pub(crate) const DL_AT: &str = "x-celeriac-dead-letter-at";

/// What shares one publisher connection.
pub(crate) struct Session {
    pub(crate) url: AmqpUrl,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    unreachable: AtomicBool,
    /// Queues this process declared, published to or consumed (QueueStats with no names).
    known: Mutex<Vec<String>>,
    /// Celery's Lamport clock for the broadcasts this process sends.
    clock: AtomicU64,
    /// Set by `close`: no new link is opened afterwards.
    closed: AtomicBool,
}

/// One publisher connection and its channel.
pub(crate) struct Link {
    pub(crate) conn: Connection,
    ch: Channel,
    declared: Mutex<HashSet<Entity>>,
    /// Held while publishes take their confirm number and queue their frames (no await).
    order: Mutex<()>,
    /// A spare plain channel for purge / queue statistics, kept open between calls (a
    /// worker or `wait_drained` polling lengths would otherwise open and close one each time).
    spare: Mutex<Option<Channel>>,
}

impl Link {
    fn alive(&self) -> bool {
        self.conn.status().connected() && self.ch.status().connected()
    }
}

/// Topology an outgoing message needs before it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Declare {
    /// Nothing: a queue someone else declares (the revocation stream, a reply queue).
    Nothing,
    /// A task queue, published to directly.
    TaskQueue(String),
    /// A task queue reached through kombu's delay ladder.
    Delayed(String),
    DeadLetters,
    /// Celery's event and remote-control exchanges (a broadcast).
    CeleryExchanges,
    /// What a starting worker declares, as Celery's does: the broadcast exchanges and the
    /// delay ladder (Python producers publish ETA tasks into it without declaring it).
    WorkerStart,
}

/// One declared thing, remembered per link (a new connection declares again).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Entity {
    TaskQueue(String),
    /// The binding from the delayed-delivery exchange to a task queue.
    DelayBinding(String),
    DelayLadder,
    DeadLetters,
    CeleryExchanges,
}

impl Declare {
    /// The entities, in declaration order (the ladder before the bindings that use it).
    fn entities(&self) -> Vec<Entity> {
        match self {
            Declare::Nothing => Vec::new(),
            Declare::TaskQueue(q) => vec![Entity::TaskQueue(q.clone())],
            Declare::Delayed(q) => vec![
                Entity::DelayLadder,
                Entity::TaskQueue(q.clone()),
                Entity::DelayBinding(q.clone()),
            ],
            Declare::DeadLetters => vec![Entity::DeadLetters],
            Declare::CeleryExchanges => vec![Entity::CeleryExchanges],
            Declare::WorkerStart => vec![Entity::CeleryExchanges, Entity::DelayLadder],
        }
    }
}

/// One message ready to go on the wire.
pub(crate) struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub declare: Declare,
    pub props: OutProps,
    pub body: Vec<u8>,
}

/// The AMQP properties of an [`Outgoing`], made anew for each attempt to send it (lapin takes
/// them by value, and a failed attempt is retried).
pub(crate) enum OutProps {
    /// Built once, cloned per attempt (dead letters, revocations, the ETA ladder, results).
    Built(BasicProperties),
    /// A published task: built from its message per attempt, so the hot path builds the
    /// headers table once instead of building it and cloning it. The message's body has
    /// been moved to [`Outgoing::body`].
    Task {
        message: RawMessage,
        priority: Option<u8>,
        keep_expiration: bool,
    },
}

impl OutProps {
    fn make(&self) -> BasicProperties {
        match self {
            OutProps::Built(p) => p.clone(),
            OutProps::Task {
                message,
                priority,
                keep_expiration,
            } => properties_for(message, *priority, *keep_expiration),
        }
    }
}

pub(crate) fn unreachable(url: &AmqpUrl, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(
        ErrorKind::Unreachable,
        format!("RabbitMQ at {} unreachable: {e}", url.place()),
    )
}

fn storage(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(ErrorKind::Storage, format!("{what}: {e}"))
}

/// Connects to the URL's server (with a timeout), naming host:port/vhost on failure.
pub(crate) async fn connect(url: &AmqpUrl, name: &str) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let mut uri: lapin::uri::AMQPUri = url
        .connect_uri
        .parse()
        .map_err(|e| BrokerError::new(ErrorKind::InvalidConfig, redact_err(url, e)))?;
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(DEFAULT_FRAME_MAX);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, props)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(unreachable(url, redact_err(url, e))),
        Err(_) => Err(unreachable(url, "connect timed out")),
    }
}

fn redact_err(url: &AmqpUrl, e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    // Never let a password reach a log line through a library's message.
    match url
        .connect_uri
        .split_once("://")
        .and_then(|(_, r)| r.rsplit_once('@'))
    {
        Some((auth, _)) => match auth.split_once(':') {
            Some((_, pw)) if !pw.is_empty() => s.replace(pw, "***"),
            _ => s,
        },
        None => s,
    }
}

/// A channel-level refusal by the server (e.g. 406 PRECONDITION_FAILED): retrying won't help.
pub(crate) fn is_refusal(e: &lapin::Error) -> bool {
    e.is_amqp_soft_error()
}

fn refused_topology(url: &AmqpUrl, e: lapin::Error) -> BrokerError {
    BrokerError::new(
        ErrorKind::InvalidConfig,
        format!(
            "RabbitMQ at {} refused celeriac's topology (an entity exists with other \
             arguments: max_priority / queue_type must match the other processes): {e}",
            url.place()
        ),
    )
}

impl Session {
    pub(crate) fn new(url: AmqpUrl) -> Session {
        Session {
            url,
            link: tokio::sync::Mutex::new(None),
            unreachable: AtomicBool::new(false),
            known: Mutex::new(Vec::new()),
            clock: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// The next value of this process's Lamport clock.
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Moves the Lamport clock past a clock seen on a message (a remote-control reply), so
    /// the next broadcast is ordered after it (kombu's `clock.adjust`).
    pub(crate) fn observe_clock(&self, seen: u64) {
        self.clock.fetch_max(seen, Ordering::Relaxed);
    }

    /// Whether `close` was called: followers with connections of their own stop then.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The live publisher link, connecting (once, no retry) when there is none.
    pub(crate) async fn link(&self) -> Result<Arc<Link>, BrokerError> {
        let mut guard = self.link.lock().await;
        if let Some(l) = guard.as_ref() {
            if l.alive() {
                return Ok(l.clone());
            }
        }
        *guard = None;
        if self.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::new(
                ErrorKind::Closed,
                format!(
                    "the connection to RabbitMQ at {} was closed",
                    self.url.place()
                ),
            ));
        }
        let conn = connect(&self.url, "celeriac publisher").await?;
        let setup = async {
            let ch = conn.create_channel().await?;
            if self.url.confirm_publish {
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
            }
            Ok::<_, lapin::Error>(ch)
        };
        let ch = setup.await.map_err(|e| unreachable(&self.url, e))?;
        let link = Arc::new(Link {
            conn,
            ch,
            declared: Mutex::new(HashSet::new()),
            order: Mutex::new(()),
            spare: Mutex::new(None),
        });
        *guard = Some(link.clone());
        Ok(link)
    }

    pub(crate) async fn invalidate(&self, link: &Arc<Link>) {
        let mut guard = self.link.lock().await;
        if guard.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            *guard = None;
        }
    }

    /// Closes the publisher connection once RabbitMQ has handled everything published: the
    /// channel is closed first, and RabbitMQ answers a channel close only after the frames
    /// sent before it on that channel. Later publishes fail.
    pub(crate) async fn close(&self) -> Result<(), BrokerError> {
        self.closed.store(true, Ordering::SeqCst);
        let link = self.link.lock().await.take();
        let Some(link) = link.filter(|l| l.conn.status().connected()) else {
            return Ok(());
        };
        let fail = |e| unreachable(&self.url, e);
        if link.ch.status().connected() {
            link.ch
                .close(200, "celeriac closing".into())
                .await
                .map_err(fail)?;
        }
        link.conn
            .close(200, "celeriac closing".into())
            .await
            .map_err(fail)
    }

    pub(crate) fn remember(&self, queue: &str) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if !k.iter().any(|q| q == queue) {
            k.push(queue.to_string());
        }
    }

    pub(crate) fn known_queues(&self) -> Vec<String> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn declare_entity(&self, ch: &Channel, entity: &Entity) -> lapin::Result<()> {
        match entity {
            Entity::TaskQueue(q) => {
                topology::declare_task_queue(ch, &self.url, q).await?;
                self.remember(q);
                Ok(())
            }
            Entity::DelayBinding(q) => topology::bind_delayed_delivery(ch, q).await,
            Entity::DelayLadder => topology::declare_delay_ladder(ch).await,
            Entity::DeadLetters => topology::declare_dead_letter_queue(ch).await,
            Entity::CeleryExchanges => topology::declare_celery_exchanges(ch).await,
        }
    }

    async fn ensure_on(&self, link: &Link, declare: &Declare) -> lapin::Result<()> {
        for entity in declare.entities() {
            let done = link
                .declared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&entity);
            if !done {
                self.declare_entity(&link.ch, &entity).await?;
                link.declared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(entity);
            }
        }
        Ok(())
    }

    /// Declares what `declare` names on the publisher connection (once per connection).
    pub(crate) async fn ensure(&self, declare: &Declare) -> Result<(), BrokerError> {
        let link = self.link().await?;
        match self.ensure_on(&link, declare).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.invalidate(&link).await;
                Err(if is_refusal(&e) {
                    refused_topology(&self.url, e)
                } else {
                    unreachable(&self.url, e)
                })
            }
        }
    }

    async fn send_all(&self, link: &Link, out: &[Outgoing]) -> Result<(), lapin::Error> {
        let mut last = None;
        for o in out {
            if last != Some(&o.declare) {
                self.ensure_on(link, &o.declare).await?;
                last = Some(&o.declare);
            }
        }
        // Pipelined: every publish is queued on the channel before any confirm is awaited, so
        // a batch costs one confirm round trip, not one per message. Publishes are queued in
        // chunks so that only one chunk of publish futures is alive at a time (their
        // allocations are reused instead of piling up for the whole batch).
        let mut confirms = Vec::with_capacity(out.len());
        for chunk in out.chunks(PUBLISH_CHUNK) {
            confirms.extend(self.queue_chunk(link, chunk).await?);
        }
        for c in confirms {
            match c.await? {
                Confirmation::Ack(_) | Confirmation::NotRequested => {}
                Confirmation::Nack(_) => {
                    return Err(lapin::Error::from(lapin::ErrorKind::ProtocolError(
                        lapin::protocol::AMQPError::new(
                            lapin::protocol::AMQPErrorKind::Soft(
                                lapin::protocol::AMQPSoftError::PRECONDITIONFAILED,
                            ),
                            "the broker nacked the publish (queue full?)".into(),
                        ),
                    )))
                }
            }
        }
        Ok(())
    }

    /// Queues one chunk of publishes on the channel and returns their pending confirms.
    async fn queue_chunk(
        &self,
        link: &Link,
        chunk: &[Outgoing],
    ) -> Result<Vec<PublisherConfirm>, lapin::Error> {
        let mut sending: Vec<_> = chunk
            .iter()
            .map(|o| {
                Box::pin(link.ch.basic_publish(
                    o.exchange.as_str().into(),
                    o.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &o.body,
                    o.props.make(),
                ))
            })
            .collect();
        let mut queued: Vec<Option<lapin::Result<PublisherConfirm>>> =
            (0..sending.len()).map(|_| None).collect();
        // The first poll of `basic_publish` takes the confirm sequence number and queues
        // the frames; doing that under `order` keeps both in the same order across
        // concurrent publishers (RabbitMQ numbers confirms by arrival), so a nack reaches
        // its own caller.
        std::future::poll_fn(|cx| {
            let _order = link.order.lock().unwrap_or_else(|p| p.into_inner());
            for (f, slot) in sending.iter_mut().zip(queued.iter_mut()) {
                if let Poll::Ready(r) = f.as_mut().poll(cx) {
                    *slot = Some(r);
                }
            }
            Poll::Ready(())
        })
        .await;
        let mut confirms = Vec::with_capacity(chunk.len());
        for (f, slot) in sending.into_iter().zip(queued) {
            confirms.push(match slot {
                Some(r) => r?,
                None => f.await?,
            });
        }
        Ok(confirms)
    }

    /// Publishes and, with confirms on, waits for the broker's confirms; retries through
    /// reconnects (messages not confirmed are sent again: at least once) for up to
    /// [`PUBLISH_RETRY_FOR`].
    pub(crate) async fn send(&self, out: &[Outgoing]) -> Result<(), BrokerError> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let err = match self.link().await {
                Ok(link) => match self.send_all(&link, out).await {
                    Ok(()) => {
                        if self.unreachable.swap(false, Ordering::SeqCst) {
                            info!(
                                "RabbitMQ at {} reachable again: publishing",
                                self.url.place()
                            );
                        }
                        return Ok(());
                    }
                    Err(e) if is_refusal(&e) => {
                        self.invalidate(&link).await;
                        return Err(storage("RabbitMQ refused the publish", e));
                    }
                    Err(e) => {
                        self.invalidate(&link).await;
                        unreachable(&self.url, e)
                    }
                },
                Err(e) if matches!(e.kind(), ErrorKind::InvalidConfig | ErrorKind::Closed) => {
                    return Err(e)
                }
                Err(e) => e,
            };
            if !self.unreachable.swap(true, Ordering::SeqCst) {
                warn!("{err}; retrying with backoff");
            }
            if start.elapsed() >= PUBLISH_RETRY_FOR {
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// The wire form of a publish: to the default exchange with routing key = queue, or,
    /// with a future `not_before`, into kombu's delay ladder (`celery_delayed_27`).
    pub(crate) fn outgoing(&self, p: Publish) -> Outgoing {
        let Publish {
            queue,
            priority,
            not_before,
            mut message,
        } = p;
        let body = std::mem::take(&mut message.body);
        let delay = not_before
            .map(|t| delay_seconds(t, Utc::now()))
            .unwrap_or(0);
        let (exchange, routing_key, declare) = if delay > 0 {
            (
                topology::level_name(DELAY_BITS - 1),
                topology::delayed_routing_key(delay, &queue),
                Declare::Delayed(queue),
            )
        } else {
            (String::new(), queue.clone(), Declare::TaskQueue(queue))
        };
        Outgoing {
            exchange,
            routing_key,
            declare,
            props: OutProps::Task {
                message,
                priority,
                keep_expiration: delay == 0,
            },
            body,
        }
    }

    /// A temporary channel on the publisher connection, for operations whose refusal
    /// (404 on a missing queue) closes the channel.
    pub(crate) async fn temp_channel(&self) -> Result<(Arc<Link>, Channel), BrokerError> {
        let link = self.link().await?;
        match link.conn.create_channel().await {
            Ok(ch) => Ok((link, ch)),
            Err(e) => {
                self.invalidate(&link).await;
                Err(unreachable(&self.url, e))
            }
        }
    }

    /// The spare channel of the publisher connection (or a new one), for operations whose
    /// refusal (404) closes the channel: give it back with [`Session::give_back`].
    pub(crate) async fn spare_channel(&self) -> Result<(Arc<Link>, Channel), BrokerError> {
        let link = self.link().await?;
        let spare = link.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(ch) = spare {
            if ch.status().connected() {
                return Ok((link, ch));
            }
        }
        self.temp_channel().await
    }

    pub(crate) async fn give_back(&self, link: &Link, ch: Channel) {
        if !ch.status().connected() {
            return;
        }
        let extra = {
            let mut spare = link.spare.lock().unwrap_or_else(|p| p.into_inner());
            match spare.as_ref() {
                Some(s) if s.status().connected() => Some(ch),
                _ => {
                    *spare = Some(ch);
                    None
                }
            }
        };
        if let Some(ch) = extra {
            let _ = ch.close(200, "done".into()).await;
        }
    }
}

/// What a follower (the revocation stream's, rpc://'s reply queue's) gets next. Made once per
/// delivery and matched at once, so the size of the delivery variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Next {
    Delivery(lapin::message::Delivery),
    /// The consumer ended or failed: reconnect.
    Lost,
    /// Asked to stop; the connection has been closed.
    Stopped,
}

/// The next delivery of a consumer; `None` when it ended or failed (its connection or
/// channel is gone: reconnect).
/// Runs `open` until it works, for a reader on a connection of its own (a worker's
/// mailbox, a monitor's event queue): backoff from 100 ms doubling to 5 s, one warning per
/// outage (`what: error; retrying`) and `again` logged once it works again. `None` once the
/// broker's session is closed.
pub(crate) async fn reopen_with_backoff<T, F, Fut>(
    session: &Session,
    what: &str,
    again: &str,
    mut open: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BrokerError>>,
{
    let mut pause = std::time::Duration::from_millis(100);
    let mut warned = false;
    loop {
        if session.is_closed() {
            return None;
        }
        match open().await {
            Ok(opened) => {
                if warned {
                    tracing::info!("{again}");
                }
                return Some(opened);
            }
            Err(e) if !std::mem::replace(&mut warned, true) => {
                tracing::warn!("{what}: {e}; retrying")
            }
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

pub(crate) async fn next_delivery(
    consumer: &mut lapin::Consumer,
) -> Option<lapin::message::Delivery> {
    use futures_core::Stream;
    let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *consumer).poll_next(cx)).await;
    match next {
        Some(Ok(d)) => Some(d),
        _ => None,
    }
}

/// The next delivery of a follower's consumer, unless `stop` fires (or its sender is
/// dropped) first, in which case the follower's connection is closed.
pub(crate) async fn next_or_stop(
    consumer: &mut lapin::Consumer,
    stop: &mut tokio::sync::oneshot::Receiver<()>,
    conn: &Connection,
) -> Next {
    tokio::select! {
        _ = stop => {
            let _ = conn.close(200, "done".into()).await;
            Next::Stopped
        }
        next = next_delivery(consumer) => match next {
            Some(d) => Next::Delivery(d),
            None => Next::Lost,
        },
    }
}

/// Whole seconds until `t`, rounded up (so the ladder never delivers early); 0 when due.
pub(crate) fn delay_seconds(t: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let ms = (t - now).num_milliseconds();
    if ms <= 0 {
        0
    } else {
        (ms as u64).div_ceil(1000)
    }
}

/// A dead letter as stored: the original message plus bookkeeping headers.
pub(crate) fn dead_letter_outgoing(queue: &str, reason: &str, msg: &RawMessage) -> Outgoing {
    let mut m = msg.clone();
    m.headers
        .insert(DL_ID.into(), json!(uuid::Uuid::new_v4().to_string()));
    m.headers.insert(DL_REASON.into(), json!(reason));
    m.headers.insert(DL_QUEUE.into(), json!(queue));
    m.headers
        .insert(DL_AT.into(), json!(Utc::now().to_rfc3339()));
    let priority = msg
        .properties
        .get("priority")
        .and_then(Value::as_u64)
        .map(|p| p as u8);
    Outgoing {
        exchange: String::new(),
        routing_key: DEAD_LETTERS.into(),
        declare: Declare::DeadLetters,
        props: OutProps::Built(properties_for(&m, priority, false)),
        body: m.body,
    }
}
