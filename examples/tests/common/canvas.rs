//! Canvases across celeriac and Python Celery 5.7 workers, the same on every broker: a
//! celeriac worker consumes `rust`, a Python worker `py`, and each step names its queue.
//! Python builds canvases (tests/interop/canvas.py), then celeriac does; the workers' logs
//! say who ran each step.

use celeriac::canvas::{chord, Sig};
use celeriac::chain;
use celeriac::serde_json::{json, Map, Value};
use celeriac::ResultError;

use super::{count, interop_script, python_worker, rust_client, rust_worker, Env, WAIT};

fn on(queue: &str, task: &str, args: Value) -> Sig {
    let args = args.as_array().expect("args").clone();
    Sig::by_name(task, args, Map::new()).queue(queue)
}

/// Asserts that task `id` succeeded on the worker of `log`, once.
fn ran_on(log: &[String], id: &str, worker: &str) {
    assert_eq!(
        count(log, id, "succeeded"),
        1,
        "{id} did not succeed on the {worker} worker: {log:#?}"
    );
}

pub async fn canvases_cross_languages(e: &Env) {
    let rust = rust_worker(e, "rust", "");
    let py = python_worker(e, "py", "3600");
    let out = interop_script(e, "canvas.py", &[]);
    let built_here = celeriac_builds_canvases(e).await;
    let rust_log = rust.stop();
    let py_log = py.stop();
    python_canvases_came_out_right(&out, &rust_log, &py_log);
    let [chain_ids, py_body, rust_body] = built_here;
    ran_on(&rust_log, &chain_ids[0], "celeriac");
    ran_on(&py_log, &chain_ids[1], "Python");
    ran_on(&rust_log, &chain_ids[2], "celeriac");
    ran_on(&py_log, &py_body[0], "Python");
    ran_on(&rust_log, &rust_body[0], "celeriac");
}

fn python_canvases_came_out_right(out: &Value, rust_log: &[String], py_log: &[String]) {
    let value = |name: &str| {
        out[name]
            .get("value")
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {}", out[name]))
    };
    assert_eq!(value("chain"), json!(26), "(1 + 2 + 10) * 2");
    let ids: Vec<&str> = out["chain_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ran_on(rust_log, ids[0], "celeriac");
    ran_on(py_log, ids[1], "Python");
    ran_on(rust_log, ids[2], "celeriac");
    assert_eq!(value("group"), json!([0, 2, 4, 6, 8]));
    for (name, body_log) in [
        ("chord_rust", rust_log),
        ("chord_py_header_rust_body", rust_log),
        ("chord_rust_header_py_body", py_log),
    ] {
        assert_eq!(value(name), json!(90.0), "{name}");
        ran_on(
            body_log,
            out[format!("{name}_body")].as_str().unwrap(),
            name,
        );
    }
    assert_eq!(
        out["chord_fail"]["error"], "ChordError",
        "{}",
        out["chord_fail"]
    );
    let message = out["chord_fail"]["message"].as_str().unwrap();
    assert!(
        message.contains("Dependency") && message.contains("boom"),
        "{message}"
    );
    assert_eq!(
        value("nested_rust"),
        json!(12.0),
        "a nested canvas on celeriac workers"
    );
    assert_eq!(
        value("nested_rust"),
        value("nested_py"),
        "the same as on Python workers"
    );
    assert_eq!(value("link_rust_to_py"), json!(14));
    assert_eq!(value("link_py_to_rust"), json!(16));
    for name in ["link_error_rust_to_py", "link_error_py_to_rust"] {
        let failed = out[format!("{name}_failed")].clone();
        assert_eq!(value(name), failed, "{name}: the errback got the failed id");
    }
    assert_eq!(value("starmap"), json!([3, 7]));
    assert_eq!(value("map"), json!([0.0, 0.01]));
    assert_eq!(value("chunks"), json!([[0, 2], [4, 6], [8, 10]]));
}

/// celeriac builds: a chain Rust → Python → Rust, a chord with its header on Python and its
/// body here (and the reverse), and a chord whose Python member fails. Returns the ids the
/// logs must show: the chain's steps, the Python body, the celeriac body.
async fn celeriac_builds_canvases(e: &Env) -> [Vec<String>; 3] {
    let app = rust_client(e);
    let steps = chain![
        on("rust", "tasks.add", json!([1, 2])),
        on("py", "tasks.add", json!([10])),
        on("rust", "tasks.mul", json!([3]))
    ];
    let last = steps.apply_async(&app).await.expect("sent");
    assert_eq!(last.get(WAIT).await.expect("chain"), json!(39));
    let middle = last.parent().expect("a parent").id().to_string();
    let celeriac::Parent::Task(m) = last.parent().unwrap() else {
        panic!("a task")
    };
    let first = m.parent().expect("a parent").id().to_string();
    let chain_ids = vec![first, middle, last.id().to_string()];

    let header = |q: &str| {
        (1..=4)
            .map(|i| on(q, "tasks.add", json!([i, i])))
            .collect::<Vec<_>>()
    };
    let py_body = chord(header("rust"), on("py", "tasks.tsum", json!([])))
        .apply_async(&app)
        .await
        .expect("sent");
    assert_eq!(py_body.get(WAIT).await.expect("python body"), json!(20.0));
    let rust_body = chord(header("py"), on("rust", "tasks.tsum", json!([])))
        .apply_async(&app)
        .await
        .expect("sent");
    assert_eq!(
        rust_body.get(WAIT).await.expect("celeriac body"),
        json!(20.0)
    );

    let failing = vec![
        on("py", "tasks.add", json!([1, 1])),
        on("py", "tasks.fail", json!(["boom"])),
    ];
    let body = chord(failing, on("rust", "tasks.tsum", json!([])))
        .apply_async(&app)
        .await
        .expect("sent");
    let Err(ResultError::Task(err)) = body.get(WAIT).await else {
        panic!("a chord with a failed Python member fails");
    };
    assert_eq!(err.exc_type, "ChordError", "{err:?}");
    app.close().await.expect("closed");
    [
        chain_ids,
        vec![py_body.id().to_string()],
        vec![rust_body.id().to_string()],
    ]
}
