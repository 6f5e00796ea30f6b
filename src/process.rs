//! Process boundaries: exec (statistics written, twins kept where record locks need them),
//! spawn (children share the program's descriptions, whose calls at the file position then
//! go to the kernel), `_exit` (statistics still written) and `vfork` (run as `fork`, so the
//! child's hooks cannot corrupt the parent's memory). `execl`, `execlp` and `execle` are
//! variadic and live in `variadic.c`, which collects their arguments and calls the hooks
//! here; so do `dprintf`/`vdprintf`, whose write inside glibc no hook would see.

use crate::{in_engine, quietly, real};
use libc::{c_char, c_int, pid_t};
use s3dlio_engine::engine;

/// Runs an exec-family call: prepare, call, and undo if it returned (it failed).
fn exec_with(call: impl FnOnce() -> c_int) -> c_int {
    let token = in_engine(|_| Some(engine::process::before_exec()));
    let r = call();
    let saved = crate::errno();
    if let Some(t) = token {
        quietly(|| engine::process::exec_failed(t));
    }
    crate::set_errno(saved);
    r
}

type Argv = *const *const c_char;

#[no_mangle]
pub unsafe extern "C" fn execve(path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    // SAFETY: forwarding the program's arguments.
    exec_with(|| unsafe { real!(execve: unsafe extern "C" fn(*const c_char, Argv, Argv) -> c_int)(path, argv, envp) })
}

#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: Argv) -> c_int {
    // SAFETY: forwarding the program's arguments.
    exec_with(|| unsafe { real!(execv: unsafe extern "C" fn(*const c_char, Argv) -> c_int)(path, argv) })
}

#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: Argv) -> c_int {
    // SAFETY: forwarding the program's arguments.
    exec_with(|| unsafe { real!(execvp: unsafe extern "C" fn(*const c_char, Argv) -> c_int)(file, argv) })
}

#[no_mangle]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: Argv, envp: Argv) -> c_int {
    // SAFETY: forwarding the program's arguments.
    exec_with(|| unsafe { real!(execvpe: unsafe extern "C" fn(*const c_char, Argv, Argv) -> c_int)(file, argv, envp) })
}

#[no_mangle]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: Argv, envp: Argv) -> c_int {
    // SAFETY: forwarding the program's arguments.
    exec_with(|| unsafe { real!(fexecve: unsafe extern "C" fn(c_int, Argv, Argv) -> c_int)(fd, argv, envp) })
}

type SpawnFn = unsafe extern "C" fn(
    *mut pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    Argv,
    Argv,
) -> c_int;

/// Hooks for `posix_spawn`-shaped functions.
macro_rules! spawn_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            pid: *mut pid_t,
            path: *const c_char,
            acts: *const libc::posix_spawn_file_actions_t,
            attr: *const libc::posix_spawnattr_t,
            argv: Argv,
            envp: Argv,
        ) -> c_int {
            quietly(engine::process::before_spawn);
            // SAFETY: forwarding the program's arguments.
            unsafe { real!($name: SpawnFn)(pid, path, acts, attr, argv, envp) }
        }
    )*};
}
spawn_hooks!(posix_spawn, posix_spawnp);

#[no_mangle]
pub unsafe extern "C" fn system(cmd: *const c_char) -> c_int {
    quietly(engine::process::before_spawn);
    // SAFETY: forwarding the program's argument.
    unsafe { real!(system: unsafe extern "C" fn(*const c_char) -> c_int)(cmd) }
}

#[no_mangle]
pub unsafe extern "C" fn popen(cmd: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    quietly(engine::process::before_spawn);
    // SAFETY: forwarding the program's arguments.
    unsafe { real!(popen: unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE)(cmd, mode) }
}

/// Hooks for `_exit`-shaped functions: atexit handlers do not run there, so the
/// statistics are written here.
macro_rules! exit_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(status: c_int) -> ! {
            quietly(engine::process::at_exit);
            // SAFETY: forwarding the program's argument; the real function never returns.
            unsafe { real!($name: unsafe extern "C" fn(c_int) -> !)(status) }
        }
    )*};
}
exit_hooks!(_exit, _Exit);

#[no_mangle]
pub unsafe extern "C" fn vfork() -> pid_t {
    // SAFETY: fork is allowed wherever vfork is; the child gets its own copy of the shim's
    // state instead of writing into its parent's.
    unsafe { real!(fork: unsafe extern "C" fn() -> pid_t)() }
}

extern "C" {
    fn s3dlio_execl();
    fn s3dlio_execlp();
    fn s3dlio_execle();
    fn s3dlio_dprintf();
    fn s3dlio_vdprintf();
}

/// Exported trampolines for the variadic functions of `variadic.c`: a tail jump leaves the caller's
/// registers and stack, and so every variadic argument, exactly as they were.
macro_rules! variadic_trampolines {
    ($($name:ident => $target:ident),*) => {$(
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() {
            #[cfg(target_arch = "x86_64")]
            core::arch::naked_asm!("jmp {0}", sym $target);
            #[cfg(target_arch = "aarch64")]
            core::arch::naked_asm!("b {0}", sym $target);
        }
    )*};
}
variadic_trampolines!(
    execl => s3dlio_execl,
    execlp => s3dlio_execlp,
    execle => s3dlio_execle,
    dprintf => s3dlio_dprintf,
    vdprintf => s3dlio_vdprintf
);
