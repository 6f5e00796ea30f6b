//! The async object-store API: the [`ObjectStore`] trait, its error type [`StoreError`], object
//! metadata, and factory functions that pick a store for a URI.
//!
//! The only implementation in this crate is [`ConfigurableFileSystemObjectStore`], which serves `file:///abs/path` and `direct:///abs/path` URIs over the same direct-I/O engine
//! as the preload library. `direct://` always asks for O_DIRECT, whatever the store's
//! configuration says.
//!
//! Every method runs its file work on tokio's blocking thread pool
//! (`tokio::task::spawn_blocking`), so it must be called from inside a tokio runtime.
//!
//! # Example: the seed document's usage
//!
//! ```
//! use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
//! use s3dlio::object_store::{direct_io_store_for_uri, high_performance_store_for_uri};
//! use s3dlio::object_store::ObjectStore;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #   let dir = std::env::temp_dir().join(format!("s3dlio-doc-os-{}", std::process::id()));
//! #   let uri = format!("file://{}/object.bin", dir.display());
//! #   let bytes = vec![7u8; 100_000];
//! #   let data: &[u8] = &bytes;
//! #   let (offset, length): (u64, Option<u64>) = (10, Some(20));
//!     // Basic direct I/O configuration
//!     let config = FileSystemConfig::direct_io();
//!     let store = ConfigurableFileSystemObjectStore::new(config);
//!
//!     // Or use factory functions
//!     let store = direct_io_store_for_uri("file:///path/to/data")?;
//!     let hp_store = high_performance_store_for_uri("file:///path/to/large/files")?;
//!
//!     // All ObjectStore methods work with automatic fallback
//!     store.put(&uri, data).await?;
//!     let data = store.get(&uri).await?;
//!     let range = store.get_range(&uri, offset, length).await?;
//! #   assert_eq!(data.len(), 100_000);
//! #   assert_eq!(&range[..], &[7u8; 20][..]);
//! #   drop(hp_store);
//! #   std::fs::remove_dir_all(&dir)?;
//!     Ok(())
//! }
//! ```

pub use crate::store_api::{ObjectMetadata, ObjectStore, Operation, Result, StoreError};

use crate::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
use crate::store_api::parse_uri;

fn factory(uri: &str, config: FileSystemConfig) -> Result<Box<dyn ObjectStore>> {
    parse_uri(Operation::CreateStore, uri)?;
    Ok(Box::new(ConfigurableFileSystemObjectStore::new(config)))
}

/// A store for `uri` with the default (buffered) configuration; `direct://` URIs still get
/// O_DIRECT. Fails with [`StoreError::UnsupportedScheme`] naming the scheme for anything but
/// `file://` and `direct://`.
///
/// ```
/// use s3dlio::object_store::{store_for_uri, StoreError};
/// assert!(store_for_uri("file:///data").is_ok());
/// match store_for_uri("s3://bucket/key") {
///     Err(StoreError::UnsupportedScheme { scheme, .. }) => assert_eq!(scheme, "s3"),
///     _ => panic!("s3:// must be refused"),
/// }
/// ```
pub fn store_for_uri(uri: &str) -> Result<Box<dyn ObjectStore>> {
    factory(uri, FileSystemConfig::default())
}

/// A store for `uri` doing direct I/O ([`FileSystemConfig::direct_io`]), falling back to
/// buffered I/O, reported in [`ObjectStore::io_stats`], where the filesystem refuses O_DIRECT.
/// The URI only selects the kind of store: the store serves any `file://` or `direct://` URI
/// and nothing is created or checked on disk here.
///
/// ```
/// use s3dlio::object_store::direct_io_store_for_uri;
/// let store = direct_io_store_for_uri("file:///path/to/data").unwrap();
/// let err = direct_io_store_for_uri("s3://bucket/data").err().unwrap();
/// assert!(err.to_string().contains("\"s3\""));
/// # drop(store);
/// ```
pub fn direct_io_store_for_uri(uri: &str) -> Result<Box<dyn ObjectStore>> {
    factory(uri, FileSystemConfig::direct_io())
}

/// A store for `uri` tuned for large files ([`FileSystemConfig::high_performance`]).
/// Same URI rules as [`direct_io_store_for_uri`].
///
/// ```
/// use s3dlio::object_store::high_performance_store_for_uri;
/// assert!(high_performance_store_for_uri("direct:///path/to/large/files").is_ok());
/// assert!(high_performance_store_for_uri("https://example.com/x").is_err());
/// ```
pub fn high_performance_store_for_uri(uri: &str) -> Result<Box<dyn ObjectStore>> {
    factory(uri, FileSystemConfig::high_performance())
}
