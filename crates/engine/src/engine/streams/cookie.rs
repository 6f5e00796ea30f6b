//! stdio streams on direct descriptors: a `fopencookie` stream whose reads, writes and seeks
//! go through the engine, so buffering, `ungetc`, positioning and formatting stay glibc's own
//! while every byte that reaches the file moves through the read and write paths.
//!
//! glibc's ordinary file streams read and write with internal calls that no hook sees; on an
//! O_DIRECT descriptor their misaligned buffer fills would fail with EINVAL. The cookie
//! stream's `_fileno` is set to the real descriptor, so `fileno()`, `fstat(fileno(f))`,
//! libstdc++'s filebuf (which reads and writes with read(2)/write(2) on `fileno()`) and
//! `freopen(NULL, ...)` behave as on a plain stream.

use super::Mode;
use crate::engine::{fdops, is_direct, rw, STATS};
use crate::stats::Counter;
use crate::sys::{self, errno, set_errno, Errno};
use libc::{c_char, c_int, c_void, size_t, ssize_t, FILE};
use std::sync::atomic::{AtomicPtr, Ordering};

/// The start of glibc's `struct _IO_FILE` (LP64, bits/types/struct_FILE.h), up to
/// `_offset`: a public layout that has not changed since glibc 2.1.
#[repr(C)]
struct FileHead {
    flags: c_int,
    read_ptr: *mut u8,
    read_end: *mut u8,
    read_base: *mut u8,
    write_base: *mut u8,
    write_ptr: *mut u8,
    others: [*mut c_void; 8],
    fileno: c_int,
    flags2: c_int,
    old_offset: libc::c_long,
    cur_column: u16,
    vtable_offset: i8,
    shortbuf: [u8; 1],
    lock: *mut c_void,
    /// The file position glibc believes matches `read_end` (-1: unknown, ask the kernel).
    offset: i64,
}

/// `_flags` bits of glibc's libio.h.
const IO_UNBUFFERED: c_int = 0x2;
const IO_EOF_SEEN: c_int = 0x10;
const IO_ERR_SEEN: c_int = 0x20;
const IO_IN_BACKUP: c_int = 0x100;
const IO_CURRENTLY_PUTTING: c_int = 0x800;
/// Reads at least this large skip the stream's buffer, as glibc's file streams do (its
/// cookie streams instead refill their 8 KiB buffer over and over, and read one byte per
/// call when unbuffered).
const FREAD_DIRECT: usize = 64 << 10;

/// `fread` on a stream the engine made, when the request is large or the stream
/// unbuffered: what the buffer holds, then the rest read by the engine straight into the
/// program's memory. `None`: glibc's own fread must do it (pushed-back characters, a
/// pending write, end of file already seen, a small buffered read).
///
/// # Safety
/// `f` must be a live stream the engine made; `ptr` valid for `size * n` bytes.
pub unsafe fn fread(ptr: *mut u8, size: usize, n: usize, f: *mut FILE) -> Option<usize> {
    let total = size.checked_mul(n)?;
    // SAFETY: the caller guarantees a live stream.
    let unbuffered = unsafe { (*(f as *const FileHead)).flags } & IO_UNBUFFERED != 0;
    if total == 0 || (total < FREAD_DIRECT && !(unbuffered && total > 1)) {
        return None;
    }
    // SAFETY: as above; the stream's lock makes the buffer fields ours until unlocked.
    unsafe { flockfile(f) };
    // SAFETY: locked above.
    let r = unsafe { fread_locked(ptr, size, total, f) };
    // SAFETY: locked above.
    unsafe { funlockfile(f) };
    r
}

unsafe fn fread_locked(ptr: *mut u8, size: usize, total: usize, f: *mut FILE) -> Option<usize> {
    let h = f as *mut FileHead;
    // SAFETY: the caller holds the stream's lock.
    let head = unsafe { &mut *h };
    let wrong_direction = IO_NO_READS | IO_CURRENTLY_PUTTING | IO_IN_BACKUP | IO_EOF_SEEN | IO_ERR_SEEN;
    if head.flags & wrong_direction != 0 || head.write_ptr > head.write_base || head.fileno < 0 {
        return None;
    }
    let buffered = if head.read_end > head.read_ptr { head.read_end as usize - head.read_ptr as usize } else { 0 };
    let mut done = buffered.min(total);
    // SAFETY: `done` bytes lie in the stream's buffer and fit in the caller's.
    unsafe {
        std::ptr::copy_nonoverlapping(head.read_ptr, ptr, done);
        head.read_ptr = head.read_ptr.add(done);
    }
    if done < total {
        let fd = head.fileno;
        while done < total {
            // SAFETY: inside the caller's buffer.
            let p = unsafe { ptr.add(done) };
            // SAFETY: as above.
            let r = unsafe { rw::read(fd, p, total - done, false) }
                // SAFETY: as above.
                .unwrap_or_else(|| unsafe { sys::read(fd, p, total - done) });
            match r {
                Ok(0) => {
                    head.flags |= IO_EOF_SEEN;
                    break;
                }
                Ok(k) => done += k,
                Err(libc::EINTR) => continue,
                Err(e) => {
                    head.flags |= IO_ERR_SEEN;
                    set_errno(e);
                    break;
                }
            }
        }
        // The descriptor moved past what glibc knows; it asks the kernel when it needs to.
        head.offset = -1;
    }
    Some(done / size)
}

