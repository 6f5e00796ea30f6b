//! The facade the preload library calls: decides which opens become direct, keeps the
//! per-description state in the fd table, and serves the read, write, offset, dup, close,
//! exec and fork events of managed descriptors through the read and write paths.
//!
//! Every entry point returns `None` when the descriptor is not the engine's (or it cannot
//! act without blocking, inside a signal handler): the shim then calls the real function,
//! so the program gets exactly the kernel's answer.

use crate::align::Alignment;
use crate::bufpool::BufPool;
use crate::companion::Companion;
use crate::config::{Config, LogLevel, Mode};
use crate::fdtable::FdTable;
use crate::io::{FileIo, Outcome, Tuning};
use crate::lock::FutexMutex;
use crate::log::{self, Cause};
use crate::readahead::{self, Params, Readahead};
use crate::stats::{self, Counter, Reason, Stats};
use crate::sys::{self, Errno, SysResult};
use crate::{align, companion, pathmatch, read_path, write_path};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// State shared by every fd that refers to one open file description.
pub struct Desc {
    ident: (u64, u64),
    lock: FutexMutex,
    direct: AtomicBool,
    align: Alignment,
    accmode: i32,
    append: AtomicBool,
    /// O_DIRECT / O_SYNC bits the shim added, hidden from F_GETFL.
    added: AtomicI32,
    companion: Companion,
    /// A private O_DIRECT descriptor of the same file that carries the direct I/O when the
    /// program's own description must stay buffered (-1: none, the program's fd is direct):
    /// on fd 0-2, glibc's standard streams read and write with calls no hook sees.
    twin: AtomicI32,
    ra: Readahead,
}

impl Desc {
    fn io<'a>(&'a self, fd: i32, pool: &'a BufPool, nowait: bool) -> FileIo<'a> {
        let twin = self.twin.load(Ordering::Acquire);
        FileIo {
            fd: if twin >= 0 { twin } else { fd },
            align: self.align,
            companion: &self.companion,
            accmode: self.accmode,
            append: self.append.load(Ordering::Relaxed),
            pool,
            nowait,
            tuning: state().tuning(&self.ra),
        }
    }

    fn has_twin(&self) -> bool {
        self.twin.load(Ordering::Acquire) >= 0
    }

    /// With a twin, both the program's fd and the twin must still be this file: glibc may
    /// close and reuse fd 0-2 unseen (fclose(stdin)), and the program may close the twin's
    /// number (a close loop before exec).
    fn check_twin(&self, fd: i32) -> bool {
        let t = self.twin.load(Ordering::Acquire);
        t < 0 || (companion::is_file(fd, self.ident) && companion::is_file(t, self.ident))
    }

    /// Moves the description's direct I/O onto a twin (see `twin`); false if none could be
    /// opened.
    fn use_twin(&self, fd: i32) -> bool {
        if self.has_twin() {
            return true;
        }
        let append = self.append.load(Ordering::Relaxed);
        let Ok(t) = companion::reopen(fd, self.accmode, append, libc::O_DIRECT, self.ident) else { return false };
        if self.twin.compare_exchange(-1, t, Ordering::AcqRel, Ordering::Acquire).is_err() {
            let _ = sys::close(t);
        }
        let _ = sys::set_o_direct(fd, false);
        self.added.fetch_and(!libc::O_DIRECT, Ordering::Relaxed);
        true
    }

