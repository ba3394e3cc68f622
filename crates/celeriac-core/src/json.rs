//! kombu's JSON: plain JSON plus typed values `{"__type__": marker, "__value__": payload}`
//! for datetime, date, time, UUID, Decimal and bytes (protocol spec §1.3, vector 06).
//!
//! Typed values stay as they are inside `serde_json::Value` (so an `echo` task hands back what
//! it got); [`from_value`] converts them when a task parameter asks for a native type, and the
//! constructors here ([`datetime`], [`bytes`], ...) produce them for Python callees.

use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::error::ProtocolError;

const TYPE_KEY: &str = "__type__";
const VALUE_KEY: &str = "__value__";

/// A decoded kombu typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Typed {
    /// Aware values are converted to UTC; naive ones are taken as UTC (`naive` says which).
    DateTime {
        value: DateTime<Utc>,
        naive: bool,
    },
    Date(NaiveDate),
    Time(NaiveTime),
    Uuid(uuid::Uuid),
    /// Kept as its decimal text: no precision is lost.
    Decimal(String),
    Bytes(Vec<u8>),
}

/// Recognizes a typed value: `None` when `v` is not one, `Some(Err)` for an unknown marker or
/// a payload that does not parse (Python refuses those too).
pub fn decode_typed(v: &Value) -> Option<Result<Typed, ProtocolError>> {
    let obj = v.as_object()?;
    if obj.len() != 2 {
        return None;
    }
    let marker = obj.get(TYPE_KEY)?.as_str();
    let payload = obj.get(VALUE_KEY)?;
    let bad = |what: &str| ProtocolError::BadTypedValue(format!("{what}: {payload}"));
    let Some(marker) = marker else {
        return Some(Err(ProtocolError::BadTypedValue(
            "__type__ is not a string".into(),
        )));
    };
    let text = payload.as_str();
    Some(match marker {
        "datetime" => text
            .and_then(|s| crate::time::parse_iso(s).map(|t| (s, t)))
            .map(|(s, value)| Typed::DateTime {
                value,
                naive: !has_offset(s),
            })
            .ok_or_else(|| bad("datetime")),
        "date" => text
            .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
            .map(Typed::Date)
            .ok_or_else(|| bad("date")),
        "time" => text
            .and_then(|s| {
                let clock = s.split(['+', '-']).next().unwrap_or(s);
                NaiveTime::parse_from_str(clock, "%H:%M:%S%.f").ok()
            })
            .map(Typed::Time)
            .ok_or_else(|| bad("time")),
        "uuid" => payload
            .get("hex")
            .and_then(Value::as_str)
            .or(text)
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .map(Typed::Uuid)
            .ok_or_else(|| bad("uuid")),
        "decimal" => text
            .map(|s| Typed::Decimal(s.to_string()))
            .ok_or_else(|| bad("decimal")),
        "bytes" => text
            .map(|s| Typed::Bytes(s.as_bytes().to_vec()))
            .ok_or_else(|| bad("bytes")),
        "base64" => text
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .map(Typed::Bytes)
            .ok_or_else(|| bad("base64")),
        other => Err(ProtocolError::BadTypedValue(format!(
            "unknown marker {other:?}"
        ))),
    })
}

fn has_offset(s: &str) -> bool {
    let tail = s.get(10..).unwrap_or("");
    tail.ends_with('Z') || tail.contains('+') || tail.contains('-')
}

/// Checks every typed value inside `v`, so a bad one is reported when the message is decoded
/// rather than when some task happens to read it.
pub fn validate(v: &Value) -> Result<(), ProtocolError> {
    match v {
        Value::Array(items) => items.iter().try_for_each(validate),
        Value::Object(map) => match decode_typed(v) {
            Some(result) => result.map(|_| ()),
            None => map.values().try_for_each(validate),
        },
        _ => Ok(()),
    }
}

/// Replaces typed values with the plain JSON that serde's usual impls read: datetimes as
/// RFC 3339 text, UUIDs dashed, decimals and UTF-8 bytes as text, other bytes as a number array.
pub fn untype(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(untype).collect()),
        Value::Object(map) => match decode_typed(v) {
            Some(Ok(typed)) => match typed {
                Typed::DateTime { value, naive: true } => {
                    json!(value.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string())
                }
                Typed::DateTime {
                    value,
                    naive: false,
                } => json!(value.to_rfc3339()),
                Typed::Date(d) => json!(d.to_string()),
                Typed::Time(t) => json!(t.to_string()),
                Typed::Uuid(u) => json!(u.to_string()),
                Typed::Decimal(d) => json!(d),
                Typed::Bytes(b) => match String::from_utf8(b) {
                    Ok(text) => json!(text),
                    Err(e) => json!(e.into_bytes()),
                },
            },
            _ => Value::Object(map.iter().map(|(k, v)| (k.clone(), untype(v))).collect()),
        },
        other => other.clone(),
    }
}

