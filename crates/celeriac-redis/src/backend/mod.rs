//! Celery's Redis result backend, byte for byte (protocol §5): task metas as
//! `celery-task-meta-<id>` strings written with SETEX and PUBLISHed on the same name, saved
//! groups as `celery-taskset-meta-<group id>`, and `wait()` over pub/sub as Python's
//! `AsyncResult.get()` does it (SUBSCRIBE, then GET, then wait for a ready state).
//! Chords are joined with Celery 5.7's keys and scripts (`chord.rs`), so Python and celeriac
//! workers complete each other's chords. Every key and script is in `keys.rs`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::backend::ResultBackend;
use celeriac_core::error::{BackendError, BrokerError, ErrorKind};
use celeriac_core::json::{parse_python_json, to_python_json};
use celeriac_core::state::TaskMeta;
use futures_core::Stream;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::beat::RedisBeatStore;
use crate::url::{connect, RedisUrl};

mod chord;
pub(crate) mod keys;

use keys::BackendKeys;

/// Celery's `RedisBackend._MAX_STR_VALUE_SIZE`: Redis refuses strings above 512 MiB.
const MAX_VALUE_SIZE: usize = 536_870_912;

/// After the pub/sub connection drops, a waiter pauses this long before re-subscribing.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(50);

/// Celery's expiry in whole seconds (rounded up); `None` or zero means no TTL (plain SET),
/// as Celery does with `result_expires = None/0`.
fn ttl_secs(expires: Option<Duration>) -> u64 {
    match expires {
        None => 0,
        Some(d) if d.is_zero() => 0,
        Some(d) => d.as_secs() + u64::from(d.subsec_nanos() > 0),
    }
}

fn from_broker_error(e: BrokerError) -> BackendError {
    match std::error::Error::source(&e) {
        Some(src) => BackendError::new(e.kind(), format!("{}: {src}", e.message())),
        None => BackendError::new(e.kind(), e.message().to_string()),
    }
}

fn error_kind(e: &redis::RedisError) -> ErrorKind {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        ErrorKind::Unreachable
    } else {
        ErrorKind::Storage
    }
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.into_owned(),
    }
}

/// The member ids of a saved GroupResult (`result_from_tuple`): `[[id, parent], null]` is a
/// task; `[[id, parent], [children...]]` is a nested group, whose leaf task ids are listed in
/// place (celeriac's group API is flat).
fn collect_ids(node: &Value, out: &mut Vec<String>) -> Option<()> {
    let pair = node.as_array()?;
    let (res, nodes) = (pair.first()?, pair.get(1).unwrap_or(&Value::Null));
    match nodes.as_array() {
        Some(children) if !children.is_empty() => {
            for c in children {
                collect_ids(c, out)?;
            }
        }
        _ => {
            let id = match res {
                Value::String(s) => s.clone(),
                Value::Array(a) => a.first()?.as_str()?.to_string(),
                _ => return None,
            };
            out.push(id);
        }
    }
    Some(())
}

fn group_member_ids(v: &Value) -> Option<Vec<String>> {
    let tuple = v.as_object()?.get("result")?.as_array()?;
    let children = tuple.get(1)?.as_array()?;
    let mut out = Vec::with_capacity(children.len());
    for c in children {
        collect_ids(c, &mut out)?;
    }
    Some(out)
}

