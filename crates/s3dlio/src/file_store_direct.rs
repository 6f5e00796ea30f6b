//! A file-system object store with configurable O_DIRECT I/O and graceful, reported fallback.
//!
//! [`ConfigurableFileSystemObjectStore`] serves `file:///abs/path` and `direct:///abs/path`
//! URIs (see [`crate::object_store`]) through [`DirectFile`], the same engine the preload
//! library uses. With [`FileSystemConfig::direct_io`] set (or a `direct://` URI) every file is
//! opened with O_DIRECT where the filesystem takes it:
//!
//! * whole-object reads and writes move [`IO_CHUNK`] (8 MiB) per system call between the disk
//!   and page-aligned buffers, never one call per page; the object returned by `get` is the
//!   aligned buffer the kernel wrote into (only a partial last block is copied in, from the
//!   engine's bounce buffer);
//! * `put` writes a temporary file in the object's directory and renames it over the object,
//!   so a reader never sees half an object; missing parent directories are created;
//! * the end of a file is written without padding, whatever the sizes involved;
//! * `sync_writes` adds O_SYNC *and keeps* O_DIRECT;
//! * where the filesystem refuses O_DIRECT (ramfs, many FUSE mounts) the store falls back to
//!   buffered I/O, and says so: per operation in an [`IoReport`] (the `*_with_report`
//!   methods), cumulatively in [`IoStats`] ([`ConfigurableFileSystemObjectStore::stats`] or
//!   [`ObjectStore::io_stats`]), and once per cause and process on stderr.
//!
//! Blocking file work runs on tokio's blocking pool, so the methods must be awaited inside a
//! tokio runtime. A `put` whose future is dropped before it completes leaves the object either
//! as it was or entirely replaced, never partly written.
//!
//! ```
//! use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
//! use s3dlio::object_store::ObjectStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), s3dlio::object_store::StoreError> {
//! let dir = std::env::temp_dir().join(format!("s3dlio-doc-mod-{}", std::process::id()));
//! let uri = format!("file://{}/shard-0.bin", dir.display());
//! let store = ConfigurableFileSystemObjectStore::new(FileSystemConfig::direct_io());
//! let report = store.put_with_report(&uri, &vec![1u8; 3 << 20]).await?;
//! // Either O_DIRECT was in effect, or the report says why not.
//! assert!(report.direct || report.fallback.is_some());
//! assert_eq!(store.get(&uri).await?.len(), 3 << 20);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```

use crate::store_api::{parse_uri, ObjectMetadata, ObjectStore, Operation, Result, Scheme, StoreError};
pub use crate::store_api::{IoReport, IoStats};
use async_trait::async_trait;
use bytes::Bytes;
use s3dlio_engine::align::{self, Alignment};
use s3dlio_engine::buffer::AlignedBuf;
use s3dlio_engine::direct_file::{DirectFile, Fallback};
use s3dlio_engine::probe;
use s3dlio_engine::sys;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// Bytes moved per system call by whole-object reads and writes (8 MiB).
pub const IO_CHUNK: usize = 8 << 20;

/// The smallest write the store issues for a part of an object, except for the object's last
/// bytes (1 MiB): a smaller `put_multipart` part size is raised to this.
pub const MIN_PART_IO: usize = 1 << 20;

/// File names starting with this are the store's temporary files (in-progress `put`s and
/// [`test_direct_io_support`] probes); `list` never returns them.
pub const TEMP_PREFIX: &str = ".s3dlio-tmp.";

/// The system page size as the store uses it: `sysconf(_SC_PAGESIZE)`, 4096 if that fails or
/// gives something that is not a power of two from 512 bytes to 64 KiB.
///
/// ```
/// let p = s3dlio::file_store_direct::get_system_page_size();
/// assert!(p.is_power_of_two() && (512..=65536).contains(&p));
/// ```
pub fn get_system_page_size() -> usize {
    align::page_size()
}

