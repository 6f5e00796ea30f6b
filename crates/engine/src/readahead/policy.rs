//! How far ahead of a reader the windows reach: the read-ahead state machine of one
//! description, modelled on the kernel's (`mm/readahead.c`, `struct file_ra_state`), with no
//! I/O in it, so that every access pattern can be checked here for the bytes it would make
//! the device move.
//!
//! - Nothing is read ahead for a read that does not continue a run: a random read, a jump.
//!   (A single read of two windows or more is read as windows in flight, but nothing past its
//!   end.) A description's first read, at the start of the file, is the exception, as in the
//!   kernel: it is read as the run's first window, the kernel's initial one
//!   (`get_init_ra_size`) but never more than 64 KiB past the request, so that a program
//!   reading a small file whole streams from its first read while a single read costs no
//!   more than the page cache's.
//! - A run shows itself with a read that starts where the previous one ended. Its first
//!   window holds that read and a little more, sized from the request like the kernel's first
//!   readahead (`get_init_ra_size`: four times a small request, twice a medium one, a window
//!   beyond a large one).
//! - A read that passes the marker, half way into the last window, asks for the next one,
//!   larger (`get_next_ra_size`: four times while small, then twice), up to a quarter window
//!   per request and one window beyond the reader.
//! - What lies ahead of the reader never exceeds half of what the run has read in a row. A
//!   run from the start of the file may have eight times what it has read, and asks for its
//!   second window with its first: there the kernel reads ahead from the first read on, and
//!   has its second window, four times its initial one, in flight at the second read.
//! - A jump ends the sequence. A sequence that ended with windows beyond where the reader left
//!   them halves what the next runs may have ahead (then quarters it), until a run gets to
//!   full-size windows.
//!
//! So a run that stops has cost at most half its length again (eight times from the start of
//! a file, where the kernel would have read as much), a sequential run at most one window,
//! and reads that are not in a run what they ask for, rounded out to the alignment.

/// Where the windows of a read come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Not from windows: the ordinary path reads it.
    Ordinary,
    /// From windows, which should reach this far (the caller asks for what lies between the
    /// frontier of its windows and this offset, as memory allows).
    Windows { reach: u64 },
}

/// The sizes the policy works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The read-ahead window (`S3DLIO_DIRECT_READAHEAD`): how far beyond the reader the
    /// windows reach at most.
    pub window: u64,
    /// The largest single read asked of the device (a multiple of `align`): a quarter of a
    /// window, so that three or four are in flight while the reader copies from another (with
    /// half-window pieces, one window's reach held a single request in flight most of the
    /// time: measured here, 64 KiB reads 1.14x and 4 KiB reads 1.24x faster with quarters).
    pub piece: u64,
    /// The file's offset alignment for O_DIRECT reads.
    pub align: u64,
}

impl Geometry {
    /// The geometry of a window of `window` bytes for a file with offset alignment `align`.
    pub fn new(window: u64, align: u64) -> Geometry {
        let align = align.max(1);
        let piece = (window / 4 / align * align).max(align);
        Geometry { window: window.max(piece), piece, align }
    }

    fn up(&self, x: u64) -> u64 {
        x.div_ceil(self.align).saturating_mul(self.align)
    }

    fn down(&self, x: u64) -> u64 {
        x - x % self.align
    }

    /// The first window of a read of `len` bytes at the start of the file: the kernel's
    /// initial one, at most [`FIRST_SLACK`] past the request (rounded out).
    fn at_start(&self, len: u64) -> u64 {
        self.up(len.saturating_add(self.first_extra(len).min(FIRST_SLACK)))
    }

    /// The kernel's `get_init_ra_size`, in bytes: what the first window of a run holds beyond
    /// a request of `len` bytes.
    fn first_extra(&self, len: u64) -> u64 {
        let r = self.up(len).max(self.align).next_power_of_two();
        let total = if r <= self.window / 32 {
            4 * r
        } else if r <= self.window / 4 {
            2 * r
        } else {
            return self.window;
        };
        total.saturating_sub(len)
    }

