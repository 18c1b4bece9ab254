//! Native unit tests of handlers: no gateway, no wasm.
//!
//! In a component, [`log`](crate::log), [`metrics`](crate::metrics),
//! [`config`](crate::config), [`fuel`](crate::fuel) and
//! [`upstream`] call the gateway. In a native build
//! (`cargo test`) they use the [`Context`] the test is running in instead:
//! it supplies the config values and the fuel the handler sees, answers
//! upstream calls with a stub ([`Context::upstream`]), and records what the
//! handler logged, the metrics it recorded and the requests it sent
//! upstream. Called outside a context they panic, saying so.
//!
//! A `#[handler]` function stays a plain Rust function, so a test calls it
//! directly:
//!
//! ```
//! use wasmgate_sdk::{Request, config, log, metrics, testing};
//!
//! #[wasmgate_sdk::handler]
//! fn greet(_req: Request) -> String {
//!     metrics::counter_add("greetings", 1);
//!     let name = config::get("name").unwrap_or_else(|| "world".to_owned());
//!     log::info(&format!("greeting {name}"));
//!     format!("hello, {name}\n")
//! }
//!
//! let mut t = testing::Context::new().config("name", "you");
//! let resp = t.call(greet, testing::get("/greet"));
//! assert_eq!(resp.status(), 200);
//! assert_eq!(resp.body(), b"hello, you\n");
//! assert_eq!(t.counter("greetings"), 1);
//! assert_eq!(t.logs()[0].message, "greeting you");
//! ```
//!
//! Only in native builds: in a component the gateway provides the services.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::log::Level;
use crate::{IntoResponse, Request, Response, upstream};

/// What `fuel::remaining()` returns unless [`Context::fuel`] says otherwise:
/// the gateway's default budget (`limits.fuel`).
pub const DEFAULT_FUEL: u64 = 1_000_000_000;

/// One message the handler logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// The level it was logged at.
    pub level: Level,
    /// The message as the handler passed it.
    pub message: String,
}

/// What the host services see and record while a test runs.
#[derive(Debug, Default)]
struct State {
    /// The handler's config table, read by `config::get`.
    config: HashMap<String, String>,
    /// Returned by `fuel::remaining`.
    fuel: u64,
    /// Every `log::*` call, in order.
    logs: Vec<Log>,
    /// Counter totals by name.
    counters: HashMap<String, u64>,
    /// Histogram observations by name, in order.
    histograms: HashMap<String, Vec<f64>>,
    /// Answers `upstream::send`; taken out while it runs.
    upstream: Option<Stub>,
    /// Every request `upstream::send` passed to the stub, in order.
    sent: Vec<Request>,
}

/// What a test answers upstream calls with.
type StubFn = dyn FnMut(&Request) -> Result<Response, upstream::Error>;

/// The upstream stub, boxed so [`State`] can hold any closure.
struct Stub(Box<StubFn>);

impl std::fmt::Debug for Stub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stub(..)")
    }
}

