//! Remote control on the embedded store: Celery's pidbox broadcast made durable-enough for
//! every process on the machine. A request is a row of `control_requests`; each worker
//! reads the rows after its cursor (starting at the newest when it starts listening, as a
//! fanout subscriber would) when the store changed (the watcher's wake-up), at most every
//! [`POLL`] while it is busy and at least every [`IDLE_RECHECK`]; a reply is a row of
//! `control_replies` under the caller's reply key, which the caller takes every [`POLL`]
//! while it waits. Rows older than [`KEEP_MS`] are pruned.

use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::control::{ControlInbox, ControlRequest, Mailbox, ReplyAddress};
use celeriac_core::error::BrokerError;
use rusqlite::params;
use serde_json::Value;
use tracing::warn;

use crate::db::Wake;
use crate::{now_ms, sql, SqliteStore};

/// How often a waiting caller looks for replies.
const POLL: Duration = Duration::from_millis(25);
/// A listener looks again after this long even without a wake-up.
const IDLE_RECHECK: Duration = Duration::from_secs(1);
/// Requests and replies are kept this long (a caller waits at most its timeout).
const KEEP_MS: i64 = 60_000;

struct SqliteInbox {
    store: SqliteStore,
    changes: tokio::sync::watch::Receiver<u64>,
    cursor: i64,
    pending: std::collections::VecDeque<ControlRequest>,
    failing: bool,
}

#[async_trait]
impl ControlInbox for SqliteInbox {
    async fn next(&mut self) -> Option<ControlRequest> {
        loop {
            if let Some(request) = self.pending.pop_front() {
                return Some(request);
            }
            let signals = self.store.db().signals.clone();
            signals
                .change_or_timeout(&mut self.changes, POLL, IDLE_RECHECK)
                .await;
            let cursor = self.cursor;
            let read = self
                .store
                .db()
                .read(move |c| {
                    let mut stmt = c.prepare_cached(sql::CONTROL_REQUESTS_SINCE)?;
                    let rows = stmt.query_map(params![cursor], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await;
            match read {
                Ok(rows) => {
                    self.failing = false;
                    for (seq, body, clock) in rows {
                        self.cursor = self.cursor.max(seq);
                        let parsed = serde_json::from_str::<Value>(&body)
                            .ok()
                            .and_then(|b| ControlRequest::from_body(&b, clock.max(0) as u64));
                        match parsed {
                            Some(request) => self.pending.push_back(request),
                            None => warn!("remote control: ignoring malformed request {seq}"),
                        }
                    }
                }
                Err(e) if !std::mem::replace(&mut self.failing, true) => {
                    let e = self.store.broker_err("read remote-control requests", e);
                    warn!("remote control: {e} (retrying)")
                }
                Err(_) => {}
            }
        }
    }
}

#[async_trait]
impl Mailbox for SqliteStore {
    async fn listen(&self, _hostname: &str) -> Result<Box<dyn ControlInbox>, BrokerError> {
        // Subscribed before the cursor is read: a request committed in between wakes it.
        let changes = self.db().signals.messages.subscribe();
        let cursor = self
            .db()
            .read(|c| Ok(c.query_row(sql::LAST_CONTROL_SEQ, [], |r| r.get::<_, i64>(0))?))
            .await
            .map_err(|e| self.broker_err("listen for remote control", e))?;
        Ok(Box::new(SqliteInbox {
            store: self.clone(),
            changes,
            cursor,
            pending: Default::default(),
            failing: false,
        }))
    }

    async fn reply(
        &self,
        to: &ReplyAddress,
        ticket: &str,
        _clock: u64,
        body: &Value,
    ) -> Result<(), BrokerError> {
        let (key, ticket, body) = (to.routing_key.clone(), ticket.to_string(), body.to_string());
        self.db()
            .write(Wake::Nothing, move |c| {
                c.prepare_cached(sql::INSERT_CONTROL_REPLY)?
                    .execute(params![key, ticket, body, now_ms()])?;
                Ok(())
            })
            .await
            .map_err(|e| self.broker_err("remote-control reply", e))
    }

    async fn broadcast(
        &self,
        request: &ControlRequest,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, BrokerError> {
        let body = request.to_body().to_string();
        let clock = request.clock as i64;
        // Wakes this process's listeners; the watcher wakes the other processes'.
        self.db()
            .write(Wake::Messages, move |c| {
                let now = now_ms();
                c.prepare_cached(sql::PRUNE_CONTROL_REQUESTS)?
                    .execute(params![now - KEEP_MS])?;
                c.prepare_cached(sql::PRUNE_CONTROL_REPLIES)?
                    .execute(params![now - KEEP_MS])?;
                c.prepare_cached(sql::INSERT_CONTROL_REQUEST)?
                    .execute(params![body, clock, now])?;
                Ok(())
            })
            .await
            .map_err(|e| self.broker_err("remote-control request", e))?;
        let (Some(ticket), Some(to)) = (&request.ticket, &request.reply_to) else {
            return Ok(Vec::new());
        };
        self.collect_replies(&to.routing_key, ticket, timeout, limit)
            .await
    }
}

impl SqliteStore {
    /// Takes the replies for `key` until `timeout` or `limit` replies with `ticket`.
    async fn collect_replies(
        &self,
        key: &str,
        ticket: &str,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, BrokerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut replies = Vec::new();
        while replies.len() < limit.unwrap_or(usize::MAX) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(POLL).await;
            let key = key.to_string();
            let taken = self
                .db()
                .write(Wake::Nothing, move |c| {
                    let mut stmt = c.prepare_cached(sql::TAKE_CONTROL_REPLIES)?;
                    let rows = stmt.query_map(params![key], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })?;
                    rows.collect::<Result<Vec<_>, _>>()
                })
                .await
                .map_err(|e| self.broker_err("remote-control replies", e))?;
            replies.extend(
                taken
                    .into_iter()
                    .filter(|(t, _)| t == ticket)
                    .filter_map(|(_, body)| serde_json::from_str::<Value>(&body).ok()),
            );
        }
        Ok(replies)
    }
}
