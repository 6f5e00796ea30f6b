//! The read path: pread semantics over O_DIRECT for any buffer, offset and length.
//!
//! Aligned requests go to the kernel as they are, with no copy. Anything else reads the
//! aligned superset into page-aligned bounce buffers and copies the asked-for bytes out,
//! clamped at end of file. A direct read that the kernel still refuses with EINVAL is redone
//! unchanged on the program's own buffered description, so the program gets exactly what a
//! buffered read returns (genuine errors keep their errno).

use crate::align::Alignment;
use crate::io::{FileIo, Outcome};
use crate::readahead::Source;
use crate::sys::{self, SysResult};
use crate::usercopy;

/// Reads up to `len` bytes at `off` into `buf`, like `pread(2)` on a buffered descriptor.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn pread(io: &FileIo<'_>, buf: *mut u8, len: usize, off: u64, out: &mut Outcome) -> SysResult<usize> {
    // SAFETY: forwarded from the caller.
    unsafe { pread_with(io, None, buf, len, off, out) }
}

/// [`pread`] with the file's state when the caller has it (`st`: an fstat of the file taken
/// before the call; `None`: the read takes one).
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn pread_with(
    io: &FileIo<'_>,
    st: Option<&libc::stat>,
    buf: *mut u8,
    len: usize,
    off: u64,
    out: &mut Outcome,
) -> SysResult<usize> {
    if len == 0 || off > i64::MAX as u64 {
        // SAFETY: forwarded from the caller; the kernel answers the edge cases itself.
        return unsafe { sys::pread(io.fd, buf, len, off) };
    }
    if io.tuning.dontcache {
        // SAFETY: forwarded from the caller.
        return unsafe { cached_read(io, buf, len, off, out) };
    }
    let st = match st {
        Some(st) => *st,
        None => sys::fstat(io.fd)?,
    };
    if let Some((ra, params)) = io.tuning.readahead {
        let src = Source { fd: io.fd, align: io.align, accmode: io.accmode, params };
        match ra.serve(&src, &st, buf, len, off, &mut out.readahead_bytes) {
            None => {}
            Some(Err(e)) => return Err(e),
            Some(Ok(s)) => {
                out.readahead_copied += s.bytes as u64;
                if !s.rest_unread {
                    return Ok(s.bytes);
                }
                // SAFETY: the rest of the caller's buffer.
                let rest = unsafe { unwindowed(io, &st, buf.add(s.bytes), len - s.bytes, off + s.bytes as u64, out) };
                // Bytes already read are the program's even if the rest fails, as with read(2).
                return Ok(s.bytes + rest.unwrap_or(0));
            }
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { unwindowed(io, &st, buf, len, off, out) }
}

/// [`pread`] without read-ahead: straight into the caller's buffer when aligned, else
/// through bounce buffers. `st` is the file's state before the call.
unsafe fn unwindowed(
    io: &FileIo<'_>,
    st: &libc::stat,
    buf: *mut u8,
    len: usize,
    off: u64,
    out: &mut Outcome,
) -> SysResult<usize> {
    if plan_read(&io.align, st, buf as usize, off, len) == ReadPlan::Direct {
        // SAFETY: forwarded from the caller.
        match unsafe { sys::pread(io.fd, buf, len, off) } {
            Err(libc::EINVAL) => {}
            Ok(n) => {
                out.direct_bytes += n as u64;
                out.device_bytes += asked(n, len, io.align.read_offset);
                return Ok(n);
            }
            // A direct read fails as a whole on a buffer that is bad anywhere, where a
            // buffered read returns the bytes up to the bad one, and a direct read can fail
            // where a buffered one does not (ext4 answers EIO for the blocks a buffered write
            // that faulted left behind): the program's own call gives the kernel's answer.
            // SAFETY: forwarded from the caller.
            Err(_) => return unsafe { cached_read(io, buf, len, off, out) },
        }
        // SAFETY: forwarded from the caller.
        return unsafe { buffered(io, buf, len, off, out) };
    }
    match bounced(io, buf, len, off, &mut out.device_bytes) {
        Ok(n) => {
            out.bounced_bytes += n as u64;
            Ok(n)
        }
        // SAFETY: forwarded from the caller.
        Err(libc::EINVAL) => unsafe { buffered(io, buf, len, off, out) },
        // The program's buffer is bad: the kernel's answer already.
        Err(libc::EFAULT) => Err(libc::EFAULT),
        // The kernel did not copy, or the device read failed where the program's own
        // buffered call may not (as above): that call gives the kernel's answer.
        // SAFETY: forwarded from the caller.
        Err(_) => unsafe { cached_read(io, buf, len, off, out) },
    }
}

/// `read(2)` at the program's file position on its own description (the kernel moves the
/// offset atomically, also for other processes sharing it), asking the kernel not to keep
/// new pages.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn read_here(io: &FileIo<'_>, buf: *mut u8, len: usize, out: &mut Outcome) -> SysResult<usize> {
    // SAFETY: forwarded from the caller.
    let n = unsafe { io.behind.read(io.prog, buf, len, -1) }?;
    out.buffered_bytes += n as u64;
    out.device_bytes += n as u64;
    Ok(n)
}

/// `read(2)` on `fd` (the program's descriptor, whose fstat taken before the call is `st`)
/// served from the read-ahead window without looking up the offset first; `None`: use
/// [`pread`] at the offset.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn read_next(
    io: &FileIo<'_>,
    fd: i32,
    st: &libc::stat,
    buf: *mut u8,
    len: usize,
    out: &mut Outcome,
) -> Option<SysResult<usize>> {
    let (ra, params) = io.tuning.readahead?;
    if io.tuning.dontcache {
        return None;
    }
    let src = Source { fd: io.fd, align: io.align, accmode: io.accmode, params };
    let r = ra.serve_next(&src, fd, st, buf, len, &mut out.readahead_bytes)?;
    if let Ok(n) = r {
        out.readahead_copied += n as u64;
    }
    Some(r)
}

