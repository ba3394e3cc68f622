//! [`AmqpConsumer`]: its own connection and channel; `basic.qos` + `basic.consume` when the
//! spec gives a window (`prefetch > 0`), `basic.get` on demand otherwise. Deliveries land in
//! an in-memory buffer filled by spawned tasks, so a dropped `fetch` future loses nothing.
//! Delivery tags are `"<generation>:<amqp tag>"`: after a reconnect the old generation's tags
//! are dropped (RabbitMQ redelivers those messages), never sent on the new channel.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use futures_core::Stream;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicQosOptions, BasicRejectOptions};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::Value;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use celeriac_core::broker::{Consumer, ConsumerSpec, Delivery, DeliveryTag};
use celeriac_core::{BrokerError, ErrorKind};

use crate::codec::{parse_time, properties_for, raw_message};
use crate::session::{
    connect, dead_letter_outgoing, delay_seconds, unreachable, Declare, OutProps, Outgoing, Session,
};
use crate::topology::{self, DELAY_BITS};

mod queues;
use queues::QueueList;

/// How often an idle pull-mode (`prefetch == 0`) consumer asks again.
const GET_POLL: Duration = Duration::from_millis(50);

pub struct AmqpConsumer {
    core: Arc<Core>,
}

pub(crate) struct Core {
    session: Arc<Session>,
    /// Changed by `add_queue` / `cancel_queue` (`consumer/queues.rs`).
    queues: Mutex<QueueList>,
    name: String,
    prefetch: u16,
    st: Mutex<St>,
    notify: Notify,
}

/// A delivery handed out and not settled yet: enough to rebuild the message for
/// `dead_letter` (the AMQP properties as received, moved here rather than decoded again,
/// and the body), without cloning the decoded message on the hot path.
struct Held {
    queue: usize,
    props: BasicProperties,
    body: Vec<u8>,
}

/// A delivery in the buffer, with what `take_ready` moves into [`Held`].
struct Ready {
    tag: u64,
    queue: usize,
    props: BasicProperties,
    delivery: Delivery,
}

struct St {
    closed: bool,
    gen: u64,
    link: Option<CLink>,
    connecting: bool,
    next_attempt: Instant,
    backoff: Duration,
    failing: bool,
    ready: VecDeque<Ready>,
    /// Every unacked tag of the current channel: buffered, held, or being moved to the ladder.
    outstanding: BTreeSet<u64>,
    held: HashMap<u64, Held>,
    getting: bool,
    rr: usize,
}

#[derive(Clone)]
struct CLink {
    conn: Arc<Connection>,
    ch: Channel,
}

fn tag_string(gen: u64, tag: u64) -> DeliveryTag {
    DeliveryTag(format!("{gen}:{tag}"))
}

