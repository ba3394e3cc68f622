//! Task registry: names to type-erased tasks. Typed at the edge, erased once here.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use celeriac_core::task::{ArgError, Task, TaskBody, TaskContext, TaskError, TaskOptions};
use serde_json::{Map, Value};

/// A task with its types erased: JSON in, JSON out.
pub trait ErasedTask: Send + Sync {
    fn name(&self) -> &'static str;
    fn options(&self) -> &TaskOptions;
    /// Whether it takes more than `n` positional arguments (Celery's `arity_greater`).
    fn takes_more_than(&self, n: usize) -> bool {
        let _ = n;
        false
    }
    /// Decodes the arguments (errors name the argument) and returns the body to run, its
    /// output as JSON.
    fn call(
        &self,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        ctx: TaskContext,
    ) -> Result<TaskBody<Value>, ArgError>;
}

struct Typed<T: Task> {
    options: TaskOptions,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task> ErasedTask for Typed<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn options(&self) -> &TaskOptions {
        &self.options
    }

    fn takes_more_than(&self, n: usize) -> bool {
        T::VARARGS || T::PARAMS.len() > n
    }

    fn call(
        &self,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        ctx: TaskContext,
    ) -> Result<TaskBody<Value>, ArgError> {
        let task = T::from_call(args, kwargs)?;
        Ok(task.body(ctx).map(|output| {
            serde_json::to_value(output?).map_err(|e| {
                TaskError::failure(
                    "EncodeError",
                    format!("{} returned a value that is not JSON: {e}", T::NAME),
                )
            })
        }))
    }
}

/// The tasks a worker can run, by name (and alias).
#[derive(Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<String, Arc<dyn ErasedTask>>,
    /// Celery's built-ins, left out of [`Registry::names`] as Celery leaves them out of the
    /// banner and `inspect registered`.
    builtins: std::collections::BTreeSet<String>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register<T: Task>(&mut self) {
        self.register_with_options::<T>(T::options());
    }

    /// Registers `T` with options that override its defaults (from configuration).
    pub fn register_with_options<T: Task>(&mut self, options: TaskOptions) {
        let entry: Arc<dyn ErasedTask> = Arc::new(Typed::<T> {
            options,
            _task: PhantomData,
        });
        self.tasks.insert(T::NAME.to_string(), entry.clone());
        for alias in T::ALIASES {
            self.tasks.insert(alias.to_string(), entry.clone());
        }
    }

    /// Registers a task with its types already erased (the built-ins).
    pub(crate) fn register_erased(&mut self, task: Arc<dyn ErasedTask>) {
        self.builtins.insert(task.name().to_string());
        self.tasks.insert(task.name().to_string(), task);
    }

    /// Adds Celery's built-in tasks (`celery.map`, `celery.chunks`, ...; `builtins.rs`),
    /// which every worker runs. Call it after registering the app's tasks: the map tasks call
    /// those registered before.
    pub fn with_builtins(mut self) -> Self {
        if self.builtins.is_empty() {
            crate::builtins::add_builtins(&mut self);
        }
        self
    }

    pub(crate) fn has_builtins(&self) -> bool {
        !self.builtins.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn ErasedTask>> {
        self.tasks.get(name)
    }

    /// Registered names, sorted (aliases included), Celery's built-ins left out.
    pub fn names(&self) -> Vec<&str> {
        self.tasks
            .keys()
            .filter(|name| !self.builtins.contains(*name))
            .map(String::as_str)
            .collect()
    }

    /// How many names [`Registry::names`] lists.
    pub fn len(&self) -> usize {
        self.tasks.len() - self.builtins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
