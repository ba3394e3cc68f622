//! Celery's `schedule(run_every, relative)`: due every `every` since the last run.
//!
//! Interval text is celeriac's own (Celery takes a number of seconds or a `timedelta`):
//! `"30s"`, `"5m"`, `"1h"`, `"1d"`, `"500ms"`, `"1h30m"`, or a plain number of seconds
//! (`"10"`, `"2.5"`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;

use crate::local;

/// Due every `every` since the last run.
///
/// With `relative`, Celery rounds each due time down to the resolution of the period, on
/// the wall clock of the app's time zone: a period of a day or more runs at midnight, of an
/// hour or more on the hour, of a minute or more on the minute, shorter ones on the whole
/// second. So a relative `1h` whose last run was at 10:42 is next due at 11:00, not 11:42.
/// The rules, DST included, are those of Celery 5.7's `celery.utils.time.remaining`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Interval {
    pub every: Duration,
    pub relative: bool,
}

/// Why interval text does not parse. Each names the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    #[error(
        "interval {text:?}: expected seconds (\"10\", \"2.5\") or amounts with units \
         ms, s, m, h, d (\"500ms\", \"30s\", \"5m\", \"1h30m\", \"1d\")"
    )]
    Malformed { text: String },
    #[error("interval {text:?}: unknown unit {unit:?}, expected one of ms, s, m, h, d")]
    UnknownUnit { text: String, unit: String },
    #[error("interval {text:?}: must be longer than zero")]
    Zero { text: String },
    #[error("interval {text:?}: too long")]
    TooLong { text: String },
}

const NANOS_PER_SEC: u128 = 1_000_000_000;
const SECS_PER_DAY: u64 = 86_400;

impl Interval {
    /// A plain (not relative) interval.
    pub fn new(every: Duration) -> Self {
        Interval {
            every,
            relative: false,
        }
    }

    /// The same interval with Celery's `relative` option set or cleared.
    pub fn with_relative(self, relative: bool) -> Self {
        Interval { relative, ..self }
    }

    /// When the entry is next due, for an app in UTC (see [`Interval::next_after_in`]).
    pub fn next_after(&self, last_run: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        self.next_after_in(last_run, now, Tz::UTC)
    }

    /// When the entry is next due, given its last run and the time now, for an app whose
    /// time zone is `tz` (it matters only to `relative` rounding).
    ///
    /// Never before `now`: an entry whose due time passed while beat was not looking is due
    /// at once, and once only; Celery does not replay each missed period either. A zero
    /// `every` (parsing refuses one; only a hand-built `Interval` has it) is always due.
    pub fn next_after_in(
        &self,
        last_run: DateTime<Utc>,
        now: DateTime<Utc>,
        tz: Tz,
    ) -> DateTime<Utc> {
        let mut due = self.deadline(last_run, tz);
        if due <= last_run {
            // Rounding a sub-second period down to the second can land on or before the
            // last run; Celery then keeps the plain period as its next check, so do we.
            due = add(last_run, self.every);
        }
        due.max(now)
    }

    /// Celery's due time itself, `last_run + remaining_estimate(last_run)`, which may be
    /// in the past or, for sub-second relative periods, not after `last_run`.
    pub fn deadline(&self, last_run: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        if self.relative {
            relative_deadline(last_run, self.every, tz)
        } else {
            add(last_run, self.every)
        }
    }
}

impl FromStr for Interval {
    type Err = IntervalError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_duration(text).map(Interval::new)
    }
}

/// `every 1h30m`, with ` (relative)` when it is.
impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "every {}", format_duration(self.every))?;
        if self.relative {
            f.write_str(" (relative)")?;
        }
        Ok(())
    }
}

fn add(at: DateTime<Utc>, every: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(every)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Parses interval text (see the module docs) into a duration longer than zero.
pub fn parse_duration(text: &str) -> Result<Duration, IntervalError> {
    let s = text.trim();
    let nanos = if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        amount(s, NANOS_PER_SEC).ok_or_else(|| IntervalError::Malformed { text: text.into() })?
    } else {
        components(text, s)?
    };
    to_duration(text, nanos)
}

/// `1h30m`: numbers each followed by a unit, summed.
fn components(text: &str, mut rest: &str) -> Result<u128, IntervalError> {
    let malformed = || IntervalError::Malformed { text: text.into() };
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let unit_end = rest[number_end..]
            .find(|c: char| !c.is_ascii_alphabetic())
            .map_or(rest.len(), |i| number_end + i);
        let (number, unit) = (&rest[..number_end], &rest[number_end..unit_end]);
        if number.is_empty() || unit.is_empty() {
            return Err(malformed());
        }
        let per_unit = unit_nanos(unit).ok_or_else(|| IntervalError::UnknownUnit {
            text: text.into(),
            unit: unit.into(),
        })?;
        total = total.saturating_add(amount(number, per_unit).ok_or_else(malformed)?);
        rest = &rest[unit_end..];
    }
    Ok(total)
}

