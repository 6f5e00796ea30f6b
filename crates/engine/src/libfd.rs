//! Where the library's own long-lived descriptors (the O_DIRECT twins) live: at numbers the
//! program never gets, so every descriptor-creating call of the program returns the number
//! it would without the library, and the program never runs out of descriptors because of it.
//!
//! Where the process may raise its soft `RLIMIT_NOFILE` (the hard limit is higher, or it has
//! CAP_SYS_RESOURCE), a twin is moved to a number at or above the soft limit: the limit is
//! raised for the moment of the move and put back, and the kernel hands the program no number
//! at or above its soft limit (open, dup and F_DUPFD refuse them). Elsewhere the library keeps
//! its descriptors in a small zone just below the soft limit (the highest `zone` numbers),
//! and the hooks give a twin up whenever the program's own descriptors reach the zone (see
//! [`collides`]).

use crate::sys::{self, Errno, SysResult};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// The library's descriptors, by number (-1: free slot). A lookup is a scan of the few
/// slots in use.
static HELD: [AtomicI32; MAX_HELD] = [const { AtomicI32::new(-1) }; MAX_HELD];
/// Slots of `HELD` in use (an upper bound: slots are scanned up to it).
static USED: AtomicUsize = AtomicUsize::new(0);
/// The lowest number the library holds (i32::MAX: none).
static LOWEST: AtomicI32 = AtomicI32::new(i32::MAX);
/// The lowest number the library holds below the soft limit, where the program's own
/// descriptors may reach it (i32::MAX: none).
static ZONE_LOWEST: AtomicI32 = AtomicI32::new(i32::MAX);

/// Twins the library holds at most: a program with more matched files open at once gets
/// the rest buffered (counted).
pub const MAX_HELD: usize = 4096;

/// How many numbers just below the soft limit the library may use where it cannot go above
/// it: a few, and never more than a sixteenth of the limit (at least one).
pub fn zone(soft: u64) -> u64 {
    (soft / 16).clamp(1, 64)
}

/// Moves `fd` (just opened by the engine, close-on-exec) to the library's numbers and closes
/// the original number. Fails (the original closed) with EMFILE when no number is left.
pub fn place(fd: i32) -> SysResult<i32> {
    let r = place_inner(fd);
    let _ = sys::close(fd);
    let (new, in_zone) = r?;
    if !remember(new) {
        let _ = sys::close(new);
        return Err(libc::EMFILE);
    }
    if in_zone {
        ZONE_LOWEST.fetch_min(new, Ordering::AcqRel);
    }
    Ok(new)
}

fn place_inner(fd: i32) -> SysResult<(i32, bool)> {
    let lim = sys::nofile_limit()?;
    let soft = lim.rlim_cur;
    let held = USED.load(Ordering::Relaxed) as u64;
    // Above the soft limit: raise it just enough for one more number, move, put it back.
    let want = soft.saturating_add(held + 1);
    if soft < i32::MAX as u64 && want <= i32::MAX as u64 {
        let raised = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max.max(want) };
        if sys::set_nofile_limit(&raised).is_ok() {
            let moved = sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, soft as libc::c_long);
            let _ = sys::set_nofile_limit(&lim);
            return moved.map(|m| (m, false));
        }
    }
    // Below it: the top of the range, if the program has not reached it.
    let floor = soft.saturating_sub(zone(soft));
    if floor <= fd as u64 {
        return Err(libc::EMFILE);
    }
    sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor as libc::c_long).map(|m| (m, true))
}

fn remember(fd: i32) -> bool {
    for (i, slot) in HELD.iter().enumerate() {
        if slot.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            USED.fetch_max(i + 1, Ordering::AcqRel);
            LOWEST.fetch_min(fd, Ordering::AcqRel);
            return true;
        }
    }
    false
}

/// Takes `fd` (inherited from a predecessor image) as one of the library's descriptors.
pub fn adopt(fd: i32) {
    if remember(fd) {
        settle_lowest();
    }
}

/// True if the library holds any descriptor of its own (one atomic load).
#[inline]
pub fn holds_any() -> bool {
    LOWEST.load(Ordering::Acquire) != i32::MAX
}

/// True if `fd` is one of the library's own descriptors.
#[inline]
pub fn is_ours(fd: i32) -> bool {
    fd >= LOWEST.load(Ordering::Acquire)
        && HELD[..USED.load(Ordering::Acquire).min(MAX_HELD)].iter().any(|s| s.load(Ordering::Relaxed) == fd)
}

/// Closes one of the library's descriptors and forgets it.
pub fn close(fd: i32) {
    if forget(fd) {
        let _ = sys::close(fd);
    }
}

