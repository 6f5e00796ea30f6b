//! Drop-behind: the buffered pieces the engine writes through the program's own description
//! (unaligned heads and tails, small writes, appends, and the buffered retry of a refused
//! direct call) go through the page cache, which does the read-modify-write of a block shared
//! with another writer under the kernel's own locks; the pages they dirty are written back and
//! dropped again. With RWF_DONTCACHE where the filesystem has it, and by writing back and
//! dropping the range they touched (at fsync, close, or when the range grows), because
//! DONTCACHE keeps pages that a later write touches again. Write-back and dropping go through
//! the twin: any descriptor of the file reaches the same page cache.

use crate::lock::FutexMutex;
use crate::sys::{self, SysResult};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A byte range of the file, `[lo, hi)`.
type Range = (u64, u64);

/// Start writing back the dirtied range once it spans this much, and drop the previous one
/// (whose write-back has had time to finish): at most about twice this stays cached.
const DROP_THRESHOLD: u64 = 4 << 20;

/// What one description's buffered pieces left in the page cache.
pub struct Behind {
    dontcache: AtomicBool,
    range_lock: FutexMutex,
    /// The range written since the last write-back started, and the range being written back.
    dirty: UnsafeCell<(Option<Range>, Option<Range>)>,
    /// A range noted while another thread held `range_lock`, merged in by the next holder.
    pending_lo: AtomicU64,
    pending_hi: AtomicU64,
    /// Bytes written at the program's file position (or appended) since their place was last
    /// looked up: a small write costs one system call, and the position is asked for once
    /// per [`DROP_THRESHOLD`] of them.
    unplaced: AtomicU64,
    /// Some write's place was only inferred (from the position after a run of unplaced
    /// writes, exact only if they were contiguous): what is dropped and settled covers the
    /// whole file until the next [`Behind::drop_cached`].
    inferred: AtomicBool,
}

// SAFETY: `dirty` is only touched with `range_lock` held.
unsafe impl Sync for Behind {}
// SAFETY: plain data.
unsafe impl Send for Behind {}

impl Default for Behind {
    fn default() -> Self {
        Self::new()
    }
}

impl Behind {
    /// Nothing written yet.
    pub const fn new() -> Self {
        Behind {
            dontcache: AtomicBool::new(true),
            range_lock: FutexMutex::new(),
            dirty: UnsafeCell::new((None, None)),
            pending_lo: AtomicU64::new(u64::MAX),
            pending_hi: AtomicU64::new(0),
            unplaced: AtomicU64::new(0),
            inferred: AtomicBool::new(false),
        }
    }

