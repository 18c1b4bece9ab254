//! The admin API's HTTP in and out: bodies read within their limits,
//! query parameters and headers, JSON answers with their ETags, and
//! rejections with their status and stable code.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::views::ErrorBody;
use crate::admin::auth::Denied;
use crate::control::registry::ApplyError;
use crate::control::state::StateError;
use crate::digest::sha256_hex;
use crate::request::body::ResponseBody;

/// How long an upload's body may take to arrive: a 64 MiB component over
/// a slow link, but not forever.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest JSON body (tenant settings, route and config changes).
const MAX_JSON_BYTES: usize = 1 << 20;
/// What is read and thrown away of a body the answer does not need (a
/// rejection before the body was read), so that the client finishes
/// sending and reads the answer instead of a reset connection. Beyond it
/// the connection is closed after the answer.
const DRAIN_BYTES: usize = 4 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A rejection: status, a stable code, and what to do about it.
#[derive(Debug)]
pub(super) struct Rejection {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Rejection {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub(super) fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such admin resource")
    }

    /// `{"error": code, "message": ...}` with the status.
    pub(super) fn into_response(self) -> Response<ResponseBody> {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
        };
        json(self.status, &body, None)
    }
}

impl From<Denied> for Rejection {
    fn from(denied: Denied) -> Self {
        let (status, code) = match denied {
            Denied::NoCredentials => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Denied::Disabled(_) => (StatusCode::FORBIDDEN, "admin_disabled"),
            Denied::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        };
        Self::new(status, code, denied.to_string())
    }
}

impl From<StateError> for Rejection {
    fn from(error: StateError) -> Self {
        let (status, code) = match &error {
            StateError::NoTenant(_)
            | StateError::NoHandler { .. }
            | StateError::NoVersion { .. } => (StatusCode::NOT_FOUND, "not_found"),
            StateError::RouteTaken { .. } => (StatusCode::CONFLICT, "route_taken"),
            StateError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            StateError::Precondition(_) => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
            StateError::TooManyHandlers { .. } => (StatusCode::CONFLICT, "too_many_handlers"),
            StateError::NotInConfig(_) => (StatusCode::CONFLICT, "not_in_config"),
        };
        Self::new(status, code, error.to_string())
    }
}

impl From<ApplyError> for Rejection {
    fn from(error: ApplyError) -> Self {
        match error {
            ApplyError::State(e) => e.into(),
            ApplyError::Load { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_component",
                error.to_string(),
            ),
            ApplyError::Persist(_) | ApplyError::WriterLost => {
                tracing::error!("admin write failed: {error}");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    error.to_string(),
                )
            }
        }
    }
}

/// `view` as JSON. It goes through [`Value`], whose objects keep their
/// keys sorted: the bytes and the ETag do not depend on field order.
fn to_value(view: &impl Serialize) -> Value {
    serde_json::to_value(view).unwrap_or_default()
}

/// A JSON response.
pub(super) fn json(
    status: StatusCode,
    view: &impl Serialize,
    etag: Option<String>,
) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec_pretty(&to_value(view)).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(ResponseBody::from(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(etag) = etag.and_then(|e| header::HeaderValue::from_str(&e).ok()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// A JSON response with the view's own ETag.
pub(super) fn tagged(status: StatusCode, view: &impl Serialize) -> Response<ResponseBody> {
    json(status, view, Some(etag_of(view)))
}

pub(super) fn no_content() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// The strong ETag of a JSON representation: it changes exactly when the
/// representation does.
pub(super) fn etag_of(view: &impl Serialize) -> String {
    let hash = sha256_hex(to_value(view).to_string().as_bytes());
    format!("\"{}\"", &hash[..16])
}

/// The `If-Match` header, if sent.
pub(super) fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// One query parameter, `+` as a space and percent-decoded (`None` also
/// when the decoded bytes are not UTF-8: such a route could not be
/// matched anyway).
pub(super) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let raw = query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)?
        .1
        .replace('+', " ");
    percent_encoding::percent_decode_str(&raw)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// An uploaded component and the digest its client sent, if any.
pub(super) struct Upload {
    pub(super) bytes: Vec<u8>,
    /// Hex sha256 from a `Content-Digest: sha-256=:...:` header.
    pub(super) digest: Option<String>,
}

/// The component a `PUT` uploads: `application/wasm`, at most `limit`
/// bytes.
pub(super) async fn read_component(
    limit: usize,
    request: Request<Incoming>,
) -> Result<Upload, Rejection> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some("application/wasm") {
        let content_type = content_type.to_owned();
        drain(request.into_body()).await;
        return Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the component with Content-Type: application/wasm (got {content_type:?})"
            ),
        ));
    }
    let digest =
        match request.headers().get("content-digest") {
            None => None,
            Some(value) => Some(parse_sha256_digest(value.as_bytes()).ok_or_else(|| {
                Rejection::bad_request("Content-Digest must be sha-256=:<base64>:")
            })?),
        };
    let body = read_limited(request, limit, UPLOAD_TIMEOUT).await?;
    Ok(Upload {
        bytes: body.to_vec(),
        digest,
    })
}

