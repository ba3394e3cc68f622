//! Pidfiles as Celery's `celery.platforms.Pidfile`/`create_pidlock`: the file holds the pid
//! and a newline, is created exclusively, and is removed when its worker exits. A pidfile
//! whose process is gone (or that does not hold a pid) is stale and is taken over; one that
//! names a live process stops a second worker from starting.
//!
//! "Live" means `kill(pid, 0)` succeeds and, on Linux, the process is not a zombie. A pid
//! that the system has since given to an unrelated process of the same user looks live:
//! that is the limit of any pidfile (Celery's included).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A pidfile's path (nothing is read or written until asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pidfile {
    path: PathBuf,
}

/// What a pidfile holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Content {
    Missing,
    Pid(u32),
    /// Not a pid and a newline (Celery: "Partial or invalid pidfile").
    Broken(String),
}

/// A pidfile found stale and removed, for the caller to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stale {
    pub path: PathBuf,
    pub content: Content,
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.content {
            Content::Pid(pid) => write!(
                f,
                "stale pidfile {path}: process {pid} is not running; removed it"
            ),
            Content::Broken(text) => write!(
                f,
                "broken pidfile {path} (holds {text:?}, not a pid); removed it"
            ),
            Content::Missing => write!(f, "pidfile {path} vanished"),
        }
    }
}

impl Pidfile {
    pub(crate) fn new(path: impl Into<PathBuf>) -> Pidfile {
        Pidfile { path: path.into() }
    }

    pub(crate) fn read(&self) -> Result<Content, String> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Content::Missing),
            Err(e) => return Err(format!("cannot read pidfile {}: {e}", self.path.display())),
        };
        let line = text.split_inclusive('\n').next().unwrap_or("");
        match line.strip_suffix('\n').map(|l| l.trim().parse::<u32>()) {
            Some(Ok(pid)) if pid > 0 => Ok(Content::Pid(pid)),
            _ => Ok(Content::Broken(text)),
        }
    }

    /// Removes the file when it names no live process (Celery's `remove_if_stale`; a file
    /// naming this very process counts as stale). `Err` names the live process.
    pub(crate) fn remove_if_stale(&self) -> Result<Option<Stale>, String> {
        let content = self.read()?;
        if let Content::Pid(pid) = content {
            if pid != std::process::id() && process_alive(pid) {
                return Err(format!(
                    "pidfile {} already exists: seems we're already running (pid {pid})",
                    self.path.display()
                ));
            }
        }
        if content == Content::Missing {
            return Ok(None);
        }
        self.remove()?;
        Ok(Some(Stale {
            path: self.path.clone(),
            content,
        }))
    }

    pub(crate) fn remove(&self) -> Result<(), String> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(format!(
                "cannot remove pidfile {}: {e}",
                self.path.display()
            )),
            _ => Ok(()),
        }
    }

    /// Takes the pidfile for this process (Celery's `create_pidlock`): a stale one is
    /// removed and reported through `on_stale`, a live one is an error naming its pid.
    pub(crate) fn lock(self, on_stale: impl FnOnce(&Stale)) -> Result<Pidlock, String> {
        if let Some(stale) = self.remove_if_stale()? {
            on_stale(&stale);
        }
        self.write_own_pid()?;
        Ok(Pidlock { file: self })
    }

    /// Creates the file exclusively (`O_EXCL`, mode 0644) with this process's pid.
    fn write_own_pid(&self) -> Result<(), String> {
        let content = format!("{}\n", std::process::id());
        let failed = |e: std::io::Error| {
            if e.kind() == ErrorKind::AlreadyExists {
                format!(
                    "pidfile {} was created by another process meanwhile",
                    self.path.display()
                )
            } else {
                format!("cannot create pidfile {}: {e}", self.path.display())
            }
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&self.path)
            .map_err(failed)?;
        file.write_all(content.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(failed)?;
        if fs::read_to_string(&self.path).ok().as_deref() != Some(content.as_str()) {
            return Err(format!(
                "pidfile {}: content does not match at re-read",
                self.path.display()
            ));
        }
        Ok(())
    }
}

/// A pidfile this process holds; dropping it removes the file.
#[derive(Debug)]
pub(crate) struct Pidlock {
    file: Pidfile,
}

impl Drop for Pidlock {
    fn drop(&mut self) {
        // Only our own pid is removed: never a file another process has taken over since.
        if self.file.read() == Ok(Content::Pid(std::process::id())) {
            let _ = self.file.remove();
        }
    }
}

/// `worker --pidfile PATH`: the lock the worker holds while it runs (`None` without the flag).
/// `PATH` expands `%n`/`%i`... for node `nodename`; taking over a stale file logs a warning.
pub(crate) fn lock_for_worker(
    path: Option<&Path>,
    nodename: &str,
) -> Result<Option<Pidlock>, String> {
    let Some(path) = crate::nodename::worker_pidfile(path, nodename)? else {
        return Ok(None);
    };
    Pidfile::new(path)
        .lock(|stale| tracing::warn!("{stale}"))
        .map(Some)
}

/// Whether `pid` is a running process: `kill(pid, 0)` succeeds (EPERM, a pid now owned by
/// another user, counts as gone, as in Celery) and it is not a zombie waiting to be reaped.
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    !is_zombie(pid)
}

/// Linux: the process state in `/proc/<pid>/stat` is `Z` (exited, not yet reaped).
fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`: comm may hold spaces and parentheses, the state follows the
    // last `)`.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "Z")
}

/// Sends `sig` to `pid` when it is alive; `false` when it is not (or the signal failed).
pub(crate) fn signal(pid: u32, sig: i32) -> bool {
    if !process_alive(pid) {
        return false;
    }
    // SAFETY: plain kill(2) on a pid checked just above.
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_pidfile_holds_the_pid_and_goes_away_with_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pid");
        let lock = Pidfile::new(&path)
            .lock(|_| panic!("nothing stale"))
            .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(lock);
        assert!(!path.exists());
    }

    #[test]
    fn stale_and_broken_pidfiles_are_taken_over_live_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pid");
        let dead = dead_pid();
        for (content, expected) in [
            (format!("{dead}\n"), Content::Pid(dead)),
            ("12".to_string(), Content::Broken("12".into())),
            ("x\n".to_string(), Content::Broken("x\n".into())),
        ] {
            fs::write(&path, &content).unwrap();
            let mut reported = None;
            let lock = Pidfile::new(&path)
                .lock(|s| reported = Some(s.clone()))
                .unwrap();
            assert_eq!(reported.unwrap().content, expected);
            drop(lock);
        }
        let parent = std::os::unix::process::parent_id();
        fs::write(&path, format!("{parent}\n")).unwrap();
        let err = Pidfile::new(&path).lock(|_| {}).unwrap_err();
        assert!(
            err.contains(&path.display().to_string()) && err.contains(&parent.to_string()),
            "{err}"
        );
        assert_eq!(Pidfile::new(&path).read().unwrap(), Content::Pid(parent));
    }

    #[test]
    fn liveness_sees_through_zombies() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it has exited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while process_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} stays alive");
            std::thread::yield_now();
        }
        assert!(!signal(pid, 0));
        child.wait().unwrap();
        assert!(!process_alive(pid));
        assert!(process_alive(std::process::id()));
    }
}
