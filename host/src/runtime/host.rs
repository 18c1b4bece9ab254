//! What a guest can reach: the per-request store state, the host functions
//! of the `wasmgate:handler` world, and the memory limiter.
//!
//! WASI is present only because Rust's std imports it; the context is empty
//! (no files, no environment, no sockets). Stdout is discarded; stderr is
//! kept, bounded, so a panic message reaches the gateway log.
//!
//! A guest's `log` calls share its handler's log budget (see
//! [`crate::guest_log`]) and are escaped to one line each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, StoreContextMut};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::wasmgate::handler::{config, log, metrics};
use crate::guest_log::escape;
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
    #[cfg(test)]
    pub(super) fn with_view<R>(&self, f: impl FnOnce(super::bindings::Request<'_>) -> R) -> R {
        let headers = self.header_view();
        f(self.view(&headers))
    }

    /// The headers as the guest sees them, for [`GuestRequest::view`].
    pub(super) fn header_view(&self) -> Vec<(&str, &[u8])> {
        self.head
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect()
    }

    /// The guest's view of the request with `headers` from
    /// [`GuestRequest::header_view`]; split from it so an async call can
    /// keep both alive across its awaits.
    pub(super) fn view<'a>(
        &'a self,
        headers: &'a [(&'a str, &'a [u8])],
    ) -> super::bindings::Request<'a> {
        super::bindings::Request {
            method: self.head.method.as_str(),
            uri: self
                .head
                .uri
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str),
            headers,
            body: &self.body,
        }
    }
}

/// Longest log message kept from a guest, in bytes, once escaped.
const MAX_LOG_MESSAGE: usize = 4096;
/// Guest stderr kept per request, in bytes; further writes fail.
const MAX_GUEST_STDERR: usize = 4096;

/// What host functions need to know about the handler they serve; shared by
/// every request of one handler version.
#[derive(Debug)]
pub struct HandlerContext {
    /// The handler's `config` table.
    pub config: BTreeMap<String, String>,
    /// Where its requests and guest metrics are counted; also holds its
    /// log budget.
    pub metrics: Arc<HandlerMetrics>,
}

impl HandlerContext {
    /// Whether the gateway may write one more log line about this handler
    /// now (a trap, say): lines about a handler share its guest's budget,
    /// `limits.log_lines_per_second`. A refused line is counted in
    /// `wasmgate_guest_log_lines_dropped_total` and must not be written.
    /// Ask only for a line whose level is enabled (`tracing::enabled!`), so
    /// filtered lines cost no budget; guest text in the line goes through
    /// `crate::guest_log::escape` unless it is a field formatted with
    /// `Debug` (which escapes it already).
    pub fn log_permit(&self) -> bool {
        self.metrics.log.permit(Instant::now())
    }

