//! The embedded, durable default broker **and** result backend of celeriac: one SQLite file in
//! WAL mode, shared by any number of processes on the machine.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use celeriac_core::broker::{Broker, ConsumerSpec, Publish, RawMessage};
//! use celeriac_sqlite::SqliteStore;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let url = format!("sqlite://{}?visibility_timeout=60", dir.path().join("celeriac.db").display());
//! let store = SqliteStore::open_url(&url).unwrap();
//!
//! store.declare_queue("celery").await.unwrap();
//! let message = RawMessage {
//!     headers: Default::default(),
//!     properties: Default::default(),
//!     content_type: "application/json".into(),
//!     content_encoding: "utf-8".into(),
//!     body: b"[[2, 3], {}, {}]".to_vec(),
//! };
//! store.publish(Publish { queue: "celery".into(), priority: None, not_before: None, message }).await.unwrap();
//!
//! let consumer = store.consumer(ConsumerSpec { queues: vec!["celery".into()], name: "w1".into(), prefetch: 0 }).await.unwrap();
//! let got = consumer.fetch(10, Duration::from_secs(1)).await.unwrap();
//! assert_eq!(got.len(), 1);
//! assert_eq!(got[0].message.body, b"[[2, 3], {}, {}]");
//! consumer.ack(&[got[0].tag.clone()]).await.unwrap();
//! consumer.close().await.unwrap();
//! # });
//! ```
//!
//! How it works:
//!
//! - Every write goes to one writer thread per store, which commits all pending requests in
//!   one `BEGIN IMMEDIATE` transaction (group commit) and answers each. Reads use a small pool
//!   of read connections on tokio's blocking pool. No SQLite call runs on a tokio worker.
//! - Ready and leased messages live in `messages`; messages with a future `not_before` live in
//!   `scheduled` until due, so a fetch never scans them.
//! - A fetch leases messages to its consumer until `now + visibility_timeout`; `keepalive`
//!   extends the leases; a lapsed lease (dead worker) makes the message deliverable again.
//! - Waiters (fetch, result wait) wake at once on this process's commits and, for other
//!   processes' commits, through a watcher thread polling `PRAGMA data_version` every
//!   millisecond while anyone waits.
//! - Beat's leader lease and each entry's last run live in the file too (`beat.rs`), so beat
//!   processes on the machine share one schedule: `beat_store()` on the broker or the result
//!   backend returns the store itself.
//! - Every SQL statement is in [`sql`] with its contract.

mod backend;
mod beat;
mod broker;
mod chord;
mod db;
mod events;
mod file_events;
mod mailbox;
mod signals;
pub mod sql;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac_core::error::{BackendError, BrokerError, ErrorKind};

use crate::db::{Db, DbError};

