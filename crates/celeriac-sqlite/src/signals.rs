//! Change notification: waiting fetches and result waits are woken directly after this
//! process's commits, and by a watcher thread when `PRAGMA data_version` shows another
//! process committed. The watcher sleeps on inotify events of the database's directory
//! (a commit writes the `-wal` file), so an idle process costs nothing and sees another's
//! commit at once; where inotify is unavailable it polls with a backoff.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::watch;

use crate::db::Wake;
use crate::sql;

/// Wakes waiting fetches and result waits: directly after this process's commits, and via
/// the watcher thread when `PRAGMA data_version` shows another process committed.
pub(crate) struct Signals {
    pub messages: watch::Sender<u64>,
    pub results: watch::Sender<u64>,
    waiters: AtomicUsize,
    shutdown: AtomicBool,
    park: Mutex<()>,
    unpark: Condvar,
}

impl Signals {
    pub(crate) fn new() -> Self {
        Signals {
            messages: watch::channel(0).0,
            results: watch::channel(0).0,
            waiters: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            park: Mutex::new(()),
            unpark: Condvar::new(),
        }
    }

    pub fn bump(&self, wake: Wake) {
        match wake {
            Wake::Nothing => {}
            Wake::Messages => self.messages.send_modify(|v| *v += 1),
            Wake::Results => self.results.send_modify(|v| *v += 1),
        }
    }

    /// Keeps the watcher polling while the guard lives.
    pub fn waiting(self: &Arc<Self>) -> WaiterGuard {
        if self.waiters.fetch_add(1, Ordering::SeqCst) == 0 {
            let _lock = self.park.lock().unwrap_or_else(|e| e.into_inner());
            self.unpark.notify_all();
        }
        WaiterGuard(self.clone())
    }

    /// Waits at least `min` (a busy store changes all the time), then until a commit (of
    /// this process, or another's seen by the watcher) may have changed the database since
    /// `changes` was last marked seen, or `max` passed. Readers of tables without a wake of
    /// their own (remote control, events) wait with this instead of polling.
    pub async fn change_or_timeout(
        self: &Arc<Self>,
        changes: &mut watch::Receiver<u64>,
        min: Duration,
        max: Duration,
    ) {
        tokio::time::sleep(min).await;
        let _waiting = self.waiting();
        if let Ok(Err(_)) = tokio::time::timeout(max, changes.changed()).await {
            // The store is closing: no change will come.
            tokio::time::sleep(max).await;
        }
        changes.borrow_and_update();
    }

    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let _lock = self.park.lock().unwrap_or_else(|e| e.into_inner());
        self.unpark.notify_all();
    }
}

pub(crate) struct WaiterGuard(Arc<Signals>);

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// After a change (or a file event), `data_version` is polled every millisecond for this
/// long before the watcher sleeps on file events again: a commit's last write reaches the
/// `-wal` file a moment before the commit is visible.
const SETTLE: Duration = Duration::from_millis(5);
/// With file events, the longest sleep without looking (file systems that miss events).
const SAFETY_POLL: Duration = Duration::from_millis(250);

/// Watches `PRAGMA data_version` while someone waits, and bumps both signals when it moves.
/// Parks (no CPU) while nobody waits; on waking it compares with the value seen before
/// parking, so a commit made while parked is still noticed. Between changes it sleeps on
/// the file events of `dir`; without them it polls every millisecond while the database is
/// busy, backing off to 2 ms after 2 s without change and to 5 ms after 30 s.
pub(crate) fn watch_loop(
    conn: Connection,
    signals: Arc<Signals>,
    initial: Option<i64>,
    dir: &std::path::Path,
) {
    let files = crate::file_events::FileEvents::open(dir);
    if files.is_none() {
        tracing::debug!(
            "no file events for {}: polling for other processes' commits",
            dir.display()
        );
    }
    let mut last: Option<i64> = initial;
    let mut last_change = Instant::now();
    loop {
        if signals.shutdown.load(Ordering::SeqCst) {
            return;
        }
        if signals.waiters.load(Ordering::SeqCst) == 0 {
            park(&signals);
            last_change = Instant::now();
            continue;
        }
        let version = conn
            .prepare_cached(sql::DATA_VERSION)
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)));
        match version {
            Ok(v) => {
                if last.is_some_and(|l| l != v) {
                    signals.bump(Wake::Messages);
                    signals.bump(Wake::Results);
                    last_change = Instant::now();
                }
                last = Some(v);
            }
            Err(e) => {
                tracing::debug!("data_version poll failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let idle = last_change.elapsed();
        match &files {
            Some(files) if idle >= SETTLE => {
                if files.wait(SAFETY_POLL) {
                    last_change = Instant::now();
                }
            }
            _ => std::thread::sleep(poll_pause(idle)),
        }
    }
}

fn park(signals: &Signals) {
    let guard = signals.park.lock().unwrap_or_else(|e| e.into_inner());
    let _guard = signals
        .unpark
        .wait_while(guard, |_| {
            signals.waiters.load(Ordering::SeqCst) == 0 && !signals.shutdown.load(Ordering::SeqCst)
        })
        .unwrap_or_else(|e| e.into_inner());
}

/// The polling pause without file events, by how long the database has been quiet.
fn poll_pause(idle: Duration) -> Duration {
    if idle < Duration::from_secs(2) {
        Duration::from_millis(1)
    } else if idle < Duration::from_secs(30) {
        Duration::from_millis(2)
    } else {
        Duration::from_millis(5)
    }
}
