//! Read-ahead for small sequential reads of one description: O_DIRECT loses the kernel's
//! readahead, so a loop of 4 KiB or 64 KiB reads would pay a device round trip each. After
//! two reads in a row at consecutive offsets, the engine reads a large aligned window
//! (several MiB: the device serves one big request at full speed) into a private buffer and
//! serves the following reads from it with a copy.
//!
//! The window is only trusted while the file is unchanged: the size, mtime and ctime seen
//! before it was filled must still be those of the file at each use (Linux 6.13+ gives
//! timestamps fine enough to tell a change after a query), and any write through the same
//! description discards it. Random reads never fill a window, so they move no more bytes
//! than they ask for. Windows share one memory budget; a description that cannot get one
//! simply reads without.

use crate::io::{FileIo, Outcome};
use crate::lock::FutexMutex;
use crate::sys::{self, SysResult};
use memmap2::{Advice, MmapMut};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Reads of this size or more are left alone: the device serves them well, and an aligned
/// one goes straight into the program's buffer without a copy.
const MAX_REQUEST: usize = 1 << 20;

/// Bytes of windows allocated in this process.
static IN_USE: AtomicUsize = AtomicUsize::new(0);

/// What a window's contents depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Stamp {
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(st: &libc::stat) -> Stamp {
        Stamp { size: st.st_size, mtime: (st.st_mtime, st.st_mtime_nsec), ctime: (st.st_ctime, st.st_ctime_nsec) }
    }
}

#[derive(Default)]
struct State {
    /// Where the last read ended.
    next: u64,
    /// Reads in a row that started where the previous one ended.
    streak: u32,
    buf: Option<MmapMut>,
    /// File offset of the window's first byte, and how many bytes are valid.
    off: u64,
    len: usize,
    /// The fill read less than asked: end of file was inside the window.
    eof: bool,
    stamp: Stamp,
    /// `Readahead::writes` when the window was filled.
    gen: u64,
}

/// The read-ahead state of one open file description.
pub struct Readahead {
    lock: FutexMutex,
    writes: AtomicU64,
    st: UnsafeCell<State>,
}

// SAFETY: `st` is only touched with `lock` held.
unsafe impl Sync for Readahead {}
// SAFETY: the window is plain memory owned by this value.
unsafe impl Send for Readahead {}

impl Default for Readahead {
    fn default() -> Self {
        Self::new()
    }
}

/// How read-ahead is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Window size in bytes (0: off). Reads of half a window or more, or of 1 MiB or more,
    /// are not served from it.
    pub window: usize,
    /// Bytes all windows of the process may use together.
    pub budget: usize,
}

impl Readahead {
    /// No window yet.
    pub fn new() -> Self {
        Readahead { lock: FutexMutex::new(), writes: AtomicU64::new(0), st: UnsafeCell::new(State::default()) }
    }

