//! Turning what a handler returns into the response the host receives.
//!
//! Two layers: the public [`IntoResponse`] builds a checked `http` response,
//! and the hidden [`IntoWitResponse`] (what `#[handler]` calls) lowers either
//! that or an unchecked [`RawResponse`] into the WIT record.

use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue};

use crate::__private::WitResponse;
use crate::Response;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const OCTET_STREAM: &str = "application/octet-stream";

/// Something a handler can return.
///
/// | type | status | body | `content-type` (if not set) |
/// |---|---|---|---|
/// | [`Response`] | as set | as set | none added |
/// | `http::Response<String>`, `http::Response<&'static str>` | as set | the text | `text/plain; charset=utf-8` |
/// | `String`, `&'static str` | 200 | the text | `text/plain; charset=utf-8` |
/// | `Vec<u8>` | 200 | the bytes | `application/octet-stream` |
/// | [`StatusCode`] | that status | empty | none |
/// | `(StatusCode, T)` | that status | as `T` | as `T` |
/// | `Result<T, E>` | as `T` or `E` | as `T` or `E` | as `T` or `E` |
///
/// With the `serde` feature, `Json` sends a value as JSON.
///
/// Implement it for your own types to return them from a handler.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a response",
    label = "`{Self}` does not implement `wasmgate_sdk::IntoResponse`",
    note = "return a `wasmgate_sdk::Response`, a `String`, a `StatusCode`, a `(StatusCode, body)` pair, or implement `wasmgate_sdk::IntoResponse` for your type"
)]
pub trait IntoResponse {
    /// Builds the response.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

/// Sets `content-type` unless the handler already did.
fn with_default_content_type(mut resp: Response, value: &'static str) -> Response {
    resp.headers_mut()
        .entry(CONTENT_TYPE)
        .or_insert(HeaderValue::from_static(value));
    resp
}

impl IntoResponse for http::Response<String> {
    fn into_response(self) -> Response {
        with_default_content_type(self.map(String::into_bytes), TEXT_PLAIN)
    }
}

impl IntoResponse for http::Response<&'static str> {
    fn into_response(self) -> Response {
        with_default_content_type(self.map(|s| s.as_bytes().to_vec()), TEXT_PLAIN)
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        http::Response::new(self).into_response()
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        http::Response::new(self).into_response()
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        with_default_content_type(http::Response::new(self), OCTET_STREAM)
    }
}

impl IntoResponse for StatusCode {
    fn into_response(self) -> Response {
        let mut resp = Response::default();
        *resp.status_mut() = self;
        resp
    }
}

impl<T: IntoResponse> IntoResponse for (StatusCode, T) {
    fn into_response(self) -> Response {
        let (status, body) = self;
        let mut resp = body.into_response();
        *resp.status_mut() = status;
        resp
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(err) => err.into_response(),
        }
    }
}

/// A value sent as a JSON body: 200 with `content-type: application/json`
/// (wrap it in a `(StatusCode, Json(value))` pair for another status).
///
/// A value `serde_json` cannot serialise (a map with non-string keys, say)
/// gives 500 with the reason.
#[cfg(feature = "serde")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Json<T>(
    /// The value to send.
    pub T,
);

#[cfg(feature = "serde")]
impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => with_default_content_type(http::Response::new(body), "application/json"),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot send the response as JSON: {e}\n"),
            )
                .into_response(),
        }
    }
}

/// A response passed to the gateway exactly as given, without the checks of
/// the `http` crate.
///
/// Meant for handlers that exercise the gateway's own validation, e.g. a
/// status of 1000, which `http::StatusCode` cannot represent. The gateway
/// answers a status outside `200..=599` or an invalid header with 502.
/// Ordinary handlers should return an [`IntoResponse`] type instead.
///
/// `RawResponse` deliberately does not implement [`IntoResponse`] (that would
/// need a checked [`Response`]); `#[handler]` accepts it directly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawResponse {
    /// The status code, unchecked.
    pub status: u16,
    /// Header names and values, in order, unchecked. Framing headers
    /// (`content-length`, `transfer-encoding`, `connection`) are ignored by
    /// the gateway.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl From<Response> for RawResponse {
    fn from(resp: Response) -> Self {
        let (parts, body) = resp.into_parts();
        Self {
            status: parts.status.as_u16(),
            // `HeaderName` is always lower case; keep every repeated value.
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
            body,
        }
    }
}

/// What `#[handler]` accepts as a return type: every [`IntoResponse`] type
/// and [`RawResponse`]. Sealed by living in the hidden `__private` module;
/// implement [`IntoResponse`] instead.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned from a wasmgate handler",
    label = "the return type must implement `wasmgate_sdk::IntoResponse`",
    note = "return a `wasmgate_sdk::Response`, a `String`, a `StatusCode`, a `(StatusCode, body)` pair, or implement `wasmgate_sdk::IntoResponse` for your type"
)]
pub trait IntoWitResponse {
    /// Lowers `self` into the WIT response record.
    fn into_wit_response(self) -> WitResponse;
}

