//! Descriptor operations: offsets, close and dup in all spellings, fcntl, truncate, sync,
//! the kernel copy calls, and the calls that create descriptors (which may take a number
//! the engine missed the close of).

use crate::{errno, in_engine, quietly, real, set_errno};
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
    if engine::is_library_fd(fd) {
        // A number the program never got: without the library it would not be open.
        set_errno(libc::EBADF);
        return -1;
    }
    if engine::is_managed(fd) {
        // Before the real close: after it another thread may already own the number.
        quietly(|| engine::fdops::forget(fd));
    }
    // SAFETY: forwarding the program's argument.
    unsafe { real!(close: unsafe extern "C" fn(c_int) -> c_int)(fd) }
}

/// The program's close_range/closefrom over `[first, last]`: managed numbers are forgotten,
/// and the library's own are left open (the engine closes the parts around them).
fn close_range_with(first: c_uint, last: c_uint, flags: c_int, real: impl FnOnce() -> c_int) -> c_int {
    if flags as c_uint & libc::CLOSE_RANGE_CLOEXEC == 0 {
        quietly(|| engine::fdops::forget_range(first, last));
    }
    let saved = errno();
    match in_engine(|_| engine::fdops::close_range(first, last, flags as c_uint)) {
        Some(r) => crate::finish(r.map(|_| 0), saved) as c_int,
        None => real(),
    }
}

#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    close_range_with(first, last, flags, || {
        // SAFETY: forwarding the program's arguments.
        unsafe { real!(close_range: unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int)(first, last, flags) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn closefrom(lowfd: c_int) {
    let saved = errno();
    close_range_with(lowfd.max(0) as c_uint, c_uint::MAX, 0, || {
        // SAFETY: forwarding the program's argument.
        unsafe { real!(closefrom: unsafe extern "C" fn(c_int))(lowfd) };
        0
    });
    set_errno(saved);
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
    let new = created(|| unsafe { real!(dup: unsafe extern "C" fn(c_int) -> c_int)(fd) });
    after_dup(fd, new)
}

/// Before `dup2`/`dup3` onto `new`: a library number there is the program's from now on.
fn dup_onto(new: c_int) {
    if engine::is_library_fd(new) {
        quietly(|| engine::fdops::library_fd_taken(new));
    }
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    dup_onto(new);
    // SAFETY: forwarding the program's arguments.
    after_dup(old, unsafe { real!(dup2: unsafe extern "C" fn(c_int, c_int) -> c_int)(old, new) })
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    dup_onto(new);
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
                    let new = created_from(arg as c_int, || unsafe { real(fd, cmd, arg) });
                    after_dup(fd, new)
                }
                libc::F_SETFL if engine::is_managed(fd) => {
                    // SAFETY: forwarding the program's arguments.
                    let r = unsafe { real(fd, cmd, arg) };
                    if r == 0 {
                        quietly(|| engine::fdops::setfl(fd, arg as c_int));
                    }
                    r
                }
                libc::F_SETLK | libc::F_SETLKW => {
                    before_lock(fd);
                    // SAFETY: forwarding the program's arguments.
                    unsafe { real(fd, cmd, arg) }
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

/// Runs a kernel copy (copy_file_range, sendfile, splice) as the program asked, on its own
/// buffered descriptions (the kernel's checks and errors are the program's), and has the
/// engine drop what it left in the page cache of a managed end.
fn copied(
    fd_in: c_int,
    off_in: *const loff_t,
    fd_out: c_int,
    off_out: *const loff_t,
    call: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if !engine::is_managed(fd_in) && !engine::is_managed(fd_out) {
        return call();
    }
    let token = in_engine(|_| engine::fdops::before_copy(fd_in, off_in, fd_out, off_out));
    let r = call();
    if let Some(t) = token {
        quietly(|| engine::fdops::after_copy(t, r));
    }
    r
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
    type F = unsafe extern "C" fn(c_int, *mut loff_t, c_int, *mut loff_t, size_t, c_uint) -> ssize_t;
    // SAFETY: forwarding the program's arguments.
    copied(fd_in, off_in, fd_out, off_out, || unsafe {
        real!(copy_file_range: F)(fd_in, off_in, fd_out, off_out, len, flags)
    })
}

/// Hooks for `sendfile`: the copy from a managed file is emulated with the engine.
macro_rules! sendfile_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(out_fd: c_int, in_fd: c_int, offset: *mut off_t, count: size_t) -> ssize_t {
            type F = unsafe extern "C" fn(c_int, c_int, *mut off_t, size_t) -> ssize_t;
            // SAFETY: forwarding the program's arguments.
            copied(in_fd, offset, out_fd, std::ptr::null_mut(), || unsafe { real!($name: F)(out_fd, in_fd, offset, count) })
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
    type F = unsafe extern "C" fn(c_int, *mut loff_t, c_int, *mut loff_t, size_t, c_uint) -> ssize_t;
    // SAFETY: forwarding the program's arguments.
    copied(fd_in, off_in, fd_out, off_out, || unsafe { real!(splice: F)(fd_in, off_in, fd_out, off_out, len, flags) })
}

/// Forgets a number a descriptor-creating call just handed out.
fn fresh(fd: c_int) -> c_int {
    if fd >= 0 && engine::is_managed(fd) {
        quietly(|| engine::fdops::forget(fd));
    }
    fd
}

/// Runs a call that creates one descriptor: a number the engine missed the close of is
/// forgotten, and where the program's descriptors reach the library's numbers the library
/// gives its own up, so the program gets the number (or the descriptor) it would have had.
pub(crate) fn created(call: impl Fn() -> c_int) -> c_int {
    created_from(0, call)
}

/// [`created`] for a call that takes the lowest free number at or above `min` (F_DUPFD).
fn created_from(min: c_int, call: impl Fn() -> c_int) -> c_int {
    let fd = fresh(call());
    if !engine::library_in_the_way(fd, min) {
        return fd;
    }
    let err = errno();
    match in_engine(|_| Some(engine::fdops::created(fd, err, min))) {
        Some(engine::fdops::Created::Moved(n)) => fresh(n),
        Some(engine::fdops::Created::Retry) => fresh(call()),
        _ => {
            set_errno(err);
            fd
        }
    }
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
    created(|| unsafe { real!(socket: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int)(domain, ty, proto) })
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
    created(|| unsafe { real!(accept: F)(fd, addr, len) })
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
    created(|| unsafe { real!(accept4: F)(fd, addr, len, flags) })
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
    created(|| unsafe { real!(memfd_create: unsafe extern "C" fn(*const libc::c_char, c_uint) -> c_int)(name, flags) })
}

#[no_mangle]
pub unsafe extern "C" fn eventfd(init: c_uint, flags: c_int) -> c_int {
    // SAFETY: forwarding the program's arguments.
    created(|| unsafe { real!(eventfd: unsafe extern "C" fn(c_uint, c_int) -> c_int)(init, flags) })
}

#[no_mangle]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    // SAFETY: forwarding the program's argument.
    created(|| unsafe { real!(epoll_create: unsafe extern "C" fn(c_int) -> c_int)(size) })
}

#[no_mangle]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: forwarding the program's argument.
    created(|| unsafe { real!(epoll_create1: unsafe extern "C" fn(c_int) -> c_int)(flags) })
}

