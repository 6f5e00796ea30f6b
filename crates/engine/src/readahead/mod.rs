//! Read-ahead for sequential reads of one description: O_DIRECT loses the kernel's readahead,
//! so a loop of 4 KiB or 64 KiB reads would pay a device round trip each, and a misaligned
//! large read would wait for the device and then for its copy out of a bounce buffer. Once a
//! run of reads has shown itself (a read that starts where the previous one ended), the engine
//! reads aligned windows ahead of the program into private buffers (in 2 MiB pages, two
//! windows to a page by default: the device serves a request of few segments at full speed)
//! with Linux AIO, and serves its reads from them with a copy while the device reads on. How
//! far ahead is the job of [`policy`], modelled on the kernel's readahead state machine: small
//! at first, from the size of the requests, growing with the run up to one window
//! (`S3DLIO_DIRECT_READAHEAD`) beyond the reader, read as requests of a quarter window;
//! nothing for reads that do not continue a run. A single read of two windows or more is read
//! as windows too, without reading past its end.
//!
//! A window is only trusted while the file is unchanged: the size, mtime and ctime seen when it
//! was read must still be those of the file at each use (Linux 6.13+ gives timestamps fine
//! enough to tell a change after a query), and a write, truncate or mmap of the file through
//! any of its descriptions in this process discards it (see [`crate::writing`]). Windows share
//! one memory budget; a description that cannot get one simply reads without. What windows
//! ask of the device is counted when it is asked, whether or not the program ever reads it.

mod policy;
mod spares;

use crate::align::Alignment;
use crate::lock::FutexMutex;
use crate::sys::{self, aio, SysResult};
use crate::usercopy;
use crate::writing::FileWrites;
use memmap2::MmapMut;
use policy::{Geometry, Plan, Policy};
use std::cell::UnsafeCell;

/// Aligned reads of this size or more that are not part of a sequential run go to the kernel
/// as they are.
const DIRECT_REQUEST: usize = 1 << 20;

/// Window buffers per description (each a quarter of a window): the one being served and
/// those read ahead of it, up to a window beyond the reader (four and a part).
const MAX_WINDOWS: usize = 6;

/// Windows per buffer mapping: the default window's pieces of 1 MiB are two to a 2 MiB huge
/// page. A 1 MiB mapping gets 4 KiB pages, 256 segments per request, more than the disk's
/// queue takes in one (measured here, a loop of 64 KiB reads: 0.8x the speed of the former
/// 2 MiB pieces, where two to a huge page make it 1.14x).
const PER_SLAB: usize = 2;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Empty,
    /// Being read asynchronously; `len` is what was asked for.
    InFlight,
    Ready,
}

/// One window: the part of the file its slot of a buffer mapping holds.
#[derive(Default)]
struct Window {
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
    /// How far ahead of the reader the windows reach.
    pol: Policy,
    /// The windows hold consecutive parts of the file, up to `frontier`.
    wins: [Window; MAX_WINDOWS],
    /// The buffer mappings: window `k` is slot `k % PER_SLAB` of mapping `k / PER_SLAB`.
    slabs: [Option<MmapMut>; MAX_WINDOWS / PER_SLAB],
    frontier: u64,
    in_flight: usize,
    /// This description's Linux AIO context (0: none yet); one per description, so that only
    /// its owner reaps it.
    ctx: aio::Context,
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
    /// The file's write sequence.
    writes: FileWrites,
    st: UnsafeCell<State>,
}

// SAFETY: `st` is only touched with `lock` held.
unsafe impl Sync for Readahead {}
// SAFETY: the windows are plain memory owned by this value.
unsafe impl Send for Readahead {}

/// The description a read is served for, as read-ahead needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// The descriptor with O_DIRECT set that windows are read from.
    pub fd: i32,
    /// Its O_DIRECT requirements.
    pub align: Alignment,
    /// O_RDONLY, O_WRONLY or O_RDWR.
    pub accmode: i32,
    /// How read-ahead is configured.
    pub params: Params,
}

