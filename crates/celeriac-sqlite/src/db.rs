//! Connections: one writer thread doing group commits, a small pool of read connections, and
//! a watcher thread noticing other processes' commits (`signals.rs`).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::signals::watch_loop;
pub(crate) use crate::signals::Signals;
use crate::sql;

/// Why a database call failed, before it is mapped to a broker or backend error.
#[derive(Debug)]
pub(crate) enum DbError {
    Sqlite(Arc<rusqlite::Error>),
    /// The writer thread is gone (store dropped or a job panicked).
    Closed,
    /// Stored data is not what it should be.
    Corrupt(String),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sqlite(Arc::new(e))
    }
}

pub(crate) type DbResult<T> = Result<T, DbError>;

/// Which in-process waiters a committed write should wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    Nothing,
    Messages,
    Results,
}

// ----------------------------------------------------------------------------------------
// Opening
// ----------------------------------------------------------------------------------------

thread_local! {
    /// The busy timeout of connections used on this thread (busy handlers are plain fns).
    static BUSY_TIMEOUT: Cell<Duration> = const { Cell::new(Duration::from_secs(5)) };
    static BUSY_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Waits for another process's lock with short sleeps first (a commit takes tens of
/// microseconds), unlike SQLite's default handler that sleeps milliseconds at once.
fn busy_handler(count: i32) -> bool {
    let now = Instant::now();
    let since = if count == 0 {
        BUSY_SINCE.with(|s| s.set(Some(now)));
        now
    } else {
        BUSY_SINCE.with(|s| s.get()).unwrap_or(now)
    };
    if now.duration_since(since) >= BUSY_TIMEOUT.with(|t| t.get()) {
        return false;
    }
    let pause = match count {
        0..=20 => Duration::from_micros(20),
        21..=200 => Duration::from_micros(200),
        _ => Duration::from_millis(2),
    };
    std::thread::sleep(pause);
    true
}

pub(crate) fn open_connection(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(64);
    let _mode: String = conn.query_row(sql::PRAGMA_WAL, [], |r| r.get(0))?;
    conn.execute_batch(sql::PRAGMA_CONNECTION)?;
    Ok(conn)
}

/// Creates the schema if missing and records its version. Refuses a newer schema.
pub(crate) fn migrate(conn: &Connection) -> DbResult<()> {
    conn.execute_batch(sql::BEGIN_IMMEDIATE)?;
    let result = (|| -> DbResult<()> {
        let version: i64 = conn.query_row(sql::GET_USER_VERSION, [], |r| r.get(0))?;
        if version > sql::SCHEMA_VERSION {
            return Err(DbError::Corrupt(format!(
                "schema version {version} is newer than this celeriac understands ({})",
                sql::SCHEMA_VERSION
            )));
        }
        conn.execute_batch(sql::CREATE_SCHEMA)?;
        if version != sql::SCHEMA_VERSION {
            conn.execute_batch(&sql::set_user_version(sql::SCHEMA_VERSION))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(conn.execute_batch(sql::COMMIT)?),
        Err(e) => {
            let _ = conn.execute_batch(sql::ROLLBACK);
            Err(e)
        }
    }
}

// ----------------------------------------------------------------------------------------
// Writer: group commit
// ----------------------------------------------------------------------------------------

/// One unit of work for the writer thread.
pub(crate) trait WriteJob: Send {
    /// Runs the job's statements (inside the group's transaction).
    fn run(&mut self, conn: &Connection);
    fn failed(&self) -> bool;
    fn wake(&self) -> Wake;
    /// Reports the outcome once the transaction committed (or failed). May return a follow-up
    /// job (e.g. to requeue messages a cancelled fetch leased).
    fn finish(
        self: Box<Self>,
        commit: Result<(), Arc<rusqlite::Error>>,
    ) -> Option<Box<dyn WriteJob>>;
}

pub(crate) type Undelivered<T> = Box<dyn FnOnce(T) -> Option<Box<dyn WriteJob>> + Send>;

struct Call<T, F> {
    f: Option<F>,
    out: Option<rusqlite::Result<T>>,
    reply: Option<oneshot::Sender<DbResult<T>>>,
    wake: Wake,
    undelivered: Option<Undelivered<T>>,
}

impl<T, F> WriteJob for Call<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(f) = self.f.take() {
            self.out = Some(f(conn));
        }
    }

    fn failed(&self) -> bool {
        matches!(self.out, Some(Err(_)))
    }

    fn wake(&self) -> Wake {
        if matches!(self.out, Some(Ok(_))) {
            self.wake
        } else {
            Wake::Nothing
        }
    }

    fn finish(
        mut self: Box<Self>,
        commit: Result<(), Arc<rusqlite::Error>>,
    ) -> Option<Box<dyn WriteJob>> {
        let out: DbResult<T> = match (self.out.take(), commit) {
            (Some(Err(e)), _) => Err(e.into()),
            (_, Err(e)) => Err(DbError::Sqlite(e)),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (None, Ok(())) => Err(DbError::Closed),
        };
        let reply = self.reply.take()?;
        match reply.send(out) {
            Ok(()) => None,
            Err(Ok(v)) => self.undelivered.take().and_then(|u| u(v)),
            Err(Err(_)) => None,
        }
    }
}

/// Most jobs committed in one transaction.
const MAX_GROUP: usize = 2048;

fn write_loop(conn: Connection, jobs: mpsc::Receiver<Box<dyn WriteJob>>, signals: Arc<Signals>) {
    let mut group: Vec<Box<dyn WriteJob>> = Vec::with_capacity(64);
    let mut follow_ups: Vec<Box<dyn WriteJob>> = Vec::new();
    loop {
        if follow_ups.is_empty() {
            match next_job(&jobs) {
                Some(job) => group.push(job),
                None => return,
            }
        } else {
            group.append(&mut follow_ups);
        }
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let commit = run_group(&conn, &mut group);
        let mut wake_messages = false;
        let mut wake_results = false;
        if commit.is_ok() {
            for job in &group {
                match job.wake() {
                    Wake::Messages => wake_messages = true,
                    Wake::Results => wake_results = true,
                    Wake::Nothing => {}
                }
            }
        }
        for job in group.drain(..) {
            if let Some(next) = job.finish(commit.clone()) {
                follow_ups.push(next);
            }
        }
        if wake_messages {
            signals.bump(Wake::Messages);
        }
        if wake_results {
            signals.bump(Wake::Results);
        }
    }
}

/// How long the writer spins for the next job before sleeping: a caller awaiting its reply
/// typically sends the next write within microseconds, and waking a sleeping thread costs
/// more than the whole commit.
const SPIN: Duration = Duration::from_micros(100);

fn next_job(jobs: &mpsc::Receiver<Box<dyn WriteJob>>) -> Option<Box<dyn WriteJob>> {
    let start = Instant::now();
    loop {
        match jobs.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if start.elapsed() < SPIN => std::thread::yield_now(),
            Err(mpsc::TryRecvError::Empty) => return jobs.recv().ok(),
        }
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs the jobs in one `BEGIN IMMEDIATE` transaction. With several jobs each runs in a
/// savepoint so a failing one is rolled back alone; a lone failing job rolls back everything.
fn run_group(
    conn: &Connection,
    group: &mut [Box<dyn WriteJob>],
) -> Result<(), Arc<rusqlite::Error>> {
    exec(conn, sql::BEGIN_IMMEDIATE).map_err(Arc::new)?;
    let single = group.len() == 1;
    let body = (|| -> rusqlite::Result<bool> {
        if single {
            group[0].run(conn);
            return Ok(!group[0].failed());
        }
        for job in group.iter_mut() {
            exec(conn, sql::SAVEPOINT)?;
            job.run(conn);
            if job.failed() {
                exec(conn, sql::ROLLBACK_TO)?;
            }
            exec(conn, sql::RELEASE)?;
        }
        Ok(true)
    })();
    match body {
        Ok(true) => match exec(conn, sql::COMMIT) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = conn.execute_batch(sql::ROLLBACK);
                Err(Arc::new(e))
            }
        },
        // The lone job failed: its own error is reported by finish().
        Ok(false) => {
            let _ = exec(conn, sql::ROLLBACK);
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch(sql::ROLLBACK);
            Err(Arc::new(e))
        }
    }
}

