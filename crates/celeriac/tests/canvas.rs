//! Workflows through the public API, each on the embedded store and on Redis (results in
//! Redis too), with a real worker: chains, groups, chords, callbacks and errbacks, map,
//! starmap, chunks, immutable steps, options on steps, replacing a task.
//!
//! Redis needs `CELERIAC_TEST_REDIS_URL` (each test has its own key prefix); RabbitMQ
//! (results in the embedded store) `CELERIAC_TEST_AMQP_URL` and `rabbitmqctl` (each test has
//! its own vhost). Without them those halves say they were skipped.

use std::time::Duration;

use celeriac::canvas::{chord, group, Sig};
use celeriac::serde_json::{json, Value};
use celeriac::{chain, task, App, GroupResult, Parent, ResultError, TaskError, WorkerConfig};

const WAIT: Duration = Duration::from_secs(30);

#[task(name = "canvas.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "canvas.double")]
async fn double(x: i64) -> i64 {
    2 * x
}

#[task(name = "canvas.tsum")]
async fn tsum(values: Vec<i64>) -> i64 {
    values.iter().sum()
}

#[task(name = "canvas.echo")]
async fn echo(value: Value) -> Value {
    value
}

#[task(name = "canvas.explode")]
async fn explode(x: i64) -> Result<i64, TaskError> {
    Err(TaskError::failure("ValueError", format!("exploded on {x}")))
}

/// The failures the new-style errback saw: (failed id, exception type, traceback present).
static ERRBACK_CALLS: std::sync::Mutex<Vec<(String, String, bool)>> =
    std::sync::Mutex::new(Vec::new());

/// A new-style errback: more than one argument, so the worker calls it in-process.
#[task(name = "canvas.on_error")]
async fn on_error(request: Value, exc: Value, traceback: Option<String>) {
    let id = request["id"].as_str().unwrap_or_default().to_string();
    let kind = exc["exc_type"].as_str().unwrap_or_default().to_string();
    ERRBACK_CALLS
        .lock()
        .unwrap()
        .push((id, kind, traceback.is_some()));
}

/// Replaces itself with a group of `n` doubles.
#[task(name = "canvas.fan_out")]
async fn fan_out(n: i64) -> Result<Vec<i64>, TaskError> {
    let members = group((0..n).map(double::s));
    Err(TaskError::replace(Sig::from(members).to_value()))
}

enum Engine {
    Sqlite(tempfile::TempDir),
    Redis(String),
    /// RabbitMQ as the broker, the embedded store as the result backend.
    Amqp(celeriac_testkit::rabbitmq::TestVhost, tempfile::TempDir),
}

impl Engine {
    fn sqlite() -> Engine {
        Engine::Sqlite(tempfile::tempdir().expect("temp dir"))
    }

    fn redis() -> Option<Engine> {
        let Ok(base) = std::env::var("CELERIAC_TEST_REDIS_URL") else {
            println!("skipped: CELERIAC_TEST_REDIS_URL not set");
            return None;
        };
        let prefix = format!("canvas-{}:", uuid_like());
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(Engine::Redis(format!(
            "{base}{sep}global_keyprefix={prefix}"
        )))
    }

    fn amqp(test: &str) -> Option<Engine> {
        let Ok(base) = std::env::var("CELERIAC_TEST_AMQP_URL") else {
            println!("skipped: CELERIAC_TEST_AMQP_URL not set");
            return None;
        };
        let name = format!("celeriac-canvas-{test}-{}", std::process::id());
        let vhost = celeriac_testkit::rabbitmq::TestVhost::create(&base, &name)
            .unwrap_or_else(|| panic!("rabbitmqctl could not create vhost {name}"));
        Some(Engine::Amqp(vhost, tempfile::tempdir().expect("temp dir")))
    }

    fn app(&self) -> App {
        let sqlite = |dir: &tempfile::TempDir| {
            format!("sqlite://{}", dir.path().join("canvas.db").display())
        };
        let (broker, backend) = match self {
            Engine::Sqlite(dir) => (sqlite(dir), sqlite(dir)),
            Engine::Redis(url) => (url.clone(), url.clone()),
            Engine::Amqp(vhost, dir) => (vhost.url.clone(), sqlite(dir)),
        };
        App::builder("canvas")
            .broker_url(broker)
            .result_backend(backend)
            .task::<add>()
            .task::<double>()
            .task::<tsum>()
            .task::<echo>()
            .task::<explode>()
            .task::<fan_out>()
            .task::<on_error>()
            .configure(|c| c.result_extended = true)
            .build()
    }
}

fn uuid_like() -> String {
    celeriac::core::message::new_id()
}

