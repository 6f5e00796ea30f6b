//! Per-process statistics: counters kept in atomics, written as one JSON object to
//! `S3DLIO_DIRECT_STATS` at exit, at `_exit` and before exec (temporary file and rename).
//!
//! `%p` in the path becomes the pid and `%h` the host name; without `%p`, `.%p` is appended
//! so processes never overwrite each other. An exec'd image keeps its pid, so it folds in
//! the file its predecessor wrote (same pid and process start time) instead of replacing it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Documented fallback reasons, in the order they appear in the file.
pub const FALLBACK_REASONS: &[&str] = &[
    "fs_no_odirect",
    "file_no_odirect",
    "below_min_size",
    "no_companion",
    "fdopen_stream",
    "inherited_by_child",
    "einval_retry",
    "stale_fd",
];

/// Index into [`FALLBACK_REASONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Reason {
    /// The filesystem refused O_DIRECT (F_SETFL gave EINVAL).
    FsNoDirect = 0,
    /// statx said the file cannot do O_DIRECT.
    FileNoDirect,
    /// Read-only open of a file below S3DLIO_DIRECT_MIN_SIZE.
    BelowMinSize,
    /// The buffered companion could not be opened; the description went buffered.
    NoCompanion,
    /// A stdio stream was opened on the descriptor; it went buffered.
    FdopenStream,
    /// The descriptor was handed to a child process; it went buffered.
    InheritedByChild,
    /// A direct call was refused with EINVAL and redone buffered.
    EinvalRetry,
    /// A tracked fd number turned out to be reused by another file.
    StaleFd,
}

/// Names of the integer counters, in file order.
pub const COUNTERS: &[&str] = &[
    "opens_matched",
    "opens_direct",
    "opens_fallback",
    "read_calls",
    "read_bytes",
    "read_bounced_calls",
    "read_bounced_bytes",
    "write_calls",
    "write_bytes",
    "write_bounced_calls",
    "write_bounced_bytes",
    "einval_retries",
    "streams_direct",
    "mmap_calls",
    "advice_swallowed",
    "read_ahead_bytes",
];

/// Index into [`COUNTERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
#[allow(missing_docs)]
pub enum Counter {
    OpensMatched = 0,
    OpensDirect,
    OpensFallback,
    ReadCalls,
    ReadBytes,
    ReadBouncedCalls,
    ReadBouncedBytes,
    WriteCalls,
    WriteBytes,
    WriteBouncedCalls,
    WriteBouncedBytes,
    EinvalRetries,
    /// stdio streams whose reads and writes the engine serves.
    StreamsDirect,
    /// mmap of a direct file: served by the page cache, not direct.
    MmapCalls,
    /// posix_fadvise(WILLNEED) and readahead calls not passed on.
    AdviceSwallowed,
    /// Bytes read from the device into read-ahead windows.
    ReadaheadBytes,
}

/// The process's counters.
pub struct Stats {
    counters: [AtomicU64; COUNTERS.len()],
    fallbacks: [AtomicU64; FALLBACK_REASONS.len()],
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
            counters: [const { AtomicU64::new(0) }; COUNTERS.len()],
            fallbacks: [const { AtomicU64::new(0) }; FALLBACK_REASONS.len()],
        }
    }

    /// Adds `n` to a counter.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        self.counters[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one fallback for `r`.
    pub fn fallback(&self, r: Reason) {
        self.fallbacks[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Current value of a counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Ordering::Relaxed)
    }

    /// Current count of a fallback reason.
    pub fn fallbacks(&self, r: Reason) -> u64 {
        self.fallbacks[r as usize].load(Ordering::Relaxed)
    }

    /// Zeroes everything (a fork child starts from zero).
    pub fn reset(&self) {
        self.counters.iter().chain(self.fallbacks.iter()).for_each(|a| a.store(0, Ordering::Relaxed));
    }

    /// Adds the integers of a file this process image's predecessor wrote.
    fn absorb(&self, text: &str) {
        for (i, name) in COUNTERS.iter().enumerate() {
            self.counters[i].fetch_add(json_int(text, name).unwrap_or(0), Ordering::Relaxed);
        }
        for (i, name) in FALLBACK_REASONS.iter().enumerate() {
            self.fallbacks[i].fetch_add(json_int(text, name).unwrap_or(0), Ordering::Relaxed);
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
        for (i, name) in COUNTERS.iter().enumerate() {
            let _ = write!(s, ",\"{name}\":{}", self.counters[i].load(Ordering::Relaxed));
        }
        s.push_str(",\"fallbacks\":{");
        for (i, name) in FALLBACK_REASONS.iter().enumerate() {
            let _ =
                write!(s, "{}\"{name}\":{}", if i > 0 { "," } else { "" }, self.fallbacks[i].load(Ordering::Relaxed));
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
        s.fallback(Reason::FsNoDirect);
        let j = s.to_json(5, 99, "prog \"x\"");
        for k in COUNTERS.iter().chain(FALLBACK_REASONS) {
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

    #[test]
    fn starttime_is_read() {
        assert!(process_starttime() > 0);
    }
}
