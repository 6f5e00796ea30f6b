//! Descriptor events of managed fds: close, dup, lseek, fcntl flags, fsync, truncate, and
//! copy_file_range/sendfile/splice, which the kernel runs on the program's own buffered
//! descriptions (with its own checks and errors) and whose page cache the engine drops.

use super::desc::{locked, Desc};
use super::{managed_direct, FDS, STATS};
use crate::filelog::{self, Event};
use crate::stats::{Counter, Fallback};
use crate::sys::{self, Errno};
use crate::{libfd, locks, twin, usercopy};
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
        FDS.insert(newfd, d);
    }
}

/// The program's `close_range(first, last, flags)` (or `closefrom(first)` with `last` at
/// the top) where the library holds descriptors in the range: the kernel's call on the
/// parts around them, which the program never had. `None`: none of the library's are in
/// the range (the hook calls the real function).
pub fn close_range(first: u32, last: u32, flags: u32) -> Option<Result<(), Errno>> {
    let mut ours = Vec::new();
    libfd::held_in(first, last, &mut ours);
    if ours.is_empty() {
        return None;
    }
    let mut lo = first;
    let mut r = Ok(());
    for &o in &ours {
        let o = o as u32;
        if o > lo {
            r = r.and(sys::close_range(lo, o - 1, flags));
        }
        lo = o.saturating_add(1);
    }
    if lo <= last && lo > 0 {
        r = r.and(sys::close_range(lo, last, flags));
    }
    Some(r)
}

/// What a descriptor-creating call's result means once the library's numbers are in the way
/// (see [`libfd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The result stands.
    Keep,
    /// The program gets this number instead (the one it would have got without the library).
    Moved(i32),
    /// The call failed with EMFILE only because of the library: call it again.
    Retry,
}

/// After a descriptor-creating call of the program returned `fd`, the lowest free number at
/// or above `min` (or failed with `err`):
/// where the program's own descriptors have reached the library's zone below the soft
/// limit, the lowest twin there is given up (its file falls back, counted) so the program
/// gets the number or the descriptor it would have had. Not where the process holds record
/// locks on the twin's file: closing the twin would drop them.
pub fn created(fd: i32, err: Errno, min: i32) -> Created {
    let Some(z) = libfd::in_the_way(fd, err, min) else { return Created::Keep };
    let mut owner = None;
    FDS.for_each(|_, d| {
        if d.twin() == Some(z) {
            owner = Some(std::sync::Arc::clone(d));
        }
    });
    let ident = owner.as_ref().map(|d| d.ident).or_else(|| sys::ident(z).ok());
    if locks::may_hold_any() && ident.is_none_or(locks::holds_posix_locks) {
        return Created::Keep;
    }
    if let Some(d) = &owner {
        give_up(d, Fallback::NoDescriptor);
    }
    libfd::forget(z);
    if fd < 0 {
        let _ = sys::close(z);
        return Created::Retry;
    }
    let cloexec = sys::fcntl(fd, libc::F_GETFD, 0).is_ok_and(|f| f & libc::FD_CLOEXEC != 0);
    match sys::dup3(fd, z, if cloexec { libc::O_CLOEXEC } else { 0 }) {
        Ok(_) => {
            let _ = sys::close(fd);
            Created::Moved(z)
        }
        Err(_) => {
            let _ = sys::close(z);
            Created::Keep
        }
    }
}

/// Before the program's `dup2`/`dup3` onto `newfd`, one of the library's numbers (only
/// possible below the soft limit): the kernel will close the twin there, so its file falls
/// back (counted) and the number is the program's.
pub fn library_fd_taken(newfd: i32) {
    FDS.for_each(|_, d| {
        if d.twin() == Some(newfd) {
            give_up(d, Fallback::NoDescriptor);
        }
    });
    libfd::forget(newfd);
}

/// The description `d` goes on without its twin (counted as `why`): its calls go to the
/// kernel as they are from now on. Returns the twin (the caller closes or forgets it).
fn give_up(d: &Desc, why: Fallback) -> Option<i32> {
    let t = d.twin.swap(-1, Ordering::AcqRel);
    if t < 0 {
        return None;
    }
    d.behind.drop_cached(t);
    STATS.fallback(why);
    Some(t)
}

