//! The result-backend side: Celery's task meta JSON keyed by task id, and saved groups.

use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::backend::ResultBackend;
use celeriac_core::error::BackendError;
use celeriac_core::state::TaskMeta;
use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use crate::db::{DbError, Wake};
use crate::{duration_ms, now_ms, sql, SqliteStore};

/// Expired results and groups are pruned at most this often per store, this many at a time.
const PRUNE_EVERY_MS: i64 = 60_000;
const PRUNE_BATCH: i64 = 1000;

pub(crate) fn expires_at(now: i64, expires: Option<Duration>) -> Option<i64> {
    expires.map(|d| now.saturating_add(duration_ms(d)))
}

fn decode_meta(id: &str, text: &str) -> Result<TaskMeta, DbError> {
    TaskMeta::from_json(text.as_bytes()).ok_or_else(|| {
        DbError::Corrupt(format!(
            "stored result of task {id} is not a task meta: {text}"
        ))
    })
}

/// One result to write, with the pruning of expired rows when it is due.
pub(crate) struct ResultWrite {
    id: String,
    status: &'static str,
    text: String,
    now: i64,
    expires_at: Option<i64>,
    prune: bool,
}

impl ResultWrite {
    pub(crate) fn run(&self, c: &rusqlite::Connection) -> rusqlite::Result<()> {
        c.prepare_cached(sql::STORE_RESULT)?.execute(params![
            self.id,
            self.status,
            self.text,
            self.now,
            self.expires_at
        ])?;
        if self.prune {
            for prune in [
                sql::PRUNE_RESULTS,
                sql::PRUNE_GROUPS,
                sql::PRUNE_CHORD_PARTS,
                sql::PRUNE_CHORDS,
            ] {
                c.prepare_cached(prune)?
                    .execute(params![self.now, PRUNE_BATCH])?;
            }
        }
        Ok(())
    }
}

impl SqliteStore {
    pub(crate) fn result_write(&self, meta: &TaskMeta, expires: Option<Duration>) -> ResultWrite {
        let now = now_ms();
        ResultWrite {
            id: meta.task_id.clone(),
            status: meta.status.as_str(),
            text: meta.to_json(),
            now,
            expires_at: expires_at(now, expires),
            prune: SqliteStore::due(&self.inner.results_pruned_at, now, PRUNE_EVERY_MS),
        }
    }

    /// The metas of `ids` in one read.
    async fn get_metas(&self, ids: &[String]) -> Result<Vec<Option<TaskMeta>>, BackendError> {
        let ids = ids.to_vec();
        self.db()
            .read(move |c| {
                let now = now_ms();
                let mut stmt = c.prepare_cached(sql::GET_RESULT)?;
                ids.iter()
                    .map(|id| {
                        let text: Option<String> =
                            stmt.query_row(params![id, now], |r| r.get(0)).optional()?;
                        text.map(|t| decode_meta(id, &t)).transpose()
                    })
                    .collect()
            })
            .await
            .map_err(|e| self.backend_err("get results", e))
    }

    async fn get_meta(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        let id = task_id.to_string();
        self.db()
            .read(move |c| {
                let text: Option<String> = c
                    .prepare_cached(sql::GET_RESULT)?
                    .query_row(params![id, now_ms()], |r| r.get(0))
                    .optional()?;
                text.map(|t| decode_meta(&id, &t)).transpose()
            })
            .await
            .map_err(|e| self.backend_err("get result", e))
    }
}

#[async_trait]
impl ResultBackend for SqliteStore {
    fn display_url(&self) -> String {
        self.url()
    }

    async fn store(&self, meta: &TaskMeta, expires: Option<Duration>) -> Result<(), BackendError> {
        let write = self.result_write(meta, expires);
        self.db()
            .write(Wake::Results, move |c| write.run(c))
            .await
            .map_err(|e| self.backend_err("store result", e))
    }

    fn chords(&self) -> Option<&dyn celeriac_core::backend::ChordJoin> {
        Some(self)
    }

    /// The same store as the broker's `beat_store()`: one file holds both.
    fn beat_store(&self) -> Option<&dyn celeriac_core::beat::BeatStore> {
        Some(self)
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        self.get_meta(task_id).await
    }

    async fn get_many(&self, task_ids: &[String]) -> Result<Vec<Option<TaskMeta>>, BackendError> {
        self.get_metas(task_ids).await
    }

    /// Wakes at once when this process stores a result, and within about a millisecond when
    /// another process does (the watcher's `data_version` poll); no fixed polling interval.
    async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        let signals = self.db().signals.clone();
        let mut changes = signals.results.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut waiting = None;
        loop {
            changes.borrow_and_update();
            let meta = self.get_meta(task_id).await?;
            if meta.as_ref().is_some_and(|m| m.status.is_ready()) {
                return Ok(meta);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(meta);
            }
            waiting.get_or_insert_with(|| signals.waiting());
            tokio::select! {
                r = changes.changed() => {
                    if r.is_err() {
                        return Ok(meta);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let id = task_id.to_string();
        self.db()
            .write(Wake::Results, move |c| {
                c.prepare_cached(sql::FORGET_RESULT)?.execute(params![id])?;
                Ok(())
            })
            .await
            .map_err(|e| self.backend_err("forget result", e))
    }

    async fn save_group(
        &self,
        group_id: &str,
        task_ids: &[String],
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        let id = group_id.to_string();
        let ids = Value::from(task_ids.to_vec()).to_string();
        let expires_at = expires_at(now_ms(), expires);
        self.db()
            .write(Wake::Results, move |c| {
                c.prepare_cached(sql::SAVE_GROUP)?
                    .execute(params![id, ids, expires_at])?;
                Ok(())
            })
            .await
            .map_err(|e| self.backend_err("save group", e))
    }

    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        let id = group_id.to_string();
        self.db()
            .read(move |c| {
                let text: Option<String> = c
                    .prepare_cached(sql::GET_GROUP)?
                    .query_row(params![id, now_ms()], |r| r.get(0))
                    .optional()?;
                match text {
                    None => Ok(None),
                    Some(t) => serde_json::from_str::<Vec<String>>(&t)
                        .map(Some)
                        .map_err(|e| {
                            DbError::Corrupt(format!(
                                "stored group {id} is not a list of task ids: {e}"
                            ))
                        }),
                }
            })
            .await
            .map_err(|e| self.backend_err("restore group", e))
    }
}
