//! One resolution of a call's options, whichever way the task is sent: by its typed signature
//! (`apply_async`, `into_call` + `send_batch`), by name (`Call`, `send_task`). Each test
//! publishes on its own embedded store and reads back exactly what was published.

use std::time::Duration;

use celeriac::core::message::TaskMessage;
use celeriac::serde_json::{json, Map, Value};
use celeriac::{task, App, Call, CallOptions};
use celeriac_testkit::published::take_published;
use chrono::{DateTime, Utc};

const WAIT: Duration = Duration::from_secs(20);

/// Every queue a test's calls could land in, so a message in the wrong one is seen too.
const QUEUES: [&str; 5] = ["celery", "special", "own", "explicit", "routed"];

/// Its own attributes say queue `own`, priority 1, no expiry: the app changes them.
#[task(name = "opt.configured", queue = "own", priority = 1)]
async fn configured(x: i64) -> i64 {
    x
}

/// Never registered in any app: only its attributes can apply.
#[task(
    name = "opt.unregistered",
    queue = "own",
    priority = 4,
    expires = 30,
    ignore_result = true
)]
async fn unregistered(x: i64) -> i64 {
    x
}

/// One published message as a worker would see it.
#[derive(Debug)]
struct Published {
    queue: String,
    message: TaskMessage,
}

impl Published {
    fn priority(&self) -> u8 {
        self.message.properties.priority
    }

    fn expires(&self) -> Option<DateTime<Utc>> {
        self.message.headers.expires
    }

    fn ignore_result(&self) -> bool {
        self.message.headers.ignore_result
    }
}

struct Store {
    app: App,
    _dir: tempfile::TempDir,
}

fn store(build: impl FnOnce(celeriac::AppBuilder) -> celeriac::AppBuilder) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("options.db").display());
    let app = build(App::builder("options").broker_url(url)).build();
    Store { app, _dir: dir }
}

/// The app with `opt.configured`'s options changed by `task_with`, as the issue describes.
fn special_app() -> Store {
    store(|b| {
        b.task_with::<configured>(|o| {
            o.queue = Some("special".into());
            o.priority = Some(7);
            o.expires = Some(Duration::from_secs(60));
            o.ignore_result = true;
        })
    })
}

fn one_arg(x: i64) -> (Vec<Value>, Map<String, Value>) {
    (vec![json!(x)], Map::new())
}

/// Sends `configured(x)` once by each client path: with `options` by the three that take
/// them (x = 1, 2, 3), and with none also by `send_task` (x = 4).
async fn send_every_way(app: &App, options: Option<&CallOptions>) {
    let explicit = options.cloned().unwrap_or_default();
    configured::s(1)
        .options(explicit.clone())
        .apply_async(app)
        .await
        .unwrap();
    app.send_batch(vec![configured::s(2).options(explicit.clone()).into_call()])
        .await
        .unwrap();
    let (args, kwargs) = one_arg(3);
    Call::new("opt.configured", args, kwargs)
        .options(explicit)
        .send(app)
        .await
        .unwrap();
    if options.is_none() {
        let (args, kwargs) = one_arg(4);
        app.send_task("opt.configured", args, kwargs).await.unwrap();
    }
}

/// Reads back `count` published messages from any of [`QUEUES`], ordered by first argument.
async fn published(app: &App, count: usize) -> Vec<Published> {
    let broker = app.broker().await.unwrap();
    let mut seen: Vec<Published> = take_published(broker.as_ref(), &QUEUES, count, WAIT)
        .await
        .into_iter()
        .map(|(queue, message)| Published { queue, message })
        .collect();
    seen.sort_by_key(|p| p.message.args[0].as_i64());
    seen
}

fn expires_about(p: &Published, sent: DateTime<Utc>, after: Duration) {
    let expected = sent + chrono::Duration::from_std(after).unwrap();
    let expires = p.expires().expect("an expiry");
    let off = (expires - expected).num_milliseconds().abs();
    assert!(off < 10_000, "expires {expires}, expected about {expected}");
}

