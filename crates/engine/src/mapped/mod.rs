//! The mappings of matched files in this process (which address ranges map which file at
//! which offset, and how), the chunks of each file with their residency and age, and the
//! reclaimer ([`reclaim`]) that keeps their footprint in the page cache within the budget.
//!
//! One fork-safe lock guards it all. The hooks that remove, move or replace address ranges
//! hold it across their real call, and the reclaimer gives pages back only while holding it,
//! so it never advises memory that is no longer the file's. The at-fork handlers take it, so
//! a fork child never inherits it held or the registry half-changed.

pub mod advice;
pub mod budget;
pub mod direct;
pub mod policy;
pub mod reclaim;
pub mod stream;
pub mod vma;

use crate::lock::{ForkHold, FutexGuard, FutexMutex};
use crate::{libfd, locks};
use policy::Chunk;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Chunks are at least 2 MiB (the largest folio the page cache makes on x86-64 and aarch64
/// with 4 KiB pages: chunks aligned to it never split one, which could be dropped only whole),
/// and larger in files that would have more than `MAX_CHUNKS`.
const MIN_SHIFT: u32 = 21;
const MAX_CHUNKS: u64 = 1 << 16;
/// Chunks per superchunk: the reclaimer measures superchunks first and only looks into
/// those whose residency changed.
pub(crate) const SUPER: usize = 64;

/// One mapping (or what is left of it after partial munmaps) of a matched file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// First address (page-aligned).
    pub start: usize,
    /// Length in bytes (whole pages).
    pub len: usize,
    /// The file's (st_dev, st_ino).
    pub ident: (u64, u64),
    /// File offset of `start`.
    pub off: u64,
    /// MAP_SHARED: every page is the file's page, so dropping the page table entries loses
    /// nothing.
    pub shared: bool,
    /// MAP_PRIVATE and writable at some time: it may hold private copies, which only
    /// MADV_PAGEOUT may touch (it never loses data).
    pub cow: bool,
    /// MADV_DONTFORK: a fork child does not have it.
    pub dontfork: bool,
    /// What the program advised of its access pattern (the kernel is told
    /// [`advice::kernel`] of it).
    pub advice: advice::Pattern,
    /// The program advised MADV_DONTDUMP.
    pub nodump: bool,
}

impl Mapping {
    fn end(&self) -> usize {
        self.start + self.len
    }

    /// The part of the mapping at addresses `[a, b)` (within it).
    fn part(&self, a: usize, b: usize) -> Mapping {
        Mapping { start: a, len: b - a, off: self.off + (a - self.start) as u64, ..*self }
    }
}

/// A mapped matched file.
#[derive(Debug)]
pub struct File {
    /// (st_dev, st_ino).
    pub ident: (u64, u64),
    /// The library's read-only descriptor of the file, for cachestat and dropping its
    /// pages (-1: none, as where the process held record locks on it when it was mapped).
    pub fd: i32,
    /// Chunk size is `1 << shift`.
    pub shift: u32,
    /// Residency and age of each chunk.
    pub chunks: Vec<Chunk>,
    /// Pages cached per superchunk at the last measure (u64::MAX: unknown).
    pub supers: Vec<u64>,
    /// Some mapping of it was shared and writable: dirty pages are written back before
    /// they are dropped.
    pub shared_write: bool,
    /// The pass at which its last mapping went (for files no longer mapped).
    pub idle_since: u32,
    /// Residency is measured with cachestat on `fd` (else with mincore on the mappings).
    pub cachestat: bool,
    /// Passes left in which pages written through a shared mapping, unmapped since, are
    /// written back and dropped.
    pub drop_retries: u32,
    /// The device's read-ahead window in bytes (0: not looked up yet).
    pub ra: u64,
}

impl File {
    /// Bytes of the file the chunks cover.
    pub fn span(&self) -> u64 {
        (self.chunks.len() as u64) << self.shift
    }

    fn cover(&mut self, end: u64) {
        let n = usize::try_from(end.div_ceil(1 << self.shift)).unwrap_or(usize::MAX);
        if n > self.chunks.len() {
            self.chunks.resize(n, Chunk::default());
            self.supers.resize(n.div_ceil(SUPER), u64::MAX);
        }
    }
}

