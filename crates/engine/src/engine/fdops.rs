//! Descriptor events of managed fds: close, dup, lseek, fcntl flags, fsync, truncate, and
//! copy_file_range/sendfile/splice emulated with the engine's own reads and writes.

use super::desc::locked;
use super::rw::{pread, pwrite, read, write};
use super::{managed_direct, state, Served, FDS};
use crate::companion;
use crate::stats::Fallback;
use crate::sys::{self, Errno, SysResult};
use std::sync::atomic::Ordering;

/// Forgets `fd` (it is being closed, or a new object now has that number).
#[inline]
pub fn forget(fd: i32) {
    FDS.remove(fd);
}

/// Forgets every managed fd in `[lo, hi]` (close_range, closefrom).
pub fn forget_range(lo: u32, hi: u32) {
    if FDS.is_empty() {
        return;
    }
    let mut doomed = Vec::new();
    FDS.for_each(|fd, _| {
        if (lo..=hi).contains(&(fd as u32)) {
            doomed.push(fd);
        }
    });
    doomed.into_iter().for_each(forget);
}

/// `newfd` now refers to the same description as `oldfd` (dup, dup2, dup3, F_DUPFD).
pub fn duped(oldfd: i32, newfd: i32) {
    if newfd < 0 || oldfd == newfd {
        return;
    }
    forget(newfd);
    if let Some(d) = FDS.get(oldfd, false) {
        if (0..=2).contains(&newfd) && d.direct.load(Ordering::Relaxed) && !d.use_twin(oldfd) {
            // A standard stream now writes to the file through glibc's internal calls.
            d.demote(oldfd, Fallback::NoCompanion);
        }
        FDS.insert(newfd, d);
    }
}

/// `lseek` on a managed fd, serialised with the engine's emulated read and write.
pub fn lseek(fd: i32, off: i64, whence: i32, nowait: bool) -> Option<Result<u64, Errno>> {
    let d = managed_direct(fd, nowait)?;
    locked(&d, nowait, || sys::lseek(fd, off, whence))
}

/// Runs `f` (an ftruncate) holding the description's offset lock, so it cannot land in the
/// middle of an emulated write's pieces, and as a write of the file: no read-ahead window of
/// it is read or trusted meanwhile, and those read before are stale after.
pub fn with_offset_lock<R>(fd: i32, nowait: bool, f: impl FnOnce() -> R) -> Option<R> {
    let d = FDS.get(fd, nowait)?;
    let _writing = d.writes.begin();
    locked(&d, nowait, f)
}

/// `fcntl(F_GETFL)` result as the program must see it.
pub fn getfl(fd: i32, kernel: i32) -> i32 {
    match FDS.get(fd, true) {
        Some(d) => kernel & !d.added.load(Ordering::Relaxed),
        None => kernel,
    }
}

/// The argument to pass to the real `fcntl(F_SETFL)`: the program keeps the shim's
/// O_DIRECT unless it asks for O_DIRECT itself, in which case the fd is its own.
pub fn setfl(fd: i32, arg: i32) -> i32 {
    let Some(d) = FDS.get(fd, true) else { return arg };
    if arg & libc::O_DIRECT != 0 {
        d.added.fetch_and(!libc::O_DIRECT, Ordering::Relaxed);
        forget(fd);
        return arg;
    }
    let append = arg & libc::O_APPEND != 0;
    if d.append.swap(append, Ordering::Relaxed) != append {
        d.companion.set_append(append);
        if d.has_twin() {
            companion::set_append(d.twin.load(Ordering::Acquire), append);
        }
    }
    if d.direct.load(Ordering::Relaxed) && !d.has_twin() {
        arg | libc::O_DIRECT
    } else {
        arg
    }
}

/// After `fsync`/`fdatasync`: drop what the buffered pieces left in the page cache.
pub fn synced(fd: i32) {
    if let Some(d) = FDS.get(fd, true) {
        d.companion.drop_cached();
    }
}

/// Reads up to `len` bytes of `fd` for an emulated copy (managed or not): at `off`, or at
/// the file position when `off` is `None` (which is advanced).
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
unsafe fn copy_read(fd: i32, buf: *mut u8, len: usize, off: Option<u64>) -> SysResult<usize> {
    // SAFETY: forwarded from the caller.
    let served = unsafe {
        match off {
            Some(o) => pread(fd, buf, len, o as i64, false),
            None => read(fd, buf, len, false),
        }
    };
    match served {
        Some(r) => r,
        // SAFETY: forwarded from the caller.
        None => unsafe {
            match off {
                Some(o) => sys::pread(fd, buf, len, o),
                None => sys::read(fd, buf, len),
            }
        },
    }
}

