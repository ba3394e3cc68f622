//! Builds the result records a worker stores, in Celery's shape.

use celeriac_core::message::TaskMessage;
use celeriac_core::state::{ExceptionInfo, ExtendedMeta, TaskMeta, TaskState};
use chrono::Utc;
use serde_json::{json, Value};

pub struct MetaBuilder<'a> {
    pub msg: &'a TaskMessage,
    pub hostname: &'a str,
    pub queue: &'a str,
    pub extended: bool,
}

impl MetaBuilder<'_> {
    pub fn build(
        &self,
        status: TaskState,
        result: Value,
        traceback: Option<String>,
        children: Option<Vec<Value>>,
    ) -> TaskMeta {
        let h = &self.msg.headers;
        TaskMeta {
            task_id: h.id.clone(),
            status,
            result,
            traceback,
            children,
            date_done: if status.is_ready() {
                Some(Utc::now())
            } else {
                None
            },
            group_id: h.group.clone(),
            parent_id: h.parent_id.clone(),
            extended: self.extended.then(|| ExtendedMeta {
                name: h.task.clone(),
                args: self.msg.args.clone(),
                kwargs: self.msg.kwargs.clone(),
                worker: self.hostname.to_string(),
                retries: h.retries,
                queue: self.queue.to_string(),
            }),
        }
    }

    pub fn success(&self, value: Value) -> TaskMeta {
        self.build(TaskState::Success, value, None, Some(Vec::new()))
    }

    pub fn failure(&self, exc: &ExceptionInfo, traceback: Option<String>) -> TaskMeta {
        self.build(
            TaskState::Failure,
            exc.to_value(),
            traceback,
            Some(Vec::new()),
        )
    }

    pub fn started(&self) -> TaskMeta {
        self.build(
            TaskState::Started,
            json!({"pid": std::process::id(), "hostname": self.hostname}),
            None,
            Some(Vec::new()),
        )
    }

    /// RETRY lists the retry message (same id) among the children, as Celery does.
    pub fn retry(&self, exc: &ExceptionInfo, traceback: Option<String>) -> TaskMeta {
        let child = json!([[self.msg.headers.id, null], null]);
        self.build(
            TaskState::Retry,
            exc.to_value(),
            traceback,
            Some(vec![child]),
        )
    }

    /// `reason` is `revoked`, `terminated` or `expired`.
    pub fn revoked(&self, reason: &str) -> TaskMeta {
        let exc = ExceptionInfo::new("TaskRevokedError", reason);
        self.build(TaskState::Revoked, exc.to_value(), None, None)
    }
}
