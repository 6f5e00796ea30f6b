//! Raw system calls for the engine's own I/O, so that nothing the engine does re-enters the hooks.
//!
//! Every wrapper returns `Ok(value)` or `Err(errno)` and never touches the host's `errno`
//! through a libc wrapper that a preload library could interpose (`libc::syscall` itself is
//! not interposed by us and only sets `errno`, which the shim restores).

pub mod aio;

use libc::{c_int, c_long, c_void, off_t};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};

/// An errno value.
pub type Errno = i32;
/// Result of a raw system call.
pub type SysResult<T> = Result<T, Errno>;

/// This thread's errno.
pub fn errno() -> Errno {
    // SAFETY: __errno_location always returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Sets this thread's errno.
pub fn set_errno(e: Errno) {
    // SAFETY: as for `errno`.
    unsafe { *libc::__errno_location() = e }
}

fn check(r: c_long) -> SysResult<usize> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

/// Retries `f` while it fails with EINTR: the engine's internal calls are never the
/// program's, so an interrupted internal call must not surface as the program's EINTR.
fn retry(mut f: impl FnMut() -> c_long) -> SysResult<usize> {
    loop {
        match check(f()) {
            Err(libc::EINTR) => continue,
            r => return r,
        }
    }
}

/// `pread64(2)`.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn pread(fd: c_int, buf: *mut u8, len: usize, off: u64) -> SysResult<usize> {
    // SAFETY: the caller guarantees `buf`/`len`; the kernel checks the rest.
    retry(|| unsafe { libc::syscall(libc::SYS_pread64, fd, buf as *mut c_void, len, off as off_t) })
}

/// `pwrite64(2)`.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub unsafe fn pwrite(fd: c_int, buf: *const u8, len: usize, off: u64) -> SysResult<usize> {
    // SAFETY: the caller guarantees `buf`/`len`.
    retry(|| unsafe { libc::syscall(libc::SYS_pwrite64, fd, buf as *const c_void, len, off as off_t) })
}

/// `pwritev2(2)` with one buffer; `off == -1` means the current file position.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub unsafe fn pwritev2(fd: c_int, buf: *const u8, len: usize, off: i64, flags: c_int) -> SysResult<usize> {
    let iov = libc::iovec { iov_base: buf as *mut c_void, iov_len: len };
    // The raw syscall takes the offset split in two longs (low, high); on 64-bit the
    // high half is ignored by the kernel.
    // SAFETY: `iov` lives across the call and describes memory the caller vouches for.
    retry(|| unsafe { libc::syscall(libc::SYS_pwritev2, fd, &iov as *const libc::iovec, 1, off, 0 as c_long, flags) })
}

/// `preadv(2)`.
///
/// # Safety
/// Every iovec must describe memory valid for writes of its length.
pub unsafe fn preadv(fd: c_int, iov: &[libc::iovec], off: u64) -> SysResult<usize> {
    // SAFETY: the caller vouches for the iovecs; the slice lives across the call.
    retry(|| unsafe {
        libc::syscall(libc::SYS_preadv, fd, iov.as_ptr(), iov.len() as c_int, off as off_t, 0 as c_long)
    })
}

/// `preadv2(2)` with one buffer.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn preadv2(fd: c_int, buf: *mut u8, len: usize, off: i64, flags: c_int) -> SysResult<usize> {
    let iov = libc::iovec { iov_base: buf as *mut c_void, iov_len: len };
    // SAFETY: as for `pwritev2`.
    retry(|| unsafe { libc::syscall(libc::SYS_preadv2, fd, &iov as *const libc::iovec, 1, off, 0 as c_long, flags) })
}

/// `read(2)` at the file position.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn read(fd: c_int, buf: *mut u8, len: usize) -> SysResult<usize> {
    // SAFETY: the caller guarantees `buf`/`len`.
    check(unsafe { libc::syscall(libc::SYS_read, fd, buf as *mut c_void, len) })
}

