//! The read and write families on managed fds (plain, positional, vector): dispatch to the
//! read and write paths, the file position kept as the kernel keeps it, and statistics.

use super::desc::{locked, Desc};
use super::{managed_direct, managed_read, managed_unchecked, stale, state, verified, Served, STATS};
use crate::config::LogLevel;
use crate::io::Outcome;
use crate::log::{self, Cause};
use crate::stats::{Counter, Fallback};
use crate::sys::{self, SysResult};
use crate::{read_path, usercopy, write_path};
use std::sync::atomic::Ordering;

/// Applies what a path call reported: reused fd, statistics (the process's and the file's).
fn settle(fd: i32, d: &Desc, o: &Outcome, write: bool, r: &SysResult<usize>) -> bool {
    if *r == Err(libc::ESTALE) {
        stale(fd);
        return false;
    }
    if o.einval_retry {
        STATS.add(Counter::EinvalRetries, 1);
        STATS.fallback(Fallback::EinvalRetry);
        log::once(
            LogLevel::Info,
            Cause::EinvalRetry,
            format_args!("a direct call was refused with EINVAL and redone buffered"),
        );
    }
    let (calls, bytes, bcalls, bbytes) = if write {
        (Counter::WriteCalls, Counter::WriteBytes, Counter::WriteBouncedCalls, Counter::WriteBouncedBytes)
    } else {
        (Counter::ReadCalls, Counter::ReadBytes, Counter::ReadBouncedCalls, Counter::ReadBouncedBytes)
    };
    STATS.add(calls, 1);
    if let Ok(n) = r {
        STATS.add(bytes, *n as u64);
    }
    if !write {
        for (c, n) in [
            (Counter::ReadaheadBytes, o.readahead_bytes),
            (Counter::ReadDeviceBytes, o.readahead_bytes + o.device_bytes),
            (Counter::ReadaheadCopiedBytes, o.readahead_copied),
        ] {
            if n > 0 {
                STATS.add(c, n);
            }
        }
    }
    let b = o.bounced_bytes + o.buffered_bytes;
    d.tally.count(write, r.map_or(0, |n| n as u64), b);
    if b > 0 {
        STATS.add(bcalls, 1);
        STATS.add(bbytes, b);
    }
    true
}

/// Runs `call` (a positional read or write of `len` bytes) at the file position of `fd` and
/// leaves the position after what it did, as the kernel's own call would. The position is
/// moved past the whole request first, so the common case of a complete call costs one
/// lseek instead of one to read the position and one to set it; a short or failed call
/// moves it back. The caller holds the description's lock.
fn at_offset(fd: i32, len: usize, call: impl FnOnce(u64) -> SysResult<usize>) -> SysResult<usize> {
    let Some(pos) = i64::try_from(len)
        .ok()
        .and_then(|l| sys::lseek(fd, l, libc::SEEK_CUR).ok().map(|end| end.wrapping_sub(l as u64)))
    else {
        // Past the largest offset the filesystem allows: the call itself gives the answer.
        let pos = sys::lseek(fd, 0, libc::SEEK_CUR)?;
        let n = call(pos)?;
        sys::lseek(fd, (pos + n as u64) as i64, libc::SEEK_SET)?;
        return Ok(n);
    };
    let r = call(pos);
    match r {
        Ok(n) if n == len => {}
        Ok(n) => {
            sys::lseek(fd, (pos + n as u64) as i64, libc::SEEK_SET)?;
        }
        Err(_) => {
            let _ = sys::lseek(fd, pos as i64, libc::SEEK_SET);
        }
    }
    r
}

/// `read(2)` on a managed fd.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn read(fd: i32, buf: *mut u8, len: usize, nowait: bool) -> Served {
    if len == 0 {
        return None; // the kernel answers a zero-length call (and its errors) itself
    }
    let len = usercopy::clamped(buf as usize, len)?;
    let (d, t, st) = managed_read(fd, nowait)?;
    let pool = &state().pool;
    let (o, r) = locked(&d, nowait, || {
        let mut o = Outcome::default();
        let io = d.io(fd, t, pool, nowait);
        if d.shared.load(Ordering::Relaxed) {
            // Another process may move the offset: the kernel's own read keeps it atomic.
            // SAFETY: forwarded from the caller.
            let r = unsafe { read_path::read_here(&io, buf, len, &mut o) };
            return (o, r);
        }
        // SAFETY: forwarded from the caller.
        if let Some(r) = unsafe { read_path::read_next(&io, fd, &st, buf, len, &mut o) } {
            return (o, r);
        }
        // SAFETY: forwarded from the caller.
        let r = at_offset(fd, len, |pos| unsafe { read_path::pread_with(&io, Some(&st), buf, len, pos, &mut o) });
        (o, r)
    })?;
    settle(fd, &d, &o, false, &r).then_some(r)
}

