//! Read-ahead for sequential reads of one description: O_DIRECT loses the kernel's readahead,
//! so a loop of 4 KiB or 64 KiB reads would pay a device round trip each, and a misaligned
//! large read would wait for the device and then for its copy out of a bounce buffer. After
//! two reads in a row at consecutive offsets, the engine reads large aligned windows (4 MiB
//! each, in 2 MiB pages: the device serves one big request of few segments at full speed)
//! into private buffers with Linux AIO, up to three windows ahead of the program, and serves
//! its reads from them with a copy while the device reads on. How far ahead grows with how
//! much was read in a row, like the kernel's own readahead, so a short sequential run costs at
//! most one window. A single read of two windows or more is read as windows too, without
//! reading past its end.
//!
//! A window is only trusted while the file is unchanged: the size, mtime and ctime seen when it
//! was read must still be those of the file at each use (Linux 6.13+ gives timestamps fine
//! enough to tell a change after a query), and a write, truncate or mmap of the file through
//! any of its descriptions in this process discards it (see [`Writing`]). Random reads never
//! fill a window, so they move no more bytes than they ask for; a large aligned one goes
//! straight into the program's buffer. Windows share one memory budget; a description that
//! cannot get one simply reads without.

use crate::io::{FileIo, Outcome};
use crate::lock::FutexMutex;
use crate::sys::{self, SysResult};
use memmap2::{Advice, MmapMut};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Aligned reads of this size or more that are not part of a sequential run go to the kernel
/// as they are.
const DIRECT_REQUEST: usize = 1 << 20;

/// Windows per description: the one being served and up to three read ahead of it.
const MAX_WINDOWS: usize = 4;

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

/// The file's stamp and its write sequence in this process: what every window must match.
type Now = (Stamp, u64);

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

fn file_seq((dev, ino): (u64, u64)) -> &'static AtomicU64 {
    let h = (dev.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ino).wrapping_mul(0xff51_afd7_ed55_8ccd);
    &FILE_SEQ[(h >> 54) as usize % FILE_SEQ.len()]
}

/// A write in progress: while any is, no window of the file is read or trusted, and when it
/// ends every window read before is stale.
#[must_use]
pub struct Writing(&'static AtomicU64);

impl Writing {
    fn begin(seq: &'static AtomicU64) -> Self {
        seq.fetch_add(1, Ordering::AcqRel);
        Writing(seq)
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.fetch_add(ENDED - 1, Ordering::Release);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Empty,
    /// Being read asynchronously; `len` is what was asked for.
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
    /// The file's stamp and write sequence when the read was issued.
    made: Now,
}

impl Window {
    fn covers(&self, pos: u64) -> bool {
        self.phase != Phase::Empty && pos >= self.off && pos < self.end()
    }

    fn end(&self) -> u64 {
        self.off + self.len as u64
    }
}

#[derive(Default)]
struct State {
    /// Where the last read ended.
    next: u64,
    /// The last read started where the one before it ended, and the bytes read in such a run.
    in_run: bool,
    run: u64,
    /// The windows hold consecutive parts of the file, up to `frontier`.
    wins: [Window; MAX_WINDOWS],
    frontier: u64,
    in_flight: usize,
    /// This description's Linux AIO context (0: none yet); one per description, so that only
    /// its owner reaps it.
    ctx: libc::c_ulong,
    /// No AIO (io_setup failed: aio-max-nr reached; or the kernel refused a read): windows are
    /// read synchronously, one at a time.
    no_aio: bool,
    /// io_getevents failed: reads may still be in flight in `ctx`, which only io_destroy can
    /// wait for.
    broken: bool,
}

/// The read-ahead state of one open file description.
pub struct Readahead {
    lock: FutexMutex,
    /// The file's write sequence (see [`Writing`]).
    seq: &'static AtomicU64,
    st: UnsafeCell<State>,
}

// SAFETY: `st` is only touched with `lock` held.
unsafe impl Sync for Readahead {}
// SAFETY: the windows are plain memory owned by this value.
unsafe impl Send for Readahead {}

/// How read-ahead is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Window size in bytes (0: off).
    pub window: usize,
    /// Bytes all windows of the process may use together.
    pub budget: usize,
}

/// What [`Readahead::serve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Bytes copied into the program's buffer, from the start of the request.
    pub bytes: usize,
    /// The windows stopped before end of file and before the end of the request (a window's
    /// read failed, or no memory): the caller reads the rest itself.
    pub rest_unread: bool,
}

