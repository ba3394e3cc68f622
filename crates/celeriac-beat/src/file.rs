//! Schedule files: a beat schedule in TOML, for the task-agnostic `celeriac beat` (it sends
//! by name, so it needs no task code).
//!
//! ```toml
//! timezone = "Europe/Stockholm"   # optional, default UTC (Celery's `timezone`)
//!
//! [[entry]]
//! name = "tick"
//! task = "pytasks.record"
//! args = ["tick"]                 # optional; so are kwargs = { ... }
//! every = "1s"                    # or: cron = "*/5 * * * *"
//!                                 # or: solar = { event = "sunrise", lat = 59.3, lon = 18.1 }
//! relative = false                # optional, with `every` (Celery's `relative`)
//! queue = "py"                    # optional: queue, routing_key, priority, expires (s)
//! ```
//!
//! `solar` is Celery's `solar(event, lat, lon)`: `event` one of dawn_astronomical,
//! dawn_nautical, dawn_civil, sunrise, solar_noon, sunset, dusk_civil, dusk_nautical,
//! dusk_astronomical; `lat` and `lon` in degrees north and east (see [`crate::solar`]).
//!
//! Every mistake is one line naming the entry and the field: `entry "tick": cron: hour: 25
//! is out of range 0-23`, `entry "dawn": solar: lat: 95 is out of range -90..90`,
//! `entry 2: name is missing`, `duplicate entry name "tick" (entries 1 and 3)`,
//! `timezone: unknown time zone "Mars/Olympus"`.

use std::collections::HashMap;

use serde_json::{Map, Value};
use toml::Table;

use crate::{Crontab, Entry, EntryOptions, Interval, Schedule, Solar, Tz};

/// A parsed schedule file.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleFile {
    pub timezone: Tz,
    pub entries: Vec<Entry>,
}

/// What is wrong with a schedule file: one line, naming the entry and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FileError(String);

/// A TOML value as the error shows it (JSON text: the crate builds TOML without its
/// printer).
fn shown(value: &toml::Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.type_str().to_string())
}

fn err(message: impl Into<String>) -> FileError {
    FileError(message.into())
}

const TOP_LEVEL: [&str; 2] = ["timezone", "entry"];
const ENTRY_KEYS: [&str; 12] = [
    "name",
    "task",
    "args",
    "kwargs",
    "every",
    "relative",
    "cron",
    "solar",
    "queue",
    "routing_key",
    "priority",
    "expires",
];

impl std::str::FromStr for ScheduleFile {
    type Err = FileError;

    fn from_str(text: &str) -> Result<Self, FileError> {
        parse_by_entry(text).unwrap_or_else(|| parse_whole(text))
    }
}

fn not_toml(e: toml::de::Error) -> FileError {
    err(format!("not TOML: {}", e.message()))
}

/// The file's top-level keys: only `timezone` (and the entries).
fn top_level(table: &Table) -> Result<Tz, FileError> {
    if let Some(key) = table.keys().find(|k| !TOP_LEVEL.contains(&k.as_str())) {
        return Err(err(format!(
            "unknown key {key:?} (expected timezone and [[entry]] tables)"
        )));
    }
    match table.get("timezone") {
        None => Ok(Tz::UTC),
        Some(toml::Value::String(name)) => name
            .parse()
            .map_err(|_| err(format!("timezone: unknown time zone {name:?}"))),
        Some(other) => Err(err(format!(
            "timezone: expected a name, got {}",
            shown(other)
        ))),
    }
}

fn parse_whole(text: &str) -> Result<ScheduleFile, FileError> {
    let table: Table = text.parse().map_err(not_toml)?;
    let timezone = top_level(&table)?;
    let entries = match table.get("entry") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| entry(i + 1, item))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err("entry: expected [[entry]] tables")),
    };
    no_duplicates(&entries)?;
    Ok(ScheduleFile { timezone, entries })
}

