//! Celery's events on the embedded store: an event is a row of `events`; every monitor
//! (`celeriac events`, the dashboard) reads the rows after its cursor every [`POLL`],
//! starting at the newest when it starts receiving, as a subscriber to Celery's `celeryev`
//! exchange would. Rows older than [`KEEP_MS`] are pruned by a sender, at most every
//! [`PRUNE_EVERY_MS`], so the table holds about a minute of events.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::error::BrokerError;
use celeriac_core::events::{EventStream, Events};
use rusqlite::params;
use serde_json::Value;
use tracing::warn;

use crate::db::Wake;
use crate::{now_ms, sql, SqliteStore};

/// How often a monitor looks for new events.
const POLL: Duration = Duration::from_millis(50);
/// Events are kept this long for monitors that fall behind.
const KEEP_MS: i64 = 60_000;
const PRUNE_EVERY_MS: i64 = 10_000;
/// Rows a monitor reads at once.
const READ_BATCH: i64 = 1000;

struct SqliteEvents {
    store: SqliteStore,
    cursor: i64,
    pending: VecDeque<Value>,
    failing: bool,
}

impl SqliteEvents {
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
            tokio::time::sleep(POLL).await;
            self.read_more().await;
        }
    }
}

#[async_trait]
impl Events for SqliteStore {
    async fn send_events(&self, _hostname: &str, events: &[Value]) -> Result<(), BrokerError> {
        if events.is_empty() {
            return Ok(());
        }
        let bodies: Vec<String> = events.iter().map(Value::to_string).collect();
        let now = now_ms();
        let prune = SqliteStore::due(&self.inner.events_pruned_at, now, PRUNE_EVERY_MS);
        self.db()
            .write(Wake::Nothing, move |c| {
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
        let cursor = self
            .db()
            .read(|c| Ok(c.query_row(sql::LAST_EVENT_SEQ, [], |r| r.get::<_, i64>(0))?))
            .await
            .map_err(|e| self.broker_err("receive events", e))?;
        Ok(Box::new(SqliteEvents {
            store: self.clone(),
            cursor,
            pending: VecDeque::new(),
            failing: false,
        }))
    }
}
