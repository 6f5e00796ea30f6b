//! The write path: pwrite and append semantics over O_DIRECT for any buffer, offset and
//! length, leaving the file's bytes and size exactly as a buffered write would.
//!
//! A write is split at page-or-sector boundaries (whichever is larger): the unaligned head
//! and tail go through the page cache on the program's own description, so the kernel does
//! the read-modify-write of a block shared with another writer under its own locks; the
//! aligned interior goes direct on the twin, straight from the program's buffer when its
//! address allows, else through bounce buffers. The pieces are written in file order, so a
//! failure part-way leaves a short write of a prefix, as the kernel's own would. Nothing
//! acknowledged is ever held only in the engine's memory, and a direct write that extends the
//! file first waits for the buffered pieces below it to reach the device, so that a crash
//! never leaves a size covering bytes that were only cached (they would read as zeros).

use crate::align::Alignment;
use crate::io::{FileIo, Outcome, Tuning};
use crate::sys::{self, SysResult};
use crate::usercopy;
use crate::writing::Writing;

/// Pieces of a split write meet at page-or-sector boundaries, whichever is larger.
fn granule(align: &Alignment) -> u64 {
    align.offset.max(crate::align::page_size()) as u64
}

/// How a positional write is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePlan {
    /// Through the page cache as a whole (write-behind or dontcache), dropped behind.
    Cache,
    /// Straight from the program's buffer with O_DIRECT.
    Direct,
    /// The unaligned head `[off, ia)` and tail `[ib, end)` through the page cache, the
    /// aligned interior `[ia, ib)` direct; pieces may be empty.
    Split {
        /// Start of the interior: `off` rounded up to the granule (at most the end).
        ia: u64,
        /// End of the interior: the end rounded down to the granule (at least `ia`).
        ib: u64,
    },
}

/// Plans a write of `len` bytes from address `buf` at `off` (`len > 0`); `None` when the
/// write would end past the largest offset (EFBIG).
pub fn plan_write(align: &Alignment, tuning: &Tuning<'_>, buf: usize, off: u64, len: usize) -> Option<WritePlan> {
    if through_cache(tuning, len) {
        return Some(WritePlan::Cache);
    }
    if align.write_ok(buf, off, len) {
        return Some(WritePlan::Direct);
    }
    let g = granule(align);
    let end = off.checked_add(len as u64)?;
    let ia = off.next_multiple_of(g).min(end);
    let ib = (end - end % g).max(ia);
    Some(WritePlan::Split { ia, ib })
}

/// Writes `len` bytes from `buf` at `off`, like `pwrite(2)` on a buffered descriptor.
/// On an O_APPEND description Linux appends whatever the offset; so does this.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub unsafe fn pwrite(io: &FileIo<'_>, buf: *const u8, len: usize, off: u64, out: &mut Outcome) -> SysResult<usize> {
    if io.append {
        // SAFETY: forwarded from the caller.
        return unsafe { append(io, buf, len, false, out) }.map(|(n, _)| n);
    }
    if len == 0 || off > i64::MAX as u64 {
        // SAFETY: forwarded; the kernel answers the edge cases itself.
        return unsafe { sys::pwrite(io.fd, buf, len, off) };
    }
    let _writing = writing(io);
    let len = if through_cache(&io.tuning, len) { len } else { within_fsize_limit(off, len) };
    let (ia, ib) = match plan_write(&io.align, &io.tuning, buf as usize, off, len).ok_or(libc::EFBIG)? {
        // SAFETY: forwarded from the caller.
        WritePlan::Cache => return unsafe { buffered(io, buf, len, off as i64, out) },
        WritePlan::Direct => {
            if extends(io, off + len as u64) {
                io.behind.settle_below(io.fd, off);
            }
            // SAFETY: forwarded from the caller.
            return unsafe { direct_all(io, buf, len, off, out) };
        }
        WritePlan::Split { ia, ib } => (ia, ib),
    };
    let end = off + len as u64;
    let mut done = 0usize;
    let extends = ib > ia && extends(io, ib);
    // Head, interior, tail, in file order.
    for (lo, hi, direct) in [(off, ia, false), (ia, ib, true), (ib, end, false)] {
        if hi <= lo {
            continue;
        }
        let piece_len = (hi - lo) as usize;
        // SAFETY: `[lo-off, hi-off)` lies inside the caller's buffer.
        let p = unsafe { buf.add((lo - off) as usize) };
        let r = if direct {
            if extends {
                io.behind.settle_below(io.fd, lo);
            }
            // SAFETY: as above.
            unsafe { interior(io, p, piece_len, lo, out) }
        } else {
            // SAFETY: as above.
            unsafe { buffered(io, p, piece_len, lo as i64, out) }
        };
        match r {
            Ok(n) => {
                done += n;
                if n < piece_len {
                    return Ok(done);
                }
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => return Ok(done),
        }
    }
    Ok(done)
}

