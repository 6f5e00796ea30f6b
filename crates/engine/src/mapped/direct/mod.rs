//! Direct mappings (`S3DLIO_DIRECT_MAP=direct`): the pages of a read-only mapping of a matched
//! file that lie within the file are replaced by shared memory of the library's own (a memfd
//! per file, at the file's offsets), registered with a userfaultfd; the handler thread
//! ([`handler`]) fills what the program touches with O_DIRECT reads, so the file's page cache
//! stays empty. Only where every promise of the mapping can be kept: read-only, the file
//! leased ([`lease`]: no writer anywhere), a userfaultfd that also serves the kernel's own
//! faults ([`uffd`]). Anything the kernel would answer differently for anonymous memory
//! (mprotect, mremap, most madvise, a fork child) first turns the region back into the file
//! mapping it was, which part 1's bounded mode then serves.
//!
//! One fork-safe lock guards the table; it is never held across anything that can wait on a
//! fault, so the handler, which takes it, never waits on a thread that waits on it.

pub mod handler;
pub mod lease;
pub mod uffd;

use super::vma::{self, Checker};
use crate::lock::{ForkHold, FutexMutex};
use crate::stats::{Fallback, Stats};
use crate::{align, libfd, sys, twin};
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

/// The direct mode is on (`S3DLIO_DIRECT_MAP=direct`).
static ON: AtomicBool = AtomicBool::new(false);
/// Whether this process has a userfaultfd: not tried yet, yes, refused (see [`REFUSAL`]).
static UFFD_STATE: AtomicU8 = AtomicU8::new(UNTRIED);
const UNTRIED: u8 = 0;
const READY: u8 = 1;
const REFUSED: u8 = 2;
static REFUSAL: AtomicU8 = AtomicU8::new(0);
static STATS: AtomicPtr<Stats> = AtomicPtr::new(std::ptr::null_mut());

/// Why a mapping of a matched file was not made direct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotDirect {
    /// Not a read-only mapping of the plain kind (writable, executable, MAP_FIXED, MAP_LOCKED...),
    /// or nothing of it lies within the file.
    Unservable,
    /// Some process has the file open for writing: no read lease.
    Writer,
    /// The process takes POSIX record locks on the file (see `crate::locks`).
    Locked,
    /// No userfaultfd for this process.
    Refused(uffd::Refusal),
    /// The filesystem refused O_DIRECT, or a resource (descriptor, memory, thread) was short.
    NoResource,
}

impl NotDirect {
    /// The fallback reason counted for it (`None`: not counted, a mapping no direct mode serves).
    pub fn fallback(self) -> Option<Fallback> {
        match self {
            NotDirect::Unservable => None,
            NotDirect::Writer => Some(Fallback::MapWriter),
            NotDirect::Locked => Some(Fallback::PosixLocks),
            NotDirect::Refused(uffd::Refusal::Privilege) => Some(Fallback::MapPrivilege),
            NotDirect::Refused(uffd::Refusal::Seccomp) => Some(Fallback::MapSeccomp),
            NotDirect::Refused(uffd::Refusal::Kernel) => Some(Fallback::MapKernel),
            NotDirect::NoResource => Some(Fallback::MapKernel),
        }
    }
}

/// A range of a direct mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    pub start: usize,
    pub len: usize,
    pub ident: (u64, u64),
    /// File offset of `start`.
    pub off: u64,
    /// MAP_SHARED (else MAP_PRIVATE): what it becomes again when converted.
    pub shared: bool,
    /// Where the last fill ended, and its length: the next fault there reads further ahead.
    pub next: usize,
    pub win: usize,
    /// The page left missing at the start of the window read ahead last: its fault means the
    /// program reached that window.
    pub marker: usize,
    /// What a run's first fault reads, learned from the runs before (see the handler).
    pub size: RunSize,
    /// Where the current run started (its first fault), and whether it went on past its
    /// first read.
    pub run: usize,
    pub grew: bool,
    /// The last page of a first read, left unmapped: its fault says the run reached it.
    pub tail: usize,
    pub tail_hit: bool,
}

