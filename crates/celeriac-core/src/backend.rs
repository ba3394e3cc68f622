//! The result-backend seam: store and read task results in Celery's format.
//!
//! Two kinds of backend: stores (the embedded store, Redis) keep each result where any
//! process can read it; rpc:// (Celery's RPC backend) sends each result to the reply queue of
//! the process that sent the task, so only that process sees it. [`DisabledBackend`] keeps
//! nothing. [`ResultBackend::keeps_results`] tells them apart.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{BackendError, ErrorKind};
use crate::state::TaskMeta;

/// Where the sender of a task waits for its results: the message's `reply_to` and
/// `correlation_id` properties.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTo<'a> {
    pub queue: &'a str,
    pub correlation_id: &'a str,
}

#[async_trait]
pub trait ResultBackend: Send + Sync + 'static {
    fn display_url(&self) -> String;

    /// Stores a state change. A stored SUCCESS is never overwritten: late duplicates lose.
    /// Ready states expire after `expires` (None: kept until forgotten).
    async fn store(&self, meta: &TaskMeta, expires: Option<Duration>) -> Result<(), BackendError>;

    /// Stores a state change a worker reports for a message that named its sender's reply
    /// queue. Backends that deliver results to the sender (rpc://) route by `reply_to`; a
    /// store ignores it.
    async fn store_reply(
        &self,
        meta: &TaskMeta,
        expires: Option<Duration>,
        reply_to: Option<ReplyTo<'_>>,
    ) -> Result<(), BackendError> {
        let _ = reply_to;
        self.store(meta, expires).await
    }

    /// Whether `get` answers for any task id, from any process. False for rpc:// (only the
    /// sender sees a result) and for a disabled backend: a worker then cannot ask the backend
    /// whether a redelivered task already finished.
    fn keeps_results(&self) -> bool {
        true
    }

    /// Called by a client before it publishes tasks whose results it may read, with their
    /// ids: rpc:// declares the reply queue and starts listening on it.
    async fn before_send(&self, task_ids: &[String]) -> Result<(), BackendError> {
        let _ = task_ids;
        Ok(())
    }

    /// Releases connections; pending writes are finished first.
    async fn close(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// The stored meta, or `None` (PENDING) when nothing is stored.
    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError>;

    /// The stored metas of several tasks, in order (`None`: PENDING). Stores read them in
    /// one round trip; the default reads one after another.
    async fn get_many(&self, task_ids: &[String]) -> Result<Vec<Option<TaskMeta>>, BackendError> {
        let mut metas = Vec::with_capacity(task_ids.len());
        for id in task_ids {
            metas.push(self.get(id).await?);
        }
        Ok(metas)
    }

    /// Waits until the task is ready or `timeout` passes; returns the latest meta either way.
    /// Each engine waits its own way (notification, pub/sub, a reply queue); none polls
    /// with a runtime's timer from here, so core depends on no async runtime.
    async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError>;

    async fn forget(&self, task_id: &str) -> Result<(), BackendError>;

    /// Saves a group's member ids (`GroupResult.save()`).
    async fn save_group(
        &self,
        group_id: &str,
        task_ids: &[String],
        expires: Option<Duration>,
    ) -> Result<(), BackendError>;

    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError>;

    /// Chord joins, on backends that count a chord's header results themselves (the
    /// embedded store, Redis). `None`: chords cannot be used with this backend.
    fn chords(&self) -> Option<&dyn ChordJoin> {
        None
    }

    /// Beat's leader lease and last runs, for brokers without a store of their own
    /// (RabbitMQ): the embedded store and Redis offer it here too.
    fn beat_store(&self) -> Option<&dyn crate::beat::BeatStore> {
        None
    }
}

/// Where a header task's result goes in its chord: the chord's group id and the task's
/// place in the header (`group_index`; none sorts last, as in Celery).
#[derive(Debug, Clone, Copy)]
pub struct ChordPart<'a> {
    pub group_id: &'a str,
    pub group_index: Option<i64>,
}

/// One header result as the join hands it to the body: `result` is the stored result
/// (an exception dict for FAILURE and REVOKED).
#[derive(Debug, Clone, PartialEq)]
pub struct PartResult {
    pub task_id: String,
    pub state: crate::state::TaskState,
    pub result: serde_json::Value,
}