/// `write(2)` at the file position.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub unsafe fn write(fd: c_int, buf: *const u8, len: usize) -> SysResult<usize> {
    // SAFETY: the caller guarantees `buf`/`len`.
    check(unsafe { libc::syscall(libc::SYS_write, fd, buf as *const c_void, len) })
}

/// `lseek(2)`; returns the new offset.
pub fn lseek(fd: c_int, off: i64, whence: c_int) -> SysResult<u64> {
    // SAFETY: lseek has no memory arguments.
    check(unsafe { libc::syscall(libc::SYS_lseek, fd, off, whence) }).map(|v| v as u64)
}

/// `fcntl(2)` with an integer argument.
pub fn fcntl(fd: c_int, cmd: c_int, arg: c_long) -> SysResult<c_int> {
    // SAFETY: only integer-argument commands are passed here.
    check(unsafe { libc::syscall(libc::SYS_fcntl, fd, cmd, arg) }).map(|v| v as c_int)
}

/// Adds (`on`) or clears O_DIRECT on the open file description of `fd`, keeping its other
/// status flags. EINVAL when adding means the filesystem refuses O_DIRECT.
pub fn set_o_direct(fd: c_int, on: bool) -> SysResult<()> {
    let fl = fcntl(fd, libc::F_GETFL, 0)?;
    let fl = if on { fl | libc::O_DIRECT } else { fl & !libc::O_DIRECT };
    fcntl(fd, libc::F_SETFL, fl as c_long).map(|_| ())
}

/// `statx(fd, "", AT_EMPTY_PATH, mask)`.
pub fn statx_fd(fd: c_int, mask: u32) -> SysResult<libc::statx> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid NUL-terminated empty string and `sx` is writable.
    check(unsafe {
        libc::syscall(
            libc::SYS_statx,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_SYNC_AS_STAT,
            mask,
            &mut sx as *mut libc::statx,
        )
    })?;
    Ok(sx)
}

/// `fstat(2)`.
pub fn fstat(fd: c_int) -> SysResult<libc::stat> {
    // SAFETY: stat is plain old data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable for the kernel.
    check(unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) })?;
    Ok(st)
}

/// The (st_dev, st_ino) of an open file, as `fstat` reports them, without asking for its
/// timestamps: a query of ctime makes the kernel (Linux 6.13+ multigrain timestamps) give the
/// next write a fine-grained ctime, which dirties the inode on every write of a loop.
pub fn ident(fd: c_int) -> SysResult<(u64, u64)> {
    let sx = statx_fd(fd, libc::STATX_INO)?;
    Ok((libc::makedev(sx.stx_dev_major, sx.stx_dev_minor), sx.stx_ino))
}

/// `openat(2)` of a NUL-terminated path.
pub fn openat(dirfd: c_int, path: &std::ffi::CStr, flags: c_int, mode: libc::mode_t) -> SysResult<c_int> {
    // SAFETY: `path` is NUL-terminated for the duration of the call.
    retry(|| unsafe { libc::syscall(libc::SYS_openat, dirfd, path.as_ptr(), flags, mode as c_long) })
        .map(|v| v as c_int)
}

/// `dup3(2)`.
pub fn dup3(old: c_int, new: c_int, flags: c_int) -> SysResult<c_int> {
    // SAFETY: no memory arguments.
    retry(|| unsafe { libc::syscall(libc::SYS_dup3, old, new, flags) }).map(|r| r as c_int)
}

/// `close_range(2)`.
pub fn close_range(first: u32, last: u32, flags: u32) -> SysResult<()> {
    // SAFETY: no memory arguments.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) }).map(|_| ())
}

/// `close(2)`; EINTR is not retried (Linux releases the fd anyway).
pub fn close(fd: c_int) -> SysResult<()> {
    // SAFETY: closing a descriptor the engine owns.
    check(unsafe { libc::syscall(libc::SYS_close, fd) }).map(|_| ())
}

