//! `task_send_sent_event`: a client announces every task it sends with Celery's
//! `task-sent` event, on a real embedded store.

use std::time::Duration;

use celeriac::serde_json::{json, Value};
use celeriac::{task, App};

#[task(name = "sent.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

fn app_at(dir: &tempfile::TempDir, send_sent_event: bool) -> App {
    let url = format!("sqlite://{}", dir.path().join("sent.db").display());
    App::builder("sent")
        .broker_url(url)
        .task::<add>()
        .configure(|c| c.task_send_sent_event = send_sent_event)
        .build()
}

/// The next `task-sent` event for `id`.
async fn task_sent(stream: &mut dyn celeriac::core::events::EventStream, id: &str) -> Value {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = stream.next().await.expect("the stream stays open");
            if event["type"] == "task-sent" && event["uuid"] == id {
                return event;
            }
        }
    })
    .await
    .expect("a task-sent event within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sends_task_sent_with_celerys_fields() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir, true);
    let broker = app.broker().await.unwrap();
    let mut stream = broker.events().unwrap().receive_events().await.unwrap();
    let sent = add::s(2, 3).queue("sums").apply_async(&app).await.unwrap();
    let event = task_sent(stream.as_mut(), sent.id()).await;
    assert_eq!(event["name"], "sent.add");
    assert_eq!(event["args"], "(2, 3)");
    assert_eq!(event["kwargs"], "{}");
    assert_eq!(event["root_id"], json!(sent.id()));
    assert_eq!(event["parent_id"], Value::Null);
    assert_eq!(event["retries"], 0);
    assert_eq!(event["queue"], "sums");
    assert_eq!(event["routing_key"], "sums");
    let hostname = event["hostname"].as_str().unwrap();
    assert!(
        hostname.starts_with(&format!("gen{}@", std::process::id())),
        "{hostname}"
    );
    for field in ["timestamp", "utcoffset", "pid", "clock"] {
        assert!(event.get(field).is_some(), "{field} in {event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_sent_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let quiet = app_at(&dir, false);
    let loud = app_at(&dir, true);
    let broker = quiet.broker().await.unwrap();
    let mut stream = broker.events().unwrap().receive_events().await.unwrap();
    let unannounced = add::delay(&quiet, 1, 1).await.unwrap();
    let announced = add::delay(&loud, 1, 2).await.unwrap();
    // Events arrive in send order: by the time the second task's event is here, the
    // first one's would have been.
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = stream.next().await.expect("open");
            seen.push(event["uuid"].clone());
            if event["uuid"] == announced.id() {
                break;
            }
        }
    })
    .await
    .expect("the announced task's event");
    assert!(!seen.contains(&json!(unannounced.id())), "{seen:?}");
}