/// Parses one `[[entry]]` at a time: the TOML document tree of a whole file costs about
/// 3 KiB per entry at its peak, so a schedule of 10,000 entries would need 30 MiB just to
/// be read. `None` when the file does not split cleanly (a line starting `[[entry]]` inside
/// a multi-line string, a TOML error, keys after the entries): the whole-file parse then
/// gives the answer, and its errors.
fn parse_by_entry(text: &str) -> Option<Result<ScheduleFile, FileError>> {
    let mut starts: Vec<usize> = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("[[entry]]") {
            starts.push(offset);
        }
        offset += line.len();
    }
    let head_end = starts.first().copied().unwrap_or(text.len());
    let head: Table = text[..head_end].parse().ok()?;
    if head.contains_key("entry") {
        return None;
    }
    let timezone = match top_level(&head) {
        Ok(tz) => tz,
        Err(e) => return Some(Err(e)),
    };
    let mut entries = Vec::with_capacity(starts.len());
    for (i, &from) in starts.iter().enumerate() {
        let to = starts.get(i + 1).copied().unwrap_or(text.len());
        let chunk: Table = text[from..to].parse().ok()?;
        let items = chunk.get("entry")?.as_array()?;
        if chunk.len() != 1 || items.len() != 1 {
            return None;
        }
        match entry(i + 1, &items[0]) {
            Ok(e) => entries.push(e),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(no_duplicates(&entries).map(|()| ScheduleFile { timezone, entries }))
}

fn no_duplicates(entries: &[Entry]) -> Result<(), FileError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(first) = seen.insert(&e.name, i + 1) {
            return Err(err(format!(
                "duplicate entry name {:?} (entries {first} and {})",
                e.name,
                i + 1
            )));
        }
    }
    Ok(())
}

/// Reads the fields of one `[[entry]]`; `place` is its 1-based position (for errors before
/// its name is known).
struct Fields<'a> {
    table: &'a Table,
    label: String,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, what: impl std::fmt::Display) -> FileError {
        err(format!("{}: {field}: {what}", self.label))
    }

    fn str(&self, field: &str) -> Result<Option<&'a str>, FileError> {
        match self.table.get(field) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(field, format!("expected a string, got {}", shown(other)))),
        }
    }

    fn json(&self, field: &str) -> Result<Option<Value>, FileError> {
        self.table
            .get(field)
            .map(|v| serde_json::to_value(v).map_err(|e| self.err(field, e)))
            .transpose()
    }
}

fn entry(place: usize, item: &toml::Value) -> Result<Entry, FileError> {
    let Some(table) = item.as_table() else {
        return Err(err(format!("entry {place}: expected a table")));
    };
    let mut fields = Fields {
        table,
        label: format!("entry {place}"),
    };
    let name = match fields.str("name")? {
        Some(name) if !name.trim().is_empty() => name.to_string(),
        Some(_) => return Err(fields.err("name", "is empty")),
        None => return Err(err(format!("entry {place}: name is missing"))),
    };
    fields.label = format!("entry {name:?}");
    if let Some(key) = table.keys().find(|k| !ENTRY_KEYS.contains(&k.as_str())) {
        return Err(fields.err(key, "unknown field"));
    }
    let task = match fields.str("task")? {
        Some(task) if !task.trim().is_empty() => task.to_string(),
        Some(_) => return Err(fields.err("task", "is empty")),
        None => return Err(fields.err("task", "is missing")),
    };
    let args = match fields.json("args")? {
        None => Vec::new(),
        Some(Value::Array(args)) => args,
        Some(other) => return Err(fields.err("args", format!("expected a list, got {other}"))),
    };
    let kwargs = match fields.json("kwargs")? {
        None => Map::new(),
        Some(Value::Object(kwargs)) => kwargs,
        Some(other) => return Err(fields.err("kwargs", format!("expected a table, got {other}"))),
    };
    Ok(Entry {
        options: options(&fields)?,
        schedule: schedule(&fields)?,
        name,
        task,
        args,
        kwargs,
    })
}

/// Exactly one of `every`, `cron`, `solar`.
fn schedule(fields: &Fields<'_>) -> Result<Schedule, FileError> {
    let given: Vec<&str> = ["every", "cron", "solar"]
        .into_iter()
        .filter(|k| fields.table.contains_key(*k))
        .collect();
    let relative = match fields.table.get("relative") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(other) => {
            return Err(fields.err(
                "relative",
                format!("expected true or false, got {}", shown(other)),
            ))
        }
    };
    match given.as_slice() {
        ["every"] => {
            let text = fields.str("every")?.unwrap_or_default();
            let interval: Interval = text.parse().map_err(|e| fields.err("every", e))?;
            Ok(Schedule::Interval(interval.with_relative(relative)))
        }
        ["cron"] => {
            if relative {
                return Err(fields.err("relative", "applies to `every` only"));
            }
            let text = fields.str("cron")?.unwrap_or_default();
            let crontab: Crontab = text.parse().map_err(|e| fields.err("cron", e))?;
            Ok(Schedule::Crontab(crontab))
        }
        ["solar"] => {
            if relative {
                return Err(fields.err("relative", "applies to `every` only"));
            }
            solar(fields).map(Schedule::Solar)
        }
        [] => Err(err(format!(
            "{}: give one of every, cron or solar",
            fields.label
        ))),
        several => Err(err(format!(
            "{}: give one of every, cron or solar, not {}",
            fields.label,
            several.join(" and ")
        ))),
    }
}

