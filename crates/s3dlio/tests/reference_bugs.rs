//! Regression tests for the reference implementation's known bugs; each fails on it.
//!
//! 1. `sync_writes` set O_SYNC with a second `custom_flags`, replacing O_DIRECT.
//! 2. Whole-object I/O was one system call per page.
//! 3. `put_multipart` with a part size that is not a multiple of the alignment left zero
//!    padding inside the file.
//! 4. `get_range` past the end of file returned different bytes on the direct and the
//!    fallback paths.
//! 5. Every fallback was silent.
//!
//! (Aligned buffers freed with the wrong layout: `tests/alloc_layout.rs`. System-call counts
//! measured by the kernel: `tests/syscall_counts.rs`.)

mod common;

use common::{fdinfo_during, filesystems, pattern, same, store, FsKind, FDINFO_O_DIRECT, FDINFO_O_SYNC};
use s3dlio::direct_file::Fallback;
use s3dlio::file_store_direct::{test_direct_io_support, FileSystemConfig, MIN_PART_IO};
use s3dlio::object_store::{direct_io_store_for_uri, ObjectStore};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_writes_keep_o_direct() {
    for fs in filesystems("sync_writes_keep_o_direct") {
        for config in [
            FileSystemConfig { sync_writes: true, ..FileSystemConfig::direct_io() },
            FileSystemConfig { sync_writes: true, ..FileSystemConfig::high_performance() },
        ] {
            let s = store(config);
            let data = pattern(24 * MIB, 1);
            let reports = std::sync::Mutex::new(Vec::new());
            let seen = fdinfo_during("sync-obj", || async {
                let r = s.put_with_report(&fs.uri("sync-obj"), &data).await.unwrap();
                reports.lock().unwrap().push(r);
            })
            .await;
            // The kernel's view: the object's descriptor has O_DIRECT *and* O_SYNC (04010000).
            // O_DIRECT comes by F_SETFL after the open, so a sample may catch the descriptor
            // with O_SYNC alone in between: the word with both must be seen where the
            // filesystem takes O_DIRECT, and never elsewhere.
            let with_sync: Vec<u32> = seen.iter().copied().filter(|f| f & FDINFO_O_SYNC == FDINFO_O_SYNC).collect();
            assert!(!with_sync.is_empty(), "{}: no O_SYNC descriptor: {}", fs.name(), common::oct(&seen));
            let direct_seen = with_sync.iter().any(|f| f & FDINFO_O_DIRECT != 0);
            assert_eq!(direct_seen, fs.direct_expected, "{}: fdinfo flags {}", fs.name(), common::oct(&with_sync));
            for r in reports.into_inner().unwrap() {
                assert_eq!(r.fd_flags & libc::O_SYNC, libc::O_SYNC, "{r:?}");
                assert_eq!(r.direct, fs.direct_expected, "{}: {r:?}", fs.name());
                assert_eq!(r.fallback.is_none(), fs.direct_expected, "{r:?}");
            }
            same(&std::fs::read(fs.path("sync-obj")).unwrap(), &data, "sync put");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_object_io_uses_large_calls() {
    for fs in filesystems("whole_object_io_uses_large_calls") {
        let s = store(FileSystemConfig::direct_io());
        for size in [40 * MIB + 1, 16 * MIB, 3 * MIB + 4095] {
            let data = pattern(size, size as u32);
            let limit = size.div_ceil(MIB) as u64; // at least 1 MiB per call but the last
            let w = s.put_with_report(&fs.uri("large-io"), &data).await.unwrap();
            let (got, r) = s.get_with_report(&fs.uri("large-io")).await.unwrap();
            same(&got, &data, "large-io get");
            for rep in [&w, &r] {
                let ctx = format!("{} {} of {size}: {rep:?}", fs.name(), rep.operation);
                assert!(rep.io_calls <= limit, "{ctx}");
                assert!(rep.largest_io >= MIB.min(size), "{ctx}");
                assert_eq!(rep.direct, fs.direct_expected, "{ctx}");
                if fs.direct_expected {
                    // Each store call is at most one direct kernel call (the engine did not
                    // split it into pages), and the direct bytes are nearly all of the object.
                    assert!(rep.counters.direct_calls <= rep.io_calls, "{ctx}");
                    assert!(rep.counters.direct_bytes as usize + 4096 >= size, "{ctx}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_with_odd_part_sizes_leaves_no_padding() {
    for fs in filesystems("multipart_no_padding") {
        let s = store(FileSystemConfig::direct_io());
        let data = pattern(5 * MIB + 333, 3);
        // Replace a larger object first: nothing of it may remain either.
        std::fs::write(fs.path("mp"), vec![0xAA; 9 * MIB]).unwrap();
        for part in [1usize, 1000, 4097, 65_537, MIB + 1, 3 * MIB - 7, 100 * MIB] {
            let ctx = format!("{} part size {part}", fs.name());
            let r = s.put_multipart_with_report(&fs.uri("mp"), &data, Some(part)).await.unwrap();
            let on_disk = std::fs::read(fs.path("mp")).unwrap();
            same(&on_disk, &data, &ctx);
            assert_eq!(r.bytes, data.len() as u64);
            assert_eq!(r.direct, fs.direct_expected, "{ctx}: {r:?}");
            assert!(r.largest_io >= MIN_PART_IO, "{ctx}: {r:?}");
            same(&s.get(&fs.uri("mp")).await.unwrap(), &data, &ctx);
        }
        // Tiny objects in tiny parts.
        for n in [0usize, 1, 4095, 4097] {
            s.put_multipart(&fs.uri("mp-small"), &data[..n], Some(7)).await.unwrap();
            same(&std::fs::read(fs.path("mp-small")).unwrap(), &data[..n], "small multipart");
        }
        assert!(
            s.put_multipart(&fs.uri("mp-small"), &data, Some(0)).await.unwrap_err().kind()
                == std::io::ErrorKind::InvalidInput
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_tail_is_the_same_direct_and_fallback() {
    let size = 3 * 4096 + 10_007u64;
    let data = pattern(size as usize, 4);
    let ranges: &[(u64, Option<u64>)] = &[
        (size - 5, Some(4096)),
        (size - 4097, Some(8192)),
        (size - size % 4096, Some(4 * 4096)),
        (4096, Some(size)),
        (0, Some(size + 10_000)),
        (size - 1, None),
        (size, Some(1)),
        (size + 1, None),
        (size + 4096, Some(4096)),
    ];
    // Results from every bed and path, compared with each other and with the file's bytes.
    let mut answers: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for fs in filesystems("short_tail_same") {
        std::fs::write(fs.path("tail"), &data).unwrap();
        for (label, config) in [("direct", FileSystemConfig::direct_io()), ("buffered", FileSystemConfig::default())] {
            let s = store(config);
            let mut got = Vec::new();
            for &(off, len) in ranges {
                let (b, r) = s.get_range_with_report(&fs.uri("tail"), off, len).await.unwrap();
                if label == "direct" {
                    assert_eq!(r.direct, fs.direct_expected, "{}: {r:?}", fs.name());
                }
                got.push(b.to_vec());
            }
            answers.push((format!("{} {label}", fs.name()), got));
        }
    }
    for (i, &(off, len)) in ranges.iter().enumerate() {
        let lo = off.min(size) as usize;
        let hi = len.map_or(size, |l| (off + l).min(size)) as usize;
        for (who, got) in &answers {
            same(&got[i], &data[lo..hi.max(lo)], &format!("{who}: range ({off}, {len:?})"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_is_never_silent() {
    for fs in filesystems("fallback_is_never_silent") {
        let s = direct_io_store_for_uri(&fs.uri("")).unwrap();
        s.put(&fs.uri("loud"), &pattern(MIB, 5)).await.unwrap();
        s.get(&fs.uri("loud")).await.unwrap();
        s.get_range(&fs.uri("loud"), 3, Some(5)).await.unwrap();
        let st = s.io_stats().expect("statistics through the trait object");
        let support = test_direct_io_support(&fs.dir);
        if fs.direct_expected {
            assert_eq!((st.direct_ops, st.fallback_ops), (3, 0), "{}: {st:?}", fs.name());
            assert!(support.supported);
        } else {
            assert_eq!(fs.kind, FsKind::Ramfs);
            assert_eq!((st.direct_ops, st.fallback_ops), (0, 3), "{st:?}");
            assert_eq!(st.fallbacks, vec![(Fallback::FsNoDirect, 3)]);
            assert_eq!(st.counters.direct_bytes, 0);
            assert!(st.counters.fallback_calls >= 3, "{st:?}");
            assert!(!support.supported && support.reason.is_some(), "{support:?}");
        }
    }
}
