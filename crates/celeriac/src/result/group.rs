//! Handles on several results: [`ResultSet`] (any list of them) and [`GroupResult`] (a
//! group's, with its id: it can be saved in the backend and restored by id, as Celery's).

use std::marker::PhantomData;
use std::time::Duration;

use celeriac_core::canvas::Frozen;
use celeriac_core::state::TaskState;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::AsyncResult;
use crate::app::App;
use crate::error::{Error, ResultError};

/// Several results, read in the order they were given.
pub struct ResultSet<T> {
    app: App,
    results: Vec<AsyncResult<T>>,
}

impl<T> Clone for ResultSet<T> {
    fn clone(&self) -> Self {
        ResultSet {
            app: self.app.clone(),
            results: self.results.clone(),
        }
    }
}

impl<T> std::fmt::Debug for ResultSet<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.results).finish()
    }
}

impl<T: DeserializeOwned> ResultSet<T> {
    pub fn new(app: App, results: Vec<AsyncResult<T>>) -> Self {
        ResultSet { app, results }
    }

    pub fn results(&self) -> &[AsyncResult<T>] {
        &self.results
    }

    pub fn len(&self) -> usize {
        self.results.len()
    }

    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Waits up to `timeout` in all for every result; returns them in order, or the first
    /// failure found (Celery's `join(propagate=True)`). The results still missing are read
    /// in one round trip (`get_many`), then the last of them is waited for (the backend's
    /// push: pub/sub, the store's wake-up), and so on: a few round trips for a whole group,
    /// never a polling interval.
    pub async fn get(&self, timeout: Duration) -> Result<Vec<T>, ResultError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let backend = self.app.backend().await?;
        let mut values: Vec<Option<T>> = Vec::new();
        values.resize_with(self.results.len(), || None);
        let mut pending: Vec<usize> = (0..self.results.len()).collect();
        loop {
            let ids: Vec<String> = pending
                .iter()
                .map(|&i| self.results[i].id().to_string())
                .collect();
            let metas = backend.get_many(&ids).await?;
            let mut still = Vec::new();
            for (index, meta) in pending.into_iter().zip(metas) {
                match meta.filter(|m| m.status.is_ready()) {
                    Some(meta) => {
                        values[index] = Some(super::decode_ready(self.results[index].id(), meta)?)
                    }
                    None => still.push(index),
                }
            }
            pending = still;
            let Some(&last) = pending.last() else {
                return Ok(values
                    .into_iter()
                    .map(|v| v.expect("every result read"))
                    .collect());
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let waited = backend.wait(self.results[last].id(), left).await?;
            if left.is_zero() && !waited.is_some_and(|m| m.status.is_ready()) {
                let first = &self.results[pending[0]];
                return Err(ResultError::Timeout {
                    task_id: first.id().to_string(),
                    state: first.state().await.unwrap_or(TaskState::Pending),
                });
            }
        }
    }

    async fn states(&self) -> Result<Vec<TaskState>, Error> {
        let mut states = Vec::with_capacity(self.results.len());
        for result in &self.results {
            states.push(result.state().await?);
        }
        Ok(states)
    }

    /// How many finished successfully.
    pub async fn completed_count(&self) -> Result<usize, Error> {
        let states = self.states().await?;
        Ok(states.iter().filter(|s| **s == TaskState::Success).count())
    }

    /// Whether every one finished (SUCCESS, FAILURE or REVOKED).
    pub async fn ready(&self) -> Result<bool, Error> {
        Ok(self.states().await?.iter().all(TaskState::is_ready))
    }

    /// Whether every one succeeded.
    pub async fn successful(&self) -> Result<bool, Error> {
        let states = self.states().await?;
        Ok(states.iter().all(|s| *s == TaskState::Success))
    }

    /// Whether any failed.
    pub async fn failed(&self) -> Result<bool, Error> {
        let states = self.states().await?;
        Ok(states.contains(&TaskState::Failure))
    }

    /// Revokes every one durably; with `terminate`, stops those running.
    pub async fn revoke(&self, terminate: bool) -> Result<(), Error> {
        let ids: Vec<String> = self.results.iter().map(|r| r.id().to_string()).collect();
        self.app.revoke(&ids, terminate).await
    }

    /// Removes every stored result.
    pub async fn forget(&self) -> Result<(), Error> {
        for result in &self.results {
            result.forget().await?;
        }
        Ok(())
    }
}

/// A group's results, with the group's id.
pub struct GroupResult<T> {
    id: String,
    set: ResultSet<T>,
    _output: PhantomData<fn() -> T>,
}

impl<T> Clone for GroupResult<T> {
    fn clone(&self) -> Self {
        GroupResult {
            id: self.id.clone(),
            set: self.set.clone(),
            _output: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for GroupResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<GroupResult: {} {:?}>", self.id, self.set)
    }
}

impl<T> std::ops::Deref for GroupResult<T> {
    type Target = ResultSet<T>;
    fn deref(&self) -> &ResultSet<T> {
        &self.set
    }
}

impl<T> GroupResult<T> {
    /// The handle on a group's results from the ids its planner gave them; `None` when
    /// `frozen` is a single task's.
    pub(crate) fn from_frozen(app: &App, frozen: &Frozen) -> Option<Self> {
        let Frozen::Group { id, members, .. } = frozen else {
            return None;
        };
        Some(GroupResult {
            id: id.clone(),
            set: ResultSet {
                app: app.clone(),
                results: members
                    .iter()
                    .map(|m| AsyncResult::from_frozen(app, m))
                    .collect(),
            },
            _output: PhantomData,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<T: DeserializeOwned> GroupResult<T> {
    /// Saves the group's member ids in the backend (Celery's `GroupResult.save()`), so any
    /// process can [`restore`](GroupResult::restore) it by id.
    pub async fn save(&self) -> Result<(), Error> {
        let ids: Vec<String> = self.results().iter().map(|r| r.id().to_string()).collect();
        let backend = self.set.app.backend().await?;
        Ok(backend
            .save_group(&self.id, &ids, self.set.app.result_expires())
            .await?)
    }
}

impl GroupResult<Value> {
    /// A group saved by [`save`](GroupResult::save) (here or by Python), or `None`.
    pub async fn restore(app: &App, id: &str) -> Result<Option<GroupResult<Value>>, Error> {
        let Some(ids) = app.backend().await?.restore_group(id).await? else {
            return Ok(None);
        };
        Ok(Some(GroupResult {
            id: id.to_string(),
            set: ResultSet {
                app: app.clone(),
                results: ids
                    .into_iter()
                    .map(|i| AsyncResult::new(app.clone(), i))
                    .collect(),
            },
            _output: PhantomData,
        }))
    }
}
