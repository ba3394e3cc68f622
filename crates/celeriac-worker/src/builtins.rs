//! Celery's built-in tasks (`celery/app/builtins.py`), registered in every worker so Python
//! clients can send what they send to Python workers:
//!
//! * `celery.map` / `celery.starmap`: a task called once per item, in this one task;
//! * `celery.chunks`, `celery.group`, `celery.chord`: the canvas they describe, run in their
//!   place (as a `Task.replace`);
//! * `celery.accumulate`: its arguments back (`index` picks one), the body Celery gives a
//!   replaced group;
//! * `celery.backend_cleanup`: nothing to do here; the embedded store prunes expired
//!   results as it writes and Redis expires keys itself;
//! * `celery.chain`: fails as in Celery ("chain is not a real task").
//!
//! `celery.chord_unlock` is not here: it is how Celery joins chords on backends that cannot
//! count (the database and RPC backends); the backends celeriac joins chords on count.

use std::sync::Arc;

use celeriac_core::canvas::{
    Canvas, Signature, ACCUMULATE_TASK, CHAIN_TASK, CHORD_TASK, CHUNKS_TASK, GROUP_TASK, MAP_TASK,
    STARMAP_TASK,
};
use celeriac_core::task::{ArgError, TaskBody, TaskContext, TaskError, TaskOptions};
use serde_json::{json, Map, Value};

use crate::registry::{ErasedTask, Registry};

const BACKEND_CLEANUP: &str = "celery.backend_cleanup";

/// What a built-in does with its call.
#[derive(Clone, Copy)]
enum Kind {
    Map { star: bool },
    Replace,
    Accumulate,
    Cleanup,
    Chain,
}

struct Builtin {
    name: &'static str,
    kind: Kind,
    options: TaskOptions,
    /// The tasks `celery.map` / `celery.starmap` call.
    tasks: Registry,
}

/// Adds the built-ins to `registry`; the map tasks call the tasks registered so far.
pub(crate) fn add_builtins(registry: &mut Registry) {
    let tasks = registry.clone();
    let builtins = [
        (MAP_TASK, Kind::Map { star: false }),
        (STARMAP_TASK, Kind::Map { star: true }),
        (CHUNKS_TASK, Kind::Replace),
        (GROUP_TASK, Kind::Replace),
        (CHORD_TASK, Kind::Replace),
        (ACCUMULATE_TASK, Kind::Accumulate),
        (BACKEND_CLEANUP, Kind::Cleanup),
        (CHAIN_TASK, Kind::Chain),
    ];
    for (name, kind) in builtins {
        registry.register_erased(Arc::new(Builtin {
            name,
            kind,
            options: TaskOptions::default(),
            tasks: tasks.clone(),
        }));
    }
}

fn bad_call(task: &str, why: impl std::fmt::Display) -> ArgError {
    ArgError::Invalid {
        task: task.to_string(),
        reason: why.to_string(),
    }
}

impl ErasedTask for Builtin {
    fn name(&self) -> &'static str {
        self.name
    }

    fn options(&self) -> &TaskOptions {
        &self.options
    }

    fn call(
        &self,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        ctx: TaskContext,
    ) -> Result<TaskBody<Value>, ArgError> {
        let done = |result: Result<Value, TaskError>| -> TaskBody<Value> {
            TaskBody::Async(Box::pin(async move { result }))
        };
        match self.kind {
            Kind::Map { star } => self.map(star, kwargs, ctx),
            Kind::Replace => {
                let canvas = self.canvas_of(kwargs)?;
                Ok(done(Err(TaskError::replace(
                    canvas.to_signature().to_value(),
                ))))
            }
            Kind::Accumulate => {
                let index = kwargs.get("index").and_then(Value::as_u64);
                let value = match index {
                    Some(i) => args.get(i as usize).cloned().unwrap_or(Value::Null),
                    None => Value::Array(args),
                };
                Ok(done(Ok(value)))
            }
            Kind::Cleanup => Ok(done(Ok(Value::Null))),
            Kind::Chain => Ok(done(Err(TaskError::failure(
                "NotImplementedError",
                "chain is not a real task",
            )))),
        }
    }
}

impl Builtin {
    /// `celery.map(task, it)`: `task(item)` for each item; `celery.starmap`: `task(*item)`.
    fn map(
        &self,
        star: bool,
        kwargs: Map<String, Value>,
        ctx: TaskContext,
    ) -> Result<TaskBody<Value>, ArgError> {
        let sig = kwargs
            .get("task")
            .ok_or_else(|| bad_call(self.name, "missing argument `task`"))
            .and_then(|t| Signature::from_value(t).map_err(|e| bad_call(self.name, e)))?;
        let Some(Value::Array(items)) = kwargs.get("it") else {
            return Err(bad_call(self.name, "argument `it` must be a list"));
        };
        let task = self.tasks.get(&sig.task).cloned();
        let name = self.name;
        let items = items.clone();
        Ok(TaskBody::Async(Box::pin(async move {
            let Some(task) = task else {
                return Err(TaskError::failure("NotRegistered", sig.task.clone()));
            };
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                let args = match (star, item) {
                    (true, Value::Array(args)) => args,
                    (true, other) => {
                        let why = format!("{name}: an item is not a list of arguments: {other}");
                        return Err(TaskError::failure("TypeError", why));
                    }
                    (false, item) => vec![item],
                };
                let body = task
                    .call(args, sig.kwargs.clone(), ctx.clone())
                    .map_err(|e| TaskError::failure("TypeError", e.to_string()))?;
                results.push(run_body(body).await?);
            }
            Ok(Value::Array(results))
        })))
    }

    /// The canvas a `celery.chunks` / `celery.group` / `celery.chord` call describes.
    fn canvas_of(&self, kwargs: Map<String, Value>) -> Result<Canvas, ArgError> {
        let sig = match self.name {
            CHORD_TASK => {
                let header = kwargs.get("header").cloned().unwrap_or(Value::Null);
                let header = match header {
                    Value::Array(tasks) => {
                        json!({"task": GROUP_TASK, "subtask_type": "group", "kwargs": {"tasks": tasks}})
                    }
                    other => other,
                };
                let mut dict = Map::new();
                dict.insert("header".into(), header);
                dict.insert(
                    "body".into(),
                    kwargs.get("body").cloned().unwrap_or(Value::Null),
                );
                json!({"task": CHORD_TASK, "subtask_type": "chord", "kwargs": dict})
            }
            GROUP_TASK => json!({"task": GROUP_TASK, "subtask_type": "group", "kwargs": kwargs}),
            _ => json!({"task": self.name, "kwargs": kwargs}),
        };
        Canvas::from_value(&sig).map_err(|e| bad_call(self.name, e))
    }
}

/// Runs a body here to its end (a map's inner calls, an in-process errback) (a blocking body on a blocking thread).
pub(crate) async fn run_body(body: TaskBody<Value>) -> Result<Value, TaskError> {
    match body {
        TaskBody::Async(future) => future.await,
        TaskBody::Blocking(call) => tokio::task::spawn_blocking(call)
            .await
            .unwrap_or_else(|e| Err(TaskError::failure("RuntimeError", e.to_string()))),
    }
}