/// `fdatasync(2)`.
pub fn fdatasync(fd: c_int) -> SysResult<()> {
    // SAFETY: no memory arguments.
    retry(|| unsafe { libc::syscall(libc::SYS_fdatasync, fd) }).map(|_| ())
}

/// `fsync(2)`.
pub fn fsync(fd: c_int) -> SysResult<()> {
    // SAFETY: no memory arguments.
    retry(|| unsafe { libc::syscall(libc::SYS_fsync, fd) }).map(|_| ())
}

/// `ftruncate(2)`.
pub fn ftruncate(fd: c_int, len: u64) -> SysResult<()> {
    // SAFETY: no memory arguments.
    retry(|| unsafe { libc::syscall(libc::SYS_ftruncate, fd, len as i64) }).map(|_| ())
}

/// `renameat(2)` of two NUL-terminated paths relative to the working directory.
pub fn rename(from: &std::ffi::CStr, to: &std::ffi::CStr) -> SysResult<()> {
    // SAFETY: both paths are NUL-terminated for the duration of the call.
    check(unsafe { libc::syscall(libc::SYS_renameat, libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr()) })
        .map(|_| ())
}

/// `readlinkat(2)` of a NUL-terminated path into `buf`: the length of the target.
pub fn readlink(path: &std::ffi::CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: the path is NUL-terminated and `buf` is writable for its whole length.
    check(unsafe { libc::syscall(libc::SYS_readlinkat, libc::AT_FDCWD, path.as_ptr(), buf.as_mut_ptr(), buf.len()) })
        .map(|n| n.min(buf.len()))
}

/// `mkdirat(2)` of a NUL-terminated path relative to the working directory.
pub fn mkdir(path: &std::ffi::CStr, mode: libc::mode_t) -> SysResult<()> {
    // SAFETY: the path is NUL-terminated for the duration of the call.
    check(unsafe { libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, path.as_ptr(), mode as c_long) }).map(|_| ())
}

/// `fchmodat(2)` of a NUL-terminated path relative to the working directory.
pub fn chmod(path: &std::ffi::CStr, mode: libc::mode_t) -> SysResult<()> {
    // SAFETY: the path is NUL-terminated for the duration of the call.
    check(unsafe { libc::syscall(libc::SYS_fchmodat, libc::AT_FDCWD, path.as_ptr(), mode as c_long) }).map(|_| ())
}

/// `unlinkat(2)` of a NUL-terminated name in directory `dirfd`.
pub fn unlinkat(dirfd: c_int, name: &std::ffi::CStr) -> SysResult<()> {
    // SAFETY: the name is NUL-terminated for the duration of the call.
    check(unsafe { libc::syscall(libc::SYS_unlinkat, dirfd, name.as_ptr(), 0 as c_long) }).map(|_| ())
}

/// Calls `f` with the name of each entry of the open directory `dirfd` (`getdents64(2)`),
/// `.` and `..` included.
pub fn for_each_dirent(dirfd: c_int, mut f: impl FnMut(&[u8])) -> SysResult<()> {
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = retry(|| unsafe { libc::syscall(libc::SYS_getdents64, dirfd, buf.as_mut_ptr(), buf.len()) })?;
        if n == 0 {
            return Ok(());
        }
        let mut at = 0;
        // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), NUL-terminated name.
        while at + 19 <= n {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen == 0 || at + reclen > n {
                return Err(libc::EIO);
            }
            let name = &buf[at + 19..at + reclen];
            f(&name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())]);
            at += reclen;
        }
    }
}

/// `getsid(0)`: the session of this process (0 when its leader is in another PID namespace).
pub fn getsid() -> i32 {
    // SAFETY: no memory arguments.
    unsafe { libc::syscall(libc::SYS_getsid, 0 as c_long) as i32 }
}

/// The parent process (`getppid(2)`).
pub fn getppid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_getppid) as i32 }
}