impl Readahead {
    /// No window yet, for the file `ident` (st_dev, st_ino).
    pub fn new(ident: (u64, u64)) -> Self {
        Readahead { lock: FutexMutex::new(), seq: file_seq(ident), st: UnsafeCell::new(State::default()) }
    }

    /// A write to the file through this description is starting: windows of every
    /// description of the file are stale from now on.
    pub fn writing(&self) -> Writing {
        Writing::begin(self.seq)
    }

    /// The file is being memory-mapped from this process: writes through a shared writable
    /// mapping reach the page cache without a call the engine sees, so such a file is never
    /// read ahead again here; any other mapping only discards the windows read so far.
    pub fn mapped(&self, shared_writable: bool) {
        drop(Writing::begin(self.seq));
        if shared_writable {
            self.seq.fetch_or(MAPPED, Ordering::AcqRel);
        }
    }

    /// The file's write sequence now, or `None` while a write is in progress or the file is
    /// mapped writable: no window may be read or used then.
    fn seq_now(&self) -> Option<u64> {
        let v = self.seq.load(Ordering::Acquire);
        (v & (MAPPED | WRITERS) == 0).then_some(v)
    }

    /// Serves a read of `len` bytes at `off` into `buf` from the windows, reading them if the
    /// reads are sequential or the read alone is large; `None` when the read should take the
    /// ordinary path (random, aligned and large, the windows busy in another thread, no
    /// memory). `st` is the file's state taken before this call touched it.
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
    ) -> Option<SysResult<Served>> {
        let (_, p) = io.tuning.readahead?;
        // A write-only description gets the kernel's EBADF, also at end of file.
        if p.window == 0 || len == 0 || io.accmode == libc::O_WRONLY || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        let end = off.checked_add(len as u64)?;
        let _g = self.lock.try_lock()?;
        // SAFETY: the lock is held.
        let s = unsafe { &mut *self.st.get() };
        let Some(seq) = self.seq_now() else {
            s.discard(out);
            s.sequential(off);
            s.next = end;
            return None;
        };
        let now = (Stamp::of(st), seq);
        if s.wins.iter().any(|w| w.phase != Phase::Empty && w.made != now) {
            s.discard(out);
        }
        s.sequential(off);
        // A large aligned read out of sequence goes straight into the program's buffer: no
        // copy, and the device moves exactly what was asked for.
        let direct = len >= DIRECT_REQUEST && io.align.read_ok(buf as usize, off, len);
        if s.find(off).is_none() && !s.in_run && (direct || len < 2 * p.window) {
            s.next = end;
            return None;
        }
        let limit = s.limit(p, end);
        let size = st.st_size.max(0) as u64;
        let mut done = 0usize;
        let mut rest_unread = false;
        while done < len {
            let pos = off + done as u64;
            if pos >= size {
                break; // end of file, as of this call
            }
            if s.find(pos).is_none() {
                s.discard(out);
                s.frontier = pos - pos % io.align.read_offset.max(1) as u64;
            }
            s.top_up(io, p, pos, limit, now, size, out);
            let Some(i) = s.find(pos) else {
                rest_unread = true; // no memory for a window
                break;
            };
            if s.wins[i].phase == Phase::InFlight {
                s.wait(i, out);
            }
            let w = &s.wins[i];
            if !w.covers(pos) {
                // The read failed or came back short before the size the file had: the
                // ordinary path gives the program the kernel's own answer.
                rest_unread = w.phase == Phase::Empty || w.end() < size;
                break;
            }
            let from = (pos - w.off) as usize;
            let n = (w.len - from).min(len - done);
            let m = w.buf.as_ref().expect("filled window");
            // SAFETY: `done + n <= len` stays inside the caller's buffer; the window is the
            // engine's private mapping.
            unsafe { std::ptr::copy_nonoverlapping(m[from..from + n].as_ptr(), buf.add(done), n) };
            done += n;
            if w.eof && from + n == w.len {
                rest_unread = w.end() < size;
                break;
            }
        }
        if done == 0 && rest_unread {
            s.next = end;
            return None;
        }
        s.next = off + done as u64;
        s.run = s.run.saturating_add(done as u64);
        s.top_up(io, p, s.next, limit, now, size, out);
        Some(Ok(Served { bytes: done, rest_unread }))
    }

    /// `read(2)` at the file position, when the reads are sequential and a ready window holds
    /// all of `[next, next+len)` (or up to end of file): copies from the window and moves the
    /// offset of `fd` (the program's descriptor) with one lseek by the count from the current
    /// position, whose result also proves the offset was where the last read left it. `None`
    /// when the ordinary path must find the position and serve the read.
    ///
    /// # Safety
    /// `buf` must be valid for writes of `len` bytes.
    pub unsafe fn serve_next(
        &self,
        io: &FileIo<'_>,
        fd: i32,
        buf: *mut u8,
        len: usize,
        out: &mut Outcome,
    ) -> Option<SysResult<usize>> {
        let (_, p) = io.tuning.readahead?;
        if p.window == 0 || len == 0 {
            return None;
        }
        let _g = self.lock.try_lock()?;
        // SAFETY: the lock is held.
        let s = unsafe { &mut *self.st.get() };
        let pos = s.next;
        let i = s.find(pos)?;
        if s.wins[i].phase != Phase::Ready {
            return None;
        }
        // Only a read a window can serve pays for the look at the file.
        let st = sys::fstat(io.fd).ok()?;
        let now = (Stamp::of(&st), self.seq_now()?);
        let w = &s.wins[i];
        if w.made != now {
            return None;
        }
        let n = (w.end() - pos).min(len as u64) as usize;
        if n < len && (!w.eof || w.end() < st.st_size.max(0) as u64) {
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
        let from = (pos - w.off) as usize;
        let m = w.buf.as_ref().expect("ready window");
        // SAFETY: `n <= len` bytes into the caller's buffer from the engine's private window.
        unsafe { std::ptr::copy_nonoverlapping(m[from..from + n].as_ptr(), buf, n) };
        s.in_run = true;
        s.run = s.run.saturating_add(n as u64);
        s.next = pos + n as u64;
        let limit = s.limit(p, s.next);
        s.top_up(io, p, s.next, limit, now, st.st_size.max(0) as u64, out);
        Some(Ok(n))
    }

    /// In a fork child: the windows were not inherited (MADV_DONTFORK) and neither was the
    /// AIO context, so they are forgotten without unmapping or destroying, and the lock is
    /// free again.
    pub fn reset_after_fork(&self) {
        self.lock.reset_after_fork();
        // SAFETY: only one thread exists in a fork child.
        let s = unsafe { &mut *self.st.get() };
        for w in &mut s.wins {
            if let Some(m) = w.buf.take() {
                std::mem::forget(m);
            }
        }
        *s = State::default();
    }
}

