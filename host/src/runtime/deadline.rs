//! Blocking host calls, bounded by the request's deadline.
//!
//! Fuel and epoch interruption only stop wasm code: a guest blocked inside
//! a host call is out of their reach, and would hold its worker for as long
//! as it asked (`std::thread::sleep(30 s)` did). With the empty `WasiCtx`
//! guests get, the host calls that can block are `wasi:io/poll.poll` and
//! `pollable.block`, which wait on timers from `wasi:clocks`. Streams cannot
//! block: stdin is closed, stdout and stderr are in-memory pipes. No files,
//! sockets or name lookups are granted, so nothing else can wait.
//!
//! Both are replaced here by versions that wait at most until the request's
//! deadline and then trap with [`Trap::Interrupt`], the trap an epoch
//! deadline gives, so the request is answered 504 `timeout` like any other.

use std::future::Future;
use std::time::Instant;

use wasmtime::Trap;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};

use super::host::State;

/// The `wasi:io/poll` version `wasmtime-wasi` links; shadowing must name
/// the same instance.
const POLL_INSTANCE: &str = "wasi:io/poll@0.2.12";

/// Replaces the blocking functions of `wasi:io/poll` in `linker`, which
/// must already hold WASI's.
pub(super) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL_INSTANCE)?;
    poll.func_wrap(
        "poll",
        |mut store, (pollables,): (Vec<Resource<DynPollable>>,)| {
            let state: &mut State = store.data_mut();
            let deadline = state.deadline;
            let ready = wait_until(deadline, state.table().poll(pollables))??;
            Ok((ready,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store, (pollable,): (Resource<DynPollable>,)| {
            let state: &mut State = store.data_mut();
            let deadline = state.deadline;
            wait_until(deadline, state.table().block(pollable))??;
            Ok(())
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Runs `future` on WASI's runtime until it finishes or `deadline` passes;
/// the latter is a [`Trap::Interrupt`].
fn wait_until<F: Future>(deadline: Instant, future: F) -> wasmtime::Result<F::Output> {
    // The timer must be made inside the runtime it registers with.
    wasmtime_wasi::runtime::in_tokio(async move {
        tokio::time::timeout_at(deadline.into(), future).await
    })
    .map_err(|_elapsed| wasmtime::Error::from(Trap::Interrupt))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_wait_past_the_deadline_is_an_interrupt_trap() {
        let deadline = Instant::now() + Duration::from_millis(20);
        let err = wait_until(deadline, std::future::pending::<()>()).expect_err("times out");
        assert_eq!(err.downcast_ref::<Trap>(), Some(&Trap::Interrupt));

        let ready = wait_until(Instant::now() + Duration::from_secs(60), async { 7 });
        assert_eq!(ready.expect("ready at once"), 7);
    }
}