    /// A guest's `log` call at `now`: one escaped line if the log level is
    /// enabled and the budget allows. Lines the level filter would discard
    /// cost no budget, so debug logging off is free and never counted.
    fn guest_log(&self, level: log::Level, msg: &str, now: Instant) {
        let (tenant, handler) = (self.metrics.tenant.as_str(), self.metrics.handler.as_str());
        // `tracing`'s macros need the level as a constant.
        macro_rules! write_line {
            ($level:expr) => {
                if tracing::enabled!($level) && self.metrics.log.permit(now) {
                    let msg = escape(msg, MAX_LOG_MESSAGE);
                    tracing::event!($level, %tenant, %handler, "{msg}");
                }
            };
        }
        match level {
            log::Level::Trace => write_line!(tracing::Level::TRACE),
            log::Level::Debug => write_line!(tracing::Level::DEBUG),
            log::Level::Info => write_line!(tracing::Level::INFO),
            log::Level::Warn => write_line!(tracing::Level::WARN),
            log::Level::Error => write_line!(tracing::Level::ERROR),
        }
    }
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

impl Drop for State {
    /// The end of a request: reports the handler's dropped log lines if a
    /// summary is due, so it comes even when the guest has stopped logging.
    fn drop(&mut self) {
        self.handler.metrics.log.flush(Instant::now());
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
        self.handler.guest_log(level, &msg, Instant::now());
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

/// The linker with every import of the world, built once per engine.
pub(super) fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
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

    /// Everything written to the log while `f` runs, at level INFO and up,
    /// without colours, as the gateway writes it to a file.
    fn captured_log(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("not poisoned").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer({
                let capture = capture.clone();
                move || capture.clone()
            })
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = capture.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("the log is UTF-8")
    }

    fn context(rate: u32) -> (Arc<crate::metrics::Metrics>, Arc<HandlerContext>) {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let handler = metrics.handler("t", "h");
        handler.log.set_rate(rate);
        let context = Arc::new(HandlerContext {
            config: BTreeMap::new(),
            metrics: handler,
        });
        (metrics, context)
    }

    fn log_lines_dropped(metrics: &crate::metrics::Metrics) -> Option<u64> {
        metrics.render().lines().find_map(|l| {
            l.strip_prefix(r#"wasmgate_guest_log_lines_dropped_total{handler="h",tenant="t"} "#)?
                .parse()
                .ok()
        })
    }

    #[test]
    fn guest_lines_and_lines_about_the_handler_share_one_budget() {
        let (metrics, context) = context(2);
        let now = Instant::now();
        let log = captured_log(|| {
            // Below the level filter: no budget spent, nothing counted.
            for _ in 0..10 {
                context.guest_log(log::Level::Debug, "hidden", now);
            }
            context.guest_log(log::Level::Info, "one", now);
            context.guest_log(log::Level::Warn, "two", now);
            // A trap line about the handler finds the budget spent.
            assert!(!context.metrics.log.permit(now));
            context.guest_log(log::Level::Error, "three", now);
            // A second later two lines are earned; the first reports the
            // two dropped before it.
            let later = now + std::time::Duration::from_secs(1);
            context.guest_log(log::Level::Info, "four", later);
            assert!(context.metrics.log.permit(later));
            assert!(!context.metrics.log.permit(later));
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 4, "{log}");
        assert!(
            lines[0].contains(" INFO ") && lines[0].contains("one"),
            "{log}"
        );
        assert!(
            lines[1].contains(" WARN ") && lines[1].contains("two"),
            "{log}"
        );
        assert!(
            lines[2].contains("dropped 2 log lines of t/h in the last 1.0s"),
            "{log}"
        );
        assert!(lines[3].contains("four"), "{log}");
        assert!(!log.contains("hidden") && !log.contains("three"), "{log}");
        assert_eq!(log_lines_dropped(&metrics), Some(3));
    }

    #[test]
    fn a_guest_message_is_one_escaped_line_with_its_labels() {
        let (_metrics, context) = context(100);
        let log = captured_log(|| {
            context.guest_log(
                log::Level::Warn,
                "first\nFORGED level=ERROR\r\x1b[31mred\x1b[0m",
                Instant::now(),
            );
            context.guest_log(log::Level::Info, &"\x1b".repeat(100_000), Instant::now());
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(
            lines[0].contains(r"first\nFORGED level=ERROR\r\u{1b}[31mred\u{1b}[0m"),
            "{log}"
        );
        assert!(lines[0].contains("tenant=t handler=h"), "{log}");
        assert!(!log.contains('\x1b') && !log.contains('\r'), "{log}");
        // 100 000 escapes would be 600 kB; the line keeps 4 KiB of them.
        assert!(lines[1].len() < MAX_LOG_MESSAGE + 200, "{}", lines[1].len());
        assert!(lines[1].contains(r"\u{1b}\u{1b}…"), "{log}");
    }

    #[test]
    fn the_end_of_a_request_reports_drops_once_a_summary_is_due() {
        let (metrics, context) = context(0);
        let log = captured_log(|| {
            let long_ago = Instant::now()
                .checked_sub(std::time::Duration::from_secs(5))
                .expect("the clock is older than 5 s");
            assert!(!context.metrics.log.permit(long_ago));
            assert!(!context.log_permit());
            // A request's store is dropped when it ends.
            drop(State::new(Arc::clone(&context), 1 << 16, Instant::now()));
        });
        assert!(
            log.contains("dropped 2 log lines of t/h in the last"),
            "{log}"
        );
        assert_eq!(log.lines().count(), 1, "{log}");
        assert_eq!(log_lines_dropped(&metrics), Some(2));
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