    /// Clears O_DIRECT on the description for good: a stream or another process will use it
    /// with I/O the engine cannot see.
    fn demote(&self, fd: i32, why: Reason) {
        if self.direct.swap(false, Ordering::AcqRel) {
            let _ = sys::set_o_direct(fd, false);
            self.added.fetch_and(!libc::O_DIRECT, Ordering::Relaxed);
            STATS.fallback(why);
        }
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        let t = *self.twin.get_mut();
        if t >= 0 && companion::is_file(t, self.ident) {
            let _ = sys::close(t);
        }
    }
}

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
static EXITED: AtomicBool = AtomicBool::new(false);

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
        libc::pthread_atfork(None, None, Some(after_fork_child));
        libc::atexit(atexit_handler);
    }
    if enabled {
        adopt_inherited();
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

/// What the shim must change in a matched open before calling the real one.
#[derive(Debug, Clone, Copy)]
pub struct OpenPlan {
    /// Flags to add at open (O_SYNC with S3DLIO_DIRECT_SYNC).
    pub extra_flags: i32,
    program_flags: i32,
}

/// Decides whether an open of `path` (relative to `dirfd`) with `flags` is the engine's.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string.
pub unsafe fn plan_open(dirfd: i32, path: *const libc::c_char, flags: i32) -> Option<OpenPlan> {
    if !active() || path.is_null() {
        return None;
    }
    if flags & (libc::O_PATH | libc::O_DIRECT) != 0 {
        return None; // O_PATH does no I/O; an explicit O_DIRECT is the program's own business
    }
    if flags & libc::O_TMPFILE != libc::O_TMPFILE && flags & libc::O_DIRECTORY != 0 {
        return None;
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes();
    let mut norm = [0u8; 4352];
    let n = if path.first() == Some(&b'/') {
        pathmatch::normalize_into(b"/", path, &mut norm)?
    } else {
        let mut base = [0u8; 4096];
        let bl =
            if dirfd == libc::AT_FDCWD { sys::getcwd(&mut base).ok()? } else { sys::fd_path(dirfd, &mut base).ok()? };
        pathmatch::normalize_into(&base[..bl], path, &mut norm)?
    };
    let cfg = &state().cfg;
    if !cfg.wants(&norm[..n]) {
        return None;
    }
    let extra_flags = if cfg.sync { libc::O_SYNC } else { 0 };
    Some(OpenPlan { extra_flags, program_flags: flags })
}

/// `plan_open` for a reopen of the file behind `fd` (freopen with no path): the path the
/// kernel reports for it.
pub fn plan_reopen(fd: i32, flags: i32) -> Option<OpenPlan> {
    let mut p = [0u8; 4097];
    let n = sys::fd_path(fd, &mut p[..4096]).ok()?;
    p[n] = 0;
    // SAFETY: `p` is NUL-terminated at `n`.
    unsafe { plan_open(libc::AT_FDCWD, p.as_ptr() as *const libc::c_char, flags) }
}

/// After the real open of a planned path returned `fd`.
pub fn opened(fd: i32, plan: OpenPlan) {
    if fd < 0 {
        return;
    }
    FDS.remove(fd); // a number we missed the close of is not ours any more
    let Ok(st) = sys::fstat(fd) else { return };
    let fmt = st.st_mode & libc::S_IFMT;
    if fmt != libc::S_IFREG && fmt != libc::S_IFBLK {
        return;
    }
    STATS.add(Counter::OpensMatched, 1);
    let accmode = plan.program_flags & libc::O_ACCMODE;
    let added_sync = plan.extra_flags & !plan.program_flags;
    let min = state().cfg.min_size;
    if fmt == libc::S_IFREG && accmode == libc::O_RDONLY && min > 0 && (st.st_size as u64) < min {
        fallback(fd, Reason::BelowMinSize, added_sync, &st);
        return;
    }
    enable_direct(fd, &st, accmode, plan.program_flags & libc::O_APPEND != 0, added_sync);
}

fn fallback(fd: i32, why: Reason, added_sync: i32, st: &libc::stat) {
    STATS.add(Counter::OpensFallback, 1);
    STATS.fallback(why);
    if added_sync != 0 {
        // Tracked only so that F_GETFL hides the O_SYNC the shim added.
        insert(fd, st, Alignment::page(), libc::O_RDWR, false, false, added_sync, -1);
    }
}

#[allow(clippy::too_many_arguments)]
fn insert(fd: i32, st: &libc::stat, align: Alignment, accmode: i32, append: bool, direct: bool, added: i32, twin: i32) {
    FDS.insert(
        fd,
        Arc::new(Desc {
            ident: (st.st_dev, st.st_ino),
            lock: FutexMutex::new(),
            direct: AtomicBool::new(direct),
            align,
            accmode,
            append: AtomicBool::new(append),
            added: AtomicI32::new(added),
            companion: Companion::new((st.st_dev, st.st_ino)),
            twin: AtomicI32::new(twin),
            ra: Readahead::new((st.st_dev, st.st_ino)),
        }),
    );
}

fn dev_refuses_direct(dev: u64) -> bool {
    dev != 0 && NO_DIRECT_DEVS.iter().any(|d| d.load(Ordering::Relaxed) == dev)
}

fn remember_no_direct(dev: u64) {
    for d in &NO_DIRECT_DEVS {
        if d.compare_exchange(0, dev, Ordering::Relaxed, Ordering::Relaxed).is_ok() || d.load(Ordering::Relaxed) == dev
        {
            return;
        }
    }
}

/// Adds O_DIRECT to `fd` with F_SETFL (never at open: with O_CREAT|O_EXCL on a filesystem
/// without O_DIRECT the open would create the file and then fail) and tracks it.
fn enable_direct(fd: i32, st: &libc::stat, accmode: i32, append: bool, added_sync: i32) {
    if dev_refuses_direct(st.st_dev) {
        fallback(fd, Reason::FsNoDirect, added_sync, st);
        return;
    }
    let (align, warn) = align::discover(fd).with_minimum(state().cfg.align);
    if let Some(w) = warn {
        log::once(LogLevel::Warn, Cause::AlignTooSmall, format_args!("{w}"));
    }
    if align.supported == Some(false) {
        log::once(
            LogLevel::Info,
            Cause::FileNoDirect,
            format_args!("a matched file cannot do O_DIRECT (statx); it stays buffered"),
        );
        fallback(fd, Reason::FileNoDirect, added_sync, st);
        return;
    }
    let ident = (st.st_dev, st.st_ino);
    // On fd 0-2 the program's description stays buffered and a twin does the direct I/O.
    let direct = if fd <= 2 {
        companion::reopen(fd, accmode, append, libc::O_DIRECT, ident)
    } else {
        sys::set_o_direct(fd, true).map(|_| -1)
    };
    let twin = match direct {
        Ok(t) => t,
        Err(e) if fd <= 2 && e != libc::EINVAL => {
            log::once(
                LogLevel::Warn,
                Cause::NoCompanion,
                format_args!("cannot reopen a matched file on fd {fd} through /proc (errno {e}); it stays buffered"),
            );
            fallback(fd, Reason::NoCompanion, added_sync, st);
            return;
        }
        Err(e) => {
            if e == libc::EINVAL {
                remember_no_direct(st.st_dev);
            }
            log::once(
                LogLevel::Warn,
                Cause::FsNoDirect,
                format_args!("the filesystem of a matched file refuses O_DIRECT (errno {e}); such files stay buffered"),
            );
            fallback(fd, Reason::FsNoDirect, added_sync, st);
            return;
        }
    };
    let added = if twin >= 0 { added_sync } else { libc::O_DIRECT | added_sync };
    insert(fd, st, align, accmode, append, true, added, twin);
    STATS.add(Counter::OpensDirect, 1);
    log::once(
        LogLevel::Debug,
        Cause::OpenedDirect,
        format_args!("fd {fd} is direct (align mem {} offset {})", align.mem, align.offset),
    );
}

/// Takes over matched regular files inherited at start that already have O_DIRECT (fd 3
/// and up), so the program's misaligned calls on them work. O_DIRECT is never turned on
/// for an inherited description: other live processes may share it without managing it
/// (a shell pipeline's other members), and their misaligned I/O would start to fail.
fn adopt_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect();
    let mut adopted = 0;
    for fd in fds {
        let Ok(fl) = sys::fcntl(fd, libc::F_GETFL, 0) else { continue };
        if fl & libc::O_DIRECT == 0 {
            continue;
        }
        let mut p = [0u8; 4096];
        let Ok(n) = sys::fd_path(fd, &mut p) else { continue };
        if !state().cfg.wants(&p[..n]) {
            continue;
        }
        let Ok(st) = sys::fstat(fd) else { continue };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        let (align, _) = align::discover(fd).with_minimum(state().cfg.align);
        insert(fd, &st, align, fl & libc::O_ACCMODE, fl & libc::O_APPEND != 0, true, 0, -1);
        adopted += 1;
    }
    if adopted > 0 {
        log::once(LogLevel::Info, Cause::Adopted, format_args!("managing {adopted} inherited direct descriptor(s)"));
    }
}

/// Forgets `fd` (it is being closed, or a new object now has that number).
#[inline]
pub fn forget(fd: i32) {
    FDS.remove(fd);
}

/// Forgets every managed fd in `[lo, hi]` (close_range, closefrom).
pub fn forget_range(lo: u32, hi: u32) {
    if FDS.is_empty() {
        return;
    }
    let mut doomed = Vec::new();
    FDS.for_each(|fd, _| {
        if (lo..=hi).contains(&(fd as u32)) {
            doomed.push(fd);
        }
    });
    doomed.into_iter().for_each(forget);
}

/// `newfd` now refers to the same description as `oldfd` (dup, dup2, dup3, F_DUPFD).
pub fn duped(oldfd: i32, newfd: i32) {
    if newfd < 0 || oldfd == newfd {
        return;
    }
    forget(newfd);
    if let Some(d) = FDS.get(oldfd, false) {
        if (0..=2).contains(&newfd) && d.direct.load(Ordering::Relaxed) && !d.use_twin(oldfd) {
            // A standard stream now writes to the file through glibc's internal calls.
            d.demote(oldfd, Reason::NoCompanion);
        }
        FDS.insert(newfd, d);
    }
}

/// A stdio stream is being made on `fd` (`fdopen`): its I/O bypasses the hooks, so the
/// description goes buffered (counted as a fallback).
pub fn stream_opened(fd: i32) {
    if let Some(d) = FDS.get(fd, false) {
        if d.direct.load(Ordering::Relaxed) {
            log::once(
                LogLevel::Info,
                Cause::FdopenStream,
                format_args!("a stream was opened on a direct fd; it goes buffered"),
            );
            d.demote(fd, Reason::FdopenStream);
        }
    }
}

fn managed_direct(fd: i32, nowait: bool) -> Option<Arc<Desc>> {
    let d = FDS.get(fd, nowait).filter(|d| d.direct.load(Ordering::Relaxed))?;
    if d.check_twin(fd) {
        return Some(d);
    }
    stale(fd);
    None
}

/// `fd` no longer refers to what the engine tracked: let it go (the program's call then
/// goes to the kernel unchanged).
fn stale(fd: i32) {
    STATS.fallback(Reason::StaleFd);
    log::once(LogLevel::Warn, Cause::StaleFd, format_args!("fd {fd} was reused behind the shim's back; released"));
    forget(fd);
}

/// Applies what a path call reported: reused fd, demotion, statistics.
fn settle(fd: i32, d: &Desc, o: &Outcome, write: bool, r: &SysResult<usize>) -> bool {
    if *r == Err(libc::ESTALE) {
        stale(fd);
        return false;
    }
    if let Some(e) = o.demoted {
        d.demote(fd, Reason::NoCompanion);
        log::once(
            LogLevel::Warn,
            Cause::NoCompanion,
            format_args!("cannot reopen a direct file through /proc (errno {e}); it goes buffered"),
        );
    }
    if o.einval_retry {
        STATS.add(Counter::EinvalRetries, 1);
        STATS.fallback(Reason::EinvalRetry);
        log::once(
            LogLevel::Info,
            Cause::EinvalRetry,
            format_args!("a direct call was refused with EINVAL and redone buffered"),
        );
    }
    let (calls, bytes, bcalls, bbytes) = if write {
        (Counter::WriteCalls, Counter::WriteBytes, Counter::WriteBouncedCalls, Counter::WriteBouncedBytes)
    } else {
        (Counter::ReadCalls, Counter::ReadBytes, Counter::ReadBouncedCalls, Counter::ReadBouncedBytes)
    };
    STATS.add(calls, 1);
    if let Ok(n) = r {
        STATS.add(bytes, *n as u64);
    }
    if o.readahead_bytes > 0 {
        STATS.add(Counter::ReadaheadBytes, o.readahead_bytes);
    }
    let b = o.bounced_bytes + o.buffered_bytes;
    if b > 0 {
        STATS.add(bcalls, 1);
        STATS.add(bbytes, b);
    }
    true
}

/// Result for the shim: `None` = call the real function.
pub type Served = Option<Result<usize, Errno>>;

/// Runs `f` with the description's offset lock (or `None` if it cannot be taken without
/// waiting in a signal handler).
fn locked<R>(d: &Desc, nowait: bool, f: impl FnOnce() -> R) -> Option<R> {
    let _g = if nowait { d.lock.try_lock()? } else { d.lock.lock() };
    Some(f())
}

/// Runs `call` (a positional read or write of `len` bytes) at the file position of `fd` and
/// leaves the position after what it did, as the kernel's own call would. The position is
/// moved past the whole request first, so the common case of a complete call costs one
/// lseek instead of one to read the position and one to set it; a short or failed call
/// moves it back. The caller holds the description's lock.
fn at_offset(fd: i32, len: usize, call: impl FnOnce(u64) -> SysResult<usize>) -> SysResult<usize> {
    let Some(pos) = i64::try_from(len)
        .ok()
        .and_then(|l| sys::lseek(fd, l, libc::SEEK_CUR).ok().map(|end| end.wrapping_sub(l as u64)))
    else {
        // Past the largest offset the filesystem allows: the call itself gives the answer.
        let pos = sys::lseek(fd, 0, libc::SEEK_CUR)?;
        let n = call(pos)?;
        sys::lseek(fd, (pos + n as u64) as i64, libc::SEEK_SET)?;
        return Ok(n);
    };
    let r = call(pos);
    match r {
        Ok(n) if n == len => {}
        Ok(n) => {
            sys::lseek(fd, (pos + n as u64) as i64, libc::SEEK_SET)?;
        }
        Err(_) => {
            let _ = sys::lseek(fd, pos as i64, libc::SEEK_SET);
        }
    }
    r
}

/// `read(2)` on a managed fd.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn read(fd: i32, buf: *mut u8, len: usize, nowait: bool) -> Served {
    if len == 0 {
        return None; // the kernel answers a zero-length call (and its errors) itself
    }
    let d = managed_direct(fd, nowait)?;
    let pool = &state().pool;
    let (o, r) = locked(&d, nowait, || {
        let mut o = Outcome::default();
        let io = d.io(fd, pool, nowait);
        // SAFETY: forwarded from the caller.
        if let Some(r) = unsafe { read_path::read_next(&io, fd, buf, len, &mut o) } {
            return (o, r);
        }
        // SAFETY: forwarded from the caller.
        let r = at_offset(fd, len, |pos| unsafe { read_path::pread(&io, buf, len, pos, &mut o) });
        (o, r)
    })?;
    settle(fd, &d, &o, false, &r).then_some(r)
}

