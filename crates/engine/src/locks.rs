//! POSIX record locks (fcntl F_SETLK/F_SETLKW, lockf) and the library's own descriptors:
//! closing any descriptor of a file drops all of the process's locks on it, and the kernel
//! closes a descriptor under the library's feet whenever the program `dup2`s onto its number.
//! So the library keeps no descriptor of its own of a file the process takes such locks on:
//! they are closed just before the first lock (no lock of the process can be on the file yet),
//! the file is *retired* for the rest of the process, and no twin is opened for it again.

use crate::sys;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Whether the process may hold POSIX record locks. A new image starts `UNKNOWN`: locks a
/// predecessor image took survive exec, so `/proc/locks` is read once, when first it matters.
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const NONE: u8 = 1;
const SOME: u8 = 2;

/// Files retired (see the module comment), as `(dev + 1, ino)` (0: free slot; `u64::MAX`: a
/// slot being filled). A file that does not fit is still checked in `/proc/locks` whenever a
/// descriptor of it is opened.
static RETIRED_DEV: [AtomicU64; RETIRED_MAX] = [const { AtomicU64::new(0) }; RETIRED_MAX];
static RETIRED_INO: [AtomicU64; RETIRED_MAX] = [const { AtomicU64::new(0) }; RETIRED_MAX];
const RETIRED_MAX: usize = 64;

/// Opens of the library's own descriptors in progress (from the check to the moment the
/// descriptor is registered where a retirement finds it).
static OPENING: AtomicUsize = AtomicUsize::new(0);

/// The program is taking a POSIX record lock.
pub fn note_lock_taken() {
    STATE.store(SOME, Ordering::SeqCst);
}

/// False when the process certainly holds no POSIX record lock.
pub fn may_hold_any() -> bool {
    match STATE.load(Ordering::SeqCst) {
        NONE => false,
        SOME => true,
        _ => {
            let held = holds_any();
            // A lock the hooks saw meanwhile wins.
            let _ = STATE.compare_exchange(UNKNOWN, if held { SOME } else { NONE }, Ordering::SeqCst, Ordering::SeqCst);
            STATE.load(Ordering::SeqCst) != NONE
        }
    }
}

/// In a fork child: record locks are not inherited, and no open of the parent's other
/// threads is in progress here.
pub fn reset_after_fork() {
    STATE.store(NONE, Ordering::SeqCst);
    OPENING.store(0, Ordering::SeqCst);
}

/// True if the file `(dev, ino)` is retired in this process.
pub fn retired((dev, ino): (u64, u64)) -> bool {
    let key = dev.wrapping_add(1);
    RETIRED_DEV
        .iter()
        .zip(&RETIRED_INO)
        .any(|(d, i)| d.load(Ordering::SeqCst) == key && i.load(Ordering::SeqCst) == ino)
}

fn remember_retired((dev, ino): (u64, u64)) {
    let key = dev.wrapping_add(1);
    for (d, i) in RETIRED_DEV.iter().zip(&RETIRED_INO) {
        if d.compare_exchange(0, u64::MAX, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            i.store(ino, Ordering::SeqCst);
            d.store(key, Ordering::SeqCst);
            return;
        }
    }
}

/// While alive, an open of one of the library's own descriptors of a file is in progress:
/// a retirement of the file waits for it (see [`open_own`]).
pub struct Opening(());

