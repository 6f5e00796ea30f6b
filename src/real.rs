//! The real libc functions behind the hooks: `dlsym(RTLD_NEXT)` once at load (and lazily if a
//! hook runs before the constructor), cached in atomics, never behind a lock that a
//! re-entrant call or a fork child could find held.

use std::sync::atomic::{AtomicPtr, Ordering};

/// A lazily resolved symbol.
pub struct Sym {
    name: &'static std::ffi::CStr,
    ptr: AtomicPtr<libc::c_void>,
}

impl Sym {
    pub const fn new(name: &'static std::ffi::CStr) -> Self {
        Sym { name, ptr: AtomicPtr::new(std::ptr::null_mut()) }
    }

    /// The address of the next definition after this library; aborts if libc has none,
    /// since a program can only reach a hook for a symbol it linked against.
    #[inline]
    pub fn get(&self) -> *mut libc::c_void {
        let p = self.ptr.load(Ordering::Relaxed);
        if !p.is_null() {
            return p;
        }
        // SAFETY: RTLD_NEXT with a NUL-terminated name is dlsym's documented use.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) };
        if p.is_null() {
            // SAFETY: abort has no preconditions; continuing would jump to address 0.
            unsafe { libc::abort() }
        }
        self.ptr.store(p, Ordering::Relaxed);
        p
    }

    /// Resolves now if libc has the symbol (some, like closefrom, are newer than others).
    pub fn preload(&self) {
        // SAFETY: as in `get`.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) };
        if !p.is_null() {
            self.ptr.store(p, Ordering::Relaxed);
        }
    }
}

/// Declares `static NAME: Sym` for each hooked symbol, plus `resolve_all()`.
macro_rules! symbols {
    ($($id:ident),* $(,)?) => {
        $(
            #[allow(non_upper_case_globals)]
            pub static $id: Sym = Sym::new(
                // SAFETY: the literal is NUL-terminated with no interior NUL.
                unsafe { std::ffi::CStr::from_bytes_with_nul_unchecked(concat!(stringify!($id), "\0").as_bytes()) }
            );
        )*
        /// Resolves every hooked symbol at load.
        pub fn resolve_all() {
            $( $id.preload(); )*
        }
    };
}

symbols!(
    open,
    open64,
    openat,
    openat64,
    creat,
    creat64,
    __open_2,
    __open64_2,
    __openat_2,
    __openat64_2,
    read,
    pread,
    pread64,
    readv,
    preadv,
    preadv64,
    preadv2,
    preadv64v2,
    __read_chk,
    __pread_chk,
    __pread64_chk,
    write,
    pwrite,
    pwrite64,
    writev,
    pwritev,
    pwritev64,
    pwritev2,
    pwritev64v2,
    lseek,
    lseek64,
    close,
    close_range,
    closefrom,
    dup,
    dup2,
    dup3,
    fcntl,
    fcntl64,
    ftruncate,
    ftruncate64,
    fsync,
    fdatasync,
    copy_file_range,
    sendfile,
    sendfile64,
    splice,
    fdopen,
    fopen,
    fopen64,
    freopen,
    freopen64,
    fclose,
    fread,
    fread_unlocked,
    fseek,
    fseeko,
    fseeko64,
    ftell,
    ftello,
    ftello64,
    fgetpos,
    fgetpos64,
    fsetpos,
    fsetpos64,
    rewind,
    mmap,
    mmap64,
    munmap,
    mremap,
    mprotect,
    madvise,
    posix_madvise,
    posix_fadvise,
    posix_fadvise64,
    readahead,
    posix_fallocate,
    posix_fallocate64,
    socket,
    socketpair,
    accept,
    accept4,
    pipe,
    pipe2,
    memfd_create,
    eventfd,
    epoll_create,
    epoll_create1,
    signalfd,
    timerfd_create,
    inotify_init,
    inotify_init1,
    lockf,
    lockf64,
    sendmsg,
    recvmsg,
    execve,
    execv,
    execvp,
    execvpe,
    fexecve,
    posix_spawn,
    posix_spawnp,
    system,
    popen,
    _exit,
    _Exit,
    fork,
);

/// Calls the real function `$sym` with type `$ty`.
#[macro_export]
macro_rules! real {
    ($sym:ident : $ty:ty) => {{
        #[allow(unused_unsafe)]
        // SAFETY: the symbol was resolved from libc under this name, whose C prototype is
        // the one spelled in `$ty`.
        let f = unsafe { std::mem::transmute::<*mut libc::c_void, $ty>($crate::real::$sym.get()) };
        f
    }};
}
