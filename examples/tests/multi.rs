//! `multi`, `worker --detach` and `worker --pidfile` with real processes: the demo binary's
//! detached workers on one SQLite file in a temp dir that also holds their pidfiles and
//! logfiles. Whatever a test leaves running (it failed half-way) is killed when its site is
//! dropped.

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const DEMO: &str = env!("CARGO_BIN_EXE_celeriac-demo");
const WAIT: Duration = Duration::from_secs(30);

/// Polls `cond` until it holds; panics naming `what` after [`WAIT`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process that exists and is not a zombie.
fn alive(pid: u32) -> bool {
    if unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    state != Some("Z")
}

/// A pid no process has: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A command's outcome with its output as text.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok: {}\n--- stdout\n{}--- stderr\n{}",
            self.ok, self.stdout, self.stderr
        )
    }
}

/// A temp dir with the store, pidfiles (`<name>.pid`) and logfiles (`<name>.log`).
struct Site {
    dir: tempfile::TempDir,
    url: String,
    /// Every worker pid seen, killed on drop if still running.
    seen: RefCell<Vec<u32>>,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("shared.db").display());
        Site {
            dir,
            url,
            seen: RefCell::new(Vec::new()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DEMO);
        c.args(args)
            .env("CELERIAC_BROKER_URL", &self.url)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    fn demo(&self, args: &[&str]) -> Run {
        self.command(args).output().expect("demo runs").into()
    }

    /// `multi VERB ARGS...` with this site's pidfiles and logfiles.
    fn multi(&self, verb: &str, args: &[&str]) -> Run {
        let pidfile = format!("--pidfile={}", self.dir.path().join("%n.pid").display());
        let logfile = format!("--logfile={}", self.dir.path().join("%n%I.log").display());
        let mut all = vec!["multi", verb];
        all.extend_from_slice(args);
        all.extend([pidfile.as_str(), logfile.as_str(), "-l", "info"]);
        self.demo(&all)
    }

    fn pidfile(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pid"))
    }

    /// The pid in `<name>.pid`, remembered for the clean-up.
    fn pid(&self, name: &str) -> u32 {
        let path = self.pidfile(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no pidfile {}: {e}", path.display()));
        let pid = text.trim().parse().expect("a pid");
        self.seen.borrow_mut().push(pid);
        pid
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn wait_ready(&self, name: &str) {
        wait_until(&format!("{name} to log `worker ready`"), || {
            self.log(name).contains("worker ready")
        });
    }

    /// Sends `tasks.add(2, 3)` (to `queue` if given) and waits for its result: the task id.
    fn add(&self, queue: Option<&str>) -> String {
        let mut args = vec!["call", "tasks.add", "--args", "[2, 3]"];
        if let Some(q) = queue {
            args.extend(["--queue", q]);
        }
        let call = self.demo(&args);
        assert!(call.ok, "{call:?}");
        let id = call.stdout.trim().to_string();
        let result = self.demo(&["result", &id, "--wait", "30"]);
        assert!(
            result.ok && result.stdout.contains("\"result\": 5"),
            "{result:?}"
        );
        id
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for pid in self.seen.borrow().iter().copied().filter(|&p| alive(p)) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

const THREE: [&str; 3] = ["celery1", "celery2", "celery3"];

#[test]
fn start_3_runs_three_workers_and_stopwait_leaves_no_process_behind() {
    let site = Site::new();
    let start = site.multi("start", &["3", "-c", "1"]);
    assert!(start.ok, "{start:?}");
    assert_eq!(start.stdout.matches(": OK").count(), 3, "{start:?}");
    let pids: Vec<u32> = THREE.iter().map(|n| site.pid(n)).collect();
    for (name, &pid) in THREE.iter().zip(&pids) {
        assert!(alive(pid), "{name} ({pid}) is not running");
        site.wait_ready(name);
    }

    let id = site.add(None);
    let succeeded = format!("{id}] succeeded");
    let ran = || -> Vec<&str> {
        THREE
            .into_iter()
            .filter(|n| site.log(n).contains(&succeeded))
            .collect()
    };
    wait_until("a node to log the task's success", || !ran().is_empty());
    assert_eq!(ran().len(), 1, "task {id} ran on {:?}", ran());

    let stop = site.multi("stopwait", &["3"]);
    assert!(stop.ok, "{stop:?}");
    assert!(stop.stdout.contains("> Waiting for 3 nodes"), "{stop:?}");
    // stopwait returns once each worker has exited, and each removed its pidfile.
    for (name, &pid) in THREE.iter().zip(&pids) {
        assert!(!alive(pid), "{name} ({pid}) still runs after stopwait");
        assert!(!site.pidfile(name).exists(), "{name}'s pidfile is left");
        assert!(
            site.log(name).contains("worker stopped"),
            "{}",
            site.log(name)
        );
    }
}

#[test]
fn options_for_one_node_reach_that_node_only() {
    let site = Site::new();
    let show = site.demo(&[
        "multi",
        "show",
        "3",
        "-c",
        "1",
        "-c:1",
        "3",
        "-Q:2-3",
        "images,celery",
        "--hostname=h",
    ]);
    assert!(show.ok, "{show:?}");
    let lines: Vec<&str> = show.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{show:?}");
    assert!(lines[0].starts_with(DEMO) && lines[0].contains(" worker --detach "));
    assert!(
        lines[0].contains(" -c 3 ") && !lines[0].contains("-Q"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("-n celery1@h "), "{}", lines[0]);
    for line in &lines[1..] {
        assert!(line.contains(" -c 1 -Q images,celery "), "{line}");
    }

    let start = site.multi("start", &["2", "-c", "1", "-c:1", "3", "-Q:2", "images"]);
    assert!(start.ok, "{start:?}");
    site.pid("celery1");
    site.pid("celery2");
    site.wait_ready("celery1");
    site.wait_ready("celery2");
    let (one, two) = (site.log("celery1"), site.log("celery2"));
    assert!(one.contains(".> concurrency: 3 "), "{one}");
    assert!(two.contains(".> concurrency: 1 "), "{two}");
    assert!(
        two.contains(".> images") && !one.contains(".> images"),
        "{one}\n{two}"
    );

    let id = site.add(Some("images"));
    wait_until("celery2 to log the task's success", || {
        site.log("celery2").contains(&format!("{id}] succeeded"))
    });
    assert!(!site.log("celery1").contains(&id));
    assert!(site.multi("stopwait", &["2"]).ok);
}

#[test]
fn kill_sends_sigkill_and_removes_the_pidfiles_the_workers_cannot() {
    let site = Site::new();
    assert!(site.multi("start", &["w1", "w2"]).ok);
    let pids = [site.pid("w1"), site.pid("w2")];
    site.wait_ready("w1");
    site.wait_ready("w2");

    let kill = site.multi("kill", &["w1", "w2"]);
    assert!(kill.ok, "{kill:?}");
    for (name, pid) in ["w1", "w2"].into_iter().zip(pids) {
        assert!(
            kill.stdout
                .contains(&format!("Sending KILL to node {name}@")),
            "{kill:?}"
        );
        assert!(!alive(pid), "{name} ({pid}) survived kill");
        assert!(!site.pidfile(name).exists(), "{name}'s pidfile is left");
        // No warm shutdown: the worker never saw a SIGTERM.
        assert!(
            !site.log(name).contains("worker stopped"),
            "{}",
            site.log(name)
        );
    }
    let stop = site.multi("stop", &["w1", "w2"]);
    assert_eq!(stop.stdout.matches(": DOWN").count(), 2, "{stop:?}");
}

#[test]
fn a_stale_pidfile_is_reported_and_replaced() {
    let site = Site::new();
    let dead = dead_pid();
    std::fs::write(site.pidfile("celery1"), format!("{dead}\n")).unwrap();
    let stop = site.multi("stop", &["1"]);
    assert!(stop.ok, "{stop:?}");
    assert!(
        stop.stdout.contains("DOWN (stale pidfile")
            && stop
                .stdout
                .contains(&format!("process {dead} is not running")),
        "{stop:?}"
    );
    assert!(!site.pidfile("celery1").exists(), "the stale pidfile stays");

    std::fs::write(site.pidfile("celery1"), format!("{dead}\n")).unwrap();
    let start = site.multi("start", &["1"]);
    assert!(start.ok, "{start:?}");
    assert!(start.stdout.contains("stale pidfile"), "{start:?}");
    let pid = site.pid("celery1");
    assert!(pid != dead && alive(pid));
    site.wait_ready("celery1");
    assert!(site.multi("stopwait", &["1"]).ok);
    assert!(!alive(pid));
}

#[test]
fn worker_pidfile_refuses_a_live_one_and_goes_away_at_exit() {
    let site = Site::new();
    let pidfile = site.dir.path().join("%n.pid").display().to_string();
    let args = ["worker", "-n", "first@%h", "--pidfile", &pidfile];
    let mut first = site
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    site.seen.borrow_mut().push(first.id());
    let path = site.pidfile("first");
    wait_until("the first worker's pidfile", || {
        std::fs::read_to_string(&path).ok() == Some(format!("{}\n", first.id()))
    });

    let second = site.demo(&args);
    assert!(!second.ok, "{second:?}");
    assert!(
        second.stderr.contains(&path.display().to_string())
            && second.stderr.contains(&format!("pid {}", first.id())),
        "{second:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}\n", first.id())
    );

    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = first.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!path.exists(), "the pidfile outlives its worker");
}

#[test]
fn detach_returns_once_the_worker_runs_in_a_session_of_its_own() {
    let site = Site::new();
    let pidfile = site.dir.path().join("%n.pid").display().to_string();
    let logfile = site.dir.path().join("%n%I.log").display().to_string();
    let run = site.demo(&[
        "worker",
        "-D",
        "-n",
        "solo@%h",
        "-c",
        "2",
        "--pidfile",
        &pidfile,
        "-f",
        &logfile,
    ]);
    assert!(run.ok, "{run:?}");
    // Returned after the worker wrote its pidfile.
    let pid = site.pid("solo");
    assert!(alive(pid));
    assert_eq!(
        unsafe { libc::getsid(pid as i32) },
        pid as i32,
        "no new session"
    );
    site.wait_ready("solo");
    // Its standard output (the banner) goes to the logfile too.
    assert!(
        site.log("solo").contains(".> concurrency: 2 "),
        "{}",
        site.log("solo")
    );

    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_until("the detached worker to exit", || !alive(pid));
    assert!(!site.pidfile("solo").exists());
}

#[test]
fn restart_replaces_the_nodes_one_at_a_time() {
    let site = Site::new();
    assert!(site.multi("start", &["2"]).ok);
    let old = [site.pid("celery1"), site.pid("celery2")];
    site.wait_ready("celery1");
    site.wait_ready("celery2");

    let restart = site.multi("restart", &["2"]);
    assert!(restart.ok, "{restart:?}");
    // Rolling: node 1 is back before node 2 is signalled.
    let out = &restart.stdout;
    let back1 = out
        .find("> Restarting node celery1@")
        .expect("node 1 restarted");
    let term2 = out.find("celery2@").expect("node 2 named");
    assert!(back1 < term2, "{restart:?}");
    let new = [site.pid("celery1"), site.pid("celery2")];
    for (old, new) in old.into_iter().zip(new) {
        assert!(!alive(old) && alive(new) && old != new);
    }
    for name in ["celery1", "celery2"] {
        wait_until(&format!("{name} ready twice"), || {
            site.log(name).matches("worker ready").count() == 2
        });
    }
    assert!(site.multi("stopwait", &["2"]).ok);
    assert!(new.iter().all(|&p| !alive(p)));
}

#[test]
fn stopwait_right_after_start_is_still_a_warm_shutdown() {
    let site = Site::new();
    assert!(site.multi("start", &["2"]).ok);
    let pids = [site.pid("celery1"), site.pid("celery2")];
    // No waiting for `worker ready`: a worker whose pid is in its pidfile handles SIGTERM.
    let stop = site.multi("stopwait", &["2"]);
    assert!(stop.ok, "{stop:?}");
    for (name, pid) in ["celery1", "celery2"].into_iter().zip(pids) {
        assert!(!alive(pid));
        let log = site.log(name);
        assert!(log.contains("SIGTERM received: warm shutdown"), "{log}");
        assert!(log.contains("worker stopped"), "{log}");
        assert!(!site.pidfile(name).exists());
    }
}

#[test]
fn process_pool_children_expand_i_to_their_own_index() {
    let site = Site::new();
    let logfile = site.dir.path().join("%n%I.log").display().to_string();
    let args = [
        "worker", "-n", "kid@%h", "-P", "process", "-c", "2", "-f", &logfile,
    ];
    let mut worker = site.command(&args).spawn().unwrap();
    site.seen.borrow_mut().push(worker.id());
    site.wait_ready("kid");
    // Celery numbers pool processes from 1: `%I` is `-1`, `-2` in them, empty in the worker.
    for child in ["kid-1", "kid-2"] {
        let path = site.dir.path().join(format!("{child}.log"));
        wait_until(&format!("{} to exist", path.display()), || path.exists());
    }
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    assert!(worker.wait().unwrap().success());
    let names: Vec<String> = std::fs::read_dir(site.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains('%')), "{names:?}");
}
