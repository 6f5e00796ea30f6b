//! The store API every store implements and every caller names: the [`ObjectStore`] trait,
//! its error type [`StoreError`], object metadata, what each operation reports
//! ([`IoReport`]) and cumulative statistics ([`IoStats`]), and URI parsing. Re-exported
//! from `object_store` (and the reports from `file_store_direct`), where the seed names them.

use async_trait::async_trait;
use bytes::Bytes;
use s3dlio_engine::direct_file::{Fallback, IoCounters};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

/// What a store was doing when an error happened; part of every [`StoreError`].
///
/// ```
/// use s3dlio::object_store::Operation;
/// assert_eq!(Operation::GetRange.to_string(), "get_range");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// [`ObjectStore::get`].
    Get,
    /// [`ObjectStore::get_range`].
    GetRange,
    /// [`ObjectStore::put`].
    Put,
    /// [`ObjectStore::put_multipart`].
    PutMultipart,
    /// [`ObjectStore::delete`].
    Delete,
    /// [`ObjectStore::list`].
    List,
    /// [`ObjectStore::stat`].
    Stat,
    /// [`ObjectStore::exists`].
    Exists,
    /// Choosing a store for a URI ([`store_for_uri`] and the other factories).
    CreateStore,
    /// Probing a directory with
    /// [`test_direct_io_support`](crate::file_store_direct::test_direct_io_support).
    ProbeDirectIo,
}

impl Operation {
    /// The operation's name as used in messages (`get`, `get_range`, `put`, ...).
    ///
    /// ```
    /// assert_eq!(s3dlio::object_store::Operation::PutMultipart.name(), "put_multipart");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::GetRange => "get_range",
            Operation::Put => "put",
            Operation::PutMultipart => "put_multipart",
            Operation::Delete => "delete",
            Operation::List => "list",
            Operation::Stat => "stat",
            Operation::Exists => "exists",
            Operation::CreateStore => "create_store",
            Operation::ProbeDirectIo => "test_direct_io_support",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of every store operation: which operation, on which URI, and why.
///
/// Operating-system failures keep the original [`io::Error`] (reachable with
/// [`StoreError::io_error`] and as the error's `source()`), so a missing object is recognisable:
///
/// ```
/// use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
/// use s3dlio::object_store::{ObjectStore, Operation};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = ConfigurableFileSystemObjectStore::new(FileSystemConfig::default());
/// let err = store.delete("file:///nonexistent-dir-s3dlio/object").await.unwrap_err();
/// assert!(err.is_not_found());
/// assert_eq!(err.operation(), Operation::Delete);
/// assert_eq!(err.uri(), "file:///nonexistent-dir-s3dlio/object");
/// assert_eq!(err.io_error().unwrap().kind(), std::io::ErrorKind::NotFound);
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The operating system refused (or the engine failed) an operation.
    #[error("{op} {uri}: {source}")]
    Io {
        /// The operation.
        op: Operation,
        /// The URI it was given.
        uri: String,
        /// The OS error (for example `NotFound` for a missing object).
        #[source]
        source: io::Error,
    },
    /// The URI's scheme is not one this store serves (only `file://` and `direct://` are).
    #[error("{op} {uri}: unsupported URI scheme \"{scheme}\" (this store serves file:// and direct://)")]
    UnsupportedScheme {
        /// The operation.
        op: Operation,
        /// The URI it was given.
        uri: String,
        /// The scheme found, without `://`.
        scheme: String,
    },
    /// The URI could not be understood (no scheme, relative path, a host name, a NUL byte...).
    #[error("{op} {uri}: invalid URI: {reason}")]
    InvalidUri {
        /// The operation.
        op: Operation,
        /// The URI it was given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl StoreError {
    /// An [`StoreError::Io`].
    ///
    /// ```
    /// use s3dlio::object_store::{Operation, StoreError};
    /// let e = StoreError::io(Operation::Get, "file:///x", std::io::ErrorKind::NotFound.into());
    /// assert!(e.is_not_found());
    /// ```
    pub fn io(op: Operation, uri: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io { op, uri: uri.into(), source }
    }

    /// The operation that failed.
    ///
    /// ```
    /// use s3dlio::object_store::{store_for_uri, Operation};
    /// let err = store_for_uri("s3://bucket/key").err().unwrap();
    /// assert_eq!(err.operation(), Operation::CreateStore);
    /// ```
    pub fn operation(&self) -> Operation {
        match self {
            StoreError::Io { op, .. }
            | StoreError::UnsupportedScheme { op, .. }
            | StoreError::InvalidUri { op, .. } => *op,
        }
    }

    /// The URI the operation was given.
    ///
    /// ```
    /// use s3dlio::object_store::store_for_uri;
    /// assert_eq!(store_for_uri("gs://b/k").err().unwrap().uri(), "gs://b/k");
    /// ```
    pub fn uri(&self) -> &str {
        match self {
            StoreError::Io { uri, .. }
            | StoreError::UnsupportedScheme { uri, .. }
            | StoreError::InvalidUri { uri, .. } => uri,
        }
    }

    /// The OS error, for [`StoreError::Io`].
    ///
    /// ```
    /// use s3dlio::object_store::store_for_uri;
    /// assert!(store_for_uri("az://c/k").err().unwrap().io_error().is_none());
    /// ```
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The [`io::ErrorKind`] that best describes the error: the OS error's kind, `Unsupported`
    /// for a foreign scheme, `InvalidInput` for a malformed URI.
    ///
    /// ```
    /// use s3dlio::object_store::store_for_uri;
    /// assert_eq!(store_for_uri("s3://b/k").err().unwrap().kind(), std::io::ErrorKind::Unsupported);
    /// ```
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            StoreError::Io { source, .. } => source.kind(),
            StoreError::UnsupportedScheme { .. } => io::ErrorKind::Unsupported,
            StoreError::InvalidUri { .. } => io::ErrorKind::InvalidInput,
        }
    }

    /// True if the object (or its directory) does not exist.
    ///
    /// ```
    /// use s3dlio::object_store::{Operation, StoreError};
    /// let e = StoreError::io(Operation::Stat, "file:///x", std::io::Error::from_raw_os_error(libc::ENOENT));
    /// assert!(e.is_not_found());
    /// ```
    pub fn is_not_found(&self) -> bool {
        self.kind() == io::ErrorKind::NotFound
    }
}

