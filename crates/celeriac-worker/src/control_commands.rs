//! The control commands that change a running worker (`celery control rate_limit`,
//! `time_limit`, `pool_grow`, `pool_shrink`, `autoscale`), with Celery 5.7's replies.

use std::time::Duration;

use celeriac_core::control::ControlRequest;
use celeriac_core::rate::RateLimit;
use serde_json::Value;
use tracing::info;

use crate::limiter::TimeLimits;
use crate::mailbox::{error, ok};
use crate::worker::Shared;

pub(crate) fn argument<'a>(request: &'a ControlRequest, name: &str) -> Option<&'a Value> {
    request.arguments.get(name).filter(|v| !v.is_null())
}

fn seconds(value: Option<&Value>) -> Option<Duration> {
    let s = value?.as_f64()?;
    (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s))
}

impl Shared {
    /// `rate_limit(task_name, rate_limit)`: a falsy limit disables it.
    pub(crate) fn rate_limit(&self, request: &ControlRequest) -> Value {
        let task = argument(request, "task_name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let limit = match argument(request, "rate_limit") {
            None => None,
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => None,
            Some(Value::String(s)) if s.is_empty() || s == "0" => None,
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        let parsed = match limit.as_deref().map(RateLimit::parse).transpose() {
            Ok(parsed) => parsed,
            Err(e) => return error(format!("Invalid rate limit string: ValueError({e:?})")),
        };
        if self.registry.get(task).is_none() {
            return error("unknown task");
        }
        self.limiter.set_rate(task, parsed);
        match parsed {
            None => {
                info!("Rate limits disabled for tasks of type {task}");
                ok("rate limit disabled successfully")
            }
            Some(_) => {
                info!(
                    "New rate limit for tasks of type {task}: {}.",
                    limit.unwrap_or_default()
                );
                ok("new rate limit set successfully")
            }
        }
    }

    /// `time_limit(task_name, soft, hard)`.
    pub(crate) fn time_limit(&self, request: &ControlRequest) -> Value {
        let task = argument(request, "task_name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if self.registry.get(task).is_none() {
            return error("unknown task");
        }
        let limits = TimeLimits {
            soft: seconds(argument(request, "soft")),
            hard: seconds(argument(request, "hard")),
        };
        info!(
            "New time limits for tasks of type {task}: soft={:?} hard={:?}",
            limits.soft, limits.hard
        );
        self.limiter.set_time_limits(task, limits);
        ok("time limits set successfully")
    }

    /// `pool_grow(n)` / `pool_shrink(n)` (n defaults to 1).
    pub(crate) fn pool_grow(&self, request: &ControlRequest, grow: bool) -> Value {
        let n = argument(request, "n").and_then(Value::as_u64).unwrap_or(1) as usize;
        let size = self.pool.size();
        let to = if grow {
            size + n
        } else {
            size.saturating_sub(n).max(1)
        };
        self.resize_pool(to);
        ok(if grow {
            "pool will grow"
        } else {
            "pool will shrink"
        })
    }

    /// `autoscale(max, min)`: new bounds for a worker started with `--autoscale`.
    pub(crate) fn autoscale(&self, request: &ControlRequest) -> Value {
        let mut bounds = self
            .autoscale_bounds
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(current) = *bounds else {
            return error("ValueError('Autoscale not enabled')");
        };
        let max = argument(request, "max")
            .and_then(Value::as_u64)
            .map_or(current.0, |n| n as usize);
        let min = argument(request, "min")
            .and_then(Value::as_u64)
            .map_or(current.1, |n| n as usize);
        let (max, min) = (max.max(min).max(1), max.min(min).max(1));
        *bounds = Some((max, min));
        ok(format!("autoscale now max={max} min={min}"))
    }
}
