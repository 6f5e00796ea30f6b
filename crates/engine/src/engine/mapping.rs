//! Mappings and advice on managed fds: mmap, posix_fadvise/readahead, and calls that need the
//! buffered companion (posix_fallocate).

use super::{managed_direct, FDS, STATS};
use crate::config::LogLevel;
use crate::log::{self, Cause};
use crate::stats::Counter;
use crate::sys::Errno;
use std::sync::atomic::Ordering;

/// Before `mmap` of `fd`: a mapping of a direct file works, through the page cache; it is
/// counted and reported once, since those accesses are not direct.
pub fn mapping(fd: i32, prot: i32, flags: i32) {
    let Some(d) = FDS.get(fd, false) else { return };
    // Writes through a shared mapping reach the file with no call the engine sees.
    let shared = flags & libc::MAP_TYPE == libc::MAP_SHARED || flags & libc::MAP_TYPE == libc::MAP_SHARED_VALIDATE;
    d.writes.mapped(shared && (prot & libc::PROT_WRITE != 0 || d.accmode != libc::O_RDONLY));
    if d.direct.load(Ordering::Relaxed) {
        STATS.add(Counter::MmapCalls, 1);
        log::once(
            LogLevel::Info,
            Cause::Mapped,
            format_args!("a direct file was memory-mapped; mapped accesses go through the page cache"),
        );
    }
}

/// True if a readahead request on `fd` (`posix_fadvise(WILLNEED)`, `readahead(2)`) must be
/// swallowed: it would fill the page cache the user asked to keep clean.
/// `readahead(2)` (`needs_read`) refuses a descriptor not open for reading with EBADF, and
/// is then passed on for the kernel to say so.
pub fn swallow_readahead(fd: i32, needs_read: bool) -> bool {
    let swallow = FDS
        .get(fd, false)
        .is_some_and(|d| d.direct.load(Ordering::Relaxed) && !(needs_read && d.accmode == libc::O_WRONLY));
    if swallow {
        STATS.add(Counter::AdviceSwallowed, 1);
    }
    swallow
}

/// The buffered companion of a direct `fd`, for calls that must see buffered semantics
/// (glibc's posix_fallocate emulation writes single bytes). `None`: not direct.
pub fn companion_of(fd: i32) -> Option<Result<i32, Errno>> {
    let d = managed_direct(fd, false)?;
    Some(d.companion.get(fd, d.accmode, d.append.load(Ordering::Relaxed)))
}

/// After a call on the companion wrote `[off, off+len)` behind the engine's back.
pub fn companion_wrote(fd: i32, off: i64, len: i64) {
    if let (Some(d), Ok(lo), Ok(n)) = (FDS.get(fd, false), u64::try_from(off), u64::try_from(len)) {
        d.companion.drop_written(lo, lo.saturating_add(n));
    }
}
