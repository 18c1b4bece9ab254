//! `wasi-hello`: a standard `wasi:http/proxy` component, written with the
//! `wasip2` crate alone (no wasmgate SDK). The same `.wasm` runs on
//! wasmgate, under `wasmtime serve` or on any other wasi:http host.
//!
//! Only the end of the path counts, so it answers under any route:
//!
//! - `.../echo`: 200 `text/plain`: `method`, `path` (with the query),
//!   `authority` and `scheme` lines, one `name: value` line per header, a
//!   blank line, then the request body.
//! - `.../fetch?url=URL` (`URL` percent-encoded and absolute): GETs `URL`
//!   through `wasi:http/outgoing-handler` and answers with the upstream's
//!   status, `content-type` and body; 502 `denied` when the host refuses
//!   the call (`HTTP-request-denied`), 502 with the error code otherwise.
//!   For the gateway's tests: `&count=N` makes N calls and answers 200
//!   with one line per call (the status, `denied` or the error code);
//!   `&discard=1` reads the upstream's body without keeping it;
//!   `&first_byte_timeout_ms=T` asks the host to wait T ms for the head.
//! - `.../spin`: burns CPU forever (the host's fuel or deadline ends it).
//! - `.../big?bytes=N`: 200 with an `N`-byte body, streamed in 64 KiB chunks.
//! - `.../panic`: panics (a trap for the host).
//! - anything else: 200 `hello from wasi:http`.

use std::io::Write as _;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, RequestOptions, ResponseOutparam, Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// Bytes read or written per body chunk.
const CHUNK: usize = 64 * 1024;

const TEXT_PLAIN: &[u8] = b"text/plain";

/// The component; `export!` makes [`WasiHello::handle`] its
/// `wasi:http/incoming-handler` export.
struct WasiHello;

wasip2::http::proxy::export!(WasiHello);

impl Guest for WasiHello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let uri = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        let (path, query) = uri.split_once('?').unwrap_or((&uri, ""));
        if path.ends_with("/echo") {
            match echo(&request, &uri) {
                Ok(text) => respond(response_out, 200, TEXT_PLAIN, &text),
                Err(code) => respond(response_out, 400, TEXT_PLAIN, format!("{code:?}\n")),
            }
        } else if path.ends_with("/fetch") {
            let Some(url) = query_param(query, "url") else {
                return respond(response_out, 400, TEXT_PLAIN, "want ?url=URL\n");
            };
            let options = FetchOptions {
                discard: query_param(query, "discard").is_some(),
                first_byte_timeout_ms: query_param(query, "first_byte_timeout_ms")
                    .and_then(|t| t.parse().ok()),
            };
            let count: usize = query_param(query, "count")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            if count > 1 {
                let lines: String = (0..count)
                    .map(|_| match fetch(&url, &options) {
                        Ok((status, _, _)) => format!("{status}\n"),
                        Err(code) => format!("{}\n", failure(&code)),
                    })
                    .collect();
                return respond(response_out, 200, TEXT_PLAIN, lines);
            }
            match fetch(&url, &options) {
                Ok((status, content_type, body)) => {
                    respond(response_out, status, &content_type, &body);
                }
                Err(code) => respond(response_out, 502, TEXT_PLAIN, failure(&code)),
            }
        } else if path.ends_with("/spin") {
            spin();
        } else if path.ends_with("/big") {
            let Some(bytes) = query_param(query, "bytes").and_then(|n| n.parse().ok()) else {
                return respond(response_out, 400, TEXT_PLAIN, "want ?bytes=N\n");
            };
            respond_with(response_out, 200, TEXT_PLAIN, |stream| big(stream, bytes));
        } else if path.ends_with("/panic") {
            panic!("wasi-hello: panicking as asked by {path}");
        } else {
            respond(response_out, 200, TEXT_PLAIN, "hello from wasi:http\n");
        }
    }
}