fn to_duration(text: &str, nanos: u128) -> Result<Duration, IntervalError> {
    if nanos == 0 {
        return Err(IntervalError::Zero { text: text.into() });
    }
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok();
    let duration = secs.map(|s| Duration::new(s, (nanos % NANOS_PER_SEC) as u32));
    // Bounded by what chrono can add to an instant, so every parsed interval can be used.
    match duration.filter(|d| TimeDelta::from_std(*d).is_ok()) {
        Some(d) => Ok(d),
        None => Err(IntervalError::TooLong { text: text.into() }),
    }
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ms" => NANOS_PER_SEC / 1000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        "d" => u128::from(SECS_PER_DAY) * NANOS_PER_SEC,
        _ => return None,
    })
}

/// A decimal number (`"90"`, `"1.5"`, `".5"`) times `per_unit` nanoseconds, exactly, with
/// what is below a nanosecond dropped and saturating when huge (the caller then reports it
/// as too long). `None` if it is not such a number.
fn amount(number: &str, per_unit: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !digits_only(whole) || !digits_only(fraction) {
        return None;
    }
    let whole = whole.bytes().fold(0u128, |acc, b| {
        acc.saturating_mul(10).saturating_add(u128::from(b - b'0'))
    });
    let mut value = whole.saturating_mul(per_unit);
    // Digits past the 30th cannot reach a nanosecond of any unit here.
    let mut scale = per_unit;
    for digit in fraction.bytes().take(30) {
        scale /= 10;
        value = value.saturating_add(u128::from(digit - b'0') * scale);
    }
    Some(value)
}

/// The shortest text that [`parse_duration`] reads back as `d`: `"1h30m"`, `"2s500ms"`,
/// or, below a millisecond, seconds with a fraction (`"0.0000015"`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != d.subsec_millis() * 1_000_000 {
        let fraction = format!("{:09}", d.subsec_nanos());
        return format!("{}.{}", d.as_secs(), fraction.trim_end_matches('0'));
    }
    let secs = d.as_secs();
    let parts = [
        (secs / SECS_PER_DAY, "d"),
        (secs % SECS_PER_DAY / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
        (u64::from(d.subsec_millis()), "ms"),
    ];
    let text: String = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() {
        "0s".into()
    } else {
        text
    }
}

/// How far Celery's `delta_resolution` rounds for a period.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resolution {
    Second,
    Minute,
    Hour,
    Day,
}

impl Resolution {
    fn of(every: Duration) -> Self {
        match every.as_secs() {
            s if s >= SECS_PER_DAY => Resolution::Day,
            s if s >= 3_600 => Resolution::Hour,
            s if s >= 60 => Resolution::Minute,
            _ => Resolution::Second,
        }
    }

    /// `delta_resolution(wall).replace(microsecond=0)`.
    fn round_down(self, wall: NaiveDateTime) -> NaiveDateTime {
        let date = wall.date();
        let (h, m, s) = (wall.hour(), wall.minute(), wall.second());
        let (h, m, s) = match self {
            Resolution::Day => (0, 0, 0),
            Resolution::Hour => (h, 0, 0),
            Resolution::Minute => (h, m, 0),
            Resolution::Second => (h, m, s),
        };
        date.and_hms_opt(h, m, s).unwrap_or(wall)
    }
}

/// Both instants (`fold=0`, `fold=1`) of `wall` rounded down: `_relative_end_dates`.
fn rounded_instants(res: Resolution, wall: NaiveDateTime, tz: Tz) -> [DateTime<Utc>; 2] {
    let (first, second) = local::occurrences(tz, res.round_down(wall));
    [first, second]
}

fn wall_add(wall: NaiveDateTime, every: Duration) -> NaiveDateTime {
    TimeDelta::from_std(every)
        .ok()
        .and_then(|d| wall.checked_add_signed(d))
        .unwrap_or(NaiveDateTime::MAX)
}

