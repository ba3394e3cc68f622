//! Per-task rate limits: a task over its limit waits before it takes a pool slot, so other
//! tasks keep running.

use celeriac_core::rate::RateLimit;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::time::Instant;

#[derive(Default)]
pub struct RateLimiter {
    next_start: Mutex<HashMap<String, Instant>>,
}

impl RateLimiter {
    /// Reserves the next start slot for `task` and waits until it comes.
    pub async fn wait(&self, task: &str, limit: RateLimit) {
        let start = {
            let mut slots = self.next_start.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = slots.entry(task.to_string()).or_insert(now);
            let start = (*slot).max(now);
            *slot = start + limit.interval();
            start
        };
        tokio::time::sleep_until(start).await;
    }
}
