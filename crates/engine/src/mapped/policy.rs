//! Which chunks of mapped files give their pages back: a pure function of the chunks'
//! residency and age, unit-tested without mappings.
//!
//! A chunk's age is the number of passes since its residency last grew (a page of it was
//! faulted in, read ahead, or read again after being given back). Over the budget, the
//! oldest chunks go first until the footprint is a quarter of the budget below it, so that
//! the next pass has room before it must act again. Chunks that grew within the last
//! [`MIN_AGE`] passes are never chosen: they are what the program reads now, and what the
//! kernel just read ahead for it (a sequential scan gives back the chunks behind it, never
//! those ahead), unless they alone hold more than [`YOUNG_ROOM`] or the budget, whichever is
//! larger: a program that touches more than that between two passes (random reads all over
//! a file much larger than the budget) gets its older young chunks given back too.

/// Passes a chunk's residency must stay unchanged before its pages may be given back.
pub const MIN_AGE: u32 = 2;
/// Pages (4 KiB) of young chunks kept whatever the budget: two of the kernel's largest
/// read-around windows (8 MiB on common disks), so that a sequential scan never re-reads.
pub const YOUNG_ROOM: u64 = 4096;

/// One chunk of a mapped file, as the reclaimer last measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Pages of the chunk in the page cache.
    pub resident: u32,
    /// The pass at which `resident` last grew.
    pub stamp: u32,
    /// The pass at which its pages were last given back (0: never, or grown since).
    pub given: u32,
}

/// The footprint the reclaimer brings a process down to once it is over `budget` (pages).
pub fn target(budget: u64) -> u64 {
    budget - budget / 4
}

/// The chunks to give back, oldest first, given every chunk as `(key, chunk)`, the
/// footprint `total` and the `budget` (both in pages) at pass `now`: none while `total` is
/// within the budget, else the oldest until `total` is at [`target`] (fewer when the rest is
/// younger than [`MIN_AGE`]).
pub fn choose<K: Copy>(chunks: impl Iterator<Item = (K, Chunk)>, total: u64, budget: u64, now: u32) -> Vec<K> {
    if total <= budget {
        return Vec::new();
    }
    let mut all: Vec<(u32, u32, K)> =
        chunks.filter(|(_, c)| c.resident > 0).map(|(k, c)| (now.wrapping_sub(c.stamp), c.resident, k)).collect();
    all.sort_by_key(|&(age, _, _)| std::cmp::Reverse(age));
    let young: u64 = all.iter().filter(|(age, _, _)| *age < MIN_AGE).map(|(_, r, _)| u64::from(*r)).sum();
    let spare_young = young > budget.max(YOUNG_ROOM);
    let mut excess = total - target(budget);
    let mut out = Vec::new();
    for (age, resident, k) in all {
        if excess == 0 || (age < MIN_AGE && !spare_young) {
            break;
        }
        out.push(k);
        excess = excess.saturating_sub(u64::from(resident));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(resident: u32, stamp: u32) -> Chunk {
        Chunk { resident, stamp, given: 0 }
    }

    #[test]
    fn within_the_budget_nothing_goes() {
        let chunks = [(0, c(10, 0)), (1, c(10, 0))];
        assert!(choose(chunks.into_iter(), 20, 20, 100).is_empty());
    }

    #[test]
    fn oldest_first_down_to_the_target() {
        // budget 16 pages: target 12; 40 resident, so 28 must go: the oldest three chunks
        let chunks = [(0, c(10, 5)), (1, c(10, 1)), (2, c(10, 3)), (3, c(10, 9))];
        assert_eq!(choose(chunks.into_iter(), 40, 16, 20), vec![1, 2, 0]);
    }

    #[test]
    fn a_sequential_scan_gives_back_what_is_behind_it() {
        // chunks 0..8 read in order, one per pass; the kernel read 9 and 10 ahead this pass
        let mut chunks: Vec<(usize, Chunk)> = (0..9).map(|i| (i, c(256, i as u32))).collect();
        chunks.push((9, c(256, 9)));
        chunks.push((10, c(256, 9)));
        let total = 11 * 256;
        let got = choose(chunks.into_iter(), total, 4 * 256, 9);
        assert_eq!(got, (0..8).collect::<Vec<_>>(), "the chunks behind the scan, oldest first");
    }

    #[test]
    fn what_grew_lately_stays_even_over_the_budget() {
        let chunks = [(0, c(100, 9)), (1, c(100, 10))];
        assert!(choose(chunks.into_iter(), 200, 1, 10).is_empty());
        let chunks = [(0, c(100, 8)), (1, c(100, 10))];
        assert_eq!(choose(chunks.into_iter(), 200, 1, 10), vec![0]);
    }

    #[test]
    fn random_reads_past_the_young_room_give_back_young_chunks_too() {
        // 40 chunks of 512 pages grew in the last two passes: far more than YOUNG_ROOM
        let chunks: Vec<(usize, Chunk)> = (0..40).map(|i| (i, c(512, 9 + (i % 2) as u32))).collect();
        let got = choose(chunks.into_iter(), 40 * 512, 16384, 10);
        assert!(!got.is_empty() && got.iter().all(|i| i % 2 == 0), "the older of the young first: {got:?}");
    }

    #[test]
    fn a_budget_of_one_page_gives_back_every_old_chunk() {
        let chunks = [(0, c(1, 0)), (1, c(3, 1)), (2, c(0, 0))];
        assert_eq!(choose(chunks.into_iter(), 4, 1, 5), vec![0, 1]);
        assert_eq!(target(1), 1);
    }

    #[test]
    fn ages_survive_the_pass_counter_wrapping() {
        let chunks = [(0, c(10, u32::MAX - 1)), (1, c(10, 1))];
        assert_eq!(choose(chunks.into_iter(), 20, 8, 5), vec![0, 1]);
    }
}
