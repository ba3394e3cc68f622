//! `rpc://`: Celery's RPC result backend. A worker publishes each state of a task as a message
//! to the default exchange with the task message's `reply_to` as routing key and its
//! `correlation_id` (the task id); the body is Celery's result meta with `task_id`. The
//! process that sent the task consumes its reply queue, named after its app's oid and declared
//! as Celery declares it (durable, auto-delete, `x-expires` = `result_expires`), before its
//! first task goes out.
//!
//! The limits are Celery's: a result reaches only the process that sent the task, held in
//! its memory; it is gone when that process restarts, and results published while its
//! listener was disconnected are lost with the auto-delete queue. Another process asking for
//! a result gets an error saying so, never an endless wait. No groups or chords.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use tokio::sync::{oneshot, Notify};
use tracing::{debug, info, warn};

use celeriac_core::backend::ReplyTo;
use celeriac_core::state::TaskMeta;
use celeriac_core::{BackendError, BrokerError, ErrorKind, ResultBackend};

use crate::session::{connect, next_or_stop, Declare, Next, OutProps, Outgoing, Session};
use crate::url::AmqpUrl;

/// Results kept in memory per process; the oldest ready ones go first past this.
const KEPT: usize = 100_000;

/// Celery's RPC backend on a broker's connection (see the module docs).
pub struct RpcBackend {
    session: Arc<Session>,
    reply_queue: String,
    queue_expires: Option<Duration>,
    replies: Arc<Mutex<Replies>>,
    arrived: Arc<Notify>,
    /// Held while the listener runs; dropping it stops the listener.
    listener: tokio::sync::Mutex<Option<oneshot::Sender<()>>>,
}

/// What this process sent and what came back for it.
#[derive(Default)]
struct Replies {
    /// Ids sent from here, newest last (bounded like `results`).
    sent: HashSet<String>,
    sent_order: VecDeque<String>,
    results: HashMap<String, TaskMeta>,
    ready_order: VecDeque<String>,
}

impl Replies {
    fn note_sent(&mut self, id: &str) {
        if self.sent.insert(id.to_string()) {
            self.sent_order.push_back(id.to_string());
        }
        while self.sent_order.len() > KEPT {
            if let Some(old) = self.sent_order.pop_front() {
                self.sent.remove(&old);
                self.results.remove(&old);
            }
        }
    }

    /// A state that arrived: a ready state is final (later ones for the id are stale).
    fn arrive(&mut self, meta: TaskMeta) {
        if let Some(old) = self.results.get(&meta.task_id) {
            if old.status.is_ready() {
                return;
            }
        }
        if meta.status.is_ready() {
            self.ready_order.push_back(meta.task_id.clone());
        }
        self.sent.insert(meta.task_id.clone());
        self.results.insert(meta.task_id.clone(), meta);
        while self.ready_order.len() > KEPT {
            if let Some(old) = self.ready_order.pop_front() {
                self.results.remove(&old);
            }
        }
    }
}

fn not_sent_here(task_id: &str) -> BackendError {
    BackendError::new(
        ErrorKind::Unsupported,
        format!(
            "task {task_id} was not sent by this process: the rpc:// result backend delivers \
             results only to the process that sent the task (its reply queue), and not across \
             a restart of that process; use a result backend that stores results (redis://, \
             sqlite://) to read them from elsewhere"
        ),
    )
}

fn backend_err(e: BrokerError) -> BackendError {
    BackendError::new(e.kind(), format!("rpc:// {}", e.message()))
}

impl RpcBackend {
    pub(crate) fn new(
        session: Arc<Session>,
        reply_queue: String,
        queue_expires: Option<Duration>,
    ) -> RpcBackend {
        RpcBackend {
            session,
            reply_queue,
            queue_expires,
            replies: Arc::default(),
            arrived: Arc::new(Notify::new()),
            listener: tokio::sync::Mutex::new(None),
        }
    }

    /// The queue this process's results arrive on (the `reply_to` of the tasks it sends).
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    fn replies(&self) -> MutexGuard<'_, Replies> {
        self.replies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the listener unless it runs: returns once the reply queue is declared and
    /// consumed, so results of tasks sent afterwards cannot miss it.
    async fn ensure_listening(&self) -> Result<(), BrokerError> {
        let mut listener = self.listener.lock().await;
        if listener.as_ref().is_some_and(|stop| !stop.is_closed()) {
            return Ok(());
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let reply = ReplyQueue {
            url: self.session.url.clone(),
            name: self.reply_queue.clone(),
            expires: self.queue_expires,
        };
        tokio::spawn(listen(
            reply,
            self.replies.clone(),
            self.arrived.clone(),
            stop_rx,
            ready_tx,
        ));
        match ready_rx.await {
            Ok(Ok(())) => {
                *listener = Some(stop_tx);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BrokerError::new(
                ErrorKind::Unreachable,
                "the rpc:// result listener stopped",
            )),
        }
    }

    /// The meta for an id, or why there is none to wait for.
    fn lookup(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        let replies = self.replies();
        match replies.results.get(task_id) {
            Some(meta) => Ok(Some(meta.clone())),
            None if replies.sent.contains(task_id) => Ok(None),
            None => Err(not_sent_here(task_id)),
        }
    }
}

/// Celery's result message for one state.
fn result_message(meta: &TaskMeta, reply_to: ReplyTo<'_>) -> Outgoing {
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_correlation_id(ShortString::from(reply_to.correlation_id))
        .with_delivery_mode(1)
        .with_priority(0)
        .with_headers(FieldTable::default());
    Outgoing {
        exchange: String::new(),
        routing_key: reply_to.queue.to_string(),
        declare: Declare::Nothing,
        props: OutProps::Built(props),
        body: meta.to_json().into_bytes(),
    }
}

#[async_trait]
impl ResultBackend for RpcBackend {
    fn display_url(&self) -> String {
        "rpc://".into()
    }

