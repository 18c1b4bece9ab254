//! The data of one request's store: its WASI context (empty, built on
//! first use), its `wasi:http` context (outbound calls go through the
//! tenant's policy, `outbound.rs`), the guest's stderr, the memory
//! limiter, the request's deadline, and the handler's context that host
//! functions serve from.
//!
//! The WASI context is empty (no files, no environment, no sockets): the
//! network is reached only through `wasi:http`. Stdout is discarded;
//! stderr is kept, bounded, so a panic message reaches the gateway log.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::context::HandlerContext;
use super::outbound::{Outbound, OutboundHooks};

/// Guest stderr kept per request, in bytes; further writes fail.
const MAX_GUEST_STDERR: usize = 4096;

/// The data of one request's store.
pub struct State {
    /// Built on the guest's first WASI call: most handlers make none, and
    /// building it is a few percent of a small request's cost.
    wasi: Option<WasiCtx>,
    /// The guest's stderr (panic messages, `eprintln!`), for the log; set
    /// with `wasi`.
    stderr: Option<MemoryOutputPipe>,
    table: ResourceTable,
    /// `wasi:http`'s settings.
    http: WasiHttpCtx,
    /// Where the guest's outbound calls are checked and sent.
    outbound: OutboundHooks,
    /// Enforces the memory limit and remembers a refusal, so that the trap
    /// that follows (Rust aborts on allocation failure) is reported as a
    /// memory trap.
    pub(super) limiter: MemoryLimiter,
    /// What the host functions serve from.
    pub(super) handler: Arc<HandlerContext>,
    /// When the request must be answered: blocking host calls wait no
    /// longer (`deadline.rs`).
    pub(super) deadline: std::time::Instant,
}

impl State {
    /// Fresh state for one request due by `deadline`, whose outbound calls
    /// follow `outbound`.
    pub(super) fn new(
        handler: Arc<HandlerContext>,
        outbound: Arc<Outbound>,
        memory_bytes: u64,
        deadline: std::time::Instant,
    ) -> Self {
        Self {
            wasi: None,
            stderr: None,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outbound: OutboundHooks::new(outbound, Arc::clone(&handler), deadline, memory_bytes),
            limiter: MemoryLimiter {
                limit: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
                used: 0,
                refused: false,
            },
            handler,
            deadline,
        }
    }

    /// The guest's WASI resources (pollables, streams).
    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// What the guest wrote to stderr, if anything.
    pub(super) fn stderr(&self) -> Option<bytes::Bytes> {
        self.stderr.as_ref().map(MemoryOutputPipe::contents)
    }
}

impl Drop for State {
    /// The end of a request: reports the handler's dropped log lines if a
    /// summary is due, so it comes even when the guest has stopped logging.
    fn drop(&mut self) {
        self.handler.metrics.log.flush_if_due();
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let stderr = &mut self.stderr;
        let ctx = self.wasi.get_or_insert_with(|| {
            let pipe = MemoryOutputPipe::new(MAX_GUEST_STDERR);
            let mut builder = WasiCtx::builder();
            builder.stderr(pipe.clone());
            *stderr = Some(pipe);
            builder.build()
        });
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Caps the total linear memory of one instance (all its memories).
pub(super) struct MemoryLimiter {
    limit: usize,
    used: usize,
    /// A growth was refused for this request.
    pub(super) refused: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let used = self.used.saturating_add(desired.saturating_sub(current));
        if used > self.limit {
            self.refused = true;
            return Ok(false);
        }
        self.used = used;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any
        // handler and bounds the host memory a guest can make us allocate.
        Ok(desired <= 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_all_memories_and_remembers_refusals() {
        let mut limiter = MemoryLimiter {
            limit: 4 * 65536,
            used: 0,
            refused: false,
        };
        assert!(limiter.memory_growing(0, 2 * 65536, None).expect("ok"));
        assert!(limiter.memory_growing(0, 2 * 65536, None).expect("ok"));
        assert!(!limiter.refused);
        assert!(
            !limiter
                .memory_growing(2 * 65536, 3 * 65536, None)
                .expect("ok")
        );
        assert!(limiter.refused);
    }
}
