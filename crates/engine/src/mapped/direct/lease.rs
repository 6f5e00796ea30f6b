//! The read lease that keeps a direct mapping coherent: the kernel grants one only while no
//! process has the file open for writing, and an open for writing (or a truncate) by any
//! process, this one included, then waits until the holder gives it up. The handler polls it
//! (`F_GETLEASE` names the lease being broken `F_UNLCK`) and serves the file's mappings from
//! the page cache again before giving it up, so no write lands while a direct mapping of the
//! file still shows the bytes from before it.

use crate::sys;

/// `F_SETSIG` of `<fcntl.h>` (Linux).
const F_SETSIG: libc::c_int = 10;

/// Asks for a read lease on `fd` (the library's own read-only descriptor). No signal reaches
/// the program when it is broken: the owner is cleared right after (a break in between sends
/// SIGURG, which is ignored unless the program handles it), and the handler polls instead.
pub fn take(fd: i32) -> bool {
    if sys::fcntl(fd, F_SETSIG, libc::SIGURG as libc::c_long).is_err() {
        return false;
    }
    if sys::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK as libc::c_long).is_err() {
        return false;
    }
    let _ = sys::fcntl(fd, libc::F_SETOWN, 0);
    true
}

/// True while the lease on `fd` is held and no one waits for it to be given up.
pub fn held(fd: i32) -> bool {
    sys::fcntl(fd, libc::F_GETLEASE, 0) == Ok(libc::F_RDLCK)
}

/// Gives the lease up: a writer waiting for it proceeds.
pub fn give_up(fd: i32) {
    let _ = sys::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK as libc::c_long);
}
