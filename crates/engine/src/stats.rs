//! Per-process statistics: the counters and fallback reasons (declared once here), the
//! atomics they are counted in, and the JSON object written to `S3DLIO_DIRECT_STATS` at
//! exit, at `_exit` and before exec.
//!
//! `%p` in the path becomes the pid and `%h` the host name; without `%p`, `.%p` is appended
//! so processes never overwrite each other. Where the files go and how they are written
//! safely (the counters file the atomics live in, the index, the JSON) is
//! [`crate::statsdir`]'s business.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Declares the counters of the statistics file, each once: its variant, doc line and key.
macro_rules! counters {
    ($( #[doc = $doc:literal] $name:ident => $key:literal; )+) => {
        /// A per-process counter of the statistics file.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter {
            $( #[doc = $doc] $name, )+
        }

        impl Counter {
            /// Every counter, in file order (the discriminant is the index).
            pub const ALL: &[Counter] = &[$(Counter::$name),+];

            /// The counter's key in the statistics file and in `s3dlio-direct stats --json`.
            pub const fn key(self) -> &'static str {
                match self {
                    $( Counter::$name => $key, )+
                }
            }

            /// What it counts: its doc line (README's table of counters shows the same).
            pub const fn doc(self) -> &'static str {
                match self {
                    $( Counter::$name => $doc.trim_ascii(), )+
                }
            }
        }
    };
}

counters! {
    /// Opens of regular files and block devices `S3DLIO_DIRECT_PATHS` matched.
    OpensMatched => "opens_matched";
    /// Of those, opens that went direct.
    OpensDirect => "opens_direct";
    /// Of those, opens left buffered (`fallbacks` says why).
    OpensFallback => "opens_fallback";
    /// Read calls on direct files (`read`, `pread`, `readv`, stream reads, copy emulation).
    ReadCalls => "read_calls";
    /// Bytes those calls returned.
    ReadBytes => "read_bytes";
    /// Read calls that copied some bytes through the library's aligned buffers because the buffer, offset or length was not aligned for O_DIRECT (also reads redone through the page cache).
    ReadBouncedCalls => "read_bounced_calls";
    /// Bytes copied that way.
    ReadBouncedBytes => "read_bounced_bytes";
    /// Write calls on direct files.
    WriteCalls => "write_calls";
    /// Bytes those calls wrote.
    WriteBytes => "write_bytes";
    /// Write calls that sent some bytes through the page cache (small or unaligned pieces, dropped after).
    WriteBouncedCalls => "write_bounced_calls";
    /// Bytes written that way.
    WriteBouncedBytes => "write_bounced_bytes";
    /// Direct calls refused with EINVAL and redone buffered.
    EinvalRetries => "einval_retries";
    /// stdio streams whose reads and writes the engine serves.
    StreamsDirect => "streams_direct";
    /// `mmap` of a direct file: served by the page cache, not direct.
    MmapCalls => "mmap_calls";
    /// `posix_fadvise(WILLNEED)` and `readahead` calls not passed on.
    AdviceSwallowed => "advice_swallowed";
    /// Bytes asked of the device for read-ahead windows, counted when asked (also those the program never read).
    ReadaheadBytes => "read_ahead_bytes";
    /// Bytes asked of the device for reads: windows, aligned supersets of misaligned reads, direct reads (reads through the page cache: what they returned). Amplification is this over `read_bytes`.
    ReadDeviceBytes => "read_device_bytes";
    /// Bytes of reads served by copies from read-ahead windows (not counted as bounced).
    ReadaheadCopiedBytes => "read_ahead_copied_bytes";
    /// Bytes of matched files found in the page cache at their last close (or at exit or exec, still open and shared with no other process) beyond what was cached at open, left by I/O the library did not serve (Linux AIO, io_uring, raw system calls, streams glibc made), then dropped; a file mapped in the process is left to the mapping budget.
    CachedUnseenBytes => "cached_unseen_bytes";
    /// Mappings (`mmap`) of matched files. Those not served direct (`map_direct_mappings`) are read through the page cache, their footprint there kept within `S3DLIO_DIRECT_MAP_BUDGET`.
    MapMappings => "map_mappings";
    /// Bytes of mapped matched files that came into the page cache while mapped (faults and the kernel's read-around: what the device was asked for, unless another process had them cached).
    MapFaultedBytes => "map_faulted_bytes";
    /// Bytes of mapped matched files given back to keep the footprint within the budget (read again from the device if touched again).
    MapGivenBackBytes => "map_given_back_bytes";
    /// The largest footprint in the page cache of the process's mapped matched files at any measure (`stats` sums it over processes).
    MapPeakBytes => "map_peak_bytes";
    /// Mappings of matched files served direct (`S3DLIO_DIRECT_MAP=direct`): their pages read from the device with O_DIRECT into the library's memory, none into the page cache.
    MapDirectMappings => "map_direct_mappings";
    /// Bytes read from the device with O_DIRECT to fill direct mappings.
    MapDirectReadBytes => "map_direct_read_bytes";
    /// Bytes of direct mappings freed to stay within `S3DLIO_DIRECT_MAP_BUDGET` (read again if touched again).
    MapDirectGivenBackBytes => "map_direct_given_back_bytes";
    /// Direct mappings turned back into file mappings (bounded mode): the file was opened for writing, or mprotect, mremap or madvise asked for what only the file mapping answers the kernel's way.
    MapDirectConverted => "map_direct_converted";
}