/// How a read outside the read-ahead windows is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPlan {
    /// Straight into the program's buffer with O_DIRECT.
    Direct,
    /// The aligned superset through bounce buffers, the asked-for bytes copied out.
    Bounce,
}

/// Plans a read of `len` bytes at `off` into address `buf` of the file `st` describes.
pub fn plan_read(align: &Alignment, st: &libc::stat, buf: usize, off: u64, len: usize) -> ReadPlan {
    // The kernel may fill the caller's buffer up to the end of the last block even past end
    // of file, beyond the count it returns; a buffered read never touches those bytes, so a
    // read that crosses end of file takes the bounce path, which copies exactly.
    let crosses_eof = st.st_mode & libc::S_IFMT == libc::S_IFREG && off + len as u64 > st.st_size as u64;
    if align.read_ok(buf, off, len) && !crosses_eof {
        ReadPlan::Direct
    } else {
        ReadPlan::Bounce
    }
}

/// Bounce buffers one read may use: the device serves one request of several MiB at full
/// speed, where 1 MiB at a time leaves it idle between requests.
const MAX_BOUNCE: usize = 8;

/// What the device moved for a direct read of `len` bytes that returned `n`: all of it, or up
/// to the end of the block holding end of file.
fn asked(n: usize, len: usize, align: usize) -> u64 {
    n.next_multiple_of(align.max(1)).min(len) as u64
}

