//! The reclaimer: a thread (all signals blocked, started at the first mapping of a matched
//! file and again in a fork child that inherited some) that every few milliseconds measures
//! the mapped files' chunks in the page cache and, past the budget, gives back the oldest
//! (see [`super::policy`]): their page table entries dropped (MADV_DONTNEED where every page
//! is the file's own, MADV_PAGEOUT where the mapping may hold private copies), then the
//! file's cached pages of the chunk (POSIX_FADV_DONTNEED, which leaves pages other mappings
//! still map). It makes raw system calls only, so it never enters the library's hooks.

use super::policy::{self, Chunk};
use super::stream::{self, Pagemap};
use super::vma::Checker;
use super::{close_file_fd, has_files, lock, unsure, File, Mapping, Registry, SUPER};
use crate::stats::{Counter, Stats};
use crate::{align, libfd, sys};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How often the footprint is measured.
pub const INTERVAL: Duration = Duration::from_millis(5);
/// How often the fronts of scans are followed (see [`stream`]) between two measures.
const STEP: Duration = Duration::from_millis(1);
/// Passes (about a second) within which a chunk read again after being given back counts as
/// a refault.
pub const REFAULT_PASSES: u32 = 200;
/// Refaults after which the process's mapped files are switched to random reads (see
/// [`super::advice`]): a scan never reads back soon what it gave back; reads at random over
/// more than the budget do within a few batches, and each batch until then reads the kernel's
/// read-around window per touch.
pub const THRASH: u32 = 1;
/// Passes (about a second) in which pages written through a shared mapping that was unmapped
/// are written back and dropped.
pub const DROP_RETRIES: u32 = 200;
/// Passes a file that is no longer mapped and has nothing cached is kept for (a loader that
/// maps the same file again for each batch keeps its chunks' ages).
const IDLE_PASSES: u32 = 200;
/// Files no longer mapped that are kept, their pages given back by age; beyond this the one
/// unmapped longest ago is dropped whole.
const MAX_IDLE_FILES: usize = 64;

static BUDGET_PAGES: AtomicU64 = AtomicU64::new(u64::MAX);
static STATS: AtomicPtr<Stats> = AtomicPtr::new(std::ptr::null_mut());
static RUNNING: AtomicBool = AtomicBool::new(false);
static WAKE: AtomicU32 = AtomicU32::new(0);

/// Sets the budget (bytes) and where the reclaimer counts; once, at load.
pub fn configure(budget: u64, stats: &'static Stats) {
    let pages = budget.div_ceil(align::page_size() as u64).max(1);
    BUDGET_PAGES.store(pages, Ordering::Relaxed);
    STATS.store(stats as *const Stats as *mut Stats, Ordering::Release);
}

fn stats() -> Option<&'static Stats> {
    // SAFETY: only `configure` stores, and it stores a `&'static Stats`.
    unsafe { STATS.load(Ordering::Acquire).as_ref() }
}

/// Starts the thread if it does not run yet, and wakes it.
pub fn ensure_running() {
    WAKE.fetch_add(1, Ordering::Release);
    sys::futex_wake_one(&WAKE);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = crate::sys::spawn_without_signals("s3dlio-map", run);
    if !spawned {
        RUNNING.store(false, Ordering::Release);
    }
}

/// In a fork child, which has no reclaimer thread.
pub(super) fn after_fork_child() {
    RUNNING.store(false, Ordering::Release);
    if has_files() {
        ensure_running();
    }
}

fn run() {
    loop {
        let seen = WAKE.load(Ordering::Acquire);
        if !has_files() {
            sys::futex_wait(&WAKE, seen);
            continue;
        }
        let _ = std::panic::catch_unwind(pass);
        let mut left = INTERVAL;
        while stream::active() && left > STEP {
            std::thread::sleep(STEP);
            left -= STEP;
            let _ = std::panic::catch_unwind(follow);
        }
        std::thread::sleep(left);
    }
}

/// Between two measures: moves the scans' fronts and reads ahead of them.
fn follow() {
    let ahead = {
        let Some(mut h) = lock(false) else { return };
        let r = h.reg();
        let now = r.pass;
        stream::step(r, &mut Pagemap::new(), BUDGET_PAGES.load(Ordering::Relaxed), now)
    };
    stream::issue(&ahead);
}

/// Drops the page table entries of `[a, a+len)` of mapping `m` with advice that loses no data:
/// MADV_DONTNEED only where every page is the file's and the kernel confirms the range is
/// still that mapping (a raw `munmap` behind the hooks may have made it someone else's
/// memory), MADV_PAGEOUT (which never discards anything) otherwise.
pub(super) fn zap(m: &Mapping, a: usize, len: usize, vmas: &mut Checker) {
    let off = m.off + (a - m.start) as u64;
    let dontneed = (m.shared || !m.cow) && !unsure() && vmas.is_file_range(a, len, m.ident, off, m.shared);
    let _ = sys::madvise(a, len, if dontneed { libc::MADV_DONTNEED } else { libc::MADV_PAGEOUT });
}