impl From<StoreError> for io::Error {
    /// Keeps the kind (see [`StoreError::kind`]) and the whole message.
    fn from(e: StoreError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// The result type of every store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What [`ObjectStore::stat`] tells about an object.
///
/// ```
/// use s3dlio::object_store::ObjectMetadata;
/// let m = ObjectMetadata { size: 3, modified: std::time::SystemTime::UNIX_EPOCH };
/// assert_eq!(m.size, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMetadata {
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub modified: SystemTime,
}

/// An asynchronous object store addressed by URIs.
///
/// Object-safe (`Box<dyn ObjectStore>` is what the factory functions return). All methods take
/// `&self` and may run concurrently.
///
/// ```
/// use s3dlio::object_store::{store_for_uri, ObjectStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), s3dlio::object_store::StoreError> {
/// let dir = std::env::temp_dir().join(format!("s3dlio-doc-trait-{}", std::process::id()));
/// let base = format!("file://{}", dir.display());
/// let store: Box<dyn ObjectStore> = store_for_uri(&base)?;
/// store.put(&format!("{base}/a/1.bin"), b"one").await?;
/// store.put_multipart(&format!("{base}/a/2.bin"), b"two", Some(1)).await?;
/// assert_eq!(&store.get(&format!("{base}/a/2.bin")).await?[..], b"two");
/// assert_eq!(&store.get_range(&format!("{base}/a/1.bin"), 1, None).await?[..], b"ne");
/// assert_eq!(store.stat(&format!("{base}/a/1.bin")).await?.size, 3);
/// assert_eq!(store.list(&format!("{base}/"), true).await?.len(), 2);
/// store.delete(&format!("{base}/a/1.bin")).await?;
/// assert!(!store.exists(&format!("{base}/a/1.bin")).await?);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The whole object.
    async fn get(&self, uri: &str) -> Result<Bytes>;

    /// Up to `length` bytes (to the end of the object if `None`) starting at `offset`.
    /// A range reaching past the end returns the bytes that exist (possibly none).
    async fn get_range(&self, uri: &str, offset: u64, length: Option<u64>) -> Result<Bytes>;

    /// Creates or replaces the object with `data`.
    async fn put(&self, uri: &str, data: &[u8]) -> Result<()>;

    /// Creates or replaces the object with `data`, sent in parts of about `part_size` bytes.
    /// The stored object is exactly `data`, whatever the part size.
    async fn put_multipart(&self, uri: &str, data: &[u8], part_size: Option<usize>) -> Result<()>;

    /// Removes the object; a missing object is an error for which
    /// [`StoreError::is_not_found`] is true.
    async fn delete(&self, uri: &str) -> Result<()>;

    /// URIs of the objects under `prefix`; with `recursive`, also those in nested
    /// "directories".
    async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>>;

    /// Size and modification time of the object.
    async fn stat(&self, uri: &str) -> Result<ObjectMetadata>;

    /// True if the object exists.
    async fn exists(&self, uri: &str) -> Result<bool>;

