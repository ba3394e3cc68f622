//! Celery's `crontab` schedule: which wall-clock minutes match, and the next one after an
//! instant.
//!
//! # Matching
//!
//! A minute matches when all five fields match it, in the schedule's time zone. Celery ANDs
//! day of month and day of week (`day_of_week="mon"`, `day_of_month="1-7"` is the first
//! Monday of the month), unlike Vixie cron, which ORs them when both are restricted; this
//! follows Celery. A day of month that no allowed month has (the 30th of February) is
//! refused when the crontab is built, as Celery does; the 29th of February is allowed and
//! fires in leap years.
//!
//! # Daylight-saving time
//!
//! Celery computes the next run on the wall clock and then reads that wall time in the
//! zone. Its answers, which [`Crontab::next_fire_after`] reproduces, are:
//!
//! * **Spring forward** (Stockholm, 2025-03-30, 02:00 CET jumps to 03:00 CEST): an entry for
//!   02:30 runs once that day, at 03:30 CEST: the wall time is read with the offset before
//!   the jump (Python `zoneinfo`'s rule), so it lands as far past the jump as it was written
//!   past 02:00. Not at 03:00: that would be Vixie cron's choice, and Celery does not make
//!   it. Entries for several minutes of the missing hour (`*/20 2 * * *`) run once, at the
//!   first of them; after that the wall clock is past the hour and the rest are not due.
//! * **Fall back** (Stockholm, 2025-10-26, 03:00 CEST falls back to 02:00 CET): an entry for
//!   02:30 runs once, at the first 02:30 (CEST). Wall times of the repeated hour fire at
//!   their first occurrence only; after it, the next run is the next match after the
//!   repeated hour. An every-minute entry so pauses for the second pass of the hour: each
//!   wall minute runs once.
//!
//! One case differs from Celery, on purpose: when the last run is itself in the second
//! pass of a repeated hour (beat started then, say), Celery 5.7 answers with the *first*
//! occurrence of the next matching wall time, which is before the last run; beat then finds
//! the entry overdue on every tick until the wall clock passes that time again, running it
//! many times. Here the next run is the first matching wall time whose first occurrence is
//! after the last run, which is Celery's own answer everywhere else.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;

use crate::field::{parse_field, FieldError, FieldKind, FieldSet};
use crate::local;

/// Celery 5.7's `crontab(minute, hour, day_of_week, day_of_month, month_of_year)`.
///
/// ```
/// use celeriac_beat::Crontab;
/// use chrono::{TimeZone, Utc};
///
/// let weekdays_at_nine: Crontab = "0 9 * * mon-fri".parse().unwrap();
/// let friday_evening = Utc.with_ymd_and_hms(2025, 1, 17, 18, 0, 0).unwrap();
/// let next = weekdays_at_nine.next_fire_after(friday_evening, chrono_tz::UTC);
/// assert_eq!(next, Utc.with_ymd_and_hms(2025, 1, 20, 9, 0, 0).unwrap());
/// ```
#[derive(Clone, Debug)]
pub struct Crontab {
    minute: FieldSet,
    hour: FieldSet,
    day_of_week: FieldSet,
    day_of_month: FieldSet,
    month_of_year: FieldSet,
    /// The specs as written, in cron order, for display.
    text: [String; 5],
}

/// Why a crontab cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrontabError {
    /// A field's spec does not parse, e.g. `hour: 25 is out of range 0-23`.
    #[error("{field}: {error}")]
    Field { field: FieldKind, error: FieldError },
    /// The cron-string form does not have five fields.
    #[error(
        "crontab {text:?} has {found} fields, expected 5: \
         \"minute hour day_of_month month_of_year day_of_week\""
    )]
    FieldCount { text: String, found: usize },
    /// No allowed month has any of the allowed days (e.g. the 30th of February).
    #[error("day_of_month {day_of_month:?} never occurs in month_of_year {month_of_year:?}")]
    NeverOccurs {
        day_of_month: String,
        month_of_year: String,
    },
}

/// Days in each month in a leap year: what a day of month is validated against.
const LONGEST_MONTHS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// How far the date search looks. The Gregorian calendar repeats its weekdays every 400
/// years, so a (month, day, weekday) combination that exists at all occurs within that.
const SEARCH_YEARS: i32 = 401;

