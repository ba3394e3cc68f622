//! [`AmqpBroker`]: one publisher connection (a confirm-mode channel) shared by every publish,
//! reconnected with backoff; consumers own their connection (see `consumer.rs`).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use celeriac_core::broker::{
    Broker, Consumer, ConsumerSpec, DeadLetter, DeadLetters, Publish, Purge, QueueLength,
    QueueStats, RawMessage, Revocation, Revocations, StatsCoverage,
};
use celeriac_core::{BrokerError, ErrorKind};

use crate::codec::{properties_for, raw_message};
use crate::consumer::{AmqpConsumer, Core};
use crate::revocations::RevocationLog;
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

/// RabbitMQ through AMQP 0-9-1, laid out exactly as Celery declares it.
pub struct AmqpBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) url: AmqpUrl,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    unreachable: AtomicBool,
    /// Queues this process declared, published to or consumed (QueueStats with no names).
    known: Mutex<Vec<String>>,
    /// Live consumers, for the unacked counts they hold.
    consumers: Mutex<Vec<Weak<Core>>>,
    pub(crate) revocations: RevocationLog,
    /// Celery's Lamport clock for the broadcasts this process sends.
    clock: AtomicU64,
}

/// One publisher connection and its confirm-mode channel.
pub(crate) struct Link {
    pub(crate) conn: Connection,
    ch: Channel,
    declared: Mutex<HashSet<String>>,
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

/// One message ready to go on the wire.
pub(crate) struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    /// Task queue to declare first (its topology), if any.
    pub queue: Option<String>,
    pub props: OutProps,
    pub body: Vec<u8>,
}

/// The AMQP properties of an [`Outgoing`], made anew for each attempt to send it (lapin takes
/// them by value, and a failed attempt is retried).
pub(crate) enum OutProps {
    /// Built once, cloned per attempt (dead letters, revocations, the ETA ladder).
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

impl AmqpBroker {
    /// Opens `amqp://user:pass@host:port/vhost` (or `amqps://`), declares Celery's exchanges,
    /// kombu's delay ladder and celeriac's dead-letter queue.
    pub async fn open(url: &str) -> Result<Arc<AmqpBroker>, BrokerError> {
        let url = AmqpUrl::parse(url)?;
        let inner = Arc::new(Inner {
            url,
            link: tokio::sync::Mutex::new(None),
            unreachable: AtomicBool::new(false),
            known: Mutex::new(Vec::new()),
            consumers: Mutex::new(Vec::new()),
            revocations: RevocationLog::new(),
            clock: AtomicU64::new(0),
        });
        inner.link().await?;
        Ok(Arc::new(AmqpBroker { inner }))
    }
}

impl Inner {
    /// The live publisher link, connecting (once, no retry) when there is none.
    pub(crate) async fn link(&self) -> Result<Arc<Link>, BrokerError> {
        let mut guard = self.link.lock().await;
        if let Some(l) = guard.as_ref() {
            if l.alive() {
                return Ok(l.clone());
            }
        }
        *guard = None;
        let conn = connect(&self.url, "celeriac publisher").await?;
        let setup = async {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            topology::declare_celery_exchanges(&ch).await?;
            topology::declare_delay_ladder(&ch).await?;
            topology::declare_celeriac_queues(&ch).await?;
            Ok::<_, lapin::Error>(ch)
        };
        let ch = match setup.await {
            Ok(ch) => ch,
            Err(e) if is_refusal(&e) => {
                return Err(BrokerError::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "RabbitMQ at {} refused celeriac's topology (an entity exists with other \
                         arguments?): {e}",
                        self.url.place()
                    ),
                ))
            }
            Err(e) => return Err(unreachable(&self.url, e)),
        };
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

