//! Where guest code runs: the engine, handler versions, host functions and
//! the worker pool.
//!
//! Guest code runs only on the executor's worker threads, never on tokio's
//! async workers: a CPU-heavy handler can slow its own tenant, never the
//! accept loop or the admin listener.
//!
//! Layers, bottom up: `bindings` (generated from `wit/`), `context` (what
//! a handler version's requests share), `connector`
//! (connections to upstreams and their pools), `outbound` (a guest's calls
//! to upstreams), `store` (one request's store data),
//! `request` and `response` (what a guest is shown and the check of what
//! it answers), `host_fns` and `deadline` (the imports), `linker`, `engine`, `handler` (a loaded version and its store
//! set-up), `call` (one guest call), `executor` (the worker pool).

mod bindings;
mod block_on;
mod cache;
mod call;
mod connector;
mod context;
mod deadline;
mod engine;
mod executor;
mod fair_queue;
mod handler;
mod host_fns;
mod linker;
mod outbound;
mod request;
mod response;
mod store;

pub use cache::CodeCache;
pub use call::{GuestOutcome, call_guest};
pub use context::HandlerContext;
pub use engine::{EPOCH_TICK, Runtime, RuntimeError};
pub use executor::{Executor, GuestSlots};
pub use fair_queue::Flow;
pub use handler::{Compiled, ComponentInfo, HandlerVersion, LoadError};
pub use host_fns::GUEST_LOG_TARGET;
pub use outbound::Outbound;
pub use request::{GuestRequest, PROTO_HEADER, ROUTE_HEADER};
pub use response::{MAX_HEAD_BYTES, MAX_HEADERS};