    /// A write through the description: the window may hold old bytes.
    pub fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Release);
    }

    /// Serves a read of `len` bytes at `off` from the window, filling it if the reads are
    /// sequential; `None` when the read should take the ordinary path (not sequential, too
    /// large, the window busy in another thread, no memory). `st` is the file's state
    /// taken before this call touched it.
    ///
    /// # Safety
    /// `buf` must be valid for writes of `len` bytes.
    pub unsafe fn serve(
        &self,
        io: &FileIo<'_>,
        st: &libc::stat,
        buf: *mut u8,
        len: usize,
        off: u64,
        out: &mut Outcome,
    ) -> Option<SysResult<usize>> {
        let (_, p) = io.tuning.readahead?;
        if p.window == 0
            || len == 0
            || len >= (p.window / 2).min(MAX_REQUEST)
            || st.st_mode & libc::S_IFMT != libc::S_IFREG
        {
            return None;
        }
        let _g = self.lock.try_lock()?;
        // SAFETY: the lock is held.
        let s = unsafe { &mut *self.st.get() };
        let stamp = Stamp::of(st);
        let gen = self.writes.load(Ordering::Acquire);
        if s.buf.is_some() && (s.stamp != stamp || s.gen != gen) {
            s.len = 0;
        }
        s.streak = if off == s.next { s.streak.saturating_add(1) } else { 0 };
        let in_window = off >= s.off && off < s.off + s.len as u64;
        if !in_window && s.streak < 1 {
            s.next = off + len as u64;
            return None;
        }
        let mut done = 0usize;
        while done < len {
            let pos = off + done as u64;
            if !(pos >= s.off && pos < s.off + s.len as u64) {
                if s.eof && pos >= s.off + s.len as u64 && s.len > 0 && s.stamp == stamp {
                    break; // end of file, as of this call
                }
                match fill(s, io, p, pos) {
                    Ok(true) => {
                        s.stamp = stamp;
                        s.gen = gen;
                        out.readahead_bytes += s.len as u64;
                    }
                    // No memory, or the kernel refused the window (EINVAL): the ordinary
                    // path knows what to do.
                    Ok(false) | Err(libc::EINVAL) if done == 0 => return None,
                    Ok(false) => break,
                    Err(e) if done == 0 => return Some(Err(e)),
                    Err(_) => break,
                }
                if pos >= s.off + s.len as u64 {
                    break; // nothing at or past `pos`: end of file
                }
            }
            let from = (pos - s.off) as usize;
            let n = (s.len - from).min(len - done);
            let w = s.buf.as_ref().expect("filled window");
            // SAFETY: `done + n <= len` stays inside the caller's buffer; the window is the
            // engine's private mapping.
            unsafe { std::ptr::copy_nonoverlapping(w[from..from + n].as_ptr(), buf.add(done), n) };
            done += n;
        }
        s.next = off + done as u64;
        Some(Ok(done))
    }

    /// In a fork child: the window was not inherited (MADV_DONTFORK), so it is forgotten
    /// without unmapping, and the lock is free again.
    pub fn reset_after_fork(&self) {
        self.lock.reset_after_fork();
        // SAFETY: only one thread exists in a fork child.
        let s = unsafe { &mut *self.st.get() };
        if let Some(m) = s.buf.take() {
            std::mem::forget(m);
        }
        *s = State::default();
    }
}

/// In a fork child: no window is the child's.
pub fn reset_budget_after_fork() {
    IN_USE.store(0, Ordering::Relaxed);
}

impl Drop for Readahead {
    fn drop(&mut self) {
        if let Some(m) = self.st.get_mut().buf.take() {
            IN_USE.fetch_sub(m.len(), Ordering::Relaxed);
        }
    }
}