/// `pread(2)` on a managed fd.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn pread(fd: i32, buf: *mut u8, len: usize, off: i64, nowait: bool) -> Served {
    if off < 0 || len == 0 {
        return None;
    }
    let d = managed_direct(fd, nowait)?;
    let mut o = Outcome::default();
    // SAFETY: forwarded from the caller.
    let r = unsafe { read_path::pread(&d.io(fd, &state().pool, nowait), buf, len, off as u64, &mut o) };
    settle(fd, &d, &o, false, &r).then_some(r)
}

/// `write(2)` on a managed fd.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub unsafe fn write(fd: i32, buf: *const u8, len: usize, nowait: bool) -> Served {
    if len == 0 {
        return None; // the kernel answers a zero-length call (and its errors) itself
    }
    let d = managed_direct(fd, nowait)?;
    let pool = &state().pool;
    let (o, r) = locked(&d, nowait, || {
        let mut o = Outcome::default();
        let io = d.io(fd, pool, nowait);
        if io.append {
            // SAFETY: forwarded from the caller.
            let r = unsafe { write_path::append(&io, buf, len, true, &mut o) }
                .and_then(|(n, pos)| sys::lseek(fd, pos as i64, libc::SEEK_SET).map(|_| n));
            return (o, r);
        }
        // An aligned write that goes direct needs no offset bookkeeping: the kernel's own
        // write moves the offset.
        if !d.has_twin() && !write_path::through_cache(&io, len) && d.align.write_ok(buf as usize, 0, len) {
            let _writing = d.ra.writing();
            // SAFETY: forwarded from the caller.
            match unsafe { sys::write(fd, buf, len) } {
                Err(libc::EINVAL) => {}
                r => {
                    o.direct_bytes = *r.as_ref().unwrap_or(&0) as u64;
                    return (o, r);
                }
            }
        }
        // SAFETY: forwarded from the caller.
        let r = at_offset(fd, len, |pos| unsafe { write_path::pwrite(&io, buf, len, pos, &mut o) });
        (o, r)
    })?;
    settle(fd, &d, &o, true, &r).then_some(r)
}

