//! Logging: at most one line per distinct cause per process, to stderr or to
//! `S3DLIO_DIRECT_LOG_FILE` (opened, appended and closed for every line, so a line can never
//! land in a descriptor the program reused, even after `closefrom(3)`). The log file is
//! opened as the statistics directory's files are ([`crate::safefile`]): never
//! through a symbolic link, only a regular file of this user (or a terminal); otherwise the
//! line goes to stderr, saying why.

use crate::config::LogLevel;
use crate::sys;
use std::ffi::CString;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Warn as u8);
static FILE: OnceLock<Option<CString>> = OnceLock::new();
/// One bit per cause already reported (causes are small integers, see [`Cause`]).
static SEEN: AtomicU64 = AtomicU64::new(0);

/// Distinct reasons for a log line; each is reported once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cause {
    /// The filesystem refused O_DIRECT.
    FsNoDirect = 0,
    /// The kernel says this file cannot do O_DIRECT.
    FileNoDirect,
    /// A direct call was refused with EINVAL and redone buffered.
    EinvalRetry,
    /// The private O_DIRECT twin could not be opened.
    NoTwin,
    /// A stream was opened on a managed fd (`fdopen`).
    FdopenStream,
    /// Managed descriptors were handed to a child process.
    /// Writing the statistics file failed.
    StatsWrite,
    /// A bounce buffer could not be allocated.
    NoMemory,
    /// S3DLIO_DIRECT_ALIGN below the kernel's requirement.
    AlignTooSmall,
    /// Informational: the shim is active.
    Active,
    /// Debug: a file was opened direct.
    OpenedDirect,
    /// An fd number the engine tracked was found reused by another file.
    StaleFd,
    /// Descriptors inherited at start were adopted.
    Adopted,
    /// A direct file was memory-mapped (the mapping uses the page cache).
    Mapped,
    /// A stream on a matched file stays buffered (freopen, a wide-character stream).
    StreamBuffered,
    /// A file of the statistics directory (index, counters file) could not be used.
    StatsFiles,
    /// The log file could not be used.
    LogFile,
}

/// Sets the level and destination (called once at start-up).
pub fn init(level: LogLevel, file: Option<&std::ffi::OsStr>) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    let f = file.and_then(|f| CString::new(std::os::unix::ffi::OsStrExt::as_bytes(f)).ok());
    let _ = FILE.set(f);
}

/// True if messages at `level` are printed.
pub fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Logs `msg` at `level` unless `cause` was already reported by this process.
pub fn once(level: LogLevel, cause: Cause, msg: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let bit = 1u64 << (cause as u8 % 64);
    if SEEN.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
        return;
    }
    emit(level, msg);
}

/// Logs `msg` at `level` every time (start-up messages such as configuration warnings,
/// each of which the caller emits once).
pub fn always(level: LogLevel, msg: std::fmt::Arguments<'_>) {
    if enabled(level) {
        emit(level, msg);
    }
}

/// Forgets which causes were reported (a fork child is a new process).
pub fn reset_after_fork() {
    SEEN.store(0, Ordering::Relaxed);
}

fn emit(level: LogLevel, msg: std::fmt::Arguments<'_>) {
    let mut line = String::with_capacity(160);
    let _ = write!(line, "s3dlio-direct[{}]: {}: ", sys::getpid(), level.as_str());
    let _ = line.write_fmt(msg);
    line.push('\n');
    match FILE.get().and_then(|f| f.as_ref()) {
        Some(path) => match crate::safefile::open_append(path) {
            Ok(fd) => {
                let _ = sys::write_all(fd, line.as_bytes());
                let _ = sys::close(fd);
            }
            Err(e) => {
                let bit = 1u64 << (Cause::LogFile as u8 % 64);
                if SEEN.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
                    let note = format!(
                        "s3dlio-direct[{}]: warn: cannot append to the log file {}: {e}; logging to stderr\n",
                        sys::getpid(),
                        String::from_utf8_lossy(path.to_bytes())
                    );
                    let _ = sys::write_all(2, note.as_bytes());
                }
                let _ = sys::write_all(2, line.as_bytes());
            }
        },
        None => {
            let _ = sys::write_all(2, line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_cause_to_a_file() {
        let p = std::env::temp_dir().join(format!("s3dlio-log-{}", std::process::id()));
        init(LogLevel::Info, Some(p.as_os_str()));
        once(LogLevel::Warn, Cause::StaleFd, format_args!("first {}", 1));
        once(LogLevel::Warn, Cause::StaleFd, format_args!("second"));
        once(LogLevel::Debug, Cause::OpenedDirect, format_args!("too verbose"));
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("warn: first 1"), "{text}");
        std::fs::remove_file(&p).unwrap();
    }
}