/// Runs `scenario` against an app with a worker consuming `celery` and `other`.
async fn with_worker<F, Fut>(engine: Engine, scenario: F)
where
    F: FnOnce(App) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let app = engine.app();
    let config = WorkerConfig {
        concurrency: 4,
        queues: vec!["celery".into(), "other".into()],
        shutdown_timeout: Duration::from_secs(10),
        ..app.worker_config()
    };
    let worker = app.worker(config).await.expect("worker");
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    scenario(app.clone()).await;
    shutdown.graceful();
    running.await.expect("joined").expect("worker ran");
    app.close().await.expect("closed");
}

macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::with_worker(super::Engine::sqlite(), super::$name).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(engine) = super::Engine::redis() {
                        super::with_worker(engine, super::$name).await;
                    }
                }
            )*
        }
    };
}

/// RabbitMQ deployments join chords in their result backend: here the embedded store.
mod amqp_with_sqlite_results {
    macro_rules! on_rabbitmq {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(engine) = super::Engine::amqp(stringify!($name)) {
                        super::with_worker(engine, super::$name).await;
                    }
                }
            )*
        };
    }
    on_rabbitmq!(
        a_chain_passes_each_result_on_and_its_parents_walk_back,
        a_chord_sums_its_header,
        a_chord_with_a_failing_member_fails_with_chord_error,
        link_gets_the_result_and_link_error_the_failed_id,
        map_starmap_and_chunks_run_in_the_worker,
    );
}

on_every_engine!(
    a_chain_passes_each_result_on_and_its_parents_walk_back,
    a_group_reads_back_in_member_order_and_restores_by_id,
    a_chord_sums_its_header,
    a_chord_with_a_failing_member_fails_with_chord_error,
    link_gets_the_result_and_link_error_the_failed_id,
    a_failed_step_fails_the_rest_of_its_chain,
    map_starmap_and_chunks_run_in_the_worker,
    a_task_replaced_by_a_group_returns_the_groups_results,
    immutable_steps_and_step_options,
    nested_canvases,
    a_chord_of_ten_thousand_members_completes,
    a_chain_of_a_thousand_steps_completes,
    a_next_step_that_cannot_be_sent_fails_the_task,
);

async fn a_chain_passes_each_result_on_and_its_parents_walk_back(app: App) {
    let steps = chain![
        add::s(1, 2),
        Sig::task::<add>(vec![json!(10)]),
        Sig::task::<add>(vec![json!(100)])
    ];
    let last = steps.apply_async(&app).await.expect("sent");
    assert_eq!(last.get(WAIT).await.expect("chain result"), 113);
    let Some(Parent::Task(middle)) = last.parent() else {
        panic!("the last step has the middle one as parent");
    };
    let Some(Parent::Task(first)) = middle.parent() else {
        panic!("the middle step has the first as parent");
    };
    assert_eq!(middle.get(WAIT).await.expect("middle"), json!(13));
    let first_meta = first.meta().await.expect("meta").expect("stored");
    assert_eq!(
        first_meta.children.expect("children")[0][0][0],
        json!(middle.id())
    );
    let last_meta = last.meta().await.expect("meta").expect("stored");
    assert_eq!(last_meta.parent_id.as_deref(), Some(middle.id()));
}

async fn a_group_reads_back_in_member_order_and_restores_by_id(app: App) {
    let sent = group((0..10).map(|i| add::s(i, i)))
        .apply_async(&app)
        .await
        .expect("sent");
    let expected: Vec<i64> = (0..10).map(|i| 2 * i).collect();
    assert_eq!(sent.get(WAIT).await.expect("group"), expected);
    assert_eq!(sent.completed_count().await.expect("count"), 10);
    assert!(sent.ready().await.expect("ready") && sent.successful().await.expect("ok"));
    assert!(!sent.failed().await.expect("failed"));
    sent.save().await.expect("saved");
    let restored = GroupResult::restore(&app, sent.id())
        .await
        .expect("restore")
        .expect("found");
    let ids = |g: &[celeriac::AsyncResult<Value>]| {
        g.iter().map(|r| r.id().to_string()).collect::<Vec<_>>()
    };
    let sent_ids: Vec<String> = sent.results().iter().map(|r| r.id().to_string()).collect();
    assert_eq!(ids(restored.results()), sent_ids);
    let meta = sent.results()[3]
        .meta()
        .await
        .expect("meta")
        .expect("stored");
    assert_eq!(
        meta.group_id.as_deref(),
        Some(sent.id()),
        "members know their group"
    );
}

async fn a_chord_sums_its_header(app: App) {
    let total = chord((0..20).map(|i| add::s(i, i)), Sig::task::<tsum>(vec![]))
        .apply_async(&app)
        .await
        .expect("sent");
    assert_eq!(total.get(WAIT).await.expect("body"), 380);
    let Some(Parent::Group(header)) = total.parent() else {
        panic!("a chord's result has its header as parent");
    };
    assert_eq!(header.len(), 20);
    assert_eq!(header.completed_count().await.expect("count"), 20);
}

