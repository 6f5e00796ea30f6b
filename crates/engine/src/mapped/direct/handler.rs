//! The handler thread of the direct mappings: all signals blocked, it reads the userfaultfd
//! and fills each missing page with an O_DIRECT read of the file (reading further ahead, up to
//! [`MAX_WINDOW`], while faults come in order; only the touched page otherwise), copies it
//! in with UFFDIO_COPY, frees the pages filled longest ago past the budget (a hole punched in
//! the memfd: they fault and are read again if touched), and polls the read leases (a file
//! someone opens for writing is served from the page cache again before the lease goes).
//! It takes no lock but the table's, which no thread holds while it can fault, and makes raw
//! system calls only.

use super::{lease, release_file, stats, uffd, with};
use crate::stats::Counter;
use crate::{align, sys};
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest read ahead of in-order faults.
pub const MAX_WINDOW: usize = 8 << 20;
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

/// An aligned buffer of the handler's own, not inherited by fork children, and the AIO
/// context its windows are read with (0: none, read with pread).
struct Buf {
    p: *mut u8,
    aio: crate::sys::aio::Context,
}

impl Buf {
    fn new() -> Option<Buf> {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::syscall(
                libc::SYS_mmap,
                0usize,
                MAX_WINDOW,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p < 0 && p > -4096 {
            return None;
        }
        let _ = sys::madvise(p as usize, MAX_WINDOW, libc::MADV_DONTFORK);
        let aio = crate::sys::aio::setup(MAX_WINDOW / PIECE).unwrap_or(0);
        Some(Buf { p: p as *mut u8, aio })
    }

    /// Reads `len` bytes (page-aligned) of `fd` at `off` into the buffer: the bytes read
    /// from the start before the first short piece (the end of the file, or an error).
    fn read(&self, fd: i32, off: u64, len: usize) -> usize {
        use crate::sys::aio;
        let n = len.div_ceil(PIECE);
        if self.aio == 0 || n < 2 {
            let mut got = 0;
            while got < len {
                // SAFETY: the buffer is writable for MAX_WINDOW >= len bytes.
                match unsafe { sys::pread(fd, self.p.add(got), len - got, off + got as u64) } {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got += k,
                }
            }
            return got;
        }
        let mut cbs: Vec<libc::iocb> = (0..n)
            .map(|i| {
                let at = i * PIECE;
                // SAFETY: within the buffer (MAX_WINDOW >= len).
                let dst = unsafe { self.p.add(at) };
                aio::pread_cb(fd, dst, PIECE.min(len - at) as u64, off + at as u64, i as u64)
            })
            .collect();
        let mut ptrs: Vec<*mut libc::iocb> = cbs.iter_mut().map(|c| c as *mut libc::iocb).collect();
        // SAFETY: the iocbs and the buffer stay untouched until every read is reaped below.
        let submitted = unsafe { aio::submit(self.aio, &mut ptrs) }.unwrap_or(0);
        let mut res = vec![-1i64; n];
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
            // Reads still in flight write into the buffer: no other use of it until they end.
            aio::destroy(self.aio);
            return 0;
        }
        let mut got = 0;
        for (i, r) in res.iter().enumerate() {
            let want = PIECE.min(len - i * PIECE) as i64;
            if *r < 0 {
                break;
            }
            got += *r as usize;
            if *r < want {
                break;
            }
        }
        got
    }
}

fn run() {
    let Some(buf) = Buf::new() else {
        return;
    };
    loop {
        let _ = std::panic::catch_unwind(|| turn(&buf));
    }
}

/// One turn: waits for faults (or the next lease poll), serves them, polls the leases.
fn turn(buf: &Buf) {
    let (ufd, leases) = with(|t| (t.uffd, !t.files.is_empty()));
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
                    if let Some(n) = fill(ufd, m.arg[1] as usize, buf, false) {
                        ahead = Some(n);
                    }
                }
                uffd::EVENT_REMAP => with(|t| super::moved(t, m.arg[0] as usize, m.arg[1] as usize, m.arg[2] as usize)),
                _ => {}
            }
        }
        match ahead.take() {
            Some(n) => ahead = fill(ufd, n, buf, true),
            None => break,
        }
    }
    poll_leases();
}