impl State {
    /// Notes whether a read at `off` continues the run.
    fn sequential(&mut self, off: u64) {
        self.in_run = off == self.next;
        if !self.in_run {
            self.run = 0;
        }
    }

    /// How far the windows may reach for a read ending at `end`: a sequential reader gets as
    /// much beyond it as it has read in a row, one window at least and three at most.
    fn limit(&self, p: Params, end: u64) -> u64 {
        if !self.in_run {
            return end;
        }
        let ahead = self.run.clamp(p.window as u64, ((MAX_WINDOWS - 1) * p.window) as u64);
        end.saturating_add(ahead)
    }

    /// The window holding `pos`, read or being read.
    fn find(&self, pos: u64) -> Option<usize> {
        self.wins.iter().position(|w| w.covers(pos))
    }

    /// Forgets every window, after waiting for those in flight: their buffers are the
    /// kernel's until then.
    fn discard(&mut self, out: &mut Outcome) {
        while self.in_flight > 0 && self.reap_one(out) {}
        for w in &mut self.wins {
            w.phase = Phase::Empty;
        }
    }

    /// Releases the windows the reader has passed, then starts reading windows from
    /// `frontier` on, as long as they start before `limit` and end of file and a window is
    /// free (allocating it from the budget). Without AIO only the window `pos` needs is read.
    #[allow(clippy::too_many_arguments)]
    fn top_up(&mut self, io: &FileIo<'_>, p: Params, pos: u64, limit: u64, now: Now, size: u64, out: &mut Outcome) {
        for w in &mut self.wins {
            if w.phase == Phase::Ready && w.end() <= pos {
                w.phase = Phase::Empty;
            }
        }
        let ro = io.align.read_offset.max(1);
        let want = (p.window - p.window % ro) as u64;
        if want == 0 {
            return;
        }
        // SAFETY: an iocb is plain data; the unused fields must be zero.
        let mut cbs: [libc::iocb; MAX_WINDOWS] = unsafe { std::mem::zeroed() };
        let mut ptrs = [std::ptr::null_mut::<libc::iocb>(); MAX_WINDOWS];
        let mut picked = [0usize; MAX_WINDOWS];
        let mut n = 0;
        let start = self.frontier;
        while self.frontier < limit.min(size) {
            if self.no_aio && self.frontier > pos {
                break;
            }
            let Some(k) = self.wins.iter().position(|w| w.phase == Phase::Empty && w.buf.is_some()).or_else(|| {
                let k = self.wins.iter().position(|w| w.buf.is_none())?;
                let first = self.wins.iter().all(|w| w.buf.is_none());
                allocate(&mut self.wins[k], p, first).then_some(k)
            }) else {
                break;
            };
            // A context only for a description that has a window to read: contexts count
            // against the system's aio-max-nr, which other programs need too.
            if self.ctx == 0 && !self.no_aio && !take_context(&mut self.ctx) {
                self.no_aio = true;
            }
            // No more than the file holds: the kernel pins (and first faults in) every page of
            // the buffer it is asked to fill.
            let ask = want.min((size - self.frontier).next_multiple_of(ro as u64));
            let w = &mut self.wins[k];
            let m = w.buf.as_mut().expect("allocated");
            (w.off, w.len, w.eof, w.made) = (self.frontier, ask as usize, false, now);
            if self.no_aio {
                // SAFETY: the window is at least `ask` bytes of page-aligned private memory.
                match unsafe { sys::pread(io.fd, m.as_mut_ptr(), ask as usize, w.off) } {
                    Ok(got) => {
                        out.readahead_bytes += got as u64;
                        (w.len, w.eof, w.phase) = (got, got < ask as usize, Phase::Ready);
                    }
                    Err(_) => return,
                }
            } else {
                w.phase = Phase::InFlight;
                let cb = &mut cbs[n];
                cb.aio_data = k as u64;
                cb.aio_lio_opcode = IOCB_CMD_PREAD;
                cb.aio_fildes = io.fd as u32;
                cb.aio_buf = m.as_mut_ptr() as u64;
                cb.aio_nbytes = ask;
                cb.aio_offset = w.off as i64;
                ptrs[n] = cb;
                picked[n] = k;
                n += 1;
            }
            self.frontier += ask;
        }
        if n == 0 {
            return;
        }
        // SAFETY: each iocb describes one window's private memory, which stays mapped until
        // the read is reaped (`wait`, `discard`, or Drop).
        let r = unsafe { libc::syscall(libc::SYS_io_submit, self.ctx, n as libc::c_long, ptrs.as_mut_ptr()) };
        let submitted = r.max(0) as usize;
        self.in_flight += submitted;
        for &k in &picked[submitted..n] {
            self.wins[k].phase = Phase::Empty;
        }
        if submitted < n {
            self.frontier = start + (submitted as u64) * want;
            if submitted == 0 && self.in_flight == 0 {
                // AIO refused this file (or the context broke): read synchronously from now on.
                self.no_aio = true;
            }
        }
    }