    /// Cumulative I/O statistics of this store (whether its I/O went direct, and why not),
    /// if the store keeps them. The default is `None`.
    ///
    /// ```
    /// use s3dlio::object_store::{direct_io_store_for_uri, ObjectStore};
    /// let store = direct_io_store_for_uri("file:///data").unwrap();
    /// assert_eq!(store.io_stats().unwrap().data_ops, 0);
    /// ```
    fn io_stats(&self) -> Option<IoStats> {
        None
    }
}

/// The URI schemes the file store serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `file://`: direct I/O as configured.
    File,
    /// `direct://`: direct I/O always requested.
    Direct,
}

impl Scheme {
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Scheme::File => "file://",
            Scheme::Direct => "direct://",
        }
    }
}

/// Splits a `file:///abs/path` or `direct:///abs/path` URI. `file://localhost/abs` is accepted
/// too. No percent-decoding is done: the path is taken byte for byte.
pub(crate) fn parse_uri(op: Operation, uri: &str) -> Result<(Scheme, PathBuf)> {
    let invalid = |reason: &str| StoreError::InvalidUri { op, uri: uri.to_string(), reason: reason.to_string() };
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(invalid("expected file:///absolute/path or direct:///absolute/path"));
    };
    let kind = if scheme.eq_ignore_ascii_case("file") {
        Scheme::File
    } else if scheme.eq_ignore_ascii_case("direct") {
        Scheme::Direct
    } else {
        return Err(StoreError::UnsupportedScheme { op, uri: uri.to_string(), scheme: scheme.to_string() });
    };
    let path = if rest.starts_with('/') {
        rest
    } else if let Some(p) = rest.strip_prefix("localhost/") {
        &rest[rest.len() - p.len() - 1..]
    } else {
        return Err(invalid("the path must be absolute (three slashes: file:///dir/object)"));
    };
    if path.contains('\0') {
        return Err(invalid("the path contains a NUL byte"));
    }
    Ok((kind, PathBuf::from(path)))
}

/// How one data operation (`get`, `get_range`, `put`, `put_multipart`) did its I/O.
///
/// ```
/// use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), s3dlio::object_store::StoreError> {
/// let dir = std::env::temp_dir().join(format!("s3dlio-doc-report-{}", std::process::id()));
/// let uri = format!("direct://{}/obj", dir.display());
/// let store = ConfigurableFileSystemObjectStore::new(FileSystemConfig::default());
/// let report = store.put_with_report(&uri, &vec![0u8; 20 << 20]).await?;
/// assert!(report.direct_requested); // direct:// asks for O_DIRECT
/// if report.direct {
///     assert_ne!(report.fd_flags & libc::O_DIRECT, 0);
///     assert!(report.io_calls <= 20); // 8 MiB per call, not one call per page
/// } else {
///     println!("buffered because: {}", report.fallback.unwrap());
/// }
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoReport {
    /// The operation.
    pub operation: Operation,
    /// The URI it was given.
    pub uri: String,
    /// Bytes returned (reads) or stored (writes).
    pub bytes: u64,
    /// Direct I/O was asked for (configuration or `direct://`).
    pub direct_requested: bool,
    /// The kernel had O_DIRECT on the file's descriptor at the end of the operation
    /// (`fcntl(F_GETFL)`).
    pub direct: bool,
    /// Why the operation was not (entirely) direct although direct I/O was requested: the
    /// filesystem refused O_DIRECT, the object was below `min_io_size`, or some calls were
    /// redone buffered. `None` when it was fully direct, or when direct I/O was not requested.
    pub fallback: Option<Fallback>,
    /// The descriptor's status flags (`fcntl(F_GETFL)`), e.g. to check `O_DIRECT` and `O_SYNC`.
    pub fd_flags: i32,
    /// Required buffer alignment the engine found for the file.
    pub mem_align: usize,
    /// Required offset alignment the engine found for the file.
    pub offset_align: usize,
    /// Read or write calls the store made on the file for this operation.
    pub io_calls: u64,
    /// The largest of those calls, in bytes.
    pub largest_io: usize,
    /// The engine's counters for the file: bytes that went straight to or from the kernel,
    /// through bounce buffers, or through the page cache.
    pub counters: IoCounters,
}

impl IoReport {
    /// True if direct I/O was requested and fully achieved.
    ///
    /// ```
    /// # use s3dlio::file_store_direct::IoReport;
    /// # fn check(r: &IoReport) {
    /// assert_eq!(r.fully_direct(), r.direct_requested && r.direct && r.fallback.is_none());
    /// # }
    /// ```
    pub fn fully_direct(&self) -> bool {
        self.direct_requested && self.direct && self.fallback.is_none()
    }
}

