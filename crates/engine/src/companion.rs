//! The companion: a second, buffered descriptor of the same file, opened through
//! `/proc/self/fd/N`, that carries the writes O_DIRECT cannot (unaligned heads and tails,
//! appends at an unaligned end of file) and the buffered retry of a refused direct call.
//!
//! It lets the kernel's page cache do the read-modify-write of a shared block, which is what
//! keeps two writers of one sector (threads or processes) from losing each other's bytes.
//! The pages it dirties are dropped again: with RWF_DONTCACHE where the filesystem has it,
//! and by writing back and dropping the range it touched (at fsync, close, or when the range
//! grows), because DONTCACHE keeps pages that a later write touches again.
//! It stays open until the last descriptor of its description is closed: closing any
//! descriptor of a file releases the process's POSIX record locks on it, so closing it
//! earlier would break sqlite's locking; at the program's own close those locks are gone anyway.

use crate::lock::FutexMutex;
use crate::sys::{self, SysResult};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// A byte range of the file, `[lo, hi)`.
type Range = (u64, u64);

const NONE: i32 = -1;
const FAILED: i32 = -2;
/// Start writing back the dirtied range once it spans this much, and drop the previous one
/// (whose write-back has had time to finish): at most about twice this stays cached.
const DROP_THRESHOLD: u64 = 4 << 20;

/// A lazily opened buffered twin of one open file description.
pub struct Companion {
    ident: (u64, u64),
    fd: AtomicI32,
    open_errno: AtomicI32,
    dontcache: AtomicBool,
    range_lock: FutexMutex,
    /// The range written since the last write-back started, and the range being written back.
    dirty: UnsafeCell<(Option<Range>, Option<Range>)>,
    /// A range noted while another thread held `range_lock`, merged in by the next holder.
    pending_lo: AtomicU64,
    pending_hi: AtomicU64,
}

// SAFETY: `dirty` is only touched with `range_lock` held.
unsafe impl Sync for Companion {}
// SAFETY: plain data.
unsafe impl Send for Companion {}

impl Companion {
    /// Not yet opened; `ident` is the (dev, ino) of the file.
    pub const fn new(ident: (u64, u64)) -> Self {
        Companion {
            ident,
            fd: AtomicI32::new(NONE),
            open_errno: AtomicI32::new(0),
            dontcache: AtomicBool::new(true),
            range_lock: FutexMutex::new(),
            dirty: UnsafeCell::new((None, None)),
            pending_lo: AtomicU64::new(u64::MAX),
            pending_hi: AtomicU64::new(0),
        }
    }

    /// The companion of `fd`, opened on first use with access mode `accmode` and, for an
    /// O_APPEND description, O_APPEND. The program's fd must still be this companion's file:
    /// an fd number reused behind the engine's back must never get the old file's data.
    pub fn get(&self, fd: i32, accmode: i32, append: bool) -> SysResult<i32> {
        let ident = self.ident;
        if sys::ident(fd)? != ident {
            return Err(libc::ESTALE);
        }
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if self.fd.load(Ordering::Acquire) == FAILED {
            return Err(self.open_errno.load(Ordering::Relaxed));
        }
        match reopen(fd, accmode, append, 0, ident) {
            Ok(c) => match self.fd.compare_exchange(NONE, c, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => Ok(c),
                Err(winner) => {
                    let _ = sys::close(c);
                    if winner >= 0 {
                        Ok(winner)
                    } else {
                        Err(self.open_errno.load(Ordering::Relaxed))
                    }
                }
            },
            Err(e) => {
                self.open_errno.store(e, Ordering::Relaxed);
                let _ = self.fd.compare_exchange(NONE, FAILED, Ordering::AcqRel, Ordering::Acquire);
                Err(e)
            }
        }
    }

    /// The companion fd if it is open and still the engine's (a number the program closed
    /// and reused is given up, neither used nor closed).
    pub fn current(&self) -> Option<i32> {
        let c = self.fd.load(Ordering::Acquire);
        if c < 0 {
            return None;
        }
        if is_file(c, self.ident) {
            return Some(c);
        }
        let _ = self.fd.compare_exchange(c, NONE, Ordering::AcqRel, Ordering::Acquire);
        None
    }

    /// Sets or clears O_APPEND on the companion after the program changed it on its fd.
    pub fn set_append(&self, append: bool) {
        if let Some(c) = self.current() {
            set_append(c, append);
        }
    }

    /// Buffered positional write on the companion (`off == -1`: at its file position, which
    /// with O_APPEND means at the end), dropping the pages it dirties afterwards.
    ///
    /// # Safety
    /// `buf` must be valid for reads of `len` bytes.
    pub unsafe fn write(&self, c: i32, buf: *const u8, len: usize, off: i64, behind: bool) -> SysResult<usize> {
        let r = if !behind && self.dontcache.load(Ordering::Relaxed) {
            // SAFETY: forwarded from the caller.
            match unsafe { sys::pwritev2(c, buf, len, off, libc::RWF_DONTCACHE) } {
                Err(libc::EOPNOTSUPP) | Err(libc::EINVAL) if len > 0 => {
                    self.dontcache.store(false, Ordering::Relaxed);
                    // SAFETY: forwarded from the caller.
                    unsafe { sys::pwritev2(c, buf, len, off, 0) }
                }
                r => r,
            }
        } else {
            // SAFETY: forwarded from the caller.
            unsafe { sys::pwritev2(c, buf, len, off, 0) }
        };
        if let Ok(n) = r {
            let start = if off >= 0 {
                off as u64
            } else {
                sys::lseek(c, 0, libc::SEEK_CUR).unwrap_or(0).saturating_sub(n as u64)
            };
            self.note_dirty(c, start, start + n as u64);
        }
        r
    }

