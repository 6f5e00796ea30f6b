//! Per-process statistics: counters kept in atomics, written as one JSON object to
//! `S3DLIO_DIRECT_STATS` at exit, at `_exit` and before exec (temporary file and rename).
//!
//! `%p` in the path becomes the pid and `%h` the host name; without `%p`, `.%p` is appended
//! so processes never overwrite each other. An exec'd image keeps its pid, so it folds in
//! the file its predecessor wrote (same pid and process start time) instead of replacing it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// The buffered companion descriptor could not be opened, so the file went buffered.
    NoCompanion => "no_companion", "could not open a buffered companion descriptor";
    /// A stdio stream the engine does not serve was opened on the file; it went buffered.
    FdopenStream => "fdopen_stream", "a stdio stream the engine does not serve was opened on the file";
    /// The descriptor was handed to a child process (`posix_spawn`, `system`, `popen`); it went buffered.
    InheritedByChild => "inherited_by_child", "the descriptor was handed to a child process";
    /// A direct call was refused with EINVAL and redone buffered.
    EinvalRetry => "einval_retry", "direct call refused with EINVAL, redone buffered";
    /// A tracked fd number turned out to be reused by another file; it was released.
    StaleFd => "stale_fd", "a tracked descriptor number was reused by another file";
    store_only:
    /// The caller did not ask for direct I/O.
    NotRequested => "not_requested", "direct I/O not requested";
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// The process's counters.
pub struct Stats {
    counters: [AtomicU64; Counter::ALL.len()],
    fallbacks: [AtomicU64; Fallback::COUNTED.len()],
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// All zero.
    pub const fn new() -> Self {
        Stats {
            counters: [const { AtomicU64::new(0) }; Counter::ALL.len()],
            fallbacks: [const { AtomicU64::new(0) }; Fallback::COUNTED.len()],
        }
    }

    /// Adds `n` to a counter.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        self.counters[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one fallback for `r` (a reason the file does not count is ignored).
    pub fn fallback(&self, r: Fallback) {
        if let Some(a) = self.fallbacks.get(r as usize) {
            a.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Current value of a counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Ordering::Relaxed)
    }

    /// Zeroes everything (a fork child starts from zero).
    pub fn reset(&self) {
        self.counters.iter().chain(self.fallbacks.iter()).for_each(|a| a.store(0, Ordering::Relaxed));
    }

    /// Adds the integers of a file this process image's predecessor wrote.
    fn absorb(&self, text: &str) {
        for (a, c) in self.counters.iter().zip(Counter::ALL) {
            a.fetch_add(json_int(text, c.key()).unwrap_or(0), Ordering::Relaxed);
        }
        for (a, r) in self.fallbacks.iter().zip(Fallback::COUNTED) {
            a.fetch_add(json_int(text, r.key()).unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// The JSON document.
    pub fn to_json(&self, pid: i32, starttime: u64, program: &str) -> String {
        let mut s = String::with_capacity(1024);
        let _ = write!(
            s,
            "{{\"schema\":1,\"version\":\"{}\",\"pid\":{pid},\"starttime\":{starttime},\"program\":\"{}\"",
            env!("CARGO_PKG_VERSION"),
            json_escape(program)
        );
        for (a, c) in self.counters.iter().zip(Counter::ALL) {
            let _ = write!(s, ",\"{}\":{}", c.key(), a.load(Ordering::Relaxed));
        }
        s.push_str(",\"fallbacks\":{");
        for (i, (a, r)) in self.fallbacks.iter().zip(Fallback::COUNTED).enumerate() {
            let _ = write!(s, "{}\"{}\":{}", if i > 0 { "," } else { "" }, r.key(), a.load(Ordering::Relaxed));
        }
        s.push_str("}}\n");
        s
    }
}

fn json_escape(s: &str) -> String {
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
fn json_int(text: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let start = text.find(&pat)? + pat.len();
    let digits: String = text[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Expands `%p` and `%h` (and `%%`); appends `.<pid>` if there was no `%p`.
pub fn expand_path(template: &[u8], pid: i32, host: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len() + 16);
    let mut saw_pid = false;
    let mut it = template.iter().copied().peekable();
    while let Some(b) = it.next() {
        if b == b'%' {
            match it.peek() {
                Some(b'p') => {
                    it.next();
                    out.extend_from_slice(pid.to_string().as_bytes());
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
        out.extend_from_slice(pid.to_string().as_bytes());
    }
    out
}

/// What this process image's predecessors (same pid, same start time: exec) wrote, loaded
/// once at the first write and added to every later write.
static BASE: Stats = Stats::new();
static BASE_LOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes `stats` to the expanded `template` atomically, folding in a predecessor's file
/// from the same process (exec keeps the pid and the start time).
pub fn write_file(stats: &Stats, template: &[u8], program: &str) -> Result<(), i32> {
    use crate::sys;
    let pid = sys::getpid();
    let start = process_starttime();
    let path = expand_path(template, pid, &hostname());
    let cpath = std::ffi::CString::new(path.clone()).map_err(|_| libc::EINVAL)?;
    if !BASE_LOADED.swap(true, Ordering::Relaxed) {
        let mut buf = vec![0u8; 16384];
        if let Ok(n) = sys::read_small_file(&cpath, &mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if json_int(&text, "pid") == Some(pid as u64) && json_int(&text, "starttime") == Some(start) {
                BASE.absorb(&text);
            }
        }
    }
    let total = Stats::new();
    total.absorb(&BASE.to_json(pid, start, program));
    total.absorb(&stats.to_json(pid, start, program));
    let doc = total.to_json(pid, start, program);
    let mut tmp = path.clone();
    tmp.extend_from_slice(format!(".tmp{}", sys::gettid()).as_bytes());
    let ctmp = std::ffi::CString::new(tmp).map_err(|_| libc::EINVAL)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
    let fd = sys::openat(libc::AT_FDCWD, &ctmp, flags, 0o644)?;
    let w = sys::write_all(fd, doc.as_bytes());
    let _ = sys::close(fd);
    w?;
    sys::rename(&ctmp, &cpath)
}

/// A fork child is a new process: nothing of its parent's file is its own.
pub fn reset_after_fork() {
    BASE.reset();
    BASE_LOADED.store(true, Ordering::Relaxed);
}

/// Field 22 of /proc/self/stat: the process start time in clock ticks since boot.
pub fn process_starttime() -> u64 {
    let mut buf = [0u8; 1024];
    let Ok(n) = crate::sys::read_small_file(c"/proc/self/stat", &mut buf) else { return 0 };
    let text = String::from_utf8_lossy(&buf[..n]);
    // The command name (field 2) may contain spaces; fields after it start at the last ')'.
    let Some(rest) = text.rfind(')').map(|i| &text[i + 1..]) else { return 0 };
    rest.split_whitespace().nth(19).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn hostname() -> Vec<u8> {
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
             \"read_ahead_copied_bytes\":0,\"fallbacks\":{{\
             \"fs_no_odirect\":0,\"file_no_odirect\":0,\"below_min_size\":0,\"no_companion\":0,\
             \"fdopen_stream\":0,\"inherited_by_child\":0,\"einval_retry\":0,\"stale_fd\":1}}}}\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(j, want);
    }

    #[test]
    fn starttime_is_read() {
        assert!(process_starttime() > 0);
    }
}