    /// Waits until window `i` is no longer in flight.
    fn wait(&mut self, i: usize, out: &mut Outcome) {
        while self.wins[i].phase == Phase::InFlight {
            if !self.reap_one(out) {
                return;
            }
        }
    }

    /// Waits for at least one read in flight and settles what completed: a window keeps the
    /// bytes read (fewer than asked: end of file); a failed read empties it. False if the
    /// context is unusable (then the windows in flight are given up for good).
    fn reap_one(&mut self, out: &mut Outcome) -> bool {
        let mut evs: [IoEvent; MAX_WINDOWS] = Default::default();
        loop {
            // SAFETY: `evs` holds MAX_WINDOWS events; a null timeout waits.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.ctx,
                    1 as libc::c_long,
                    MAX_WINDOWS as libc::c_long,
                    evs.as_mut_ptr(),
                    std::ptr::null_mut::<libc::timespec>(),
                )
            };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if r <= 0 {
                for w in &mut self.wins {
                    if w.phase == Phase::InFlight {
                        // The kernel may still write into it: never reuse or unmap it.
                        if let Some(m) = w.buf.take() {
                            std::mem::forget(m);
                        }
                        w.phase = Phase::Empty;
                    }
                }
                self.in_flight = 0;
                self.no_aio = true;
                self.broken = true;
                return false;
            }
            for ev in &evs[..r as usize] {
                let Some(w) = self.wins.get_mut(ev.data as usize) else { continue };
                self.in_flight = self.in_flight.saturating_sub(1);
                if ev.res < 0 {
                    w.phase = Phase::Empty;
                    continue;
                }
                out.readahead_bytes += ev.res as u64;
                w.eof = (ev.res as usize) < w.len;
                w.len = ev.res as usize;
                w.phase = Phase::Ready;
            }
            return true;
        }
    }
}

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