impl Drop for Opening {
    fn drop(&mut self) {
        OPENING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// True while the library is opening a descriptor of its own (see [`open_own`]).
pub fn opening_any() -> bool {
    OPENING.load(Ordering::SeqCst) != 0
}

/// Before the library opens a descriptor of its own of the file `ident` (a twin, the
/// read-only descriptor of a mapped file): `None` where it must not (the file is retired, or
/// the process holds POSIX locks on it: opening one closes a descriptor of the file on the
/// way, which would drop them). Keep the guard until the descriptor is registered where
/// [`retire`]'s caller looks for it: a lock taken meanwhile waits for it.
pub fn open_own(ident: (u64, u64)) -> Option<Opening> {
    OPENING.fetch_add(1, Ordering::SeqCst);
    let g = Opening(());
    // After the count: a retirement that this check misses sees the count and waits.
    let refused = retired(ident) || (may_hold_any() && holds_posix_locks(ident));
    (!refused).then_some(g)
}

/// The program is about to take a POSIX record lock on the file `ident`. True the first
/// time: the file is retired, and the caller closes the library's descriptors of it now,
/// before the lock exists. Opens in progress are waited for (a bounded time; not at all
/// when `nowait`, in a signal handler that may have interrupted one).
pub fn retire(ident: (u64, u64), nowait: bool) -> bool {
    if retired(ident) {
        return false;
    }
    remember_retired(ident);
    if !nowait {
        for _ in 0..2000 {
            if OPENING.load(Ordering::SeqCst) == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(10));
        }
    }
    true
}

/// The text of `/proc/locks`, read with the kernel's calls: not through the program's
/// (hooked) `open`, which may call back into the engine (a program out of descriptors has
/// the library look for locks again, and would recurse without end).
fn proc_locks() -> Option<Vec<u8>> {
    let fd = sys::openat(libc::AT_FDCWD, c"/proc/locks", libc::O_RDONLY | libc::O_CLOEXEC, 0).ok()?;
    let mut text = Vec::with_capacity(4096);
    let r = loop {
        text.reserve(4096);
        let spare = text.spare_capacity_mut();
        // SAFETY: `spare` is writable for its length; the bytes read are then initialised.
        match unsafe { sys::read(fd, spare.as_mut_ptr() as *mut u8, spare.len()) } {
            Ok(0) => break Some(text),
            // SAFETY: the kernel initialised the `n` bytes it read.
            Ok(n) => unsafe { text.set_len(text.len() + n) },
            Err(libc::EINTR) => {}
            Err(_) => break None,
        }
    };
    let _ = sys::close(fd);
    r
}

/// True if `/proc/locks` shows a POSIX lock of this process (also when it cannot be read).
fn holds_any() -> bool {
    let Some(text) = proc_locks() else { return true };
    let pid = sys::getpid().to_string();
    String::from_utf8_lossy(&text).lines().any(|l| lock_line(l, &pid).is_some())
}

/// True if `/proc/locks` shows a POSIX lock of this process on the file `(dev, ino)`; also
/// true when it cannot be read (then the caller must assume locks).
pub fn holds_posix_locks((dev, ino): (u64, u64)) -> bool {
    let Some(text) = proc_locks() else { return true };
    let pid = sys::getpid().to_string();
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    String::from_utf8_lossy(&text).lines().any(|l| lock_line_matches(l, &pid, maj, min, ino))
}

/// The file id (`major:minor:inode`) of a line of /proc/locks if it is a POSIX lock of `pid`:
/// `1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF` (a waiter's line has `->` after the number).
fn lock_line<'a>(line: &'a str, pid: &str) -> Option<&'a str> {
    let mut f = line.split_whitespace().filter(|w| *w != "->");
    let (_, kind, _, _, p, id) = (f.next(), f.next(), f.next(), f.next(), f.next(), f.next());
    (kind == Some("POSIX") && p == Some(pid)).then_some(id).flatten()
}

/// One line of /proc/locks is a POSIX lock of `pid` on the file: the device is
/// `major:minor` in hex, the inode decimal.
fn lock_line_matches(line: &str, pid: &str, maj: u32, min: u32, ino: u64) -> bool {
    let Some(id) = lock_line(line, pid) else { return false };
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

    #[test]
    fn a_retired_file_gets_no_descriptor_of_the_library_again() {
        let (file, other) = ((u64::MAX - 7, 4242), (u64::MAX - 7, 4243));
        assert!(!retired(file));
        assert!(open_own(file).is_some());
        assert!(retire(file, false), "the first lock retires the file");
        assert!(!retire(file, false), "once");
        assert!(retired(file) && !retired(other));
        assert!(open_own(file).is_none());
        assert!(open_own(other).is_some());
    }
}
