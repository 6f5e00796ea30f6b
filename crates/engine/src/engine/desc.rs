//! The state shared by every fd that refers to one open file description the engine manages.

use super::{state, FDS, STATS};
use crate::align::Alignment;
use crate::behind::Behind;
use crate::bufpool::BufPool;
use crate::filelog::{self, Event, Tally};
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
    pub(super) behind: Behind,
    pub(super) ra: Readahead,
    /// The file's write sequence (read-ahead windows of it are stale after a write).
    pub(super) writes: FileWrites,
    /// The bytes the process moved to and from the file (shared by its descriptions).
    pub(super) tally: Arc<Tally>,
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
    /// cache is dropped, and the twin is closed. No POSIX record lock of the process can be
    /// on the file: the first one retires its twins (`crate::locks`).
    fn drop(&mut self) {
        // Counted also for a description whose twin was given up, so the file's count stays right.
        let last = OPEN_FILES.closing(self.ident);
        let twin = self.twin();
        if let Some(t) = twin {
            self.behind.drop_cached(t);
        }
        if let Some(f) = last {
            // A mapped file's footprint is the mapping engine's (`crate::mapped`): dropping
            // it here would make a loader that maps the file anew for each batch read it
            // all again.
            let unseen = match twin {
                Some(t) if !crate::mapped::knows(self.ident) => drop_unseen(t, f.cached_at_open),
                _ => 0,
            };
            f.record(Event::Close, unseen);
        }
        if let Some(t) = twin {
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

/// A matched file open in the process.
struct OpenFile {
    /// (st_dev, st_ino)
    ident: (u64, u64),
    /// Its managed descriptions.
    descs: u32,
    /// Its pages in the page cache at the first open.
    cached_at_open: u64,
    /// Its path when first opened (for its line in the files log).
    path: Vec<u8>,
    tally: Arc<Tally>,
}

impl OpenFile {
    /// The file's line in the files log.
    fn record(&self, ev: Event, cached_unseen: u64) {
        if crate::statsdir::keeps_files() {
            filelog::append(&filelog::line(ev, &self.path, self.ident, Some(&self.tally), cached_unseen));
        }
    }
}

// SAFETY: `files` is only touched with `lock` held.
unsafe impl Sync for OpenFiles {}

static OPEN_FILES: OpenFiles = OpenFiles { lock: FutexMutex::new(), files: UnsafeCell::new(Vec::new()) };

impl OpenFiles {
    /// A description of `ident` is opened; `first` gives the file's cached pages and path
    /// if it is the first. Returns the file's tally.
    fn opening(&self, ident: (u64, u64), first: impl FnOnce() -> (u64, Vec<u8>)) -> Arc<Tally> {
        let _g = self.lock.lock();
        // SAFETY: the lock is held.
        let files = unsafe { &mut *self.files.get() };
        match files.iter_mut().find(|f| f.ident == ident) {
            Some(f) => {
                f.descs += 1;
                f.tally.clone()
            }
            None => {
                let (cached_at_open, path) = first();
                let tally = Arc::new(Tally::default());
                files.push(OpenFile { ident, descs: 1, cached_at_open, path, tally: tally.clone() });
                tally
            }
        }
    }

    /// A description of `ident` is closed: the file, when this was its last.
    fn closing(&self, ident: (u64, u64)) -> Option<OpenFile> {
        let _g = self.lock.lock();
        // SAFETY: the lock is held.
        let files = unsafe { &mut *self.files.get() };
        let i = files.iter().position(|f| f.ident == ident)?;
        files[i].descs -= 1;
        (files[i].descs == 0).then(|| files.swap_remove(i))
    }

    /// Every file still open, forgotten (the process image is ending).
    fn take_all(&self) -> Vec<OpenFile> {
        let _g = self.lock.lock();
        // SAFETY: the lock is held.
        std::mem::take(unsafe { &mut *self.files.get() })
    }
}

/// In a fork child: the lock may have been held by a thread that is gone; the child has the
/// same descriptions open, and counts its own bytes of them.
pub(super) fn reset_after_fork() {
    OPEN_FILES.lock.reset_after_fork();
    // SAFETY: the child has one thread, and the lock was just reset.
    unsafe { &*OPEN_FILES.files.get() }.iter().for_each(|f| f.tally.reset());
    filelog::reset_after_fork();
}

/// At exit (`exiting`) and before exec: what I/O the library did not serve left in the page
/// cache of the files still open (and shared with no other process) is counted and dropped,
/// as at their last close, and each
/// gets its line in the files log. Their later closes (after a failed exec) write none.
pub(super) fn at_end(exiting: bool) {
    let files = OPEN_FILES.take_all();
    if files.is_empty() {
        return;
    }
    let mut twins: Vec<((u64, u64), i32)> = Vec::new();
    let mut shared: Vec<(u64, u64)> = Vec::new();
    FDS.for_each(|_, d| {
        if let Some(t) = d.twin() {
            twins.push((d.ident, t));
        }
        if d.shared.load(Ordering::Relaxed) {
            shared.push(d.ident);
        }
    });
    for f in files {
        let twin = twins.iter().find(|(i, _)| *i == f.ident).map(|&(_, t)| t);
        // A description another process also holds (a fork child's inherited ones, its
        // parent's after the fork) is not this process's to judge: the other may have cached
        // pages through it, and closes it later, when its own last close counts them.
        let unseen = match twin {
            Some(t) if !crate::mapped::knows(f.ident) && !shared.contains(&f.ident) => drop_unseen(t, f.cached_at_open),
            _ => 0,
        };
        f.record(if exiting { Event::Exit } else { Event::Exec }, unseen);
    }
}

/// Counts and drops what I/O the library did not serve (Linux AIO, io_uring, raw system
/// calls, stdio streams glibc made on the program's descriptor, mappings) left in the page
/// cache of the file, beyond what was cached when it was opened. Returns the bytes counted.
fn drop_unseen(t: i32, cached_at_open: u64) -> u64 {
    let Ok((cached, dirty)) = sys::cachestat(t) else { return 0 };
    if cached <= cached_at_open {
        return 0;
    }
    let unseen = (cached - cached_at_open) * crate::align::page_size() as u64;
    STATS.add(Counter::CachedUnseenBytes, unseen);
    crate::behind::drop_all(t, dirty > 0);
    unseen
}

/// Starts managing the program's `fd` of the file `st` describes, served through `twin`.
pub(super) fn insert(fd: i32, st: &libc::stat, align: Alignment, accmode: i32, append: bool, twin: i32) {
    let ident = (st.st_dev, st.st_ino);
    let tally = OPEN_FILES.opening(ident, || {
        let mut p = [0u8; 4096];
        let path = match crate::statsdir::keeps_files() {
            true => sys::fd_path(fd, &mut p).map_or(Vec::new(), |n| p[..n].to_vec()),
            false => Vec::new(), // no files log to name it in
        };
        (sys::cachestat(twin).map_or(0, |(c, _)| c), path)
    });
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
            behind: Behind::new(),
            ra: Readahead::new(ident),
            writes: FileWrites::of(ident),
            tally,
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
