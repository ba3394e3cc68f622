//! Beat, Celery's periodic-task scheduler, for an app: the schedule in code
//! ([`AppBuilder::beat`](crate::AppBuilder::beat)) or from a TOML file ([`ScheduleFile`]),
//! sent through the app's broker and routes. Run one on every node if you like: a leader
//! lease in the broker's store makes exactly one send each tick (`docs/beat.md`).
//!
//! ```no_run
//! # async fn example() -> Result<(), celeriac::Error> {
//! use celeriac::beat::{Entry, Schedule};
//! let app = celeriac::App::builder("proj")
//!     .beat(Entry::new("tick", "tasks.tick", Schedule::every("10s").unwrap()))
//!     .beat(Entry::new("nightly", "tasks.report", Schedule::cron("30 2 * * *").unwrap()))
//!     .build();
//! let beat = app.beat(app.beat_schedule().to_vec(), app.beat_config("beat@here")?).await?;
//! let running = beat.start();
//! // ... until shutdown:
//! running.stop().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;

pub use celeriac_beat::{
    schedule_text, Beat, BeatConfig, BeatError, BeatHandle, Clock, Crontab, Engines, Entry,
    EntryOptions, Interval, Missed, Schedule, ScheduleFile, SystemClock, Tz,
};

use crate::{App, Error};

impl App {
    /// Beat settings for this app: its `timezone`, the default lease (10 s) and loop
    /// interval (300 s); `holder` names this process in the lease (`beat@host:pid`).
    pub fn beat_config(&self, holder: impl Into<String>) -> Result<BeatConfig, Error> {
        let name = &self.config().timezone;
        let timezone: Tz = name
            .parse()
            .map_err(|_| Error::Config(format!("timezone: unknown time zone {name:?}")))?;
        let mut config = BeatConfig::new(holder);
        config.timezone = timezone;
        Ok(config)
    }

    /// A beat sending `entries` through this app's broker and routes, its lease kept in
    /// the broker's store (or the result backend's, on RabbitMQ).
    pub async fn beat(&self, entries: Vec<Entry>, config: BeatConfig) -> Result<Beat, Error> {
        let engines = Engines {
            broker: self.broker().await?,
            backend: self.backend().await.ok(),
        };
        Beat::new(entries, engines, Arc::new(self.router()), config)
            .map_err(|e| Error::Config(e.to_string()))
    }
}
