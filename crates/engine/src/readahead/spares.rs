//! The memory and AIO contexts of read-ahead windows: the process's window budget, and the
//! windows and contexts of closed descriptions kept idle for the next ones.

use crate::lock::FutexMutex;
use crate::sys::aio;
use memmap2::{Advice, MmapMut};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes of windows allocated in this process (idle ones included).
static IN_USE: AtomicUsize = AtomicUsize::new(0);

/// AIO contexts of closed descriptions, idle, for the next ones: io_destroy waits for an RCU
/// grace period (about 32 ms measured here), which a program reading many files would pay at
/// every close.
static IDLE_CONTEXTS: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];

/// An idle context, or a new one for `nr` reads in flight; `None` if the kernel has none to
/// give (the system's aio-max-nr is reached).
pub fn take_context(nr: usize) -> Option<aio::Context> {
    for slot in &IDLE_CONTEXTS {
        let c = slot.swap(0, Ordering::AcqRel);
        if c != 0 {
            return Some(c);
        }
    }
    aio::setup(nr).ok()
}

/// Keeps a context with nothing in flight for the next description, or destroys it.
pub fn give_back_context(ctx: aio::Context) {
    for slot in &IDLE_CONTEXTS {
        if slot.compare_exchange(0, ctx, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return;
        }
    }
    aio::destroy(ctx);
}

/// Windows of closed descriptions, kept for the next ones (they stay counted in `IN_USE`): a
/// new mapping costs the zeroing of every page at its first read, which a program reading
/// many files would pay for every file.
struct IdleWindows {
    lock: FutexMutex,
    slots: UnsafeCell<[Option<MmapMut>; 8]>,
}

// SAFETY: `slots` is only touched with `lock` held.
unsafe impl Sync for IdleWindows {}

static IDLE_WINDOWS: IdleWindows = IdleWindows { lock: FutexMutex::new(), slots: UnsafeCell::new([const { None }; 8]) };

impl IdleWindows {
    /// An idle window of `len` bytes, if one is free right now.
    fn take(&self, len: usize) -> Option<MmapMut> {
        let _g = self.lock.try_lock()?;
        // SAFETY: the lock is held.
        let slots = unsafe { &mut *self.slots.get() };
        slots.iter_mut().find(|m| m.as_ref().is_some_and(|m| m.len() == len))?.take()
    }

    /// Keeps `m` (with no read in flight) for the next description; gives it back if there is
    /// no room. Never waits and never allocates: a close may run in a signal handler.
    fn keep(&self, m: MmapMut) -> Result<(), MmapMut> {
        let Some(_g) = self.lock.try_lock() else { return Err(m) };
        // SAFETY: the lock is held.
        let slots = unsafe { &mut *self.slots.get() };
        match slots.iter_mut().find(|m| m.is_none()) {
            Some(slot) => {
                *slot = Some(m);
                Ok(())
            }
            None => Err(m),
        }
    }

    /// In a fork child: the windows were not inherited (MADV_DONTFORK), so they are forgotten
    /// without unmapping, and the lock is free again.
    fn reset_after_fork(&self) {
        self.lock.reset_after_fork();
        // SAFETY: only one thread exists in a fork child.
        for m in unsafe { &mut *self.slots.get() } {
            if let Some(m) = m.take() {
                std::mem::forget(m);
            }
        }
    }
}

/// A buffer of one window of `window` bytes: an idle one, else a new one if the process's
/// windows stay within `budget`; `None` if none is left.
pub fn take_window(window: usize, budget: usize) -> Option<MmapMut> {
    if let Some(m) = IDLE_WINDOWS.take(window) {
        return Some(m);
    }
    if IN_USE.fetch_add(window, Ordering::Relaxed) + window > budget {
        IN_USE.fetch_sub(window, Ordering::Relaxed);
        return None;
    }
    match MmapMut::map_anon(window) {
        Ok(m) => {
            // A fork child must never share a buffer the kernel may be writing into.
            let _ = m.advise(Advice::DontFork);
            // In 2 MiB pages a window is a few segments where 4 KiB pages would be a thousand:
            // the disk's queue takes 254 segments per request, so a 4 MiB read would be split
            // into requests of under 1 MiB (measured here: 2.0 against 1.2 GB/s).
            let _ = m.advise(Advice::HugePage);
            Some(m)
        }
        Err(_) => {
            IN_USE.fetch_sub(window, Ordering::Relaxed);
            None
        }
    }
}

/// Keeps the buffer of a window with no read in flight for the next description, or unmaps
/// it.
pub fn give_back_window(m: MmapMut) {
    if let Err(m) = IDLE_WINDOWS.keep(m) {
        IN_USE.fetch_sub(m.len(), Ordering::Relaxed);
    }
}

/// In a fork child: no window is the child's, and the parent's AIO contexts do not exist.
pub fn reset_after_fork() {
    IDLE_WINDOWS.reset_after_fork();
    IN_USE.store(0, Ordering::Relaxed);
    for slot in &IDLE_CONTEXTS {
        slot.store(0, Ordering::Relaxed);
    }
}

/// Bytes of windows allocated in this process.
#[cfg(test)]
pub fn in_use() -> usize {
    IN_USE.load(Ordering::Relaxed)
}

/// Unmaps every idle window of `window` bytes, so a test starts from its own budget.
#[cfg(test)]
pub fn drop_idle_windows(window: usize) {
    while let Some(m) = IDLE_WINDOWS.take(window) {
        IN_USE.fetch_sub(m.len(), Ordering::Relaxed);
    }
}