/// Fields of `/proc/<pid>/stat` (`pid` 0: this process): the session and the start time in
/// clock ticks after boot; `None` if there is no such process.
pub fn proc_stat(pid: i32) -> Option<(i32, u64)> {
    let mut path = [0u8; 32];
    let path = if pid == 0 {
        c"/proc/self/stat"
    } else {
        let mut w = &mut path[..];
        std::io::Write::write_fmt(&mut w, format_args!("/proc/{pid}/stat\0")).ok()?;
        std::ffi::CStr::from_bytes_until_nul(&path).ok()?
    };
    let mut buf = [0u8; 1024];
    let n = read_small_file(path, &mut buf).ok()?;
    // The command name (field 2) may contain spaces and parentheses: the fields after it
    // start at the last ')'.
    let rest = &buf[buf[..n].iter().rposition(|&b| b == b')')? + 1..n];
    let mut fields = rest.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty());
    let field = |f: Option<&[u8]>| std::str::from_utf8(f?).ok()?.parse::<u64>().ok();
    // After ')': state (3), ppid (4), pgrp (5), session (6), ... starttime (22).
    let session = field(fields.nth(3))?;
    let start = field(fields.nth(15))?;
    Some((session as i32, start))
}

/// `futex(FUTEX_WAIT)` on a process-private word: sleeps while `*word == expected`, until
/// woken (spurious wake-ups included: callers loop).
pub fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32) {
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; a null timeout
    // means wait until woken.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Starts a library thread named `name` running `f` with every signal blocked: it inherits
/// the full mask, so no signal of the program is ever delivered to it. False if it could not
/// be started.
pub fn spawn_without_signals(name: &str, f: fn()) -> bool {
    // SAFETY: sigset_t is plain data; the masks are valid for the calls.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let r = std::thread::Builder::new().name(name.into()).stack_size(256 << 10).spawn(f);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r.is_ok()
    }
}

/// `futex(FUTEX_WAKE)` of one waiter on a process-private word.
pub fn futex_wake_one(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: as for `futex_wait`.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
    }
}

/// The soft and hard `RLIMIT_NOFILE`.
pub fn nofile_limit() -> SysResult<libc::rlimit> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is writable; a null new limit only reads.
    check(unsafe {
        libc::syscall(libc::SYS_prlimit64, 0, libc::RLIMIT_NOFILE, std::ptr::null::<libc::rlimit>(), &mut r)
    })?;
    Ok(r)
}

/// Sets `RLIMIT_NOFILE`.
pub fn set_nofile_limit(r: &libc::rlimit) -> SysResult<()> {
    // SAFETY: `r` is a valid limit; a null old limit is not written.
    check(unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            libc::RLIMIT_NOFILE,
            r as *const libc::rlimit,
            std::ptr::null_mut::<libc::rlimit>(),
        )
    })
    .map(|_| ())
}

/// The soft `RLIMIT_FSIZE` (`RLIM_INFINITY` when there is none).
pub fn fsize_limit() -> SysResult<u64> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is writable; a null new limit only reads.
    check(unsafe {
        libc::syscall(libc::SYS_prlimit64, 0, libc::RLIMIT_FSIZE, std::ptr::null::<libc::rlimit>(), &mut r)
    })?;
    Ok(r.rlim_cur)
}