/// `pwrite(2)` on a managed fd.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub unsafe fn pwrite(fd: i32, buf: *const u8, len: usize, off: i64, nowait: bool) -> Served {
    if off < 0 || len == 0 {
        return None;
    }
    let d = managed_direct(fd, nowait)?;
    let mut o = Outcome::default();
    // SAFETY: forwarded from the caller.
    let r = unsafe { write_path::pwrite(&d.io(fd, &state().pool, nowait), buf, len, off as u64, &mut o) };
    settle(fd, &d, &o, true, &r).then_some(r)
}

fn iov_total(iov: *const libc::iovec, cnt: i32) -> Option<usize> {
    if iov.is_null() || !(0..=1024).contains(&cnt) {
        return None;
    }
    // SAFETY: the caller of the vector functions passes `cnt` valid iovecs.
    let v = unsafe { std::slice::from_raw_parts(iov, cnt as usize) };
    v.iter().try_fold(0usize, |a, e| a.checked_add(e.iov_len)).filter(|&t| t <= isize::MAX as usize)
}

/// `readv`/`preadv`/`preadv2` (flags without RWF_NOWAIT) on a managed fd;
/// `off == -1` means at the file position.
///
/// # Safety
/// `iov` must point to `cnt` valid iovecs.
pub unsafe fn readv(fd: i32, iov: *const libc::iovec, cnt: i32, off: i64, nowait: bool) -> Served {
    let total = iov_total(iov, cnt)?;
    if off < -1 || total == 0 {
        return None;
    }
    let d = managed_direct(fd, nowait)?;
    // SAFETY: checked by iov_total.
    let v = unsafe { std::slice::from_raw_parts(iov, cnt as usize) };
    let pool = &state().pool;
    let run = |start: u64, o: &mut Outcome| -> SysResult<usize> {
        let mut done = 0usize;
        for e in v {
            // SAFETY: each iovec describes caller memory.
            let r = unsafe {
                read_path::pread(&d.io(fd, pool, nowait), e.iov_base as *mut u8, e.iov_len, start + done as u64, o)
            };
            match r {
                Ok(n) => {
                    done += n;
                    if n < e.iov_len {
                        break;
                    }
                }
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    };
    let mut o = Outcome::default();
    let r = if off >= 0 {
        run(off as u64, &mut o)
    } else {
        locked(&d, nowait, || at_offset(fd, total, |pos| run(pos, &mut o)))?
    };
    settle(fd, &d, &o, false, &r).then_some(r)
}

/// `writev`/`pwritev`/`pwritev2` on a managed fd; `off == -1` means at the file position.
///
/// # Safety
/// `iov` must point to `cnt` valid iovecs.
pub unsafe fn writev(fd: i32, iov: *const libc::iovec, cnt: i32, off: i64, nowait: bool) -> Served {
    let total = iov_total(iov, cnt)?;
    if off < -1 || total == 0 {
        return None;
    }
    let d = managed_direct(fd, nowait)?;
    // SAFETY: checked by iov_total.
    let v = unsafe { std::slice::from_raw_parts(iov, cnt as usize) };
    // Gather into one buffer so the write reaches the file as one piece, as writev does.
    let mut data = Vec::new();
    if data.try_reserve_exact(total).is_err() {
        return None;
    }
    for e in v {
        // SAFETY: each iovec describes caller memory of its length.
        data.extend_from_slice(unsafe { std::slice::from_raw_parts(e.iov_base as *const u8, e.iov_len) });
    }
    drop(d);
    // SAFETY: `data` is a valid buffer of `total` bytes.
    unsafe {
        if off >= 0 {
            pwrite(fd, data.as_ptr(), total, off, nowait)
        } else {
            write(fd, data.as_ptr(), total, nowait)
        }
    }
}

/// `lseek` on a managed fd, serialised with the engine's emulated read and write.
pub fn lseek(fd: i32, off: i64, whence: i32, nowait: bool) -> Option<Result<u64, Errno>> {
    let d = managed_direct(fd, nowait)?;
    locked(&d, nowait, || sys::lseek(fd, off, whence))
}

/// Runs `f` (an ftruncate) holding the description's offset lock, so it cannot land in the
/// middle of an emulated write's pieces, and as a write of the file: no read-ahead window of
/// it is read or trusted meanwhile, and those read before are stale after.
pub fn with_offset_lock<R>(fd: i32, nowait: bool, f: impl FnOnce() -> R) -> Option<R> {
    let d = FDS.get(fd, nowait)?;
    let _writing = d.ra.writing();
    locked(&d, nowait, f)
}

/// `fcntl(F_GETFL)` result as the program must see it.
pub fn getfl(fd: i32, kernel: i32) -> i32 {
    match FDS.get(fd, true) {
        Some(d) => kernel & !d.added.load(Ordering::Relaxed),
        None => kernel,
    }
}

/// The argument to pass to the real `fcntl(F_SETFL)`: the program keeps the shim's
/// O_DIRECT unless it asks for O_DIRECT itself, in which case the fd is its own.
pub fn setfl(fd: i32, arg: i32) -> i32 {
    let Some(d) = FDS.get(fd, true) else { return arg };
    if arg & libc::O_DIRECT != 0 {
        d.added.fetch_and(!libc::O_DIRECT, Ordering::Relaxed);
        forget(fd);
        return arg;
    }
    let append = arg & libc::O_APPEND != 0;
    if d.append.swap(append, Ordering::Relaxed) != append {
        d.companion.set_append(append);
        if d.has_twin() {
            companion::set_append(d.twin.load(Ordering::Acquire), append);
        }
    }
    if d.direct.load(Ordering::Relaxed) && !d.has_twin() {
        arg | libc::O_DIRECT
    } else {
        arg
    }
}

/// After `fsync`/`fdatasync`: drop what the buffered pieces left in the page cache.
pub fn synced(fd: i32) {
    if let Some(d) = FDS.get(fd, true) {
        d.companion.drop_cached();
    }
}

/// Before `mmap` of `fd`: a mapping of a direct file works, through the page cache; it is
/// counted and reported once, since those accesses are not direct.
pub fn mapping(fd: i32, prot: i32, flags: i32) {
    let Some(d) = FDS.get(fd, false) else { return };
    // Writes through a shared mapping reach the file with no call the engine sees.
    let shared = flags & libc::MAP_TYPE == libc::MAP_SHARED || flags & libc::MAP_TYPE == libc::MAP_SHARED_VALIDATE;
    d.ra.mapped(shared && (prot & libc::PROT_WRITE != 0 || d.accmode != libc::O_RDONLY));
    if d.direct.load(Ordering::Relaxed) {
        STATS.add(Counter::MmapCalls, 1);
        log::once(
            LogLevel::Info,
            Cause::Mapped,
            format_args!("a direct file was memory-mapped; mapped accesses go through the page cache"),
        );
    }
}

/// True if a readahead request on `fd` (`posix_fadvise(WILLNEED)`, `readahead(2)`) must be
/// swallowed: it would fill the page cache the user asked to keep clean.
/// `readahead(2)` (`needs_read`) refuses a descriptor not open for reading with EBADF, and
/// is then passed on for the kernel to say so.
pub fn swallow_readahead(fd: i32, needs_read: bool) -> bool {
    let swallow = FDS
        .get(fd, false)
        .is_some_and(|d| d.direct.load(Ordering::Relaxed) && !(needs_read && d.accmode == libc::O_WRONLY));
    if swallow {
        STATS.add(Counter::AdviceSwallowed, 1);
    }
    swallow
}

/// The buffered companion of a direct `fd`, for calls that must see buffered semantics
/// (glibc's posix_fallocate emulation writes single bytes). `None`: not direct.
pub fn companion_of(fd: i32) -> Option<Result<i32, Errno>> {
    let d = managed_direct(fd, false)?;
    Some(d.companion.get(fd, d.accmode, d.append.load(Ordering::Relaxed)))
}

/// After a call on the companion wrote `[off, off+len)` behind the engine's back.
pub fn companion_wrote(fd: i32, off: i64, len: i64) {
    if let (Some(d), Ok(lo), Ok(n)) = (FDS.get(fd, false), u64::try_from(off), u64::try_from(len)) {
        d.companion.drop_written(lo, lo.saturating_add(n));
    }
}

/// A stream on a matched file was made by glibc itself (freopen, a `,ccs=` stream): its I/O
/// stays buffered, which is counted and reported once.
pub fn unserved_stream(fd: i32) {
    if !active() || fd < 0 {
        return;
    }
    let mut p = [0u8; 4096];
    let Ok(n) = sys::fd_path(fd, &mut p) else { return };
    if state().cfg.wants(&p[..n]) && sys::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG) {
        STATS.fallback(Reason::FdopenStream);
        log::once(
            LogLevel::Info,
            Cause::StreamBuffered,
            format_args!("a stream on a matched file was opened by freopen or with ,ccs=; it stays buffered"),
        );
    }
}

/// Reads up to `len` bytes of `fd` for an emulated copy (managed or not): at `off`, or at
/// the file position when `off` is `None` (which is advanced).
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
unsafe fn copy_read(fd: i32, buf: *mut u8, len: usize, off: Option<u64>) -> SysResult<usize> {
    // SAFETY: forwarded from the caller.
    let served = unsafe {
        match off {
            Some(o) => pread(fd, buf, len, o as i64, false),
            None => read(fd, buf, len, false),
        }
    };
    match served {
        Some(r) => r,
        // SAFETY: forwarded from the caller.
        None => unsafe {
            match off {
                Some(o) => sys::pread(fd, buf, len, o),
                None => sys::read(fd, buf, len),
            }
        },
    }
}

/// Writes all of `buf` to `fd` (managed or not) for an emulated copy.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
unsafe fn copy_write(fd: i32, buf: *const u8, len: usize, off: Option<u64>) -> SysResult<usize> {
    let mut done = 0;
    while done < len {
        // SAFETY: inside the caller's buffer.
        let p = unsafe { buf.add(done) };
        let o = off.map(|o| (o + done as u64) as i64);
        // SAFETY: as above.
        let served = unsafe {
            match o {
                Some(o) => pwrite(fd, p, len - done, o, false),
                None => write(fd, p, len - done, false),
            }
        };
        // SAFETY: as above.
        let r = served.unwrap_or_else(|| unsafe {
            match o {
                Some(o) => sys::pwrite(fd, p, len - done, o as u64),
                None => sys::write(fd, p, len - done),
            }
        });
        match r {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

/// `copy_file_range`, `sendfile` and `splice` with a managed end, emulated with the
/// engine's read and write: on O_DIRECT descriptors the kernel's versions return short
/// aligned counts or refuse. `off_in`/`off_out`: explicit offsets to use and advance
/// (`None` = the file position). Returns `None` if neither end is managed.
///
/// # Safety
/// The offset pointers, when non-null, must be valid.
pub unsafe fn copy(fd_in: i32, off_in: *mut i64, fd_out: i32, off_out: *mut i64, len: usize) -> Served {
    if managed_direct(fd_in, false).is_none() && managed_direct(fd_out, false).is_none() {
        return None;
    }
    // SAFETY: the caller vouches for non-null pointers.
    let (mut oi, mut oo) = unsafe { (off_in.as_ref().copied(), off_out.as_ref().copied()) };
    if oi.is_some_and(|o| o < 0) || oo.is_some_and(|o| o < 0) {
        return Some(Err(libc::EINVAL));
    }
    // splice into a pipe moves at most what the pipe has room for; writing more would block
    // a program that drains the pipe only after the call returns.
    let len = len.min(pipe_room(fd_out).unwrap_or(usize::MAX));
    let mut buf = match state().pool.get(false) {
        Ok(b) => b,
        Err(_) => return Some(Err(libc::ENOMEM)),
    };
    let mut done = 0usize;
    let r = loop {
        if done >= len {
            break Ok(done);
        }
        let want = buf.len().min(len - done);
        // SAFETY: the bounce buffer holds `want` bytes.
        let n = match unsafe { copy_read(fd_in, buf.as_mut_ptr(), want, oi.map(|o| o as u64)) } {
            Ok(0) => break Ok(done),
            Ok(n) => n,
            Err(e) if done == 0 => break Err(e),
            Err(_) => break Ok(done),
        };
        // SAFETY: `n` bytes were just read into the buffer.
        let w = match unsafe { copy_write(fd_out, buf.as_mut_ptr(), n, oo.map(|o| o as u64)) } {
            Ok(w) => w,
            Err(e) if done == 0 => break Err(e),
            Err(_) => 0,
        };
        if let Some(o) = oi.as_mut() {
            *o += w as i64;
        } else if w < n {
            // Give back what was read but not written.
            let _ = sys::lseek(fd_in, -((n - w) as i64), libc::SEEK_CUR);
        }
        if let Some(o) = oo.as_mut() {
            *o += w as i64;
        }
        done += w;
        if w < n {
            break Ok(done);
        }
    };
    // SAFETY: as above.
    unsafe {
        if let (Some(p), Some(v)) = (off_in.as_mut(), oi) {
            *p = v;
        }
        if let (Some(p), Some(v)) = (off_out.as_mut(), oo) {
            *p = v;
        }
    }
    Some(r)
}

/// Free space in `fd` if it is a pipe (its whole capacity when full, so a blocking write
/// waits for the reader as splice would).
fn pipe_room(fd: i32) -> Option<usize> {
    let st = sys::fstat(fd).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return None;
    }
    let cap = sys::fcntl(fd, libc::F_GETPIPE_SZ, 0).ok()? as usize;
    let queued = sys::ioctl_int(fd, libc::FIONREAD).unwrap_or(0) as usize;
    Some(match cap.saturating_sub(queued) {
        0 => cap,
        room => room,
    })
}

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
            d.demote(fd, Reason::InheritedByChild);
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
    if let Err(e) = stats::write_file(&STATS, std::os::unix::ffi::OsStrExt::as_bytes(tpl.as_os_str()), prog.trim_end())
    {
        log::once(LogLevel::Warn, Cause::StatsWrite, format_args!("cannot write the statistics file (errno {e})"));
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

extern "C" fn atexit_handler() {
    // A panic must not unwind into libc's exit path.
    let _ = std::panic::catch_unwind(at_exit);
}

/// In a fork child: every lock another thread held is free again, and the statistics
/// start from zero (the child is a new process with its own file).
extern "C" fn after_fork_child() {
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
    if let Some(st) = STATE.get() {
        st.pool.reset_after_fork();
    }
    STATS.reset();
    stats::reset_after_fork();
    log::reset_after_fork();
    EXITED.store(false, Ordering::Relaxed);
}