impl Region {
    /// A region of the file `ident` at `off`, with no fault seen yet.
    pub(crate) fn new(start: usize, len: usize, ident: (u64, u64), off: u64, shared: bool) -> Region {
        Region {
            start,
            len,
            ident,
            off,
            shared,
            next: usize::MAX,
            win: 0,
            marker: usize::MAX,
            size: RunSize::default(),
            run: usize::MAX,
            grew: false,
            tail: usize::MAX,
            tail_hit: false,
        }
    }

    fn end(&self) -> usize {
        self.start + self.len
    }
}

/// How long a region's runs of touches have been, learned at each run's first fault (the
/// handler's `learn`). The file keeps its last region's, so the next mapping of it (numpy's
/// memmap made anew for every batch) starts from what was learned.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunSize {
    /// What a run's first fault reads (0: nothing learned yet).
    pub eager: usize,
    /// Runs in a row that reached the unmapped last page of their first read and went no
    /// further: once the size is settled, only some first reads leave that page unmapped
    /// (its fault is a second round trip to the handler for every run that is checked).
    pub settled: u8,
    /// First reads since the last one that was checked.
    pub unchecked: u8,
}

/// A file with direct mappings, or with its read lease kept for the next.
#[derive(Debug)]
pub(crate) struct DFile {
    pub ident: (u64, u64),
    /// The library's O_DIRECT read-only descriptor: reads and the lease.
    pub rfd: i32,
    /// The library's plain read-only descriptor: what a region is mapped from again when it
    /// is converted (never `rfd`: a mapping would keep the leased description alive).
    pub mfd: i32,
    /// The memfd whose pages the regions map, at the file's offsets (-1: none, no lease).
    pub memfd: i32,
    /// The memfd's (st_dev, st_ino): what the kernel must say is mapped at a region before
    /// the region is mapped over.
    pub mident: (u64, u64),
    /// Bumped at every new memfd: fills recorded for an older one are not punched in this.
    pub memgen: u64,
    /// The file's size when the lease was taken (it cannot change while it is held).
    pub size: u64,
    /// The handler's own writable mapping of the whole memfd (0: none), not registered and
    /// not inherited: the file is read into it with O_DIRECT, and a region maps a page only
    /// once the read is whole (UFFDIO_CONTINUE). A page the memfd holds always holds the
    /// file's bytes (a failed read punches its range out again).
    pub alias: usize,
    /// What its last region learned of how long runs are: where the next region starts.
    pub runs: RunSize,
}

/// Everything the lock guards.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub regions: Vec<Region>,
    pub files: Vec<DFile>,
    pub uffd: i32,
    /// Filled ranges, oldest first: (file, memfd generation, file offset, bytes).
    pub filled: VecDeque<((u64, u64), u64, u64, usize)>,
    pub filled_bytes: usize,
    pub budget: usize,
    pub memgen: u64,
    /// Aliases of released memfds (address, bytes), unmapped by the handler between its
    /// reads: one may be the target of a read in flight.
    pub dead: Vec<(usize, usize)>,
}

struct Shared {
    lock: FutexMutex,
    table: UnsafeCell<Table>,
}

// SAFETY: `table` is only touched with `lock` held.
unsafe impl Sync for Shared {}

static SHARED: Shared = Shared {
    lock: FutexMutex::new(),
    table: UnsafeCell::new(Table {
        regions: Vec::new(),
        files: Vec::new(),
        uffd: -1,
        filled: VecDeque::new(),
        filled_bytes: 0,
        budget: usize::MAX,
        memgen: 0,
        dead: Vec::new(),
    }),
};
static FORK: ForkHold = ForkHold::new();
/// Direct regions exist (the hooks' one atomic load before the table lock).
static ANY: AtomicBool = AtomicBool::new(false);

/// Runs `f` with the table locked.
pub(crate) fn with<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    let _g = SHARED.lock.lock();
    // SAFETY: the lock is held for the life of `_g`, and this is the only reference made.
    let t = unsafe { &mut *SHARED.table.get() };
    let r = f(t);
    ANY.store(!t.regions.is_empty(), Ordering::Release);
    r
}

