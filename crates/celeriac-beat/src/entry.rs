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
