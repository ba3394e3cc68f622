//! The broker side: publish, consume with leases, and the capability traits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::broker::{
    Broker, Consumer, ConsumerSpec, DeadLetter, DeadLetters, Delivery, DeliveryTag, Publish, Purge,
    QueueLength, QueueSet, QueueStats, RawMessage, Revocation, Revocations, Signal,
};
use celeriac_core::error::{BrokerError, ErrorKind};
use celeriac_core::time::from_millis;
use rusqlite::{params, Connection};
use serde_json::{Map, Value};

use crate::db::{detached_job, DbResult, Wake, WriteJob};
use crate::{duration_ms, now_ms, sql, SqliteStore};

/// Scheduled messages promoted per fetch at most (keeps one fetch short when a million come
/// due at once; the rest follow on the next fetches).
const PROMOTE_BATCH: i64 = 1000;
/// Revokes are kept this long.
const REVOKE_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

/// A message ready to insert, serialized off the writer thread.
struct Row {
    queue: String,
    priority: i64,
    headers: String,
    properties: String,
    content_type: String,
    content_encoding: String,
    body: Vec<u8>,
    /// Some(ms) for a message not deliverable yet.
    due: Option<i64>,
}

impl Row {
    fn new(p: Publish, now: i64) -> Row {
        let due = p
            .not_before
            .map(celeriac_core::time::to_millis)
            .filter(|&t| t > now);
        Row {
            priority: i64::from(p.priority.unwrap_or(0).min(9)),
            headers: Value::Object(p.message.headers).to_string(),
            properties: Value::Object(p.message.properties).to_string(),
            content_type: p.message.content_type,
            content_encoding: p.message.content_encoding,
            body: p.message.body,
            queue: p.queue,
            due,
        }
    }

    fn insert(&self, c: &Connection, now: i64) -> rusqlite::Result<()> {
        match self.due {
            None => c.prepare_cached(sql::INSERT_READY)?.execute(params![
                self.queue,
                self.priority,
                self.headers,
                self.properties,
                self.content_type,
                self.content_encoding,
                self.body,
                now
            ])?,
            Some(due) => c.prepare_cached(sql::INSERT_SCHEDULED)?.execute(params![
                self.queue,
                self.priority,
                self.headers,
                self.properties,
                self.content_type,
                self.content_encoding,
                self.body,
                now,
                due
            ])?,
        };
        Ok(())
    }
}

fn parse_map(text: &str, what: &str, id: i64) -> Map<String, Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        _ => {
            tracing::warn!(
                "sqlite message {id}: stored {what} are not a JSON object; delivering without them"
            );
            Map::new()
        }
    }
}

fn raw_message(
    id: i64,
    headers: &str,
    properties: &str,
    content_type: String,
    content_encoding: String,
    body: Vec<u8>,
) -> RawMessage {
    RawMessage {
        headers: parse_map(headers, "headers", id),
        properties: parse_map(properties, "properties", id),
        content_type,
        content_encoding,
        body,
    }
}

