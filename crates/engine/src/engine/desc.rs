//! The state shared by every fd that refers to one open file description the engine manages.

use super::{state, FDS, STATS};
use crate::align::Alignment;
use crate::behind::Behind;
use crate::bufpool::BufPool;
use crate::io::FileIo;
use crate::lock::FutexMutex;
use crate::readahead::Readahead;
use crate::stats::Counter;
use crate::writing::FileWrites;
use crate::{libfd, sys, twin};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// State shared by every fd that refers to one open file description.
pub struct Desc {
    pub(super) ident: (u64, u64),
    pub(super) lock: FutexMutex,
    /// The twin: the library's private O_DIRECT description of the file, which carries the
    /// direct I/O (the program's own description is never changed). -1 once given up: the
    /// description's calls then go to the kernel as they are.
    pub(super) twin: AtomicI32,
    pub(super) align: Alignment,
    pub(super) accmode: i32,
    pub(super) append: AtomicBool,
    /// Another process may use the description (after fork, spawn, or SCM_RIGHTS): calls at
    /// the file position go to the program's description, where the kernel moves the offset
    /// atomically for all of them.
    pub(super) shared: AtomicBool,
    /// Keep the twin open when the description is forgotten while the program still has it
    /// open (it asked for O_DIRECT itself): closing any descriptor of the file would drop the
    /// program's POSIX record locks on it.
    pub(super) keep_twin: AtomicBool,
    pub(super) behind: Behind,
    pub(super) ra: Readahead,
    /// The file's write sequence (read-ahead windows of it are stale after a write).
    pub(super) writes: FileWrites,
}

impl Desc {
    /// The read and write paths' view of the description through the program's `fd`.
    pub(super) fn io<'a>(&'a self, fd: i32, twin: i32, pool: &'a BufPool, nowait: bool) -> FileIo<'a> {
        FileIo {
            fd: twin,
            prog: fd,
            align: self.align,
            behind: &self.behind,
            accmode: self.accmode,
            append: self.append.load(Ordering::Relaxed),
            writes: self.writes,
            pool,
            nowait,
            sync: state().cfg.sync,
            tuning: state().tuning(&self.ra),
        }
    }

    /// The twin, if the description still has one.
    pub(super) fn twin(&self) -> Option<i32> {
        let t = self.twin.load(Ordering::Acquire);
        (t >= 0).then_some(t)
    }
}

impl Drop for Desc {
    /// The description's last descriptor is being closed (or was closed behind the engine's
    /// back): what its buffered pieces and any I/O the library did not see left in the page
    /// cache is dropped, and the twin is closed. Closing the twin is safe for the program's
    /// record locks only because the program is closing a descriptor of the file itself.
    fn drop(&mut self) {
        // Counted also for a description whose twin was given up, so the file's count stays right.
        let last = OPEN_FILES.closing(self.ident);
        let Some(t) = self.twin() else { return };
        self.behind.drop_cached(t);
        // A mapped file's footprint is the mapping engine's (`crate::mapped`): dropping it
        // here would make a loader that maps the file anew for each batch read it all again.
        if let Some(cached_at_open) = last.filter(|_| !crate::mapped::knows(self.ident)) {
            drop_unseen(t, cached_at_open);
        }
        if !*self.keep_twin.get_mut() {
            libfd::close(t);
        }
    }
}

/// The matched files open in this process: how many managed descriptions each has, and its
/// pages in the page cache when the first of them was opened (cachestat), so that the last
/// close of the file, not of one description, tells what I/O the library did not serve left.
struct OpenFiles {
    lock: FutexMutex,
    files: UnsafeCell<Vec<OpenFile>>,
}

/// A file's (st_dev, st_ino), its managed descriptions, its pages cached at the first open.
type OpenFile = ((u64, u64), u32, u64);

// SAFETY: `files` is only touched with `lock` held.
unsafe impl Sync for OpenFiles {}

static OPEN_FILES: OpenFiles = OpenFiles { lock: FutexMutex::new(), files: UnsafeCell::new(Vec::new()) };

impl OpenFiles {
    /// A description of `ident` is opened; `cached` gives the file's cached pages if it is
    /// the first.
    fn opening(&self, ident: (u64, u64), cached: impl FnOnce() -> u64) {
        let _g = self.lock.lock();
        // SAFETY: the lock is held.
        let files = unsafe { &mut *self.files.get() };
        match files.iter_mut().find(|f| f.0 == ident) {
            Some(f) => f.1 += 1,
            None => files.push((ident, 1, cached())),
        }
    }

    /// A description of `ident` is closed: its pages cached at the first open when this was
    /// the file's last.
    fn closing(&self, ident: (u64, u64)) -> Option<u64> {
        let _g = self.lock.lock();
        // SAFETY: the lock is held.
        let files = unsafe { &mut *self.files.get() };
        let i = files.iter().position(|f| f.0 == ident)?;
        files[i].1 -= 1;
        (files[i].1 == 0).then(|| files.swap_remove(i).2)
    }
}

/// In a fork child: the lock may have been held by a thread that is gone; the child has the
/// same descriptions open.
pub(super) fn reset_after_fork() {
    OPEN_FILES.lock.reset_after_fork();
}

/// Counts and drops what I/O the library did not serve (Linux AIO, io_uring, raw system
/// calls, stdio streams glibc made on the program's descriptor, mappings) left in the page
/// cache of the file, beyond what was cached when it was opened.
fn drop_unseen(t: i32, cached_at_open: u64) {
    let Ok((cached, dirty)) = sys::cachestat(t) else { return };
    if cached <= cached_at_open {
        return;
    }
    STATS.add(Counter::CachedUnseenBytes, (cached - cached_at_open) * crate::align::page_size() as u64);
    if dirty > 0 {
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let _ = sys::sync_file_range(t, 0, 0, flags);
    }
    let _ = sys::fadvise(t, 0, 0, libc::POSIX_FADV_DONTNEED);
}

/// Starts managing the program's `fd` of the file `st` describes, served through `twin`.
pub(super) fn insert(fd: i32, st: &libc::stat, align: Alignment, accmode: i32, append: bool, twin: i32) {
    let ident = (st.st_dev, st.st_ino);
    OPEN_FILES.opening(ident, || sys::cachestat(twin).map_or(0, |(c, _)| c));
    FDS.insert(
        fd,
        Arc::new(Desc {
            ident,
            lock: FutexMutex::new(),
            twin: AtomicI32::new(twin),
            align,
            accmode,
            append: AtomicBool::new(append),
            shared: AtomicBool::new(false),
            keep_twin: AtomicBool::new(false),
            behind: Behind::new(),
            ra: Readahead::new(ident),
            writes: FileWrites::of(ident),
        }),
    );
}

/// True if the program's `fd` is still the file `d` describes (a number closed and reused
/// behind the engine's back, by a raw system call, is not).
pub(super) fn still_the_file(fd: i32, d: &Desc) -> bool {
    twin::is_file(fd, d.ident)
}

/// Runs `f` with the description's offset lock (or `None` if it cannot be taken without
/// waiting in a signal handler).
pub(super) fn locked<R>(d: &Desc, nowait: bool, f: impl FnOnce() -> R) -> Option<R> {
    let _g = if nowait { d.lock.try_lock()? } else { d.lock.lock() };
    Some(f())
}