    /// The kernel's `get_next_ra_size`: the window after one of `cur` bytes; four times up to
    /// a sixteenth of the window inclusive (the kernel: below it), so that a 64 KiB reader's
    /// initial 256 KiB grows to 1 MiB as the kernel's would with this disk's 8 MiB
    /// `read_ahead_kb`: a 1 MiB file read whole is two requests, not three (1500 such files:
    /// 1.06-1.09x, paired).
    fn grown(&self, cur: u64) -> u64 {
        if cur <= self.window / 16 {
            4 * cur
        } else if cur <= self.window / 2 {
            2 * cur
        } else {
            self.window
        }
    }
}

/// No read yet.
const NONE: u64 = u64::MAX;

/// What a read at the start of the file may have read beyond it: the slack of issue 14's bound
/// (1.1 × what a plain cold read fetches + 64 KiB), whatever the device's own readahead.
const FIRST_SLACK: u64 = 64 * 1024;

/// The read-ahead state of one description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Where the last read ended (`NONE`: no read yet).
    next: u64,
    /// Bytes read in a row in the current run, before the read being planned.
    run: u64,
    /// The run started at offset 0.
    from_start: bool,
    /// Size of the last window the sequence asked for (0: no sequence: nothing is read ahead).
    size: u64,
    /// A read that ends past this offset asks for the next window.
    marker: u64,
    /// Where the sequence's windows end.
    reach: u64,
    /// Sequences in a row that ended with windows reaching beyond the reader (0 to 2): the
    /// windows of the next run reach that many times half as far. Reset by a run that
    /// reaches full-size windows.
    miss: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { next: NONE, run: 0, from_start: false, size: 0, marker: 0, reach: 0, miss: 0 }
    }
}

impl Policy {
    /// How far beyond the reader the windows may reach after a run of `run` bytes in a row:
    /// half of it (eight times it in a run from the start of the file, where the kernel reads
    /// ahead from the first read on), halved again for each sequence in a row whose windows
    /// went partly unused.
    fn room(&self, run: u64) -> u64 {
        let r = if self.from_start { run.saturating_mul(8) } else { run / 2 };
        r >> self.miss
    }

    /// Plans a read of `len` bytes at `off`. `covered`: a window (read or being read) holds
    /// `off`; `big`: the read alone is worth reading as windows (two windows or more);
    /// `direct`: the kernel can take the read straight into the program's buffer.
    pub fn plan(&mut self, g: &Geometry, off: u64, len: u64, covered: bool, big: bool, direct: bool) -> Plan {
        let end = off.saturating_add(len);
        let seq = off == self.next;
        let first = self.next == NONE;
        if !seq {
            // A jump: the run and the sequence end here; a new run may start. Windows that
            // reached beyond where the reader left them were (in part) never used.
            if self.next != NONE && self.reach > self.next {
                self.miss = (self.miss + 1).min(2);
            }
            self.run = 0;
            self.from_start = off == 0;
            self.size = 0;
            if first && off == 0 && !covered && !big && !direct {
                // The start of the file: the kernel reads its initial window at once, and
                // the next read, at the window's marker, asks for the next one, grown from
                // the initial window's full size (what is read of it is capped).
                self.reach = g.at_start(len);
                self.size = self.reach.max(g.up(len.saturating_add(g.first_extra(len))));
                self.marker = end;
                return Plan::Windows { reach: self.reach };
            }
        }
        if self.size == 0 && seq && self.run > 0 {
            // The run has shown itself: the first window, from the request's size.
            let extra = g.first_extra(len).min(self.room(self.run)).min(g.window);
            let base = if covered { self.reach.max(g.down(off)) } else { g.down(off) };
            self.reach = base.max(g.up(end.saturating_add(extra)));
            self.size = self.reach - g.down(off);
            self.marker = end;
            if !self.from_start {
                return Plan::Windows { reach: self.reach };
            }
            // From the start of the file the kernel reads ahead from the first read on, and
            // asks for its next window at the second: so does this run, at once.
            self.marker = off;
        }
        if self.size > 0 {
            // In sequence: past the marker, the next window, larger, within what the run
            // has read in a row and one window.
            let cap = end.saturating_add(self.room(self.run.saturating_add(len)).min(g.window));
            if self.size >= g.piece {
                // Full size: pieces up to a window ahead of the reader. A run this long
                // earns back the full first window.
                self.miss = 0;
                while self.reach.saturating_add(g.piece) <= cap {
                    self.reach += g.piece;
                }
            } else if end > self.marker {
                let start = self.reach;
                let to = g.up(start.saturating_add(g.grown(self.size).min(g.piece))).min(g.up(cap));
                if to > start {
                    self.size = to - start;
                    self.marker = start + self.size / 2;
                    self.reach = to;
                }
            }
            self.reach = self.reach.max(g.up(end));
            return Plan::Windows { reach: self.reach };
        }
        if covered {
            // Bytes already read ahead serve the read; nothing more is asked for.
            return Plan::Windows { reach: self.reach };
        }
        if big {
            // Windows in flight for this read alone, nothing past its end.
            self.reach = g.up(end);
            return Plan::Windows { reach: self.reach };
        }
        self.reach = 0;
        Plan::Ordinary
    }

