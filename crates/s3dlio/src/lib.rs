//! s3dlio: a direct-I/O engine (alignment discovery, bounce buffers, read and write paths
//! that keep buffered semantics over O_DIRECT) and, with the `store` feature, an object-store
//! API over it. The preload library `libs3dlio_direct.so` is a thin layer over [`engine`].

pub mod align;
pub mod bufpool;
pub mod companion;
pub mod config;
pub mod direct_file;
pub mod engine;
pub mod fdtable;
#[cfg(feature = "store")]
pub mod file_store_direct;
pub mod io;
pub mod lock;
pub mod log;
#[cfg(feature = "store")]
pub mod object_store;
pub mod pathmatch;
pub mod read_path;
pub mod readahead;
pub mod stats;
pub mod stream;
pub mod sys;
pub mod write_path;