impl SqliteStore {
    /// Names of `queues` not yet known to be recorded; marks them known.
    fn new_queues<'a>(&self, queues: impl Iterator<Item = &'a str>) -> Vec<String> {
        let mut known = self
            .inner
            .known_queues
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut fresh = Vec::new();
        for q in queues {
            if !known.contains(q) {
                known.insert(q.to_string());
                fresh.push(q.to_string());
            }
        }
        fresh
    }

    fn forget_queues(&self, queues: &[String]) {
        let mut known = self
            .inner
            .known_queues
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for q in queues {
            known.remove(q);
        }
    }

    async fn insert_rows(&self, rows: Vec<Row>, op: &str) -> Result<(), BrokerError> {
        let fresh = self.new_queues(rows.iter().map(|r| r.queue.as_str()));
        let declare = fresh.clone();
        let now = now_ms();
        let result = self
            .db()
            .write(Wake::Messages, move |c| {
                for q in &declare {
                    c.prepare_cached(sql::DECLARE_QUEUE)?
                        .execute(params![q, now])?;
                }
                for row in &rows {
                    row.insert(c, now)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            self.forget_queues(&fresh);
            return Err(self.broker_err(op, e));
        }
        Ok(())
    }
}

#[async_trait]
impl Broker for SqliteStore {
    fn display_url(&self) -> String {
        self.url()
    }

    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let fresh = self.new_queues(std::iter::once(queue));
        if fresh.is_empty() {
            return Ok(());
        }
        let name = queue.to_string();
        let now = now_ms();
        let result = self
            .db()
            .write(Wake::Nothing, move |c| {
                c.prepare_cached(sql::DECLARE_QUEUE)?
                    .execute(params![name, now])?;
                Ok(())
            })
            .await;
        result.map_err(|e| {
            self.forget_queues(&fresh);
            self.broker_err("declare queue", e)
        })
    }

    async fn publish(&self, message: Publish) -> Result<(), BrokerError> {
        let row = Row::new(message, now_ms());
        self.insert_rows(vec![row], "publish").await
    }

    async fn publish_batch(&self, messages: Vec<Publish>) -> Result<(), BrokerError> {
        if messages.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let rows = messages.into_iter().map(|m| Row::new(m, now)).collect();
        self.insert_rows(rows, "publish batch").await
    }

    async fn consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn Consumer>, BrokerError> {
        for q in &spec.queues {
            self.declare_queue(q).await?;
        }
        Ok(Box::new(SqliteConsumer::new(self.clone(), spec)))
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
        Some(self)
    }
}

// ----------------------------------------------------------------------------------------
// Consumer
// ----------------------------------------------------------------------------------------

/// A consumer of a [`SqliteStore`]: holds leases under a unique owner id.
pub struct SqliteConsumer {
    store: SqliteStore,
    owner: Arc<str>,
    /// Changed by `add_queue` / `cancel_queue`; each fetch reads the current list.
    queues: std::sync::Mutex<Arc<[String]>>,
    closed: AtomicBool,
}

struct Leased {
    queue: String,
    id: i64,
    priority: i64,
    headers: String,
    properties: String,
    content_type: String,
    content_encoding: String,
    body: Vec<u8>,
    delivered: i64,
}

struct FetchOut {
    leased: Vec<Leased>,
    /// When to look again even without a change notice: earliest due or lease expiry (ms).
    next_wake: Option<i64>,
}

fn parse_tag(tag: &DeliveryTag) -> Result<i64, BrokerError> {
    tag.0.parse::<i64>().map_err(|_| {
        BrokerError::new(
            ErrorKind::Protocol,
            format!("delivery tag {:?} was not issued by a sqlite store", tag.0),
        )
    })
}

fn parse_tags(tags: &[DeliveryTag]) -> Result<Vec<i64>, BrokerError> {
    tags.iter().map(parse_tag).collect()
}

fn requeue_job(owner: Arc<str>, ids: Vec<i64>) -> Box<dyn WriteJob> {
    detached_job(Wake::Messages, move |c| {
        let mut stmt = c.prepare_cached(sql::REQUEUE)?;
        for id in &ids {
            stmt.execute(params![id, &*owner])?;
        }
        Ok(())
    })
}

