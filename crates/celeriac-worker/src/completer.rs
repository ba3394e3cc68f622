//! Writes the states a worker reports, and remembers which tasks it finished.
//!
//! A store that fails (a broken connection, a backend restarting) is retried with backoff
//! for up to [`WorkerConfig::result_store_retry_for`](crate::WorkerConfig): Celery's
//! `result_backend_always_retry`, on by default. The caller learns whether the state was
//! stored, so a late-ack message is acked only after its result is, and goes back to its
//! queue when the backend stays down past that bound.
//!
//! The record of recently finished ids is what lets the worker recognize a redelivered
//! message whose task already ran even when the backend cannot be asked (rpc://, disabled).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac_core::backend::{ChordJoin, ChordPart, PartReturn, ReplyTo};
use celeriac_core::message::TaskMessage;
use celeriac_core::state::TaskMeta;
use celeriac_core::{BackendError, ErrorKind, ResultBackend};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::shutdown::Phase;

/// First pause between store attempts; doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Whether a state reached the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    Yes,
    /// Still failing when the retry bound passed (or the worker was stopping).
    No,
}

pub(crate) struct Completer {
    backend: Arc<dyn ResultBackend>,
    retry_for: Duration,
    result_expires: Option<Duration>,
    finished: Mutex<FinishedIds>,
    /// At [`Phase::Stopping`] (cold shutdown) a failing store is not waited for any more.
    phase: watch::Receiver<Phase>,
}

impl Completer {
    pub(crate) fn new(
        backend: Arc<dyn ResultBackend>,
        retry_for: Duration,
        result_expires: Option<Duration>,
        finished_capacity: usize,
        phase: watch::Receiver<Phase>,
    ) -> Completer {
        Completer {
            backend,
            retry_for,
            result_expires,
            finished: Mutex::new(FinishedIds::new(finished_capacity)),
            phase,
        }
    }

    /// Stores `meta` for the task of `msg`, retrying a failing backend until the bound.
    pub(crate) async fn store(&self, msg: &TaskMessage, meta: &TaskMeta) -> Stored {
        let expires = self.expires_for(meta);
        let reply_to = msg.properties.reply_to.as_deref().map(|queue| ReplyTo {
            queue,
            correlation_id: &msg.properties.correlation_id,
        });
        let stored = self
            .retrying(meta, || self.backend.store_reply(meta, expires, reply_to))
            .await;
        if stored.is_some() {
            Stored::Yes
        } else {
            Stored::No
        }
    }

    /// Stores a state of a task this worker has no message of (a chain step that will not
    /// run, a chord body that failed), retrying as [`Completer::store`].
    pub(crate) async fn store_meta(&self, meta: &TaskMeta) -> Stored {
        let expires = self.expires_for(meta);
        match self
            .retrying(meta, || self.backend.store(meta, expires))
            .await
        {
            Some(()) => Stored::Yes,
            None => Stored::No,
        }
    }

    /// Stores the final state of a chord's header task and counts it in its chord, retrying
    /// as [`Completer::store`]. `None`: not stored (the caller requeues a late-ack message).
    pub(crate) async fn store_part(
        &self,
        joins: &dyn ChordJoin,
        meta: &TaskMeta,
        part: ChordPart<'_>,
    ) -> Option<PartReturn> {
        let expires = self.expires_for(meta);
        self.retrying(meta, || joins.store_part(meta, expires, part))
            .await
    }

    /// The backend, for the follow-ups that need it (chords).
    pub(crate) fn backend(&self) -> &Arc<dyn ResultBackend> {
        &self.backend
    }

    pub(crate) fn result_expires(&self) -> Option<Duration> {
        self.result_expires
    }

    fn expires_for(&self, meta: &TaskMeta) -> Option<Duration> {
        if meta.status.is_ready() {
            self.result_expires
        } else {
            None
        }
    }

    /// Runs `op` until it succeeds, a permanent error, the retry bound, or a cold shutdown.
    async fn retrying<T, F, Fut>(&self, meta: &TaskMeta, op: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut pause = FIRST_PAUSE;
        let mut attempts = 0u32;
        let mut phase = self.phase.clone();
        let stopping = |p: &Phase| *p == Phase::Stopping;
        loop {
            let err = match op().await {
                Ok(value) => {
                    if attempts > 0 {
                        info!(task_id = %meta.task_id, "stored {} result after {attempts} retries", meta.status);
                    }
                    return Some(value);
                }
                Err(e) => e,
            };
            let permanent = matches!(err.kind(), ErrorKind::InvalidConfig | ErrorKind::Disabled);
            let now = tokio::time::Instant::now();
            if permanent || now >= deadline || stopping(&phase.borrow()) {
                error!(task_id = %meta.task_id, "could not store {} result (gave up after {attempts} retries): {err}", meta.status);
                return None;
            }
            if attempts == 0 {
                warn!(task_id = %meta.task_id, "could not store {} result, retrying for up to {:?}: {err}", meta.status, self.retry_for);
            } else {
                debug!(task_id = %meta.task_id, "store retry {attempts} failed: {err}");
            }
            attempts += 1;
            tokio::select! {
                _ = tokio::time::sleep(pause.min(deadline - now)) => {}
                _ = phase.wait_for(stopping) => {}
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Remembers that task `id` reached a final state here.
    /// A revoke that came by broadcast only (from a Python client): REVOKED for a task not
    /// started yet, as Celery 5.7's worker records it.
    pub(crate) async fn mark_revoked(&self, id: &str) {
        let marked = celeriac_core::backend::mark_revoked_if_not_started(
            &*self.backend,
            id,
            self.result_expires,
        )
        .await;
        if let Err(e) = marked {
            warn!(task_id = %id, "could not mark the revoked task in the result backend: {e}");
        }
    }

    pub(crate) fn record_finished(&self, id: &str) {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }

    /// Whether task `id` already has a final state: finished by this worker recently, or
    /// stored as ready in a backend that keeps results. `None` when that cannot be told
    /// (the backend is unreachable).
    pub(crate) async fn finished_state(&self, id: &str) -> Result<Option<String>, String> {
        if self
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
        {
            return Ok(Some("finished by this worker".into()));
        }
        if !self.backend.keeps_results() {
            return Ok(None);
        }
        match self.backend.get(id).await {
            Ok(Some(meta)) if meta.status.is_ready() => Ok(Some(meta.status.to_string())),
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A bounded set of task ids, oldest forgotten first. Ids are kept as 64-bit hashes (8 bytes
/// each instead of a 36-byte string plus its allocation, twice): with 65 536 ids kept, the
/// chance that an unrelated id looks finished is about 65 536 / 2^64 per lookup.
struct FinishedIds {
    order: VecDeque<u64>,
    ids: HashSet<u64>,
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl FinishedIds {
    fn new(capacity: usize) -> FinishedIds {
        FinishedIds {
            order: VecDeque::new(),
            ids: HashSet::new(),
            capacity: capacity.max(1),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn key(&self, id: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(id)
    }

    fn insert(&mut self, id: &str) {
        let key = self.key(id);
        if !self.ids.insert(key) {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(&self.key(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_ids_forget_the_oldest_past_capacity() {
        let mut f = FinishedIds::new(2);
        f.insert("a");
        f.insert("b");
        f.insert("a");
        f.insert("c");
        assert!(!f.contains("a"));
        assert!(f.contains("b") && f.contains("c"));
    }
}
