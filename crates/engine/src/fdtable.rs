//! The fd table: descriptor number to shared per-description state, with a lock-free miss.
//!
//! Indexed by fd in two levels (chunks of 1024 slots allocated on first use), never sized
//! from RLIMIT_NOFILE. A lookup of an fd the engine does not manage costs one or two atomic
//! loads and nothing else, which keeps the shim invisible on every other descriptor.
//! Entries are `Arc`s so dup'd fds share one state and a lookup racing with `close` keeps
//! the state alive; the reader side of a spin lock covers the clone of the `Arc`.

use crate::lock::SpinRw;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;

const CHUNK_BITS: usize = 10;
const CHUNK: usize = 1 << CHUNK_BITS;
const TOP: usize = 4096;
/// Descriptors at or above this number are never managed (4 Mi descriptors).
pub const MAX_FD: usize = TOP * CHUNK;

struct Chunk<T> {
    slots: [AtomicPtr<T>; CHUNK],
}

/// A table of `Arc<T>` indexed by fd.
pub struct FdTable<T> {
    top: [AtomicPtr<Chunk<T>>; TOP],
    lock: SpinRw,
    live: AtomicUsize,
}

impl<T> Default for FdTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> FdTable<T> {
    /// An empty table; usable in a `static`.
    pub const fn new() -> Self {
        FdTable { top: [const { AtomicPtr::new(null_mut()) }; TOP], lock: SpinRw::new(), live: AtomicUsize::new(0) }
    }

    fn slot(&self, fd: i32) -> Option<&AtomicPtr<T>> {
        let fd = usize::try_from(fd).ok().filter(|&f| f < MAX_FD)?;
        let chunk = self.top[fd >> CHUNK_BITS].load(Ordering::Acquire);
        if chunk.is_null() {
            return None;
        }
        // SAFETY: chunks are leaked on creation and never freed, so a non-null pointer
        // stays valid for the life of the process.
        Some(unsafe { &(*chunk).slots[fd & (CHUNK - 1)] })
    }

    /// True if `fd` has an entry: the unmanaged fast path (no lock, no allocation).
    #[inline]
    pub fn contains(&self, fd: i32) -> bool {
        self.slot(fd).is_some_and(|s| !s.load(Ordering::Acquire).is_null())
    }

    /// The state of `fd`, if managed. `try_only` never waits (signal-handler context):
    /// it answers `None` when a writer holds the table at that instant.
    pub fn get(&self, fd: i32, try_only: bool) -> Option<Arc<T>> {
        let slot = self.slot(fd)?;
        if slot.load(Ordering::Acquire).is_null() {
            return None;
        }
        self.lock
            .read(try_only, || {
                let p = slot.load(Ordering::Acquire);
                if p.is_null() {
                    return None;
                }
                // SAFETY: `p` came from `Arc::into_raw` and the table's reference cannot be
                // dropped while we hold the read lock (removal takes the write lock).
                unsafe {
                    Arc::increment_strong_count(p);
                    Some(Arc::from_raw(p))
                }
            })
            .flatten()
    }

    /// Sets the state of `fd`, returning what was there.
    pub fn insert(&self, fd: i32, v: Arc<T>) -> Option<Arc<T>> {
        let idx = usize::try_from(fd).ok().filter(|&f| f < MAX_FD)?;
        let new = Arc::into_raw(v) as *mut T;
        let old = self.lock.write(|| {
            let top = &self.top[idx >> CHUNK_BITS];
            let mut chunk = top.load(Ordering::Acquire);
            if chunk.is_null() {
                let fresh: Box<Chunk<T>> = Box::new(Chunk { slots: [const { AtomicPtr::new(null_mut()) }; CHUNK] });
                chunk = Box::into_raw(fresh);
                top.store(chunk, Ordering::Release);
            }
            // SAFETY: chunk is non-null and never freed.
            unsafe { (*chunk).slots[idx & (CHUNK - 1)].swap(new, Ordering::AcqRel) }
        });
        if old.is_null() {
            self.live.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            // SAFETY: the slot owned one strong count of `old`.
            Some(unsafe { Arc::from_raw(old) })
        }
    }

    /// Clears `fd`, returning its state. Cheap when `fd` is not managed.
    pub fn remove(&self, fd: i32) -> Option<Arc<T>> {
        let slot = self.slot(fd)?;
        if slot.load(Ordering::Acquire).is_null() {
            return None;
        }
        let old = self.lock.write(|| slot.swap(null_mut(), Ordering::AcqRel));
        if old.is_null() {
            return None;
        }
        self.live.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: the slot owned one strong count of `old`.
        Some(unsafe { Arc::from_raw(old) })
    }

    /// Number of managed fds.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// True when no fd is managed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f(fd, state)` for every managed fd, in fd order.
    pub fn for_each(&self, f: impl FnMut(i32, &Arc<T>)) {
        self.for_each_try(false, f)
    }

    /// [`Self::for_each`]; with `try_only` (in a signal handler, which may have interrupted a
    /// writer of the table on this thread) entries that cannot be read without waiting are
    /// skipped.
    pub fn for_each_try(&self, try_only: bool, mut f: impl FnMut(i32, &Arc<T>)) {
        for (ci, top) in self.top.iter().enumerate() {
            let chunk = top.load(Ordering::Acquire);
            if chunk.is_null() {
                continue;
            }
            for i in 0..CHUNK {
                let fd = (ci << CHUNK_BITS | i) as i32;
                if let Some(v) = self.get(fd, try_only) {
                    f(fd, &v);
                }
            }
        }
    }

    /// Frees the table lock in a fork child.
    pub fn reset_after_fork(&self) {
        self.lock.reset_after_fork();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let t: FdTable<u32> = FdTable::new();
        assert!(!t.contains(5));
        assert!(t.get(5, false).is_none());
        assert!(t.insert(5, Arc::new(1)).is_none());
        assert!(t.contains(5));
        assert_eq!(*t.get(5, true).unwrap(), 1);
        assert_eq!(*t.insert(5, Arc::new(2)).unwrap(), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(*t.remove(5).unwrap(), 2);
        assert!(t.remove(5).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn out_of_range_fds_are_never_managed() {
        let t: FdTable<u32> = FdTable::new();
        assert!(t.insert(-1, Arc::new(1)).is_none());
        assert!(t.insert(MAX_FD as i32, Arc::new(1)).is_none());
        assert!(!t.contains(-1) && !t.contains(i32::MAX));
        assert!(t.is_empty());
    }

    #[test]
    fn shared_state_and_iteration() {
        let t: FdTable<u32> = FdTable::new();
        let s = Arc::new(9);
        t.insert(3, s.clone());
        t.insert(2000, s.clone());
        let mut seen = vec![];
        t.for_each(|fd, v| seen.push((fd, **v)));
        assert_eq!(seen, vec![(3, 9), (2000, 9)]);
        assert_eq!(Arc::strong_count(&s), 3);
        t.remove(3);
        t.remove(2000);
        assert_eq!(Arc::strong_count(&s), 1);
    }

    #[test]
    fn concurrent_get_and_remove_keep_state_alive() {
        let t: Arc<FdTable<Vec<u8>>> = Arc::new(FdTable::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(v) = t.get(7, false) {
                        assert_eq!(v.len(), 64);
                    }
                }
            })
        };
        for _ in 0..20_000 {
            t.insert(7, Arc::new(vec![1; 64]));
            t.remove(7);
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    }
}
