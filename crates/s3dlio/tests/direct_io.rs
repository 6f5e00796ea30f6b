//! The seed's ten test areas, each run on the ordinary disk, a strict 4096-sector ext4 and
//! ramfs, and each checking that O_DIRECT really was in effect wherever the filesystem takes
//! it (and that the fallback was reported where it does not).

mod common;

use common::{fdinfo_during, filesystems, pattern, same, store, TestFs, FDINFO_O_DIRECT, FDINFO_O_SYNC};
use s3dlio::align;
use s3dlio::direct_file::Fallback;
use s3dlio::file_store_direct::{get_system_page_size, test_direct_io_support, FileSystemConfig, IoReport, IO_CHUNK};
use s3dlio::object_store::{
    direct_io_store_for_uri, high_performance_store_for_uri, store_for_uri, ObjectStore, Operation, StoreError,
};

const MIB: usize = 1 << 20;

/// Direct I/O was requested: on a filesystem that takes O_DIRECT it must have been fully in
/// effect; elsewhere the report must say why not.
fn assert_direct(fs: &TestFs, r: &IoReport, ctx: &str) {
    let ctx = format!("{} on {}: {ctx}", r.operation, fs.name());
    assert!(r.direct_requested, "{ctx}: direct I/O was requested");
    if fs.direct_expected {
        assert!(r.direct, "{ctx}: O_DIRECT not in effect: {r:?}");
        assert_ne!(r.fd_flags & libc::O_DIRECT, 0, "{ctx}: F_GETFL lacks O_DIRECT: {r:?}");
        assert_eq!(r.fallback, None, "{ctx}: {r:?}");
        assert_eq!((r.counters.fallback_calls, r.counters.einval_retries), (0, 0), "{ctx}: {r:?}");
        if r.bytes >= 3 * 4096 {
            assert!(r.counters.direct_bytes > 0, "{ctx}: no byte moved by O_DIRECT: {r:?}");
        }
    } else {
        assert!(!r.direct, "{ctx}: {r:?}");
        assert_eq!(r.fd_flags & libc::O_DIRECT, 0, "{ctx}: {r:?}");
        assert!(r.fallback.is_some(), "{ctx}: fallback without a reason: {r:?}");
        assert_eq!(r.counters.direct_bytes, 0, "{ctx}: {r:?}");
    }
}

/// Asserts what the kernel showed in /proc/self/fdinfo for the store's descriptors: where the
/// filesystem takes O_DIRECT, the object's descriptor had it (a buffered companion descriptor
/// that the engine opens for an unaligned tail may be seen too); elsewhere none had it.
fn assert_fdinfo(fs: &TestFs, seen: &[u32], ctx: &str) {
    let direct = seen.iter().filter(|&&f| f & FDINFO_O_DIRECT != 0).count();
    if fs.direct_expected {
        assert!(direct > 0, "{} {ctx}: no descriptor with O_DIRECT: {}", fs.name(), common::oct(seen));
    } else {
        assert_eq!(direct, 0, "{} {ctx}: O_DIRECT where unsupported: {}", fs.name(), common::oct(seen));
    }
}

// 1. Basic operations ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_operations() {
    for fs in filesystems("basic_operations") {
        let s = store(FileSystemConfig::direct_io());
        let data = pattern(MIB + 4321, 1);
        let uri = fs.uri("basic/obj.bin");
        assert!(!s.exists(&uri).await.unwrap());
        let r = s.put_with_report(&uri, &data).await.unwrap();
        assert_direct(&fs, &r, "put");
        assert_eq!(r.bytes, data.len() as u64);
        assert!(s.exists(&uri).await.unwrap());
        let m = s.stat(&uri).await.unwrap();
        assert_eq!(m.size, data.len() as u64);
        assert!(m.modified.elapsed().unwrap().as_secs() < 600);
        let (got, r) = s.get_with_report(&uri).await.unwrap();
        same(&got, &data, "get");
        assert_direct(&fs, &r, "get");
        assert_eq!(s.list(&fs.uri("basic/"), false).await.unwrap(), vec![uri.clone()]);
        s.delete(&uri).await.unwrap();
        assert!(!s.exists(&uri).await.unwrap());
        let e = s.delete(&uri).await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert_eq!((e.operation(), e.uri()), (Operation::Delete, uri.as_str()));
        let e = s.get(&uri).await.unwrap_err();
        assert!(e.is_not_found() && e.operation() == Operation::Get, "{e}");
        assert!(matches!(e, StoreError::Io { .. }));

        // The kernel's own view, once per filesystem: while the store reads and writes, its
        // descriptors carry O_DIRECT exactly where the filesystem takes it.
        let big = pattern(48 * MIB, 2);
        let big_uri = fs.uri("basic/fdinfo-check.bin");
        let seen = fdinfo_during("fdinfo-check.bin", || async {
            let r = s.put_with_report(&big_uri, &big).await.unwrap();
            assert_direct(&fs, &r, "put (fdinfo)");
        })
        .await;
        assert_fdinfo(&fs, &seen, "put");
        let seen = fdinfo_during("fdinfo-check.bin", || async {
            let (got, r) = s.get_with_report(&big_uri).await.unwrap();
            assert_direct(&fs, &r, "get (fdinfo)");
            assert_eq!(got.len(), big.len());
        })
        .await;
        assert_fdinfo(&fs, &seen, "get");
        s.delete(&big_uri).await.unwrap();
    }
}

