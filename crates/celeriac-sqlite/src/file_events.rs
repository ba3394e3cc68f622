//! Change events of a directory (Linux inotify): the watcher thread sleeps on them instead
//! of polling, since every commit writes the database's `-wal` file. Elsewhere, or when
//! inotify cannot be had (limits), [`FileEvents::open`] says so and the watcher polls.

use std::path::Path;
use std::time::Duration;

pub(crate) struct FileEvents {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

#[cfg(target_os = "linux")]
impl FileEvents {
    pub(crate) fn open(dir: &Path) -> Option<FileEvents> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        let dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: plain syscalls; the descriptor is owned (and closed) by `OwnedFd`.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_DELETE;
        // SAFETY: `dir` is a valid NUL-terminated path for the duration of the call.
        let watch = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir.as_ptr(), mask) };
        (watch >= 0).then_some(FileEvents { fd })
    }

    /// Waits up to `max` for a change in the directory; `true` if one came (the pending
    /// events are consumed: any one of them is reason enough to look).
    pub(crate) fn wait(&self, max: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let fd = self.fd.as_raw_fd();
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(max.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut poll, 1, millis) } <= 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a buffer we own, of its length; non-blocking, so it ends.
        while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        true
    }
}

#[cfg(not(target_os = "linux"))]
impl FileEvents {
    pub(crate) fn open(_dir: &Path) -> Option<FileEvents> {
        None
    }

    pub(crate) fn wait(&self, max: Duration) -> bool {
        std::thread::sleep(max);
        false
    }
}
