//! Several `celeriac beat` processes on one broker: exactly one sends each tick, and a
//! leader killed with SIGKILL is replaced within the lease TTL plus a second. On the
//! embedded store and on Redis (`CELERIAC_TEST_REDIS_URL`, its own key prefix), in real
//! time: the loop itself is tested on a driven clock in `celeriac-beat/tests/scheduler.rs`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CELERIAC: &str = env!("CARGO_BIN_EXE_celeriac");

const SCHEDULE: &str = r#"
[[entry]]
name = "tick"
task = "tests.tick"
every = "1s"
queue = "beat-ticks"
"#;

struct BeatProcess {
    child: Child,
    log: PathBuf,
}

impl BeatProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn leads(&self) -> bool {
        self.log().contains(" leads schedule ")
    }

    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn spawn_beat(dir: &Path, broker: &str, name: &str, ttl: &str) -> BeatProcess {
    let schedule = dir.join("schedule.toml");
    std::fs::write(&schedule, SCHEDULE).unwrap();
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(CELERIAC)
        .args([
            "beat",
            "--lease-ttl",
            ttl,
            "-n",
            name,
            "-l",
            "info",
            "--broker",
            broker,
        ])
        .arg("--schedule")
        .arg(&schedule)
        .current_dir(dir)
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND")
        .env("NO_COLOR", "1")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("celeriac runs");
    BeatProcess { child, log }
}

fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn ticks_sent(broker: &str) -> u64 {
    ticks_in(broker, "beat-ticks")
}

fn ticks_in(broker: &str, queue: &str) -> u64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let app = celeriac::App::builder("beat-test")
            .broker_url(broker)
            .build();
        let broker = app.broker().await.unwrap();
        let stats = broker.queue_stats().expect("queue stats");
        let lengths = stats.queue_lengths(&[queue.to_string()]).await.unwrap();
        let _ = app.close().await;
        lengths
            .iter()
            .map(|l| l.ready + l.scheduled + l.unacked)
            .sum()
    })
}

/// Three beats for 12 s with a 1 s entry: 10–14 ticks (one sender), not ~36.
fn three_beats_send_each_tick_once(broker: &str) {
    let dir = tempfile::tempdir().unwrap();
    let beats: Vec<BeatProcess> = ["beat-a", "beat-b", "beat-c"]
        .iter()
        .map(|n| spawn_beat(dir.path(), broker, n, "10"))
        .collect();
    wait_until("a leader", Duration::from_secs(20), || {
        beats.iter().any(BeatProcess::leads)
    });
    // The 12 s are the measurement itself, not a wait for something to happen.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let leaders = beats.iter().filter(|b| b.leads()).count();
    let logs: Vec<String> = beats.iter().map(BeatProcess::log).collect();
    for b in beats {
        b.stop();
    }
    let sent = ticks_sent(broker);
    assert_eq!(leaders, 1, "{logs:#?}");
    assert!((10..=14).contains(&sent), "{sent} ticks in 12 s: {logs:#?}");
}

/// SIGKILL the leader: a follower leads within TTL + 1 s and no tick goes out twice.
fn a_killed_leader_is_replaced_within_the_ttl(broker: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut beats: Vec<BeatProcess> = ["beat-a", "beat-b"]
        .iter()
        .map(|n| spawn_beat(dir.path(), broker, n, "3"))
        .collect();
    wait_until("a leader", Duration::from_secs(20), || {
        beats.iter().any(BeatProcess::leads)
    });
    let leader = beats.iter().position(BeatProcess::leads).unwrap();
    let mut dead = beats.remove(leader);
    let follower = beats.pop().unwrap();
    wait_until("the leader's first ticks", Duration::from_secs(20), || {
        ticks_sent(broker) >= 2
    });
    dead.child.kill().unwrap();
    let killed = Instant::now();
    let _ = dead.child.wait();
    let sent_before = ticks_sent(broker);
    let takeover = wait_until("the takeover", Duration::from_secs(10), || follower.leads());
    wait_until("ticks from the new leader", Duration::from_secs(20), || {
        ticks_sent(broker) - sent_before >= 3
    });
    let elapsed = killed.elapsed().as_secs_f64();
    let sent_after = ticks_sent(broker) - sent_before;
    let log = follower.log();
    follower.stop();
    assert!(
        takeover <= Duration::from_secs(4),
        "took over after {takeover:?}: {log}"
    );
    // One a second while someone led, plus at most the one missed tick on takeover.
    assert!(
        sent_after as f64 <= elapsed - takeover.as_secs_f64() + 2.0,
        "{sent_after} ticks in {elapsed:.1} s after the kill (takeover {takeover:?}): {log}"
    );
    assert!(
        sent_after >= 2,
        "{sent_after} ticks after the takeover: {log}"
    );
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("celeriac.db").display())
}

fn redis_url(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("CELERIAC_TEST_REDIS_URL") else {
        eprintln!("skipped: CELERIAC_TEST_REDIS_URL is not set");
        return None;
    };
    let prefix = format!("beat-{test}-{}-", std::process::id());
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{sep}global_keyprefix={prefix}"))
}

#[test]
fn three_beats_on_the_embedded_store_send_each_tick_once() {
    let dir = tempfile::tempdir().unwrap();
    three_beats_send_each_tick_once(&sqlite_url(dir.path()));
}

#[test]
fn three_beats_on_redis_send_each_tick_once() {
    if let Some(url) = redis_url("three") {
        three_beats_send_each_tick_once(&url);
    }
}

#[test]
fn a_killed_leader_on_the_embedded_store_is_replaced_within_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    a_killed_leader_is_replaced_within_the_ttl(&sqlite_url(dir.path()));
}

#[test]
fn a_killed_leader_on_redis_is_replaced_within_the_ttl() {
    if let Some(url) = redis_url("kill") {
        a_killed_leader_is_replaced_within_the_ttl(&url);
    }
}

/// An edited schedule file reaches the running beat: the new entry starts, the unchanged
/// one goes on.
#[test]
fn an_edited_schedule_file_is_picked_up_while_beat_runs() {
    let dir = tempfile::tempdir().unwrap();
    let broker = sqlite_url(dir.path());
    let beat = spawn_beat(dir.path(), &broker, "beat-edit", "10");
    wait_until("the first ticks", Duration::from_secs(20), || {
        ticks_sent(&broker) >= 2
    });
    let edited = format!(
        "{SCHEDULE}\n[[entry]]\nname = \"added\"\ntask = \"tests.added\"\nevery = \"1s\"\nqueue = \"beat-added\"\n"
    );
    std::fs::write(dir.path().join("schedule.toml"), edited).unwrap();
    let before = ticks_sent(&broker);
    wait_until("the added entry's ticks", Duration::from_secs(20), || {
        ticks_in(&broker, "beat-added") >= 2
    });
    let log = beat.log();
    beat.stop();
    assert!(
        ticks_sent(&broker) > before,
        "the unchanged entry stopped: {log}"
    );
    assert!(log.contains("schedule reloaded (2 entries)"), "{log}");
}