// 2. Range reads, aligned and unaligned -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_aligned_and_unaligned() {
    for fs in filesystems("range_reads") {
        let direct = store(FileSystemConfig::direct_io());
        let buffered = store(FileSystemConfig::default());
        let data = pattern(3 * MIB + 1234, 3);
        let n = data.len() as u64;
        let uri = fs.uri("ranges.bin");
        direct.put(&uri, &data).await.unwrap();
        let ranges: &[(u64, Option<u64>)] = &[
            (0, Some(4096)),
            (4096, Some(8192)),
            (8192, Some(MIB as u64)),
            (0, Some(1)),
            (1, Some(100)),
            (511, Some(513)),
            (4095, Some(2)),
            (4097, Some(10_000)),
            (MIB as u64 - 1, Some(MIB as u64 + 2)),
            (12_345, None),
            (0, None),
            (100, Some(0)),
            (n - 10, Some(100)),
            (n - 4096, Some(4096)),
            (n, Some(10)),
            (n + 5000, Some(1)),
            (n + 5000, None),
        ];
        for &(off, len) in ranges {
            let lo = (off.min(n)) as usize;
            let hi = len.map_or(n, |l| (off + l).min(n)).max(off.min(n)) as usize;
            let ctx = format!("{} range ({off}, {len:?})", fs.name());
            let (got, r) = direct.get_range_with_report(&uri, off, len).await.unwrap();
            same(&got, &data[lo..hi], &ctx);
            assert_direct(&fs, &r, &ctx);
            let (b, rb) = buffered.get_range_with_report(&uri, off, len).await.unwrap();
            same(&b, &data[lo..hi], &format!("{ctx} (buffered)"));
            assert!(!rb.direct && !rb.direct_requested && rb.fallback.is_none(), "{ctx}: {rb:?}");
        }
        // direct:// asks for O_DIRECT even from a buffered store.
        let (got, r) = buffered.get_range_with_report(&fs.direct_uri("ranges.bin"), 4097, Some(9000)).await.unwrap();
        same(&got, &data[4097..13097], "direct:// range");
        assert_direct(&fs, &r, "direct:// range");
    }
}

// 3. Large files ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files() {
    for fs in filesystems("large_files") {
        let s = store(FileSystemConfig::direct_io());
        let data = pattern(64 * MIB + 17, 4);
        let size = data.len();
        let uri = fs.uri("large/big.bin");
        let r = s.put_with_report(&uri, &data).await.unwrap();
        assert_direct(&fs, &r, "put 64 MiB");
        assert!(r.io_calls as usize <= size.div_ceil(MIB), "put: {} calls for {size} bytes", r.io_calls);
        assert_eq!(r.largest_io, IO_CHUNK);
        assert_eq!(std::fs::metadata(fs.path("large/big.bin")).unwrap().len(), size as u64);
        let (got, r) = s.get_with_report(&uri).await.unwrap();
        same(&got, &data, "get 64 MiB");
        assert_direct(&fs, &r, "get 64 MiB");
        assert!(r.io_calls as usize <= size.div_ceil(MIB), "get: {} calls", r.io_calls);
        if fs.direct_expected {
            // Read straight into the returned buffer, one kernel call per store call; only the
            // partial last block is bounced.
            assert!(r.counters.direct_calls <= r.io_calls && r.counters.bounced_calls <= 1, "{r:?}");
            assert!(r.counters.bounced_bytes < r.offset_align as u64, "{r:?}");
            assert_eq!(r.counters.direct_bytes + r.counters.bounced_bytes, size as u64, "{r:?}");
        }
        let r = s.put_multipart_with_report(&uri, &data, Some(5 * MIB + 3)).await.unwrap();
        assert_direct(&fs, &r, "put_multipart 64 MiB");
        same(&std::fs::read(fs.path("large/big.bin")).unwrap(), &data, "after put_multipart");
        let (tail, r) = s.get_range_with_report(&uri, 40 * MIB as u64 + 3, None).await.unwrap();
        same(&tail, &data[40 * MIB + 3..], "tail of 64 MiB");
        assert_direct(&fs, &r, "tail range");
        s.delete(&uri).await.unwrap();
    }
}

