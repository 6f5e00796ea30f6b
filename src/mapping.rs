//! mmap, readahead advice and posix_fallocate on direct descriptors: a mapping is served by
//! the page cache (counted), readahead requests are swallowed, and posix_fallocate runs on
//! the buffered companion, where glibc's single-byte emulation works.

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
/// filesystem lacks fallocate, glibc writes one byte per block, which O_DIRECT refuses; on
/// the companion (same file, same access mode and O_APPEND) the call behaves as without
/// the shim.
macro_rules! fallocate_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, off: off_t, len: off_t) -> c_int {
            let mut target = fd;
            if engine::is_managed(fd) {
                match in_engine(|_| engine::mapping::companion_of(fd)) {
                    Some(Ok(c)) => target = c,
                    Some(Err(e)) => return e,
                    None => {}
                }
            }
            // SAFETY: forwarding the program's arguments, on the same file.
            let r = unsafe { real!($name: unsafe extern "C" fn(c_int, off_t, off_t) -> c_int)(target, off, len) };
            if target != fd {
                quietly(|| engine::mapping::companion_wrote(fd, off, len));
            }
            r
        }
    )*};
}
fallocate_hooks!(posix_fallocate, posix_fallocate64);
