//! The per-file record: what happened to each matched file in a process (direct, left
//! buffered and why, cached by I/O the library did not see, mapped bounded or direct), as
//! lines of the process's files log in the statistics directory, which `s3dlio-direct run`
//! and `stats` merge over every process of a job into a verdict per file.
//!
//! A line is written when the process is done with the file, never on a read or write: at
//! the last close of a direct file (and for those still open at exit and before exec), at
//! an open left buffered, and at the first mapping of a file in the process. The bytes of a
//! direct file are counted in its [`Tally`], shared by its descriptions. A process killed
//! by a signal loses the lines of the files it still had open (its counters keep their
//! bytes). The log of one process image is bounded by [`LOG_LIMIT`]; past it one
//! `truncated` line says so.

use crate::stats::{json_escape, Fallback};
use crate::sys;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of lines one process image writes at most (about 200,000 files); then one
/// `truncated` line and nothing more.
pub const LOG_LIMIT: u64 = 48 << 20;
/// First key of every line of a files log.
pub const FILES_KEY: &str = "s3dlio_file";

/// The bytes a process moved to and from one direct file, through any of its descriptions.
#[derive(Default)]
pub struct Tally {
    /// Bytes read calls returned.
    pub read: AtomicU64,
    /// Of those, bytes that went through the library's bounce buffers or the page cache.
    pub read_bounced: AtomicU64,
    /// Bytes write calls wrote.
    pub written: AtomicU64,
    /// Of those, bytes that went through the page cache.
    pub written_bounced: AtomicU64,
}

impl Tally {
    /// One read or write call moved `n` bytes, `bounced` of them not direct.
    #[inline]
    pub fn count(&self, write: bool, n: u64, bounced: u64) {
        let (all, b) = if write { (&self.written, &self.written_bounced) } else { (&self.read, &self.read_bounced) };
        if n > 0 {
            all.fetch_add(n, Ordering::Relaxed);
        }
        if bounced > 0 {
            b.fetch_add(bounced, Ordering::Relaxed);
        }
    }

    /// Zero again (a fork child counts its own bytes).
    pub fn reset(&self) {
        for a in [&self.read, &self.read_bounced, &self.written, &self.written_bounced] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// Why a line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The last close of a direct file in the process.
    Close,
    /// A direct file still open when the process exits.
    Exit,
    /// A direct file still open when the process execs.
    Exec,
    /// An open of a matched file left buffered.
    Fallback(Fallback),
    /// The first mapping of a matched file in the process, served bounded by the page cache.
    Mapped,
    /// The first mapping of a matched file in the process served direct (`S3DLIO_DIRECT_MAP`).
    MappedDirect,
}

impl Event {
    fn key(self) -> &'static str {
        match self {
            Event::Close => "close",
            Event::Exit => "exit",
            Event::Exec => "exec",
            Event::Fallback(_) => "fallback",
            Event::Mapped => "mapped",
            Event::MappedDirect => "mapped_direct",
        }
    }
}

/// One file's line: `{"s3dlio_file":1,"event":..,"path":..,"dev":..,"ino":..}` and for a
/// direct file its bytes (`read`, `read_bounced`, `written`, `written_bounced`) and
/// `cached_unseen`, for a fallback its `reason` (a key of the statistics file's `fallbacks`).
pub fn line(ev: Event, path: &[u8], ident: (u64, u64), tally: Option<&Tally>, cached_unseen: u64) -> String {
    let mut s = String::with_capacity(160 + path.len());
    let _ = write!(
        s,
        "{{\"{FILES_KEY}\":1,\"event\":\"{}\",\"path\":\"{}\",\"dev\":{},\"ino\":{}",
        ev.key(),
        json_escape(&String::from_utf8_lossy(path)),
        ident.0,
        ident.1
    );
    if let Event::Fallback(r) = ev {
        let _ = write!(s, ",\"reason\":\"{}\"", r.key());
    }
    if let Some(t) = tally {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = write!(
            s,
            ",\"read\":{},\"read_bounced\":{},\"written\":{},\"written_bounced\":{},\"cached_unseen\":{cached_unseen}",
            l(&t.read),
            l(&t.read_bounced),
            l(&t.written),
            l(&t.written_bounced)
        );
    }
    s.push_str("}\n");
    s
}

/// Bytes this process image has put in its files log.
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Appends `line` to the process's files log, within [`LOG_LIMIT`].
pub fn append(line: &str) {
    let n = line.len() as u64;
    let before = WRITTEN.fetch_add(n, Ordering::Relaxed);
    if before + n <= LOG_LIMIT {
        crate::statsdir::append_files(line.as_bytes());
    } else if before <= LOG_LIMIT {
        crate::statsdir::append_files(format!("{{\"{FILES_KEY}\":1,\"event\":\"truncated\"}}\n").as_bytes());
    }
}

/// A fork child starts a files log of its own.
pub fn reset_after_fork() {
    WRITTEN.store(0, Ordering::Relaxed);
}

/// The line of the file behind `fd` (its path and identity as the kernel gives them).
pub fn record_fd(ev: Event, fd: i32) {
    if !crate::statsdir::keeps_files() {
        return;
    }
    let Ok(st) = sys::fstat(fd) else { return };
    let mut p = [0u8; 4096];
    let Ok(n) = sys::fd_path(fd, &mut p) else { return };
    append(&line(ev, &p[..n], (st.st_dev, st.st_ino), None, 0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let t = Tally::default();
        t.count(false, 8192, 0);
        t.count(false, 100, 100);
        t.count(true, 5, 5);
        let l = line(Event::Close, b"/d/a \"b\"", (7, 9), Some(&t), 4096);
        assert_eq!(
            l,
            "{\"s3dlio_file\":1,\"event\":\"close\",\"path\":\"/d/a \\\"b\\\"\",\"dev\":7,\"ino\":9,\"read\":8292,\
             \"read_bounced\":100,\"written\":5,\"written_bounced\":5,\"cached_unseen\":4096}\n"
        );
        let f = line(Event::Fallback(Fallback::FsNoDirect), b"/r/x", (1, 2), None, 0);
        assert!(
            f.contains("\"event\":\"fallback\"") && f.contains("\"reason\":\"fs_no_odirect\"") && !f.contains("read")
        );
        t.reset();
        assert_eq!(t.read.load(Ordering::Relaxed) + t.written_bounced.load(Ordering::Relaxed), 0);
    }
}