// 4. Alignment -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alignment_of_sizes_and_buffers() {
    let sizes = [
        0usize,
        1,
        511,
        512,
        513,
        4095,
        4096,
        4097,
        65535,
        65536,
        65537,
        MIB - 1,
        MIB,
        MIB + 1,
        IO_CHUNK + 1,
        9 * MIB + 4095,
    ];
    for fs in filesystems("alignment") {
        let support = test_direct_io_support(&fs.dir);
        assert_eq!(support.supported, fs.direct_expected, "{}: {support:?}", fs.name());
        if fs.kind == common::FsKind::Strict4k {
            assert_eq!(support.offset_align, 4096, "{support:?}");
        }
        for config in [
            FileSystemConfig::direct_io(),
            FileSystemConfig { alignment: 65536, ..FileSystemConfig::direct_io() },
            FileSystemConfig { alignment: 3000, ..FileSystemConfig::direct_io() },
        ] {
            let s = store(config);
            for &n in &sizes {
                let ctx = format!("{} size {n} alignment {}", fs.name(), config.alignment);
                // An unaligned source slice, on purpose.
                let backing = pattern(n + 1, n as u32);
                let data = &backing[1..];
                let name = format!("align/{n}.bin");
                let r = s.put_with_report(&fs.uri(&name), data).await.unwrap();
                assert_direct(&fs, &r, &ctx);
                let on_disk = std::fs::read(fs.path(&name)).unwrap();
                same(&on_disk, data, &format!("{ctx}: file contents (no padding)"));
                let (got, r) = s.get_with_report(&fs.uri(&name)).await.unwrap();
                same(&got, data, &ctx);
                assert_direct(&fs, &r, &ctx);
                if n > 0 {
                    let (got, _) =
                        s.get_range_with_report(&fs.uri(&name), (n / 2) as u64, Some(n as u64)).await.unwrap();
                    same(&got, &data[n / 2..], &format!("{ctx}: second half"));
                }
            }
        }
    }
}

// 5. Page-size detection -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_detection() {
    let p = get_system_page_size();
    // SAFETY: no arguments.
    let sys = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    assert_eq!(p as libc::c_long, sys, "the kernel's page size is a valid one here");
    assert!(p.is_power_of_two() && (512..=65536).contains(&p));
    assert_eq!(p, align::page_size());
    assert_eq!(align::sanitize_page_size(-1), 4096);
    assert_eq!(align::sanitize_page_size(100), 4096);
    assert_eq!(align::sanitize_page_size(1 << 20), 4096);
    assert_eq!(align::sanitize_page_size(16384), 16384);
    for fs in filesystems("page_size_detection") {
        let support = test_direct_io_support(&fs.dir);
        if support.supported {
            // Page-aligned buffers (what the store uses) satisfy the filesystem.
            assert!(support.mem_align <= p && support.offset_align <= p, "{support:?}");
        } else {
            assert!(support.reason.is_some());
        }
        let s = store(FileSystemConfig { alignment: p, ..FileSystemConfig::direct_io() });
        let data = pattern(3 * p + 1, 5);
        let r = s.put_with_report(&fs.uri("page.bin"), &data).await.unwrap();
        assert_direct(&fs, &r, "put with page alignment");
        let (got, r) = s.get_with_report(&fs.uri("page.bin")).await.unwrap();
        same(&got, &data, "page-aligned config");
        assert_direct(&fs, &r, "get with page alignment");
        if fs.direct_expected {
            // Page-aligned buffers go to the kernel as they are; only the last partial block
            // (1 byte here) goes through a bounce buffer.
            assert_eq!((r.counters.bounced_calls, r.counters.bounced_bytes), (1, 1), "{r:?}");
            assert_eq!(r.counters.direct_bytes, 3 * p as u64, "{r:?}");
        }
    }
}

