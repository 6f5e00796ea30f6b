//! Every allocation is freed with the layout it was allocated with (the reference
//! implementation built a `Vec<u8>` over a 4096-aligned allocation, so `Vec`'s drop freed it
//! with alignment 1: undefined behaviour that glibc happens to tolerate).
//!
//! This binary's global allocator records each allocation's size and alignment next to it and
//! counts frees whose layout differs. A self-test shows that it catches the reference's bug.

mod common;

use common::{filesystems, pattern};
use s3dlio::file_store_direct::{ConfigurableFileSystemObjectStore, FileSystemConfig};
use s3dlio::object_store::ObjectStore;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Checking;

static MISMATCHES: AtomicUsize = AtomicUsize::new(0);
const HEADER: usize = 16;

fn header_for(align: usize) -> usize {
    align.max(HEADER)
}

// SAFETY: forwards to System with a larger layout and keeps the caller's block inside it.
unsafe impl GlobalAlloc for Checking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let h = header_for(layout.align());
        let Ok(outer) = Layout::from_size_align(layout.size() + h, layout.align().max(HEADER)) else {
            return std::ptr::null_mut();
        };
        // SAFETY: non-zero size.
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        // SAFETY: `h >= 16` bytes precede the returned block inside the allocation.
        unsafe {
            let p = base.add(h);
            (p.sub(HEADER) as *mut usize).write_unaligned(layout.size());
            (p.sub(HEADER / 2) as *mut usize).write_unaligned(layout.align());
            p
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` came from `alloc`, which wrote the header.
        let (size, align) = unsafe {
            ((p.sub(HEADER) as *const usize).read_unaligned(), (p.sub(HEADER / 2) as *const usize).read_unaligned())
        };
        if (size, align) != (layout.size(), layout.align()) {
            MISMATCHES.fetch_add(1, Ordering::Relaxed);
        }
        // Free with what was really allocated, so the process survives to report it.
        let h = header_for(align);
        // SAFETY: the same block and outer layout as in `alloc`.
        unsafe { System.dealloc(p.sub(h), Layout::from_size_align_unchecked(size + h, align.max(HEADER))) };
    }
}

#[global_allocator]
static ALLOC: Checking = Checking;

#[test]
fn aligned_buffers_are_freed_with_their_layout() {
    // Self-test: the reference's pattern is caught.
    let before = MISMATCHES.load(Ordering::Relaxed);
    // SAFETY: a valid layout; the Vec below frees it with the wrong one, which this allocator
    // tolerates and counts (that is the point of the self-test).
    unsafe {
        let layout = Layout::from_size_align(8192, 4096).unwrap();
        let ptr = std::alloc::alloc(layout);
        assert!(!ptr.is_null());
        drop(Vec::from_raw_parts(ptr, 0, 8192));
    }
    assert_eq!(MISMATCHES.load(Ordering::Relaxed), before + 1, "the checking allocator must catch a wrong layout");

    let base = MISMATCHES.load(Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        for fs in filesystems("alloc_layout") {
            for config in [
                FileSystemConfig::direct_io(),
                FileSystemConfig { alignment: 65536, ..FileSystemConfig::high_performance() },
            ] {
                let s = ConfigurableFileSystemObjectStore::new(config);
                for size in [0usize, 1, 4095, 4097, 1 << 20, (9 << 20) + 3] {
                    let data = pattern(size, size as u32);
                    let uri = fs.uri(&format!("layout/{size}"));
                    s.put(&uri, &data).await.unwrap();
                    s.put_multipart(&uri, &data, Some(4097)).await.unwrap();
                    let got = s.get(&uri).await.unwrap();
                    assert!(got[..] == data[..]);
                    let part = s.get_range(&uri, 1, Some(size as u64)).await.unwrap();
                    drop((got, part));
                    s.stat(&uri).await.unwrap();
                }
                s.list(&fs.uri("layout/"), true).await.unwrap();
            }
            s3dlio::file_store_direct::test_direct_io_support(&fs.dir);
        }
    });
    drop(rt);
    assert_eq!(MISMATCHES.load(Ordering::Relaxed), base, "some allocation was freed with a different layout");
}