/// Writes `len` bytes at the program's file position with one write on its own description
/// (the kernel moves the offset atomically, also for other processes sharing it), dropped
/// behind.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub unsafe fn write_here(io: &FileIo<'_>, buf: *const u8, len: usize, out: &mut Outcome) -> SysResult<usize> {
    let _writing = writing(io);
    // SAFETY: forwarded from the caller.
    unsafe { buffered(io, buf, len, -1, out) }
}

/// Appends `len` bytes at the end of file. With `moves_offset` (write(2)) returns the file
/// position after the write, which the description's offset must become; without it
/// (pwrite(2) on an O_APPEND description, which Linux turns into an append) the
/// description's offset is left alone and the position returned is meaningless.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub unsafe fn append(
    io: &FileIo<'_>,
    buf: *const u8,
    len: usize,
    moves_offset: bool,
    out: &mut Outcome,
) -> SysResult<(usize, u64)> {
    let _writing = writing(io);
    if !through_cache(&io.tuning, len) && len > 0 && io.align.write_ok(buf as usize, 0, len) {
        if let Ok(st) = sys::fstat(io.fd) {
            io.behind.settle_below(io.fd, st.st_size.max(0) as u64);
        }
        // The kernel appends atomically if the current end of file is aligned; if it is
        // not, it refuses with EINVAL and nothing was written. pwrite on an O_APPEND
        // description appends without moving the offset, as the program's pwrite would.
        // SAFETY: forwarded from the caller.
        let r = unsafe {
            if moves_offset {
                sys::write(io.fd, buf, len)
            } else {
                sys::pwrite(io.fd, buf, len, 0)
            }
        };
        match r {
            Ok(n) => {
                out.direct_bytes += n as u64;
                return Ok((n, sys::lseek(io.fd, 0, libc::SEEK_CUR)?));
            }
            // EFAULT: as in `direct_all`.
            Err(libc::EINVAL) | Err(libc::EFAULT) => {}
            Err(e) => return Err(e),
        }
    }
    // On the program's O_APPEND description a write at its position appends and moves it; a
    // positional write appends and leaves it.
    // SAFETY: forwarded from the caller.
    let n = unsafe { buffered(io, buf, len, if moves_offset { -1 } else { 0 }, out) }?;
    if !moves_offset {
        return Ok((n, 0));
    }
    Ok((n, sys::lseek(io.prog, 0, libc::SEEK_CUR)?))
}

/// `len` cut at `RLIMIT_FSIZE`, as the kernel cuts a write that starts below the limit and
/// crosses it: the write's pieces then never start at the limit, where the kernel would send
/// SIGXFSZ for a write that, whole, only comes back short. A write starting at or past the
/// limit is left whole, so that its first piece gets the kernel's SIGXFSZ and EFBIG.
fn within_fsize_limit(off: u64, len: usize) -> usize {
    match sys::fsize_limit() {
        Ok(limit) if limit != libc::RLIM_INFINITY && off < limit => {
            len.min((limit - off).min(usize::MAX as u64) as usize)
        }
        _ => len,
    }
}

/// True if a direct write ending at `end` makes the file longer.
fn extends(io: &FileIo<'_>, end: u64) -> bool {
    sys::fstat(io.fd).is_ok_and(|st| end > st.st_size.max(0) as u64)
}