/// `process_vm_readv(2)` (`write == false`) or `process_vm_writev(2)` of this process: one
/// local and one remote range, copied by the kernel, which reports how far it got.
///
/// # Safety
/// `local` must be valid for `len` bytes (writes when reading, reads when writing); `remote`
/// may be any address.
pub unsafe fn process_vm_rw(write: bool, local: *mut u8, remote: usize, len: usize) -> SysResult<usize> {
    let l = libc::iovec { iov_base: local as *mut c_void, iov_len: len };
    let r = libc::iovec { iov_base: remote as *mut c_void, iov_len: len };
    let nr = if write { libc::SYS_process_vm_writev } else { libc::SYS_process_vm_readv };
    // SAFETY: both iovecs live across the call; the local one is the caller's, the remote
    // one is checked by the kernel.
    check(unsafe {
        libc::syscall(
            nr,
            own_pid() as c_long,
            &l as *const libc::iovec,
            1 as libc::c_ulong,
            &r as *const libc::iovec,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
}

/// `cachestat(2)` (Linux 6.5+) of the whole file behind `fd`: pages cached and, of those,
/// dirty or under writeback.
pub fn cachestat(fd: c_int) -> SysResult<(u64, u64)> {
    cachestat_range(fd, 0, 0)
}

/// `cachestat(2)` of `len` bytes at `off` (`len` 0: to the end of the file): pages cached
/// and, of those, dirty or under writeback. EPERM (Linux 6.14+) where the caller may
/// neither write the file nor owns it.
pub fn cachestat_range(fd: c_int, off: u64, len: u64) -> SysResult<(u64, u64)> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    let range = Range { off, len };
    let mut st = Stat::default();
    // SAFETY: both structures match the kernel's and outlive the call.
    check(unsafe { libc::syscall(451, fd, &range as *const Range, &mut st as *mut Stat, 0) })?;
    Ok((st.cache, st.dirty + st.writeback))
}

/// `madvise(2)` of `len` bytes at `addr`; the advice changes no byte a program can read
/// only for the values the caller picks (MADV_PAGEOUT, MADV_COLD, MADV_WILLNEED, and
/// MADV_DONTNEED on pages that hold the file's own data).
pub fn madvise(addr: usize, len: usize, advice: c_int) -> SysResult<()> {
    // SAFETY: no memory is read or written by the call itself; the caller picks advice that
    // is safe for the range.
    check(unsafe { libc::syscall(libc::SYS_madvise, addr as c_long, len as c_long, advice as c_long) }).map(|_| ())
}

/// `mmap(2)` as a raw system call, which the library's own mmap hook never sees. Every
/// argument goes as a full register: a variadic `int` would leave its upper half undefined.
///
/// # Safety
/// With MAP_FIXED, the range must be memory the caller owns and nothing else uses.
pub unsafe fn mmap(addr: usize, len: usize, prot: c_int, flags: c_int, fd: c_int, off: u64) -> SysResult<usize> {
    // SAFETY: the caller vouches for the range; a new mapping touches no other memory.
    check(unsafe {
        libc::syscall(
            libc::SYS_mmap,
            addr as c_long,
            len as c_long,
            prot as c_long,
            flags as c_long,
            fd as c_long,
            off as c_long,
        )
    })
}

/// `munmap(2)` as a raw system call.
///
/// # Safety
/// The range must be a mapping of the caller's that nothing uses any more.
pub unsafe fn munmap(addr: usize, len: usize) {
    // SAFETY: as the caller vouches.
    unsafe { libc::syscall(libc::SYS_munmap, addr as c_long, len as c_long) };
}

/// `mincore(2)` of the `len` bytes at the page-aligned `addr`.
///
/// # Safety
/// `out` must be writable for one byte per page of the range.
pub unsafe fn mincore(addr: usize, len: usize, out: &mut [u8]) -> SysResult<()> {
    // SAFETY: the caller guarantees `out` covers the range.
    retry(|| unsafe { libc::syscall(libc::SYS_mincore, addr, len, out.as_mut_ptr()) }).map(|_| ())
}

/// `posix_fadvise(2)`.
pub fn fadvise(fd: c_int, off: u64, len: u64, advice: c_int) -> SysResult<()> {
    // SAFETY: no memory arguments.
    check(unsafe { libc::syscall(libc::SYS_fadvise64, fd, off as i64, len as i64, advice) }).map(|_| ())
}

/// `sync_file_range(2)`.
pub fn sync_file_range(fd: c_int, off: u64, len: u64, flags: u32) -> SysResult<()> {
    // SAFETY: no memory arguments.
    retry(|| unsafe { libc::syscall(libc::SYS_sync_file_range, fd, off as i64, len as i64, flags) }).map(|_| ())
}

/// `readlink("/proc/self/fd/<fd>")` into `out`; returns the length.
pub fn fd_path(fd: c_int, out: &mut [u8]) -> SysResult<usize> {
    let mut link = [0u8; 32];
    let n = proc_fd_link(fd, &mut link);
    // SAFETY: `link` is NUL-terminated at `n`; `out` is writable for its length.
    let r = check(unsafe {
        libc::syscall(libc::SYS_readlinkat, libc::AT_FDCWD, link.as_ptr(), out.as_mut_ptr(), out.len())
    })?;
    debug_assert!(n < link.len());
    if r >= out.len() {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(r)
}

/// Writes `/proc/self/fd/<fd>\0` into `buf` and returns the length without the NUL.
pub fn proc_fd_link(fd: c_int, buf: &mut [u8; 32]) -> usize {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 12];
    let mut n = fd.unsigned_abs();
    let mut d = 0;
    loop {
        digits[d] = b'0' + (n % 10) as u8;
        d += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut len = PREFIX.len();
    for i in (0..d).rev() {
        buf[len] = digits[i];
        len += 1;
    }
    buf[len] = 0;
    len
}

/// `getcwd(2)` into `out`; returns the length (without NUL).
pub fn getcwd(out: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `out` is writable for its length.
    let r = check(unsafe { libc::syscall(libc::SYS_getcwd, out.as_mut_ptr(), out.len()) })?;
    // The kernel returns the length including the NUL.
    Ok(r.saturating_sub(1))
}

/// `write(2)` of all of `buf`, used for the shim's own log lines.
pub fn write_all(fd: c_int, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of its length.
        let n = retry(|| unsafe { libc::syscall(libc::SYS_write, fd, buf.as_ptr(), buf.len()) })?;
        if n == 0 {
            return Err(libc::EIO);
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// The calling thread's id, for lock diagnostics and fork detection.
pub fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The process id straight from the kernel (not glibc's cached value, which a raw
/// `clone` child could get wrong).
pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_getpid) as i32 }
}

/// A page the kernel zeroes in every child that gets an address space of its own
/// (MADV_WIPEONFORK), holding this process's id once asked: null until then, or for good if
/// the page could not be made.
static PID_PAGE: AtomicPtr<AtomicI32> = AtomicPtr::new(std::ptr::null_mut());
/// The page could not be made: every call asks the kernel.
static PID_UNCACHED: AtomicBool = AtomicBool::new(false);

/// The process id for the engine's own `process_vm_*` calls, without a system call each: a
/// copy into the program's memory per served read made getpid one call in four of a 4 KiB
/// read loop. The value sits in a MADV_WIPEONFORK page, so a child of any kind of fork
/// (fork, `_Fork`, a raw `clone` without CLONE_VM: none of them runs the engine's atfork
/// handlers for certain) reads 0 there and asks the kernel, and never names its parent. A
/// CLONE_VM child (vfork) shares the parent's memory: the parent's id names the same memory.
pub fn own_pid() -> i32 {
    let page = PID_PAGE.load(Ordering::Acquire);
    if !page.is_null() {
        // SAFETY: a published page stays mapped for the life of the process (never unmapped).
        let pid = unsafe { &*page }.load(Ordering::Relaxed);
        if pid != 0 {
            return pid;
        }
    }
    let pid = getpid();
    let page = if page.is_null() { pid_page() } else { page };
    if !page.is_null() {
        // SAFETY: as above.
        unsafe { &*page }.store(pid, Ordering::Relaxed);
    }
    pid
}

/// The page of [`own_pid`], made and published by the first caller (null if it cannot be).
fn pid_page() -> *mut AtomicI32 {
    if PID_UNCACHED.load(Ordering::Relaxed) {
        return std::ptr::null_mut();
    }
    // The kernel rounds the length up to its page size for mmap, madvise and munmap alike.
    let len = 4096usize;
    let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: a fresh private anonymous mapping; no memory of Rust's is involved.
    let Ok(p) = (unsafe { mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, anon, -1, 0) }) else {
        PID_UNCACHED.store(true, Ordering::Relaxed);
        return std::ptr::null_mut();
    };
    let page = p as *mut AtomicI32;
    if madvise(p, len, libc::MADV_WIPEONFORK).is_ok() {
        match PID_PAGE.compare_exchange(std::ptr::null_mut(), page, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return page,
            Err(other) => {
                // SAFETY: our own mapping, never published.
                unsafe { munmap(p, len) };
                return other;
            }
        }
    }
    // Without the wipe a child would read its parent's id: never cache.
    PID_UNCACHED.store(true, Ordering::Relaxed);
    // SAFETY: our own mapping, never published.
    unsafe { munmap(p, len) };
    std::ptr::null_mut()
}

/// Reads up to `buf.len()` bytes of a small file (sysfs, procfs) with raw calls.
pub fn read_small_file(path: &std::ffi::CStr, buf: &mut [u8]) -> SysResult<usize> {
    let fd = openat(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_CLOEXEC, 0)?;
    // SAFETY: `buf` is writable for its length.
    let r = retry(|| unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) });
    let _ = close(fd);
    r
}