// ----------------------------------------------------------------------------------------
// The handle
// ----------------------------------------------------------------------------------------

/// Access to the database: writes through the writer thread, reads through a pool.
pub(crate) struct Db {
    pub path: PathBuf,
    busy_timeout: Duration,
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    pub signals: Arc<Signals>,
}

/// Read connections kept open for reuse.
const MAX_IDLE_READERS: usize = 4;

impl Db {
    pub fn open(path: &Path, busy_timeout: Duration) -> DbResult<Db> {
        let writer_conn = open_connection(path, busy_timeout)?;
        // The writer thread's busy handler; set for the opening thread too, for migrate.
        BUSY_TIMEOUT.with(|t| t.set(busy_timeout));
        writer_conn.busy_handler(Some(busy_handler))?;
        migrate(&writer_conn)?;
        let reader = open_connection(path, busy_timeout)?;
        let watcher = open_connection(path, busy_timeout)?;
        // The baseline is taken now, before anyone can wait, so no commit is ever missed.
        let initial: i64 = watcher.query_row(sql::DATA_VERSION, [], |r| r.get(0))?;
        let signals = Arc::new(Signals::new());

        let (tx, rx) = mpsc::channel::<Box<dyn WriteJob>>();
        let s = signals.clone();
        std::thread::Builder::new()
            .name("celeriac-sqlite-writer".into())
            .spawn(move || {
                BUSY_TIMEOUT.with(|t| t.set(busy_timeout));
                write_loop(writer_conn, rx, s)
            })
            .map_err(|e| DbError::Corrupt(format!("cannot start the writer thread: {e}")))?;
        let s = signals.clone();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::thread::Builder::new()
            .name("celeriac-sqlite-watch".into())
            .spawn(move || watch_loop(watcher, s, Some(initial), &dir))
            .map_err(|e| DbError::Corrupt(format!("cannot start the watcher thread: {e}")))?;

        Ok(Db {
            path: path.to_path_buf(),
            busy_timeout,
            writer: tx,
            readers: Arc::new(Mutex::new(vec![reader])),
            signals,
        })
    }

