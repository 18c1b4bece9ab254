//! The admin write API under `/admin/`: tenants, handlers, versions,
//! rollback and reload, as JSON over HTTP.
//!
//! Every request names its caller with a bearer token (`auth.rs`); every
//! write goes through the registry's one writer, so it is checked,
//! compiled, stored and swapped in whole, or changes nothing. Rejections
//! are `{"error": code, "message": ...}` with a precise status. Every write
//! is logged with tenant, handler, sha256, caller and result; tokens never
//! are.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, ReloadError};
use crate::auth::{Caller, Denied};
use crate::body::ResponseBody;
use crate::control::registry::{ApplyConfigError, ApplyError};
use crate::control::state::{
    Component, DesiredState, HandlerState, Source, StateError, TenantState, Written,
};
use crate::digest::sha256_hex;
use crate::limits::LimitOverrides;

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
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such admin resource")
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

/// A JSON response.
fn json_response(
    status: StatusCode,
    value: &Value,
    etag: Option<String>,
) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
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

fn rejection_response(rejection: &Rejection) -> Response<ResponseBody> {
    json_response(
        rejection.status,
        &json!({"error": rejection.code, "message": rejection.message}),
        None,
    )
}

/// The strong ETag of a JSON representation: it changes exactly when the
/// representation does.
fn etag_of(value: &Value) -> String {
    let hash = sha256_hex(value.to_string().as_bytes());
    format!("\"{}\"", &hash[..16])
}

/// What a request does, for the admin metric and the log.
#[derive(Debug, Clone, Copy)]
enum Operation {
    ListTenants,
    PutTenant,
    DeleteTenant,
    ListHandlers,
    GetHandler,
    PutHandler,
    PatchHandler,
    Rollback,
    DeleteHandler,
    Reload,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::ListTenants => "list_tenants",
            Self::PutTenant => "put_tenant",
            Self::DeleteTenant => "delete_tenant",
            Self::ListHandlers => "list_handlers",
            Self::GetHandler => "get_handler",
            Self::PutHandler => "put_handler",
            Self::PatchHandler => "patch_handler",
            Self::Rollback => "rollback",
            Self::DeleteHandler => "delete_handler",
            Self::Reload => "reload",
        }
    }

    fn writes(self) -> bool {
        !matches!(
            self,
            Self::ListTenants | Self::ListHandlers | Self::GetHandler
        )
    }
}

/// Answers a request under `/admin/`.
pub(super) async fn handle(admin: &Admin, request: Request<Incoming>) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path
        .trim_start_matches("/admin/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = request.method().clone();
    let route = match (&method, segments.as_slice()) {
        (&Method::GET, ["tenants"]) => Some((Operation::ListTenants, None, None)),
        (&Method::PUT, ["tenants", t]) => Some((Operation::PutTenant, Some(*t), None)),
        (&Method::DELETE, ["tenants", t]) => Some((Operation::DeleteTenant, Some(*t), None)),
        (&Method::GET, ["tenants", t, "handlers"]) => {
            Some((Operation::ListHandlers, Some(*t), None))
        }
        (&Method::GET, ["tenants", t, "handlers", h]) => {
            Some((Operation::GetHandler, Some(*t), Some(*h)))
        }
        (&Method::PUT, ["tenants", t, "handlers", h]) => {
            Some((Operation::PutHandler, Some(*t), Some(*h)))
        }
        (&Method::PATCH, ["tenants", t, "handlers", h]) => {
            Some((Operation::PatchHandler, Some(*t), Some(*h)))
        }
        (&Method::POST, ["tenants", t, "handlers", h, "rollback"]) => {
            Some((Operation::Rollback, Some(*t), Some(*h)))
        }
        (&Method::DELETE, ["tenants", t, "handlers", h]) => {
            Some((Operation::DeleteHandler, Some(*t), Some(*h)))
        }
        (&Method::POST, ["reload"]) => Some((Operation::Reload, None, None)),
        _ => None,
    };
    let Some((operation, tenant, handler)) = route else {
        drain(request.into_body()).await;
        return rejection_response(&Rejection::not_found());
    };
    let (tenant, handler) = (tenant.map(str::to_owned), handler.map(str::to_owned));
    // Tenants as a whole are the root's; a tenant's handlers are also its own.
    let scope = match operation {
        Operation::ListTenants
        | Operation::PutTenant
        | Operation::DeleteTenant
        | Operation::Reload => None,
        _ => tenant.as_deref(),
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let caller = admin.tokens().authorize(authorization.as_deref(), scope);
    let result = match caller {
        Err(denied) => {
            drain(request.into_body()).await;
            if operation.writes() {
                tracing::info!(
                    operation = operation.as_str(),
                    tenant = tenant.as_deref().unwrap_or("-"),
                    handler = handler.as_deref().unwrap_or("-"),
                    result = %format!("denied: {denied}"),
                    "admin write"
                );
            }
            Err(Rejection::from(denied))
        }
        Ok(caller) => {
            let call = Call {
                admin,
                caller,
                operation,
                tenant,
                handler,
            };
            call.run(operation, request).await
        }
    };
    let response = match result {
        Ok(response) => response,
        Err(rejection) => rejection_response(&rejection),
    };
    admin
        .metrics
        .admin_request(operation.as_str(), response.status());
    response
}

/// One authorised admin request.
struct Call<'a> {
    admin: &'a Admin,
    caller: Caller,
    operation: Operation,
    tenant: Option<String>,
    handler: Option<String>,
}

