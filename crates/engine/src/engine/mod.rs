//! The facade the preload library calls, one module per hook family (`open`, `rw`, `fdops`,
//! `streams`, `mapping`, `process`, as in the library's `src/`), and the process-global state
//! they share: the configuration, the bounce-buffer pool, the fd table and the statistics.
//!
//! Every entry point returns `None` when the descriptor is not the engine's (or it cannot
//! act without blocking, inside a signal handler): the shim then calls the real function,
//! so the program gets exactly the kernel's answer.

mod desc;
pub mod fdops;
pub mod mapping;
pub mod open;
pub mod process;
pub mod rw;
pub mod streams;

use crate::bufpool::BufPool;
use crate::config::{Config, LogLevel, Mode};
use crate::fdtable::FdTable;
use crate::io::Tuning;
use crate::log::{self, Cause};
use crate::readahead::{Params, Readahead};
use crate::stats::{Fallback, Stats};
use crate::sys::Errno;
use desc::Desc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

struct State {
    cfg: Config,
    pool: BufPool,
}

impl State {
    fn tuning<'a>(&self, ra: &'a Readahead) -> Tuning<'a> {
        let c = &self.cfg;
        // Windows get three quarters of the pool setting, the rest is for bounce buffers.
        let p = Params { window: c.readahead, budget: c.pool_bytes / 4 * 3 };
        Tuning {
            readahead: (c.readahead > 0).then_some((ra, p)),
            write_behind: c.write_behind,
            dontcache: c.mode == Mode::Dontcache,
        }
    }
}

static STATE: OnceLock<State> = OnceLock::new();
static READY: AtomicBool = AtomicBool::new(false);
static FDS: FdTable<Desc> = FdTable::new();
/// This process's statistics.
pub static STATS: Stats = Stats::new();
/// st_dev of filesystems that refused O_DIRECT (0 = empty slot).
static NO_DIRECT_DEVS: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

/// Reads the configuration and adopts inherited descriptors. Called once from the shim's
/// constructor; hooks that run before it pass everything through.
pub fn init() {
    // SAFETY: getauxval has no memory arguments.
    if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
        return; // setuid/setgid/capabilities: do nothing at all
    }
    // The default hook would print into the program's stderr: a panic (caught before it
    // reaches the program, which then gets the real call) is the library's bug, reported
    // once per session.
    std::panic::set_hook(Box::new(|info| {
        log::once(LogLevel::Warn, Cause::Panic, format_args!("internal error (please report it): {info}"));
    }));
    let (cfg, warnings) = Config::from_env();
    log::init(cfg.log_level, cfg.log_file.as_deref());
    for w in &warnings {
        log::config_warning(w);
    }
    let enabled = cfg.enabled();
    let pool = BufPool::new(1 << 20, cfg.pool_bytes);
    if STATE.set(State { cfg, pool }).is_err() {
        return;
    }
    // SAFETY: registering plain extern "C" functions without arguments.
    unsafe {
        libc::pthread_atfork(
            Some(process::before_fork),
            Some(process::after_fork_parent),
            Some(process::after_fork_child),
        );
        libc::atexit(process::atexit_handler);
    }
    process::stats_at_load();
    if enabled {
        mapping::init();
        open::adopt_inherited();
        READY.store(true, Ordering::Release);
        log::once(LogLevel::Info, Cause::Active, format_args!("active for {:?}", state().cfg.paths));
    }
}

fn state() -> &'static State {
    STATE.get().expect("engine used before init")
}

/// True once the engine manages anything: the shim's first check on every open.
#[inline]
pub fn active() -> bool {
    READY.load(Ordering::Acquire)
}

/// True if `fd` is managed: the shim's only cost on an unmanaged read or write.
#[inline]
pub fn is_managed(fd: i32) -> bool {
    FDS.contains(fd)
}

/// True if `fd` is managed and its reads and writes are served direct.
pub fn is_direct(fd: i32) -> bool {
    FDS.get(fd, false).is_some_and(|d| d.twin().is_some())
}

/// True if `fd` is one of the library's own descriptors, which the program never got from
/// the kernel: its close, dup2 onto it and close_range over it must leave it alone.
#[inline]
pub fn is_library_fd(fd: i32) -> bool {
    crate::libfd::is_ours(fd)
}

/// The program is about to take a POSIX record lock (fcntl F_SETLK/F_SETLKW, lockf): true
/// if the library may hold descriptors of its own of the file, which `fdops::locking` must
/// then close first (two atomic loads otherwise).
#[inline]
pub fn lock_taken() -> bool {
    crate::locks::note_lock_taken();
    crate::libfd::holds_any() || crate::locks::opening_any()
}

/// True if the result of a descriptor-creating call that takes the lowest free number at or
/// above `min` (`fd`, or -1 on failure) may have met the library's numbers (see `fdops::created`): one atomic load while it has none below
/// the soft limit.
#[inline]
pub fn library_in_the_way(fd: i32, min: i32) -> bool {
    crate::libfd::may_be_in_the_way(fd, min)
}

/// Result for the shim: `None` = call the real function.
pub type Served = Option<Result<usize, Errno>>;

/// The description of a managed `fd` that still has its twin, and the twin; `None` when the
/// engine does not serve it (then the program's call goes to the kernel as it is).
pub(super) fn managed_direct(fd: i32, nowait: bool) -> Option<(Arc<Desc>, i32)> {
    let (d, t) = managed_unchecked(fd, nowait)?;
    verified(fd, &d).then_some((d, t))
}

/// [`managed_direct`] for a read: the check that `fd` is still the file is an fstat of it,
/// whose size and timestamps the read path needs too (one system call per read where an
/// identity query and an fstat of the twin were two).
pub(super) fn managed_read(fd: i32, nowait: bool) -> Option<(Arc<Desc>, i32, libc::stat)> {
    let (d, t) = managed_unchecked(fd, nowait)?;
    match crate::sys::fstat(fd) {
        Ok(st) if (st.st_dev, st.st_ino) == d.ident => Some((d, t, st)),
        _ => {
            stale(fd);
            None
        }
    }
}

/// [`managed_direct`] without checking that `fd` is still the file: for calls that only use
/// the program's own descriptor, where whatever file it now is is the program's business.
pub(super) fn managed_unchecked(fd: i32, nowait: bool) -> Option<(Arc<Desc>, i32)> {
    let d = FDS.get(fd, nowait)?;
    let t = d.twin()?;
    Some((d, t))
}

/// True if the program's `fd` is still the file `d` describes; if not, it is released.
pub(super) fn verified(fd: i32, d: &Desc) -> bool {
    if desc::still_the_file(fd, d) {
        return true;
    }
    stale(fd);
    false
}

/// `fd` no longer refers to what the engine tracked: let it go (the program's call then
/// goes to the kernel unchanged).
pub(super) fn stale(fd: i32) {
    STATS.fallback(Fallback::StaleFd);
    log::once(LogLevel::Info, Cause::StaleFd, format_args!("fd {fd} was reused behind the shim's back; released"));
    fdops::forget(fd);
}
