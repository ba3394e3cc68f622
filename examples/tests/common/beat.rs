//! celeriac beat in a Python deployment: two beats (the demo binary's `beat` verb, which
//! sends by name from a schedule file) share one lease, and a real Celery 5.7 worker runs
//! what they send.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{count, python_worker, Env, Proc, DEMO, WAIT};

const SCHEDULE: &str = r#"
[[entry]]
name = "add-every-second"
task = "tasks.add"
args = [16, 16]
every = "1s"
queue = "beat-py"
priority = 5
expires = 30

[[entry]]
name = "echo-every-2s"
task = "tasks.echo"
args = ["beat"]
kwargs = { who = "celeriac" }
every = "2s"
queue = "beat-py"
"#;

fn beat(e: &Env, schedule: &std::path::Path, name: &str) -> Proc {
    let mut cmd = Command::new(DEMO);
    cmd.args(["beat", "--lease-ttl", "3", "-n", name, "-l", "info"])
        .arg("--schedule")
        .arg(schedule)
        .args(["--broker", &e.broker, "--result-backend", &e.backend]);
    Proc::spawn(cmd, "celeriac beat")
}

pub fn celeriac_beat_drives_a_python_worker(e: &Env) {
    let worker = python_worker(e, "beat-py", "3600");
    let dir = tempfile::tempdir().unwrap();
    let schedule = dir.path().join("schedule.toml");
    std::fs::write(&schedule, SCHEDULE).unwrap();
    let beats = [beat(e, &schedule, "beat-1"), beat(e, &schedule, "beat-2")];
    let deadline = Instant::now() + WAIT;
    while count(&worker.lines(), "tasks.echo", "succeeded") < 2 {
        assert!(Instant::now() < deadline, "{:#?}", worker.lines());
        std::thread::sleep(Duration::from_millis(50));
    }
    let beat_logs: Vec<Vec<String>> = beats.into_iter().map(Proc::stop).collect();
    let lines = worker.stop();
    let leaders = beat_logs
        .iter()
        .filter(|log| log.iter().any(|l| l.contains(" leads schedule ")))
        .count();
    assert_eq!(leaders, 1, "{beat_logs:#?}");
    let added: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("tasks.add[") && l.contains("succeeded"))
        .collect();
    assert!(added.len() >= 3, "{lines:#?}");
    assert!(added.iter().all(|l| l.ends_with(": 32")), "{added:#?}");
    let echoed = lines
        .iter()
        .filter(|l| l.contains("tasks.echo[") && l.contains("succeeded"));
    for line in echoed {
        assert!(
            line.contains("'args': ['beat'], 'kwargs': {'who': 'celeriac'}"),
            "{line}"
        );
    }
}
