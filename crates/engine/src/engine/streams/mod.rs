//! stdio streams on matched files: the streams the engine serves (`cookie`), the file-stream
//! algorithms they take from glibc (`fileops`) over glibc's stream layout (`libio`), their
//! mode strings (`mode`), their `freopen`, and streams glibc made itself on managed or
//! matched fds.

mod cookie;
mod fileops;
mod libio;
mod mode;

pub use cookie::{after_fopen, fdopen, is_ours};
pub use fileops::{fgetpos, fread, fseek, fsetpos, ftell, rewind};
pub use mode::Mode;

use super::fdops::{duped, forget};
use super::open::{plan_open, plan_reopen, OpenPlan};
use super::{active, open, state, FDS, STATS};
use crate::config::LogLevel;
use crate::log::{self, Cause};
use crate::stats::Fallback;
use crate::sys::{self, Errno, SysResult};
use libc::{c_char, FILE};
use std::ffi::CStr;

/// A stdio stream is being made on `fd` (`fdopen`): its I/O bypasses the hooks, so the
/// description goes buffered (counted as a fallback).
pub fn stream_opened(fd: i32) {
    if FDS.get(fd, false).is_some_and(|d| d.twin().is_some()) {
        log::once(
            LogLevel::Info,
            Cause::FdopenStream,
            format_args!("a stream was opened on a direct fd; its own reads and writes go through the page cache"),
        );
        STATS.fallback(Fallback::FdopenStream);
    }
}

/// A stream on a matched file was made by glibc itself (freopen of its own stream, a `,ccs=`
/// or a read-only `m` stream): its I/O stays buffered, which is counted and reported once.
pub fn unserved_stream(fd: i32) {
    if !active() || fd < 0 {
        return;
    }
    let mut p = [0u8; 4096];
    let Ok(n) = sys::fd_path(fd, &mut p) else { return };
    if state().cfg.wants(&p[..n]) && sys::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG) {
        STATS.fallback(Fallback::FdopenStream);
        log::once(
            LogLevel::Info,
            Cause::StreamBuffered,
            format_args!("a stream on a matched file was opened by freopen, with ,ccs= or with m; it stays buffered"),
        );
    }
}

/// `freopen` of a stream the engine made, which glibc cannot do (it crashes on cookie
/// streams): as glibc's freopen does for a file stream, under the stream's lock, a sync
/// whose failure is ignored, `_IO_file_close_it` without closing the descriptor (pending
/// writes tried once more, then the buffer and all state dropped), the new file (the old
/// one again for a NULL path) opened and put on the old number, and the same stream set up
/// for the new mode. On failure the old number is closed and the stream stays closed, as
/// glibc leaves it.
///
/// # Safety
/// `f` must be a live stream for which [`is_ours`] is true; `path` and `mode` must be NULL
/// or NUL-terminated.
pub unsafe fn freopen(path: *const c_char, mode: *const c_char, f: *mut FILE) -> Result<*mut FILE, Errno> {
    // SAFETY: forwarded from the caller.
    unsafe { libio::locked(f, || reopen_locked(path, mode, f)) }
}

unsafe fn reopen_locked(path: *const c_char, mode: *const c_char, f: *mut FILE) -> Result<*mut FILE, Errno> {
    // SAFETY: `f` is the program's live stream, locked.
    let old = unsafe { cookie::close_it(f) };
    // what glibc's freopen leaves in errno when it succeeds (a failed sync's error)
    let after_close = sys::errno();
    // SAFETY: the caller passes a NUL-terminated mode.
    let m = (!mode.is_null()).then(|| Mode::parse(unsafe { CStr::from_ptr(mode) }.to_bytes(), false)).flatten();
    let new = match m {
        None => Err(libc::EINVAL),
        Some(m) if !path.is_null() => {
            // SAFETY: the caller passes a NUL-terminated path.
            let path = unsafe { CStr::from_ptr(path) };
            // SAFETY: as above.
            open_as_program(path, m.flags, unsafe { plan_open(libc::AT_FDCWD, path.as_ptr(), m.flags) })
        }
        Some(m) => {
            let mut link = [0u8; 32];
            let n = sys::proc_fd_link(old, &mut link);
            match CStr::from_bytes_with_nul(&link[..=n]) {
                Ok(link) => open_as_program(link, m.flags, plan_reopen(old, m.flags)),
                Err(_) => Err(libc::EBADF),
            }
        }
    };
    let new = match new {
        Ok(n) => n,
        Err(e) => {
            close_as_program(old);
            return Err(e);
        }
    };
    let m = m.expect("opened with a parsed mode");
    if new != old {
        if let Err(e) = sys::dup3(new, old, m.flags & libc::O_CLOEXEC) {
            close_as_program(new);
            close_as_program(old);
            return Err(e);
        }
        duped(new, old);
        close_as_program(new);
    }
    // SAFETY: `f` is ours, closed by `close_it`, and `old` now holds the new file.
    unsafe { cookie::reopened(f, old, m) };
    sys::set_errno(after_close);
    Ok(f)
}

/// Opens `path` as the program's `open` would (the engine's plan decides whether it goes
/// direct).
fn open_as_program(path: &CStr, flags: i32, plan: Option<OpenPlan>) -> SysResult<i32> {
    let fd = sys::openat(libc::AT_FDCWD, path, flags, 0o666)?;
    match plan {
        Some(p) => open::opened(fd, p),
        None => forget(fd),
    }
    Ok(fd)
}

/// Closes `fd` as the program's `close` would.
fn close_as_program(fd: i32) {
    forget(fd);
    let _ = sys::close(fd);
}