    /// The read planned last returned `n` bytes from `off`.
    pub fn done(&mut self, off: u64, n: u64) {
        self.next = off.saturating_add(n);
        self.run = self.run.saturating_add(n);
    }

    /// The size of each request the windows of the current sequence are read with: the size
    /// of its last window (a window read as two requests has the first back sooner), a quarter
    /// window when it is not a sequence.
    pub fn request(&self, g: &Geometry) -> u64 {
        if self.size == 0 {
            g.piece
        } else {
            g.up(self.size).clamp(g.align, g.piece)
        }
    }

    /// Where the last read ended, if there was one.
    pub fn next(&self) -> Option<u64> {
        (self.next != NONE).then_some(self.next)
    }
}

#[cfg(test)]
mod tests {
    //! The policy driven by access patterns against a model of the windows (which file
    //! ranges are held, how much of each the reader got): bytes asked from the device per
    //! pattern, against the bounds of issue 14.
    use super::*;

    const K: u64 = 1024;
    const M: u64 = 1024 * K;
    const G: Geometry = Geometry { window: 4 * M, piece: M, align: 4096 };

    /// The windows as [`super::super::State`] keeps them, without the I/O: what is asked for,
    /// when windows are dropped, when they are used to their end.
    struct Model {
        pol: Policy,
        g: Geometry,
        size: u64,
        /// [start, end) of each window held.
        wins: Vec<(u64, u64)>,
        frontier: u64,
        /// Bytes asked from the device: windows, and the ordinary path's aligned supersets.
        asked: u64,
        /// Bytes asked for windows.
        ahead: u64,
        /// Device requests.
        requests: u64,
        /// Bytes the reader got.
        delivered: u64,
        /// Bytes delivered, each read rounded out to the alignment.
        rounded: u64,
    }

    impl Model {
        fn new(size: u64) -> Model {
            Model::with(G, size)
        }

        fn with(g: Geometry, size: u64) -> Model {
            Model {
                pol: Policy::default(),
                g,
                size,
                wins: Vec::new(),
                frontier: 0,
                asked: 0,
                ahead: 0,
                requests: 0,
                delivered: 0,
                rounded: 0,
            }
        }

        fn find(&self, pos: u64) -> bool {
            self.wins.iter().any(|w| pos >= w.0 && pos < w.1)
        }

        fn discard(&mut self) {
            self.wins.clear();
        }

        fn top_up(&mut self, pos: u64, reach: u64) {
            self.wins.retain(|w| w.1 > pos);
            let reach = reach.min(self.g.up(self.size));
            while self.frontier < reach && self.wins.len() < 6 {
                let to = (self.frontier + self.pol.request(&self.g)).min(reach);
                self.wins.push((self.frontier, to));
                self.asked += to - self.frontier;
                self.ahead += to - self.frontier;
                self.requests += 1;
                self.frontier = to;
            }
        }

        fn read(&mut self, off: u64, len: u64) {
            let end = (off + len).min(self.size);
            if off >= self.size {
                self.pol.done(off, 0);
                return;
            }
            self.rounded += self.g.up(end) - self.g.down(off);
            let covered = self.find(off);
            let direct = len >= M && off.is_multiple_of(4096) && len.is_multiple_of(4096);
            let big = !direct && len >= 2 * self.g.window;
            let Plan::Windows { reach } = self.pol.plan(&self.g, off, len, covered, big, direct) else {
                self.asked += self.g.up(end) - self.g.down(off);
                self.requests += 1;
                self.delivered += end - off;
                self.pol.done(off, end - off);
                return;
            };
            let mut pos = off;
            while pos < end {
                if !self.find(pos) {
                    self.discard();
                    self.frontier = self.g.down(pos);
                }
                self.top_up(pos, reach);
                let Some(w) = self.wins.iter_mut().find(|w| pos >= w.0 && pos < w.1) else {
                    // beyond the reach: the ordinary path reads the rest
                    self.asked += self.g.up(end) - self.g.down(pos);
                    self.requests += 1;
                    break;
                };
                pos = w.1.min(end);
            }
            self.delivered += end - off;
            self.pol.done(off, end - off);
            self.top_up(end, reach);
        }

