//! `inspect`, `control` and `status`: Celery's remote-control verbs, with Celery's
//! arguments and output (`->  node: OK` and the reply indented, then `N nodes online.`;
//! `-j/--json` prints the replies as Celery's `--json` does). They work against any worker
//! on the broker, celeriac or Python.

use std::time::Duration;

use celeriac::core::control::{ControlRequest, ReplyAddress};
use celeriac::core::json::to_python_json;
use celeriac::core::message::new_id;
use celeriac::serde_json::{json, Map, Value};
use celeriac::App;

use crate::args::{RemoteArgs, StatusArgs};

/// How a command-line argument of a command is typed (Celery's `Panel.meta` args).
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Float,
    Int,
    Bool,
}

/// A command: its name, whether it is an inspect command, its positional arguments and the
/// name the rest go under (variadic).
struct CommandSpec {
    name: &'static str,
    inspect: bool,
    args: &'static [(&'static str, Kind)],
    variadic: Option<&'static str>,
}

const fn spec(
    name: &'static str,
    inspect: bool,
    args: &'static [(&'static str, Kind)],
    variadic: Option<&'static str>,
) -> CommandSpec {
    CommandSpec {
        name,
        inspect,
        args,
        variadic,
    }
}

/// The commands Celery 5.7's worker knows (`celery/worker/control.py`).
const COMMANDS: &[CommandSpec] = &[
    spec("active", true, &[("safe", Kind::Bool)], None),
    spec("active_queues", true, &[], None),
    spec("clock", true, &[], None),
    spec("conf", true, &[("with_defaults", Kind::Bool)], None),
    spec("ping", true, &[], None),
    spec("query_task", true, &[], Some("ids")),
    spec("registered", true, &[], Some("taskinfoitems")),
    spec("report", true, &[], None),
    spec("reserved", true, &[], None),
    spec("revoked", true, &[], None),
    spec("scheduled", true, &[], None),
    spec("stats", true, &[], None),
    spec(
        "add_consumer",
        false,
        &[
            ("queue", Kind::Text),
            ("exchange", Kind::Text),
            ("exchange_type", Kind::Text),
            ("routing_key", Kind::Text),
        ],
        None,
    ),
    spec(
        "autoscale",
        false,
        &[("max", Kind::Int), ("min", Kind::Int)],
        None,
    ),
    spec("cancel_consumer", false, &[("queue", Kind::Text)], None),
    spec("disable_events", false, &[], None),
    spec("enable_events", false, &[], None),
    spec("heartbeat", false, &[], None),
    spec("pool_grow", false, &[("n", Kind::Int)], None),
    spec("pool_restart", false, &[], None),
    spec("pool_shrink", false, &[("n", Kind::Int)], None),
    spec(
        "rate_limit",
        false,
        &[("task_name", Kind::Text), ("rate_limit", Kind::Text)],
        None,
    ),
    spec("revoke", false, &[], Some("task_id")),
    spec("shutdown", false, &[], None),
    spec(
        "terminate",
        false,
        &[("signal", Kind::Text)],
        Some("task_id"),
    ),
    spec(
        "time_limit",
        false,
        &[
            ("task_name", Kind::Text),
            ("soft", Kind::Float),
            ("hard", Kind::Float),
        ],
        None,
    ),
];

pub(crate) async fn inspect(app: &App, args: RemoteArgs) -> Result<(), String> {
    remote(app, args, true).await
}

pub(crate) async fn control(app: &App, args: RemoteArgs) -> Result<(), String> {
    remote(app, args, false).await
}

/// `status`: which workers answer `ping`.
pub(crate) async fn status(app: &App, args: StatusArgs) -> Result<(), String> {
    let request = request("ping", Map::new(), &args.to.destination);
    let replies = broadcast(app, &request, args.to.timeout, &args.to.destination).await?;
    if args.to.json {
        println!("{}", to_python_json(&Value::Object(merged(&replies))));
    } else {
        for reply in &replies {
            say(reply, false);
        }
    }
    println!("\n{}", online(replies.len()));
    Ok(())
}