#[no_mangle]
pub unsafe extern "C" fn signalfd(fd: c_int, mask: *const libc::sigset_t, flags: c_int) -> c_int {
    type F = unsafe extern "C" fn(c_int, *const libc::sigset_t, c_int) -> c_int;
    // SAFETY: forwarding the program's arguments.
    created(|| unsafe { real!(signalfd: F)(fd, mask, flags) })
}

#[no_mangle]
pub unsafe extern "C" fn timerfd_create(clock: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarding the program's arguments.
    created(|| unsafe { real!(timerfd_create: unsafe extern "C" fn(c_int, c_int) -> c_int)(clock, flags) })
}

#[no_mangle]
pub unsafe extern "C" fn inotify_init() -> c_int {
    // SAFETY: no arguments.
    created(|| unsafe { real!(inotify_init: unsafe extern "C" fn() -> c_int)() })
}

#[no_mangle]
pub unsafe extern "C" fn inotify_init1(flags: c_int) -> c_int {
    // SAFETY: forwarding the program's argument.
    created(|| unsafe { real!(inotify_init1: unsafe extern "C" fn(c_int) -> c_int)(flags) })
}

/// Before a POSIX record lock through `fd`: the library closes its own descriptors of the
/// file first (closing them once the lock exists would drop it).
fn before_lock(fd: c_int) {
    if engine::lock_taken() {
        let saved = errno();
        in_engine(|nowait| {
            engine::fdops::locking(fd, nowait);
            Some(())
        });
        set_errno(saved);
    }
}

/// Hooks for `lockf`: glibc takes the POSIX record lock with an internal fcntl no hook sees.
macro_rules! lockf_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, cmd: c_int, len: off_t) -> c_int {
            if cmd != libc::F_TEST {
                before_lock(fd);
            }
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: unsafe extern "C" fn(c_int, c_int, off_t) -> c_int)(fd, cmd, len) }
        }
    )*};
}
lockf_hooks!(lockf, lockf64);

/// Calls `f` with each descriptor an SCM_RIGHTS control message of `msg` carries.
///
/// # Safety
/// `msg` and its control buffer must be valid (the kernel just read or filled them).
unsafe fn passed_fds(msg: *const libc::msghdr, mut f: impl FnMut(c_int)) {
    // SAFETY: forwarded from the caller; the CMSG_* walk stays inside the control buffer.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const c_int;
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<c_int>();
                for i in 0..n {
                    f(data.add(i).read_unaligned());
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t {
    // SAFETY: forwarding the program's arguments.
    let r =
        unsafe { real!(sendmsg: unsafe extern "C" fn(c_int, *const libc::msghdr, c_int) -> ssize_t)(fd, msg, flags) };
    if r >= 0 && !msg.is_null() && engine::active() {
        // SAFETY: the kernel just read this message and its control buffer.
        unsafe {
            passed_fds(msg, |sent| {
                if engine::is_managed(sent) {
                    quietly(|| engine::fdops::handed_over(sent));
                }
            })
        };
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t {
    // SAFETY: forwarding the program's arguments.
    let r = unsafe { real!(recvmsg: unsafe extern "C" fn(c_int, *mut libc::msghdr, c_int) -> ssize_t)(fd, msg, flags) };
    if r >= 0 && !msg.is_null() {
        // SAFETY: the kernel filled this message's control buffer.
        unsafe {
            passed_fds(msg, |got| {
                fresh(got);
            })
        };
    }
    r
}