/// What one file looked like when the pass began.
struct Snap {
    ident: (u64, u64),
    fd: i32,
    shift: u32,
    nchunks: usize,
    supers: Vec<u64>,
    cachestat: bool,
    maps: Vec<Mapping>,
}

/// What the pass measured of one file.
struct Measured {
    ident: (u64, u64),
    fd_lost: bool,
    cachestat_refused: bool,
    supers: Vec<u64>,
    chunks: Vec<(usize, u32)>,
}

fn pass() {
    let (now, snaps) = {
        let Some(mut h) = lock(false) else { return };
        let r = h.reg();
        r.pass = r.pass.wrapping_add(1);
        let snaps: Vec<Snap> = r
            .files
            .iter()
            .map(|f| Snap {
                ident: f.ident,
                fd: f.fd,
                shift: f.shift,
                nchunks: f.chunks.len(),
                supers: f.supers.clone(),
                cachestat: f.cachestat,
                maps: if f.cachestat {
                    Vec::new()
                } else {
                    r.maps.iter().filter(|m| m.ident == f.ident).copied().collect()
                },
            })
            .collect();
        (r.pass, snaps)
    };
    let measured: Vec<Measured> = snaps.iter().map(measure).collect();
    let Some(mut h) = lock(false) else { return };
    let ahead = account(h.reg(), measured, now);
    drop(h);
    stream::issue(&ahead);
}

/// What a pass measured goes into the registry; scans are looked for and followed, and past
/// the budget the oldest chunks are given back. Returns the read-ahead to issue.
fn account(r: &mut Registry, measured: Vec<Measured>, now: u32) -> stream::Ahead {
    let page = align::page_size() as u64;
    let mut faulted = 0u64;
    let mut refaults = 0u32;
    for m in measured {
        let Some(f) = r.file(m.ident) else { continue };
        if m.fd_lost {
            f.fd = -1;
            f.cachestat = false;
        }
        if m.cachestat_refused {
            f.cachestat = false;
        }
        if m.supers.len() == f.supers.len() {
            f.supers = m.supers;
        }
        let per_chunk = ((1u64 << f.shift) / page) as u32;
        for (ci, n) in m.chunks {
            let Some(c) = f.chunks.get_mut(ci) else { continue };
            let n = n.min(per_chunk);
            if n > c.resident {
                faulted += u64::from(n - c.resident);
                c.stamp = now;
                if c.given != 0 && now.wrapping_sub(c.given) < REFAULT_PASSES {
                    refaults += 1;
                }
                c.given = 0;
            }
            c.resident = n;
        }
    }
    let budget = BUDGET_PAGES.load(Ordering::Relaxed);
    for f in r.files.iter_mut().filter(|f| f.ra == 0) {
        f.ra = stream::device_window(f.ident.0);
    }
    r.refaults = r.refaults.saturating_add(refaults);
    if !r.random && r.refaults >= THRASH {
        r.random = true;
        r.maps.iter().for_each(super::advice::switch);
    }
    let mut pm = Pagemap::new();
    stream::detect(r, &mut pm, now);
    let ahead = stream::step(r, &mut pm, budget, now);
    let total: u64 = r.files.iter().flat_map(|f| f.chunks.iter()).map(|c| u64::from(c.resident)).sum();
    let victims = policy::choose(
        r.files.iter().enumerate().flat_map(|(fi, f)| f.chunks.iter().enumerate().map(move |(ci, c)| ((fi, ci), *c))),
        total,
        budget,
        now,
    );
    let mut given = 0u64;
    let mut vmas = Checker::new();
    for (fi, ci) in victims {
        given += give_back(r, fi, ci, &mut vmas);
    }
    let after = total.saturating_sub(given);
    housekeeping(r, now);
    if let Some(s) = stats() {
        s.add(Counter::MapFaultedBytes, faulted * page);
        s.add(Counter::MapGivenBackBytes, given * page);
        s.raise(Counter::MapPeakBytes, total.max(after) * page);
    }
    ahead
}

/// Measures a file's chunks: cachestat of the whole span, then of superchunks, then of the
/// chunks of superchunks that changed; where cachestat is refused (Linux 6.14+ for a file
/// the process may not write), mincore of its mappings.
fn measure(s: &Snap) -> Measured {
    let mut out = Measured {
        ident: s.ident,
        fd_lost: false,
        cachestat_refused: false,
        supers: s.supers.clone(),
        chunks: Vec::new(),
    };
    if s.fd >= 0 && !(libfd::is_ours(s.fd) && sys::ident(s.fd) == Ok(s.ident)) {
        out.fd_lost = true;
        return out;
    }
    if s.fd >= 0 && s.cachestat {
        match by_cachestat(s, &mut out) {
            Ok(()) => return out,
            Err(_) => {
                out.cachestat_refused = true;
                out.chunks.clear();
                return out;
            }
        }
    }
    by_mincore(s, &mut out);
    out
}

