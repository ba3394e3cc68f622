//! One crontab field: Celery's `crontab_parser` grammar, expanded to a set of numbers.
//!
//! The grammar is Celery's, quirks included, so that a beat schedule written for Celery
//! means the same here (`celery/schedules.py`, `crontab_parser`):
//!
//! ```text
//! groups  :: expr ( ',' expr ) *
//! expr    :: '*' | '*/' step | range | range '/' step
//! range   :: number ( '-' number ) ?
//! number  :: digits | name
//! ```
//!
//! * A range whose end is below its start wraps around the field: hour `22-2` is
//!   22, 23, 0, 1, 2; day of week `fri-mon` is 5, 6, 0, 1. A step applies to the
//!   wrapped list (`22-4/2` is 22, 0, 2, 4).
//! * Day of week is 0-6 with Sunday = 0; `7` is out of range (Celery rejects it too).
//! * Names are matched on their first three letters, case-insensitively (`Monday`, `MON`,
//!   `mon`; `January`, `jan`). Celery looks a name up in both tables whatever the field, so
//!   `jan` is 1 and `mon` is 1 in every field; that is kept, so any spec Celery accepts is
//!   accepted here with the same meaning.
//! * Celery matches its patterns at the start of an item and ignores what follows a
//!   complete match (`1-5!` is `1-5`, `*/2/3` is `*/2`); kept for the same reason.
//! * A step is not range-checked (`*/100` in minutes is just 0), but it must be a number
//!   greater than zero.
//! * Numbers are read like Python's `int()`: surrounding whitespace, a `+` sign and
//!   underscores between digits are allowed. Unlike Python, only ASCII digits are: a spec
//!   written in other scripts' digits is rejected, never misread.

use std::fmt;

/// Which crontab field, named as in Celery's `crontab(...)` keyword arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldKind {
    Minute,
    Hour,
    DayOfWeek,
    DayOfMonth,
    MonthOfYear,
}

impl FieldKind {
    /// Celery's keyword for the field (`day_of_week`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FieldKind::Minute => "minute",
            FieldKind::Hour => "hour",
            FieldKind::DayOfWeek => "day_of_week",
            FieldKind::DayOfMonth => "day_of_month",
            FieldKind::MonthOfYear => "month_of_year",
        }
    }

    /// Smallest and largest value, inclusive.
    pub fn bounds(self) -> (u32, u32) {
        match self {
            FieldKind::Minute => (0, 59),
            FieldKind::Hour => (0, 23),
            FieldKind::DayOfWeek => (0, 6),
            FieldKind::DayOfMonth => (1, 31),
            FieldKind::MonthOfYear => (1, 12),
        }
    }
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The values a field matches, as a bit set (every field fits in 0..=59).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FieldSet(u64);

impl FieldSet {
    /// Builds a set from values below 64 (larger ones are ignored).
    pub fn from_values(values: impl IntoIterator<Item = u32>) -> Self {
        let mut set = FieldSet(0);
        for v in values {
            set.insert(v);
        }
        set
    }

    fn insert(&mut self, value: u32) {
        if value < 64 {
            self.0 |= 1 << value;
        }
    }

    pub fn contains(self, value: u32) -> bool {
        value < 64 && self.0 & (1 << value) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn min(self) -> Option<u32> {
        self.first_at_or_after(0)
    }

    pub fn max(self) -> Option<u32> {
        (self.0 != 0).then(|| 63 - self.0.leading_zeros())
    }

    /// The smallest value in the set that is `>= from`: the search skips by field with it.
    pub fn first_at_or_after(self, from: u32) -> Option<u32> {
        if from >= 64 {
            return None;
        }
        let rest = self.0 >> from << from;
        (rest != 0).then(|| rest.trailing_zeros())
    }

    /// The values in increasing order.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |&v| self.contains(v))
    }
}

