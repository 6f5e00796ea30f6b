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

/// Reads of this size or more are left alone: the device serves them well, an aligned one
/// straight into the program's buffer, a misaligned one through several MiB of bounce
/// buffers read with one call (measured faster than windows: see docs/benchmarks.md).
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Empty,
    /// Read asynchronously; `len` is not known yet.
    InFlight,
    Ready,
}

/// One window: a private buffer and the part of the file it holds.
#[derive(Default)]
struct Window {
    buf: Option<MmapMut>,
    phase: Phase,
    /// File offset of the first byte, and how many bytes are valid (or asked for, in flight).
    off: u64,
    len: usize,
    /// The read returned less than asked: end of file was inside the window.
    eof: bool,
    stamp: Stamp,
    /// `Readahead::writes` when the read was issued.
    gen: u64,
    /// In flight: how many requests, of how many bytes each.
    pieces: usize,
    piece: usize,
}

impl Window {
    fn covers(&self, pos: u64) -> bool {
        self.phase != Phase::Empty && pos >= self.off && pos < self.off + self.len as u64
    }

    fn end(&self) -> u64 {
        self.off + self.len as u64
    }
}

#[derive(Default)]
struct State {
    /// Where the last read ended.
    next: u64,
    /// Reads in a row that started where the previous one ended.
    streak: u32,
    /// The window being served and the one read ahead of it.
    cur: Window,
    ahead: Window,
    /// This description's Linux AIO context (0: none yet), for reading `ahead` while the
    /// program consumes `cur`; one per description, so that only its owner reaps it.
    ctx: libc::c_ulong,
    /// io_setup failed (aio-max-nr reached): read ahead synchronously only.
    no_aio: bool,
}

/// The read-ahead state of one open file description.
pub struct Readahead {
    lock: FutexMutex,
    writes: AtomicU64,
    st: UnsafeCell<State>,
}

// SAFETY: `st` is only touched with `lock` held.
unsafe impl Sync for Readahead {}
// SAFETY: the windows are plain memory owned by this value.
unsafe impl Send for Readahead {}

impl Default for Readahead {
    fn default() -> Self {
        Self::new()
    }
}

