//! Process events: exec, spawn, fork and exit, and the statistics files written at them
//! (`crate::statsdir`: the index line of each, the counters file a fork child switches to, the
//! JSON at exit and exec).

use super::{FDS, STATE, STATS};
use crate::config::LogLevel;
use crate::log::{self, Cause};
use crate::statsdir;
use crate::{locks, mapped, readahead, sys, writing};
use std::sync::atomic::{AtomicBool, Ordering};

static EXITED: AtomicBool = AtomicBool::new(false);

/// Twins kept open across an exec, to close on exec again if the exec fails.
pub struct ExecToken(Vec<i32>);

/// True if `fd` survives an exec (no FD_CLOEXEC).
fn inherited_by_exec(fd: i32) -> bool {
    sys::fcntl(fd, libc::F_GETFD, 0).is_ok_and(|f| f & libc::FD_CLOEXEC == 0)
}

/// Before exec replaces the process: write the statistics and drop what buffered pieces
/// cached. The program's descriptions go to the new image exactly as it opened them. Twins
/// close at exec, except those of files the process holds POSIX record locks on (only locks
/// the hooks did not see, as a file's first seen lock retires its twins): closing them would
/// drop the locks, which survive exec without the library (the new image's library keeps
/// them as its own).
pub fn before_exec() -> ExecToken {
    // The buffered pieces' own pages first: what is left after them is what I/O the library
    // did not serve cached, which `at_end` counts.
    FDS.for_each(|_, d| {
        if let Some(t) = d.twin() {
            d.behind.drop_cached(t);
        }
    });
    super::desc::at_end(false);
    write_stats(false);
    let mut kept = Vec::new();
    // The mappings end with the image: their pages go now; descriptors of files the
    // process may hold record locks on stay open, as twins do.
    mapped::direct::at_end();
    for fd in mapped::at_end() {
        if sys::fcntl(fd, libc::F_SETFD, 0).is_ok() {
            kept.push(fd);
        }
    }
    FDS.for_each(|_, d| {
        let Some(t) = d.twin() else { return };
        if locks::may_hold_any()
            && !kept.contains(&t)
            && locks::holds_posix_locks(d.ident)
            && sys::fcntl(t, libc::F_SETFD, 0).is_ok()
        {
            kept.push(t);
        }
    });
    ExecToken(kept)
}

/// The exec failed: the process goes on as before.
pub fn exec_failed(t: ExecToken) {
    for fd in t.0 {
        let _ = sys::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC as libc::c_long);
    }
}

/// Before posix_spawn, system or popen: a child will share the inheritable managed
/// descriptions while this process goes on, so calls at their file position go to the
/// kernel's own calls from now on (which keep the offset atomic for both).
pub fn before_spawn() {
    FDS.for_each(|fd, d| {
        if inherited_by_exec(fd) {
            d.shared.store(true, Ordering::Relaxed);
        }
    });
}

/// When the library loads with statistics on: the index's `load` line, the counters a
/// previous image of this process left (exec), and the counters file at the first count.
pub(super) fn stats_at_load() {
    let Some(st) = STATE.get() else { return };
    let Some(tpl) = st.cfg.stats_path.as_ref() else { return };
    let inactive = if st.cfg.enabled() {
        None
    } else if st.cfg.paths.is_empty() {
        Some("S3DLIO_DIRECT_PATHS is not set")
    } else {
        Some("not one of S3DLIO_DIRECT_PROGRAMS")
    };
    statsdir::at_load(&STATS, std::os::unix::ffi::OsStrExt::as_bytes(tpl.as_os_str()), inactive);
}

/// Writes this process's statistics file (if it counted anything) and its index line, at
/// exit (`exiting`) or before exec.
fn write_stats(exiting: bool) {
    if let Err(e) = statsdir::at_end(&STATS, exiting) {
        log::once(LogLevel::Warn, Cause::StatsWrite, format_args!("{e}"));
    }
}

/// The process is ending (exit, `_exit`): drop what buffered pieces cached and write the
/// statistics.
pub fn at_exit() {
    if EXITED.swap(true, Ordering::AcqRel) || STATE.get().is_none() {
        return;
    }
    FDS.for_each(|_, d| {
        if let Some(t) = d.twin() {
            d.behind.drop_cached(t);
        }
    });
    super::desc::at_end(true);
    mapped::direct::at_end();
    mapped::at_end();
    write_stats(true);
}

pub(super) extern "C" fn atexit_handler() {
    // A panic must not unwind into libc's exit path.
    let _ = std::panic::catch_unwind(at_exit);
}

/// Before fork: no thread may be changing the registry of mappings while the process forks.
pub(super) extern "C" fn before_fork() {
    // A panic must not unwind into libc's fork.
    let _ = std::panic::catch_unwind(|| {
        mapped::before_fork();
        mapped::direct::before_fork();
    });
}

/// In the parent after fork: the child shares every description, so calls at their file
/// position go to the kernel's own calls from now on.
pub(super) extern "C" fn after_fork_parent() {
    // A panic must not unwind into libc's fork.
    let _ = std::panic::catch_unwind(|| {
        mapped::direct::after_fork_parent();
        mapped::after_fork_parent();
        FDS.for_each(|_, d| d.shared.store(true, Ordering::Relaxed));
    });
}

/// In a fork child: every lock another thread held is free again, the descriptions are
/// shared with the parent, and the statistics start from zero (the child is a new process
/// with its own file).
pub(super) extern "C" fn after_fork_child() {
    // A panic must not unwind into libc's fork.
    let _ = std::panic::catch_unwind(reset_after_fork);
}

fn reset_after_fork() {
    FDS.reset_after_fork();
    FDS.for_each(|_, d| {
        d.lock.reset_after_fork();
        d.behind.reset_after_fork();
        d.ra.reset_after_fork();
        d.shared.store(true, Ordering::Relaxed);
    });
    locks::reset_after_fork();
    super::desc::reset_after_fork();
    readahead::reset_after_fork();
    writing::reset_after_fork();
    if let Some(st) = STATE.get() {
        st.pool.reset_after_fork();
    }
    log::reset_after_fork();
    statsdir::after_fork_child(&STATS, STATE.get().is_some_and(|st| st.cfg.enabled()));
    mapped::direct::after_fork_child();
    mapped::after_fork_child();
    EXITED.store(false, Ordering::Relaxed);
}
