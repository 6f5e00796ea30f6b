//! libs3dlio_direct.so: the interposition layer. Each hook resolves the real symbol, asks
//! the engine (`s3dlio_engine::engine`, one module per hook family as here) whether the fd or path is the engine's, and either calls
//! the engine or the real function. No logic lives here.

#![deny(unsafe_op_in_unsafe_fn)]

mod api;
mod fdops;
mod mapping;
mod open;
mod process;
mod real;
mod rw;
mod streams;

use s3dlio_engine::sys::{errno, set_errno};
use std::cell::Cell;

thread_local! {
    /// Set while this thread is inside the engine: a hook entered again (from a signal
    /// handler that interrupted the engine) must not wait for anything.
    static IN_ENGINE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` inside the engine with the re-entrancy flag and a panic barrier. `f` gets
/// `nowait` (true when re-entered). A panic, which must never unwind into the host, and a
/// poisoned state both give `None`, so the hook falls back to the real call.
fn in_engine<R>(f: impl FnOnce(bool) -> Option<R>) -> Option<R> {
    let nowait = IN_ENGINE.with(|c| c.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(nowait))).ok().flatten();
    IN_ENGINE.with(|c| c.set(nowait));
    r
}

/// Turns an engine result into the C convention, leaving errno as the program had it on
/// success (the engine's internal calls may have touched it).
fn finish(r: Result<usize, i32>, saved_errno: i32) -> isize {
    match r {
        Ok(n) => {
            set_errno(saved_errno);
            n as isize
        }
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// Runs an engine call that returns `Served`; `None` means "call the real function".
fn served(f: impl FnOnce(bool) -> s3dlio_engine::engine::Served) -> Option<isize> {
    let saved = errno();
    in_engine(f).map(|r| finish(r, saved))
}

/// Runs an engine side effect around which errno must stay as the real call left it.
fn quietly(f: impl FnOnce()) {
    let saved = errno();
    in_engine(|_| {
        f();
        Some(())
    });
    set_errno(saved);
}

#[ctor::ctor(unsafe)]
fn init() {
    real::resolve_all();
    quietly(s3dlio_engine::engine::init);
}
