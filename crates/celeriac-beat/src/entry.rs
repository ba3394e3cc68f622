//! A periodic task: what beat sends (a task by name, its arguments and `apply_async`
//! options) and when ([`Schedule`]), as one entry of Celery's `beat_schedule`.

use serde_json::{Map, Value};

use crate::Schedule;

/// One entry of a beat schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Unique in its schedule: beat keeps each entry's last run under its name.
    pub name: String,
    /// The task sent, by name: beat needs no task code.
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub options: EntryOptions,
    pub schedule: Schedule,
}

/// The `apply_async` options an entry's messages carry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntryOptions {
    pub queue: Option<String>,
    pub routing_key: Option<String>,
    /// 0..=9, 9 most urgent.
    pub priority: Option<u8>,
    /// Seconds after the send past which the task is not run (REVOKED `expired`).
    pub expires: Option<f64>,
}

impl Entry {
    /// An entry with no arguments and default options: `Entry::new("tick", "tasks.tick",
    /// Schedule::every("10s")?)`.
    pub fn new(name: impl Into<String>, task: impl Into<String>, schedule: Schedule) -> Entry {
        Entry {
            name: name.into(),
            task: task.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            options: EntryOptions::default(),
            schedule,
        }
    }

    pub fn args(mut self, args: Vec<Value>) -> Entry {
        self.args = args;
        self
    }

    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Entry {
        self.kwargs = kwargs;
        self
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Entry {
        self.options.queue = Some(queue.into());
        self
    }

    /// 0..=9, 9 most urgent (larger values are taken as 9).
    pub fn priority(mut self, priority: u8) -> Entry {
        self.options.priority = Some(priority.min(9));
        self
    }

    /// Each tick expires this many seconds after it is sent.
    pub fn expires(mut self, seconds: f64) -> Entry {
        self.options.expires = Some(seconds);
        self
    }
}