async fn a_chord_with_a_failing_member_fails_with_chord_error(app: App) {
    let header = vec![
        Sig::from(add::s(1, 1)),
        Sig::from(explode::s(7)),
        Sig::from(add::s(2, 2)),
    ];
    // The body's errback is sent when the chord fails, with the body's id.
    let errback_id = uuid_like();
    let errback = Sig::task::<echo>(vec![]).task_id(errback_id.clone());
    let body = chord(header, Sig::task::<tsum>(vec![]).link_error(errback))
        .apply_async(&app)
        .await
        .expect("sent");
    let Err(ResultError::Task(e)) = body.get(WAIT).await else {
        panic!("the body fails");
    };
    assert_eq!(e.exc_type, "ChordError");
    assert!(
        e.message.contains("Dependency") && e.message.contains("exploded on 7"),
        "{}",
        e.message
    );
    let errback = celeriac::AsyncResult::<String>::new(app.clone(), errback_id);
    assert_eq!(
        errback.get(WAIT).await.expect("the body's errback ran"),
        body.id()
    );
}

async fn link_gets_the_result_and_link_error_the_failed_id(app: App) {
    let callback_id = uuid_like();
    let ok = add::s(2, 2)
        .link(Sig::task::<add>(vec![json!(10)]).task_id(callback_id.clone()))
        .apply_async(&app)
        .await
        .expect("sent");
    assert_eq!(ok.get(WAIT).await.expect("ok"), 4);
    let callback = celeriac::AsyncResult::<i64>::new(app.clone(), callback_id);
    assert_eq!(callback.get(WAIT).await.expect("callback"), 14);
    let errback_id = uuid_like();
    let failing = explode::s(1)
        .link_error(Sig::task::<echo>(vec![]).task_id(errback_id.clone()))
        .apply_async(&app)
        .await
        .expect("sent");
    assert!(failing.get(WAIT).await.is_err());
    let errback = celeriac::AsyncResult::<String>::new(app.clone(), errback_id);
    assert_eq!(errback.get(WAIT).await.expect("errback"), failing.id());
    // A new-style errback registered here runs in the worker, as (request, exc, traceback),
    // right after the failure is stored; no task is sent for it.
    let new_style = explode::s(5)
        .link_error(Sig::task::<on_error>(vec![]))
        .apply_async(&app)
        .await
        .expect("sent");
    assert!(new_style.get(WAIT).await.is_err());
    let deadline = tokio::time::Instant::now() + WAIT;
    let call = loop {
        let calls = ERRBACK_CALLS.lock().unwrap().clone();
        if let Some(call) = calls.into_iter().find(|(id, _, _)| id == new_style.id()) {
            break call;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the errback never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(call.1, "ValueError");
}

async fn a_failed_step_fails_the_rest_of_its_chain(app: App) {
    let steps = chain![
        add::s(1, 1),
        Sig::task::<explode>(vec![]),
        Sig::task::<add>(vec![json!(1)])
    ];
    let last = steps.apply_async(&app).await.expect("sent");
    let Err(ResultError::Task(e)) = last.get(WAIT).await else {
        panic!("the last step fails with the failed step's error");
    };
    assert_eq!(
        (e.exc_type.as_str(), e.message.as_str()),
        ("ValueError", "exploded on 2")
    );
}

async fn map_starmap_and_chunks_run_in_the_worker(app: App) {
    let doubled = double::map([1, 2, 3])
        .expect("map")
        .apply_async(&app)
        .await
        .expect("sent");
    assert_eq!(doubled.get(WAIT).await.expect("map"), vec![2, 4, 6]);
    let sums = add::starmap([[1, 2], [3, 4]])
        .expect("starmap")
        .apply_async(&app)
        .await
        .expect("sent");
    assert_eq!(sums.get(WAIT).await.expect("starmap"), vec![3, 7]);
    let pairs: Vec<[i64; 2]> = (0..5).map(|i| [i, 10]).collect();
    let chunked = add::chunks(pairs, 2)
        .expect("chunks")
        .apply_async(&app)
        .await
        .expect("sent");
    assert_eq!(
        chunked.get(WAIT).await.expect("chunks"),
        vec![vec![10, 11], vec![12, 13], vec![14]]
    );
    // `celery.chunks` sent as a task (as a Python chain step does) runs in its place.
    let mut kwargs = celeriac::serde_json::Map::new();
    kwargs.insert("task".into(), Sig::task::<add>(vec![]).to_value());
    kwargs.insert("it".into(), json!([[1, 2], [3, 4]]));
    kwargs.insert("n".into(), json!(1));
    let by_name = Sig::by_name("celery.chunks", vec![], kwargs)
        .apply_async(&app)
        .await
        .expect("sent");
    assert_eq!(
        by_name.get(WAIT).await.expect("celery.chunks"),
        json!([[3], [7]])
    );
}

async fn a_task_replaced_by_a_group_returns_the_groups_results(app: App) {
    let fanned = fan_out::delay(&app, 4).await.expect("sent");
    assert_eq!(fanned.get(WAIT).await.expect("replaced"), vec![0, 2, 4, 6]);
}

async fn immutable_steps_and_step_options(app: App) {
    let steps = chain![
        add::s(1, 1),
        add::si(5, 5),
        Sig::task::<add>(vec![json!(1)])
            .queue("other")
            .countdown(Duration::from_millis(200))
    ];
    let last = steps.apply_async(&app).await.expect("sent");
    assert_eq!(
        last.get(WAIT).await.expect("chain"),
        11,
        "the immutable step ignored 2"
    );
    let meta = last.meta().await.expect("meta").expect("stored");
    assert_eq!(meta.extended.expect("result_extended").queue, "other");
}

async fn nested_canvases(app: App) {
    // chord([chain(add(1, 1), add(_, 1)), add(2, 2)], tsum) = 3 + 4.
    let header = vec![
        chain![add::s(1, 1), Sig::task::<add>(vec![json!(1)])],
        Sig::from(add::s(2, 2)),
    ];
    let body = chord(header, Sig::task::<tsum>(vec![]))
        .apply_async(&app)
        .await
        .expect("sent");
    assert_eq!(body.get(WAIT).await.expect("nested"), 7);
    // A chain whose middle is a group: the group becomes a chord into the next step.
    let steps = chain![
        add::s(1, 1),
        group([
            Sig::task::<add>(vec![json!(1)]),
            Sig::task::<add>(vec![json!(2)])
        ]),
        Sig::task::<tsum>(vec![])
    ];
    let last = steps.apply_async(&app).await.expect("sent");
    assert_eq!(last.get(WAIT).await.expect("chain with group"), 7);
    // A group inside a chain inside a chord: the chain is a chord of its own, whose body
    // takes its place in the outer chord. tsum([tsum([2, 4]), 6]) = 12, as in Python.
    let inner = chain![
        group([Sig::from(add::s(1, 1)), Sig::from(add::s(2, 2))]),
        Sig::task::<tsum>(vec![])
    ];
    let outer = chord([inner, Sig::from(add::s(3, 3))], Sig::task::<tsum>(vec![]));
    let total = outer.apply_async(&app).await.expect("sent");
    assert_eq!(total.get(WAIT).await.expect("chord of a chord"), 12);
    // The inner chord fails: its body's ChordError is counted in the outer chord, whose
    // body then fails too (rather than wait forever).
    let inner = chain![
        group([Sig::from(add::s(1, 1)), Sig::from(explode::s(9))]),
        Sig::task::<tsum>(vec![])
    ];
    let outer = chord([inner, Sig::from(add::s(3, 3))], Sig::task::<tsum>(vec![]));
    let total = outer.apply_async(&app).await.expect("sent");
    let Err(ResultError::Task(e)) = total.get(WAIT).await else {
        panic!("the outer body fails");
    };
    assert_eq!(e.exc_type, "ChordError", "{e:?}");
}

async fn a_chord_of_ten_thousand_members_completes(app: App) {
    let body = chord((0..10_000).map(|i| add::s(i, 1)), Sig::task::<tsum>(vec![]))
        .apply_async(&app)
        .await
        .expect("sent");
    let expected: i64 = (1..=10_000).sum();
    assert_eq!(
        body.get(Duration::from_secs(120)).await.expect("body"),
        expected
    );
}

async fn a_chain_of_a_thousand_steps_completes(app: App) {
    // Each step carries the steps after it: the first message the most, the last none; the
    // worker takes one step per message, with no recursion.
    let steps = (0..999).fold(Sig::from(add::s(0, 0)), |chain, _| {
        chain.then(Sig::task::<add>(vec![json!(1)]))
    });
    let last = steps.apply_async(&app).await.expect("sent");
    assert_eq!(
        last.get(Duration::from_secs(120)).await.expect("chain"),
        999
    );
}

async fn a_next_step_that_cannot_be_sent_fails_the_task(app: App) {
    // A message whose remaining chain holds a signature without a task name.
    let broken = Sig::from(add::s(1, 1)).set("chain", json!([{"args": [1]}]));
    let r = broken.apply_async(&app).await.expect("sent");
    let Err(ResultError::Task(e)) = r.get(WAIT).await else {
        panic!("the task fails rather than succeed with its chain lost");
    };
    assert_eq!(e.exc_type, "OperationalError");
    assert!(
        e.message.contains("not a Celery signature"),
        "{}",
        e.message
    );
}
