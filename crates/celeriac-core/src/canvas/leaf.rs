//! One task call from a signature: Celery's `Signature.apply_async` for a plain task, with
//! the `apply_async` options Celery keeps in `options` turned into message fields (§2.6).
//!
//! Options read: `task_id`, `queue`, `priority`, `countdown`, `eta`, `expires`, `group_id`,
//! `group_index`, `root_id`, `parent_id`, `link`, `link_error`, `chain`, `chord`,
//! `time_limit`, `soft_time_limit`, `shadow`, `ignore_result`, `headers`, `reply_to`.
//! Others (`exchange`, `routing_key`, `retry_policy`, ...) ride along unused: routing here is
//! by queue.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::broker::Publish;
use crate::error::ProtocolError;
use crate::message::{CallSpec, Embed, TaskMessage};
use crate::time::parse_iso;

use super::Signature;

/// Decides the queue of a task whose signature names none: the application's routes, the
/// task's own queue, the default queue, in the order the sender's configuration gives them.
pub trait Router: Send + Sync {
    fn queue_for(&self, task: &str) -> String;
}

/// Sends every task to one queue (a worker with no routes of its own).
#[derive(Debug, Clone)]
pub struct FixedQueue(pub String);

impl Router for FixedQueue {
    fn queue_for(&self, _task: &str) -> String {
        self.0.clone()
    }
}

/// The options of a signature merged with those a caller adds, as Celery's `_merge` does:
/// the caller's win, except `group_id`, which a signature that has one keeps.
pub fn merge_options(own: &Map<String, Value>, added: Map<String, Value>) -> Map<String, Value> {
    let mut merged = own.clone();
    for (key, value) in added {
        if key == "group_id" && own.contains_key(&key) {
            continue;
        }
        merged.insert(key, value);
    }
    merged
}

/// The positional arguments of a signature applied with `prepend` (a parent's result):
/// prepended unless the signature is immutable.
pub fn call_args(sig: &Signature, prepend: &[Value]) -> Vec<Value> {
    if sig.immutable || prepend.is_empty() {
        return sig.args.clone();
    }
    prepend.iter().chain(&sig.args).cloned().collect()
}

/// Takes a list option out of `options` (no copy of a long remaining chain).
fn take_list(options: &mut Map<String, Value>, key: &str) -> Option<Vec<Value>> {
    match options.remove(key) {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(items),
        Some(one) => Some(vec![one]),
    }
}

/// A list option (`link`, `link_error`, `chain`) as a list of signature dicts.
pub fn list_option(options: &Map<String, Value>, key: &str) -> Option<Vec<Value>> {
    match options.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(items.clone()),
        Some(one) => Some(vec![one.clone()]),
    }
}

fn str_option(options: &Map<String, Value>, key: &str) -> Option<String> {
    options.get(key).and_then(Value::as_str).map(str::to_string)
}

fn secs_option(options: &Map<String, Value>, key: &str) -> Option<f64> {
    options.get(key).and_then(Value::as_f64)
}

fn after(now: DateTime<Utc>, secs: f64) -> Result<DateTime<Utc>, ProtocolError> {
    chrono::Duration::try_milliseconds((secs * 1000.0) as i64)
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| ProtocolError::BadCanvas(format!("a delay of {secs}s is out of range")))
}

/// `eta` (ISO time) or `countdown` (seconds from now); countdown wins as in Celery.
fn eta_of(
    options: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, ProtocolError> {
    if let Some(countdown) = secs_option(options, "countdown") {
        return after(now, countdown).map(Some);
    }
    time_option(options, "eta")
}

fn time_option(
    options: &Map<String, Value>,
    key: &str,
) -> Result<Option<DateTime<Utc>>, ProtocolError> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_iso(s).map(Some).ok_or_else(|| {
            ProtocolError::BadCanvas(format!("option `{key}` is not an ISO 8601 time: {s:?}"))
        }),
        Some(other) => Err(ProtocolError::BadCanvas(format!(
            "option `{key}` is not a time: {other}"
        ))),
    }
}

