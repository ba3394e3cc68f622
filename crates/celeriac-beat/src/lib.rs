//! celeriac beat, Celery's periodic-task scheduler: schedules, the arithmetic of their next
//! run (tested against Python Celery's own answers, `tests/celery_table.rs`), and the loop
//! that sends them ([`scheduler`]), safe to run on every node: a leader lease in the
//! broker's store makes one process send each tick.
//!
//! Three kinds, as in Celery 5.7's `celery.schedules`:
//!
//! * [`Interval`], Celery's `schedule(run_every, relative)`: due every so long since the
//!   last run, parsed from `"30s"`, `"1h30m"`, `"2.5"`, ...
//! * [`Crontab`], Celery's `crontab(minute, hour, day_of_week, day_of_month,
//!   month_of_year)`, with Celery's field grammar, or the cron string `"m h dom mon dow"`.
//! * [`Solar`], Celery's `solar(event, lat, lon)`: due at each sunrise, sunset, dawn, dusk
//!   or solar noon at a place, from `"sunrise 59.3 18.1"` (how it is computed is on
//!   [`solar`]).
//!
//! An [`Entry`] is one periodic task (a task name, its arguments and options, its
//! schedule); a [`ScheduleFile`] reads them from TOML (the format is on [`file`]).
//!
//! Wall-clock rules (crontab fields, relative rounding) are evaluated in the app's time
//! zone, Celery's `app.conf.timezone`, given as a [`Tz`]. How daylight-saving transitions
//! are handled is documented on [`crontab`].
//!
//! ```
//! use celeriac_beat::{Crontab, Interval, Schedule, Tz};
//! use chrono::{TimeZone, Utc};
//!
//! let nightly = Schedule::from("30 2 * * *".parse::<Crontab>().unwrap());
//! let often = Schedule::from("5m".parse::<Interval>().unwrap());
//! let tz: Tz = "Europe/Stockholm".parse().unwrap();
//! let last = Utc.with_ymd_and_hms(2025, 1, 15, 12, 0, 0).unwrap();
//!
//! // 02:30 in Stockholm is 01:30 UTC in winter.
//! let next = nightly.next_after(last, last, tz);
//! assert_eq!(next, Utc.with_ymd_and_hms(2025, 1, 16, 1, 30, 0).unwrap());
//! assert_eq!(often.next_after(last, last, tz), last + chrono::TimeDelta::minutes(5));
//! ```

pub mod crontab;
mod entry;
pub mod field;
pub mod file;
pub mod interval;
mod local;
pub mod scheduler;
pub mod solar;

use chrono::{DateTime, Utc};

pub use chrono_tz::Tz;
pub use crontab::{Crontab, CrontabError};
pub use entry::{Entry, EntryOptions};
pub use field::{FieldError, FieldKind, FieldSet};
pub use file::{FileError, ScheduleFile};
pub use interval::{format_duration, parse_duration, Interval, IntervalError};
pub use scheduler::{
    schedule_text, Beat, BeatConfig, BeatError, BeatHandle, Clock, Engines, Missed, SystemClock,
};
pub use solar::{Solar, SolarError, SolarEvent};

/// A periodic task's schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    Interval(Interval),
    Crontab(Crontab),
    Solar(Solar),
}

impl Schedule {
    /// An interval from its text: `"30s"`, `"1h30m"`, `"2.5"` (seconds).
    pub fn every(text: &str) -> Result<Schedule, IntervalError> {
        text.parse::<Interval>().map(Schedule::Interval)
    }

    /// A crontab from its five-field string, `"*/15 9-17 * * mon-fri"`.
    pub fn cron(text: &str) -> Result<Schedule, CrontabError> {
        text.parse::<Crontab>().map(Schedule::Crontab)
    }

    /// A solar schedule: `event` (Celery's name, `"sunrise"`) seen from latitude `lat` and
    /// longitude `lon`, in degrees north and east.
    pub fn solar(event: &str, lat: f64, lon: f64) -> Result<Schedule, SolarError> {
        Solar::new(event.parse()?, lat, lon).map(Schedule::Solar)
    }

    /// When the entry is next due, given its last run, the time now and the app's time
    /// zone. Never before `now`: a due time that passed while beat was not looking means
    /// due at once, and once only (Celery runs a missed entry once, not once per missed
    /// period).
    pub fn next_after(&self, last_run: DateTime<Utc>, now: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        match self {
            Schedule::Interval(interval) => interval.next_after_in(last_run, now, tz),
            Schedule::Crontab(crontab) => crontab.next_fire_after(last_run, tz).max(now),
            // The Sun keeps UTC: the app's zone plays no part.
            Schedule::Solar(solar) => solar.next_after(last_run).max(now),
        }
    }
}

/// `every 1s`, `every 1h (relative)`, `cron */5 * * * *`, `solar sunrise at 59.3, 18.1`.
impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Interval(interval) => interval.fmt(f),
            Schedule::Crontab(crontab) => write!(f, "cron {crontab}"),
            Schedule::Solar(solar) => solar.fmt(f),
        }
    }
}

impl From<Interval> for Schedule {
    fn from(interval: Interval) -> Self {
        Schedule::Interval(interval)
    }
}

impl From<Crontab> for Schedule {
    fn from(crontab: Crontab) -> Self {
        Schedule::Crontab(crontab)
    }
}

impl From<Solar> for Schedule {
    fn from(solar: Solar) -> Self {
        Schedule::Solar(solar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn dispatches_and_never_answers_before_now() {
        let last = Utc.with_ymd_and_hms(2025, 1, 15, 12, 0, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2025, 1, 20, 8, 0, 0).unwrap();
        let daily: Schedule = "0 0 * * *".parse::<Crontab>().unwrap().into();
        assert_eq!(
            daily.next_after(last, last, Tz::UTC),
            Utc.with_ymd_and_hms(2025, 1, 16, 0, 0, 0).unwrap()
        );
        assert_eq!(daily.next_after(last, now, Tz::UTC), now);
        let hourly: Schedule = Interval::new(std::time::Duration::from_secs(3600))
            .with_relative(true)
            .into();
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        // Relative rounding is to the hour of the zone's clock: 12:00 UTC is 17:30 IST.
        assert_eq!(
            hourly.next_after(last, last, tz),
            Utc.with_ymd_and_hms(2025, 1, 15, 12, 30, 0).unwrap()
        );
        assert_eq!(hourly.next_after(last, now, tz), now);
        let sunrise = Schedule::solar("sunrise", 59.33, 18.07).unwrap();
        assert_eq!(sunrise.to_string(), "solar sunrise at 59.33, 18.07");
        let next = sunrise.next_after(last, last, tz);
        // 2025-01-16's sunrise in Stockholm, 08:28:30 CET by Celery with ephem.
        let ephem = Utc.with_ymd_and_hms(2025, 1, 16, 7, 28, 30).unwrap();
        assert!((next - ephem).num_seconds().abs() < 10, "{next}");
        assert_eq!(sunrise.next_after(last, now, tz), now);
        assert!(Schedule::solar("noon", 0.0, 0.0).is_err());
    }
}
