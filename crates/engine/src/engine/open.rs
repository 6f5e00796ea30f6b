//! Open policy: which opens of which files become direct, and why the others fall back.

use super::desc::insert;
use super::{active, state, FDS, NO_DIRECT_DEVS, STATS};
use crate::align;
use crate::config::{Config, LogLevel};
use crate::filelog::{self, Event};
use crate::log::{self, Cause};
use crate::pathmatch;
use crate::stats::{Counter, Fallback};
use crate::sys;
use crate::{libfd, locks, twin};
use std::sync::atomic::Ordering;

/// A matched open: the program's own open runs unchanged, then [`opened`] takes over.
#[derive(Debug, Clone, Copy)]
pub struct OpenPlan {
    /// Flags the twin gets beyond the program's own (O_SYNC with S3DLIO_DIRECT_SYNC); the
    /// program's description never gets them.
    pub(super) twin_flags: i32,
    pub(super) program_flags: i32,
}

/// Why an open is left to the kernel as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOurs {
    /// O_PATH: the descriptor does no I/O.
    PathOnly,
    /// The program asked for O_DIRECT itself: its descriptor is its own business.
    ProgramDirect,
    /// O_DIRECTORY (without O_TMPFILE): no file data.
    Directory,
    /// The path is not one of S3DLIO_DIRECT_PATHS, or is excluded.
    Unmatched,
}

/// The part of the open decision the flags alone settle (checked before the path is looked at).
pub fn decide_flags(flags: i32) -> Result<(), NotOurs> {
    if flags & libc::O_PATH != 0 {
        return Err(NotOurs::PathOnly);
    }
    if flags & libc::O_DIRECT != 0 {
        return Err(NotOurs::ProgramDirect);
    }
    if flags & libc::O_TMPFILE != libc::O_TMPFILE && flags & libc::O_DIRECTORY != 0 {
        return Err(NotOurs::Directory);
    }
    Ok(())
}

/// The open decision for the normalised absolute `path` opened with `flags`.
pub fn decide_open(cfg: &Config, path: &[u8], flags: i32) -> Result<OpenPlan, NotOurs> {
    decide_flags(flags)?;
    if !cfg.wants(path) {
        return Err(NotOurs::Unmatched);
    }
    let twin_flags = if cfg.sync { libc::O_SYNC } else { 0 };
    Ok(OpenPlan { twin_flags, program_flags: flags })
}

/// What becomes of a matched path once it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Not a regular file or block device (a FIFO, a directory opened without O_DIRECTORY):
    /// left alone and not counted.
    NotAFile,
    /// Counted as matched, but stays buffered for this reason.
    Fallback(Fallback),
    /// Counted as matched, and made direct (unless the kernel then refuses).
    Direct,
}

/// Places a matched open: its file type (`st_mode & S_IFMT`), size, access mode, and
/// whether its filesystem already refused O_DIRECT in this process.
pub fn place(cfg: &Config, fmt: u32, size: i64, accmode: i32, dev_refuses: bool) -> Placement {
    if fmt != libc::S_IFREG && fmt != libc::S_IFBLK {
        return Placement::NotAFile;
    }
    let min = cfg.min_size;
    if fmt == libc::S_IFREG && accmode == libc::O_RDONLY && min > 0 && (size.max(0) as u64) < min {
        return Placement::Fallback(Fallback::BelowMinSize);
    }
    if dev_refuses {
        return Placement::Fallback(Fallback::FsNoDirect);
    }
    Placement::Direct
}

