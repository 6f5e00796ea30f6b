//! What the library exports for a program that looks it up by name to ask about itself (the
//! Python package's `s3dlio_direct.active()` and `stats()`, through ctypes): not hooks, and
//! nothing here runs unless called.

use crate::in_engine;
use libc::{c_char, c_int};
use s3dlio_engine::{engine, stats, sys};

/// 1 if the library manages files in this process (`S3DLIO_DIRECT_PATHS` set, and this
/// program selected by `S3DLIO_DIRECT_PROGRAMS` if that is set), else 0.
#[no_mangle]
pub extern "C" fn s3dlio_direct_active() -> c_int {
    c_int::from(engine::active())
}

/// This process's counters so far, as the statistics file holds them: one JSON object and a
/// newline. Copies at most `len - 1` bytes into `buf` and a NUL after them (as `snprintf`),
/// and returns the document's whole length: call again with a larger buffer when that is
/// `len` or more. Returns 0 if the document could not be made.
///
/// # Safety
/// `buf` must be valid for writing `len` bytes (or `len` must be 0).
#[no_mangle]
pub unsafe extern "C" fn s3dlio_direct_stats_json(buf: *mut c_char, len: usize) -> usize {
    let Some(doc) = in_engine(|_| {
        let mut comm = [0u8; 64];
        let n = sys::read_small_file(c"/proc/self/comm", &mut comm).unwrap_or(0);
        let program = String::from_utf8_lossy(&comm[..n]);
        Some(engine::STATS.to_json(sys::getpid(), stats::process_starttime(), program.trim_end()))
    }) else {
        return 0;
    };
    if len > 0 && !buf.is_null() {
        let n = doc.len().min(len - 1);
        // SAFETY: the caller gives `len` writable bytes at `buf`; n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(doc.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    doc.len()
}