/// What one fill reads: the file, its memfd generation, the file range, where it goes.
struct Plan {
    rfd: i32,
    ident: (u64, u64),
    gen: u64,
    at: usize,
    foff: u64,
    len: usize,
    size: u64,
    /// Bytes at the start read but not copied in: the marker page of a window read ahead,
    /// whose fault says the program reached the window (and the next is read ahead).
    skip: usize,
    /// Where the next window starts, if this one continued an in-order run.
    then: Option<usize>,
}

/// Serves a fault at `addr` (or, `ahead`, reads the window at `addr` ahead of the faults);
/// returns where to read ahead next, if anywhere.
fn fill(ufd: i32, addr: usize, buf: &Buf, ahead: bool) -> Option<usize> {
    let page = align::page_size();
    let a = addr & !(page - 1);
    let plan = with(|t| {
        let cap = (t.budget / 4).clamp(page, MAX_WINDOW) & !(page - 1);
        let r = t.regions.iter_mut().find(|r| r.start <= a && a < r.end())?;
        let (len, skip, then) = if ahead {
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
            (len, if first { page } else { 0 }, first.then_some(a + len))
        } else if a == r.marker {
            r.marker = usize::MAX;
            r.win = (r.win * 2).min(cap).max(page);
            (page, 0, Some(r.next))
        } else {
            let win = if a == r.next { (r.win * 2).min(cap).max(page) } else { page };
            let len = win.min(r.end() - a);
            let then = (a == r.next).then_some(a + len);
            r.next = a + len;
            r.win = win;
            (len, 0, then)
        };
        let then = then.filter(|&n| n < r.end());
        let (ident, foff) = (r.ident, r.off + (a - r.start) as u64);
        let f = t.files.iter().find(|f| f.ident == ident && f.memfd >= 0)?;
        Some(Some(Plan { rfd: f.rfd, ident, gen: f.memgen, at: a, foff, len, size: f.size, skip, then }))
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
    let want = usize::try_from(p.size.saturating_sub(p.foff)).unwrap_or(usize::MAX).min(p.len);
    let mut got = buf.read(p.rfd, p.foff, p.len.next_multiple_of(page));
    if let Some(s) = stats() {
        s.add(Counter::MapDirectReadBytes, got as u64);
    }
    if got < want {
        // The device failed or the file is not what the lease said: the file mapping again,
        // where the kernel gives its own answer (its bytes, or its SIGBUS).
        with(|t| super::convert(t, a, page));
        uffd::wake(ufd, a, page);
        return None;
    }
    // The tail of the last page past the end of the file reads as zeros, as the kernel's does.
    if got > want {
        got = want;
    }
    // SAFETY: `buf` is writable for MAX_WINDOW bytes.
    unsafe { std::ptr::write_bytes(buf.p.add(got), 0, p.len - got) };
    with(|t| {
        let still = t.regions.iter().any(|r| {
            r.ident == p.ident
                && r.start <= p.at
                && p.at + p.len <= r.end()
                && r.off + (p.at - r.start) as u64 == p.foff
        }) && t.files.iter().any(|f| f.ident == p.ident && f.memgen == p.gen && f.memfd >= 0);
        if still {
            let end = p.at + p.len;
            let mut at = p.at + p.skip;
            while at < end {
                // SAFETY: the source lies within `buf`, readable for MAX_WINDOW bytes.
                match unsafe { uffd::copy(ufd, at, buf.p.add(at - p.at), end - at) } {
                    Ok(n) if n == end - at => at = end,
                    // A page there is present already (filled through another mapping of the file).
                    Ok(n) => at += n + page,
                    Err(libc::EEXIST) => at += page,
                    Err(_) => break,
                }
            }
            t.filled.push_back((p.ident, p.gen, p.foff, p.len));
            t.filled_bytes += p.len;
            evict(t);
        }
    });
    if !ahead {
        uffd::wake(ufd, a, page);
    }
    p.then
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