/// How read-ahead is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Window size in bytes (0: off): how far beyond the reader the windows reach at most;
    /// each request asks for a quarter of it.
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
        Readahead { lock: FutexMutex::new(), writes: FileWrites::of(ident), st: UnsafeCell::new(State::default()) }
    }

    /// Serves a read of `len` bytes at `off` into `buf` from the windows, reading them if the
    /// read continues a run or is large alone; `None` when the read should take the ordinary
    /// path (not in a run, aligned and large, the windows busy in another thread, no memory).
    /// `st` is the file's state taken before this call touched it; `fetched` grows by the
    /// bytes windows ask of the device.
    pub fn serve(
        &self,
        src: &Source,
        st: &libc::stat,
        buf: *mut u8,
        len: usize,
        off: u64,
        fetched: &mut u64,
    ) -> Option<SysResult<Served>> {
        let p = src.params;
        // A write-only description gets the kernel's EBADF, also at end of file.
        if p.window == 0 || len == 0 || src.accmode == libc::O_WRONLY || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        off.checked_add(len as u64)?;
        let _g = self.lock.try_lock()?;
        // SAFETY: the lock is held.
        let s = unsafe { &mut *self.st.get() };
        let g = src.geometry();
        let Some(seq) = self.writes.quiet() else {
            s.discard();
            let _ = s.pol.plan(&g, off, len as u64, false, false, false);
            s.pol.done(off, len as u64);
            return None;
        };
        let now = (Stamp::of(st), seq);
        if s.wins.iter().any(|w| w.phase != Phase::Empty && w.made != now) {
            s.discard();
        }
        // A large aligned read out of sequence goes straight into the program's buffer: no
        // copy, and the device moves exactly what was asked for.
        let direct = len >= DIRECT_REQUEST && src.align.read_ok(buf as usize, off, len);
        let big = !direct && len >= 2 * p.window;
        let reach = match s.pol.plan(&g, off, len as u64, s.find(off).is_some(), big, direct) {
            Plan::Windows { reach } => reach,
            Plan::Ordinary => {
                s.pol.done(off, len as u64);
                return None;
            }
        };
        let size = st.st_size.max(0) as u64;
        let mut done = 0usize;
        let mut rest_unread = false;
        while done < len {
            let pos = off + done as u64;
            if pos >= size {
                break; // end of file, as of this call
            }
            if s.find(pos).is_none() {
                s.discard();
                s.frontier = pos - pos % g.align;
            }
            s.top_up(src, &g, pos, reach, now, size, fetched);
            let Some(i) = s.find(pos) else {
                rest_unread = true; // beyond the windows' reach, or no memory for a window
                break;
            };
            if s.wins[i].phase == Phase::InFlight {
                s.wait(i);
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
            let m = s.bytes(i);
            match usercopy::to_program(buf.wrapping_add(done), &m[from..from + n]) {
                Ok(k) if k == n => {}
                // The program's buffer ends in bad memory: the count up to it, as read(2).
                Ok(k) => {
                    done += k;
                    break;
                }
                Err(libc::EFAULT) if done > 0 => break,
                Err(libc::EFAULT) => {
                    s.pol.done(off, len as u64);
                    return Some(Err(libc::EFAULT));
                }
                Err(_) => {
                    // The kernel does not copy for the engine: the ordinary path has it
                    // serve the rest.
                    rest_unread = true;
                    break;
                }
            }
            done += n;
            if w.eof && from + n == w.len {
                rest_unread = w.end() < size;
                break;
            }
        }
        // The ordinary path reads what the windows did not serve: the run goes on after it.
        s.pol.done(off, if rest_unread { len } else { done } as u64);
        if done == 0 && rest_unread {
            return None;
        }
        s.top_up(src, &g, off + done as u64, reach, now, size, fetched);
        Some(Ok(Served { bytes: done, rest_unread }))
    }

    /// `read(2)` at the file position, when the reads are sequential and a ready window holds
    /// all of `[next, next+len)` (or up to end of file): copies from the window and moves the
    /// offset of `fd` (the program's descriptor) with one lseek by the count from the current
    /// position, whose result also proves the offset was where the last read left it. `st` is
    /// the file's state taken before the call. `None` when the ordinary path must find the
    /// position and serve the read.
    pub fn serve_next(
        &self,
        src: &Source,
        fd: i32,
        st: &libc::stat,
        buf: *mut u8,
        len: usize,
        fetched: &mut u64,
    ) -> Option<SysResult<usize>> {
        let p = src.params;
        if p.window == 0 || len == 0 {
            return None;
        }
        let _g = self.lock.try_lock()?;
        // SAFETY: the lock is held.
        let s = unsafe { &mut *self.st.get() };
        let pos = s.pol.next()?;
        let i = s.find(pos)?;
        if s.wins[i].phase != Phase::Ready {
            return None;
        }
        let now = (Stamp::of(st), self.writes.quiet()?);
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
        let copied = usercopy::to_program(buf, &s.bytes(i)[from..from + n]);
        let n = match copied {
            Ok(k) if k == n => n,
            r => {
                // The program's buffer ends in bad memory (the count up to it, or EFAULT, as
                // read(2)), or the kernel does not copy (the ordinary path serves the read):
                // the offset goes back to just after what was copied.
                let k = *r.as_ref().unwrap_or(&0);
                let _ = sys::lseek(fd, (pos + k as u64) as i64, libc::SEEK_SET);
                match r {
                    Ok(k) => {
                        s.pol.done(pos, k as u64);
                        return Some(Ok(k));
                    }
                    Err(libc::EFAULT) => return Some(Err(libc::EFAULT)),
                    Err(_) => return None,
                }
            }
        };
        let g = src.geometry();
        let reach = match s.pol.plan(&g, pos, len as u64, true, false, false) {
            Plan::Windows { reach } => reach,
            Plan::Ordinary => 0,
        };
        s.pol.done(pos, n as u64);
        s.top_up(src, &g, pos + n as u64, reach, now, st.st_size.max(0) as u64, fetched);
        Some(Ok(n))
    }

    /// In a fork child: the windows were not inherited (MADV_DONTFORK) and neither was the
    /// AIO context, so they are forgotten without unmapping or destroying, and the lock is
    /// free again.
    pub fn reset_after_fork(&self) {
        self.lock.reset_after_fork();
        // SAFETY: only one thread exists in a fork child.
        let s = unsafe { &mut *self.st.get() };
        for m in s.slabs.iter_mut().filter_map(Option::take) {
            std::mem::forget(m);
        }
        *s = State::default();
    }
}

