//! What each admin API operation does, once routed and authorised.
//!
//! Every write goes through [`Call::write`]: the registry's one writer
//! checks, compiles, stores and swaps it in whole, or changes nothing, and
//! the write is logged with tenant, handler, sha256, caller and result
//! (tokens never are).

use std::collections::{BTreeMap, HashMap};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::bodies::{Upload, config_header, drain, media_type};
use super::views::{
    CONFIG_HEADER, HandlerFromOci, HandlerList, HandlerPatch, HandlerView, Reloaded, RollbackTo,
    StaticPut, TenantList, TenantPut, TenantView, WriteResult,
};
use super::wire::{Rejection, etag_of, if_match, json, no_content, query_param, tagged};
use super::{Admin, ReloadError};
use crate::admin::auth::Caller;
use crate::control::certs::Certificate;
use crate::control::config::TenantSettings;
use crate::control::oci::{OciError, OciReference};
use crate::control::registry::{ApplyConfigError, ApplyError};
use crate::control::state::{Component, DesiredState, HandlerState, Source, StateError, now_unix};
use crate::digest::sha256_hex;
use crate::limits::Limits;
use crate::request::body::{Reservation, ResponseBody};
use crate::runtime::LoadError;

/// A handler version's config strings.
type Config = BTreeMap<String, String>;

/// What an empty upload is told: `curl --data-binary @FILE` sends nothing,
/// with only a warning, when it cannot read FILE.
const EMPTY_UPLOAD: &str = "empty body (0 bytes): send the component's bytes; with curl, \
     check the path after --data-binary @ (curl sends an empty body when it cannot read the file)";

/// What a request does, for the admin metric and the log.
#[derive(Debug, Clone, Copy)]
pub(super) enum Operation {
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
    FollowConfig,
    PutStatic,
    DeleteStatic,
    Cluster,
}

impl Operation {
    /// Its name in the metric and the log.
    pub(super) fn as_str(self) -> &'static str {
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
            Self::FollowConfig => "follow_config",
            Self::PutStatic => "put_static",
            Self::DeleteStatic => "delete_static",
            Self::Cluster => "cluster",
        }
    }

    pub(super) fn writes(self) -> bool {
        !matches!(
            self,
            Self::ListTenants | Self::ListHandlers | Self::GetHandler | Self::Cluster
        )
    }

    /// Whether a tenant's own token may call it (on that tenant).
    pub(super) fn tenant_may(self) -> bool {
        !matches!(
            self,
            Self::ListTenants
                | Self::PutTenant
                | Self::DeleteTenant
                | Self::Reload
                | Self::FollowConfig
                | Self::PutStatic
                | Self::DeleteStatic
                | Self::Cluster
        )
    }
}

/// One authorised admin request.
pub(super) struct Call<'a> {
    pub(super) admin: &'a Admin,
    pub(super) caller: Caller,
    pub(super) operation: Operation,
    pub(super) tenant: Option<String>,
    pub(super) handler: Option<String>,
}

/// What an operation answers: a response, or a rejection to send.
type HttpResult = Result<Response<ResponseBody>, Rejection>;