/// Everything the lock guards.
#[derive(Debug, Default)]
pub struct Registry {
    /// The mappings, unordered.
    pub maps: Vec<Mapping>,
    /// Files with mappings, and files mapped before whose pages are not all given back.
    pub files: Vec<File>,
    /// In-order scans the library reads ahead for.
    pub streams: Vec<stream::Stream>,
    /// Chunks read again within [`reclaim::REFAULT_PASSES`] of being given back.
    pub refaults: u32,
    /// The process read pages again soon after giving them back ([`reclaim::THRASH`]
    /// times): every mapped file, and every file mapped from now on, is switched to random
    /// reads (see [`advice`]).
    pub random: bool,
    /// The reclaimer's pass counter (chunk ages count in passes).
    pub pass: u32,
}

struct Shared {
    lock: FutexMutex,
    reg: UnsafeCell<Registry>,
}

// SAFETY: `reg` is only touched with `lock` held (through `Held`).
unsafe impl Sync for Shared {}

static SHARED: Shared = Shared { lock: FutexMutex::new(), reg: UnsafeCell::new(Registry::new()) };
/// Mappings in the registry: the hooks' one atomic load.
static MAPPINGS: AtomicUsize = AtomicUsize::new(0);
/// Files in the registry.
static FILES: AtomicUsize = AtomicUsize::new(0);
/// A hook could not update the registry (re-entered from a signal handler while this thread
/// held the lock): some address range may no longer be what the registry says, so from now
/// on pages are given back only with advice that never loses data.
static UNSURE: AtomicBool = AtomicBool::new(false);
/// The at-fork prepare handler holds the lock.
static FORK: ForkHold = ForkHold::new();

/// True if some mapping of a matched file is tracked: the hooks of munmap, mremap,
/// mprotect, madvise and MAP_FIXED mmap do nothing more when not.
#[inline]
pub fn tracking() -> bool {
    MAPPINGS.load(Ordering::Acquire) != 0
}

/// True if the registry holds any file (mapped now or before).
pub fn has_files() -> bool {
    FILES.load(Ordering::Acquire) != 0
}

/// True if the file `ident` is in the registry (mapped now, or its pages given back by age).
pub fn knows(ident: (u64, u64)) -> bool {
    has_files() && lock(false).is_some_and(|mut h| h.reg().knows(ident))
}