/// Reads the window that starts at `pos` rounded down to the offset alignment. `Ok(false)`
/// when no window memory could be had.
fn fill(s: &mut State, io: &FileIo<'_>, p: Params, pos: u64) -> SysResult<bool> {
    if s.buf.is_none() {
        if IN_USE.fetch_add(p.window, Ordering::Relaxed) + p.window > p.budget {
            IN_USE.fetch_sub(p.window, Ordering::Relaxed);
            return Ok(false);
        }
        match MmapMut::map_anon(p.window) {
            Ok(m) => {
                // A fork child must never share a buffer the kernel may be writing into.
                let _ = m.advise(Advice::DontFork);
                s.buf = Some(m);
            }
            Err(_) => {
                IN_USE.fetch_sub(p.window, Ordering::Relaxed);
                return Ok(false);
            }
        }
    }
    let a = io.align.read_offset.max(1) as u64;
    let start = pos - pos % a;
    let w = s.buf.as_mut().expect("window allocated");
    let want = w.len() - w.len() % io.align.read_offset.max(1);
    s.len = 0;
    // SAFETY: the window is `w.len() >= want` bytes of page-aligned private memory.
    let n = unsafe { sys::pread(io.fd, w.as_mut_ptr(), want, start) }?;
    s.off = start;
    s.len = n;
    s.eof = n < want;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align;
    use crate::bufpool::BufPool;
    use crate::companion::Companion;
    use crate::io::Tuning;
    use std::path::PathBuf;

    const WINDOW: usize = 1 << 20;

    struct File {
        fd: i32,
        dir: PathBuf,
        align: align::Alignment,
        companion: Companion,
        pool: BufPool,
        ra: Readahead,
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = sys::close(self.fd);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ (i >> 12) as u8)).collect()
    }

    fn file(name: &str, data: &[u8]) -> File {
        let dir = std::env::temp_dir().join(format!("s3dlio-ra-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), data).unwrap();
        let path = std::ffi::CString::new(dir.join("f").to_str().unwrap()).unwrap();
        // O_DIRECT where the test directory's filesystem has it; the window logic is the same.
        let fd = sys::openat(libc::AT_FDCWD, &path, libc::O_RDONLY | libc::O_DIRECT, 0)
            .or_else(|_| sys::openat(libc::AT_FDCWD, &path, libc::O_RDONLY, 0))
            .unwrap();
        let st = sys::fstat(fd).unwrap();
        File {
            fd,
            dir,
            align: align::discover(fd),
            companion: Companion::new((st.st_dev, st.st_ino)),
            pool: BufPool::new(1 << 20, 4 << 20),
            ra: Readahead::new(),
        }
    }

    impl File {
        fn read(&self, off: u64, len: usize, out: &mut Outcome) -> Option<Vec<u8>> {
            let st = sys::fstat(self.fd).unwrap();
            let io = FileIo {
                fd: self.fd,
                align: self.align,
                companion: &self.companion,
                accmode: libc::O_RDONLY,
                append: false,
                ident: (st.st_dev, st.st_ino),
                pool: &self.pool,
                nowait: false,
                tuning: Tuning {
                    readahead: Some((&self.ra, Params { window: WINDOW, budget: 64 << 20 })),
                    ..Default::default()
                },
            };
            let mut buf = vec![0u8; len];
            // SAFETY: `buf` holds `len` bytes.
            let r = unsafe { self.ra.serve(&io, &st, buf.as_mut_ptr(), len, off, out) }?;
            buf.truncate(r.unwrap());
            Some(buf)
        }
    }

    #[test]
    fn sequential_small_reads_come_from_one_window() {
        let data = pattern(3 * WINDOW + 1234, 1);
        let f = file("seq", &data);
        let mut out = Outcome::default();
        let mut got = Vec::new();
        let mut off = 0u64;
        loop {
            let b = f.read(off, 4097, &mut out).expect("sequential reads are served");
            if b.is_empty() {
                break;
            }
            off += b.len() as u64;
            got.extend(b);
        }
        assert!(got == data, "bytes differ");
        // three full windows and a short one, each read from the device once
        assert_eq!(out.readahead_bytes, data.len() as u64);
    }

    #[test]
    fn random_and_large_reads_take_the_ordinary_path() {
        let data = pattern(2 * WINDOW, 2);
        let f = file("rand", &data);
        let mut out = Outcome::default();
        for off in [700_000u64, 5_000, 300_000, 1_500_000] {
            assert!(f.read(off, 65536, &mut out).is_none(), "random read at {off} served from a window");
        }
        assert!(f.read(0, WINDOW / 2, &mut out).is_none(), "a read of half a window is not read ahead");
        assert_eq!(out.readahead_bytes, 0, "random reads must not read ahead");
    }

    #[test]
    fn a_changed_file_or_a_write_discards_the_window() {
        let data = pattern(WINDOW, 3);
        let f = file("stale", &data);
        let mut out = Outcome::default();
        assert_eq!(f.read(0, 4096, &mut out).unwrap(), data[..4096]);
        let filled = out.readahead_bytes;
        // another writer changes bytes the window holds
        let mut w = std::fs::OpenOptions::new().write(true).open(f.dir.join("f")).unwrap();
        std::io::Seek::seek(&mut w, std::io::SeekFrom::Start(4096)).unwrap();
        std::io::Write::write_all(&mut w, b"fresh bytes").unwrap();
        drop(w);
        assert_eq!(&f.read(4096, 11, &mut out).unwrap(), b"fresh bytes");
        assert!(out.readahead_bytes > filled, "the window must be read again");
        let refilled = out.readahead_bytes;
        f.ra.wrote();
        assert_eq!(f.read(4107, 100, &mut out).unwrap(), data[4107..4207]);
        assert!(out.readahead_bytes > refilled, "a write through the description discards the window");
    }

    #[test]
    fn end_of_file_inside_the_window() {
        let data = pattern(10_000, 4);
        let f = file("eof", &data);
        let mut out = Outcome::default();
        let sizes: Vec<usize> = (0..3).map(|i| f.read(i * 4096, 4096, &mut out).unwrap().len()).collect();
        assert_eq!(sizes, [4096, 4096, 1808]);
        assert_eq!(f.read(10_000, 4096, &mut out).unwrap().len(), 0, "the next read is at end of file");
        assert!(f.read(12_288, 4096, &mut out).is_none(), "past the end, out of sequence: the kernel answers");
    }
}
