//! Where guest code runs: the engine, handler versions, host functions and
//! the worker pool.
//!
//! Guest code runs only on the executor's worker threads, never on tokio's
//! async workers: a CPU-heavy handler can slow its own tenant, never the
//! accept loop or the admin listener.

mod cache;
mod call;
mod deadline;
mod engine;
mod executor;
mod fair_queue;
mod handler;
mod host;

pub use cache::CodeCache;
pub use call::{GuestOutcome, call_guest};
pub use engine::{EPOCH_TICK, GUESTS_PER_WORKER, Runtime, RuntimeError};
pub use executor::Executor;
pub use fair_queue::Flow;
pub use handler::{Compiled, ComponentInfo, HandlerVersion, LoadError};
pub use host::{GuestRequest, HandlerContext};

/// A guest's response as the world defines it, before validation.
pub(crate) use bindings::wasmgate::handler::types::Response as GuestResponse;

/// Host bindings generated from `wit/` (the one source of truth).
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler",
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
        // Guest calls run on fibers, so a running guest can give its
        // worker back at every epoch tick (`executor.rs`).
        exports: { default: async },
    });
}
