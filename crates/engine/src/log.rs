//! Logging, to stderr or to `S3DLIO_DIRECT_LOG_FILE` (opened, appended and closed for every
//! line, so a line can never land in a descriptor the program reused, even after
//! `closefrom(3)`). What the user must fix (a malformed variable, an unusable statistics or
//! log file) is printed at `warn`, once per session ([`crate::session`]); everything else
//! (ordinary fallbacks, counted in the statistics) at `info` or `debug`, at most once per
//! cause per process, so at the default level the program's stderr is its own. The log file is
//! opened as the statistics directory's files are ([`crate::safefile`]): never
//! through a symbolic link, only a regular file of this user (or a terminal); otherwise the
//! line goes to stderr, saying why.

use crate::config::LogLevel;
use crate::session::{self, Verdict};
use crate::sys;
use std::ffi::CString;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Warn as u8);
static FILE: OnceLock<Option<CString>> = OnceLock::new();
/// One bit per cause already reported (causes are small integers, see [`Cause`]).
static SEEN: AtomicU64 = AtomicU64::new(0);

/// Distinct reasons for a log line; each is reported once per process, and those the user
/// must fix once per session ([`Cause::per_session`]).
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
    /// Writing the statistics file failed.
    StatsWrite,
    /// S3DLIO_DIRECT_ALIGN below the kernel's requirement.
    AlignTooSmall,
    /// Informational: the shim is active.
    Active,
    /// Debug: a file was opened direct.
    OpenedDirect,
    /// An fd number the engine tracked was found reused by another file.
    StaleFd,
    /// A direct file was memory-mapped (the mapping uses the page cache).
    Mapped,
    /// A stream on a matched file stays buffered (freopen, a wide-character stream).
    StreamBuffered,
    /// A file of the statistics directory (index, counters file) could not be used.
    StatsFiles,
    /// The log file could not be used.
    LogFile,
    /// A malformed configuration variable (one line per distinct warning).
    Config,
    /// The library hit an internal error (a panic, caught before it reached the program).
    Panic,
}

impl Cause {
    /// True for what the user must fix or report: printed once per session, not per process.
    pub fn per_session(self) -> bool {
        matches!(self, Cause::StatsWrite | Cause::StatsFiles | Cause::LogFile | Cause::Config | Cause::Panic)
    }
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

/// Logs `msg` at `level` unless `cause` was already reported by this process (or, for a
/// cause the user must fix, by another process of the session).
pub fn once(level: LogLevel, cause: Cause, msg: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let bit = 1u64 << (cause as u8 % 64);
    if SEEN.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
        return;
    }
    if cause.per_session() {
        once_per_session(level, cause, 0, msg);
    } else {
        emit(level, msg, "");
    }
}

/// A warning about a malformed configuration variable (each of which the caller emits once):
/// printed once per session for each distinct text.
pub fn config_warning(text: &str) {
    if enabled(LogLevel::Warn) {
        once_per_session(LogLevel::Warn, Cause::Config, fnv1a(text.as_bytes()), format_args!("{text}"));
    }
}

/// Forgets which causes were reported (a fork child is a new process).
pub fn reset_after_fork() {
    SEEN.store(0, Ordering::Relaxed);
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Prints `msg` if no other process of the session printed line `(cause, key)`.
fn once_per_session(level: LogLevel, cause: Cause, key: u64, msg: std::fmt::Arguments<'_>) {
    if let Some(note) = session_prints(cause, key) {
        emit(level, msg, &note);
    }
}

/// Whether this process prints line `(cause, key)` of its session, and what to add to it.
/// Where the session cannot be marked, the top process of each program tree the library runs
/// in prints it, saying why: neither silence nor a line from every worker.
fn session_prints(cause: Cause, key: u64) -> Option<String> {
    match session::first(cause as u8, key) {
        Verdict::First => Some(String::new()),
        Verdict::Seen => None,
        Verdict::Unknown(why) => (!session::parent_runs_this_library()).then(|| {
            format!(" (printed by each process whose parent does not run the library: the session could not be marked: {why})")
        }),
    }
}

fn emit(level: LogLevel, msg: std::fmt::Arguments<'_>, note: &str) {
    let mut line = String::with_capacity(160);
    let _ = write!(line, "s3dlio-direct[{}]: {}: ", sys::getpid(), level.as_str());
    let _ = line.write_fmt(msg);
    line.push_str(note);
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
                    if let Some(why) = session_prints(Cause::LogFile, 0) {
                        let note = format!(
                            "s3dlio-direct[{}]: warn: cannot append to the log file {}: {e}; logging to stderr{why}\n",
                            sys::getpid(),
                            String::from_utf8_lossy(path.to_bytes())
                        );
                        let _ = sys::write_all(2, note.as_bytes());
                    }
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