/// Celery 5.7's `remaining(start, every, relative=True)` due time, `start` being in `tz`.
///
/// Periods of a day or more step in calendar days on the wall clock and land on the first
/// midnight after `start`; shorter ones step in elapsed time and land on the last rounded
/// boundary at or before `start + every`, trying the neighbouring boundaries when a
/// fall-back puts that one before `start`.
fn relative_deadline(start: DateTime<Utc>, every: Duration, tz: Tz) -> DateTime<Utc> {
    let res = Resolution::of(every);
    let end = add(start, every);
    // Only at the ends of chrono's calendar is there no wall clock to round on.
    let (Some(start_wall), Some(end_wall)) =
        (local::wall_clock(start, tz), local::wall_clock(end, tz))
    else {
        return end;
    };
    if res == Resolution::Day {
        let end_wall = wall_add(start_wall, every);
        let future = rounded_instants(res, end_wall, tz)
            .into_iter()
            .filter(|&c| c > start);
        return future
            .min()
            .unwrap_or_else(|| local::first_occurrence(tz, end_wall));
    }
    let mut candidates = rounded_instants(res, end_wall, tz).to_vec();
    let rounded = latest_by(&candidates, end).unwrap_or(candidates[0].min(candidates[1]));
    if res == Resolution::Second || rounded > start {
        return rounded;
    }
    // A fall-back shorter than the period put the boundary before the start: look at the
    // next clock boundary and the calendar one too, both occurrences of each.
    let unit = if res == Resolution::Hour {
        TimeDelta::hours(1)
    } else {
        TimeDelta::minutes(1)
    };
    let next_wall = end_wall.checked_add_signed(unit).unwrap_or(end_wall);
    candidates.extend(rounded_instants(res, next_wall, tz));
    candidates.extend(rounded_instants(res, wall_add(start_wall, every), tz));
    candidates.retain(|&c| c > start);
    latest_by(&candidates, end)
        .or_else(|| candidates.iter().copied().min())
        .unwrap_or(end)
}