/// Why a field's text is not a valid spec. Each names the offending text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{spec:?} has an empty item (expected numbers or ranges between commas)")]
    EmptyItem { spec: String },
    #[error("{item:?} has an empty step (expected a number after '/')")]
    EmptyStep { item: String },
    #[error("{text:?}: negative numbers are not supported")]
    Negative { text: String },
    #[error("{shown} is out of range {min}-{max}")]
    OutOfRange { shown: String, min: u32, max: u32 },
    #[error("{text:?} is not a number, a day name (sun-sat) or a month name (jan-dec)")]
    NotANumber { text: String },
    #[error("step {text:?} is not a number")]
    BadStep { text: String },
    #[error("{item:?}: a step must be greater than zero")]
    ZeroStep { item: String },
}

const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Parses one field's spec into the set of values it matches.
pub fn parse_field(kind: FieldKind, spec: &str) -> Result<FieldSet, FieldError> {
    let mut set = FieldSet::default();
    for item in spec.split(',') {
        if item.is_empty() {
            return Err(FieldError::EmptyItem {
                spec: spec.to_owned(),
            });
        }
        for value in parse_item(kind, item)? {
            set.insert(value);
        }
    }
    Ok(set)
}

/// An item, classified the way Celery's regex table does (tried in this order).
enum Item<'a> {
    /// `a-b/n`, `a-b/` (an empty step).
    RangeStep(&'a str, &'a str, &'a str),
    /// `a-b`.
    Range(&'a str, &'a str),
    /// `*/n`, `*/`.
    StarStep(&'a str),
    /// `*`.
    Star,
    /// Anything else, read as a single number or name.
    Single(&'a str),
}

fn classify(item: &str) -> Item<'_> {
    let from_end = word_end(item, 0);
    if from_end > 0 && item[from_end..].starts_with('-') {
        let to_start = from_end + 1;
        let to_end = word_end(item, to_start);
        if to_end > to_start {
            let (from, to) = (&item[..from_end], &item[to_start..to_end]);
            if item[to_end..].starts_with('/') {
                let step_end = word_end(item, to_end + 1);
                return Item::RangeStep(from, to, &item[to_end + 1..step_end]);
            }
            return Item::Range(from, to);
        }
    }
    if let Some(rest) = item.strip_prefix("*/") {
        return Item::StarStep(&rest[..word_end(rest, 0)]);
    }
    // Python's `$` also matches before a final newline.
    if item == "*" || item == "*\n" {
        return Item::Star;
    }
    Item::Single(item)
}

/// End of the run of regex `\w` characters starting at byte `start`.
fn word_end(s: &str, start: usize) -> usize {
    s[start..]
        .char_indices()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '_'))
        .map_or(s.len(), |(i, _)| start + i)
}

fn parse_item(kind: FieldKind, item: &str) -> Result<Vec<u32>, FieldError> {
    let (min, max) = kind.bounds();
    match classify(item) {
        Item::RangeStep(from, to, step) => {
            // Celery checks for the empty step before it reads the range.
            if step.is_empty() {
                return Err(FieldError::EmptyStep { item: item.into() });
            }
            let values = expand_range(kind, from, to)?;
            Ok(values
                .into_iter()
                .step_by(parse_step(item, step)?)
                .collect())
        }
        Item::Range(from, to) => expand_range(kind, from, to),
        Item::StarStep("") => Err(FieldError::EmptyStep { item: item.into() }),
        Item::StarStep(step) => Ok((min..=max).step_by(parse_step(item, step)?).collect()),
        Item::Star => Ok((min..=max).collect()),
        Item::Single(text) => Ok(vec![parse_number(kind, text)?]),
    }
}

fn expand_range(kind: FieldKind, from: &str, to: &str) -> Result<Vec<u32>, FieldError> {
    let (min, max) = kind.bounds();
    let (from, to) = (parse_number(kind, from)?, parse_number(kind, to)?);
    if to < from {
        return Ok((from..=max).chain(min..=to).collect());
    }
    Ok((from..=to).collect())
}