fn by_cachestat(s: &Snap, out: &mut Measured) -> sys::SysResult<()> {
    let csize = 1u64 << s.shift;
    let span = s.nchunks as u64 * csize;
    let (total, _) = sys::cachestat_range(s.fd, 0, span)?;
    if s.supers.iter().all(|&v| v != u64::MAX) && s.supers.iter().sum::<u64>() == total {
        return Ok(());
    }
    for (k, sv) in out.supers.iter_mut().enumerate() {
        let lo = (k * SUPER) as u64 * csize;
        let n = SUPER.min(s.nchunks - k * SUPER);
        let (c, _) = sys::cachestat_range(s.fd, lo, n as u64 * csize)?;
        if c == *sv {
            continue;
        }
        *sv = c;
        for ci in k * SUPER..k * SUPER + n {
            let (cc, _) = sys::cachestat_range(s.fd, ci as u64 * csize, csize)?;
            out.chunks.push((ci, cc as u32));
        }
    }
    Ok(())
}

fn by_mincore(s: &Snap, out: &mut Measured) {
    let page = align::page_size();
    let mut counts: Vec<Option<u32>> = vec![None; s.nchunks];
    let mut buf = vec![0u8; 16 << 10];
    for m in &s.maps {
        let pages = m.len / page;
        let mut i = 0;
        while i < pages {
            let n = (pages - i).min(buf.len());
            // SAFETY: `buf[..n]` holds one byte for each of the `n` pages asked about.
            if unsafe { sys::mincore(m.start + i * page, n * page, &mut buf[..n]) }.is_err() {
                break;
            }
            for (j, b) in buf[..n].iter().enumerate() {
                let ci = ((m.off + ((i + j) * page) as u64) >> s.shift) as usize;
                if let Some(c) = counts.get_mut(ci) {
                    *c = Some(c.unwrap_or(0) + u32::from(b & 1));
                }
            }
            i += n;
        }
    }
    out.chunks = counts.into_iter().enumerate().filter_map(|(ci, c)| c.map(|c| (ci, c))).collect();
}

/// Gives back chunk `ci` of file `fi`; returns the pages that left the page cache.
fn give_back(r: &mut Registry, fi: usize, ci: usize, vmas: &mut Checker) -> u64 {
    let r_pass = r.pass;
    let f = &r.files[fi];
    let csize = 1u64 << f.shift;
    let (lo, hi) = (ci as u64 * csize, (ci as u64 + 1) * csize);
    for m in r.maps.iter().filter(|m| m.ident == f.ident) {
        let (mlo, mhi) = (m.off, m.off + m.len as u64);
        let (a, b) = (lo.max(mlo), hi.min(mhi));
        if a < b {
            zap(m, m.start + (a - mlo) as usize, (b - a) as usize, vmas);
        }
    }
    let before = f.chunks[ci].resident;
    let mut left = 0;
    if f.fd >= 0 {
        let _ = sys::fadvise(f.fd, lo, csize, libc::POSIX_FADV_DONTNEED);
        if f.cachestat {
            left = sys::cachestat_range(f.fd, lo, csize).map_or(0, |(c, _)| c as u32);
        }
    }
    let f = &mut r.files[fi];
    f.chunks[ci] = Chunk { resident: left, stamp: f.chunks[ci].stamp, given: r_pass.max(1) };
    if let Some(s) = f.supers.get_mut(ci / SUPER) {
        *s = u64::MAX;
    }
    u64::from(before.saturating_sub(left))
}

/// Files no longer mapped: pages written through shared mappings written back and dropped,
/// unlinked files and files with nothing cached forgotten (their descriptor closed), and
/// the oldest forgotten when too many are kept.
fn housekeeping(r: &mut Registry, now: u32) {
    for f in r.files.iter_mut().filter(|f| f.drop_retries > 0 && f.fd >= 0) {
        let _ = sys::fadvise(f.fd, 0, 0, libc::POSIX_FADV_DONTNEED);
        let clean = f.cachestat && sys::cachestat(f.fd).is_ok_and(|(_, dirty)| dirty == 0);
        f.drop_retries = if clean { 0 } else { f.drop_retries - 1 };
    }
    let mapped: Vec<(u64, u64)> = r.maps.iter().map(|m| m.ident).collect();
    let idle: Vec<usize> = (0..r.files.len()).filter(|&i| !mapped.contains(&r.files[i].ident)).collect();
    let oldest = (idle.len() > MAX_IDLE_FILES)
        .then(|| idle.iter().copied().max_by_key(|&i| now.wrapping_sub(r.files[i].idle_since)))
        .flatten();
    let mut gone = Vec::new();
    for i in idle {
        let f: &File = &r.files[i];
        let unlinked = f.fd >= 0 && sys::statx_fd(f.fd, libc::STATX_NLINK).is_ok_and(|sx| sx.stx_nlink == 0);
        let empty = f.chunks.iter().all(|c| c.resident == 0) && f.drop_retries == 0;
        let forget = unlinked || Some(i) == oldest || (empty && now.wrapping_sub(f.idle_since) > IDLE_PASSES);
        if !forget {
            continue;
        }
        if f.fd >= 0 && !empty {
            let _ = sys::fadvise(f.fd, 0, 0, libc::POSIX_FADV_DONTNEED);
        }
        if close_file_fd(f) {
            gone.push(f.ident);
        }
    }
    r.files.retain(|f| !gone.contains(&f.ident));
}