/// What storing a header result meant for its chord.
#[derive(Debug, Clone, PartialEq)]
pub enum PartReturn {
    /// Other header results are still missing (or the chord is unknown here).
    Waiting,
    /// The chord already fired: this is a late copy of a member, and nothing is to be done.
    AlreadyDone,
    /// Every header result is in, but another worker holds the claim to fire the body (it
    /// may have died: the claim lapses after its TTL, and storing again may win it).
    ClaimedElsewhere,
    /// This call completed the chord and holds the claim to fire the body: `parts` are the
    /// header results in header order. Release with [`ChordJoin::finish_chord`].
    Complete {
        claim: String,
        parts: Vec<PartResult>,
    },
}

/// A backend's chord bookkeeping (protocol §6.4). Each header result is counted once
/// however often it is stored (a redelivered member), and exactly one caller is handed the
/// completed chord at a time.
#[async_trait]
pub trait ChordJoin: Send + Sync {
    /// Records a chord of `size` header results, before its last member is published.
    async fn start_chord(
        &self,
        group_id: &str,
        size: usize,
        expires: Option<Duration>,
    ) -> Result<(), BackendError>;

    /// Stores the result of a header task and counts it in its chord.
    async fn store_part(
        &self,
        meta: &TaskMeta,
        expires: Option<Duration>,
        part: ChordPart<'_>,
    ) -> Result<PartReturn, BackendError>;

    /// Called by the holder of `claim` once the body was sent (or failed): drops the
    /// chord's bookkeeping and marks it done, so late copies of members change nothing.
    /// Returns false when the claim had lapsed meanwhile.
    async fn finish_chord(&self, group_id: &str, claim: &str) -> Result<bool, BackendError>;
}

/// `result_backend = "disabled"`: stores nothing; reading a result is an error saying so.
#[derive(Debug, Default, Clone, Copy)]
pub struct DisabledBackend;

/// What reading a result from a [`DisabledBackend`] says.
pub const RESULTS_DISABLED: &str = "results are disabled: configure a result backend \
     (result_backend, --result-backend or CELERIAC_RESULT_BACKEND) to read them";

fn disabled() -> BackendError {
    BackendError::new(ErrorKind::Disabled, RESULTS_DISABLED)
}

#[async_trait]
impl ResultBackend for DisabledBackend {
    fn display_url(&self) -> String {
        "disabled".into()
    }

    async fn store(&self, _: &TaskMeta, _: Option<Duration>) -> Result<(), BackendError> {
        Ok(())
    }

    fn keeps_results(&self) -> bool {
        false
    }

    async fn get(&self, _: &str) -> Result<Option<TaskMeta>, BackendError> {
        Err(disabled())
    }

    async fn wait(&self, _: &str, _: Duration) -> Result<Option<TaskMeta>, BackendError> {
        Err(disabled())
    }

    async fn forget(&self, _: &str) -> Result<(), BackendError> {
        Ok(())
    }

    async fn save_group(
        &self,
        _: &str,
        _: &[String],
        _: Option<Duration>,
    ) -> Result<(), BackendError> {
        Err(disabled())
    }

    async fn restore_group(&self, _: &str) -> Result<Option<Vec<String>>, BackendError> {
        Err(disabled())
    }
}

/// What Celery 5.7 does on revoke: a task that has not started (no state yet, or only
/// received, retrying or rejected) reads REVOKED at once. A running one keeps its state
/// until its worker ends it, and a later SUCCESS still wins. Returns whether it stored.
pub async fn mark_revoked_if_not_started(
    backend: &dyn ResultBackend,
    task_id: &str,
    expires: Option<Duration>,
) -> Result<bool, BackendError> {
    use crate::state::{ExceptionInfo, TaskState};
    if !backend.keeps_results() {
        return Ok(false);
    }
    let state = backend
        .get(task_id)
        .await?
        .map_or(TaskState::Pending, |m| m.status);
    if !matches!(
        state,
        TaskState::Pending | TaskState::Received | TaskState::Retry | TaskState::Rejected
    ) {
        return Ok(false);
    }
    let mut meta = TaskMeta::pending(task_id.to_string());
    meta.status = TaskState::Revoked;
    meta.result = ExceptionInfo::new("TaskRevokedError", "revoked").to_value();
    meta.children = None;
    meta.date_done = Some(chrono::Utc::now());
    backend.store(&meta, expires).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disabled_backend_stores_nothing_and_says_so_on_read() {
        let b = DisabledBackend;
        let meta = TaskMeta::pending("t1".to_string());
        b.store(&meta, None).await.expect("store is accepted");
        let e = b.get("t1").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Disabled);
        assert!(e
            .message()
            .starts_with("results are disabled: configure a result backend"));
        assert!(b.wait("t1", Duration::from_secs(5)).await.is_err());
        assert!(!b.keeps_results());
    }
}