/// AIO contexts of closed descriptions, idle, for the next ones: io_destroy waits for an RCU
/// grace period (about 32 ms measured here), which a program reading many files would pay at
/// every close.
static IDLE_CONTEXTS: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];

/// Gives `ctx` an idle context, or a new one; false if the kernel has none to give.
fn take_context(ctx: &mut libc::c_ulong) -> bool {
    for slot in &IDLE_CONTEXTS {
        let c = slot.swap(0, Ordering::AcqRel);
        if c != 0 {
            *ctx = c;
            return true;
        }
    }
    // SAFETY: io_setup writes the new context id into `ctx`.
    let r = unsafe { libc::syscall(libc::SYS_io_setup, MAX_WINDOWS as libc::c_long, ctx as *mut libc::c_ulong) };
    if r != 0 {
        *ctx = 0;
    }
    r == 0
}

/// Keeps a context with nothing in flight for the next description, or destroys it.
fn give_back_context(ctx: libc::c_ulong) {
    for slot in &IDLE_CONTEXTS {
        if slot.compare_exchange(0, ctx, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return;
        }
    }
    // SAFETY: the context is the caller's own and has nothing in flight.
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
}

/// In a fork child: no window is the child's, and the parent's AIO contexts do not exist.
pub fn reset_after_fork() {
    IDLE_WINDOWS.reset_after_fork();
    IN_USE.store(0, Ordering::Relaxed);
    // Writes other threads of the parent had in progress never end here.
    for seq in &FILE_SEQ {
        let v = seq.load(Ordering::Relaxed);
        if v & WRITERS != 0 {
            seq.store((v & !WRITERS) + ENDED, Ordering::Relaxed);
        }
    }
    for slot in &IDLE_CONTEXTS {
        slot.store(0, Ordering::Relaxed);
    }
}