/// How a [`ConfigurableFileSystemObjectStore`] does its I/O.
///
/// The four fields are public, so a configuration can also be written out in full:
///
/// ```
/// use s3dlio::file_store_direct::FileSystemConfig;
/// let config = FileSystemConfig { direct_io: true, alignment: 0, min_io_size: 1 << 20, sync_writes: false };
/// assert_eq!(config, FileSystemConfig { min_io_size: 1 << 20, ..FileSystemConfig::direct_io() });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSystemConfig {
    /// Open files with O_DIRECT (bypassing the page cache) where the filesystem allows it.
    /// `direct://` URIs behave as if this were set.
    pub direct_io: bool,
    /// A minimum alignment, in bytes, for buffer addresses, file offsets and part sizes.
    /// `0` (the default) uses what the engine discovers for each file (statx `DIOALIGN`, else
    /// the device's logical block size, else the page size); a non-zero value can only raise
    /// that (it is rounded up to a power of two), never lower it below what the kernel needs.
    pub alignment: usize,
    /// Objects smaller than this many bytes are read and written through the page cache even
    /// when direct I/O is on (reported as [`Fallback::BelowMinSize`]). `0`: no minimum.
    pub min_io_size: usize,
    /// Open files written by `put` with O_SYNC (alongside O_DIRECT, which it never replaces),
    /// and fsync the file and its directory before `put` returns: the object is on stable
    /// storage when `put` succeeds.
    pub sync_writes: bool,
}

impl Default for FileSystemConfig {
    /// Buffered I/O (no O_DIRECT), engine-discovered alignment, no minimum, no O_SYNC.
    ///
    /// ```
    /// use s3dlio::file_store_direct::FileSystemConfig;
    /// let c = FileSystemConfig::default();
    /// assert!(!c.direct_io && !c.sync_writes);
    /// assert_eq!((c.alignment, c.min_io_size), (0, 0));
    /// ```
    fn default() -> Self {
        FileSystemConfig { direct_io: false, alignment: 0, min_io_size: 0, sync_writes: false }
    }
}

impl FileSystemConfig {
    /// O_DIRECT for every object, whatever its size, with engine-discovered alignment and no
    /// O_SYNC.
    ///
    /// ```
    /// use s3dlio::file_store_direct::FileSystemConfig;
    /// let c = FileSystemConfig::direct_io();
    /// assert!(c.direct_io && !c.sync_writes);
    /// assert_eq!(c.min_io_size, 0);
    /// ```
    pub fn direct_io() -> Self {
        FileSystemConfig { direct_io: true, ..Self::default() }
    }

    /// Tuned for large files (training shards, checkpoints, media):
    ///
    /// * `direct_io: true`: large files read once per pass gain nothing from the page cache,
    ///   and caching them evicts what other processes need; direct I/O also makes throughput
    ///   predictable.
    /// * `alignment: 0`: the engine's per-file discovery is exact; a larger alignment only
    ///   widens range reads.
    /// * `min_io_size: 64 KiB`: small objects next to the large ones (indexes, labels,
    ///   manifests) stay buffered: they are cheap to cache and often re-read, and direct I/O
    ///   would cost them a device round trip on every access. They are counted as
    ///   [`Fallback::BelowMinSize`], not hidden.
    /// * `sync_writes: false`: O_SYNC would add a device flush (and on ext4 a journal commit)
    ///   after every 8 MiB write. Set it when `put` must be durable on return. (The reference
    ///   implementation enabled it here, and its O_SYNC silently replaced O_DIRECT.)
    ///
    /// Whole-object I/O always moves [`IO_CHUNK`] bytes per system call.
    ///
    /// ```
    /// use s3dlio::file_store_direct::FileSystemConfig;
    /// let c = FileSystemConfig::high_performance();
    /// assert!(c.direct_io);
    /// assert_eq!(c.min_io_size, 64 * 1024);
    /// ```
    pub fn high_performance() -> Self {
        FileSystemConfig { direct_io: true, alignment: 0, min_io_size: 64 << 10, sync_writes: false }
    }

    /// The configured alignment as a power of two (1 when unset).
    fn extra_align(&self) -> usize {
        match self.alignment {
            0 | 1 => 1,
            a => a.checked_next_power_of_two().unwrap_or(1 << 30).min(1 << 30),
        }
    }
}