    async fn store(&self, meta: &TaskMeta, _: Option<Duration>) -> Result<(), BackendError> {
        // Without the sender's reply queue a result has nowhere to go (as in Celery).
        debug!(task_id = %meta.task_id, "rpc://: no reply_to, {} not sent", meta.status);
        Ok(())
    }

    async fn store_reply(
        &self,
        meta: &TaskMeta,
        _: Option<Duration>,
        reply_to: Option<ReplyTo<'_>>,
    ) -> Result<(), BackendError> {
        let Some(reply_to) = reply_to.filter(|r| !r.queue.is_empty()) else {
            return self.store(meta, None).await;
        };
        let out = result_message(meta, reply_to);
        self.session
            .send(std::slice::from_ref(&out))
            .await
            .map_err(backend_err)
    }

    fn keeps_results(&self) -> bool {
        false
    }

    async fn before_send(&self, task_ids: &[String]) -> Result<(), BackendError> {
        self.ensure_listening().await.map_err(backend_err)?;
        let mut replies = self.replies();
        for id in task_ids {
            replies.note_sent(id);
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        self.lookup(task_id)
    }

    async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the lookup, so an arrival in between is not missed.
            let arrived = self.arrived.notified();
            let meta = self.lookup(task_id)?;
            if meta.as_ref().is_some_and(|m| m.status.is_ready()) {
                return Ok(meta);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(meta);
            }
        }
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        self.replies().results.remove(task_id);
        Ok(())
    }

    async fn save_group(
        &self,
        _: &str,
        _: &[String],
        _: Option<Duration>,
    ) -> Result<(), BackendError> {
        Err(BackendError::new(
            ErrorKind::Unsupported,
            "the rpc:// result backend does not support groups (use redis:// or sqlite://)",
        ))
    }

    async fn restore_group(&self, _: &str) -> Result<Option<Vec<String>>, BackendError> {
        Err(BackendError::new(
            ErrorKind::Unsupported,
            "the rpc:// result backend does not support groups (use redis:// or sqlite://)",
        ))
    }

    async fn close(&self) -> Result<(), BackendError> {
        self.listener.lock().await.take();
        Ok(())
    }
}

/// The reply queue as the listener declares it.
struct ReplyQueue {
    url: AmqpUrl,
    name: String,
    expires: Option<Duration>,
}

impl ReplyQueue {
    /// Connects, declares the queue as Celery's `RPCBackend.binding` does, and consumes it
    /// with no acks (as Celery's result consumer).
    async fn open(&self) -> Result<(lapin::Connection, lapin::Consumer), BrokerError> {
        let conn = connect(&self.url, "celeriac rpc results").await?;
        let fail = |e: lapin::Error| crate::session::unreachable(&self.url, e);
        let ch = conn.create_channel().await.map_err(fail)?;
        let mut args = FieldTable::default();
        if let Some(expires) = self.expires {
            let ms = expires.as_millis().clamp(1, i32::MAX as u128) as i32;
            args.insert("x-expires".into(), AMQPValue::LongInt(ms));
        }
        ch.queue_declare(
            self.name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(fail)?;
        let consumer = ch
            .basic_consume(
                self.name.as_str().into(),
                format!("celeriac-rpc-{}", self.name).into(),
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
}

/// Consumes the reply queue until `stop` fires or is dropped, reconnecting with backoff;
/// `ready` gets the outcome of the first attempt.
async fn listen(
    queue: ReplyQueue,
    replies: Arc<Mutex<Replies>>,
    arrived: Arc<Notify>,
    mut stop: oneshot::Receiver<()>,
    ready: oneshot::Sender<Result<(), BrokerError>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        let opened = tokio::select! {
            _ = &mut stop => return,
            opened = queue.open() => opened,
        };
        let (conn, mut consumer) = match opened {
            Ok(c) => c,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                warn!("rpc:// results: {e}; reconnecting in {backoff:?}");
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
        } else {
            info!("rpc:// results: listening on {} again", queue.name);
        }
        backoff = Duration::from_millis(100);
        loop {
            let d = match next_or_stop(&mut consumer, &mut stop, &conn).await {
                Next::Delivery(d) => d,
                Next::Lost => break,
                Next::Stopped => return,
            };
            accept(&replies, &arrived, &d.properties, &d.data);
        }
        warn!(
            "rpc:// results: lost the connection of {}; results sent meanwhile are lost",
            queue.name
        );
    }
}

fn accept(replies: &Mutex<Replies>, arrived: &Notify, props: &BasicProperties, body: &[u8]) {
    let Some(mut meta) = TaskMeta::from_json(body) else {
        warn!("rpc:// results: ignoring a message that is not a result meta");
        return;
    };
    if meta.task_id.is_empty() {
        match props.correlation_id() {
            Some(id) => meta.task_id = id.to_string(),
            None => return,
        }
    }
    replies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .arrive(meta);
    arrived.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_core::state::TaskState;

    fn meta(id: &str, status: TaskState) -> TaskMeta {
        let mut m = TaskMeta::pending(id.to_string());
        m.status = status;
        m
    }

    #[test]
    fn a_ready_state_is_final_and_unknown_ids_are_not_waited_for() {
        let mut r = Replies::default();
        r.note_sent("a");
        r.arrive(meta("a", TaskState::Success));
        r.arrive(meta("a", TaskState::Retry));
        assert_eq!(r.results["a"].status, TaskState::Success);
        assert!(r.sent.contains("a"));
        assert!(!r.sent.contains("b"));
    }
}
