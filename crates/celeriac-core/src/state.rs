//! Task states and the result record Celery's backends store (spec §5.2–5.5).

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::time;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    Pending,
    Received,
    Started,
    Retry,
    Success,
    Failure,
    Revoked,
    Rejected,
}

impl TaskState {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Received => "RECEIVED",
            TaskState::Started => "STARTED",
            TaskState::Retry => "RETRY",
            TaskState::Success => "SUCCESS",
            TaskState::Failure => "FAILURE",
            TaskState::Revoked => "REVOKED",
            TaskState::Rejected => "REJECTED",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "PENDING" => TaskState::Pending,
            "RECEIVED" => TaskState::Received,
            "STARTED" => TaskState::Started,
            "RETRY" => TaskState::Retry,
            "SUCCESS" => TaskState::Success,
            "FAILURE" => TaskState::Failure,
            "REVOKED" => TaskState::Revoked,
            "REJECTED" => TaskState::Rejected,
            _ => return None,
        })
    }

    /// SUCCESS, FAILURE and REVOKED: nothing will change any more.
    pub fn is_ready(&self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failure | TaskState::Revoked
        )
    }

    /// States whose `result` is an exception.
    pub fn is_exception(&self) -> bool {
        matches!(
            self,
            TaskState::Retry | TaskState::Failure | TaskState::Revoked
        )
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exception as Celery's JSON serializer stores it (§5.3).
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionInfo {
    pub exc_type: String,
    pub exc_module: String,
    /// The exception's `args`; the first is usually the message.
    pub exc_message: Vec<Value>,
}

impl ExceptionInfo {
    pub fn new(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        let exc_type = exc_type.into();
        let exc_module = module_for(&exc_type).to_string();
        ExceptionInfo {
            exc_type,
            exc_module,
            exc_message: vec![json!(message.into())],
        }
    }

    pub fn with_module(mut self, module: impl Into<String>) -> Self {
        self.exc_module = module.into();
        self
    }

    /// The human message: the exception args joined as Python's `str(exc)` would show one.
    pub fn message(&self) -> String {
        match self.exc_message.as_slice() {
            [] => String::new(),
            [Value::String(s)] => s.clone(),
            [one] => one.to_string(),
            many => many
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    pub fn to_value(&self) -> Value {
        json!({"exc_type": self.exc_type, "exc_message": self.exc_message, "exc_module": self.exc_module})
    }

    pub fn from_value(v: &Value) -> Option<ExceptionInfo> {
        let exc_type = v.get("exc_type")?.as_str()?.to_string();
        let exc_message = match v.get("exc_message") {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(other) => vec![other.clone()],
        };
        let exc_module = v
            .get("exc_module")
            .and_then(Value::as_str)
            .unwrap_or("builtins")
            .to_string();
        Some(ExceptionInfo {
            exc_type,
            exc_module,
            exc_message,
        })
    }

    /// `ValueError('boom')`.
    pub fn repr(&self) -> String {
        crate::repr::exception_repr(&self.exc_type, &self.message())
    }
}

impl std::fmt::Display for ExceptionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message())
    }
}

/// Python callers get a familiar exception class for builtin names and Celery's own names.
fn module_for(exc_type: &str) -> &'static str {
    const BUILTINS: &[&str] = &[
        "Exception",
        "ValueError",
        "TypeError",
        "KeyError",
        "IndexError",
        "RuntimeError",
        "ZeroDivisionError",
        "ArithmeticError",
        "AttributeError",
        "LookupError",
        "NotImplementedError",
        "OSError",
        "IOError",
        "TimeoutError",
        "ConnectionError",
        "PermissionError",
        "FileNotFoundError",
        "AssertionError",
        "OverflowError",
        "MemoryError",
        "UnicodeError",
    ];
    const CELERY: &[&str] = &[
        "TaskRevokedError",
        "NotRegistered",
        "Reject",
        "Retry",
        "MaxRetriesExceededError",
        "ChordError",
        "TimeLimitExceeded",
        "SoftTimeLimitExceeded",
    ];
    if BUILTINS.contains(&exc_type) {
        "builtins"
    } else if CELERY.contains(&exc_type) {
        "celery.exceptions"
    } else if exc_type == "WorkerLostError" {
        "billiard.exceptions"
    } else {
        "celeriac"
    }
}

/// Extra fields written when `result_extended` is on (§5.2).
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendedMeta {
    pub name: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub worker: String,
    pub retries: u32,
    pub queue: String,
}

