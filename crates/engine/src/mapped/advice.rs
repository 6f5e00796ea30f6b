//! What the kernel is told of a tracked mapping's access pattern. A page fault on a mapping
//! without advice reads the device's whole read-around window (read_ahead_kb, 8 MiB on
//! common disks) around the page: over data larger than the budget, read at random, every
//! touch refills the budget with pages given back before the program comes back for them.
//! A process that reads pages again soon after they were given back (the reclaimer counts
//! it) is switched, once and for every mapping of a matched file it has or makes, to a
//! second one-to-one image of what the program advised, in which no advice becomes
//! MADV_RANDOM (no read-around; the library reads ahead itself for in-order scans, see
//! [`super::stream`]), MADV_SEQUENTIAL stays, MADV_RANDOM stays but is marked MADV_DONTDUMP,
//! and the two states left, which only a program that excludes a file mapping from core
//! dumps reaches, get what is left. Until then the kernel is told what the program advised.
//! Either image is one to one, and all mappings switch at once: ranges the program advised
//! differently stay different VMAs and ranges it advised alike merge, so what
//! /proc/self/maps lists and where mremap fails with EFAULT stay the plain run's.

use super::Mapping;
use crate::sys;

/// An access pattern a program advises (`madvise`, `posix_madvise`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pattern {
    /// MADV_NORMAL, and no advice.
    #[default]
    Normal,
    /// MADV_SEQUENTIAL.
    Sequential,
    /// MADV_RANDOM.
    Random,
}

/// True for advice that changes what [`kernel`] says of a range.
pub fn concerns(advice: i32) -> bool {
    matches!(
        advice,
        libc::MADV_NORMAL | libc::MADV_RANDOM | libc::MADV_SEQUENTIAL | libc::MADV_DONTDUMP | libc::MADV_DODUMP
    )
}

/// The program advised `advice` on (a part of) mapping `m`.
pub fn record(m: &mut Mapping, advice: i32) {
    match advice {
        libc::MADV_NORMAL => m.advice = Pattern::Normal,
        libc::MADV_SEQUENTIAL => m.advice = Pattern::Sequential,
        libc::MADV_RANDOM => m.advice = Pattern::Random,
        libc::MADV_DONTDUMP => m.nodump = true,
        libc::MADV_DODUMP => m.nodump = false,
        _ => {}
    }
}

/// What the kernel is told of mapping `m` in a process switched to random reads (`random`)
/// or not: its access-pattern advice, and whether it is excluded from core dumps.
pub fn kernel(m: &Mapping, random: bool) -> (i32, bool) {
    let asked = match m.advice {
        Pattern::Normal => libc::MADV_NORMAL,
        Pattern::Sequential => libc::MADV_SEQUENTIAL,
        Pattern::Random => libc::MADV_RANDOM,
    };
    if !random {
        return (asked, m.nodump);
    }
    match (m.advice, m.nodump) {
        (Pattern::Normal, false) => (libc::MADV_RANDOM, false),
        (Pattern::Normal, true) => (libc::MADV_NORMAL, true),
        (Pattern::Sequential, d) => (libc::MADV_SEQUENTIAL, d),
        (Pattern::Random, false) => (libc::MADV_RANDOM, true),
        (Pattern::Random, true) => (libc::MADV_NORMAL, false),
    }
}

/// True where the program gave no advice and the kernel is told MADV_RANDOM (in a process
/// switched to random reads): the library reads ahead itself for in-order scans there.
pub fn reads_ahead_itself(m: &Mapping) -> bool {
    m.advice == Pattern::Normal && !m.nodump
}

/// The kernel's state of a range in mapping `m` right after the program's own `advice` on it
/// reached the kernel unchanged.
fn after_raw(m: &Mapping, advice: i32, random: bool) -> (i32, bool) {
    let (a, d) = kernel(m, random);
    match advice {
        libc::MADV_DONTDUMP => (a, true),
        libc::MADV_DODUMP => (a, false),
        _ => (advice, d),
    }
}

