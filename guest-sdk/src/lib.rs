//! Write wasmgate HTTP handlers in Rust.
//!
//! A handler is a `cdylib` crate that depends on `wasmgate-sdk` alone and is
//! compiled for `wasm32-wasip2`; the result is a WebAssembly component that
//! implements the `wasmgate:handler/handler` world (`wit/handler.wit`, shipped
//! in this crate). The gateway runs every request in a fresh instance of it,
//! so a handler keeps no state between requests.
//!
//! Mark one function with [`#[handler]`](handler). It takes a [`Request`] and
//! returns anything that implements [`IntoResponse`]:
//!
//! ```
//! use wasmgate_sdk::http::StatusCode;
//! use wasmgate_sdk::{Request, config, log, metrics};
//!
//! #[wasmgate_sdk::handler]
//! fn greet(req: Request) -> (StatusCode, String) {
//!     log::info(&format!("{} {}", req.method(), req.uri()));
//!     metrics::counter_add("greetings", 1);
//!     let name = config::get("name").unwrap_or_else(|| "world".to_owned());
//!     (StatusCode::OK, format!("hello, {name}\n"))
//! }
//! # fn main() {}
//! ```
//!
//! `wasmgate new PATH` creates such a crate (the SDK comes from the wasmgate
//! repository by path until it is on crates.io). Build it with `cargo build
//! --release --target wasm32-wasip2`; the component is
//! `target/wasm32-wasip2/release/NAME.wasm`. `cargo test` runs its unit
//! tests natively, with [`testing`].
//!
//! # Responses
//!
//! [`IntoResponse`] covers the usual cases: a full [`Response`], text
//! (`String`, `&'static str`, `http::Response<String>`, which get
//! `content-type: text/plain; charset=utf-8` unless set), bytes (`Vec<u8>`), a
//! bare [`http::StatusCode`], a `(StatusCode, body)` pair and `Result`s of
//! those. The `http` crate refuses statuses outside `100..=999` and the
//! gateway answers anything outside `200..=599` with 502; [`RawResponse`]
//! sends status, headers and body exactly as given, for handlers that test the
//! gateway itself.
//!
//! # Requests
//!
//! [`RequestExt`] adds `req.query("name")` (form-decoded query parameters),
//! `req.param("id")` (path parameters captured by a [`Router`]),
//! `req.route()` and `req.relative_path()` (the route the gateway routed the
//! request by, and the path below it) and, with the `serde` feature,
//! `req.json::<T>()` (a JSON body; a bad one is a 400 with the reason).
//! [`Router`] dispatches on method and on the path below the route inside a
//! handler.
//!
//! # Host services
//!
//! [`log`], [`metrics`], [`config`] and [`fuel`] wrap the gateway's imports,
//! and [`upstream`] calls HTTP backends through the standard
//! `wasi:http/outgoing-handler` import (only the hosts the tenant's
//! `allowed_outbound_hosts` names). In a native build (the unit tests of a
//! handler crate) they use the context of [`testing`] instead, which also
//! stubs upstreams, and panic outside one.

// `::wasmgate_sdk::...` paths emitted by `#[handler]` and by the generated
// export macro must also resolve inside this crate (doc tests, unit tests).
extern crate self as wasmgate_sdk;

pub use http;
pub use wasmgate_sdk_macro::handler;

mod request;
mod response;
mod router;
#[cfg(target_arch = "wasm32")]
mod stdio;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod upstream;

#[cfg(feature = "serde")]
pub use request::JsonError;
pub use request::{ROUTE_HEADER, RequestExt};
#[cfg(feature = "serde")]
pub use response::Json;
pub use response::{IntoResponse, RawResponse};
pub use router::Router;

/// A request as the handler sees it: fully buffered, body as bytes.
///
/// The URI holds the path and query as the client sent them (`/hello?x=1`),
/// without scheme or authority. Header names are lower case.
pub type Request = http::Request<Vec<u8>>;

/// A response a handler returns; see [`IntoResponse`] for shortcuts.
pub type Response = http::Response<Vec<u8>>;

