//! A bounded pool of page-aligned bounce buffers for I/O that the program's own buffer,
//! offset or length cannot carry to the kernel with O_DIRECT.
//!
//! Buffers are anonymous mappings marked MADV_DONTFORK: open(2) warns that a fork during
//! direct I/O into private memory can send the DMA to the wrong copy of a page, and a fork
//! child must never share a buffer with its parent. The pool keeps at most `max_idle`
//! bytes of idle buffers; a burst beyond that allocates transient buffers that are unmapped
//! on release, so memory stays bounded by what is in flight.

use crate::lock::FutexMutex;
use memmap2::{Advice, MmapMut};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, Ordering};

/// A buffer on loan from a [`BufPool`]; returns itself on drop.
pub struct Bounce<'a> {
    map: Option<MmapMut>,
    pool: &'a BufPool,
}

impl Bounce<'_> {
    /// The buffer's bytes (page-aligned start, length = the pool's chunk size).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.map.as_deref_mut().unwrap_or(&mut [])
    }

    /// Start address, for alignment checks and raw I/O.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_slice().as_mut_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// True for a zero-length buffer (never handed out by the pool).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Bounce<'_> {
    fn drop(&mut self) {
        if let Some(map) = self.map.take() {
            self.pool.give_back(map);
        }
    }
}

/// The pool.
pub struct BufPool {
    chunk: usize,
    max_idle: usize,
    lock: FutexMutex,
    idle: UnsafeCell<Vec<MmapMut>>,
    allocations: AtomicU64,
}

// SAFETY: `idle` is only touched with `lock` held.
unsafe impl Sync for BufPool {}
// SAFETY: the mappings are plain memory owned by the pool.
unsafe impl Send for BufPool {}

impl BufPool {
    /// A pool of `chunk`-byte buffers keeping at most `max_idle` bytes idle.
    /// `chunk` is rounded up to a multiple of 64 KiB (a multiple of any page size).
    pub fn new(chunk: usize, max_idle: usize) -> Self {
        let chunk = chunk.max(1).next_multiple_of(65536);
        BufPool {
            chunk,
            max_idle,
            lock: FutexMutex::new(),
            idle: UnsafeCell::new(Vec::new()),
            allocations: AtomicU64::new(0),
        }
    }

    /// Size of each buffer.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// How many mappings were ever created (for tests and statistics).
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Takes a buffer. `nowait` (signal-handler context) never blocks on the pool lock:
    /// it maps a fresh buffer instead. Fails only if the kernel refuses memory.
    pub fn get(&self, nowait: bool) -> std::io::Result<Bounce<'_>> {
        let guard = if nowait { self.lock.try_lock() } else { Some(self.lock.lock()) };
        if let Some(_g) = guard {
            // SAFETY: the lock is held.
            if let Some(map) = unsafe { (*self.idle.get()).pop() } {
                return Ok(Bounce { map: Some(map), pool: self });
            }
        }
        let map = MmapMut::map_anon(self.chunk)?;
        // Without DONTFORK a fork during I/O could leave the data in the child's copy;
        // failing to set it is not fatal for correctness in a process that never forks.
        let _ = map.advise(Advice::DontFork);
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(Bounce { map: Some(map), pool: self })
    }

    fn give_back(&self, map: MmapMut) {
        if let Some(_g) = self.lock.try_lock().or_else(|| Some(self.lock.lock())) {
            // SAFETY: the lock is held.
            let idle = unsafe { &mut *self.idle.get() };
            if (idle.len() + 1) * self.chunk <= self.max_idle {
                if idle.try_reserve(1).is_ok() {
                    idle.push(map);
                }
                return;
            }
        }
        drop(map);
    }

    /// In a fork child: the idle buffers were not inherited (MADV_DONTFORK), so forget them
    /// without unmapping (the addresses may be reused by then), and free the lock.
    pub fn reset_after_fork(&self) {
        self.lock.reset_after_fork();
        // SAFETY: only one thread exists in a fork child.
        let idle = unsafe { &mut *self.idle.get() };
        for m in idle.drain(..) {
            std::mem::forget(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_reused() {
        let pool = BufPool::new(1 << 20, 4 << 20);
        {
            let mut b = pool.get(false).unwrap();
            assert_eq!(b.len(), 1 << 20);
            assert_eq!(b.as_mut_ptr() as usize % 4096, 0);
            b.as_mut_slice()[0] = 1;
        }
        let _b = pool.get(false).unwrap();
        assert_eq!(pool.allocations(), 1);
    }

    #[test]
    fn idle_bytes_are_bounded() {
        let pool = BufPool::new(1 << 20, 2 << 20);
        let bufs: Vec<_> = (0..5).map(|_| pool.get(false).unwrap()).collect();
        assert_eq!(pool.allocations(), 5);
        drop(bufs);
        // SAFETY: no other thread uses this pool.
        assert_eq!(unsafe { (*pool.idle.get()).len() }, 2);
    }

    #[test]
    fn nowait_never_blocks() {
        let pool = BufPool::new(4096, 1 << 20);
        let g = pool.lock.lock();
        let b = pool.get(true).unwrap();
        assert_eq!(b.len(), 65536);
        drop(g);
        drop(b);
    }
}