/// `ioctl(fd, req, &mut out)` for requests that write one `c_int`.
pub fn ioctl_int(fd: c_int, req: libc::c_ulong) -> SysResult<c_int> {
    let mut out: c_int = 0;
    // SAFETY: `out` is a writable int, which is what the requests used here fill in.
    check(unsafe { libc::syscall(libc::SYS_ioctl, fd, req, &mut out as *mut c_int) })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_each_process_own_after_any_fork() {
        let parent = getpid();
        assert_eq!(own_pid(), parent);
        assert_eq!(own_pid(), parent, "the cached id");
        // A raw clone as fork: no atfork handler runs, the child must still get its own id.
        // SAFETY: the child only makes system calls and atomic loads/stores, then exits.
        let child = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as c_long, 0, 0, 0, 0) };
        assert!(child >= 0);
        if child == 0 {
            let ok = own_pid() == getpid() && own_pid() != parent;
            // SAFETY: ends the child without running anything of the test harness.
            unsafe { libc::syscall(libc::SYS_exit_group, if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just made.
        assert_eq!(unsafe { libc::waitpid(child as i32, &mut status, 0) }, child as i32);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child named another process");
        assert_eq!(own_pid(), parent);
    }

    #[test]
    fn proc_fd_link_formats_numbers() {
        let mut b = [0u8; 32];
        let n = proc_fd_link(0, &mut b);
        assert_eq!(&b[..n], b"/proc/self/fd/0");
        let n = proc_fd_link(1234567, &mut b);
        assert_eq!(&b[..n], b"/proc/self/fd/1234567");
        assert_eq!(b[n], 0);
    }

    #[test]
    fn pread_pwrite_roundtrip_and_errno() {
        let dir = std::env::temp_dir().join(format!("s3dlio-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let f = std::fs::File::create(&p).unwrap();
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        // SAFETY: buffers are valid for the given lengths.
        unsafe {
            assert_eq!(pwrite(fd, b"hello".as_ptr(), 5, 3), Ok(5));
            let mut b = [0u8; 8];
            // the file was created write-only
            assert_eq!(pread(fd, b.as_mut_ptr(), 8, 0), Err(libc::EBADF));
        }
        assert_eq!(lseek(-1, 0, libc::SEEK_CUR), Err(libc::EBADF));
        let mut path = [0u8; 4096];
        let n = fd_path(fd, &mut path).unwrap();
        assert_eq!(&path[..n], p.as_os_str().as_encoded_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ident_is_what_fstat_reports() {
        use std::os::fd::AsRawFd;
        for path in ["/proc/self/exe", "/dev/null", "/"] {
            let f = std::fs::File::open(path).unwrap();
            let st = fstat(f.as_raw_fd()).unwrap();
            assert_eq!(ident(f.as_raw_fd()), Ok((st.st_dev, st.st_ino)), "{path}");
        }
        assert_eq!(ident(-1), Err(libc::EBADF));
    }
}
