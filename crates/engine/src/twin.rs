//! The private O_DIRECT twin of a matched file: a second description of the same file,
//! opened through `/proc/self/fd/N` and kept at the library's own numbers (`libfd`), that
//! carries the engine's direct I/O while the program's description stays exactly as the
//! program opened it (no O_DIRECT, no O_SYNC added): I/O the library cannot see (Linux AIO,
//! io_uring, raw system calls, another process sharing the description) keeps working on it.

use crate::libfd;
use crate::sys::{self, SysResult};

/// Opens the twin of the file behind the program's `fd`: its access mode, O_APPEND if
/// `append`, the program's O_SYNC/O_DSYNC plus `extra` (S3DLIO_DIRECT_SYNC's O_SYNC),
/// close-on-exec, then O_DIRECT with F_SETFL (never at open: on a filesystem without
/// O_DIRECT that would fail after the open). Errors: ESTALE when the reopened file is not
/// `ident`, EINVAL when the filesystem refuses O_DIRECT, EMFILE when no library number is
/// left, others from the reopen (a mode that forbids it, no /proc).
pub fn open(fd: i32, accmode: i32, append: bool, extra: i32, ident: (u64, u64)) -> SysResult<i32> {
    let t = reopen(fd, accmode, append, extra, ident)?;
    if let Err(e) = sys::set_o_direct(t, true) {
        let _ = sys::close(t);
        return Err(e);
    }
    libfd::place(t)
}

/// Opens the file behind `fd` again, through `/proc/self/fd/N`, as a new buffered
/// description (see [`open`] for the flags). Fails with ESTALE unless it is the file `ident`.
pub fn reopen(fd: i32, accmode: i32, append: bool, extra: i32, ident: (u64, u64)) -> SysResult<i32> {
    let mut link = [0u8; 32];
    let n = sys::proc_fd_link(fd, &mut link);
    let path = std::ffi::CStr::from_bytes_with_nul(&link[..=n]).map_err(|_| libc::EINVAL)?;
    let sync = sys::fcntl(fd, libc::F_GETFL, 0).map_or(0, |fl| fl & (libc::O_SYNC | libc::O_DSYNC));
    let flags = accmode | sync | extra | libc::O_CLOEXEC | libc::O_LARGEFILE | if append { libc::O_APPEND } else { 0 };
    sys::openat(libc::AT_FDCWD, path, flags, 0).and_then(|c| {
        if is_file(c, ident) {
            Ok(c)
        } else {
            let _ = sys::close(c);
            Err(libc::ESTALE)
        }
    })
}

/// Sets or clears O_APPEND on one of the engine's own descriptors.
pub fn set_append(fd: i32, append: bool) {
    if let Ok(fl) = sys::fcntl(fd, libc::F_GETFL, 0) {
        let fl = if append { fl | libc::O_APPEND } else { fl & !libc::O_APPEND };
        let _ = sys::fcntl(fd, libc::F_SETFL, fl as libc::c_long);
    }
}

/// True if `fd` is open on the file `ident` names.
pub fn is_file(fd: i32, ident: (u64, u64)) -> bool {
    sys::ident(fd).is_ok_and(|id| id == ident)
}