/// Structured logging into the gateway's log, tagged with tenant and handler.
///
/// Messages longer than 4 KiB are truncated by the gateway.
pub mod log {
    /// How severe a log message is; the gateway logs it at this level.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Level {
        /// Step-by-step detail.
        Trace,
        /// Detail for debugging.
        Debug,
        /// Normal events.
        Info,
        /// Something unexpected the handler coped with.
        Warn,
        /// Something failed.
        Error,
    }

    /// Logs `msg` at `level`.
    pub fn log(level: Level, msg: &str) {
        crate::imports::log(level, msg);
    }

    /// Logs `msg` at trace level.
    pub fn trace(msg: &str) {
        log(Level::Trace, msg);
    }

    /// Logs `msg` at debug level.
    pub fn debug(msg: &str) {
        log(Level::Debug, msg);
    }

    /// Logs `msg` at info level.
    pub fn info(msg: &str) {
        log(Level::Info, msg);
    }

    /// Logs `msg` at warn level.
    pub fn warn(msg: &str) {
        log(Level::Warn, msg);
    }

    /// Logs `msg` at error level.
    pub fn error(msg: &str) {
        log(Level::Error, msg);
    }
}

/// Guest-defined Prometheus metrics, labelled by the gateway with tenant and
/// handler.
///
/// Names must match `[a-z_][a-z0-9_]*` and be at most 64 bytes, and each
/// handler may use a bounded number of distinct names. The gateway drops (and
/// counts) invalid or excess names; the handler never sees an error.
pub mod metrics {
    /// Adds `value` to the counter `name`.
    pub fn counter_add(name: &str, value: u64) {
        crate::imports::counter_add(name, value);
    }

    /// Records `value` in the histogram `name`.
    pub fn histogram_observe(name: &str, value: f64) {
        crate::imports::histogram_observe(name, value);
    }
}

/// The handler's `config` table from the gateway configuration.
pub mod config {
    /// The value configured for `key`, or `None` if it is not set.
    pub fn get(key: &str) -> Option<String> {
        crate::imports::config_get(key)
    }
}

/// The request's fuel budget.
pub mod fuel {
    /// Fuel left for this request; the request traps when it reaches zero.
    pub fn remaining() -> u64 {
        crate::imports::fuel_remaining()
    }
}

/// The host services in a component: the gateway's imports.
#[cfg(target_arch = "wasm32")]
mod imports {
    use crate::__private::bindings::wasmgate::handler as wit;
    use crate::log::Level;

    pub(crate) fn log(level: Level, msg: &str) {
        let level = match level {
            Level::Trace => wit::log::Level::Trace,
            Level::Debug => wit::log::Level::Debug,
            Level::Info => wit::log::Level::Info,
            Level::Warn => wit::log::Level::Warn,
            Level::Error => wit::log::Level::Error,
        };
        wit::log::log(level, msg);
    }

    pub(crate) fn counter_add(name: &str, value: u64) {
        wit::metrics::counter_add(name, value);
    }

    pub(crate) fn histogram_observe(name: &str, value: f64) {
        wit::metrics::histogram_observe(name, value);
    }

    pub(crate) fn config_get(key: &str) -> Option<String> {
        wit::config::get(key)
    }

    pub(crate) fn fuel_remaining() -> u64 {
        wit::fuel::remaining()
    }
}

/// The host services in a native build: the current [`testing::Context`].
#[cfg(not(target_arch = "wasm32"))]
use testing::host as imports;

