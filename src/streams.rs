//! stdio entry points. `fopen` of a matched path and `fdopen` of a direct fd make a stream
//! the engine serves (`s3dlio::stream`), which `freopen`, `fread` and the seek and tell
//! family keep in the engine's hands; glibc's own streams stay glibc's, and a number glibc closed
//! or reused inside (freopen, fclose) is forgotten.

use crate::{errno, in_engine, quietly, real, set_errno};
use engine::streams::{self as stream, Mode};
use libc::{c_char, c_int, mode_t, FILE};
use s3dlio_engine::engine;

type OpenFn = unsafe extern "C" fn(*const c_char, c_int, mode_t) -> c_int;
type FdopenFn = unsafe extern "C" fn(c_int, *const c_char) -> *mut FILE;

/// The stream's descriptor, or -1, with errno left alone (`fileno` sets EBADF for a stream
/// without one: a memory stream, a closed one).
fn fd_of(f: *mut FILE) -> c_int {
    if f.is_null() {
        return -1;
    }
    let saved = errno();
    // SAFETY: `f` is a live stream handed over by the program or just returned by libc.
    let fd = unsafe { libc::fileno(f) };
    if fd < 0 {
        set_errno(saved);
    }
    fd
}

/// Forgets a number glibc closed or reused unseen.
fn forget_fd(fd: c_int) {
    if fd >= 0 && engine::is_managed(fd) {
        quietly(|| engine::fdops::forget(fd));
    }
}

/// `fopen` of a matched path: opened through the engine like `open`, then a stream over the
/// descriptor (served by the engine if it went direct, glibc's own if it fell back).
unsafe fn fopen_with(
    path: *const c_char,
    mode: *const c_char,
    open: OpenFn,
    real_fopen: impl FnOnce() -> *mut FILE,
) -> *mut FILE {
    if !engine::active() || path.is_null() || mode.is_null() {
        return real_fopen();
    }
    // A read-only `m` stream is glibc's own: it reads through a mapping of the file.
    // SAFETY: the program passes a NUL-terminated mode.
    let parsed = Mode::parse(unsafe { std::ffi::CStr::from_ptr(mode) }.to_bytes(), false).filter(|m| !m.mapped);
    let Some(m) = parsed else {
        let f = real_fopen();
        quietly(|| engine::streams::unserved_stream(fd_of(f)));
        return f;
    };
    // SAFETY: `path` comes from the program as a C string.
    let Some(plan) = in_engine(|_| unsafe { engine::open::plan_open(libc::AT_FDCWD, path, m.flags) }) else {
        return real_fopen();
    };
    // SAFETY: the program's path, with the flags and creation mode glibc's fopen uses.
    let fd = unsafe { open(path, m.flags, 0o666) };
    if fd < 0 {
        return std::ptr::null_mut();
    }
    quietly(|| engine::open::opened(fd, plan));
    let saved = errno();
    // SAFETY: `fd` was just opened for this fopen.
    let f = match in_engine(|_| unsafe { stream::after_fopen(fd, m) }) {
        Some(Ok(f)) => {
            set_errno(saved);
            return f;
        }
        Some(Err(e)) => {
            set_errno(e);
            std::ptr::null_mut()
        }
        None => {
            if m.append && !m.plus {
                // glibc's fopen("a") starts at the end (ftell reports the size); its fdopen
                // does not when the descriptor already has O_APPEND.
                // SAFETY: the descriptor this call opened.
                unsafe { crate::fdops::lseek(fd, 0, libc::SEEK_END) };
            }
            // SAFETY: an ordinary stream over the descriptor, with the program's mode.
            unsafe { real!(fdopen: FdopenFn)(fd, mode) }
        }
    };
    if f.is_null() {
        let e = errno();
        // SAFETY: closing the descriptor this call opened (the hook forgets it first).
        unsafe { crate::fdops::close(fd) };
        set_errno(e);
    }
    f
}

/// Hooks for `fopen`-shaped functions.
macro_rules! fopen_hooks {
    ($($name:ident => $open:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: *const c_char) -> *mut FILE {
            // SAFETY: forwarding the program's arguments.
            unsafe {
                fopen_with(path, mode, real!($open: OpenFn), || {
                    real!($name: unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE)(path, mode)
                })
            }
        }
    )*};
}
fopen_hooks!(fopen => open, fopen64 => open64);

#[no_mangle]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    if engine::is_managed(fd) {
        let saved = errno();
        // SAFETY: the program passes a NUL-terminated mode.
        match in_engine(|_| unsafe { stream::fdopen(fd, mode) }) {
            Some(Ok(f)) => {
                set_errno(saved);
                return f;
            }
            Some(Err(e)) => {
                set_errno(e);
                return std::ptr::null_mut();
            }
            // Not direct, a read-only `m` stream (glibc maps the file), or the engine failed
            // (panicked): a stream glibc makes itself on a direct fd would fail its misaligned
            // fills, so such a description goes buffered.
            None => quietly(|| engine::streams::stream_opened(fd)),
        }
    }
    // SAFETY: forwarding the program's arguments.
    unsafe { real!(fdopen: FdopenFn)(fd, mode) }
}