fn parse_tag(t: &DeliveryTag) -> Option<(u64, u64)> {
    let (g, t) = t.0.split_once(':')?;
    Some((g.parse().ok()?, t.parse().ok()?))
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn held_in(&self, queue: &str) -> u64 {
        let Some(qi) = self.queue_list().index_of(queue) else {
            return 0;
        };
        self.lock().held.values().filter(|h| h.queue == qi).count() as u64
    }

    /// Forgets the channel of generation `gen` (its unacked messages go back to the queue
    /// when RabbitMQ notices the connection is gone).
    fn kill(&self, gen: u64) {
        let link = {
            let mut st = self.lock();
            if st.gen != gen || st.link.is_none() {
                return;
            }
            st.ready.clear();
            st.outstanding.clear();
            st.held.clear();
            st.link.take()
        };
        if let Some(l) = link {
            warn!(
                "RabbitMQ connection of consumer {} lost; its unacked messages will be redelivered",
                self.name
            );
            tokio::spawn(async move {
                let _ = l.conn.close(200, "reconnecting".into()).await;
            });
        }
        self.notify.notify_one();
    }

    /// Takes a received message: ETA further away than now goes into the delay ladder
    /// (published with confirm, then acked), anything else into the buffer.
    #[allow(clippy::too_many_arguments)]
    async fn accept(
        self: &Arc<Self>,
        ch: &Channel,
        gen: u64,
        qi: usize,
        tag: u64,
        redelivered: bool,
        props: BasicProperties,
        data: Vec<u8>,
    ) {
        let queue = self.queue_list().name(qi).to_string();
        let queue = queue.as_str();
        {
            let mut st = self.lock();
            if st.gen != gen || st.closed {
                return;
            }
            st.outstanding.insert(tag);
        }
        let message = raw_message(&props, data);
        let eta = message
            .headers
            .get("eta")
            .and_then(Value::as_str)
            .and_then(parse_time);
        if let Some(delay) = eta.map(|t| delay_seconds(t, Utc::now())).filter(|d| *d > 0) {
            let priority = message
                .properties
                .get("priority")
                .and_then(Value::as_u64)
                .map(|p| p as u8);
            let out = Outgoing {
                exchange: topology::level_name(DELAY_BITS - 1),
                routing_key: topology::delayed_routing_key(delay, queue),
                declare: Declare::Delayed(queue.to_string()),
                props: OutProps::Built(properties_for(&message, priority, false)),
                body: message.body.clone(),
            };
            match self.session.send(std::slice::from_ref(&out)).await {
                Ok(()) => {
                    // Crash window: between the confirm above and this ack, a crash leaves
                    // the message both in the ladder and (redelivered) in the queue.
                    let _ = ch.basic_ack(tag, BasicAckOptions::default()).await;
                    self.lock().outstanding.remove(&tag);
                    debug!(queue, "ETA message moved to the delay ladder ({delay} s)");
                    return;
                }
                Err(e) => {
                    warn!("could not move an ETA message to the delay ladder: {e}; handing it out")
                }
            }
        }
        let mut st = self.lock();
        if st.gen != gen || st.closed {
            return;
        }
        st.ready.push_back(Ready {
            tag,
            queue: qi,
            props,
            delivery: Delivery {
                tag: tag_string(gen, tag),
                queue: queue.to_string(),
                redelivered,
                message,
            },
        });
        drop(st);
        self.notify.notify_one();
    }

    /// Starts a (re)connect in the background when none is running and the backoff allows.
    fn ensure_link(self: &Arc<Self>) {
        {
            let mut st = self.lock();
            if st.closed || st.link.is_some() || st.connecting || Instant::now() < st.next_attempt {
                return;
            }
            st.connecting = true;
        }
        let core = self.clone();
        tokio::spawn(async move {
            let result = core.open_link().await;
            let mut st = core.lock();
            st.connecting = false;
            match result {
                Ok((link, gen)) if !st.closed && st.gen == gen => {
                    st.link = Some(link);
                    st.backoff = Duration::from_millis(100);
                    if st.failing {
                        st.failing = false;
                        info!(
                            "RabbitMQ at {} reachable again: consumer {} consuming {:?}",
                            core.session.url.place(),
                            core.name,
                            core.queue_list().active()
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if !st.failing {
                        st.failing = true;
                        warn!("{e}; consumer {} retrying with backoff", core.name);
                    }
                    st.next_attempt = Instant::now() + st.backoff;
                    st.backoff = (st.backoff * 2).min(Duration::from_secs(5));
                }
            }
            drop(st);
            core.notify.notify_one();
        });
    }

    async fn open_link(self: &Arc<Self>) -> Result<(CLink, u64), BrokerError> {
        let url = &self.session.url;
        let conn = connect(url, &format!("celeriac consumer {}", self.name)).await?;
        let conn = Arc::new(conn);
        let fail = |e: lapin::Error| unreachable(url, e);
        let ch = conn.create_channel().await.map_err(fail)?;
        let active = self.queue_list().active();
        for (_, q, _) in &active {
            self.declare_on(&ch, q).await?;
        }
        // New generation: anything of the old one is stale from here on.
        let gen = {
            let mut st = self.lock();
            st.gen += 1;
            st.ready.clear();
            st.outstanding.clear();
            st.held.clear();
            st.gen
        };
        let link = CLink { conn, ch };
        if self.prefetch > 0 {
            // Celery asks for channel-wide prefetch on RabbitMQ's classic queues; quorum
            // queues do not support global QoS.
            link.ch
                .basic_qos(
                    self.prefetch,
                    BasicQosOptions {
                        global: !url.quorum,
                    },
                )
                .await
                .map_err(fail)?;
            for (index, _, epoch) in active {
                self.consume(&link, gen, index, epoch).await?;
            }
        }
        Ok((link, gen))
    }

    async fn pump(
        self: Arc<Self>,
        mut consumer: lapin::Consumer,
        ch: Channel,
        gen: u64,
        qi: usize,
        epoch: u64,
    ) {
        loop {
            let next = std::future::poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)).await;
            match next {
                Some(Ok(d)) => {
                    self.accept(
                        &ch,
                        gen,
                        qi,
                        d.delivery_tag,
                        d.redelivered,
                        d.properties,
                        d.data,
                    )
                    .await
                }
                Some(Err(e)) => {
                    debug!(
                        "consumer stream of {} failed: {e}",
                        self.queue_list().name(qi)
                    );
                    break;
                }
                None => break,
            }
        }
        if !self.queue_list().is_current(qi, epoch) {
            // Cancelled (`cancel_queue`): the channel and the other queues carry on.
            return;
        }
        self.kill(gen);
    }

    /// Pull mode: basic.get up to `max` messages round-robin over the queues.
    fn start_get(self: &Arc<Self>, max: usize) {
        let (link, gen, start) = {
            let mut st = self.lock();
            let Some(link) = st.link.clone() else { return };
            if st.getting || st.closed {
                return;
            }
            st.getting = true;
            st.rr = st.rr.wrapping_add(1);
            (link, st.gen, st.rr)
        };
        let core = self.clone();
        // (index, name) of the queues consumed when this round starts.
        let queues: Vec<(usize, String)> = self
            .queue_list()
            .active()
            .into_iter()
            .map(|(index, name, _)| (index, name))
            .collect();
        tokio::spawn(async move {
            let n = queues.len();
            if n == 0 {
                core.lock().getting = false;
                core.notify.notify_one();
                return;
            }
            let mut got = 0;
            let mut empty = vec![false; n];
            let mut i = start;
            while got < max && !empty.iter().all(|e| *e) {
                let k = i % n;
                i += 1;
                if empty[k] {
                    continue;
                }
                let (index, q) = &queues[k];
                match link
                    .ch
                    .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                {
                    Ok(Some(m)) => {
                        let d = m.delivery;
                        core.accept(
                            &link.ch,
                            gen,
                            *index,
                            d.delivery_tag,
                            d.redelivered,
                            d.properties,
                            d.data,
                        )
                        .await;
                        got += 1;
                    }
                    Ok(None) => empty[k] = true,
                    Err(e) => {
                        debug!("basic.get on {q} failed: {e}");
                        core.lock().getting = false;
                        core.kill(gen);
                        return;
                    }
                }
            }
            core.lock().getting = false;
            core.notify.notify_one();
        });
    }

    fn take_ready(&self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let mut st = self.lock();
        if st.closed {
            return Err(BrokerError::new(ErrorKind::Closed, "consumer closed"));
        }
        let st = &mut *st;
        let n = max.min(st.ready.len());
        let mut out = Vec::with_capacity(n);
        for r in st.ready.drain(..n) {
            st.held.insert(
                r.tag,
                Held {
                    queue: r.queue,
                    props: r.props,
                    body: r.delivery.message.body.clone(),
                },
            );
            out.push(r.delivery);
        }
        Ok(out)
    }

    /// Removes `tags` of the live generation from what is held; returns the channel and the
    /// valid tags (stale ones are dropped: their messages are redelivered by RabbitMQ).
    fn release(&self, tags: &[DeliveryTag]) -> Option<(Channel, u64, Vec<u64>, Option<u64>)> {
        let mut st = self.lock();
        let link = st.link.clone()?;
        let gen = st.gen;
        let mut valid: Vec<u64> = Vec::new();
        for t in tags {
            match parse_tag(t) {
                Some((g, tag)) if g == gen && st.held.contains_key(&tag) => valid.push(tag),
                _ => debug!("dropping stale delivery tag {}", t.0),
            }
        }
        valid.sort_unstable();
        valid.dedup();
        // The smallest unacked tag not being settled: a multiple-ack below it is safe.
        let set: BTreeSet<u64> = valid.iter().copied().collect();
        let floor = st.outstanding.iter().find(|t| !set.contains(t)).copied();
        for t in &valid {
            st.held.remove(t);
            st.outstanding.remove(t);
        }
        Some((link.ch, gen, valid, floor))
    }
}