/// Turns the direct mode on (`budget`: bytes of filled pages kept; `stats`: where counted).
pub fn configure(budget: u64, stats: &'static Stats) {
    STATS.store(stats as *const Stats as *mut Stats, Ordering::Release);
    with(|t| t.budget = usize::try_from(budget).unwrap_or(usize::MAX).max(align::page_size()));
    ON.store(true, Ordering::Release);
}

/// True if `S3DLIO_DIRECT_MAP=direct`.
pub fn enabled() -> bool {
    ON.load(Ordering::Acquire)
}

pub(crate) fn stats() -> Option<&'static Stats> {
    // SAFETY: only `configure` stores, and it stores a `&'static Stats`.
    unsafe { STATS.load(Ordering::Acquire).as_ref() }
}

/// What this process would get: `Ok` if it may have a userfaultfd that serves the kernel's
/// faults too (tried once; the descriptor is kept for the mappings), else why not.
pub fn available() -> Result<(), uffd::Refusal> {
    match UFFD_STATE.load(Ordering::Acquire) {
        READY => return Ok(()),
        REFUSED => return Err(refusal()),
        _ => {}
    }
    with(ensure_uffd).map(|_| ())
}

fn refusal() -> uffd::Refusal {
    match REFUSAL.load(Ordering::Relaxed) {
        1 => uffd::Refusal::Privilege,
        2 => uffd::Refusal::Seccomp,
        _ => uffd::Refusal::Kernel,
    }
}

fn ensure_uffd(t: &mut Table) -> Result<i32, uffd::Refusal> {
    if t.uffd >= 0 {
        return Ok(t.uffd);
    }
    if UFFD_STATE.load(Ordering::Acquire) == REFUSED {
        return Err(refusal());
    }
    // Without PROCMAP_QUERY (Linux 6.11+) a region could not be told from memory a raw munmap
    // behind the hooks gave the program, so none is made.
    let placed = if vma::supported() { uffd::open() } else { Err(uffd::Refusal::Kernel) }
        .and_then(|fd| libfd::place(fd).map_err(|_| uffd::Refusal::Kernel));
    match placed {
        Ok(fd) => {
            t.uffd = fd;
            UFFD_STATE.store(READY, Ordering::Release);
            Ok(fd)
        }
        Err(r) => {
            REFUSAL.store(
                match r {
                    uffd::Refusal::Privilege => 1,
                    uffd::Refusal::Seccomp => 2,
                    uffd::Refusal::Kernel => 3,
                },
                Ordering::Relaxed,
            );
            UFFD_STATE.store(REFUSED, Ordering::Release);
            Err(r)
        }
    }
}

/// `munmap(2)` of the library's own mapping, as a raw system call.
fn raw_munmap(addr: usize, len: usize) {
    // SAFETY: the callers unmap only an alias of their own, which nothing refers to any more.
    unsafe { sys::munmap(addr, len) };
}

/// `mmap(2)` as a raw system call (the library's hooks never see it).
fn raw_mmap(addr: usize, len: usize, prot: i32, flags: i32, fd: i32, off: u64) -> sys::SysResult<usize> {
    // SAFETY: the callers map only over ranges the library owns (a region, or the program's
    // mapping it is adopting before the program has its address).
    unsafe { sys::mmap(addr, len, prot, flags, fd, off) }
}

fn page_up(n: u64) -> u64 {
    n.next_multiple_of(align::page_size() as u64)
}

