//! What the kernel says is mapped at an address (`PROCMAP_QUERY` on `/proc/self/maps`): the
//! check that a range the registry holds is still the file's before its page table entries
//! are dropped with MADV_DONTNEED, which on anything else (memory a raw `munmap` system call
//! freed and `mmap` reused, behind the hooks) would discard the program's data.

use crate::sys;
use std::sync::atomic::{AtomicU8, Ordering};

/// `struct procmap_query` of `<linux/fs.h>` (Linux 6.11+).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<ProcmapQuery>() as libc::c_ulong) << 16) | ((b'f' as libc::c_ulong) << 8) | 17;
/// `PROCMAP_QUERY_VMA_SHARED`.
const VMA_SHARED: u64 = 0x08;

/// Whether this kernel answers `PROCMAP_QUERY`: unknown, yes, no.
static SUPPORTED: AtomicU8 = AtomicU8::new(0);
const YES: u8 = 1;
const NO: u8 = 2;

/// Looks up the mappings of this process, opening `/proc/self/maps` at the first question
/// and closing it when dropped (a fork child must not ask through its parent's).
pub struct Checker {
    fd: i32,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

impl Checker {
    /// Nothing opened yet.
    pub const fn new() -> Checker {
        Checker { fd: -1 }
    }

    /// True only if the kernel confirms that every page of `[a, a+len)` is mapped from the
    /// file `ident` (st_dev, st_ino) at file offset `off + (x - a)`, shared if `shared`. False
    /// when it says otherwise or cannot say (a kernel before 6.11, no /proc).
    pub fn is_file_range(&mut self, a: usize, len: usize, ident: (u64, u64), off: u64, shared: bool) -> bool {
        if SUPPORTED.load(Ordering::Relaxed) == NO {
            return false;
        }
        if self.fd < 0 {
            let flags = libc::O_RDONLY | libc::O_CLOEXEC;
            match sys::openat(libc::AT_FDCWD, c"/proc/self/maps", flags, 0) {
                Ok(fd) => self.fd = fd,
                Err(_) => return false,
            }
        }
        let end = a.saturating_add(len) as u64;
        let mut x = a as u64;
        while x < end {
            let mut q =
                ProcmapQuery { size: std::mem::size_of::<ProcmapQuery>() as u64, query_addr: x, ..Default::default() };
            // SAFETY: `q` is a writable procmap_query of the size it declares; no name or
            // build id buffer is passed (their sizes are 0).
            let r = unsafe { libc::syscall(libc::SYS_ioctl, self.fd, PROCMAP_QUERY, &mut q as *mut ProcmapQuery) };
            if r < 0 {
                if matches!(sys::errno(), libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP) {
                    SUPPORTED.store(NO, Ordering::Relaxed);
                }
                return false;
            }
            SUPPORTED.store(YES, Ordering::Relaxed);
            let dev = libc::makedev(q.dev_major, q.dev_minor);
            let at = q.vma_offset.wrapping_add(x - q.vma_start);
            let want = off + (x - a as u64);
            if q.vma_start > x
                || q.vma_end <= x
                || q.inode != ident.1
                || dev != ident.0
                || at != want
                || (q.vma_flags & VMA_SHARED != 0) != shared
            {
                return false;
            }
            x = q.vma_end;
        }
        true
    }
}

/// One mapping as the kernel describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma {
    /// First address and end.
    pub start: usize,
    pub end: usize,
    /// File offset of `start`.
    pub offset: u64,
    /// The file's (st_dev, st_ino); (0, 0) for anonymous memory.
    pub ident: (u64, u64),
}

impl Checker {
    /// The mapping that holds address `x`, if the kernel says.
    pub fn at(&mut self, x: usize) -> Option<Vma> {
        if SUPPORTED.load(Ordering::Relaxed) == NO {
            return None;
        }
        if self.fd < 0 {
            self.fd = sys::openat(libc::AT_FDCWD, c"/proc/self/maps", libc::O_RDONLY | libc::O_CLOEXEC, 0).ok()?;
        }
        let mut q = ProcmapQuery {
            size: std::mem::size_of::<ProcmapQuery>() as u64,
            query_addr: x as u64,
            ..Default::default()
        };
        // SAFETY: `q` is a writable procmap_query of the size it declares; no name or build id
        // buffer is passed (their sizes are 0).
        let r = unsafe { libc::syscall(libc::SYS_ioctl, self.fd, PROCMAP_QUERY, &mut q as *mut ProcmapQuery) };
        if r < 0 || q.vma_start > x as u64 || q.vma_end <= x as u64 {
            return None;
        }
        Some(Vma {
            start: q.vma_start as usize,
            end: q.vma_end as usize,
            offset: q.vma_offset,
            ident: (libc::makedev(q.dev_major, q.dev_minor), q.inode),
        })
    }
}

/// True if this kernel answers `PROCMAP_QUERY` (asked once, about this function's own code).
pub fn supported() -> bool {
    if SUPPORTED.load(Ordering::Relaxed) == 0 {
        let _ = Checker::new().is_file_range(supported as *const () as usize, 1, (0, 0), 0, false);
    }
    SUPPORTED.load(Ordering::Relaxed) == YES
}

impl Drop for Checker {
    fn drop(&mut self) {
        if self.fd >= 0 {
            let _ = sys::close(self.fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_file_mapping_is_recognised_and_anonymous_memory_is_not() {
        let p = std::env::temp_dir().join(format!("s3dlio-vma-{}", std::process::id()));
        std::fs::write(&p, vec![7u8; 3 * 4096]).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let md = f.metadata().unwrap();
        let ident = (md.dev(), md.ino());
        let m = unsafe { memmap2::MmapOptions::new().offset(4096).len(8192).map(&f) }.unwrap();
        let anon = memmap2::MmapMut::map_anon(8192).unwrap();
        let mut c = Checker::new();
        let a = m.as_ptr() as usize;
        // memmap2 maps MAP_SHARED
        if SUPPORTED.load(Ordering::Relaxed) != NO && c.is_file_range(a, 8192, ident, 4096, true) {
            assert!(!c.is_file_range(a, 8192, ident, 0, true), "wrong offset");
            assert!(!c.is_file_range(a, 8192, ident, 4096, false), "shared, not private");
            assert!(!c.is_file_range(a, 8192, (ident.0, ident.1 + 1), 4096, true), "another file");
            assert!(!c.is_file_range(a, 3 * 4096, ident, 4096, true), "runs past the mapping");
            assert!(!c.is_file_range(anon.as_ptr() as usize, 8192, ident, 0, true), "anonymous memory");
        } else {
            // a kernel before 6.11: the check never confirms, so nothing is dropped unchecked
            assert_eq!(SUPPORTED.load(Ordering::Relaxed), NO);
        }
        drop(m);
        std::fs::remove_file(&p).unwrap();
    }
}