// 6. Fallback mechanisms -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_mechanisms() {
    for fs in filesystems("fallback") {
        let s = store(FileSystemConfig::direct_io());
        let data = pattern(2 * MIB + 5, 6);
        let uri = fs.uri("fb/obj");
        let rp = s.put_with_report(&uri, &data).await.unwrap();
        let (got, rg) = s.get_with_report(&uri).await.unwrap();
        same(&got, &data, "fallback get");
        assert_direct(&fs, &rp, "put");
        assert_direct(&fs, &rg, "get");
        let st = s.stats();
        let support = test_direct_io_support(&fs.dir);
        if fs.direct_expected {
            assert_eq!((st.direct_ops, st.fallback_ops), (2, 0), "{st:?}");
            assert!(support.supported && support.reason.is_none(), "{support:?}");
        } else {
            assert_eq!(rp.fallback, Some(Fallback::FsNoDirect));
            assert_eq!(rg.fallback, Some(Fallback::FsNoDirect));
            assert_eq!((st.direct_ops, st.fallback_ops), (0, 2), "{st:?}");
            assert_eq!(st.fallback_count(Fallback::FsNoDirect), 2, "{st:?}");
            assert_eq!(st.fallbacks.len(), 1, "{st:?}");
            assert!(!support.supported, "{support:?}");
            assert!(support.reason.as_deref().unwrap().contains("O_DIRECT"), "{support:?}");
            let big = pattern(64 * MIB, 6);
            let big_uri = fs.uri("fb/fdinfo-big");
            s.put(&big_uri, &big).await.unwrap();
            let seen = fdinfo_during("fb/fdinfo-big", || async {
                s.get(&big_uri).await.unwrap();
            })
            .await;
            assert_fdinfo(&fs, &seen, "fallback get");
        }

        // Below min_io_size: buffered on purpose, and reported as such.
        let small = store(FileSystemConfig { min_io_size: MIB, ..FileSystemConfig::direct_io() });
        let r = small.put_with_report(&fs.uri("fb/small"), &data[..1000]).await.unwrap();
        assert_eq!(r.fallback, Some(Fallback::BelowMinSize), "{r:?}");
        assert!(!r.direct && r.fd_flags & libc::O_DIRECT == 0, "{r:?}");
        let (got, r) = small.get_with_report(&fs.uri("fb/small")).await.unwrap();
        same(&got, &data[..1000], "small get");
        assert_eq!(r.fallback, Some(Fallback::BelowMinSize));
        let r = small.put_with_report(&fs.uri("fb/large"), &data).await.unwrap();
        assert_direct(&fs, &r, "above min_io_size");
        assert_eq!(small.stats().fallback_count(Fallback::BelowMinSize), 2);
    }
}