/// Before the program takes a POSIX record lock through `fd` (fcntl F_SETLK/F_SETLKW,
/// lockf), where `super::lock_taken` says the library may hold descriptors: the first time on a file, the library closes its own descriptors of it (twins,
/// the descriptor of a mapped file) while no lock of the process can be on it yet, and opens
/// none again (`crate::locks`): closing one later, or the program's `dup2` onto its number,
/// would drop the program's locks.
pub fn locking(fd: i32, nowait: bool) {
    let Ok(ident) = sys::ident(fd) else { return };
    if !locks::retire(ident, nowait) {
        return;
    }
    let mut gave_up = false;
    FDS.for_each_try(nowait, |_, d| {
        if d.ident == ident {
            if let Some(t) = give_up(d, Fallback::PosixLocks) {
                libfd::close(t);
                gave_up = true;
            }
        }
    });
    crate::mapped::retire(ident, nowait);
    crate::mapped::direct::retire(ident, nowait);
    if gave_up {
        filelog::record_fd(Event::Fallback(Fallback::PosixLocks), fd);
    }
}

/// The program hands `fd` to another process (SCM_RIGHTS): calls at the description's file
/// position go to the kernel's own calls from now on, which keep the offset atomic for both.
pub fn handed_over(fd: i32) {
    if let Some(d) = FDS.get(fd, false) {
        d.shared.store(true, Ordering::Relaxed);
    }
}

/// `lseek` on a managed fd, serialised with the engine's emulated read and write.
pub fn lseek(fd: i32, off: i64, whence: i32, nowait: bool) -> Option<Result<u64, Errno>> {
    let (d, _) = managed_direct(fd, nowait)?;
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

/// After the program's `fcntl(F_SETFL, arg)` succeeded on a managed `fd`: O_APPEND follows
/// on the twin; O_DIRECT asked for by the program makes the descriptor its own.
pub fn setfl(fd: i32, arg: i32) {
    let Some(d) = FDS.get(fd, true) else { return };
    if arg & libc::O_DIRECT != 0 {
        forget(fd);
        return;
    }
    let append = arg & libc::O_APPEND != 0;
    if d.append.swap(append, Ordering::Relaxed) != append {
        if let Some(t) = d.twin() {
            twin::set_append(t, append);
        }
    }
}

/// After `fsync`/`fdatasync`: drop what the buffered pieces left in the page cache.
pub fn synced(fd: i32) {
    if let Some(d) = FDS.get(fd, true) {
        if let Some(t) = d.twin() {
            d.behind.drop_cached(t);
        }
    }
}

/// Where a kernel copy (copy_file_range, sendfile, splice) on a managed file starts, taken
/// before the call so that what it left in the page cache can be dropped after it.
pub struct Copy {
    ends: [Option<CopyEnd>; 2],
}

struct CopyEnd {
    twin: i32,
    start: u64,
    write: bool,
    _writing: Option<crate::writing::Writing>,
}

/// Before the kernel copies from `fd_in` to `fd_out` (at `*off_in`/`*off_out`, or at the
/// file positions when the pointers are null). `None`: neither end is managed. The offsets
/// are read through the kernel: a bad pointer is the kernel's EFAULT to give, and the end
/// is not followed.
pub fn before_copy(fd_in: i32, off_in: *const i64, fd_out: i32, off_out: *const i64) -> Option<Copy> {
    let end = |fd: i32, off: *const i64, write: bool| -> Option<CopyEnd> {
        let d = FDS.get(fd, false)?;
        let twin = d.twin()?;
        let start = if off.is_null() {
            sys::lseek(fd, 0, libc::SEEK_CUR).ok()?
        } else {
            // SAFETY: an i64 is valid for any bits.
            u64::try_from(unsafe { usercopy::read_value(off) }.ok()?).ok()?
        };
        Some(CopyEnd { twin, start, write, _writing: write.then(|| d.writes.begin()) })
    };
    let ends = [end(fd_in, off_in, false), end(fd_out, off_out, true)];
    ends.iter().any(Option::is_some).then_some(Copy { ends })
}

/// After the kernel copied `n` bytes (or failed): what it read or wrote of the managed ends
/// is dropped from the page cache (written back first), and counted as a read and a write
/// that went through the page cache.
pub fn after_copy(c: Copy, n: isize) {
    let Ok(n) = u64::try_from(n) else { return };
    for e in c.ends.into_iter().flatten() {
        if n > 0 {
            crate::behind::drop_range(e.twin, e.start, e.start + n);
        }
        let (calls, bytes, bcalls, bbytes) = if e.write {
            (Counter::WriteCalls, Counter::WriteBytes, Counter::WriteBouncedCalls, Counter::WriteBouncedBytes)
        } else {
            (Counter::ReadCalls, Counter::ReadBytes, Counter::ReadBouncedCalls, Counter::ReadBouncedBytes)
        };
        STATS.add(calls, 1);
        STATS.add(bytes, n);
        STATS.add(bcalls, 1);
        STATS.add(bbytes, n);
    }
}