/// `solar = { event = "sunrise", lat = 59.3, lon = 18.1 }`, all three keys required.
fn solar(fields: &Fields<'_>) -> Result<Solar, FileError> {
    const KEYS: [&str; 3] = ["event", "lat", "lon"];
    let wrong = |what: String| fields.err("solar", what);
    let table = match fields.table.get("solar") {
        Some(toml::Value::Table(table)) => table,
        other => {
            let got = other.map(shown).unwrap_or_default();
            return Err(wrong(format!(
                "expected a table {{ event = \"sunrise\", lat = 59.3, lon = 18.1 }}, got {got}"
            )));
        }
    };
    if let Some(key) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(wrong(format!(
            "{key}: unknown field (expected event, lat and lon)"
        )));
    }
    let degrees = |key: &str| match table.get(key) {
        None => Err(wrong(format!("{key}: is missing"))),
        Some(toml::Value::Float(x)) => Ok(*x),
        Some(toml::Value::Integer(n)) => Ok(*n as f64),
        Some(other) => Err(wrong(format!(
            "{key}: expected degrees, got {}",
            shown(other)
        ))),
    };
    let event = match table.get("event") {
        None => return Err(wrong("event: is missing".into())),
        Some(toml::Value::String(name)) => name.parse().map_err(|e| wrong(format!("{e}")))?,
        Some(other) => {
            return Err(wrong(format!(
                "event: expected a name, got {}",
                shown(other)
            )))
        }
    };
    // SolarError's messages start with the key at fault (`lat: 95 is out of range ...`).
    Solar::new(event, degrees("lat")?, degrees("lon")?).map_err(|e| wrong(e.to_string()))
}

