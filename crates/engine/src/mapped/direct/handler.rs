//! The handler thread of the direct mappings: all signals blocked, it reads the userfaultfd
//! and serves each fault with an O_DIRECT read of the file straight into the memfd, through
//! its alias (reading further ahead, up to [`MAX_WINDOW`], while faults come in order; only
//! the touched page otherwise), then maps the pages into the region with UFFDIO_CONTINUE
//! (no copy; a page the memfd holds already is only mapped), frees the pages filled longest
//! ago past the budget (a hole punched in the memfd: they fault and are read again if
//! touched), and polls the read leases (a file someone opens for writing is served from the
//! page cache again before the lease goes).
//! It takes no lock but the table's, which no thread holds while it can fault, and makes raw
//! system calls only.

use super::{lease, release_file, stats, uffd, with};
use crate::stats::Counter;
use crate::{align, sys};
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest read ahead of in-order faults.
pub const MAX_WINDOW: usize = 8 << 20;
/// The window of a run's second in-order fault.
const FIRST_RUN_WINDOW: usize = 64 << 10;
/// The most a run's first fault reads (what the file's runs have been long, learned).
const MAX_EAGER: usize = 128 << 10;
/// Runs in a row that confirm the size before it counts as settled, and how often a first
/// read is still checked then (a run shorter than the size shows only at a check).
const SETTLED: u8 = 2;
const CHECK_EVERY: u8 = 8;
/// How often the leases are polled (a writer opening a direct-mapped file waits about this).
const LEASE_POLL_MS: i64 = 2;

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Starts the thread if it does not run yet; false if it cannot be started.
pub fn ensure_running() -> bool {
    if RUNNING.swap(true, Ordering::AcqRel) {
        return true;
    }
    let spawned = crate::sys::spawn_without_signals("s3dlio-uffd", run);
    if !spawned {
        RUNNING.store(false, Ordering::Release);
    }
    spawned
}

/// In a fork child, which has no handler thread.
pub(super) fn after_fork_child() {
    RUNNING.store(false, Ordering::Release);
}

/// Punches `[off, off+len)` out of a memfd: its pages are freed and missing again.
pub(super) fn punch(memfd: i32, off: u64, len: u64) -> sys::SysResult<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_fallocate, memfd, mode, off, len) };
    if r < 0 {
        Err(sys::errno())
    } else {
        Ok(())
    }
}

/// A window is read as pieces of this size, all in flight at once (one O_DIRECT request
/// of several MiB keeps a disk far below its rate).
const PIECE: usize = 1 << 20;
/// Pieces in flight at once: two windows read ahead together (the kernel allocates the
/// second's pages while the first's are read).
const IN_FLIGHT: usize = 2 * MAX_WINDOW / PIECE;

/// The AIO context windows are read with (0: none, read with pread), and room for the
/// residency of one window.
struct Reader {
    aio: crate::sys::aio::Context,
    incore: Vec<u8>,
}

impl Reader {
    fn new() -> Reader {
        let aio = crate::sys::aio::setup(IN_FLIGHT).unwrap_or(0);
        Reader { aio, incore: vec![0; MAX_WINDOW / align::page_size()] }
    }

    /// The runs of pages of the memfd's `[off, off+len)` it does not hold (file offset,
    /// bytes), read off its alias; `None` if the kernel would not say.
    fn absent(&mut self, alias: usize, off: u64, len: usize) -> Option<Vec<(u64, usize)>> {
        let page = align::page_size();
        let v = self.incore.get_mut(..len / page)?;
        // SAFETY: `v` holds one byte per page of the range, which lies within the alias.
        unsafe { sys::mincore(alias + off as usize, len, v) }.ok()?;
        let mut runs: Vec<(u64, usize)> = Vec::new();
        for (i, b) in v.iter().enumerate() {
            if b & 1 != 0 {
                continue;
            }
            let at = off + (i * page) as u64;
            match runs.last_mut() {
                Some((o, l)) if *o + *l as u64 == at => *l += page,
                _ => runs.push((at, page)),
            }
        }
        Some(runs)
    }