        fn amplification(&self) -> f64 {
            self.asked as f64 / self.rounded as f64
        }
    }

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    fn shuffled(n: u64, seed: u64) -> Vec<u64> {
        let mut v: Vec<u64> = (0..n).collect();
        let mut s = seed | 1;
        for i in (1..v.len()).rev() {
            let j = (xorshift(&mut s) % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }

    #[test]
    fn a_first_read_at_the_start_reads_the_kernels_first_window_at_most() {
        for len in [1, 4096, 65536, 100_000, M + 1, 4 * M - 1] {
            let mut m = Model::new(512 * M);
            m.read(0, len);
            // the kernel's initial readahead: four times a small request, twice a medium one
            let kernel = if G.up(len) <= 128 * K { 4 * G.up(len) } else { 2 * G.up(len) };
            assert!(m.asked > G.up(len), "a first read of {len} bytes at 0 read no window");
            assert!(m.asked <= kernel.min(G.up(len) + 64 * K), "a first read of {len} bytes at 0: {} asked", m.asked);
        }
    }

    #[test]
    fn other_first_reads_read_no_window() {
        for len in [1, 4096, 65536, M, 4 * M - 1] {
            let mut m = Model::new(512 * M);
            m.read(8 * M + 100, len);
            assert_eq!(m.ahead, 0, "a first read of {len} bytes inside the file read ahead");
            assert_eq!(m.asked, G.up(8 * M + 100 + len) - 8 * M);
        }
        // back at the start later: only what is asked for
        let mut m = Model::new(512 * M);
        m.read(100 * M, 4096);
        m.read(0, 4096);
        assert_eq!(m.ahead, 0);
        // an aligned large first read goes straight into the program's buffer
        let mut p = Policy::default();
        assert_eq!(p.plan(&G, 0, 2 * M, false, false, true), Plan::Ordinary);
    }

    #[test]
    fn random_reads_of_any_size_read_what_they_ask_for() {
        for len in [4096, 65536, 100_000, M, 3 * M + 5, 9 * M + 1] {
            let mut m = Model::new(512 * M);
            let mut s = 7;
            for _ in 0..300 {
                let off = xorshift(&mut s) % (500 * M);
                m.read(off, len);
            }
            assert_eq!(m.asked, m.rounded, "random reads of {len} bytes: {} asked, {} rounded", m.asked, m.rounded);
        }
    }

    #[test]
    fn shuffled_chunks_in_short_runs_stay_well_below_the_kernel() {
        // 256 KiB chunks each read as four 64 KiB reads, chunks in shuffled order: the
        // kernel's readahead reads about three times the data here
        let mut m = Model::new(512 * M);
        for c in shuffled(2048, 3) {
            for i in 0..4 {
                m.read(c * 256 * K + i * 64 * K, 64 * K);
            }
        }
        let a = m.amplification();
        assert!(a <= 1.3, "shuffled chunks: {a:.2}x");
    }

    #[test]
    fn strided_reads_read_no_window_after_the_first() {
        let mut m = Model::new(512 * M);
        for k in 0..400 {
            m.read(k * M, 64 * K);
        }
        assert_eq!(m.ahead, 128 * K, "the first read's window only");
        assert_eq!(m.asked, m.rounded + 64 * K);
    }

    #[test]
    fn page_gets_after_the_meta_pages() {
        // lmdb: the two meta pages in a row at the start, then random 4 KiB pages
        let mut m = Model::new(512 * M);
        m.read(0, 4096);
        m.read(4096, 4096);
        let mut s = 11;
        for _ in 0..200 {
            m.read((xorshift(&mut s) % (512 * M / 4096)) * 4096, 4096);
        }
        assert!(m.asked <= m.rounded + 64 * K, "{} asked for {} rounded", m.asked, m.rounded);
    }

    #[test]
    fn a_header_then_jumps() {
        // .npy-like: a few small reads of a header in a row, then random 64 KiB reads
        let mut m = Model::new(512 * M);
        m.read(0, 6);
        m.read(6, 4);
        m.read(10, 118);
        let mut s = 5;
        for _ in 0..200 {
            m.read((xorshift(&mut s) % (500 * M / 4096)) * 4096, 64 * K);
        }
        assert!(m.asked <= m.rounded + 64 * K, "{} asked for {} rounded", m.asked, m.rounded);
    }

    #[test]
    fn a_jump_after_a_sequential_run_costs_at_most_one_window() {
        for (from, len, n) in
            [(0, 64 * K, 16), (8 * M, 64 * K, 16), (8 * M, 4096, 300), (3 * M, M, 7), (0, 64 * K, 400)]
        {
            let mut m = Model::new(512 * M);
            for i in 0..n {
                m.read(from + i * len, len);
            }
            m.read(400 * M, 64 * K);
            assert!(
                m.asked <= m.rounded + G.window,
                "a run of {n} reads of {len} at {from} then a jump: {} asked for {} rounded",
                m.asked,
                m.rounded
            );
        }
    }

    #[test]
    fn sequential_reads_grow_to_full_windows() {
        for (len, size) in [(4096u64, 64 * M), (64 * K, 64 * M), (65537, 64 * M), (M, 64 * M), (8 * M + 1, 256 * M)] {
            let mut m = Model::new(size);
            let mut off = 0;
            while off < size {
                m.read(off, len);
                off += len;
            }
            assert_eq!(m.delivered, size);
            assert!(m.asked <= G.up(size) + G.up(len), "{len}: {} asked for {size}", m.asked);
            // large requests: after the ramp, windows are full
            assert!(m.requests <= size / G.piece + 16, "{len}: {} requests for {size} bytes", m.requests);
        }
    }

    #[test]
    fn small_files_read_whole_take_few_requests() {
        // 1 MiB files read with 64 KiB reads: the first read, then the rest as one window at the
        // second (two requests a file, as the kernel with an 8 MiB read_ahead_kb)
        let mut total = 0;
        for _ in 0..10 {
            let mut m = Model::new(M);
            for i in 0..16 {
                m.read(i * 64 * K, 64 * K);
            }
            m.read(M, 64 * K);
            assert_eq!(m.asked, M);
            total += m.requests;
        }
        assert!(total <= 20, "{total} requests for ten 1 MiB files");
    }

    #[test]
    fn unused_windows_make_the_next_runs_start_smaller() {
        fn run_of_two(p: &mut Policy, at: u64) -> u64 {
            let _ = p.plan(&G, at, 4096, false, false, false);
            p.done(at, 4096);
            let Plan::Windows { reach } = p.plan(&G, at + 4096, 4096, false, false, false) else { panic!("no window") };
            p.done(at + 4096, 4096);
            reach - at
        }
        let mut p = Policy::default();
        let first = run_of_two(&mut p, 0);
        assert!(first > 8192);
        // the jump leaves the window's last bytes unused: the next run starts smaller
        let second = run_of_two(&mut p, 0);
        assert_eq!(p.miss, 1);
        assert!(second < first, "{second} >= {first}");
        let third = run_of_two(&mut p, 0);
        assert_eq!(p.miss, 2);
        assert!(third <= second, "{third} > {second}");
        let _ = run_of_two(&mut p, 0);
        assert_eq!(p.miss, 2, "at most a quarter");
        // a run that reaches full windows restores the start
        let mut off = 8192;
        while p.size < G.piece {
            let _ = p.plan(&G, off, 65536, false, false, false);
            p.done(off, 65536);
            off += 65536;
        }
        let _ = p.plan(&G, off, 65536, false, false, false);
        assert_eq!(p.miss, 0);
        p.done(off, 65536);
        assert_eq!(run_of_two(&mut p, 0), second, "one miss: the jump left windows unused");
        let mut q = Policy::default();
        assert_eq!(run_of_two(&mut q, 0), first);
    }

    #[test]
    fn one_large_read_is_windows_up_to_its_end() {
        let mut p = Policy::default();
        assert_eq!(
            p.plan(&G, 1000, 3 * G.window + 5000, false, true, false),
            Plan::Windows { reach: G.up(3 * G.window + 6000) }
        );
        assert_eq!(
            p.plan(&G, 0, 3 * G.window, false, false, true),
            Plan::Ordinary,
            "an aligned large read goes direct"
        );
    }
}