/// How read-ahead is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Window size in bytes (0: off). Reads of half a window or 1 MiB, whichever is less,
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

    /// A write through the description: the windows may hold old bytes.
    pub fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Release);
    }

    /// Serves a read of `len` bytes at `off` from the windows, reading them if the reads are
    /// sequential; `None` when the read should take the ordinary path (not sequential, too
    /// large, the windows busy in another thread, no memory). `st` is the file's state
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
        let now = (Stamp::of(st), self.writes.load(Ordering::Acquire));
        if s.cur.phase == Phase::Ready && (s.cur.stamp, s.cur.gen) != now {
            s.cur.phase = Phase::Empty;
        }
        if s.ahead.phase == Phase::Ready && (s.ahead.stamp, s.ahead.gen) != now {
            s.ahead.phase = Phase::Empty;
        }
        s.streak = if off == s.next { s.streak.saturating_add(1) } else { 0 };
        if !s.cur.covers(off) && !s.ahead.covers(off) && s.streak < 1 {
            s.next = off + len as u64;
            return None;
        }
        let mut done = 0usize;
        while done < len {
            let pos = off + done as u64;
            if !s.cur.covers(pos) {
                if s.ahead.covers(pos) {
                    if s.ahead.phase == Phase::InFlight {
                        s.reap(now, out);
                    }
                    std::mem::swap(&mut s.cur, &mut s.ahead);
                    s.ahead.phase = Phase::Empty; // the old window's buffer reads the next one
                    continue;
                }
                if s.cur.phase == Phase::Ready && s.cur.eof && pos >= s.cur.end() {
                    break; // end of file, as of this call
                }
                if s.ahead.phase == Phase::InFlight {
                    s.reap(now, out); // its buffer is the kernel's until then
                }
                match fill(&mut s.cur, io, p, pos) {
                    Ok(true) => {
                        (s.cur.stamp, s.cur.gen) = now;
                        out.readahead_bytes += s.cur.len as u64;
                    }
                    // No memory, or the kernel refused the window (EINVAL): the ordinary
                    // path knows what to do.
                    Ok(false) | Err(libc::EINVAL) if done == 0 => return None,
                    Ok(false) => break,
                    Err(e) if done == 0 => return Some(Err(e)),
                    Err(_) => break,
                }
                if !s.cur.covers(pos) {
                    break; // nothing at or past `pos`: end of file
                }
            }
            s.read_ahead(io, p, now);
            let from = (pos - s.cur.off) as usize;
            let n = (s.cur.len - from).min(len - done);
            let w = s.cur.buf.as_ref().expect("filled window");
            // SAFETY: `done + n <= len` stays inside the caller's buffer; the window is the
            // engine's private mapping.
            unsafe { std::ptr::copy_nonoverlapping(w[from..from + n].as_ptr(), buf.add(done), n) };
            done += n;
        }
        s.next = off + done as u64;
        Some(Ok(done))
    }

    /// `read(2)` at the file position, when the reads are sequential and the current window
    /// holds all of `[next, next+len)` (or up to end of file): copies from the window and
    /// moves the offset of `fd` (the program's descriptor) with one lseek by the count from
    /// the current position, whose result also proves the offset was where the last read
    /// left it. `None` when the ordinary path must find the position and serve the read.
    ///
    /// # Safety
    /// `buf` must be valid for writes of `len` bytes.
    pub unsafe fn serve_next(&self, io: &FileIo<'_>, fd: i32, buf: *mut u8, len: usize) -> Option<SysResult<usize>> {
        let (_, p) = io.tuning.readahead?;
        if p.window == 0 || len == 0 || len >= p.window / 2 {
            return None;
        }
        let _g = self.lock.try_lock()?;
        // SAFETY: the lock is held.
        let s = unsafe { &mut *self.st.get() };
        let pos = s.next;
        if s.cur.phase != Phase::Ready || !s.cur.covers(pos) {
            return None;
        }
        // Only a read the window can serve pays for the look at the file.
        let st = sys::fstat(io.fd).ok()?;
        let now = (Stamp::of(&st), self.writes.load(Ordering::Acquire));
        if (s.cur.stamp, s.cur.gen) != now {
            return None;
        }
        let n = (s.cur.end() - pos).min(len as u64) as usize;
        if n < len && !s.cur.eof {
            return None; // the rest is in the next window: the ordinary path crosses over
        }
        match sys::lseek(fd, n as i64, libc::SEEK_CUR) {
            Ok(at) if at == pos + n as u64 => {}
            Ok(at) => {
                // Someone else moved the offset: put it back where it was.
                let _ = sys::lseek(fd, at as i64 - n as i64, libc::SEEK_SET);
                return None;
            }
            Err(_) => return None,
        }
        s.read_ahead(io, p, now);
        let from = (pos - s.cur.off) as usize;
        let w = s.cur.buf.as_ref().expect("ready window");
        // SAFETY: `n <= len` bytes into the caller's buffer from the engine's private window.
        unsafe { std::ptr::copy_nonoverlapping(w[from..from + n].as_ptr(), buf, n) };
        s.streak = s.streak.saturating_add(1);
        s.next = pos + n as u64;
        Some(Ok(n))
    }

    /// In a fork child: the windows were not inherited (MADV_DONTFORK) and neither was the
    /// AIO context, so they are forgotten without unmapping or destroying, and the lock is
    /// free again.
    pub fn reset_after_fork(&self) {
        self.lock.reset_after_fork();
        // SAFETY: only one thread exists in a fork child.
        let s = unsafe { &mut *self.st.get() };
        for w in [&mut s.cur, &mut s.ahead] {
            if let Some(m) = w.buf.take() {
                std::mem::forget(m);
            }
        }
        *s = State::default();
    }
}