/// `pread(2)` on a managed fd.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn pread(fd: i32, buf: *mut u8, len: usize, off: i64, nowait: bool) -> Served {
    // A negative offset, or one that with the length passes the largest offset, is the
    // kernel's EINVAL.
    if off < 0 || len == 0 || (off as u64).checked_add(len as u64).is_none_or(|end| end > i64::MAX as u64) {
        return None;
    }
    let len = usercopy::clamped(buf as usize, len)?;
    let (d, t, st) = managed_read(fd, nowait)?;
    let mut o = Outcome::default();
    let io = d.io(fd, t, &state().pool, nowait);
    // SAFETY: forwarded from the caller.
    let r = unsafe { read_path::pread_with(&io, Some(&st), buf, len, off as u64, &mut o) };
    settle(fd, &d, &o, false, &r).then_some(r)
}

/// `write(2)` on a managed fd.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub unsafe fn write(fd: i32, buf: *const u8, len: usize, nowait: bool) -> Served {
    if len == 0 {
        return None; // the kernel answers a zero-length call (and its errors) itself
    }
    let len = usercopy::clamped(buf as usize, len)?;
    let (d, t) = managed_unchecked(fd, nowait)?;
    let here = d.shared.load(Ordering::Relaxed) || write_path::through_cache(&state().tuning(&d.ra), len);
    if !here && !verified(fd, &d) {
        return None;
    }
    let pool = &state().pool;
    let (o, r) = locked(&d, nowait, || {
        let mut o = Outcome::default();
        let io = d.io(fd, t, pool, nowait);
        if io.append && !here {
            // SAFETY: forwarded from the caller.
            let r = unsafe { write_path::append(&io, buf, len, true, &mut o) }
                .and_then(|(n, pos)| sys::lseek(fd, pos as i64, libc::SEEK_SET).map(|_| n));
            return (o, r);
        }
        // A small write, or one another process may race at the offset: one write on the
        // program's own description, which moves the offset atomically (and appends on an
        // O_APPEND one).
        if here {
            // SAFETY: forwarded from the caller.
            let r = unsafe { write_path::write_here(&io, buf, len, &mut o) };
            return (o, r);
        }
        // SAFETY: forwarded from the caller.
        let r = at_offset(fd, len, |pos| unsafe { write_path::pwrite(&io, buf, len, pos, &mut o) });
        (o, r)
    })?;
    settle(fd, &d, &o, true, &r).then_some(r)
}

/// `pwrite(2)` on a managed fd.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub unsafe fn pwrite(fd: i32, buf: *const u8, len: usize, off: i64, nowait: bool) -> Served {
    // A negative offset, or one that with the length passes the largest offset, is the
    // kernel's EINVAL.
    if off < 0 || len == 0 || (off as u64).checked_add(len as u64).is_none_or(|end| end > i64::MAX as u64) {
        return None;
    }
    let len = usercopy::clamped(buf as usize, len)?;
    let (d, t) = managed_direct(fd, nowait)?;
    let mut o = Outcome::default();
    // SAFETY: forwarded from the caller.
    let r = unsafe { write_path::pwrite(&d.io(fd, t, &state().pool, nowait), buf, len, off as u64, &mut o) };
    settle(fd, &d, &o, true, &r).then_some(r)
}

/// The program's iovecs, read through the kernel, and their total length, when the engine
/// serves the call: `None` leaves to the kernel (with its EINVAL, EFAULT or clamping) a count
/// outside `1..=IOV_MAX`, an array it cannot read whole, a length that is negative as
/// `ssize_t`, a total past `MAX_RW_COUNT`, and a range `access_ok` refuses.
fn iovecs(iov: *const libc::iovec, cnt: i32) -> Option<(Vec<libc::iovec>, usize)> {
    if !(1..=libc::UIO_MAXIOV).contains(&cnt) || !usercopy::usable() {
        return None;
    }
    let mut v = Vec::new();
    usercopy::read_iovecs(iov, cnt as usize, &mut v).ok()?;
    let total = v.iter().try_fold(0usize, |a, e| {
        let ok = e.iov_len == 0 || usercopy::ordinary(e.iov_base as usize, e.iov_len);
        ok.then(|| a.checked_add(e.iov_len)).flatten()
    })?;
    (total > 0 && total <= usercopy::MAX_RW_COUNT).then_some((v, total))
}