/// Deserializes a task argument or result: first as sent, then with typed values converted.
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, serde_json::Error> {
    match T::deserialize(v) {
        Ok(t) => Ok(t),
        Err(first) => {
            let plain = untype(v);
            if &plain == v {
                return Err(first);
            }
            T::deserialize(&plain).map_err(|_| first)
        }
    }
}

fn typed(marker: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(TYPE_KEY.into(), json!(marker));
    m.insert(VALUE_KEY.into(), value);
    Value::Object(m)
}

/// A Python `datetime` (aware, UTC).
pub fn datetime(t: DateTime<Utc>) -> Value {
    typed("datetime", json!(crate::time::to_iso(t)))
}

/// A naive Python `datetime` (no offset; Python reads it in the receiver's timezone).
pub fn naive_datetime(t: chrono::NaiveDateTime) -> Value {
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let micros = t.and_utc().timestamp_subsec_micros();
    let text = if micros == 0 {
        base
    } else {
        format!("{base}.{micros:06}")
    };
    typed("datetime", json!(text))
}

/// A Python `date`.
pub fn date(d: NaiveDate) -> Value {
    typed("date", json!(d.format("%Y-%m-%d").to_string()))
}

/// A Python `time`.
pub fn time(t: NaiveTime) -> Value {
    typed(
        "time",
        json!(t.format("%H:%M:%S%.6f").to_string().replace(".000000", "")),
    )
}

/// A Python `uuid.UUID`.
pub fn uuid(u: uuid::Uuid) -> Value {
    typed("uuid", json!({ "hex": u.simple().to_string() }))
}

/// A Python `Decimal`, from its decimal text.
pub fn decimal(text: &str) -> Value {
    typed("decimal", json!(text))
}

/// Python `bytes`: text form when valid UTF-8, base64 otherwise (as kombu does).
pub fn bytes(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(text) => typed("bytes", json!(text)),
        Err(_) => typed(
            "base64",
            json!(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
    }
}

/// Serializes as Python's `json.dumps` does by default (`", "` and `": "` separators,
/// non-ASCII escaped), for bytes that match what Python producers write.
pub fn to_python_json(v: &Value) -> String {
    let mut out = String::new();
    write_python(v, &mut out);
    out
}

/// Writes one JSON object field by field as [`to_python_json`] would write it, without
/// building a [`Value`] first (the worker's events are written this way: a map per event
/// costs more than the rest of it).
pub struct ObjectWriter {
    out: String,
    empty: bool,
}

impl Default for ObjectWriter {
    fn default() -> Self {
        ObjectWriter::new()
    }
}

impl ObjectWriter {
    pub fn new() -> ObjectWriter {
        let mut out = String::with_capacity(256);
        out.push('{');
        ObjectWriter { out, empty: true }
    }

    fn key(&mut self, key: &str) {
        if !std::mem::replace(&mut self.empty, false) {
            self.out.push_str(", ");
        }
        write_python_str(key, &mut self.out);
        self.out.push_str(": ");
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_python_str(value, &mut self.out);
        self
    }

    /// A string, or `null`.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.push_str("null");
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        use std::fmt::Write;
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    /// A float as Python's `repr` writes it (`2.0`, `0.001`).
    pub fn f64(&mut self, key: &str, value: f64) -> &mut Self {
        self.key(key);
        self.out.push_str(&python_float_repr(value));
        self
    }

    pub fn value(&mut self, key: &str, value: &Value) -> &mut Self {
        self.key(key);
        write_python(value, &mut self.out);
        self
    }

    /// A value, or `null`.
    pub fn opt_value(&mut self, key: &str, value: Option<&Value>) -> &mut Self {
        match value {
            Some(v) => self.value(key, v),
            None => self.null(key),
        }
    }

    /// A list, or `null`.
    pub fn opt_list(&mut self, key: &str, items: Option<&[Value]>) -> &mut Self {
        self.key(key);
        match items {
            Some(items) => write_python_array(items, &mut self.out),
            None => self.out.push_str("null"),
        }
        self
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// A JSON list of `items` as [`to_python_json`] writes it, without building the list.
pub fn to_python_json_list(items: &[&Value]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_python(item, &mut out);
    }
    out.push(']');
    out
}

/// A JSON list of items each already written as JSON text.
pub fn json_list(items: &[&str]) -> String {
    let mut out = String::with_capacity(items.iter().map(|i| i.len() + 2).sum::<usize>() + 2);
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

fn write_python(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_python_number(n, out),
        Value::String(s) => write_python_str(s, out),
        Value::Array(items) => write_python_array(items, out),
        Value::Object(map) => write_python_object(map, out),
    }
}

/// A list as [`to_python_json`] writes it, from a slice (no `Value::Array` needed).
pub fn write_python_array(items: &[Value], out: &mut String) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_python(item, out);
    }
    out.push(']');
}

/// An object as [`to_python_json`] writes it, from a map (no `Value::Object` needed).
pub fn write_python_object(map: &serde_json::Map<String, Value>, out: &mut String) {
    out.push('{');
    for (i, (k, item)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_python_str(k, out);
        out.push_str(": ");
        write_python(item, out);
    }
    out.push('}');
}