/// Declares the fallback reasons, each once: its variant, doc line, key and human text.
/// The `counted` ones are the statistics file's `fallbacks`; `store_only` ones are only
/// reported by the store API.
macro_rules! fallbacks {
    (
        counted: $( #[doc = $doc:literal] $name:ident => $key:literal, $text:literal; )+
        store_only: $( #[doc = $sdoc:literal] $sname:ident => $skey:literal, $stext:literal; )+
    ) => {
        /// Why a file (or a call on it) is not doing direct I/O: the engine's statistics
        /// count these, and the store API ([`crate::direct_file`]) reports them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Fallback {
            $( #[doc = $doc] $name, )+
            $( #[doc = $sdoc] $sname, )+
        }

        impl Fallback {
            /// The reasons the statistics file counts, in file order (the discriminant is
            /// the index).
            pub const COUNTED: &[Fallback] = &[$(Fallback::$name),+];
            /// Every reason: the counted ones, then those only the store API reports.
            pub const ALL: &[Fallback] = &[$(Fallback::$name,)+ $(Fallback::$sname),+];

            /// The reason's key in the statistics file's `fallbacks`.
            pub const fn key(self) -> &'static str {
                match self {
                    $( Fallback::$name => $key, )+
                    $( Fallback::$sname => $skey, )+
                }
            }

            /// What it means: its doc line (README's table of fallback reasons shows the same).
            pub const fn doc(self) -> &'static str {
                match self {
                    $( Fallback::$name => $doc.trim_ascii(), )+
                    $( Fallback::$sname => $sdoc.trim_ascii(), )+
                }
            }

            /// The text for people (`Display`): what went buffered and why.
            pub const fn text(self) -> &'static str {
                match self {
                    $( Fallback::$name => $text, )+
                    $( Fallback::$sname => $stext, )+
                }
            }
        }
    };
}

