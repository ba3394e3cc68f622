//! kombu-compatible Redis broker: the exact layout of kombu 5.7's Redis transport, so Python
//! Celery and celeriac processes share queues (see `keys.rs` for every key and script, and
//! `docs/redis.md` for the design).
//!
//! - Publish: LPUSH a kombu envelope onto the queue's priority list.
//! - Fetch: one Lua script promotes due parked ETA messages, pops up to N messages in kombu's
//!   order and records them in `unacked` / `unacked_index`; when nothing is there, BRPOP on a
//!   dedicated connection (then record, as kombu does). The pop runs in a spawned task whose
//!   results land in a consumer-local buffer, so dropping `fetch` loses nothing.
//! - ETA messages popped before they are due are parked in `celeriac.delayed.<queue>` (a zset
//!   scored by due time) instead of occupying a prefetch slot or an `unacked` entry.
//! - Acks: one MULTI of ZREM/HDEL. Restores (requeue, close, visibility-timeout sweep) RPUSH
//!   with kombu's `redelivered` flags, compare-and-move in one script.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use celeriac_core::broker::{
    Broker, Consumer, ConsumerSpec, DeadLetter, DeadLetters, Delivery, DeliveryTag, Publish, Purge,
    QueueLength, QueueSet, QueueStats, RawMessage, Revocation, Revocations, Signal,
};
use celeriac_core::control::{revoke_broadcast, BROADCAST_TTL_SECONDS};
use celeriac_core::json::to_python_json;
use celeriac_core::time::{from_millis, parse_iso};
use celeriac_core::{BrokerError, ErrorKind};
use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult, Script};
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::beat::RedisBeatStore;
use crate::keys::{self, Keys};

#[path = "events.rs"]
mod events;
#[path = "mailbox.rs"]
mod mailbox;
use crate::url::RedisUrl;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Exchanges whose bindings are not task queues (fanout / reply plumbing).
const NON_TASK_EXCHANGES: [&str; 3] = ["celery.pidbox", "reply.celery.pidbox", "celeryev"];

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// kombu's unacked_index score: unix time in seconds as a float.
fn now_score() -> String {
    let t = Utc::now();
    format!("{}.{:06}", t.timestamp(), t.timestamp_subsec_micros())
}

pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

// ----------------------------------------------------------------------------------------
// Connections
// ----------------------------------------------------------------------------------------

/// Reachability of the server, shared by every connection of one broker: one log line when
/// it goes away, one when it is back.
struct Health {
    display: String,
    down: AtomicBool,
}

impl Health {
    fn down(&self, e: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::SeqCst) {
            error!(
                "Redis broker {} unreachable ({e}); reconnecting with backoff",
                self.display
            );
        }
    }
    fn up(&self) {
        if self.down.swap(false, Ordering::SeqCst) {
            info!(
                "Redis broker {} reachable again; consuming resumes",
                self.display
            );
        }
    }
}

#[derive(Default)]
struct LinkState {
    conn: Option<(MultiplexedConnection, u64)>,
    generation: u64,
    failures: u32,
    retry_at: Option<Instant>,
}

/// One named connection that reconnects (with exponential backoff) after it broke.
pub(crate) struct Link {
    client: redis::Client,
    name: String,
    response_timeout: Option<Duration>,
    health: Arc<Health>,
    state: tokio::sync::Mutex<LinkState>,
}

impl Link {
    fn new(
        client: redis::Client,
        name: String,
        response_timeout: Option<Duration>,
        health: Arc<Health>,
    ) -> Link {
        Link {
            client,
            name,
            response_timeout,
            health,
            state: Default::default(),
        }
    }

    fn unreachable(&self, e: &dyn std::fmt::Display) -> BrokerError {
        BrokerError::new(
            ErrorKind::Unreachable,
            format!("Redis at {} unreachable: {e}", self.health.display),
        )
    }

    async fn conn(&self) -> Result<(MultiplexedConnection, u64), BrokerError> {
        let mut st = self.state.lock().await;
        if let Some(c) = &st.conn {
            return Ok(c.clone());
        }
        if let Some(at) = st.retry_at {
            if Instant::now() < at {
                return Err(self.unreachable(&"reconnecting after a failure"));
            }
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(self.response_timeout);
        let connected = async {
            let mut c = self
                .client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&self.name)
                .query_async::<()>(&mut c)
                .await?;
            Ok::<_, RedisError>(c)
        }
        .await;
        match connected {
            Ok(c) => {
                st.generation += 1;
                st.conn = Some((c.clone(), st.generation));
                st.failures = 0;
                st.retry_at = None;
                self.health.up();
                Ok((c, st.generation))
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let backoff = Duration::from_millis(100u64 << st.failures.min(6)).min(
                    Duration::from_secs(5), // 200 ms, 400 ms, ... 5 s
                );
                st.retry_at = Some(Instant::now() + backoff);
                self.health.down(&e);
                Err(self.unreachable(&e))
            }
        }
    }

    /// After an error: drop the connection when the error says it broke.
    async fn failed(&self, generation: u64, e: &RedisError) {
        if is_connection_error(e) {
            let mut st = self.state.lock().await;
            if st.conn.as_ref().is_some_and(|(_, g)| *g == generation) {
                st.conn = None;
                self.health.down(e);
            }
        }
    }

    /// Sends `pipe` (each attempt sends a fresh copy); retries as [`Self::run`].
    async fn pipe<T: redis::FromRedisValue>(
        &self,
        what: &str,
        retry: bool,
        pipe: &redis::Pipeline,
    ) -> Result<T, BrokerError> {
        self.run(what, retry, |mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async(&mut c).await }
        })
        .await
    }

    /// Sends one command (a fresh copy per attempt); retries as [`Self::run`].
    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        retry: bool,
        cmd: &redis::Cmd,
    ) -> Result<T, BrokerError> {
        self.run(what, retry, |mut c| {
            let cmd = cmd.clone();
            async move { cmd.query_async(&mut c).await }
        })
        .await
    }

    /// Runs `op` on the connection; `retry`: once more on a fresh connection when the
    /// connection broke (for idempotent operations, and publishes, as kombu retries them).
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: &str,
        retry: bool,
        mut op: F,
    ) -> Result<T, BrokerError>
    where
        F: FnMut(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (c, generation) = self.conn().await.map_err(|e| with_what(what, e))?;
            match op(c).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    self.failed(generation, &e).await;
                    if is_connection_error(&e) {
                        if retry && attempt < 2 {
                            continue;
                        }
                        return Err(with_what(what, self.unreachable(&e)));
                    }
                    return Err(BrokerError::with_source(
                        ErrorKind::Storage,
                        format!("{what} on Redis at {}", self.health.display),
                        e,
                    ));
                }
            }
        }
    }
}

