//! The library's read-ahead for in-order scans of tracked mappings, which the kernel no
//! longer reads around (see [`super::advice`]): a run of this process's own mapped pages
//! (present bits of /proc/self/pagemap) ending in a chunk that just grew says a scan is
//! under way; the file is then read ahead of the scan's front (POSIX_FADV_WILLNEED in
//! pieces of the device's read_ahead_kb, the kernel's own window) and kept read ahead as the
//! front moves, as the kernel's asynchronous read-ahead would. What lies ahead of a front
//! counts as just grown, so the reclaimer never gives it back before the scan reaches it.

use super::advice;
use super::{policy, File, Mapping, Registry};
use crate::{align, sys};
use std::sync::atomic::{AtomicBool, Ordering};

/// Present pages in a row, ending in a chunk that grew in the last pass, that make a scan
/// (a 64 KiB read is 16).
pub const RUN_MIN: usize = 32;
/// Steps without the front moving after which a scan is forgotten.
const IDLE_STEPS: u32 = 400;
/// Scans followed at once.
const MAX_STREAMS: usize = 16;
/// Chunks of a file grown in one pass above which its reads are random: no scan is looked for.
const MAX_GROWN: usize = 16;
/// The window when the device's is unknown (the kernel's default read_ahead_kb).
const DEFAULT_RA: u64 = 128 << 10;

/// Some scan is followed: the reclaimer steps every millisecond.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// True while some scan is followed.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// A scan the library reads ahead for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// The mapping it runs in.
    pub map: Mapping,
    /// Address of the first page the program has not touched yet.
    pub front: usize,
    /// File offset up to which the file was read ahead.
    pub ahead: u64,
    /// Steps since the front last moved.
    pub idle: u32,
}

/// Read-ahead to issue once the registry is unlocked: (descriptor, offset, length).
pub type Ahead = Vec<(i32, u64, u64)>;

/// `/proc/self/pagemap`, opened at the first question and closed when dropped (a fork child
/// must not read its parent's).
pub struct Pagemap {
    fd: i32,
}

impl Default for Pagemap {
    fn default() -> Self {
        Self::new()
    }
}

impl Pagemap {
    /// Nothing opened yet.
    pub const fn new() -> Pagemap {
        Pagemap { fd: -1 }
    }

    /// Fills `out` with the present bits of the pages from `addr`; false where unknown.
    fn present(&mut self, addr: usize, out: &mut [bool]) {
        out.fill(false);
        if self.fd < 0 {
            match sys::openat(libc::AT_FDCWD, c"/proc/self/pagemap", libc::O_RDONLY | libc::O_CLOEXEC, 0) {
                Ok(fd) => self.fd = fd,
                Err(_) => return,
            }
        }
        let page = align::page_size();
        let mut buf = [0u64; 512];
        let mut i = 0;
        while i < out.len() {
            let n = (out.len() - i).min(buf.len());
            let at = ((addr / page + i) * 8) as u64;
            // SAFETY: `buf` is writable for `n * 8` bytes.
            let got = match unsafe { sys::pread(self.fd, buf.as_mut_ptr().cast(), n * 8, at) } {
                Ok(b) => b / 8,
                Err(_) => return,
            };
            for (o, e) in out[i..i + got].iter_mut().zip(&buf[..got]) {
                *o = e >> 63 == 1;
            }
            if got < n {
                return;
            }
            i += n;
        }
    }

    /// Present pages in a row from `addr`, at most `max`: read a few entries at a time, since
    /// a scan's front moves by a few pages between two steps.
    fn run_from(&mut self, addr: usize, max: usize) -> usize {
        let page = align::page_size();
        let mut bits = [false; 64];
        let mut n = 0;
        while n < max {
            let k = (max - n).min(bits.len());
            self.present(addr + n * page, &mut bits[..k]);
            let run = bits[..k].iter().take_while(|&&b| b).count();
            n += run;
            if run < k {
                break;
            }
        }
        n
    }
}

impl Drop for Pagemap {
    fn drop(&mut self) {
        if self.fd >= 0 {
            let _ = sys::close(self.fd);
        }
    }
}

/// The device's read-ahead window (its read_ahead_kb) for files on device `dev`.
pub fn device_window(dev: u64) -> u64 {
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    // A partition has no queue of its own: its disk's is one directory up.
    ["", "/.."]
        .iter()
        .find_map(|up| {
            std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}{up}/queue/read_ahead_kb"))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
        })
        .map_or(DEFAULT_RA, |kb| kb << 10)
}

