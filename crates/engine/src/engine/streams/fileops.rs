//! glibc's file-stream algorithms that its cookie streams replace, ported from libio (2.36:
//! fileops.c `_IO_file_xsgetn`, `_IO_new_file_seekoff`, `do_ftell`; ioseekoff.c, ioseekpos.c,
//! ftello.c, iofgetpos.c, iofsetpos.c, rewind.c), so that a stream the engine serves reads,
//! seeks and reports positions as `fopen`'s own stream does, error paths included.
//!
//! A cookie stream shares every other libio routine with a file stream (underflow,
//! overflow, xsputn, sync, setbuf, close_it); it differs in `xsgetn` (no direct read into
//! the caller's buffer), `seekoff` (it forgets the cached position `_offset` on every call
//! and cannot `stat`, so `SEEK_END` goes to the kernel unconverted) and the buffer size
//! (`_IO_default_stat` fails, so 8 KiB instead of `st_blksize`). The shim sends `fread` and
//! the seek and tell family of the engine's streams here; the cookie's write callback keeps
//! `_offset` as `_IO_new_file_write` does; `cookie::make` gives the stream the buffer size
//! `_IO_file_doallocate` would.

use super::libio::{
    locked, sys_read, sys_seek, IoFile, IO_CURRENTLY_PUTTING, IO_EOF_SEEN, IO_ERR_SEEN, IO_IN_BACKUP, IO_IS_APPENDING,
    IO_NO_READS,
};
use crate::sys::{self, errno, set_errno};
use libc::{c_int, c_void, FILE};

extern "C" {
    fn __underflow(f: *mut FILE) -> c_int;
    fn _IO_doallocbuf(f: *mut FILE);
    fn _IO_free_backup_area(f: *mut FILE);
    fn _IO_switch_to_get_mode(f: *mut FILE) -> c_int;
    fn _IO_unsave_markers(f: *mut FILE);
}

const EOF: i64 = -1;

fn head(f: *mut FILE) -> *mut IoFile {
    f as *mut IoFile
}

/// `a - b` of two pointers into one of the stream's areas, as libio computes it.
fn diff(a: *mut u8, b: *mut u8) -> isize {
    (a as isize).wrapping_sub(b as isize)
}

/// True while glibc's own stream would have no buffer yet (`_IO_buf_base == NULL`). The
/// engine gives its streams their buffer when it makes them, as a file stream's first read,
/// write, seek or setvbuf would; until one of those, every area pointer is still NULL (the
/// main get area is in `_IO_save_*` while pushed-back characters are read). Only a
/// `setvbuf(f, NULL, _IOFBF, n)` as the very first call, which allocates without touching
/// them, is not told apart.
unsafe fn unallocated(h: *mut IoFile) -> bool {
    // SAFETY: the caller holds the stream's lock.
    unsafe {
        let (base, end) = if (*h).flags & IO_IN_BACKUP != 0 {
            ((*h).save_base, (*h).save_end)
        } else {
            ((*h).read_base, (*h).read_end)
        };
        base.is_null() && end.is_null() && (*h).write_base.is_null() && (*h).write_ptr.is_null()
    }
}

/// `_IO_setg` and `_IO_setp` to an empty get and put area at the buffer's start.
unsafe fn empty_areas(h: *mut IoFile) {
    // SAFETY: the caller holds the stream's lock.
    unsafe {
        let b = (*h).buf_base;
        (*h).read_base = b;
        (*h).read_ptr = b;
        (*h).read_end = b;
        (*h).write_base = b;
        (*h).write_ptr = b;
        (*h).write_end = b;
    }
}

/// `_IO_switch_to_main_get_area` (genops.c).
unsafe fn switch_to_main_get_area(h: *mut IoFile) {
    // SAFETY: the caller holds the stream's lock.
    unsafe {
        (*h).flags &= !IO_IN_BACKUP;
        std::mem::swap(&mut (*h).read_end, &mut (*h).save_end);
        std::mem::swap(&mut (*h).read_base, &mut (*h).save_base);
        (*h).read_ptr = (*h).read_base;
    }
}

/// `fread` and `fread_unlocked` (`_IO_fread`: `_IO_sgetn` through `_IO_file_xsgetn`):
/// what the buffer holds, a whole number of buffer-sized blocks read straight into the
/// caller's memory, the rest through the buffer.
///
/// # Safety
/// `f` must be a live stream the engine made; `ptr` is the program's buffer, used as glibc
/// would use it.
pub unsafe fn fread(ptr: *mut u8, size: usize, n: usize, f: *mut FILE) -> usize {
    let requested = size.wrapping_mul(n);
    if requested == 0 {
        return 0;
    }
    // SAFETY: forwarded from the caller.
    let got = unsafe { locked(f, || xsgetn(f, ptr, requested)) };
    if got == requested {
        n
    } else {
        got / size
    }
}