/// Writes all of `buf` to `fd` (managed or not) for an emulated copy.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
unsafe fn copy_write(fd: i32, buf: *const u8, len: usize, off: Option<u64>) -> SysResult<usize> {
    let mut done = 0;
    while done < len {
        // SAFETY: inside the caller's buffer.
        let p = unsafe { buf.add(done) };
        let o = off.map(|o| (o + done as u64) as i64);
        // SAFETY: as above.
        let served = unsafe {
            match o {
                Some(o) => pwrite(fd, p, len - done, o, false),
                None => write(fd, p, len - done, false),
            }
        };
        // SAFETY: as above.
        let r = served.unwrap_or_else(|| unsafe {
            match o {
                Some(o) => sys::pwrite(fd, p, len - done, o as u64),
                None => sys::write(fd, p, len - done),
            }
        });
        match r {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

/// `copy_file_range`, `sendfile` and `splice` with a managed end, emulated with the
/// engine's read and write: on O_DIRECT descriptors the kernel's versions return short
/// aligned counts or refuse. `off_in`/`off_out`: explicit offsets to use and advance
/// (`None` = the file position). Returns `None` if neither end is managed.
///
/// # Safety
/// The offset pointers, when non-null, must be valid.
pub unsafe fn copy(fd_in: i32, off_in: *mut i64, fd_out: i32, off_out: *mut i64, len: usize) -> Served {
    if managed_direct(fd_in, false).is_none() && managed_direct(fd_out, false).is_none() {
        return None;
    }
    // SAFETY: the caller vouches for non-null pointers.
    let (mut oi, mut oo) = unsafe { (off_in.as_ref().copied(), off_out.as_ref().copied()) };
    if oi.is_some_and(|o| o < 0) || oo.is_some_and(|o| o < 0) {
        return Some(Err(libc::EINVAL));
    }
    // splice into a pipe moves at most what the pipe has room for; writing more would block
    // a program that drains the pipe only after the call returns.
    let len = len.min(pipe_room(fd_out).unwrap_or(usize::MAX));
    let mut buf = match state().pool.get(false) {
        Ok(b) => b,
        Err(_) => return Some(Err(libc::ENOMEM)),
    };
    let mut done = 0usize;
    let r = loop {
        if done >= len {
            break Ok(done);
        }
        let want = buf.len().min(len - done);
        // SAFETY: the bounce buffer holds `want` bytes.
        let n = match unsafe { copy_read(fd_in, buf.as_mut_ptr(), want, oi.map(|o| o as u64)) } {
            Ok(0) => break Ok(done),
            Ok(n) => n,
            Err(e) if done == 0 => break Err(e),
            Err(_) => break Ok(done),
        };
        // SAFETY: `n` bytes were just read into the buffer.
        let w = match unsafe { copy_write(fd_out, buf.as_mut_ptr(), n, oo.map(|o| o as u64)) } {
            Ok(w) => w,
            Err(e) if done == 0 => break Err(e),
            Err(_) => 0,
        };
        if let Some(o) = oi.as_mut() {
            *o += w as i64;
        } else if w < n {
            // Give back what was read but not written.
            let _ = sys::lseek(fd_in, -((n - w) as i64), libc::SEEK_CUR);
        }
        if let Some(o) = oo.as_mut() {
            *o += w as i64;
        }
        done += w;
        if w < n {
            break Ok(done);
        }
    };
    // SAFETY: as above.
    unsafe {
        if let (Some(p), Some(v)) = (off_in.as_mut(), oi) {
            *p = v;
        }
        if let (Some(p), Some(v)) = (off_out.as_mut(), oo) {
            *p = v;
        }
    }
    Some(r)
}

/// Free space in `fd` if it is a pipe (its whole capacity when full, so a blocking write
/// waits for the reader as splice would).
fn pipe_room(fd: i32) -> Option<usize> {
    let st = sys::fstat(fd).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return None;
    }
    let cap = sys::fcntl(fd, libc::F_GETPIPE_SZ, 0).ok()? as usize;
    let queued = sys::ioctl_int(fd, libc::FIONREAD).unwrap_or(0) as usize;
    Some(match cap.saturating_sub(queued) {
        0 => cap,
        room => room,
    })
}