/// Reads the aligned superset of `[off, off+len)` into bounce buffers, several at a time
/// with one vectored read, and has the kernel copy the wanted part into the program's
/// buffer (up to its first bad byte, or EFAULT, as a buffered read; [`usercopy::REFUSED`]
/// when the kernel does not copy); `device` grows by what the reads asked of the device.
fn bounced(io: &FileIo<'_>, buf: *mut u8, len: usize, off: u64, device: &mut u64) -> SysResult<usize> {
    let a = io.align.read_offset as u64;
    let end = off.checked_add(len as u64).ok_or(libc::EINVAL)?;
    let mut pos = off - off % a;
    let aligned_end = end.checked_next_multiple_of(a).ok_or(libc::EINVAL)?;
    let chunk = (io.pool.chunk() as u64 / a) * a;
    let wanted = ((aligned_end - pos).div_ceil(chunk.max(1)) as usize).clamp(1, MAX_BOUNCE);
    let mut bufs = Vec::with_capacity(wanted);
    for _ in 0..wanted {
        match io.pool.get(io.nowait) {
            Ok(b) => bufs.push(b),
            Err(e) if bufs.is_empty() => return Err(e.raw_os_error().unwrap_or(libc::ENOMEM)),
            Err(_) => break,
        }
    }
    if chunk == 0 || bufs.iter_mut().any(|b| !(b.as_mut_ptr() as usize).is_multiple_of(io.align.mem)) {
        return Err(libc::EINVAL);
    }
    let mut done = 0usize;
    while pos < aligned_end {
        let want = (chunk * bufs.len() as u64).min(aligned_end - pos) as usize;
        let iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .scan(want, |left, b| {
                let l = (*left).min(chunk as usize);
                *left -= l;
                (l > 0).then(|| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: l })
            })
            .collect();
        // SAFETY: each iovec lies inside its bounce buffer.
        let n = match unsafe { sys::preadv(io.fd, &iov, pos) } {
            Ok(n) => {
                *device += asked(n, want, a as usize);
                n
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => return Ok(done),
        };
        let lo = pos.max(off);
        let hi = (pos + n as u64).min(end);
        for (k, b) in bufs.iter_mut().enumerate() {
            let b_lo = pos + k as u64 * chunk;
            let (from, to) = (lo.max(b_lo), hi.min(b_lo + chunk));
            if from >= to {
                continue;
            }
            let src = &b.as_mut_slice()[(from - b_lo) as usize..(to - b_lo) as usize];
            let at = (from - off) as usize;
            match usercopy::to_program(buf.wrapping_add(at), src) {
                Ok(k) if k == src.len() => {}
                Ok(k) => return Ok(at + k),
                Err(libc::EFAULT) if at > 0 => return Ok(at),
                Err(e) => return Err(e),
            }
        }
        if hi > lo {
            done = (hi - off) as usize;
        }
        if n < want {
            break; // end of file
        }
        pos += n as u64;
    }
    Ok(done)
}

/// The program's call, unchanged, on its own buffered description (a direct call was
/// refused).
unsafe fn buffered(io: &FileIo<'_>, buf: *mut u8, len: usize, off: u64, out: &mut Outcome) -> SysResult<usize> {
    out.einval_retry = true;
    // SAFETY: forwarded from the caller.
    unsafe { cached_read(io, buf, len, off, out) }
}

/// The program's call, unchanged, on its own buffered description, asking the kernel not to
/// keep new pages.
unsafe fn cached_read(io: &FileIo<'_>, buf: *mut u8, len: usize, off: u64, out: &mut Outcome) -> SysResult<usize> {
    // SAFETY: forwarded from the caller.
    let n = unsafe { io.behind.read(io.prog, buf, len, off as i64) }?;
    out.buffered_bytes += n as u64;
    out.device_bytes += n as u64;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::AlignSource;

    #[test]
    fn reads_are_dispatched_by_alignment_and_end_of_file() {
        let a = Alignment { mem: 4096, offset: 4096, read_offset: 4096, source: AlignSource::Statx, supported: None };
        // SAFETY: stat is plain data.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_mode = libc::S_IFREG | 0o644;
        st.st_size = 1 << 20;
        assert_eq!(plan_read(&a, &st, 8192, 4096, 65536), ReadPlan::Direct);
        assert_eq!(plan_read(&a, &st, 8193, 4096, 65536), ReadPlan::Bounce, "misaligned buffer");
        assert_eq!(plan_read(&a, &st, 8192, 100, 4096), ReadPlan::Bounce, "misaligned offset");
        assert_eq!(plan_read(&a, &st, 8192, 0, 1000), ReadPlan::Bounce, "misaligned length");
        // an aligned read crossing end of file is bounced: the kernel could write past the count
        assert_eq!(plan_read(&a, &st, 8192, (1 << 20) - 4096, 8192), ReadPlan::Bounce);
        assert_eq!(plan_read(&a, &st, 8192, (1 << 20) - 4096, 4096), ReadPlan::Direct);
        // a block device has no end of file to cross here
        st.st_mode = libc::S_IFBLK | 0o644;
        assert_eq!(plan_read(&a, &st, 8192, (1 << 20) - 4096, 8192), ReadPlan::Direct);
    }
}