fn with_what(what: &str, e: BrokerError) -> BrokerError {
    BrokerError::new(e.kind(), format!("{what}: {}", e.message()))
}

fn protocol(msg: impl Into<String>) -> BrokerError {
    BrokerError::new(ErrorKind::Protocol, msg)
}

// ----------------------------------------------------------------------------------------
// Envelopes
// ----------------------------------------------------------------------------------------

/// celeriac priority (9 most urgent, `None` = wire default) → kombu wire priority (0 first).
fn wire_priority(p: Option<u8>) -> u8 {
    match p {
        None => 0,
        Some(p) => 9 - p.min(9),
    }
}

fn wire_priority_of(env: &Value) -> u8 {
    env.get("properties")
        .and_then(|p| p.get("priority"))
        .and_then(Value::as_f64)
        .map(|p| p.clamp(0.0, 9.0) as u8)
        .unwrap_or(0)
}

/// The kombu envelope for `m` (key order as kombu writes it, vector 01).
fn envelope(m: &RawMessage, queue: &str, wire: u8) -> String {
    let mut props = Map::with_capacity(m.properties.len() + 4);
    for (k, v) in &m.properties {
        if !matches!(
            k.as_str(),
            "priority" | "delivery_info" | "body_encoding" | "delivery_tag"
        ) {
            props.insert(k.clone(), v.clone());
        }
    }
    props.insert(
        "delivery_info".into(),
        json!({"exchange": "", "routing_key": queue}),
    );
    props.insert("priority".into(), json!(wire));
    props.insert("body_encoding".into(), json!("base64"));
    props.insert(
        "delivery_tag".into(),
        json!(uuid::Uuid::new_v4().to_string()),
    );
    let mut env = Map::with_capacity(5);
    env.insert("body".into(), json!(B64.encode(&m.body)));
    env.insert("content-encoding".into(), json!(m.content_encoding));
    env.insert("content-type".into(), json!(m.content_type));
    env.insert("headers".into(), Value::Object(m.headers.clone()));
    env.insert("properties".into(), Value::Object(props));
    to_python_json(&Value::Object(env))
}

struct Decoded {
    message: RawMessage,
    redelivered: bool,
    eta_ms: Option<i64>,
}

/// A kombu envelope → what the worker gets (priority converted back to celeriac's order).
fn decode_envelope(env: &str) -> Result<Decoded, String> {
    let v: Value = serde_json::from_str(env).map_err(|e| format!("envelope is not JSON: {e}"))?;
    decode_envelope_value(v)
}

fn decode_envelope_value(v: Value) -> Result<Decoded, String> {
    let Value::Object(mut env) = v else {
        return Err("envelope is not a JSON object".into());
    };
    let mut props = match env.remove("properties") {
        Some(Value::Object(p)) => p,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err("envelope properties are not an object".into()),
    };
    let mut headers = match env.remove("headers") {
        Some(Value::Object(h)) => h,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err("envelope headers are not an object".into()),
    };
    let encoding = props.remove("body_encoding");
    let body = match env.remove("body") {
        Some(Value::String(s)) => match encoding.as_ref().and_then(Value::as_str) {
            Some("base64") => B64
                .decode(s.trim())
                .map_err(|e| format!("body is not valid base64: {e}"))?,
            _ => s.into_bytes(),
        },
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err("envelope body is not a string".into()),
    };
    props.remove("delivery_tag");
    let info = props.remove("delivery_info");
    // kombu's restore marks `headers.redelivered`; celeriac reports it as
    // `Delivery::redelivered` and hands out the headers as they were published.
    let redelivered = headers.remove("redelivered").and_then(|v| v.as_bool()) == Some(true)
        || info
            .as_ref()
            .and_then(|i| i.get("redelivered"))
            .and_then(Value::as_bool)
            == Some(true);
    let wire = props
        .get("priority")
        .and_then(Value::as_f64)
        .map(|p| p.clamp(0.0, 9.0) as u8)
        .unwrap_or(0);
    props.insert("priority".into(), json!(9 - wire));
    let eta_ms = headers
        .get("eta")
        .and_then(Value::as_str)
        .and_then(parse_iso)
        .map(|t| t.timestamp_millis());
    let text = |v: Option<Value>| match v {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    Ok(Decoded {
        message: RawMessage {
            headers,
            properties: props,
            content_type: text(env.remove("content-type")),
            content_encoding: text(env.remove("content-encoding")),
            body,
        },
        redelivered,
        eta_ms,
    })
}

/// The dead-letter record celeriac keeps in `celeriac.dead_letters`.
fn dead_record(id: &str, queue: &str, reason: &str, envelope: Value) -> String {
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("queue".into(), json!(queue));
    m.insert("reason".into(), json!(reason));
    m.insert("at".into(), json!(now_ms()));
    m.insert("envelope".into(), envelope);
    to_python_json(&Value::Object(m))
}

// ----------------------------------------------------------------------------------------
// Broker
// ----------------------------------------------------------------------------------------

struct Scripts {
    fetch: Script,
    record: Script,
    park: Script,
    take: Script,
    unlock: Script,
    requeue_dead: Script,
}

struct Inner {
    url: RedisUrl,
    keys: Keys,
    client: redis::Client,
    name: String,
    health: Arc<Health>,
    /// Shared with the beat store, which sends its scripts on it too.
    cmd: Arc<Link>,
    scripts: Scripts,
    declared: Mutex<HashSet<String>>,
    consumers: AtomicU64,
    clock: AtomicU64,
    /// Beat's lease and last runs, on the command connection.
    beat: RedisBeatStore,
}

/// Redis broker in kombu's layout. See the module docs.
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl RedisBroker {
    /// Parses the URL and connects; an unreachable server is an [`ErrorKind::Unreachable`]
    /// error naming `host:port` (never the password).
    pub async fn open(url: &str) -> Result<Arc<RedisBroker>, BrokerError> {
        let url = RedisUrl::parse(url)?;
        let client = url
            .connection_info()
            .and_then(redis::Client::open)
            .map_err(|e| {
                BrokerError::with_source(
                    ErrorKind::InvalidConfig,
                    format!("cannot use {}", url.display()),
                    e,
                )
            })?;
        let name = format!(
            "celeriac-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let health = Arc::new(Health {
            display: format!("{}:{} (db {})", url.host, url.port, url.db),
            down: AtomicBool::new(false),
        });
        let cmd = Arc::new(Link::new(
            client.clone(),
            format!("{name}-cmd"),
            Some(Duration::from_secs(30)),
            health.clone(),
        ));
        let inner = Arc::new(Inner {
            beat: RedisBeatStore::on_broker(&url, cmd.clone()),
            keys: Keys::new(&url.global_keyprefix, url.db),
            url,
            client,
            name,
            health,
            cmd,
            scripts: Scripts {
                fetch: keys::fetch_script(),
                record: keys::record_script(),
                park: keys::park_script(),
                take: keys::take_script(),
                unlock: keys::unlock_script(),
                requeue_dead: keys::requeue_dead_script(),
            },
            declared: Mutex::new(HashSet::new()),
            consumers: AtomicU64::new(0),
            clock: AtomicU64::new(0),
        });
        inner.cmd.conn().await.map_err(|e| {
            BrokerError::new(
                ErrorKind::Unreachable,
                format!("cannot connect to {}: {}", inner.url.display(), e.message()),
            )
        })?;
        Ok(Arc::new(RedisBroker { inner }))
    }

    /// Prefix of the `CLIENT SETNAME` of every connection this broker opens
    /// (`<name>-cmd`, `<name>-c<n>-fetch`), for operators reading `CLIENT LIST`.
    pub fn client_name(&self) -> &str {
        &self.inner.name
    }

    /// The parsed URL.
    pub fn url(&self) -> &RedisUrl {
        &self.inner.url
    }
}