/// Marks a write to the file in progress until the result is dropped: read-ahead windows of
/// any description of the file may hold bytes it replaces.
fn writing(io: &FileIo<'_>) -> Writing {
    io.writes.begin()
}

/// True if a write of `len` bytes goes through the page cache as a whole:
/// `S3DLIO_DIRECT_MODE=dontcache`, or a write small enough for write-behind, where a direct
/// write would cost a device round trip each.
pub fn through_cache(tuning: &Tuning<'_>, len: usize) -> bool {
    tuning.dontcache || len < tuning.write_behind
}

/// An aligned write straight from the program's buffer; EINVAL is redone buffered.
unsafe fn direct_all(io: &FileIo<'_>, buf: *const u8, len: usize, off: u64, out: &mut Outcome) -> SysResult<usize> {
    // SAFETY: forwarded from the caller.
    match unsafe { sys::pwrite(io.fd, buf, len, off) } {
        Ok(n) => {
            out.direct_bytes += n as u64;
            Ok(n)
        }
        Err(libc::EINVAL) => {
            out.einval_retry = true;
            // SAFETY: forwarded from the caller.
            unsafe { buffered(io, buf, len, off as i64, out) }
        }
        // A direct write fails as a whole on a buffer that is bad anywhere (having written
        // nothing past the old size), where a buffered write writes the bytes up to the bad
        // one: the program's own call gives the kernel's answer.
        // SAFETY: forwarded from the caller.
        Err(libc::EFAULT) => unsafe { buffered(io, buf, len, off as i64, out) },
        Err(e) => Err(e),
    }
}

