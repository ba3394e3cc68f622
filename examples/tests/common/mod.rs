//! What the Python interop tests share: processes whose output is collected, the Python
//! interpreter with Celery 5.7, the demo app's Python twin and its client script.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac::serde_json::{self, Value};

pub const WAIT: Duration = Duration::from_secs(40);
pub const DEMO: &str = env!("CARGO_BIN_EXE_celeriac-demo");

/// Where the interop suite's broker and result backend are.
pub struct Env {
    pub broker: String,
    pub backend: String,
}

pub fn interop_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/interop"))
}

pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("CELERIAC_PYTHON") {
        return PathBuf::from(p);
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"))
}

/// Panics with the way out when the interop Python is missing (the tests run only when their
/// service URL is set, i.e. in CI, where a missing interpreter is an error, not a skip).
pub fn require_python(test: &str) {
    let python = python();
    assert!(
        python.exists(),
        "{test}: {} does not exist: create it with `python3 -m venv .venv && .venv/bin/pip install \"celery[redis]==5.7.0\"` (as .ci/run does) or set CELERIAC_PYTHON",
        python.display()
    );
}

pub struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command, ready: &str) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("process starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let p = Proc { child, log };
        p.wait_for(ready);
        p
    }

    pub fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "never saw {needle:?}: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }

    pub fn stop(mut self) -> Vec<String> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "process did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        self.lines()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rust_worker(e: &Env, queues: &str, url_options: &str) -> Proc {
    let mut cmd = Command::new(DEMO);
    cmd.args([
        "worker",
        "-l",
        "info",
        "-c",
        "4",
        "-n",
        "rust@interop",
        "-Q",
        queues,
    ])
    .env("CELERIAC_BROKER_URL", format!("{}{url_options}", e.broker))
    .env("CELERIAC_RESULT_BACKEND", &e.backend)
    .env("NO_COLOR", "1");
    Proc::spawn(cmd, "worker ready")
}

pub fn python_worker(e: &Env, queues: &str, visibility: &str) -> Proc {
    let mut cmd = Command::new(python());
    cmd.args([
        "-m",
        "celery",
        "-A",
        "pyapp",
        "worker",
        "-l",
        "info",
        "-P",
        "threads",
        "-c",
        "4",
        "-n",
        "py@interop",
        "-Q",
        queues,
        "--without-mingle",
        "--without-gossip",
    ])
    .current_dir(interop_dir())
    .env("CELERIAC_INTEROP_BROKER", &e.broker)
    .env("CELERIAC_INTEROP_BACKEND", &e.backend)
    .env("CELERIAC_INTEROP_VISIBILITY", visibility);
    Proc::spawn(cmd, "ready.")
}

/// Runs tests/interop/client.py and returns its JSON line.
pub fn py_client(e: &Env, args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg("client.py")
        .args(args)
        .current_dir(interop_dir())
        .env("CELERIAC_INTEROP_BROKER", &e.broker)
        .env("CELERIAC_INTEROP_BACKEND", &e.backend)
        .output()
        .expect("python client runs");
    assert!(
        out.status.success(),
        "client.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|err| panic!("client.py printed {text:?}: {err}"))
}

pub fn rust_client(e: &Env) -> celeriac::App {
    celeriac_demo::app().reconfigured(|c| {
        c.broker_url = Some(e.broker.clone());
        c.result_backend = Some(e.backend.clone());
    })
}

pub fn count(lines: &[String], id: &str, word: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.contains(id) && l.contains(word))
        .count()
}
