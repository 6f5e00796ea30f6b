//! The read path: pread semantics over O_DIRECT for any buffer, offset and length.
//!
//! Aligned requests go to the kernel as they are, with no copy. Anything else reads the
//! aligned superset into page-aligned bounce buffers and copies the asked-for bytes out,
//! clamped at end of file. A direct read that the kernel still refuses with EINVAL is redone
//! unchanged on the buffered companion, so the program gets exactly what a buffered read
//! returns (genuine errors keep their errno).

use crate::io::{FileIo, Outcome};
use crate::sys::{self, SysResult};

/// Reads up to `len` bytes at `off` into `buf`, like `pread(2)` on a buffered descriptor.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn pread(io: &FileIo<'_>, buf: *mut u8, len: usize, off: u64, out: &mut Outcome) -> SysResult<usize> {
    if len == 0 || off > i64::MAX as u64 {
        // SAFETY: forwarded from the caller; the kernel answers the edge cases itself.
        return unsafe { sys::pread(io.fd, buf, len, off) };
    }
    let a = &io.align;
    // The kernel may fill the caller's buffer up to the end of the last block even past end
    // of file, beyond the count it returns; a buffered read never touches those bytes, so a
    // read that crosses end of file takes the bounce path, which copies exactly.
    if a.read_ok(buf as usize, off, len) && !crosses_eof(io.fd, off, len) {
        // SAFETY: forwarded from the caller.
        match unsafe { sys::pread(io.fd, buf, len, off) } {
            Err(libc::EINVAL) => {}
            Ok(n) => {
                out.direct_bytes += n as u64;
                return Ok(n);
            }
            Err(e) => return Err(e),
        }
        // SAFETY: forwarded from the caller.
        return unsafe { buffered(io, buf, len, off, out) };
    }
    // SAFETY: forwarded from the caller.
    match unsafe { bounced(io, buf, len, off) } {
        Ok(n) => {
            out.bounced_bytes += n as u64;
            Ok(n)
        }
        // SAFETY: forwarded from the caller.
        Err(libc::EINVAL) => unsafe { buffered(io, buf, len, off, out) },
        Err(e) => Err(e),
    }
}

fn crosses_eof(fd: i32, off: u64, len: usize) -> bool {
    match sys::fstat(fd) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => off + len as u64 > st.st_size as u64,
        _ => false,
    }
}

/// Reads the aligned superset of `[off, off+len)` chunk by chunk and copies the wanted part.
unsafe fn bounced(io: &FileIo<'_>, buf: *mut u8, len: usize, off: u64) -> SysResult<usize> {
    let a = io.align.read_offset as u64;
    let end = off.checked_add(len as u64).ok_or(libc::EINVAL)?;
    let mut pos = off - off % a;
    let aligned_end = end.checked_next_multiple_of(a).ok_or(libc::EINVAL)?;
    let mut bounce = io.pool.get(io.nowait).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOMEM))?;
    let chunk = (bounce.len() as u64 / a) * a;
    if chunk == 0 || !(bounce.as_mut_ptr() as usize).is_multiple_of(io.align.mem) {
        return Err(libc::EINVAL);
    }
    let mut done = 0usize;
    while pos < aligned_end {
        let want = chunk.min(aligned_end - pos) as usize;
        // SAFETY: the bounce buffer holds at least `chunk >= want` bytes.
        let n = match unsafe { sys::pread(io.fd, bounce.as_mut_ptr(), want, pos) } {
            Ok(n) => n,
            Err(e) if done == 0 => return Err(e),
            Err(_) => return Ok(done),
        };
        let lo = pos.max(off);
        let hi = (pos + n as u64).min(end);
        if hi > lo {
            let src = &bounce.as_mut_slice()[(lo - pos) as usize..(hi - pos) as usize];
            // SAFETY: `lo - off + src.len() <= len`, inside the caller's buffer, which cannot
            // overlap the engine's private bounce mapping.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf.add((lo - off) as usize), src.len()) };
            done = (hi - off) as usize;
        }
        if n < want {
            break; // end of file
        }
        pos += n as u64;
    }
    Ok(done)
}

/// The program's call, unchanged, on the buffered companion.
unsafe fn buffered(io: &FileIo<'_>, buf: *mut u8, len: usize, off: u64, out: &mut Outcome) -> SysResult<usize> {
    out.einval_retry = true;
    let c = io.companion.get(io.fd, io.accmode, io.append, io.ident)?;
    // SAFETY: forwarded from the caller.
    let n = unsafe { io.companion.read(c, buf, len, off as i64) }?;
    out.buffered_bytes += n as u64;
    Ok(n)
}