/// `sizeof(struct _IO_FILE)` on LP64: every glibc stream is a `struct _IO_FILE_plus`, whose
/// jump-table pointer follows.
const VTABLE_OFFSET: usize = 216;
/// The jump table glibc gives cookie streams, learnt from the first one the engine makes.
static COOKIE_VTABLE: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
/// `_flags` bits of a stream's directions (glibc's libio.h).
const IO_NO_READS: c_int = 0x4;
const IO_NO_WRITES: c_int = 0x8;
const IO_IS_APPENDING: c_int = 0x1000;

/// The stream's jump table.
///
/// # Safety
/// `f` must be a live glibc stream.
unsafe fn vtable(f: *mut FILE) -> *mut c_void {
    // SAFETY: every glibc stream is followed by its jump-table pointer.
    unsafe { *((f as *const u8).add(VTABLE_OFFSET) as *const *mut c_void) }
}

/// True if `f` is a stream the engine made: a cookie stream with a real descriptor (glibc
/// keeps -2 in a cookie stream's `_fileno`; only the engine puts a descriptor there).
///
/// # Safety
/// `f` must be a live glibc stream.
pub unsafe fn is_ours(f: *mut FILE) -> bool {
    let v = COOKIE_VTABLE.load(Ordering::Relaxed);
    // SAFETY: forwarded from the caller.
    !v.is_null() && unsafe { vtable(f) == v && (*(f as *const FileHead)).fileno >= 0 }
}

/// After the shim put the file `freopen` opened with `m` on the stream's descriptor: glibc
/// cannot reopen a cookie stream (it crashes), so the same stream takes the new mode's
/// directions, with its error and end-of-file marks cleared, at the start of the file (at
/// its end for `a`), as glibc's freopen leaves a file stream.
///
/// # Safety
/// `f` must be a live stream the engine made, already flushed.
pub(super) unsafe fn reopened(f: *mut FILE, m: Mode) {
    let mut dir = if !m.plus && m.reads() { IO_NO_WRITES } else { 0 };
    if !m.plus && m.writes() {
        dir |= IO_NO_READS;
    }
    if m.append {
        dir |= IO_IS_APPENDING;
    }
    // SAFETY: `f` is a live glibc stream; the direction bits are plain flags that glibc
    // reads before every operation.
    unsafe {
        let head = f as *mut FileHead;
        (*head).flags = ((*head).flags & !(IO_NO_READS | IO_NO_WRITES | IO_IS_APPENDING)) | dir;
        libc::clearerr(f);
        // Discards what the buffer held of the old file and sets glibc's cached position.
        libc::fseeko(f, 0, if m.append && !m.plus { libc::SEEK_END } else { libc::SEEK_SET });
    }
}

/// glibc's `cookie_io_functions_t` (the libc crate does not declare it).
#[repr(C)]
struct CookieIoFunctions {
    read: Option<unsafe extern "C" fn(*mut c_void, *mut c_char, size_t) -> ssize_t>,
    write: Option<unsafe extern "C" fn(*mut c_void, *const c_char, size_t) -> ssize_t>,
    seek: Option<unsafe extern "C" fn(*mut c_void, *mut i64, c_int) -> c_int>,
    close: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
}

extern "C" {
    fn fopencookie(cookie: *mut c_void, mode: *const c_char, funcs: CookieIoFunctions) -> *mut FILE;
    fn flockfile(f: *mut FILE);
    fn funlockfile(f: *mut FILE);
}