/// The mapping the program just got at `[start, start+len)` (`prot`, `flags`, of its `fd`,
/// the file `ident` at `off`), before its address is returned: made direct where it can be.
/// Returns the bytes made direct and whether the file had no direct mapping before, or why not.
pub fn adopt(
    start: usize,
    len: usize,
    prot: i32,
    flags: i32,
    fd: i32,
    ident: (u64, u64),
    off: u64,
) -> Result<(usize, bool), NotDirect> {
    let ty = flags & libc::MAP_TYPE;
    let plain = flags & !(libc::MAP_TYPE | libc::MAP_NORESERVE | libc::MAP_POPULATE) == 0;
    if prot != libc::PROT_READ || !plain || !(ty == libc::MAP_SHARED || ty == libc::MAP_PRIVATE) {
        return Err(NotDirect::Unservable);
    }
    with(|t| {
        let uffd = ensure_uffd(t).map_err(NotDirect::Refused)?;
        if !handler::ensure_running() {
            return Err(NotDirect::NoResource);
        }
        let fi = match t.files.iter().position(|f| f.ident == ident) {
            Some(i) => i,
            None => {
                t.files.push(open_file(fd, ident)?);
                t.files.len() - 1
            }
        };
        let first = t.files[fi].memfd < 0;
        if first {
            lease_file(t, fi)?;
        }
        let f = &t.files[fi];
        if off >= f.size {
            return Err(NotDirect::Unservable);
        }
        let n = (page_up(f.size - off) as usize).min(len);
        let sh = if ty == libc::MAP_SHARED { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
        // Between this mmap and the registration nothing can touch the range: the program
        // does not have its address yet (MAP_FIXED mappings are never adopted).
        let flags = libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_NORESERVE;
        if raw_mmap(start, n, libc::PROT_READ, flags, f.memfd, off).is_err() {
            return Err(NotDirect::NoResource);
        }
        // MADV_NOHUGEPAGE: khugepaged never collapses the memfd's holes into a huge page of
        // zeros behind the handler's back.
        let registered = sys::madvise(start, n, libc::MADV_DONTFORK).is_ok()
            && sys::madvise(start, n, libc::MADV_NOHUGEPAGE).is_ok()
            && uffd::register(uffd, start, n).is_ok();
        if !registered {
            // The file mapping again, as the program asked for it.
            let back = raw_mmap(start, n, libc::PROT_READ, sh | libc::MAP_FIXED, f.mfd, off);
            if back.is_err() {
                let _ = raw_mmap(
                    start,
                    n,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                );
            }
            return Err(NotDirect::NoResource);
        }
        let runs = RunSize { unchecked: 0, ..f.runs };
        cut(t, start, n);
        t.regions.push(Region { size: runs, ..Region::new(start, n, ident, off, ty == libc::MAP_SHARED) });
        Ok((n, first))
    })
}

/// The library's two descriptors of the file behind the program's `fd`.
fn open_file(fd: i32, ident: (u64, u64)) -> Result<DFile, NotDirect> {
    // Not for a file the process takes record locks on: closing these descriptors later would
    // drop the locks. The caller holds the table lock until the file is in the table, where
    // a lock taken once this guard is gone finds it (`retire` waits for the table lock).
    let Some(_opening) = crate::locks::open_own(ident) else { return Err(NotDirect::Locked) };
    let rfd = twin::reopen(fd, libc::O_RDONLY, false, 0, ident).map_err(|_| NotDirect::NoResource)?;
    if sys::set_o_direct(rfd, true).is_err() {
        let _ = sys::close(rfd);
        return Err(NotDirect::NoResource);
    }
    let rfd = libfd::place(rfd).map_err(|_| NotDirect::NoResource)?;
    let mfd = match twin::reopen(fd, libc::O_RDONLY, false, 0, ident).and_then(libfd::place) {
        Ok(m) => m,
        Err(_) => {
            libfd::close(rfd);
            return Err(NotDirect::NoResource);
        }
    };
    Ok(DFile { ident, rfd, mfd, memfd: -1, mident: (0, 0), memgen: 0, size: 0, alias: 0, runs: RunSize::default() })
}

/// Takes the read lease of file `fi` and a memfd of its size for its pages.
fn lease_file(t: &mut Table, fi: usize) -> Result<(), NotDirect> {
    let f = &mut t.files[fi];
    if !lease::take(f.rfd) {
        return Err(NotDirect::Writer);
    }
    let size = sys::fstat(f.rfd).map(|st| st.st_size.max(0) as u64);
    // SAFETY: memfd_create reads the NUL-terminated name.
    let m = unsafe { libc::syscall(libc::SYS_memfd_create, c"s3dlio-direct".as_ptr(), libc::MFD_CLOEXEC) };
    let placed = (m >= 0).then(|| libfd::place(m as i32).ok()).flatten();
    let mident = placed.map(sys::ident);
    let sized = |memfd: i32, size: u64| -> Option<usize> {
        let bytes = page_up(size) as usize;
        sys::ftruncate(memfd, bytes as u64).ok()?;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let alias = raw_mmap(0, bytes, rw, libc::MAP_SHARED | libc::MAP_NORESERVE, memfd, 0).ok()?;
        // The memfd's holes in the alias never become a huge page either, and a fork child
        // has no handler to use it.
        let _ = sys::madvise(alias, bytes, libc::MADV_NOHUGEPAGE);
        if sys::madvise(alias, bytes, libc::MADV_DONTFORK).is_err() {
            raw_munmap(alias, bytes);
            return None;
        }
        Some(alias)
    };
    match (size, placed, mident) {
        (Ok(size), Some(memfd), Some(Ok(mident))) if size > 0 => match sized(memfd, size) {
            Some(alias) => {
                t.memgen += 1;
                let f = &mut t.files[fi];
                f.memfd = memfd;
                f.mident = mident;
                f.memgen = t.memgen;
                f.size = size;
                f.alias = alias;
                Ok(())
            }
            None => {
                libfd::close(memfd);
                lease::give_up(t.files[fi].rfd);
                Err(NotDirect::NoResource)
            }
        },
        (size, placed, _) => {
            if let Some(m) = placed {
                libfd::close(m);
            }
            lease::give_up(t.files[fi].rfd);
            // An empty file has no page to serve: its mapping is the kernel's, as for any
            // mapping wholly past the end of the file.
            Err(if size == Ok(0) { NotDirect::Unservable } else { NotDirect::NoResource })
        }
    }
}

/// Forgets the regions in `[start, start+len)` (the program unmapped or replaced them).
fn cut(t: &mut Table, start: usize, len: usize) -> bool {
    let end = start.saturating_add(len);
    let mut any = false;
    let mut kept = Vec::with_capacity(t.regions.len() + 1);
    for r in t.regions.drain(..) {
        if r.end() <= start || r.start >= end {
            kept.push(r);
            continue;
        }
        any = true;
        if r.start < start {
            kept.push(Region { len: start - r.start, ..r });
        }
        if end < r.end() {
            kept.push(Region { start: end, len: r.end() - end, off: r.off + (end - r.start) as u64, ..r });
        }
    }
    t.regions = kept;
    any
}

/// Makes the regions overlapping `[start, start+len)` the file mappings they were (whole),
/// waking any thread waiting on a fault there: it faults again on the file mapping. Returns
/// the ranges mapped anew: they are fresh VMAs, without the advice the kernel had for them.
fn convert(t: &mut Table, start: usize, len: usize) -> Vec<(usize, usize)> {
    let end = start.saturating_add(len);
    let hit: Vec<Region> = t.regions.iter().filter(|r| r.start < end && start < r.end()).copied().collect();
    let mut vmas = Checker::new();
    let mut fresh = Vec::new();
    for r in hit {
        let (mfd, mident) = t.files.iter().find(|f| f.ident == r.ident).map_or((-1, (0, 0)), |f| (f.mfd, f.mident));
        let sh = if r.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
        if !vmas.is_file_range(r.start, r.len, mident, r.off, true) {
            // Not the region any more (a raw munmap behind the hooks, and the program's own
            // memory there now): left alone.
            cut(t, r.start, r.len);
            continue;
        }
        if raw_mmap(r.start, r.len, libc::PROT_READ, sh | libc::MAP_FIXED, mfd, r.off).is_ok() {
            fresh.push((r.start, r.len));
        } else {
            // Never zeros: without the file mapping, a touch there is a SIGSEGV.
            let _ = raw_mmap(
                r.start,
                r.len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
        }
        if t.uffd >= 0 {
            uffd::wake(t.uffd, r.start, r.len);
        }
        cut(t, r.start, r.len);
        if let Some(s) = stats() {
            s.add(crate::stats::Counter::MapDirectConverted, 1);
        }
    }
    fresh
}

/// A registered range `[from, from+len)` was moved to `to` by an `mremap` the hooks did not
/// see: the regions there are forgotten and what is now at `to` becomes the file mapping.
pub(crate) fn moved(t: &mut Table, from: usize, to: usize, len: usize) {
    cut(t, from, len);
    convert_stray(t, to);
}

/// The mapping at `x` is one of the library's memfds but no region (moved or grown behind the
/// hooks): it becomes the file mapping, whose offsets are the memfd's (private: a read-only
/// mapping reads the same either way), and its waiters are woken.
pub(crate) fn convert_stray(t: &mut Table, x: usize) {
    let Some(v) = Checker::new().at(x) else { return };
    let Some(mfd) = t.files.iter().find(|f| f.memfd >= 0 && f.mident == v.ident).map(|f| f.mfd) else { return };
    let len = v.end - v.start;
    cut(t, v.start, len);
    if raw_mmap(v.start, len, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_FIXED, mfd, v.offset).is_err() {
        let _ =
            raw_mmap(v.start, len, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED, -1, 0);
    }
    if t.uffd >= 0 {
        uffd::wake(t.uffd, v.start, len);
    }
}

/// Converts every region of file `fi` and gives its lease and memfd up (a writer waits for it).
pub(crate) fn release_file(t: &mut Table, fi: usize) {
    let ident = t.files[fi].ident;
    let spans: Vec<(usize, usize)> = t.regions.iter().filter(|r| r.ident == ident).map(|r| (r.start, r.len)).collect();
    for (s, l) in spans {
        // A writer or a lock gives the file back from the handler: the advice the kernel had
        // for these ranges is not restored there (README, "What differs").
        convert(t, s, l);
    }
    let f = &mut t.files[fi];
    lease::give_up(f.rfd);
    let gen = f.memgen;
    if f.memfd >= 0 {
        libfd::close(f.memfd);
        f.memfd = -1;
    }
    let alias = std::mem::take(&mut f.alias);
    if alias != 0 {
        let len = page_up(f.size) as usize;
        t.dead.push((alias, len));
    }
    let mut freed = 0;
    t.filled.retain(|e| {
        let keep = !(e.0 == ident && e.1 == gen);
        if !keep {
            freed += e.3;
        }
        keep
    });
    t.filled_bytes -= freed.min(t.filled_bytes);
}

/// Unmaps the aliases of released memfds (the handler, between its reads).
pub(crate) fn drop_aliases(t: &mut Table) {
    for (a, l) in t.dead.drain(..) {
        raw_munmap(a, l);
    }
}

/// The process is about to take its first POSIX record lock on the file `ident` (see
/// `crate::locks`): its direct mappings become file mappings and the library's descriptors of
/// it are closed now, while no lock of the process can be on it. Not when `nowait` finds the
/// table held (a signal handler that interrupted its holder).
pub fn retire(ident: (u64, u64), nowait: bool) {
    if !enabled() {
        return;
    }
    let Some(_g) = (if nowait { SHARED.lock.try_lock() } else { Some(SHARED.lock.lock()) }) else { return };
    // SAFETY: the lock is held for the life of `_g`, and this is the only reference made.
    let t = unsafe { &mut *SHARED.table.get() };
    if let Some(fi) = t.files.iter().position(|f| f.ident == ident) {
        release_file(t, fi);
        let f = t.files.remove(fi);
        for fd in [f.rfd, f.mfd] {
            libfd::close(fd);
        }
    }
    ANY.store(!t.regions.is_empty(), Ordering::Release);
}

/// True if some direct region exists (one atomic load).
#[inline]
pub fn any() -> bool {
    ANY.load(Ordering::Acquire)
}

/// Before `mremap`, `mprotect` or `madvise` (advice the kernel treats differently for the
/// memory a region is) on `[start, start+len)`: the regions there become file mappings again,
/// so the kernel's answer and what follows are its own.
pub fn before_change(start: usize, len: usize) -> Vec<(usize, usize)> {
    if any() {
        with(|t| convert(t, start, len))
    } else {
        Vec::new()
    }
}

/// True if `madvise(advice)` on a region gives what it gives on the file mapping (the result,
/// and the bytes read after it): the region can stay direct.
pub fn advice_keeps(advice: i32) -> bool {
    matches!(
        advice,
        libc::MADV_NORMAL | libc::MADV_RANDOM | libc::MADV_SEQUENTIAL | libc::MADV_WILLNEED | libc::MADV_DONTNEED
    )
}

/// After `munmap` (or a MAP_FIXED mapping over) `[start, start+len)`.
pub fn unmapped(start: usize, len: usize) {
    if any() {
        with(|t| {
            cut(t, start, len);
        });
    }
}

/// The at-fork prepare handler: no thread changes the table while the process forks.
pub fn before_fork() {
    if !enabled() {
        return;
    }
    FORK.prepare(&SHARED.lock);
}

/// In the parent after fork.
pub fn after_fork_parent() {
    FORK.parent(&SHARED.lock);
}

/// In a fork child: the regions were not inherited (MADV_DONTFORK); each becomes the file
/// mapping it was at the same address (served by the bounded mode from now on). The child
/// holds neither lease nor userfaultfd of its own yet: its copies of the parent's descriptors
/// are closed (a leased description kept alive by a child would outlive the parent's handler).
pub fn after_fork_child() {
    if !enabled() {
        return;
    }
    FORK.child(&SHARED.lock);
    handler::after_fork_child();
    with(|t| {
        let mut vmas = Checker::new();
        for r in &t.regions {
            let (mfd, mident) = t.files.iter().find(|f| f.ident == r.ident).map_or((-1, (0, 0)), |f| (f.mfd, f.mident));
            let sh = if r.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
            // If this fails the range stays unmapped: a touch there is a SIGSEGV, never zeros.
            let placed = raw_mmap(r.start, r.len, libc::PROT_READ, sh | libc::MAP_FIXED_NOREPLACE, mfd, r.off);
            // The child has the memfd mapping after all (MADV_DOFORK behind the hooks): no
            // userfaultfd serves it here, so it is replaced before anything touches it.
            if placed == Err(libc::EEXIST) && vmas.is_file_range(r.start, r.len, mident, r.off, true) {
                let _ = raw_mmap(r.start, r.len, libc::PROT_READ, sh | libc::MAP_FIXED, mfd, r.off);
            }
        }
        t.regions.clear();
        for f in t.files.drain(..) {
            for fd in [f.rfd, f.mfd, f.memfd] {
                if fd >= 0 {
                    libfd::close(fd);
                }
            }
        }
        if t.uffd >= 0 {
            libfd::close(t.uffd);
            t.uffd = -1;
        }
        t.filled.clear();
        t.filled_bytes = 0;
        // Not inherited (MADV_DONTFORK): whatever the child maps there is its own.
        t.dead.clear();
    });
    UFFD_STATE.store(UNTRIED, Ordering::Release);
}

/// The process ends or execs: the filled pages are freed now.
pub fn at_end() {
    if any() {
        with(|t| {
            for f in &t.files {
                if f.memfd >= 0 {
                    let _ = handler::punch(f.memfd, 0, page_up(f.size));
                }
            }
            t.filled.clear();
            t.filled_bytes = 0;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: usize, len: usize, off: u64) -> Region {
        Region::new(start, len, (1, 2), off, true)
    }

    #[test]
    fn cutting_keeps_the_offsets_of_what_is_left() {
        let mut t = Table::default();
        t.regions.push(region(0x10000, 0x8000, 0x2000));
        assert!(cut(&mut t, 0x12000, 0x1000));
        let mut v: Vec<(usize, usize, u64)> = t.regions.iter().map(|r| (r.start, r.len, r.off)).collect();
        v.sort();
        assert_eq!(v, vec![(0x10000, 0x2000, 0x2000), (0x13000, 0x5000, 0x5000)]);
        assert!(!cut(&mut t, 0x20000, 0x1000));
    }

    #[test]
    fn only_advice_with_the_same_outcome_keeps_a_region() {
        assert!(advice_keeps(libc::MADV_DONTNEED) && advice_keeps(libc::MADV_SEQUENTIAL));
        for a in [libc::MADV_REMOVE, libc::MADV_FREE, libc::MADV_DOFORK, libc::MADV_DONTFORK, libc::MADV_HUGEPAGE] {
            assert!(!advice_keeps(a), "{a}");
        }
    }
}