    /// Reads each run of the file `fd` into the alias at the run's own offset, as pieces of at
    /// most [`PIECE`] in flight together: true if every piece read whole, up to `size`. (The
    /// kernel allocates and zeroes a piece's pages as it submits it, while the pieces before
    /// are in flight.)
    fn read(&self, fd: i32, alias: usize, runs: &[(u64, usize)], size: u64) -> bool {
        use crate::sys::aio;
        let pieces: Vec<(u64, usize)> = runs
            .iter()
            .flat_map(|&(o, l)| (0..l).step_by(PIECE).map(move |at| (o + at as u64, PIECE.min(l - at))))
            .collect();
        let expect = |off: u64, len: usize| (size.saturating_sub(off)).min(len as u64) as usize;
        if self.aio == 0 || pieces.len() < 2 {
            return pieces.iter().all(|&(off, len)| {
                let mut got = 0;
                while got < len {
                    let dst = (alias + off as usize + got) as *mut u8;
                    // SAFETY: the alias maps the memfd writable at every file offset below its size.
                    match unsafe { sys::pread(fd, dst, len - got, off + got as u64) } {
                        Ok(0) | Err(_) => break,
                        Ok(k) => got += k,
                    }
                }
                got >= expect(off, len)
            });
        }
        for batch in pieces.chunks(IN_FLIGHT) {
            let mut cbs: Vec<libc::iocb> = batch
                .iter()
                .enumerate()
                .map(|(i, &(off, len))| aio::pread_cb(fd, (alias + off as usize) as *mut u8, len as u64, off, i as u64))
                .collect();
            let mut ptrs: Vec<*mut libc::iocb> = cbs.iter_mut().map(|c| c as *mut libc::iocb).collect();
            // SAFETY: the iocbs stay untouched until every read is reaped below, and the alias
            // stays mapped while the handler runs (it alone unmaps aliases).
            let submitted = unsafe { aio::submit(self.aio, &mut ptrs) }.unwrap_or(0);
            let mut res = vec![-1i64; batch.len()];
            let mut evs = [aio::IoEvent::default(); 8];
            let mut left = submitted;
            while left > 0 {
                let Ok(k) = aio::getevents(self.aio, &mut evs) else { break };
                for e in &evs[..k] {
                    if let Some(r) = res.get_mut(e.data as usize) {
                        *r = e.res;
                    }
                }
                left -= k.min(left);
            }
            if left > 0 {
                // Reads still in flight: none is reaped and none is trusted.
                aio::destroy(self.aio);
                return false;
            }
            if !batch.iter().zip(&res).all(|(&(off, len), &r)| r >= 0 && r as usize >= expect(off, len)) {
                return false;
            }
        }
        true
    }
}

fn run() {
    let mut rd = Reader::new();
    loop {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| turn(&mut rd)));
    }
}

/// One turn: waits for faults (or the next lease poll), serves them, polls the leases.
fn turn(rd: &mut Reader) {
    let (ufd, leases) = with(|t| {
        super::drop_aliases(t);
        (t.uffd, !t.files.is_empty())
    });
    if ufd < 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        return;
    }
    let mut pfd = libc::pollfd { fd: ufd, events: libc::POLLIN, revents: 0 };
    let ts = libc::timespec { tv_sec: 0, tv_nsec: if leases { LEASE_POLL_MS * 1_000_000 } else { 50_000_000 } };
    // SAFETY: one pollfd, a timespec and no signal mask, all valid for the call.
    unsafe {
        libc::syscall(libc::SYS_ppoll, &mut pfd as *mut libc::pollfd, 1, &ts as *const libc::timespec, 0usize, 0usize)
    };
    // Faults first; then, when one continued an in-order run, the next window is read ahead
    // while the faulting thread reads what it asked for.
    let mut ahead = None;
    loop {
        while let Some(m) = uffd::read_msg(ufd) {
            match m.event {
                uffd::EVENT_PAGEFAULT => {
                    if let Some(n) = fill(ufd, m.arg[1] as usize, rd) {
                        ahead = Some(n);
                    }
                }
                uffd::EVENT_REMAP => with(|t| super::moved(t, m.arg[0] as usize, m.arg[1] as usize, m.arg[2] as usize)),
                _ => {}
            }
        }
        match ahead.take() {
            Some(n) => ahead = fill_ahead(ufd, n, rd),
            None => break,
        }
    }
    poll_leases();
}

/// What one fill reads: the file, its memfd generation, the range, what of it is missing.
struct Plan {
    rfd: i32,
    ident: (u64, u64),
    gen: u64,
    memfd: i32,
    alias: usize,
    at: usize,
    foff: u64,
    len: usize,
    size: u64,
    /// Bytes at the start read but not mapped: the marker page of a window read ahead,
    /// whose fault says the program reached the window (and the next is read ahead).
    skip: usize,
    /// Bytes at the end read but not mapped: the tail page of a run's first read.
    tail: usize,
    /// Where the next window starts, if this one continued an in-order run.
    then: Option<usize>,
    /// The runs of the range the memfd does not hold yet: what is read.
    runs: Vec<(u64, usize)>,
}