/// `fopen` of a matched path returned `fd`, opened with `m.flags`: a stream the engine
/// serves, or `None` if `fd` is not direct (the shim then makes an ordinary stream).
///
/// # Safety
/// `fd` must be the descriptor the shim just opened for this `fopen`.
pub unsafe fn after_fopen(fd: i32, m: Mode) -> Option<Result<*mut FILE, Errno>> {
    if !is_direct(fd) {
        return None;
    }
    if m.append && !m.plus {
        // fopen("a") starts at the end, so that ftell reports the file size.
        if let Some(Err(e)) = fdops::lseek(fd, 0, libc::SEEK_END, false) {
            return Some(Err(e));
        }
    }
    // SAFETY: `fd` is open and direct.
    Some(unsafe { make(fd, m) })
}

/// `fdopen(fd, mode)` on a direct descriptor, with glibc's checks and effects: the access
/// mode must allow the stream's directions (EINVAL), and `a` on a description without
/// O_APPEND adds it and, for a write-only stream, moves to the end. `None` if `fd` is not direct.
///
/// # Safety
/// `mode` must be a NUL-terminated string.
pub unsafe fn fdopen(fd: i32, mode: *const c_char) -> Option<Result<*mut FILE, Errno>> {
    if mode.is_null() || !is_direct(fd) {
        return None;
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    let Some(m) = Mode::parse(unsafe { std::ffi::CStr::from_ptr(mode) }.to_bytes(), true) else {
        return Some(Err(libc::EINVAL)); // glibc's answer to a bad first letter
    };
    let kernel = match sys::fcntl(fd, libc::F_GETFL, 0) {
        Ok(fl) => fl,
        Err(e) => return Some(Err(e)),
    };
    let acc = kernel & libc::O_ACCMODE;
    if (acc == libc::O_RDONLY && m.writes()) || (acc == libc::O_WRONLY && m.reads()) {
        return Some(Err(libc::EINVAL));
    }
    if m.append && kernel & libc::O_APPEND == 0 {
        let arg = kernel | libc::O_APPEND;
        if let Err(e) = sys::fcntl(fd, libc::F_SETFL, arg as libc::c_long) {
            return Some(Err(e));
        }
        fdops::setfl(fd, arg);
        // glibc moves to the end only when it added O_APPEND itself, for a write-only stream.
        if !m.plus {
            if let Some(Err(e)) = fdops::lseek(fd, 0, libc::SEEK_END, false) {
                return Some(Err(e));
            }
        }
    }
    // SAFETY: `fd` is open and direct.
    Some(unsafe { make(fd, m) })
}

/// A cookie stream over `fd`.
unsafe fn make(fd: i32, m: Mode) -> Result<*mut FILE, Errno> {
    let funcs = CookieIoFunctions {
        read: Some(cookie_read),
        write: Some(cookie_write),
        seek: Some(cookie_seek),
        close: Some(cookie_close),
    };
    // The descriptor itself is the cookie: nothing to allocate or free.
    // SAFETY: the mode is a valid C string and the functions match glibc's prototypes.
    let f = unsafe { fopencookie(fd as usize as *mut c_void, m.cookie_mode().as_ptr(), funcs) };
    if f.is_null() {
        return Err(errno());
    }
    // SAFETY: `f` is a live glibc stream.
    let _ = COOKIE_VTABLE.compare_exchange(
        std::ptr::null_mut(),
        unsafe { vtable(f) },
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    // SAFETY: `f` is a glibc FILE, whose public head `FileHead` describes; glibc keeps -2
    // there for cookie streams, which only tells `fileno()` to fail.
    unsafe { (*(f as *mut FileHead)).fileno = fd };
    STATS.add(Counter::StreamsDirect, 1);
    Ok(f)
}

/// Runs a cookie callback: errno as the program had it on success, the error's errno on
/// failure, and no unwinding into glibc.
fn callback(f: impl FnOnce() -> Result<isize, Errno>) -> isize {
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

unsafe extern "C" fn cookie_read(cookie: *mut c_void, buf: *mut c_char, size: size_t) -> ssize_t {
    let fd = cookie as usize as i32;
    callback(|| {
        // SAFETY: glibc passes its buffer of `size` bytes.
        let r = unsafe { rw::read(fd, buf as *mut u8, size, false) }
            // SAFETY: as above.
            .unwrap_or_else(|| unsafe { sys::read(fd, buf as *mut u8, size) });
        r.map(|n| n as isize)
    })
}

/// Writes everything, as glibc's own file streams do: a short count tells glibc the stream
/// failed, with errno saying why.
unsafe extern "C" fn cookie_write(cookie: *mut c_void, buf: *const c_char, size: size_t) -> ssize_t {
    let fd = cookie as usize as i32;
    let mut done = 0usize;
    let mut err = 0;
    let n = callback(|| {
        while done < size {
            // SAFETY: glibc passes `size` readable bytes; `done < size`.
            let p = unsafe { buf.add(done) } as *const u8;
            // SAFETY: as above.
            let r = unsafe { rw::write(fd, p, size - done, false) }
                // SAFETY: as above.
                .unwrap_or_else(|| unsafe { sys::write(fd, p, size - done) });
            match r {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => {
                    err = e;
                    break;
                }
            }
        }
        Ok(done as isize)
    });
    if err != 0 {
        set_errno(err);
    }
    n
}

unsafe extern "C" fn cookie_seek(cookie: *mut c_void, pos: *mut i64, whence: c_int) -> c_int {
    let fd = cookie as usize as i32;
    let r = callback(|| {
        // SAFETY: glibc passes a valid position.
        let off = unsafe { *pos };
        let v = fdops::lseek(fd, off, whence, false).unwrap_or_else(|| sys::lseek(fd, off, whence))?;
        // SAFETY: as above.
        unsafe { *pos = v as i64 };
        Ok(0)
    });
    r as c_int
}

unsafe extern "C" fn cookie_close(cookie: *mut c_void) -> c_int {
    let fd = cookie as usize as i32;
    callback(|| {
        fdops::forget(fd);
        sys::close(fd).map(|_| 0)
    }) as c_int
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Option<Mode> {
        Mode::parse(s.as_bytes(), false)
    }

    /// The fields the engine reads and writes are where glibc keeps them: after one fgetc
    /// of a file, the buffer holds what the kernel returned less that byte.
    #[test]
    fn file_head_matches_glibc() {
        let path = std::env::temp_dir().join(format!("s3dlio-head-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: plain libc stream calls on a stream opened here; `FileHead` is the start of
        // glibc's public `struct _IO_FILE`.
        unsafe {
            let f = libc::fopen(c.as_ptr(), c"r".as_ptr());
            assert!(!f.is_null());
            assert_eq!(libc::fgetc(f), 7);
            let h = &*(f as *const FileHead);
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

    #[test]
    fn cookie_streams_are_recognised() {
        let p = c"/dev/null";
        // SAFETY: plain libc stream calls on streams made here.
        unsafe {
            let plain = libc::fopen(p.as_ptr(), c"r".as_ptr());
            let fd = libc::open(p.as_ptr(), libc::O_RDONLY);
            let ours = make(fd, m("r").unwrap()).unwrap();
            let fd2 = libc::open(p.as_ptr(), libc::O_RDONLY);
            let ours2 = make(fd2, m("r").unwrap()).unwrap();
            let stdout_vt = vtable(plain);
            assert!(is_ours(ours) && is_ours(ours2));
            assert!(!is_ours(plain));
            // all cookie streams share one table, all file streams another
            assert_eq!(vtable(ours), vtable(ours2));
            assert_ne!(vtable(ours), stdout_vt);
            libc::fclose(plain);
            libc::fclose(ours);
            libc::fclose(ours2);
        }
    }

    /// A cookie stream over an unmanaged fd (the engine is not initialised in unit tests)
    /// behaves as a plain stream: same bytes, positions and fileno.
    #[test]
    fn cookie_stream_round_trip() {
        let dir = std::env::temp_dir().join(format!("s3dlio-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = std::ffi::CString::new(dir.join("f").to_str().unwrap()).unwrap();
        let fd = sys::openat(libc::AT_FDCWD, &path, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o644).unwrap();
        // SAFETY: `fd` is open; the stream owns it from here.
        let f = unsafe { make(fd, m("w+").unwrap()) }.unwrap();
        unsafe {
            assert_eq!(libc::fileno(f), fd);
            let data = b"hello, cookie stream\n";
            assert_eq!(libc::fwrite(data.as_ptr() as *const c_void, 1, data.len(), f), data.len());
            assert_eq!(libc::ftell(f), data.len() as libc::c_long);
            assert_eq!(libc::fseek(f, 7, libc::SEEK_SET), 0);
            let mut buf = [0u8; 6];
            assert_eq!(libc::fread(buf.as_mut_ptr() as *mut c_void, 1, 6, f), 6);
            assert_eq!(&buf, b"cookie");
            assert_eq!(libc::ungetc(b'e' as c_int, f), b'e' as c_int);
            assert_eq!(libc::fgetc(f), b'e' as c_int);
            assert_eq!(libc::fclose(f), 0);
        }
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"hello, cookie stream\n");
        // the stream closed the descriptor
        assert_eq!(sys::fcntl(fd, libc::F_GETFD, 0), Err(libc::EBADF));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