/// The registry, locked.
pub struct Held(#[allow(dead_code)] FutexGuard<'static>);

impl Held {
    /// The registry.
    pub fn reg(&mut self) -> &mut Registry {
        // SAFETY: the lock is held for as long as `self` lives, and `&mut self` makes this
        // the only reference.
        unsafe { &mut *SHARED.reg.get() }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let r = self.reg();
        MAPPINGS.store(r.maps.len(), Ordering::Release);
        FILES.store(r.files.len(), Ordering::Release);
    }
}

/// Locks the registry; `None` if `nowait` and it is held (a signal handler that interrupted
/// this thread inside a hook): the caller then marks the registry unsure.
pub fn lock(nowait: bool) -> Option<Held> {
    let g = if nowait { SHARED.lock.try_lock()? } else { SHARED.lock.lock() };
    Some(Held(g))
}

/// Some address range may not be what the registry says any more (see [`UNSURE`]).
pub fn mark_unsure() {
    UNSURE.store(true, Ordering::Relaxed);
}

/// True once [`mark_unsure`] was called.
pub fn unsure() -> bool {
    UNSURE.load(Ordering::Relaxed)
}

/// The chunk shift for a file of `size` bytes.
fn shift_for(size: u64) -> u32 {
    let mut s = MIN_SHIFT;
    while (size >> s) > MAX_CHUNKS {
        s += 1;
    }
    s
}

impl Registry {
    const fn new() -> Self {
        Registry { maps: Vec::new(), files: Vec::new(), streams: Vec::new(), refaults: 0, random: false, pass: 0 }
    }

    /// The file `ident`, if known.
    pub fn file(&mut self, ident: (u64, u64)) -> Option<&mut File> {
        self.files.iter_mut().find(|f| f.ident == ident)
    }

    /// True if the file `ident` is in the registry.
    pub fn knows(&self, ident: (u64, u64)) -> bool {
        self.files.iter().any(|f| f.ident == ident)
    }

    /// A new mapping `m` of a file of `size` bytes (replacing whatever it covers, as
    /// MAP_FIXED does); `fd` is the library's descriptor of a file not known yet.
    pub fn add(&mut self, m: Mapping, writable: bool, fd: i32, size: u64) {
        self.cut(m.start, m.len);
        let end = m.off + m.len as u64;
        let pass = self.pass;
        let f = match self.files.iter().position(|f| f.ident == m.ident) {
            Some(i) => &mut self.files[i],
            None => {
                self.files.push(File {
                    ident: m.ident,
                    fd,
                    shift: shift_for(size.max(end)),
                    chunks: Vec::new(),
                    supers: Vec::new(),
                    shared_write: false,
                    idle_since: pass,
                    cachestat: fd >= 0,
                    drop_retries: 0,
                    ra: 0,
                });
                self.files.last_mut().expect("just pushed")
            }
        };
        f.cover(end);
        f.shared_write |= m.shared && writable;
        self.maps.push(m);
    }

    /// Addresses `[start, start+len)` are no longer mapped as the registry says (munmap,
    /// or replaced): the mappings there are cut out. Returns the parts cut out.
    pub fn cut(&mut self, start: usize, len: usize) -> Vec<Mapping> {
        let gone = self.take(start, len);
        for g in &gone {
            let still = self.maps.iter().any(|m| m.ident == g.ident);
            let pass = self.pass;
            if let Some(f) = self.file(g.ident) {
                if !still {
                    f.idle_since = pass;
                }
                if g.shared && f.shared_write {
                    f.drop_retries = reclaim::DROP_RETRIES;
                }
            }
        }
        gone
    }

    /// Takes the parts of the mappings at `[start, start+len)` out of the registry, leaving
    /// the parts on either side.
    fn take(&mut self, start: usize, len: usize) -> Vec<Mapping> {
        let end = start.saturating_add(len);
        let mut gone = Vec::new();
        let mut kept = Vec::with_capacity(self.maps.len() + 1);
        for m in self.maps.drain(..) {
            if m.end() <= start || m.start >= end {
                kept.push(m);
                continue;
            }
            let (a, b) = (m.start.max(start), m.end().min(end));
            gone.push(m.part(a, b));
            if m.start < a {
                kept.push(m.part(m.start, a));
            }
            if b < m.end() {
                kept.push(m.part(b, m.end()));
            }
        }
        self.maps = kept;
        gone
    }

    /// mremap moved or resized `[old, old+old_len)` to `[new, new+new_len)`; `keep_old`
    /// (old_len 0, or MREMAP_DONTUNMAP) leaves the old range mapped. The parts of the old
    /// range keep what the program advised of each (a shrinking mremap may span several);
    /// what grows (or a duplicate, old_len 0) continues the part at the old range's end.
    pub fn moved(&mut self, old: usize, old_len: usize, new: usize, new_len: usize, keep_old: bool) {
        let keep = old_len.min(new_len);
        let mut parts: Vec<Mapping> = self
            .maps
            .iter()
            .filter(|m| m.start < old + keep && old < m.end())
            .map(|m| m.part(m.start.max(old), m.end().min(old + keep)))
            .collect();
        parts.sort_by_key(|m| m.start);
        if new_len > keep {
            let at = old + keep;
            let from = if keep == 0 {
                self.maps.iter().find(|m| m.start <= old && old < m.end()).copied()
            } else {
                parts.last().copied()
            };
            if let Some(m) = from {
                parts.push(Mapping { start: at, len: new_len - keep, off: m.off + (at - m.start) as u64, ..m });
            }
        }
        if parts.is_empty() {
            self.cut(new, new_len);
            return;
        }
        let mut moved: Vec<Mapping> = Vec::with_capacity(parts.len());
        for p in parts {
            let p = Mapping { start: p.start - old + new, ..p };
            match moved.last_mut() {
                Some(q)
                    if q.end() == p.start
                        && q.off + q.len as u64 == p.off
                        && Mapping { start: q.start, len: q.len, off: q.off, ..p } == *q =>
                {
                    q.len += p.len;
                }
                _ => moved.push(p),
            }
        }
        if !keep_old {
            self.cut(old, old_len);
        }
        for m in moved {
            self.add(m, false, -1, 0);
        }
    }

    /// mprotect gave `[start, start+len)` protection `prot`: a private mapping made
    /// writable may hold private copies from now on.
    pub fn protect(&mut self, start: usize, len: usize, prot: i32) {
        if prot & libc::PROT_WRITE == 0 {
            return;
        }
        let end = start.saturating_add(len);
        let mut writable_shared = Vec::new();
        for m in self.maps.iter_mut().filter(|m| m.start < end && start < m.end()) {
            if m.shared {
                writable_shared.push(m.ident);
            } else {
                m.cow = true;
            }
        }
        for id in writable_shared {
            if let Some(f) = self.file(id) {
                f.shared_write = true;
            }
        }
    }

    /// madvise on `[start, start+len)` changed what `change` changes of the tracked
    /// mappings there: they are split at the range's ends and changed. Returns each part as
    /// it was and as it is.
    pub fn set(&mut self, start: usize, len: usize, change: impl Fn(&mut Mapping)) -> Vec<(Mapping, Mapping)> {
        let parts: Vec<(Mapping, Mapping)> = self
            .take(start, len)
            .into_iter()
            .map(|b| {
                let mut a = b;
                change(&mut a);
                (b, a)
            })
            .collect();
        self.maps.extend(parts.iter().map(|p| p.1));
        parts
    }

    /// The tracked mappings' parts within `[start, start+len)`, cut at its ends.
    pub fn parts_in(&self, start: usize, len: usize) -> Vec<Mapping> {
        let end = start.saturating_add(len);
        self.maps
            .iter()
            .filter(|m| m.start < end && start < m.end())
            .map(|m| {
                let from = m.start.max(start);
                let to = m.end().min(end);
                Mapping { start: from, len: to - from, off: m.off + (from - m.start) as u64, ..*m }
            })
            .collect()
    }

    /// True if every page of `[start, start+len)` lies in tracked mappings.
    pub fn covers(&self, start: usize, len: usize) -> bool {
        let end = start.saturating_add(len);
        let mut at = start;
        while at < end {
            match self.maps.iter().find(|m| m.start <= at && at < m.end()) {
                Some(m) => at = m.end(),
                None => return false,
            }
        }
        true
    }
}

/// Closes the library's descriptor of a file it no longer tracks, unless the process may
/// hold record locks on the file (closing any descriptor of it would drop them): `false`
/// then, and the caller keeps it.
pub(crate) fn close_file_fd(f: &File) -> bool {
    if f.fd < 0 {
        return true;
    }
    if locks::may_hold_any() && locks::holds_posix_locks(f.ident) {
        return false;
    }
    libfd::close(f.fd);
    true
}

/// Opens the library's own read-only descriptor of the file behind the program's `fd`
/// (at the library's numbers), or -1: not for a file the process takes record locks on
/// (`crate::locks`). Keep the guard until the descriptor is in the registry.
pub fn open_file_fd(fd: i32, ident: (u64, u64)) -> (i32, Option<locks::Opening>) {
    let Some(g) = locks::open_own(ident) else { return (-1, None) };
    match crate::twin::reopen(fd, libc::O_RDONLY, false, 0, ident) {
        Ok(t) => (libfd::place(t).unwrap_or(-1), Some(g)),
        Err(_) => (-1, None),
    }
}

/// The process is about to take its first POSIX record lock on the file `ident`: the
/// library's descriptor of it is closed now (residency is measured with mincore from now on).
/// Not when `nowait` finds the registry held (a signal handler that interrupted its holder).
pub fn retire(ident: (u64, u64), nowait: bool) {
    if !has_files() {
        return;
    }
    let Some(mut h) = lock(nowait) else { return };
    if let Some(f) = h.reg().file(ident) {
        if f.fd >= 0 {
            libfd::close(f.fd);
            f.fd = -1;
            f.cachestat = false;
        }
    }
}

/// The at-fork prepare handler: takes the lock so that no thread holds it, or is changing
/// the registry, while the process forks. It waits a bounded time (the holder never blocks
/// long); if it cannot, the child forgets the registry.
pub fn before_fork() {
    FORK.prepare(&SHARED.lock);
}

/// In the parent after fork.
pub fn after_fork_parent() {
    FORK.parent(&SHARED.lock);
}

/// In a fork child: the lock is free again, the mappings the child did not inherit
/// (MADV_DONTFORK) are forgotten, and the reclaimer runs again if there is anything to do.
pub fn after_fork_child() {
    let held = FORK.child(&SHARED.lock);
    let mut h = Held(SHARED.lock.lock());
    let r = h.reg();
    if held {
        r.maps.retain(|m| !m.dontfork);
    } else {
        // Another thread was inside the registry at the fork: its state cannot be trusted.
        std::mem::forget(std::mem::take(r));
        UNSURE.store(true, Ordering::Relaxed);
    }
    drop(h);
    reclaim::after_fork_child();
}

/// The process ends (exit, `_exit`) or replaces its image (exec): the mapped files' pages
/// are given back now, pages written through shared mappings written back first. Returns
/// the library's descriptors of files the process may hold record locks on (kept open by an
/// exec, as twins are).
pub fn at_end() -> Vec<i32> {
    let Some(mut h) = lock(false) else { return Vec::new() };
    let r = h.reg();
    let mut vmas = vma::Checker::new();
    for m in &r.maps {
        reclaim::zap(m, m.start, m.len, &mut vmas);
    }
    let mut locked = Vec::new();
    for f in &r.files {
        if f.fd < 0 {
            continue;
        }
        crate::behind::drop_all(f.fd, f.shared_write);
        if locks::may_hold_any() && locks::holds_posix_locks(f.ident) {
            locked.push(f.fd);
        }
    }
    locked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(start: usize, len: usize, off: u64) -> Mapping {
        Mapping {
            start,
            len,
            ident: (1, 2),
            off,
            shared: false,
            cow: false,
            dontfork: false,
            advice: advice::Pattern::Normal,
            nodump: false,
        }
    }

    #[test]
    fn partial_munmap_splits_and_keeps_offsets() {
        let mut r = Registry::new();
        r.add(m(0x10000, 0x10000, 0x4000), false, -1, 1 << 20);
        let gone = r.cut(0x14000, 0x2000);
        assert_eq!(gone, vec![m(0x14000, 0x2000, 0x8000)]);
        let mut maps = r.maps.clone();
        maps.sort_by_key(|m| m.start);
        assert_eq!(maps, vec![m(0x10000, 0x4000, 0x4000), m(0x16000, 0xa000, 0xa000)]);
        assert!(r.covers(0x10000, 0x4000) && !r.covers(0x10000, 0x5000));
        r.cut(0, usize::MAX);
        assert!(r.maps.is_empty() && r.files.len() == 1, "the file stays, its pages given back by age");
    }

    #[test]
    fn mremap_moves_grows_and_duplicates() {
        let mut r = Registry::new();
        r.add(m(0x10000, 0x4000, 0), false, -1, 1 << 20);
        r.moved(0x10000, 0x4000, 0x80000, 0x8000, false);
        assert_eq!(r.maps, vec![m(0x80000, 0x8000, 0)]);
        r.moved(0x82000, 0, 0x90000, 0x1000, true);
        assert!(r.maps.contains(&m(0x90000, 0x1000, 0x2000)) && r.maps.len() == 2);
        assert_eq!(r.files[0].chunks.len(), 1);
    }

    #[test]
    fn a_shrinking_mremap_keeps_each_part_s_advice() {
        let mut r = Registry::new();
        r.add(m(0x10000, 0x8000, 0), false, -1, 1 << 20);
        r.set(0x12000, 0x2000, |m| m.nodump = true);
        r.moved(0x10000, 0x8000, 0x10000, 0x5000, false);
        let mut maps = r.maps.clone();
        maps.sort_by_key(|m| m.start);
        let nodump = Mapping { nodump: true, ..m(0x12000, 0x2000, 0x2000) };
        assert_eq!(maps, vec![m(0x10000, 0x2000, 0), nodump, m(0x14000, 0x1000, 0x4000)]);
        // moved and grown: the growth continues the last part
        r.moved(0x10000, 0x5000, 0x40000, 0x6000, false);
        let mut maps = r.maps.clone();
        maps.sort_by_key(|m| m.start);
        assert_eq!(maps, vec![m(0x40000, 0x2000, 0), Mapping { start: 0x42000, ..nodump }, m(0x44000, 0x2000, 0x4000)]);
    }

    #[test]
    fn mprotect_write_marks_private_copies_possible() {
        let mut r = Registry::new();
        r.add(m(0x10000, 0x4000, 0), false, -1, 1 << 20);
        r.protect(0x11000, 0x1000, libc::PROT_READ);
        assert!(!r.maps[0].cow);
        r.protect(0x11000, 0x1000, libc::PROT_READ | libc::PROT_WRITE);
        assert!(r.maps[0].cow);
    }

    #[test]
    fn dontfork_parts_are_marked() {
        let mut r = Registry::new();
        r.add(m(0x10000, 0x4000, 0), false, -1, 1 << 20);
        let parts = r.set(0x11000, 0x1000, |m| m.dontfork = true);
        assert_eq!(parts, vec![(m(0x11000, 0x1000, 0x1000), Mapping { dontfork: true, ..m(0x11000, 0x1000, 0x1000) })]);
        assert_eq!(r.maps.iter().filter(|m| m.dontfork).count(), 1);
        assert!(r.covers(0x10000, 0x4000));
        r.maps.retain(|m| !m.dontfork);
        assert!(!r.covers(0x10000, 0x4000));
    }

    #[test]
    fn chunk_shift_bounds_the_chunk_count() {
        assert_eq!(shift_for(0), MIN_SHIFT);
        assert_eq!(shift_for(10 << 30), MIN_SHIFT);
        assert!(((1u64 << 40) >> shift_for(1 << 40)) <= MAX_CHUNKS);
    }
}