/// The request described as plain text, its body last.
fn echo(request: &IncomingRequest, uri: &str) -> Result<Vec<u8>, ErrorCode> {
    let authority = request.authority().unwrap_or_default();
    let scheme = match request.scheme() {
        Some(Scheme::Http) => "http".to_owned(),
        Some(Scheme::Https) => "https".to_owned(),
        Some(Scheme::Other(other)) => other,
        None => String::new(),
    };
    let method = method_name(request.method());
    let mut out =
        format!("method: {method}\npath: {uri}\nauthority: {authority}\nscheme: {scheme}\n")
            .into_bytes();
    for (name, value) in request.headers().entries() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&value);
        out.push(b'\n');
    }
    out.push(b'\n');
    // `consume` hands out the body once; a second call fails.
    let body = request
        .consume()
        .map_err(|()| internal("request body already taken"))?;
    out.extend_from_slice(&read_body(body)?);
    Ok(out)
}

fn method_name(method: Method) -> String {
    let name = match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => return other,
    };
    name.to_owned()
}

/// How `/fetch` makes its calls.
struct FetchOptions {
    /// Read the upstream's body without keeping it.
    discard: bool,
    /// Asked of the host as the request's first-byte timeout.
    first_byte_timeout_ms: Option<u64>,
}

/// `denied` for a call the host refused, else the error code.
fn failure(code: &ErrorCode) -> String {
    match code {
        ErrorCode::HttpRequestDenied => "denied".to_owned(),
        code => format!("{code:?}"),
    }
}

/// GETs `url` through `wasi:http/outgoing-handler`: the upstream's status,
/// `content-type` and body, or why there is none.
fn fetch(url: &str, options: &FetchOptions) -> Result<(u16, Vec<u8>, Vec<u8>), ErrorCode> {
    let (scheme, authority, path) = split_url(url).ok_or(ErrorCode::HttpRequestUriInvalid)?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    // GET with no headers and no body is what a new request is.
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&scheme))
        .and_then(|()| request.set_authority(Some(authority)))
        .and_then(|()| request.set_path_with_query(Some(&path)))
        .map_err(|()| ErrorCode::HttpRequestUriInvalid)?;
    // A call the host refuses outright fails here; network errors come
    // with the response.
    let request_options = options.first_byte_timeout_ms.map(|ms| {
        let request_options = RequestOptions::new();
        // Refused only by a host that does not support the option.
        let _ = request_options.set_first_byte_timeout(Some(ms.saturating_mul(1_000_000)));
        request_options
    });
    let pending = outgoing_handler::handle(request, request_options)?;
    // Blocking in wasi:io/poll: the host runs other work until the
    // response head arrives.
    let response = loop {
        match pending.get() {
            Some(Ok(response)) => break response?,
            Some(Err(())) => return Err(internal("response already taken")),
            None => pending.subscribe().block(),
        }
    };
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .into_iter()
        .next()
        .unwrap_or_else(|| TEXT_PLAIN.to_vec());
    let body = response
        .consume()
        .map_err(|()| internal("response body already taken"))?;
    if options.discard {
        let read = discard_body(body)?;
        return Ok((
            status,
            content_type,
            format!("read {read} bytes\n").into_bytes(),
        ));
    }
    Ok((status, content_type, read_body(body)?))
}

/// Reads an incoming body to its end, keeping only its length.
fn discard_body(body: IncomingBody) -> Result<u64, ErrorCode> {
    let stream = body
        .stream()
        .map_err(|()| internal("body stream already taken"))?;
    let mut read = 0;
    let result = loop {
        match stream.blocking_read(CHUNK as u64) {
            Ok(chunk) => read += chunk.len() as u64,
            Err(StreamError::Closed) => break Ok(read),
            Err(StreamError::LastOperationFailed(error)) => {
                break Err(wasip2::http::types::http_error_code(&error)
                    .unwrap_or_else(|| internal(&error.to_debug_string())));
            }
        }
    };
    drop(stream);
    drop(IncomingBody::finish(body));
    result
}

/// `scheme://authority/path?query` as (scheme, authority, path with query).
fn split_url(url: &str) -> Option<(&str, &str, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let path = match path {
        "" => "/".to_owned(),
        query if query.starts_with('?') => format!("/{query}"),
        path => path.to_owned(),
    };
    (!scheme.is_empty() && !authority.is_empty()).then_some((scheme, authority, path))
}

/// Reads an incoming body to its end.
fn read_body(body: IncomingBody) -> Result<Vec<u8>, ErrorCode> {
    let stream = body
        .stream()
        .map_err(|()| internal("body stream already taken"))?;
    let bytes = read_to_end(&stream);
    // A stream is a child of its body: it goes first.
    drop(stream);
    // Trailers, if any, are not needed.
    drop(IncomingBody::finish(body));
    bytes
}

