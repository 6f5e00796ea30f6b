//! s3dlio-engine: the direct-I/O engine (path matching, alignment discovery, bounce buffers,
//! read and write paths that keep buffered semantics over O_DIRECT, read-ahead, statistics).
//! The preload library `libs3dlio_direct.so` is a thin layer over [`engine`], whose modules
//! mirror its hook families; the store API (crate `s3dlio`) builds on [`direct_file`].

pub mod align;
pub mod behind;
pub mod buffer;
pub mod bufpool;
pub mod config;
pub mod direct_file;
pub mod engine;
pub mod fdtable;
pub mod filelog;
pub mod io;
pub mod libfd;
pub mod lock;
pub mod locks;
pub mod log;
pub mod mapped;
pub mod pathmatch;
pub mod probe;
pub mod read_path;
pub mod readahead;
pub mod safefile;
pub mod session;
pub mod stats;
pub mod statsdir;
pub mod sys;
pub mod twin;
pub mod usercopy;
pub mod write_path;
pub mod writing;