/// Promotes due scheduled messages, reclaims lapsed leases, then leases up to `max` ready
/// messages of `queues` (in the order given; priority then FIFO within each).
fn fetch_tx(
    c: &Connection,
    owner: &str,
    queues: &[String],
    max: usize,
    lease_ms: i64,
) -> rusqlite::Result<FetchOut> {
    let now = now_ms();
    let promoted = c
        .prepare_cached(sql::PROMOTE_DUE)?
        .execute(params![now, PROMOTE_BATCH])?;
    if promoted > 0 {
        c.prepare_cached(sql::DELETE_PROMOTED)?
            .execute(params![now, PROMOTE_BATCH])?;
    }
    c.prepare_cached(sql::RECLAIM_EXPIRED)?
        .execute(params![now])?;
    let mut leased = Vec::new();
    let until = now.saturating_add(lease_ms);
    let mut stmt = c.prepare_cached(sql::LEASE_READY)?;
    for q in queues {
        let remaining = max - leased.len();
        if remaining == 0 {
            break;
        }
        let start = leased.len();
        let rows = stmt.query_map(params![owner, until, q, remaining as i64], |r| {
            Ok(Leased {
                queue: q.clone(),
                id: r.get(0)?,
                priority: r.get(1)?,
                headers: r.get(2)?,
                properties: r.get(3)?,
                content_type: r.get(4)?,
                content_encoding: r.get(5)?,
                body: r.get(6)?,
                delivered: r.get(7)?,
            })
        })?;
        for row in rows {
            leased.push(row?);
        }
        leased[start..].sort_by_key(|l| (std::cmp::Reverse(l.priority), l.id));
    }
    let mut next_wake = None;
    if leased.is_empty() {
        let due: Option<i64> = c
            .prepare_cached(sql::NEXT_DUE)?
            .query_row([], |r| r.get(0))?;
        let expiry: Option<i64> = c
            .prepare_cached(sql::NEXT_LEASE_EXPIRY)?
            .query_row([], |r| r.get(0))?;
        next_wake = match (due, expiry) {
            (Some(a), Some(b)) => Some(a.min(b.saturating_add(1))),
            (a, b) => a.or(b.map(|b| b.saturating_add(1))),
        };
    }
    Ok(FetchOut { leased, next_wake })
}

impl SqliteConsumer {
    /// Runs `statement` (`?1` message id, `?2` owner) for each held message, in one write:
    /// a message whose lease this consumer lost is left alone.
    async fn settle_held(
        &self,
        tags: &[DeliveryTag],
        statement: &'static str,
        wake: Wake,
        op: &'static str,
    ) -> Result<(), BrokerError> {
        if tags.is_empty() {
            return Ok(());
        }
        let ids = parse_tags(tags)?;
        let owner = self.owner.clone();
        self.store
            .db()
            .write(wake, move |c| {
                let mut stmt = c.prepare_cached(statement)?;
                for id in &ids {
                    stmt.execute(params![id, &*owner])?;
                }
                Ok(())
            })
            .await
            .map_err(|e| self.store.broker_err(op, e))
    }

    fn new(store: SqliteStore, spec: ConsumerSpec) -> SqliteConsumer {
        let owner: Arc<str> = format!("{}/{}", spec.name, uuid::Uuid::new_v4().simple()).into();
        SqliteConsumer {
            store,
            owner,
            queues: std::sync::Mutex::new(spec.queues.into()),
            closed: AtomicBool::new(false),
        }
    }

    fn current_queues(&self) -> Arc<[String]> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn change_queues(&self, change: impl FnOnce(&mut Vec<String>) -> bool) -> bool {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut list = queues.to_vec();
        let changed = change(&mut list);
        *queues = list.into();
        changed
    }

    /// This consumer's lease owner id (unique per consumer).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn check_open(&self, op: &str) -> Result<(), BrokerError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::new(
                ErrorKind::Closed,
                format!("{op}: consumer {} is closed", self.owner),
            ));
        }
        Ok(())
    }

    fn lease_ms(&self) -> i64 {
        duration_ms(self.store.inner.options.visibility_timeout).max(1)
    }

    async fn fetch_once(&self, max: usize) -> DbResult<FetchOut> {
        let owner = self.owner.clone();
        let queues = self.current_queues();
        let lease_ms = self.lease_ms();
        let undelivered_owner = self.owner.clone();
        self.store
            .db()
            .write_or(
                Wake::Nothing,
                move |c| fetch_tx(c, &owner, &queues, max, lease_ms),
                // The caller stopped waiting (cancelled): give the messages back at once.
                Some(Box::new(move |out: FetchOut| {
                    if out.leased.is_empty() {
                        return None;
                    }
                    let ids = out.leased.iter().map(|l| l.id).collect();
                    Some(requeue_job(undelivered_owner, ids))
                })),
            )
            .await
    }
}

