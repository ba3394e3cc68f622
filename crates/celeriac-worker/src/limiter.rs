//! Per-task rate limits: a task over its limit waits before it takes a pool slot, so other
//! tasks keep running. Remote control (`rate_limit`, `time_limit`) changes a task's limits
//! at run time, here.

use celeriac_core::rate::RateLimit;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Time limits set at run time for one task (`None`: the task's own).
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeLimits {
    pub soft: Option<Duration>,
    pub hard: Option<Duration>,
}

#[derive(Default)]
pub struct RateLimiter {
    next_start: Mutex<HashMap<String, Instant>>,
    /// Rate limits set by remote control; `None` inside: disabled.
    rates: Mutex<HashMap<String, Option<RateLimit>>>,
    time_limits: Mutex<HashMap<String, TimeLimits>>,
}

impl RateLimiter {
    /// Reserves the next start slot for `task` and waits until it comes.
    pub async fn wait(&self, task: &str, limit: RateLimit) {
        let start = {
            let mut slots = lock(&self.next_start);
            let now = Instant::now();
            let slot = slots.entry(task.to_string()).or_insert(now);
            let start = (*slot).max(now);
            *slot = start + limit.interval();
            start
        };
        tokio::time::sleep_until(start).await;
    }

    /// The rate limit in force for `task`: one set at run time, else the task's own.
    pub fn limit_for(&self, task: &str, own: Option<RateLimit>) -> Option<RateLimit> {
        match lock(&self.rates).get(task) {
            Some(set) => *set,
            None => own,
        }
    }

    pub fn set_rate(&self, task: &str, limit: Option<RateLimit>) {
        lock(&self.rates).insert(task.to_string(), limit);
        lock(&self.next_start).remove(task);
    }

    pub fn time_limits_for(&self, task: &str) -> TimeLimits {
        lock(&self.time_limits)
            .get(task)
            .copied()
            .unwrap_or_default()
    }

    pub fn set_time_limits(&self, task: &str, limits: TimeLimits) {
        lock(&self.time_limits).insert(task.to_string(), limits);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
