//! Bytes between the engine's memory and the program's, copied by the kernel
//! (`process_vm_readv`/`process_vm_writev` on this process), so that bad program memory gives
//! the kernel's EFAULT or short count, never a fault in the program.
//!
//! The kernel copies page by page and stops at the first byte it cannot reach, returning the
//! bytes copied before it: the same count a buffered `read(2)`/`write(2)` returns for the
//! same buffer (both stop at the first unmapped, protected or read-only page). No probing
//! first (another thread may unmap in between) and no SIGSEGV handler (it would fight the
//! program's own). Where the calls are refused (a seccomp filter: EPERM or ENOSYS) the engine
//! stops serving reads and writes and hands them to the kernel as they are.

use crate::sys::{self, Errno, SysResult};
use std::sync::atomic::{AtomicBool, Ordering};

/// The copy was not made for a reason other than the program's memory (the calls are
/// refused, or the kernel had no memory for it): the caller has the kernel serve the call.
pub const REFUSED: Errno = libc::ENOSYS;

/// Cleared for good once the kernel refuses the copy calls.
static USABLE: AtomicBool = AtomicBool::new(true);

/// The largest count one read or write call moves (`MAX_RW_COUNT`): longer calls are clamped
/// by the kernel, so the engine leaves them to it.
pub const MAX_RW_COUNT: usize = (i32::MAX as usize) & !4095;

/// The top of the user address space the kernel's `access_ok` accepts on every x86-64 and
/// aarch64 configuration (47/48 bits); a range reaching past it is left to the kernel.
const USER_TOP: usize = 0x7fff_ffff_f000;

/// True while the kernel copies for the engine.
#[inline]
pub fn usable() -> bool {
    USABLE.load(Ordering::Relaxed)
}

/// True if `[addr, addr+len)` passes the kernel's `access_ok` (and the kernel copies for the
/// engine), so the engine may serve a call on it: anything else is answered by the kernel.
#[inline]
pub fn ordinary(addr: usize, len: usize) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= USER_TOP) && usable()
}

/// The count a read or write of `len` bytes at `addr` moves at most, clamped at
/// `MAX_RW_COUNT` as the kernel clamps it (after checking the whole range); `None` when the
/// engine leaves the call to the kernel (see [`ordinary`]).
#[inline]
pub fn clamped(addr: usize, len: usize) -> Option<usize> {
    ordinary(addr, len).then_some(len.min(MAX_RW_COUNT))
}

/// One kernel copy of up to `len` bytes, in pieces the kernel takes whole.
///
/// # Safety
/// As for [`sys::process_vm_rw`].
unsafe fn copy(write: bool, local: *mut u8, remote: usize, len: usize) -> SysResult<usize> {
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(MAX_RW_COUNT);
        // SAFETY: `[done, done+n)` lies inside the caller's local range.
        match unsafe { sys::process_vm_rw(write, local.add(done), remote + done, n) } {
            Ok(k) => {
                done += k;
                if k < n {
                    break;
                }
            }
            Err(libc::EFAULT) if done > 0 => break,
            Err(libc::EFAULT) => return Err(libc::EFAULT),
            Err(e) => {
                if e == libc::EPERM || e == libc::ENOSYS {
                    USABLE.store(false, Ordering::Relaxed);
                }
                return Err(REFUSED);
            }
        }
    }
    Ok(done)
}

/// Copies `src` into the program's memory at `dst`: the count up to the first byte the
/// program could not write there, EFAULT if none, or [`REFUSED`].
pub fn to_program(dst: *mut u8, src: &[u8]) -> SysResult<usize> {
    if src.is_empty() {
        return Ok(0);
    }
    // SAFETY: `src` is readable for its length; the kernel checks `dst`.
    unsafe { copy(true, src.as_ptr() as *mut u8, dst as usize, src.len()) }
}

/// Copies the program's memory at `src` into `dst`: the count up to the first byte the
/// program could not read there, EFAULT if none, or [`REFUSED`].
pub fn from_program(dst: &mut [u8], src: *const u8) -> SysResult<usize> {
    if dst.is_empty() {
        return Ok(0);
    }
    // SAFETY: `dst` is writable for its length; the kernel checks `src`.
    unsafe { copy(false, dst.as_mut_ptr(), src as usize, dst.len()) }
}