/// `readv`/`preadv`/`preadv2` on a managed fd; `off == -1` means at the file position.
pub fn readv(fd: i32, iov: *const libc::iovec, cnt: i32, off: i64, nowait: bool) -> Served {
    if off < -1 {
        return None;
    }
    let (v, total) = iovecs(iov, cnt)?;
    let (d, t) = managed_direct(fd, nowait)?;
    if off < 0 && d.shared.load(Ordering::Relaxed) {
        return None; // another process may move the offset: the kernel's own call
    }
    let pool = &state().pool;
    let run = |start: u64, o: &mut Outcome| -> SysResult<usize> {
        let mut done = 0usize;
        for e in &v {
            // SAFETY: the iovec is the program's; the read paths copy into it through the
            // kernel or hand it to the kernel.
            let r = unsafe {
                read_path::pread(&d.io(fd, t, pool, nowait), e.iov_base as *mut u8, e.iov_len, start + done as u64, o)
            };
            match r {
                Ok(n) => {
                    done += n;
                    if n < e.iov_len {
                        break;
                    }
                }
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    };
    let mut o = Outcome::default();
    let r = if off >= 0 {
        run(off as u64, &mut o)
    } else {
        locked(&d, nowait, || at_offset(fd, total, |pos| run(pos, &mut o)))?
    };
    settle(fd, &d, &o, false, &r).then_some(r)
}

/// `writev`/`pwritev`/`pwritev2` on a managed fd; `off == -1` means at the file position.
pub fn writev(fd: i32, iov: *const libc::iovec, cnt: i32, off: i64, nowait: bool) -> Served {
    if off < -1 {
        return None;
    }
    let (v, total) = iovecs(iov, cnt)?;
    let (d, _) = managed_direct(fd, nowait)?;
    if off < 0 && d.shared.load(Ordering::Relaxed) {
        return None; // another process may move the offset: the kernel's own call
    }
    drop(d);
    // Gather into one buffer so the write reaches the file as one piece, as writev does. The
    // kernel copies, up to the first byte the program cannot give, where the kernel's writev
    // would stop too.
    let mut data: Vec<u8> = Vec::new();
    if data.try_reserve_exact(total).is_err() {
        return None;
    }
    for e in &v {
        let at = data.len();
        // SAFETY: the reserved capacity holds `total` bytes; they are written (by the kernel)
        // before `set_len` covers them.
        let room = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().add(at), e.iov_len) };
        let got = match usercopy::from_program(room, e.iov_base as *const u8) {
            Ok(k) => k,
            Err(libc::EFAULT) => 0,
            Err(_) => return None,
        };
        // SAFETY: `got` more bytes were written just above.
        unsafe { data.set_len(at + got) };
        if got < e.iov_len {
            break;
        }
    }
    if data.is_empty() {
        // Nothing to give: the kernel's own call answers (EFAULT, or an error it checks first).
        return None;
    }
    // SAFETY: `data` is a valid buffer of its length.
    unsafe {
        if off >= 0 {
            pwrite(fd, data.as_ptr(), data.len(), off, nowait)
        } else {
            write(fd, data.as_ptr(), data.len(), nowait)
        }
    }
}

/// RWF flags the engine can honour around its own I/O; with others (RWF_APPEND on a read)
/// the call goes to the kernel as it is. RWF_DONTCACHE too: the kernel refuses it with
/// EOPNOTSUPP where the filesystem lacks it (tmpfs), and where it has it the program's call
/// keeps nothing in the page cache either.
const HANDLED_RWF: i32 = libc::RWF_HIPRI | libc::RWF_DSYNC | libc::RWF_SYNC;

/// `preadv2` on a managed fd. RWF_NOWAIT is served like any read, from the device: the
/// kernel's own O_DIRECT read with the flag waits for the device too. Left to the kernel, the
/// program's buffered descriptor would answer from the page cache the library keeps empty (a
/// short count or EAGAIN where a plain run's cache holds the bytes) and start read-ahead into
/// it. Whether the file takes the flag at all (tmpfs refuses it with EOPNOTSUPP) is asked of
/// the kernel with the same flags at an offset past any file's end, which reads nothing.
pub fn readv2(fd: i32, iov: *const libc::iovec, cnt: i32, off: i64, flags: i32, nowait: bool) -> Served {
    if flags & !(HANDLED_RWF | libc::RWF_NOWAIT) != 0 {
        return None;
    }
    if flags & libc::RWF_NOWAIT != 0 {
        let mut probe = 0u8;
        // SAFETY: one byte of our own stack; past the end of any file nothing is read into it.
        unsafe { sys::preadv2(fd, &mut probe, 1, NOWAIT_PROBE_AT, flags) }.ok()?;
    }
    readv(fd, iov, cnt, off, nowait)
}

/// Past the end of any file a filesystem holds (`MAX_LFS_FILESIZE` is 2^63 - 1 bytes, ext4's
/// and xfs's limits far below), and with room for a 1-byte read before `loff_t` overflows.
const NOWAIT_PROBE_AT: i64 = 1 << 62;

/// `pwritev2` on a managed fd: with RWF_DSYNC or RWF_SYNC, what was written is made durable
/// as the flag asks before the call returns.
pub fn writev2(fd: i32, iov: *const libc::iovec, cnt: i32, off: i64, flags: i32, nowait: bool) -> Served {
    if flags & !HANDLED_RWF != 0 {
        return None;
    }
    let r = writev(fd, iov, cnt, off, nowait)?;
    Some(match r {
        Ok(n) if n > 0 && flags & libc::RWF_SYNC != 0 => sys::fsync(fd).map(|_| n),
        Ok(n) if n > 0 && flags & libc::RWF_DSYNC != 0 => sys::fdatasync(fd).map(|_| n),
        r => r,
    })
}