/// `_IO_file_xsgetn`.
unsafe fn xsgetn(f: *mut FILE, data: *mut u8, n: usize) -> usize {
    let h = head(f);
    let mut want = n;
    let mut s = data;
    // SAFETY: the caller holds the stream's lock; the areas are glibc's own.
    unsafe {
        if (*h).buf_base.is_null() || unallocated(h) {
            if !(*h).save_base.is_null() {
                libc::free((*h).save_base as *mut c_void);
                (*h).flags &= !IO_IN_BACKUP;
            }
            _IO_doallocbuf(f);
        }
        while want > 0 {
            let have = diff((*h).read_end, (*h).read_ptr) as usize;
            if want <= have {
                // glibc's own memcpy: the program's buffer is touched as glibc touches it
                libc::memcpy(s as *mut c_void, (*h).read_ptr as *const c_void, want);
                (*h).read_ptr = (*h).read_ptr.wrapping_add(want);
                want = 0;
            } else {
                if have > 0 {
                    libc::memcpy(s as *mut c_void, (*h).read_ptr as *const c_void, have);
                    s = s.wrapping_add(have);
                    want -= have;
                    (*h).read_ptr = (*h).read_ptr.wrapping_add(have);
                }
                if (*h).flags & IO_IN_BACKUP != 0 {
                    switch_to_main_get_area(h);
                    continue;
                }
                let block = diff((*h).buf_end, (*h).buf_base) as usize;
                if !(*h).buf_base.is_null() && want < block {
                    if __underflow(f) == -1 {
                        break;
                    }
                    continue;
                }
                empty_areas(h);
                let mut count = want;
                if !(*h).buf_base.is_null() && block >= 128 {
                    count -= want % block;
                }
                let got = sys_read((*h).fileno, s, count);
                if got <= 0 {
                    (*h).flags |= if got == 0 { IO_EOF_SEEN } else { IO_ERR_SEEN };
                    break;
                }
                s = s.wrapping_add(got as usize);
                want -= got as usize;
                if (*h).offset != -1 {
                    (*h).offset += got as i64;
                }
            }
        }
    }
    n - want
}

/// `do_ftell`.
unsafe fn tell_raw(f: *mut FILE) -> i64 {
    let h = head(f);
    let mut offset: i64 = 0;
    // SAFETY: the caller holds the stream's lock.
    unsafe {
        if !(*h).buf_base.is_null() && !unallocated(h) {
            let unflushed = (*h).write_ptr > (*h).write_base;
            let append = (*h).flags & IO_IS_APPENDING != 0;
            if unflushed && append {
                let r = sys_seek((*h).fileno, 0, libc::SEEK_END);
                if r == -1 {
                    return EOF;
                }
                (*h).offset = r;
            }
            if !unflushed {
                offset -= diff((*h).read_end, (*h).read_ptr) as i64;
            } else if append {
                offset += diff((*h).write_ptr, (*h).write_base) as i64;
            } else {
                offset += diff((*h).write_ptr, (*h).read_end) as i64;
            }
        }
        let result = if (*h).offset != -1 { (*h).offset } else { sys_seek((*h).fileno, 0, libc::SEEK_CUR) };
        if result == EOF {
            return result;
        }
        let result = result + offset;
        if result < 0 {
            set_errno(libc::EINVAL);
            return EOF;
        }
        result
    }
}