fn parse_step(item: &str, text: &str) -> Result<usize, FieldError> {
    match python_int(text) {
        None => Err(FieldError::BadStep { text: text.into() }),
        Some(0) => Err(FieldError::ZeroStep { item: item.into() }),
        // A step past the field's width keeps only the first value; saturating is exact.
        Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
    }
}

/// A number or a name, checked against the field's range.
fn parse_number(kind: FieldKind, text: &str) -> Result<u32, FieldError> {
    if text.starts_with('-') {
        return Err(FieldError::Negative { text: text.into() });
    }
    let value = python_int(text)
        .or_else(|| name_value(text))
        .ok_or_else(|| FieldError::NotANumber { text: text.into() })?;
    let (min, max) = kind.bounds();
    if value < i128::from(min) || value > i128::from(max) {
        // A number is shown as written; a name with the number it stands for.
        let shown = if python_int(text).is_some() {
            text.trim().to_owned()
        } else {
            format!("{text:?} ({value})")
        };
        return Err(FieldError::OutOfRange { shown, min, max });
    }
    Ok(value as u32)
}

/// Month names first, then day names, on the first three letters (Celery's order).
fn name_value(text: &str) -> Option<i128> {
    let prefix: String = text.chars().take(3).collect::<String>().to_lowercase();
    let month = MONTH_NAMES.iter().position(|&m| m == prefix).map(|i| i + 1);
    let day = || DAY_NAMES.iter().position(|&d| d == prefix);
    month.or_else(day).map(|v| v as i128)
}