/// Serves a fault at `addr`: reads what of its window the memfd lacks straight into the
/// memfd, then maps the window into the region. Returns where to read ahead next, if anywhere.
fn fill(ufd: i32, addr: usize, rd: &mut Reader) -> Option<usize> {
    let p = plan(ufd, addr, rd, false)?;
    let whole = read(rd, &p.runs, &p);
    finish(ufd, &p, whole, false)
}

/// Reads the window at `addr` ahead of the faults, and the one after it too if there is one
/// (both in flight together); returns where to read ahead next, if anywhere.
fn fill_ahead(ufd: i32, addr: usize, rd: &mut Reader) -> Option<usize> {
    let p = plan(ufd, addr, rd, true)?;
    let Some(q) = p.then.and_then(|n| plan(ufd, n, rd, true)) else {
        let whole = read(rd, &p.runs, &p);
        return finish(ufd, &p, whole, true);
    };
    let runs: Vec<(u64, usize)> = p.runs.iter().chain(&q.runs).copied().collect();
    let whole = if q.rfd == p.rfd && q.alias == p.alias {
        read(rd, &runs, &p)
    } else {
        read(rd, &p.runs, &p) && read(rd, &q.runs, &q)
    };
    finish(ufd, &p, whole, true);
    finish(ufd, &q, whole, true)
}

/// At a run's first fault, what the run before it says of how long runs are here: one that
/// went on past its first read was as long as what was read for it (the mean with what the
/// first read was is taken), one that never reached the unmapped last page of its first read
/// was shorter (half); a run that reached it and stopped keeps the size and settles it. A run
/// whose first read was not checked and that stopped within it says nothing.
fn learn(r: &mut super::Region, page: usize) {
    let s = &mut r.size;
    if s.eager == 0 {
        s.eager = page;
    }
    if r.run != usize::MAX {
        if r.grew {
            let seen = r.next.saturating_sub(r.run);
            s.eager = (s.eager + seen) / 2;
            s.settled = 0;
        } else if r.tail != usize::MAX && !r.tail_hit {
            s.eager /= 2;
            s.settled = 0;
        } else if r.tail_hit {
            s.settled = s.settled.saturating_add(1);
        }
    }
    s.eager = (s.eager.next_multiple_of(page)).clamp(page, MAX_EAGER);
}

/// Whether a run's first read of `len` bytes leaves its last page unmapped, to learn whether
/// the run reaches it: always until the size is settled, then every [`CHECK_EVERY`]th.
fn check_tail(s: &mut super::RunSize, len: usize, page: usize) -> bool {
    let check = len > page && (s.settled < SETTLED || s.unchecked + 1 >= CHECK_EVERY);
    s.unchecked = if check { 0 } else { s.unchecked.saturating_add(1) };
    check
}

/// What a fill at `addr` reads and maps (`None`: nothing, the fault answered already).
fn plan(ufd: i32, addr: usize, rd: &mut Reader, ahead: bool) -> Option<Plan> {
    let page = align::page_size();
    let a = addr & !(page - 1);
    let plan = with(|t| {
        let cap = (t.budget / 4).clamp(page, MAX_WINDOW) & !(page - 1);
        let r = t.regions.iter_mut().find(|r| r.start <= a && a < r.end())?;
        let (len, skip, tail, then) = if ahead {
            if a != r.next {
                return Some(None);
            }
            // Two windows ahead: the first carries the marker (unless one is still ahead of
            // the program), and the second follows it at once, so the device is kept busy.
            let len = r.win.min(r.end() - a);
            r.next = a + len;
            let first = r.marker == usize::MAX && len > page;
            if first {
                r.marker = a;
            }
            (len, if first { page } else { 0 }, 0, first.then_some(a + len))
        } else if a == r.marker {
            r.marker = usize::MAX;
            r.win = (r.win * 2).min(cap).max(page);
            (page, 0, 0, Some(r.next))
        } else if a == r.tail {
            // The run reached the end of its first read: that read was not too long.
            r.tail = usize::MAX;
            r.tail_hit = true;
            (page, 0, 0, None)
        } else if a == r.next {
            // A run's second fault reads a slice-sized window at once, and only its third,
            // once the run is more than a slice, reads ahead as well.
            let first = (FIRST_RUN_WINDOW / page).max(1) * page;
            let (win, shown) = if r.grew { ((r.win * 2).max(first), r.win >= first) } else { (first, false) };
            let win = win.min(cap).max(page);
            let len = win.min(r.end() - a);
            r.grew = true;
            r.next = a + len;
            r.win = win;
            (len, 0, 0, shown.then_some(a + len))
        } else {
            // A run's first fault reads what the file's runs have been long (a batch slice
            // in one read, a B-tree page alone), leaving the last page unmapped to learn
            // whether the run reached it (until the size settles, then now and then); the
            // file keeps the size for its next region.
            learn(r, page);
            let len = r.size.eager.min(cap).min(r.end() - a);
            r.run = a;
            r.grew = false;
            r.tail_hit = false;
            let tail = if check_tail(&mut r.size, len, page) { page } else { 0 };
            r.tail = if tail > 0 { a + len - page } else { usize::MAX };
            r.next = a + len;
            r.win = len;
            if let Some(f) = t.files.iter_mut().find(|f| f.ident == r.ident) {
                f.runs = r.size;
            }
            (len, 0, tail, None)
        };
        let then = then.filter(|&n| n < r.end());
        let (ident, foff) = (r.ident, r.off + (a - r.start) as u64);
        let f = t.files.iter().find(|f| f.ident == ident && f.memfd >= 0 && f.alias != 0)?;
        // Read under the lock: the alias is the one of this generation until it is released.
        let runs = rd.absent(f.alias, foff, len)?;
        Some(Some(Plan {
            rfd: f.rfd,
            ident,
            gen: f.memgen,
            memfd: f.memfd,
            alias: f.alias,
            at: a,
            foff,
            len,
            size: f.size,
            skip,
            tail,
            then,
            runs,
        }))
    });
    if let Some(None) = plan {
        return None;
    }
    let Some(p) = plan.flatten() else {
        // Not a region (any more): if it is the library's memory still (moved behind the
        // hooks), the file mapping again; the thread faults again on whatever is there now.
        if !ahead {
            with(|t| super::convert_stray(t, a));
            uffd::wake(ufd, a, page);
        }
        return None;
    };
    Some(p)
}