fallbacks! {
    counted:
    /// The filesystem refused O_DIRECT (`fcntl(F_SETFL)` gave EINVAL): ramfs, many FUSE mounts.
    FsNoDirect => "fs_no_odirect", "filesystem does not support O_DIRECT";
    /// The kernel reports that the file cannot do direct I/O (statx DIOALIGN of zero).
    FileNoDirect => "file_no_odirect", "file does not support O_DIRECT (statx DIOALIGN is 0)";
    /// A read-only open of a file smaller than `S3DLIO_DIRECT_MIN_SIZE` (the store: `min_io_size`).
    BelowMinSize => "below_min_size", "file smaller than the minimum size for direct I/O";
    /// The private O_DIRECT twin of the file could not be opened (a mode that forbids reopening it, no /proc), so the file stayed buffered.
    NoTwin => "no_twin", "could not open a second descriptor of the file";
    /// A stdio stream the engine does not serve was opened on the file: that stream's own reads and writes go through the page cache.
    FdopenStream => "fdopen_stream", "a stdio stream the engine does not serve was opened on the file";
    /// A direct call was refused with EINVAL and redone buffered.
    EinvalRetry => "einval_retry", "direct call refused with EINVAL, redone buffered";
    /// A tracked fd number turned out to be reused by another file; it was released.
    StaleFd => "stale_fd", "a tracked descriptor number was reused by another file";
    /// No descriptor number was left for the twin, or taking one would have left the program fewer than it would have had; the file stayed buffered.
    NoDescriptor => "no_descriptor", "no descriptor number left for the library";
    /// The process takes POSIX record locks (fcntl `F_SETLK`, `lockf`) on the file: the library keeps no descriptor of its own of such a file (closing any descriptor of a file, also the program's `dup2` onto one's number, drops the process's locks on it), so at the first lock it gives up the file's twins and opens none for it again in the process; counted per description.
    PosixLocks => "posix_locks", "the process takes POSIX record locks on the file";
    /// A read-only mapping could not be direct: the file was open for writing (no read lease), so it is bounded.
    MapWriter => "map_writer", "a mapped file was open for writing: bounded, not direct";
    /// A mapping could not be direct: no privileged userfaultfd (not root, vm.unprivileged_userfaultfd=0, no access to /dev/userfaultfd), so it is bounded.
    MapPrivilege => "map_privilege", "no privileged userfaultfd for direct mappings: bounded";
    /// A mapping could not be direct: a seccomp filter refused userfaultfd (containers' default profiles), so it is bounded.
    MapSeccomp => "map_seccomp", "seccomp refused userfaultfd for direct mappings: bounded";
    /// A mapping could not be direct: the kernel lacks userfaultfd or refused a step (registration, O_DIRECT, memory), so it is bounded.
    MapKernel => "map_kernel", "the kernel refused a direct mapping: bounded";
    store_only:
    /// The caller did not ask for direct I/O.
    NotRequested => "not_requested", "direct I/O not requested";
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// Every slot of a [`Block`]: the counters, then the counted fallback reasons.
pub const SLOTS: usize = Counter::ALL.len() + Fallback::COUNTED.len();

/// The values of a process's statistics, in slot order ([`Counter::ALL`], then
/// [`Fallback::COUNTED`]). The engine's block lives in the process's counters file, a shared
/// mapping (see [`crate::statsdir`]), so the counts outlive the process as they change.
#[repr(C)]
pub struct Block {
    /// One atomic per slot.
    pub slots: [AtomicU64; SLOTS],
}

impl Block {
    /// All zero.
    pub const fn new() -> Self {
        Block { slots: [const { AtomicU64::new(0) }; SLOTS] }
    }
}

impl Default for Block {
    fn default() -> Self {
        Self::new()
    }
}

/// Called at the first count of a process whose statistics should live in a file: returns
/// the block to count into from then on (in a shared mapping), or null to keep counting in
/// memory.
pub type AttachHook = fn() -> *mut Block;

/// The process's counters: in memory until a [`Block`] elsewhere is attached (the counters
/// file), then there. Adding costs one atomic load and one atomic add.
pub struct Stats {
    local: Block,
    live: AtomicPtr<Block>,
    /// An [`AttachHook`] to run at the first count (0: none, or already taken).
    hook: AtomicUsize,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// All zero, counting in memory.
    pub const fn new() -> Self {
        Stats { local: Block::new(), live: AtomicPtr::new(std::ptr::null_mut()), hook: AtomicUsize::new(0) }
    }

    /// Adds `n` to a counter.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        self.bump(c as usize, n);
    }

    /// Raises a counter to `v` if it is below (a maximum, such as a peak; one thread raises it).
    pub fn raise(&self, c: Counter, v: u64) {
        let cur = self.get(c);
        if v > cur {
            self.bump(c as usize, v - cur);
        }
    }

    /// Counts one fallback for `r` (a reason the file does not count is ignored).
    #[inline]
    pub fn fallback(&self, r: Fallback) {
        if (r as usize) < Fallback::COUNTED.len() {
            self.bump(Counter::ALL.len() + r as usize, 1);
        }
    }

    #[inline]
    fn bump(&self, slot: usize, n: u64) {
        let p = self.live.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: an attached block stays mapped for the life of the process (see
            // `attach`); only a fork child detaches, before any of its threads count.
            unsafe { (*p).slots[slot].fetch_add(n, Ordering::Relaxed) };
            return;
        }
        self.bump_cold(slot, n);
    }

    #[cold]
    fn bump_cold(&self, slot: usize, n: u64) {
        // Loaded before it is taken: where no block could be made, every count comes here,
        // and a load does not contend for the cache line as a swap would.
        let hook = if self.hook.load(Ordering::Acquire) != 0 { self.hook.swap(0, Ordering::AcqRel) } else { 0 };
        if hook != 0 {
            // SAFETY: only `arm` stores into `hook`, and it stores an `AttachHook`.
            let hook: AttachHook = unsafe { std::mem::transmute::<usize, AttachHook>(hook) };
            let b = hook();
            if !b.is_null() {
                // SAFETY: the hook's contract: a block that stays valid for the process.
                unsafe { self.attach(b) };
            }
        }
        self.local.slots[slot].fetch_add(n, Ordering::SeqCst);
        // A block attached meanwhile: move what this thread just added there (`attach`
        // moves everything added before it published the block).
        let p = self.live.load(Ordering::SeqCst);
        if !p.is_null() {
            let v = self.local.slots[slot].swap(0, Ordering::SeqCst);
            // SAFETY: as in `bump`.
            unsafe { (*p).slots[slot].fetch_add(v, Ordering::Relaxed) };
        }
    }

    /// Runs `hook` at the first count from now on (unless a block is attached by then).
    pub fn arm(&self, hook: AttachHook) {
        self.hook.store(hook as usize, Ordering::Release);
    }

    /// Counts into `b` from now on, with everything counted in memory so far moved there.
    ///
    /// # Safety
    /// `b` must stay valid, and be used for nothing else, for as long as this `Stats` counts
    /// (until [`Stats::detach`]).
    pub unsafe fn attach(&self, b: *mut Block) {
        self.live.store(b, Ordering::SeqCst);
        for (i, a) in self.local.slots.iter().enumerate() {
            let v = a.swap(0, Ordering::SeqCst);
            // SAFETY: the caller's contract.
            unsafe { (*b).slots[i].fetch_add(v, Ordering::Relaxed) };
        }
    }

    /// Whether a block is attached.
    pub fn attached(&self) -> bool {
        !self.live.load(Ordering::Acquire).is_null()
    }

    /// Forgets the attached block and zeroes the counts, and returns the block (a fork
    /// child, which has one thread, switches to counters of its own this way).
    pub fn detach(&self) -> *mut Block {
        let b = self.live.swap(std::ptr::null_mut(), Ordering::SeqCst);
        self.local.slots.iter().for_each(|a| a.store(0, Ordering::Relaxed));
        b
    }

    /// Every slot's value (in memory plus the attached block).
    pub fn snapshot(&self) -> [u64; SLOTS] {
        let p = self.live.load(Ordering::Acquire);
        std::array::from_fn(|i| {
            let mut v = self.local.slots[i].load(Ordering::Relaxed);
            if !p.is_null() {
                // SAFETY: as in `bump`.
                v += unsafe { (*p).slots[i].load(Ordering::Relaxed) };
            }
            v
        })
    }

    /// True if nothing was counted.
    pub fn is_zero(&self) -> bool {
        self.snapshot().iter().all(|&v| v == 0)
    }

    /// Current value of a counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.snapshot()[c as usize]
    }

    /// Zeroes everything (the attached block too).
    pub fn reset(&self) {
        let p = self.live.load(Ordering::Acquire);
        for (i, a) in self.local.slots.iter().enumerate() {
            a.store(0, Ordering::Relaxed);
            if !p.is_null() {
                // SAFETY: as in `bump`.
                unsafe { (*p).slots[i].store(0, Ordering::Relaxed) };
            }
        }
    }

    /// Adds the integers of a statistics file (keys this version does not know are ignored).
    pub fn absorb(&self, text: &str) {
        let text = after_program(text);
        for (i, key) in slot_keys().enumerate() {
            self.bump(i, json_int(text, key).unwrap_or(0));
        }
    }

    /// The JSON document.
    pub fn to_json(&self, pid: i32, starttime: u64, program: &str) -> String {
        json_document(&self.snapshot(), pid, starttime, program)
    }
}