#[async_trait]
impl QueueSet for SqliteConsumer {
    fn queues(&self) -> Vec<String> {
        self.current_queues().to_vec()
    }

    async fn add_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        self.store.declare_queue(queue).await?;
        Ok(self.change_queues(|queues| {
            let new = !queues.iter().any(|q| q == queue);
            if new {
                queues.push(queue.to_string());
            }
            new
        }))
    }

    async fn cancel_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        Ok(self.change_queues(|queues| {
            let before = queues.len();
            queues.retain(|q| q != queue);
            queues.len() < before
        }))
    }
}

#[async_trait]
impl Consumer for SqliteConsumer {
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        self.check_open("fetch")?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let signals = self.store.db().signals.clone();
        let mut changes = signals.messages.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        let mut waiting = None;
        loop {
            changes.borrow_and_update();
            let out = self
                .fetch_once(max)
                .await
                .map_err(|e| self.store.broker_err("fetch", e))?;
            if !out.leased.is_empty() {
                return Ok(out
                    .leased
                    .into_iter()
                    .map(|l| Delivery {
                        tag: DeliveryTag(l.id.to_string()),
                        queue: l.queue,
                        redelivered: l.delivered > 1,
                        message: raw_message(
                            l.id,
                            &l.headers,
                            &l.properties,
                            l.content_type,
                            l.content_encoding,
                            l.body,
                        ),
                    })
                    .collect());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut until = deadline;
            if let Some(at) = out.next_wake {
                let ms = (at - now_ms()).clamp(1, i64::MAX) as u64;
                until = until.min(now + Duration::from_millis(ms));
            }
            waiting.get_or_insert_with(|| signals.waiting());
            tokio::select! {
                r = changes.changed() => {
                    if r.is_err() {
                        return Err(BrokerError::new(ErrorKind::Closed, "fetch: sqlite store closed"));
                    }
                }
                _ = tokio::time::sleep_until(until) => {}
            }
            self.check_open("fetch")?;
        }
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        self.settle_held(tags, sql::ACK, Wake::Nothing, "ack").await
    }

    async fn requeue(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        self.settle_held(tags, sql::REQUEUE, Wake::Messages, "requeue")
            .await
    }

    async fn dead_letter(&self, tag: &DeliveryTag, reason: &str) -> Result<(), BrokerError> {
        let id = parse_tag(tag)?;
        let owner = self.owner.clone();
        let reason = reason.to_string();
        let now = now_ms();
        self.store
            .db()
            .write(Wake::Nothing, move |c| {
                let copied = c
                    .prepare_cached(sql::INSERT_DEAD)?
                    .execute(params![id, &*owner, reason, now])?;
                if copied > 0 {
                    c.prepare_cached(sql::DELETE_DEAD)?
                        .execute(params![id, &*owner])?;
                }
                Ok(())
            })
            .await
            .map_err(|e| self.store.broker_err("dead-letter", e))
    }

    async fn keepalive(&self) -> Result<(), BrokerError> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let owner = self.owner.clone();
        let lease_ms = self.lease_ms();
        self.store
            .db()
            .write(Wake::Nothing, move |c| {
                let until = now_ms().saturating_add(lease_ms);
                c.prepare_cached(sql::KEEPALIVE)?
                    .execute(params![&*owner, until])?;
                Ok(())
            })
            .await
            .map_err(|e| self.store.broker_err("keepalive", e))
    }

    fn keepalive_interval(&self) -> Duration {
        (self.store.inner.options.visibility_timeout / 3).max(Duration::from_millis(1))
    }

    fn queue_set(&self) -> Option<&dyn QueueSet> {
        Some(self)
    }

    async fn close(&self) -> Result<(), BrokerError> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let owner = self.owner.clone();
        let result = self
            .store
            .db()
            .write(Wake::Messages, move |c| {
                c.prepare_cached(sql::REQUEUE_OWNER)?
                    .execute(params![&*owner])?;
                Ok(())
            })
            .await;
        if let Err(e) = result {
            self.closed.store(false, Ordering::SeqCst);
            return Err(self.store.broker_err("close consumer", e));
        }
        Ok(())
    }
}

