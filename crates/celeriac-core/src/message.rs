//! Celery task messages, protocol 2 (spec §2): headers, properties, body `[args, kwargs, embed]`.
//! Protocol 1 and the hybrid form are read, never sent (§2.7).
//!
//! This module is the only place that knows Celery's wire names (`eta`, `timelimit`,
//! `retries`...); everything else uses [`TaskMessage`]'s Rust fields.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::broker::RawMessage;
use crate::error::ProtocolError;
use crate::{json as kjson, repr, time};

pub const JSON_CONTENT_TYPE: &str = "application/json";
pub const UTF8: &str = "utf-8";

/// The typed task headers. Unknown headers are kept in `extra` and sent back unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskHeaders {
    pub lang: String,
    pub task: String,
    pub id: String,
    pub shadow: Option<String>,
    pub eta: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    pub group: Option<String>,
    pub group_index: Option<i64>,
    pub retries: u32,
    /// `[hard, soft]` in seconds.
    pub time_limit: Option<f64>,
    pub soft_time_limit: Option<f64>,
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub argsrepr: Option<String>,
    pub kwargsrepr: Option<String>,
    pub origin: Option<String>,
    pub ignore_result: bool,
    pub replaced_task_nesting: i64,
    pub stamped_headers: Option<Value>,
    pub stamps: Map<String, Value>,
    /// Custom headers and any key this struct does not model.
    pub extra: Map<String, Value>,
}

/// The fourth part of the body: canvas continuations, each list possibly absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embed {
    pub callbacks: Option<Vec<Value>>,
    pub errbacks: Option<Vec<Value>>,
    /// Remaining chain, **last element runs next** (§6.2).
    pub chain: Option<Vec<Value>>,
    pub chord: Option<Value>,
}

/// Properties that matter to a task (transport-specific ones stay in the broker).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskProperties {
    pub correlation_id: String,
    pub reply_to: Option<String>,
    pub priority: u8,
    /// Other properties, passed through.
    pub extra: Map<String, Value>,
}

/// Which wire form a received message had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    pub headers: TaskHeaders,
    pub properties: TaskProperties,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub embed: Embed,
    pub protocol: ProtocolVersion,
}

/// What a caller asks for; [`TaskMessage::new_call`] fills in the rest as Celery does.
#[derive(Debug, Clone, Default)]
pub struct CallSpec {
    pub name: String,
    pub id: Option<String>,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub eta: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    pub priority: Option<u8>,
    pub retries: u32,
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub group: Option<String>,
    pub group_index: Option<i64>,
    pub time_limit: Option<f64>,
    pub soft_time_limit: Option<f64>,
    pub shadow: Option<String>,
    pub ignore_result: bool,
    pub headers: Map<String, Value>,
    pub embed: Embed,
    pub origin: Option<String>,
    pub reply_to: Option<String>,
}

impl CallSpec {
    pub fn new(name: impl Into<String>) -> Self {
        CallSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    pub fn args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }

    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// `gen<pid>@<hostname>`, the origin Celery gives non-worker processes.
pub fn default_origin() -> String {
    static ORIGIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(|| format!("gen{}@{}", std::process::id(), hostname()))
        .clone()
}

/// This machine's host name (from the kernel, falling back to `localhost`); read once.
pub fn hostname() -> String {
    static HOSTNAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "localhost".to_string())
        })
        .clone()
}

