//! The verbs about single tasks: `call`, `result`, `revoke`.

use celeriac::core::broker::Signal;
use celeriac::core::state::TaskMeta;
use celeriac::serde_json::{self, Value};
use celeriac::{App, Call};

use crate::args::{seconds, CallArgs};

pub(crate) async fn call(app: &App, args: CallArgs) -> Result<(), String> {
    let Value::Array(positional) = parse_json(&args.args, "--args")? else {
        return Err(format!("--args must be a JSON array, got {}", args.args));
    };
    let Value::Object(keywords) = parse_json(&args.kwargs, "--kwargs")? else {
        return Err(format!(
            "--kwargs must be a JSON object, got {}",
            args.kwargs
        ));
    };
    let mut call = Call::new(args.name, positional, keywords);
    if let Some(c) = args.countdown {
        call = call.countdown(seconds(c, "--countdown")?);
    }
    if let Some(e) = args.expires {
        call = call.expires_in(seconds(e, "--expires")?);
    }
    if let Some(q) = args.queue {
        call = call.queue(q);
    }
    if let Some(p) = args.priority {
        if p > 9 {
            return Err(format!("--priority must be 0..=9, got {p}"));
        }
        call = call.priority(p);
    }
    let result = call.send(app).await.map_err(|e| e.to_string())?;
    println!("{}", result.id());
    Ok(())
}

/// Prints Celery's result record; a task nobody stored a state for reads PENDING.
pub(crate) async fn result(app: &App, task_id: &str, wait: Option<f64>) -> Result<(), String> {
    let backend = app.backend().await.map_err(|e| e.to_string())?;
    let meta = match wait {
        Some(w) => backend.wait(task_id, seconds(w, "--wait")?).await,
        None => backend.get(task_id).await,
    }
    .map_err(|e| e.to_string())?;
    let meta = meta.unwrap_or_else(|| {
        let mut m = TaskMeta::pending(task_id);
        m.children = None;
        m
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&meta.to_value()).unwrap_or_default()
    );
    Ok(())
}

pub(crate) async fn revoke(
    app: &App,
    task_ids: Vec<String>,
    terminate: bool,
    signal: Option<&str>,
) -> Result<(), String> {
    if task_ids.is_empty() {
        return Err("revoke needs at least one task id".into());
    }
    let signal = match signal {
        Some(name) => Signal::parse(name).ok_or_else(|| {
            format!("--signal {name:?} is not a signal: use TERM, KILL, INT, QUIT, HUP, USR1, USR2 or a number")
        })?,
        None => Signal::TERM,
    };
    app.revoke_with(&task_ids, terminate.then_some(signal))
        .await
        .map_err(|e| e.to_string())?;
    for id in task_ids {
        println!(
            "revoked {id}{}",
            if terminate { " (terminate)" } else { "" }
        );
    }
    Ok(())
}

fn parse_json(text: &str, flag: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{flag} is not valid JSON ({e}): {text}"))
}