thread_local! {
    /// The context of the test running on this thread, while it runs code.
    static CURRENT: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// A stand-in for the gateway in a native test: the config and fuel a
/// handler sees, and the logs and metrics it leaves.
///
/// Code that uses the host services runs inside [`Context::run`] or
/// [`Context::call`]; what it recorded stays in the context afterwards (it
/// accumulates over several calls).
#[derive(Debug)]
pub struct Context {
    /// Moved into [`CURRENT`] while code runs, and back afterwards.
    state: State,
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl Context {
    /// A context with an empty config and [`DEFAULT_FUEL`].
    pub fn new() -> Self {
        Self {
            state: State {
                fuel: DEFAULT_FUEL,
                ..State::default()
            },
        }
    }

    /// Sets the config value `key` (what `config::get(key)` returns).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.state.config.insert(key.into(), value.into());
        self
    }

    /// Sets what `fuel::remaining()` returns. Native code burns no fuel, so
    /// it stays at this value.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.state.fuel = fuel;
        self
    }

    /// Answers every [`upstream::send`] (and [`upstream::get`]) with
    /// `stub`, which sees each request and returns the upstream's response
    /// or the error the call gets. Without a stub, `upstream::send` panics.
    ///
    /// The requests are recorded: [`Context::sent`].
    ///
    /// ```
    /// use wasmgate_sdk::{testing, upstream};
    ///
    /// let mut t = testing::Context::new().upstream(|req| match req.uri().host() {
    ///     Some("api.internal") => Ok(upstream::Response::new(b"ok".to_vec())),
    ///     _ => Err(upstream::Error::Denied),
    /// });
    /// let denied = t.run(|| upstream::get("http://elsewhere/"));
    /// assert_eq!(denied.err(), Some(upstream::Error::Denied));
    /// assert_eq!(t.sent().len(), 1);
    /// ```
    pub fn upstream(
        mut self,
        stub: impl FnMut(&Request) -> Result<Response, upstream::Error> + 'static,
    ) -> Self {
        self.state.upstream = Some(Stub(Box::new(stub)));
        self
    }

    /// Runs `f` with this context's host services, and returns its result.
    pub fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        /// Puts the state back even if `f` panics, so a test that catches
        /// the panic still sees what was recorded before it.
        struct Installed<'a> {
            /// Where the state goes back to.
            home: &'a mut State,
            /// The context this one is nested in, if any.
            outer: Option<State>,
        }
        impl Drop for Installed<'_> {
            fn drop(&mut self) {
                if let Some(state) = CURRENT.replace(self.outer.take()) {
                    *self.home = state;
                }
            }
        }
        let outer = CURRENT.replace(Some(std::mem::take(&mut self.state)));
        let _installed = Installed {
            home: &mut self.state,
            outer,
        };
        f()
    }

    /// Calls `handler` (a `#[handler]` function, or any function of a
    /// request) with `req` in this context, and returns its response.
    pub fn call<R: IntoResponse>(
        &mut self,
        handler: impl FnOnce(Request) -> R,
        req: Request,
    ) -> Response {
        self.run(|| handler(req).into_response())
    }

    /// Every message logged so far, in order.
    pub fn logs(&self) -> &[Log] {
        &self.state.logs
    }

    /// The total added to counter `name` so far; 0 if never touched.
    pub fn counter(&self, name: &str) -> u64 {
        self.state.counters.get(name).copied().unwrap_or(0)
    }

    /// The values observed in histogram `name` so far, in order.
    pub fn values(&self, name: &str) -> &[f64] {
        self.state.histograms.get(name).map_or(&[], Vec::as_slice)
    }

    /// Every request sent upstream so far, in order, as the handler sent it
    /// (extensions such as [`upstream::Timeouts`] included).
    pub fn sent(&self) -> &[Request] {
        &self.state.sent
    }
}

/// A `GET` request for `uri` (path and query, e.g. `/hello?name=you`).
///
/// # Panics
///
/// If `uri` is not a valid URI: this is for tests.
pub fn get(uri: &str) -> Request {
    request(http::Method::GET, uri, Vec::new())
}

/// A `POST` request for `uri` with `body`.
///
/// # Panics
///
/// If `uri` is not a valid URI: this is for tests.
pub fn post(uri: &str, body: impl Into<Vec<u8>>) -> Request {
    request(http::Method::POST, uri, body.into())
}

/// A request with any method.
///
/// # Panics
///
/// If `uri` is not a valid URI: this is for tests.
pub fn request(method: http::Method, uri: &str, body: Vec<u8>) -> Request {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri
        .parse()
        .unwrap_or_else(|e| panic!("testing: {uri:?} is not a valid request URI: {e}"));
    req
}

/// `req` as the gateway passes it to a handler deployed at `route`: with
/// the [`ROUTE_HEADER`](crate::ROUTE_HEADER) that [`Router`](crate::Router)
/// and [`RequestExt::relative_path`](crate::RequestExt::relative_path) read.
///
/// ```
/// use wasmgate_sdk::{RequestExt, testing};
///
/// let req = testing::routed("/api", testing::get("/api/users"));
/// assert_eq!(req.relative_path(), "/users");
/// ```
///
/// # Panics
///
/// If `route` is not a valid header value: this is for tests.
pub fn routed(route: &str, mut req: Request) -> Request {
    let value = http::HeaderValue::from_str(route)
        .unwrap_or_else(|e| panic!("testing: {route:?} is not a valid route: {e}"));
    req.headers_mut().insert(crate::ROUTE_HEADER, value);
    req
}

