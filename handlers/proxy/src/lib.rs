//! `proxy`: the API-gateway pattern. Forwards each request to the upstream
//! named by the handler's config key `upstream` (an absolute URL such as
//! `http://127.0.0.1:9000`, optionally with a path prefix) and answers with
//! the upstream's response.
//!
//! The upstream sees the method, the path below the handler's route with the
//! query, the headers (less hop-by-hop ones and `host`), the body, and
//! `x-forwarded-by: wasmgate`. The client gets the upstream's status,
//! headers (less hop-by-hop ones) and body, plus `x-upstream-status`. A failed
//! call answers 502 with the reason (504 when the upstream timed out, 502
//! `upstream call denied by the gateway` when the tenant may not reach it);
//! without a usable `upstream`, 500.

use wasmgate_sdk::http::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue};
use wasmgate_sdk::http::{StatusCode, Uri};
use wasmgate_sdk::{
    IntoResponse, ROUTE_HEADER, Request, RequestExt, Response, config, log, upstream,
};

/// Headers that describe one connection, not the message (RFC 9110,
/// section 7.6.1): a proxy does not pass them on. `content-length` is set
/// again from the body.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[wasmgate_sdk::handler]
fn proxy(req: Request) -> Response {
    let Some(base) = config::get("upstream").filter(|base| is_absolute(base)) else {
        log::error("config key `upstream` must be an absolute URL such as http://127.0.0.1:9000");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "proxy: no upstream configured\n",
        )
            .into_response();
    };
    let forwarded = forward(&base, req);
    match forwarded.and_then(upstream::send) {
        Ok(resp) => answer(resp),
        Err(error) => {
            log::warn(&error.to_string());
            error.into_response()
        }
    }
}

fn is_absolute(url: &str) -> bool {
    url.parse::<Uri>()
        .is_ok_and(|uri| uri.scheme().is_some() && uri.authority().is_some())
}

/// `req` addressed to `base`: its path below the route and its query
/// appended, connection-specific headers dropped.
fn forward(base: &str, req: Request) -> Result<upstream::Request, upstream::Error> {
    let mut url = format!("{}{}", base.trim_end_matches('/'), req.relative_path());
    if let Some(query) = req.uri().query() {
        url.push('?');
        url.push_str(query);
    }
    let (parts, body) = req.into_parts();
    let mut out = upstream::Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = url
        .parse()
        .map_err(|e| upstream::Error::Other(format!("`{url}` is not a valid URL: {e}")))?;
    *out.headers_mut() = end_to_end(parts.headers);
    // The upstream's own `host` comes from the URL; the route is ours.
    out.headers_mut().remove(HOST);
    out.headers_mut().remove(ROUTE_HEADER);
    out.headers_mut()
        .insert("x-forwarded-by", HeaderValue::from_static("wasmgate"));
    Ok(out)
}

/// The upstream's response for the client, with `x-upstream-status`.
fn answer(resp: upstream::Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    parts.headers = end_to_end(parts.headers);
    parts.headers.insert(
        "x-upstream-status",
        HeaderValue::from(parts.status.as_u16()),
    );
    Response::from_parts(parts, body)
}

/// `headers` without the hop-by-hop ones, nor those `connection` names.
fn end_to_end(mut headers: HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("content-length");
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::http::Method;
    use wasmgate_sdk::testing::{self, Context};

    fn upstream_answering(status: u16, body: &str) -> Context {
        let body = body.as_bytes().to_vec();
        Context::new()
            .config("upstream", "http://127.0.0.1:9000/base/")
            .upstream(move |_req| {
                let mut resp = upstream::Response::new(body.clone());
                *resp.status_mut() = StatusCode::from_u16(status).expect("valid status");
                let headers = resp.headers_mut();
                headers.insert("x-upstream", HeaderValue::from_static("1"));
                headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
                Ok(resp)
            })
    }

    fn header(value: &'static str) -> HeaderValue {
        HeaderValue::from_static(value)
    }

    #[test]
    fn forwards_the_request_below_the_route() {
        let mut req = testing::request(Method::PUT, "/api/users/7?x=1&y=2", b"payload".to_vec());
        let headers = req.headers_mut();
        headers.insert("host", header("gateway.example"));
        headers.insert("accept", header("application/json"));
        headers.insert("connection", header("keep-alive, x-secret"));
        headers.insert("x-secret", header("hop"));
        headers.insert("transfer-encoding", header("chunked"));
        headers.insert("content-length", header("7"));
        let req = testing::routed("/api", req);
        let mut t = upstream_answering(201, "created");
        t.call(proxy, req);

        let sent = &t.sent()[0];
        assert_eq!(sent.method(), Method::PUT);
        assert_eq!(sent.uri(), "http://127.0.0.1:9000/base/users/7?x=1&y=2");
        assert_eq!(sent.body(), b"payload");
        let mut names: Vec<&str> = sent.headers().keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-forwarded-by"]);
        assert_eq!(sent.headers()["x-forwarded-by"], "wasmgate");
    }

    #[test]
    fn answers_with_the_upstream_response_and_its_status() {
        let mut t = upstream_answering(404, "no such user");
        let resp = t.call(proxy, testing::routed("/api", testing::get("/api")));
        assert_eq!(t.sent()[0].uri(), "http://127.0.0.1:9000/base/");
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.body(), b"no such user");
        assert_eq!(resp.headers()["x-upstream-status"], "404");
        assert_eq!(resp.headers()["x-upstream"], "1");
        assert!(!resp.headers().contains_key("transfer-encoding"));
    }

    #[test]
    fn maps_upstream_failures_to_gateway_statuses() {
        let cases = [
            (
                upstream::Error::Denied,
                502,
                "upstream call denied by the gateway\n",
            ),
            (upstream::Error::Timeout, 504, "upstream timed out\n"),
            (upstream::Error::Unreachable, 502, "upstream unreachable\n"),
        ];
        for (error, status, body) in cases {
            let answer = error.clone();
            let mut t = Context::new()
                .config("upstream", "http://127.0.0.1:9000")
                .upstream(move |_req| Err(answer.clone()));
            let resp = t.call(proxy, testing::get("/x"));
            assert_eq!(resp.status(), status, "{error:?}");
            assert_eq!(resp.body(), body.as_bytes());
            assert_eq!(t.sent()[0].uri(), "http://127.0.0.1:9000/x");
            assert_eq!(t.logs()[0].message, body.trim_end());
        }
    }

    #[test]
    fn without_a_usable_upstream_is_500_and_sends_nothing() {
        for config in [None, Some("127.0.0.1:9000"), Some("/relative")] {
            let mut t = Context::new().upstream(|_req| panic!("nothing may be sent"));
            if let Some(base) = config {
                t = t.config("upstream", base);
            }
            let resp = t.call(proxy, testing::get("/x"));
            assert_eq!(resp.status(), 500, "{config:?}");
            assert!(t.sent().is_empty());
        }
    }
}