/// Reads `runs` of the plan's file into its memfd: true if whole (counted as device bytes).
fn read(rd: &Reader, runs: &[(u64, usize)], p: &Plan) -> bool {
    let asked: usize = runs.iter().map(|r| r.1).sum();
    if let Some(s) = stats() {
        s.add(Counter::MapDirectReadBytes, asked as u64);
    }
    asked == 0 || rd.read(p.rfd, p.alias, runs, p.size)
}

/// After the read of a plan's runs: maps its window into the region (or, if the read
/// failed, punches what it left and gives the region back to the kernel), records what was
/// filled against the budget, and wakes the faulting thread. Returns where to read ahead next.
fn finish(ufd: i32, p: &Plan, whole: bool, ahead: bool) -> Option<usize> {
    let page = align::page_size();
    let a = p.at;
    with(|t| {
        let current = t.files.iter().any(|f| f.ident == p.ident && f.memgen == p.gen && f.memfd >= 0);
        if !whole {
            // Whatever the failed read left is never mapped: its pages go, and the region
            // becomes the file mapping again, where the kernel gives its own answer (its
            // bytes, or its SIGBUS).
            if current {
                for &(o, l) in &p.runs {
                    let _ = punch(p.memfd, o, l as u64);
                }
            }
            super::convert(t, a, page);
            uffd::wake(ufd, a, page);
            return None;
        }
        let still = current
            && t.regions.iter().any(|r| {
                r.ident == p.ident
                    && r.start <= p.at
                    && p.at + p.len <= r.end()
                    && r.off + (p.at - r.start) as u64 == p.foff
            });
        if current {
            for &(o, l) in &p.runs {
                // The tail of the last page past the end of the file reads as zeros, as the
                // kernel's does; these pages are new, so no mapping shows them yet.
                let from = o.max(p.size);
                if from < o + l as u64 {
                    // SAFETY: within the alias, which this generation keeps mapped.
                    unsafe {
                        std::ptr::write_bytes((p.alias + from as usize) as *mut u8, 0, (o + l as u64 - from) as usize)
                    };
                }
                t.filled.push_back((p.ident, p.gen, o, l));
                t.filled_bytes += l;
            }
        }
        if still {
            let end = p.at + p.len - p.tail;
            let mut at = p.at + p.skip;
            while at < end {
                match uffd::map_present(ufd, at, end - at) {
                    Ok(n) if n == end - at => at = end,
                    // A page there is mapped already (a minor fault served it), or was given back.
                    Ok(n) => at += n + page,
                    Err(_) => at += page,
                }
            }
        }
        if current {
            evict(t);
        }
        if !ahead {
            uffd::wake(ufd, a, page);
        }
        p.then
    })
}