/// Reads a whole value of plain data (an offset, an array of iovecs) from the program's
/// memory: EFAULT unless every byte could be read, as the kernel's `copy_from_user`.
///
/// # Safety
/// `T` must be valid for any bit pattern.
pub unsafe fn read_value<T: Copy>(src: *const T) -> SysResult<T> {
    let mut v = std::mem::MaybeUninit::<T>::uninit();
    let size = std::mem::size_of::<T>();
    // SAFETY: the bytes of `v` are writable; any bit pattern is a valid `T` (caller).
    let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, size) };
    match from_program(bytes, src as *const u8)? {
        // SAFETY: every byte was written.
        n if n == size => Ok(unsafe { v.assume_init() }),
        _ => Err(libc::EFAULT),
    }
}

/// Reads the program's array of `cnt` iovecs into `out`: EFAULT unless all of it could be
/// read, as the kernel's own import of the array.
pub fn read_iovecs(iov: *const libc::iovec, cnt: usize, out: &mut Vec<libc::iovec>) -> SysResult<()> {
    out.clear();
    out.try_reserve_exact(cnt).map_err(|_| REFUSED)?;
    let bytes = cnt * std::mem::size_of::<libc::iovec>();
    // SAFETY: the reserved capacity holds `cnt` iovecs, plain data valid for any bytes.
    let dst = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, bytes) };
    match from_program(dst, iov as *const u8)? {
        n if n == bytes => {
            // SAFETY: all `cnt` iovecs were written.
            unsafe { out.set_len(cnt) };
            Ok(())
        }
        _ => Err(libc::EFAULT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two pages, the second PROT_NONE (or read-only).
    struct Guarded(*mut u8, usize);
    impl Guarded {
        fn new(second: i32) -> Self {
            let pg = crate::align::page_size();
            // SAFETY: a fresh anonymous mapping.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    2 * pg,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            // SAFETY: the second page of the mapping just made.
            assert_eq!(unsafe { libc::mprotect((p as *mut u8).add(pg) as *mut libc::c_void, pg, second) }, 0);
            Guarded(p as *mut u8, pg)
        }
    }
    impl Drop for Guarded {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`.
            unsafe { libc::munmap(self.0 as *mut libc::c_void, 2 * self.1) };
        }
    }

    #[test]
    fn copies_stop_at_the_first_bad_byte() {
        let g = Guarded::new(libc::PROT_NONE);
        let src = vec![7u8; 8192];
        // SAFETY: 100 bytes before the guard page, inside the mapping.
        let at = unsafe { g.0.add(g.1 - 100) };
        assert_eq!(to_program(at, &src), Ok(100));
        let mut back = vec![0u8; 8192];
        assert_eq!(from_program(&mut back, at), Ok(100));
        assert!(back[..100].iter().all(|&b| b == 7));
        // SAFETY: the guard page's address, not dereferenced.
        let bad = unsafe { g.0.add(g.1) };
        assert_eq!(to_program(bad, &src), Err(libc::EFAULT));
        assert_eq!(from_program(&mut back, bad), Err(libc::EFAULT));
        assert_eq!(to_program(std::ptr::null_mut(), &src), Err(libc::EFAULT));
        // SAFETY: an address the value straddles; never dereferenced by Rust.
        assert_eq!(unsafe { read_value(at.add(96) as *const u64) }, Err(libc::EFAULT));
        // SAFETY: as above.
        assert_eq!(unsafe { read_value(at as *const u64) }, Ok(0x0707_0707_0707_0707));
    }

    #[test]
    fn read_only_memory_is_not_written() {
        let g = Guarded::new(libc::PROT_READ);
        // SAFETY: the read-only page's address, not dereferenced by Rust.
        let ro = unsafe { g.0.add(g.1) };
        assert_eq!(to_program(ro, &[1, 2, 3]), Err(libc::EFAULT));
        let mut b = [9u8; 3];
        assert_eq!(from_program(&mut b, ro), Ok(3));
        assert_eq!(b, [0, 0, 0]);
    }

    #[test]
    fn iovec_arrays_are_read_whole_or_not_at_all() {
        let g = Guarded::new(libc::PROT_NONE);
        let sz = std::mem::size_of::<libc::iovec>();
        // SAFETY: two iovecs end exactly at the guard page; a third would cross it.
        let at = unsafe { g.0.add(g.1 - 2 * sz) } as *const libc::iovec;
        let mut v = Vec::new();
        assert_eq!(read_iovecs(at, 2, &mut v), Ok(()));
        assert_eq!(v.len(), 2);
        assert_eq!(read_iovecs(at, 3, &mut v), Err(libc::EFAULT));
        assert!(ordinary(4096, 100));
        assert_eq!(clamped(4096, MAX_RW_COUNT + 1), Some(MAX_RW_COUNT));
        assert!(!ordinary(USER_TOP - 10, 100));
        assert_eq!(clamped(usize::MAX - 10, 100), None);
    }
}
