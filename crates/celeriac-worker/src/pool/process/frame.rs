//! What crosses the socket between the worker and a child: length-prefixed JSON frames
//! (a little-endian `u32` byte count, then the JSON). The worker writes [`JobFrame`]s; the
//! child answers each, in order, with a [`DoneFrame`]. End of stream means "exit" to the
//! child, and "dead" to the worker.

use std::io::{self, Read, Write};
use std::time::Duration;

use celeriac_core::state::ExceptionInfo;
use celeriac_core::task::{TaskContext, TaskError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Frames larger than this are refused as corrupt rather than allocated.
pub(crate) const MAX_FRAME: usize = 256 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobFrame {
    pub job: u64,
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub ctx: ContextFrame,
    pub soft_limit: Option<f64>,
    /// Whether the worker wants the child's resident memory after the task
    /// (`--max-memory-per-child`); reading it costs a file read per task.
    pub measure_memory: bool,
}

/// A [`TaskContext`] without its soft-limit handle (the child makes its own).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ContextFrame {
    pub id: String,
    pub name: String,
    pub retries: u32,
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub group: Option<String>,
    pub eta: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    pub hostname: String,
    pub queue: String,
    pub max_retries: Option<u32>,
}

impl ContextFrame {
    pub(crate) fn from_context(ctx: &TaskContext) -> ContextFrame {
        ContextFrame {
            id: ctx.id.clone(),
            name: ctx.name.clone(),
            retries: ctx.retries,
            root_id: ctx.root_id.clone(),
            parent_id: ctx.parent_id.clone(),
            group: ctx.group.clone(),
            eta: ctx.eta,
            expires: ctx.expires,
            hostname: ctx.hostname.clone(),
            queue: ctx.queue.clone(),
            max_retries: ctx.max_retries,
        }
    }

    pub(crate) fn into_context(self) -> TaskContext {
        let mut ctx = TaskContext::new(self.id, self.name, self.hostname, self.queue);
        ctx.retries = self.retries;
        ctx.root_id = self.root_id;
        ctx.parent_id = self.parent_id;
        ctx.group = self.group;
        ctx.eta = self.eta;
        ctx.expires = self.expires;
        ctx.max_retries = self.max_retries;
        ctx
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DoneFrame {
    pub job: u64,
    pub result: ResultFrame,
    /// The child's resident set size after the task, in KiB (Celery's unit for
    /// `--max-memory-per-child`); 0 when not asked for.
    pub rss_kib: u64,
}

/// A task's `Result<Value, TaskError>` on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ResultFrame {
    Value(Value),
    Failure {
        exception: Value,
        traceback: Option<String>,
    },
    Retry {
        countdown: Option<f64>,
        eta: Option<DateTime<Utc>>,
        exception: Option<Value>,
        max_retries: Option<u32>,
    },
    Reject {
        reason: String,
        requeue: bool,
    },
    Ignore,
    Replace {
        signature: Value,
    },
}

impl ResultFrame {
    pub(crate) fn from_result(result: Result<Value, TaskError>) -> ResultFrame {
        match result {
            Ok(value) => ResultFrame::Value(value),
            Err(TaskError::Failure {
                exception,
                traceback,
            }) => ResultFrame::Failure {
                exception: exception.to_value(),
                traceback,
            },
            Err(TaskError::Retry {
                countdown,
                eta,
                exception,
                max_retries,
            }) => ResultFrame::Retry {
                countdown: countdown.map(|d| d.as_secs_f64()),
                eta,
                exception: exception.map(|e| e.to_value()),
                max_retries,
            },
            Err(TaskError::Reject { reason, requeue }) => ResultFrame::Reject { reason, requeue },
            Err(TaskError::Ignore) => ResultFrame::Ignore,
            Err(TaskError::Replace { signature }) => ResultFrame::Replace { signature },
            Err(other) => ResultFrame::Failure {
                exception: ExceptionInfo::new("RuntimeError", other.to_string()).to_value(),
                traceback: None,
            },
        }
    }

    pub(crate) fn into_result(self) -> Result<Value, TaskError> {
        let exception = |v: &Value| {
            ExceptionInfo::from_value(v)
                .unwrap_or_else(|| ExceptionInfo::new("RuntimeError", v.to_string()))
        };
        match self {
            ResultFrame::Value(value) => Ok(value),
            ResultFrame::Failure {
                exception: e,
                traceback,
            } => Err(TaskError::Failure {
                exception: exception(&e),
                traceback,
            }),
            ResultFrame::Retry {
                countdown,
                eta,
                exception: e,
                max_retries,
            } => Err(TaskError::Retry {
                countdown: countdown
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64),
                eta,
                exception: e.as_ref().map(exception),
                max_retries,
            }),
            ResultFrame::Reject { reason, requeue } => Err(TaskError::Reject { reason, requeue }),
            ResultFrame::Ignore => Err(TaskError::Ignore),
            ResultFrame::Replace { signature } => Err(TaskError::Replace { signature }),
        }
    }
}

/// One frame's bytes, length prefix included.
pub(crate) fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    let mut bytes = vec![0u8; 4];
    serde_json::to_writer(&mut bytes, frame).expect("frames serialize");
    let len = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    bytes
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub(crate) fn read_blocking<T: for<'de> Deserialize<'de>>(
    reader: &mut impl Read,
) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; checked_len(len)?];
    reader.read_exact(&mut body)?;
    decode(&body).map(Some)
}

pub(crate) fn write_blocking(writer: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(bytes)?;
    writer.flush()
}

pub(crate) fn checked_len(prefix: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME}-byte bound"),
        ));
    }
    Ok(len)
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_task_result_survives_the_trip() {
        let results = vec![
            Ok(json!({"a": [1, 2.5, "x"]})),
            Err(TaskError::failure("ValueError", "bad").with_traceback("tb")),
            Err(TaskError::Retry {
                countdown: Some(Duration::from_millis(1500)),
                eta: None,
                exception: Some(ExceptionInfo::new("KeyError", "k")),
                max_retries: Some(4),
            }),
            Err(TaskError::reject("no", true)),
            Err(TaskError::Ignore),
        ];
        for result in results {
            let frame = DoneFrame {
                job: 7,
                result: ResultFrame::from_result(result.clone()),
                rss_kib: 1,
            };
            let bytes = encode(&frame);
            let back: DoneFrame = read_blocking(&mut &bytes[..]).unwrap().unwrap();
            assert_eq!(back.job, 7);
            assert_eq!(back.result.into_result(), result);
        }
    }

    #[test]
    fn a_clean_end_is_none_and_a_huge_length_is_an_error() {
        let empty: &[u8] = &[];
        assert!(read_blocking::<DoneFrame>(&mut &empty[..])
            .unwrap()
            .is_none());
        let huge = u32::MAX.to_le_bytes();
        assert!(read_blocking::<DoneFrame>(&mut &huge[..]).is_err());
    }
}
