//! stdio streams on direct descriptors: a `fopencookie` stream whose reads, writes and seeks
//! go through the engine, so buffering, `ungetc`, positioning and formatting stay glibc's own
//! while every byte that reaches the file moves through the read and write paths.
//!
//! glibc's ordinary file streams read and write with internal calls that no hook sees; on an
//! O_DIRECT descriptor their misaligned buffer fills would fail with EINVAL. The cookie
//! stream's `_fileno` is set to the real descriptor, so `fileno()`, `fstat(fileno(f))`,
//! libstdc++'s filebuf (which reads and writes with read(2)/write(2) on `fileno()`) and
//! `freopen(NULL, ...)` behave as on a plain stream.

use super::libio::{
    callback, sys_read, sys_seek, IoFile, BUFSIZ, IO_FILE_SIZE, IO_FLAGS2_NOCLOSE, IO_IS_APPENDING, IO_NO_READS,
    IO_NO_WRITES, IO_USER_BUF,
};
use super::Mode;
use crate::engine::{fdops, is_direct, rw, STATS};
use crate::stats::Counter;
use crate::sys::{self, errno, set_errno, Errno};
use libc::{c_char, c_int, c_void, size_t, ssize_t, FILE};
use std::sync::atomic::{AtomicPtr, Ordering};

/// The jump table glibc gives cookie streams, learnt from the first one the engine makes.
static COOKIE_VTABLE: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// The stream's jump table.
///
/// # Safety
/// `f` must be a live glibc stream.
unsafe fn vtable(f: *mut FILE) -> *mut c_void {
    // SAFETY: every glibc stream is followed by its jump-table pointer.
    unsafe { *((f as *const u8).add(IO_FILE_SIZE) as *const *mut c_void) }
}

/// True if `f` is a stream the engine made: a cookie stream with a real descriptor (glibc
/// keeps -2 in a cookie stream's `_fileno`; only the engine puts a descriptor there).
///
/// # Safety
/// `f` must be a live glibc stream.
pub unsafe fn is_ours(f: *mut FILE) -> bool {
    let v = COOKIE_VTABLE.load(Ordering::Relaxed);
    // SAFETY: forwarded from the caller.
    !v.is_null() && unsafe { vtable(f) == v && (*(f as *const IoFile)).fileno >= 0 }
}

/// The first half of glibc's freopen on a stream the engine made: `_IO_SYNC` (its failure
/// ignored), then `_IO_file_close_it` with `_IO_FLAGS2_NOCLOSE` (the descriptor stays
/// open): pending writes tried once more, pushed-back characters and the buffer dropped,
/// the stream unlinked, its flags reset, `_fileno` -1. Returns the descriptor.
///
/// # Safety
/// `f` must be a live stream the engine made, locked by the caller.
pub(super) unsafe fn close_it(f: *mut FILE) -> i32 {
    let h = f as *mut IoFile;
    // SAFETY: glibc's own routines on a stream whose jump table is glibc's cookie table,
    // which uses these same routines (`_IO_file_sync`, `_IO_file_close_it`'s flush).
    unsafe {
        let fd = (*h).fileno;
        _IO_file_sync(f);
        (*h).flags2 |= IO_FLAGS2_NOCLOSE;
        _IO_file_close_it(f);
        (*h).flags2 &= !IO_FLAGS2_NOCLOSE;
        fd
    }
}

/// The second half: `fd` holds the file `freopen` opened with `m`. As `_IO_file_open` leaves
/// a file stream: the descriptor, the new mode's directions, linked again, the position cache
/// unknown, and for "a" the descriptor moved to the end of the file; the buffer is the size
/// a file stream would allocate for the new file.
///
/// # Safety
/// `f` must be a stream the engine made, closed by [`close_it`], locked by the caller.
pub(super) unsafe fn reopened(f: *mut FILE, fd: i32, m: Mode) {
    let mut dir = if !m.plus && m.reads() { IO_NO_WRITES } else { 0 };
    if !m.plus && m.writes() {
        dir |= IO_NO_READS;
    }
    if m.append {
        dir |= IO_IS_APPENDING;
    }
    let h = f as *mut IoFile;
    // SAFETY: `f` is a live glibc stream, closed by `close_it`: no buffer, no pending data.
    unsafe {
        (*h).fileno = fd;
        (*h).flags = ((*h).flags & !(IO_NO_READS | IO_NO_WRITES | IO_IS_APPENDING)) | dir;
        give_buffer(h, fd);
        _IO_link_in(f);
        if dir & (IO_IS_APPENDING | IO_NO_READS) == IO_IS_APPENDING | IO_NO_READS {
            sys_seek(fd, 0, libc::SEEK_END);
        }
    }
}

