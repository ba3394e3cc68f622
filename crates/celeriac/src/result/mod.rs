//! `AsyncResult`: a handle on one task's result; `GroupResult` / `ResultSet` (`group.rs`):
//! handles on several.

mod group;

pub use group::{GroupResult, ResultSet};

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::canvas::Frozen;
use serde_json::Value;

use celeriac_core::state::{TaskMeta, TaskState};
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::error::{Error, RemoteError, ResultError};

pub struct AsyncResult<T> {
    app: App,
    id: String,
    parent: Option<Arc<Parent>>,
    _output: PhantomData<fn() -> T>,
}

/// What ran before a workflow step: the previous step of a chain, or a chord's header.
#[derive(Debug, Clone)]
pub enum Parent {
    Task(AsyncResult<Value>),
    Group(GroupResult<Value>),
}

impl<T> Clone for AsyncResult<T> {
    fn clone(&self) -> Self {
        AsyncResult {
            app: self.app.clone(),
            id: self.id.clone(),
            parent: self.parent.clone(),
            _output: PhantomData,
        }
    }
}

impl Parent {
    fn from_frozen(app: &App, frozen: &Frozen) -> Parent {
        match GroupResult::from_frozen(app, frozen) {
            Some(group) => Parent::Group(group),
            None => Parent::Task(AsyncResult::from_frozen(app, frozen)),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Parent::Task(r) => r.id(),
            Parent::Group(g) => g.id(),
        }
    }
}

impl<T> AsyncResult<T> {
    /// The handle on a workflow's result from the ids its planner gave it.
    pub(crate) fn from_frozen(app: &App, frozen: &Frozen) -> Self {
        let (id, parent) = match frozen {
            Frozen::Task { id, parent } | Frozen::Group { id, parent, .. } => (id, parent),
        };
        AsyncResult {
            app: app.clone(),
            id: id.clone(),
            parent: parent
                .as_deref()
                .map(|p| Arc::new(Parent::from_frozen(app, p))),
            _output: PhantomData,
        }
    }

    /// The step before this one in its workflow (Celery's `AsyncResult.parent`), when this
    /// handle came from applying one.
    pub fn parent(&self) -> Option<&Parent> {
        self.parent.as_deref()
    }

    /// The same result decoded as `P`.
    pub fn typed<P>(self) -> AsyncResult<P> {
        AsyncResult {
            app: self.app,
            id: self.id,
            parent: self.parent,
            _output: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<AsyncResult: {}>", self.id)
    }
}

impl<T: DeserializeOwned> AsyncResult<T> {
    pub fn new(app: App, id: impl Into<String>) -> Self {
        AsyncResult {
            app,
            id: id.into(),
            parent: None,
            _output: PhantomData,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The stored meta (`None` while PENDING).
    pub async fn meta(&self) -> Result<Option<TaskMeta>, Error> {
        Ok(self.app.backend().await?.get(&self.id).await?)
    }

    pub async fn state(&self) -> Result<TaskState, Error> {
        Ok(self
            .meta()
            .await?
            .map(|m| m.status)
            .unwrap_or(TaskState::Pending))
    }

    /// True once the task is SUCCESS, FAILURE or REVOKED.
    pub async fn ready(&self) -> Result<bool, Error> {
        Ok(self.state().await?.is_ready())
    }

    pub async fn successful(&self) -> Result<bool, Error> {
        Ok(self.state().await? == TaskState::Success)
    }

    /// Waits up to `timeout` for the task to finish; returns its output, or the remote error
    /// with its type, message and traceback.
    pub async fn get(&self, timeout: Duration) -> Result<T, ResultError> {
        let backend = self.app.backend().await?;
        let meta = backend.wait(&self.id, timeout).await?;
        let Some(meta) = meta.filter(|m| m.status.is_ready()) else {
            let state = self.state().await.unwrap_or(TaskState::Pending);
            return Err(ResultError::Timeout {
                task_id: self.id.clone(),
                state,
            });
        };
        decode_ready(&self.id, meta)
    }

    /// Removes the stored result.
    pub async fn forget(&self) -> Result<(), Error> {
        Ok(self.app.backend().await?.forget(&self.id).await?)
    }

    /// Revokes the task durably; with `terminate`, stops it if running.
    pub async fn revoke(&self, terminate: bool) -> Result<(), Error> {
        self.app
            .revoke(std::slice::from_ref(&self.id), terminate)
            .await
    }

    /// Revokes the task and stops it if running with `signal` (Celery's
    /// `revoke(terminate=True, signal=...)`).
    pub async fn terminate(&self, signal: celeriac_core::broker::Signal) -> Result<(), Error> {
        self.app
            .revoke_with(std::slice::from_ref(&self.id), Some(signal))
            .await
    }
}

pub(crate) fn decode_ready<T: DeserializeOwned>(
    id: &str,
    meta: TaskMeta,
) -> Result<T, ResultError> {
    if meta.status == TaskState::Success {
        return celeriac_core::json::from_value(&meta.result).map_err(|e| ResultError::Decode {
            task_id: id.to_string(),
            reason: e.to_string(),
        });
    }
    let exception = meta.exception().unwrap_or_else(|| {
        celeriac_core::state::ExceptionInfo::new(
            "Exception",
            celeriac_core::repr::repr(&meta.result),
        )
    });
    Err(ResultError::Task(RemoteError::from_exception(
        meta.status,
        exception,
        meta.traceback,
    )))
}