impl State {
    /// Starts reading the window after `cur` asynchronously, if there is one to read and
    /// memory and an AIO context for it.
    fn read_ahead(&mut self, io: &FileIo<'_>, p: Params, now: (Stamp, u64)) {
        if self.cur.phase != Phase::Ready || self.cur.eof || self.ahead.phase != Phase::Empty || self.no_aio {
            return;
        }
        if self.ctx == 0 {
            // SAFETY: io_setup writes the new context id into `ctx`.
            if unsafe {
                libc::syscall(libc::SYS_io_setup, MAX_PIECES as libc::c_long, &mut self.ctx as *mut libc::c_ulong)
            } != 0
            {
                self.ctx = 0;
                self.no_aio = true;
                return;
            }
        }
        if self.ahead.buf.is_none() && !allocate(&mut self.ahead, p) {
            return;
        }
        let w = &mut self.ahead;
        let m = w.buf.as_mut().expect("allocated");
        let want = m.len() - m.len() % io.align.read_offset.max(1);
        let start = self.cur.end();
        // A window larger than one request's worth is read as several requests in flight.
        let pieces = want.div_ceil(AIO_PIECE).clamp(1, MAX_PIECES);
        let piece = want.div_ceil(pieces).next_multiple_of(io.align.read_offset.max(1));
        // SAFETY: an iocb is plain data; the unused fields must be zero.
        let mut cbs: [libc::iocb; MAX_PIECES] = unsafe { std::mem::zeroed() };
        let mut ptrs = [std::ptr::null_mut::<libc::iocb>(); MAX_PIECES];
        let mut n = 0;
        while n < pieces && n * piece < want {
            let cb = &mut cbs[n];
            cb.aio_data = n as u64;
            cb.aio_lio_opcode = IOCB_CMD_PREAD;
            cb.aio_fildes = io.fd as u32;
            cb.aio_buf = m.as_mut_ptr() as u64 + (n * piece) as u64;
            cb.aio_nbytes = piece.min(want - n * piece) as u64;
            cb.aio_offset = (start + (n * piece) as u64) as i64;
            ptrs[n] = cb;
            n += 1;
        }
        // SAFETY: each iocb describes part of the window's private memory, which stays
        // mapped until the reads are reaped (`reap`, or io_destroy in `drop`).
        let submitted = unsafe { libc::syscall(libc::SYS_io_submit, self.ctx, n as libc::c_long, ptrs.as_mut_ptr()) };
        if submitted <= 0 {
            return;
        }
        w.phase = Phase::InFlight;
        w.off = start;
        w.len = want;
        w.pieces = submitted as usize;
        w.piece = piece;
        (w.stamp, w.gen) = now;
    }

    /// Waits for the window in flight. It is kept only if the file is still as it was
    /// when the reads were issued; its valid bytes are the pieces read in full, up to the
    /// first short one (end of file).
    fn reap(&mut self, now: (Stamp, u64), out: &mut Outcome) {
        let mut evs: [IoEvent; MAX_PIECES] = Default::default();
        let mut got = [-1i64; MAX_PIECES];
        let mut left = self.ahead.pieces;
        while left > 0 {
            // SAFETY: `evs` holds MAX_PIECES events; a null timeout waits.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.ctx,
                    1 as libc::c_long,
                    left as libc::c_long,
                    evs.as_mut_ptr(),
                    std::ptr::null_mut::<libc::timespec>(),
                )
            };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if r <= 0 {
                // The context is unusable: reads may still be running, so the buffer is
                // never reused.
                if let Some(m) = self.ahead.buf.take() {
                    std::mem::forget(m);
                }
                self.ahead.phase = Phase::Empty;
                self.no_aio = true;
                return;
            }
            for ev in &evs[..r as usize] {
                if let Some(g) = got.get_mut(ev.data as usize) {
                    *g = ev.res;
                }
            }
            left -= r as usize;
        }
        let w = &mut self.ahead;
        if got[0] < 0 || (w.stamp, w.gen) != now {
            w.phase = Phase::Empty;
            return;
        }
        let mut len = 0usize;
        for (k, &g) in got[..w.pieces].iter().enumerate() {
            let full = w.piece.min(w.len - k * w.piece);
            let g = g.max(0) as usize;
            len += g;
            if g < full {
                break;
            }
        }
        out.readahead_bytes += got[..w.pieces].iter().map(|&g| g.max(0) as u64).sum::<u64>();
        w.eof = len < w.len;
        w.len = len;
        w.phase = Phase::Ready;
    }
}

/// Size of each asynchronous request of a window, and at most how many there are. Measured
/// here: one 4 MiB request reads faster than four of 1 MiB (docs/benchmarks.md, and
/// max_sectors_kb of the disk is 4096).
const AIO_PIECE: usize = 4 << 20;
const MAX_PIECES: usize = 16;

