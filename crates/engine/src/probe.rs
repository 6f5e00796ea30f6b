//! The O_DIRECT probe that the command (`s3dlio-direct probe`) and the store API
//! (`test_direct_io_support`) share: does a descriptor take O_DIRECT the way the library
//! turns it on (F_SETFL after open), proven by one aligned transfer the kernel accepts.

use crate::align::{self, Alignment};
use crate::buffer::AlignedBuf;
use crate::sys::{self, Errno};
use std::fmt;

/// Why a descriptor did not take direct I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// statx says the file cannot do O_DIRECT.
    FileNoDirect,
    /// `fcntl(F_SETFL, O_DIRECT)` failed: the filesystem refuses O_DIRECT.
    FsNoDirect(Errno),
    /// O_DIRECT was taken but an aligned write failed.
    Write(Errno),
    /// O_DIRECT was taken but an aligned read failed.
    Read(Errno),
    /// The aligned write and read went through but the bytes did not come back.
    Mismatch(usize),
    /// No aligned buffer could be had to test with.
    NoMemory,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Refusal::FileNoDirect => f.write_str("statx says this file cannot do O_DIRECT"),
            Refusal::FsNoDirect(e) => write!(f, "the filesystem refuses O_DIRECT ({})", errno_name(e)),
            Refusal::Write(e) => write!(f, "F_SETFL took O_DIRECT but an aligned write failed ({})", errno_name(e)),
            Refusal::Read(e) => write!(f, "F_SETFL took O_DIRECT but an aligned read failed ({})", errno_name(e)),
            Refusal::Mismatch(n) => write!(f, "an aligned direct write and read of {n} bytes did not round-trip"),
            Refusal::NoMemory => f.write_str("could not allocate an aligned buffer to test with"),
        }
    }
}

/// Turns O_DIRECT on for `fd` with F_SETFL (as the library does), then reads one aligned
/// block at offset 0 with direct I/O; on a `scratch` file it first writes that block (a
/// pattern) and checks the read brings it back. Returns the block size moved.
pub fn direct_round_trip(fd: i32, a: &Alignment, scratch: bool) -> Result<usize, Refusal> {
    if a.supported == Some(false) {
        return Err(Refusal::FileNoDirect);
    }
    sys::set_o_direct(fd, true).map_err(Refusal::FsNoDirect)?;
    let block = a.offset.max(a.read_offset).max(a.mem).max(1);
    let mem = a.mem.max(align::page_size());
    let mut back = AlignedBuf::new(block, mem).map_err(|_| Refusal::NoMemory)?;
    let mut out = None;
    if scratch {
        let mut b = AlignedBuf::new(block, mem).map_err(|_| Refusal::NoMemory)?;
        b.spare().iter_mut().enumerate().for_each(|(i, x)| *x = (i % 251) as u8);
        b.set_len(block);
        // SAFETY: `b` holds `block` initialised bytes.
        let n = unsafe { sys::pwrite(fd, b.as_slice().as_ptr(), block, 0) }.map_err(Refusal::Write)?;
        if n != block {
            return Err(Refusal::Mismatch(block));
        }
        out = Some(b);
    }
    // SAFETY: `back` is writable for `block` bytes.
    let n = unsafe { sys::pread(fd, back.spare().as_mut_ptr(), block, 0) }.map_err(Refusal::Read)?;
    back.set_len(n);
    match out {
        Some(b) if b.as_slice() != back.as_slice() => Err(Refusal::Mismatch(block)),
        _ => Ok(block),
    }
}

/// An errno value as `EINVAL: Invalid argument` (the symbolic name where it is a common
/// one, then the system's text).
pub fn errno_name(e: Errno) -> String {
    let name = match e {
        libc::EINVAL => "EINVAL",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        _ => "",
    };
    let text = std::io::Error::from_raw_os_error(e).to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    if name.is_empty() {
        text.to_string()
    } else {
        format!("{name}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_file_round_trips_or_says_why_not() {
        let dir = std::env::temp_dir().join(format!("s3dlio-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = std::ffi::CString::new(dir.join("p").to_str().unwrap()).unwrap();
        let fd = sys::openat(libc::AT_FDCWD, &path, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o600).unwrap();
        let a = align::discover(fd);
        match direct_round_trip(fd, &a, true) {
            Ok(n) => {
                assert!(n >= a.offset);
                assert!(sys::fcntl(fd, libc::F_GETFL, 0).unwrap() & libc::O_DIRECT != 0);
            }
            // tmpfs and the like: a refusal names its cause
            Err(r) => assert!(!r.to_string().is_empty()),
        }
        let _ = sys::close(fd);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_statx_refuses_is_not_touched() {
        let a = Alignment { supported: Some(false), ..Alignment::page() };
        assert_eq!(direct_round_trip(-1, &a, true), Err(Refusal::FileNoDirect));
        assert!(Refusal::FsNoDirect(libc::EINVAL).to_string().contains("EINVAL"));
    }
}
