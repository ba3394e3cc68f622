//! JSON values ⇄ AMQP field tables, and [`RawMessage`] ⇄ AMQP basic properties, encoded the
//! way py-amqp does: string → long string `S`, bool → `t`, int → `I` (signed 32-bit) or `l`
//! (64-bit) when out of range, float → `d`, null → void `V`, list → array `A`, dict → table `F`.
//! Decoding accepts every type RabbitMQ sends (short strings, unsigned ints, decimals,
//! timestamps, byte arrays) and maps them onto JSON.

use chrono::{DateTime, Utc};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::{Map, Number, Value};

use celeriac_core::broker::RawMessage;

/// JSON → AMQP field value (py-amqp's choices).
pub fn to_amqp(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(i) => AMQPValue::LongInt(i),
                    Err(_) => AMQPValue::LongLongInt(i),
                }
            } else if let Some(u) = n.as_u64() {
                // Above i64::MAX: py-amqp would fail; a double keeps the magnitude.
                AMQPValue::Double(u as f64)
            } else {
                AMQPValue::Double(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(a) => {
            AMQPValue::FieldArray(FieldArray::from(a.iter().map(to_amqp).collect::<Vec<_>>()))
        }
        Value::Object(m) => AMQPValue::FieldTable(to_table(m)),
    }
}

/// A JSON object → AMQP table. Keys longer than 255 bytes cannot be carried and are skipped.
pub fn to_table(m: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in m {
        if let Ok(key) = ShortString::try_new(k.as_str()) {
            t.insert(key, to_amqp(v));
        }
    }
    t
}

fn float(f: f64) -> Value {
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// AMQP field value → JSON.
pub fn from_amqp(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Void => Value::Null,
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(from_amqp).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(from_table(t)),
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
    }
}

pub fn from_table(t: &FieldTable) -> Map<String, Value> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), from_amqp(v)))
        .collect()
}

fn short(v: &Value) -> Option<ShortString> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    ShortString::try_new(s).ok()
}

/// Milliseconds until an ISO 8601 `expires` header, as Celery puts it in `expiration`
/// (`"0"` when already past). `None` when the header is absent or unparsable.
pub fn expiration_from_expires(headers: &Map<String, Value>, now: DateTime<Utc>) -> Option<String> {
    let s = headers.get("expires")?.as_str()?;
    let t = parse_time(s)?;
    let ms = (t - now).num_milliseconds().max(0);
    Some(ms.to_string())
}

/// ISO 8601 with or without offset (naive = UTC, Celery's default timezone).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%:z") {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

