//! Alignment discovery: what memory address, file offset and length O_DIRECT needs for a file.
//!
//! Sources, in order: `statx` STATX_DIOALIGN (and STATX_DIO_READ_ALIGN, which may allow
//! smaller read offsets), else the logical block size of the device under the file, else the
//! page size. `S3DLIO_DIRECT_ALIGN` can only raise these.

use crate::sys;
use std::fmt;

/// Where an [`Alignment`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlignSource {
    /// `statx` STATX_DIOALIGN (Linux 6.1+).
    Statx,
    /// The logical block size of the block device under the file.
    BlockDevice,
    /// Nothing better known: the page size.
    PageSize,
}

impl fmt::Display for AlignSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AlignSource::Statx => "statx",
            AlignSource::BlockDevice => "block device",
            AlignSource::PageSize => "page size",
        })
    }
}

/// O_DIRECT requirements of one file. All values are powers of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alignment {
    /// Required alignment of the buffer address.
    pub mem: usize,
    /// Required alignment of file offsets and lengths for writes (and reads, unless
    /// `read_offset` is smaller).
    pub offset: usize,
    /// Required alignment of file offsets and lengths for reads.
    pub read_offset: usize,
    /// Where the values came from.
    pub source: AlignSource,
    /// `Some(false)` when the kernel said this file cannot do O_DIRECT at all
    /// (statx reported zero alignment), `None` when it did not say.
    pub supported: Option<bool>,
}

impl Alignment {
    /// Page-size alignment for everything: always safe where O_DIRECT works at all.
    pub fn page() -> Self {
        let p = page_size();
        Alignment { mem: p, offset: p, read_offset: p, source: AlignSource::PageSize, supported: None }
    }

    /// True if a read of `len` bytes at `off` into `buf` can go to the kernel as is.
    #[inline]
    pub fn read_ok(&self, buf: usize, off: u64, len: usize) -> bool {
        buf & (self.mem - 1) == 0 && (off as usize | len) & (self.read_offset - 1) == 0
    }

    /// True if a write of `len` bytes at `off` from `buf` can go to the kernel as is.
    #[inline]
    pub fn write_ok(&self, buf: usize, off: u64, len: usize) -> bool {
        buf & (self.mem - 1) == 0 && (off as usize | len) & (self.offset - 1) == 0
    }

    /// Raises every alignment to at least `min` (a power of two). Returns a warning when
    /// `min` is below what the kernel requires (it is then raised to the kernel's).
    pub fn with_minimum(mut self, min: Option<usize>) -> (Self, Option<String>) {
        let Some(min) = min else { return (self, None) };
        let warning = (min < self.mem.max(self.offset)).then(|| {
            format!(
                "S3DLIO_DIRECT_ALIGN={min} is below what the kernel requires here \
                 (memory {}, offset {}); using the kernel's values",
                self.mem, self.offset
            )
        });
        self.mem = self.mem.max(min);
        self.offset = self.offset.max(min);
        self.read_offset = self.read_offset.max(min);
        (self, warning)
    }
}

/// The system page size: `sysconf(_SC_PAGESIZE)`, 4096 if that fails, clamped to
/// 512..=65536 and a power of two.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory arguments.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    sanitize_page_size(p)
}

/// The rule behind [`page_size`], separated so it can be tested.
pub fn sanitize_page_size(p: libc::c_long) -> usize {
    match usize::try_from(p) {
        Ok(p) if (512..=65536).contains(&p) && p.is_power_of_two() => p,
        _ => 4096,
    }
}

fn pow2_or_none(v: u32) -> Option<usize> {
    let v = v as usize;
    (v > 0 && v.is_power_of_two()).then_some(v)
}