/// A fresh task id in Celery's form (dashed lowercase UUID4).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl TaskMessage {
    pub fn new_call(spec: CallSpec) -> TaskMessage {
        let id = spec.id.unwrap_or_else(new_id);
        let root_id = spec.root_id.unwrap_or_else(|| id.clone());
        let headers = TaskHeaders {
            lang: "py".into(),
            task: spec.name,
            id: id.clone(),
            shadow: spec.shadow,
            eta: spec.eta,
            expires: spec.expires,
            group: spec.group,
            group_index: spec.group_index,
            retries: spec.retries,
            time_limit: spec.time_limit,
            soft_time_limit: spec.soft_time_limit,
            root_id: Some(root_id),
            parent_id: spec.parent_id,
            argsrepr: Some(repr::args_repr(&spec.args)),
            kwargsrepr: Some(repr::kwargs_repr(&spec.kwargs)),
            origin: Some(spec.origin.unwrap_or_else(default_origin)),
            ignore_result: spec.ignore_result,
            replaced_task_nesting: 0,
            stamped_headers: None,
            stamps: Map::new(),
            extra: spec.headers,
        };
        // Celery turns `expires` into the AMQP per-message TTL too: milliseconds left, as a
        // decimal string, "0" when already past (§2.4).
        let mut extra_props = Map::new();
        if let Some(expires) = spec.expires {
            let ms = (expires - Utc::now()).num_milliseconds().max(0);
            extra_props.insert("expiration".into(), json!(ms.to_string()));
        }
        TaskMessage {
            headers,
            properties: TaskProperties {
                correlation_id: id,
                reply_to: spec.reply_to,
                priority: spec.priority.unwrap_or(0).min(9),
                extra: extra_props,
            },
            args: spec.args,
            kwargs: spec.kwargs,
            embed: spec.embed,
            protocol: ProtocolVersion::V2,
        }
    }

    /// Headers in Celery's order (§2.2), custom headers after them.
    pub fn headers_map(&self) -> Map<String, Value> {
        let h = &self.headers;
        let opt_time =
            |t: &Option<DateTime<Utc>>| t.map(|t| json!(time::to_iso(t))).unwrap_or(Value::Null);
        let mut m = Map::with_capacity(20 + h.extra.len());
        m.insert("lang".into(), json!(h.lang));
        m.insert("task".into(), json!(h.task));
        m.insert("id".into(), json!(h.id));
        m.insert("shadow".into(), json!(h.shadow));
        m.insert("eta".into(), opt_time(&h.eta));
        m.insert("expires".into(), opt_time(&h.expires));
        m.insert("group".into(), json!(h.group));
        m.insert("group_index".into(), json!(h.group_index));
        m.insert("retries".into(), json!(h.retries));
        m.insert(
            "timelimit".into(),
            json!([
                seconds_value(h.time_limit),
                seconds_value(h.soft_time_limit)
            ]),
        );
        m.insert("root_id".into(), json!(h.root_id));
        m.insert("parent_id".into(), json!(h.parent_id));
        m.insert("argsrepr".into(), json!(h.argsrepr));
        m.insert("kwargsrepr".into(), json!(h.kwargsrepr));
        m.insert("origin".into(), json!(h.origin));
        m.insert("ignore_result".into(), json!(h.ignore_result));
        m.insert(
            "replaced_task_nesting".into(),
            json!(h.replaced_task_nesting),
        );
        m.insert(
            "stamped_headers".into(),
            h.stamped_headers.clone().unwrap_or(Value::Null),
        );
        m.insert("stamps".into(), Value::Object(h.stamps.clone()));
        for (k, v) in &h.extra {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        m
    }

    /// Properties as Celery sends them for a task (§2.4); brokers add their own.
    pub fn properties_map(&self) -> Map<String, Value> {
        let p = &self.properties;
        let mut m = Map::with_capacity(5 + p.extra.len());
        m.insert("correlation_id".into(), json!(p.correlation_id));
        m.insert(
            "reply_to".into(),
            json!(p.reply_to.clone().unwrap_or_default()),
        );
        m.insert("delivery_mode".into(), json!(2));
        // Celery's order: `expiration` (when set) comes before `priority`.
        if let Some(expiration) = p.extra.get("expiration") {
            m.insert("expiration".into(), expiration.clone());
        }
        m.insert("priority".into(), json!(p.priority));
        for (k, v) in &p.extra {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        m
    }

    pub fn body_value(&self) -> Value {
        let e = &self.embed;
        json!([
            self.args,
            self.kwargs,
            {"callbacks": e.callbacks, "errbacks": e.errbacks, "chain": e.chain, "chord": e.chord}
        ])
    }

    /// The body bytes, written as Python's `json.dumps` writes them, straight from the
    /// parts (a chain's first message carries every later step: no copy of them is made).
    pub fn body_bytes(&self) -> Vec<u8> {
        let e = &self.embed;
        let mut embed = kjson::ObjectWriter::new();
        embed
            .opt_list("callbacks", e.callbacks.as_deref())
            .opt_list("errbacks", e.errbacks.as_deref())
            .opt_list("chain", e.chain.as_deref())
            .opt_value("chord", e.chord.as_ref());
        let embed = embed.finish();
        let mut out = String::with_capacity(embed.len() + 64);
        out.push('[');
        kjson::write_python_array(&self.args, &mut out);
        out.push_str(", ");
        kjson::write_python_object(&self.kwargs, &mut out);
        out.push_str(", ");
        out.push_str(&embed);
        out.push(']');
        out.into_bytes()
    }

    pub fn to_raw(&self) -> RawMessage {
        RawMessage {
            headers: self.headers_map(),
            properties: self.properties_map(),
            content_type: JSON_CONTENT_TYPE.into(),
            content_encoding: UTF8.into(),
            body: self.body_bytes(),
        }
    }

    /// Decodes any task message a Celery 5 producer may send: protocol 2, protocol 1, or the
    /// hybrid form. Refuses non-JSON content types without deserializing them.
    pub fn from_raw(raw: &RawMessage) -> Result<TaskMessage, ProtocolError> {
        let ct = raw.content_type.trim();
        if !(ct.is_empty() || ct.eq_ignore_ascii_case(JSON_CONTENT_TYPE) || ct == "json") {
            return Err(ProtocolError::UnsupportedContentType(ct.to_string()));
        }
        let enc = raw.content_encoding.trim();
        if !(enc.is_empty()
            || enc.eq_ignore_ascii_case("utf-8")
            || enc.eq_ignore_ascii_case("utf8"))
        {
            return Err(ProtocolError::UnsupportedEncoding(enc.to_string()));
        }
        if let Some(c) = raw.headers.get("compression").filter(|c| !c.is_null()) {
            return Err(ProtocolError::UnsupportedCompression(
                c.as_str().unwrap_or("<not a string>").to_string(),
            ));
        }
        let body = kjson::parse_python_json(&raw.body)
            .map_err(|e| ProtocolError::NotJson(e.to_string()))?;
        let priority = raw
            .properties
            .get("priority")
            .and_then(Value::as_u64)
            .map(|p| p.min(9) as u8)
            .unwrap_or(0);
        let correlation_id = raw
            .properties
            .get("correlation_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let reply_to = raw
            .properties
            .get("reply_to")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);

        let has_task_header = raw.headers.get("task").is_some_and(|t| !t.is_null());
        let body_is_v1 = body
            .as_object()
            .is_some_and(|o| o.contains_key("args") || o.contains_key("task"));
        let (headers, args, kwargs, embed, protocol) = if has_task_header && !body_is_v1 {
            decode_v2(&raw.headers, body)?
        } else if body_is_v1 {
            decode_v1(&raw.headers, body)?
        } else if body.is_array() {
            return Err(ProtocolError::MissingTask);
        } else {
            return Err(ProtocolError::BadBody(
                "expected a [args, kwargs, embed] array or a protocol 1 object".into(),
            ));
        };
        args.iter().try_for_each(kjson::validate)?;
        kwargs.values().try_for_each(kjson::validate)?;
        let mut extra_props = raw.properties.clone();
        for k in ["correlation_id", "reply_to", "priority", "delivery_mode"] {
            extra_props.remove(k);
        }
        Ok(TaskMessage {
            properties: TaskProperties {
                correlation_id: correlation_id.unwrap_or_else(|| headers.id.clone()),
                reply_to,
                priority,
                extra: extra_props,
            },
            headers,
            args,
            kwargs,
            embed,
            protocol,
        })
    }
}

/// A number of seconds as Python users write it: `60` stays an integer, `1.5` a float.
fn seconds_value(s: Option<f64>) -> Value {
    match s {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => json!(x as i64),
        Some(x) => json!(x),
        None => Value::Null,
    }
}

type Decoded = (
    TaskHeaders,
    Vec<Value>,
    Map<String, Value>,
    Embed,
    ProtocolVersion,
);

fn decode_v2(raw_headers: &Map<String, Value>, body: Value) -> Result<Decoded, ProtocolError> {
    let headers = headers_from(raw_headers, &Map::new())?;
    let Value::Array(mut parts) = body else {
        return Err(ProtocolError::BadBody(
            "protocol 2 body must be a JSON array".into(),
        ));
    };
    if parts.len() != 3 {
        return Err(ProtocolError::BadBody(format!(
            "protocol 2 body must have 3 elements [args, kwargs, embed], found {}",
            parts.len()
        )));
    }
    let embed = parts.pop().unwrap_or(Value::Null);
    let kwargs = parts.pop().unwrap_or(Value::Null);
    let args = parts.pop().unwrap_or(Value::Null);
    let Value::Array(args) = args else {
        return Err(ProtocolError::BadBody(
            "args (body[0]) must be a JSON array".into(),
        ));
    };
    let kwargs = match kwargs {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        _ => {
            return Err(ProtocolError::BadBody(
                "kwargs (body[1]) must be a JSON object".into(),
            ))
        }
    };
    let embed = match embed {
        Value::Object(m) => embed_from(m)?,
        Value::Null => Embed::default(),
        _ => {
            return Err(ProtocolError::BadBody(
                "embed (body[2]) must be a JSON object".into(),
            ))
        }
    };
    Ok((headers, args, kwargs, embed, ProtocolVersion::V2))
}

fn decode_v1(raw_headers: &Map<String, Value>, body: Value) -> Result<Decoded, ProtocolError> {
    let Value::Object(obj) = body else {
        return Err(ProtocolError::BadBody(
            "protocol 1 body must be a JSON object".into(),
        ));
    };
    // Hybrid messages carry protocol 2 headers: they win over the body's copies.
    let headers = headers_from(raw_headers, &obj)?;
    let args = match obj.get("args") {
        Some(Value::Array(a)) => a.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => {
            return Err(ProtocolError::BadBody(
                "protocol 1 `args` must be a JSON array".into(),
            ))
        }
    };
    let kwargs = match obj.get("kwargs") {
        Some(Value::Object(m)) => m.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => {
            return Err(ProtocolError::BadBody(
                "protocol 1 `kwargs` must be a JSON object".into(),
            ))
        }
    };
    let embed = embed_from(obj)?;
    Ok((headers, args, kwargs, embed, ProtocolVersion::V1))
}

/// The embed, moved out of the decoded body (a chain's remaining steps are not copied).
fn embed_from(mut m: Map<String, Value>) -> Result<Embed, ProtocolError> {
    let mut list = |key: &str| -> Result<Option<Vec<Value>>, ProtocolError> {
        match m.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(ProtocolError::BadBody(format!(
                "embed `{key}` must be a list or null"
            ))),
        }
    };
    Ok(Embed {
        callbacks: list("callbacks")?,
        errbacks: list("errbacks")?,
        chain: list("chain")?,
        chord: m.remove("chord").filter(|v| !v.is_null()),
    })
}

