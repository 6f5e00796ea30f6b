//! stdio entry points that open or close descriptors inside glibc, where no hook sees the
//! underlying open or close: a stream on a direct fd goes buffered (its I/O would bypass the
//! engine), and a number glibc closed or reused is forgotten.

use crate::{quietly, real};
use libc::{c_char, c_int, FILE};
use s3dlio::engine as eng;

fn forget_stream_fd(f: *mut FILE) -> *mut FILE {
    if !f.is_null() {
        // SAFETY: `f` is a live stream just returned by libc.
        let fd = unsafe { libc::fileno(f) };
        if fd >= 0 && eng::is_managed(fd) {
            quietly(|| eng::forget(fd));
        }
    }
    f
}

#[no_mangle]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    if eng::is_managed(fd) {
        quietly(|| eng::stream_opened(fd));
    }
    // SAFETY: forwarding the program's arguments.
    unsafe { real!(fdopen: unsafe extern "C" fn(c_int, *const c_char) -> *mut FILE)(fd, mode) }
}

/// Hooks for `fopen`-shaped functions.
macro_rules! fopen_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: *const c_char) -> *mut FILE {
            // SAFETY: forwarding the program's arguments.
            forget_stream_fd(unsafe { real!($name: unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE)(path, mode) })
        }
    )*};
}
fopen_hooks!(fopen, fopen64);

/// Hooks for `freopen`-shaped functions: the stream's old fd is closed inside glibc.
macro_rules! freopen_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: *const c_char, f: *mut FILE) -> *mut FILE {
            forget_stream_fd(f);
            type F = unsafe extern "C" fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE;
            // SAFETY: forwarding the program's arguments.
            forget_stream_fd(unsafe { real!($name: F)(path, mode, f) })
        }
    )*};
}
freopen_hooks!(freopen, freopen64);

#[no_mangle]
pub unsafe extern "C" fn fclose(f: *mut FILE) -> c_int {
    forget_stream_fd(f);
    // SAFETY: forwarding the program's argument.
    unsafe { real!(fclose: unsafe extern "C" fn(*mut FILE) -> c_int)(f) }
}