impl Drop for Readahead {
    fn drop(&mut self) {
        let s = self.st.get_mut();
        if s.ctx != 0 {
            let mut out = Outcome::default();
            while s.in_flight > 0 && s.reap_one(&mut out) {}
            if s.in_flight == 0 && !s.broken {
                give_back_context(s.ctx);
            } else {
                // Waits for whatever is still in flight, so the windows can be unmapped.
                // SAFETY: the context is this description's own.
                unsafe { libc::syscall(libc::SYS_io_destroy, s.ctx) };
            }
        }
        for w in &mut s.wins {
            if let Some(m) = w.buf.take() {
                if let Err(m) = IDLE_WINDOWS.keep(m) {
                    IN_USE.fetch_sub(m.len(), Ordering::Relaxed);
                }
            }
        }
    }
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

/// Gives `w` a buffer of one window: an idle one, else a new one from the budget; false if
/// none is left. A description's new windows after its `first` may only use the first half of
/// the budget, so that many readers at once each get one.
fn allocate(w: &mut Window, p: Params, first: bool) -> bool {
    if let Some(m) = IDLE_WINDOWS.take(p.window) {
        w.buf = Some(m);
        return true;
    }
    let budget = if first { p.budget } else { p.budget / 2 };
    if IN_USE.fetch_add(p.window, Ordering::Relaxed) + p.window > budget {
        IN_USE.fetch_sub(p.window, Ordering::Relaxed);
        return false;
    }
    match MmapMut::map_anon(p.window) {
        Ok(m) => {
            // A fork child must never share a buffer the kernel may be writing into.
            let _ = m.advise(Advice::DontFork);
            // In 2 MiB pages a window is a few segments where 4 KiB pages would be a thousand:
            // the disk's queue takes 254 segments per request, so a 4 MiB read would be split
            // into requests of under 1 MiB (measured here: 2.0 against 1.2 GB/s).
            let _ = m.advise(Advice::HugePage);
            w.buf = Some(m);
            true
        }
        Err(_) => {
            IN_USE.fetch_sub(p.window, Ordering::Relaxed);
            false
        }
    }
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
        accmode: i32,
        // The window budget is the process's: tests that use it run one at a time.
        _serial: std::sync::MutexGuard<'static, ()>,
    }

    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    impl Drop for File {
        fn drop(&mut self) {
            let _ = sys::close(self.fd);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ (i >> 12) as u8)).collect()
    }

    /// [`file`] without emptying the idle windows first.
    fn file2(name: &str, data: &[u8]) -> File {
        file_with(name, data, false)
    }

    fn file(name: &str, data: &[u8]) -> File {
        file_with(name, data, true)
    }

    fn file_with(name: &str, data: &[u8], fresh: bool) -> File {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // Each test starts with no idle window: budgets differ between tests.
        if fresh {
            while let Some(m) = IDLE_WINDOWS.take(WINDOW) {
                IN_USE.fetch_sub(m.len(), Ordering::Relaxed);
            }
        }
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
            ra: Readahead::new((st.st_dev, st.st_ino)),
            accmode: libc::O_RDONLY,
            _serial: serial,
        }
    }

    impl File {
        /// Reads into a buffer one byte past a page boundary, as a program's malloc'd
        /// buffer would be.
        fn read(&self, off: u64, len: usize, out: &mut Outcome) -> Option<Vec<u8>> {
            self.read_with(off, len, 64 << 20, out)
        }

        fn read_with(&self, off: u64, len: usize, budget: usize, out: &mut Outcome) -> Option<Vec<u8>> {
            self.read_at(off, len, budget, 1, out)
        }

        /// Reads into a buffer `misalign` bytes past a page boundary.
        fn read_at(&self, off: u64, len: usize, budget: usize, misalign: usize, out: &mut Outcome) -> Option<Vec<u8>> {
            let st = sys::fstat(self.fd).unwrap();
            let io = FileIo {
                fd: self.fd,
                align: self.align,
                companion: &self.companion,
                accmode: self.accmode,
                append: false,
                pool: &self.pool,
                nowait: false,
                tuning: Tuning { readahead: Some((&self.ra, Params { window: WINDOW, budget })), ..Default::default() },
            };
            let layout = std::alloc::Layout::from_size_align(len + 4096, 4096).unwrap();
            // SAFETY: a non-zero size.
            let mem = unsafe { std::alloc::alloc_zeroed(layout) };
            let p = mem.wrapping_add(misalign);
            // SAFETY: `p` has `len` bytes inside the allocation.
            let r = unsafe { self.ra.serve(&io, &st, p, len, off, out) };
            // SAFETY: as above; freed with its own layout.
            let got = r.map(|r| unsafe { std::slice::from_raw_parts(p, r.unwrap().bytes) }.to_vec());
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
        drop(f.ra.writing());
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

    #[test]
    fn one_large_read_is_pipelined_without_reading_past_it() {
        let data = pattern(6 * WINDOW, 5);
        let f = file("large", &data);
        let mut out = Outcome::default();
        let (off, len) = (1000u64, 3 * WINDOW + 5000);
        let got = f.read(off, len, &mut out).expect("a read of two windows or more is served");
        assert!(got == data[off as usize..off as usize + len], "bytes differ");
        // the aligned superset of the request, nothing beyond it
        assert_eq!(out.readahead_bytes, 4 * WINDOW as u64);
    }

    #[test]
    fn read_ahead_grows_with_the_run_and_stops_at_end_of_file() {
        let data = pattern(10 * WINDOW + 777, 6);
        let f = file("ramp", &data);
        let mut out = Outcome::default();
        let step = 300_001usize;
        let mut got = Vec::new();
        let mut off = 0u64;
        let mut ahead_after_first_window = None;
        loop {
            let b = f.read(off, step, &mut out).expect("sequential reads are served");
            if b.is_empty() {
                break;
            }
            off += b.len() as u64;
            got.extend(b);
            if ahead_after_first_window.is_none() && off > WINDOW as u64 {
                ahead_after_first_window = Some(out.readahead_bytes);
            }
        }
        assert!(got == data, "bytes differ");
        // A short run reads at most one window past what it asked for.
        assert!(ahead_after_first_window.unwrap() <= 3 * WINDOW as u64, "{ahead_after_first_window:?}");
        // Every byte of the file was read from the device once, and nothing past its end.
        assert_eq!(out.readahead_bytes, data.len() as u64);
    }

    #[test]
    fn without_window_memory_the_ordinary_path_reads() {
        let data = pattern(3 * WINDOW, 7);
        let f = file("nomem", &data);
        let mut out = Outcome::default();
        assert!(f.read_with(0, 3 * WINDOW - 1, 0, &mut out).is_none());
        assert_eq!(out.readahead_bytes, 0);
        // SAFETY: no other reference to the state exists in this test.
        assert_eq!(unsafe { (*f.ra.st.get()).ctx }, 0, "an AIO context was taken without a window to read");
        // one window's worth of budget still serves a large read, a window at a time
        let got = f.read_with(1, 3 * WINDOW - 1, WINDOW, &mut out).expect("served with one window");
        assert!(got == data[1..], "bytes differ");
    }

    #[test]
    fn a_closed_descriptions_aio_context_serves_the_next_one() {
        let data = pattern(4 * WINDOW, 8);
        let mut out = Outcome::default();
        let ctx = {
            let f = file("ctx1", &data);
            assert!(f.read(0, 3 * WINDOW, &mut out).is_some());
            // SAFETY: no other reference to the state exists in this test.
            unsafe { (*f.ra.st.get()).ctx }
        };
        assert_ne!(ctx, 0, "windows are read with AIO");
        let f = file("ctx2", &data);
        assert!(f.read(0, 3 * WINDOW, &mut out).is_some());
        // SAFETY: as above.
        let again = unsafe { (*f.ra.st.get()).ctx };
        assert_eq!(again, ctx, "the idle context is reused, not destroyed");
    }

    #[test]
    fn a_write_only_description_is_left_to_the_kernel() {
        let mut f = file("wronly", &pattern(WINDOW, 9));
        f.accmode = libc::O_WRONLY;
        let mut out = Outcome::default();
        // in sequence and at end of file: the kernel's EBADF must reach the program
        assert!(f.read(0, 4096, &mut out).is_none());
        assert!(f.read(4096, 4096, &mut out).is_none());
        assert!(f.read(WINDOW as u64, 4096, &mut out).is_none());
        assert_eq!(out.readahead_bytes, 0);
    }

    #[test]
    fn large_aligned_reads_go_direct_unless_in_sequence() {
        let data = pattern(8 * WINDOW, 10);
        let f = file("aligned", &data);
        let mut out = Outcome::default();
        let a = f.align.mem.max(f.align.read_offset);
        // out of sequence: straight to the kernel, whatever the size
        for off in [3 * WINDOW as u64, WINDOW as u64] {
            assert!(f.read_at(off, WINDOW, 64 << 20, a, &mut out).is_none(), "aligned read at {off} was windowed");
            assert!(f.read_at(off, 3 * WINDOW, 64 << 20, a, &mut out).is_none(), "aligned read at {off} was windowed");
        }
        assert_eq!(out.readahead_bytes, 0);
        // the same reads in sequence are read ahead
        let mut got = Vec::new();
        for k in 0..8u64 {
            let r = f.read_at(k * WINDOW as u64, WINDOW, 64 << 20, a, &mut out);
            match r {
                Some(b) => got.extend(b),
                None => {
                    // the first read is not in sequence yet
                    assert_eq!(k, 0, "read {k} of a sequential run was not served");
                    got.extend(&data[..WINDOW]);
                }
            }
        }
        assert!(got == data, "bytes differ");
        assert!(out.readahead_bytes > 0);
    }

    #[test]
    fn a_write_through_another_description_discards_and_holds_off_windows() {
        let data = pattern(4 * WINDOW, 12);
        let f = file("otherdesc", &data);
        let st = sys::fstat(f.fd).unwrap();
        let other = Readahead::new((st.st_dev, st.st_ino));
        let mut out = Outcome::default();
        assert_eq!(f.read(0, 4096, &mut out).unwrap(), data[..4096]);
        let filled = out.readahead_bytes;
        let w = other.writing();
        assert!(f.read(4096, 4096, &mut out).is_none(), "a window was used while a write of the file ran");
        std::fs::OpenOptions::new()
            .write(true)
            .open(f.dir.join("f"))
            .and_then(|h| std::os::unix::fs::FileExt::write_all_at(&h, b"new", 8192))
            .unwrap();
        drop(w);
        assert_eq!(&f.read(8192, 3, &mut out).unwrap(), b"new");
        assert!(out.readahead_bytes > filled, "the windows read before the write were used");
    }

    #[test]
    fn a_shared_writable_mapping_ends_read_ahead_of_the_file() {
        let data = pattern(2 * WINDOW, 13);
        let f = file("mapped", &data);
        let mut out = Outcome::default();
        assert!(f.read(0, 4096, &mut out).is_some());
        f.ra.mapped(false);
        assert!(f.read(4096, 4096, &mut out).is_some(), "a private or read-only mapping stops nothing");
        f.ra.mapped(true);
        let served = (0..4).any(|k| f.read(8192 + k * 4096, 4096, &mut out).is_some());
        // The slot is the process's: later tests' files may reuse this inode number.
        f.ra.seq.fetch_and(!MAPPED, Ordering::Relaxed);
        assert!(!served, "a file mapped shared and writable was still read ahead");
    }

    #[test]
    fn a_closed_descriptions_windows_serve_the_next_one() {
        let data = pattern(2 * WINDOW, 14);
        let mut out = Outcome::default();
        let first = {
            let f = file("idle1", &data);
            assert!(f.read(0, 4096, &mut out).is_some());
            // SAFETY: no other reference to the state exists in this test.
            unsafe { (*f.ra.st.get()).wins.iter().find_map(|w| w.buf.as_ref().map(|m| m.as_ptr() as usize)) }.unwrap()
        };
        let in_use = IN_USE.load(Ordering::Relaxed);
        assert!(in_use >= WINDOW, "idle windows stay counted");
        let f = file2("idle2", &data);
        assert!(f.read(0, 4096, &mut out).is_some());
        // SAFETY: as above.
        let again = unsafe {
            (*f.ra.st.get()).wins.iter().filter_map(|w| w.buf.as_ref().map(|m| m.as_ptr() as usize)).collect::<Vec<_>>()
        };
        assert!(again.contains(&first), "a new window was mapped while an idle one was kept");
    }
}