/// The key of every slot, in slot order (counters, then the counted fallback reasons).
pub fn slot_keys() -> impl Iterator<Item = &'static str> {
    Counter::ALL.iter().map(|c| c.key()).chain(Fallback::COUNTED.iter().map(|r| r.key()))
}

/// The statistics file of one process: `schema` (1), `version`, `pid`, `starttime`,
/// `program`, one integer per counter and `fallbacks`, an object from reason to count.
pub fn json_document(values: &[u64; SLOTS], pid: i32, starttime: u64, program: &str) -> String {
    let mut s = String::with_capacity(1024);
    let _ = write!(
        s,
        "{{\"schema\":1,\"version\":\"{}\",\"pid\":{pid},\"starttime\":{starttime},\"program\":\"{}\"",
        env!("CARGO_PKG_VERSION"),
        json_escape(program)
    );
    for (v, c) in values.iter().zip(Counter::ALL) {
        let _ = write!(s, ",\"{}\":{v}", c.key());
    }
    s.push_str(",\"fallbacks\":{");
    for (i, (v, r)) in values[Counter::ALL.len()..].iter().zip(Fallback::COUNTED).enumerate() {
        let _ = write!(s, "{}\"{}\":{v}", if i > 0 { "," } else { "" }, r.key());
    }
    s.push_str("}}\n");
    s
}

