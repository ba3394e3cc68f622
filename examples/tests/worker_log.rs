//! The worker's log is plain text wherever it is not a terminal: `worker --logfile` appends to
//! the file, and standard error read through a pipe carries no colour codes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEMO: &str = env!("CARGO_BIN_EXE_celeriac-demo");
const WAIT: Duration = Duration::from_secs(30);
const ESC: char = '\x1b';

/// A demo worker on a store of its own in `dir`, whose standard error is collected.
struct Worker {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Worker {
    /// Logs at `-l info` although RUST_LOG says `error` (the flag wins), with NO_COLOR unset
    /// so that only the terminal check can keep colours out.
    fn spawn(dir: &Path, extra: &[&str]) -> Worker {
        let url = format!("sqlite://{}", dir.join("log-test.db").display());
        let mut child = Command::new(DEMO)
            .args(["worker", "-l", "info", "-c", "1"])
            .args(extra)
            .env("CELERIAC_BROKER_URL", url)
            .env("RUST_LOG", "error")
            .env_remove("NO_COLOR")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("demo worker starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Worker { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM (warm shutdown), then waits for the process to exit.
    fn stop(mut self) -> Worker {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_until("the worker to exit", || {
            self.child.try_wait().expect("worker status").is_some()
        });
        self
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn logfile_is_appended_to_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let logfile = dir.path().join("worker.log");
    std::fs::write(&logfile, "a line from an earlier run\n").unwrap();
    let worker = Worker::spawn(dir.path(), &["--logfile", logfile.to_str().unwrap()]);
    let read = || std::fs::read_to_string(&logfile).unwrap();
    wait_until("`worker ready` in the log file", || {
        read().contains("worker ready")
    });
    let worker = worker.stop();
    wait_until("the shutdown in the log file", || {
        read().contains("SIGTERM received")
    });

    let log = read();
    assert!(log.starts_with("a line from an earlier run\n"), "{log}");
    assert!(!log.contains(ESC), "colour codes in the log file: {log:?}");
    let stderr = worker.stderr();
    assert!(
        !stderr.contains("worker ready"),
        "the log went to stderr too: {stderr}"
    );
}

#[test]
fn stderr_through_a_pipe_has_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::spawn(dir.path(), &[]);
    wait_until("`worker ready` on stderr", || {
        worker.stderr().contains("worker ready")
    });
    let worker = worker.stop();
    wait_until("the shutdown on stderr", || {
        worker.stderr().contains("SIGTERM received")
    });
    let stderr = worker.stderr();
    assert!(!stderr.contains(ESC), "colour codes on a pipe: {stderr:?}");
}