/// Frees the ranges filled longest ago while the filled bytes pass the budget (the newest
/// range stays: the thread that faulted on it has not read it yet).
fn evict(t: &mut super::Table) {
    let mut given = 0u64;
    while t.filled_bytes > t.budget && t.filled.len() > 1 {
        let Some((ident, gen, off, len)) = t.filled.pop_front() else { break };
        t.filled_bytes -= len.min(t.filled_bytes);
        if let Some(f) = t.files.iter().find(|f| f.ident == ident && f.memgen == gen && f.memfd >= 0) {
            if punch(f.memfd, off, len as u64).is_ok() {
                given += len as u64;
            }
        }
    }
    if given > 0 {
        if let Some(s) = stats() {
            s.add(Counter::MapDirectGivenBackBytes, given);
        }
    }
}

/// Files whose lease is being broken (a writer waits), or that no region maps any more, are
/// given up: their regions become file mappings again first.
fn poll_leases() {
    with(|t| {
        let mut fi = 0;
        while fi < t.files.len() {
            let f = &t.files[fi];
            let mapped = t.regions.iter().any(|r| r.ident == f.ident);
            if f.memfd >= 0 && mapped && lease::held(f.rfd) {
                fi += 1;
                continue;
            }
            release_file(t, fi);
            let f = t.files.remove(fi);
            for fd in [f.rfd, f.mfd] {
                crate::libfd::close(fd);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_s_first_read_learns_how_long_runs_are() {
        let page = align::page_size();
        let mut r = super::super::Region::new(0, 1 << 30, (1, 2), 0, true);
        learn(&mut r, page);
        assert_eq!(r.size.eager, page, "no run seen yet: one page");
        // batch slices of 17 pages: the first went on to a 16-page second read
        (r.run, r.next, r.grew) = (0, 17 * page, true);
        learn(&mut r, page);
        assert_eq!(r.size.eager, 9 * page);
        (r.run, r.next, r.grew, r.tail, r.tail_hit) = (0, 25 * page, true, 8 * page, true);
        learn(&mut r, page);
        assert_eq!(r.size.eager, 17 * page);
        // a run that read its 17 pages, reached the last and stopped: the size holds
        (r.run, r.next, r.grew, r.tail, r.tail_hit) = (0, 17 * page, false, usize::MAX, true);
        learn(&mut r, page);
        assert_eq!(r.size.eager, 17 * page);
        // single-page gets (a B-tree): the unmapped last page is never reached, so it halves
        for want in [9, 5, 3, 2, 1] {
            (r.run, r.grew, r.tail, r.tail_hit) = (0, false, 16 * page, false);
            learn(&mut r, page);
            assert_eq!(r.size.eager, want * page);
        }
        // and never past the cap, however long a scan was
        (r.run, r.next, r.grew) = (0, 1 << 30, true);
        learn(&mut r, page);
        assert_eq!(r.size.eager, MAX_EAGER);
    }

    #[test]
    fn a_settled_size_is_checked_only_every_so_often() {
        let page = align::page_size();
        let mut r = super::super::Region::new(0, 1 << 30, (1, 2), 0, true);
        r.size.eager = 17 * page;
        // runs that reach the checked last page and stop settle the size
        for settled in 1..=SETTLED {
            assert!(check_tail(&mut r.size, 17 * page, page), "checked until settled");
            (r.run, r.next, r.grew, r.tail, r.tail_hit) = (0, 17 * page, false, usize::MAX, true);
            learn(&mut r, page);
            assert_eq!((r.size.eager, r.size.settled), (17 * page, settled));
        }
        let checks = (0..4 * CHECK_EVERY as usize).filter(|_| check_tail(&mut r.size, 17 * page, page)).count();
        assert_eq!(checks, 4, "once every {CHECK_EVERY} first reads");
        // a run not checked that stops within its read says nothing
        (r.run, r.grew, r.tail, r.tail_hit) = (0, false, usize::MAX, false);
        learn(&mut r, page);
        assert_eq!((r.size.eager, r.size.settled), (17 * page, SETTLED));
        // a checked run that stops short halves the size and unsettles it: checked again
        (r.run, r.grew, r.tail, r.tail_hit) = (0, false, 16 * page, false);
        learn(&mut r, page);
        assert_eq!((r.size.eager, r.size.settled), (9 * page, 0));
        assert!(check_tail(&mut r.size, 9 * page, page));
        // and one that goes on past its read too
        r.size.settled = SETTLED;
        (r.run, r.next, r.grew) = (0, 25 * page, true);
        learn(&mut r, page);
        assert_eq!((r.size.eager, r.size.settled), (17 * page, 0));
        // a one-page read has no last page to leave unmapped
        r.size.settled = 0;
        assert!(!check_tail(&mut r.size, page, page));
    }
}