/// Celery's Redis result backend. Cheap to share (`Arc`); one command connection
/// (self-reconnecting) and at most one pub/sub connection, opened on the first `wait()` and
/// shared by every concurrent waiter.
pub struct RedisBackend {
    display: String,
    conn: ConnectionManager,
    keys: BackendKeys,
    store_script: redis::Script,
    part_script: redis::Script,
    cleanup_script: redis::Script,
    hub: Arc<Hub>,
    /// Beat's lease and last runs, on the command connection.
    beat: RedisBeatStore,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.display)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Parses `redis://` / `rediss://` (with `?global_keyprefix=`) and connects. Errors name
    /// the server (`host:port/db`), never the password.
    pub async fn open(url: &str) -> Result<Arc<RedisBackend>, BackendError> {
        let parsed = RedisUrl::parse(url).map_err(from_broker_error)?;
        let conn = connect(&parsed).await.map_err(from_broker_error)?;
        let client = parsed
            .connection_info()
            .and_then(redis::Client::open)
            .map_err(|e| {
                BackendError::with_source(
                    ErrorKind::InvalidConfig,
                    format!("cannot use {}", parsed.display()),
                    e,
                )
            })?;
        let display = parsed.display();
        Ok(Arc::new(RedisBackend {
            beat: RedisBeatStore::on_backend(&parsed, conn.clone()),
            keys: BackendKeys::new(&parsed.global_keyprefix),
            conn,
            store_script: redis::Script::new(keys::STORE_RESULT),
            part_script: redis::Script::new(keys::CHORD_PART_RETURN),
            cleanup_script: redis::Script::new(keys::CHORD_CLEANUP),
            hub: Arc::new(Hub {
                client,
                display: display.clone(),
                live: tokio::sync::Mutex::new(None),
                shared: Arc::new(Mutex::new(Shared::default())),
                next_waiter: AtomicU64::new(0),
            }),
            display,
        }))
    }

    fn err(&self, what: &str, key: &str, e: redis::RedisError) -> BackendError {
        BackendError::with_source(
            error_kind(&e),
            format!("{what} {key} on {}", self.display),
            e,
        )
    }

    async fn read_meta(&self, key: &str) -> Result<Option<TaskMeta>, BackendError> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err("GET", key, e))?;
        match raw {
            None => Ok(None),
            Some(bytes) => self.decode_meta(key, &bytes).map(Some),
        }
    }

    fn decode_meta(&self, key: &str, bytes: &[u8]) -> Result<TaskMeta, BackendError> {
        TaskMeta::from_json(bytes).ok_or_else(|| {
            BackendError::new(
                ErrorKind::Protocol,
                format!(
                    "{key} on {} is not a Celery task meta: {}",
                    self.display,
                    snippet(bytes)
                ),
            )
        })
    }

    /// SUBSCRIBE (via the shared connection), giving up at `deadline` (`None`).
    async fn subscribe_until(
        &self,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Subscription>, BackendError> {
        match tokio::time::timeout_at(deadline, Hub::subscribe(&self.hub, key)).await {
            Ok(sub) => sub.map(Some),
            Err(_) => Ok(None),
        }
    }

    fn decode_published(&self, key: &str, payload: &[u8]) -> Option<TaskMeta> {
        let meta = TaskMeta::from_json(payload);
        if meta.is_none() {
            tracing::warn!(
                channel = key,
                payload = %snippet(payload),
                "ignoring a message on a result channel that is not a task meta"
            );
        }
        meta
    }
}

#[async_trait]
impl ResultBackend for RedisBackend {
    fn display_url(&self) -> String {
        self.display.clone()
    }

    fn chords(&self) -> Option<&dyn celeriac_core::backend::ChordJoin> {
        Some(self)
    }

    /// Keyed as the broker's (see `keys.rs`), so a Redis broker and backend on one server
    /// share the lease.
    fn beat_store(&self) -> Option<&dyn celeriac_core::beat::BeatStore> {
        Some(&self.beat)
    }

    async fn store(&self, meta: &TaskMeta, expires: Option<Duration>) -> Result<(), BackendError> {
        let key = self.keys.task(&meta.task_id);
        let text = meta.to_json();
        if text.len() > MAX_VALUE_SIZE {
            return Err(BackendError::new(
                ErrorKind::Storage,
                format!(
                    "{key}: value too large for Redis backend ({} bytes)",
                    text.len()
                ),
            ));
        }
        let written: i64 = self
            .store_script
            .key(&key)
            .arg(&text)
            .arg(ttl_secs(expires))
            .arg(&key)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err("store result in", &key, e))?;
        if written == 0 {
            tracing::debug!(
                task_id = %meta.task_id,
                status = %meta.status,
                "kept the stored SUCCESS; later state not written"
            );
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        self.read_meta(&self.keys.task(task_id)).await
    }

