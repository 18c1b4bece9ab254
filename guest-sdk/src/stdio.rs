//! std's stdout, stderr and environment in a component, with two WASI
//! imports instead of seventeen.
//!
//! The gateway makes a fresh instance of a handler for every request, and
//! linking each import is a large part of what an instance costs. std on
//! `wasm32-wasip2` writes stdout and stderr, and reads `RUST_BACKTRACE`
//! when it reports a panic, through wasi-libc's `write` and `getenv`,
//! which bring in libc's descriptor table: stdin, stdout, stderr, the five
//! terminal interfaces, streams, poll, exit and the environment, 17
//! imports that a handler almost never calls. The SDK defines those two C
//! functions itself, and the linker takes them instead of libc's:
//!
//! - `write` sends descriptor 2 to `wasi:cli/stderr` (the gateway logs a
//!   guest's stderr with its trap), discards descriptor 1 (the gateway
//!   discards stdout anyway) and fails on any other descriptor with
//!   `EBADF`: the gateway gives a handler no files and no sockets.
//! - `getenv` finds nothing: the gateway gives a handler an empty
//!   environment. (`std::env::vars()` still asks WASI.)

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU32, Ordering};

use bindings::wasi::cli::stderr::get_stderr;
use bindings::wasi::io::streams::{OutputStream, StreamError};

/// Bindings for `wit/wasi`, world `stderr`.
#[allow(unsafe_code, missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "wit/wasi",
        world: "stderr",
        generate_all,
    });
}

/// `blocking-write-and-flush` takes at most this many bytes per call.
const MAX_WRITE: usize = 4096;

/// wasi-libc's `EBADF` and `EPIPE` (WASI's errno numbering).
const EBADF: i32 = 8;
const EPIPE: i32 = 64;

/// The stderr stream's handle once asked for (0: not yet; the component
/// model never hands out handle 0). It is never dropped: the instance ends
/// with the request, and dropping it would be one more import.
static STDERR: AtomicU32 = AtomicU32::new(0);

#[allow(unsafe_code)]
unsafe extern "C" {
    /// wasi-libc's `errno`, as std reads it after a failed `write`.
    fn __errno_location() -> *mut i32;
}

/// libc's `write(fd, buf, len)`, for the only descriptors a handler has.
///
/// # Safety
///
/// `buf` must be valid for reads of `len` bytes, as for libc's `write`.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: i32, buf: *const u8, len: usize) -> isize {
    let written = match fd {
        1 => Ok(len),
        2 => {
            // SAFETY: the caller's contract.
            let bytes = unsafe { std::slice::from_raw_parts(buf, len) };
            write_stderr(bytes)
        }
        _ => Err(EBADF),
    };
    match written {
        Ok(n) => isize::try_from(n).unwrap_or(isize::MAX),
        Err(errno) => {
            // SAFETY: libc's errno location is valid for the instance's life.
            unsafe { *__errno_location() = errno };
            -1
        }
    }
}

/// libc's `getenv(name)`: the gateway's environment is empty.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn getenv(_name: *const std::ffi::c_char) -> *mut std::ffi::c_char {
    std::ptr::null_mut()
}

/// Writes `bytes` to stderr: how many were written before the stream
/// closed (the gateway keeps a bounded amount), or `EPIPE` if none were.
fn write_stderr(bytes: &[u8]) -> Result<usize, i32> {
    let stream = stderr();
    let mut written = 0;
    for chunk in bytes.chunks(MAX_WRITE) {
        match stream.blocking_write_and_flush(chunk) {
            Ok(()) => written += chunk.len(),
            // Not dropped: see `STDERR`.
            Err(StreamError::LastOperationFailed(error)) => {
                let _ = ManuallyDrop::new(error);
                break;
            }
            Err(StreamError::Closed) => break,
        }
    }
    if written == 0 && !bytes.is_empty() {
        return Err(EPIPE);
    }
    Ok(written)
}

/// The stderr stream, asked for on first use.
fn stderr() -> ManuallyDrop<OutputStream> {
    let handle = match STDERR.load(Ordering::Relaxed) {
        0 => {
            let handle = ManuallyDrop::new(get_stderr()).handle();
            STDERR.store(handle, Ordering::Relaxed);
            handle
        }
        handle => handle,
    };
    // SAFETY: `handle` is the stderr stream this instance was given, owned
    // by `STDERR` and never dropped, so every use borrows it.
    #[allow(unsafe_code)]
    ManuallyDrop::new(unsafe { OutputStream::from_handle(handle) })
}