    /// Runs `f` on the writer connection inside a (group) transaction; returns once committed.
    pub async fn write<T, F>(&self, wake: Wake, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.write_or(wake, f, None).await
    }

    /// Like [`Db::write`]; when the caller stopped waiting (its future was dropped) before
    /// the result arrived, `undelivered` gets the result and may return a compensating job.
    pub async fn write_or<T, F>(
        &self,
        wake: Wake,
        f: F,
        undelivered: Option<Undelivered<T>>,
    ) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(Call {
            f: Some(f),
            out: None,
            reply: Some(tx),
            wake,
            undelivered,
        });
        self.writer.send(job).map_err(|_| DbError::Closed)?;
        rx.await.map_err(|_| DbError::Closed)?
    }

    /// Queues a write without waiting for it (used from `Drop`).
    pub fn write_detached<F>(&self, wake: Wake, f: F)
    where
        F: FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    {
        let _ = self.writer.send(detached_job(wake, f));
    }

    /// Runs `f` on a read connection on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let busy = self.busy_timeout;
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match conn {
                Some(c) => c,
                None => open_connection(&path, busy)?,
            };
            let out = f(&conn);
            if conn.is_autocommit() {
                let mut pool = readers.lock().unwrap_or_else(|e| e.into_inner());
                if pool.len() < MAX_IDLE_READERS {
                    pool.push(conn);
                }
            }
            out
        })
        .await
        .map_err(|e| DbError::Corrupt(format!("read task failed: {e}")))?
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.signals.shutdown();
    }
}

/// A write job whose outcome nobody waits for (e.g. the follow-up of a cancelled fetch).
pub(crate) fn detached_job<F>(wake: Wake, f: F) -> Box<dyn WriteJob>
where
    F: FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
{
    Box::new(Call {
        f: Some(f),
        out: None,
        reply: None,
        wake,
        undelivered: None,
    })
}
