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
//! They are async: a waiting guest's fiber is suspended and holds no worker,
//! only its guest slot.

use std::future::Future;
use std::time::Instant;

use wasmtime::Trap;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};

use super::store::State;

/// The `wasi:io/poll` version `wasmtime-wasi` links; shadowing must name
/// the same instance.
const POLL_INSTANCE: &str = "wasi:io/poll@0.2.12";

/// Replaces the blocking functions of `wasi:io/poll` in `linker`, which
/// must already hold WASI's.
pub(super) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL_INSTANCE)?;
    poll.func_wrap_async(
        "poll",
        |mut store, (pollables,): (Vec<Resource<DynPollable>>,)| {
            Box::new(async move {
                let state: &mut State = store.data_mut();
                let deadline = state.deadline;
                let ready = until(deadline, state.table().poll(pollables)).await??;
                Ok((ready,))
            })
        },
    )?;
    poll.func_wrap_async(
        "[method]pollable.block",
        |mut store, (pollable,): (Resource<DynPollable>,)| {
            Box::new(async move {
                let state: &mut State = store.data_mut();
                let deadline = state.deadline;
                until(deadline, state.table().block(pollable)).await??;
                Ok(())
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Waits for `future` until `deadline`; past it, a [`Trap::Interrupt`].
/// While it waits the guest's fiber is suspended and its worker runs other
/// guests; the timer is the worker's own (a tokio time driver per worker).
async fn until<F: Future>(deadline: Instant, future: F) -> wasmtime::Result<F::Output> {
    tokio::time::timeout_at(deadline.into(), future)
        .await
        .map_err(|_elapsed| wasmtime::Error::from(Trap::Interrupt))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_wait_past_the_deadline_is_an_interrupt_trap() {
        let deadline = Instant::now() + Duration::from_millis(20);
        let err = until(deadline, std::future::pending::<()>())
            .await
            .expect_err("times out");
        assert_eq!(err.downcast_ref::<Trap>(), Some(&Trap::Interrupt));

        let ready = until(Instant::now() + Duration::from_secs(60), async { 7 }).await;
        assert_eq!(ready.expect("ready at once"), 7);
    }
}