    /// One MGET per 1000 ids.
    async fn get_many(&self, task_ids: &[String]) -> Result<Vec<Option<TaskMeta>>, BackendError> {
        let mut metas = Vec::with_capacity(task_ids.len());
        for ids in task_ids.chunks(1000) {
            let keys: Vec<String> = ids.iter().map(|id| self.keys.task(id)).collect();
            let raw: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| self.err("MGET", &keys[0], e))?;
            for (key, bytes) in keys.iter().zip(raw) {
                metas.push(match bytes {
                    None => None,
                    Some(bytes) => Some(self.decode_meta(key, &bytes)?),
                });
            }
        }
        Ok(metas)
    }

    /// SUBSCRIBEs to the task's channel (shared pub/sub connection), then GETs the key (a
    /// result stored before the subscription), then waits for a PUBLISHed ready state or the
    /// deadline. After a lost pub/sub connection it re-subscribes and GETs again.
    async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        if timeout.is_zero() {
            return self.get(task_id).await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let key = self.keys.task(task_id);
        let Some(mut sub) = self.subscribe_until(&key, deadline).await? else {
            return self.read_meta(&key).await;
        };
        let mut meta = self.read_meta(&key).await?;
        loop {
            if meta.as_ref().is_some_and(|m| m.status.is_ready()) {
                return Ok(meta);
            }
            tokio::select! {
                msg = sub.rx.recv() => match msg {
                    Some(payload) => {
                        if let Some(m) = self.decode_published(&key, &payload) {
                            meta = Some(m);
                        }
                    }
                    None => {
                        drop(sub);
                        tokio::time::sleep_until(
                            deadline.min(tokio::time::Instant::now() + RESUBSCRIBE_PAUSE),
                        )
                        .await;
                        if tokio::time::Instant::now() >= deadline {
                            return self.read_meta(&key).await;
                        }
                        match self.subscribe_until(&key, deadline).await? {
                            Some(again) => sub = again,
                            None => return self.read_meta(&key).await,
                        }
                        meta = self.read_meta(&key).await?;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(meta),
            }
        }
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let key = self.keys.task(task_id);
        redis::cmd("DEL")
            .arg(&key)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| self.err("DEL", &key, e))
    }

    /// `GroupResult.save()`: `{"result": [[<group id>, null], [[[<id>, null], null], ...]]}`
    /// in Python's `json.dumps` form, SETEX (or SET) and PUBLISH in one MULTI/EXEC.
    async fn save_group(
        &self,
        group_id: &str,
        task_ids: &[String],
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        let key = self.keys.group(group_id);
        let children: Vec<Value> = task_ids
            .iter()
            .map(|id| json!([[id, null], null]))
            .collect();
        let text = to_python_json(&json!({"result": [[group_id, null], children]}));
        let mut pipe = redis::pipe();
        pipe.atomic();
        match ttl_secs(expires) {
            0 => pipe.cmd("SET").arg(&key).arg(&text).ignore(),
            ttl => pipe.cmd("SETEX").arg(&key).arg(ttl).arg(&text).ignore(),
        };
        pipe.cmd("PUBLISH").arg(&key).arg(&text).ignore();
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| self.err("save group", &key, e))
    }

    /// The member task ids of a saved group (leaves in order when members are groups).
    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        let key = self.keys.group(group_id);
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err("GET", &key, e))?;
        let Some(bytes) = raw else {
            return Ok(None);
        };
        parse_python_json(&bytes)
            .ok()
            .as_ref()
            .and_then(group_member_ids)
            .map(Some)
            .ok_or_else(|| {
                BackendError::new(
                    ErrorKind::Protocol,
                    format!(
                        "{key} on {} is not a saved Celery GroupResult: {}",
                        self.display,
                        snippet(&bytes)
                    ),
                )
            })
    }
}

// ---------------------------------------------------------------------------------------------
// The shared pub/sub connection
// ---------------------------------------------------------------------------------------------

