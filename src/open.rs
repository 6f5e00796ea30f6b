//! open, openat, creat and their 64-bit and fortified (`__open_2`) spellings.
//!
//! The variadic `mode` is taken as a fixed third argument: on x86-64 and aarch64 Linux a
//! variadic integer is passed exactly like a named one, and it is only read by the kernel
//! with O_CREAT or O_TMPFILE, as in glibc.

use crate::{in_engine, quietly, real};
use libc::{c_char, c_int, mode_t};
use s3dlio_engine::engine;

/// Common body: plan, call the real open unchanged, then register.
unsafe fn open_with(dirfd: c_int, path: *const c_char, flags: c_int, call: impl Fn(c_int) -> c_int) -> c_int {
    if !engine::active() {
        return call(flags);
    }
    // SAFETY: `path` comes from the program as a C string.
    let plan = in_engine(|_| unsafe { engine::open::plan_open(dirfd, path, flags) });
    let fd = crate::fdops::created(|| call(flags));
    if fd >= 0 {
        quietly(|| match plan {
            Some(p) => engine::open::opened(fd, p),
            None => engine::fdops::forget(fd),
        });
    }
    fd
}

type OpenFn = unsafe extern "C" fn(*const c_char, c_int, mode_t) -> c_int;
type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, mode_t) -> c_int;
type Open2Fn = unsafe extern "C" fn(*const c_char, c_int) -> c_int;
type Openat2Fn = unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;

/// Hooks for `open`-shaped functions.
macro_rules! open_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
            // SAFETY: forwarding the program's own arguments to the real function.
            unsafe { open_with(libc::AT_FDCWD, path, flags, |f| real!($name: OpenFn)(path, f, mode)) }
        }
    )*};
}
open_hooks!(open, open64);

/// Hooks for `openat`-shaped functions.
macro_rules! openat_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
            // SAFETY: forwarding the program's own arguments to the real function.
            unsafe { open_with(dirfd, path, flags, |f| real!($name: OpenatFn)(dirfd, path, f, mode)) }
        }
    )*};
}
openat_hooks!(openat, openat64);

/// Hooks for the fortified `__open_2` family (no mode: O_CREAT is refused by glibc there).
macro_rules! open2_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int) -> c_int {
            // SAFETY: forwarding the program's own arguments to the real function.
            unsafe { open_with(libc::AT_FDCWD, path, flags, |f| real!($name: Open2Fn)(path, f)) }
        }
    )*};
}
open2_hooks!(__open_2, __open64_2);

/// Hooks for the fortified `__openat_2` family.
macro_rules! openat2_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
            // SAFETY: forwarding the program's own arguments to the real function.
            unsafe { open_with(dirfd, path, flags, |f| real!($name: Openat2Fn)(dirfd, path, f)) }
        }
    )*};
}
openat2_hooks!(__openat_2, __openat64_2);

/// Hooks for `creat`: it is `open(path, O_CREAT|O_WRONLY|O_TRUNC, mode)`.
macro_rules! creat_hooks {
    ($($name:ident => $open:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: mode_t) -> c_int {
            let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;
            // SAFETY: forwarding the program's own arguments to the real functions.
            unsafe {
                open_with(libc::AT_FDCWD, path, flags, |f| {
                    if f == flags {
                        real!($name: unsafe extern "C" fn(*const c_char, mode_t) -> c_int)(path, mode)
                    } else {
                        real!($open: OpenFn)(path, f, mode)
                    }
                })
            }
        }
    )*};
}
creat_hooks!(creat => open, creat64 => open64);