/// One task's stored result, field for field Celery's task meta JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMeta {
    pub task_id: String,
    pub status: TaskState,
    /// The return value, the exception object, or `{"pid", "hostname"}` for STARTED.
    pub result: Value,
    pub traceback: Option<String>,
    /// `None` is written as null (outside a task context), else a list of result tuples.
    pub children: Option<Vec<Value>>,
    pub date_done: Option<DateTime<Utc>>,
    pub group_id: Option<String>,
    pub parent_id: Option<String>,
    pub extended: Option<ExtendedMeta>,
}

impl TaskMeta {
    pub fn pending(task_id: impl Into<String>) -> Self {
        TaskMeta {
            task_id: task_id.into(),
            status: TaskState::Pending,
            result: Value::Null,
            traceback: None,
            children: Some(Vec::new()),
            date_done: None,
            group_id: None,
            parent_id: None,
            extended: None,
        }
    }

    pub fn exception(&self) -> Option<ExceptionInfo> {
        if self.status.is_exception() {
            ExceptionInfo::from_value(&self.result)
        } else {
            None
        }
    }

    /// The JSON object in Celery's key order.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("status".into(), json!(self.status.as_str()));
        m.insert("result".into(), self.result.clone());
        m.insert("traceback".into(), json!(self.traceback));
        m.insert("children".into(), json!(self.children));
        m.insert(
            "date_done".into(),
            self.date_done
                .map(|t| json!(time::to_iso(t)))
                .unwrap_or(Value::Null),
        );
        if let Some(g) = &self.group_id {
            m.insert("group_id".into(), json!(g));
        }
        if let Some(p) = &self.parent_id {
            m.insert("parent_id".into(), json!(p));
        }
        if let Some(x) = &self.extended {
            m.insert("name".into(), json!(x.name));
            m.insert("args".into(), json!(x.args));
            m.insert("kwargs".into(), json!(x.kwargs));
            m.insert("worker".into(), json!(x.worker));
            m.insert("retries".into(), json!(x.retries));
            m.insert("queue".into(), json!(x.queue));
        }
        m.insert("task_id".into(), json!(self.task_id));
        Value::Object(m)
    }

    pub fn to_json(&self) -> String {
        crate::json::to_python_json(&self.to_value())
    }

    /// Reads a stored meta; unknown states and missing fields are tolerated as Python does.
    pub fn from_value(v: &Value) -> Option<TaskMeta> {
        let obj = v.as_object()?;
        let status = TaskState::parse(obj.get("status")?.as_str()?)?;
        let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        let extended = match (s("name"), s("worker")) {
            (Some(name), Some(worker)) => Some(ExtendedMeta {
                name,
                worker,
                args: obj
                    .get("args")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                kwargs: obj
                    .get("kwargs")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
                retries: obj.get("retries").and_then(Value::as_u64).unwrap_or(0) as u32,
                queue: s("queue").unwrap_or_default(),
            }),
            _ => None,
        };
        Some(TaskMeta {
            task_id: s("task_id").unwrap_or_default(),
            status,
            result: obj.get("result").cloned().unwrap_or(Value::Null),
            traceback: s("traceback"),
            children: obj.get("children").and_then(Value::as_array).cloned(),
            date_done: s("date_done").and_then(|d| time::parse_iso(&d)),
            group_id: s("group_id"),
            parent_id: s("parent_id"),
            extended,
        })
    }

    pub fn from_json(bytes: &[u8]) -> Option<TaskMeta> {
        crate::json::parse_python_json(bytes)
            .ok()
            .as_ref()
            .and_then(TaskMeta::from_value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_json_has_celery_key_order() {
        let mut m = TaskMeta::pending("t1");
        m.status = TaskState::Failure;
        m.result = ExceptionInfo::new("ValueError", "boom").to_value();
        m.parent_id = Some("p".into());
        let text = m.to_json();
        assert!(text.starts_with("{\"status\": \"FAILURE\", \"result\": {\"exc_type\": \"ValueError\", \"exc_message\": [\"boom\"], \"exc_module\": \"builtins\"}, \"traceback\": null, \"children\": [], \"date_done\": null, \"parent_id\": \"p\", \"task_id\": \"t1\"}"), "{text}");
        let back = TaskMeta::from_json(text.as_bytes()).unwrap();
        assert_eq!(back.exception().unwrap().message(), "boom");
    }
}
