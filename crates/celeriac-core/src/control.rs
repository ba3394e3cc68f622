//! Celery's remote-control (pidbox) messages that celeriac sends. Every broker carries the
//! same body; only the envelope differs (a Redis PUBLISH, an AMQP `celery.pidbox` publish).

use serde_json::{json, Map, Value};

use crate::broker::Signal;
use crate::BrokerError;

/// The argument celeriac adds to its `revoke` broadcasts: the revoke is already in the
/// broker's durable record, so a celeriac worker receiving it records nothing. Python
/// workers take extra arguments (`**kwargs`) and ignore it.
pub const RECORDED_ARGUMENT: &str = "celeriac_recorded";

/// The body of Celery's `revoke` broadcast (vectors 22 and 23) as a cast: no `ticket` and no
/// `reply_to`, so no worker answers. `task_id` is a list, which Celery's handler accepts.
pub fn revoke_broadcast(task_ids: &[String], terminate: Option<Signal>) -> Map<String, Value> {
    let signal = terminate.unwrap_or(Signal::TERM).name();
    let mut body = Map::new();
    body.insert("method".into(), json!("revoke"));
    body.insert(
        "arguments".into(),
        json!({"task_id": task_ids, "terminate": terminate.is_some(), "signal": signal,
               RECORDED_ARGUMENT: true}),
    );
    body.insert("destination".into(), Value::Null);
    body.insert("pattern".into(), Value::Null);
    body.insert("matcher".into(), Value::Null);
    body
}

/// How long a broadcast stays valid, as Celery's `broadcast` sets `expires` (now + timeout).
pub const BROADCAST_TTL_SECONDS: f64 = 1.0;

/// Where a reply to a control request goes (Celery's `reply_to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAddress {
    pub exchange: String,
    pub routing_key: String,
}

/// A remote-control request as a worker's mailbox receives it (protocol §8.2).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlRequest {
    pub method: String,
    pub arguments: Map<String, Value>,
    /// Hostnames the request is for (`None`: every worker).
    pub destination: Option<Vec<String>>,
    pub pattern: Option<String>,
    /// `glob` or `pcre`, for `pattern`.
    pub matcher: Option<String>,
    /// Present when the sender waits for replies, with `reply_to`.
    pub ticket: Option<String>,
    pub reply_to: Option<ReplyAddress>,
    /// The sender's Lamport clock (message header `clock`).
    pub clock: u64,
}

impl ControlRequest {
    /// Parses a request body (JSON object) with its `clock` header; `None` when the body is
    /// not a control request.
    pub fn from_body(body: &Value, clock: u64) -> Option<ControlRequest> {
        let o = body.as_object()?;
        let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        let destination = match o.get("destination") {
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            ),
            Some(Value::String(one)) => Some(vec![one.clone()]),
            _ => None,
        };
        let reply_to = o.get("reply_to").and_then(|r| {
            Some(ReplyAddress {
                exchange: r.get("exchange")?.as_str()?.to_string(),
                routing_key: r.get("routing_key")?.as_str()?.to_string(),
            })
        });
        Some(ControlRequest {
            method: text("method")?,
            arguments: o
                .get("arguments")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            destination,
            pattern: text("pattern"),
            matcher: text("matcher"),
            ticket: text("ticket"),
            reply_to,
            clock,
        })
    }

    /// The body as Celery sends it.
    pub fn to_body(&self) -> Value {
        let mut body = Map::new();
        body.insert("method".into(), json!(self.method));
        body.insert("arguments".into(), Value::Object(self.arguments.clone()));
        body.insert("destination".into(), json!(self.destination));
        body.insert("pattern".into(), json!(self.pattern));
        body.insert("matcher".into(), json!(self.matcher));
        if let (Some(ticket), Some(to)) = (&self.ticket, &self.reply_to) {
            body.insert("ticket".into(), json!(ticket));
            body.insert(
                "reply_to".into(),
                json!({"exchange": to.exchange, "routing_key": to.routing_key}),
            );
        }
        Value::Object(body)
    }

    /// Whether the worker `hostname` handles this request: it is in `destination`, or
    /// (without one) `pattern` matches it, or neither is given.
    pub fn is_for(&self, hostname: &str) -> bool {
        if let Some(destination) = &self.destination {
            return destination.iter().any(|d| d == hostname);
        }
        match (&self.pattern, self.matcher.as_deref()) {
            (Some(pattern), Some("glob")) | (Some(pattern), None) => glob_match(pattern, hostname),
            // `re.match` semantics need a regex engine; celeriac matches a literal prefix
            // followed by `.*` (the form Celery's docs use), and otherwise takes the request.
            (Some(pattern), Some(_)) => match pattern.strip_suffix(".*") {
                Some(prefix) if !prefix.contains(['*', '+', '?', '[', '(', '|', '\\']) => {
                    hostname.starts_with(&prefix.replace("\\.", "."))
                }
                _ => true,
            },
            (None, _) => true,
        }
    }
}