    pub(crate) fn remember(&self, queue: &str) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if !k.iter().any(|q| q == queue) {
            k.push(queue.to_string());
        }
    }

    pub(crate) fn register(&self, core: &Arc<Core>) {
        let mut c = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        c.retain(|w| w.strong_count() > 0);
        c.push(Arc::downgrade(core));
    }

    async fn declare_on(&self, link: &Link, queue: &str) -> lapin::Result<()> {
        if link
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(queue)
        {
            return Ok(());
        }
        topology::declare_task_queue(&link.ch, &self.url, queue).await?;
        link.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_string());
        self.remember(queue);
        Ok(())
    }

    async fn send_all(&self, link: &Link, out: &[Outgoing]) -> Result<(), lapin::Error> {
        for o in out {
            if let Some(q) = &o.queue {
                self.declare_on(link, q).await?;
            }
        }
        // Pipelined: every publish is queued on the channel before any confirm is awaited, so
        // a batch costs one confirm round trip, not one per message. Publishes are queued in
        // chunks so that only one chunk of publish futures is alive at a time (their
        // allocations are reused instead of piling up for the whole batch).
        let mut confirms = Vec::with_capacity(out.len());
        for chunk in out.chunks(PUBLISH_CHUNK) {
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
            for (f, slot) in sending.into_iter().zip(queued) {
                let c = match slot {
                    Some(r) => r?,
                    None => f.await?,
                };
                confirms.push(c);
            }
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

    /// Publishes and waits for the broker's confirms; retries through reconnects (messages
    /// not confirmed are sent again: at least once) for up to [`PUBLISH_RETRY_FOR`].
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
                Err(e) if e.kind() == ErrorKind::InvalidConfig => return Err(e),
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
        let (exchange, routing_key) = if delay > 0 {
            (
                topology::level_name(DELAY_BITS - 1),
                topology::delayed_routing_key(delay, &queue),
            )
        } else {
            (String::new(), queue.clone())
        };
        Outgoing {
            exchange,
            routing_key,
            queue: Some(queue),
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
    async fn temp_channel(&self) -> Result<(Arc<Link>, Channel), BrokerError> {
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
    /// refusal (404) closes the channel: give it back with [`Inner::give_back`].
    async fn spare_channel(&self) -> Result<(Arc<Link>, Channel), BrokerError> {
        let link = self.link().await?;
        let spare = link.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(ch) = spare {
            if ch.status().connected() {
                return Ok((link, ch));
            }
        }
        match link.conn.create_channel().await {
            Ok(ch) => Ok((link, ch)),
            Err(e) => {
                self.invalidate(&link).await;
                Err(unreachable(&self.url, e))
            }
        }
    }

    async fn give_back(&self, link: &Link, ch: Channel) {
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

    fn held_unacked(&self, queue: &str) -> u64 {
        let c = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        c.iter()
            .filter_map(Weak::upgrade)
            .map(|core| core.held_in(queue))
            .sum()
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

#[async_trait]
impl Broker for AmqpBroker {
    fn display_url(&self) -> String {
        self.inner.url.display.clone()
    }

    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let link = self.inner.link().await?;
        match self.inner.declare_on(&link, queue).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.inner.invalidate(&link).await;
                if is_refusal(&e) {
                    Err(BrokerError::new(
                        ErrorKind::InvalidConfig,
                        format!(
                            "queue {queue:?} exists with other arguments than celeriac's \
                             (max_priority / queue_type must match the other processes): {e}"
                        ),
                    ))
                } else {
                    Err(unreachable(&self.inner.url, e))
                }
            }
        }
    }

    async fn publish(&self, message: Publish) -> Result<(), BrokerError> {
        let out = self.inner.outgoing(message);
        self.inner.send(std::slice::from_ref(&out)).await
    }

    async fn publish_batch(&self, messages: Vec<Publish>) -> Result<(), BrokerError> {
        let out: Vec<_> = messages
            .into_iter()
            .map(|m| self.inner.outgoing(m))
            .collect();
        self.inner.send(&out).await
    }

    async fn consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn Consumer>, BrokerError> {
        let c = AmqpConsumer::start(self.inner.clone(), spec).await?;
        Ok(Box::new(c))
    }

    fn delays_delivery(&self) -> bool {
        true
    }

    fn purge(&self) -> Option<&dyn Purge> {
        Some(self)
    }
    fn queue_stats(&self) -> Option<&dyn QueueStats> {
        Some(self)
    }
    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }
    fn revocations(&self) -> Option<&dyn Revocations> {
        Some(self)
    }
}

/// Durable revokes through the `celeriac.revocations` stream (see `revocations.rs`), each
/// also broadcast to `celery.pidbox` as Celery's `revoke` for Python workers.
#[async_trait]
impl Revocations for AmqpBroker {
    async fn revoke(&self, task_ids: &[String], terminate: bool) -> Result<(), BrokerError> {
        if task_ids.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let mark = uuid::Uuid::new_v4().to_string();
        let clock = inner.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let out = RevocationLog::record(task_ids, terminate, &mark, clock);
        inner.revocations.publish_and_wait(inner, &out, &mark).await
    }

    async fn is_revoked(&self, task_id: &str) -> Result<bool, BrokerError> {
        let log = &self.inner.revocations;
        // A revoke is never undone, so an id already seen is an answer; otherwise `sync`
        // (which starts the follower if needed) makes the view current first.
        if log.contains(task_id) {
            return Ok(true);
        }
        log.sync(&self.inner).await?;
        Ok(log.contains(task_id))
    }

    async fn revocations_since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), BrokerError> {
        let log = &self.inner.revocations;
        log.ensure_following(&self.inner.url).await?;
        if !log.caught_up() {
            log.sync(&self.inner).await?;
        }
        Ok(log.since(cursor))
    }
}

#[async_trait]
impl Purge for AmqpBroker {
    fn purges_scheduled(&self) -> bool {
        // ETA messages wait in the shared delay-ladder queues, not per task queue.
        false
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let (link, ch) = self.inner.spare_channel().await?;
        let n = match ch
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
        {
            Ok(n) => u64::from(n),
            Err(e) if is_refusal(&e) => 0, // no such queue: nothing to purge
            Err(e) => return Err(unreachable(&self.inner.url, e)),
        };
        self.inner.give_back(&link, ch).await;
        Ok(n)
    }
}

#[async_trait]
impl QueueStats for AmqpBroker {
    fn coverage(&self) -> StatsCoverage {
        // AMQP reports a queue's ready count only: ETA messages are in the shared delay
        // ladder, other connections' unacked messages and the list of queues need the
        // management API.
        StatsCoverage {
            scheduled: false,
            unacked_all_consumers: false,
            lists_all_queues: false,
        }
    }

    async fn queue_lengths(&self, queues: &[String]) -> Result<Vec<QueueLength>, BrokerError> {
        let names: Vec<String> = if queues.is_empty() {
            self.inner
                .known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        } else {
            queues.to_vec()
        };
        let mut out = Vec::with_capacity(names.len());
        let (mut link, mut ch) = self.inner.spare_channel().await?;
        for q in names {
            let ready = match ch
                .queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
            {
                Ok(s) => u64::from(s.message_count()),
                Err(e) if is_refusal(&e) => {
                    // 404: the channel is closed; take another for the next name.
                    (link, ch) = self.inner.spare_channel().await?;
                    0
                }
                Err(e) => return Err(unreachable(&self.inner.url, e)),
            };
            let unacked = self.inner.held_unacked(&q);
            out.push(QueueLength {
                queue: q,
                ready,
                scheduled: 0,
                unacked,
            });
        }
        self.inner.give_back(&link, ch).await;
        Ok(out)
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
        queue: None,
        props: OutProps::Built(properties_for(&m, priority, false)),
        body: m.body,
    }
}

fn split_dead_letter(mut m: RawMessage) -> Option<DeadLetter> {
    let take = |m: &mut RawMessage, k: &str| -> Option<String> {
        m.headers
            .shift_remove(k)
            .and_then(|v| v.as_str().map(str::to_string))
    };
    let id = take(&mut m, DL_ID)?;
    let reason = take(&mut m, DL_REASON).unwrap_or_default();
    let queue = take(&mut m, DL_QUEUE).unwrap_or_default();
    let at = take(&mut m, DL_AT)
        .and_then(|s| crate::codec::parse_time(&s))
        .unwrap_or_else(Utc::now);
    Some(DeadLetter {
        id,
        queue,
        reason,
        at,
        message: m,
    })
}

impl AmqpBroker {
    /// Every dead letter, taken with basic.get on a private channel; closing that channel
    /// puts back whatever was not acked.
    async fn take_dead_letters(
        &self,
        limit: usize,
    ) -> Result<(Arc<Link>, Channel, Vec<(u64, DeadLetter)>), BrokerError> {
        let (link, ch) = self.inner.temp_channel().await?;
        let mut got = Vec::new();
        while got.len() < limit {
            match ch
                .basic_get(DEAD_LETTERS.into(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(m)) => {
                    let d = &m.delivery;
                    let raw = raw_message(&d.properties, d.data.clone());
                    if let Some(dl) = split_dead_letter(raw) {
                        got.push((d.delivery_tag, dl));
                    } else {
                        debug!("message without dead-letter headers in {DEAD_LETTERS}");
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(unreachable(&self.inner.url, e)),
            }
        }
        Ok((link, ch, got))
    }
}

#[async_trait]
impl DeadLetters for AmqpBroker {
    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let (_link, ch, got) = self.take_dead_letters(limit).await?;
        let _ = ch.close(200, "listed".into()).await;
        Ok(got.into_iter().map(|(_, d)| d).collect())
    }

    async fn requeue_dead_letters(&self, ids: &[String]) -> Result<u64, BrokerError> {
        let (_link, ch, got) = self.take_dead_letters(usize::MAX).await?;
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut n = 0;
        for (tag, d) in got {
            if !ids.is_empty() && !wanted.contains(d.id.as_str()) {
                continue;
            }
            let priority = d
                .message
                .properties
                .get("priority")
                .and_then(Value::as_u64)
                .map(|p| p as u8);
            let out = Outgoing {
                exchange: String::new(),
                routing_key: d.queue.clone(),
                queue: Some(d.queue.clone()),
                props: OutProps::Built(properties_for(&d.message, priority, true)),
                body: d.message.body.clone(),
            };
            self.inner.send(std::slice::from_ref(&out)).await?;
            ch.basic_ack(tag, BasicAckOptions::default())
                .await
                .map_err(|e| unreachable(&self.inner.url, e))?;
            n += 1;
        }
        let _ = ch.close(200, "requeued".into()).await;
        Ok(n)
    }
}