/// How far ahead of its front a scan of `f` is kept read: four of the device's windows (the
/// kernel's asynchronous read-ahead keeps one or two in flight; the library's steps can be
/// late by a few milliseconds on a busy machine), bounded by half the pages the reclaimer
/// keeps whatever the budget (`budget` pages), so that nothing read ahead is given back.
pub fn window(f: &File, budget: u64) -> u64 {
    let page = align::page_size() as u64;
    let room = budget.max(policy::YOUNG_ROOM) * page / 2;
    (4 * f.ra).min(room).max(page)
}

fn off_at(m: &Mapping, addr: usize) -> u64 {
    m.off + (addr - m.start) as u64
}

/// Looks for new scans among the chunks that grew at pass `now` (once the process was
/// switched to random reads: before, the kernel reads ahead).
pub fn detect(r: &mut Registry, pm: &mut Pagemap, now: u32) {
    let page = align::page_size();
    for fi in 0..r.files.len() {
        if !r.random {
            break;
        }
        let f = &r.files[fi];
        let csize = 1u64 << f.shift;
        let followed = |ci: usize| {
            r.streams.iter().filter(|s| s.map.ident == f.ident).any(|s| {
                let lo = off_at(&s.map, s.front) >> f.shift;
                (lo.saturating_sub(1)..=s.ahead >> f.shift).contains(&(ci as u64))
            })
        };
        let grown: Vec<usize> =
            (0..f.chunks.len()).filter(|&ci| f.chunks[ci].stamp == now && f.chunks[ci].resident > 0).collect();
        if grown.is_empty() || grown.len() > MAX_GROWN {
            continue;
        }
        let mut found = Vec::new();
        for ci in grown.into_iter().filter(|&ci| !followed(ci)) {
            let (lo, hi) = (ci as u64 * csize, (ci as u64 + 1) * csize);
            for m in r.maps.iter().filter(|m| m.ident == f.ident && advice::reads_ahead_itself(m)) {
                let (a, b) = (lo.max(m.off), hi.min(m.off + m.len as u64));
                if a >= b {
                    continue;
                }
                let a_addr = m.start + (a - m.off) as usize;
                // from RUN_MIN pages below the chunk's part (within the mapping) to its end
                let from = a_addr.saturating_sub(RUN_MIN * page).max(m.start);
                let n = (b - a) as usize / page + (a_addr - from) / page;
                let mut bits = vec![false; n];
                pm.present(from, &mut bits);
                let Some(last) = bits.iter().rposition(|&b| b) else { continue };
                if from + last * page < a_addr {
                    continue;
                }
                let run = bits[..=last].iter().rev().take_while(|&&b| b).count();
                if run >= RUN_MIN {
                    let front = from + (last + 1) * page;
                    found.push(Stream { map: *m, front, ahead: off_at(m, front), idle: 0 });
                }
            }
        }
        for s in found {
            if r.streams.len() >= MAX_STREAMS {
                let idlest = (0..r.streams.len()).max_by_key(|&i| r.streams[i].idle).expect("full");
                r.streams.swap_remove(idlest);
            }
            r.streams.push(s);
        }
    }
    ACTIVE.store(!r.streams.is_empty(), Ordering::Relaxed);
}

/// Moves each scan's front to where the program's own mapped pages reach, forgets scans
/// whose mapping went or that stopped, keeps what lies ahead of each front young (at pass
/// `now`), and returns the read-ahead to issue (`budget` in pages).
pub fn step(r: &mut Registry, pm: &mut Pagemap, budget: u64, now: u32) -> Ahead {
    let page = align::page_size();
    let mut out = Ahead::new();
    let mut kept = Vec::with_capacity(r.streams.len());
    for mut s in std::mem::take(&mut r.streams) {
        let off = off_at(&s.map, s.front);
        // the mapping that holds the front now, if it is still the same file at the same offset
        let Some(m) = r
            .maps
            .iter()
            .find(|m| {
                m.ident == s.map.ident
                    && advice::reads_ahead_itself(m)
                    && m.start <= s.front
                    && s.front < m.start + m.len
                    && off_at(m, s.front) == off
            })
            .copied()
        else {
            continue;
        };
        let Some(f) = r.file(m.ident) else { continue };
        let win = window(f, budget);
        let end = m.start + m.len;
        let moved = pm.run_from(s.front, ((end - s.front) / page).min((2 * win) as usize / page + 1));
        s.front += moved * page;
        s.idle = if moved > 0 { 0 } else { s.idle + 1 };
        if s.front >= end || s.idle > IDLE_STEPS {
            continue;
        }
        s.map = m;
        let front = off_at(&m, s.front);
        let stop = (front + win).min(m.off + m.len as u64);
        s.ahead = s.ahead.max(front);
        let piece = f.ra.max(page as u64);
        // a piece at a time, as soon as one fits
        if s.ahead + piece.min(win) <= front + win && s.ahead < stop {
            let mut at = s.ahead;
            while at < stop {
                let len = piece.min(stop - at);
                if f.fd >= 0 {
                    out.push((f.fd, at, len));
                } else {
                    let _ = sys::madvise(m.start + (at - m.off) as usize, len as usize, libc::MADV_WILLNEED);
                }
                at += len;
            }
            s.ahead = stop;
        }
        let (first, last) = ((front >> f.shift) as usize, (s.ahead.saturating_sub(1) >> f.shift) as usize);
        for c in f.chunks.iter_mut().take(last + 1).skip(first) {
            c.stamp = now;
        }
        kept.push(s);
    }
    r.streams = kept;
    ACTIVE.store(!r.streams.is_empty(), Ordering::Relaxed);
    out
}

