//! `echo`: describes the request it received, routed wherever the gateway
//! configuration mounts it (the examples use `/echo`).
//!
//! With a body it answers 200 `text/plain`: `METHOD URI` (URI = path and
//! query), one `name: value` line per header, a blank line, then the raw
//! request body. Without a body it answers 204 with an empty body. Either way
//! the method is also sent back in `x-echo-method`, and the fuel left when the
//! response was built in `x-fuel-remaining` (so tests see the fuel import).

use wasmgate_sdk::http::StatusCode;
use wasmgate_sdk::http::header::{CONTENT_TYPE, HeaderValue};
use wasmgate_sdk::{IntoResponse, Request, Response, fuel, log};

#[wasmgate_sdk::handler]
fn echo(req: Request) -> Response {
    let mut resp = if req.body().is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        let mut resp = Response::new(describe(&req));
        // Plain `text/plain` without a charset: the body is echoed as sent
        // and need not be UTF-8.
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp
    };
    // Standard methods and extensions alike are tokens, always valid values.
    if let Ok(method) = HeaderValue::from_str(req.method().as_str()) {
        resp.headers_mut().insert("x-echo-method", method);
    }
    resp.headers_mut()
        .insert("x-fuel-remaining", HeaderValue::from(fuel::remaining()));
    log::debug(&format!("echoed {} bytes", req.body().len()));
    resp
}

/// `METHOD URI`, the headers, a blank line, the body; header values and body
/// are copied as bytes, whatever their encoding.
fn describe(req: &Request) -> Vec<u8> {
    let mut out = format!("{} {}\n", req.method(), req.uri()).into_bytes();
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(req.body());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::log::Level;
    use wasmgate_sdk::testing::{Context, get, post};

    #[test]
    fn describes_a_request_with_a_body() {
        let mut req = post("/echo?q=1", "payload");
        req.headers_mut()
            .insert("x-a", HeaderValue::from_static("1"));
        let mut t = Context::new();
        let resp = t.call(echo, req);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(resp.headers()["x-echo-method"], "POST");
        assert_eq!(resp.body(), b"POST /echo?q=1\nx-a: 1\n\npayload");
        assert_eq!(t.logs().len(), 1);
        assert_eq!(t.logs()[0].level, Level::Debug);
        assert_eq!(t.logs()[0].message, "echoed 7 bytes");
    }

    #[test]
    fn without_a_body_is_204_with_the_fuel_left() {
        let mut t = Context::new().fuel(1234);
        let resp = t.call(echo, get("/echo"));
        assert_eq!(resp.status(), 204);
        assert!(resp.body().is_empty());
        assert_eq!(resp.headers()["x-fuel-remaining"], "1234");
    }
}
