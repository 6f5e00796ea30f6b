//! Mappings and advice: mmap, munmap, mremap, mprotect and madvise keep the registry of
//! mappings of matched files (`crate::mapped`, whose reclaimer bounds their footprint in the
//! page cache); posix_fadvise/readahead on managed fds, and posix_fallocate.

use super::{state, FDS, STATS};
use crate::config::{LogLevel, MapMode};
use crate::filelog::{self, Event};
use crate::log::{self, Cause};
use crate::mapped::{self, advice, direct, reclaim, Held, Mapping};
use crate::stats::Counter;
use crate::{align, libfd, sys};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Mappings of matched files are tracked (the library is active, `S3DLIO_DIRECT_MAP` not off).
static MAP_ON: AtomicBool = AtomicBool::new(false);
/// The lowest and highest address any tracked mapping ever had: an address range outside
/// them needs no lock.
static LOW: AtomicUsize = AtomicUsize::new(usize::MAX);
static HIGH: AtomicUsize = AtomicUsize::new(0);

/// At load: the budget and the reclaimer's statistics, if mappings are to be bounded.
pub(super) fn init() {
    let cfg = &state().cfg;
    if cfg.enabled() && cfg.map != MapMode::Off {
        let budget = cfg.map_budget.unwrap_or_else(mapped::budget::default_budget);
        reclaim::configure(budget, &STATS);
        if cfg.map == MapMode::Direct {
            direct::configure(budget, &STATS);
        }
        MAP_ON.store(true, Ordering::Release);
    }
}

/// The budget in bytes this process's mappings of matched files get (`probe` and the log).
pub fn budget() -> u64 {
    state().cfg.map_budget.unwrap_or_else(mapped::budget::default_budget)
}

/// True if an `mmap` with these `flags` of `fd` is the engine's business: a file mapping
/// while mappings are tracked, or a MAP_FIXED one that may replace a tracked mapping.
#[inline]
pub fn concerns_mmap(flags: i32, fd: i32) -> bool {
    (fd >= 0 && flags & libc::MAP_ANONYMOUS == 0 && MAP_ON.load(Ordering::Relaxed))
        || (flags & libc::MAP_FIXED != 0 && mapped::tracking())
}

/// True if a call on the address range `[addr, addr+len)` (munmap, mremap, mprotect,
/// madvise) may concern a tracked mapping: one atomic load while none is tracked.
#[inline]
pub fn concerns_range(addr: usize, len: usize) -> bool {
    mapped::tracking() && addr < HIGH.load(Ordering::Relaxed) && addr.saturating_add(len) > LOW.load(Ordering::Relaxed)
}

fn pages(len: usize) -> usize {
    len.next_multiple_of(align::page_size())
}

/// The registry locked for a call that changes address ranges; `None` (and the registry
/// marked unsure) inside a signal handler that interrupted a holder on this thread.
fn lock_for_change(nowait: bool) -> Option<Held> {
    let h = mapped::lock(nowait);
    if h.is_none() {
        mapped::mark_unsure();
    }
    h
}

/// A matched file about to be mapped.
pub struct NewFile {
    ident: (u64, u64),
    /// The library's new descriptor of it (-1: the registry has one, or none could be had).
    fd: i32,
    size: u64,
    /// Held while `fd` is not in the registry yet (see `crate::locks::open_own`).
    _opening: Option<crate::locks::Opening>,
    /// The program's descriptor it is mapped through.
    prog_fd: i32,
}

/// What `before_mmap` prepared: the registry held across the real call, and the file.
pub struct MmapPrep {
    held: Option<Held>,
    file: Option<NewFile>,
}

/// Before `mmap(addr, len, prot, flags, fd, off)`: decides whether it maps a matched file
/// (a descriptor the engine manages, or any whose path matches), opens the library's own
/// descriptor of a file it maps for the first time, and holds the registry across the call.
pub fn before_mmap(prot: i32, flags: i32, fd: i32, nowait: bool) -> Option<MmapPrep> {
    if fd >= 0 && flags & libc::MAP_ANONYMOUS == 0 && FDS.contains(fd) {
        mapping(fd, prot, flags);
    }
    let file = if fd >= 0 && flags & libc::MAP_ANONYMOUS == 0 && MAP_ON.load(Ordering::Relaxed) && !nowait {
        matched_file(fd)
    } else {
        None
    };
    if file.is_none() && flags & libc::MAP_FIXED == 0 {
        return None;
    }
    let held = if file.is_some() { mapped::lock(false) } else { lock_for_change(nowait) };
    Some(MmapPrep { held, file })
}

/// The file behind `fd` if it is a matched regular file, with the library's descriptor of it
/// when the registry does not know it yet.
fn matched_file(fd: i32) -> Option<NewFile> {
    let prog_fd = fd;
    let ident = match FDS.get(fd, false) {
        Some(d) => d.ident,
        None => {
            let st = sys::fstat(fd).ok()?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return None;
            }
            let mut p = [0u8; 4096];
            let n = sys::fd_path(fd, &mut p).ok()?;
            if !state().cfg.wants(&p[..n]) {
                return None;
            }
            (st.st_dev, st.st_ino)
        }
    };
    let size = sys::fstat(fd).map_or(0, |st| st.st_size.max(0) as u64);
    let known = mapped::lock(false).is_some_and(|mut h| h.reg().knows(ident));
    let (fd, _opening) = if known { (-1, None) } else { mapped::open_file_fd(fd, ident) };
    Some(NewFile { ident, fd, size, _opening, prog_fd })
}