impl Drop for SqliteConsumer {
    /// A consumer dropped without `close` gives its messages back at once rather than when
    /// their leases lapse.
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let owner = self.owner.clone();
            self.store.db().write_detached(Wake::Messages, move |c| {
                c.prepare_cached(sql::REQUEUE_OWNER)?
                    .execute(params![&*owner])?;
                Ok(())
            });
        }
    }
}

// ----------------------------------------------------------------------------------------
// Capabilities
// ----------------------------------------------------------------------------------------

#[async_trait]
impl Purge for SqliteStore {
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let queue = queue.to_string();
        self.db()
            .write(Wake::Nothing, move |c| {
                let ready = c
                    .prepare_cached(sql::PURGE_READY)?
                    .execute(params![queue])?;
                let scheduled = c
                    .prepare_cached(sql::PURGE_SCHEDULED)?
                    .execute(params![queue])?;
                Ok((ready + scheduled) as u64)
            })
            .await
            .map_err(|e| self.broker_err("purge", e))
    }
}

#[async_trait]
impl QueueStats for SqliteStore {
    async fn queue_lengths(&self, queues: &[String]) -> Result<Vec<QueueLength>, BrokerError> {
        let queues = queues.to_vec();
        self.db()
            .read(move |c| {
                c.execute_batch(sql::BEGIN_READ)?;
                let result = (|| -> rusqlite::Result<Vec<QueueLength>> {
                    let names = if queues.is_empty() {
                        let mut stmt = c.prepare_cached(sql::LIST_QUEUES)?;
                        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
                        names.collect::<rusqlite::Result<Vec<_>>>()?
                    } else {
                        queues
                    };
                    let count = |sql: &str, q: &str| -> rusqlite::Result<u64> {
                        c.prepare_cached(sql)?
                            .query_row(params![q], |r| r.get::<_, i64>(0))
                            .map(|n| n as u64)
                    };
                    names
                        .into_iter()
                        .map(|q| {
                            Ok(QueueLength {
                                ready: count(sql::COUNT_READY, &q)?,
                                scheduled: count(sql::COUNT_SCHEDULED, &q)?,
                                unacked: count(sql::COUNT_UNACKED, &q)?,
                                queue: q,
                            })
                        })
                        .collect()
                })();
                let _ = c.execute_batch(sql::COMMIT);
                Ok(result?)
            })
            .await
            .map_err(|e| self.broker_err("queue lengths", e))
    }
}

