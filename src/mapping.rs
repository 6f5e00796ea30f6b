//! mmap, readahead advice and posix_fallocate on direct descriptors: a mapping is served by
//! the page cache (counted), readahead requests are swallowed, and what posix_fallocate's
//! emulation cached is dropped.

use crate::{in_engine, quietly, real};
use libc::{c_int, c_void, off_t, size_t, ssize_t};
use s3dlio_engine::engine;

type MmapFn = unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void;

/// Hooks for `mmap`-shaped functions.
macro_rules! mmap_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
            if engine::is_managed(fd) {
                quietly(|| engine::mapping::mapping(fd, prot, flags));
            }
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: MmapFn)(addr, len, prot, flags, fd, off) }
        }
    )*};
}
mmap_hooks!(mmap, mmap64);

type FadviseFn = unsafe extern "C" fn(c_int, off_t, off_t, c_int) -> c_int;

/// Hooks for `posix_fadvise`-shaped functions (they return the error number).
macro_rules! fadvise_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, off: off_t, len: off_t, advice: c_int) -> c_int {
            if advice == libc::POSIX_FADV_WILLNEED && off >= 0 && len >= 0 && engine::is_managed(fd)
                && in_engine(|_| Some(engine::mapping::swallow_readahead(fd, false))).unwrap_or(false)
            {
                return 0;
            }
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: FadviseFn)(fd, off, len, advice) }
        }
    )*};
}
fadvise_hooks!(posix_fadvise, posix_fadvise64);

#[no_mangle]
pub unsafe extern "C" fn readahead(fd: c_int, off: off_t, count: size_t) -> ssize_t {
    if engine::is_managed(fd) && in_engine(|_| Some(engine::mapping::swallow_readahead(fd, true))).unwrap_or(false) {
        return 0;
    }
    // SAFETY: forwarding the program's arguments.
    unsafe { real!(readahead: unsafe extern "C" fn(c_int, off_t, size_t) -> ssize_t)(fd, off, count) }
}

/// Hooks for `posix_fallocate`-shaped functions (they return the error number). Where the
/// filesystem lacks fallocate, glibc writes one byte per block through the program's own
/// (buffered) description; the engine then drops what that left in the page cache.
macro_rules! fallocate_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, off: off_t, len: off_t) -> c_int {
            // SAFETY: forwarding the program's arguments.
            let r = unsafe { real!($name: unsafe extern "C" fn(c_int, off_t, off_t) -> c_int)(fd, off, len) };
            if engine::is_managed(fd) {
                quietly(|| engine::mapping::fallocated(fd, off, len));
            }
            r
        }
    )*};
}
fallocate_hooks!(posix_fallocate, posix_fallocate64);