impl Inner {
    async fn declare(&self, queues: &[&str]) -> Result<(), BrokerError> {
        let new: Vec<String> = {
            let declared = self.declared.lock().unwrap();
            queues
                .iter()
                .filter(|q| !declared.contains(**q))
                .map(|q| q.to_string())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for q in &new {
            // Exchange = queue name for celeriac's queues (the default queue `celery` uses
            // exchange `celery`), direct binding, routing key = queue.
            let member = Keys::binding_member(q, q);
            pipe.sadd(self.keys.binding(q), &member).ignore();
            pipe.sadd(self.keys.binding_permanent(q), &member).ignore();
        }
        self.cmd.pipe::<()>("declare queue", true, &pipe).await?;
        self.declared.lock().unwrap().extend(new);
        Ok(())
    }

    /// Queues a message published to `exchange`/`routing_key` goes to (kombu `_lookup`):
    /// the routing key itself for the default exchange, else the binding table.
    async fn lookup(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_string()]);
        }
        let key = self.keys.binding(exchange);
        let members: Vec<String> = self
            .cmd
            .query("binding lookup", true, redis::cmd("SMEMBERS").arg(&key))
            .await?;
        let mut out: Vec<String> = members
            .iter()
            .filter_map(|m| Keys::parse_binding_member(m))
            .filter(|(rk, _, _)| *rk == routing_key)
            .map(|(_, _, q)| q.to_string())
            .collect();
        if out.is_empty() {
            out.push(routing_key.to_string());
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Moves unacked entries out of the bookkeeping, in the given order. `dest` decides, per
    /// entry value, what to push where: `Restore` (RPUSH with kombu's redelivered flags onto the
    /// queues the stored exchange/routing key resolve to) or a dead letter.
    async fn take(&self, tags: &[String], how: &Take<'_>) -> Result<u64, BrokerError> {
        let mut moved = 0;
        for chunk in tags.chunks(200) {
            let (ukey, ikey) = (self.keys.unacked(), self.keys.unacked_index());
            let values: Vec<Option<String>> = self
                .cmd
                .query(
                    "read unacked",
                    true,
                    redis::cmd("HMGET").arg(&ukey).arg(chunk),
                )
                .await?;
            let mut keys_: Vec<String> = vec![ukey, ikey];
            let mut key_index: HashMap<String, usize> = HashMap::new();
            let mut args: Vec<String> = vec![chunk.len().to_string()];
            for (tag, value) in chunk.iter().zip(values) {
                let Some(value) = value else {
                    args.extend([
                        tag.clone(),
                        String::new(),
                        "R".into(),
                        String::new(),
                        "0".into(),
                    ]);
                    continue;
                };
                let (dir, payload, dests) = self.plan(tag, &value, how).await?;
                args.extend([
                    tag.clone(),
                    value,
                    dir.to_string(),
                    payload,
                    dests.len().to_string(),
                ]);
                for d in dests {
                    let i = *key_index.entry(d.clone()).or_insert_with(|| {
                        keys_.push(d);
                        keys_.len()
                    });
                    args.push(i.to_string());
                }
            }
            let n: u64 = self
                .cmd
                .run("move unacked messages", true, |mut c| {
                    let mut inv = self.scripts.take.prepare_invoke();
                    for k in &keys_ {
                        inv.key(k);
                    }
                    for a in &args {
                        inv.arg(a);
                    }
                    async move { inv.invoke_async(&mut c).await }
                })
                .await?;
            moved += n;
        }
        Ok(moved)
    }

    /// What to do with one unacked entry: (direction, payload, destination keys).
    async fn plan(
        &self,
        tag: &str,
        value: &str,
        how: &Take<'_>,
    ) -> Result<(&'static str, String, Vec<String>), BrokerError> {
        let parsed: Option<(Value, String, String)> = serde_json::from_str::<Value>(value)
            .ok()
            .and_then(|v| match v {
                Value::Array(mut a) if a.len() == 3 => {
                    let rk = a.pop()?.as_str()?.to_string();
                    let ex = a.pop()?.as_str()?.to_string();
                    let env = a.pop()?;
                    env.is_object().then_some((env, ex, rk))
                }
                _ => None,
            });
        let dead = |queue: &str, reason: &str, env: Value| {
            (
                "L",
                dead_record(tag, queue, reason, env),
                vec![self.keys.dead_letters()],
            )
        };
        let Some((mut env, ex, rk)) = parsed else {
            return Ok(dead(
                "",
                "unacked entry is not [envelope, exchange, routing_key]",
                Value::String(value.to_string()),
            ));
        };
        match how {
            Take::DeadLetter(reason) => Ok(dead(&rk, reason, env)),
            Take::Restore => {
                // kombu `_do_restore_message`: flag as redelivered, push to the queues the
                // stored exchange/routing key resolve to, on the list of its priority.
                if let Some(h) = env.get_mut("headers") {
                    if let Some(h) = h.as_object_mut() {
                        h.insert("redelivered".into(), Value::Bool(true));
                    }
                } else if let Some(o) = env.as_object_mut() {
                    o.insert("headers".into(), json!({"redelivered": true}));
                }
                if let Some(p) = env.get_mut("properties").and_then(Value::as_object_mut) {
                    let info = p
                        .entry("delivery_info")
                        .or_insert_with(|| json!({"exchange": ex, "routing_key": rk}));
                    if let Some(i) = info.as_object_mut() {
                        i.insert("redelivered".into(), Value::Bool(true));
                    }
                }
                let step = Keys::step_for(wire_priority_of(&env));
                let queues = self.lookup(&ex, &rk).await?;
                let dests = queues.iter().map(|q| self.keys.list(q, step)).collect();
                Ok(("R", to_python_json(&env), dests))
            }
        }
    }

    /// kombu's visibility-timeout restore sweep (`QoS.restore_visible`).
    async fn sweep(&self) -> Result<u64, BrokerError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mutex = self.keys.unacked_mutex();
        let locked: Option<String> = self
            .cmd
            .query(
                "take unacked_mutex",
                false,
                redis::cmd("SET")
                    .arg(&mutex)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(keys::MUTEX_PX),
            )
            .await?;
        if locked.is_none() {
            return Ok(0);
        }
        let result = async {
            let ceiling = Utc::now().timestamp_micros() as f64 / 1e6
                - self.url.visibility_timeout.as_secs_f64();
            let ikey = self.keys.unacked_index();
            let tags: Vec<String> = self
                .cmd
                .query(
                    "read unacked_index",
                    true,
                    redis::cmd("ZRANGE")
                        .arg(&ikey)
                        .arg(format!("{ceiling:.6}"))
                        .arg("0")
                        .arg("BYSCORE")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(1000),
                )
                .await?;
            if tags.is_empty() {
                return Ok(0);
            }
            // Oldest restored last, so it is the next popped (RPUSH).
            let n = self.take(&tags, &Take::Restore).await?;
            if n > 0 {
                warn!(
                    "restored {n} messages not acknowledged within the visibility timeout ({:?})",
                    self.url.visibility_timeout
                );
            }
            Ok(n)
        }
        .await;
        let _ = self
            .cmd
            .run("release unacked_mutex", true, |mut c| {
                let mut inv = self.scripts.unlock.prepare_invoke();
                inv.key(&mutex).arg(&token);
                async move { inv.invoke_async::<i64>(&mut c).await }
            })
            .await;
        result
    }
}