/// Python's `int(text)` for base 10, ASCII digits only; saturates instead of growing.
fn python_int(text: &str) -> Option<i128> {
    let s = text.trim();
    let (negative, digits) = match s.as_bytes().first()? {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    // Underscores only between digits: "1_000" yes, "_1", "1_", "1__0" no.
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') {
        return None;
    }
    if digits.contains("__") {
        return None;
    }
    let mut value: i128 = 0;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = c.to_digit(10)?;
        value = value.saturating_mul(10).saturating_add(i128::from(d));
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(kind: FieldKind, spec: &str) -> Vec<u32> {
        parse_field(kind, spec)
            .unwrap_or_else(|e| panic!("{spec:?}: {e}"))
            .iter()
            .collect()
    }

    fn error(kind: FieldKind, spec: &str) -> String {
        parse_field(kind, spec).expect_err(spec).to_string()
    }

    #[test]
    fn star_and_steps() {
        assert_eq!(values(FieldKind::Minute, "*/15"), [0, 15, 30, 45]);
        assert_eq!(values(FieldKind::Hour, "*/4"), [0, 4, 8, 12, 16, 20]);
        assert_eq!(values(FieldKind::DayOfWeek, "*"), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(
            values(FieldKind::DayOfMonth, "*/3"),
            [1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31]
        );
        assert_eq!(values(FieldKind::MonthOfYear, "*/2"), [1, 3, 5, 7, 9, 11]);
        assert_eq!(values(FieldKind::Minute, "*/100"), [0]);
    }

    #[test]
    fn ranges_lists_and_steps() {
        assert_eq!(
            values(FieldKind::MonthOfYear, "2-12/2"),
            [2, 4, 6, 8, 10, 12]
        );
        assert_eq!(values(FieldKind::Hour, "0,8-17/2"), [0, 8, 10, 12, 14, 16]);
        assert_eq!(values(FieldKind::Minute, "1,5,10"), [1, 5, 10]);
        assert_eq!(values(FieldKind::Minute, "5,5,1"), [1, 5]);
    }

    #[test]
    fn reversed_range_wraps_around() {
        assert_eq!(values(FieldKind::Hour, "22-2"), [0, 1, 2, 22, 23]);
        assert_eq!(values(FieldKind::Hour, "22-4/2"), [0, 2, 4, 22]);
        assert_eq!(values(FieldKind::DayOfWeek, "fri-mon"), [0, 1, 5, 6]);
        assert_eq!(values(FieldKind::MonthOfYear, "nov-feb"), [1, 2, 11, 12]);
    }

    #[test]
    fn names_on_three_letters_in_both_tables() {
        assert_eq!(values(FieldKind::DayOfWeek, "mon-fri"), [1, 2, 3, 4, 5]);
        assert_eq!(values(FieldKind::DayOfWeek, "Sunday,SAT"), [0, 6]);
        assert_eq!(values(FieldKind::MonthOfYear, "January,dec"), [1, 12]);
        // Celery's lookup ignores the field: a month name in day_of_week is its number.
        assert_eq!(values(FieldKind::DayOfWeek, "jan"), [1]);
    }

    #[test]
    fn python_int_leniency_and_trailing_text() {
        assert_eq!(values(FieldKind::Minute, " 5"), [5]);
        assert_eq!(values(FieldKind::Minute, "+5"), [5]);
        assert_eq!(values(FieldKind::Minute, "1_0"), [10]);
        assert_eq!(values(FieldKind::Minute, "1-5!"), [1, 2, 3, 4, 5]);
        assert_eq!(values(FieldKind::DayOfWeek, "*/2/3"), [0, 2, 4, 6]);
        assert_eq!(values(FieldKind::Minute, "1-2-3"), [1, 2]);
        assert_eq!(
            values(FieldKind::Minute, "*\n"),
            (0..60).collect::<Vec<_>>()
        );
    }

    #[test]
    fn errors_name_the_text() {
        assert_eq!(error(FieldKind::Hour, "25"), "25 is out of range 0-23");
        assert_eq!(error(FieldKind::Hour, "1-25"), "25 is out of range 0-23");
        assert_eq!(error(FieldKind::DayOfWeek, "7"), "7 is out of range 0-6");
        assert_eq!(error(FieldKind::DayOfMonth, "0"), "0 is out of range 1-31");
        assert_eq!(
            error(FieldKind::DayOfWeek, "dec"),
            "\"dec\" (12) is out of range 0-6"
        );
        assert_eq!(
            error(FieldKind::Minute, "1,,2"),
            "\"1,,2\" has an empty item (expected numbers or ranges between commas)"
        );
        assert!(error(FieldKind::Minute, "").contains("empty item"));
        assert!(error(FieldKind::Minute, "*/").contains("empty step"));
        assert!(error(FieldKind::Minute, "1-5/").contains("empty step"));
        assert!(error(FieldKind::Minute, "*/0").contains("greater than zero"));
        assert_eq!(
            error(FieldKind::Minute, "-5"),
            "\"-5\": negative numbers are not supported"
        );
        assert_eq!(error(FieldKind::Minute, " -5"), "-5 is out of range 0-59");
        assert_eq!(
            error(FieldKind::Minute, "5-"),
            "\"5-\" is not a number, a day name (sun-sat) or a month name (jan-dec)"
        );
        assert_eq!(
            error(FieldKind::Minute, "1-5/2x"),
            "step \"2x\" is not a number"
        );
        assert!(error(FieldKind::Minute, "1 - 5").contains("not a number"));
        assert!(error(FieldKind::Minute, "5/2").contains("not a number"));
        assert!(error(
            FieldKind::Minute,
            "99999999999999999999999999999999999999999"
        )
        .contains("out of range"));
    }

    #[test]
    fn set_navigation() {
        let set = FieldSet::from_values([3, 17, 42]);
        assert_eq!(set.min(), Some(3));
        assert_eq!(set.max(), Some(42));
        assert_eq!(set.first_at_or_after(4), Some(17));
        assert_eq!(set.first_at_or_after(17), Some(17));
        assert_eq!(set.first_at_or_after(43), None);
        assert_eq!(set.first_at_or_after(200), None);
        assert!(FieldSet::default().is_empty());
        assert_eq!(FieldSet::default().max(), None);
    }
}
