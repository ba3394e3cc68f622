//! Starting, following and replacing the process pool's children.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::child::{CHANNEL_FD, CHILD_ENV};
use super::frame::{self, DoneFrame};
use super::{ChildEntry, InFlight, Inner, KillReason, State};
use crate::pool::Ending;

impl Inner {
    /// Starts children until as many take jobs as the pool's target.
    pub(super) fn ensure_children(self: &Arc<Self>, state: &mut State) {
        while !state.closing && state.children.iter().filter(|c| !c.retiring).count() < state.target
        {
            let index = free_index(state);
            match self.spawn_child(index) {
                Ok(child) => {
                    state.children_started += 1;
                    state.children.push(child);
                }
                Err(e) => {
                    error!("cannot start pool child {index}: {e}");
                    if !state.children.iter().any(|c| !c.retiring) {
                        for pending in std::mem::take(&mut state.pending) {
                            let _ = pending
                                .reply
                                .send(Ending::Lost(format!("cannot start a pool child: {e}")));
                        }
                    }
                    return;
                }
            }
        }
    }

    /// After a shrink: the newest idle children beyond the target exit first.
    pub(super) fn retire_extra(&self, state: &mut State) {
        let mut active = state.children.iter().filter(|c| !c.retiring).count();
        for child in state.children.iter_mut().rev() {
            if active <= state.target {
                break;
            }
            if !child.retiring {
                child.retiring = true;
                active -= 1;
                if child.queue.is_empty() {
                    child.writer = None;
                }
            }
        }
    }

    fn spawn_child(self: &Arc<Self>, index: usize) -> std::io::Result<ChildEntry> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let theirs_fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
        let command = &self.settings.command;
        let mut cmd = tokio::process::Command::new(&command.program);
        cmd.args(&command.args)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .env(CHILD_ENV, index.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // A child outlives no worker: it is killed when the worker dies.
                #[cfg(target_os = "linux")]
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::dup2(theirs_fd, CHANNEL_FD) < 0
                    || libc::fcntl(CHANNEL_FD, libc::F_SETFD, 0) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = cmd.spawn()?;
        drop(theirs);
        let pid = process.id().unwrap_or(0);
        ours.set_nonblocking(true)?;
        let (read, write) = tokio::net::UnixStream::from_std(ours)?.into_split();
        let (writer, frames) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(write, frames));
        tokio::spawn(follow(self.clone(), pid, read, process));
        info!("pool child {index} started (pid {pid})");
        Ok(ChildEntry {
            index,
            pid,
            writer: Some(writer),
            queue: Default::default(),
            tasks_done: 0,
            retiring: false,
        })
    }

    fn on_done(self: &Arc<Self>, pid: u32, done: DoneFrame) {
        let mut state = self.lock();
        let Some(child) = state.children.iter_mut().find(|c| c.pid == pid) else {
            return;
        };
        let Some(finished) = child.queue.pop_front() else {
            error!(
                "pool child {pid} answered job {} it was not given",
                done.job
            );
            return;
        };
        if finished.pending.job != done.job {
            error!(
                "pool child {pid} answered job {} while running job {}",
                done.job, finished.pending.job
            );
        }
        let _ = finished
            .pending
            .reply
            .send(Ending::Finished(done.result.into_result()));
        child.tasks_done += 1;
        if let Some(next) = child.queue.front_mut() {
            if let Some(started) = next.pending.started.take() {
                let _ = started.send(());
            }
        }
        if let Some(reason) = self.recycle_reason(child.tasks_done, done.rss_kib) {
            if !child.retiring {
                info!(
                    "pool child {} (pid {pid}) {reason}: replacing it",
                    child.index
                );
                child.retiring = true;
            }
        }
        if child.retiring && child.queue.is_empty() {
            child.writer = None;
        }
        self.ensure_children(&mut state);
        self.dispatch(&mut state);
    }

    fn recycle_reason(&self, tasks_done: u64, rss_kib: u64) -> Option<String> {
        let s = &self.settings;
        if let Some(max) = s.max_tasks_per_child.filter(|max| tasks_done >= *max) {
            return Some(format!(
                "ran {tasks_done} tasks (--max-tasks-per-child {max})"
            ));
        }
        if let Some(max) = s.max_memory_per_child_kib.filter(|max| rss_kib > *max) {
            return Some(format!(
                "uses {rss_kib} KiB resident (--max-memory-per-child {max})"
            ));
        }
        None
    }

    fn on_exit(self: &Arc<Self>, pid: u32, status: std::io::Result<ExitStatus>) {
        let how = match &status {
            Ok(status) => describe(status),
            Err(e) => format!("unknown exit ({e})"),
        };
        let mut state = self.lock();
        let Some(at) = state.children.iter().position(|c| c.pid == pid) else {
            return;
        };
        let mut child = state.children.remove(at);
        if let Some(running) = child.queue.pop_front() {
            lost(running, &how, pid);
        } else if !child.retiring {
            warn!(
                "pool child {} (pid {pid}) exited while idle: {how}",
                child.index
            );
        }
        // Jobs queued behind the running one never started: another child takes them.
        for waiting in child.queue.drain(..).rev() {
            state.pending.push_front(waiting.pending);
        }
        self.ensure_children(&mut state);
        self.dispatch(&mut state);
        drop(state);
        self.exited.notify_waiters();
    }
}

