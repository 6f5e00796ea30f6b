//! `DirectFile`: one open file doing buffered-semantics I/O over O_DIRECT, for Rust callers
//! (the object store) on the same read and write paths the preload library uses.

use crate::align::{self, Alignment};
use crate::behind::Behind;
use crate::bufpool::BufPool;
use crate::io::{FileIo, Outcome};
use crate::writing::FileWrites;
use crate::{read_path, sys, twin, write_path};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Why a [`DirectFile`] is not doing direct I/O: the engine's one list of fallback reasons
/// (the statistics file counts the same ones, by their keys).
pub use crate::stats::Fallback;

/// Per-file I/O counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCounters {
    /// Calls that moved bytes by O_DIRECT straight from or into the caller's buffer.
    pub direct_calls: u64,
    /// Bytes moved that way.
    pub direct_bytes: u64,
    /// Calls that needed a bounce buffer or the page cache for part of their bytes.
    pub bounced_calls: u64,
    /// Bytes moved through a bounce buffer (still direct).
    pub bounced_bytes: u64,
    /// Bytes moved through the page cache (dropped afterwards).
    pub buffered_bytes: u64,
    /// Calls made while the file was not direct at all.
    pub fallback_calls: u64,
    /// Direct calls refused with EINVAL and redone buffered.
    pub einval_retries: u64,
}

#[derive(Default)]
struct Counters {
    direct_calls: AtomicU64,
    direct_bytes: AtomicU64,
    bounced_calls: AtomicU64,
    bounced_bytes: AtomicU64,
    buffered_bytes: AtomicU64,
    fallback_calls: AtomicU64,
    einval_retries: AtomicU64,
}

/// Bounce buffers shared by every [`DirectFile`] of the process (1 MiB chunks, 64 MiB idle).
pub fn shared_pool() -> &'static BufPool {
    static POOL: OnceLock<BufPool> = OnceLock::new();
    POOL.get_or_init(|| BufPool::new(1 << 20, 64 << 20))
}

/// An open file doing buffered-semantics I/O over O_DIRECT where the filesystem allows it.
pub struct DirectFile {
    fd: OwnedFd,
    align: Alignment,
    accmode: i32,
    fallback: std::sync::Mutex<Option<Fallback>>,
    ident: (u64, u64),
    /// A buffered descriptor of the same file for the unaligned pieces, opened when the
    /// first one comes (`None`: it could not be, and the file went buffered).
    plain: OnceLock<Option<OwnedFd>>,
    behind: Behind,
    writes: FileWrites,
    counters: Counters,
}

impl DirectFile {
    /// Opens `path` with libc `flags` and `mode`. With `direct`, O_DIRECT is added with
    /// `fcntl(F_SETFL)` after the open (never at open: `O_CREAT|O_EXCL|O_DIRECT` on a
    /// filesystem without O_DIRECT creates the file and then fails). `sync` adds O_SYNC at
    /// open, keeping O_DIRECT.
    pub fn open(path: &Path, flags: i32, mode: u32, direct: bool, sync: bool) -> io::Result<DirectFile> {
        let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        let flags = (flags & !libc::O_DIRECT) | libc::O_CLOEXEC | if sync { libc::O_SYNC } else { 0 };
        let fd = sys::openat(libc::AT_FDCWD, &cpath, flags, mode).map_err(io::Error::from_raw_os_error)?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::from_fd(fd, flags & libc::O_ACCMODE, direct)
    }

    fn from_fd(fd: OwnedFd, accmode: i32, direct: bool) -> io::Result<DirectFile> {
        let raw = fd.as_raw_fd();
        let st = sys::fstat(raw).map_err(io::Error::from_raw_os_error)?;
        let align = align::discover(raw);
        let ident = (st.st_dev, st.st_ino);
        let fallback = if !direct {
            Some(Fallback::NotRequested)
        } else if align.supported == Some(false) {
            Some(Fallback::FileNoDirect)
        } else {
            match sys::set_o_direct(raw, true) {
                Ok(_) => None,
                Err(libc::EINVAL) => Some(Fallback::FsNoDirect),
                Err(e) => return Err(io::Error::from_raw_os_error(e)),
            }
        };
        Ok(DirectFile {
            fd,
            align,
            accmode,
            ident,
            fallback: std::sync::Mutex::new(fallback),
            plain: OnceLock::new(),
            behind: Behind::new(),
            writes: FileWrites::of(ident),
            counters: Counters::default(),
        })
    }

    /// True if the kernel has O_DIRECT on this file's descriptor right now.
    pub fn is_direct(&self) -> bool {
        sys::fcntl(self.fd(), libc::F_GETFL, 0).is_ok_and(|fl| fl & libc::O_DIRECT != 0)
    }

