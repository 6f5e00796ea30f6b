//! Descriptor operations: offsets, close and dup in all spellings, fcntl, truncate, sync,
//! the kernel copy calls, and the calls that create descriptors (which may take a number
//! the engine missed the close of).

use crate::{errno, in_engine, quietly, real, served, set_errno};
use libc::{c_int, c_uint, c_ulong, loff_t, off_t, size_t, ssize_t};
use s3dlio_engine::engine;

type LseekFn = unsafe extern "C" fn(c_int, off_t, c_int) -> off_t;

/// Hooks for `lseek`-shaped functions: serialised with the engine's emulated reads and writes.
macro_rules! lseek_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, off: off_t, whence: c_int) -> off_t {
            if engine::is_managed(fd) {
                let saved = errno();
                if let Some(r) = in_engine(|nw| engine::fdops::lseek(fd, off, whence, nw)) {
                    return crate::finish(r.map(|v| v as usize), saved) as off_t;
                }
            }
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: LseekFn)(fd, off, whence) }
        }
    )*};
}
lseek_hooks!(lseek, lseek64);

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if engine::is_managed(fd) {
        // Before the real close: after it another thread may already own the number.
        quietly(|| engine::fdops::forget(fd));
    }
    // SAFETY: forwarding the program's argument.
    unsafe { real!(close: unsafe extern "C" fn(c_int) -> c_int)(fd) }
}

#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    if flags as c_uint & libc::CLOSE_RANGE_CLOEXEC == 0 {
        quietly(|| engine::fdops::forget_range(first, last));
    }
    // SAFETY: forwarding the program's arguments.
    unsafe { real!(close_range: unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int)(first, last, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn closefrom(lowfd: c_int) {
    quietly(|| engine::fdops::forget_range(lowfd.max(0) as u32, u32::MAX));
    // SAFETY: forwarding the program's argument.
    unsafe { real!(closefrom: unsafe extern "C" fn(c_int))(lowfd) }
}

/// Shares the engine's state of `old` with the new number `new` (or forgets `new`).
fn after_dup(old: c_int, new: c_int) -> c_int {
    if new >= 0 {
        quietly(|| engine::fdops::duped(old, new));
    }
    new
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: forwarding the program's argument.
    after_dup(fd, unsafe { real!(dup: unsafe extern "C" fn(c_int) -> c_int)(fd) })
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: forwarding the program's arguments.
    after_dup(old, unsafe { real!(dup2: unsafe extern "C" fn(c_int, c_int) -> c_int)(old, new) })
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarding the program's arguments.
    after_dup(old, unsafe { real!(dup3: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int)(old, new, flags) })
}

type FcntlFn = unsafe extern "C" fn(c_int, c_int, c_ulong) -> c_int;

/// Hooks for `fcntl`. The variadic argument is taken as one machine word: every command
/// passes either an int or a pointer, both carried in the same register.
macro_rules! fcntl_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
            let real = real!($name: FcntlFn);
            match cmd {
                libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
                    // SAFETY: forwarding the program's arguments.
                    after_dup(fd, unsafe { real(fd, cmd, arg) })
                }
                libc::F_GETFL if engine::is_managed(fd) => {
                    // SAFETY: forwarding the program's arguments.
                    let r = unsafe { real(fd, cmd, arg) };
                    if r < 0 {
                        return r;
                    }
                    in_engine(|_| Some(engine::fdops::getfl(fd, r))).unwrap_or(r)
                }
                libc::F_SETFL if engine::is_managed(fd) => {
                    let saved = errno();
                    let arg2 = in_engine(|_| Some(engine::fdops::setfl(fd, arg as c_int))).unwrap_or(arg as c_int);
                    set_errno(saved);
                    // SAFETY: forwarding the program's call with the shim's O_DIRECT kept.
                    unsafe { real(fd, cmd, arg2 as c_ulong) }
                }
                // SAFETY: forwarding the program's arguments.
                _ => unsafe { real(fd, cmd, arg) },
            }
        }
    )*};
}
fcntl_hooks!(fcntl, fcntl64);

/// Hooks for `ftruncate`: held against the engine's emulated writes on the description.
macro_rules! ftruncate_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, len: off_t) -> c_int {
            let real = real!($name: unsafe extern "C" fn(c_int, off_t) -> c_int);
            if engine::is_managed(fd) {
                // SAFETY: forwarding the program's arguments.
                if let Some(r) = in_engine(|nw| engine::fdops::with_offset_lock(fd, nw, || unsafe { real(fd, len) })) {
                    return r;
                }
            }
            // SAFETY: forwarding the program's arguments.
            unsafe { real(fd, len) }
        }
    )*};
}
ftruncate_hooks!(ftruncate, ftruncate64);

/// Hooks for `fsync`/`fdatasync`: afterwards the engine drops what its buffered pieces cached.
macro_rules! sync_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int) -> c_int {
            // SAFETY: forwarding the program's argument.
            let r = unsafe { real!($name: unsafe extern "C" fn(c_int) -> c_int)(fd) };
            if r == 0 && engine::is_managed(fd) {
                quietly(|| engine::fdops::synced(fd));
            }
            r
        }
    )*};
}
sync_hooks!(fsync, fdatasync);

fn either_managed(a: c_int, b: c_int) -> bool {
    engine::is_managed(a) || engine::is_managed(b)
}