/// The body of `PATCH .../handlers/{name}`: either or both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandlerPatch {
    route: Option<String>,
    config: Option<BTreeMap<String, String>>,
}

/// The body of `PUT /admin/tenants/{t}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPut {
    #[serde(default = "any_host")]
    hosts: Vec<String>,
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default = "one")]
    cpu_weight: u32,
}

fn one() -> u32 {
    1
}

fn any_host() -> Vec<String> {
    vec!["*".to_owned()]
}

/// The body of a rollback: the version to go back to; none: the previous.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackTo {
    version: Option<u64>,
}

impl Call<'_> {
    fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or_default()
    }

    fn handler(&self) -> &str {
        self.handler.as_deref().unwrap_or_default()
    }

    async fn run(
        &self,
        operation: Operation,
        request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Rejection> {
        match operation {
            Operation::ListTenants => self.list_tenants().await,
            Operation::PutTenant => self.put_tenant(request).await,
            Operation::DeleteTenant => self.delete_tenant().await,
            Operation::ListHandlers => self.list_handlers().await,
            Operation::GetHandler => self.get_handler().await,
            Operation::PutHandler => self.put_handler(request).await,
            Operation::PatchHandler => self.patch_handler(request).await,
            Operation::Rollback => self.rollback(request).await,
            Operation::DeleteHandler => self.delete_handler(request).await,
            Operation::Reload => self.reload().await,
        }
    }

    async fn list_tenants(&self) -> Result<Response<ResponseBody>, Rejection> {
        let state = self.admin.registry.state().await;
        let tenants: Vec<Value> = state
            .tenants
            .iter()
            .map(|(name, t)| tenant_json(name, t))
            .collect();
        let value = json!({ "tenants": tenants });
        let etag = etag_of(&value);
        Ok(json_response(StatusCode::OK, &value, Some(etag)))
    }

    async fn put_tenant(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Rejection> {
        let body: TenantPut = read_json(request).await?;
        let tenant = self.tenant().to_owned();
        let written = self
            .admin
            .registry
            .apply(HashMap::new(), move |state, defaults| {
                state.put_tenant(
                    &tenant,
                    body.hosts,
                    body.limits,
                    body.cpu_weight,
                    defaults,
                    Source::Api,
                )
            })
            .await;
        self.log_write(None, &written);
        let written = written?;
        let state = self.admin.registry.state().await;
        let value = tenant_json(self.tenant(), state.tenant(self.tenant())?);
        Ok(json_response(
            status_of(written),
            &value,
            Some(etag_of(&value)),
        ))
    }

    async fn delete_tenant(&self) -> Result<Response<ResponseBody>, Rejection> {
        let tenant = self.tenant().to_owned();
        let deleted = self
            .admin
            .registry
            .apply(HashMap::new(), move |state, _| state.delete_tenant(&tenant))
            .await;
        self.log_write(None, &deleted);
        deleted?;
        Ok(no_content())
    }

    async fn list_handlers(&self) -> Result<Response<ResponseBody>, Rejection> {
        let state = self.admin.registry.state().await;
        let tenant = state.tenant(self.tenant())?;
        let handlers: Vec<Value> = tenant
            .handlers
            .iter()
            .map(|(name, h)| handler_json(name, h, false))
            .collect();
        let value = json!({ "tenant": self.tenant(), "handlers": handlers });
        let etag = etag_of(&value);
        Ok(json_response(StatusCode::OK, &value, Some(etag)))
    }

    async fn get_handler(&self) -> Result<Response<ResponseBody>, Rejection> {
        let state = self.admin.registry.state().await;
        let handler = state.handler(self.tenant(), self.handler())?;
        let value = handler_json(self.handler(), handler, true);
        let etag = etag_of(&value);
        Ok(json_response(StatusCode::OK, &value, Some(etag)))
    }

    /// `PUT .../handlers/{name}?route=/path`, body = the component.
    async fn put_handler(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Rejection> {
        let route = query_param(request.uri().query(), "route");
        let if_match = if_match(request.headers());
        let bytes = read_component(self.admin.max_upload_bytes, request).await?;
        let sha256 = sha256_hex(&bytes.bytes);
        if let Some(digest) = bytes.digest
            && digest != sha256
        {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "digest_mismatch",
                format!("Content-Digest says sha-256 {digest}, the body's is {sha256}"),
            ));
        }
        let component = Component {
            sha256: sha256.clone(),
            size: bytes.bytes.len() as u64,
        };
        let (tenant, handler) = (self.tenant().to_owned(), self.handler().to_owned());
        let uploads = HashMap::from([(sha256.clone(), bytes.bytes)]);
        let written = self
            .admin
            .registry
            .apply(uploads, move |state, defaults| {
                check_if_match(state, &tenant, &handler, if_match.as_deref())?;
                state.check_room_for(&tenant, &handler, defaults)?;
                let route = match (route, state.handler(&tenant, &handler)) {
                    (Some(route), _) => route,
                    (None, Ok(existing)) => existing
                        .active_version()
                        .map(|v| v.route.clone())
                        .unwrap_or_default(),
                    (None, Err(_)) => {
                        return Err(StateError::Invalid(
                            "a new handler needs ?route=/path".to_owned(),
                        ));
                    }
                };
                state.put_handler(&tenant, &handler, &component, &route, None, Source::Api)
            })
            .await;
        self.log_write(Some(&sha256), &written);
        let written = written?;
        self.handler_response(written).await
    }

    /// `PATCH .../handlers/{name}` with `{"route": ..., "config": {...}}`.
    async fn patch_handler(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Rejection> {
        let if_match = if_match(request.headers());
        let patch: HandlerPatch = read_json(request).await?;
        if patch.route.is_none() && patch.config.is_none() {
            return Err(Rejection::bad_request("send \"route\", \"config\" or both"));
        }
        let (tenant, handler) = (self.tenant().to_owned(), self.handler().to_owned());
        let written = self
            .admin
            .registry
            .apply(HashMap::new(), move |state, _| {
                check_if_match(state, &tenant, &handler, if_match.as_deref())?;
                state.patch_handler(
                    &tenant,
                    &handler,
                    patch.route.as_deref(),
                    patch.config.as_ref(),
                )
            })
            .await;
        self.log_write(None, &written);
        let written = written?;
        self.handler_response(written).await
    }

    async fn rollback(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Rejection> {
        let if_match = if_match(request.headers());
        let query_version = query_param(request.uri().query(), "version");
        let mut to: RollbackTo = read_json_or_empty(request).await?;
        if let Some(version) = query_version {
            to.version = Some(
                version
                    .parse()
                    .map_err(|_| Rejection::bad_request("version must be a number"))?,
            );
        }
        let (tenant, handler) = (self.tenant().to_owned(), self.handler().to_owned());
        let done = self
            .admin
            .registry
            .apply(HashMap::new(), move |state, _| {
                check_if_match(state, &tenant, &handler, if_match.as_deref())?;
                state.rollback(&tenant, &handler, to.version)
            })
            .await;
        self.log_write(None, &done);
        done?;
        self.handler_response(Written::Replaced).await
    }

    async fn delete_handler(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Rejection> {
        let if_match = if_match(request.headers());
        let (tenant, handler) = (self.tenant().to_owned(), self.handler().to_owned());
        let deleted = self
            .admin
            .registry
            .apply(HashMap::new(), move |state, _| {
                check_if_match(state, &tenant, &handler, if_match.as_deref())?;
                state.delete_handler(&tenant, &handler)
            })
            .await;
        self.log_write(None, &deleted);
        deleted?;
        Ok(no_content())
    }

    async fn reload(&self) -> Result<Response<ResponseBody>, Rejection> {
        let reloaded = self.admin.reload().await;
        self.log_write(None, &reloaded);
        match reloaded {
            Ok(()) => Ok(json_response(
                StatusCode::OK,
                &json!({"reloaded": true}),
                None,
            )),
            Err(e) => Err(match e {
                ReloadError::NoConfigFile => Rejection::new(
                    StatusCode::CONFLICT,
                    "no_config_file",
                    "the gateway was started without --config: there is no file to reload",
                ),
                ReloadError::Config(message) => {
                    Rejection::new(StatusCode::BAD_REQUEST, "invalid_config", message)
                }
                ReloadError::Apply(ApplyConfigError::Apply(e)) => e.into(),
                ReloadError::Apply(e) => {
                    Rejection::new(StatusCode::BAD_REQUEST, "invalid_config", e.to_string())
                }
            }),
        }
    }

    /// The handler as it is now, after a write that did `written`: its
    /// status, and `result` in the body (`created`, `replaced` or
    /// `unchanged`), since 200 means either of the last two.
    async fn handler_response(
        &self,
        written: Written,
    ) -> Result<Response<ResponseBody>, Rejection> {
        let state = self.admin.registry.state().await;
        let handler = state.handler(self.tenant(), self.handler())?;
        let mut value = handler_json(self.handler(), handler, true);
        // The ETag is the handler's own, without the write's result.
        let etag = etag_of(&value);
        value["result"] = Value::from(match written {
            Written::Created => "created",
            Written::Replaced => "replaced",
            Written::Unchanged => "unchanged",
        });
        Ok(json_response(status_of(written), &value, Some(etag)))
    }

    fn log_write<T, E: std::fmt::Display>(&self, sha256: Option<&str>, result: &Result<T, E>) {
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("rejected: {e}"),
        };
        tracing::info!(
            operation = self.operation.as_str(),
            tenant = self.tenant(),
            handler = self.handler(),
            sha256 = sha256.unwrap_or("-"),
            caller = %self.caller.describe(),
            result = %outcome,
            "admin write"
        );
    }
}

fn status_of(written: Written) -> StatusCode {
    match written {
        Written::Created => StatusCode::CREATED,
        Written::Replaced | Written::Unchanged => StatusCode::OK,
    }
}

fn no_content() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

fn tenant_json(name: &str, tenant: &TenantState) -> Value {
    json!({
        "name": name,
        "hosts": tenant.hosts,
        "limits": tenant.limits,
        "cpu_weight": tenant.cpu_weight,
        "source": tenant.source,
        "handlers": tenant.handlers.keys().collect::<Vec<_>>(),
    })
}

fn handler_json(name: &str, handler: &HandlerState, history: bool) -> Value {
    let Some(active) = handler.active_version() else {
        return json!({ "name": name });
    };
    let mut value = json!({
        "name": name,
        "route": active.route,
        "sha256": active.sha256,
        "size": active.size,
        "version": active.number,
        "loaded_at": active.created_at,
        "source": active.source,
        "config": active.config,
    });
    if history {
        let versions: Vec<Value> = handler
            .versions
            .iter()
            .map(|v| {
                json!({
                    "version": v.number,
                    "sha256": v.sha256,
                    "size": v.size,
                    "route": v.route,
                    "config": v.config,
                    "source": v.source,
                    "loaded_at": v.created_at,
                    "active": v.number == handler.active,
                })
            })
            .collect();
        value["versions"] = Value::from(versions);
    }
    value
}

/// Fails with 412 unless `if_match` (when sent) matches the handler's
/// current ETag; `*` matches any existing handler.
fn check_if_match(
    state: &DesiredState,
    tenant: &str,
    handler: &str,
    if_match: Option<&str>,
) -> Result<(), StateError> {
    let Some(if_match) = if_match else {
        return Ok(());
    };
    let current = state
        .handler(tenant, handler)
        .ok()
        .map(|h| etag_of(&handler_json(handler, h, true)));
    let matches = match &current {
        None => false,
        Some(etag) => if_match
            .split(',')
            .map(str::trim)
            .any(|candidate| candidate == "*" || candidate == etag),
    };
    if matches {
        Ok(())
    } else {
        Err(StateError::Precondition(format!(
            "If-Match {if_match} does not match the handler's current ETag {}",
            current.as_deref().unwrap_or("(none: it does not exist)")
        )))
    }
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// One query parameter, percent-decoded (`None` also when the decoded
/// bytes are not UTF-8: such a route could not be matched anyway).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let raw = query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)?
        .1;
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        match (first, tail) {
            (b'%', [high, low, after @ ..]) => match (hex(*high), hex(*low)) {
                (Some(high), Some(low)) => {
                    bytes.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                    rest = after;
                }
                _ => {
                    bytes.push(first);
                    rest = tail;
                }
            },
            (b'+', _) => {
                bytes.push(b' ');
                rest = tail;
            }
            _ => {
                bytes.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// An uploaded component and the digest its client sent, if any.
struct Upload {
    bytes: Vec<u8>,
    /// Hex sha256 from a `Content-Digest: sha-256=:...:` header.
    digest: Option<String>,
}

async fn read_component(limit: usize, request: Request<Incoming>) -> Result<Upload, Rejection> {
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
async fn drain(body: Incoming) {
    let limited = http_body_util::Limited::new(body, DRAIN_BYTES);
    let _ = tokio::time::timeout(DRAIN_TIME, limited.collect()).await;
}

async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, Rejection> {
    let body = read_limited(request, MAX_JSON_BYTES, UPLOAD_TIMEOUT).await?;
    serde_json::from_slice(&body).map_err(|e| Rejection::bad_request(format!("invalid JSON: {e}")))
}

async fn read_json_or_empty<T: serde::de::DeserializeOwned + Default>(
    request: Request<Incoming>,
) -> Result<T, Rejection> {
    let body = read_limited(request, MAX_JSON_BYTES, UPLOAD_TIMEOUT).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| Rejection::bad_request(format!("invalid JSON: {e}")))
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
        assert_eq!(
            query_param(Some("route=/a&x=1"), "route"),
            Some("/a".into())
        );
        assert_eq!(
            query_param(Some("x=1&route=%2Fb"), "route"),
            Some("/b".into())
        );
        assert_eq!(query_param(Some("routes=/a"), "route"), None);
        assert_eq!(
            query_param(Some("route=/caf%C3%A9%20bar%25"), "route"),
            Some("/café bar%".into())
        );
        assert_eq!(
            query_param(Some("route=/%zz"), "route"),
            Some("/%zz".into())
        );
        assert_eq!(query_param(Some("route=/%FF"), "route"), None);
        assert_eq!(query_param(None, "route"), None);
    }
}
