//! The per-file write generation: which files this process is writing through the engine (or
//! maps shared and writable), so that read-ahead windows of any description of a file are
//! never read or trusted across a write to it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Write sequences of the files this process writes through the engine, by a hash of
/// (st_dev, st_ino): a write through any description of a file moves its sequence, so the
/// windows of every description of it are discarded. Files that share a slot only discard
/// each other's windows more often.
static FILE_SEQ: [AtomicU64; 1024] = [const { AtomicU64::new(0) }; 1024];

/// Set in a file's sequence once it is mapped shared and writable in this process.
const MAPPED: u64 = 1 << 63;
/// The low bits of a sequence count the writes in progress; each write that ends adds one to
/// the count above them.
const WRITERS: u64 = (1 << 20) - 1;
const ENDED: u64 = 1 << 20;

/// The write sequence of one file.
#[derive(Debug, Clone, Copy)]
pub struct FileWrites(&'static AtomicU64);

impl FileWrites {
    /// The sequence of the file `(st_dev, st_ino)`.
    pub fn of((dev, ino): (u64, u64)) -> Self {
        let h = (dev.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ino).wrapping_mul(0xff51_afd7_ed55_8ccd);
        FileWrites(&FILE_SEQ[(h >> 54) as usize % FILE_SEQ.len()])
    }

    /// A write to the file is starting: windows of every description of the file are stale
    /// from now on, and none is read until the write ends.
    pub fn begin(self) -> Writing {
        self.0.fetch_add(1, Ordering::AcqRel);
        Writing(self.0)
    }

    /// The file is being memory-mapped from this process: writes through a shared writable
    /// mapping reach the page cache without a call the engine sees, so such a file is never
    /// read ahead again here; any other mapping only makes the windows read so far stale.
    pub fn mapped(self, shared_writable: bool) {
        drop(self.begin());
        if shared_writable {
            self.0.fetch_or(MAPPED, Ordering::AcqRel);
        }
    }

    /// The sequence now, or `None` while a write is in progress or the file is mapped
    /// writable: no window may be read or used then.
    pub fn quiet(self) -> Option<u64> {
        let v = self.0.load(Ordering::Acquire);
        (v & (MAPPED | WRITERS) == 0).then_some(v)
    }

    /// Forgets that the file was mapped shared and writable (tests only).
    #[cfg(test)]
    pub fn unmap_for_test(self) {
        self.0.fetch_and(!MAPPED, Ordering::Relaxed);
    }
}

/// A write in progress: while any is, no window of the file is read or trusted, and when it
/// ends every window read before is stale.
#[must_use]
pub struct Writing(&'static AtomicU64);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.fetch_add(ENDED - 1, Ordering::Release);
    }
}

/// In a fork child: writes other threads of the parent had in progress never end here.
pub fn reset_after_fork() {
    for seq in &FILE_SEQ {
        let v = seq.load(Ordering::Relaxed);
        if v & WRITERS != 0 {
            seq.store((v & !WRITERS) + ENDED, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_in_progress_or_a_writable_mapping_silences_the_file() {
        let f = FileWrites::of((0xfeed, 77));
        let before = f.quiet().expect("quiet at first");
        let w = f.begin();
        assert_eq!(f.quiet(), None, "no window while a write is in progress");
        drop(w);
        let after = f.quiet().expect("quiet again");
        assert_ne!(before, after, "a write that ended moves the sequence");
        f.mapped(false);
        assert!(f.quiet().is_some_and(|v| v != after), "a read-only mapping only moves it");
        f.mapped(true);
        assert_eq!(f.quiet(), None, "a shared writable mapping silences it for good");
        f.unmap_for_test();
    }
}