// 7. Factory functions ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_functions() {
    for fs in filesystems("factory_functions") {
        let base = fs.uri("");
        for (i, (name, s)) in [
            ("direct_io_store_for_uri", direct_io_store_for_uri(&base).unwrap()),
            ("high_performance_store_for_uri", high_performance_store_for_uri(&base).unwrap()),
            ("direct_io_store_for_uri(direct://)", direct_io_store_for_uri(&fs.direct_uri("")).unwrap()),
        ]
        .into_iter()
        .enumerate()
        {
            let data = pattern(MIB + 3, 7);
            let uri = fs.uri(&format!("factory/{i}.bin"));
            s.put(&uri, &data).await.unwrap();
            same(&s.get(&uri).await.unwrap(), &data, name);
            let st = s.io_stats().expect("the file store reports statistics");
            assert_eq!(st.data_ops, 2);
            if fs.direct_expected {
                assert_eq!(st.direct_ops, 2, "{name} on {}: {st:?}", fs.name());
            } else {
                assert_eq!(st.fallback_count(Fallback::FsNoDirect), 2, "{name}: {st:?}");
            }
            s.delete(&uri).await.unwrap();
        }
        // The buffered factory: file:// stays buffered, direct:// still asks for O_DIRECT.
        let s = store_for_uri(&base).unwrap();
        s.put(&fs.uri("factory/b"), b"abc").await.unwrap();
        s.put(&fs.direct_uri("factory/d"), &pattern(3 * 4096, 8)).await.unwrap();
        let st = s.io_stats().unwrap();
        assert_eq!(st.buffered_ops, 1);
        assert_eq!(st.direct_ops + st.fallback_ops, 1);
        assert_eq!(st.direct_ops, u64::from(fs.direct_expected));
    }
    for (uri, scheme) in [("s3://bucket/key", "s3"), ("gs://b/k", "gs"), ("az://c/k", "az"), ("https://h/x", "https")] {
        for f in [direct_io_store_for_uri, high_performance_store_for_uri, store_for_uri] {
            match f(uri) {
                Err(e @ StoreError::UnsupportedScheme { .. }) => {
                    assert!(e.to_string().contains(&format!("\"{scheme}\"")), "{e}");
                    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
                }
                Err(e) => panic!("{uri}: wrong error {e}"),
                Ok(_) => panic!("{uri} must be refused"),
            }
        }
    }
    for bad in ["relative/path", "file://host/x", "file://relative"] {
        assert!(matches!(direct_io_store_for_uri(bad), Err(StoreError::InvalidUri { .. })), "{bad}");
    }
    // Operations check the scheme too.
    let s = store(FileSystemConfig::direct_io());
    let e = s.get("s3://bucket/key").await.unwrap_err();
    assert!(matches!(&e, StoreError::UnsupportedScheme { scheme, op: Operation::Get, .. } if scheme == "s3"), "{e}");
}

// 8. Configuration -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration() {
    let d = FileSystemConfig::default();
    assert_eq!((d.direct_io, d.alignment, d.min_io_size, d.sync_writes), (false, 0, 0, false));
    let c = FileSystemConfig::direct_io();
    assert_eq!((c.direct_io, c.alignment, c.min_io_size, c.sync_writes), (true, 0, 0, false));
    let literal = FileSystemConfig { direct_io: true, alignment: 4096, min_io_size: 65536, sync_writes: true };
    assert_eq!(*store(literal).config(), literal);

    for fs in filesystems("configuration") {
        let data = pattern(24 * MIB + 9, 9);
        // Buffered: never O_DIRECT, and not counted as a fallback.
        let b = store(FileSystemConfig::default());
        let seen = fdinfo_during("cfg-buffered", || async {
            let r = b.put_with_report(&fs.uri("cfg-buffered"), &data).await.unwrap();
            assert!(!r.direct && !r.direct_requested && r.fallback.is_none(), "{r:?}");
        })
        .await;
        assert!(seen.iter().all(|f| f & FDINFO_O_DIRECT == 0), "buffered store used O_DIRECT: {}", common::oct(&seen));
        assert_eq!(b.stats().buffered_ops, b.stats().data_ops);

        // Direct.
        let s = store(FileSystemConfig::direct_io());
        let seen = fdinfo_during("cfg-direct", || async {
            let r = s.put_with_report(&fs.uri("cfg-direct"), &data).await.unwrap();
            assert_direct(&fs, &r, "direct_io()");
        })
        .await;
        assert_fdinfo(&fs, &seen, "direct_io() put");

        // Direct + sync: O_SYNC must come on top of O_DIRECT, not instead of it.
        let sync = store(FileSystemConfig { sync_writes: true, ..FileSystemConfig::direct_io() });
        let seen = fdinfo_during("cfg-sync", || async {
            let r = sync.put_with_report(&fs.uri("cfg-sync"), &data).await.unwrap();
            assert_direct(&fs, &r, "sync_writes");
            assert_eq!(r.fd_flags & libc::O_SYNC, libc::O_SYNC, "{r:?}");
        })
        .await;
        assert_fdinfo(&fs, &seen, "sync_writes put");
        // The object's descriptor (the one with O_DIRECT, or the only one on ramfs) has both.
        let main: Vec<u32> = seen.iter().copied().filter(|f| f & FDINFO_O_DIRECT != 0 || !fs.direct_expected).collect();
        assert!(!main.is_empty() && main.iter().all(|f| f & FDINFO_O_SYNC == FDINFO_O_SYNC), "{}", common::oct(&seen));
        same(&std::fs::read(fs.path("cfg-sync")).unwrap(), &data, "sync_writes contents");

        // A raised alignment still returns exact bytes.
        let wide = store(FileSystemConfig { alignment: 1 << 16, ..FileSystemConfig::direct_io() });
        let (got, r) = wide.get_range_with_report(&fs.uri("cfg-direct"), 70_000, Some(5)).await.unwrap();
        same(&got, &data[70_000..70_005], "alignment 64 KiB");
        assert_direct(&fs, &r, "alignment 64 KiB");
    }
}

