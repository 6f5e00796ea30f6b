//! Process events: exec, spawn, fork and exit, and the statistics file written at them.

use super::{FDS, STATE, STATS};
use crate::config::LogLevel;
use crate::log::{self, Cause};
use crate::stats::{self, Fallback};
use crate::{readahead, sys, writing};
use std::sync::atomic::{AtomicBool, Ordering};

static EXITED: AtomicBool = AtomicBool::new(false);

/// Descriptors whose O_DIRECT was cleared for an exec, to restore if the exec fails.
pub struct ExecToken(Vec<i32>);

/// True if `fd` survives an exec (no FD_CLOEXEC).
fn inherited_by_exec(fd: i32) -> bool {
    sys::fcntl(fd, libc::F_GETFD, 0).is_ok_and(|f| f & libc::FD_CLOEXEC == 0)
}

/// Before exec replaces the process: write the statistics, and clear O_DIRECT on managed
/// descriptions the new image inherits (it may be a program the shim cannot enter, and a
/// shim that loads there never turns O_DIRECT on for an inherited description).
pub fn before_exec() -> ExecToken {
    write_stats();
    let mut cleared = Vec::new();
    FDS.for_each(|fd, d| {
        d.companion.drop_cached();
        if d.direct.load(Ordering::Relaxed)
            && !d.has_twin()
            && inherited_by_exec(fd)
            && sys::set_o_direct(fd, false).is_ok()
        {
            cleared.push(fd);
        }
    });
    ExecToken(cleared)
}

/// The exec failed: the process goes on, direct as before.
pub fn exec_failed(t: ExecToken) {
    for fd in t.0 {
        let _ = sys::set_o_direct(fd, true);
    }
}

/// Before posix_spawn, system or popen: a child will share the inheritable managed
/// descriptions while this process goes on, so they go buffered for good.
pub fn before_spawn() {
    FDS.for_each(|fd, d| {
        if d.direct.load(Ordering::Relaxed) && inherited_by_exec(fd) {
            log::once(
                LogLevel::Info,
                Cause::InheritedByChild,
                format_args!("direct fds inherited by a child go buffered"),
            );
            d.demote(fd, Fallback::InheritedByChild);
        }
    });
}

/// Writes this process's statistics file, if one was asked for.
pub fn write_stats() {
    let Some(st) = STATE.get() else { return };
    // A process the configuration leaves alone (no paths, or not one of
    // S3DLIO_DIRECT_PROGRAMS) has nothing to report.
    if !st.cfg.enabled() {
        return;
    }
    let Some(tpl) = st.cfg.stats_path.as_ref() else { return };
    let mut comm = [0u8; 64];
    let n = sys::read_small_file(c"/proc/self/comm", &mut comm).unwrap_or(0);
    let prog = String::from_utf8_lossy(&comm[..n]);
    let tpl = std::os::unix::ffi::OsStrExt::as_bytes(tpl.as_os_str());
    if let Err(e) = stats::write_file(&STATS, tpl, prog.trim_end()) {
        let path = stats::expand_path(tpl, sys::getpid(), &stats::hostname());
        let (path, e) = (String::from_utf8_lossy(&path), crate::probe::errno_name(e));
        log::once(LogLevel::Warn, Cause::StatsWrite, format_args!("cannot write the statistics file {path} ({e})"));
    }
}

/// The process is ending (exit, `_exit`): drop what buffered pieces cached and write the
/// statistics.
pub fn at_exit() {
    if EXITED.swap(true, Ordering::AcqRel) || STATE.get().is_none() {
        return;
    }
    FDS.for_each(|_, d| d.companion.drop_cached());
    write_stats();
}

pub(super) extern "C" fn atexit_handler() {
    // A panic must not unwind into libc's exit path.
    let _ = std::panic::catch_unwind(at_exit);
}

/// In a fork child: every lock another thread held is free again, and the statistics
/// start from zero (the child is a new process with its own file).
pub(super) extern "C" fn after_fork_child() {
    // A panic must not unwind into libc's fork.
    let _ = std::panic::catch_unwind(reset_after_fork);
}

fn reset_after_fork() {
    FDS.reset_after_fork();
    FDS.for_each(|_, d| {
        d.lock.reset_after_fork();
        d.companion.reset_after_fork();
        d.ra.reset_after_fork();
    });
    readahead::reset_after_fork();
    writing::reset_after_fork();
    if let Some(st) = STATE.get() {
        st.pool.reset_after_fork();
    }
    STATS.reset();
    stats::reset_after_fork();
    log::reset_after_fork();
    EXITED.store(false, Ordering::Relaxed);
}