#[async_trait]
impl DeadLetters for SqliteStore {
    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db()
            .read(move |c| {
                let mut stmt = c.prepare_cached(sql::LIST_DEAD)?;
                let rows = stmt.query_map(params![limit], |r| {
                    let id: i64 = r.get(0)?;
                    let headers: String = r.get(4)?;
                    let properties: String = r.get(5)?;
                    Ok(DeadLetter {
                        id: id.to_string(),
                        queue: r.get(1)?,
                        reason: r.get(2)?,
                        at: from_millis(r.get(3)?),
                        message: raw_message(
                            id,
                            &headers,
                            &properties,
                            r.get(6)?,
                            r.get(7)?,
                            r.get(8)?,
                        ),
                    })
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
            .map_err(|e| self.broker_err("list dead letters", e))
    }

    async fn requeue_dead_letters(&self, ids: &[String]) -> Result<u64, BrokerError> {
        let ids = ids
            .iter()
            .map(|id| {
                id.parse::<i64>().map_err(|_| {
                    BrokerError::new(
                        ErrorKind::InvalidConfig,
                        format!("{id:?} is not a dead letter id of this store"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let now = now_ms();
        self.db()
            .write(Wake::Messages, move |c| {
                c.prepare_cached(sql::DEAD_QUEUES)?.execute(params![now])?;
                if ids.is_empty() {
                    let n = c.prepare_cached(sql::REQUEUE_ALL_DEAD)?.execute([])?;
                    c.prepare_cached(sql::DELETE_ALL_DEAD)?.execute([])?;
                    return Ok(n as u64);
                }
                let mut n = 0;
                for id in &ids {
                    let moved = c.prepare_cached(sql::REQUEUE_DEAD)?.execute(params![id])?;
                    if moved > 0 {
                        c.prepare_cached(sql::DELETE_DEAD_LETTER)?
                            .execute(params![id])?;
                    }
                    n += moved as u64;
                }
                Ok(n)
            })
            .await
            .map_err(|e| self.broker_err("requeue dead letters", e))
    }
}

/// A `revoked` row as a [`Revocation`] (`terminate`: 0, 1 for SIGTERM, or the signal).
fn revocation(task_id: String, terminate: i64, at: chrono::DateTime<chrono::Utc>) -> Revocation {
    Revocation {
        task_id,
        terminate: terminate != 0,
        signal: match terminate {
            0 | 1 => Signal::TERM,
            n => Signal(i32::try_from(n).unwrap_or(15)),
        },
        at,
    }
}

#[async_trait]
impl Revocations for SqliteStore {
    async fn revoke(
        &self,
        task_ids: &[String],
        terminate: Option<Signal>,
    ) -> Result<(), BrokerError> {
        let ids = task_ids.to_vec();
        let terminate = terminate.map_or(0, |s| i64::from(s.0));
        let now = now_ms();
        let prune = SqliteStore::due(&self.inner.revoked_pruned_at, now, 3600 * 1000);
        // Celery's `revoke` broadcast with the record: listening workers act at once.
        let cast = Value::Object(celeriac_core::control::revoke_broadcast(
            task_ids,
            (terminate != 0).then_some(Signal(terminate as i32)),
        ))
        .to_string();
        self.db()
            .write(Wake::Messages, move |c| {
                let mut stmt = c.prepare_cached(sql::REVOKE)?;
                for id in &ids {
                    stmt.execute(params![id, terminate, now])?;
                }
                c.prepare_cached(sql::INSERT_CONTROL_REQUEST)?
                    .execute(params![cast, 0, now])?;
                if prune {
                    c.prepare_cached(sql::PRUNE_REVOKED)?
                        .execute(params![now - REVOKE_KEEP_MS])?;
                }
                Ok(())
            })
            .await
            .map_err(|e| self.broker_err("revoke", e))
    }

    async fn is_revoked(&self, task_id: &str) -> Result<bool, BrokerError> {
        let id = task_id.to_string();
        self.db()
            .read(move |c| {
                let mut stmt = c.prepare_cached(sql::IS_REVOKED)?;
                Ok(stmt.exists(params![id])?)
            })
            .await
            .map_err(|e| self.broker_err("is revoked", e))
    }

    async fn revocations_since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), BrokerError> {
        let from = i64::try_from(cursor).unwrap_or(i64::MAX);
        self.db()
            .read(move |c| {
                let mut stmt = c.prepare_cached(sql::REVOKED_SINCE)?;
                let mut next = cursor;
                let rows = stmt.query_map(params![from], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        revocation(r.get(1)?, r.get(2)?, from_millis(r.get(3)?)),
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (seq, rev) = row?;
                    next = next.max(seq as u64);
                    out.push(rev);
                }
                Ok((out, next))
            })
            .await
            .map_err(|e| self.broker_err("revocations since", e))
    }
}