/// The aligned interior `[off, off+len)`: direct from the program's buffer if its address
/// is aligned, else copied through bounce buffers chunk by chunk.
unsafe fn interior(io: &FileIo<'_>, buf: *const u8, len: usize, off: u64, out: &mut Outcome) -> SysResult<usize> {
    if (buf as usize).is_multiple_of(io.align.mem) {
        // SAFETY: forwarded from the caller.
        return unsafe { direct_all(io, buf, len, off, out) };
    }
    let mut bounce = io.pool.get(io.nowait).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOMEM))?;
    let g = granule(&io.align) as usize;
    let chunk = bounce.len() / g * g;
    if chunk == 0 || !(bounce.as_mut_ptr() as usize).is_multiple_of(io.align.mem) {
        // SAFETY: forwarded from the caller.
        return unsafe { buffered(io, buf, len, off as i64, out) };
    }
    let mut done = 0usize;
    while done < len {
        let n = chunk.min(len - done);
        let got = match usercopy::from_program(&mut bounce.as_mut_slice()[..n], buf.wrapping_add(done)) {
            Ok(k) => k,
            Err(libc::EFAULT) if done == 0 => return Err(libc::EFAULT),
            Err(libc::EFAULT) => break,
            Err(_) => {
                // The kernel does not copy for the engine: the program's call does the rest.
                // SAFETY: the rest of the caller's buffer.
                let w = unsafe { buffered(io, buf.add(done), len - done, (off + done as u64) as i64, out) };
                return finish(done, w);
            }
        };
        if got < n {
            // The program's buffer ends in bad memory after `got` bytes: those are written
            // (the aligned part direct, the rest buffered from the bounce buffer) and the
            // count ends there, as a buffered write's.
            // A direct piece that fails leaves it all to the buffered write, which gives the
            // kernel's answer; one that comes back short ends the count there.
            let whole = got / g * g;
            let head = if whole > 0 {
                // SAFETY: the bounce buffer holds `got >= whole` bytes.
                unsafe { sys::pwrite(io.fd, bounce.as_mut_ptr(), whole, off + done as u64) }.unwrap_or(0)
            } else {
                0
            };
            out.bounced_bytes += head as u64;
            if head == got || (head > 0 && head < whole) {
                return Ok(done + head);
            }
            // SAFETY: `[head, got)` lies inside the bounce buffer.
            let w = unsafe {
                buffered(io, bounce.as_mut_ptr().add(head), got - head, (off + (done + head) as u64) as i64, out)
            };
            return finish(done + head, w);
        }
        // SAFETY: the bounce buffer is valid for `n` bytes.
        let r = unsafe { sys::pwrite(io.fd, bounce.as_mut_ptr(), n, off + done as u64) };
        match r {
            Ok(w) => {
                out.bounced_bytes += w as u64;
                done += w;
                if w < n {
                    break;
                }
            }
            Err(libc::EINVAL) => {
                out.einval_retry = true;
                // SAFETY: the rest of the caller's buffer.
                let w = unsafe { buffered(io, buf.add(done), len - done, (off + done as u64) as i64, out) };
                return finish(done, w);
            }
            Err(_) if done > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The count of a write that did `done` bytes before a last piece that returned `r`: the
/// bytes written count even if the last piece failed, as with write(2).
fn finish(done: usize, r: SysResult<usize>) -> SysResult<usize> {
    match r {
        Ok(w) => Ok(done + w),
        Err(_) if done > 0 => Ok(done),
        Err(e) => Err(e),
    }
}

/// Writes through the page cache on the program's own description (`off == -1`: at its
/// file position), dropped behind; with S3DLIO_DIRECT_SYNC made durable before returning,
/// as the O_SYNC it would have had.
unsafe fn buffered(io: &FileIo<'_>, buf: *const u8, len: usize, off: i64, out: &mut Outcome) -> SysResult<usize> {
    let behind = !io.tuning.dontcache && len < io.tuning.write_behind;
    // SAFETY: forwarded from the caller.
    let n = unsafe { io.behind.write(io.prog, io.fd, buf, len, off, io.append, behind) }?;
    if io.sync && n > 0 {
        sys::fsync(io.prog)?;
    }
    out.buffered_bytes += n as u64;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::AlignSource;

    fn strict() -> Alignment {
        Alignment { mem: 4096, offset: 4096, read_offset: 4096, source: AlignSource::Statx, supported: None }
    }

    #[test]
    fn writes_are_dispatched_by_size_and_alignment() {
        let a = strict();
        let behind = Tuning { write_behind: 1 << 20, ..Default::default() };
        let none = Tuning::default();
        let dontcache = Tuning { dontcache: true, ..Default::default() };
        // below the write-behind size: the page cache, dropped behind, whatever the alignment
        assert_eq!(plan_write(&a, &behind, 4096, 0, 4096), Some(WritePlan::Cache));
        assert_eq!(plan_write(&a, &behind, 1, 3, 1000), Some(WritePlan::Cache));
        // dontcache: everything through the page cache
        assert_eq!(plan_write(&a, &dontcache, 0, 0, 8 << 20), Some(WritePlan::Cache));
        // aligned buffer, offset and length: straight to the device
        assert_eq!(plan_write(&a, &behind, 8192, 1 << 20, 2 << 20), Some(WritePlan::Direct));
        assert_eq!(plan_write(&a, &none, 4096, 0, 4096), Some(WritePlan::Direct));
        // misaligned offset: head and tail through the cache, the interior direct
        assert_eq!(plan_write(&a, &none, 4096, 100, 3 * 4096), Some(WritePlan::Split { ia: 4096, ib: 3 * 4096 }));
        // misaligned buffer only: one interior, no head or tail
        assert_eq!(plan_write(&a, &none, 4097, 0, 8192), Some(WritePlan::Split { ia: 0, ib: 8192 }));
        // inside one block: no interior
        assert_eq!(plan_write(&a, &none, 0, 10, 20), Some(WritePlan::Split { ia: 30, ib: 30 }));
        // past the largest offset: EFBIG
        assert_eq!(plan_write(&a, &none, 0, u64::MAX - 10, 4096 * 2), None);
    }

    #[test]
    fn write_pieces_meet_at_page_boundaries_on_small_sector_disks() {
        let a = Alignment { mem: 512, offset: 512, read_offset: 512, source: AlignSource::Statx, supported: None };
        let page = crate::align::page_size() as u64;
        // a misaligned buffer: pieces split at the page, not the 512-byte sector
        assert_eq!(
            plan_write(&a, &Tuning::default(), 1, 512, 3 * page as usize),
            Some(WritePlan::Split { ia: page, ib: 3 * page })
        );
    }
}