/// `_IO_new_file_seekoff`, with `_IO_SYSSTAT` answered by fstat(2) as `_IO_file_stat` does.
unsafe fn seekoff(f: *mut FILE, mut offset: i64, mut dir: c_int, mode: c_int) -> i64 {
    if mode == 0 {
        // SAFETY: forwarded.
        return unsafe { tell_raw(f) };
    }
    let h = head(f);
    // SAFETY: the caller holds the stream's lock.
    unsafe {
        let must_be_exact = (*h).read_base == (*h).read_end && (*h).write_base == (*h).write_ptr;
        let was_writing = (*h).write_ptr > (*h).write_base || (*h).flags & IO_CURRENTLY_PUTTING != 0;
        if was_writing && _IO_switch_to_get_mode(f) != 0 {
            return EOF;
        }
        if (*h).buf_base.is_null() || unallocated(h) {
            if !(*h).read_base.is_null() {
                libc::free((*h).read_base as *mut c_void);
                (*h).flags &= !IO_IN_BACKUP;
            }
            _IO_doallocbuf(f);
            empty_areas(h);
        }
        let fd = (*h).fileno;
        let mut dumb = false;
        match dir {
            libc::SEEK_CUR => {
                offset -= diff((*h).read_end, (*h).read_ptr) as i64;
                if (*h).offset == -1 {
                    dumb = true;
                } else {
                    offset += (*h).offset;
                    if offset < 0 {
                        set_errno(libc::EINVAL);
                        return EOF;
                    }
                    dir = libc::SEEK_SET;
                }
            }
            libc::SEEK_END => match sys::fstat(fd) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                    offset += st.st_size;
                    dir = libc::SEEK_SET;
                }
                Ok(_) => dumb = true,
                Err(e) => {
                    set_errno(e);
                    dumb = true;
                }
            },
            _ => {}
        }
        if !dumb {
            _IO_free_backup_area(f);
            // the destination is within the buffer
            if (*h).offset != -1 && !(*h).read_base.is_null() && (*h).flags & IO_IN_BACKUP == 0 {
                let start = (*h).offset - diff((*h).read_end, (*h).buf_base) as i64;
                if offset >= start && offset < (*h).offset {
                    (*h).read_base = (*h).buf_base;
                    (*h).read_ptr = (*h).buf_base.wrapping_add((offset - start) as usize);
                    (*h).write_base = (*h).buf_base;
                    (*h).write_ptr = (*h).buf_base;
                    (*h).write_end = (*h).buf_base;
                    (*h).flags &= !IO_EOF_SEEN;
                    // the kernel's offset may have moved behind the stream's back (fork)
                    if (*h).offset >= 0 {
                        sys_seek(fd, (*h).offset, libc::SEEK_SET);
                    }
                    return offset;
                }
            }
            if (*h).flags & IO_NO_READS != 0 {
                dumb = true;
            }
        }
        if !dumb {
            // a block boundary, then what lies before the destination read into the buffer
            let block = diff((*h).buf_end, (*h).buf_base) as i64;
            let mut new_offset = offset & !(block - 1);
            let mut delta = offset - new_offset;
            if delta > block {
                new_offset = offset;
                delta = 0;
            }
            let result = sys_seek(fd, new_offset, libc::SEEK_SET);
            if result < 0 {
                return EOF;
            }
            let count = if delta == 0 {
                0
            } else {
                let len = if must_be_exact { delta } else { block };
                let c = sys_read(fd, (*h).buf_base, len as usize) as i64;
                if c < delta {
                    offset = if c == -1 { delta } else { delta - c };
                    dir = libc::SEEK_CUR;
                    dumb = true;
                }
                c
            };
            if !dumb {
                (*h).read_base = (*h).buf_base;
                (*h).read_ptr = (*h).buf_base.wrapping_add(delta as usize);
                (*h).read_end = (*h).buf_base.wrapping_add(count as usize);
                (*h).write_base = (*h).buf_base;
                (*h).write_ptr = (*h).buf_base;
                (*h).write_end = (*h).buf_base;
                (*h).offset = result + count;
                (*h).flags &= !IO_EOF_SEEN;
                return offset;
            }
        }
        _IO_unsave_markers(f);
        let result = sys_seek(fd, offset, dir);
        if result != EOF {
            (*h).flags &= !IO_EOF_SEEN;
            (*h).offset = result;
            empty_areas(h);
        }
        result
    }
}

/// `_IO_seekoff_unlocked`: a bad whence, and pushed-back characters given up (glibc's
/// byte-oriented streams only; the engine's are byte-oriented from the start).
unsafe fn seekoff_unlocked(f: *mut FILE, mut offset: i64, dir: c_int, mode: c_int) -> i64 {
    if !matches!(dir, libc::SEEK_SET | libc::SEEK_CUR | libc::SEEK_END) {
        set_errno(libc::EINVAL);
        return EOF;
    }
    let h = head(f);
    // SAFETY: the caller holds the stream's lock.
    unsafe {
        if mode != 0 && (*h).mode < 0 && !(*h).save_base.is_null() {
            if dir == libc::SEEK_CUR && (*h).flags & IO_IN_BACKUP != 0 {
                offset -= diff((*h).read_end, (*h).read_ptr) as i64;
            }
            _IO_free_backup_area(f);
        }
        seekoff(f, offset, dir, mode)
    }
}

/// `_IOS_INPUT | _IOS_OUTPUT`: a seek, not a tell.
const SEEK_MODE: c_int = 3;