/// Cumulative I/O statistics of one store (all clones share them).
///
/// ```
/// use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
/// use s3dlio::object_store::ObjectStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), s3dlio::object_store::StoreError> {
/// let dir = std::env::temp_dir().join(format!("s3dlio-doc-stats-{}", std::process::id()));
/// let store = ConfigurableFileSystemObjectStore::new(FileSystemConfig::direct_io());
/// store.put(&format!("file://{}/o", dir.display()), b"hello").await?;
/// let s = store.stats();
/// assert_eq!(s.data_ops, 1);
/// assert_eq!(s.direct_ops + s.fallback_ops, 1);
/// for (why, n) in &s.fallbacks {
///     println!("{n} operation(s) not direct: {why}");
/// }
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Data operations (`get`, `get_range`, `put`, `put_multipart`) that succeeded.
    pub data_ops: u64,
    /// Those that asked for direct I/O and got it entirely.
    pub direct_ops: u64,
    /// Those that asked for direct I/O and did not (entirely) get it; see `fallbacks`.
    pub fallback_ops: u64,
    /// Those that did not ask for direct I/O.
    pub buffered_ops: u64,
    /// Bytes returned by reads.
    pub bytes_read: u64,
    /// Bytes stored by writes.
    pub bytes_written: u64,
    /// Read and write calls the store made.
    pub io_calls: u64,
    /// Sum of the engine's per-file counters.
    pub counters: IoCounters,
    /// How many operations fell back, by reason.
    pub fallbacks: Vec<(Fallback, u64)>,
}

impl IoStats {
    /// How many operations fell back for `reason`.
    ///
    /// ```
    /// use s3dlio::direct_file::Fallback;
    /// use s3dlio::file_store_direct::IoStats;
    /// assert_eq!(IoStats::default().fallback_count(Fallback::FsNoDirect), 0);
    /// ```
    pub fn fallback_count(&self, reason: Fallback) -> u64 {
        self.fallbacks.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }

    pub(crate) fn add(&mut self, r: &IoReport) {
        self.data_ops += 1;
        match (r.direct_requested, r.fallback) {
            (false, _) => self.buffered_ops += 1,
            (true, None) => self.direct_ops += 1,
            (true, Some(f)) => {
                self.fallback_ops += 1;
                match self.fallbacks.iter_mut().find(|(x, _)| *x == f) {
                    Some((_, n)) => *n += 1,
                    None => self.fallbacks.push((f, 1)),
                }
            }
        }
        if matches!(r.operation, Operation::Get | Operation::GetRange) {
            self.bytes_read += r.bytes;
        } else {
            self.bytes_written += r.bytes;
        }
        self.io_calls += r.io_calls;
        let (c, d) = (&mut self.counters, &r.counters);
        c.direct_calls += d.direct_calls;
        c.direct_bytes += d.direct_bytes;
        c.bounced_calls += d.bounced_calls;
        c.bounced_bytes += d.bounced_bytes;
        c.buffered_bytes += d.buffered_bytes;
        c.fallback_calls += d.fallback_calls;
        c.einval_retries += d.einval_retries;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parsing() {
        let op = Operation::Get;
        assert_eq!(parse_uri(op, "file:///a/b").unwrap(), (Scheme::File, PathBuf::from("/a/b")));
        assert_eq!(parse_uri(op, "direct:///a/b").unwrap(), (Scheme::Direct, PathBuf::from("/a/b")));
        assert_eq!(parse_uri(op, "FILE:///a").unwrap(), (Scheme::File, PathBuf::from("/a")));
        assert_eq!(parse_uri(op, "file://localhost/a/b").unwrap(), (Scheme::File, PathBuf::from("/a/b")));
        assert!(matches!(parse_uri(op, "file://host/a"), Err(StoreError::InvalidUri { .. })));
        assert!(matches!(parse_uri(op, "file://rel/a"), Err(StoreError::InvalidUri { .. })));
        assert!(matches!(parse_uri(op, "/a/b"), Err(StoreError::InvalidUri { .. })));
        assert!(matches!(parse_uri(op, "file:///a\0b"), Err(StoreError::InvalidUri { .. })));
        match parse_uri(op, "s3://bucket/key") {
            Err(StoreError::UnsupportedScheme { scheme, uri, op }) => {
                assert_eq!((scheme.as_str(), uri.as_str(), op), ("s3", "s3://bucket/key", Operation::Get))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_messages_name_uri_operation_and_cause() {
        let e = StoreError::io(Operation::Put, "file:///x/y", io::Error::from_raw_os_error(libc::EACCES));
        let s = e.to_string();
        assert!(s.starts_with("put file:///x/y: "), "{s}");
        assert!(s.contains("ermission denied"), "{s}");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        let e = parse_uri(Operation::List, "gs://b/k").unwrap_err();
        assert!(e.to_string().contains("unsupported URI scheme \"gs\""), "{e}");
    }
}