#[tokio::test]
async fn task_with_options_apply_however_the_task_is_sent() {
    let s = special_app();
    let sent = Utc::now();
    send_every_way(&s.app, None).await;
    let messages = published(&s.app, 4).await;
    for p in &messages {
        let how = [
            "apply_async",
            "into_call + send_batch",
            "Call::send",
            "send_task",
        ][p.message.args[0].as_i64().unwrap() as usize - 1];
        assert_eq!(p.queue, "special", "{how}: {p:#?}");
        assert_eq!(p.priority(), 7, "{how}");
        assert!(p.ignore_result(), "{how}");
        expires_about(p, sent, Duration::from_secs(60));
    }
}

#[tokio::test]
async fn explicit_call_options_beat_the_apps() {
    let s = special_app();
    // Whole seconds: the wire keeps microseconds only.
    let at = DateTime::from_timestamp(Utc::now().timestamp() + 3600, 0).unwrap();
    let options = CallOptions {
        queue: Some("explicit".into()),
        priority: Some(2),
        ignore_result: Some(false),
        expires_at: Some(at),
        ..CallOptions::default()
    };
    send_every_way(&s.app, Some(&options)).await;
    for p in published(&s.app, 3).await {
        assert_eq!(p.queue, "explicit", "{p:#?}");
        assert_eq!(p.priority(), 2);
        assert!(!p.ignore_result());
        // An explicit expiry time beats the task's default expiry from send time.
        assert_eq!(p.expires(), Some(at));
    }
}

#[tokio::test]
async fn routes_beat_the_tasks_queue_but_not_an_explicit_one() {
    let s = store(|b| {
        b.task_with::<configured>(|o| o.queue = Some("special".into()))
            .route("opt.*", "routed")
    });
    send_every_way(&s.app, None).await;
    let explicit = CallOptions {
        queue: Some("explicit".into()),
        ..CallOptions::default()
    };
    configured::s(5)
        .options(explicit.clone())
        .apply_async(&s.app)
        .await
        .unwrap();
    let messages = published(&s.app, 5).await;
    let queues: Vec<&str> = messages.iter().map(|p| p.queue.as_str()).collect();
    assert_eq!(queues, ["routed", "routed", "routed", "routed", "explicit"]);
}

#[tokio::test]
async fn a_registered_task_without_changes_keeps_its_attributes() {
    let s = store(|b| b.task::<configured>());
    send_every_way(&s.app, None).await;
    for p in published(&s.app, 4).await {
        assert_eq!(p.queue, "own", "{p:#?}");
        assert_eq!(p.priority(), 1);
        assert!(!p.ignore_result());
        assert_eq!(p.expires(), None);
    }
}

#[tokio::test]
async fn an_unregistered_task_uses_its_attributes_when_typed_and_defaults_by_name() {
    let s = store(|b| b);
    let sent = Utc::now();
    unregistered::s(1).apply_async(&s.app).await.unwrap();
    s.app
        .send_batch(vec![unregistered::s(2).into_call()])
        .await
        .unwrap();
    let (args, kwargs) = one_arg(3);
    s.app
        .send_task("opt.unregistered", args, kwargs)
        .await
        .unwrap();
    let messages = published(&s.app, 3).await;
    for typed in &messages[..2] {
        assert_eq!(typed.queue, "own", "{typed:#?}");
        assert_eq!(typed.priority(), 4);
        assert!(typed.ignore_result());
        expires_about(typed, sent, Duration::from_secs(30));
    }
    // By name, this app knows nothing of the task: only the app's defaults apply.
    let by_name = &messages[2];
    assert_eq!(by_name.queue, "celery");
    assert_eq!(by_name.expires(), None);
    assert!(!by_name.ignore_result());
}

#[tokio::test]
async fn the_apps_task_ignore_result_applies_unless_a_call_says_otherwise() {
    let s = store(|b| {
        b.task::<configured>()
            .configure(|c| c.task_ignore_result = true)
    });
    send_every_way(&s.app, None).await;
    let keep = CallOptions {
        ignore_result: Some(false),
        ..CallOptions::default()
    };
    configured::s(5)
        .options(keep)
        .apply_async(&s.app)
        .await
        .unwrap();
    let messages = published(&s.app, 5).await;
    let ignored: Vec<bool> = messages.iter().map(Published::ignore_result).collect();
    assert_eq!(ignored, [true, true, true, true, false]);
}