/// Gives a stream without a buffer the one `_IO_file_doallocate` would give a file stream
/// on `fd`: `st_blksize` when smaller than `BUFSIZ`, else `BUFSIZ` (a cookie stream would
/// always get `BUFSIZ`), set as `_IO_setb` sets a buffer glibc allocated (no
/// `_IO_USER_BUF`: glibc frees it). Without memory the stream stays without one and glibc
/// allocates its own when it needs it.
///
/// # Safety
/// `h` must be a live stream without a buffer.
unsafe fn give_buffer(h: *mut IoFile, fd: i32) {
    let size = match sys::fstat(fd) {
        Ok(st) if st.st_blksize > 0 && (st.st_blksize as usize) < BUFSIZ => st.st_blksize as usize,
        _ => BUFSIZ,
    };
    // SAFETY: glibc frees the stream's buffer with free().
    let buf = unsafe { libc::malloc(size) } as *mut u8;
    if !buf.is_null() {
        // SAFETY: the caller guarantees a live stream.
        unsafe {
            (*h).buf_base = buf;
            (*h).buf_end = buf.add(size);
            (*h).flags &= !IO_USER_BUF;
        }
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
    fn _IO_file_sync(f: *mut FILE) -> c_int;
    fn _IO_file_close_it(f: *mut FILE) -> c_int;
    fn _IO_link_in(f: *mut FILE);
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
    if m.mapped {
        // glibc reads such a stream through a mapping, and leaves the descriptor at the end
        // of the file: only its own stream does that
        return None;
    }
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

/// A cookie's state: the descriptor, and the stream, whose cached position the write
/// callback keeps as `_IO_new_file_write` keeps a file stream's.
struct Cookie {
    fd: i32,
    file: *mut FILE,
}

/// A cookie stream over `fd`, with the buffer a file stream on it would have, so that data
/// reaches the file at the same moments as from `fopen`'s stream.
unsafe fn make(fd: i32, m: Mode) -> Result<*mut FILE, Errno> {
    let funcs = CookieIoFunctions {
        read: Some(cookie_read),
        write: Some(cookie_write),
        seek: Some(cookie_seek),
        close: Some(cookie_close),
    };
    let cookie = Box::into_raw(Box::new(Cookie { fd, file: std::ptr::null_mut() }));
    // SAFETY: the mode is a valid C string and the functions match glibc's prototypes.
    let f = unsafe { fopencookie(cookie as *mut c_void, m.cookie_mode().as_ptr(), funcs) };
    if f.is_null() {
        let e = errno();
        // SAFETY: not handed to glibc.
        drop(unsafe { Box::from_raw(cookie) });
        return Err(e);
    }
    // SAFETY: `f` is a live glibc stream.
    let _ = COOKIE_VTABLE.compare_exchange(
        std::ptr::null_mut(),
        unsafe { vtable(f) },
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    // SAFETY: `f` is a fresh glibc FILE, described by `IoFile`; glibc keeps -2 in `_fileno`
    // for cookie streams, which only tells `fileno()` to fail.
    unsafe {
        (*cookie).file = f;
        let h = f as *mut IoFile;
        (*h).fileno = fd;
        give_buffer(h, fd);
    }
    STATS.add(Counter::StreamsDirect, 1);
    Ok(f)
}

unsafe extern "C" fn cookie_read(cookie: *mut c_void, buf: *mut c_char, size: size_t) -> ssize_t {
    // SAFETY: the cookie `make` gave; glibc passes its buffer of `size` bytes.
    unsafe { sys_read((*(cookie as *const Cookie)).fd, buf as *mut u8, size) }
}

/// Writes everything, as `_IO_new_file_write` does: a short count tells glibc the stream
/// failed, with errno saying why; the stream's cached position moves by what was written.
unsafe extern "C" fn cookie_write(cookie: *mut c_void, buf: *const c_char, size: size_t) -> ssize_t {
    // SAFETY: the cookie `make` gave.
    let c = unsafe { &*(cookie as *const Cookie) };
    let fd = c.fd;
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
    // SAFETY: glibc calls this with the stream locked, from inside one of its functions.
    unsafe {
        let h = c.file as *mut IoFile;
        if (*h).offset >= 0 {
            (*h).offset += done as i64;
        }
    }
    n
}

unsafe extern "C" fn cookie_seek(cookie: *mut c_void, pos: *mut i64, whence: c_int) -> c_int {
    // SAFETY: the cookie `make` gave; glibc passes a valid position.
    unsafe {
        let v = sys_seek((*(cookie as *const Cookie)).fd, *pos, whence);
        if v == -1 {
            return -1;
        }
        *pos = v;
    }
    0
}

unsafe extern "C" fn cookie_close(cookie: *mut c_void) -> c_int {
    // SAFETY: the cookie `make` gave; glibc calls close once, as the stream's last use of it.
    let fd = unsafe { Box::from_raw(cookie as *mut Cookie) }.fd;
    callback(|| {
        fdops::forget(fd);
        sys::close(fd).map(|_| 0)
    }) as c_int
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::streams::fileops;

    fn m(s: &str) -> Option<Mode> {
        Mode::parse(s.as_bytes(), false)
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

    /// What a sequence of calls saw on one stream: return values, errno, flags, positions.
    type Seen = Vec<(&'static str, i64, i32)>;

    /// The issue's case and its neighbours on a stream from `open`: "a", fwrite larger than
    /// the buffer, a failing fread larger than the buffer (glibc's file stream drops the
    /// byte still buffered), ftell, a seek relative to the end, a read-only reopen; the
    /// file's bytes at the end.
    unsafe fn append_sequence(
        path: &std::ffi::CStr,
        open: &dyn Fn(&std::ffi::CStr, &str) -> *mut FILE,
        ours: bool,
    ) -> (Seen, Vec<u8>) {
        let fread = |p: *mut u8, n: usize, f: *mut FILE| {
            if ours {
                unsafe { fileops::fread(p, 1, n, f) }
            } else {
                unsafe { libc::fread(p as *mut c_void, 1, n, f) }
            }
        };
        let ftell = |f: *mut FILE| if ours { unsafe { fileops::ftell(f) } } else { unsafe { libc::ftell(f) } };
        let fseek = |f: *mut FILE, o: i64, w: c_int| {
            if ours {
                unsafe { fileops::fseek(f, o, w) }
            } else {
                unsafe { libc::fseek(f, o, w) }
            }
        };
        let mut seen = Seen::new();
        let data = vec![b'x'; 8192];
        let mut buf = vec![0u8; 8192];
        unsafe {
            let f = open(path, "a");
            assert!(!f.is_null());
            seen.push(("fwrite", libc::fwrite(data.as_ptr() as *const c_void, 1, 4097, f) as i64, 0));
            set_errno(0);
            seen.push(("fread", fread(buf.as_mut_ptr(), 4096, f) as i64, errno()));
            seen.push(("ferror", libc::ferror(f) as i64, 0));
            set_errno(0);
            seen.push(("ftell", ftell(f), errno()));
            set_errno(0);
            seen.push(("fseek end", fseek(f, -5000, libc::SEEK_END) as i64, errno()));
            seen.push(("ftell", ftell(f), errno()));
            seen.push(("fclose", libc::fclose(f) as i64, 0));
            let f = open(path, "r");
            seen.push(("fseek end", fseek(f, -3, libc::SEEK_END) as i64, errno()));
            seen.push(("fread", fread(buf.as_mut_ptr(), 8192, f) as i64, errno()));
            seen.push(("feof", libc::feof(f) as i64, 0));
            seen.push(("ftell", ftell(f), errno()));
            seen.push(("fclose", libc::fclose(f) as i64, 0));
        }
        (seen, std::fs::read(path.to_str().unwrap()).unwrap())
    }

    /// The engine's stream and glibc's own agree on the issue's case (ftell 4096 after the
    /// failing read, not 4097) and the file holds the same bytes.
    #[test]
    fn append_then_failing_read_as_glibc() {
        let dir = std::env::temp_dir().join(format!("s3dlio-append-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut results = Vec::new();
        for ours in [false, true] {
            let path = std::ffi::CString::new(dir.join(format!("f{}", ours as u8)).to_str().unwrap()).unwrap();
            std::fs::write(path.to_str().unwrap(), vec![b'o'; 1000]).unwrap();
            let open = |p: &std::ffi::CStr, mode: &str| {
                let mode = std::ffi::CString::new(mode).unwrap();
                if !ours {
                    // SAFETY: plain libc calls with C strings.
                    return unsafe { libc::fopen(p.as_ptr(), mode.as_ptr()) };
                }
                let m = Mode::parse(mode.as_bytes(), false).unwrap();
                let fd = sys::openat(libc::AT_FDCWD, p, m.flags, 0o644).unwrap();
                if m.append && !m.plus {
                    sys::lseek(fd, 0, libc::SEEK_END).unwrap();
                }
                // SAFETY: `fd` is open; the stream owns it from here.
                unsafe { make(fd, m) }.unwrap()
            };
            // SAFETY: streams made and closed inside.
            results.push(unsafe { append_sequence(&path, &open, ours) });
        }
        assert_eq!(results[0].0, results[1].0, "calls (glibc's stream, then the engine's)");
        assert_eq!(results[0].1, results[1].1, "file bytes");
        assert!(results[0].0.contains(&("ftell", 5096, 0)), "{:?}", results[0].0);
        std::fs::remove_dir_all(&dir).unwrap();
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
