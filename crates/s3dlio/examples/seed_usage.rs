//! The seed document's usage example, verbatim, in a program that checks what it did.
//!
//! ```text
//! cargo run -p s3dlio --example seed_usage [DIRECTORY]
//! ```
//!
//! Writes a 3 MB object under DIRECTORY (default: a new directory in the system's temporary
//! directory), reads it back whole and as a range, checks the bytes, prints whether the I/O
//! went direct (and why not, if not), and removes what it created. Exits non-zero on any
//! mismatch. The integration test `tests/seed_usage.rs` runs it on every test filesystem.

// The seed binds `store` and `hp_store` without using every binding.
#![allow(unused_variables)]

use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
use s3dlio::object_store::ObjectStore;
use s3dlio::object_store::{direct_io_store_for_uri, high_performance_store_for_uri};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Bindings for the example's free names.
    let (base, own_base) = match std::env::args_os().nth(1) {
        Some(d) => (std::path::PathBuf::from(d), false),
        None => (std::env::temp_dir().join(format!("s3dlio-seed-usage-{}", std::process::id())), true),
    };
    let dir = base.join("seed-usage");
    let uri = format!("file://{}/object.bin", dir.display());
    let payload: Vec<u8> = (0..3_000_017u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let data: &[u8] = &payload;
    let offset: u64 = 4_097;
    let length: Option<u64> = Some(1_000_003);

    // ---- the seed's usage example, as written ----
    // Basic direct I/O configuration
    let config = FileSystemConfig::direct_io();
    let store = ConfigurableFileSystemObjectStore::new(config);

    // Or use factory functions
    let store = direct_io_store_for_uri("file:///path/to/data")?;
    let hp_store = high_performance_store_for_uri("file:///path/to/large/files")?;

    // All ObjectStore methods work with automatic fallback
    store.put(&uri, data).await?;
    let data = store.get(&uri).await?;
    let range = store.get_range(&uri, offset, length).await?;
    // ---- end of the seed's example ----

    if data[..] != payload[..] {
        return Err(format!("get returned {} bytes that differ from the {} written", data.len(), payload.len()).into());
    }
    let lo = offset as usize;
    let hi = match length {
        Some(l) => (lo + l as usize).min(payload.len()),
        None => payload.len(),
    };
    if range[..] != payload[lo..hi] {
        return Err(format!("get_range({offset}, {length:?}) returned wrong bytes").into());
    }
    let stats = ObjectStore::io_stats(store.as_ref()).ok_or("the file store keeps statistics")?;
    println!("put, get, get_range of {uri}: ok ({} bytes, range {} bytes)", data.len(), range.len());
    println!("direct: {} ({} of {} operations direct)", stats.fallback_ops == 0, stats.direct_ops, stats.data_ops);
    for (why, n) in &stats.fallbacks {
        println!("fallback: {n} operation(s): {why}");
    }
    store.delete(&uri).await?;
    std::fs::remove_dir(&dir)?;
    if own_base {
        std::fs::remove_dir(&base)?;
    }
    Ok(())
}