impl AmqpConsumer {
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub(crate) async fn start(
        session: Arc<Session>,
        spec: ConsumerSpec,
    ) -> Result<AmqpConsumer, BrokerError> {
        if spec.queues.is_empty() {
            return Err(BrokerError::new(
                ErrorKind::InvalidConfig,
                "a consumer needs at least one queue",
            ));
        }
        let core = Arc::new(Core {
            session,
            queues: Mutex::new(QueueList::new(&spec.queues)),
            name: spec.name.clone(),
            prefetch: spec.prefetch.min(usize::from(u16::MAX)) as u16,
            st: Mutex::new(St {
                closed: false,
                gen: 0,
                link: None,
                connecting: false,
                next_attempt: Instant::now(),
                backoff: Duration::from_millis(100),
                failing: false,
                ready: VecDeque::new(),
                outstanding: BTreeSet::new(),
                held: HashMap::new(),
                getting: false,
                rr: 0,
            }),
            notify: Notify::new(),
        });
        // The first connection is made here so configuration errors surface at once.
        let (link, gen) = core.open_link().await?;
        {
            let mut st = core.lock();
            if st.gen == gen {
                st.link = Some(link);
            }
        }
        Ok(AmqpConsumer { core })
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        let core = &self.core;
        let deadline = Instant::now() + wait;
        let pull = core.prefetch == 0;
        loop {
            let got = core.take_ready(max)?;
            if !got.is_empty() || max == 0 {
                return Ok(got);
            }
            core.ensure_link();
            let (alive, getting) = {
                let st = core.lock();
                (st.link.is_some(), st.getting)
            };
            if pull && alive && !getting {
                core.start_get(max);
            }
            let now = Instant::now();
            if now >= deadline {
                // Give a just-started basic.get a moment (a NO_WAIT fetch still sees
                // ready messages).
                if pull && alive && !getting && wait.is_zero() {
                    let _ = tokio::time::timeout(Duration::from_millis(20), core.notify.notified())
                        .await;
                    return core.take_ready(max);
                }
                return Ok(Vec::new());
            }
            let mut nap = deadline - now;
            if pull || !alive {
                nap = nap.min(if getting {
                    Duration::from_millis(20)
                } else {
                    GET_POLL
                });
            }
            let _ = tokio::time::timeout(nap, core.notify.notified()).await;
        }
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        let Some((ch, gen, valid, floor)) = self.core.release(tags) else {
            return Ok(());
        };
        let (multi, single): (Vec<u64>, Vec<u64>) = valid.iter().partition(|t| match floor {
            None => true,
            Some(f) => **t < f,
        });
        let mut frames: Vec<(u64, bool)> = Vec::with_capacity(1 + single.len());
        if let Some(top) = multi.last() {
            frames.push((*top, multi.len() > 1));
        }
        frames.extend(single.into_iter().map(|t| (t, false)));
        // Pipelined: every ack is queued on the channel before any is awaited (each await is
        // a trip through lapin's I/O thread).
        let mut sending: Vec<_> = frames
            .into_iter()
            .map(|(t, multiple)| Box::pin(ch.basic_ack(t, BasicAckOptions { multiple })))
            .collect();
        let mut result = Ok(());
        std::future::poll_fn(|cx| {
            sending.retain_mut(|f| match f.as_mut().poll(cx) {
                Poll::Ready(r) => {
                    if result.is_ok() {
                        result = r;
                    }
                    false
                }
                Poll::Pending => true,
            });
            Poll::Ready(())
        })
        .await;
        for f in sending {
            let r = f.await;
            if result.is_ok() {
                result = r;
            }
        }
        if let Err(e) = result {
            // The channel is gone: RabbitMQ redelivers what we could not ack.
            warn!("ack failed ({e}); the messages will be redelivered");
            self.core.kill(gen);
        }
        Ok(())
    }

