//! Locks the engine can reset in a fork child: a futex mutex for long sections and a spin
//! reader-writer lock for the fd table's few-instruction sections.
//!
//! std's locks cannot be reset after `fork`, and a child forked while another thread held one
//! would block forever. These keep their whole state in one atomic word that the child's
//! at-fork handler stores back to "unlocked": the threads that held them do not exist there.

use crate::sys::{futex_wait, futex_wake_one};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// A mutex: 0 unlocked, 1 locked, 2 locked with waiters (Drepper's "Futexes are tricky").
#[derive(Debug, Default)]
pub struct FutexMutex {
    state: AtomicU32,
}

/// Releases the [`FutexMutex`] when dropped.
#[must_use]
pub struct FutexGuard<'a>(&'a FutexMutex);

impl FutexMutex {
    /// An unlocked mutex.
    pub const fn new() -> Self {
        FutexMutex { state: AtomicU32::new(0) }
    }

    /// Blocks until the lock is held.
    pub fn lock(&self) -> FutexGuard<'_> {
        if self.state.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            while self.state.swap(2, Ordering::Acquire) != 0 {
                futex_wait(&self.state, 2);
            }
        }
        FutexGuard(self)
    }

    /// Takes the lock only if it is free: for code that may run inside a signal handler
    /// that interrupted the holder on this very thread.
    pub fn try_lock(&self) -> Option<FutexGuard<'_>> {
        self.state.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).ok().map(|_| FutexGuard(self))
    }

    /// Forces the lock free. Only for a fork child, where no other thread exists.
    pub fn reset_after_fork(&self) {
        self.state.store(0, Ordering::Relaxed);
    }

    /// Releases a lock whose guard was forgotten (held across `fork` by the at-fork
    /// handlers), waking a waiter as the guard's drop would.
    pub fn unlock_forgotten(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
            futex_wake_one(&self.state);
        }
    }
}

/// Whether an at-fork prepare handler holds a [`FutexMutex`] across `fork`.
#[derive(Debug, Default)]
pub struct ForkHold(AtomicBool);

impl ForkHold {
    /// Nothing held.
    pub const fn new() -> Self {
        ForkHold(AtomicBool::new(false))
    }

    /// The at-fork prepare handler: takes `lock` so that no thread holds it, or is changing
    /// what it guards, while the process forks. It waits a bounded time (holders never block
    /// long); if it cannot, nothing is held, and the child must not trust what `lock` guards.
    pub fn prepare(&self, lock: &FutexMutex) {
        for _ in 0..2000 {
            if let Some(g) = lock.try_lock() {
                std::mem::forget(g);
                self.0.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }

    /// In the parent after fork.
    pub fn parent(&self, lock: &FutexMutex) {
        if self.0.swap(false, Ordering::Relaxed) {
            lock.unlock_forgotten();
        }
    }

    /// In the child: `lock` is free again (its holder's thread does not exist there). True if
    /// the prepare handler held it, so that what it guards is whole.
    pub fn child(&self, lock: &FutexMutex) -> bool {
        let held = self.0.swap(false, Ordering::Relaxed);
        lock.reset_after_fork();
        held
    }
}

impl Drop for FutexGuard<'_> {
    fn drop(&mut self) {
        self.0.unlock_forgotten();
    }
}

const WRITER: u32 = 1 << 31;

/// A reader-writer spin lock for sections of a few instructions (no I/O, no allocation).
#[derive(Debug, Default)]
pub struct SpinRw {
    state: AtomicU32,
}

impl SpinRw {
    /// An unlocked lock.
    pub const fn new() -> Self {
        SpinRw { state: AtomicU32::new(0) }
    }

    /// Runs `f` holding the lock shared; `None` if `try_only` and a writer holds it.
    pub fn read<R>(&self, try_only: bool, f: impl FnOnce() -> R) -> Option<R> {
        let mut spins = 0u32;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & WRITER == 0 {
                if self.state.compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    break;
                }
            } else if try_only {
                return None;
            } else {
                backoff(&mut spins);
            }
        }
        let r = f();
        self.state.fetch_sub(1, Ordering::Release);
        Some(r)
    }

    /// Runs `f` holding the lock exclusively.
    pub fn write<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut spins = 0u32;
        while self.state.compare_exchange_weak(0, WRITER, Ordering::Acquire, Ordering::Relaxed).is_err() {
            backoff(&mut spins);
        }
        let r = f();
        self.state.store(0, Ordering::Release);
        r
    }

    /// Forces the lock free. Only for a fork child.
    pub fn reset_after_fork(&self) {
        self.state.store(0, Ordering::Relaxed);
    }
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        // SAFETY: sched_yield has no arguments and cannot fail in a way that matters here.
        unsafe {
            libc::sched_yield();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn mutex_excludes_and_counts() {
        let m = Arc::new(FutexMutex::new());
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (m, c) = (m.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let _g = m.lock();
                        // A non-atomic read-modify-write made safe only by the lock.
                        let v = c.load(Ordering::Relaxed);
                        c.store(v + 1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(counter.load(Ordering::Relaxed), 40_000);
    }

    #[test]
    fn try_lock_and_reset() {
        let m = FutexMutex::new();
        let g = m.lock();
        assert!(m.try_lock().is_none());
        drop(g);
        assert!(m.try_lock().is_some());
        std::mem::forget(m.lock());
        m.reset_after_fork();
        assert!(m.try_lock().is_some());
    }

    #[test]
    fn spin_rw_readers_share_writer_excludes() {
        let l = SpinRw::new();
        assert_eq!(l.read(false, || l.read(true, || 7)), Some(Some(7)));
        l.write(|| ());
        let l2 = SpinRw::new();
        l2.state.store(WRITER, Ordering::Relaxed);
        assert_eq!(l2.read(true, || 1), None);
        l2.reset_after_fork();
        assert_eq!(l2.read(true, || 1), Some(1));
    }
}
