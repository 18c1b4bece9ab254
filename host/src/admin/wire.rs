//! The admin API's HTTP out, and the headers and query it reads: JSON
//! answers with their ETags, and rejections with their status and stable
//! code. Bodies in are `bodies.rs`'s.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use serde::Serialize;
use serde_json::Value;

use super::views::ErrorBody;
use crate::admin::auth::Denied;
use crate::control::oci::OciError;
use crate::control::registry::ApplyError;
use crate::control::shared::SharedError;
use crate::control::state::StateError;
use crate::digest::sha256_hex;
use crate::request::body::ResponseBody;

/// A rejection: status, a stable code, and what to do about it.
#[derive(Debug)]
pub(super) struct Rejection {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After`, when trying again later may succeed.
    retry_after: Option<u32>,
}

impl Rejection {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same, telling the client to try again in `seconds`.
    pub(super) fn retry_after(self, seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..self
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
        let mut response = json(self.status, &body, None);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<Denied> for Rejection {
    fn from(denied: Denied) -> Self {
        let (status, code) = match denied {
            Denied::NoCredentials => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Denied::Disabled(_) => (StatusCode::FORBIDDEN, "admin_disabled"),
            Denied::UnknownToken(_) | Denied::OtherTenant { .. } | Denied::RootOnly(_) => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
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
            StateError::NoStatic { .. } => (StatusCode::NOT_FOUND, "not_found"),
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
            ApplyError::Shared(SharedError::StoreUnavailable(_) | SharedError::Conflict) => {
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    format!("{error}; nothing changed"),
                )
                .retry_after(1)
            }
            ApplyError::Shared(SharedError::RegistryUnavailable(_)) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "registry_unavailable",
                format!("{error}; nothing changed"),
            )
            .retry_after(1),
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

/// What a deploy by reference tells the client to wait when the registry
/// cannot be reached.
const REGISTRY_RETRY_AFTER_SECONDS: u32 = 10;

impl From<OciError> for Rejection {
    fn from(error: OciError) -> Self {
        let message = error.to_string();
        match error {
            OciError::Invalid(_) | OciError::NotFound(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_reference", message)
            }
            OciError::TooLarge { size, max } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the component is {size} bytes, more than the {max} of \
                     admin.max_upload_bytes"
                ),
            ),
            OciError::Unreachable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "registry_unavailable",
                message,
            )
            .retry_after(REGISTRY_RETRY_AFTER_SECONDS),
            // The gateway's credentials, or the registry itself, are at
            // fault: nothing the client can change.
            OciError::Denied(_) | OciError::Registry(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "registry_error", message)
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

#[cfg(test)]
mod tests {
    use super::*;

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