/// `fseek`, `fseeko`, `fseeko64`: 0 or -1.
///
/// # Safety
/// `f` must be a live stream the engine made.
pub unsafe fn fseek(f: *mut FILE, offset: i64, whence: c_int) -> c_int {
    // SAFETY: forwarded.
    let r = unsafe { locked(f, || seekoff_unlocked(f, offset, whence, SEEK_MODE)) };
    if r == EOF {
        -1
    } else {
        0
    }
}

/// The stream's position as `ftello` reports it (with pushed-back characters taken off),
/// or `None` with errno set.
unsafe fn position(f: *mut FILE) -> Option<i64> {
    let h = head(f);
    // SAFETY: the caller holds the stream's lock.
    unsafe {
        let mut pos = seekoff_unlocked(f, 0, libc::SEEK_CUR, 0);
        if (*h).flags & IO_IN_BACKUP != 0 && pos != EOF && (*h).mode <= 0 {
            pos -= diff((*h).save_end, (*h).save_base) as i64;
        }
        if pos == EOF {
            if errno() == 0 {
                set_errno(libc::EIO);
            }
            return None;
        }
        Some(pos)
    }
}

/// `ftell`, `ftello`, `ftello64` (one type on LP64): the position or -1.
///
/// # Safety
/// `f` must be a live stream the engine made.
pub unsafe fn ftell(f: *mut FILE) -> i64 {
    // SAFETY: forwarded.
    unsafe { locked(f, || position(f)) }.unwrap_or(-1)
}

/// `fgetpos`, `fgetpos64`: the position into `fpos_t.__pos`, 0 or -1.
///
/// # Safety
/// `f` must be a live stream the engine made; `pos` the program's `fpos_t`.
pub unsafe fn fgetpos(f: *mut FILE, pos: *mut i64) -> c_int {
    // SAFETY: forwarded; `__pos` is the first field of `fpos_t`.
    unsafe {
        locked(f, || match position(f) {
            Some(p) => {
                *pos = p;
                0
            }
            None => -1,
        })
    }
}

/// `fsetpos`, `fsetpos64` (`_IO_seekpos_unlocked`): 0 or -1.
///
/// # Safety
/// `f` must be a live stream the engine made; `pos` the program's `fpos_t`.
pub unsafe fn fsetpos(f: *mut FILE, pos: *const i64) -> c_int {
    let h = head(f);
    // SAFETY: forwarded; `__pos` is the first field of `fpos_t`.
    unsafe {
        locked(f, || {
            if (*h).mode <= 0 && !(*h).save_base.is_null() {
                _IO_free_backup_area(f);
            }
            if seekoff(f, *pos, libc::SEEK_SET, SEEK_MODE) == EOF {
                if errno() == 0 {
                    set_errno(libc::EIO);
                }
                -1
            } else {
                0
            }
        })
    }
}

/// `rewind`: to the start, and the error and end-of-file marks cleared.
///
/// # Safety
/// `f` must be a live stream the engine made.
pub unsafe fn rewind(f: *mut FILE) {
    let h = head(f);
    // SAFETY: forwarded.
    unsafe {
        locked(f, || {
            seekoff_unlocked(f, 0, libc::SEEK_SET, SEEK_MODE);
            (*h).flags &= !(IO_ERR_SEEN | IO_EOF_SEEN);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::streams::libio::{IO_EOF_SEEN, IO_NO_READS};

    /// The fields the engine reads and writes are where glibc keeps them: after one fgetc
    /// of a file, the buffer holds what the kernel returned less that byte.
    #[test]
    fn file_head_matches_glibc() {
        let path = std::env::temp_dir().join(format!("s3dlio-head-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: plain libc stream calls on a stream opened here; `IoFile` is glibc's public
        // `struct _IO_FILE`.
        unsafe {
            let f = libc::fopen(c.as_ptr(), c"r".as_ptr());
            assert!(!f.is_null());
            assert_eq!(libc::fgetc(f), 7);
            let h = &*(f as *const IoFile);
            assert_eq!(h.fileno, libc::fileno(f));
            let pos = libc::lseek(h.fileno, 0, libc::SEEK_CUR);
            assert!(pos > 1);
            // glibc leaves `_offset` unknown (-1) until a seek, or at the kernel's position.
            assert!(h.offset == -1 || h.offset == pos, "_offset {}", h.offset);
            assert_eq!(h.read_end as usize - h.read_ptr as usize + 1, pos as usize);
            assert_eq!(h.flags & (IO_NO_READS | IO_EOF_SEEN), 0);
            libc::fclose(f);
        }
        std::fs::remove_file(&path).unwrap();
    }
}
