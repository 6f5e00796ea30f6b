//! Mappings and advice on managed fds: mmap, posix_fadvise/readahead, and posix_fallocate.

use super::{FDS, STATS};
use crate::config::LogLevel;
use crate::log::{self, Cause};
use crate::stats::Counter;

/// Before `mmap` of `fd`: a mapping of a direct file works, through the page cache; it is
/// counted and reported once, since those accesses are not direct.
pub fn mapping(fd: i32, prot: i32, flags: i32) {
    let Some(d) = FDS.get(fd, false) else { return };
    // Writes through a shared mapping reach the file with no call the engine sees.
    let shared = flags & libc::MAP_TYPE == libc::MAP_SHARED || flags & libc::MAP_TYPE == libc::MAP_SHARED_VALIDATE;
    d.writes.mapped(shared && (prot & libc::PROT_WRITE != 0 || d.accmode != libc::O_RDONLY));
    if d.twin().is_some() {
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
    let swallow =
        FDS.get(fd, false).is_some_and(|d| d.twin().is_some() && !(needs_read && d.accmode == libc::O_WRONLY));
    if swallow {
        STATS.add(Counter::AdviceSwallowed, 1);
    }
    swallow
}

/// After glibc's `posix_fallocate` (whose emulation, where the filesystem has no
/// fallocate, writes one byte per block through the program's description) on a managed
/// `fd`: what it may have left in the page cache of `[off, off+len)` is written back and
/// dropped.
pub fn fallocated(fd: i32, off: i64, len: i64) {
    if let (Some(d), Ok(lo), Ok(n)) = (FDS.get(fd, false), u64::try_from(off), u64::try_from(len)) {
        if let Some(t) = d.twin() {
            let _writing = d.writes.begin();
            crate::behind::drop_range(t, lo, lo.saturating_add(n));
        }
    }
}