/// Glue for `#[handler]` and the generated export macro. Not a public API: it
/// may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::response::{IntoWitResponse, into_wit_response};
    pub use bindings::{Guest, export};
    /// The `wit_bindgen` runtime, named by the generated code (`runtime_path`)
    /// so handler crates need no `wit-bindgen` dependency.
    pub use wit_bindgen::rt;

    /// The request and response records of the WIT contract.
    pub use bindings::{Request as WitRequest, Response as WitResponse};

    /// Bindings for the `handler` world of `wit/handler.wit`.
    #[allow(unsafe_code, missing_docs, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "wit",
            world: "handler",
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "::wasmgate_sdk::__private::bindings",
            runtime_path: "::wasmgate_sdk::__private::rt",
        });
    }

    /// Converts the request the host sent into the handler's [`Request`].
    ///
    /// The host only sends what it parsed from a valid HTTP request, so none
    /// of the fallbacks should ever trigger; they exist so a handler never
    /// panics on input it did not produce: an unknown method becomes `GET`, a
    /// bad URI becomes `/` and a bad header is skipped.
    ///
    /// [`Request`]: crate::Request
    pub fn request_from_wit(req: WitRequest) -> crate::Request {
        let WitRequest {
            method,
            uri,
            headers,
            body,
        } = req;
        let mut out = http::Request::new(body);
        *out.method_mut() = http::Method::from_bytes(method.as_bytes()).unwrap_or_default();
        *out.uri_mut() = http::Uri::try_from(uri).unwrap_or_else(|_| http::Uri::from_static("/"));
        let map = out.headers_mut();
        for (name, value) in headers {
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(&value),
            ) else {
                continue;
            };
            map.append(name, value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::__private::{WitRequest, request_from_wit};
    use http::Method;

    fn wit(method: &str, uri: &str, headers: &[(&str, &[u8])]) -> WitRequest {
        WitRequest {
            method: method.to_owned(),
            uri: uri.to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
                .collect(),
            body: b"payload".to_vec(),
        }
    }

    #[test]
    fn request_keeps_method_uri_headers_and_body() {
        let req = request_from_wit(wit(
            "POST",
            "/hello?x=1",
            &[("accept", b"*/*"), ("x-a", b"1"), ("x-a", b"2")],
        ));
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().path(), "/hello");
        assert_eq!(req.uri().query(), Some("x=1"));
        assert_eq!(req.uri(), "/hello?x=1");
        assert_eq!(req.headers()["accept"], "*/*");
        let repeated: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(repeated, ["1", "2"]);
        assert_eq!(req.body(), b"payload");
    }

    #[test]
    fn request_keeps_extension_methods() {
        let req = request_from_wit(wit("PURGE", "/", &[]));
        assert_eq!(req.method().as_str(), "PURGE");
    }

    #[test]
    fn request_falls_back_instead_of_panicking() {
        let req = request_from_wit(wit(
            "BAD METHOD",
            "not a uri",
            &[("bad name", b"v"), ("x-bad", b"a\nb"), ("x-ok", b"v")],
        ));
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/");
        assert_eq!(req.headers().len(), 1);
        assert_eq!(req.headers()["x-ok"], "v");
    }

    #[test]
    fn request_accepts_non_utf8_header_values() {
        let req = request_from_wit(wit("GET", "/", &[("x-bin", &[0xff, 0xfe])]));
        assert_eq!(req.headers()["x-bin"].as_bytes(), [0xff, 0xfe]);
    }
}

/// Compile-fail checks for `#[handler]`, run by `cargo test --doc`; the
/// macro crate's unit tests check the messages of its own errors.
///
/// A wrong argument type is a type error at the argument's type:
///
/// ```compile_fail,E0308
/// #[wasmgate_sdk::handler]
/// fn h(req: String) -> &'static str {
///     "x"
/// }
/// # fn main() {}
/// ```
///
/// A return type without `IntoResponse` is reported at the return type:
///
/// ```compile_fail,E0277
/// #[wasmgate_sdk::handler]
/// fn h(_req: wasmgate_sdk::Request) -> i32 {
///     1
/// }
/// # fn main() {}
/// ```
///
/// Signatures the glue cannot call:
///
/// ```compile_fail
/// #[wasmgate_sdk::handler]
/// async fn h(_req: wasmgate_sdk::Request) -> &'static str {
///     "x"
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// #[wasmgate_sdk::handler]
/// fn h() -> &'static str {
///     "x"
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// #[wasmgate_sdk::handler(route = "/x")]
/// fn h(_req: wasmgate_sdk::Request) -> &'static str {
///     "x"
/// }
/// # fn main() {}
/// ```
///
/// A `RawResponse` return type compiles:
///
/// ```
/// #[wasmgate_sdk::handler]
/// fn h(_req: wasmgate_sdk::Request) -> wasmgate_sdk::RawResponse {
///     wasmgate_sdk::RawResponse { status: 1000, ..Default::default() }
/// }
/// # fn main() {}
/// ```
#[cfg(doctest)]
pub struct HandlerMacroChecks;
