//! Chord joins in the embedded store: a header task's result and its count in the chord are
//! one transaction, so a crash never stores a result without counting it (or the reverse),
//! and a member stored twice counts once (`chord_parts` is keyed by task id and index).
//! Exactly one caller at a time holds the claim to fire the body; a claim whose holder died
//! lapses after [`CLAIM_MS`] and goes to the next caller that stores a member.

use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::backend::{ChordJoin, ChordPart, PartResult, PartReturn};
use celeriac_core::error::BackendError;
use celeriac_core::state::{TaskMeta, TaskState};
use rusqlite::{params, Connection, OptionalExtension};

use crate::backend::expires_at;
use crate::db::Wake;
use crate::{now_ms, sql, SqliteStore};

/// How long a claim to fire a body holds before another worker may take it.
pub const CLAIM_MS: i64 = 10_000;

/// What a chord's row says.
struct ChordRow {
    size: i64,
    counted: i64,
    claim: Option<String>,
    claimed_until: Option<i64>,
}

fn chord_row(c: &Connection, group_id: &str) -> rusqlite::Result<Option<ChordRow>> {
    c.prepare_cached(sql::GET_CHORD)?
        .query_row(params![group_id], |r| {
            Ok(ChordRow {
                size: r.get(0)?,
                counted: r.get(1)?,
                claim: r.get(2)?,
                claimed_until: r.get(3)?,
            })
        })
        .optional()
}

/// A stored header result that does not read back (the file was changed by hand).
fn corrupt(group_id: &str, task_id: &str) -> rusqlite::Error {
    let why = format!("chord {group_id}: the stored header result of {task_id} is unreadable");
    rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, why.into())
}

fn parts(c: &Connection, group_id: &str) -> rusqlite::Result<Vec<PartResult>> {
    let mut stmt = c.prepare_cached(sql::CHORD_PARTS)?;
    let rows = stmt.query_map(params![group_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (task_id, state, result) = row?;
        out.push(PartResult {
            state: TaskState::parse(&state).ok_or_else(|| corrupt(group_id, &task_id))?,
            result: serde_json::from_str(&result).map_err(|_| corrupt(group_id, &task_id))?,
            task_id,
        });
    }
    Ok(out)
}

/// Counts one header result and decides what it means; runs inside the result's write.
fn count_part(
    c: &Connection,
    meta: &TaskMeta,
    group_id: &str,
    index: i64,
    token: &str,
    now: i64,
) -> rusqlite::Result<PartReturn> {
    let Some(chord) = chord_row(c, group_id)? else {
        return Ok(PartReturn::Waiting);
    };
    if chord.claim.as_deref() == Some("done") {
        return Ok(PartReturn::AlreadyDone);
    }
    let added = c.prepare_cached(sql::ADD_CHORD_PART)?.execute(params![
        group_id,
        meta.task_id,
        index,
        meta.status.as_str(),
        meta.result.to_string()
    ])?;
    if added == 1 {
        c.prepare_cached(sql::COUNT_CHORD_PART)?
            .execute(params![group_id])?;
    }
    if chord.counted + (added as i64) < chord.size {
        return Ok(PartReturn::Waiting);
    }
    let held = chord.claim.is_some() && chord.claimed_until.is_some_and(|until| until > now);
    if held {
        return Ok(PartReturn::ClaimedElsewhere);
    }
    c.prepare_cached(sql::CLAIM_CHORD)?
        .execute(params![group_id, token, now + CLAIM_MS])?;
    Ok(PartReturn::Complete {
        claim: token.to_string(),
        parts: parts(c, group_id)?,
    })
}

#[async_trait]
impl ChordJoin for SqliteStore {
    async fn start_chord(
        &self,
        group_id: &str,
        size: usize,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        let id = group_id.to_string();
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        let expires_at = expires_at(now_ms(), expires);
        self.db()
            .write(Wake::Results, move |c| {
                c.prepare_cached(sql::DELETE_CHORD_PARTS)?
                    .execute(params![id])?;
                c.prepare_cached(sql::START_CHORD)?
                    .execute(params![id, size, expires_at])?;
                Ok(())
            })
            .await
            .map_err(|e| self.backend_err("start chord", e))
    }

    async fn store_part(
        &self,
        meta: &TaskMeta,
        expires: Option<Duration>,
        part: ChordPart<'_>,
    ) -> Result<PartReturn, BackendError> {
        let write = self.result_write(meta, expires);
        let meta = meta.clone();
        let group_id = part.group_id.to_string();
        let index = part.group_index.unwrap_or(i64::MAX);
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.db()
            .write(Wake::Results, move |c| {
                write.run(c)?;
                count_part(c, &meta, &group_id, index, &token, now_ms())
            })
            .await
            .map_err(|e| self.backend_err("store and count chord result", e))
    }

    async fn finish_chord(&self, group_id: &str, claim: &str) -> Result<bool, BackendError> {
        let id = group_id.to_string();
        let claim = claim.to_string();
        self.db()
            .write(Wake::Results, move |c| {
                let finished = c
                    .prepare_cached(sql::FINISH_CHORD)?
                    .execute(params![id, claim])?;
                if finished == 1 {
                    c.prepare_cached(sql::DELETE_CHORD_PARTS)?
                        .execute(params![id])?;
                }
                Ok(finished == 1)
            })
            .await
            .map_err(|e| self.backend_err("finish chord", e))
    }
}