/// Tells the kernel `to` for the range of `m`, where it was told `from`.
fn set(m: &Mapping, from: (i32, bool), to: (i32, bool)) {
    if from.0 != to.0 {
        let _ = sys::madvise(m.start, m.len, to.0);
    }
    if from.1 != to.1 {
        let _ = sys::madvise(m.start, m.len, if to.1 { libc::MADV_DONTDUMP } else { libc::MADV_DODUMP });
    }
}

/// A new mapping `m` (no advice yet) in a process switched to random reads or not.
pub fn apply_new(m: &Mapping, random: bool) {
    set(m, (libc::MADV_NORMAL, false), kernel(m, random));
}

/// The program's `advice` reached the kernel unchanged for the part `before` of a tracked
/// mapping, which is `after` now: what differs from [`kernel`]`(after)` is set right.
pub fn fix(before: &Mapping, after: &Mapping, advice: i32, random: bool) {
    set(after, after_raw(before, advice, random), kernel(after, random));
}

/// Mapping `m` in a process now switched to random reads.
pub fn switch(m: &Mapping) {
    set(m, kernel(m, false), kernel(m, true));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states() -> Vec<Mapping> {
        let base = Mapping {
            start: 0,
            len: 4096,
            ident: (1, 2),
            off: 0,
            shared: false,
            cow: false,
            dontfork: false,
            advice: Pattern::Normal,
            nodump: false,
        };
        let mut out = Vec::new();
        for advice in [Pattern::Normal, Pattern::Sequential, Pattern::Random] {
            for nodump in [false, true] {
                out.push(Mapping { advice, nodump, ..base });
            }
        }
        out
    }

    #[test]
    fn until_switched_the_kernel_is_told_what_the_program_asked() {
        for m in states() {
            let (a, d) = kernel(&m, false);
            assert_eq!(d, m.nodump);
            assert_eq!(a == libc::MADV_RANDOM, m.advice == Pattern::Random);
        }
    }

    #[test]
    fn switched_only_ranges_excluded_from_dumps_are_read_around() {
        for m in states() {
            assert_eq!(kernel(&m, true).0 == libc::MADV_NORMAL, m.nodump && m.advice != Pattern::Sequential, "{m:?}");
            assert_eq!(reads_ahead_itself(&m), m == states()[0], "{m:?}");
        }
    }

    #[test]
    fn the_program_s_states_are_the_kernel_s_one_to_one() {
        let s = states();
        for random in [false, true] {
            for a in &s {
                for b in &s {
                    assert_eq!(kernel(a, random) == kernel(b, random), a == b, "{a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn recording_follows_the_advice() {
        let mut m = states()[0];
        for (advice, want) in [
            (libc::MADV_RANDOM, Pattern::Random),
            (libc::MADV_WILLNEED, Pattern::Random),
            (libc::MADV_SEQUENTIAL, Pattern::Sequential),
            (libc::MADV_NORMAL, Pattern::Normal),
        ] {
            record(&mut m, advice);
            assert_eq!(m.advice, want);
        }
        record(&mut m, libc::MADV_DONTDUMP);
        assert!(m.nodump);
        record(&mut m, libc::MADV_DODUMP);
        assert!(!m.nodump);
    }

    #[test]
    fn after_the_raw_advice_only_differences_are_set() {
        let s = states();
        let normal = s[0];
        let random = Mapping { advice: Pattern::Random, ..normal };
        // the program's MADV_RANDOM reached the kernel as is: only the dump mark differs
        assert_eq!(after_raw(&normal, libc::MADV_RANDOM, true), (libc::MADV_RANDOM, false));
        assert_eq!(kernel(&random, true), (libc::MADV_RANDOM, true));
        // the program's MADV_DODUMP on a range it advised random keeps the mark
        assert_eq!(after_raw(&random, libc::MADV_DODUMP, true), (libc::MADV_RANDOM, false));
        assert_eq!(kernel(&random, true), (libc::MADV_RANDOM, true));
        // not switched: nothing to set right
        assert_eq!(after_raw(&normal, libc::MADV_RANDOM, false), kernel(&random, false));
    }
}