/// Integers as they are; floats as Python's `repr(float)` writes them (`0.2`, `1e-07`,
/// `1e+16`, `10.0`), which is what `json.dumps` emits.
pub(crate) fn write_python_number(n: &serde_json::Number, out: &mut String) {
    match (n.is_f64(), n.as_f64()) {
        (true, Some(f)) => out.push_str(&python_float_repr(f)),
        _ => out.push_str(&n.to_string()),
    }
}

/// Python's `repr()` of a float: the shortest text that reads back to the same value,
/// positional when the decimal exponent is in `-4..16`, scientific (`1e-07`, `1.5e+300`)
/// otherwise; `NaN`, `Infinity` and `-Infinity` as `json.dumps` writes them.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e-7", "-0e0".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            out.push_str("0.");
            out.push_str(&"0".repeat((-point) as usize));
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            out.push_str(&"0".repeat(point as usize - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    }
    out
}

fn write_python_str(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut plain_from = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // Printable ASCII other than the two escaped ones is copied in runs.
        if (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(&s[plain_from..i]);
        let c = s[i..].chars().next().unwrap_or('\u{fffd}');
        write_escaped(c, out);
        i += c.len_utf8();
        plain_from = i;
    }
    out.push_str(&s[plain_from..]);
    out.push('"');
}

/// One character as `json.dumps` (with `ensure_ascii`) escapes it.
fn write_escaped(c: char, out: &mut String) {
    use std::fmt::Write;
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{08}' => out.push_str("\\b"),
        '\u{0c}' => out.push_str("\\f"),
        c => {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
}

/// Parses JSON as Python writes it, including the bare `NaN`/`Infinity` words (read as null,
/// since JSON has no such numbers).
pub fn parse_python_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(e) => {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return Err(e);
            };
            if !(text.contains("NaN") || text.contains("Infinity")) {
                return Err(e);
            }
            serde_json::from_str(&replace_non_finite(text)).map_err(|_| e)
        }
    }
}

fn replace_non_finite(text: &str) -> String {
    // Only outside strings: walk the text and track whether we are inside a string literal.
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        let word = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w));
        if let Some(w) = word {
            out.push_str("null");
            rest = &rest[w.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_writer_writes_what_to_python_json_writes() {
        let mut w = ObjectWriter::new();
        w.str("uuid", "é\"x")
            .opt_str("eta", None)
            .u64("retries", 3)
            .f64("runtime", 0.25)
            .bool("ok", true)
            .value("args", &json!([1, "a"]));
        let want = json!({"uuid": "é\"x", "eta": null, "retries": 3, "runtime": 0.25,
                          "ok": true, "args": [1, "a"]});
        assert_eq!(w.finish(), to_python_json(&want));
        assert_eq!(ObjectWriter::new().finish(), "{}");
        assert_eq!(json_list(&["1", "{}"]), "[1, {}]");
    }

    #[test]
    fn typed_values_round_trip() {
        let t = crate::time::parse_iso("2024-05-06T07:08:09.123456+00:00").unwrap();
        let v = datetime(t);
        assert_eq!(
            v,
            json!({"__type__": "datetime", "__value__": "2024-05-06T07:08:09.123456+00:00"})
        );
        assert_eq!(
            decode_typed(&v).unwrap().unwrap(),
            Typed::DateTime {
                value: t,
                naive: false
            }
        );
        assert_eq!(
            bytes(&[0xff, 0x00, 0xfe]),
            json!({"__type__": "base64", "__value__": "/wD+"})
        );
        assert_eq!(
            bytes(b"hello"),
            json!({"__type__": "bytes", "__value__": "hello"})
        );
        let u = uuid::Uuid::parse_str("12345678-1234-5678-1234-567812345678").unwrap();
        assert_eq!(
            uuid(u)["__value__"]["hex"],
            "12345678123456781234567812345678"
        );
    }

    #[test]
    fn unknown_marker_is_an_error() {
        let v = json!([{"__type__": "pickle", "__value__": "x"}]);
        assert!(matches!(validate(&v), Err(ProtocolError::BadTypedValue(_))));
    }

    #[test]
    fn from_value_reads_typed_into_native() {
        let v =
            json!({"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}});
        let u: uuid::Uuid = from_value(&v).unwrap();
        assert_eq!(u.to_string(), "12345678-1234-5678-1234-567812345678");
        let s: String = from_value(&json!({"__type__": "bytes", "__value__": "hi"})).unwrap();
        assert_eq!(s, "hi");
    }

    #[test]
    fn python_json_text() {
        let v = json!([[2], {"y": 3, "u": "h\u{e9}"}]);
        assert_eq!(to_python_json(&v), "[[2], {\"y\": 3, \"u\": \"h\\u00e9\"}]");
        let parsed = parse_python_json(b"[NaN, \"NaN\", -Infinity]").unwrap();
        assert_eq!(parsed, json!([null, "NaN", null]));
    }
}
