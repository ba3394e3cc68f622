//! Runs one task future under its time limits. The boundary is total: a value, an error, a
//! panic, a timeout or a stop request each come back as an [`Ending`]; nothing escapes.

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::task::{panic_failure, SoftLimit, TaskError};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::registry::TaskFuture;

/// Why the worker stopped a running task from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `revoke(terminate=True)`.
    Terminate,
    /// Second shutdown signal: stop now.
    Cold,
}

#[derive(Debug)]
pub enum Ending {
    Finished(Result<Value, TaskError>),
    HardTimeLimit(Duration),
    Stopped(StopReason),
}

pub async fn run_with_limits(
    future: TaskFuture,
    soft_limit: Option<Duration>,
    hard_limit: Option<Duration>,
    soft_handle: Arc<SoftLimit>,
    stop: oneshot::Receiver<StopReason>,
) -> Ending {
    // A task of its own, so a panic is caught by the join handle and abort() can stop it.
    let mut handle = tokio::spawn(future);
    let soft = async {
        match soft_limit {
            Some(d) => {
                tokio::time::sleep(d).await;
                soft_handle.trip();
                std::future::pending::<Ending>().await
            }
            None => std::future::pending::<Ending>().await,
        }
    };
    let hard = async {
        match hard_limit {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let stop = async {
        match stop.await {
            Ok(reason) => reason,
            // The worker dropped the sender: nobody will ever stop this task from outside.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        joined = &mut handle => Ending::Finished(match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(panic_failure(e.into_panic())),
            Err(_) => Err(TaskError::failure("RuntimeError", "task was cancelled")),
        }),
        never = soft => never,
        _ = hard => {
            handle.abort();
            Ending::HardTimeLimit(hard_limit.unwrap_or_default())
        }
        reason = stop => {
            handle.abort();
            Ending::Stopped(reason)
        }
    }
}