/// One pub/sub connection shared by all waiters of a backend. A dispatcher task reads the
/// connection and hands each message to the waiters of its channel. SUBSCRIBE and
/// UNSUBSCRIBE are sent only while holding `live`, so their order on the wire matches the
/// order of the registry changes (a channel is subscribed while it has a waiter).
struct Hub {
    client: redis::Client,
    display: String,
    live: tokio::sync::Mutex<Option<Live>>,
    shared: Arc<Mutex<Shared>>,
    next_waiter: AtomicU64,
}

struct Live {
    sink: PubSubSink,
    generation: u64,
    /// Dropping this stops the dispatcher, which closes the connection.
    _stop: oneshot::Sender<()>,
}

type Waiters = Vec<(u64, mpsc::UnboundedSender<Vec<u8>>)>;

#[derive(Default)]
struct Shared {
    /// The connection the registry belongs to; `alive` is cleared when it drops.
    generation: u64,
    alive: bool,
    channels: HashMap<String, Waiters>,
}

/// One waiter's registration; dropping it unregisters (and unsubscribes when it was the last
/// waiter of its channel).
struct Subscription {
    hub: Arc<Hub>,
    channel: String,
    id: u64,
    generation: u64,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let emptied = {
            let mut shared = self.hub.shared.lock().unwrap_or_else(|p| p.into_inner());
            if shared.generation != self.generation {
                return;
            }
            match shared.channels.get_mut(&self.channel) {
                Some(waiters) => {
                    waiters.retain(|(id, _)| *id != self.id);
                    if waiters.is_empty() {
                        shared.channels.remove(&self.channel);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if !emptied {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hub = self.hub.clone();
        let channel = std::mem::take(&mut self.channel);
        let generation = self.generation;
        rt.spawn(async move {
            let mut live = hub.live.lock().await;
            let Some(l) = live.as_mut().filter(|l| l.generation == generation) else {
                return;
            };
            let still_unused = {
                let shared = hub.shared.lock().unwrap_or_else(|p| p.into_inner());
                shared.generation == generation && !shared.channels.contains_key(&channel)
            };
            if still_unused {
                if let Err(e) = l.sink.unsubscribe(&channel).await {
                    tracing::debug!(%channel, error = %e, "UNSUBSCRIBE failed");
                }
            }
        });
    }
}

impl Hub {
    /// Registers a waiter for `channel` and makes sure the channel is SUBSCRIBEd (confirmed by
    /// the server) before returning, opening the pub/sub connection if needed.
    async fn subscribe(hub: &Arc<Hub>, channel: &str) -> Result<Subscription, BackendError> {
        let mut live = hub.live.lock().await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let usable = live.as_ref().is_some_and(|l| {
                let shared = hub.shared.lock().unwrap_or_else(|p| p.into_inner());
                shared.alive && shared.generation == l.generation
            });
            if !usable {
                *live = None;
                *live = Some(hub.connect().await?);
            }
            let l = live.as_mut().expect("connected above");
            let (tx, rx) = mpsc::unbounded_channel();
            let id = hub.next_waiter.fetch_add(1, Ordering::Relaxed);
            let newly_needed = {
                let mut shared = hub.shared.lock().unwrap_or_else(|p| p.into_inner());
                if !(shared.alive && shared.generation == l.generation) {
                    continue;
                }
                let waiters = shared.channels.entry(channel.to_string()).or_default();
                waiters.push((id, tx));
                waiters.len() == 1
            };
            let subscribed = if newly_needed {
                l.sink.subscribe(channel).await
            } else {
                Ok(())
            };
            match subscribed {
                Ok(()) => {
                    return Ok(Subscription {
                        hub: hub.clone(),
                        channel: channel.to_string(),
                        id,
                        generation: l.generation,
                        rx,
                    })
                }
                Err(e) => {
                    // The connection is gone: forget its registry (every waiter of it sees
                    // its channel close and re-subscribes), then retry once on a new one.
                    let generation = l.generation;
                    *live = None;
                    let mut shared = hub.shared.lock().unwrap_or_else(|p| p.into_inner());
                    if shared.generation == generation {
                        shared.alive = false;
                        shared.channels.clear();
                    }
                    drop(shared);
                    if attempts >= 2 {
                        return Err(BackendError::with_source(
                            error_kind(&e),
                            format!("SUBSCRIBE {channel} on {}", hub.display),
                            e,
                        ));
                    }
                }
            }
        }
    }

    async fn connect(self: &Arc<Hub>) -> Result<Live, BackendError> {
        let pubsub = self.client.get_async_pubsub().await.map_err(|e| {
            BackendError::with_source(
                error_kind(&e),
                format!("cannot open a pub/sub connection to {}", self.display),
                e,
            )
        })?;
        let (sink, stream) = pubsub.split();
        let (stop_tx, stop_rx) = oneshot::channel();
        let generation = {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            shared.generation += 1;
            shared.alive = true;
            shared.channels.clear();
            shared.generation
        };
        tokio::spawn(dispatch(stream, stop_rx, self.shared.clone(), generation));
        Ok(Live {
            sink,
            generation,
            _stop: stop_tx,
        })
    }
}

async fn next_message(stream: &mut PubSubStream) -> Option<redis::Msg> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Hands each message to the waiters of its channel until the connection drops or the
/// backend is dropped; on a drop, clears the registry so every waiter re-subscribes.
async fn dispatch(
    mut stream: PubSubStream,
    mut stop: oneshot::Receiver<()>,
    shared: Arc<Mutex<Shared>>,
    generation: u64,
) {
    loop {
        let next = tokio::select! {
            m = next_message(&mut stream) => m,
            _ = &mut stop => break,
        };
        let Some(msg) = next else {
            break;
        };
        let shared = shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiters) = shared.channels.get(msg.get_channel_name()) {
            for (_, tx) in waiters {
                let _ = tx.send(msg.get_payload_bytes().to_vec());
            }
        }
    }
    let mut shared = shared.lock().unwrap_or_else(|p| p.into_inner());
    if shared.generation == generation {
        shared.alive = false;
        shared.channels.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::keys::{backend_prefix, BackendKeys};
    use super::*;

    #[test]
    fn global_keyprefix_follows_celerys_backend_rule() {
        for (given, used) in [
            ("", ""),
            ("x", "x_"),
            ("app:", "app:"),
            ("app_", "app_"),
            ("app-", "app-"),
            ("app.", "app."),
            ("app/", "app/_"),
        ] {
            assert_eq!(backend_prefix(given), used, "{given:?}");
        }
        let k = BackendKeys::new("x");
        assert_eq!(k.task("t1"), "x_celery-task-meta-t1");
        assert_eq!(k.group("g1"), "x_celery-taskset-meta-g1");
        assert_eq!(BackendKeys::new("").task("t1"), "celery-task-meta-t1");
    }

    #[test]
    fn ttl_is_whole_seconds_rounded_up_and_zero_means_none() {
        assert_eq!(ttl_secs(None), 0);
        assert_eq!(ttl_secs(Some(Duration::ZERO)), 0);
        assert_eq!(ttl_secs(Some(Duration::from_secs(86400))), 86400);
        assert_eq!(ttl_secs(Some(Duration::from_millis(1500))), 2);
        assert_eq!(ttl_secs(Some(Duration::from_millis(1))), 1);
    }

    #[test]
    fn group_ids_from_python_tuples() {
        let flat = json!({"result": [["g", null], [[["a", null], null], [["b", null], null]]]});
        assert_eq!(group_member_ids(&flat).unwrap(), ["a", "b"]);
        let nested = json!({"result": [["g", null], [
            [["a", null], null],
            [["g2", null], [[["c", null], null], [["d", ["c", null]], null]]],
        ]]});
        assert_eq!(group_member_ids(&nested).unwrap(), ["a", "c", "d"]);
        assert!(group_member_ids(&json!({"result": 3})).is_none());
        assert!(group_member_ids(&json!([1])).is_none());
    }
}
