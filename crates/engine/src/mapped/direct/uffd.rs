//! userfaultfd(2) for the direct mappings: a descriptor that also serves faults the kernel
//! takes on the program's behalf (never `UFFD_USER_MODE_ONLY`, so a mapped page handed to
//! write(2) is filled, not refused with EFAULT), from the system call or `/dev/userfaultfd`,
//! and the few ioctls the handler uses. Raw system calls only (the library hooks none of them).

use crate::sys::{self, SysResult};

const UFFD_API: u64 = 0xaa;
/// `_IOWR(0xaa, 0x3f, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `_IOWR(0xaa, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
/// `_IOR(0xaa, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02;
/// `_IOWR(0xaa, 0x07, struct uffdio_continue)`.
const UFFDIO_CONTINUE: libc::c_ulong = 0xc020_aa07;
/// `_IO(0xaa, 0x00)` on `/dev/userfaultfd`.
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xaa00;
const REGISTER_MODE_MISSING: u64 = 1;
const REGISTER_MODE_MINOR: u64 = 1 << 2;
/// `UFFD_EVENT_PAGEFAULT`.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_REMAP`: a registered range was moved by an `mremap` the hooks did not see.
pub const EVENT_REMAP: u8 = 0x14;
/// `UFFD_FEATURE_EVENT_REMAP`: a moved range stays registered (without it, the moved pages
/// would be filled with zeros by the kernel on the next touch).
const FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// `UFFD_FEATURE_MINOR_SHMEM`: a touch of a page the memfd holds but the program's mapping
/// does not map yet is a fault too (a minor one), so the handler reads straight into the
/// memfd and the program sees a page only once its bytes are whole.
const FEATURE_MINOR_SHMEM: u64 = 1 << 10;

/// Why this process cannot have a userfaultfd that serves the kernel's own faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not privileged (`vm.unprivileged_userfaultfd=0` and no access to `/dev/userfaultfd`).
    Privilege,
    /// A seccomp filter refused the system call.
    Seccomp,
    /// The kernel has no userfaultfd, or refused the handshake.
    Kernel,
}