/// What [`test_direct_io_support`] found out about a directory's filesystem.
///
/// ```
/// use s3dlio::file_store_direct::test_direct_io_support;
/// let s = test_direct_io_support(std::env::temp_dir());
/// if s.supported {
///     assert!(s.mem_align.is_power_of_two() && s.offset_align.is_power_of_two());
/// } else {
///     println!("no O_DIRECT here: {}", s.reason.unwrap());
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectIoSupport {
    /// The filesystem took O_DIRECT and one aligned direct write and read worked.
    pub supported: bool,
    /// Required alignment of buffer addresses (what the engine discovered; the page size when
    /// nothing better is known).
    pub mem_align: usize,
    /// Required alignment of file offsets and lengths for writes.
    pub offset_align: usize,
    /// Why O_DIRECT is not supported (`None` when it is).
    pub reason: Option<String>,
    /// The directory that was probed (the nearest existing directory of the path given).
    pub probed_dir: PathBuf,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn temp_name(target_name: &OsStr) -> OsString {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("{TEMP_PREFIX}{}.{seq}.", std::process::id()).into_bytes();
    let keep = target_name.as_bytes();
    name.extend_from_slice(&keep[..keep.len().min(200)]);
    OsString::from_vec(name)
}

/// A temporary file that is removed unless disarmed (on error and on cancellation).
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Creates a new temporary file in `dir` (O_EXCL; `O_RDWR` so the engine may reopen it).
fn create_temp(dir: &Path, name: &OsStr, direct: bool, sync: bool) -> io::Result<(DirectFile, TempFile)> {
    let mut tries = 0;
    loop {
        let p = dir.join(temp_name(name));
        match DirectFile::open(&p, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o666, direct, sync) {
            Ok(f) => return Ok((f, TempFile { path: Some(p) })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// The nearest existing directory of `path` (itself, its parent if it is a file, else an ancestor).
fn nearest_dir(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    loop {
        if p.is_dir() {
            return p;
        }
        if !p.pop() {
            return PathBuf::from(".");
        }
    }
}

/// Answers whether the filesystem under `path` (a directory, a file in it, or a path still to
/// be created) takes O_DIRECT: creates a temporary file in the nearest existing directory,
/// turns O_DIRECT on with `fcntl(F_SETFL)`, writes and reads back one aligned block with
/// direct I/O, and removes the file. Blocking; needs write permission on the directory.
///
/// ```
/// use s3dlio::file_store_direct::test_direct_io_support;
/// let s = test_direct_io_support("/proc");
/// assert!(!s.supported);
/// assert!(s.reason.unwrap().contains("probe file"));
/// ```
pub fn test_direct_io_support(path: impl AsRef<Path>) -> DirectIoSupport {
    let dir = nearest_dir(path.as_ref());
    let page = get_system_page_size();
    let no = |a: Option<Alignment>, reason: String, dir: PathBuf| DirectIoSupport {
        supported: false,
        mem_align: a.map_or(page, |a| a.mem),
        offset_align: a.map_or(page, |a| a.offset),
        reason: Some(reason),
        probed_dir: dir,
    };
    let (f, _guard) = match create_temp(&dir, OsStr::new("probe"), true, false) {
        Ok(v) => v,
        Err(e) => return no(None, format!("cannot create a probe file in {}: {e}", dir.display()), dir),
    };
    let a = f.alignment();
    if !f.is_direct() {
        let why = f.fallback().map_or_else(|| "O_DIRECT is not in effect".to_string(), |r| r.to_string());
        return no(Some(a), why, dir);
    }
    match probe::direct_round_trip(f.fd(), &a, true) {
        Ok(_) if f.is_direct() => {
            DirectIoSupport { supported: true, mem_align: a.mem, offset_align: a.offset, reason: None, probed_dir: dir }
        }
        Ok(_) => no(Some(a), "the kernel dropped O_DIRECT during the probe".to_string(), dir),
        Err(r) => no(Some(a), r.to_string(), dir),
    }
}

/// Says once per process and cause that direct I/O was requested but not used.
fn warn_once(r: &IoReport) {
    static WARNED: Mutex<Vec<Fallback>> = Mutex::new(Vec::new());
    let Some(f) = r.fallback else { return };
    if f == Fallback::BelowMinSize || f == Fallback::NotRequested {
        return; // chosen by the configuration: counted, not warned about
    }
    let mut w = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !w.contains(&f) {
        w.push(f);
        eprintln!(
            "s3dlio: direct I/O requested but not used for {} ({f}); continuing with buffered I/O \
             (this is said once; see the store's io_stats() for counts)",
            r.uri
        );
    }
}

/// Tally of the calls one operation made.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    calls: u64,
    largest: usize,
}

impl Tally {
    fn note(&mut self, n: usize) {
        self.calls += 1;
        self.largest = self.largest.max(n);
    }

    fn merge(&mut self, o: Tally) {
        self.calls += o.calls;
        self.largest = self.largest.max(o.largest);
    }
}

/// One resolved URI.
#[derive(Debug, Clone)]
struct Target {
    op: Operation,
    uri: String,
    path: PathBuf,
    want_direct: bool,
}

fn make_report(f: &DirectFile, t: &Target, below_min: bool, tally: Tally, bytes: u64) -> IoReport {
    let fd_flags = sys::fcntl(f.fd(), libc::F_GETFL, 0).unwrap_or(0);
    let direct = fd_flags & libc::O_DIRECT != 0;
    let counters = f.stats();
    let engine_reason = || f.fallback().filter(|r| *r != Fallback::NotRequested).unwrap_or(Fallback::FsNoDirect);
    let fallback = if !t.want_direct {
        None
    } else if below_min {
        Some(Fallback::BelowMinSize)
    } else if !direct || counters.fallback_calls > 0 || counters.einval_retries > 0 {
        Some(engine_reason())
    } else {
        None
    };
    let a = f.alignment();
    IoReport {
        operation: t.op,
        uri: t.uri.clone(),
        bytes,
        direct_requested: t.want_direct,
        direct,
        fallback,
        fd_flags,
        mem_align: a.mem,
        offset_align: a.offset,
        io_calls: tally.calls,
        largest_io: tally.largest,
        counters,
    }
}

/// Writes all of `buf` at `off`, counting the calls.
fn write_chunk(f: &DirectFile, mut buf: &[u8], mut off: u64, tally: &mut Tally) -> io::Result<()> {
    while !buf.is_empty() {
        let n = f.write_at(buf, off)?;
        tally.note(buf.len());
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

/// Reads a whole object or a range of it into one aligned buffer, in `IO_CHUNK` calls at
/// aligned offsets, and hands the buffer to `Bytes` without copying.
fn read_object(t: &Target, cfg: FileSystemConfig, range: Option<(u64, Option<u64>)>) -> io::Result<(Bytes, IoReport)> {
    let meta = std::fs::metadata(&t.path)?;
    if meta.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    if !meta.is_file() {
        // A FIFO would block the open; devices and sockets are not objects.
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let below_min = t.want_direct && meta.len() < cfg.min_io_size as u64;
    let f = DirectFile::open(&t.path, libc::O_RDONLY, 0, t.want_direct && !below_min, false)?;
    let size = f.size()?;
    let (start, want) = match range {
        None => (0, size),
        Some((off, _)) if off >= size => (off, 0),
        Some((off, len)) => (off, len.unwrap_or(u64::MAX).min(size - off)),
    };
    let mut tally = Tally::default();
    let bytes = if want == 0 {
        Bytes::new()
    } else {
        let a = f.alignment();
        let extra = cfg.extra_align();
        let ra = a.read_offset.max(extra) as u64;
        let lo = start - start % ra;
        let hi =
            (start + want).checked_next_multiple_of(ra).ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let cap = usize::try_from(hi - lo).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let mut buf = AlignedBuf::new(cap, a.mem.max(get_system_page_size()).max(extra))?;
        // Aligned calls of IO_CHUNK straight into `buf` up to the last whole block before end
        // of file, then the partial last block as one exact read (the engine bounces that one,
        // so nothing past end of file is ever asked of the kernel into the caller's memory).
        let end = hi.min(size);
        let kernel_ra = a.read_offset as u64;
        let direct_end = if hi <= size { hi } else { (size - size % kernel_ra).max(lo) };
        let chunk = IO_CHUNK.max(ra as usize) as u64;
        let mut pos = lo;
        while pos < end {
            let n = if pos < direct_end { chunk.min(direct_end - pos) } else { end - pos } as usize;
            let at = (pos - lo) as usize;
            let got = f.read_at(&mut buf.spare()[at..at + n], pos)?;
            tally.note(n);
            pos += got as u64;
            if got < n {
                break; // end of file (the file shrank since it was opened)
            }
        }
        let done = (pos - lo) as usize;
        buf.set_len(done);
        let skip = (start - lo) as usize;
        let n = done.saturating_sub(skip).min(want as usize);
        Bytes::from_owner(buf).slice(skip.min(done)..skip.min(done) + n)
    };
    let len = bytes.len() as u64;
    Ok((bytes, make_report(&f, t, below_min, tally, len)))
}

/// Makes the temporary file the object: fsync (with `sync_writes`), report, close, rename,
/// fsync the directory (with `sync_writes`).
fn finish_put(
    f: DirectFile,
    mut tmp: TempFile,
    t: &Target,
    cfg: FileSystemConfig,
    below_min: bool,
    tally: Tally,
    bytes: u64,
) -> io::Result<IoReport> {
    if cfg.sync_writes {
        f.sync_all()?;
    }
    let report = make_report(&f, t, below_min, tally, bytes);
    drop(f);
    std::fs::rename(tmp.path(), &t.path)?;
    tmp.disarm();
    if cfg.sync_writes {
        if let Some(dir) = t.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(report)
}

/// Creates the object's directory and a temporary file in it.
fn open_for_put(t: &Target, direct: bool, sync: bool) -> io::Result<(DirectFile, TempFile)> {
    let dir = t.path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let name = t.path.file_name().unwrap_or(OsStr::new("object"));
    create_temp(dir, name, direct, sync)
}

/// Runs `f` on tokio's blocking pool, attaching the operation and URI to its error.
async fn run<T, F>(op: Operation, uri: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    join(op, uri, tokio::task::spawn_blocking(f)).await?.map_err(|e| StoreError::io(op, uri, e))
}

async fn join<T>(op: Operation, uri: &str, h: JoinHandle<T>) -> Result<T> {
    match h.await {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::io(op, uri, io::Error::other(format!("blocking task did not complete: {e}")))),
    }
}

/// A file-system [`ObjectStore`] whose I/O follows a [`FileSystemConfig`]: O_DIRECT where
/// asked for and supported, buffered otherwise, and always reported.
///
/// Cloning is cheap; clones share statistics.
///
/// ```
/// use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
/// use s3dlio::object_store::ObjectStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), s3dlio::object_store::StoreError> {
/// let dir = std::env::temp_dir().join(format!("s3dlio-doc-store-{}", std::process::id()));
/// let store = ConfigurableFileSystemObjectStore::new(FileSystemConfig::direct_io());
/// let uri = format!("file://{}/nested/dirs/object.bin", dir.display());
/// store.put(&uri, b"payload").await?; // parent directories are created
/// assert_eq!(&store.get_range(&uri, 3, Some(100)).await?[..], b"load");
/// assert_eq!(store.list(&format!("file://{}/", dir.display()), true).await?, vec![uri.clone()]);
/// store.delete(&uri).await?;
/// assert!(store.delete(&uri).await.unwrap_err().is_not_found());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ConfigurableFileSystemObjectStore {
    config: FileSystemConfig,
    stats: Arc<Mutex<IoStats>>,
}

impl ConfigurableFileSystemObjectStore {
    /// A store using `config`.
    ///
    /// ```
    /// use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
    /// let store = ConfigurableFileSystemObjectStore::new(FileSystemConfig::high_performance());
    /// assert_eq!(*store.config(), FileSystemConfig::high_performance());
    /// ```
    pub fn new(config: FileSystemConfig) -> Self {
        ConfigurableFileSystemObjectStore { config, stats: Arc::default() }
    }

    /// The configuration.
    ///
    /// ```
    /// use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
    /// assert!(!ConfigurableFileSystemObjectStore::new(FileSystemConfig::default()).config().direct_io);
    /// ```
    pub fn config(&self) -> &FileSystemConfig {
        &self.config
    }

    /// Cumulative statistics: how many operations went direct, how many fell back and why.
    ///
    /// ```
    /// use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
    /// let store = ConfigurableFileSystemObjectStore::new(FileSystemConfig::direct_io());
    /// assert_eq!(store.stats().fallback_ops, 0);
    /// ```
    pub fn stats(&self) -> IoStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Same as the free function [`test_direct_io_support`].
    ///
    /// ```
    /// use s3dlio::file_store_direct::ConfigurableFileSystemObjectStore;
    /// let s = ConfigurableFileSystemObjectStore::test_direct_io_support(std::env::temp_dir());
    /// assert_eq!(s.supported, s.reason.is_none());
    /// ```
    pub fn test_direct_io_support(path: impl AsRef<Path>) -> DirectIoSupport {
        test_direct_io_support(path)
    }

    fn target(&self, op: Operation, uri: &str) -> Result<Target> {
        let (scheme, path) = parse_uri(op, uri)?;
        Ok(Target { op, uri: uri.to_string(), path, want_direct: self.config.direct_io || scheme == Scheme::Direct })
    }

    fn record(&self, r: &IoReport) {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).add(r);
        warn_once(r);
    }

    /// [`ObjectStore::get`], also returning how the I/O was done.
    ///
    /// ```
    /// use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
    /// use s3dlio::object_store::ObjectStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), s3dlio::object_store::StoreError> {
    /// # let dir = std::env::temp_dir().join(format!("s3dlio-doc-getr-{}", std::process::id()));
    /// let store = ConfigurableFileSystemObjectStore::new(FileSystemConfig::direct_io());
    /// let uri = format!("file://{}/o", dir.display());
    /// store.put(&uri, &[5u8; 10_000]).await?;
    /// let (data, report) = store.get_with_report(&uri).await?;
    /// assert_eq!((data.len(), report.bytes), (10_000, 10_000));
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_with_report(&self, uri: &str) -> Result<(Bytes, IoReport)> {
        let t = self.target(Operation::Get, uri)?;
        let cfg = self.config;
        let r = run(t.op, uri, move || read_object(&t, cfg, None)).await?;
        self.record(&r.1);
        Ok(r)
    }

    /// [`ObjectStore::get_range`], also returning how the I/O was done. The range is read as
    /// the aligned window around it (direct) and returned without copying; past the end of the
    /// object the result is cut short exactly as on the buffered path.
    ///
    /// ```
    /// use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
    /// use s3dlio::object_store::ObjectStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), s3dlio::object_store::StoreError> {
    /// # let dir = std::env::temp_dir().join(format!("s3dlio-doc-ranger-{}", std::process::id()));
    /// let store = ConfigurableFileSystemObjectStore::new(FileSystemConfig::direct_io());
    /// let uri = format!("file://{}/o", dir.display());
    /// store.put(&uri, b"0123456789").await?;
    /// let (tail, _) = store.get_range_with_report(&uri, 7, Some(100)).await?;
    /// assert_eq!(&tail[..], b"789");
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_range_with_report(
        &self,
        uri: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<(Bytes, IoReport)> {
        let t = self.target(Operation::GetRange, uri)?;
        let cfg = self.config;
        let r = run(t.op, uri, move || read_object(&t, cfg, Some((offset, length)))).await?;
        self.record(&r.1);
        Ok(r)
    }

    /// [`ObjectStore::put`], also returning how the I/O was done.
    ///
    /// ```
    /// use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), s3dlio::object_store::StoreError> {
    /// # let dir = std::env::temp_dir().join(format!("s3dlio-doc-putr-{}", std::process::id()));
    /// let store = ConfigurableFileSystemObjectStore::new(FileSystemConfig::direct_io());
    /// let report = store.put_with_report(&format!("file://{}/o", dir.display()), &[1u8; 5000]).await?;
    /// assert_eq!(report.bytes, 5000);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_with_report(&self, uri: &str, data: &[u8]) -> Result<IoReport> {
        self.write_object(Operation::Put, uri, data, None).await
    }

    /// [`ObjectStore::put_multipart`], also returning how the I/O was done.
    ///
    /// On a file system there are no server-side parts: the stored object is exactly `data`,
    /// written as `put` writes it (atomically, never padded). `part_size` sets how many bytes
    /// each write carries (default [`IO_CHUNK`]); it is raised to at least [`MIN_PART_IO`] and
    /// rounded up to a multiple of the file's alignment, so every part boundary stays aligned
    /// and only the object's last bytes need special handling. A part size of 0 is an
    /// `InvalidInput` error.
    ///
    /// ```
    /// use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), s3dlio::object_store::StoreError> {
    /// # let dir = std::env::temp_dir().join(format!("s3dlio-doc-mpr-{}", std::process::id()));
    /// let store = ConfigurableFileSystemObjectStore::new(FileSystemConfig::direct_io());
    /// let uri = format!("file://{}/o", dir.display());
    /// let data = vec![9u8; (3 << 20) + 1];
    /// let report = store.put_multipart_with_report(&uri, &data, Some(1_000_001)).await?;
    /// assert_eq!(std::fs::metadata(dir.join("o")).unwrap().len(), data.len() as u64); // no padding
    /// assert!(report.largest_io >= 1 << 20);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_multipart_with_report(
        &self,
        uri: &str,
        data: &[u8],
        part_size: Option<usize>,
    ) -> Result<IoReport> {
        self.write_object(Operation::PutMultipart, uri, data, part_size).await
    }

    async fn write_object(&self, op: Operation, uri: &str, data: &[u8], part_size: Option<usize>) -> Result<IoReport> {
        let t = self.target(op, uri)?;
        if uri.ends_with('/') || t.path.file_name().is_none() {
            return Err(StoreError::InvalidUri {
                op,
                uri: uri.to_string(),
                reason: "names a directory, not an object".into(),
            });
        }
        if part_size == Some(0) {
            return Err(StoreError::io(
                op,
                uri,
                io::Error::new(io::ErrorKind::InvalidInput, "part_size must be at least 1"),
            ));
        }
        let cfg = self.config;
        let len = data.len() as u64;
        let below_min = t.want_direct && len < cfg.min_io_size as u64;
        let direct = t.want_direct && !below_min;
        let mem = get_system_page_size().max(cfg.extra_align());
        let map_err = |e: io::Error| StoreError::io(op, uri, e);

        if data.len() <= IO_CHUNK
            && match part_size {
                None => true,
                Some(p) => p >= data.len(),
            }
        {
            // One part: everything in one trip to the blocking pool.
            let mut buf = AlignedBuf::new(data.len(), mem).map_err(map_err)?;
            buf.fill_from(data);
            let r = run(op, uri, move || {
                let (f, tmp) = open_for_put(&t, direct, cfg.sync_writes)?;
                let mut tally = Tally::default();
                write_chunk(&f, buf.as_slice(), 0, &mut tally)?;
                finish_put(f, tmp, &t, cfg, below_min, tally, len)
            })
            .await?;
            self.record(&r);
            return Ok(r);
        }

        let t2 = t.clone();
        let (f, tmp) = run(op, uri, move || open_for_put(&t2, direct, cfg.sync_writes)).await?;
        let f = Arc::new(f);
        let a = f.alignment();
        let gran = a.offset.max(get_system_page_size()).max(cfg.extra_align());
        let chunk = match part_size {
            None => IO_CHUNK.max(gran),
            Some(p) => p
                .max(MIN_PART_IO)
                .checked_next_multiple_of(gran)
                .ok_or_else(|| map_err(io::Error::new(io::ErrorKind::InvalidInput, "part_size too large")))?,
        };
        let buf_cap = chunk.min(data.len());
        let mut tally = Tally::default();
        let mut pending: Option<JoinHandle<(io::Result<()>, AlignedBuf, Tally)>> = None;
        let mut spare: Option<AlignedBuf> = None;
        let mut off = 0u64;
        // Double-buffered: the next part is copied into an aligned buffer while the previous
        // one is being written.
        for piece in data.chunks(chunk) {
            let mut buf = match spare.take() {
                Some(b) => b,
                None => AlignedBuf::new(buf_cap, mem).map_err(map_err)?,
            };
            buf.fill_from(piece);
            if let Some(h) = pending.take() {
                let (r, b, tl) = join(op, uri, h).await?;
                tally.merge(tl);
                r.map_err(map_err)?;
                spare = Some(b);
            }
            let f2 = Arc::clone(&f);
            let at = off;
            pending = Some(tokio::task::spawn_blocking(move || {
                let mut tl = Tally::default();
                let r = write_chunk(&f2, buf.as_slice(), at, &mut tl);
                (r, buf, tl)
            }));
            off += piece.len() as u64;
        }
        if let Some(h) = pending.take() {
            let (r, _, tl) = join(op, uri, h).await?;
            tally.merge(tl);
            r.map_err(map_err)?;
        }
        let f = Arc::try_unwrap(f).map_err(|_| map_err(io::Error::other("file still in use by a write")))?;
        let r = run(op, uri, move || finish_put(f, tmp, &t, cfg, below_min, tally, len)).await?;
        self.record(&r);
        Ok(r)
    }
}

/// Lists `dir` (entries whose names start with `name_prefix`), descending with `recursive`.
fn list_dir(
    dir: &Path,
    name_prefix: &[u8],
    recursive: bool,
    scheme: Scheme,
    top: bool,
    out: &mut Vec<String>,
) -> io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if top && matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let nb = name.as_bytes();
        if !nb.starts_with(name_prefix) || nb.starts_with(TEMP_PREFIX.as_bytes()) {
            continue;
        }
        let path = entry.path();
        let mut ft = entry.file_type()?;
        if ft.is_symlink() {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => ft = m.file_type(),
                _ => continue, // dangling, or a link to a directory (never followed: no cycles)
            }
        }
        if ft.is_file() {
            out.push(format!("{}{}", scheme.prefix(), path.to_string_lossy()));
        } else if ft.is_dir() && recursive {
            list_dir(&path, b"", true, scheme, false, out)?;
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for ConfigurableFileSystemObjectStore {
    /// Reads the whole object (8 MiB per call, into an aligned buffer that becomes the
    /// returned `Bytes`).
    async fn get(&self, uri: &str) -> Result<Bytes> {
        Ok(self.get_with_report(uri).await?.0)
    }

    /// Reads a range; see [`ConfigurableFileSystemObjectStore::get_range_with_report`].
    async fn get_range(&self, uri: &str, offset: u64, length: Option<u64>) -> Result<Bytes> {
        Ok(self.get_range_with_report(uri, offset, length).await?.0)
    }

    /// Writes a temporary file next to the object and renames it over the object.
    async fn put(&self, uri: &str, data: &[u8]) -> Result<()> {
        self.put_with_report(uri, data).await.map(drop)
    }

    /// See [`ConfigurableFileSystemObjectStore::put_multipart_with_report`].
    async fn put_multipart(&self, uri: &str, data: &[u8], part_size: Option<usize>) -> Result<()> {
        self.put_multipart_with_report(uri, data, part_size).await.map(drop)
    }

    /// Removes the file; a missing one is a `NotFound` error, a directory an `EISDIR` one.
    async fn delete(&self, uri: &str) -> Result<()> {
        let t = self.target(Operation::Delete, uri)?;
        run(t.op, uri, move || std::fs::remove_file(&t.path)).await
    }

    /// Regular files under `prefix`, as sorted URIs with the prefix's scheme. A prefix ending
    /// in `/`, or naming an existing directory, lists that directory; any other prefix lists
    /// the entries of its parent directory whose names start with its last component (as an
    /// S3 prefix would). With `recursive`, files in subdirectories are included (symbolic links
    /// to directories are not followed). Temporary files of unfinished `put`s are never listed;
    /// a missing directory gives an empty list. Names that are not UTF-8 are converted lossily.
    async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>> {
        let (scheme, path) = parse_uri(Operation::List, prefix)?;
        let is_dir_prefix = prefix.ends_with('/');
        run(Operation::List, prefix, move || {
            let (dir, name_prefix) = if is_dir_prefix || path.is_dir() {
                (path, Vec::new())
            } else {
                let name = path.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
                (path.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf), name)
            };
            let mut out = Vec::new();
            list_dir(&dir, &name_prefix, recursive, scheme, true, &mut out)?;
            out.sort();
            Ok(out)
        })
        .await
    }

    /// Size and modification time (symbolic links followed); a directory is an `EISDIR` error.
    async fn stat(&self, uri: &str) -> Result<ObjectMetadata> {
        let t = self.target(Operation::Stat, uri)?;
        run(t.op, uri, move || {
            let m = std::fs::metadata(&t.path)?;
            if m.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            Ok(ObjectMetadata { size: m.len(), modified: m.modified()? })
        })
        .await
    }

    /// True for an existing regular file (symbolic links followed), false if nothing (or a
    /// directory) is there; other failures, such as a permission error, are errors.
    async fn exists(&self, uri: &str) -> Result<bool> {
        let t = self.target(Operation::Exists, uri)?;
        run(t.op, uri, move || match std::fs::metadata(&t.path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => Ok(false),
            Err(e) => Err(e),
        })
        .await
    }

    /// Always `Some`: see [`ConfigurableFileSystemObjectStore::stats`].
    fn io_stats(&self) -> Option<IoStats> {
        Some(self.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_sized() {
        for align in [1usize, 512, 4096, 65536, 1 << 20] {
            let mut b = AlignedBuf::new(10_000, align).unwrap();
            assert_eq!(b.spare().as_ptr() as usize % align, 0, "align {align}");
            assert_eq!(b.spare().len(), 10_000);
            assert!(b.spare().iter().all(|&x| x == 0));
            b.fill_from(b"abc");
            assert_eq!(b.as_slice(), b"abc");
            let bytes = Bytes::from_owner(b);
            assert_eq!(&bytes[..], b"abc");
        }
        assert_eq!(AlignedBuf::new(0, 4096).unwrap().as_slice(), b"");
    }

    #[test]
    fn extra_alignment_rounds_to_powers_of_two() {
        let c = |a| FileSystemConfig { alignment: a, ..FileSystemConfig::default() }.extra_align();
        assert_eq!((c(0), c(1), c(3000), c(4096), c(4097)), (1, 1, 4096, 4096, 8192));
        assert_eq!(c(usize::MAX), 1 << 30);
    }

    #[test]
    fn temp_names_are_unique_hidden_and_bounded() {
        let long = OsString::from("x".repeat(300));
        let a = temp_name(&long);
        let b = temp_name(OsStr::new("obj"));
        assert!(a.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) && a.len() < 255);
        assert!(b.as_bytes().ends_with(b".obj"));
        assert_ne!(temp_name(OsStr::new("obj")), b);
    }

    #[test]
    fn nearest_dir_walks_up() {
        let d = std::env::temp_dir();
        assert_eq!(nearest_dir(&d.join("no/such/dir")), d);
    }
}