/// The latest candidate at or before `end`.
fn latest_by(candidates: &[DateTime<Utc>], end: DateTime<Utc>) -> Option<DateTime<Utc>> {
    candidates.iter().copied().filter(|&c| c <= end).max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use chrono_tz::{America::New_York, Europe::Stockholm};

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn parses_units_and_plain_seconds() {
        let p = |t: &str| parse_duration(t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p("30s"), secs(30));
        assert_eq!(p("5m"), secs(300));
        assert_eq!(p("1h"), secs(3600));
        assert_eq!(p("1d"), secs(86_400));
        assert_eq!(p("500ms"), Duration::from_millis(500));
        assert_eq!(p("1h30m"), secs(5400));
        assert_eq!(p("1d2h3m4s5ms"), secs(93_784) + Duration::from_millis(5));
        assert_eq!(p("10"), secs(10));
        assert_eq!(p("2.5"), Duration::from_millis(2500));
        assert_eq!(p(".5"), Duration::from_millis(500));
        assert_eq!(p("1.5h"), secs(5400));
        assert_eq!(p(" 30s "), secs(30));
        assert_eq!(p("0.000000001"), Duration::from_nanos(1));
        assert_eq!("90s".parse::<Interval>().unwrap(), Interval::new(secs(90)));
    }

    #[test]
    fn bad_text_names_text_and_expectation() {
        let e = |t: &str| parse_duration(t).unwrap_err().to_string();
        let expected = "expected seconds (\"10\", \"2.5\") or amounts with units ms, s, m, h, d \
                        (\"500ms\", \"30s\", \"5m\", \"1h30m\", \"1d\")";
        for bad in [
            "", "abc", "s", "1..5", "1.5.5s", "-5s", "1h 30m", "5m-", "5m3",
        ] {
            assert_eq!(e(bad), format!("interval {bad:?}: {expected}"), "{bad:?}");
        }
        assert_eq!(
            e("5x"),
            "interval \"5x\": unknown unit \"x\", expected one of ms, s, m, h, d"
        );
        assert_eq!(
            e("1H"),
            "interval \"1H\": unknown unit \"H\", expected one of ms, s, m, h, d"
        );
        assert_eq!(e("0s"), "interval \"0s\": must be longer than zero");
        assert_eq!(e("0"), "interval \"0\": must be longer than zero");
        assert_eq!(
            e("0.0000000001"),
            "interval \"0.0000000001\": must be longer than zero"
        );
        assert_eq!(
            e("1e3"),
            "interval \"1e3\": unknown unit \"e\", expected one of ms, s, m, h, d"
        );
        assert_eq!(
            e("99999999999999999999d"),
            "interval \"99999999999999999999d\": too long"
        );
        assert!(e(&"9".repeat(60)).ends_with("too long"));
    }

    #[test]
    fn formats_back_to_parseable_text() {
        for text in ["1h30m", "2s500ms", "1d", "45s", "0.0000015", "3d4h"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        let i = Interval::new(secs(60)).with_relative(true);
        assert_eq!(i.to_string(), "every 1m (relative)");
    }

    #[test]
    fn plain_interval_is_last_run_plus_every() {
        let i = Interval::new(secs(30));
        let last = utc(2025, 1, 1, 10, 0, 7);
        assert_eq!(i.next_after(last, last), utc(2025, 1, 1, 10, 0, 37));
        // Elapsed time, not wall time, across DST.
        let last = utc(2025, 3, 30, 0, 30, 0);
        let hour = Interval::new(secs(3600));
        assert_eq!(
            hour.next_after_in(last, last, Stockholm),
            utc(2025, 3, 30, 1, 30, 0)
        );
    }

    #[test]
    fn missed_runs_are_due_now_once() {
        let i = Interval::new(secs(30));
        let last = utc(2025, 1, 1, 10, 0, 0);
        let now = utc(2025, 1, 1, 12, 0, 0);
        assert_eq!(i.next_after(last, now), now);
        assert_eq!(i.deadline(last, Tz::UTC), utc(2025, 1, 1, 10, 0, 30));
    }

    #[test]
    fn relative_rounds_to_the_period_resolution() {
        let last = utc(2025, 1, 15, 10, 42, 17);
        let rel = |s: u64| Interval::new(secs(s)).with_relative(true);
        assert_eq!(rel(3600).next_after(last, last), utc(2025, 1, 15, 11, 0, 0));
        assert_eq!(rel(5400).next_after(last, last), utc(2025, 1, 15, 12, 0, 0));
        assert_eq!(rel(300).next_after(last, last), utc(2025, 1, 15, 10, 47, 0));
        assert_eq!(
            rel(86_400).next_after(last, last),
            utc(2025, 1, 16, 0, 0, 0)
        );
        assert_eq!(
            rel(129_600).next_after(last, last),
            utc(2025, 1, 16, 0, 0, 0)
        );
        let sub = last + TimeDelta::milliseconds(700);
        assert_eq!(rel(30).next_after(sub, sub), utc(2025, 1, 15, 10, 42, 47));
    }

    #[test]
    fn relative_day_is_local_midnight() {
        // 10:00 UTC is 11:00 in Stockholm; the next local midnight is 23:00 UTC.
        let i = Interval::new(secs(86_400)).with_relative(true);
        let last = utc(2025, 1, 15, 10, 0, 0);
        assert_eq!(
            i.next_after_in(last, last, Stockholm),
            utc(2025, 1, 15, 23, 0, 0)
        );
        // Across spring-forward the day is a calendar day: 22:00 UTC is midnight CEST.
        let last = utc(2025, 3, 29, 12, 0, 0);
        assert_eq!(
            i.next_after_in(last, last, Stockholm),
            utc(2025, 3, 29, 23, 0, 0)
        );
        let last = utc(2025, 3, 30, 12, 0, 0);
        assert_eq!(
            i.next_after_in(last, last, Stockholm),
            utc(2025, 3, 30, 22, 0, 0)
        );
    }

    #[test]
    fn relative_hour_through_fall_back() {
        // New York 2025-11-02: 01:00-01:59 twice (05:xx EDT, 06:xx EST).
        let i = Interval::new(secs(3600)).with_relative(true);
        let last = utc(2025, 11, 2, 5, 40, 0); // 01:40 EDT
        assert_eq!(
            i.next_after_in(last, last, New_York),
            utc(2025, 11, 2, 6, 0, 0)
        );
        let last = utc(2025, 11, 2, 6, 0, 0); // 01:00 EST
        assert_eq!(
            i.next_after_in(last, last, New_York),
            utc(2025, 11, 2, 7, 0, 0)
        );
    }

    #[test]
    fn huge_periods_and_extreme_instants_saturate() {
        let last = utc(2025, 1, 1, 0, 0, 0);
        let max = DateTime::<Utc>::MAX_UTC;
        for relative in [false, true] {
            for tz in [Tz::UTC, Stockholm] {
                let forever = Interval::new(Duration::from_secs(u64::MAX)).with_relative(relative);
                assert!(forever.next_after_in(last, last, tz) > utc(262_000, 1, 1, 0, 0, 0));
                let hourly = Interval::new(secs(3600)).with_relative(relative);
                assert_eq!(hourly.next_after_in(max, max, tz), max);
            }
        }
    }

    #[test]
    fn sub_second_relative_keeps_the_period() {
        let i = Interval::new(Duration::from_millis(500)).with_relative(true);
        let last = utc(2025, 1, 1, 0, 0, 0) + TimeDelta::milliseconds(200);
        // Rounding 00:00:00.7 down to the second lands before the last run.
        assert_eq!(i.deadline(last, Tz::UTC), utc(2025, 1, 1, 0, 0, 0));
        let next = last + TimeDelta::milliseconds(500);
        assert_eq!(i.next_after(last, last), next);
    }
}