/// Decides whether an open of `path` (relative to `dirfd`) with `flags` is the engine's.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string.
pub unsafe fn plan_open(dirfd: i32, path: *const libc::c_char, flags: i32) -> Option<OpenPlan> {
    if !active() || path.is_null() || decide_flags(flags).is_err() {
        return None;
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes();
    let mut norm = [0u8; 4352];
    let n = if path.first() == Some(&b'/') {
        pathmatch::normalize_into(b"/", path, &mut norm)?
    } else {
        let mut base = [0u8; 4096];
        let bl =
            if dirfd == libc::AT_FDCWD { sys::getcwd(&mut base).ok()? } else { sys::fd_path(dirfd, &mut base).ok()? };
        pathmatch::normalize_into(&base[..bl], path, &mut norm)?
    };
    decide_open(&state().cfg, &norm[..n], flags).ok()
}

/// `plan_open` for a reopen of the file behind `fd` (freopen with no path): the path the
/// kernel reports for it.
pub fn plan_reopen(fd: i32, flags: i32) -> Option<OpenPlan> {
    let mut p = [0u8; 4097];
    let n = sys::fd_path(fd, &mut p[..4096]).ok()?;
    p[n] = 0;
    // SAFETY: `p` is NUL-terminated at `n`.
    unsafe { plan_open(libc::AT_FDCWD, p.as_ptr() as *const libc::c_char, flags) }
}

/// After the real open of a planned path returned `fd`.
pub fn opened(fd: i32, plan: OpenPlan) {
    if fd < 0 {
        return;
    }
    FDS.remove(fd); // a number we missed the close of is not ours any more
    let Ok(st) = sys::fstat(fd) else { return };
    let accmode = plan.program_flags & libc::O_ACCMODE;
    match place(&state().cfg, st.st_mode & libc::S_IFMT, st.st_size, accmode, dev_refuses_direct(st.st_dev)) {
        Placement::NotAFile => {}
        Placement::Fallback(why) => {
            STATS.add(Counter::OpensMatched, 1);
            fallback(fd, why);
        }
        Placement::Direct => {
            STATS.add(Counter::OpensMatched, 1);
            enable_direct(fd, &st, accmode, plan.program_flags & libc::O_APPEND != 0, plan.twin_flags);
        }
    }
}

/// The program's `fd` of a matched file stays buffered: counted, and the file's line.
fn fallback(fd: i32, why: Fallback) {
    STATS.add(Counter::OpensFallback, 1);
    STATS.fallback(why);
    filelog::record_fd(Event::Fallback(why), fd);
}

fn dev_refuses_direct(dev: u64) -> bool {
    dev != 0 && NO_DIRECT_DEVS.iter().any(|d| d.load(Ordering::Relaxed) == dev)
}

fn remember_no_direct(dev: u64) {
    for d in &NO_DIRECT_DEVS {
        if d.compare_exchange(0, dev, Ordering::Relaxed, Ordering::Relaxed).is_ok() || d.load(Ordering::Relaxed) == dev
        {
            return;
        }
    }
}

/// Opens the twin that serves the program's `fd` (see [`twin::open`]) and tracks it.
fn enable_direct(fd: i32, st: &libc::stat, accmode: i32, append: bool, twin_flags: i32) {
    let (align, warn) = align::discover(fd).with_minimum(state().cfg.align);
    if let Some(w) = warn {
        log::once(LogLevel::Info, Cause::AlignTooSmall, format_args!("{w}"));
    }
    if align.supported == Some(false) {
        log::once(
            LogLevel::Info,
            Cause::FileNoDirect,
            format_args!("a matched file cannot do O_DIRECT (statx); it stays buffered"),
        );
        fallback(fd, Fallback::FileNoDirect);
        return;
    }
    let ident = (st.st_dev, st.st_ino);
    // Not for a file the process takes record locks on (see `crate::locks`); the guard lives
    // until the twin is in the table, where a lock taken meanwhile finds it.
    let Some(_opening) = locks::open_own(ident) else {
        fallback(fd, Fallback::PosixLocks);
        return;
    };
    match twin::open(fd, accmode, append, twin_flags, ident) {
        Ok(t) => {
            insert(fd, st, align, accmode, append, t);
            STATS.add(Counter::OpensDirect, 1);
            log::once(
                LogLevel::Debug,
                Cause::OpenedDirect,
                format_args!("fd {fd} is direct (align mem {} offset {})", align.mem, align.offset),
            );
        }
        Err(libc::EINVAL) => {
            remember_no_direct(st.st_dev);
            log::once(
                LogLevel::Info,
                Cause::FsNoDirect,
                format_args!("the filesystem of a matched file refuses O_DIRECT; such files stay buffered"),
            );
            fallback(fd, Fallback::FsNoDirect);
        }
        Err(libc::EMFILE) | Err(libc::ENFILE) => fallback(fd, Fallback::NoDescriptor),
        Err(e) => {
            log::once(
                LogLevel::Info,
                Cause::NoTwin,
                format_args!("cannot reopen a matched file through /proc (errno {e}); it stays buffered"),
            );
            fallback(fd, Fallback::NoTwin);
        }
    }
}

/// Keeps the twins a predecessor image left open across exec (it held record locks on their
/// files, which closing them would have dropped) as the library's own: the program never
/// got those numbers, so it must not be able to close them.
pub(super) fn adopt_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let Ok(lim) = sys::nofile_limit() else { return };
    let floor = lim.rlim_cur.saturating_sub(libfd::zone(lim.rlim_cur));
    let fds: Vec<i32> =
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd: &i32| fd as u64 >= floor).collect();
    for fd in fds {
        let Ok(fl) = sys::fcntl(fd, libc::F_GETFL, 0) else { continue };
        let mut p = [0u8; 4096];
        if fl & libc::O_DIRECT != 0 && sys::fd_path(fd, &mut p).is_ok_and(|n| state().cfg.wants(&p[..n])) {
            libfd::adopt(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Config {
        let (c, warnings) = Config::from_vars(vars.iter().copied());
        assert!(warnings.is_empty(), "{warnings:?}");
        c
    }

    #[test]
    fn flags_that_leave_an_open_alone() {
        assert_eq!(decide_flags(libc::O_RDONLY | libc::O_PATH), Err(NotOurs::PathOnly));
        assert_eq!(decide_flags(libc::O_RDWR | libc::O_DIRECT), Err(NotOurs::ProgramDirect));
        assert_eq!(decide_flags(libc::O_RDONLY | libc::O_DIRECTORY), Err(NotOurs::Directory));
        // O_TMPFILE includes the O_DIRECTORY bit but makes an unnamed regular file
        assert_eq!(decide_flags(libc::O_RDWR | libc::O_TMPFILE), Ok(()));
        assert_eq!(decide_flags(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND), Ok(()));
    }

    #[test]
    fn paths_are_matched_by_paths_and_exclude() {
        let c = cfg(&[("S3DLIO_DIRECT_PATHS", "/data:/scratch/**/*.npy"), ("S3DLIO_DIRECT_EXCLUDE", "/data/logs")]);
        let yes = |p: &str| decide_open(&c, p.as_bytes(), libc::O_RDONLY).is_ok();
        assert!(yes("/data/x.bin") && yes("/data/a/b/c"));
        assert!(!yes("/database/x"), "a prefix is whole components");
        assert!(!yes("/data/logs/today"), "EXCLUDE wins");
        assert!(yes("/scratch/a/b/y.npy") && !yes("/scratch/a/y.npz"));
        assert_eq!(decide_open(&c, b"/elsewhere", libc::O_RDONLY).unwrap_err(), NotOurs::Unmatched);
        assert_eq!(decide_open(&c, b"/data/x", libc::O_RDONLY | libc::O_DIRECT).unwrap_err(), NotOurs::ProgramDirect);
    }

    #[test]
    fn sync_gives_the_twin_o_sync_and_leaves_the_program_flags_alone() {
        let c = cfg(&[("S3DLIO_DIRECT_PATHS", "/data"), ("S3DLIO_DIRECT_SYNC", "1")]);
        let p = decide_open(&c, b"/data/f", libc::O_WRONLY).unwrap();
        assert_eq!(p.twin_flags, libc::O_SYNC);
        assert_eq!(p.program_flags, libc::O_WRONLY);
        let plain = cfg(&[("S3DLIO_DIRECT_PATHS", "/data")]);
        assert_eq!(decide_open(&plain, b"/data/f", libc::O_WRONLY).unwrap().twin_flags, 0);
    }

    #[test]
    fn placement_of_matched_files() {
        let c = cfg(&[("S3DLIO_DIRECT_PATHS", "/data"), ("S3DLIO_DIRECT_MIN_SIZE", "1MiB")]);
        let reg = libc::S_IFREG;
        assert_eq!(place(&c, libc::S_IFIFO, 0, libc::O_RDONLY, false), Placement::NotAFile);
        assert_eq!(place(&c, libc::S_IFDIR, 0, libc::O_RDONLY, false), Placement::NotAFile);
        assert_eq!(place(&c, reg, 1000, libc::O_RDONLY, false), Placement::Fallback(Fallback::BelowMinSize));
        // the minimum is for read-only opens: a file about to be written may grow
        assert_eq!(place(&c, reg, 1000, libc::O_RDWR, false), Placement::Direct);
        assert_eq!(place(&c, reg, 1000, libc::O_WRONLY, false), Placement::Direct);
        assert_eq!(place(&c, reg, 1 << 20, libc::O_RDONLY, false), Placement::Direct);
        assert_eq!(place(&c, libc::S_IFBLK, 0, libc::O_RDONLY, false), Placement::Direct);
        assert_eq!(place(&c, reg, 1 << 30, libc::O_RDONLY, true), Placement::Fallback(Fallback::FsNoDirect));
        let no_min = cfg(&[("S3DLIO_DIRECT_PATHS", "/data")]);
        assert_eq!(place(&no_min, reg, 0, libc::O_RDONLY, false), Placement::Direct);
    }
}
