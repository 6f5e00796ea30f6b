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
    let (cfg, warnings) = Config::from_env();
    log::init(cfg.log_level, cfg.log_file.as_deref());
    for w in &warnings {
        log::always(LogLevel::Warn, format_args!("{w}"));
    }
    let enabled = cfg.enabled();
    let pool = BufPool::new(1 << 20, cfg.pool_bytes);
    if STATE.set(State { cfg, pool }).is_err() {
        return;
    }
    // SAFETY: registering plain extern "C" functions without arguments.
    unsafe {
        libc::pthread_atfork(None, None, Some(process::after_fork_child));
        libc::atexit(process::atexit_handler);
    }
    process::stats_at_load();
    if enabled {
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
    FDS.get(fd, false).is_some_and(|d| d.direct.load(Ordering::Relaxed))
}

/// Result for the shim: `None` = call the real function.
pub type Served = Option<Result<usize, Errno>>;

pub(super) fn managed_direct(fd: i32, nowait: bool) -> Option<Arc<Desc>> {
    let d = FDS.get(fd, nowait).filter(|d| d.direct.load(Ordering::Relaxed))?;
    if d.check_twin(fd) {
        return Some(d);
    }
    stale(fd);
    None
}

/// `fd` no longer refers to what the engine tracked: let it go (the program's call then
/// goes to the kernel unchanged).
pub(super) fn stale(fd: i32) {
    STATS.fallback(Fallback::StaleFd);
    log::once(LogLevel::Warn, Cause::StaleFd, format_args!("fd {fd} was reused behind the shim's back; released"));
    fdops::forget(fd);
}