/// The AMQP properties of a task message: headers table, content type/encoding,
/// `delivery_mode` 2 unless given, `priority` only when given, `correlation_id`, `reply_to`,
/// and `expiration` (given, or derived from the `expires` header like Celery).
pub fn properties_for(
    msg: &RawMessage,
    priority: Option<u8>,
    keep_expiration: bool,
) -> BasicProperties {
    let p = &msg.properties;
    let mut props = BasicProperties::default()
        .with_headers(to_table(&msg.headers))
        .with_delivery_mode(
            p.get("delivery_mode")
                .and_then(Value::as_u64)
                .map(|d| d as u8)
                .unwrap_or(2),
        );
    if !msg.content_type.is_empty() {
        if let Ok(s) = ShortString::try_new(msg.content_type.as_str()) {
            props = props.with_content_type(s);
        }
    }
    if !msg.content_encoding.is_empty() {
        if let Ok(s) = ShortString::try_new(msg.content_encoding.as_str()) {
            props = props.with_content_encoding(s);
        }
    }
    if let Some(pr) = priority {
        props = props.with_priority(pr);
    }
    if let Some(v) = p.get("correlation_id").and_then(short) {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = p.get("reply_to").and_then(short) {
        props = props.with_reply_to(v);
    }
    if keep_expiration {
        let exp = p
            .get("expiration")
            .and_then(short)
            .or_else(|| expiration_from_expires(&msg.headers, Utc::now()).map(ShortString::from));
        if let Some(e) = exp {
            props = props.with_expiration(e);
        }
    }
    if let Some(v) = p.get("message_id").and_then(short) {
        props = props.with_message_id(v);
    }
    if let Some(v) = p.get("timestamp").and_then(Value::as_u64) {
        props = props.with_timestamp(v);
    }
    if let Some(v) = p.get("type").and_then(short) {
        props = props.with_type(v);
    }
    if let Some(v) = p.get("app_id").and_then(short) {
        props = props.with_app_id(v);
    }
    props
}

/// A received message as celeriac carries it: every header, and the AMQP properties that
/// were set (`priority` as sent: RabbitMQ's order is celeriac's order).
pub fn raw_message(props: &BasicProperties, body: Vec<u8>) -> RawMessage {
    let headers = props.headers().as_ref().map(from_table).unwrap_or_default();
    let mut p = Map::new();
    let s = |v: &Option<ShortString>| v.as_ref().map(|s| Value::String(s.as_str().to_string()));
    if let Some(v) = s(props.correlation_id()) {
        p.insert("correlation_id".into(), v);
    }
    if let Some(v) = s(props.reply_to()) {
        p.insert("reply_to".into(), v);
    }
    if let Some(v) = props.delivery_mode() {
        p.insert("delivery_mode".into(), Value::from(*v));
    }
    if let Some(v) = props.priority() {
        p.insert("priority".into(), Value::from(*v));
    }
    if let Some(v) = s(props.expiration()) {
        p.insert("expiration".into(), v);
    }
    if let Some(v) = s(props.message_id()) {
        p.insert("message_id".into(), v);
    }
    if let Some(v) = props.timestamp() {
        p.insert("timestamp".into(), Value::from(*v));
    }
    if let Some(v) = s(props.kind()) {
        p.insert("type".into(), v);
    }
    if let Some(v) = s(props.app_id()) {
        p.insert("app_id".into(), v);
    }
    RawMessage {
        headers,
        properties: p,
        content_type: props
            .content_type()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        content_encoding: props
            .content_encoding()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_celery_header_type_round_trips() {
        let h = json!({
            "lang": "py", "task": "tasks.add", "id": "9f3c1b52-6a0e-4f1d-8d2b-7c5e4a1f0b01",
            "shadow": null, "eta": null, "group_index": null, "retries": 0,
            "timelimit": [null, 30.5], "big": 1i64 << 40, "neg": -3, "ignore_result": false,
            "stamps": {"a": [1, "x", {"n": null}]}, "argsrepr": "('é', '✓')",
        });
        let m = h.as_object().unwrap();
        let t = to_table(m);
        assert!(matches!(
            t.inner().get("retries"),
            Some(AMQPValue::LongInt(0))
        ));
        assert!(matches!(
            t.inner().get("big"),
            Some(AMQPValue::LongLongInt(_))
        ));
        assert!(matches!(t.inner().get("shadow"), Some(AMQPValue::Void)));
        assert!(matches!(
            t.inner().get("timelimit"),
            Some(AMQPValue::FieldArray(_))
        ));
        assert!(matches!(
            t.inner().get("stamps"),
            Some(AMQPValue::FieldTable(_))
        ));
        assert!(matches!(
            t.inner().get("task"),
            Some(AMQPValue::LongString(_))
        ));
        assert_eq!(&from_table(&t), m);
    }

    #[test]
    fn expiration_is_milliseconds_until_expires() {
        let now = Utc::now();
        let mut h = Map::new();
        h.insert(
            "expires".into(),
            json!((now + chrono::TimeDelta::seconds(10)).to_rfc3339()),
        );
        let ms: i64 = expiration_from_expires(&h, now).unwrap().parse().unwrap();
        assert!((9_990..=10_000).contains(&ms), "{ms}");
        h.insert("expires".into(), json!("2001-01-01T00:00:00+00:00"));
        assert_eq!(expiration_from_expires(&h, now).as_deref(), Some("0"));
        h.insert("expires".into(), Value::Null);
        assert_eq!(expiration_from_expires(&h, now), None);
    }
}