/// Reads `stream` until it closes. When an HTTP body fails (the upstream
/// went away, a host bound was hit), the error carries an error code.
fn read_to_end(stream: &InputStream) -> Result<Vec<u8>, ErrorCode> {
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(CHUNK as u64) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(bytes),
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(wasip2::http::types::http_error_code(&error)
                    .unwrap_or_else(|| internal(&error.to_debug_string())));
            }
        }
    }
}

/// Burns CPU until the host stops the component.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        // `black_box` keeps the compiler from seeing that nothing is done.
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Writes `bytes` bytes of `x` to `stream`, a chunk at a time.
fn big(stream: &mut OutputStream, bytes: u64) -> std::io::Result<()> {
    let chunk = vec![b'x'; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let len = usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK));
        // `wasip2` implements `std::io::Write` for output streams the way
        // wasi:io wants: ask `check-write` how much the stream takes now,
        // wait on its pollable while that is 0, write at most that much.
        // (`blocking-write-and-flush` takes at most 4096 bytes a call.)
        stream.write_all(&chunk[..len])?;
        left -= len as u64;
    }
    Ok(())
}

/// Answers with `status`, `content_type` and `body`.
fn respond(out: ResponseOutparam, status: u16, content_type: &[u8], body: impl AsRef<[u8]>) {
    respond_with(out, status, content_type, |stream| {
        stream.write_all(body.as_ref())
    });
}

/// Sends the response head, then the body `write_body` writes.
fn respond_with(
    out: ResponseOutparam,
    status: u16,
    content_type: &[u8],
    write_body: impl FnOnce(&mut OutputStream) -> std::io::Result<()>,
) {
    let headers = Fields::new();
    // `content-type` is a valid name, and a value from an upstream was
    // valid there: neither can be refused.
    let _ = headers.append("content-type", content_type);
    let response = OutgoingResponse::new(headers);
    // Refused only outside 100..=999, which no caller passes; the
    // response stays 200 then.
    let _ = response.set_status_code(status);
    // `body` fails only when called twice.
    let Ok(body) = response.body() else { return };
    // The head goes out now; the body streams after it.
    ResponseOutparam::set(out, Ok(response));
    let Ok(mut stream) = body.write() else { return };
    // `Write::flush` is `blocking-flush`; the stream's own `flush` only
    // starts one.
    let written = write_body(&mut stream).and_then(|()| std::io::Write::flush(&mut stream));
    drop(stream);
    match written {
        Ok(()) => {
            let _ = OutgoingBody::finish(body, None);
        }
        // Most likely the client went away. Dropping the body unfinished
        // tells the host the response is incomplete; stderr is the log.
        Err(error) => eprintln!("wasi-hello: writing the response body failed: {error}"),
    }
}

/// The value of `name` in a query string, percent-decoded (`+` is a space).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let hex = |byte: Option<&u8>| byte.and_then(|b| char::from(*b).to_digit(16));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        i += 1;
        match (byte, hex(bytes.get(i)), hex(bytes.get(i + 1))) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits are at most 0xff.
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 2;
            }
            (b'+', _, _) => out.push(b' '),
            (byte, _, _) => out.push(byte),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn internal(message: &str) -> ErrorCode {
    ErrorCode::InternalError(Some(message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_percent_decoded() {
        let query = "a=1&url=http%3A%2F%2Fexample.com%2Fx%3Fy%3D1&b";
        assert_eq!(
            query_param(query, "url").as_deref(),
            Some("http://example.com/x?y=1")
        );
        assert_eq!(query_param(query, "b").as_deref(), Some(""));
        assert_eq!(query_param(query, "c"), None);
        assert_eq!(percent_decode("a+b%20c%zz%4"), "a b c%zz%4");
    }

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:9000/a/b?c=d"),
            Some(("http", "127.0.0.1:9000", "/a/b?c=d".to_owned()))
        );
        assert_eq!(
            split_url("https://example.com"),
            Some(("https", "example.com", "/".to_owned()))
        );
        assert_eq!(
            split_url("http://h?q=1"),
            Some(("http", "h", "/?q=1".to_owned()))
        );
        assert_eq!(split_url("/relative"), None);
        assert_eq!(split_url("http:///path"), None);
    }
}
