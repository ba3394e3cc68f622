//! The `celeriac` binary reads `celeriac.toml` from its working directory, `CELERIAC_*`
//! variables and flags, and `config show` reports each value with its source.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const CELERIAC: &str = env!("CARGO_BIN_EXE_celeriac");

const FILE: &str = r#"
broker_url = "redis://user:hunter2@127.0.0.1:6379/4"
worker_concurrency = 3
task_default_queue = "from-file"

[task_routes]
"tasks.sleep" = { queue = "slow" }
"tasks.*" = "fast"
"#;

/// Runs `celeriac` in `dir` with only the given environment (so the caller's CELERIAC_*
/// variables cannot leak in).
fn celeriac(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(CELERIAC)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("celeriac runs")
}

fn dir_with_config(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("celeriac.toml"), text).unwrap();
    dir
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "celeriac failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn config_show_reports_each_value_and_its_source() {
    let dir = dir_with_config(FILE);
    let env = [
        ("CELERIAC_WORKER_CONCURRENCY", "6"),
        ("CELERIAC_TEST_REDIS_URL", "redis://not-a-setting"),
    ];
    let args = [
        "--result-backend",
        "redis://:pw@127.0.0.1:6379/5",
        "config",
        "show",
        "--json",
    ];
    let shown: Value = serde_json::from_str(&stdout(&celeriac(dir.path(), &args, &env))).unwrap();
    let setting = |name: &str| (shown[name]["value"].clone(), shown[name]["source"].clone());

    assert_eq!(
        setting("broker_url"),
        (
            "redis://user:***@127.0.0.1:6379/4".into(),
            "file celeriac.toml".into()
        )
    );
    assert_eq!(
        setting("result_backend"),
        (
            "redis://:***@127.0.0.1:6379/5".into(),
            "flag --result-backend".into()
        )
    );
    assert_eq!(
        setting("worker_concurrency"),
        (6.into(), "env CELERIAC_WORKER_CONCURRENCY".into())
    );
    assert_eq!(
        setting("task_default_queue"),
        ("from-file".into(), "file celeriac.toml".into())
    );
    assert_eq!(
        setting("task_routes").0,
        serde_json::json!({"tasks.sleep": "slow", "tasks.*": "fast"})
    );
    assert_eq!(setting("timezone"), ("UTC".into(), "default".into()));
}

#[test]
fn config_show_as_text_is_one_line_per_setting_with_secrets_redacted() {
    let dir = dir_with_config(FILE);
    let text = stdout(&celeriac(dir.path(), &["config", "show"], &[]));
    assert_eq!(
        text.lines().count(),
        celeriac::setting_names().count(),
        "{text}"
    );
    let broker = text.lines().find(|l| l.starts_with("broker_url ")).unwrap();
    assert!(
        broker.contains("\"redis://user:***@127.0.0.1:6379/4\""),
        "{text}"
    );
    assert!(broker.ends_with("# file celeriac.toml"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn an_explicit_config_file_replaces_the_working_directorys() {
    let dir = dir_with_config(FILE);
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "task_default_queue = \"other\"\n").unwrap();
    let args = ["--config", "other.toml", "config", "show", "--json"];
    let shown: Value = serde_json::from_str(&stdout(&celeriac(dir.path(), &args, &[]))).unwrap();
    assert_eq!(shown["task_default_queue"]["value"], "other");
    assert_eq!(shown["task_default_queue"]["source"], "file other.toml");
    assert_eq!(shown["broker_url"]["source"], "default");
}

#[test]
fn unknown_settings_stop_the_command_with_a_suggestion() {
    let dir = dir_with_config("worker_concurency = 3\n");
    let output = celeriac(dir.path(), &["config", "show"], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown setting `worker_concurency` in file celeriac.toml: did you mean `worker_concurrency`?"),
        "{stderr}"
    );

    let empty = tempfile::tempdir().unwrap();
    let env = [("CELERIAC_TASK_ROUTE", "{}")];
    let output = celeriac(empty.path(), &["config", "show"], &env);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("did you mean `CELERIAC_TASK_ROUTES`?"),
        "{stderr}"
    );
}