/// `s` as the inside of a JSON string.
pub fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// The value of `"key":<integer>` in a flat document this module wrote.
pub fn json_int(text: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let start = text.find(&pat)? + pat.len();
    let digits: String = text[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// What follows the `program` string of a document this module wrote (a program name could
/// otherwise pass for a key).
fn after_program(text: &str) -> &str {
    const KEY: &str = "\"program\":\"";
    let Some(start) = text.find(KEY).map(|i| i + KEY.len()) else { return text };
    let b = text.as_bytes();
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return &text[i.min(text.len())..],
            _ => i += 1,
        }
    }
    ""
}

/// Expands `%p` and `%h` (and `%%`); appends `.<pid>` if there was no `%p`.
pub fn expand_path(template: &[u8], pid: i32, host: &[u8]) -> Vec<u8> {
    expand_with(template, pid.to_string().as_bytes(), host)
}

/// Expands `%p` to `pid` (any text: the index uses `index`) and `%h` to `host`; appends
/// `.<pid>` if there was no `%p`.
pub fn expand_with(template: &[u8], pid: &[u8], host: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len() + 16);
    let mut saw_pid = false;
    let mut it = template.iter().copied().peekable();
    while let Some(b) = it.next() {
        if b == b'%' {
            match it.peek() {
                Some(b'p') => {
                    it.next();
                    out.extend_from_slice(pid);
                    saw_pid = true;
                    continue;
                }
                Some(b'h') => {
                    it.next();
                    out.extend_from_slice(host);
                    continue;
                }
                Some(b'%') => {
                    it.next();
                }
                _ => {}
            }
        }
        out.push(b);
    }
    if !saw_pid {
        out.push(b'.');
        out.extend_from_slice(pid);
    }
    out
}

/// Field 22 of /proc/self/stat: the process start time in clock ticks since boot.
pub fn process_starttime() -> u64 {
    crate::sys::proc_stat(0).map_or(0, |(_, start)| start)
}