/// The ending of the job a dead child was running.
fn lost(running: InFlight, how: &str, pid: u32) {
    let ending = match running.kill {
        Some(KillReason::HardLimit(limit)) => Ending::HardTimeLimit(limit),
        Some(KillReason::Stop(reason)) => {
            info!("pool child (pid {pid}) stopped by the worker: {how}");
            Ending::Stopped(reason)
        }
        None => {
            error!("pool child (pid {pid}) died while running a task: {how}");
            Ending::Lost(format!(
                "Worker exited prematurely: {how} Job: {}.",
                running.pending.job
            ))
        }
    };
    let _ = running.pending.reply.send(ending);
}

/// The lowest child index not in use (a replacement takes its predecessor's, as Celery's
/// `%i`).
fn free_index(state: &State) -> usize {
    (0..)
        .find(|i| !state.children.iter().any(|c| !c.retiring && c.index == *i))
        .unwrap_or(0)
}

async fn write_frames(
    mut socket: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Arc<Vec<u8>>>,
) {
    let mut batch = Vec::new();
    while let Some(bytes) = frames.recv().await {
        batch.extend_from_slice(&bytes);
        while let Ok(more) = frames.try_recv() {
            batch.extend_from_slice(&more);
        }
        if socket.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    // Every sender dropped: the child is told to exit by the end of its stream.
    let _ = socket.shutdown().await;
}

async fn follow(
    inner: Arc<Inner>,
    pid: u32,
    socket: OwnedReadHalf,
    mut process: tokio::process::Child,
) {
    let mut reader = BufReader::new(socket);
    loop {
        match read_frame(&mut reader).await {
            Ok(Some(done)) => inner.on_done(pid, done),
            Ok(None) => break,
            Err(e) => {
                error!("pool child (pid {pid}) sent a bad frame ({e}): stopping it");
                signal(pid, libc::SIGKILL);
                break;
            }
        }
    }
    let status = process.wait().await;
    inner.on_exit(pid, status);
}

async fn read_frame(reader: &mut BufReader<OwnedReadHalf>) -> std::io::Result<Option<DoneFrame>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; frame::checked_len(len)?];
    reader.read_exact(&mut body).await?;
    frame::decode(&body).map(Some)
}

pub(super) fn signal(pid: u32, signal: i32) {
    if pid == 0 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's, and it
    // is not reaped before `follow` sees it exit, so it cannot name another process.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// An exit status as Celery words it: `signal 9 (SIGKILL)` or `exitcode 1`.
fn describe(status: &ExitStatus) -> String {
    match (status.signal(), status.code()) {
        (Some(sig), _) => format!("signal {sig} ({})", signal_name(sig)),
        (None, Some(code)) => format!("exitcode {code}"),
        (None, None) => "unknown exit".into(),
    }
}

pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}
