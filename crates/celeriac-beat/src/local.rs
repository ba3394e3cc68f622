//! Where a wall-clock time lands on the timeline of a time zone.
//!
//! Schedules are written in wall-clock terms ("02:30 every day", "round to the hour"), but
//! beat sleeps until instants. Daylight-saving transitions make that mapping partial: a
//! wall time in a spring-forward gap has no instant, one in a fall-back overlap has two.
//! Both rules below are Python's `zoneinfo` rules (PEP 495), because that is what Celery
//! resolves its wall times with.

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// The instants at which `wall` happens in `tz`, earliest first (Python's `fold=0`, then
/// `fold=1`). Outside transitions both are the same instant.
///
/// A wall time inside a gap never happens; like `zoneinfo` it is read with the offset in
/// force before the gap, which lands it as far past the gap's start as it was written past
/// it (02:30 in a 02:00→03:00 gap becomes 03:30 after the jump).
pub(crate) fn occurrences(tz: Tz, wall: NaiveDateTime) -> (DateTime<Utc>, DateTime<Utc>) {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(at) => (at.to_utc(), at.to_utc()),
        LocalResult::Ambiguous(first, second) => (first.to_utc(), second.to_utc()),
        LocalResult::None => {
            let at = in_gap(tz, wall);
            (at, at)
        }
    }
}

/// The wall-clock time of `at` in `tz`; `None` past the ends of chrono's calendar, where
/// `with_timezone(..).naive_local()` would panic.
pub(crate) fn wall_clock(at: DateTime<Utc>, tz: Tz) -> Option<NaiveDateTime> {
    let offset = tz.offset_from_utc_datetime(&at.naive_utc()).fix();
    at.naive_utc()
        .checked_add_signed(TimeDelta::seconds(i64::from(offset.local_minus_utc())))
}

/// The first instant at which `wall` happens in `tz` (see [`occurrences`]).
pub(crate) fn first_occurrence(tz: Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    occurrences(tz, wall).0
}

/// `wall` read with the offset in force before its gap.
fn in_gap(tz: Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    // A day earlier is safely before the jump (zones do not jump twice in a day). dateutil's
    // `resolve_imaginary`, which Celery's relative rounding uses, also takes the offset of
    // a day earlier, so it and `zoneinfo` (Celery's crontab path) land where this does.
    let before = wall.checked_sub_signed(TimeDelta::days(1)).unwrap_or(wall);
    let offset = tz.offset_from_utc_datetime(&before).fix().local_minus_utc();
    let utc = wall
        .checked_sub_signed(TimeDelta::seconds(i64::from(offset)))
        .unwrap_or(wall);
    Utc.from_utc_datetime(&utc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn wall(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.from_utc_datetime(&wall(y, mo, d, h, mi))
    }

    #[test]
    fn ordinary_time_has_one_instant() {
        let tz = chrono_tz::Europe::Stockholm;
        let at = utc(2025, 1, 15, 9, 0);
        assert_eq!(occurrences(tz, wall(2025, 1, 15, 10, 0)), (at, at));
    }

    #[test]
    fn gap_reads_with_offset_before_jump() {
        // Stockholm 2025-03-30: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let tz = chrono_tz::Europe::Stockholm;
        let at = utc(2025, 3, 30, 1, 30); // 03:30 CEST
        assert_eq!(occurrences(tz, wall(2025, 3, 30, 2, 30)), (at, at));
    }

    #[test]
    fn overlap_has_two_instants_first_is_earlier() {
        // Stockholm 2025-10-26: 03:00 CEST falls back to 02:00 CET (01:00 UTC).
        let tz = chrono_tz::Europe::Stockholm;
        let (first, second) = occurrences(tz, wall(2025, 10, 26, 2, 30));
        assert_eq!(first, utc(2025, 10, 26, 0, 30));
        assert_eq!(second, utc(2025, 10, 26, 1, 30));
        assert_eq!(first_occurrence(tz, wall(2025, 10, 26, 2, 30)), first);
    }

    #[test]
    fn new_york_gap_and_overlap() {
        let tz = chrono_tz::America::New_York;
        // 2025-03-09 02:00 EST jumps to 03:00 EDT: 02:15 is read as EST (-5).
        assert_eq!(
            first_occurrence(tz, wall(2025, 3, 9, 2, 15)),
            utc(2025, 3, 9, 7, 15)
        );
        // 2025-11-02 01:00-01:59 happens twice, in EDT then in EST.
        assert_eq!(
            occurrences(tz, wall(2025, 11, 2, 1, 20)),
            (utc(2025, 11, 2, 5, 20), utc(2025, 11, 2, 6, 20))
        );
    }
}