/// Issues read-ahead [`step`] returned (the registry unlocked: reading ahead may wait for the
/// device's queue).
pub fn issue(ahead: &Ahead) {
    for &(fd, off, len) in ahead {
        let _ = sys::fadvise(fd, off, len, libc::POSIX_FADV_WILLNEED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_follows_the_device_and_the_budget() {
        let f = |ra| File {
            ident: (1, 2),
            fd: -1,
            shift: 21,
            chunks: Vec::new(),
            supers: Vec::new(),
            shared_write: false,
            idle_since: 0,
            cachestat: false,
            drop_retries: 0,
            ra,
        };
        let page = align::page_size() as u64;
        assert_eq!(window(&f(128 << 10), 1 << 20), 512 << 10, "four device windows");
        assert_eq!(window(&f(64 << 20), 1), policy::YOUNG_ROOM * page / 2, "within what is kept young");
        assert_eq!(window(&f(64 << 20), 8192), 8192 * page / 2, "within half the budget");
        assert!(device_window(0) >= page || device_window(0) == DEFAULT_RA);
    }

    #[test]
    fn a_scan_of_this_process_s_own_pages_is_seen_and_followed() {
        let page = align::page_size();
        let p = std::env::temp_dir().join(format!("s3dlio-stream-{}", std::process::id()));
        std::fs::write(&p, vec![1u8; 4 << 20]).unwrap();
        let file = std::fs::File::open(&p).unwrap();
        file.sync_all().unwrap();
        // as the library has it: no page cached yet (none in a large folio), no read-around
        sys::fadvise(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, libc::POSIX_FADV_DONTNEED).unwrap();
        let m = unsafe { memmap2::MmapOptions::new().map(&file) }.unwrap();
        let start = m.as_ptr() as usize;
        sys::madvise(start, 4 << 20, libc::MADV_RANDOM).unwrap();
        let map = Mapping {
            start,
            len: 4 << 20,
            ident: (1, 2),
            off: 0,
            shared: true,
            cow: false,
            dontfork: false,
            advice: advice::Pattern::Normal,
            nodump: false,
        };
        let mut r = Registry::default();
        r.add(map, false, -1, 4 << 20);
        r.files[0].ra = 128 << 10;
        r.random = true;
        // black_box: the reads must happen (an optimised build would drop reads nobody uses)
        let touch = |from: usize, to: usize| {
            std::hint::black_box((from..to).step_by(page).map(|a| std::hint::black_box(m[a])).sum::<u8>())
        };
        let mut pm = Pagemap::new();
        // a few pages touched at random: no scan
        touch(5 * page, 6 * page);
        touch(900 * page, 901 * page);
        r.files[0].chunks[0].stamp = 1;
        r.files[0].chunks[0].resident = 1;
        detect(&mut r, &mut pm, 1);
        assert!(r.streams.is_empty() && !active());
        // the first 100 pages in order: a scan whose front is page 100 (or as far as the
        // kernel's fault-around mapped cached pages beyond it, 16 at most)
        touch(0, 100 * page);
        detect(&mut r, &mut pm, 1);
        assert_eq!(r.streams.len(), 1);
        let near = |front: usize, at: usize| (start + at * page..=start + (at + 16) * page).contains(&front);
        assert!(near(r.streams[0].front, 100), "{:x}", r.streams[0].front - start);
        assert!(active());
        let ahead = step(&mut r, &mut pm, 1 << 20, 2);
        assert!(ahead.is_empty(), "no descriptor: read ahead through the mapping");
        let front = (r.streams[0].front - start) as u64;
        assert_eq!(r.streams[0].ahead, front + window(&r.files[0], 1 << 20));
        touch(100 * page, 150 * page);
        step(&mut r, &mut pm, 1 << 20, 3);
        assert!(near(r.streams[0].front, 150), "the front follows the program");
        r.cut(start, 4 << 20);
        step(&mut r, &mut pm, 1 << 20, 4);
        assert!(r.streams.is_empty() && !active(), "the mapping went");
        drop(m);
        std::fs::remove_file(&p).unwrap();
    }
}