/// Forgets `fd` as the library's without closing it (the kernel closed it already, or it
/// is kept open across an exec on purpose).
pub fn forget(fd: i32) -> bool {
    let n = USED.load(Ordering::Acquire).min(MAX_HELD);
    let found = HELD[..n].iter().any(|s| s.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed).is_ok());
    if found && (fd == LOWEST.load(Ordering::Acquire) || fd == ZONE_LOWEST.load(Ordering::Acquire)) {
        settle_lowest();
    }
    found
}

/// The library's descriptors in `[lo, hi]`, sorted (for close_range and closefrom, which
/// must leave them open).
pub fn held_in(lo: u32, hi: u32, out: &mut Vec<i32>) {
    let n = USED.load(Ordering::Acquire).min(MAX_HELD);
    out.extend(
        HELD[..n].iter().map(|s| s.load(Ordering::Relaxed)).filter(|&f| f >= 0 && (lo..=hi).contains(&(f as u32))),
    );
    out.sort_unstable();
}

/// The library's descriptor that the program's own descriptors have reached, if any: a
/// descriptor the program just got (`fd`, the lowest free number at or above `min`) above
/// one of the library's in the zone below the soft limit (the program would have got that
/// lower number), or its call failing with EMFILE (`fd < 0`) while the library holds numbers
/// in the zone. The hooks then give that twin up (see the module comment).
pub fn in_the_way(fd: i32, err: Errno, min: i32) -> Option<i32> {
    if ZONE_LOWEST.load(Ordering::Acquire) == i32::MAX {
        return None;
    }
    let soft = sys::nofile_limit().map_or(u64::MAX, |l| l.rlim_cur);
    let n = USED.load(Ordering::Acquire).min(MAX_HELD);
    let z = HELD[..n].iter().map(|s| s.load(Ordering::Relaxed)).filter(|&f| f >= min && (f as u64) < soft).min()?;
    ((fd >= 0 && fd > z) || (fd < 0 && err == libc::EMFILE)).then_some(z)
}

/// True if a descriptor-creating call that takes the lowest free number at or above `min`
/// and returned `fd` (-1: it failed) may have met the library's zone below the soft limit
/// (see [`in_the_way`]).
#[inline]
pub fn may_be_in_the_way(fd: i32, min: i32) -> bool {
    let z = ZONE_LOWEST.load(Ordering::Acquire);
    z != i32::MAX && (fd < 0 || fd > z.max(min))
}

/// Recomputes the lowest numbers held after one was given up.
fn settle_lowest() {
    let n = USED.load(Ordering::Acquire).min(MAX_HELD);
    let soft = sys::nofile_limit().map_or(u64::MAX, |l| l.rlim_cur);
    let (mut low, mut zone_low) = (i32::MAX, i32::MAX);
    for f in HELD[..n].iter().map(|s| s.load(Ordering::Relaxed)).filter(|&f| f >= 0) {
        low = low.min(f);
        if (f as u64) < soft {
            zone_low = zone_low.min(f);
        }
    }
    LOWEST.store(low, Ordering::Release);
    ZONE_LOWEST.store(zone_low, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_is_small_and_never_empty() {
        assert_eq!(zone(20), 1);
        assert_eq!(zone(64), 4);
        assert_eq!(zone(1024), 64);
        assert_eq!(zone(1 << 20), 64);
        assert_eq!(zone(1), 1);
    }

    #[test]
    fn a_placed_descriptor_is_above_the_programs_numbers() {
        let fd = sys::openat(libc::AT_FDCWD, c"/dev/null", libc::O_RDONLY | libc::O_CLOEXEC, 0).unwrap();
        let soft = sys::nofile_limit().unwrap().rlim_cur;
        let t = place(fd).unwrap();
        assert!(is_ours(t));
        assert!(t as u64 >= soft.saturating_sub(zone(soft)), "{t} below the library's numbers (soft {soft})");
        assert_eq!(sys::nofile_limit().unwrap().rlim_cur, soft, "the limit is put back");
        assert!(sys::fcntl(t, libc::F_GETFD, 0).unwrap() & libc::FD_CLOEXEC != 0);
        assert!(sys::fcntl(fd, libc::F_GETFD, 0).is_err(), "the original number is closed");
        let mut v = Vec::new();
        held_in(0, u32::MAX, &mut v);
        assert!(v.contains(&t));
        close(t);
        assert!(!is_ours(t));
        assert!(sys::fcntl(t, libc::F_GETFD, 0).is_err());
    }
}
