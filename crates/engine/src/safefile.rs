//! Files created and reopened in directories other users may write to (`/tmp`, a shared
//! statistics directory): created with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0600 (0660 in a
//! set-group-ID directory others cannot write), so a link or file someone planted is never
//! followed nor reused; reopened with `O_NOFOLLOW` and used only if a regular file of this
//! user with one link. Raw system calls only (`sys`), so the shim's hooks are not entered.

use crate::sys;
use std::ffi::{CStr, CString};
use std::io::Write as _;

/// Why a file was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A system call failed with this errno (`ELOOP`: the name is a symbolic link).
    Errno(i32),
    /// Not a regular file (or, for appending, a character device).
    NotRegular,
    /// Owned by another user.
    NotOwned(u32),
    /// More than one name links to it.
    Linked,
    /// Contents that are not what this library writes.
    Corrupt,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Errno(libc::ELOOP) => f.write_str("it is a symbolic link, which is never followed"),
            Refusal::Errno(e) => write!(f, "errno {e}"),
            Refusal::NotRegular => f.write_str("it is not a regular file"),
            Refusal::NotOwned(uid) => write!(f, "it belongs to uid {uid}, not to this user"),
            Refusal::Linked => f.write_str("it has more than one link"),
            Refusal::Corrupt => f.write_str("it is not a file this library wrote"),
        }
    }
}

pub fn euid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() }
}

/// The mode for a new file in the directory of `path`: 0600, or 0660 in a set-group-ID
/// directory that others cannot write (a group's shared directory).
pub fn new_file_mode(path: &[u8]) -> libc::mode_t {
    let dir = match path.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/".to_vec(),
        Some(i) => path[..i].to_vec(),
        None => b".".to_vec(),
    };
    let Ok(dir) = CString::new(dir) else { return 0o600 };
    // SAFETY: stat is plain old data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is NUL-terminated and `st` writable.
    let r = unsafe {
        libc::syscall(
            libc::SYS_newfstatat,
            libc::AT_FDCWD as libc::c_long,
            dir.as_ptr(),
            &mut st as *mut libc::stat,
            0 as libc::c_long,
        )
    };
    if r == 0 && st.st_mode & libc::S_ISGID != 0 && st.st_mode & 0o002 == 0 {
        0o660
    } else {
        0o600
    }
}

/// Creates `path`, which must not exist (a symbolic link there is not followed).
pub fn create_new(path: &CStr, flags: i32) -> Result<i32, Refusal> {
    let mode = new_file_mode(path.to_bytes());
    let flags = flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    sys::openat(libc::AT_FDCWD, path, flags, mode).map_err(Refusal::Errno)
}

/// Checks that an opened file is one this user may trust: a regular file of this user
/// with one link (`char_ok`: or a character device, such as a terminal for the log).
pub fn check_ours(fd: i32, char_ok: bool) -> Result<libc::stat, Refusal> {
    let st = sys::fstat(fd).map_err(Refusal::Errno)?;
    let kind = st.st_mode & libc::S_IFMT;
    if char_ok && kind == libc::S_IFCHR {
        return Ok(st);
    }
    if kind != libc::S_IFREG {
        return Err(Refusal::NotRegular);
    }
    if st.st_uid != euid() {
        return Err(Refusal::NotOwned(st.st_uid));
    }
    if st.st_nlink != 1 {
        return Err(Refusal::Linked);
    }
    Ok(st)
}

/// Opens `path` for appending, creating it if it does not exist: never through a symbolic
/// link, and only a regular file of this user with one link (or a character device).
pub fn open_append(path: &CStr) -> Result<i32, Refusal> {
    for _ in 0..4 {
        let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        match sys::openat(libc::AT_FDCWD, path, flags, 0) {
            Ok(fd) => {
                return match check_ours(fd, true) {
                    Ok(_) => Ok(fd),
                    Err(e) => {
                        let _ = sys::close(fd);
                        Err(e)
                    }
                }
            }
            Err(libc::ENOENT) => match create_new(path, libc::O_WRONLY | libc::O_APPEND) {
                Err(Refusal::Errno(libc::EEXIST)) => continue, // made meanwhile: open it
                r => return r,
            },
            Err(e) => return Err(Refusal::Errno(e)),
        }
    }
    Err(Refusal::Errno(libc::EEXIST))
}

/// Reads a small file of this user (not through a symbolic link) into `buf`: its length.
pub fn read_ours(path: &CStr, buf: &mut [u8]) -> Result<usize, Refusal> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    let fd = sys::openat(libc::AT_FDCWD, path, flags, 0).map_err(Refusal::Errno)?;
    let r = check_ours(fd, false).and_then(|st| {
        if st.st_size as usize > buf.len() {
            return Err(Refusal::Corrupt);
        }
        let mut got = 0;
        while got < buf.len() {
            // SAFETY: `buf[got..]` is writable.
            match unsafe { sys::pread(fd, buf[got..].as_mut_ptr(), buf.len() - got, got as u64) } {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(Refusal::Errno(e)),
            }
        }
        Ok(got)
    });
    let _ = sys::close(fd);
    r
}

/// Writes `data` to `path` atomically: a new temporary file beside it (`O_EXCL`, never a
/// name someone else made), then rename (which replaces a link at `path`, never its target).
pub fn write_atomically(path: &[u8], data: &[u8]) -> Result<(), Refusal> {
    let base = {
        let mut t = path.to_vec();
        let _ = write!(t, ".tmp{}", sys::gettid());
        t
    };
    for attempt in 0..16u32 {
        let mut tmp = base.clone();
        if attempt > 0 {
            let _ = write!(tmp, ".{attempt}");
        }
        let ctmp = CString::new(tmp).map_err(|_| Refusal::Errno(libc::EINVAL))?;
        let fd = match create_new(&ctmp, libc::O_WRONLY) {
            Err(Refusal::Errno(libc::EEXIST)) => continue,
            r => r?,
        };
        let w = sys::write_all(fd, data);
        let _ = sys::close(fd);
        let cpath = CString::new(path).map_err(|_| Refusal::Errno(libc::EINVAL))?;
        if let Err(e) = w.and_then(|_| sys::rename(&ctmp, &cpath)) {
            unlink(&ctmp);
            return Err(Refusal::Errno(e));
        }
        return Ok(());
    }
    Err(Refusal::Errno(libc::EEXIST))
}

pub fn unlink(path: &CStr) {
    // SAFETY: `path` is NUL-terminated.
    unsafe { libc::syscall(libc::SYS_unlinkat, libc::AT_FDCWD as libc::c_long, path.as_ptr(), 0 as libc::c_long) };
}
