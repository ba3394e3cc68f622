//! Times on the wire: Python's `datetime.isoformat()` out, any ISO 8601 Python accepts in.

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, TimeZone, Utc};

/// Formats like Python's `datetime.isoformat()` for an aware UTC value:
/// `2026-11-22T02:54:46.961750+00:00`, microseconds only when non-zero.
pub fn to_iso(t: DateTime<Utc>) -> String {
    let micros = t.timestamp_subsec_micros();
    if micros == 0 {
        t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        format!("{}.{:06}+00:00", t.format("%Y-%m-%dT%H:%M:%S"), micros)
    }
}

/// Parses an ISO 8601 time as Python's `fromisoformat` does; a value without an offset is
/// taken as UTC (celeriac's configured timezone is always UTC).
pub fn parse_iso(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // Python also writes a space instead of `T`, and offsets without a colon.
    let normalized = s.replacen(' ', "T", 1);
    if let Ok(t) = DateTime::<FixedOffset>::parse_from_str(&normalized, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(&normalized, fmt) {
            return Some(Utc.from_utc_datetime(&naive));
        }
    }
    None
}

/// Milliseconds since the Unix epoch, the time unit of the embedded store.
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
}

/// Renders with the precision Python shows, for people reading logs.
pub fn to_display(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_python_isoformat() {
        let t = parse_iso("2026-11-22T02:54:46.961750+00:00").unwrap();
        assert_eq!(to_iso(t), "2026-11-22T02:54:46.961750+00:00");
        let whole = parse_iso("2030-01-01T12:00:00").unwrap();
        assert_eq!(to_iso(whole), "2030-01-01T12:00:00+00:00");
    }

    #[test]
    fn parses_offsets_zulu_and_naive() {
        let a = parse_iso("2030-01-01T13:00:00+01:00").unwrap();
        let b = parse_iso("2030-01-01T12:00:00Z").unwrap();
        let c = parse_iso("2030-01-01 12:00:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert!(parse_iso("tomorrow").is_none());
    }
}
