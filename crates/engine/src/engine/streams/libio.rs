//! glibc's stream object as libio lays it out (`struct _IO_FILE`, its flag bits, its lock)
//! and the system calls of the streams the engine serves, made through the engine as
//! `_IO_SYSREAD` and `_IO_SYSSEEK` make them.

use crate::engine::{fdops, rw};
use crate::sys::{self, errno, set_errno, Errno};
use libc::{c_int, c_void, FILE};

/// glibc's `struct _IO_FILE` (bits/types/struct_FILE.h, LP64): a public layout unchanged
/// since glibc 2.1.
#[repr(C)]
pub struct IoFile {
    pub flags: c_int,
    pub read_ptr: *mut u8,
    pub read_end: *mut u8,
    pub read_base: *mut u8,
    pub write_base: *mut u8,
    pub write_ptr: *mut u8,
    pub write_end: *mut u8,
    pub buf_base: *mut u8,
    pub buf_end: *mut u8,
    pub save_base: *mut u8,
    pub backup_base: *mut u8,
    pub save_end: *mut u8,
    pub markers: *mut c_void,
    pub chain: *mut c_void,
    pub fileno: c_int,
    pub flags2: c_int,
    pub old_offset: libc::c_long,
    pub cur_column: u16,
    pub vtable_offset: i8,
    pub shortbuf: [u8; 1],
    pub lock: *mut c_void,
    /// The file position glibc believes matches `read_end` (-1: unknown, ask the kernel).
    pub offset: i64,
    pub codecvt: *mut c_void,
    pub wide_data: *mut c_void,
    pub freeres_list: *mut c_void,
    pub freeres_buf: *mut c_void,
    pub pad5: usize,
    /// Orientation: -1 byte, 0 undecided, 1 wide (a cookie stream is always -1).
    pub mode: c_int,
    pub unused2: [u8; 20],
}

/// `sizeof(struct _IO_FILE)` on LP64: a `struct _IO_FILE_plus`'s jump-table pointer follows.
pub const IO_FILE_SIZE: usize = 216;
const _: () = assert!(std::mem::size_of::<IoFile>() == IO_FILE_SIZE);

/// `_flags` bits of glibc's libio.h.
pub const IO_USER_BUF: c_int = 0x1;
pub const IO_NO_READS: c_int = 0x4;
pub const IO_NO_WRITES: c_int = 0x8;
pub const IO_EOF_SEEN: c_int = 0x10;
pub const IO_ERR_SEEN: c_int = 0x20;
pub const IO_IN_BACKUP: c_int = 0x100;
pub const IO_CURRENTLY_PUTTING: c_int = 0x800;
pub const IO_IS_APPENDING: c_int = 0x1000;
pub const IO_USER_LOCK: c_int = 0x8000;
/// `_flags2`: `_IO_file_close_it` leaves the descriptor open.
pub const IO_FLAGS2_NOCLOSE: c_int = 32;
/// glibc's `BUFSIZ`, the buffer `_IO_file_doallocate` gives when `st_blksize` says nothing
/// smaller.
pub const BUFSIZ: usize = 8192;

extern "C" {
    fn flockfile(f: *mut FILE);
    fn funlockfile(f: *mut FILE);
}

/// Runs `g` holding the stream's lock, as `_IO_acquire_lock` takes it (not for a stream the
/// program locks itself, `__fsetlocking(FSETLOCKING_BYCALLER)`).
///
/// # Safety
/// `f` must be a live stream the engine made.
pub unsafe fn locked<R>(f: *mut FILE, g: impl FnOnce() -> R) -> R {
    // SAFETY: a live stream.
    let user_lock = unsafe { (*(f as *const IoFile)).flags } & IO_USER_LOCK != 0;
    if !user_lock {
        // SAFETY: a live stream; glibc's own functions take this lock the same way.
        unsafe { flockfile(f) };
    }
    let r = g();
    if !user_lock {
        // SAFETY: locked above.
        unsafe { funlockfile(f) };
    }
    r
}

/// Runs a cookie callback: errno as the program had it on success, the error's errno on
/// failure, and no unwinding into glibc.
pub fn callback(f: impl FnOnce() -> Result<isize, Errno>) -> isize {
    let saved = errno();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(n)) => {
            set_errno(saved);
            n
        }
        Ok(Err(e)) => {
            set_errno(e);
            -1
        }
        Err(_) => {
            set_errno(libc::EIO);
            -1
        }
    }
}

/// One read(2) of the stream's descriptor through the engine, as `_IO_SYSREAD` does it: the
/// count, or -1 with errno set.
///
/// # Safety
/// `buf` is glibc's buffer or the program's, as glibc's own stream would pass it to read(2).
pub unsafe fn sys_read(fd: i32, buf: *mut u8, size: usize) -> isize {
    callback(|| {
        // SAFETY: forwarded from the caller.
        let r = unsafe { rw::read(fd, buf, size, false) }
            // SAFETY: as above.
            .unwrap_or_else(|| unsafe { sys::read(fd, buf, size) });
        r.map(|n| n as isize)
    })
}

/// One lseek(2) of the stream's descriptor through the engine, as `_IO_SYSSEEK` does it: the
/// new offset, or -1 with errno set.
pub fn sys_seek(fd: i32, off: i64, whence: c_int) -> i64 {
    callback(|| {
        let v = fdops::lseek(fd, off, whence, false).unwrap_or_else(|| sys::lseek(fd, off, whence))?;
        Ok(v as isize)
    }) as i64
}