/// `expires`: seconds from now, or an ISO time.
fn expires_of(
    options: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, ProtocolError> {
    match secs_option(options, "expires") {
        Some(secs) => after(now, secs).map(Some),
        None => time_option(options, "expires"),
    }
}

/// The message of one plain task call: `sig` applied with `prepend` before its args and
/// `options` (already merged) deciding everything else.
pub fn task_publish(
    sig: &Signature,
    prepend: &[Value],
    mut options: Map<String, Value>,
    router: &dyn Router,
    now: DateTime<Utc>,
) -> Result<Publish, ProtocolError> {
    let embed = Embed {
        callbacks: take_list(&mut options, "link"),
        errbacks: take_list(&mut options, "link_error"),
        chain: take_list(&mut options, "chain"),
        chord: options.remove("chord").filter(|c| !c.is_null()),
    };
    let options = &options;
    let eta = eta_of(options, now)?;
    let priority = options
        .get("priority")
        .and_then(Value::as_u64)
        .map(|p| p.min(9) as u8);
    let headers = match options.get("headers") {
        Some(Value::Object(h)) => h.clone(),
        _ => Map::new(),
    };
    let spec = CallSpec {
        name: sig.task.clone(),
        id: str_option(options, "task_id"),
        args: call_args(sig, prepend),
        kwargs: sig.kwargs.clone(),
        eta,
        expires: expires_of(options, now)?,
        priority,
        root_id: str_option(options, "root_id"),
        parent_id: str_option(options, "parent_id"),
        group: str_option(options, "group_id"),
        group_index: options.get("group_index").and_then(Value::as_i64),
        time_limit: secs_option(options, "time_limit"),
        soft_time_limit: secs_option(options, "soft_time_limit"),
        shadow: str_option(options, "shadow"),
        ignore_result: options
            .get("ignore_result")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        headers,
        embed,
        reply_to: str_option(options, "reply_to"),
        ..CallSpec::default()
    };
    let queue = str_option(options, "queue").unwrap_or_else(|| router.queue_for(&sig.task));
    Ok(Publish {
        queue,
        priority,
        not_before: eta,
        message: TaskMessage::new_call(spec).to_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_signature_applied_carries_its_options_into_the_message() {
        let sig = Signature::from_value(&json!({"task": "tasks.add", "args": [10],
            "options": {"task_id": "t2", "queue": "math", "priority": 7, "countdown": 5,
                        "link": {"task": "tasks.echo"}, "headers": {"x-a": 1}}}))
        .unwrap();
        let now = Utc::now();
        let merged = merge_options(
            &sig.options,
            opts(json!({"parent_id": "t1", "root_id": "t0"})),
        );
        let p = task_publish(&sig, &[json!(3)], merged, &FixedQueue("celery".into()), now).unwrap();
        assert_eq!((p.queue.as_str(), p.priority), ("math", Some(7)));
        assert_eq!(p.not_before, Some(after(now, 5.0).unwrap()));
        let msg = TaskMessage::from_raw(&p.message).unwrap();
        assert_eq!(msg.headers.id, "t2");
        assert_eq!(msg.args, vec![json!(3), json!(10)]);
        assert_eq!(
            (
                msg.headers.parent_id.as_deref(),
                msg.headers.root_id.as_deref()
            ),
            (Some("t1"), Some("t0"))
        );
        assert_eq!(msg.embed.callbacks.unwrap()[0]["task"], "tasks.echo");
        assert_eq!(msg.headers.extra["x-a"], 1);
    }

    #[test]
    fn immutable_signatures_take_no_parent_result_and_keep_their_group() {
        let mut sig = Signature::new("tasks.add", vec![json!(1), json!(2)], Map::new());
        sig.immutable = true;
        assert_eq!(call_args(&sig, &[json!(99)]), vec![json!(1), json!(2)]);
        let own = opts(json!({"group_id": "g1"}));
        let merged = merge_options(&own, opts(json!({"group_id": "g2", "queue": "q"})));
        assert_eq!(
            (merged["group_id"].clone(), merged["queue"].clone()),
            (json!("g1"), json!("q"))
        );
    }

    #[test]
    fn a_bad_time_option_names_the_option() {
        let sig = Signature::new("t", vec![], Map::new());
        let e = task_publish(
            &sig,
            &[],
            opts(json!({"eta": "tomorrow"})),
            &FixedQueue("c".into()),
            Utc::now(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`eta`"), "{e}");
    }
}
