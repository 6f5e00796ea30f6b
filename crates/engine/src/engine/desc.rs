//! The state shared by every fd that refers to one open file description the engine manages.

use super::{state, FDS, STATS};
use crate::align::Alignment;
use crate::bufpool::BufPool;
use crate::companion::{self, Companion};
use crate::io::FileIo;
use crate::lock::FutexMutex;
use crate::readahead::Readahead;
use crate::stats::Fallback;
use crate::sys;
use crate::writing::FileWrites;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// State shared by every fd that refers to one open file description.
pub struct Desc {
    pub(super) ident: (u64, u64),
    pub(super) lock: FutexMutex,
    pub(super) direct: AtomicBool,
    pub(super) align: Alignment,
    pub(super) accmode: i32,
    pub(super) append: AtomicBool,
    /// O_DIRECT / O_SYNC bits the shim added, hidden from F_GETFL.
    pub(super) added: AtomicI32,
    pub(super) companion: Companion,
    /// A private O_DIRECT descriptor of the same file that carries the direct I/O when the
    /// program's own description must stay buffered (-1: none, the program's fd is direct):
    /// on fd 0-2, glibc's standard streams read and write with calls no hook sees.
    pub(super) twin: AtomicI32,
    pub(super) ra: Readahead,
    /// The file's write sequence (read-ahead windows of it are stale after a write).
    pub(super) writes: FileWrites,
}

impl Desc {
    pub(super) fn io<'a>(&'a self, fd: i32, pool: &'a BufPool, nowait: bool) -> FileIo<'a> {
        let twin = self.twin.load(Ordering::Acquire);
        FileIo {
            fd: if twin >= 0 { twin } else { fd },
            align: self.align,
            companion: &self.companion,
            accmode: self.accmode,
            append: self.append.load(Ordering::Relaxed),
            writes: self.writes,
            pool,
            nowait,
            tuning: state().tuning(&self.ra),
        }
    }

    pub(super) fn has_twin(&self) -> bool {
        self.twin.load(Ordering::Acquire) >= 0
    }

    /// With a twin, both the program's fd and the twin must still be this file: glibc may
    /// close and reuse fd 0-2 unseen (fclose(stdin)), and the program may close the twin's
    /// number (a close loop before exec).
    pub(super) fn check_twin(&self, fd: i32) -> bool {
        let t = self.twin.load(Ordering::Acquire);
        t < 0 || (companion::is_file(fd, self.ident) && companion::is_file(t, self.ident))
    }

    /// Moves the description's direct I/O onto a twin (see `twin`); false if none could be
    /// opened.
    pub(super) fn use_twin(&self, fd: i32) -> bool {
        if self.has_twin() {
            return true;
        }
        let append = self.append.load(Ordering::Relaxed);
        let Ok(t) = companion::reopen(fd, self.accmode, append, libc::O_DIRECT, self.ident) else { return false };
        if self.twin.compare_exchange(-1, t, Ordering::AcqRel, Ordering::Acquire).is_err() {
            let _ = sys::close(t);
        }
        let _ = sys::set_o_direct(fd, false);
        self.added.fetch_and(!libc::O_DIRECT, Ordering::Relaxed);
        true
    }

    /// Clears O_DIRECT on the description for good: a stream or another process will use it
    /// with I/O the engine cannot see.
    pub(super) fn demote(&self, fd: i32, why: Fallback) {
        if self.direct.swap(false, Ordering::AcqRel) {
            let _ = sys::set_o_direct(fd, false);
            self.added.fetch_and(!libc::O_DIRECT, Ordering::Relaxed);
            STATS.fallback(why);
        }
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        let t = *self.twin.get_mut();
        if t >= 0 && companion::is_file(t, self.ident) {
            let _ = sys::close(t);
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn insert(
    fd: i32,
    st: &libc::stat,
    align: Alignment,
    accmode: i32,
    append: bool,
    direct: bool,
    added: i32,
    twin: i32,
) {
    FDS.insert(
        fd,
        Arc::new(Desc {
            ident: (st.st_dev, st.st_ino),
            lock: FutexMutex::new(),
            direct: AtomicBool::new(direct),
            align,
            accmode,
            append: AtomicBool::new(append),
            added: AtomicI32::new(added),
            companion: Companion::new((st.st_dev, st.st_ino)),
            twin: AtomicI32::new(twin),
            ra: Readahead::new((st.st_dev, st.st_ino)),
            writes: FileWrites::of((st.st_dev, st.st_ino)),
        }),
    );
}

/// Runs `f` with the description's offset lock (or `None` if it cannot be taken without
/// waiting in a signal handler).
pub(super) fn locked<R>(d: &Desc, nowait: bool, f: impl FnOnce() -> R) -> Option<R> {
    let _g = if nowait { d.lock.try_lock()? } else { d.lock.lock() };
    Some(f())
}