/// Discovers the O_DIRECT alignment of the open file `fd`.
pub fn discover(fd: i32) -> Alignment {
    let mask = libc::STATX_DIOALIGN | libc::STATX_DIO_READ_ALIGN | libc::STATX_TYPE;
    let sx = sys::statx_fd(fd, mask).ok();
    if let Some(sx) = &sx {
        if sx.stx_mask & libc::STATX_DIOALIGN != 0 {
            if sx.stx_dio_mem_align == 0 || sx.stx_dio_offset_align == 0 {
                return Alignment { supported: Some(false), source: AlignSource::Statx, ..Alignment::page() };
            }
            if let (Some(mem), Some(offset)) =
                (pow2_or_none(sx.stx_dio_mem_align), pow2_or_none(sx.stx_dio_offset_align))
            {
                let read_offset = if sx.stx_mask & libc::STATX_DIO_READ_ALIGN != 0 {
                    pow2_or_none(sx.stx_dio_read_offset_align).unwrap_or(offset).min(offset)
                } else {
                    offset
                };
                return Alignment { mem, offset, read_offset, source: AlignSource::Statx, supported: Some(true) };
            }
        }
    }
    if let Some(lbs) = block_size(fd, sx.as_ref()) {
        return Alignment {
            mem: lbs,
            offset: lbs,
            read_offset: lbs,
            source: AlignSource::BlockDevice,
            supported: None,
        };
    }
    Alignment::page()
}

/// Logical block size of `fd` itself if it is a block device, else of the device holding it.
fn block_size(fd: i32, sx: Option<&libc::statx>) -> Option<usize> {
    let sx = sx?;
    if u32::from(sx.stx_mode) & libc::S_IFMT == libc::S_IFBLK {
        return sys::ioctl_int(fd, libc::BLKSSZGET).ok().and_then(|v| pow2_or_none(v as u32));
    }
    if sx.stx_dev_major == 0 {
        return None; // tmpfs, overlay, FUSE: no block device behind the file
    }
    let (maj, min) = (sx.stx_dev_major, sx.stx_dev_minor);
    // A partition's sysfs directory has no queue/; its parent (the disk) does.
    for suffix in ["queue/logical_block_size", "../queue/logical_block_size"] {
        let path = format!("/sys/dev/block/{maj}:{min}/{suffix}\0");
        let Ok(path) = std::ffi::CStr::from_bytes_with_nul(path.as_bytes()) else { continue };
        let mut buf = [0u8; 32];
        if let Ok(n) = sys::read_small_file(path, &mut buf) {
            let v = std::str::from_utf8(&buf[..n]).ok().and_then(|s| s.trim().parse::<u32>().ok());
            if let Some(v) = v.and_then(pow2_or_none) {
                return Some(v);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn page_size_rules() {
        assert_eq!(sanitize_page_size(-1), 4096);
        assert_eq!(sanitize_page_size(256), 4096);
        assert_eq!(sanitize_page_size(3000), 4096);
        assert_eq!(sanitize_page_size(131072), 4096);
        assert_eq!(sanitize_page_size(512), 512);
        assert_eq!(sanitize_page_size(65536), 65536);
        assert!(page_size().is_power_of_two());
    }

    #[test]
    fn discover_on_a_real_file_gives_powers_of_two() {
        let p = std::env::temp_dir().join(format!("s3dlio-align-{}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        let a = discover(f.as_raw_fd());
        assert!(a.mem.is_power_of_two() && a.offset.is_power_of_two() && a.read_offset.is_power_of_two());
        assert!(a.read_offset <= a.offset);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn override_raises_and_warns_when_too_small() {
        let a =
            Alignment { mem: 512, offset: 4096, read_offset: 4096, source: AlignSource::Statx, supported: Some(true) };
        let (b, w) = a.with_minimum(Some(8192));
        assert_eq!((b.mem, b.offset, b.read_offset), (8192, 8192, 8192));
        assert!(w.is_none());
        let (c, w) = a.with_minimum(Some(1024));
        assert_eq!((c.mem, c.offset), (1024, 4096));
        assert!(w.unwrap().contains("S3DLIO_DIRECT_ALIGN=1024"));
        assert_eq!(a.with_minimum(None).0, a);
    }

    #[test]
    fn alignment_predicates() {
        let a =
            Alignment { mem: 512, offset: 4096, read_offset: 512, source: AlignSource::Statx, supported: Some(true) };
        assert!(a.read_ok(1024, 512, 1024));
        assert!(!a.write_ok(1024, 512, 1024));
        assert!(a.write_ok(512, 8192, 4096));
        assert!(!a.read_ok(513, 0, 512));
    }
}
