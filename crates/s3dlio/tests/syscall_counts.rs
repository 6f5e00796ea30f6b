//! The kernel's own count of read and write system calls (`/proc/self/io` `syscr`/`syscw`)
//! during whole-object I/O: at least 1 MiB per call, not one call per page as in the reference
//! implementation (which needs 16384 calls for 64 MiB). One test in its own binary, so no
//! other test's I/O is counted.

mod common;

use common::{filesystems, pattern};
use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
use s3dlio::object_store::ObjectStore;

fn proc_io() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io (task I/O accounting)");
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{k} in {s}"))
    };
    (get("syscr:"), get("syscw:"))
}

#[test]
fn whole_object_io_makes_few_large_system_calls() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for fs in filesystems("syscall_counts") {
            for config in [FileSystemConfig::direct_io(), FileSystemConfig::high_performance()] {
                let s = ConfigurableFileSystemObjectStore::new(config);
                let size = 64usize << 20;
                let data = pattern(size + 1, 1);
                let uri = fs.uri("count.bin");
                let (r0, w0) = proc_io();
                let rep = s.put_with_report(&uri, &data).await.unwrap();
                let (r1, w1) = proc_io();
                let (got, rep2) = s.get_with_report(&uri).await.unwrap();
                let (r2, w2) = proc_io();
                assert!(got[..] == data[..]);
                // 64 MiB + 1 byte: 9 store calls of at most 8 MiB. Allow for the kernel calls
                // around them (the unaligned last byte's companion write, reading /proc itself).
                let ctx = format!("{}: put {rep:?}, get {rep2:?}", fs.name());
                assert!(w1 - w0 <= 16, "{} write calls for a 64 MiB put; {ctx}", w1 - w0);
                assert!(r2 - r1 <= 16, "{} read calls for a 64 MiB get; {ctx}", r2 - r1);
                let _ = (r0, w2);
                assert_eq!(rep.direct, fs.direct_expected, "{ctx}");
                assert_eq!(rep2.direct, fs.direct_expected, "{ctx}");
                s.delete(&uri).await.unwrap();
            }
        }
    });
}