    /// Buffered write on `prog` (the program's description) at `off` (`-1`: at its file
    /// position, which moves), noting the pages it dirties so that they are written back and
    /// dropped through `twin`. On an `append` description every write lands at the end.
    /// `behind`: a small write that is written back later in bulk rather than with
    /// RWF_DONTCACHE.
    ///
    /// # Safety
    /// `buf` must be valid for reads of `len` bytes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn write(
        &self,
        prog: i32,
        twin: i32,
        buf: *const u8,
        len: usize,
        off: i64,
        append: bool,
        behind: bool,
    ) -> SysResult<usize> {
        // RWF_DONTCACHE starts a write-back of each write's pages on its own, out of order
        // with the pages around them; for a write that makes the file longer, ext4 may then
        // make a size durable that covers pages still dirty below it (zeros after a crash).
        // Such writes stay in the page cache and are written back in order, in bulk.
        let cache_ok = !behind && !append && off >= 0 && self.dontcache.load(Ordering::Relaxed);
        let r = if cache_ok && sys::fstat(prog).is_ok_and(|st| off as u64 + len as u64 <= st.st_size.max(0) as u64) {
            // SAFETY: forwarded from the caller.
            match unsafe { sys::pwritev2(prog, buf, len, off, libc::RWF_DONTCACHE) } {
                Err(libc::EOPNOTSUPP) | Err(libc::EINVAL) if len > 0 => {
                    self.dontcache.store(false, Ordering::Relaxed);
                    // SAFETY: forwarded from the caller.
                    unsafe { sys::pwritev2(prog, buf, len, off, 0) }
                }
                r => r,
            }
        } else {
            // SAFETY: forwarded from the caller.
            unsafe { sys::pwritev2(prog, buf, len, off, 0) }
        };
        if let Ok(n) = r {
            if append || off < 0 {
                self.unplaced_written(prog, twin, append, n as u64);
            } else {
                self.note_dirty(twin, off as u64, off as u64 + n as u64);
            }
        }
        r
    }

    /// Buffered positional read on `prog`, asking the kernel not to keep new pages.
    ///
    /// # Safety
    /// `buf` must be valid for writes of `len` bytes.
    pub unsafe fn read(&self, prog: i32, buf: *mut u8, len: usize, off: i64) -> SysResult<usize> {
        if self.dontcache.load(Ordering::Relaxed) {
            // SAFETY: forwarded from the caller.
            match unsafe { sys::preadv2(prog, buf, len, off, libc::RWF_DONTCACHE) } {
                Err(libc::EOPNOTSUPP) => self.dontcache.store(false, Ordering::Relaxed),
                r => return r,
            }
        }
        // SAFETY: forwarded from the caller.
        let r = unsafe { sys::preadv2(prog, buf, len, off, 0) };
        if let (Ok(n), true) = (r, off >= 0) {
            let _ = sys::fadvise(prog, off as u64, n as u64, libc::POSIX_FADV_DONTNEED);
        }
        r
    }

    /// Counts `n` bytes written at the file position of `prog` (or at its end, `append`);
    /// once they add up to [`DROP_THRESHOLD`], one look at where the position now is places
    /// them behind it, which is exact for a program writing in order (the common case) and
    /// marks the range inferred otherwise.
    fn unplaced_written(&self, prog: i32, twin: i32, append: bool, n: u64) {
        self.inferred.store(true, Ordering::Relaxed);
        let u = self.unplaced.fetch_add(n, Ordering::Relaxed) + n;
        if u < DROP_THRESHOLD {
            return;
        }
        let end = if append {
            sys::fstat(prog).map(|st| st.st_size.max(0) as u64)
        } else {
            sys::lseek(prog, 0, libc::SEEK_CUR)
        };
        if let Ok(end) = end {
            let u = self.unplaced.swap(0, Ordering::Relaxed);
            self.note_dirty(twin, end.saturating_sub(u), end);
        }
    }

    fn note_dirty(&self, twin: i32, lo: u64, hi: u64) {
        let Some(_g) = self.range_lock.try_lock() else {
            self.pending_lo.fetch_min(lo, Ordering::Relaxed);
            self.pending_hi.fetch_max(hi, Ordering::Relaxed);
            return;
        };
        // SAFETY: the lock is held.
        let (dirty, flushing) = unsafe { &mut *self.dirty.get() };
        let mut r = merge(dirty.take(), (lo, hi));
        if let Some(p) = self.take_pending() {
            r = merge(Some(r), p);
        }
        if r.1 - r.0 >= DROP_THRESHOLD {
            if let Some((fl, fh)) = flushing.take() {
                drop_range(twin, fl, fh);
            }
            start_writeback(twin, r.0, r.1);
            *flushing = Some(r);
        } else {
            *dirty = Some(r);
        }
    }

    fn take_pending(&self) -> Option<(u64, u64)> {
        let hi = self.pending_hi.swap(0, Ordering::Relaxed);
        let lo = self.pending_lo.swap(u64::MAX, Ordering::Relaxed);
        (hi > lo).then_some((lo, hi))
    }

    /// Writes back and drops (through `twin`) whatever the buffered pieces left cached.
    pub fn drop_cached(&self, twin: i32) {
        let ranges = {
            let _g = self.range_lock.lock();
            // SAFETY: the lock is held.
            let (d, f) = unsafe { &mut *self.dirty.get() };
            [f.take(), d.take(), self.take_pending()]
        };
        if self.inferred.swap(false, Ordering::Relaxed) {
            // Where the unplaced writes landed is not known exactly: all of the file.
            self.unplaced.store(0, Ordering::Relaxed);
            drop_all(twin, true);
            return;
        }
        for (l, h) in ranges.into_iter().flatten() {
            drop_range(twin, l, h);
        }
    }

    /// Waits until the buffered pieces below `end` are on the device: a direct write that
    /// extends the file must not make a size durable that covers bytes still only cached
    /// (after a crash they would read as zeros).
    pub fn settle_below(&self, twin: i32, end: u64) {
        let lowest = {
            let _g = self.range_lock.lock();
            // SAFETY: the lock is held.
            let (d, f) = unsafe { &*self.dirty.get() };
            [*d, *f].into_iter().flatten().map(|r| r.0).min()
        };
        let lowest = if self.inferred.load(Ordering::Relaxed) {
            0 // unplaced writes may lie anywhere below
        } else {
            lowest.unwrap_or(u64::MAX).min(self.pending_lo.load(Ordering::Relaxed))
        };
        if lowest < end {
            let flags =
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            let _ = sys::sync_file_range(twin, lowest, end - lowest, flags);
        }
    }

    /// In a fork child: the range lock may have been held by a thread that is gone.
    pub fn reset_after_fork(&self) {
        self.range_lock.reset_after_fork();
    }
}

fn merge(a: Option<(u64, u64)>, (lo, hi): (u64, u64)) -> (u64, u64) {
    a.map_or((lo, hi), |(l, h)| (l.min(lo), h.max(hi)))
}

/// Starts writing back `[lo, hi)` without waiting.
fn start_writeback(fd: i32, lo: u64, hi: u64) {
    let page = crate::align::page_size() as u64;
    let lo = lo - lo % page;
    let _ = sys::sync_file_range(fd, lo, hi.next_multiple_of(page) - lo, libc::SYNC_FILE_RANGE_WRITE);
}

/// Writes back all of the file (when it may be `dirty`) and asks the kernel to drop it (a
/// length of 0 reaches end of file in both calls).
pub fn drop_all(fd: i32, dirty: bool) {
    if dirty {
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let _ = sys::sync_file_range(fd, 0, 0, flags);
    }
    let _ = sys::fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
}

/// Writes back `[lo, hi)` (rounded out to pages) and asks the kernel to drop it.
pub fn drop_range(fd: i32, lo: u64, hi: u64) {
    let page = crate::align::page_size() as u64;
    let lo = lo - lo % page;
    let len = hi.next_multiple_of(page) - lo;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let _ = sys::sync_file_range(fd, lo, len, flags);
    let _ = sys::fadvise(fd, lo, len, libc::POSIX_FADV_DONTNEED);
}