    /// Why this file is not (or not entirely) doing direct I/O.
    pub fn fallback(&self) -> Option<Fallback> {
        *self.fallback.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_fallback(&self, f: Fallback) {
        let mut g = self.fallback.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(f);
        }
    }

    /// The file's O_DIRECT requirements.
    pub fn alignment(&self) -> Alignment {
        self.align
    }

    /// The raw descriptor.
    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The buffered descriptor for unaligned pieces, opened on first use; if it cannot be,
    /// the file goes buffered for good and its own descriptor serves.
    fn plain_fd(&self) -> i32 {
        let p = self.plain.get_or_init(|| {
            // SAFETY: just opened and owned by nobody else.
            twin::reopen(self.fd(), self.accmode, false, 0, self.ident).ok().map(|p| unsafe { OwnedFd::from_raw_fd(p) })
        });
        match p {
            Some(p) => p.as_raw_fd(),
            None => {
                let _ = sys::set_o_direct(self.fd(), false);
                self.set_fallback(Fallback::NoTwin);
                self.fd()
            }
        }
    }

    /// The read and write paths' view of the file; `pieces`: the call may need the buffered
    /// descriptor (unaligned pieces, a refused direct call redone buffered).
    fn io(&self, pieces: bool) -> FileIo<'_> {
        let prog = if pieces {
            self.plain_fd()
        } else {
            self.plain.get().and_then(|p| p.as_ref()).map_or(self.fd(), |p| p.as_raw_fd())
        };
        FileIo {
            fd: self.fd(),
            prog,
            align: self.align,
            behind: &self.behind,
            accmode: self.accmode,
            append: false,
            writes: self.writes,
            pool: shared_pool(),
            nowait: false,
            sync: false,
            tuning: Default::default(),
        }
    }

    fn record(&self, o: &Outcome) {
        let c = &self.counters;
        if o.direct_bytes > 0 {
            c.direct_calls.fetch_add(1, Ordering::Relaxed);
            c.direct_bytes.fetch_add(o.direct_bytes, Ordering::Relaxed);
        }
        if o.bounced_bytes > 0 || o.buffered_bytes > 0 {
            c.bounced_calls.fetch_add(1, Ordering::Relaxed);
            c.bounced_bytes.fetch_add(o.bounced_bytes, Ordering::Relaxed);
            c.buffered_bytes.fetch_add(o.buffered_bytes, Ordering::Relaxed);
        }
        if o.einval_retry {
            c.einval_retries.fetch_add(1, Ordering::Relaxed);
            self.set_fallback(Fallback::EinvalRetry);
        }
    }

    fn buffered_mode(&self) -> bool {
        matches!(
            self.fallback(),
            Some(Fallback::NotRequested | Fallback::FsNoDirect | Fallback::FileNoDirect | Fallback::NoTwin)
        )
    }

    /// Reads up to `buf.len()` bytes at `off` (short only at end of file), any alignment.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        if self.buffered_mode() {
            self.counters.fallback_calls.fetch_add(1, Ordering::Relaxed);
            // SAFETY: `buf` is a valid mutable slice.
            return unsafe { sys::pread(self.fd(), buf.as_mut_ptr(), buf.len(), off) }
                .map_err(io::Error::from_raw_os_error);
        }
        let mut o = Outcome::default();
        // SAFETY: `buf` is a valid mutable slice.
        let mut r = unsafe { read_path::pread(&self.io(false), buf.as_mut_ptr(), buf.len(), off, &mut o) };
        if r == Err(libc::EINVAL) {
            // Refused direct, and the buffered retry had no buffered descriptor yet.
            // SAFETY: as above.
            r = unsafe { read_path::pread(&self.io(true), buf.as_mut_ptr(), buf.len(), off, &mut o) };
        }
        self.record(&o);
        r.map_err(io::Error::from_raw_os_error)
    }

    /// Writes up to `buf.len()` bytes at `off`; the file ends exactly as a buffered write
    /// leaves it (no padding).
    pub fn write_at(&self, buf: &[u8], off: u64) -> io::Result<usize> {
        if self.buffered_mode() {
            self.counters.fallback_calls.fetch_add(1, Ordering::Relaxed);
            // SAFETY: `buf` is a valid slice.
            return unsafe { sys::pwrite(self.fd(), buf.as_ptr(), buf.len(), off) }
                .map_err(io::Error::from_raw_os_error);
        }
        let mut o = Outcome::default();
        let tuning = Default::default();
        let pieces = write_path::plan_write(&self.align, &tuning, buf.as_ptr() as usize, off, buf.len())
            != Some(write_path::WritePlan::Direct);
        // SAFETY: `buf` is a valid slice.
        let mut r = unsafe { write_path::pwrite(&self.io(pieces), buf.as_ptr(), buf.len(), off, &mut o) };
        if r == Err(libc::EINVAL) && !pieces {
            // SAFETY: as above.
            r = unsafe { write_path::pwrite(&self.io(true), buf.as_ptr(), buf.len(), off, &mut o) };
        }
        self.record(&o);
        r.map_err(io::Error::from_raw_os_error)
    }

    /// Reads exactly `buf.len()` bytes at `off`, or fails with `UnexpectedEof`.
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, off)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    off += n as u64;
                }
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `off`.
    pub fn write_all_at(&self, mut buf: &[u8], mut off: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, off)? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => {
                    buf = &buf[n..];
                    off += n as u64;
                }
            }
        }
        Ok(())
    }

    /// Truncates or extends the file to `len` bytes.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        sys::ftruncate(self.fd(), len).map_err(io::Error::from_raw_os_error)
    }

    /// Flushes data and metadata to the device, and drops what the buffered pieces cached.
    pub fn sync_all(&self) -> io::Result<()> {
        sys::fsync(self.fd()).map_err(io::Error::from_raw_os_error)?;
        self.behind.drop_cached(self.fd());
        Ok(())
    }

    /// Current size of the file.
    pub fn size(&self) -> io::Result<u64> {
        sys::fstat(self.fd()).map(|st| st.st_size as u64).map_err(io::Error::from_raw_os_error)
    }

    /// This file's counters.
    pub fn stats(&self) -> IoCounters {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IoCounters {
            direct_calls: l(&c.direct_calls),
            direct_bytes: l(&c.direct_bytes),
            bounced_calls: l(&c.bounced_calls),
            bounced_bytes: l(&c.bounced_bytes),
            buffered_bytes: l(&c.buffered_bytes),
            fallback_calls: l(&c.fallback_calls),
            einval_retries: l(&c.einval_retries),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        // /var/tmp is on a real disk here; /tmp may be tmpfs.
        let base =
            if Path::new("/var/tmp").is_dir() { Path::new("/var/tmp").to_path_buf() } else { std::env::temp_dir() };
        let d = base.join(format!("s3dlio-df-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed as u32).to_le_bytes()[1]).collect()
    }

    #[test]
    fn unaligned_writes_and_reads_match_a_plain_file() {
        let d = tmpdir("rw");
        let p = d.join("f");
        let f = DirectFile::open(&p, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o644, true, false).unwrap();
        let mut model = vec![0u8; 0];
        let ops: &[(u64, usize)] = &[(0, 1000), (3, 5000), (4095, 2), (8191, 70000), (1 << 20, 3), (100, 1 << 20)];
        for (i, &(off, len)) in ops.iter().enumerate() {
            let data = pattern(len, i as u8);
            f.write_all_at(&data, off).unwrap();
            let end = off as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&data);
        }
        assert_eq!(f.size().unwrap(), model.len() as u64);
        assert_eq!(std::fs::read(&p).unwrap(), model);
        for &(off, len) in
            &[(0u64, 10usize), (1, 4096), (4097, 65536), (model.len() as u64 - 5, 100), (model.len() as u64 + 10, 5)]
        {
            let mut buf = vec![0u8; len + 1];
            let n = f.read_at(&mut buf[1..], off).unwrap();
            let lo = (off as usize).min(model.len());
            let hi = (off as usize + len).min(model.len());
            assert_eq!(&buf[1..1 + n], &model[lo..hi], "read at {off} len {len}");
        }
        if f.is_direct() {
            let s = f.stats();
            assert!(s.bounced_calls > 0 && s.direct_calls + s.bounced_calls > 0);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn not_requested_is_a_reported_fallback() {
        let d = tmpdir("nr");
        let f = DirectFile::open(&d.join("g"), libc::O_RDWR | libc::O_CREAT, 0o644, false, false).unwrap();
        assert_eq!(f.fallback(), Some(Fallback::NotRequested));
        assert!(!f.is_direct());
        f.write_all_at(b"abc", 1).unwrap();
        assert_eq!(f.stats().fallback_calls, 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sync_keeps_o_direct() {
        let d = tmpdir("sync");
        let f = DirectFile::open(&d.join("s"), libc::O_RDWR | libc::O_CREAT, 0o644, true, true).unwrap();
        let fl = sys::fcntl(f.fd(), libc::F_GETFL, 0).unwrap();
        assert_eq!(fl & libc::O_SYNC, libc::O_SYNC);
        assert_eq!(fl & libc::O_DIRECT != 0, f.fallback().is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