/// The native host services, on the current thread's context.
pub(crate) mod host {
    use super::{CURRENT, Log, State};
    use crate::log::Level;
    use crate::{Request, Response, upstream};

    /// Runs `f` on the current context; `what` names the service for the
    /// panic outside one.
    fn with<R>(what: &str, f: impl FnOnce(&mut State) -> R) -> R {
        CURRENT.with_borrow_mut(|state| match state {
            Some(state) => f(state),
            None => panic!(
                "`wasmgate_sdk::{what}` was called outside the gateway. In a native build \
                 (a unit test) the host services need a test context: call the handler with \
                 `wasmgate_sdk::testing::Context::new().call(handler, request)` or wrap the \
                 code in `Context::run(|| ...)`"
            ),
        })
    }

    /// The gateway silently drops a metric with an invalid name; a test had
    /// better fail on it.
    fn check_metric_name(name: &str) {
        let mut bytes = name.bytes();
        let valid = name.len() <= 64
            && bytes
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        assert!(
            valid,
            "metric name {name:?} would be dropped by the gateway: names match \
             `[a-z_][a-z0-9_]*` and are at most 64 bytes"
        );
    }

    pub(crate) fn log(level: Level, msg: &str) {
        with("log", |s| {
            s.logs.push(Log {
                level,
                message: msg.to_owned(),
            });
        });
    }

    pub(crate) fn counter_add(name: &str, value: u64) {
        check_metric_name(name);
        with("metrics::counter_add", |s| {
            let total = s.counters.entry(name.to_owned()).or_default();
            *total = total.saturating_add(value);
        });
    }

    pub(crate) fn histogram_observe(name: &str, value: f64) {
        check_metric_name(name);
        with("metrics::histogram_observe", |s| {
            s.histograms.entry(name.to_owned()).or_default().push(value);
        });
    }

    pub(crate) fn config_get(key: &str) -> Option<String> {
        with("config::get", |s| s.config.get(key).cloned())
    }

    pub(crate) fn fuel_remaining() -> u64 {
        with("fuel::remaining", |s| s.fuel)
    }