fn options(fields: &Fields<'_>) -> Result<EntryOptions, FileError> {
    let priority = match fields.table.get("priority") {
        None => None,
        Some(toml::Value::Integer(p)) if (0..=9).contains(p) => Some(*p as u8),
        Some(other) => {
            return Err(fields.err("priority", format!("expected 0 to 9, got {}", shown(other))))
        }
    };
    let expires = match fields.table.get("expires") {
        None => None,
        Some(toml::Value::Integer(s)) if *s > 0 => Some(*s as f64),
        Some(toml::Value::Float(s)) if *s > 0.0 => Some(*s),
        Some(other) => {
            return Err(fields.err(
                "expires",
                format!("expected seconds above 0, got {}", shown(other)),
            ))
        }
    };
    Ok(EntryOptions {
        queue: fields.str("queue")?.map(str::to_string),
        routing_key: fields.str("routing_key")?.map(str::to_string),
        priority,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ScheduleFile, String> {
        text.parse::<ScheduleFile>().map_err(|e| e.to_string())
    }

    #[test]
    fn reading_entry_by_entry_agrees_with_the_whole_file() {
        let text = r#"
timezone = "Asia/Kolkata"

[[entry]]  # the first
name = "a"
task = "t.a"
every = "5m"
kwargs = { note = """
[[entry]]
not an entry""" }

[[entry]]
name = "b"
task = "t.b"
cron = "*/5 9-17 * * mon-fri"
[entry.kwargs]
x = 1
"#;
        // The string holding `[[entry]]` makes a chunk that is not TOML alone.
        assert!(parse_by_entry(text).is_none());
        let whole = parse_whole(text).unwrap();
        assert_eq!(text.parse::<ScheduleFile>().unwrap(), whole);
        assert_eq!(whole.entries.len(), 2);
        let clean = text.replace("\n[[entry]]\nnot an entry", "not an entry");
        let by_entry = parse_by_entry(&clean).unwrap().unwrap();
        assert_eq!(by_entry, parse_whole(&clean).unwrap());
        assert_eq!(by_entry.entries[1].kwargs["x"], 1);
        let after = format!("{clean}\n[extra]\nkey = 1\n");
        assert!(parse_by_entry(&after).is_none());
        assert!(parse(&after).unwrap_err().contains("unknown key \"extra\""));
    }

    #[test]
    fn a_file_reads_into_entries_with_their_schedules_and_options() {
        let file = parse(
            r#"
            timezone = "Europe/Stockholm"
            [[entry]]
            name = "tick"
            task = "pytasks.record"
            args = ["tick", 1]
            kwargs = { loud = true }
            every = "1s"
            queue = "py"
            priority = 9
            expires = 30
            [[entry]]
            name = "nightly"
            task = "reports.build"
            cron = "30 2 * * mon-fri"
            [[entry]]
            name = "dawn"
            task = "lights.off"
            solar = { event = "dawn_civil", lat = 59.3, lon = 18 }
            "#,
        )
        .unwrap();
        assert_eq!(file.timezone, "Europe/Stockholm".parse::<Tz>().unwrap());
        let tick = &file.entries[0];
        assert_eq!(
            (tick.name.as_str(), tick.task.as_str()),
            ("tick", "pytasks.record")
        );
        assert_eq!(tick.args, vec![Value::from("tick"), Value::from(1)]);
        assert_eq!(tick.kwargs["loud"], Value::Bool(true));
        assert_eq!(tick.options.queue.as_deref(), Some("py"));
        assert_eq!(
            (tick.options.priority, tick.options.expires),
            (Some(9), Some(30.0))
        );
        assert!(matches!(tick.schedule, Schedule::Interval(i) if i.every.as_secs() == 1));
        assert!(matches!(file.entries[1].schedule, Schedule::Crontab(_)));
        assert_eq!(
            file.entries[2].schedule,
            Schedule::solar("dawn_civil", 59.3, 18.0).unwrap()
        );
        assert_eq!(
            file.entries[2].schedule.to_string(),
            "solar dawn_civil at 59.3, 18"
        );
    }

    #[test]
    fn every_mistake_is_one_line_naming_the_entry_and_the_field() {
        // Mistakes in one entry named "t" with task "x": the fields after those two.
        let in_entry_t = [
            (
                r#"cron = "0 25 * * *""#,
                r#"entry "t": cron: hour: "#,
            ),
            (
                r#"every = "1s"
                cron = "* * * * *""#,
                r#"entry "t": give one of every, cron or solar, not every and cron"#,
            ),
            (
                r#"every = "soon""#,
                r#"entry "t": every: interval "soon""#,
            ),
            (
                r#"evry = "1s""#,
                r#"entry "t": evry: unknown field"#,
            ),
            (
                r#"every = "1s"
                priority = 12"#,
                r#"entry "t": priority: expected 0 to 9"#,
            ),
            (
                r#"solar = { event = "noon", lat = 1, lon = 2 }"#,
                r#"entry "t": solar: event: unknown event "noon" (expected one of dawn_astronomical, dawn_nautical, dawn_civil, sunrise, solar_noon, sunset, dusk_civil, dusk_nautical, dusk_astronomical)"#,
            ),
            (
                r#"solar = { event = "sunrise", lat = 95, lon = 2 }"#,
                r#"entry "t": solar: lat: 95 is out of range -90..90"#,
            ),
            (
                r#"solar = { event = "sunrise", lat = 9, lon = -200.5 }"#,
                r#"entry "t": solar: lon: -200.5 is out of range -180..180"#,
            ),
            (
                r#"solar = { event = "sunrise", lon = 2 }"#,
                r#"entry "t": solar: lat: is missing"#,
            ),
            (
                r#"solar = { lat = 1, lon = 2 }"#,
                r#"entry "t": solar: event: is missing"#,
            ),
            (
                r#"solar = { event = "sunrise", lat = 1, lon = 2, alt = 3 }"#,
                r#"entry "t": solar: alt: unknown field"#,
            ),
            (
                r#"solar = { event = "sunrise", lat = "north", lon = 2 }"#,
                r#"entry "t": solar: lat: expected degrees, got "north""#,
            ),
            (
                r#"solar = "sunrise""#,
                r#"entry "t": solar: expected a table"#,
            ),
            (
                r#"solar = { event = "sunrise", lat = 1, lon = 2 }
                relative = true"#,
                r#"entry "t": relative: applies to `every` only"#,
            ),
        ]
        .map(|(fields, expected)| {
            let text = format!("[[entry]]\nname = \"t\"\ntask = \"x\"\n{fields}");
            (text, expected)
        });
        let whole_file = [
            (
                r#"timezone = "Mars/Olympus""#,
                r#"timezone: unknown time zone "Mars/Olympus""#,
            ),
            (
                r#"[[entry]]
                task = "x"
                every = "1s""#,
                "entry 1: name is missing",
            ),
            (
                r#"[[entry]]
                name = "t"
                task = " "
                every = "1s""#,
                r#"entry "t": task: is empty"#,
            ),
            (
                r#"[[entry]]
                name = "t"
                task = "x"
                every = "1s"
                [[entry]]
                name = "t"
                task = "y"
                every = "2s""#,
                r#"duplicate entry name "t" (entries 1 and 2)"#,
            ),
        ]
        .map(|(text, expected)| (text.to_string(), expected));
        for (text, expected) in in_entry_t.into_iter().chain(whole_file) {
            let e = parse(&text).expect_err(expected);
            assert!(
                e.starts_with(expected),
                "{e:?} should start with {expected:?}"
            );
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }
}