/// After the real `mmap` returned `r` (MAP_FAILED or the address).
pub fn after_mmap(p: MmapPrep, r: usize, len: usize, prot: i32, flags: i32, off: i64) {
    let MmapPrep { held, file } = p;
    let Some(mut h) = held else {
        if let Some(f) = file.filter(|f| f.fd >= 0) {
            libfd::close(f.fd);
        }
        return;
    };
    let failed = r == libc::MAP_FAILED as usize;
    let reg = h.reg();
    match file {
        Some(f) if !failed => {
            let ty = flags & libc::MAP_TYPE;
            let shared = ty == libc::MAP_SHARED || ty == libc::MAP_SHARED_VALIDATE;
            let writable = prot & libc::PROT_WRITE != 0;
            let m = Mapping {
                start: r,
                len: pages(len),
                ident: f.ident,
                off: off as u64,
                shared,
                cow: !shared && writable,
                dontfork: false,
                advice: advice::Pattern::Normal,
                nodump: false,
            };
            let first = !reg.knows(f.ident);
            if f.fd >= 0 && !first {
                libfd::close(f.fd);
            }
            reg.add(m, writable, f.fd, f.size);
            advice::apply_new(&m, reg.random);
            LOW.fetch_min(r, Ordering::Relaxed);
            HIGH.fetch_max(r + m.len, Ordering::Relaxed);
            STATS.add(Counter::MapMappings, 1);
            drop(h);
            let served = if direct::enabled() { adopt(r, m.len, prot, flags, f.prog_fd, f.ident, m.off) } else { None };
            // A file's first mapping says how it is served; a direct file later mapped in a
            // way that stays bounded is not logged again.
            match served {
                _ if first && f.fd >= 0 => {
                    filelog::record_fd(if served.is_some() { Event::MappedDirect } else { Event::Mapped }, f.fd)
                }
                Some(true) => filelog::record_fd(Event::MappedDirect, f.prog_fd),
                _ => {}
            }
            reclaim::ensure_running();
        }
        Some(f) if f.fd >= 0 && !reg.knows(f.ident) => libfd::close(f.fd),
        Some(_) => {}
        None if !failed => {
            reg.cut(r, pages(len));
            direct::unmapped(r, pages(len));
        }
        None => {}
    }
}

/// Before `munmap`, `mremap` or `mprotect` of a range [`concerns_range`] said may be
/// tracked: the registry, held across the real call.
pub fn before_change(nowait: bool) -> Option<Held> {
    lock_for_change(nowait)
}

/// After a successful `munmap(addr, len)`.
pub fn unmapped(mut h: Held, addr: usize, len: usize) {
    h.reg().cut(addr, pages(len));
    direct::unmapped(addr, pages(len));
}

/// Before `mremap` of `[old, old+old_len)`: a direct mapping there becomes the file mapping it
/// was (the kernel then moves, grows or refuses it as it would); then as [`before_change`].
pub fn before_remap(nowait: bool, old: usize, old_len: usize) -> Option<Held> {
    let fresh = direct::before_change(old, pages(old_len.max(1)));
    let mut h = lock_for_change(nowait);
    if let Some(h) = &mut h {
        advise_fresh(h, &fresh);
    }
    h
}

/// Ranges a direct region was just turned back into file mappings over are fresh VMAs: the
/// kernel is told again what it was told of them (`mapped::advice`), so they split and merge
/// with their neighbours as in the plain run.
fn advise_fresh(h: &mut Held, fresh: &[(usize, usize)]) {
    let reg = h.reg();
    for &(start, len) in fresh {
        for m in reg.parts_in(start, len) {
            advice::apply_new(&m, reg.random);
        }
    }
}

/// True if some mapping is served direct: every mprotect of a tracked range then concerns the
/// engine (anonymous memory would answer some differently from the file mapping).
#[inline]
pub fn direct_any() -> bool {
    direct::any()
}

/// A new mapping of a matched file: made direct where it can be, counted either way.
/// `Some(first)` if it is direct (`first`: the file's first direct mapping in the process),
/// `None` if it stays bounded.
fn adopt(r: usize, len: usize, prot: i32, flags: i32, prog_fd: i32, ident: (u64, u64), off: u64) -> Option<bool> {
    match direct::adopt(r, len, prot, flags, prog_fd, ident, off) {
        Ok((_, first)) => {
            STATS.add(Counter::MapDirectMappings, 1);
            Some(first)
        }
        Err(e) => {
            if let Some(fb) = e.fallback() {
                STATS.fallback(fb);
            }
            None
        }
    }
}

