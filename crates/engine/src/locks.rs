//! Whether this process holds POSIX record locks (fcntl F_SETLK) on a file: closing any
//! descriptor of a file releases them all, so the library closes its own descriptor of a
//! file early (a twin given up, or closed at exec) only where none are held.

use crate::sys;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once the process takes a POSIX record lock (the fcntl hook sees every F_SETLK,
/// F_SETLKW and lockf): until then no lock can be held and `/proc/locks` need not be read.
static USED: AtomicBool = AtomicBool::new(false);

/// The program is taking a POSIX record lock.
pub fn note_lock_taken() {
    USED.store(true, Ordering::Relaxed);
}

/// False when the process has certainly never held a POSIX record lock.
pub fn may_hold_any() -> bool {
    USED.load(Ordering::Relaxed)
}

/// In a fork child: record locks are not inherited.
pub fn reset_after_fork() {
    USED.store(false, Ordering::Relaxed);
}

/// True if `/proc/locks` shows a POSIX lock of this process on the file `(dev, ino)`; also
/// true when it cannot be read (then the caller must assume locks).
pub fn holds_posix_locks((dev, ino): (u64, u64)) -> bool {
    let Ok(text) = std::fs::read("/proc/locks") else { return true };
    let pid = sys::getpid().to_string();
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    String::from_utf8_lossy(&text).lines().any(|l| lock_line_matches(l, &pid, maj, min, ino))
}

/// One line of /proc/locks: `1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF` (a waiter's
/// line has `->` after the number); the device is `major:minor` in hex, the inode decimal.
fn lock_line_matches(line: &str, pid: &str, maj: u32, min: u32, ino: u64) -> bool {
    let mut f = line.split_whitespace().filter(|w| *w != "->");
    let (_, kind, _, _, p, id) = (f.next(), f.next(), f.next(), f.next(), f.next(), f.next());
    if kind != Some("POSIX") || p != Some(pid) {
        return false;
    }
    let Some(id) = id else { return false };
    let mut parts = id.split(':');
    let (a, b, c) = (parts.next(), parts.next(), parts.next());
    let hex = |s: Option<&str>| s.and_then(|s| u32::from_str_radix(s, 16).ok());
    hex(a) == Some(maj) && hex(b) == Some(min) && c.and_then(|s| s.parse::<u64>().ok()) == Some(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_proc_locks() {
        assert!(lock_line_matches("1: POSIX  ADVISORY  WRITE 42 08:01:5678 0 EOF", "42", 8, 1, 5678));
        assert!(lock_line_matches("1: -> POSIX  ADVISORY  WRITE 42 fd:1f:9 0 EOF", "42", 0xfd, 0x1f, 9));
        assert!(!lock_line_matches("1: POSIX  ADVISORY  WRITE 43 08:01:5678 0 EOF", "42", 8, 1, 5678));
        assert!(!lock_line_matches("1: FLOCK  ADVISORY  WRITE 42 08:01:5678 0 EOF", "42", 8, 1, 5678));
        assert!(!lock_line_matches("1: OFDLCK ADVISORY  READ  -1 08:01:5678 0 EOF", "42", 8, 1, 5678));
        assert!(!lock_line_matches("1: POSIX  ADVISORY  WRITE 42 08:01:5679 0 EOF", "42", 8, 1, 5678));
    }

    #[test]
    fn a_lock_this_process_takes_is_seen() {
        let path = std::env::temp_dir().join(format!("s3dlio-locks-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let id = sys::ident(fd).unwrap();
        assert!(!holds_posix_locks(id));
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        // SAFETY: `fl` is a valid flock for the duration of the call.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) }, 0);
        assert!(holds_posix_locks(id));
        drop(f);
        assert!(!holds_posix_locks(id));
        std::fs::remove_file(&path).unwrap();
    }
}