/// Past Python's `datetime.MAXYEAR` Celery cannot answer either; stop there.
const LAST_YEAR: i32 = 9999;

impl Crontab {
    /// Builds a crontab from Celery's keyword arguments, in Celery's argument order.
    /// Pass `"*"` for a field Celery would default.
    pub fn new(
        minute: &str,
        hour: &str,
        day_of_week: &str,
        day_of_month: &str,
        month_of_year: &str,
    ) -> Result<Self, CrontabError> {
        let field = |kind, spec: &str| {
            parse_field(kind, spec).map_err(|error| CrontabError::Field { field: kind, error })
        };
        let crontab = Crontab {
            minute: field(FieldKind::Minute, minute)?,
            hour: field(FieldKind::Hour, hour)?,
            day_of_week: field(FieldKind::DayOfWeek, day_of_week)?,
            day_of_month: field(FieldKind::DayOfMonth, day_of_month)?,
            month_of_year: field(FieldKind::MonthOfYear, month_of_year)?,
            text: [minute, hour, day_of_month, month_of_year, day_of_week].map(str::to_owned),
        };
        if !crontab.some_day_exists() {
            return Err(CrontabError::NeverOccurs {
                day_of_month: day_of_month.to_owned(),
                month_of_year: month_of_year.to_owned(),
            });
        }
        Ok(crontab)
    }

    fn some_day_exists(&self) -> bool {
        let Some(first_day) = self.day_of_month.min() else {
            return false;
        };
        self.month_of_year
            .iter()
            .any(|m| first_day <= LONGEST_MONTHS[m as usize - 1])
    }

    /// The values of one field.
    pub fn field(&self, kind: FieldKind) -> FieldSet {
        match kind {
            FieldKind::Minute => self.minute,
            FieldKind::Hour => self.hour,
            FieldKind::DayOfWeek => self.day_of_week,
            FieldKind::DayOfMonth => self.day_of_month,
            FieldKind::MonthOfYear => self.month_of_year,
        }
    }

    /// Whether the wall-clock minute `wall` falls in matches (seconds are ignored).
    pub fn matches(&self, wall: NaiveDateTime) -> bool {
        self.matches_date(wall.date())
            && self.hour.contains(wall.hour())
            && self.minute.contains(wall.minute())
    }

    fn matches_date(&self, date: NaiveDate) -> bool {
        self.month_of_year.contains(date.month())
            && self.day_of_month.contains(date.day())
            && self
                .day_of_week
                .contains(date.weekday().num_days_from_sunday())
    }

    /// The first instant strictly after `t` at which this crontab fires, evaluated on the
    /// wall clock of `tz`: Celery's `last_run_at + remaining_estimate(last_run_at)` with
    /// `app.conf.timezone = tz`.
    ///
    /// DST: a wall time in a spring-forward gap fires once, read with the offset before the
    /// jump (02:30 in Stockholm's 02:00→03:00 gap fires at 03:30 CEST); a wall time of a
    /// fall-back overlap fires once, at its first occurrence (see the module docs for why
    /// and for the one case where this differs from Celery).
    ///
    /// Returns `DateTime::<Utc>::MAX_UTC` if nothing matches before the year 10000 (where
    /// Python's `datetime`, and so Celery, stops too).
    pub fn next_fire_after(&self, t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        let Some(mut after) = local::wall_clock(t, tz) else {
            return DateTime::<Utc>::MAX_UTC;
        };
        loop {
            let Some(wall) = self.next_wall_after(after) else {
                return DateTime::<Utc>::MAX_UTC;
            };
            let at = local::first_occurrence(tz, wall);
            if at > t {
                return at;
            }
            // Only in the second pass of a repeated hour: this wall time already had its
            // first occurrence, before `t`.
            after = wall;
        }
    }

    /// The first matching wall-clock minute strictly after `after`.
    fn next_wall_after(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = after
            .with_second(0)?
            .with_nanosecond(0)?
            .checked_add_signed(TimeDelta::minutes(1))?;
        let date = start.date();
        if self.matches_date(date) {
            if let Some(time) = self.first_time_from(start.hour(), start.minute()) {
                return Some(date.and_time(time));
            }
        }
        let day = self.next_date_from(date.succ_opt()?)?;
        let time = NaiveTime::from_hms_opt(self.hour.min()?, self.minute.min()?, 0)?;
        Some(day.and_time(time))
    }