/// fnmatch-style `*` and `?` matching, as Celery's `glob` matcher.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The control requests broadcast to workers, as one worker receives them.
#[async_trait::async_trait]
pub trait ControlInbox: Send {
    /// The next request; `None` once the inbox is closed. Malformed messages are skipped
    /// (and logged by the engine), never returned.
    async fn next(&mut self) -> Option<ControlRequest>;
}

/// Celery's remote control ("pidbox") on a broker: requests to every worker's mailbox,
/// replies to the caller's.
#[async_trait::async_trait]
pub trait Mailbox: Send + Sync {
    /// Starts receiving, as the worker `hostname`, the requests broadcast to workers (an
    /// engine with per-node mailboxes, such as RabbitMQ's `<hostname>.celery.pidbox`
    /// queue, names them after it).
    async fn listen(&self, hostname: &str) -> Result<Box<dyn ControlInbox>, BrokerError>;

    /// Sends `{hostname: payload}` to the request's reply address with its ticket.
    async fn reply(
        &self,
        to: &ReplyAddress,
        ticket: &str,
        clock: u64,
        body: &Value,
    ) -> Result<(), BrokerError>;

    /// Broadcasts `request` (its `clock` header at least `request.clock`); when it has a
    /// ticket, collects the replies carrying it until `timeout` passes or `limit` replies
    /// came. Every listener whose `listen` returned before the broadcast receives it.
    async fn broadcast(
        &self,
        request: &ControlRequest,
        timeout: std::time::Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, BrokerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_body_has_vector_23_fields_without_reply() {
        let b = revoke_broadcast(&["a".into()], None);
        assert_eq!(
            Value::Object(b),
            json!({"method": "revoke",
                   "arguments": {"task_id": ["a"], "terminate": false, "signal": "SIGTERM",
                                 "celeriac_recorded": true},
                   "destination": null, "pattern": null, "matcher": null})
        );
        let b = revoke_broadcast(&["a".into()], Some(Signal::KILL));
        assert_eq!(b["arguments"]["terminate"], json!(true));
        assert_eq!(b["arguments"]["signal"], json!("SIGKILL"));
    }

    #[test]
    fn signals_parse_as_celery_accepts_them() {
        assert_eq!(Signal::parse("SIGKILL"), Some(Signal::KILL));
        assert_eq!(Signal::parse("kill"), Some(Signal::KILL));
        assert_eq!(Signal::parse("15"), Some(Signal::TERM));
        assert_eq!(Signal::parse("SIGNOPE"), None);
        assert_eq!(Signal::parse("0"), None);
        assert_eq!(Signal(34).name(), "34");
    }

    #[test]
    fn requests_round_trip_and_pick_their_workers() {
        let body = json!({"method": "ping", "arguments": {}, "destination": null,
            "pattern": null, "matcher": null, "ticket": "t1",
            "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "oid"}});
        let r = ControlRequest::from_body(&body, 9).unwrap();
        assert_eq!(r.to_body(), body);
        assert!(r.is_for("w1@host"));
        let only = ControlRequest {
            destination: Some(vec!["w2@host".into()]),
            ..r.clone()
        };
        assert!(!only.is_for("w1@host") && only.is_for("w2@host"));
        let glob = ControlRequest {
            pattern: Some("w1@*".into()),
            matcher: Some("glob".into()),
            ..r.clone()
        };
        assert!(glob.is_for("w1@host") && !glob.is_for("w2@host"));
        let pcre = ControlRequest {
            pattern: Some("w1@.*".into()),
            matcher: Some("pcre".into()),
            ..r
        };
        assert!(pcre.is_for("w1@host") && !pcre.is_for("w2@host"));
        assert!(ControlRequest::from_body(&json!({"no": "method"}), 0).is_none());
    }
}
