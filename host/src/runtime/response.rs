//! What a guest's response must be before a client sees it.
//!
//! A guest's response is untrusted input. It is checked here, on the worker
//! that ran the guest, before anything is built from it: a status in
//! `200..=599`, valid header names and values, a head of at most
//! [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] fields, and head plus body within
//! the handler's `limits.max_response_bytes`. Anything else becomes 502
//! `bad_response` with the reason. Headers that belong to the connection,
//! not the message (hop-by-hop, RFC 9110 7.6.1), and the gateway's own
//! `x-wasmgate-error` are dropped, so a guest can neither break framing nor
//! forge a gateway error.

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::bindings::GuestResponse;
use crate::error::{ERROR_HEADER, RequestError};
use crate::guest_log::escape;

/// Largest response head a guest may send: status line and header fields,
/// counted as they would be written (`name: value\r\n`). Proxies commonly
/// accept 8-64 KiB; a larger head is a bug or an attack.
pub const MAX_HEAD_BYTES: usize = 64 << 10;

/// Most header fields in one guest response.
pub const MAX_HEADERS: usize = 256;

/// The status line and the blank line that ends the head.
const STATUS_LINE_BYTES: usize = "HTTP/1.1 200 \r\n\r\n".len();

/// Header names that describe the connection, not the message: the
/// gateway sets framing itself and never forwards these (RFC 9110 7.6.1,
/// plus the legacy `proxy-connection` and `keep-alive`).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Validates a guest response against `max_bytes` (head and body) and
/// turns it into an HTTP response.
pub(super) fn from_guest(
    response: GuestResponse,
    max_bytes: u64,
) -> Result<http::Response<Bytes>, RequestError> {
    let bad = |reason: String| Err(RequestError::BadResponse(reason));
    let status = check_status(response.status)?;
    // Size first, from lengths alone, before any header is parsed.
    let head = check_head(
        response.headers.len(),
        response
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len()),
    )?;
    check_total(head, response.body.len(), max_bytes)?;

    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for (name, value) in response.headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            return bad(format!("header name {name:?}"));
        };
        let Ok(value) = HeaderValue::from_bytes(&value) else {
            return bad(format!("value of header {name}"));
        };
        // Cannot fail below MAX_HEADERS fields, but a panic here would cost
        // a worker, so the fallible form is used.
        if headers.try_append(name, value).is_err() {
            return bad("too many header fields".to_owned());
        }
    }
    Ok(build(status, headers, Bytes::from(response.body)))
}

/// What a `wasi:http/proxy` guest passes to its response outparam.
pub(super) type ProxyResponse = Result<
    http::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>,
    wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
>;

/// Collects a `wasi:http/proxy` guest's response as the guest writes it,
/// with the same checks as [`from_guest`]: the head before any of the
/// body, and the body cut off once head and body pass `max_bytes`. Runs
/// beside the guest's call (the guest blocks when the body's buffer is
/// full until this reads it).
pub(super) async fn from_proxy(
    response: tokio::sync::oneshot::Receiver<ProxyResponse>,
    max_bytes: u64,
) -> Result<http::Response<Bytes>, RequestError> {
    use http_body_util::BodyExt;

    let bad = |reason: String| RequestError::BadResponse(reason);
    let response = match response.await {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => {
            let code = format!("{code:?}");
            let code = escape(&code, 200);
            return Err(bad(format!("the guest answered with the error {code}")));
        }
        Err(_) => return Err(bad("the guest set no response".to_owned())),
    };
    let (parts, mut body) = response.into_parts();
    let status = check_status(parts.status.as_u16())?;
    let head = check_head(
        parts.headers.len(),
        parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len()),
    )?;
    let mut collected = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| bad(format!("the guest's body failed: {e}")))?;
        if let Ok(data) = frame.into_data() {
            check_total(head, collected.len() + data.len(), max_bytes)?;
            collected.extend_from_slice(&data);
        }
    }
    Ok(build(status, parts.headers, Bytes::from(collected)))
}

/// A status in `200..=599`.
fn check_status(status: u16) -> Result<StatusCode, RequestError> {
    match status {
        200..=599 => StatusCode::from_u16(status)
            .map_err(|_| RequestError::BadResponse(format!("status {status}"))),
        other => Err(RequestError::BadResponse(format!(
            "status {other} is outside 200..=599"
        ))),
    }
}

/// Checks the number of header fields and the head's size (from the
/// fields' name and value lengths) and returns the head's size.
fn check_head(fields: usize, lengths: impl Iterator<Item = usize>) -> Result<usize, RequestError> {
    if fields > MAX_HEADERS {
        return Err(RequestError::BadResponse(format!(
            "{fields} header fields; at most {MAX_HEADERS} are allowed"
        )));
    }
    let head = lengths.map(|len| len + 4).sum::<usize>() + STATUS_LINE_BYTES;
    if head > MAX_HEAD_BYTES {
        return Err(RequestError::BadResponse(format!(
            "response head is {head} bytes; at most {MAX_HEAD_BYTES} are allowed"
        )));
    }
    Ok(head)
}

