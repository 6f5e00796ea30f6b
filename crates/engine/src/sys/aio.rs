//! Linux native AIO (`io_setup`, `io_submit`, `io_getevents`, `io_destroy`): the raw calls
//! read-ahead reads its windows with, and the structures of linux/aio_abi.h.

use super::{check, retry, SysResult};

/// An AIO context id.
pub type Context = libc::c_ulong;

/// `IOCB_CMD_PREAD` of linux/aio_abi.h.
pub const IOCB_CMD_PREAD: u16 = 0;

/// `struct io_event` of linux/aio_abi.h.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IoEvent {
    /// The submitter's `aio_data`.
    pub data: u64,
    /// The iocb's address.
    pub obj: u64,
    /// Bytes read, or a negative errno.
    pub res: i64,
    /// Unused for reads.
    pub res2: i64,
}

/// A zeroed iocb describing a read of `len` bytes at `off` of `fd` into `buf`, tagged `data`.
pub fn pread_cb(fd: i32, buf: *mut u8, len: u64, off: u64, data: u64) -> libc::iocb {
    // SAFETY: an iocb is plain data; the unused fields must be zero.
    let mut cb: libc::iocb = unsafe { std::mem::zeroed() };
    cb.aio_data = data;
    cb.aio_lio_opcode = IOCB_CMD_PREAD;
    cb.aio_fildes = fd as u32;
    cb.aio_buf = buf as u64;
    cb.aio_nbytes = len;
    cb.aio_offset = off as i64;
    cb
}

/// `io_setup(2)`: a new context for up to `nr` requests in flight.
pub fn setup(nr: usize) -> SysResult<Context> {
    let mut ctx: Context = 0;
    // SAFETY: io_setup writes the new context id into `ctx`.
    check(unsafe { libc::syscall(libc::SYS_io_setup, nr as libc::c_long, &mut ctx as *mut Context) })?;
    Ok(ctx)
}

/// `io_submit(2)`: how many of `cbs` the kernel took (from the first on).
///
/// # Safety
/// Every iocb must describe memory that stays valid and untouched until its read is reaped.
pub unsafe fn submit(ctx: Context, cbs: &mut [*mut libc::iocb]) -> SysResult<usize> {
    // SAFETY: the caller vouches for the iocbs; the array holds `cbs.len()` pointers.
    check(unsafe { libc::syscall(libc::SYS_io_submit, ctx, cbs.len() as libc::c_long, cbs.as_mut_ptr()) })
}

/// `io_getevents(2)`: waits for at least one completion and returns how many of `evs` were
/// filled (EINTR is retried).
pub fn getevents(ctx: Context, evs: &mut [IoEvent]) -> SysResult<usize> {
    retry(|| {
        // SAFETY: `evs` holds `evs.len()` events; a null timeout waits.
        unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                ctx,
                1 as libc::c_long,
                evs.len() as libc::c_long,
                evs.as_mut_ptr(),
                std::ptr::null_mut::<libc::timespec>(),
            )
        }
    })
}

/// `io_destroy(2)`: waits for the context's reads in flight, then frees it.
pub fn destroy(ctx: Context) {
    // SAFETY: no memory arguments; the caller owns the context.
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
}
