//! [`send`](super::send) in a component: the standard
//! `wasi:http/outgoing-handler` import.

use std::time::Duration;

use bindings::wasi::http::outgoing_handler;
use bindings::wasi::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, HeaderError, IncomingBody, IncomingResponse, Method,
    OutgoingBody, OutgoingRequest, RequestOptions, Scheme, http_error_code,
};
use bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};

use super::{Error, Request, Response, Timeouts};

/// Bindings for `wit/wasi`, world `upstream`. Generated here rather than taken from the
/// `wasip2` crate, which needs a wit-bindgen other than the one the SDK pins.
#[allow(unsafe_code, missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "wit/wasi",
        world: "upstream",
        generate_all,
    });
}

/// Bytes asked for per read of a response body.
const READ_CHUNK: u64 = 64 * 1024;

/// Sends `req` (its URI already checked absolute) and reads the response.
pub(super) fn send(req: Request) -> Result<Response, Error> {
    let (parts, body) = req.into_parts();
    let request = outgoing_request(&parts, body.len())?;
    let options = parts.extensions.get::<Timeouts>().map(request_options);
    // Without a body the host sends none; `body` would make it a chunked
    // one.
    let outgoing_body = if body.is_empty() {
        None
    } else {
        Some(
            request
                .body()
                .map_err(|()| Error::Other("request body taken twice".to_owned()))?,
        )
    };
    let pending = outgoing_handler::handle(request, options).map_err(from_code)?;
    // The host sends the request as the body is written, so the body is
    // written after `handle`, not before (a large one would fill the
    // stream's buffer with nothing draining it).
    let written = outgoing_body.map_or(Ok(()), |outgoing| write_body(outgoing, &body));
    // When both fail, the response's error is the more telling one.
    let response = wait(&pending)?;
    written?;
    read_response(response)
}

/// The request head, headers included, from `parts`; `content-length` is
/// set from the body.
fn outgoing_request(
    parts: &http::request::Parts,
    body_len: usize,
) -> Result<OutgoingRequest, Error> {
    let headers = Fields::new();
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH {
            continue;
        }
        headers
            .append(name.as_str(), value.as_bytes())
            .map_err(|e| header_error(name.as_str(), e))?;
    }
    if body_len > 0 {
        headers
            .append("content-length", body_len.to_string().as_bytes())
            .map_err(|e| header_error("content-length", e))?;
    }
    let request = OutgoingRequest::new(headers);
    let scheme = match parts.uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        other => Scheme::Other(other.unwrap_or_default().to_owned()),
    };
    request
        .set_method(&method(&parts.method))
        .and_then(|()| request.set_scheme(Some(&scheme)))
        .and_then(|()| request.set_authority(parts.uri.authority().map(|a| a.as_str())))
        .and_then(|()| request.set_path_with_query(parts.uri.path_and_query().map(|p| p.as_str())))
        .map_err(|()| Error::Other(format!("`{} {}` cannot be sent", parts.method, parts.uri)))?;
    Ok(request)
}

fn header_error(name: &str, error: HeaderError) -> Error {
    let why = match error {
        HeaderError::Forbidden => "is forbidden in upstream requests",
        HeaderError::InvalidSyntax => "is not a valid header",
        HeaderError::Immutable => "cannot be set",
    };
    Error::Other(format!("header `{name}` {why}"))
}

fn method(method: &http::Method) -> Method {
    match *method {
        http::Method::GET => Method::Get,
        http::Method::HEAD => Method::Head,
        http::Method::POST => Method::Post,
        http::Method::PUT => Method::Put,
        http::Method::DELETE => Method::Delete,
        http::Method::CONNECT => Method::Connect,
        http::Method::OPTIONS => Method::Options,
        http::Method::TRACE => Method::Trace,
        http::Method::PATCH => Method::Patch,
        ref other => Method::Other(other.as_str().to_owned()),
    }
}

/// `timeouts` as wasi:http request options. A host that does not support
/// one refuses to set it; its own bound applies then, so that is no error.
fn request_options(timeouts: &Timeouts) -> RequestOptions {
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let options = RequestOptions::new();
    if let Some(d) = timeouts.connect {
        let _ = options.set_connect_timeout(Some(nanos(d)));
    }
    if let Some(d) = timeouts.first_byte {
        let _ = options.set_first_byte_timeout(Some(nanos(d)));
    }
    if let Some(d) = timeouts.between_bytes {
        let _ = options.set_between_bytes_timeout(Some(nanos(d)));
    }
    options
}

