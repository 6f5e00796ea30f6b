//! s3dlio: the seed's async object-store API (`file://` and `direct://` stores) over the
//! direct-I/O engine in `s3dlio-engine`, which the preload library uses too.

pub mod file_store_direct;
pub mod object_store;
mod store_api;

/// The engine's building blocks that the store's public API names.
pub use s3dlio_engine::{align, direct_file};
