//! `AlignedBuf`: a zero-filled buffer aligned for O_DIRECT, for callers outside the preload
//! path (the store API and the command's probe); the engine's own hot paths use `bufpool`.

use crate::align;
use memmap2::MmapMut;
use std::io;

/// A page-aligned (or more) buffer from an anonymous mapping: unmapped with exactly the
/// mapping it came from, zero-filled, and holding `len` bytes of data out of `cap`.
pub struct AlignedBuf {
    map: MmapMut,
    start: usize,
    cap: usize,
    len: usize,
}

impl AlignedBuf {
    /// `cap` bytes aligned to `align` (a power of two), zero-filled, holding no data yet.
    pub fn new(cap: usize, align: usize) -> io::Result<Self> {
        let page = align::page_size();
        let extra = if align > page { align } else { 0 };
        let total = cap.checked_add(extra).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let map = MmapMut::map_anon(total.max(1))?;
        let addr = map.as_ptr() as usize;
        let start = addr.next_multiple_of(align.max(1)) - addr;
        Ok(AlignedBuf { map, start, cap, len: 0 })
    }

    /// The whole capacity, to fill.
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.map[self.start..self.start + self.cap]
    }

    /// How many bytes, from the start, hold data (at most the capacity).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.cap);
    }

    /// Copies `src` in as the data (`src` must fit the capacity).
    pub fn fill_from(&mut self, src: &[u8]) {
        self.spare()[..src.len()].copy_from_slice(src);
        self.len = src.len();
    }

    /// The data.
    pub fn as_slice(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_bounded() {
        for align in [512, 4096, 1 << 16] {
            let mut b = AlignedBuf::new(10_000, align).unwrap();
            assert_eq!(b.spare().as_ptr() as usize % align, 0);
            assert!(b.spare().iter().all(|&x| x == 0));
            assert_eq!(b.capacity(), 10_000);
            b.fill_from(b"abc");
            assert_eq!(b.as_slice(), b"abc");
            b.set_len(usize::MAX);
            assert_eq!(b.as_slice().len(), 10_000);
        }
    }
}