/// The node name (`uname`), for `%h`.
pub fn hostname() -> Vec<u8> {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is writable.
    if unsafe { libc::uname(&mut u) } != 0 {
        return b"unknown".to_vec();
    }
    u.nodename.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_expansion() {
        assert_eq!(expand_path(b"/s/st-%p.json", 42, b"h"), b"/s/st-42.json");
        assert_eq!(expand_path(b"/s/st.json", 42, b"h"), b"/s/st.json.42");
        assert_eq!(expand_path(b"/s/%h-%p", 7, b"node1"), b"/s/node1-7");
        assert_eq!(expand_path(b"/s/100%%-%p", 7, b"n"), b"/s/100%-7");
        assert_eq!(expand_with(b"/s/%h.%p.json", b"index", b"n"), b"/s/n.index.json");
    }

    #[test]
    fn json_has_every_key_and_round_trips() {
        let s = Stats::new();
        s.add(Counter::ReadBytes, 123);
        s.fallback(Fallback::FsNoDirect);
        s.fallback(Fallback::NotRequested);
        let j = s.to_json(5, 99, "prog \"x\"");
        for k in Counter::ALL.iter().map(|c| c.key()).chain(Fallback::COUNTED.iter().map(|r| r.key())) {
            assert!(j.contains(&format!("\"{k}\":")), "{k} missing in {j}");
        }
        assert_eq!(json_int(&j, "read_bytes"), Some(123));
        assert_eq!(json_int(&j, "fs_no_odirect"), Some(1));
        assert!(j.contains("\"schema\":1"));
        let t = Stats::new();
        t.absorb(&j);
        t.absorb(&j);
        assert_eq!(t.get(Counter::ReadBytes), 246);
        s.reset();
        assert_eq!(s.get(Counter::ReadBytes), 0);
    }

    fn is_key(k: &str) -> bool {
        !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && !k.starts_with('_')
    }

    #[test]
    fn declarations_are_consistent() {
        let mut keys: Vec<&str> = Vec::new();
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            keys.push(c.key());
            assert!(!c.doc().is_empty() && !c.doc().contains(['\n', '|']), "{c:?}");
        }
        for (i, r) in Fallback::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(i < Fallback::COUNTED.len(), Fallback::COUNTED.contains(r), "{r:?}");
            keys.push(r.key());
            assert!(!r.doc().is_empty() && !r.doc().contains(['\n', '|']), "{r:?}");
            assert_eq!(r.to_string(), r.text());
            assert!(!r.text().is_empty());
        }
        for (i, k) in keys.iter().enumerate() {
            assert!(is_key(k), "{k}");
            assert!(!keys[..i].contains(k), "{k} twice");
        }
        assert!(!Fallback::COUNTED.contains(&Fallback::NotRequested));
    }

    /// The file's format, key by key: the declarations may be reworded, the file may not
    /// change unnoticed.
    #[test]
    fn json_layout() {
        let s = Stats::new();
        s.add(Counter::OpensMatched, 3);
        s.add(Counter::ReadaheadBytes, 7);
        s.fallback(Fallback::StaleFd);
        s.fallback(Fallback::NotRequested);
        let j = s.to_json(5, 99, "p");
        let want = format!(
            "{{\"schema\":1,\"version\":\"{}\",\"pid\":5,\"starttime\":99,\"program\":\"p\",\
             \"opens_matched\":3,\"opens_direct\":0,\"opens_fallback\":0,\"read_calls\":0,\"read_bytes\":0,\
             \"read_bounced_calls\":0,\"read_bounced_bytes\":0,\"write_calls\":0,\"write_bytes\":0,\
             \"write_bounced_calls\":0,\"write_bounced_bytes\":0,\"einval_retries\":0,\"streams_direct\":0,\
             \"mmap_calls\":0,\"advice_swallowed\":0,\"read_ahead_bytes\":7,\"read_device_bytes\":0,\
             \"read_ahead_copied_bytes\":0,\"cached_unseen_bytes\":0,\"map_mappings\":0,\"map_faulted_bytes\":0,\
             \"map_given_back_bytes\":0,\"map_peak_bytes\":0,\"map_direct_mappings\":0,\"map_direct_read_bytes\":0,\
             \"map_direct_given_back_bytes\":0,\"map_direct_converted\":0,\
             \"fallbacks\":{{\"fs_no_odirect\":0,\"file_no_odirect\":0,\"below_min_size\":0,\"no_twin\":0,\
             \"fdopen_stream\":0,\"einval_retry\":0,\"stale_fd\":1,\"no_descriptor\":0,\"posix_locks\":0,\
             \"map_writer\":0,\"map_privilege\":0,\"map_seccomp\":0,\"map_kernel\":0}}}}\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(j, want);
    }

    #[test]
    fn counts_move_into_an_attached_block() {
        static B: Block = Block::new();
        fn hook() -> *mut Block {
            &B as *const Block as *mut Block
        }
        let s = Stats::new();
        s.add(Counter::ReadBytes, 5);
        s.arm(hook);
        assert!(!s.attached());
        s.add(Counter::ReadBytes, 7);
        assert!(s.attached());
        s.fallback(Fallback::StaleFd);
        s.fallback(Fallback::NotRequested);
        assert_eq!(B.slots[Counter::ReadBytes as usize].load(Ordering::Relaxed), 12);
        assert_eq!(B.slots[Counter::ALL.len() + Fallback::StaleFd as usize].load(Ordering::Relaxed), 1);
        assert_eq!(s.get(Counter::ReadBytes), 12);
        let j = s.to_json(1, 2, "p");
        assert_eq!(json_int(&j, "read_bytes"), Some(12));
        assert_eq!(s.detach(), hook());
        assert!(s.is_zero());
        assert_eq!(B.slots[Counter::ReadBytes as usize].load(Ordering::Relaxed), 12, "the block is left alone");
    }

    #[test]
    fn a_program_name_is_not_a_key() {
        let s = Stats::new();
        s.add(Counter::ReadBytes, 3);
        let j = s.to_json(1, 2, "\"read_bytes\":9");
        let t = Stats::new();
        t.absorb(&j);
        assert_eq!(t.get(Counter::ReadBytes), 3);
    }

    #[test]
    fn starttime_is_read() {
        assert!(process_starttime() > 0);
    }
}
