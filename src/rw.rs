//! The read and write families, including the vector, v2 and fortified (`__read_chk`)
//! spellings. An fd the engine does not manage costs one table lookup before the real call.

use crate::{real, served};
use libc::{c_int, c_void, iovec, off_t, size_t, ssize_t};
use s3dlio_engine::engine;

type ReadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;
type PreadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t) -> ssize_t;
type WriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;
type VecFn = unsafe extern "C" fn(c_int, *const iovec, c_int) -> ssize_t;
type PvecFn = unsafe extern "C" fn(c_int, *const iovec, c_int, off_t) -> ssize_t;
type Pvec2Fn = unsafe extern "C" fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t;

#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    if engine::is_managed(fd) {
        // SAFETY: the program's buffer and length.
        if let Some(r) = served(|nw| unsafe { engine::rw::read(fd, buf as *mut u8, n, nw) }) {
            return r;
        }
    }
    // SAFETY: forwarding the program's arguments.
    unsafe { real!(read: ReadFn)(fd, buf, n) }
}

#[no_mangle]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t {
    if n <= buflen && engine::is_managed(fd) {
        // SAFETY: the program's buffer, checked against its size like the real function.
        if let Some(r) = served(|nw| unsafe { engine::rw::read(fd, buf as *mut u8, n, nw) }) {
            return r;
        }
    }
    // SAFETY: the real function also performs the overflow check.
    unsafe {
        real!(__read_chk: unsafe extern "C" fn(c_int, *mut c_void, size_t, size_t) -> ssize_t)(fd, buf, n, buflen)
    }
}

/// Hooks for `pread`-shaped functions.
macro_rules! pread_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
            if engine::is_managed(fd) {
                // SAFETY: the program's buffer and length.
                if let Some(r) = served(|nw| unsafe { engine::rw::pread(fd, buf as *mut u8, n, off, nw) }) {
                    return r;
                }
            }
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: PreadFn)(fd, buf, n, off) }
        }
    )*};
}
pread_hooks!(pread, pread64);

/// Hooks for the fortified `__pread_chk` family.
macro_rules! pread_chk_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, buf: *mut c_void, n: size_t, off: off_t, buflen: size_t) -> ssize_t {
            if n <= buflen && engine::is_managed(fd) {
                // SAFETY: the program's buffer, checked against its size.
                if let Some(r) = served(|nw| unsafe { engine::rw::pread(fd, buf as *mut u8, n, off, nw) }) {
                    return r;
                }
            }
            // SAFETY: the real function performs the overflow check.
            unsafe { real!($name: unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t, size_t) -> ssize_t)(fd, buf, n, off, buflen) }
        }
    )*};
}
pread_chk_hooks!(__pread_chk, __pread64_chk);

#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    if engine::is_managed(fd) {
        // SAFETY: the program's buffer and length.
        if let Some(r) = served(|nw| unsafe { engine::rw::write(fd, buf as *const u8, n, nw) }) {
            return r;
        }
    }
    // SAFETY: forwarding the program's arguments.
    unsafe { real!(write: WriteFn)(fd, buf, n) }
}

/// Hooks for `pwrite`-shaped functions.
macro_rules! pwrite_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
            if engine::is_managed(fd) {
                // SAFETY: the program's buffer and length.
                if let Some(r) = served(|nw| unsafe { engine::rw::pwrite(fd, buf as *const u8, n, off, nw) }) {
                    return r;
                }
            }
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: PwriteFn)(fd, buf, n, off) }
        }
    )*};
}
pwrite_hooks!(pwrite, pwrite64);

#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    if engine::is_managed(fd) {
        if let Some(r) = served(|nw| engine::rw::readv(fd, iov, cnt, -1, nw)) {
            return r;
        }
    }
    // SAFETY: forwarding the program's arguments.
    unsafe { real!(readv: VecFn)(fd, iov, cnt) }
}

#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    if engine::is_managed(fd) {
        if let Some(r) = served(|nw| engine::rw::writev(fd, iov, cnt, -1, nw)) {
            return r;
        }
    }
    // SAFETY: forwarding the program's arguments.
    unsafe { real!(writev: VecFn)(fd, iov, cnt) }
}

/// Hooks for `preadv`/`pwritev`-shaped functions (a negative offset is the kernel's EINVAL).
macro_rules! pvec_hooks {
    ($($name:ident => $engine_fn:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
            if off >= 0 && engine::is_managed(fd) {
                if let Some(r) = served(|nw| engine::rw::$engine_fn(fd, iov, cnt, off, nw)) {
                    return r;
                }
            }
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: PvecFn)(fd, iov, cnt, off) }
        }
    )*};
}
pvec_hooks!(preadv => readv, preadv64 => readv, pwritev => writev, pwritev64 => writev);

/// Hooks for the v2 functions (offset -1 = the file position).
macro_rules! pvec2_hooks {
    ($($name:ident => $engine_fn:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, flags: c_int) -> ssize_t {
            if engine::is_managed(fd) {
                if let Some(r) = served(|nw| engine::rw::$engine_fn(fd, iov, cnt, off, flags, nw)) {
                    return r;
                }
            }
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: Pvec2Fn)(fd, iov, cnt, off, flags) }
        }
    )*};
}
pvec2_hooks!(preadv2 => readv2, preadv64v2 => readv2, pwritev2 => writev2, pwritev64v2 => writev2);
