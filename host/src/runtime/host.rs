//! What a guest can reach: the per-request store state, the host functions
//! of the `wasmgate:handler` world, and the memory limiter.
//!
//! WASI is present only because Rust's std imports it; the context is empty
//! (no files, no environment, no sockets). Stdout is discarded; stderr is
//! kept, bounded, so a panic message reaches the gateway log.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, StoreContextMut};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::wasmgate::handler::{config, log, metrics};
use crate::metrics::HandlerMetrics;

/// A request on its way to a guest: hyper's parsed head and the collected
/// body, moved from the connection task to a worker as they are. The
/// worker lowers them into guest memory straight from these buffers, so the
/// request path copies nothing and allocates nothing for the guest.
#[derive(Debug)]
pub struct GuestRequest {
    head: http::request::Parts,
    body: bytes::Bytes,
}

impl GuestRequest {
    /// The request with head `head` and the whole body `body`.
    pub fn new(head: http::request::Parts, body: bytes::Bytes) -> Self {
        Self { head, body }
    }

    /// The request's path, without the query.
    pub fn path(&self) -> &str {
        self.head.uri.path()
    }

    /// Calls `f` with the guest's view of the request, borrowed from
    /// `self`: method, path and query (`/` when the URI has none), headers
    /// (a repeated name's values together, as the WIT says), and body.
    pub(super) fn with_view<R>(&self, f: impl FnOnce(super::bindings::Request<'_>) -> R) -> R {
        let headers: Vec<(&str, &[u8])> = self
            .head
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        f(super::bindings::Request {
            method: self.head.method.as_str(),
            uri: self
                .head
                .uri
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str),
            headers: &headers,
            body: &self.body,
        })
    }
}

/// Longest log message kept from a guest, in bytes.
const MAX_LOG_MESSAGE: usize = 4096;
/// Guest stderr kept per request, in bytes; further writes fail.
const MAX_GUEST_STDERR: usize = 4096;

/// What host functions need to know about the handler they serve; shared by
/// every request of one handler version.
#[derive(Debug)]
pub struct HandlerContext {
    /// The handler's `config` table.
    pub config: BTreeMap<String, String>,
    /// Where its requests and guest metrics are counted.
    pub metrics: Arc<HandlerMetrics>,
}

/// The data of one request's store.
pub struct State {
    /// Built on the guest's first WASI call: most handlers make none, and
    /// building it is a few percent of a small request's cost.
    wasi: Option<WasiCtx>,
    /// The guest's stderr (panic messages, `eprintln!`), for the log; set
    /// with `wasi`.
    stderr: Option<MemoryOutputPipe>,
    table: ResourceTable,
    /// Enforces the memory limit and remembers a refusal, so that the trap
    /// that follows (Rust aborts on allocation failure) is reported as a
    /// memory trap.
    pub(super) limiter: MemoryLimiter,
    handler: Arc<HandlerContext>,
    /// When the request must be answered: blocking host calls wait no
    /// longer (`deadline.rs`).
    pub(super) deadline: std::time::Instant,
}

impl State {
    /// Fresh state for one request due by `deadline`.
    pub(super) fn new(
        handler: Arc<HandlerContext>,
        memory_bytes: u64,
        deadline: std::time::Instant,
    ) -> Self {
        Self {
            wasi: None,
            stderr: None,
            table: ResourceTable::new(),
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

impl log::Host for State {
    fn log(&mut self, level: log::Level, msg: String) {
        let msg = truncate(&msg, MAX_LOG_MESSAGE);
        let m = &self.handler.metrics;
        let (tenant, handler) = (m.tenant.as_str(), m.handler.as_str());
        match level {
            log::Level::Trace => tracing::trace!(tenant, handler, "{msg}"),
            log::Level::Debug => tracing::debug!(tenant, handler, "{msg}"),
            log::Level::Info => tracing::info!(tenant, handler, "{msg}"),
            log::Level::Warn => tracing::warn!(tenant, handler, "{msg}"),
            log::Level::Error => tracing::error!(tenant, handler, "{msg}"),
        }
    }
}

impl metrics::Host for State {
    fn counter_add(&mut self, name: String, value: u64) {
        self.handler.metrics.guest_counter_add(&name, value);
    }

    fn histogram_observe(&mut self, name: String, value: f64) {
        self.handler.metrics.guest_histogram_observe(&name, value);
    }
}

impl config::Host for State {
    fn get(&mut self, key: String) -> Option<String> {
        self.handler.config.get(&key).cloned()
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The linker with every import of the world, built once per engine.
pub(super) fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    super::deadline::add_to_linker(&mut linker)?;
    log::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
    metrics::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
    config::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
    // `fuel.remaining` reads the store, which generated `Host` traits
    // cannot reach, so it is defined by hand. Without fuel metering there
    // is no limit to report: u64::MAX.
    linker.instance("wasmgate:handler/fuel@0.1.0")?.func_wrap(
        "remaining",
        |store: StoreContextMut<'_, State>, (): ()| -> wasmtime::Result<(u64,)> {
            Ok((store.get_fuel().unwrap_or(u64::MAX),))
        },
    )?;
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of what the guest is shown.
    struct Seen {
        method: String,
        uri: String,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    }

    fn guest_view(request: http::Request<&'static str>) -> Seen {
        let (head, body) = request.into_parts();
        GuestRequest::new(head, bytes::Bytes::from_static(body.as_bytes())).with_view(|view| Seen {
            method: view.method.to_owned(),
            uri: view.uri.to_owned(),
            headers: view
                .headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
                .collect(),
            body: view.body.to_vec(),
        })
    }

    #[test]
    fn the_guest_sees_method_path_and_query_headers_in_order_and_body() {
        let request = http::Request::post("/items?id=7")
            .header("x-a", "1")
            .header("Host", "example.com")
            .header("x-a", "2")
            .body("payload")
            .expect("valid request");
        let seen = guest_view(request);
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.uri, "/items?id=7");
        let headers: Vec<(&str, &[u8])> = seen
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        // `HeaderMap` keeps a repeated name's values together, in order.
        assert_eq!(
            headers,
            [("x-a", &b"1"[..]), ("x-a", b"2"), ("host", b"example.com")]
        );
        assert_eq!(seen.body, b"payload");
    }

    #[test]
    fn an_absolute_uri_without_a_path_is_seen_as_slash() {
        let request = http::Request::get("http://example.com")
            .body("")
            .expect("valid request");
        let seen = guest_view(request);
        assert_eq!(seen.uri, "/");
        assert!(seen.body.is_empty());
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello", 3), "hel");
        assert_eq!(truncate("héllo", 2), "h");
    }

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
