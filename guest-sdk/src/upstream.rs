//! Calling HTTP upstreams from a handler.
//!
//! [`send`] makes a call through the standard `wasi:http/outgoing-handler`
//! import and returns the upstream's whole response, or an [`Error`] that
//! says what went wrong and which status to answer with: a handler that
//! returns `Result<_, upstream::Error>` turns an upstream failure into 502
//! (504 on a timeout) with `?`.
//!
//! ```
//! use wasmgate_sdk::{Request, Response, testing, upstream};
//!
//! #[wasmgate_sdk::handler]
//! fn weather(_req: Request) -> Result<Response, upstream::Error> {
//!     let resp = upstream::get("http://weather.internal/today")?;
//!     Ok(resp)
//! }
//!
//! // In a native unit test a stub answers instead of the network, and the
//! // context records what was sent.
//! let mut t = testing::Context::new()
//!     .upstream(|_req| Ok(upstream::Response::new(b"sunny".to_vec())));
//! let resp = t.call(weather, testing::get("/weather"));
//! assert_eq!(resp.body(), b"sunny");
//! assert_eq!(t.sent()[0].uri(), "http://weather.internal/today");
//!
//! let mut t = testing::Context::new().upstream(|_req| Err(upstream::Error::Timeout));
//! assert_eq!(t.call(weather, testing::get("/weather")).status(), 504);
//! ```
//!
//! The gateway lets a tenant reach only the hosts its configuration allows
//! (`allowed_outbound_hosts`); any other call fails with
//! [`Error::Denied`], without a connection. It also bounds how many calls a
//! request makes, how long they take (never past the request's deadline)
//! and how large a response may be.
//!
//! A call blocks the handler until the response has arrived. That costs
//! the gateway nothing: a waiting handler holds no worker thread and burns
//! no fuel.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::IntoResponse;

#[cfg(target_arch = "wasm32")]
mod wasi;

/// A request to an upstream: its URI is absolute (`http://host:port/path`).
pub type Request = crate::Request;

/// An upstream's response, its body read in full.
pub type Response = crate::Response;

/// Sends `req` to the upstream its URI names and waits for the whole
/// response.
///
/// The URI must be absolute (scheme and authority). A non-empty body is sent
/// with its `content-length`. Headers the gateway forbids (`host`,
/// `connection`, `transfer-encoding` and the other hop-by-hop headers) make
/// the call fail with [`Error::Other`] naming the header. To bound the call
/// more tightly than the gateway does, put [`Timeouts`] in the request's
/// extensions.
///
/// In a native build (a unit test) the stub of the current
/// [`testing::Context`](crate::testing::Context) answers instead.
///
/// # Errors
///
/// When the gateway refuses the call, the upstream cannot be reached or is
/// too slow, the response is too large, or the request is not one that can
/// be sent; see [`Error`].
pub fn send(req: Request) -> Result<Response, Error> {
    if req.uri().scheme().is_none() || req.uri().authority().is_none() {
        return Err(Error::Other(format!(
            "`{}` is not an absolute URL: an upstream request needs a scheme and a host",
            req.uri()
        )));
    }
    #[cfg(target_arch = "wasm32")]
    return wasi::send(req);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::imports::upstream_send(req);
}

/// Sends a `GET` for `url` (`http://host:port/path?query`); see [`send`].
///
/// # Errors
///
/// As [`send`], and [`Error::Other`] when `url` is not a valid URL.
pub fn get(url: &str) -> Result<Response, Error> {
    let req = http::Request::get(url)
        .body(Vec::new())
        .map_err(|e| Error::Other(format!("`{url}` is not a valid URL: {e}")))?;
    send(req)
}

/// Time limits for one call, tighter than the gateway's own: put them in
/// the request's extensions. The gateway may shorten them (a call never
/// outlives the request it is made for).
///
/// ```
/// use std::time::Duration;
/// use wasmgate_sdk::upstream::{Request, Timeouts};
///
/// let mut req = Request::new(Vec::new());
/// req.extensions_mut().insert(Timeouts {
///     first_byte: Some(Duration::from_secs(2)),
///     ..Timeouts::default()
/// });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish the connection.
    pub connect: Option<Duration>,
    /// From sending the request to the first byte of the response.
    pub first_byte: Option<Duration>,
    /// Between two chunks of the response body.
    pub between_bytes: Option<Duration>,
}

/// Why an upstream call failed.
///
/// As a handler's return value it answers [`Error::status`] with the
/// message as a plain-text body.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The gateway refused the call: the host is not in the tenant's
    /// `allowed_outbound_hosts`, or a gateway bound (calls per request)
    /// was reached. No connection was opened.
    Denied,
    /// Connecting, or waiting for the response or its body, took too long.
    Timeout,
    /// The upstream could not be reached: its name did not resolve, or the
    /// connection was refused or reset.
    Unreachable,
    /// The request or the response exceeded a size bound.
    TooLarge,
    /// Anything else (a protocol error, a request that cannot be sent), with
    /// the reason.
    Other(String),
}

impl Error {
    /// The status a gateway answers for this failure: 504 Gateway Timeout
    /// for [`Error::Timeout`], 502 Bad Gateway for the rest.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied => f.write_str("upstream call denied by the gateway"),
            Error::Timeout => f.write_str("upstream timed out"),
            Error::Unreachable => f.write_str("upstream unreachable"),
            Error::TooLarge => f.write_str("upstream message too large"),
            Error::Other(reason) => write!(f, "upstream call failed: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

impl IntoResponse for Error {
    fn into_response(self) -> crate::Response {
        (self.status(), format!("{self}\n")).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Context;

    #[test]
    fn errors_map_to_gateway_statuses_and_text() {
        assert_eq!(Error::Timeout.status(), 504);
        for error in [
            Error::Denied,
            Error::Unreachable,
            Error::TooLarge,
            Error::Other("x".to_owned()),
        ] {
            assert_eq!(error.status(), 502, "{error:?}");
        }
        let resp = Error::Denied.into_response();
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.body(), b"upstream call denied by the gateway\n");
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(
            Error::Other("bad".to_owned()).to_string(),
            "upstream call failed: bad"
        );
    }

    #[test]
    fn relative_and_invalid_urls_are_refused_before_the_stub() {
        let mut t = Context::new().upstream(|_| panic!("not called"));
        let relative = t.run(|| get("/path")).expect_err("relative");
        assert!(
            relative.to_string().contains("not an absolute URL"),
            "{relative}"
        );
        let invalid = t.run(|| get("http://a b/")).expect_err("invalid");
        assert!(invalid.to_string().contains("not a valid URL"), "{invalid}");
        assert!(t.sent().is_empty());
    }
}
