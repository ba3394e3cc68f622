//! Durable revocations on RabbitMQ.
//!
//! Every revoke is one message in the stream queue `celeriac.revocations`; each
//! [`AmqpBroker`](crate::AmqpBroker) follows that stream from its first offset with a consumer
//! of its own and keeps the ids in memory, so a worker's periodic `revocations_since` costs no
//! round trip. Stream offsets (plus one) are the cursors. Celery's `revoke` broadcast goes to
//! `celery.pidbox` with each revoke (published by `mailbox.rs`), so running Python workers
//! flag the ids as well.
//!
//! Reads are made current with a *mark*: a message carrying a fresh id is appended to the
//! stream and the reader waits until its follower has passed it, so everything recorded before
//! the mark has been seen. `revoke` waits for its own record the same way (a process reads
//! its own revokes at once); `is_revoked` marks when the id is not known yet, and
//! `revocations_since` marks once per broker, before its first answer (a worker starting up
//! sees every earlier revoke before it takes a task).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tracing::{info, warn};

use celeriac_core::broker::{Revocation, Signal};
use celeriac_core::time::from_millis;
use celeriac_core::{BrokerError, ErrorKind};

use crate::session::{
    connect, is_refusal, next_or_stop, unreachable, Declare, Next, OutProps, Outgoing, Session,
};
use crate::topology::{self, REVOCATIONS};
use crate::url::AmqpUrl;

/// Newest revocations kept in memory (as the Redis engine keeps in `celeriac.revoked_ids`).
const KEPT: usize = 100_000;
/// Deliveries the follower may hold unacked (streams require a prefetch).
const PREFETCH: u16 = 1000;
/// The follower acks (multiple) after this many deliveries, well inside [`PREFETCH`].
const ACK_EVERY: u64 = 100;
/// How long a reader waits for its mark to come back through the stream.
const MARK_WAIT: Duration = Duration::from_secs(15);
/// After the follower failed to start, callers get that error again, without a new
/// connection attempt, for this long (a worker asks every 100 ms).
const RETRY_START_AFTER: Duration = Duration::from_secs(5);

/// The in-memory view of the stream, shared by the broker and its follower task.
#[derive(Default)]
struct View {
    entries: VecDeque<(u64, Revocation)>,
    /// Revoked id → how many kept entries name it.
    ids: HashMap<String, u32>,
    /// Where a reconnecting follower resumes (`None`: from the first offset).
    resume_at: Option<u64>,
    /// Marks a reader is waiting for.
    waiting: HashMap<String, oneshot::Sender<()>>,
    /// A mark has come back at least once: the view was complete at that moment.
    caught_up: bool,
}

/// One stream message, as written by [`RevocationLog::record`] and [`RevocationLog::mark`].
fn record_body(task_ids: &[String], terminate: Option<Signal>, mark: &str) -> Vec<u8> {
    json!({
        "task_ids": task_ids,
        "terminate": terminate.is_some(),
        "signal": terminate.unwrap_or(Signal::TERM).0,
        "at": Utc::now().timestamp_millis(),
        "mark": mark,
    })
    .to_string()
    .into_bytes()
}

/// A stream message that records nothing and only marks a point to wait for.
fn mark_message(mark: &str) -> Outgoing {
    Outgoing {
        exchange: String::new(),
        routing_key: REVOCATIONS.into(),
        declare: Declare::Nothing,
        props: OutProps::Built(json_properties()),
        body: record_body(&[], None, mark),
    }
}

fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(2)
}

impl View {
    fn apply(&mut self, offset: u64, body: &[u8]) {
        self.resume_at = Some(offset + 1);
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            warn!("ignoring a malformed message at offset {offset} of {REVOCATIONS}");
            return;
        };
        let terminate = v["terminate"].as_bool().unwrap_or(false);
        let signal = v["signal"]
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map_or(Signal::TERM, Signal);
        let at = from_millis(v["at"].as_i64().unwrap_or(0));
        for id in v["task_ids"].as_array().into_iter().flatten() {
            let Some(id) = id.as_str() else { continue };
            *self.ids.entry(id.to_string()).or_default() += 1;
            self.entries.push_back((
                offset,
                Revocation {
                    task_id: id.to_string(),
                    terminate,
                    signal,
                    at,
                },
            ));
        }
        while self.entries.len() > KEPT {
            if let Some((_, old)) = self.entries.pop_front() {
                if let Some(n) = self.ids.get_mut(&old.task_id) {
                    *n -= 1;
                    if *n == 0 {
                        self.ids.remove(&old.task_id);
                    }
                }
            }
        }
        if let Some(mark) = v["mark"].as_str() {
            if let Some(waiter) = self.waiting.remove(mark) {
                self.caught_up = true;
                let _ = waiter.send(());
            }
        }
    }
}