impl State {
    /// The memory of window `k` (which has its mapping).
    fn bytes(&self, k: usize) -> &[u8] {
        let m = self.slabs[k / PER_SLAB].as_ref().expect("a window's mapping");
        let each = m.len() / PER_SLAB;
        &m[k % PER_SLAB * each..][..each]
    }

    /// True if window `k` has its memory.
    fn has_memory(&self, k: usize) -> bool {
        self.slabs[k / PER_SLAB].is_some()
    }

    /// The window holding `pos`, read or being read.
    fn find(&self, pos: u64) -> Option<usize> {
        self.wins.iter().position(|w| w.covers(pos))
    }

    /// Forgets every window, after waiting for those in flight: their buffers are the
    /// kernel's until then.
    fn discard(&mut self) {
        while self.in_flight > 0 && self.reap_one() {}
        for w in &mut self.wins {
            w.phase = Phase::Empty;
        }
    }

    /// Releases the windows the reader has passed, then starts reading windows from
    /// `frontier` on, as long as they start before `reach` and end of file and a window is
    /// free (allocating it from the budget), each at most a quarter window and never past
    /// `reach`. Without AIO only the window `pos` needs is read; a description without a
    /// context reads the one window it needs now (a file's first window) synchronously: the
    /// reader waits for it anyway, and a context is taken only to read ahead of the reader.
    /// `fetched` grows by what is asked of the device.
    #[allow(clippy::too_many_arguments)]
    fn top_up(&mut self, src: &Source, g: &Geometry, pos: u64, reach: u64, now: Now, size: u64, fetched: &mut u64) {
        let p = src.params;
        for w in &mut self.wins {
            if w.phase == Phase::Ready && w.end() <= pos {
                w.phase = Phase::Empty;
            }
        }
        // No more than the file holds: the kernel pins (and first faults in) every page of
        // the buffer it is asked to fill, and the device would move the bytes up to the end
        // of the last block.
        let reach = reach.min(size.div_ceil(g.align).saturating_mul(g.align));
        // SAFETY: an iocb is plain data; the unused fields must be zero.
        let mut cbs: [libc::iocb; MAX_WINDOWS] = unsafe { std::mem::zeroed() };
        let mut ptrs = [std::ptr::null_mut::<libc::iocb>(); MAX_WINDOWS];
        let mut picked = [0usize; MAX_WINDOWS];
        let mut n = 0;
        while self.frontier < reach {
            if self.no_aio && self.frontier > pos {
                break;
            }
            let Some(k) =
                (0..MAX_WINDOWS).find(|&k| self.wins[k].phase == Phase::Empty && self.has_memory(k)).or_else(|| {
                    let k = (0..MAX_WINDOWS).find(|&k| !self.has_memory(k))?;
                    // A description's mappings after its first may only use the first half of the
                    // budget, so that many readers at once each get one.
                    let first = self.slabs.iter().all(Option::is_none);
                    let budget = if first { p.budget } else { p.budget / 2 };
                    self.slabs[k / PER_SLAB] = Some(spares::take_window(PER_SLAB * g.piece as usize, budget)?);
                    Some(k)
                })
            else {
                break;
            };
            let ask = self.pol.request(g).min(reach - self.frontier);
            let sync = self.no_aio || (self.ctx == 0 && self.frontier <= pos && self.frontier + ask >= reach);
            // A context only for a description that has a window to read ahead: contexts
            // count against the system's aio-max-nr, which other programs need too.
            if self.ctx == 0 && !sync {
                match spares::take_context(MAX_WINDOWS) {
                    Some(c) => self.ctx = c,
                    None => self.no_aio = true,
                }
            }
            // Written only by the kernel, through this address, while the window is this one.
            let at = self.bytes(k).as_ptr() as *mut u8;
            let w = &mut self.wins[k];
            (w.off, w.len, w.eof, w.made) = (self.frontier, ask as usize, false, now);
            if sync || self.no_aio {
                // SAFETY: the window's slot is `piece` bytes of private memory (at least `ask`),
                // at a multiple of `piece` (itself one of the alignment) into the mapping.
                match unsafe { sys::pread(src.fd, at, ask as usize, w.off) } {
                    Ok(got) => {
                        *fetched += ask;
                        (w.len, w.eof, w.phase) = (got, got < ask as usize, Phase::Ready);
                    }
                    Err(_) => return,
                }
            } else {
                w.phase = Phase::InFlight;
                cbs[n] = aio::pread_cb(src.fd, at, ask, w.off, k as u64);
                ptrs[n] = &mut cbs[n];
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
        let submitted = unsafe { aio::submit(self.ctx, &mut ptrs[..n]) }.unwrap_or(0);
        self.in_flight += submitted;
        for &k in &picked[..submitted] {
            *fetched += self.wins[k].len as u64;
        }
        for &k in &picked[submitted..n] {
            self.wins[k].phase = Phase::Empty;
        }
        if submitted < n {
            self.frontier = self.wins[picked[submitted]].off;
            if submitted == 0 && self.in_flight == 0 {
                // AIO refused this file (or the context broke): read synchronously from now on.
                self.no_aio = true;
            }
        }
    }

    /// Waits until window `i` is no longer in flight.
    fn wait(&mut self, i: usize) {
        while self.wins[i].phase == Phase::InFlight {
            if !self.reap_one() {
                return;
            }
        }
    }

    /// Waits for at least one read in flight and settles what completed: a window keeps the
    /// bytes read (fewer than asked: end of file); a failed read empties it. False if the
    /// context is unusable (then the windows in flight are given up for good).
    fn reap_one(&mut self) -> bool {
        let mut evs: [aio::IoEvent; MAX_WINDOWS] = Default::default();
        let r = aio::getevents(self.ctx, &mut evs).unwrap_or(0);
        if r == 0 {
            for k in 0..MAX_WINDOWS {
                if self.wins[k].phase == Phase::InFlight {
                    // The kernel may still write into it: never reuse or unmap its mapping.
                    if let Some(m) = self.slabs[k / PER_SLAB].take() {
                        std::mem::forget(m);
                    }
                }
            }
            for k in 0..MAX_WINDOWS {
                if !self.has_memory(k) {
                    self.wins[k].phase = Phase::Empty;
                }
            }
            self.in_flight = 0;
            self.no_aio = true;
            self.broken = true;
            return false;
        }
        for ev in &evs[..r] {
            let Some(w) = self.wins.get_mut(ev.data as usize) else { continue };
            self.in_flight = self.in_flight.saturating_sub(1);
            if ev.res < 0 {
                w.phase = Phase::Empty;
                continue;
            }
            w.eof = (ev.res as usize) < w.len;
            w.len = ev.res as usize;
            w.phase = Phase::Ready;
        }
        true
    }
}

impl Source {
    /// The window sizes of this description.
    fn geometry(&self) -> Geometry {
        Geometry::new(self.params.window as u64, self.align.read_offset.max(1) as u64)
    }
}

/// In a fork child: no window or AIO context of the parent is the child's.
pub fn reset_after_fork() {
    spares::reset_after_fork();
}

impl Drop for Readahead {
    fn drop(&mut self) {
        let s = self.st.get_mut();
        if s.ctx != 0 {
            while s.in_flight > 0 && s.reap_one() {}
            if s.in_flight == 0 && !s.broken {
                spares::give_back_context(s.ctx);
            } else {
                // Waits for whatever is still in flight, so the windows can be unmapped.
                aio::destroy(s.ctx);
            }
        }
        for m in s.slabs.iter_mut().filter_map(Option::take) {
            spares::give_back_window(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align;
    use std::path::PathBuf;

    const WINDOW: usize = 1 << 20;

    struct File {
        fd: i32,
        dir: PathBuf,
        align: align::Alignment,
        ra: Readahead,
        accmode: i32,
        // The window budget is the process's: tests that use it run one at a time (`None`:
        // the test holds the lock itself, across several files).
        _serial: Option<std::sync::MutexGuard<'static, ()>>,
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

    /// [`file`] for a test that holds [`SERIAL`] itself, without emptying the idle windows.
    fn file2(name: &str, data: &[u8]) -> File {
        file_with(name, data, false, None)
    }

    fn file(name: &str, data: &[u8]) -> File {
        file_with(name, data, true, Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner())))
    }

    fn file_with(name: &str, data: &[u8], fresh: bool, serial: Option<std::sync::MutexGuard<'static, ()>>) -> File {
        // Each test starts with no idle window: budgets differ between tests.
        if fresh {
            spares::drop_idle_windows(WINDOW / 2);
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
            ra: Readahead::new((st.st_dev, st.st_ino)),
            accmode: libc::O_RDONLY,
            _serial: serial,
        }
    }

    impl File {
        /// Reads into a buffer one byte past a page boundary, as a program's malloc'd
        /// buffer would be.
        fn read(&self, off: u64, len: usize, fetched: &mut u64) -> Option<Vec<u8>> {
            self.read_with(off, len, 64 << 20, fetched)
        }

        fn read_with(&self, off: u64, len: usize, budget: usize, fetched: &mut u64) -> Option<Vec<u8>> {
            self.read_at(off, len, budget, 1, fetched)
        }

        /// Reads into a buffer `misalign` bytes past a page boundary.
        fn read_at(&self, off: u64, len: usize, budget: usize, misalign: usize, fetched: &mut u64) -> Option<Vec<u8>> {
            let st = sys::fstat(self.fd).unwrap();
            let src = Source {
                fd: self.fd,
                align: self.align,
                accmode: self.accmode,
                params: Params { window: WINDOW, budget },
            };
            let layout = std::alloc::Layout::from_size_align(len + 4096, 4096).unwrap();
            // SAFETY: a non-zero size.
            let mem = unsafe { std::alloc::alloc_zeroed(layout) };
            let p = mem.wrapping_add(misalign);
            let r = self.ra.serve(&src, &st, p, len, off, fetched);
            // SAFETY: as above; freed with its own layout.
            let got = r.map(|r| unsafe { std::slice::from_raw_parts(p, r.unwrap().bytes) }.to_vec());
            // SAFETY: allocated above with `layout`.
            unsafe { std::alloc::dealloc(mem, layout) };
            got
        }
    }

    #[test]
    fn sequential_small_reads_come_from_windows() {
        let data = pattern(3 * WINDOW + 1234, 1);
        let f = file("seq", &data);
        let mut fetched = 0u64;
        // the first read, at the start, is read as the kernel's first window: a little more
        let mut got = f.read(0, 4097, &mut fetched).expect("the first read at the start is a window");
        let a = f.align.read_offset as u64;
        assert!(fetched > 4097 && fetched <= (4097 + 65536u64).next_multiple_of(a), "{fetched}");
        let mut off = 4097u64;
        loop {
            let b = f.read(off, 4097, &mut fetched).expect("sequential reads are served");
            if b.is_empty() {
                break;
            }
            off += b.len() as u64;
            got.extend(b);
        }
        assert!(got == data, "bytes differ");
        // each byte of the file read from the device once
        assert_eq!(fetched, (data.len() as u64).next_multiple_of(a));
    }

    #[test]
    fn windows_are_counted_when_asked_and_reach_one_window_at_most() {
        let data = pattern(16 * WINDOW, 15);
        let f = file("asked", &data);
        let mut fetched = 0u64;
        assert!(f.read(0, 65536, &mut fetched).unwrap() == data[..65536]);
        let mut off = 65536u64;
        for _ in 0..100 {
            let b = f.read(off, 65536, &mut fetched).expect("sequential reads are served");
            assert!(b[..] == data[off as usize..off as usize + 65536], "bytes differ at {off}");
            off += 65536;
            // what was asked, whether read yet or still in flight: never past a window ahead
            assert!(fetched <= off + WINDOW as u64, "{fetched} asked at {off}");
        }
        // the windows in flight are counted before anyone reads them
        assert!(fetched > off - 65536, "{fetched} asked at {off}");
    }

    #[test]
    fn random_and_large_reads_take_the_ordinary_path() {
        let data = pattern(2 * WINDOW, 2);
        let f = file("rand", &data);
        let mut fetched = 0u64;
        for off in [700_000u64, 5_000, 300_000, 1_500_000] {
            assert!(f.read(off, 65536, &mut fetched).is_none(), "random read at {off} served from a window");
        }
        assert_eq!(fetched, 0, "random reads must not read ahead");
        assert!(f.read(0, WINDOW / 2, &mut fetched).is_none(), "half a window is not read ahead");
        assert_eq!(fetched, 0);
    }

    #[test]
    fn a_changed_file_or_a_write_discards_the_window() {
        let data = pattern(WINDOW, 3);
        let f = file("stale", &data);
        let mut fetched = 0u64;
        assert_eq!(f.read(0, 4096, &mut fetched).unwrap(), data[..4096]);
        assert_eq!(f.read(4096, 4096, &mut fetched).unwrap(), data[4096..8192]);
        let filled = fetched;
        // another writer changes bytes the window holds
        let mut w = std::fs::OpenOptions::new().write(true).open(f.dir.join("f")).unwrap();
        std::io::Seek::seek(&mut w, std::io::SeekFrom::Start(8192)).unwrap();
        std::io::Write::write_all(&mut w, b"fresh bytes").unwrap();
        drop(w);
        assert_eq!(&f.read(8192, 11, &mut fetched).unwrap(), b"fresh bytes");
        assert!(fetched > filled, "the window must be read again");
        let refilled = fetched;
        drop(f.ra.writes.begin());
        assert_eq!(f.read(8203, 100, &mut fetched).unwrap(), data[8203..8303]);
        assert!(fetched > refilled, "a write through the description discards the window");
    }

    #[test]
    fn end_of_file_inside_the_window() {
        let data = pattern(10_000, 4);
        let f = file("eof", &data);
        let mut fetched = 0u64;
        assert_eq!(f.read(0, 4096, &mut fetched).unwrap(), data[..4096]);
        let sizes: Vec<usize> = (1..3).map(|i| f.read(i * 4096, 4096, &mut fetched).unwrap().len()).collect();
        assert_eq!(sizes, [4096, 1808]);
        let a = f.align.read_offset as u64;
        assert_eq!(fetched, 10_000u64.next_multiple_of(a), "nothing past the last block of the file");
        assert_eq!(f.read(10_000, 4096, &mut fetched).unwrap().len(), 0, "the next read is at end of file");
        assert!(f.read(12_288, 4096, &mut fetched).is_none(), "past the end, out of sequence: the kernel answers");
    }

    #[test]
    fn one_large_read_is_pipelined_without_reading_past_it() {
        let data = pattern(6 * WINDOW, 5);
        let f = file("large", &data);
        let mut fetched = 0u64;
        let (off, len) = (1000u64, 3 * WINDOW + 5000);
        let got = f.read(off, len, &mut fetched).expect("a read of two windows or more is served");
        assert!(got == data[off as usize..off as usize + len], "bytes differ");
        // the aligned superset of the request, nothing beyond it
        let a = f.align.read_offset as u64;
        assert_eq!(fetched, (off + len as u64).next_multiple_of(a) - off / a * a);
    }

    #[test]
    fn read_ahead_grows_with_the_run_and_stops_at_end_of_file() {
        let data = pattern(10 * WINDOW + 777, 6);
        let f = file("ramp", &data);
        let mut fetched = 0u64;
        let step = 300_001usize;
        let mut got = f.read(0, step, &mut fetched).expect("the first read at the start is a window");
        let a = f.align.read_offset as u64;
        assert!(fetched <= (step as u64 + 65536).next_multiple_of(a), "{fetched} asked for the first read");
        let mut off = step as u64;
        let mut sizes = Vec::new();
        loop {
            let before = fetched;
            let b = f.read(off, step, &mut fetched).expect("sequential reads are served");
            if b.is_empty() {
                break;
            }
            off += b.len() as u64;
            got.extend(b);
            sizes.push(fetched - before);
            // never more than a window past what was read
            assert!(fetched <= off + WINDOW as u64, "{fetched} asked at {off}");
        }
        assert!(got == data, "bytes differ");
        // the next window is sized from the request, later reads ask for a window at most
        assert!(sizes[0] <= 5 * step as u64, "{sizes:?}");
        assert!(sizes[1..].iter().all(|&n| n <= WINDOW as u64), "{sizes:?}");
        // Every byte was read from the device once, nothing past the end.
        assert_eq!(fetched, (data.len() as u64).next_multiple_of(a));
    }

    #[test]
    fn without_window_memory_the_ordinary_path_reads() {
        let data = pattern(3 * WINDOW, 7);
        let f = file("nomem", &data);
        let mut fetched = 0u64;
        assert!(f.read_with(0, 3 * WINDOW - 1, 0, &mut fetched).is_none());
        assert_eq!(fetched, 0);
        // SAFETY: no other reference to the state exists in this test.
        assert_eq!(unsafe { (*f.ra.st.get()).ctx }, 0, "an AIO context was taken without a window to read");
        // one window's worth of budget still serves a large read, a window at a time
        let got = f.read_with(1, 3 * WINDOW - 1, WINDOW, &mut fetched).expect("served with one window");
        assert!(got == data[1..], "bytes differ");
    }

    #[test]
    fn a_closed_descriptions_aio_context_serves_the_next_one() {
        let data = pattern(4 * WINDOW, 8);
        let mut fetched = 0u64;
        let ctx = {
            let f = file("ctx1", &data);
            assert!(f.read(0, 3 * WINDOW, &mut fetched).is_some());
            // SAFETY: no other reference to the state exists in this test.
            unsafe { (*f.ra.st.get()).ctx }
        };
        assert_ne!(ctx, 0, "windows are read with AIO");
        let f = file("ctx2", &data);
        assert!(f.read(0, 3 * WINDOW, &mut fetched).is_some());
        // SAFETY: as above.
        let again = unsafe { (*f.ra.st.get()).ctx };
        assert_eq!(again, ctx, "the idle context is reused, not destroyed");
    }

    #[test]
    fn a_write_only_description_is_left_to_the_kernel() {
        let mut f = file("wronly", &pattern(WINDOW, 9));
        f.accmode = libc::O_WRONLY;
        let mut fetched = 0u64;
        // in sequence and at end of file: the kernel's EBADF must reach the program
        assert!(f.read(0, 4096, &mut fetched).is_none());
        assert!(f.read(4096, 4096, &mut fetched).is_none());
        assert!(f.read(WINDOW as u64, 4096, &mut fetched).is_none());
        assert_eq!(fetched, 0);
    }

    #[test]
    fn large_aligned_reads_go_direct_unless_in_sequence() {
        let data = pattern(8 * WINDOW, 10);
        let f = file("aligned", &data);
        let mut fetched = 0u64;
        let a = f.align.mem.max(f.align.read_offset);
        // out of sequence: straight to the kernel, whatever the size
        for off in [3 * WINDOW as u64, WINDOW as u64] {
            assert!(f.read_at(off, WINDOW, 64 << 20, a, &mut fetched).is_none(), "aligned read at {off} was windowed");
            assert!(
                f.read_at(off, 3 * WINDOW, 64 << 20, a, &mut fetched).is_none(),
                "aligned read at {off} was windowed"
            );
        }
        assert_eq!(fetched, 0);
        // the same reads in sequence are read ahead
        let mut got = Vec::new();
        for k in 0..8u64 {
            let r = f.read_at(k * WINDOW as u64, WINDOW, 64 << 20, a, &mut fetched);
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
        assert!(fetched > 0);
    }

    #[test]
    fn a_write_through_another_description_discards_and_holds_off_windows() {
        let data = pattern(4 * WINDOW, 12);
        let f = file("otherdesc", &data);
        let st = sys::fstat(f.fd).unwrap();
        let other = Readahead::new((st.st_dev, st.st_ino));
        let mut fetched = 0u64;
        assert_eq!(f.read(0, 4096, &mut fetched).unwrap(), data[..4096]);
        assert_eq!(f.read(4096, 4096, &mut fetched).unwrap(), data[4096..8192]);
        let filled = fetched;
        let w = other.writes.begin();
        assert!(f.read(8192, 4096, &mut fetched).is_none(), "a window was used while a write of the file ran");
        std::fs::OpenOptions::new()
            .write(true)
            .open(f.dir.join("f"))
            .and_then(|h| std::os::unix::fs::FileExt::write_all_at(&h, b"new", 12288))
            .unwrap();
        drop(w);
        assert_eq!(&f.read(12288, 3, &mut fetched).unwrap(), b"new");
        assert!(fetched > filled, "the windows read before the write were used");
    }

    #[test]
    fn a_shared_writable_mapping_ends_read_ahead_of_the_file() {
        let data = pattern(2 * WINDOW, 13);
        let f = file("mapped", &data);
        let mut fetched = 0u64;
        assert!(f.read(0, 4096, &mut fetched).is_some());
        assert!(f.read(4096, 4096, &mut fetched).is_some());
        f.ra.writes.mapped(false);
        assert!(f.read(8192, 4096, &mut fetched).is_some(), "a private or read-only mapping stops nothing");
        f.ra.writes.mapped(true);
        let served = (0..4).any(|k| f.read(12288 + k * 4096, 4096, &mut fetched).is_some());
        // The slot is the process's: later tests' files may reuse this inode number.
        f.ra.writes.unmap_for_test();
        assert!(!served, "a file mapped shared and writable was still read ahead");
    }

    #[test]
    fn a_closed_descriptions_windows_serve_the_next_one() {
        // Held across both files: another test would take the idle window in between.
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        spares::drop_idle_windows(WINDOW / 2);
        let data = pattern(2 * WINDOW, 14);
        let mut fetched = 0u64;
        let first = {
            let f = file2("idle1", &data);
            assert!(f.read(0, 4096, &mut fetched).is_some());
            assert!(f.read(4096, 4096, &mut fetched).is_some());
            // SAFETY: no other reference to the state exists in this test.
            unsafe { (*f.ra.st.get()).slabs.iter().find_map(|m| m.as_ref().map(|m| m.as_ptr() as usize)) }.unwrap()
        };
        let in_use = spares::in_use();
        assert!(in_use >= WINDOW / 2, "idle windows stay counted");
        let f = file2("idle2", &data);
        assert!(f.read(0, 4096, &mut fetched).is_some());
        assert!(f.read(4096, 4096, &mut fetched).is_some());
        // SAFETY: as above.
        let again = unsafe {
            (*f.ra.st.get()).slabs.iter().filter_map(|m| m.as_ref().map(|m| m.as_ptr() as usize)).collect::<Vec<_>>()
        };
        assert!(again.contains(&first), "a new window was mapped while an idle one was kept");
    }
}