#[no_mangle]
pub unsafe extern "C" fn copy_file_range(
    fd_in: c_int,
    off_in: *mut loff_t,
    fd_out: c_int,
    off_out: *mut loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    if flags == 0 && either_managed(fd_in, fd_out) {
        // SAFETY: the program's offset pointers.
        if let Some(r) = served(|_| unsafe { engine::fdops::copy(fd_in, off_in, fd_out, off_out, len) }) {
            return r;
        }
    }
    type F = unsafe extern "C" fn(c_int, *mut loff_t, c_int, *mut loff_t, size_t, c_uint) -> ssize_t;
    // SAFETY: forwarding the program's arguments.
    unsafe { real!(copy_file_range: F)(fd_in, off_in, fd_out, off_out, len, flags) }
}

/// Hooks for `sendfile`: the copy from a managed file is emulated with the engine.
macro_rules! sendfile_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(out_fd: c_int, in_fd: c_int, offset: *mut off_t, count: size_t) -> ssize_t {
            if either_managed(in_fd, out_fd) {
                // SAFETY: the program's offset pointer.
                if let Some(r) = served(|_| unsafe { engine::fdops::copy(in_fd, offset, out_fd, std::ptr::null_mut(), count) }) {
                    return r;
                }
            }
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: unsafe extern "C" fn(c_int, c_int, *mut off_t, size_t) -> ssize_t)(out_fd, in_fd, offset, count) }
        }
    )*};
}
sendfile_hooks!(sendfile, sendfile64);

#[no_mangle]
pub unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut loff_t,
    fd_out: c_int,
    off_out: *mut loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    if either_managed(fd_in, fd_out) {
        // SAFETY: the program's offset pointers.
        if let Some(r) = served(|_| unsafe { engine::fdops::copy(fd_in, off_in, fd_out, off_out, len) }) {
            return r;
        }
    }
    type F = unsafe extern "C" fn(c_int, *mut loff_t, c_int, *mut loff_t, size_t, c_uint) -> ssize_t;
    // SAFETY: forwarding the program's arguments.
    unsafe { real!(splice: F)(fd_in, off_in, fd_out, off_out, len, flags) }
}

/// Forgets a number a descriptor-creating call just handed out.
fn fresh(fd: c_int) -> c_int {
    if fd >= 0 && engine::is_managed(fd) {
        quietly(|| engine::fdops::forget(fd));
    }
    fd
}

/// Forgets both numbers of a pipe or socket pair.
fn fresh_pair(r: c_int, fds: *const c_int) -> c_int {
    if r == 0 && !fds.is_null() {
        // SAFETY: on success the call filled two ints.
        unsafe {
            fresh(*fds);
            fresh(*fds.add(1));
        }
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    // SAFETY: forwarding the program's arguments.
    fresh(unsafe { real!(socket: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int)(domain, ty, proto) })
}

#[no_mangle]
pub unsafe extern "C" fn socketpair(domain: c_int, ty: c_int, proto: c_int, sv: *mut c_int) -> c_int {
    // SAFETY: forwarding the program's arguments.
    let r = unsafe {
        real!(socketpair: unsafe extern "C" fn(c_int, c_int, c_int, *mut c_int) -> c_int)(domain, ty, proto, sv)
    };
    fresh_pair(r, sv)
}

#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int {
    type F = unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> c_int;
    // SAFETY: forwarding the program's arguments.
    fresh(unsafe { real!(accept: F)(fd, addr, len) })
}

#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: c_int,
) -> c_int {
    type F = unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t, c_int) -> c_int;
    // SAFETY: forwarding the program's arguments.
    fresh(unsafe { real!(accept4: F)(fd, addr, len, flags) })
}

#[no_mangle]
pub unsafe extern "C" fn pipe(fds: *mut c_int) -> c_int {
    // SAFETY: forwarding the program's argument.
    let r = unsafe { real!(pipe: unsafe extern "C" fn(*mut c_int) -> c_int)(fds) };
    fresh_pair(r, fds)
}

#[no_mangle]
pub unsafe extern "C" fn pipe2(fds: *mut c_int, flags: c_int) -> c_int {
    // SAFETY: forwarding the program's arguments.
    let r = unsafe { real!(pipe2: unsafe extern "C" fn(*mut c_int, c_int) -> c_int)(fds, flags) };
    fresh_pair(r, fds)
}

#[no_mangle]
pub unsafe extern "C" fn memfd_create(name: *const libc::c_char, flags: c_uint) -> c_int {
    // SAFETY: forwarding the program's arguments.
    fresh(unsafe { real!(memfd_create: unsafe extern "C" fn(*const libc::c_char, c_uint) -> c_int)(name, flags) })
}

#[no_mangle]
pub unsafe extern "C" fn eventfd(init: c_uint, flags: c_int) -> c_int {
    // SAFETY: forwarding the program's arguments.
    fresh(unsafe { real!(eventfd: unsafe extern "C" fn(c_uint, c_int) -> c_int)(init, flags) })
}

#[no_mangle]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    // SAFETY: forwarding the program's argument.
    fresh(unsafe { real!(epoll_create: unsafe extern "C" fn(c_int) -> c_int)(size) })
}

#[no_mangle]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: forwarding the program's argument.
    fresh(unsafe { real!(epoll_create1: unsafe extern "C" fn(c_int) -> c_int)(flags) })
}

#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t {
    // SAFETY: forwarding the program's arguments.
    let r = unsafe { real!(recvmsg: unsafe extern "C" fn(c_int, *mut libc::msghdr, c_int) -> ssize_t)(fd, msg, flags) };
    if r >= 0 && !msg.is_null() {
        // SAFETY: the kernel filled the control buffer; CMSG_* walk stays inside it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const c_int;
                    let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<c_int>();
                    for i in 0..n {
                        fresh(data.add(i).read_unaligned());
                    }
                }
                c = libc::CMSG_NXTHDR(msg, c);
            }
        }
    }
    r
}
