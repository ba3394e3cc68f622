//! The `call` verb resolves a task's options as every other client path does: the app's
//! `task_with` options apply, and its flags beat them.

use std::process::ExitCode;
use std::time::Duration;

use celeriac::core::message::TaskMessage;
use celeriac::{task, App};
use celeriac_testkit::published::take_published;
use chrono::Utc;

const WAIT: Duration = Duration::from_secs(20);

#[task(name = "opt.configured", queue = "own", priority = 1)]
async fn configured(x: i64) -> i64 {
    x
}

fn special_app(dir: &tempfile::TempDir) -> App {
    let url = format!("sqlite://{}", dir.path().join("call.db").display());
    App::builder("cli-options")
        .broker_url(url)
        .task_with::<configured>(|o| {
            o.queue = Some("special".into());
            o.priority = Some(7);
            o.expires = Some(Duration::from_secs(60));
            o.ignore_result = true;
        })
        .build()
}

/// The messages published so far, as (queue, message), ordered by first argument.
fn published(app: &App, count: usize) -> Vec<(String, TaskMessage)> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let broker = app.broker().await.unwrap();
        let queues = ["celery", "own", "special", "explicit"];
        let mut seen = take_published(broker.as_ref(), &queues, count, WAIT).await;
        seen.sort_by_key(|(_, m)| m.args[0].as_i64());
        seen
    })
}

#[test]
fn call_uses_the_apps_task_options_and_its_flags_beat_them() {
    let dir = tempfile::tempdir().unwrap();
    let app = special_app(&dir);
    let sent = Utc::now();
    let plain = ["celeriac", "call", "opt.configured", "--args", "[1]"];
    assert_eq!(
        celeriac_cli::run_from(app.clone(), plain),
        ExitCode::SUCCESS
    );
    let flagged = [
        "celeriac",
        "call",
        "opt.configured",
        "--args",
        "[2]",
        "--queue",
        "explicit",
        "--priority",
        "2",
        "--expires",
        "600",
    ];
    assert_eq!(
        celeriac_cli::run_from(app.clone(), flagged),
        ExitCode::SUCCESS
    );

    let messages = published(&app, 2);
    let (queue, plain) = &messages[0];
    assert_eq!(queue, "special");
    assert_eq!(plain.properties.priority, 7);
    assert!(plain.headers.ignore_result);
    let expires = plain.headers.expires.expect("the app's expiry");
    let off = (expires - (sent + chrono::Duration::seconds(60)))
        .num_seconds()
        .abs();
    assert!(off < 10, "expires {expires}, sent {sent}");

    let (queue, flagged) = &messages[1];
    assert_eq!(queue, "explicit");
    assert_eq!(flagged.properties.priority, 2);
    let expires = flagged.headers.expires.expect("the flag's expiry");
    assert!(expires > sent + chrono::Duration::seconds(500));
    // The verb has no flag for results: the app's choice stands.
    assert!(flagged.headers.ignore_result);
}