/// Writes all of `bytes` into the request body and finishes it.
fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), Error> {
    let stream = body
        .write()
        .map_err(|()| Error::Other("request body stream taken twice".to_owned()))?;
    let written = write_all(&stream, bytes);
    // A stream is a child of its body and goes first. A body dropped
    // unfinished tells the host the request is incomplete.
    drop(stream);
    written?;
    OutgoingBody::finish(body, None).map_err(from_code)
}

/// The wasi:io write protocol: `check-write` says how much the stream takes
/// now (waiting on its pollable while that is nothing), then a flush.
fn write_all(stream: &OutputStream, mut bytes: &[u8]) -> Result<(), Error> {
    while !bytes.is_empty() {
        let permitted = stream.check_write().map_err(from_stream)?;
        if permitted == 0 {
            stream.subscribe().block();
            continue;
        }
        let len = usize::try_from(permitted).map_or(bytes.len(), |p| p.min(bytes.len()));
        let (now, rest) = bytes.split_at(len);
        stream.write(now).map_err(from_stream)?;
        bytes = rest;
    }
    stream.blocking_flush().map_err(from_stream)
}

/// Blocks (in wasi:io/poll: the host runs others meanwhile) until the
/// response head has arrived.
fn wait(pending: &FutureIncomingResponse) -> Result<IncomingResponse, Error> {
    loop {
        match pending.get() {
            Some(Ok(response)) => return response.map_err(from_code),
            Some(Err(())) => return Err(Error::Other("response taken twice".to_owned())),
            None => pending.subscribe().block(),
        }
    }
}

fn read_response(response: IncomingResponse) -> Result<Response, Error> {
    let status = http::StatusCode::from_u16(response.status())
        .map_err(|_| Error::Other(format!("invalid status {}", response.status())))?;
    let mut out = Response::default();
    *out.status_mut() = status;
    let headers = response.headers();
    for (name, value) in headers.entries() {
        // The host parsed these from HTTP, so they are valid; skipping is
        // only a fallback.
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(&value),
        ) {
            out.headers_mut().append(name, value);
        }
    }
    drop(headers);
    let body = response
        .consume()
        .map_err(|()| Error::Other("response body taken twice".to_owned()))?;
    let stream = body
        .stream()
        .map_err(|()| Error::Other("response body stream taken twice".to_owned()))?;
    let read = read_all(&stream);
    // Children before parents: the stream, then the body (trailers are not
    // needed), then the response.
    drop(stream);
    drop(IncomingBody::finish(body));
    *out.body_mut() = read?;
    Ok(out)
}

fn read_all(stream: &InputStream) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(bytes),
            Err(error) => return Err(from_stream(error)),
        }
    }
}

/// A failed stream of an HTTP body carries the error code of why.
fn from_stream(error: StreamError) -> Error {
    match error {
        StreamError::Closed => Error::Other("the body stream closed early".to_owned()),
        StreamError::LastOperationFailed(error) => match http_error_code(&error) {
            Some(code) => from_code(code),
            None => Error::Other(error.to_debug_string()),
        },
    }
}

fn from_code(code: ErrorCode) -> Error {
    use ErrorCode as E;
    match code {
        E::HttpRequestDenied | E::DestinationIpProhibited => Error::Denied,
        E::DnsTimeout
        | E::ConnectionTimeout
        | E::ConnectionReadTimeout
        | E::ConnectionWriteTimeout
        | E::HttpResponseTimeout => Error::Timeout,
        E::DnsError(_)
        | E::DestinationNotFound
        | E::DestinationUnavailable
        | E::DestinationIpUnroutable
        | E::ConnectionRefused
        | E::ConnectionTerminated => Error::Unreachable,
        E::HttpRequestBodySize(_)
        | E::HttpRequestHeaderSectionSize(_)
        | E::HttpRequestHeaderSize(_)
        | E::HttpRequestTrailerSectionSize(_)
        | E::HttpRequestTrailerSize(_)
        | E::HttpResponseHeaderSectionSize(_)
        | E::HttpResponseHeaderSize(_)
        | E::HttpResponseBodySize(_)
        | E::HttpResponseTrailerSectionSize(_)
        | E::HttpResponseTrailerSize(_) => Error::TooLarge,
        other => {
            let text = format!("{other:?}");
            Error::Other(text.trim_start_matches("ErrorCode::").to_owned())
        }
    }
}