pub use crate::broker::SqliteConsumer;

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteOptions {
    /// How long a fetched message stays leased without a keepalive before it is delivered
    /// again. Consumers renew every third of it.
    pub visibility_timeout: Duration,
    /// How long a write waits for another process holding the write lock.
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            visibility_timeout: Duration::from_secs(30),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Broker and result backend in one SQLite file. Cheap to clone (clones share connections).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    options: SqliteOptions,
    /// Queue names known to be in the `queues` table (skips re-declaring on every publish).
    known_queues: Mutex<HashSet<String>>,
    /// When results were last pruned (ms).
    results_pruned_at: AtomicI64,
    /// When revocations were last pruned (ms).
    revoked_pruned_at: AtomicI64,
    /// When events were last pruned (ms).
    events_pruned_at: AtomicI64,
    /// When this process last looked for event monitors (ms), and whether it found one.
    monitors_checked_at: AtomicI64,
    monitors_present: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.db.path)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl SqliteStore {
    /// Opens `sqlite://PATH`: absolute when PATH starts with `/` (`sqlite:///abs/file.db`),
    /// else relative to the current directory. Query parameters: `visibility_timeout` and
    /// `busy_timeout`, in seconds (fractions allowed).
    pub fn open_url(url: &str) -> Result<Arc<SqliteStore>, BrokerError> {
        let (path, options) = parse_url(url)?;
        SqliteStore::open(path, options)
    }

    /// Opens (creating if needed) the database file at `path`.
    pub fn open(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Arc<SqliteStore>, BrokerError> {
        let path = path.as_ref();
        if path.as_os_str().is_empty() {
            return Err(BrokerError::new(
                ErrorKind::InvalidConfig,
                "sqlite database path is empty",
            ));
        }
        if options.visibility_timeout.is_zero() {
            return Err(BrokerError::new(
                ErrorKind::InvalidConfig,
                "sqlite visibility_timeout must be greater than zero",
            ));
        }
        let db = Db::open(path, options.busy_timeout).map_err(|e| match e {
            DbError::Sqlite(s) => BrokerError::with_source(
                ErrorKind::Unreachable,
                format!("cannot open sqlite database {}", path.display()),
                s,
            ),
            DbError::Corrupt(m) => BrokerError::new(
                ErrorKind::Storage,
                format!("sqlite database {}: {m}", path.display()),
            ),
            DbError::Closed => BrokerError::new(
                ErrorKind::Unreachable,
                format!("cannot open sqlite database {}", path.display()),
            ),
        })?;
        Ok(Arc::new(SqliteStore {
            inner: Arc::new(Inner {
                db,
                options,
                known_queues: Mutex::new(HashSet::new()),
                results_pruned_at: AtomicI64::new(0),
                revoked_pruned_at: AtomicI64::new(0),
                events_pruned_at: AtomicI64::new(0),
                monitors_checked_at: AtomicI64::new(0),
                monitors_present: std::sync::atomic::AtomicBool::new(false),
            }),
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.db.path
    }

    pub fn options(&self) -> &SqliteOptions {
        &self.inner.options
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.inner.db.path.display())
    }

    fn db(&self) -> &Db {
        &self.inner.db
    }

    fn broker_err(&self, op: &str, e: DbError) -> BrokerError {
        let path = self.inner.db.path.display();
        match e {
            DbError::Sqlite(s) => BrokerError::with_source(
                ErrorKind::Storage,
                format!("{op} failed on sqlite database {path}"),
                s,
            ),
            DbError::Closed => BrokerError::new(
                ErrorKind::Closed,
                format!("{op}: sqlite store {path} is closed"),
            ),
            DbError::Corrupt(m) => BrokerError::new(
                ErrorKind::Protocol,
                format!("{op} on sqlite database {path}: {m}"),
            ),
        }
    }

    fn backend_err(&self, op: &str, e: DbError) -> BackendError {
        let path = self.inner.db.path.display();
        match e {
            DbError::Sqlite(s) => BackendError::with_source(
                ErrorKind::Storage,
                format!("{op} failed on sqlite database {path}"),
                s,
            ),
            DbError::Closed => BackendError::new(
                ErrorKind::Closed,
                format!("{op}: sqlite store {path} is closed"),
            ),
            DbError::Corrupt(m) => BackendError::new(
                ErrorKind::Protocol,
                format!("{op} on sqlite database {path}: {m}"),
            ),
        }
    }

    /// True once per `every_ms` per store (for opportunistic pruning).
    fn due(cell: &AtomicI64, now: i64, every_ms: i64) -> bool {
        let last = cell.load(Ordering::Relaxed);
        now - last >= every_ms
            && cell
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

fn now_ms() -> i64 {
    celeriac_core::time::to_millis(chrono::Utc::now())
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn parse_url(url: &str) -> Result<(PathBuf, SqliteOptions), BrokerError> {
    let invalid = |m: String| BrokerError::new(ErrorKind::InvalidConfig, m);
    let rest = url.strip_prefix("sqlite://").ok_or_else(|| {
        invalid(format!(
            "expected a sqlite://PATH url (sqlite:///absolute/file.db or sqlite://relative.db), got {url:?}"
        ))
    })?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(invalid(format!(
            "sqlite url {url:?} has an empty database path"
        )));
    }
    let mut options = SqliteOptions::default();
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let secs = || -> Result<Duration, BrokerError> {
            value
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    invalid(format!(
                        "sqlite url parameter {key}={value:?} must be a positive number of seconds"
                    ))
                })
        };
        match key {
            "visibility_timeout" => options.visibility_timeout = secs()?,
            "busy_timeout" => options.busy_timeout = secs()?,
            other => {
                return Err(invalid(format!(
                    "unknown sqlite url parameter {other:?} (accepted: visibility_timeout, busy_timeout)"
                )))
            }
        }
    }
    Ok((PathBuf::from(path), options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let (p, o) = parse_url("sqlite:///tmp/x.db?visibility_timeout=1.5").unwrap();
        assert_eq!(p, PathBuf::from("/tmp/x.db"));
        assert_eq!(o.visibility_timeout, Duration::from_millis(1500));
        let (p, _) = parse_url("sqlite://rel/x.db").unwrap();
        assert_eq!(p, PathBuf::from("rel/x.db"));
        let e = parse_url("redis://x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.message().contains("sqlite://"));
        let e = parse_url("sqlite://").unwrap_err();
        assert!(e.message().contains("empty"), "{e}");
        let e = parse_url("sqlite://x.db?visibility_timeout=abc").unwrap_err();
        assert!(e.message().contains("visibility_timeout"), "{e}");
        let e = parse_url("sqlite://x.db?nope=1").unwrap_err();
        assert!(e.message().contains("nope"), "{e}");
    }
}