/// `IOCB_CMD_PREAD` of linux/aio_abi.h.
const IOCB_CMD_PREAD: u16 = 0;

/// `struct io_event` of linux/aio_abi.h.
#[repr(C)]
#[derive(Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// In a fork child: no window is the child's.
pub fn reset_budget_after_fork() {
    IN_USE.store(0, Ordering::Relaxed);
}

impl Drop for Readahead {
    fn drop(&mut self) {
        let s = self.st.get_mut();
        if s.ctx != 0 {
            // Waits for a read still in flight, so its window can be unmapped.
            // SAFETY: the context is this description's own.
            unsafe { libc::syscall(libc::SYS_io_destroy, s.ctx) };
        }
        for w in [&mut s.cur, &mut s.ahead] {
            if let Some(m) = w.buf.take() {
                IN_USE.fetch_sub(m.len(), Ordering::Relaxed);
            }
        }
    }
}

/// Gives `w` a buffer of one window from the budget; false if none is left.
fn allocate(w: &mut Window, p: Params) -> bool {
    if IN_USE.fetch_add(p.window, Ordering::Relaxed) + p.window > p.budget {
        IN_USE.fetch_sub(p.window, Ordering::Relaxed);
        return false;
    }
    match MmapMut::map_anon(p.window) {
        Ok(m) => {
            // A fork child must never share a buffer the kernel may be writing into.
            let _ = m.advise(Advice::DontFork);
            w.buf = Some(m);
            true
        }
        Err(_) => {
            IN_USE.fetch_sub(p.window, Ordering::Relaxed);
            false
        }
    }
}

/// Reads the window that starts at `pos` rounded down to the offset alignment, now.
/// `Ok(false)` when no window memory could be had.
fn fill(w: &mut Window, io: &FileIo<'_>, p: Params, pos: u64) -> SysResult<bool> {
    if w.buf.is_none() && !allocate(w, p) {
        return Ok(false);
    }
    let a = io.align.read_offset.max(1) as u64;
    let start = pos - pos % a;
    let m = w.buf.as_mut().expect("window allocated");
    let want = m.len() - m.len() % io.align.read_offset.max(1);
    w.phase = Phase::Empty;
    // SAFETY: the window is `m.len() >= want` bytes of page-aligned private memory.
    let n = unsafe { sys::pread(io.fd, m.as_mut_ptr(), want, start) }?;
    w.off = start;
    w.len = n;
    w.eof = n < want;
    w.phase = Phase::Ready;
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
        /// Reads into a buffer one byte past a page boundary, as a program's malloc'd
        /// buffer would be.
        fn read(&self, off: u64, len: usize, out: &mut Outcome) -> Option<Vec<u8>> {
            let st = sys::fstat(self.fd).unwrap();
            let io = FileIo {
                fd: self.fd,
                align: self.align,
                companion: &self.companion,
                accmode: libc::O_RDONLY,
                append: false,
                pool: &self.pool,
                nowait: false,
                tuning: Tuning {
                    readahead: Some((&self.ra, Params { window: WINDOW, budget: 64 << 20 })),
                    ..Default::default()
                },
            };
            let layout = std::alloc::Layout::from_size_align(len + 4096, 4096).unwrap();
            // SAFETY: a non-zero size.
            let mem = unsafe { std::alloc::alloc_zeroed(layout) };
            let p = mem.wrapping_add(1);
            // SAFETY: `p` has `len` bytes inside the allocation.
            let r = unsafe { self.ra.serve(&io, &st, p, len, off, out) };
            // SAFETY: as above; freed with its own layout.
            let got = r.map(|r| unsafe { std::slice::from_raw_parts(p, r.unwrap()) }.to_vec());
            // SAFETY: allocated above with `layout`.
            unsafe { std::alloc::dealloc(mem, layout) };
            got
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
        assert_eq!(out.readahead_bytes, 0, "random reads must not read ahead");
        assert!(f.read(0, WINDOW / 2, &mut out).is_none(), "half a window is not read ahead");
        assert_eq!(out.readahead_bytes, 0);
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