/// After a successful `mremap` of `[old, old+old_len)` to `new` with `new_len` bytes.
pub fn remapped(mut h: Held, old: usize, old_len: usize, new: usize, new_len: usize, flags: i32) {
    let keep_old = old_len == 0 || flags & libc::MREMAP_DONTUNMAP != 0;
    h.reg().moved(old, pages(old_len), new, pages(new_len), keep_old);
    direct::unmapped(new, pages(new_len));
    LOW.fetch_min(new, Ordering::Relaxed);
    HIGH.fetch_max(new + pages(new_len), Ordering::Relaxed);
}

/// Before `mprotect(addr, len, prot)`, with the registry held across the call: a private
/// mapping made writable is marked as possibly holding private copies before any can exist.
pub fn protecting(h: &mut Held, addr: usize, len: usize, prot: i32) {
    let fresh = direct::before_change(addr, pages(len));
    advise_fresh(h, &fresh);
    h.reg().protect(addr, pages(len), prot);
}

/// `madvise(addr, len, advice)` on a range [`concerns_range`] said may be tracked: `Some(len)`
/// to pass on only the first `len` bytes (MADV_WILLNEED over tracked mappings larger than a
/// quarter of the budget: reading it all ahead would only fill the page cache past the
/// budget, and over mapped ranges the kernel's answer is the same); `None`: pass it on as it is.
/// `nowait`: a signal handler may have interrupted the registry's holder, which is only tried.
pub fn advice_len(addr: usize, len: usize, advice: i32, nowait: bool) -> Option<usize> {
    if !direct::advice_keeps(advice) {
        let fresh = direct::before_change(addr, pages(len));
        if !fresh.is_empty() {
            if let Some(mut h) = mapped::lock(nowait) {
                advise_fresh(&mut h, &fresh);
            }
        }
    }
    if advice != libc::MADV_WILLNEED {
        return None;
    }
    let window = pages((budget() / 4) as usize).max(align::page_size());
    if len <= window || !mapped::lock(nowait).is_some_and(|mut h| h.reg().covers(addr, len)) {
        return None;
    }
    STATS.add(Counter::AdviceSwallowed, 1);
    Some(window)
}

/// Before `madvise(addr, len, advice)` on a range [`concerns_range`] said may be tracked:
/// the registry, held across the real call, for advice whose effect on the kernel's state of
/// a tracked mapping the library sets right afterwards (see `mapped::advice`).
pub fn before_advice(advice: i32, nowait: bool) -> Option<Held> {
    if advice::concerns(advice) || advice == libc::MADV_DONTFORK || advice == libc::MADV_DOFORK {
        lock_for_change(nowait)
    } else {
        None
    }
}

/// After `madvise(addr, len, advice)` (or `posix_madvise`) reached the kernel, with the
/// registry `held` since before; `applied`: it succeeded, or failed with ENOMEM (a hole in
/// the range), which the kernel says after advising every mapping in it. MADV_DONTFORK and
/// MADV_DOFORK decide which mappings a fork child has; access-pattern and dump advice is
/// recorded as the program's, and the kernel is told its image (`mapped::advice`).
pub fn advised(held: Option<Held>, addr: usize, len: usize, advice: i32, applied: bool) {
    let Some(mut h) = held else { return };
    if !applied {
        return;
    }
    let reg = h.reg();
    if advice == libc::MADV_DONTFORK || advice == libc::MADV_DOFORK {
        reg.set(addr, pages(len), |m| m.dontfork = advice == libc::MADV_DONTFORK);
        return;
    }
    let random = reg.random;
    for (before, after) in reg.set(addr, pages(len), |m| advice::record(m, advice)) {
        advice::fix(&before, &after, advice, random);
    }
}

/// Before `mmap` of a managed `fd`: a mapping of a direct file works, through the page cache; it is
/// counted and reported once, since those accesses are not direct.
fn mapping(fd: i32, prot: i32, flags: i32) {
    let Some(d) = FDS.get(fd, false) else { return };
    // Writes through a shared mapping reach the file with no call the engine sees.
    let shared = flags & libc::MAP_TYPE == libc::MAP_SHARED || flags & libc::MAP_TYPE == libc::MAP_SHARED_VALIDATE;
    d.writes.mapped(shared && (prot & libc::PROT_WRITE != 0 || d.accmode != libc::O_RDONLY));
    if d.twin().is_some() {
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
    let swallow =
        FDS.get(fd, false).is_some_and(|d| d.twin().is_some() && !(needs_read && d.accmode == libc::O_WRONLY));
    if swallow {
        STATS.add(Counter::AdviceSwallowed, 1);
    }
    swallow
}

/// After glibc's `posix_fallocate` (whose emulation, where the filesystem has no
/// fallocate, writes one byte per block through the program's description) on a managed
/// `fd`: what it may have left in the page cache of `[off, off+len)` is written back and
/// dropped.
pub fn fallocated(fd: i32, off: i64, len: i64) {
    if let (Some(d), Ok(lo), Ok(n)) = (FDS.get(fd, false), u64::try_from(off), u64::try_from(len)) {
        if let Some(t) = d.twin() {
            let _writing = d.writes.begin();
            crate::behind::drop_range(t, lo, lo.saturating_add(n));
        }
    }
}