impl Call<'_> {
    fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or_default()
    }

    fn handler(&self) -> &str {
        self.handler.as_deref().unwrap_or_default()
    }

    pub(super) async fn list_tenants(&self) -> HttpResult {
        let state = self.admin.registry.state().await;
        let certs = self.admin.registry.certs().current();
        let tenants = state
            .tenants
            .iter()
            .map(|(name, t)| TenantView::new(name, t, certs.tenants.get(name).map(|c| &**c)))
            .collect();
        Ok(tagged(StatusCode::OK, &TenantList { tenants }))
    }

    /// `PUT /admin/tenants/{t}`. A certificate sent (PEM text) is checked
    /// before the write and stored in the data dir, its key readable by
    /// the gateway's user only; `"tls": null` removes the tenant's, and
    /// no `tls` keeps it.
    pub(super) async fn put_tenant(&self, request: Request<Incoming>) -> HttpResult {
        let body: TenantPut = self.admin.bodies.json(request).await?;
        let tenant = self.tenant().to_owned();
        let store = match &body.tls {
            Some(Some(pem)) => {
                Certificate::from_pem(
                    (pem.cert.as_bytes(), "tls.cert"),
                    (pem.key.as_bytes(), "tls.key"),
                    now_unix(),
                )
                .map_err(|e| Rejection::bad_request(format!("tenant {tenant:?}: {e}")))?;
                let store = self.admin.registry.tls_store().cloned();
                Some(store.ok_or_else(|| {
                    Rejection::bad_request("this gateway has no data dir to keep certificates in")
                })?)
            }
            _ => None,
        };
        let TenantPut {
            hosts,
            limits,
            cpu_weight,
            allowed_outbound_hosts,
            tls,
            token_env,
        } = body;
        let written = self
            .write(None, HashMap::new(), move |state, defaults| {
                let tls = match (tls, store) {
                    (Some(Some(pem)), Some(store)) => Some(store.put(&pem).map_err(|e| {
                        StateError::Invalid(format!("storing the certificate: {e}"))
                    })?),
                    (Some(_), _) => None,
                    (None, _) => state.tenants.get(&tenant).and_then(|t| t.tls.clone()),
                };
                let settings = TenantSettings {
                    hosts,
                    limits,
                    cpu_weight,
                    allowed_outbound_hosts,
                    tls,
                    token_env,
                };
                let written = state.put_tenant(&tenant, settings, defaults, Source::Api)?;
                Ok((written, None))
            })
            .await?;
        self.tenant_answer(written.into()).await
    }

    /// `PUT /admin/tenants/{t}/statics?route=/r` with `{"dir": "/abs"}`:
    /// the directory must be absolute and exist; it is mounted as its
    /// canonical path, so a link swapped later cannot move the mount.
    pub(super) async fn put_static(&self, request: Request<Incoming>) -> HttpResult {
        let route = self.static_route(&request)?;
        let body: StaticPut = self.admin.bodies.json(request).await?;
        if !body.dir.is_absolute() {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("dir {:?} must be an absolute path", body.dir),
            ));
        }
        let dir = tokio::fs::canonicalize(&body.dir)
            .await
            .ok()
            .filter(|dir| dir.is_dir())
            .ok_or_else(|| {
                Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("dir {:?} is not a directory of this host", body.dir),
                )
            })?;
        let tenant = self.tenant().to_owned();
        let written = self
            .write(None, HashMap::new(), move |state, _| {
                let written = state.put_static(&tenant, &route, dir)?;
                Ok((written, None))
            })
            .await?;
        self.tenant_answer(written.into()).await
    }

    /// `DELETE /admin/tenants/{t}/statics?route=/r`.
    pub(super) async fn delete_static(&self, request: Request<Incoming>) -> HttpResult {
        let route = self.static_route(&request)?;
        drain(request.into_body()).await;
        let tenant = self.tenant().to_owned();
        self.write(None, HashMap::new(), move |state, _| {
            state.delete_static(&tenant, &route).map(|()| ((), None))
        })
        .await?;
        Ok(no_content())
    }

    /// The `?route=` a static mount operation names.
    fn static_route(&self, request: &Request<Incoming>) -> Result<String, Rejection> {
        query_param(request.uri().query(), "route").ok_or_else(|| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "name the mount's route: ?route=/path",
            )
        })
    }

    pub(super) async fn follow_config(&self) -> HttpResult {
        let tenant = self.tenant().to_owned();
        let config = self.admin.control.config();
        let written = self
            .write(None, HashMap::new(), move |state, _| {
                state
                    .follow_config(&tenant, &config)
                    .map(|written| (written, None))
            })
            .await?;
        self.tenant_answer(written.into()).await
    }

    /// The tenant as it is after a write, with the status for `written`.
    async fn tenant_answer(&self, written: WriteResult) -> HttpResult {
        let state = self.admin.registry.state().await;
        let certs = self.admin.registry.certs().current();
        let cert = certs.tenants.get(self.tenant()).map(|c| &**c);
        let view = TenantView::new(self.tenant(), state.tenant(self.tenant())?, cert);
        Ok(tagged(status_of(written), &view))
    }

    pub(super) async fn delete_tenant(&self) -> HttpResult {
        let tenant = self.tenant().to_owned();
        self.write(None, HashMap::new(), move |state, _| {
            state.delete_tenant(&tenant).map(|()| ((), None))
        })
        .await?;
        Ok(no_content())
    }

    pub(super) async fn list_handlers(&self) -> HttpResult {
        let state = self.admin.registry.state().await;
        let handlers = state
            .tenant(self.tenant())?
            .handlers
            .iter()
            .filter_map(|(name, h)| HandlerView::new(name, h, false))
            .collect();
        let list = HandlerList {
            tenant: self.tenant().to_owned(),
            handlers,
        };
        Ok(tagged(StatusCode::OK, &list))
    }

    pub(super) async fn get_handler(&self) -> HttpResult {
        let view = self.handler_view().await?;
        Ok(tagged(StatusCode::OK, &view))
    }

    /// `PUT .../handlers/{name}?route=/path`: the body is the component
    /// (`application/wasm`), or `{"oci": REFERENCE}` (`application/json`)
    /// naming one in a registry, which is pulled and then deployed as an
    /// upload of its bytes would be, the version recording the reference.
    pub(super) async fn put_handler(&self, request: Request<Incoming>) -> HttpResult {
        let route = query_param(request.uri().query(), "route");
        let if_match = if_match(request.headers());
        let is_json = media_type(request.headers()) == "application/json";
        let in_header = match config_header(request.headers()) {
            Ok(Some(_)) if is_json => Err(Rejection::bad_request(format!(
                "a JSON body carries the config in its \"config\" field, not in {CONFIG_HEADER}"
            ))),
            header => header,
        };
        let in_header = match in_header {
            Ok(config) => config,
            Err(rejection) => {
                // Read what the client sends on, so it gets the answer.
                drain(request.into_body()).await;
                return Err(rejection);
            }
        };
        let (bytes, sha256, held, oci, config) = if is_json {
            let (bytes, held, reference, config) = self.pull(request).await?;
            let sha256 = sha256_hex(&bytes);
            (bytes, sha256, held, Some(reference), config)
        } else {
            let upload = self.admin.bodies.component(request).await?;
            let sha256 = self.check_upload(&upload)?;
            (upload.bytes, sha256, upload.held, None, in_header)
        };
        self.refuse_unless_wasm(&sha256, &bytes)?;
        let component = Component {
            sha256: sha256.clone(),
            size: bytes.len() as u64,
            oci,
        };
        let uploads = HashMap::from([(sha256.clone(), bytes)]);
        let edit =
            move |state: &mut DesiredState, defaults: &Limits, tenant: &str, handler: &str| {
                state.check_room_for(tenant, handler, defaults)?;
                let route = match (route, state.handler(tenant, handler)) {
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
                state.put_handler(
                    tenant,
                    handler,
                    &component,
                    &route,
                    config.as_ref(),
                    Source::Api,
                )
            };
        let written = self
            .write_handler(if_match, Some(&sha256), uploads, edit)
            .await?;
        // The bytes are gone with the write: give their share back.
        drop(held);
        self.handler_response(written.into()).await
    }

    /// The component a `{"oci": REFERENCE}` body names, pulled within
    /// `admin.max_upload_bytes`, holding its share of the body budget as
    /// an upload would, the reference, and the body's config if any.
    async fn pull(
        &self,
        request: Request<Incoming>,
    ) -> Result<(Vec<u8>, Reservation, OciReference, Option<Config>), Rejection> {
        let body: HandlerFromOci = self.admin.bodies.json(request).await?;
        let refused = |error: OciError| {
            self.log_write(None, &Err::<(), _>(&error));
            Rejection::from(error)
        };
        let reference: OciReference = body.oci.parse().map_err(refused)?;
        let max = self.admin.bodies.max_upload_bytes() as u64;
        let artifact = self
            .admin
            .oci
            .find(&reference, max)
            .await
            .map_err(refused)?;
        let held = self.admin.bodies.hold(artifact.size())?;
        let bytes = artifact.download().await.map_err(refused)?;
        Ok((bytes, held, reference, body.config))
    }

    /// Checks an upload's bytes against what its request says; their
    /// sha256.
    fn check_upload(&self, upload: &Upload) -> Result<String, Rejection> {
        let sha256 = sha256_hex(&upload.bytes);
        if upload.bytes.is_empty() {
            self.log_write(Some(&sha256), &Err::<(), _>(EMPTY_UPLOAD));
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "invalid_component",
                EMPTY_UPLOAD,
            ));
        }
        if let Some(digest) = &upload.digest
            && *digest != sha256
        {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "digest_mismatch",
                format!("Content-Digest says sha-256 {digest}, the body's is {sha256}"),
            ));
        }
        Ok(sha256)
    }

    /// `PATCH .../handlers/{name}` with `{"route": ..., "config": {...}}`.
    pub(super) async fn patch_handler(&self, request: Request<Incoming>) -> HttpResult {
        let if_match = if_match(request.headers());
        let patch: HandlerPatch = self.admin.bodies.json(request).await?;
        if patch.route.is_none() && patch.config.is_none() {
            return Err(Rejection::bad_request("send \"route\", \"config\" or both"));
        }
        let written = self
            .write_handler(if_match, None, HashMap::new(), move |state, _, t, h| {
                state.patch_handler(t, h, patch.route.as_deref(), patch.config.as_ref())
            })
            .await?;
        self.handler_response(written.into()).await
    }

    /// `POST .../handlers/{name}/rollback`, the version in the query or
    /// the body.
    pub(super) async fn rollback(&self, request: Request<Incoming>) -> HttpResult {
        let if_match = if_match(request.headers());
        let query_version = query_param(request.uri().query(), "version");
        let mut to: RollbackTo = self.admin.bodies.json_or_empty(request).await?;
        if let Some(version) = query_version {
            to.version = Some(
                version
                    .parse()
                    .map_err(|_| Rejection::bad_request("version must be a number"))?,
            );
        }
        let result = self
            .write_handler(if_match, None, HashMap::new(), move |state, _, t, h| {
                let before = state.handler(t, h)?.active;
                let now = state.rollback(t, h, to.version)?;
                Ok(if now == before {
                    WriteResult::Unchanged
                } else {
                    WriteResult::RolledBack
                })
            })
            .await?;
        self.handler_response(result).await
    }

    /// `GET /admin/cluster`: the store's revision and every replica.
    pub(super) async fn cluster(&self) -> HttpResult {
        let Some(shared) = self.admin.registry.shared() else {
            return Err(Rejection::new(
                StatusCode::NOT_FOUND,
                "not_clustered",
                "this gateway is a single node: [cluster] is not in its config",
            ));
        };
        Ok(json(StatusCode::OK, &shared.status().await, None))
    }

    pub(super) async fn delete_handler(&self, request: Request<Incoming>) -> HttpResult {
        let if_match = if_match(request.headers());
        self.write_handler(if_match, None, HashMap::new(), |state, _, t, h| {
            state.delete_handler(t, h)
        })
        .await?;
        Ok(no_content())
    }

    pub(super) async fn reload(&self) -> HttpResult {
        let reloaded = self.admin.reload().await;
        self.log_write(None, &reloaded);
        let not_applied = reloaded.map_err(|e| match e {
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
        })?;
        Ok(json(
            StatusCode::OK,
            &Reloaded {
                reloaded: true,
                not_applied,
            },
            None,
        ))
    }

    /// Applies `edit` through the registry's one writer, with `uploads`
    /// (component bytes by sha256) for it to load, and logs the write with
    /// the sha256 the edit names (the component it made active), or
    /// `attempted` when it fails.
    async fn write<T: Send + 'static>(
        &self,
        attempted: Option<&str>,
        uploads: HashMap<String, Vec<u8>>,
        edit: impl FnOnce(&mut DesiredState, &Limits) -> Result<(T, Option<String>), StateError>
        + Clone
        + Send
        + 'static,
    ) -> Result<T, Rejection> {
        let tenant = self.tenant.as_deref().unwrap_or_default();
        let written = self.admin.registry.apply(tenant, uploads, edit).await;
        let sha256 = match &written {
            Ok((_, active)) => active.as_deref(),
            Err(_) => attempted,
        };
        self.log_write(sha256, &written);
        Ok(written?.0)
    }

    /// [`Call::write`] of an edit of the request's handler (given as
    /// tenant and handler name), after checking `If-Match`; logged with
    /// the sha256 of the version active after it.
    async fn write_handler<T: Send + 'static>(
        &self,
        if_match: Option<String>,
        attempted: Option<&str>,
        uploads: HashMap<String, Vec<u8>>,
        edit: impl FnOnce(&mut DesiredState, &Limits, &str, &str) -> Result<T, StateError>
        + Clone
        + Send
        + 'static,
    ) -> Result<T, Rejection> {
        let (tenant, handler) = (self.tenant().to_owned(), self.handler().to_owned());
        self.write(attempted, uploads, move |state, defaults| {
            check_if_match(state, &tenant, &handler, if_match.as_deref())?;
            let value = edit(state, defaults, &tenant, &handler)?;
            let active = state
                .handler(&tenant, &handler)
                .ok()
                .and_then(HandlerState::active_version)
                .map(|version| version.sha256.clone());
            Ok((value, active))
        })
        .await
    }

    /// The request's handler with its versions.
    async fn handler_view(&self) -> Result<HandlerView, Rejection> {
        let state = self.admin.registry.state().await;
        let handler = state.handler(self.tenant(), self.handler())?;
        HandlerView::new(self.handler(), handler, true).ok_or_else(|| {
            Rejection::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("handler {:?} has no active version", self.handler()),
            )
        })
    }

    /// The handler as it is now, after a write that did `result`: its
    /// status, and `result` in the body, since 200 means any but
    /// `created`.
    async fn handler_response(&self, result: WriteResult) -> HttpResult {
        let mut view = self.handler_view().await?;
        // The ETag is the handler's own, without the write's result.
        let etag = etag_of(&view);
        view.result = Some(result);
        Ok(json(status_of(result), &view, Some(etag)))
    }

    /// Refuses, before anything is stored or compiled, bytes that cannot
    /// be a component, in the words a load would use.
    fn refuse_unless_wasm(&self, sha256: &str, bytes: &[u8]) -> Result<(), Rejection> {
        if bytes.starts_with(b"\0asm") {
            return Ok(());
        }
        let start = bytes[..bytes.len().min(8)].escape_ascii();
        let refused = Err::<(), _>(ApplyError::Load {
            tenant: self.tenant().to_owned(),
            handler: self.handler().to_owned(),
            error: LoadError::Compile(format!(
                "not a WebAssembly file (it starts with \"{start}\", not \"\\0asm\")"
            )),
        });
        self.log_write(Some(sha256), &refused);
        refused.map_err(Rejection::from)
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

fn status_of(result: WriteResult) -> StatusCode {
    match result {
        WriteResult::Created => StatusCode::CREATED,
        WriteResult::Replaced | WriteResult::Unchanged | WriteResult::RolledBack => StatusCode::OK,
    }
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
        .and_then(|h| HandlerView::new(handler, h, true))
        .map(|view| etag_of(&view));
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