/// `freopen` of a stream the engine made, which glibc cannot do (it crashes on cookie
/// streams): the engine reopens it (`engine::streams::freopen`).
unsafe fn reopen_ours(path: *const c_char, mode: *const c_char, f: *mut FILE) -> *mut FILE {
    // SAFETY: forwarding the program's arguments; `f` is a stream the engine made.
    match in_engine(|_| Some(unsafe { stream::freopen(path, mode, f) })) {
        // errno as glibc's freopen leaves it
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            set_errno(e);
            std::ptr::null_mut()
        }
        None => {
            set_errno(libc::EIO);
            std::ptr::null_mut()
        }
    }
}

/// Hooks for `freopen`-shaped functions. For other streams glibc flushes, opens the new
/// file itself and puts it on the old number, so the old number is forgotten (after a
/// flush through the engine while it is still served) and the new stream stays buffered.
macro_rules! freopen_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: *const c_char, f: *mut FILE) -> *mut FILE {
            // SAFETY: `f` is the program's live stream.
            if !f.is_null() && unsafe { stream::is_ours(f) } {
                // SAFETY: forwarding the program's arguments.
                return unsafe { reopen_ours(path, mode, f) };
            }
            let old = fd_of(f);
            if old >= 0 && engine::is_managed(old) {
                // SAFETY: `f` is the program's live stream.
                unsafe { libc::fflush(f) };
                forget_fd(old);
            }
            type F = unsafe extern "C" fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE;
            // SAFETY: forwarding the program's arguments.
            let r = unsafe { real!($name: F)(path, mode, f) };
            let new = fd_of(r);
            forget_fd(new);
            quietly(|| engine::streams::unserved_stream(new));
            r
        }
    )*};
}
freopen_hooks!(freopen, freopen64);

#[no_mangle]
pub unsafe extern "C" fn fclose(f: *mut FILE) -> c_int {
    // A stream the engine made still writes through the engine while glibc flushes, and
    // its close callback forgets the number. Any other stream's number is forgotten before
    // glibc closes it inside.
    // SAFETY: `f` is the program's live stream.
    if !f.is_null() && !unsafe { stream::is_ours(f) } {
        forget_fd(fd_of(f));
    }
    // SAFETY: forwarding the program's argument.
    unsafe { real!(fclose: unsafe extern "C" fn(*mut FILE) -> c_int)(f) }
}

/// Hooks for `fread`-shaped functions: on a stream the engine made, glibc's file-stream
/// `fread` (`engine::streams::fread`), which reads whole blocks straight into the program's
/// buffer where a cookie stream would copy them through its own.
macro_rules! fread_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(ptr: *mut libc::c_void, size: libc::size_t, n: libc::size_t, f: *mut FILE) -> libc::size_t {
            // SAFETY: `f` is the program's live stream.
            if !f.is_null() && unsafe { stream::is_ours(f) } {
                // SAFETY: forwarding the program's arguments.
                if let Some(r) = in_engine(|_| Some(unsafe { stream::fread(ptr as *mut u8, size, n, f) })) {
                    return r;
                }
            }
            type F = unsafe extern "C" fn(*mut libc::c_void, libc::size_t, libc::size_t, *mut FILE) -> libc::size_t;
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: F)(ptr, size, n, f) }
        }
    )*};
}
fread_hooks!(fread, fread_unlocked);

/// Hooks for the seek and tell family: on a stream the engine made, glibc's file-stream
/// positioning (`engine::streams::fseek` and the rest), which keeps the stream's cached
/// position and converts `SEEK_END` with fstat where a cookie stream would do neither.
macro_rules! position_hooks {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty => $engine:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(f: *mut FILE $(, $arg: $ty)*) -> $ret {
            // SAFETY: `f` is the program's live stream.
            if !f.is_null() && unsafe { stream::is_ours(f) } {
                // SAFETY: forwarding the program's arguments.
                if let Some(r) = in_engine(|_| Some(unsafe { $engine(f $(, $arg)*) })) {
                    return r;
                }
            }
            type F = unsafe extern "C" fn(*mut FILE $(, $ty)*) -> $ret;
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: F)(f $(, $arg)*) }
        }
    )*};
}
position_hooks! {
    fseek(off: libc::c_long, whence: c_int) -> c_int => stream::fseek;
    fseeko(off: libc::off_t, whence: c_int) -> c_int => stream::fseek;
    fseeko64(off: libc::off64_t, whence: c_int) -> c_int => stream::fseek;
    ftell() -> libc::c_long => stream::ftell;
    ftello() -> libc::off_t => stream::ftell;
    ftello64() -> libc::off64_t => stream::ftell;
    fgetpos(pos: *mut libc::fpos_t) -> c_int => |f, p: *mut libc::fpos_t| stream::fgetpos(f, p as *mut i64);
    fgetpos64(pos: *mut libc::fpos64_t) -> c_int => |f, p: *mut libc::fpos64_t| stream::fgetpos(f, p as *mut i64);
    fsetpos(pos: *const libc::fpos_t) -> c_int => |f, p: *const libc::fpos_t| stream::fsetpos(f, p as *const i64);
    fsetpos64(pos: *const libc::fpos64_t) -> c_int => |f, p: *const libc::fpos64_t| stream::fsetpos(f, p as *const i64);
    rewind() -> () => stream::rewind;
}