// 9. Baseline: buffered file-system behaviour as the reference ------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_baseline() {
    for fs in filesystems("buffered_baseline") {
        let buffered = store(FileSystemConfig::default());
        let direct = store(FileSystemConfig::direct_io());
        let data = pattern(5 * MIB + 77, 10);
        // Written with std::fs, read by both stores.
        std::fs::create_dir_all(fs.path("base")).unwrap();
        std::fs::write(fs.path("base/plain.bin"), &data).unwrap();
        let (a, ra) = buffered.get_with_report(&fs.uri("base/plain.bin")).await.unwrap();
        let (b, rb) = direct.get_with_report(&fs.uri("base/plain.bin")).await.unwrap();
        same(&a, &data, "buffered get of a std::fs file");
        same(&b, &data, "direct get of a std::fs file");
        assert!(!ra.direct && ra.fallback.is_none());
        assert_direct(&fs, &rb, "direct get of a std::fs file");
        // Written by each store, read with std::fs: identical files.
        buffered.put(&fs.uri("base/from-buffered.bin"), &data).await.unwrap();
        direct.put(&fs.uri("base/from-direct.bin"), &data).await.unwrap();
        same(&std::fs::read(fs.path("base/from-buffered.bin")).unwrap(), &data, "buffered put");
        same(&std::fs::read(fs.path("base/from-direct.bin")).unwrap(), &data, "direct put");
        // Same listings, same metadata, same ranges.
        let lb = buffered.list(&fs.uri("base/"), true).await.unwrap();
        assert_eq!(lb, direct.list(&fs.uri("base/"), true).await.unwrap());
        assert_eq!(lb.len(), 3);
        assert_eq!(buffered.stat(&fs.uri("base/from-direct.bin")).await.unwrap().size, data.len() as u64);
        for (off, len) in [(0u64, Some(1u64)), (4095, Some(4099)), (data.len() as u64 - 3, Some(10))] {
            assert_eq!(
                buffered.get_range(&fs.uri("base/plain.bin"), off, len).await.unwrap(),
                direct.get_range(&fs.uri("base/plain.bin"), off, len).await.unwrap()
            );
        }
        // Listing rules: prefixes, recursion, temporary files hidden.
        std::fs::create_dir_all(fs.path("base/sub")).unwrap();
        std::fs::write(fs.path("base/sub/x"), b"x").unwrap();
        std::fs::write(fs.path("base/.s3dlio-tmp.1.2.ghost"), b"x").unwrap();
        assert_eq!(buffered.list(&fs.uri("base/"), false).await.unwrap().len(), 3);
        assert_eq!(buffered.list(&fs.uri("base/"), true).await.unwrap().len(), 4);
        assert_eq!(buffered.list(&fs.uri("base/from-"), false).await.unwrap().len(), 2);
        assert_eq!(buffered.list(&fs.uri("base/sub"), false).await.unwrap(), vec![fs.uri("base/sub/x")]);
        assert!(buffered.list(&fs.uri("no-such-dir/"), true).await.unwrap().is_empty());
        assert_eq!(buffered.list(&fs.direct_uri("base/sub/"), true).await.unwrap(), vec![fs.direct_uri("base/sub/x")]);
    }
}

