//! `events`: a live view of what workers report (Celery's events): one readable line per
//! event, or with `--dump` one JSON object per line. `--count` and `--timeout` end it (for
//! scripts); otherwise Ctrl-C does.

use std::time::Duration;

use celeriac::core::json::to_python_json;
use celeriac::serde_json::Value;
use celeriac::App;

use crate::args::EventsArgs;

pub(crate) async fn watch(app: &App, args: EventsArgs) -> Result<(), String> {
    let broker = app.broker().await.map_err(|e| e.to_string())?;
    let events = broker.events().ok_or_else(|| {
        format!(
            "broker {} carries no events in celeriac yet",
            broker.display_url()
        )
    })?;
    let mut stream = events.receive_events().await.map_err(|e| e.to_string())?;
    let until = args
        .timeout
        .map(|t| crate::args::seconds(t, "--timeout"))
        .transpose()?
        .unwrap_or(Duration::MAX);
    let deadline = tokio::time::sleep(until.min(Duration::from_secs(86_400 * 365)));
    tokio::pin!(deadline);
    let mut seen = 0usize;
    while seen < args.count.unwrap_or(usize::MAX) {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = &mut deadline => None,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(event) = event else { break };
        seen += 1;
        if args.dump {
            println!("{}", to_python_json(&event));
        } else {
            println!("{}", readable(&event));
        }
    }
    Ok(())
}

/// `w1@host [12:00:01.234] task-succeeded 3f2c… result=5 runtime=0.001`.
fn readable(e: &Value) -> String {
    let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let when = e
        .get("timestamp")
        .and_then(Value::as_f64)
        .and_then(|t| chrono::DateTime::from_timestamp_micros((t * 1e6) as i64))
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let mut line = format!("{} [{when}] {}", text("hostname"), text("type"));
    if let Some(id) = e.get("uuid").and_then(Value::as_str) {
        line.push(' ');
        line.push_str(id);
    }
    for key in [
        "name",
        "args",
        "kwargs",
        "result",
        "runtime",
        "exception",
        "active",
        "processed",
    ] {
        if let Some(v) = e.get(key).filter(|v| !v.is_null()) {
            let shown = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            line.push_str(&format!(" {key}={shown}"));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::readable;
    use celeriac::serde_json::json;

    #[test]
    fn an_event_reads_as_one_line() {
        let e = json!({"type": "task-succeeded", "hostname": "w1@h", "uuid": "id1",
                       "result": "5", "runtime": 0.5, "timestamp": 0.0});
        assert_eq!(
            readable(&e),
            "w1@h [00:00:00.000] task-succeeded id1 result=5 runtime=0.5"
        );
    }
}