impl<T: IntoResponse> IntoWitResponse for T {
    fn into_wit_response(self) -> WitResponse {
        RawResponse::from(self.into_response()).into_wit_response()
    }
}

impl IntoWitResponse for RawResponse {
    fn into_wit_response(self) -> WitResponse {
        let Self {
            status,
            headers,
            body,
        } = self;
        WitResponse {
            status,
            headers,
            body,
        }
    }
}

/// Called by the code `#[handler]` generates; a function rather than a method
/// call so a wrong return type is reported at the handler's signature.
pub fn into_wit_response<T: IntoWitResponse>(resp: T) -> WitResponse {
    resp.into_wit_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wit<T: IntoWitResponse>(resp: T) -> WitResponse {
        into_wit_response(resp)
    }

    fn header<'a>(resp: &'a WitResponse, name: &str) -> Option<&'a [u8]> {
        resp.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn text_gets_plain_content_type_and_200() {
        for resp in [wit("hi"), wit(String::from("hi"))] {
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body, b"hi");
            assert_eq!(header(&resp, "content-type"), Some(TEXT_PLAIN.as_bytes()));
        }
    }

    #[test]
    fn text_response_keeps_its_own_content_type() {
        let resp = http::Response::builder()
            .status(StatusCode::CREATED)
            .header("Content-Type", "text/html")
            .body(String::from("<p>"))
            .expect("valid response");
        let resp = wit(resp);
        assert_eq!(resp.status, 201);
        assert_eq!(
            resp.headers,
            [("content-type".to_owned(), b"text/html".to_vec())]
        );
    }

    #[test]
    fn static_str_response_gets_plain_content_type() {
        let resp = wit(http::Response::new("x"));
        assert_eq!(header(&resp, "content-type"), Some(TEXT_PLAIN.as_bytes()));
    }

    #[test]
    fn byte_response_is_passed_through_untouched() {
        let resp = http::Response::builder()
            .status(StatusCode::ACCEPTED)
            .header("X-One", "1")
            .header("x-one", "2")
            .body(vec![0, 1, 2])
            .expect("valid response");
        let resp = wit(resp);
        assert_eq!(resp.status, 202);
        assert_eq!(
            resp.headers,
            [
                ("x-one".to_owned(), b"1".to_vec()),
                ("x-one".to_owned(), b"2".to_vec())
            ]
        );
        assert_eq!(resp.body, [0, 1, 2]);
    }

    #[test]
    fn bytes_are_octet_stream() {
        let resp = wit(vec![1u8, 2]);
        assert_eq!(resp.status, 200);
        assert_eq!(header(&resp, "content-type"), Some(OCTET_STREAM.as_bytes()));
        assert_eq!(resp.body, [1, 2]);
    }

    #[test]
    fn status_code_has_empty_body_and_no_headers() {
        let resp = wit(StatusCode::NO_CONTENT);
        assert_eq!(resp.status, 204);
        assert!(resp.headers.is_empty());
        assert!(resp.body.is_empty());
    }

    #[test]
    fn pair_overrides_status_and_keeps_body() {
        let resp = wit((StatusCode::BAD_REQUEST, "bad iters\n"));
        assert_eq!(resp.status, 400);
        assert_eq!(resp.body, b"bad iters\n");
        assert_eq!(header(&resp, "content-type"), Some(TEXT_PLAIN.as_bytes()));
    }

    #[test]
    fn result_uses_either_side() {
        let ok: Result<&'static str, StatusCode> = Ok("fine");
        let err: Result<&'static str, StatusCode> = Err(StatusCode::NOT_FOUND);
        assert_eq!(wit(ok).status, 200);
        assert_eq!(wit(err).status, 404);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn json_sets_content_type_and_keeps_the_status_of_a_pair() {
        let resp = wit((StatusCode::CREATED, Json(vec![1, 2])));
        assert_eq!(resp.status, 201);
        assert_eq!(
            header(&resp, "content-type"),
            Some(&b"application/json"[..])
        );
        assert_eq!(resp.body, b"[1,2]");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn unserialisable_json_is_500_with_the_reason() {
        let map = std::collections::HashMap::from([((1, 2), 3)]);
        let resp = wit(Json(map));
        assert_eq!(resp.status, 500);
        let text = String::from_utf8(resp.body).expect("utf-8");
        assert!(
            text.contains("cannot send the response as JSON: key must be a string"),
            "{text}"
        );
    }

    #[test]
    fn raw_response_is_passed_through_unchecked() {
        let raw = RawResponse {
            status: 1000,
            headers: vec![("Bad Name".to_owned(), b"\n".to_vec())],
            body: b"x".to_vec(),
        };
        let resp = wit(raw.clone());
        assert_eq!(resp.status, raw.status);
        assert_eq!(resp.headers, raw.headers);
        assert_eq!(resp.body, raw.body);
    }
}