// 10. High-performance configuration -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_performance_configuration() {
    let hp = FileSystemConfig::high_performance();
    assert_eq!((hp.direct_io, hp.alignment, hp.min_io_size, hp.sync_writes), (true, 0, 64 << 10, false));
    for fs in filesystems("high_performance") {
        let s = store(hp);
        let data = pattern(32 * MIB + 1, 11);
        let r = s.put_with_report(&fs.uri("hp/big"), &data).await.unwrap();
        assert_direct(&fs, &r, "hp put");
        assert_eq!(r.io_calls, 5, "32 MiB + 1 in 8 MiB calls: {r:?}");
        let (got, r) = s.get_with_report(&fs.uri("hp/big")).await.unwrap();
        same(&got, &data, "hp get");
        assert_direct(&fs, &r, "hp get");
        assert_eq!(r.io_calls, 5, "{r:?}");
        // Small objects stay buffered, visibly.
        let r = s.put_with_report(&fs.uri("hp/small"), &data[..10_000]).await.unwrap();
        assert_eq!(r.fallback, Some(Fallback::BelowMinSize));
        // Many objects at once, from clones of the store.
        let mut tasks = Vec::new();
        for i in 0..8u32 {
            let s = s.clone();
            let uri = fs.uri(&format!("hp/par-{i}"));
            tasks.push(tokio::spawn(async move {
                let d = pattern(4 * MIB + i as usize * 4099, i);
                let w = s.put_with_report(&uri, &d).await.unwrap();
                let (g, r) = s.get_with_report(&uri).await.unwrap();
                assert!(g[..] == d[..], "parallel object {i}");
                (w, r)
            }));
        }
        for t in tasks {
            let (w, r) = t.await.unwrap();
            assert_direct(&fs, &w, "parallel put");
            assert_direct(&fs, &r, "parallel get");
        }
        let st = s.stats();
        assert_eq!(st.data_ops, 3 + 16);
        assert_eq!(st.fallback_count(Fallback::BelowMinSize), 1);
        assert_eq!(st.direct_ops, if fs.direct_expected { 18 } else { 0 }, "{st:?}");
        let via_factory = high_performance_store_for_uri(&fs.uri("")).unwrap();
        same(&via_factory.get(&fs.uri("hp/big")).await.unwrap(), &data, "hp factory get");
    }
}

// Errors are typed: operation, URI and the OS error ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_operation_uri_and_os_error() {
    for fs in filesystems("errors") {
        let s = store(FileSystemConfig::direct_io());
        std::fs::create_dir_all(fs.path("errs/dir")).unwrap();
        let dir_uri = fs.uri("errs/dir");
        let e = s.get(&dir_uri).await.unwrap_err();
        assert_eq!((e.operation(), e.uri()), (Operation::Get, dir_uri.as_str()));
        assert_eq!(e.io_error().unwrap().raw_os_error(), Some(libc::EISDIR), "{e}");
        assert!(e.to_string().starts_with(&format!("get {dir_uri}: ")), "{e}");
        let e = s.put(&dir_uri, b"x").await.unwrap_err();
        assert_eq!(e.operation(), Operation::Put);
        assert!(e.io_error().is_some(), "{e}");
        assert!(s.list(&fs.uri("errs/"), true).await.unwrap().is_empty(), "a failed put leaves no temporary file");
        assert_eq!(std::fs::read_dir(fs.path("errs")).unwrap().count(), 1, "only errs/dir remains");
        let e = s.put(&fs.uri("errs/dir/"), b"x").await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidUri { op: Operation::Put, .. }), "{e}");
        let e = s.stat(&fs.uri("errs/missing")).await.unwrap_err();
        assert!(e.is_not_found() && e.operation() == Operation::Stat, "{e}");
        let e = s.get_range(&fs.uri("errs/missing"), 0, None).await.unwrap_err();
        assert!(e.is_not_found() && e.operation() == Operation::GetRange, "{e}");
        // A parent that is a file.
        std::fs::write(fs.path("errs/file"), b"f").unwrap();
        let e = s.put(&fs.uri("errs/file/child"), b"x").await.unwrap_err();
        assert!(e.io_error().is_some() && e.operation() == Operation::Put, "{e}");
        assert!(!s.exists(&fs.uri("errs/file/child")).await.unwrap());
        // Not a regular file: an error, not a hang.
        let fifo = std::ffi::CString::new(fs.path("errs/fifo").to_str().unwrap()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let e = s.get(&fs.uri("errs/fifo")).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        // The error converts into an io::Error that keeps kind and message.
        let io: std::io::Error = s.delete(&fs.uri("errs/missing")).await.unwrap_err().into();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(io.to_string().contains("delete "), "{io}");
    }
}