impl Refusal {
    /// Why, for people.
    pub const fn text(self) -> &'static str {
        match self {
            Refusal::Privilege => {
                "no userfaultfd that serves the kernel's faults (not root: vm.unprivileged_userfaultfd=0 and no \
                 access to /dev/userfaultfd)"
            }
            Refusal::Seccomp => "a seccomp filter refuses userfaultfd (containers' default profiles)",
            Refusal::Kernel => "this kernel has no userfaultfd or no PROCMAP_QUERY (Linux 6.11+)",
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Register {
    range: Range,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct Continue {
    range: Range,
    mode: u64,
    mapped: i64,
}

/// `struct uffd_msg`, as the handler reads it (the page fault member of the union).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct Msg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    /// The event's arguments: a page fault's flags and address; a remap's from, to and length.
    pub arg: [u64; 3],
}

fn ioctl<T>(fd: i32, req: libc::c_ulong, arg: &mut T) -> SysResult<()> {
    // SAFETY: `arg` is the structure the request `req` reads and writes, of its size.
    let r = unsafe { libc::syscall(libc::SYS_ioctl, fd, req, arg as *mut T) };
    if r < 0 {
        Err(sys::errno())
    } else {
        Ok(())
    }
}

/// True if a seccomp filter is installed on this thread (`Seccomp: 2` in /proc/self/status).
fn seccomp_filtered() -> bool {
    let mut b = [0u8; 4096];
    let n = sys::read_small_file(c"/proc/self/status", &mut b).unwrap_or(0);
    b[..n].split(|&c| c == b'\n').any(|l| l.starts_with(b"Seccomp:") && l.trim_ascii_end().ends_with(b"2"))
}

/// A new userfaultfd (close-on-exec, non-blocking) that serves faults in the kernel too,
/// after the API handshake; or why there is none.
pub fn open() -> Result<i32, Refusal> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: userfaultfd takes only flags.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    let fd = if r >= 0 {
        r as i32
    } else {
        let first = sys::errno();
        match sys::openat(libc::AT_FDCWD, c"/dev/userfaultfd", libc::O_RDWR | libc::O_CLOEXEC, 0) {
            Ok(dev) => {
                // SAFETY: USERFAULTFD_IOC_NEW takes the flags as an integer argument.
                let r = unsafe { libc::syscall(libc::SYS_ioctl, dev, USERFAULTFD_IOC_NEW, flags as libc::c_long) };
                let _ = sys::close(dev);
                if r < 0 {
                    return Err(if seccomp_filtered() { Refusal::Seccomp } else { Refusal::Privilege });
                }
                r as i32
            }
            Err(_) if first == libc::ENOSYS && !seccomp_filtered() => return Err(Refusal::Kernel),
            Err(_) if seccomp_filtered() => return Err(Refusal::Seccomp),
            Err(_) => return Err(Refusal::Privilege),
        }
    };
    let features = FEATURE_EVENT_REMAP | FEATURE_MINOR_SHMEM;
    let mut api = Api { api: UFFD_API, features, ..Api::default() };
    if ioctl(fd, UFFDIO_API, &mut api).is_err() || api.ioctls & (1 << 0x3f) == 0 || api.features & features != features
    {
        let _ = sys::close(fd);
        return Err(Refusal::Kernel);
    }
    Ok(fd)
}

/// Registers `[start, start+len)` (a mapping of a memfd) for missing and minor faults.
pub fn register(fd: i32, start: usize, len: usize) -> SysResult<()> {
    let mode = REGISTER_MODE_MISSING | REGISTER_MODE_MINOR;
    let mut r = Register { range: Range { start: start as u64, len: len as u64 }, mode, ioctls: 0 };
    ioctl(fd, UFFDIO_REGISTER, &mut r)?;
    if r.ioctls & (1 << 0x07) == 0 {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// Wakes the threads waiting on faults in `[start, start+len)` (they fault again).
pub fn wake(fd: i32, start: usize, len: usize) {
    let mut r = Range { start: start as u64, len: len as u64 };
    let _ = ioctl(fd, UFFDIO_WAKE, &mut r);
}

/// Maps the memfd's pages behind `[start, start+len)` into the registered range and wakes
/// their waiters: the bytes mapped (less than `len` when a page there is mapped already:
/// EEXIST, or the memfd holds none: EFAULT), or the error when nothing was mapped.
pub fn map_present(fd: i32, start: usize, len: usize) -> SysResult<usize> {
    let mut c = Continue { range: Range { start: start as u64, len: len as u64 }, mode: 0, mapped: 0 };
    match ioctl(fd, UFFDIO_CONTINUE, &mut c) {
        Ok(()) => Ok(len),
        Err(_) if c.mapped > 0 => Ok(c.mapped as usize),
        Err(e) => Err(e),
    }
}

/// Reads one message; `None` when there is none now (EAGAIN) or the read failed.
pub fn read_msg(fd: i32) -> Option<Msg> {
    let mut m = Msg::default();
    // SAFETY: `m` is a writable uffd_msg of the size asked for.
    let n = unsafe { sys::read(fd, &mut m as *mut Msg as *mut u8, std::mem::size_of::<Msg>()) };
    matches!(n, Ok(k) if k == std::mem::size_of::<Msg>()).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structures_are_the_kernels() {
        assert_eq!(std::mem::size_of::<Msg>(), 32);
        assert_eq!(std::mem::size_of::<Api>(), 24);
        assert_eq!(std::mem::size_of::<Register>(), 32);
        assert_eq!(std::mem::size_of::<Continue>(), 32);
        assert_eq!((UFFDIO_CONTINUE >> 16) & 0x3fff, 32);
        assert_eq!((UFFDIO_API >> 16) & 0x3fff, 24);
        assert_eq!((UFFDIO_REGISTER >> 16) & 0x3fff, 32);
    }
}