    /// The first matching time of day at or after `hour:minute`.
    fn first_time_from(&self, hour: u32, minute: u32) -> Option<NaiveTime> {
        if self.hour.contains(hour) {
            if let Some(m) = self.minute.first_at_or_after(minute) {
                return NaiveTime::from_hms_opt(hour, m, 0);
            }
        }
        let next_hour = self.hour.first_at_or_after(hour + 1)?;
        NaiveTime::from_hms_opt(next_hour, self.minute.min()?, 0)
    }

    /// The first matching date on or after `from`, skipping whole months that are not
    /// allowed and, within a month, straight to the allowed days.
    fn next_date_from(&self, from: NaiveDate) -> Option<NaiveDate> {
        let (mut year, mut month, mut day) = (from.year(), from.month(), from.day());
        let last_year = year.saturating_add(SEARCH_YEARS).min(LAST_YEAR);
        while year <= last_year {
            match self.month_of_year.first_at_or_after(month) {
                Some(m) if m != month => (month, day) = (m, 1),
                Some(_) => {
                    if let Some(date) = self.day_in_month(year, month, day) {
                        return Some(date);
                    }
                    (month, day) = (month + 1, 1);
                }
                None => (year, month, day) = (year + 1, 1, 1),
            }
        }
        None
    }

    /// The first allowed day of `year-month`, on or after `from_day`, with an allowed
    /// weekday.
    fn day_in_month(&self, year: i32, month: u32, from_day: u32) -> Option<NaiveDate> {
        let mut day = from_day;
        while let Some(d) = self.day_of_month.first_at_or_after(day) {
            // Past the month's end (31 in April, 29 in a common February) ends the month.
            let date = NaiveDate::from_ymd_opt(year, month, d)?;
            if self
                .day_of_week
                .contains(date.weekday().num_days_from_sunday())
            {
                return Some(date);
            }
            day = d + 1;
        }
        None
    }
}

/// Celery's equality: the same expanded sets, however they were written.
impl PartialEq for Crontab {
    fn eq(&self, other: &Self) -> bool {
        FIELDS.iter().all(|&k| self.field(k) == other.field(k))
    }
}

impl Eq for Crontab {}

const FIELDS: [FieldKind; 5] = [
    FieldKind::Minute,
    FieldKind::Hour,
    FieldKind::DayOfWeek,
    FieldKind::DayOfMonth,
    FieldKind::MonthOfYear,
];

/// The cron-string form, `"minute hour day_of_month month_of_year day_of_week"` (standard
/// cron order, as Celery's `crontab.from_string`). Fields are separated by any whitespace;
/// Celery splits on single spaces only, so everything it accepts is accepted.
impl FromStr for Crontab {
    type Err = CrontabError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day_of_month, month_of_year, day_of_week] = fields[..] else {
            return Err(CrontabError::FieldCount {
                text: text.to_owned(),
                found: fields.len(),
            });
        };
        Crontab::new(minute, hour, day_of_week, day_of_month, month_of_year)
    }
}