    /// Buffered positional read on the companion, asking the kernel not to keep new pages.
    ///
    /// # Safety
    /// `buf` must be valid for writes of `len` bytes.
    pub unsafe fn read(&self, c: i32, buf: *mut u8, len: usize, off: i64) -> SysResult<usize> {
        if self.dontcache.load(Ordering::Relaxed) {
            // SAFETY: forwarded from the caller.
            match unsafe { sys::preadv2(c, buf, len, off, libc::RWF_DONTCACHE) } {
                Err(libc::EOPNOTSUPP) => self.dontcache.store(false, Ordering::Relaxed),
                r => return r,
            }
        }
        // SAFETY: forwarded from the caller.
        let r = unsafe { sys::preadv2(c, buf, len, off, 0) };
        if let (Ok(n), true) = (r, off >= 0) {
            let _ = sys::fadvise(c, off as u64, n as u64, libc::POSIX_FADV_DONTNEED);
        }
        r
    }

    fn note_dirty(&self, c: i32, lo: u64, hi: u64) {
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
                drop_range(c, fl, fh);
            }
            start_writeback(c, r.0, r.1);
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

    /// Writes back and drops whatever this companion left in the page cache.
    pub fn drop_cached(&self) {
        let Some(c) = self.current() else { return };
        let ranges = {
            let _g = self.range_lock.lock();
            // SAFETY: the lock is held.
            let (d, f) = unsafe { &mut *self.dirty.get() };
            [f.take(), d.take(), self.take_pending()]
        };
        for (l, h) in ranges.into_iter().flatten() {
            drop_range(c, l, h);
        }
    }

    /// Writes back and drops `[lo, hi)`, which calls the engine did not make dirtied through
    /// the companion (glibc's posix_fallocate emulation).
    pub fn drop_written(&self, lo: u64, hi: u64) {
        if let Some(c) = self.current() {
            drop_range(c, lo, hi);
        }
    }

    /// Drops the cached pages and closes the companion (the description's last close).
    pub fn close(&self) {
        self.drop_cached();
        if let Some(c) = self.current() {
            if self.fd.compare_exchange(c, NONE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                let _ = sys::close(c);
            }
        }
    }

    /// In a fork child: the range lock may have been held by a thread that is gone.
    pub fn reset_after_fork(&self) {
        self.range_lock.reset_after_fork();
    }
}

/// Opens the file behind `fd` again, through `/proc/self/fd/N`, as a new description with
/// access mode `accmode`, O_APPEND if `append`, the `extra` flags, close-on-exec, and the
/// program's O_SYNC/O_DSYNC (what it writes must be as durable as the program's own writes).
/// Fails with ESTALE unless the new descriptor is the file `ident` names.
pub fn reopen(fd: i32, accmode: i32, append: bool, extra: i32, ident: (u64, u64)) -> SysResult<i32> {
    let mut link = [0u8; 32];
    let n = sys::proc_fd_link(fd, &mut link);
    let path = std::ffi::CStr::from_bytes_with_nul(&link[..=n]).map_err(|_| libc::EINVAL)?;
    let sync = sys::fcntl(fd, libc::F_GETFL, 0).map_or(0, |fl| fl & (libc::O_SYNC | libc::O_DSYNC));
    let flags = accmode | sync | extra | libc::O_CLOEXEC | libc::O_LARGEFILE | if append { libc::O_APPEND } else { 0 };
    sys::openat(libc::AT_FDCWD, path, flags, 0).and_then(|c| {
        if is_file(c, ident) {
            Ok(c)
        } else {
            let _ = sys::close(c);
            Err(libc::ESTALE)
        }
    })
}

/// Sets or clears O_APPEND on one of the engine's own descriptors.
pub fn set_append(fd: i32, append: bool) {
    if let Ok(fl) = sys::fcntl(fd, libc::F_GETFL, 0) {
        let fl = if append { fl | libc::O_APPEND } else { fl & !libc::O_APPEND };
        let _ = sys::fcntl(fd, libc::F_SETFL, fl as libc::c_long);
    }
}

/// True if `fd` is open on the file `ident` names.
pub fn is_file(fd: i32, ident: (u64, u64)) -> bool {
    sys::ident(fd).is_ok_and(|id| id == ident)
}

fn merge(a: Option<(u64, u64)>, (lo, hi): (u64, u64)) -> (u64, u64) {
    a.map_or((lo, hi), |(l, h)| (l.min(lo), h.max(hi)))
}

/// Starts writing back `[lo, hi)` without waiting.
fn start_writeback(c: i32, lo: u64, hi: u64) {
    let page = crate::align::page_size() as u64;
    let lo = lo - lo % page;
    let _ = sys::sync_file_range(c, lo, hi.next_multiple_of(page) - lo, libc::SYNC_FILE_RANGE_WRITE);
}

/// Writes back `[lo, hi)` (rounded out to pages) and asks the kernel to drop it.
fn drop_range(c: i32, lo: u64, hi: u64) {
    let page = crate::align::page_size() as u64;
    let lo = lo - lo % page;
    let len = hi.next_multiple_of(page) - lo;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let _ = sys::sync_file_range(c, lo, len, flags);
    let _ = sys::fadvise(c, lo, len, libc::POSIX_FADV_DONTNEED);
}

impl Drop for Companion {
    fn drop(&mut self) {
        self.close();
    }
}