/// Reads header fields from `primary` (protocol 2 headers), falling back to `fallback`
/// (a protocol 1 body).
fn headers_from(
    primary: &Map<String, Value>,
    fallback: &Map<String, Value>,
) -> Result<TaskHeaders, ProtocolError> {
    let get = |k: &str| {
        primary
            .get(k)
            .filter(|v| !v.is_null())
            .or_else(|| fallback.get(k).filter(|v| !v.is_null()))
    };
    let opt_str = |k: &'static str| -> Result<Option<String>, ProtocolError> {
        match get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(ProtocolError::BadHeader {
                name: k,
                reason: format!("expected a string, found {other}"),
            }),
        }
    };
    let opt_time = |k: &'static str| -> Result<Option<DateTime<Utc>>, ProtocolError> {
        match opt_str(k)? {
            None => Ok(None),
            Some(s) => time::parse_iso(&s)
                .map(Some)
                .ok_or(ProtocolError::BadHeader {
                    name: k,
                    reason: format!("{s:?} is not an ISO 8601 time"),
                }),
        }
    };
    let task = match get("task") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None => return Err(ProtocolError::MissingTask),
        Some(other) => {
            return Err(ProtocolError::BadHeader {
                name: "task",
                reason: format!("expected a string, found {other}"),
            })
        }
    };
    let id = match get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(ProtocolError::MissingId),
    };
    let retries = match get("retries") {
        None => 0,
        Some(v) => v
            .as_u64()
            .map(|r| r as u32)
            .ok_or(ProtocolError::BadHeader {
                name: "retries",
                reason: format!("expected a non-negative integer, found {v}"),
            })?,
    };
    let (time_limit, soft_time_limit) = match get("timelimit") {
        None => (None, None),
        Some(Value::Array(pair))
            if pair.len() == 2 && pair.iter().all(|v| v.is_null() || v.is_number()) =>
        {
            (pair[0].as_f64(), pair[1].as_f64())
        }
        Some(v) => {
            return Err(ProtocolError::BadHeader {
                name: "timelimit",
                reason: format!("expected [hard, soft], found {v}"),
            })
        }
    };
    let group = opt_str("group")?.or(opt_str("taskset")?);
    let group_index = match get("group_index") {
        None => None,
        Some(v) => Some(v.as_i64().ok_or(ProtocolError::BadHeader {
            name: "group_index",
            reason: format!("expected an integer, found {v}"),
        })?),
    };
    let known = [
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
    ];
    let extra = primary
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(TaskHeaders {
        lang: opt_str("lang")?.unwrap_or_else(|| "py".into()),
        task,
        id,
        shadow: opt_str("shadow")?,
        eta: opt_time("eta")?,
        expires: opt_time("expires")?,
        group,
        group_index,
        retries,
        time_limit,
        soft_time_limit,
        root_id: opt_str("root_id")?,
        parent_id: opt_str("parent_id")?,
        argsrepr: opt_str("argsrepr")?,
        kwargsrepr: opt_str("kwargsrepr")?,
        origin: opt_str("origin")?,
        ignore_result: get("ignore_result")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        replaced_task_nesting: get("replaced_task_nesting")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        stamped_headers: get("stamped_headers").cloned(),
        stamps: get("stamps")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_with(headers: Value, body: &str, ct: &str) -> RawMessage {
        RawMessage {
            headers: headers.as_object().cloned().unwrap_or_default(),
            properties: Map::new(),
            content_type: ct.into(),
            content_encoding: "utf-8".into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn malformed_messages_name_the_problem() {
        let h = json!({"task": "tasks.add", "id": "x"});
        let e =
            TaskMessage::from_raw(&raw_with(h.clone(), "not json", JSON_CONTENT_TYPE)).unwrap_err();
        assert!(matches!(e, ProtocolError::NotJson(_)), "{e}");
        let e = TaskMessage::from_raw(&raw_with(
            json!({"id": "x"}),
            "[[], {}, {}]",
            JSON_CONTENT_TYPE,
        ))
        .unwrap_err();
        assert_eq!(e, ProtocolError::MissingTask);
        let e = TaskMessage::from_raw(&raw_with(
            json!({"task": "t"}),
            "[[], {}, {}]",
            JSON_CONTENT_TYPE,
        ))
        .unwrap_err();
        assert_eq!(e, ProtocolError::MissingId);
        let e =
            TaskMessage::from_raw(&raw_with(h.clone(), "[[], {}]", JSON_CONTENT_TYPE)).unwrap_err();
        assert!(matches!(e, ProtocolError::BadBody(_)), "{e}");
        let e = TaskMessage::from_raw(&raw_with(h.clone(), "[{}, {}, {}]", JSON_CONTENT_TYPE))
            .unwrap_err();
        assert!(e.to_string().contains("args"), "{e}");
        let e = TaskMessage::from_raw(&raw_with(
            h.clone(),
            "\u{80}\u{4}",
            "application/x-python-serialize",
        ))
        .unwrap_err();
        assert!(matches!(e, ProtocolError::UnsupportedContentType(_)));
        let e = TaskMessage::from_raw(&raw_with(h, "a: 1", "application/x-yaml")).unwrap_err();
        assert!(e.to_string().contains("application/x-yaml"));
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut kw = Map::new();
        kw.insert("y".into(), json!(3));
        let spec = CallSpec::new("tasks.add")
            .args(vec![json!(2)])
            .kwargs(kw)
            .id("abc");
        let msg = TaskMessage::new_call(spec);
        let back = TaskMessage::from_raw(&msg.to_raw()).unwrap();
        assert_eq!(back.headers.id, "abc");
        assert_eq!(back.headers.root_id.as_deref(), Some("abc"));
        assert_eq!(back.headers.argsrepr.as_deref(), Some("(2,)"));
        assert_eq!(back.kwargs["y"], 3);
        assert_eq!(back.args, vec![json!(2)]);
    }
}
