//! Chord joins on Redis, as Celery 5.7's workers do them (§6.4): the client writes the size,
//! each header result is counted by the part-return script, the worker that completes the
//! chord wins a claim, reads the ordered results, fires the body, and cleans up.

use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::backend::{ChordJoin, ChordPart, PartResult, PartReturn, ResultBackend};
use celeriac_core::error::{BackendError, ErrorKind};
use celeriac_core::json::{parse_python_json, to_python_json};
use celeriac_core::state::{TaskMeta, TaskState};
use serde_json::{json, Value};

use super::keys::{ChordKeys, CHORD_CLAIM_SECS, CHORD_DONE_SECS};
use super::{ttl_secs, RedisBackend};

/// What the part-return script answers: `{count, extra, size, claimed}`.
type ScriptReply = (i64, Option<i64>, Option<i64>, i64);

impl RedisBackend {
    /// The header results in `group_index` order, decoded from `.j`.
    async fn joined_parts(&self, keys: &ChordKeys) -> Result<Vec<PartResult>, BackendError> {
        let entries: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(&keys.joined)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err("ZRANGE", &keys.joined, e))?;
        entries
            .iter()
            .map(|entry| {
                decode_part(entry).ok_or_else(|| {
                    BackendError::new(
                        ErrorKind::Protocol,
                        format!(
                            "{} on {} holds an entry that is not [1, id, state, result]: {}",
                            keys.joined,
                            self.display,
                            String::from_utf8_lossy(entry)
                        ),
                    )
                })
            })
            .collect()
    }
}

fn decode_part(entry: &[u8]) -> Option<PartResult> {
    let Value::Array(fields) = parse_python_json(entry).ok()? else {
        return None;
    };
    let [_, Value::String(task_id), Value::String(state), result] = fields.as_slice() else {
        return None;
    };
    Some(PartResult {
        task_id: task_id.clone(),
        state: TaskState::parse(state)?,
        result: result.clone(),
    })
}

#[async_trait]
impl ChordJoin for RedisBackend {
    /// `DEL .c` (a re-applied chord reuses nothing of an old run), then `SET .s size EX`.
    async fn start_chord(
        &self,
        group_id: &str,
        size: usize,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        let keys = self.keys.chord(group_id);
        let mut set = redis::cmd("SET");
        set.arg(&keys.size).arg(size);
        let ttl = ttl_secs(expires);
        if ttl > 0 {
            set.arg("EX").arg(ttl);
        }
        redis::pipe()
            .cmd("DEL")
            .arg(&keys.claim)
            .ignore()
            .add_command(set)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| self.err("start chord", &keys.size, e))
    }

    /// Stores the meta as any result, then counts it: the same two steps as Celery's worker,
    /// so a member stored but not counted (a worker killed in between) is counted when its
    /// redelivered copy stores again.
    async fn store_part(
        &self,
        meta: &TaskMeta,
        expires: Option<Duration>,
        part: ChordPart<'_>,
    ) -> Result<PartReturn, BackendError> {
        self.store(meta, expires).await?;
        let keys = self.keys.chord(part.group_id);
        let encoded = to_python_json(&json!([1, meta.task_id, meta.status.as_str(), meta.result]));
        let index = part
            .group_index
            .map_or_else(|| "+inf".to_string(), |i| i.to_string());
        let token = uuid::Uuid::new_v4().simple().to_string();
        let ttl = ttl_secs(expires);
        let (count, extra, size, claimed): ScriptReply = self
            .part_script
            .key(&keys.joined)
            .key(&keys.extra)
            .key(&keys.size)
            .key(&keys.counted)
            .key(&keys.group)
            .key(&keys.claim)
            .arg(&meta.task_id)
            .arg(&encoded)
            .arg("1")
            .arg(&index)
            .arg(ttl)
            .arg(ttl)
            .arg(CHORD_CLAIM_SECS)
            .arg(&token)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err("count chord result in", &keys.joined, e))?;
        if count < 0 {
            return Ok(PartReturn::AlreadyDone);
        }
        let Some(size) = size else {
            return Ok(PartReturn::Waiting);
        };
        if count != size + extra.unwrap_or(0) {
            return Ok(PartReturn::Waiting);
        }
        if claimed == 0 {
            return Ok(PartReturn::ClaimedElsewhere);
        }
        let parts = self.joined_parts(&keys).await?;
        Ok(PartReturn::Complete {
            claim: token,
            parts,
        })
    }

    async fn finish_chord(&self, group_id: &str, claim: &str) -> Result<bool, BackendError> {
        let keys = self.keys.chord(group_id);
        let cleaned: i64 = self
            .cleanup_script
            .key(&keys.claim)
            .key(&keys.joined)
            .key(&keys.extra)
            .key(&keys.size)
            .key(&keys.counted)
            .arg(claim)
            .arg(CHORD_DONE_SECS)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err("finish chord", &keys.claim, e))?;
        Ok(cleaned == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_decode_from_what_python_writes() {
        let part = decode_part(br#"[1, "8869cf3f", "SUCCESS", 0.2]"#).unwrap();
        assert_eq!(
            (part.task_id.as_str(), part.state, part.result),
            ("8869cf3f", TaskState::Success, json!(0.2))
        );
        assert!(decode_part(b"[1, 2]").is_none());
        assert!(decode_part(br#"[1, "x", "NOPE", 1]"#).is_none());
    }
}