/// `sha-256=:BASE64:` (RFC 9530) as hex.
fn parse_sha256_digest(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?;
    let encoded = value
        .split(',')
        .map(str::trim)
        .find_map(|item| item.strip_prefix("sha-256="))?
        .strip_prefix(':')?
        .strip_suffix(':')?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    (raw.len() == 32).then(|| raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a body of at most `limit` bytes within `timeout`: 413 when the
/// declared or actual length is over (judged from `Content-Length` before
/// reading), 408 when it is too slow.
async fn read_limited(
    request: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Rejection> {
    let too_large = || {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {limit} bytes (admin.max_upload_bytes)"),
        )
    };
    if request.body().size_hint().lower() > limit as u64 {
        drain(request.into_body()).await;
        return Err(too_large());
    }
    let deadline = Instant::now() + timeout;
    let limited = http_body_util::Limited::new(request.into_body(), limit);
    match tokio::time::timeout_at(deadline.into(), limited.collect()).await {
        Err(_) => Err(Rejection::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the body did not arrive in time",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(Rejection::bad_request(format!("reading the body: {e}"))),
    }
}

/// Reads and discards up to [`DRAIN_BYTES`] of `body` within
/// [`DRAIN_TIME`].
pub(super) async fn drain(body: Incoming) {
    let limited = http_body_util::Limited::new(body, DRAIN_BYTES);
    let _ = tokio::time::timeout(DRAIN_TIME, limited.collect()).await;
}

/// A JSON body.
pub(super) async fn read_json<T: DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, Rejection> {
    let body = read_limited(request, MAX_JSON_BYTES, UPLOAD_TIMEOUT).await?;
    parse_json(&body)
}

/// A JSON body, or `T`'s default when the body is empty.
pub(super) async fn read_json_or_empty<T: DeserializeOwned + Default>(
    request: Request<Incoming>,
) -> Result<T, Rejection> {
    let body = read_limited(request, MAX_JSON_BYTES, UPLOAD_TIMEOUT).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(&body)
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|e| Rejection::bad_request(format!("invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_digest_is_parsed_as_rfc_9530_says() {
        let sha = sha256_hex(b"abc");
        let raw: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&sha[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        let header = format!("sha-512=:AAAA:, sha-256=:{encoded}:");
        assert_eq!(parse_sha256_digest(header.as_bytes()), Some(sha));
        for bad in [
            "sha-256=abc",
            "sha-256=:!!:",
            "md5=:AAAA:",
            "sha-256=:AAAA:",
        ] {
            assert_eq!(parse_sha256_digest(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn query_parameters_are_found_by_name() {
        for (query, found) in [
            ("route=/a&x=1", Some("/a")),
            ("x=1&route=%2Fb", Some("/b")),
            ("routes=/a", None),
            ("route=/caf%C3%A9%20bar%25", Some("/café bar%")),
            ("route=/a+b%2B", Some("/a b+")),
            ("route=/%zz", Some("/%zz")),
            ("route=/%FF", None),
        ] {
            assert_eq!(
                query_param(Some(query), "route").as_deref(),
                found,
                "{query}"
            );
        }
        assert_eq!(query_param(None, "route"), None);
    }
}