/// Writes the cron-string form, with each field as it was written.
impl fmt::Display for Crontab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use chrono_tz::{America::New_York, Europe::Stockholm};

    fn cron(text: &str) -> Crontab {
        text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    /// The first `n` runs from `start`, each computed from the one before, as beat does.
    fn runs(c: &Crontab, start: DateTime<Utc>, tz: Tz, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut last = start;
        for _ in 0..n {
            last = c.next_fire_after(last, tz);
            out.push(last);
        }
        out
    }

    #[test]
    fn errors_name_field_and_text() {
        let err = |t: &str| t.parse::<Crontab>().unwrap_err().to_string();
        assert_eq!(err("0 25 * * *"), "hour: 25 is out of range 0-23");
        assert_eq!(err("60 * * * *"), "minute: 60 is out of range 0-59");
        assert_eq!(err("* * * * 7"), "day_of_week: 7 is out of range 0-6");
        assert_eq!(err("* * 0 * *"), "day_of_month: 0 is out of range 1-31");
        assert_eq!(err("* * * 13 *"), "month_of_year: 13 is out of range 1-12");
        assert_eq!(
            err("* * * *"),
            "crontab \"* * * *\" has 4 fields, expected 5: \
             \"minute hour day_of_month month_of_year day_of_week\""
        );
        assert_eq!(
            err("0 0 30 2 *"),
            "day_of_month \"30\" never occurs in month_of_year \"2\""
        );
        assert_eq!(
            Crontab::new("0", "0", "funday", "*", "*").unwrap_err().to_string(),
            "day_of_week: \"funday\" is not a number, a day name (sun-sat) or a month name (jan-dec)"
        );
    }

    #[test]
    fn string_form_is_cron_order_and_round_trips() {
        let c = cron("5 4 3 2 1");
        assert_eq!(c, Crontab::new("5", "4", "1", "3", "2").unwrap());
        assert_eq!(
            c.field(FieldKind::DayOfWeek).iter().collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(c.to_string(), "5 4 3 2 1");
        assert_eq!(cron(" 0\t*/2  * * * ").to_string(), "0 */2 * * *");
        assert_eq!(cron("0 0 * * mon-fri"), cron("0 0 * * 1-5"));
        assert_ne!(cron("0 0 * * *"), cron("0 1 * * *"));
    }

    #[test]
    fn next_is_strictly_after() {
        let c = cron("*/15 * * * *");
        assert_eq!(
            c.next_fire_after(utc(2025, 1, 1, 10, 0), chrono_tz::UTC),
            utc(2025, 1, 1, 10, 15)
        );
        let mid = utc(2025, 1, 1, 10, 14) + TimeDelta::milliseconds(59_999);
        assert_eq!(
            c.next_fire_after(mid, chrono_tz::UTC),
            utc(2025, 1, 1, 10, 15)
        );
        assert_eq!(
            c.next_fire_after(utc(2025, 1, 1, 23, 45), chrono_tz::UTC),
            utc(2025, 1, 2, 0, 0)
        );
    }

    #[test]
    fn rolls_over_hours_days_months_years() {
        let tz = chrono_tz::UTC;
        assert_eq!(
            cron("30 9,17 * * *").next_fire_after(utc(2025, 1, 1, 12, 0), tz),
            utc(2025, 1, 1, 17, 30)
        );
        assert_eq!(
            cron("0 0 1 * *").next_fire_after(utc(2025, 1, 31, 12, 0), tz),
            utc(2025, 2, 1, 0, 0)
        );
        assert_eq!(
            cron("0 0 31 * *").next_fire_after(utc(2025, 1, 31, 0, 0), tz),
            utc(2025, 3, 31, 0, 0)
        );
        assert_eq!(
            cron("59 23 31 12 *").next_fire_after(utc(2025, 12, 31, 23, 59), tz),
            utc(2026, 12, 31, 23, 59)
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_are_anded() {
        // The first Monday of the month, not "every Monday and the 1st-7th".
        let first_monday = cron("0 8 1-7 * mon");
        let runs = runs(&first_monday, utc(2025, 1, 1, 0, 0), chrono_tz::UTC, 3);
        assert_eq!(
            runs,
            [
                utc(2025, 1, 6, 8, 0),
                utc(2025, 2, 3, 8, 0),
                utc(2025, 3, 3, 8, 0)
            ]
        );
        let friday_13th = cron("0 0 13 * fri");
        assert_eq!(
            friday_13th.next_fire_after(utc(2025, 1, 1, 0, 0), chrono_tz::UTC),
            utc(2025, 6, 13, 0, 0)
        );
    }

    #[test]
    fn leap_day_is_found_fast() {
        let started = std::time::Instant::now();
        let leap = cron("0 0 29 2 *");
        assert_eq!(
            leap.next_fire_after(utc(2025, 1, 1, 0, 0), chrono_tz::UTC),
            utc(2028, 2, 29, 0, 0)
        );
        // 2100 is not a leap year.
        assert_eq!(
            leap.next_fire_after(utc(2096, 3, 1, 0, 0), chrono_tz::UTC),
            utc(2104, 2, 29, 0, 0)
        );
        // A leap day on a Monday: 2044 after 2016.
        let leap_monday = cron("0 0 29 2 mon");
        assert_eq!(
            leap_monday.next_fire_after(utc(2016, 3, 1, 0, 0), chrono_tz::UTC),
            utc(2044, 2, 29, 0, 0)
        );
        for _ in 0..1000 {
            leap_monday.next_fire_after(utc(2016, 3, 1, 0, 0), chrono_tz::UTC);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn nothing_before_year_10000_is_max() {
        let leap = cron("0 0 29 2 *");
        assert_eq!(
            leap.next_fire_after(utc(9997, 1, 1, 0, 0), chrono_tz::UTC),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn end_of_calendar_is_max_not_a_panic() {
        let max = DateTime::<Utc>::MAX_UTC;
        assert_eq!(cron("0 0 * * *").next_fire_after(max, Stockholm), max);
        let min = DateTime::<Utc>::MIN_UTC;
        assert!(cron("0 0 * * *").next_fire_after(min, Stockholm) > min);
    }

    #[test]
    fn evaluated_in_the_zone() {
        // 09:00 in Stockholm is 08:00 UTC in winter, 07:00 UTC in summer.
        let c = cron("0 9 * * *");
        assert_eq!(
            c.next_fire_after(utc(2025, 1, 15, 12, 0), Stockholm),
            utc(2025, 1, 16, 8, 0)
        );
        assert_eq!(
            c.next_fire_after(utc(2025, 7, 15, 12, 0), Stockholm),
            utc(2025, 7, 16, 7, 0)
        );
    }

    #[test]
    fn spring_forward_runs_once_shifted_by_the_gap() {
        // Stockholm 2025-03-30: 02:00 CET -> 03:00 CEST at 01:00 UTC. 02:30 is read as CET,
        // 01:30 UTC = 03:30 CEST; the next day is back to normal (00:30 UTC = 02:30 CEST).
        let daily = cron("30 2 * * *");
        let r = runs(&daily, utc(2025, 3, 29, 12, 0), Stockholm, 2);
        assert_eq!(r, [utc(2025, 3, 30, 1, 30), utc(2025, 3, 31, 0, 30)]);
        // Several minutes of the missing hour: only the first runs, once.
        let r = runs(&cron("*/20 2 * * *"), utc(2025, 3, 29, 12, 0), Stockholm, 2);
        assert_eq!(r, [utc(2025, 3, 30, 1, 0), utc(2025, 3, 31, 0, 0)]);
        // New York 2025-03-09: 02:00 EST -> 03:00 EDT; 02:30 runs at 07:30 UTC = 03:30 EDT.
        let r = runs(&daily, utc(2025, 3, 8, 12, 0), New_York, 2);
        assert_eq!(r, [utc(2025, 3, 9, 7, 30), utc(2025, 3, 10, 6, 30)]);
    }

    #[test]
    fn fall_back_runs_once_at_the_first_occurrence() {
        // Stockholm 2025-10-26: 03:00 CEST -> 02:00 CET at 01:00 UTC. 02:30 happens at 00:30
        // and 01:30 UTC; it runs at 00:30 only.
        let daily = cron("30 2 * * *");
        let r = runs(&daily, utc(2025, 10, 25, 12, 0), Stockholm, 2);
        assert_eq!(r, [utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)]);
        // Hourly: 02:00 CEST, then 03:00 CET; the second 02:00 (CET) is skipped.
        let r = runs(&cron("0 * * * *"), utc(2025, 10, 25, 23, 30), Stockholm, 3);
        assert_eq!(
            r,
            [
                utc(2025, 10, 26, 0, 0),
                utc(2025, 10, 26, 2, 0),
                utc(2025, 10, 26, 3, 0)
            ]
        );
        // New York 2025-11-02: 01:30 EDT (05:30 UTC), not again at 01:30 EST.
        let r = runs(&cron("30 1 * * *"), utc(2025, 11, 1, 12, 0), New_York, 2);
        assert_eq!(r, [utc(2025, 11, 2, 5, 30), utc(2025, 11, 3, 6, 30)]);
    }

    #[test]
    fn last_run_in_second_pass_is_never_answered_with_the_past() {
        // 01:15 UTC is 02:15 CET, the second pass. Celery would answer 00:30 UTC (the first
        // 02:30, before the last run); the first 02:30 has passed, so the next is tomorrow's.
        let t = utc(2025, 10, 26, 1, 15);
        assert_eq!(
            cron("30 2 * * *").next_fire_after(t, Stockholm),
            utc(2025, 10, 27, 1, 30)
        );
        // Every minute: the rest of the repeated hour already ran; next is 03:00 CET.
        assert_eq!(
            cron("* * * * *").next_fire_after(t, Stockholm),
            utc(2025, 10, 26, 2, 0)
        );
    }
}