    async fn requeue(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        let Some((ch, gen, valid, _)) = self.core.release(tags) else {
            return Ok(());
        };
        for t in valid {
            if let Err(e) = ch
                .basic_reject(t, BasicRejectOptions { requeue: true })
                .await
            {
                warn!("reject failed ({e}); the messages will be redelivered");
                self.core.kill(gen);
                break;
            }
        }
        Ok(())
    }

    async fn dead_letter(&self, tag: &DeliveryTag, reason: &str) -> Result<(), BrokerError> {
        let held = {
            let st = self.core.lock();
            parse_tag(tag)
                .filter(|(g, _)| *g == st.gen)
                .and_then(|(_, t)| st.held.get(&t))
                .map(|h| {
                    (
                        self.core.queue_list().name(h.queue).to_string(),
                        raw_message(&h.props, h.body.clone()),
                    )
                })
        };
        let Some((queue, message)) = held else {
            debug!(
                "dead_letter of a stale tag {}: RabbitMQ redelivers it",
                tag.0
            );
            return Ok(());
        };
        let out = dead_letter_outgoing(&queue, reason, &message);
        self.core.session.send(std::slice::from_ref(&out)).await?;
        self.ack(std::slice::from_ref(tag)).await
    }

    async fn keepalive(&self) -> Result<(), BrokerError> {
        // RabbitMQ keeps a delivery until its channel closes: nothing to renew.
        Ok(())
    }

    fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(60)
    }

    fn queue_set(&self) -> Option<&dyn celeriac_core::broker::QueueSet> {
        Some(self)
    }

    async fn close(&self) -> Result<(), BrokerError> {
        let link = {
            let mut st = self.core.lock();
            if st.closed {
                return Ok(());
            }
            st.closed = true;
            st.ready.clear();
            st.held.clear();
            st.outstanding.clear();
            st.link.take()
        };
        self.core.notify.notify_one();
        if let Some(l) = link {
            // Closing the connection requeues every unacked delivery (held or buffered).
            let _ = l.ch.close(200, "consumer closed".into()).await;
            let _ = l.conn.close(200, "consumer closed".into()).await;
        }
        Ok(())
    }
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        let link = {
            let mut st = self.core.lock();
            st.closed = true;
            st.link.take()
        };
        if let Some(l) = link {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = l.conn.close(200, "consumer dropped".into()).await;
                });
            }
        }
    }
}
