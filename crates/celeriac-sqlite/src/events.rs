//! Celery's events on the embedded store: an event is a row of `events`; every monitor
//! (`celeriac events`, the dashboard) reads the rows after its cursor whenever the store
//! changed, starting at the newest when it starts receiving, as a subscriber to Celery's
//! `celeryev` exchange would. Rows older than [`KEEP_MS`] are pruned by a sender, at most
//! every [`PRUNE_EVERY_MS`], so the table holds about a minute of events.
//!
//! A monitor keeps a row of `event_monitors` fresh (every [`MONITOR_REFRESH_MS`]); senders
//! look for one at most every [`MONITOR_CHECK_MS`] and write nothing while there is none, so
//! idle workers' heartbeats cost no commits (and wake no other process) when nobody
//! watches. As on Redis, events sent while nobody listens are lost; a monitor that just
//! started may miss up to [`MONITOR_CHECK_MS`] of them.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::error::BrokerError;
use celeriac_core::events::{EventStream, Events, WireEvent};
use rusqlite::params;
use serde_json::Value;
use tracing::warn;

use crate::db::Wake;
use crate::{now_ms, sql, SqliteStore};

/// A monitor looks again after this long even without a wake-up.
const IDLE_RECHECK: Duration = Duration::from_secs(1);
/// And no sooner than this after its last look.
const BUSY_POLL: Duration = Duration::from_millis(50);
/// Events are kept this long for monitors that fall behind.
const KEEP_MS: i64 = 60_000;
const PRUNE_EVERY_MS: i64 = 10_000;
const MONITOR_REFRESH_MS: i64 = 5_000;
/// A monitor not seen for this long is gone (its process died without removing its row).
const MONITOR_LAPSE_MS: i64 = 15_000;
const MONITOR_CHECK_MS: i64 = 1_000;
/// Rows a monitor reads at once.
const READ_BATCH: i64 = 1000;

struct SqliteEvents {
    store: SqliteStore,
    monitor: String,
    refreshed_at: i64,
    changes: tokio::sync::watch::Receiver<u64>,
    cursor: i64,
    pending: VecDeque<Value>,
    failing: bool,
}

impl SqliteEvents {
    async fn refresh_presence(&mut self) {
        let now = now_ms();
        if now - self.refreshed_at < MONITOR_REFRESH_MS {
            return;
        }
        self.refreshed_at = now;
        if let Err(e) = self.store.see_monitor(&self.monitor).await {
            warn!("events: {e}");
        }
    }

    async fn read_more(&mut self) {
        let cursor = self.cursor;
        let read = self
            .store
            .db()
            .read(move |c| {
                let mut stmt = c.prepare_cached(sql::EVENTS_SINCE)?;
                let rows = stmt.query_map(params![cursor, READ_BATCH], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await;
        match read {
            Ok(rows) => {
                self.failing = false;
                for (seq, body) in rows {
                    self.cursor = self.cursor.max(seq);
                    match serde_json::from_str::<Value>(&body) {
                        Ok(event @ Value::Object(_)) => self.pending.push_back(event),
                        _ => warn!("events: ignoring malformed event {seq}"),
                    }
                }
            }
            Err(e) if !std::mem::replace(&mut self.failing, true) => {
                let e = self.store.broker_err("read events", e);
                warn!("events: {e} (retrying)");
            }
            Err(_) => {}
        }
    }
}

#[async_trait]
impl EventStream for SqliteEvents {
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            let signals = self.store.db().signals.clone();
            signals
                .change_or_timeout(&mut self.changes, BUSY_POLL, IDLE_RECHECK)
                .await;
            self.refresh_presence().await;
            self.read_more().await;
        }
    }
}

impl Drop for SqliteEvents {
    fn drop(&mut self) {
        let id = self.monitor.clone();
        self.store.db().write_detached(Wake::Nothing, move |c| {
            c.prepare_cached(sql::DROP_MONITOR)?.execute(params![id])?;
            Ok(())
        });
    }
}

impl SqliteStore {
    /// Records that monitor `id` is receiving now (and forgets monitors long gone).
    async fn see_monitor(&self, id: &str) -> Result<(), BrokerError> {
        let id = id.to_string();
        let now = now_ms();
        self.db()
            .write(Wake::Nothing, move |c| {
                c.prepare_cached(sql::PRUNE_MONITORS)?
                    .execute(params![now - MONITOR_LAPSE_MS])?;
                c.prepare_cached(sql::SEEN_MONITOR)?
                    .execute(params![id, now])?;
                Ok(())
            })
            .await
            .map_err(|e| self.broker_err("register an event monitor", e))
    }

    /// Whether any monitor receives events, looked up at most every [`MONITOR_CHECK_MS`].
    async fn monitored(&self) -> Result<bool, BrokerError> {
        let now = now_ms();
        let inner = &self.inner;
        if !SqliteStore::due(&inner.monitors_checked_at, now, MONITOR_CHECK_MS) {
            return Ok(inner.monitors_present.load(Ordering::Relaxed));
        }
        let since = now - MONITOR_LAPSE_MS;
        let present = self
            .db()
            .read(move |c| Ok(c.query_row(sql::ANY_MONITOR, params![since], |r| r.get(0))?))
            .await
            .map_err(|e| self.broker_err("look for event monitors", e))?;
        inner.monitors_present.store(present, Ordering::Relaxed);
        Ok(present)
    }
}

#[async_trait]
impl Events for SqliteStore {
    async fn send_events(&self, _hostname: &str, events: &[WireEvent]) -> Result<(), BrokerError> {
        if events.is_empty() || !self.monitored().await? {
            return Ok(());
        }
        let bodies: Vec<String> = events.iter().map(|e| e.json.clone()).collect();
        let now = now_ms();
        let prune = SqliteStore::due(&self.inner.events_pruned_at, now, PRUNE_EVERY_MS);
        // Wakes this process's monitors; the watcher wakes the other processes'.
        self.db()
            .write(Wake::Messages, move |c| {
                let mut insert = c.prepare_cached(sql::INSERT_EVENT)?;
                for body in &bodies {
                    insert.execute(params![body, now])?;
                }
                if prune {
                    c.prepare_cached(sql::PRUNE_EVENTS)?
                        .execute(params![now - KEEP_MS])?;
                }
                Ok(())
            })
            .await
            .map_err(|e| self.broker_err("send events", e))
    }

    async fn receive_events(&self) -> Result<Box<dyn EventStream>, BrokerError> {
        let monitor = uuid::Uuid::new_v4().simple().to_string();
        self.see_monitor(&monitor).await?;
        // This process's senders see the new monitor at once.
        self.inner.monitors_present.store(true, Ordering::Relaxed);
        let changes = self.db().signals.messages.subscribe();
        let cursor = self
            .db()
            .read(|c| Ok(c.query_row(sql::LAST_EVENT_SEQ, [], |r| r.get::<_, i64>(0))?))
            .await
            .map_err(|e| self.broker_err("receive events", e))?;
        Ok(Box::new(SqliteEvents {
            store: self.clone(),
            monitor,
            refreshed_at: now_ms(),
            changes,
            cursor,
            pending: VecDeque::new(),
            failing: false,
        }))
    }
}
