//! Time as the scheduler sees it, injected so tests can drive hours of schedule in
//! milliseconds (with Tokio's paused clock) while production follows the wall clock.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    /// Returns at `at` or soon after; early is allowed (the loop looks again).
    async fn sleep_until(&self, at: DateTime<Utc>);
}

/// The machine's wall clock. Sleeps are re-measured against it on every wake, so a clock
/// step (NTP) shifts the next send rather than skipping it.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, at: DateTime<Utc>) {
        let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
    }
}