enum Take<'a> {
    Restore,
    DeadLetter(&'a str),
}

#[async_trait]
impl Broker for RedisBroker {
    fn display_url(&self) -> String {
        self.inner.url.display()
    }

    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.inner.declare(&[queue]).await
    }

    async fn publish(&self, message: Publish) -> Result<(), BrokerError> {
        self.publish_batch(vec![message]).await
    }

    async fn publish_batch(&self, messages: Vec<Publish>) -> Result<(), BrokerError> {
        if messages.is_empty() {
            return Ok(());
        }
        let queues: Vec<&str> = messages.iter().map(|m| m.queue.as_str()).collect();
        self.inner.declare(&queues).await?;
        let mut pipe = redis::pipe();
        // One LPUSH is atomic by itself; MULTI/EXEC only pays off for a batch.
        if messages.len() > 1 {
            pipe.atomic();
        }
        for m in &messages {
            let wire = wire_priority(m.priority);
            let env = envelope(&m.message, &m.queue, wire);
            let has_eta = m.message.headers.get("eta").is_some_and(|e| !e.is_null());
            match m.not_before {
                // Celery's way (and celeriac's task messages): the list, with `headers.eta`;
                // consumers park it until due. A message with only `not_before` (no eta
                // header a consumer could read) goes straight to the delayed set.
                Some(t) if !has_eta && t > Utc::now() => {
                    pipe.zadd(self.inner.keys.delayed(&m.queue), env, t.timestamp_millis())
                        .ignore();
                }
                _ => {
                    pipe.lpush(self.inner.keys.list(&m.queue, Keys::step_for(wire)), env)
                        .ignore();
                }
            }
        }
        self.inner.cmd.pipe::<()>("publish", true, &pipe).await
    }

    async fn consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn Consumer>, BrokerError> {
        if spec.queues.is_empty() {
            return Err(BrokerError::new(
                ErrorKind::InvalidConfig,
                "a consumer needs at least one queue",
            ));
        }
        let refs: Vec<&str> = spec.queues.iter().map(String::as_str).collect();
        self.inner.declare(&refs).await?;
        let n = self.inner.consumers.fetch_add(1, Ordering::Relaxed) + 1;
        let inner = self.inner.clone();
        let block = Link::new(
            inner.client.clone(),
            format!("{}-c{n}-fetch", inner.name),
            None,
            inner.health.clone(),
        );
        let mut queues = spec.queues.clone();
        queues.dedup();
        let sh = Arc::new(ConsumerShared {
            broker: inner,
            queues: Mutex::new(queues),
            block,
            buffer: Mutex::new(VecDeque::new()),
            held: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            fetch_lock: Arc::new(tokio::sync::Mutex::new(())),
            closed: AtomicBool::new(false),
            rotate: AtomicUsize::new(0),
        });
        let (stop_sweeper, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(sweep_loop(sh.broker.clone(), stop));
        debug!(consumer = %spec.name, "Redis consumer {n} started");
        Ok(Box::new(RedisConsumer { sh, stop_sweeper }))
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
    fn mailbox(&self) -> Option<&dyn celeriac_core::control::Mailbox> {
        Some(self)
    }
    fn events(&self) -> Option<&dyn celeriac_core::events::Events> {
        Some(self)
    }
    fn beat_store(&self) -> Option<&dyn celeriac_core::beat::BeatStore> {
        Some(&self.inner.beat)
    }
}

// ----------------------------------------------------------------------------------------
// Consumer
// ----------------------------------------------------------------------------------------

struct ConsumerShared {
    broker: Arc<Inner>,
    /// Changed by `add_queue` / `cancel_queue`; a fetch works on the queues of its start.
    queues: Mutex<Vec<String>>,
    /// The dedicated connection for BRPOP.
    block: Link,
    /// Popped and recorded, not yet handed out (a dropped fetch leaves them here).
    buffer: Mutex<VecDeque<Delivery>>,
    /// Tags this consumer holds (delivered or buffered), with their delivery order.
    held: Mutex<HashMap<String, u64>>,
    seq: AtomicU64,
    /// One pop at a time per consumer; held by the spawned pop task.
    fetch_lock: Arc<tokio::sync::Mutex<()>>,
    closed: AtomicBool,
    rotate: AtomicUsize,
}

struct RedisConsumer {
    sh: Arc<ConsumerShared>,
    stop_sweeper: tokio::sync::watch::Sender<bool>,
}

/// The restore sweep at start-up and every min(visibility_timeout / 2, 10 s). Stopped only
/// between sweeps (never while it holds `unacked_mutex`, which would block every sweeper for
/// the mutex's 5 minutes).
async fn sweep_loop(broker: Arc<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = (broker.url.visibility_timeout / 2)
        .min(Duration::from_secs(10))
        .max(Duration::from_millis(50));
    loop {
        if *stop.borrow() {
            return;
        }
        if let Err(e) = broker.sweep().await {
            debug!("restore sweep failed: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

type Popped = (String, String, String); // (tag, queue, envelope)

impl ConsumerShared {
    fn closed_err(&self, op: &str) -> BrokerError {
        BrokerError::new(ErrorKind::Closed, format!("{op}: consumer is closed"))
    }

    /// This fetch's queue order (kombu rotates the queue it got a message from to the end;
    /// celeriac rotates the start queue on every fetch, which is as fair).
    fn rotated_queues(&self) -> Vec<String> {
        let mut q = self.queues.lock().unwrap().clone();
        if !q.is_empty() {
            let r = self.rotate.fetch_add(1, Ordering::Relaxed) % q.len();
            q.rotate_left(r);
        }
        q
    }

    /// The FETCH script: promote due ETA messages, pop up to `max`, record them.
    async fn pop(
        &self,
        queues: &[String],
        max: usize,
    ) -> Result<(Vec<Popped>, Option<i64>), BrokerError> {
        let b = &self.broker;
        let k = &b.keys;
        let mut keys_ = vec![k.unacked(), k.unacked_index(), k.dead_letters()];
        keys_.extend(k.pop_order(queues));
        keys_.extend(queues.iter().map(|q| k.delayed(q)));
        let mut args = vec![
            max.to_string(),
            now_score(),
            now_ms().to_string(),
            queues.len().to_string(),
        ];
        args.extend(queues.iter().cloned());
        // Not retried: a lost reply would leave popped messages to the sweep.
        let out: Vec<redis::Value> = b
            .cmd
            .run("fetch", false, |mut c| {
                let mut inv = b.scripts.fetch.prepare_invoke();
                for key in &keys_ {
                    inv.key(key);
                }
                for a in &args {
                    inv.arg(a);
                }
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let mut it = out.into_iter();
        let next_due: i64 = it
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or(-1);
        let mut popped = Vec::new();
        while let (Some(tag), Some(qi), Some(env)) = (it.next(), it.next(), it.next()) {
            let tag: String = redis::from_redis_value(tag).map_err(|e| protocol(e.to_string()))?;
            let qi: usize = redis::from_redis_value(qi).map_err(|e| protocol(e.to_string()))?;
            let env: String = redis::from_redis_value(env).map_err(|e| protocol(e.to_string()))?;
            popped.push((tag, queues[qi.min(queues.len() - 1)].clone(), env));
        }
        Ok((popped, (next_due >= 0).then_some(next_due)))
    }

    /// BRPOP over every list of the consumer (kombu's key order), on the dedicated connection.
    async fn brpop(
        &self,
        queues: &[String],
        block: Duration,
    ) -> Result<Option<(String, String)>, BrokerError> {
        let keys_ = self.broker.keys.pop_order(queues);
        let secs = block.as_secs_f64().max(0.01);
        let (mut c, generation) = self.block.conn().await.map_err(|e| with_what("fetch", e))?;
        let reply = tokio::time::timeout(
            block + Duration::from_secs(10),
            redis::cmd("BRPOP")
                .arg(&keys_)
                .arg(format!("{secs:.3}"))
                .query_async::<Option<(String, String)>>(&mut c),
        )
        .await;
        match reply {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.block.failed(generation, &e).await;
                if is_connection_error(&e) {
                    Err(with_what("fetch", self.block.unreachable(&e)))
                } else {
                    Err(BrokerError::with_source(
                        ErrorKind::Storage,
                        "fetch: BRPOP",
                        e,
                    ))
                }
            }
            Err(_) => {
                // The server did not answer long after the timeout: the socket is dead.
                let mut st = self.block.state.lock().await;
                if st.conn.as_ref().is_some_and(|(_, g)| *g == generation) {
                    st.conn = None;
                }
                Err(self.block.unreachable(&"BRPOP got no reply"))
            }
        }
    }

    /// Records an envelope BRPOP returned (kombu's delivery bookkeeping). Retried, because
    /// the message exists only in this process until it is recorded.
    async fn record(&self, queue: &str, env: &str) -> Result<Option<String>, BrokerError> {
        let b = &self.broker;
        let k = &b.keys;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = b
                .cmd
                .run("record delivery", true, |mut c| {
                    let mut inv = b.scripts.record.prepare_invoke();
                    inv.key(k.unacked())
                        .key(k.unacked_index())
                        .key(k.dead_letters())
                        .arg(env)
                        .arg(now_score())
                        .arg(now_ms())
                        .arg(queue);
                    async move { inv.invoke_async::<Option<String>>(&mut c).await }
                })
                .await;
            match r {
                Ok(tag) => return Ok(tag),
                Err(e) if attempt < 20 && e.kind() == ErrorKind::Unreachable => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    error!("a message popped from {queue} could not be recorded and is lost: {e}; envelope: {env}");
                    return Err(e);
                }
            }
        }
    }

    /// Turns recorded messages into deliveries in the buffer; parks those whose ETA is
    /// in the future, dead-letters those that cannot be decoded. Returns how many were buffered.
    async fn accept(&self, popped: Vec<Popped>) -> Result<usize, BrokerError> {
        let b = &self.broker;
        let now = now_ms();
        let mut ready = Vec::with_capacity(popped.len());
        let mut first_err = None;
        for (tag, queue, env) in popped {
            match decode_envelope(&env) {
                Ok(d) if d.eta_ms.is_some_and(|eta| eta > now) => {
                    let due = d.eta_ms.unwrap_or(now);
                    let r = b
                        .cmd
                        .run("park ETA message", true, |mut c| {
                            let mut inv = b.scripts.park.prepare_invoke();
                            inv.key(b.keys.unacked())
                                .key(b.keys.unacked_index())
                                .key(b.keys.delayed(&queue))
                                .arg(&tag)
                                .arg(due)
                                .arg(&env);
                            async move { inv.invoke_async::<i64>(&mut c).await }
                        })
                        .await;
                    if let Err(e) = r {
                        // Still recorded in unacked: held here so close/keepalive cover it.
                        warn!("could not park ETA message {tag}: {e}; delivering it now");
                        ready.push(Delivery {
                            tag: DeliveryTag(tag),
                            queue,
                            redelivered: d.redelivered,
                            message: d.message,
                        });
                    }
                }
                Ok(d) => ready.push(Delivery {
                    tag: DeliveryTag(tag),
                    queue,
                    redelivered: d.redelivered,
                    message: d.message,
                }),
                Err(reason) => {
                    warn!("dead-lettering undecodable message {tag} from {queue}: {reason}");
                    if let Err(e) = b
                        .take(
                            std::slice::from_ref(&tag),
                            &Take::DeadLetter(&format!("undecodable envelope: {reason}")),
                        )
                        .await
                    {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        let n = ready.len();
        {
            let mut held = self.held.lock().unwrap();
            for d in &ready {
                held.insert(d.tag.0.clone(), self.seq.fetch_add(1, Ordering::Relaxed));
            }
        }
        self.buffer.lock().unwrap().extend(ready);
        match first_err {
            Some(e) if n == 0 => Err(e),
            _ => Ok(n),
        }
    }

    /// The body of one fetch, in a spawned task: whatever it pops ends in the buffer, even
    /// when the `fetch` that started it was dropped.
    async fn fill(self: Arc<Self>, max: usize, wait: Duration) -> Result<(), BrokerError> {
        let _guard = self.fetch_lock.clone().lock_owned().await;
        if self.closed.load(Ordering::SeqCst) || !self.buffer.lock().unwrap().is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + wait;
        let queues = self.rotated_queues();
        if queues.is_empty() {
            // Every queue was cancelled: nothing to fetch until one is added.
            tokio::time::sleep(wait).await;
            return Ok(());
        }
        loop {
            let (popped, next_due) = self.pop(&queues, max).await?;
            if self.accept(popped).await? > 0 {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline || self.closed.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut block = deadline - now;
            if let Some(due) = next_due {
                let until = Duration::from_millis((due - now_ms()).max(1) as u64);
                block = block.min(until);
            }
            if let Some((key, env)) = self.brpop(&queues, block).await? {
                let queue = self.broker.keys.queue_of_list(&key).to_string();
                let mut got = 0;
                if let Some(tag) = self.record(&queue, &env).await? {
                    got += self.accept(vec![(tag, queue, env)]).await?;
                }
                if got > 0 && got < max {
                    let (popped, _) = self.pop(&queues, max - got).await?;
                    got += self.accept(popped).await?;
                }
                if got > 0 {
                    return Ok(());
                }
            }
        }
    }

    fn take_buffered(&self, max: usize) -> Vec<Delivery> {
        let mut buf = self.buffer.lock().unwrap();
        let n = max.min(buf.len());
        buf.drain(..n).collect()
    }

    fn release(&self, tags: &[String]) {
        let mut held = self.held.lock().unwrap();
        for t in tags {
            held.remove(t);
        }
    }
}

#[async_trait]
impl Consumer for RedisConsumer {
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        let sh = &self.sh;
        if sh.closed.load(Ordering::SeqCst) {
            return Err(sh.closed_err("fetch"));
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        let got = sh.take_buffered(max);
        if !got.is_empty() {
            return Ok(got);
        }
        let result = tokio::spawn(sh.clone().fill(max, wait))
            .await
            .unwrap_or_else(|e| {
                Err(BrokerError::new(
                    ErrorKind::Storage,
                    format!("fetch task failed: {e}"),
                ))
            });
        let got = sh.take_buffered(max);
        match result {
            Err(e) if got.is_empty() => Err(e),
            _ => Ok(got),
        }
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        if tags.is_empty() {
            return Ok(());
        }
        let tags: Vec<String> = tags.iter().map(|t| t.0.clone()).collect();
        let k = &self.sh.broker.keys;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for chunk in tags.chunks(1000) {
            pipe.zrem(k.unacked_index(), chunk).ignore();
            pipe.hdel(k.unacked(), chunk).ignore();
        }
        self.sh.broker.cmd.pipe::<()>("ack", true, &pipe).await?;
        self.sh.release(&tags);
        Ok(())
    }

    /// kombu's restore (RPUSH: the messages are the next ones popped, in their original
    /// order), not `reject(requeue=True)` (LPUSH, back of the queue): the worker requeues
    /// on shutdown and when it loses a task, where keeping the order matters.
    async fn requeue(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        if tags.is_empty() {
            return Ok(());
        }
        let tags: Vec<String> = tags.iter().rev().map(|t| t.0.clone()).collect();
        self.sh.broker.take(&tags, &Take::Restore).await?;
        self.sh.release(&tags);
        Ok(())
    }

    async fn dead_letter(&self, tag: &DeliveryTag, reason: &str) -> Result<(), BrokerError> {
        let tags = [tag.0.clone()];
        self.sh
            .broker
            .take(&tags, &Take::DeadLetter(reason))
            .await?;
        self.sh.release(&tags);
        Ok(())
    }

    async fn keepalive(&self) -> Result<(), BrokerError> {
        let tags: Vec<String> = self.sh.held.lock().unwrap().keys().cloned().collect();
        if tags.is_empty() {
            return Ok(());
        }
        let ikey = self.sh.broker.keys.unacked_index();
        let mut pipe = redis::pipe();
        for chunk in tags.chunks(500) {
            let score = now_score();
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(&ikey).arg("XX");
            for t in chunk {
                cmd.arg(&score).arg(t);
            }
            pipe.add_command(cmd).ignore();
        }
        self.sh
            .broker
            .cmd
            .pipe::<()>("keepalive", true, &pipe)
            .await
    }

    fn keepalive_interval(&self) -> Duration {
        (self.sh.broker.url.visibility_timeout / 3)
            .min(Duration::from_secs(60))
            .max(Duration::from_millis(10))
    }

    fn queue_set(&self) -> Option<&dyn QueueSet> {
        Some(self)
    }

    async fn close(&self) -> Result<(), BrokerError> {
        let sh = &self.sh;
        if sh.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let _ = self.stop_sweeper.send(true);
        // Wait for a pop in flight: what it gets lands in the buffer, restored below.
        let _guard = sh.fetch_lock.lock().await;
        sh.buffer.lock().unwrap().clear();
        let mut held: Vec<(String, u64)> = sh.held.lock().unwrap().drain().collect();
        // Latest first: RPUSH leaves the earliest delivered at the popping end.
        held.sort_by_key(|(_, seq)| std::cmp::Reverse(*seq));
        let tags: Vec<String> = held.iter().map(|(t, _)| t.clone()).collect();
        if let Err(e) = sh.broker.take(&tags, &Take::Restore).await {
            sh.held.lock().unwrap().extend(held);
            return Err(e);
        }
        Ok(())
    }
}

#[async_trait]
impl QueueSet for RedisConsumer {
    fn queues(&self) -> Vec<String> {
        self.sh.queues.lock().unwrap().clone()
    }

    async fn add_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        self.sh.broker.declare(&[queue]).await?;
        let mut queues = self.sh.queues.lock().unwrap();
        if queues.iter().any(|q| q == queue) {
            return Ok(false);
        }
        queues.push(queue.to_string());
        Ok(true)
    }

    async fn cancel_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        let mut queues = self.sh.queues.lock().unwrap();
        let before = queues.len();
        queues.retain(|q| q != queue);
        Ok(queues.len() < before)
    }
}

impl Drop for RedisConsumer {
    /// A consumer dropped without `close` behaves like a process that died: its messages stay
    /// in `unacked` and come back through the restore sweep after the visibility timeout.
    fn drop(&mut self) {
        let _ = self.stop_sweeper.send(true);
        self.sh.closed.store(true, Ordering::SeqCst);
    }
}

// ----------------------------------------------------------------------------------------
// Capabilities
// ----------------------------------------------------------------------------------------

#[async_trait]
impl Purge for RedisBroker {
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let k = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in k.lists(queue) {
            pipe.llen(key);
        }
        pipe.zcard(k.delayed(queue));
        for key in k.lists(queue) {
            pipe.del(key).ignore();
        }
        pipe.del(k.delayed(queue)).ignore();
        let counts: Vec<u64> = self.inner.cmd.pipe("purge", true, &pipe).await?;
        Ok(counts.iter().sum())
    }
}

impl RedisBroker {
    /// Queues named in `_kombu.binding.*` sets (kombu's own fanout/reply plumbing excluded).
    async fn known_queues(&self) -> Result<Vec<String>, BrokerError> {
        let k = &self.inner.keys;
        let glob = k.binding_glob();
        let mut sets = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .inner
                .cmd
                .query(
                    "list bindings",
                    true,
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&glob)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            sets.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut queues = Vec::new();
        for set in sets {
            let Some(ex) = k.exchange_of_binding(&set) else {
                continue;
            };
            if NON_TASK_EXCHANGES.contains(&ex) {
                continue;
            }
            let members: Vec<String> = self
                .inner
                .cmd
                .query("read bindings", true, redis::cmd("SMEMBERS").arg(&set))
                .await?;
            queues.extend(
                members
                    .iter()
                    .filter_map(|m| Keys::parse_binding_member(m))
                    .map(|(_, _, q)| q.to_string()),
            );
        }
        queues.sort();
        queues.dedup();
        Ok(queues)
    }

    /// Unacked entries per routing key (HSCAN of `unacked`).
    async fn unacked_by_queue(&self) -> Result<HashMap<String, u64>, BrokerError> {
        let key = self.inner.keys.unacked();
        let mut out = HashMap::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, pairs): (u64, Vec<String>) = self
                .inner
                .cmd
                .query(
                    "scan unacked",
                    true,
                    redis::cmd("HSCAN")
                        .arg(&key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            for value in pairs.iter().skip(1).step_by(2) {
                if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(value) {
                    if let Some(rk) = a.get(2).and_then(Value::as_str) {
                        *out.entry(rk.to_string()).or_insert(0) += 1;
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }
}

#[async_trait]
impl QueueStats for RedisBroker {
    async fn queue_lengths(&self, queues: &[String]) -> Result<Vec<QueueLength>, BrokerError> {
        let queues = if queues.is_empty() {
            self.known_queues().await?
        } else {
            queues.to_vec()
        };
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let k = &self.inner.keys;
        let mut pipe = redis::pipe();
        for q in &queues {
            for key in k.lists(q) {
                pipe.llen(key);
            }
            pipe.zcard(k.delayed(q));
        }
        let counts: Vec<u64> = self.inner.cmd.pipe("queue lengths", true, &pipe).await?;
        let unacked = self.unacked_by_queue().await?;
        Ok(queues
            .iter()
            .zip(counts.chunks(5))
            .map(|(q, c)| QueueLength {
                queue: q.clone(),
                ready: c[..4].iter().sum(),
                scheduled: c[4],
                unacked: unacked.get(q).copied().unwrap_or(0),
            })
            .collect())
    }
}

fn dead_letter_from_record(record: &str) -> Option<DeadLetter> {
    let v: Value = serde_json::from_str(record).ok()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let at = v.get("at").and_then(Value::as_f64).unwrap_or(0.0) as i64;
    let message = match v.get("envelope") {
        Some(Value::String(raw)) => RawMessage {
            headers: Map::new(),
            properties: Map::new(),
            content_type: String::new(),
            content_encoding: String::new(),
            body: raw.clone().into_bytes(),
        },
        Some(env) => match decode_envelope_value(env.clone()) {
            Ok(d) => d.message,
            Err(_) => RawMessage {
                headers: Map::new(),
                properties: Map::new(),
                content_type: String::new(),
                content_encoding: String::new(),
                body: env.to_string().into_bytes(),
            },
        },
        None => return None,
    };
    Some(DeadLetter {
        id: text("id"),
        queue: text("queue"),
        reason: text("reason"),
        at: from_millis(at),
        message,
    })
}

#[async_trait]
impl DeadLetters for RedisBroker {
    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.inner.keys.dead_letters();
        let records: Vec<String> = self
            .inner
            .cmd
            .query(
                "list dead letters",
                true,
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(limit.saturating_sub(1).min(i64::MAX as usize) as i64),
            )
            .await?;
        Ok(records
            .iter()
            .filter_map(|r| dead_letter_from_record(r))
            .collect())
    }

    async fn requeue_dead_letters(&self, ids: &[String]) -> Result<u64, BrokerError> {
        let inner = &self.inner;
        let key = inner.keys.dead_letters();
        let records: Vec<String> = inner
            .cmd
            .query(
                "list dead letters",
                true,
                redis::cmd("LRANGE").arg(&key).arg(0).arg(-1),
            )
            .await?;
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut count = 0;
        // Oldest first (the list is newest first), so they keep their order on the queue.
        for record in records.iter().rev() {
            let Ok(v) = serde_json::from_str::<Value>(record) else {
                continue;
            };
            let id = v.get("id").and_then(Value::as_str).unwrap_or("");
            if !wanted.is_empty() && !wanted.contains(id) {
                continue;
            }
            let queue = v.get("queue").and_then(Value::as_str).unwrap_or("");
            let (env, step) = match v.get("envelope") {
                Some(Value::String(raw)) => (raw.clone(), 0),
                Some(env @ Value::Object(_)) => {
                    (to_python_json(env), Keys::step_for(wire_priority_of(env)))
                }
                _ => continue,
            };
            if queue.is_empty() {
                continue;
            }
            let list = inner.keys.list(queue, step);
            let n: i64 = inner
                .cmd
                .run("requeue dead letter", true, |mut c| {
                    let mut inv = inner.scripts.requeue_dead.prepare_invoke();
                    inv.key(&key).key(&list).arg(record).arg(&env);
                    async move { inv.invoke_async(&mut c).await }
                })
                .await?;
            count += n as u64;
        }
        Ok(count)
    }
}

/// `ms-seq` stream id → cursor `ms << 20 | seq`, and back.
fn stream_cursor(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    let ms: u64 = ms.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    Some((ms << 20) | seq.min((1 << 20) - 1))
}

fn cursor_stream_id(cursor: u64) -> String {
    format!("{}-{}", cursor >> 20, cursor & ((1 << 20) - 1))
}

impl RedisBroker {
    /// Celery's `revoke` broadcast as kombu PUBLISHes it on the pidbox fanout channel
    /// (vectors 17 and 22: a cast, so no `ticket` / `reply_to`).
    fn pidbox_revoke(&self, task_ids: &[String], terminate: Option<Signal>) -> String {
        let body = Value::Object(revoke_broadcast(task_ids, terminate));
        mailbox::request_envelope(&body, self.tick(), BROADCAST_TTL_SECONDS)
    }

    /// Advances this process's Lamport clock (the `clock` header of control messages).
    fn tick(&self) -> u64 {
        self.inner.clock.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[async_trait]
impl Revocations for RedisBroker {
    async fn revoke(
        &self,
        task_ids: &[String],
        terminate: Option<Signal>,
    ) -> Result<(), BrokerError> {
        if task_ids.is_empty() {
            return Ok(());
        }
        let k = &self.inner.keys;
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for id in task_ids {
            pipe.cmd("XADD")
                .arg(k.revoked_stream())
                .arg("MAXLEN")
                .arg("~")
                .arg(keys::REVOKED_MAX)
                .arg("*")
                .arg("task_id")
                .arg(id)
                .arg("terminate")
                .arg(terminate.map_or(0, |s| s.0))
                .arg("at")
                .arg(now)
                .ignore();
            pipe.zadd(k.revoked_ids(), id, now).ignore();
        }
        pipe.cmd("ZREMRANGEBYRANK")
            .arg(k.revoked_ids())
            .arg(0)
            .arg(-(keys::REVOKED_MAX as i64) - 1)
            .ignore();
        pipe.publish(k.pidbox_channel(), self.pidbox_revoke(task_ids, terminate))
            .ignore();
        self.inner.cmd.pipe::<()>("revoke", true, &pipe).await
    }

    async fn is_revoked(&self, task_id: &str) -> Result<bool, BrokerError> {
        let key = self.inner.keys.revoked_ids();
        let score: Option<f64> = self
            .inner
            .cmd
            .query(
                "is revoked",
                true,
                redis::cmd("ZSCORE").arg(&key).arg(task_id),
            )
            .await?;
        Ok(score.is_some())
    }

    async fn revocations_since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), BrokerError> {
        let key = self.inner.keys.revoked_stream();
        let start = if cursor == 0 {
            "-".to_string()
        } else {
            format!("({}", cursor_stream_id(cursor))
        };
        let entries: Vec<(String, Vec<String>)> = self
            .inner
            .cmd
            .query(
                "read revocations",
                true,
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(10_000),
            )
            .await?;
        let mut next = cursor;
        let mut out = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            if let Some(c) = stream_cursor(&id) {
                next = next.max(c);
            }
            let mut task_id = None;
            let mut terminate = 0i32;
            let mut at = 0i64;
            for pair in fields.chunks(2) {
                match (pair[0].as_str(), pair.get(1)) {
                    ("task_id", Some(v)) => task_id = Some(v.clone()),
                    // 0, 1 (SIGTERM, as earlier versions wrote) or the signal.
                    ("terminate", Some(v)) => terminate = v.parse().unwrap_or(0),
                    ("at", Some(v)) => at = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
            if let Some(task_id) = task_id {
                out.push(Revocation {
                    task_id,
                    terminate: terminate != 0,
                    signal: if terminate > 1 {
                        Signal(terminate)
                    } else {
                        Signal::TERM
                    },
                    at: from_millis(at),
                });
            }
        }
        Ok((out, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_map_both_ways() {
        assert_eq!(wire_priority(None), 0);
        assert_eq!(wire_priority(Some(9)), 0);
        assert_eq!(wire_priority(Some(0)), 9);
        assert_eq!(wire_priority(Some(7)), 2);
    }

    #[test]
    fn envelope_round_trips() {
        let mut headers = Map::new();
        headers.insert("id".into(), json!("x"));
        headers.insert("eta".into(), Value::Null);
        let mut props = Map::new();
        props.insert("correlation_id".into(), json!("x"));
        props.insert("reply_to".into(), json!("r"));
        props.insert("delivery_mode".into(), json!(2));
        props.insert("priority".into(), json!(7));
        let m = RawMessage {
            headers,
            properties: props,
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            body: b"[[], {}, {}]".to_vec(),
        };
        let env = envelope(&m, "celery", wire_priority(Some(7)));
        let v: Value = serde_json::from_str(&env).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "body",
                "content-encoding",
                "content-type",
                "headers",
                "properties"
            ]
        );
        let pkeys: Vec<&str> = v["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            pkeys,
            [
                "correlation_id",
                "reply_to",
                "delivery_mode",
                "delivery_info",
                "priority",
                "body_encoding",
                "delivery_tag"
            ]
        );
        assert_eq!(v["properties"]["priority"], json!(2));
        let d = decode_envelope(&env).unwrap();
        assert_eq!(d.message, m);
        assert!(!d.redelivered);
    }

    #[test]
    fn cursors() {
        let c = stream_cursor("1700000000000-3").unwrap();
        assert_eq!(cursor_stream_id(c), "1700000000000-3");
    }
}