/// Head and body together within `max_bytes`.
fn check_total(head: usize, body: usize, max_bytes: u64) -> Result<(), RequestError> {
    let total = head as u64 + body as u64;
    if total > max_bytes {
        return Err(RequestError::BadResponse(format!(
            "response is {total} bytes or more; limits.max_response_bytes is {max_bytes}"
        )));
    }
    Ok(())
}

/// The response to send, without the fields that belong to the connection.
fn build(status: StatusCode, mut headers: HeaderMap, body: Bytes) -> http::Response<Bytes> {
    strip_connection_headers(&mut headers);
    let mut out = http::Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// Drops hop-by-hop fields, the fields a `Connection` header names, and
/// `x-wasmgate-error`.
fn strip_connection_headers(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop_by_hop: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name) || name.as_str() == ERROR_HEADER)
        .cloned()
        .collect();
    for name in hop_by_hop {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1 << 20;

    fn response(status: u16, headers: &[(&str, &[u8])]) -> GuestResponse {
        GuestResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
                .collect(),
            body: b"body".to_vec(),
        }
    }

    fn reason(result: Result<http::Response<Bytes>, RequestError>) -> String {
        match result {
            Err(RequestError::BadResponse(reason)) => reason,
            other => panic!("expected bad_response, got {other:?}"),
        }
    }

    #[test]
    fn valid_responses_pass_with_repeated_headers_in_order() {
        let out = from_guest(
            response(201, &[("x-a", b"1"), ("X-A", b"2"), ("content-type", b"t")]),
            LIMIT,
        )
        .expect("valid");
        assert_eq!(out.status(), 201);
        let values: Vec<_> = out.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(out.headers()["content-type"], "t");
        assert_eq!(out.body().as_ref(), b"body");
    }

    #[test]
    fn hop_by_hop_named_and_gateway_headers_are_dropped() {
        let out = from_guest(
            response(
                200,
                &[
                    ("connection", b"x-secret, keep-alive"),
                    ("x-secret", b"1"),
                    ("keep-alive", b"timeout=9"),
                    ("proxy-connection", b"keep-alive"),
                    ("proxy-authenticate", b"Basic"),
                    ("te", b"trailers"),
                    ("trailer", b"x-t"),
                    ("upgrade", b"h2c"),
                    ("transfer-encoding", b"chunked"),
                    ("content-length", b"999"),
                    ("x-wasmgate-error", b"forged"),
                    ("x-kept", b"yes"),
                ],
            ),
            LIMIT,
        )
        .expect("valid");
        let names: Vec<&str> = out.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn invalid_statuses_and_headers_are_rejected() {
        for bad in [
            response(1000, &[]),
            response(99, &[]),
            response(101, &[]),
            response(600, &[]),
            response(200, &[("bad name", b"x")]),
            response(200, &[("x", b"line\nbreak")]),
        ] {
            reason(from_guest(bad, LIMIT));
        }
    }

    #[test]
    fn too_many_headers_are_rejected_without_building_any() {
        // 100,000 distinct names once made `HeaderMap::append` panic.
        let mut many = response(200, &[]);
        many.headers = (0..100_000)
            .map(|i| (format!("x-h{i}"), b"v".to_vec()))
            .collect();
        assert!(reason(from_guest(many, LIMIT)).contains("100000 header fields"));

        let mut at_cap = response(200, &[]);
        at_cap.headers = (0..MAX_HEADERS)
            .map(|i| (format!("x-h{i}"), b"v".to_vec()))
            .collect();
        assert_eq!(
            from_guest(at_cap, LIMIT)
                .expect("at the cap")
                .headers()
                .len(),
            MAX_HEADERS
        );
    }

    #[test]
    fn the_head_and_the_whole_response_are_bounded() {
        let big_value = vec![b'a'; MAX_HEAD_BYTES];
        let reason_head = reason(from_guest(response(200, &[("x", &big_value)]), LIMIT));
        assert!(reason_head.contains("response head is"), "{reason_head}");

        // Head and body count together.
        let mut large = response(200, &[("x-a", b"1")]);
        large.body = vec![0; 1000];
        let head = STATUS_LINE_BYTES as u64 + "x-a".len() as u64 + 1 + 4;
        let exact = head + 1000;
        assert!(from_guest(large, exact).is_ok(), "exactly at the limit");
        let mut large = response(200, &[("x-a", b"1")]);
        large.body = vec![0; 1000];
        let over = reason(from_guest(large, exact - 1));
        assert!(over.contains("limits.max_response_bytes"), "{over}");
    }
}
