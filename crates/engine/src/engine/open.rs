//! Open policy: which opens of which files become direct, and why the others fall back.

use super::desc::insert;
use super::{active, state, FDS, NO_DIRECT_DEVS, STATS};
use crate::align::{self, Alignment};
use crate::companion;
use crate::config::{Config, LogLevel};
use crate::log::{self, Cause};
use crate::pathmatch;
use crate::stats::{Counter, Fallback};
use crate::sys;
use std::sync::atomic::Ordering;

/// What the shim must change in a matched open before calling the real one.
#[derive(Debug, Clone, Copy)]
pub struct OpenPlan {
    /// Flags to add at open (O_SYNC with S3DLIO_DIRECT_SYNC).
    pub extra_flags: i32,
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
    let extra_flags = if cfg.sync { libc::O_SYNC } else { 0 };
    Ok(OpenPlan { extra_flags, program_flags: flags })
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
    let added_sync = plan.extra_flags & !plan.program_flags;
    match place(&state().cfg, st.st_mode & libc::S_IFMT, st.st_size, accmode, dev_refuses_direct(st.st_dev)) {
        Placement::NotAFile => {}
        Placement::Fallback(why) => {
            STATS.add(Counter::OpensMatched, 1);
            fallback(fd, why, added_sync, &st);
        }
        Placement::Direct => {
            STATS.add(Counter::OpensMatched, 1);
            enable_direct(fd, &st, accmode, plan.program_flags & libc::O_APPEND != 0, added_sync);
        }
    }
}

fn fallback(fd: i32, why: Fallback, added_sync: i32, st: &libc::stat) {
    STATS.add(Counter::OpensFallback, 1);
    STATS.fallback(why);
    if added_sync != 0 {
        // Tracked only so that F_GETFL hides the O_SYNC the shim added.
        insert(fd, st, Alignment::page(), libc::O_RDWR, false, false, added_sync, -1);
    }
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

/// Adds O_DIRECT to `fd` with F_SETFL (never at open: with O_CREAT|O_EXCL on a filesystem
/// without O_DIRECT the open would create the file and then fail) and tracks it.
fn enable_direct(fd: i32, st: &libc::stat, accmode: i32, append: bool, added_sync: i32) {
    let (align, warn) = align::discover(fd).with_minimum(state().cfg.align);
    if let Some(w) = warn {
        log::once(LogLevel::Warn, Cause::AlignTooSmall, format_args!("{w}"));
    }
    if align.supported == Some(false) {
        log::once(
            LogLevel::Info,
            Cause::FileNoDirect,
            format_args!("a matched file cannot do O_DIRECT (statx); it stays buffered"),
        );
        fallback(fd, Fallback::FileNoDirect, added_sync, st);
        return;
    }
    let ident = (st.st_dev, st.st_ino);
    // On fd 0-2 the program's description stays buffered and a twin does the direct I/O.
    let direct = if fd <= 2 {
        companion::reopen(fd, accmode, append, libc::O_DIRECT, ident)
    } else {
        sys::set_o_direct(fd, true).map(|_| -1)
    };
    let twin = match direct {
        Ok(t) => t,
        Err(e) if fd <= 2 && e != libc::EINVAL => {
            log::once(
                LogLevel::Warn,
                Cause::NoCompanion,
                format_args!("cannot reopen a matched file on fd {fd} through /proc (errno {e}); it stays buffered"),
            );
            fallback(fd, Fallback::NoCompanion, added_sync, st);
            return;
        }
        Err(e) => {
            if e == libc::EINVAL {
                remember_no_direct(st.st_dev);
            }
            log::once(
                LogLevel::Warn,
                Cause::FsNoDirect,
                format_args!("the filesystem of a matched file refuses O_DIRECT (errno {e}); such files stay buffered"),
            );
            fallback(fd, Fallback::FsNoDirect, added_sync, st);
            return;
        }
    };
    let added = if twin >= 0 { added_sync } else { libc::O_DIRECT | added_sync };
    insert(fd, st, align, accmode, append, true, added, twin);
    STATS.add(Counter::OpensDirect, 1);
    log::once(
        LogLevel::Debug,
        Cause::OpenedDirect,
        format_args!("fd {fd} is direct (align mem {} offset {})", align.mem, align.offset),
    );
}

/// Takes over matched regular files inherited at start that already have O_DIRECT (fd 3
/// and up), so the program's misaligned calls on them work. O_DIRECT is never turned on
/// for an inherited description: other live processes may share it without managing it
/// (a shell pipeline's other members), and their misaligned I/O would start to fail.
pub(super) fn adopt_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect();
    let mut adopted = 0;
    for fd in fds {
        let Ok(fl) = sys::fcntl(fd, libc::F_GETFL, 0) else { continue };
        if fl & libc::O_DIRECT == 0 {
            continue;
        }
        let mut p = [0u8; 4096];
        let Ok(n) = sys::fd_path(fd, &mut p) else { continue };
        if !state().cfg.wants(&p[..n]) {
            continue;
        }
        let Ok(st) = sys::fstat(fd) else { continue };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        let (align, _) = align::discover(fd).with_minimum(state().cfg.align);
        insert(fd, &st, align, fl & libc::O_ACCMODE, fl & libc::O_APPEND != 0, true, 0, -1);
        adopted += 1;
    }
    if adopted > 0 {
        log::once(LogLevel::Info, Cause::Adopted, format_args!("managing {adopted} inherited direct descriptor(s)"));
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
    fn sync_adds_o_sync_to_matched_opens_only() {
        let c = cfg(&[("S3DLIO_DIRECT_PATHS", "/data"), ("S3DLIO_DIRECT_SYNC", "1")]);
        let p = decide_open(&c, b"/data/f", libc::O_WRONLY).unwrap();
        assert_eq!(p.extra_flags, libc::O_SYNC);
        assert_eq!(p.program_flags, libc::O_WRONLY);
        let plain = cfg(&[("S3DLIO_DIRECT_PATHS", "/data")]);
        assert_eq!(decide_open(&plain, b"/data/f", libc::O_WRONLY).unwrap().extra_flags, 0);
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