/// The revocation stream as one broker instance sees it.
pub(crate) struct RevocationLog {
    view: Arc<Mutex<View>>,
    follower: tokio::sync::Mutex<Follower>,
}

#[derive(Default)]
struct Follower {
    /// Held while the follower runs; dropping it (with the broker) stops the follower.
    stop: Option<oneshot::Sender<()>>,
    /// When and why the last start failed.
    failed: Option<(Instant, ErrorKind, String)>,
}

impl RevocationLog {
    pub(crate) fn new() -> RevocationLog {
        RevocationLog {
            view: Arc::new(Mutex::new(View::default())),
            follower: tokio::sync::Mutex::new(Follower::default()),
        }
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the follower unless it runs; returns once it consumes the stream (which it
    /// declares first), or the error that kept it from doing so.
    pub(crate) async fn ensure_following(&self, url: &AmqpUrl) -> Result<(), BrokerError> {
        let mut follower = self.follower.lock().await;
        if follower.stop.as_ref().is_some_and(|stop| !stop.is_closed()) {
            return Ok(());
        }
        if let Some((at, kind, message)) = &follower.failed {
            if at.elapsed() < RETRY_START_AFTER {
                return Err(BrokerError::new(*kind, message.clone()));
            }
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(follow(url.clone(), self.view.clone(), stop_rx, ready_tx));
        let err = match ready_rx.await {
            Ok(Ok(())) => {
                follower.stop = Some(stop_tx);
                follower.failed = None;
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => unreachable(url, "the revocation follower stopped"),
        };
        follower.failed = Some((Instant::now(), err.kind(), err.message().to_string()));
        Err(err)
    }

    /// Stops the follower (it closes its connection); a later read starts it again.
    pub(crate) async fn stop_following(&self) {
        self.follower.lock().await.stop.take();
    }

    /// Registers a wait for `mark`; the receiver fires when the follower passes it.
    fn expect(&self, mark: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.view().waiting.insert(mark.to_string(), tx);
        rx
    }

    async fn wait_for(
        &self,
        url: &AmqpUrl,
        mark: &str,
        rx: oneshot::Receiver<()>,
    ) -> Result<(), BrokerError> {
        let outcome = tokio::time::timeout(MARK_WAIT, rx).await;
        self.view().waiting.remove(mark);
        match outcome {
            Ok(Ok(())) => Ok(()),
            _ => Err(unreachable(
                url,
                format!("{REVOCATIONS} did not deliver back a record within {MARK_WAIT:?}"),
            )),
        }
    }

    /// The stream message recording a revoke (Celery's `revoke` cast to running workers is
    /// published by `mailbox.rs`, beside it).
    pub(crate) fn record(task_ids: &[String], terminate: Option<Signal>, mark: &str) -> Outgoing {
        Outgoing {
            exchange: String::new(),
            routing_key: REVOCATIONS.into(),
            declare: Declare::Nothing,
            props: OutProps::Built(json_properties()),
            body: record_body(task_ids, terminate, mark),
        }
    }

    pub(crate) fn contains(&self, task_id: &str) -> bool {
        self.view().ids.contains_key(task_id)
    }

    pub(crate) fn caught_up(&self) -> bool {
        self.view().caught_up
    }

    /// Kept revocations at offsets `>= cursor`, and the cursor after them.
    pub(crate) fn since(&self, cursor: u64) -> (Vec<Revocation>, u64) {
        let view = self.view();
        let out = view
            .entries
            .iter()
            .filter(|(offset, _)| *offset >= cursor)
            .map(|(_, r)| r.clone())
            .collect();
        // Past everything read so far (marks included), never backwards.
        (out, cursor.max(view.resume_at.unwrap_or(0)))
    }

    /// Publishes `out`, whose stream record carries `mark`, and waits until the follower
    /// has read that record back.
    pub(crate) async fn publish_and_wait(
        &self,
        session: &Session,
        out: &[Outgoing],
        mark: &str,
    ) -> Result<(), BrokerError> {
        self.ensure_following(&session.url).await?;
        let rx = self.expect(mark);
        if let Err(e) = session.send(out).await {
            self.view().waiting.remove(mark);
            return Err(e);
        }
        self.wait_for(&session.url, mark, rx).await
    }

    /// Makes the view current: everything recorded before this call has been read.
    pub(crate) async fn sync(&self, session: &Session) -> Result<(), BrokerError> {
        let mark = uuid::Uuid::new_v4().to_string();
        self.publish_and_wait(session, &[mark_message(&mark)], &mark)
            .await
    }
}

fn offset_of(props: &BasicProperties) -> Option<u64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

/// Follows the stream until `stop` fires or is dropped: connects, declares the stream,
/// consumes from where the view left off (the first offset at the start), reconnects with
/// backoff. `ready` gets the outcome of the first attempt.
async fn follow(
    url: AmqpUrl,
    view: Arc<Mutex<View>>,
    mut stop: oneshot::Receiver<()>,
    ready: oneshot::Sender<Result<(), BrokerError>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    loop {
        let resume_at = view.lock().unwrap_or_else(|p| p.into_inner()).resume_at;
        let opened = tokio::select! {
            _ = &mut stop => return,
            opened = open(&url, resume_at) => opened,
        };
        let (conn, ch, mut consumer) = match opened {
            Ok(c) => c,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                if !lost {
                    warn!("{e}; following {REVOCATIONS} again with backoff");
                    lost = true;
                }
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(()));
        }
        if lost {
            info!("following {REVOCATIONS} again");
            lost = false;
        }
        backoff = Duration::from_millis(100);
        let mut unacked = 0u64;
        loop {
            let d = match next_or_stop(&mut consumer, &mut stop, &conn).await {
                Next::Delivery(d) => d,
                Next::Lost => break,
                Next::Stopped => return,
            };
            if let Some(offset) = offset_of(&d.properties) {
                view.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply(offset, &d.data);
            }
            unacked += 1;
            if unacked >= ACK_EVERY {
                unacked = 0;
                if ch
                    .basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        if !lost {
            warn!("lost the connection following {REVOCATIONS}; reconnecting");
            lost = true;
        }
    }
}

async fn open(
    url: &AmqpUrl,
    resume_at: Option<u64>,
) -> Result<(lapin::Connection, lapin::Channel, lapin::Consumer), BrokerError> {
    let conn = connect(url, "celeriac revocations").await?;
    let fail = |e: lapin::Error| {
        if is_refusal(&e) {
            BrokerError::new(
                ErrorKind::InvalidConfig,
                format!(
                    "RabbitMQ at {} refused the revocation stream {REVOCATIONS} (streams need \
                     RabbitMQ 3.9+ with the stream_queue feature flag): {e}",
                    url.place()
                ),
            )
        } else {
            unreachable(url, e)
        }
    };
    let ch = conn.create_channel().await.map_err(fail)?;
    topology::declare_revocation_stream(&ch)
        .await
        .map_err(fail)?;
    ch.basic_qos(PREFETCH, BasicQosOptions { global: false })
        .await
        .map_err(fail)?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        match resume_at {
            Some(n) => AMQPValue::LongLongInt(n as i64),
            None => AMQPValue::LongString(LongString::from("first")),
        },
    );
    let consumer = ch
        .basic_consume(
            REVOCATIONS.into(),
            "celeriac-revocations".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .map_err(fail)?;
    Ok((conn, ch, consumer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_lists_after_cursor_and_wakes_marks() {
        let mut v = View::default();
        let (tx, mut rx) = oneshot::channel();
        v.waiting.insert("m".into(), tx);
        v.apply(3, &record_body(&["a".into(), "b".into()], None, "x"));
        v.apply(4, &record_body(&[], None, "m"));
        v.apply(5, &record_body(&["c".into()], Some(Signal::TERM), "y"));
        assert!(rx.try_recv().is_ok() && v.caught_up);
        assert_eq!(v.resume_at, Some(6));
        assert_eq!(v.ids.len(), 3);
        let log = RevocationLog {
            view: Arc::new(Mutex::new(v)),
            follower: tokio::sync::Mutex::new(Follower::default()),
        };
        let (all, cursor) = log.since(0);
        assert_eq!(all.len(), 3);
        assert_eq!(cursor, 6);
        let (after, next) = log.since(4);
        assert_eq!(
            after
                .iter()
                .map(|r| (r.task_id.as_str(), r.terminate))
                .collect::<Vec<_>>(),
            [("c", true)]
        );
        assert_eq!(next, 6);
        assert!(log.since(6).0.is_empty());
    }
}
