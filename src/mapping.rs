//! mmap, munmap, mremap, mprotect, madvise and posix_madvise (the engine tracks mappings of matched files
//! and keeps their footprint in the page cache within the budget), readahead advice and
//! posix_fallocate on direct descriptors (readahead requests are swallowed, and what
//! posix_fallocate's emulation cached is dropped).

use crate::{errno, in_engine, quietly, real, set_errno};
use libc::{c_int, c_void, off_t, size_t, ssize_t};
use s3dlio_engine::engine;
use s3dlio_engine::engine::mapping as map;

type MmapFn = unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void;

/// Hooks for `mmap`-shaped functions.
macro_rules! mmap_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
            if !map::concerns_mmap(flags, fd) && !engine::is_managed(fd) {
                // SAFETY: forwarding the program's arguments.
                return unsafe { real!($name: MmapFn)(addr, len, prot, flags, fd, off) };
            }
            let prep = in_engine(|nowait| map::before_mmap(prot, flags, fd, nowait));
            // SAFETY: forwarding the program's arguments.
            let r = unsafe { real!($name: MmapFn)(addr, len, prot, flags, fd, off) };
            if let Some(p) = prep {
                let saved = errno();
                in_engine(|_| Some(map::after_mmap(p, r as usize, len, prot, flags, off)));
                set_errno(saved);
            }
            r
        }
    )*};
}
mmap_hooks!(mmap, mmap64);

#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    type F = unsafe extern "C" fn(*mut c_void, size_t) -> c_int;
    if !map::concerns_range(addr as usize, len) {
        // SAFETY: forwarding the program's arguments.
        return unsafe { real!(munmap: F)(addr, len) };
    }
    let held = in_engine(map::before_change);
    // SAFETY: forwarding the program's arguments.
    let r = unsafe { real!(munmap: F)(addr, len) };
    if let Some(h) = held {
        if r == 0 {
            quietly(|| map::unmapped(h, addr as usize, len));
        }
    }
    r
}

/// `mremap` is variadic (a fifth argument, the new address, only with MREMAP_FIXED): a
/// fixed fifth parameter is ABI-compatible on x86-64 and aarch64 Linux, and is passed on
/// as received.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new: *mut c_void,
) -> *mut c_void {
    type F = unsafe extern "C" fn(*mut c_void, size_t, size_t, c_int, *mut c_void) -> *mut c_void;
    let fixed_new = flags & libc::MREMAP_FIXED != 0;
    if !(map::concerns_range(old as usize, old_len.max(1)) || fixed_new && map::concerns_range(new as usize, new_len)) {
        // SAFETY: forwarding the program's arguments.
        return unsafe { real!(mremap: F)(old, old_len, new_len, flags, new) };
    }
    let held = in_engine(|nowait| map::before_remap(nowait, old as usize, old_len));
    // SAFETY: forwarding the program's arguments.
    let r = unsafe { real!(mremap: F)(old, old_len, new_len, flags, new) };
    if let Some(h) = held {
        if r != libc::MAP_FAILED {
            quietly(|| map::remapped(h, old as usize, old_len, r as usize, new_len, flags));
        }
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: size_t, prot: c_int) -> c_int {
    type F = unsafe extern "C" fn(*mut c_void, size_t, c_int) -> c_int;
    if prot & libc::PROT_WRITE == 0 && !map::direct_any() || !map::concerns_range(addr as usize, len) {
        // SAFETY: forwarding the program's arguments.
        return unsafe { real!(mprotect: F)(addr, len, prot) };
    }
    let held = in_engine(|nowait| {
        map::before_change(nowait).map(|mut h| {
            map::protecting(&mut h, addr as usize, len, prot);
            h
        })
    });
    // SAFETY: forwarding the program's arguments.
    let r = unsafe { real!(mprotect: F)(addr, len, prot) };
    drop(held);
    r
}

#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    type F = unsafe extern "C" fn(*mut c_void, size_t, c_int) -> c_int;
    if !map::concerns_range(addr as usize, len) {
        // SAFETY: forwarding the program's arguments.
        return unsafe { real!(madvise: F)(addr, len, advice) };
    }
    advise(addr, len, advice, |n| {
        // SAFETY: forwarding the program's arguments (a WILLNEED range possibly shortened).
        let r = unsafe { real!(madvise: F)(addr, n, advice) };
        (r, if r == 0 { 0 } else { errno() })
    })
}

/// glibc's `posix_madvise` makes the madvise system call itself (no hook sees it), and
/// returns the error number instead of setting errno.
#[no_mangle]
pub unsafe extern "C" fn posix_madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    type F = unsafe extern "C" fn(*mut c_void, size_t, c_int) -> c_int;
    if !map::concerns_range(addr as usize, len) {
        // SAFETY: forwarding the program's arguments.
        return unsafe { real!(posix_madvise: F)(addr, len, advice) };
    }
    // glibc ignores POSIX_MADV_DONTNEED (MADV_DONTNEED would discard private copies), so it
    // is never seen as advice here.
    let seen = if advice == libc::POSIX_MADV_DONTNEED { -1 } else { advice };
    advise(addr, len, seen, |n| {
        // SAFETY: forwarding the program's arguments (a WILLNEED range possibly shortened).
        let r = unsafe { real!(posix_madvise: F)(addr, n, advice) };
        (r, r)
    })
}

/// An advice call on a range that may be tracked: `call(len)` makes the real call and says
/// what it returned and its error number (0: none).
fn advise(addr: *mut c_void, len: size_t, advice: c_int, call: impl FnOnce(size_t) -> (c_int, c_int)) -> c_int {
    let len_passed = in_engine(|nowait| map::advice_len(addr as usize, len, advice, nowait)).unwrap_or(len);
    let held = in_engine(|nowait| map::before_advice(advice, nowait));
    let (r, err) = call(len_passed);
    let saved = errno();
    in_engine(|_| {
        map::advised(held, addr as usize, len, advice, err == 0 || err == libc::ENOMEM);
        Some(())
    });
    set_errno(saved);
    r
}

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