    pub(crate) fn upstream_send(req: Request) -> Result<Response, upstream::Error> {
        // Out of the context while it runs, so the stub may use the host
        // services itself.
        let Some(mut stub) = with("upstream::send", |s| s.upstream.take()) else {
            panic!(
                "`wasmgate_sdk::upstream::send` was called but the test context has no \
                 upstream stub: give it one with `Context::new().upstream(|req| ...)`, \
                 returning the upstream's response or an `upstream::Error`"
            )
        };
        let result = (stub.0)(&req);
        with("upstream::send", |s| {
            s.upstream = Some(stub);
            s.sent.push(req);
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config, fuel, log, metrics, upstream};

    #[test]
    fn context_supplies_config_and_fuel() {
        let mut t = Context::new().config("name", "you").fuel(1_000);
        let (name, missing, fuel) =
            t.run(|| (config::get("name"), config::get("other"), fuel::remaining()));
        assert_eq!(name.as_deref(), Some("you"));
        assert_eq!(missing, None);
        assert_eq!(fuel, 1_000);
        assert_eq!(Context::new().run(fuel::remaining), DEFAULT_FUEL);
    }

    #[test]
    fn context_records_logs_and_metrics_across_calls() {
        let mut t = Context::new();
        t.run(|| {
            log::info("one");
            metrics::counter_add("hits", 2);
            metrics::histogram_observe("latency", 1.5);
        });
        t.run(|| {
            log::log(Level::Warn, "two");
            metrics::counter_add("hits", 3);
            metrics::histogram_observe("latency", 0.5);
        });
        let logs: Vec<_> = t.logs().iter().map(|l| (l.level, &*l.message)).collect();
        assert_eq!(logs, [(Level::Info, "one"), (Level::Warn, "two")]);
        assert_eq!(t.counter("hits"), 5);
        assert_eq!(t.counter("never"), 0);
        assert_eq!(t.values("latency"), [1.5, 0.5]);
        assert!(t.values("never").is_empty());
    }

    #[test]
    fn call_runs_a_handler_and_builds_its_response() {
        fn handler(req: Request) -> (http::StatusCode, String) {
            metrics::counter_add("calls", 1);
            (http::StatusCode::CREATED, req.uri().to_string())
        }
        let mut t = Context::new();
        let resp = t.call(handler, get("/x?y=1"));
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.body(), b"/x?y=1");
        assert_eq!(t.counter("calls"), 1);
    }

    #[test]
    fn nested_contexts_are_separate() {
        let mut outer = Context::new().config("k", "outer");
        let mut inner = Context::new().config("k", "inner");
        outer.run(|| {
            metrics::counter_add("n", 1);
            assert_eq!(inner.run(|| config::get("k")).as_deref(), Some("inner"));
            assert_eq!(config::get("k").as_deref(), Some("outer"));
        });
        assert_eq!(outer.counter("n"), 1);
        assert_eq!(inner.counter("n"), 0);
    }

    #[test]
    fn state_survives_a_panic_in_the_handler() {
        let mut t = Context::new();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.run(|| {
                log::error("about to fail");
                panic!("boom");
            })
        }));
        assert!(result.is_err());
        assert_eq!(t.logs()[0].message, "about to fail");
        // And the thread has no context left behind.
        let outside = std::panic::catch_unwind(|| config::get("k"));
        assert!(outside.is_err());
    }

    #[test]
    fn services_outside_a_context_panic_naming_testing() {
        let err = std::panic::catch_unwind(|| config::get("k")).expect_err("no context");
        let msg = err
            .downcast_ref::<String>()
            .expect("formatted panic message");
        assert!(msg.contains("`wasmgate_sdk::config::get`"), "{msg}");
        assert!(msg.contains("wasmgate_sdk::testing::Context"), "{msg}");
    }

    #[test]
    fn invalid_metric_names_fail_the_test() {
        let mut t = Context::new();
        for name in ["Bad", "1x", "", "a-b", &"x".repeat(65)] {
            let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                t.run(|| metrics::counter_add(name, 1));
            }))
            .expect_err(name);
            let msg = err.downcast_ref::<String>().expect("message");
            assert!(msg.contains("would be dropped by the gateway"), "{msg}");
        }
        t.run(|| metrics::counter_add(&"x".repeat(64), 1));
        t.run(|| metrics::counter_add("_ok_9", 1));
    }

    #[test]
    fn upstream_calls_go_to_the_stub_and_are_recorded() {
        let mut calls = 0;
        let mut t = Context::new().upstream(move |req| {
            calls += 1;
            // The stub may use the host services.
            log::info(&format!("stub saw {}", req.uri()));
            let mut resp = Response::new(format!("call {calls}").into_bytes());
            *resp.status_mut() = http::StatusCode::CREATED;
            Ok(resp)
        });
        let first = t.run(|| upstream::get("http://a.test/x")).expect("stubbed");
        let mut req = post("http://b.test/y", "payload");
        let timeouts = upstream::Timeouts {
            connect: Some(std::time::Duration::from_secs(1)),
            ..upstream::Timeouts::default()
        };
        req.extensions_mut().insert(timeouts);
        let second = t.run(|| upstream::send(req)).expect("stubbed");
        assert_eq!(first.status(), 201);
        assert_eq!(first.body(), b"call 1");
        assert_eq!(second.body(), b"call 2");
        let sent: Vec<_> = t.sent().iter().map(|r| r.uri().to_string()).collect();
        assert_eq!(sent, ["http://a.test/x", "http://b.test/y"]);
        assert_eq!(t.sent()[1].body(), b"payload");
        assert_eq!(t.sent()[1].extensions().get(), Some(&timeouts));
        assert_eq!(t.logs()[1].message, "stub saw http://b.test/y");
    }

    #[test]
    fn upstream_without_a_stub_panics_saying_how_to_add_one() {
        let mut t = Context::new();
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.run(|| upstream::get("http://a.test/"))
        }))
        .expect_err("no stub");
        let msg = err.downcast_ref::<&str>().expect("a literal message");
        assert!(msg.contains("no upstream stub"), "{msg}");
        assert!(msg.contains("Context::new().upstream("), "{msg}");
        let outside = std::panic::catch_unwind(|| upstream::get("http://a.test/"));
        assert!(outside.is_err());
    }

    #[test]
    fn request_helpers_build_requests() {
        let req = post("/p?q=1", "body");
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri(), "/p?q=1");
        assert_eq!(req.body(), b"body");
        assert_eq!(get("/").method(), http::Method::GET);
    }
}