async fn remote(app: &App, args: RemoteArgs, inspect: bool) -> Result<(), String> {
    let verb = if inspect { "inspect" } else { "control" };
    let Some(command) = COMMANDS
        .iter()
        .find(|c| c.name == args.command && c.inspect == inspect)
    else {
        let known: Vec<&str> = COMMANDS
            .iter()
            .filter(|c| c.inspect == inspect)
            .map(|c| c.name)
            .collect();
        return Err(format!(
            "Command {} not recognized. Available {verb} commands: {}",
            args.command,
            known.join(", ")
        ));
    };
    let arguments = compile_arguments(command, &args.args)?;
    let request = request(command.name, arguments, &args.to.destination);
    let replies = broadcast(app, &request, args.to.timeout, &args.to.destination).await?;
    if args.to.json {
        // Celery prints inspect replies merged into one object, control replies as a list.
        let out = if inspect {
            Value::Object(merged(&replies))
        } else {
            Value::Array(replies.clone())
        };
        println!("{}", to_python_json(&out));
        return Ok(());
    }
    for reply in &replies {
        say(reply, true);
    }
    if inspect {
        println!("\n{}", online(replies.len()));
    }
    Ok(())
}

/// Celery's `_compile_arguments`: positional arguments by the command's names and types,
/// the rest under its variadic name.
fn compile_arguments(
    command: &CommandSpec,
    given: &[String],
) -> Result<Map<String, Value>, String> {
    let mut arguments = Map::new();
    let mut rest = given.iter();
    for (name, kind) in command.args {
        let Some(text) = rest.next() else { break };
        arguments.insert((*name).to_string(), typed(text, *kind, command.name, name)?);
    }
    let rest: Vec<Value> = rest.map(|s| json!(s)).collect();
    match command.variadic {
        Some(name) => {
            arguments.insert(name.to_string(), Value::Array(rest));
        }
        None if !rest.is_empty() => {
            let names: Vec<&str> = command.args.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "Command {:?} takes arguments: {}",
                command.name,
                names
                    .iter()
                    .map(|n| format!("<{n}>"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        None => {}
    }
    Ok(arguments)
}

fn typed(text: &str, kind: Kind, command: &str, name: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("{command}: argument {name} must be {what}, got {text:?}");
    Ok(match kind {
        Kind::Text => json!(text),
        Kind::Float => json!(text.parse::<f64>().map_err(|_| bad("a number"))?),
        Kind::Int => json!(text.parse::<i64>().map_err(|_| bad("a whole number"))?),
        Kind::Bool => json!(matches!(
            text.to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )),
    })
}

fn request(method: &str, arguments: Map<String, Value>, destination: &[String]) -> ControlRequest {
    ControlRequest {
        method: method.to_string(),
        arguments,
        destination: (!destination.is_empty()).then(|| destination.to_vec()),
        pattern: None,
        matcher: None,
        ticket: Some(new_id()),
        reply_to: Some(ReplyAddress {
            exchange: "reply.celery.pidbox".into(),
            routing_key: new_id(),
        }),
        clock: 0,
    }
}

/// Sends the request and waits for replies (all of `destination`'s, or until `timeout`).
async fn broadcast(
    app: &App,
    request: &ControlRequest,
    timeout: f64,
    destination: &[String],
) -> Result<Vec<Value>, String> {
    let broker = app.broker().await.map_err(|e| e.to_string())?;
    let mailbox = broker.mailbox().ok_or_else(|| {
        format!(
            "broker {} has no remote control (Celery's pidbox) in celeriac yet",
            broker.display_url()
        )
    })?;
    let timeout = crate::args::seconds(timeout, "--timeout")?;
    let limit = (!destination.is_empty()).then_some(destination.len());
    let replies = mailbox
        .broadcast(request, timeout.max(Duration::from_millis(10)), limit)
        .await
        .map_err(|e| e.to_string())?;
    if replies.is_empty() {
        return Err("No nodes replied within time constraint".into());
    }
    Ok(replies)
}

fn merged(replies: &[Value]) -> Map<String, Value> {
    let mut out = Map::new();
    for reply in replies {
        if let Some(o) = reply.as_object() {
            out.extend(o.clone());
        }
    }
    out
}

fn online(n: usize) -> String {
    format!("{n} {} online.", if n == 1 { "node" } else { "nodes" })
}

/// One reply as Celery's `_say_remote_command_reply` prints it.
fn say(reply: &Value, show_reply: bool) {
    let Some((node, payload)) = reply.as_object().and_then(|o| o.iter().next()) else {
        return;
    };
    let (status, body) = pretty(payload);
    println!("->  {node}: {status}");
    if show_reply {
        println!("{}", indent(&body, 4));
    }
}

/// Celery's `pretty`: lists as `* item`, `{ok}`/`{error}` unwrapped, objects as sorted JSON.
fn pretty(payload: &Value) -> (&'static str, String) {
    match payload {
        Value::Array(items) if items.is_empty() => ("OK", "- empty -".into()),
        Value::Array(items) => (
            "OK",
            items
                .iter()
                .map(|i| format!("* {}", text_of(i)))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::Object(o) if o.contains_key("ok") => ("OK", indent(&pretty(&o["ok"]).1, 4)),
        Value::Object(o) if o.contains_key("error") => ("ERROR", indent(&pretty(&o["error"]).1, 4)),
        Value::Object(_) => ("OK", sorted_pretty_json(payload)),
        other => ("OK", text_of(other)),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => to_python_json(other),
    }
}

/// `json.dumps(n, sort_keys=True, indent=4)`.
fn sorted_pretty_json(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sort(&o[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    // serde_json indents by two; Python's `indent=4` doubles that.
    let two = celeriac::serde_json::to_string_pretty(&sort(v)).unwrap_or_default();
    two.lines()
        .map(|l| {
            let depth = l.len() - l.trim_start_matches(' ').len();
            format!("{}{}", " ".repeat(depth), l)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_compile_as_celery_does() {
        let rate = COMMANDS.iter().find(|c| c.name == "rate_limit").unwrap();
        let a = compile_arguments(rate, &["tasks.add".into(), "10/m".into()]).unwrap();
        assert_eq!(
            Value::Object(a),
            json!({"task_name": "tasks.add", "rate_limit": "10/m"})
        );
        let grow = COMMANDS.iter().find(|c| c.name == "pool_grow").unwrap();
        assert!(compile_arguments(grow, &["x".into()])
            .unwrap_err()
            .contains("whole number"));
        assert!(compile_arguments(grow, &["1".into(), "2".into()]).is_err());
        let query = COMMANDS.iter().find(|c| c.name == "query_task").unwrap();
        let a = compile_arguments(query, &["a".into(), "b".into()]).unwrap();
        assert_eq!(Value::Object(a), json!({"ids": ["a", "b"]}));
    }

    #[test]
    fn replies_print_as_celery_prints_them() {
        assert_eq!(
            pretty(&json!({"ok": "pong"})),
            ("OK", "    pong".to_string())
        );
        assert_eq!(pretty(&json!(["a", "b"])).1, "* a\n* b");
        assert_eq!(pretty(&json!([])).1, "- empty -");
        assert_eq!(pretty(&json!({"error": "unknown task"})).0, "ERROR");
        assert_eq!(
            pretty(&json!({"b": 1, "a": 2})).1,
            "{\n    \"a\": 2,\n    \"b\": 1\n}"
        );
        assert_eq!(online(1), "1 node online.");
        assert_eq!(online(3), "3 nodes online.");
    }
}
