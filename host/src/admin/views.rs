//! The admin API's JSON: every answer and request body as a serde type,
//! the one definition the API writes and its client
//! ([`crate::cli::client`]) reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::control::certs::{Certificate, TlsPem};
use crate::control::oci::OciReference;
use crate::control::state::{HandlerState, Source, TenantState, Version, Written};
use crate::limits::LimitOverrides;

/// A tenant: an item of [`TenantList`], and the answer to
/// `PUT /admin/tenants/{t}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantView {
    /// Its name.
    pub name: String,
    /// Host patterns, as in the config file.
    pub hosts: Vec<String>,
    /// Its overrides of the config file's `[limits]`.
    pub limits: LimitOverrides,
    /// Its share of the guest CPU when tenants compete.
    pub cpu_weight: u32,
    /// The upstreams its guests may call.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Who defined its hosts and limits last.
    pub source: Source,
    /// Its handlers' names.
    pub handlers: Vec<String>,
    /// Its static mounts, the config file's and the API's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statics: Vec<StaticView>,
    /// Its certificate for the HTTPS listener, if one is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsView>,
    /// The env var its own admin token is read from, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// A static mount of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticView {
    /// The route it is mounted at.
    pub route: String,
    /// The directory it serves (canonical).
    pub dir: std::path::PathBuf,
    /// Who mounted it: the config file or the admin API.
    pub source: Source,
}

/// The body of `PUT /admin/tenants/{t}/statics?route=/r`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticPut {
    /// The directory to serve read-only: absolute, on the gateway's host.
    pub dir: std::path::PathBuf,
}

impl TenantView {
    /// The view of `tenant`, named `name`, with its loaded certificate.
    pub fn new(name: &str, tenant: &TenantState, cert: Option<&Certificate>) -> Self {
        Self {
            name: name.to_owned(),
            hosts: tenant.hosts.clone(),
            limits: tenant.limits,
            cpu_weight: tenant.cpu_weight,
            allowed_outbound_hosts: tenant.allowed_outbound_hosts.clone(),
            source: tenant.source,
            handlers: tenant.handlers.keys().cloned().collect(),
            statics: tenant
                .statics
                .iter()
                .map(|m| (m, Source::Config))
                .chain(tenant.api_statics.iter().map(|m| (m, Source::Api)))
                .map(|((route, dir), source)| StaticView {
                    route: route.clone(),
                    dir: dir.clone(),
                    source,
                })
                .collect(),
            tls: cert.map(TlsView::new),
            token_env: tenant.token_env.clone(),
        }
    }
}

/// `GET /admin/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantList {
    /// Every tenant, by name.
    pub tenants: Vec<TenantView>,
}

/// A handler as it serves: an item of [`HandlerList`], the answer to
/// `GET .../handlers/{name}` (with its versions) and to every handler
/// write (with `result`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerView {
    /// Its name within the tenant.
    pub name: String,
    /// The path prefix it serves.
    pub route: String,
    /// Hex sha256 of the active component.
    pub sha256: String,
    /// The component's size in bytes.
    pub size: u64,
    /// The active version's number.
    pub version: u64,
    /// When the active version was created (first loaded), in seconds
    /// since the epoch: it stays across restarts, which load it again.
    pub loaded_at: u64,
    /// Who made the active version.
    pub source: Source,
    /// The strings its guest reads with `config::get`.
    pub config: BTreeMap<String, String>,
    /// Where the active component can be pulled from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciReference>,
    /// The kept versions, oldest first (single-handler answers only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionView>,
    /// What the write answered did (write answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<WriteResult>,
}

impl HandlerView {
    /// The view of `handler`, named `name`, with its kept versions when
    /// `history`; `None` without an active version, which the state's
    /// invariant rules out.
    pub fn new(name: &str, handler: &HandlerState, history: bool) -> Option<Self> {
        let active = handler.active_version()?;
        let versions = if history {
            let view = |v: &Version| VersionView {
                version: v.number,
                sha256: v.sha256.clone(),
                size: v.size,
                route: v.route.clone(),
                config: v.config.clone(),
                source: v.source,
                loaded_at: v.created_at,
                active: v.number == handler.active,
                oci: v.oci.clone(),
            };
            handler.versions.iter().map(view).collect()
        } else {
            Vec::new()
        };
        Some(Self {
            name: name.to_owned(),
            route: active.route.clone(),
            sha256: active.sha256.clone(),
            size: active.size,
            version: active.number,
            loaded_at: active.created_at,
            source: active.source,
            config: active.config.clone(),
            oci: active.oci.clone(),
            versions,
            result: None,
        })
    }
}

/// One kept version of a handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    /// Its number.
    pub version: u64,
    /// Hex sha256 of its component.
    pub sha256: String,
    /// The component's size in bytes.
    pub size: u64,
    /// Its route.
    pub route: String,
    /// Its config strings.
    pub config: BTreeMap<String, String>,
    /// Who made it.
    pub source: Source,
    /// When it was created, in seconds since the epoch.
    pub loaded_at: u64,
    /// Whether it is the one serving.
    pub active: bool,
    /// Where its component can be pulled from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciReference>,
}

/// `GET /admin/tenants/{t}/handlers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerList {
    /// The tenant.
    pub tenant: String,
    /// Its handlers, by name.
    pub handlers: Vec<HandlerView>,
}

/// What a handler write did; the status alone cannot tell the last three
/// apart (all 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteResult {
    /// The handler is new (201).
    Created,
    /// A new version or new settings serve.
    Replaced,
    /// The same component, route and config were serving already (or a
    /// rollback named the version that serves).
    Unchanged,
    /// A rollback: an earlier version serves again.
    RolledBack,
}

impl WriteResult {
    /// The word the API sends.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Replaced => "replaced",
            Self::Unchanged => "unchanged",
            Self::RolledBack => "rolled_back",
        }
    }
}

impl From<Written> for WriteResult {
    fn from(written: Written) -> Self {
        match written {
            Written::Created => Self::Created,
            Written::Replaced => Self::Replaced,
            Written::Unchanged => Self::Unchanged,
        }
    }
}

/// The answer to `POST /admin/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// Always true: a failed reload is a rejection.
    pub reloaded: bool,
    /// What the file says that was not applied because the admin API set
    /// it last, one sentence each (and how to hand it back to the file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<String>,
}

/// Every rejection's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The stable code scripts can match on (`route_taken`, ...).
    pub error: String,
    /// What a person should know.
    pub message: String,
}

/// The body of `PUT /admin/tenants/{t}`: the tenant's settings; absent
/// fields take their defaults (any host, no overrides, weight 1, no
/// upstreams), except `tls`: `{"cert": PEM, "key": PEM}` sets the
/// certificate, `null` removes it, and absent keeps it (the key is never
/// read back, so a client that writes what it read cannot resend it).
pub type TenantPut = crate::control::config::TenantSettings<Option<TlsPem>>;

/// A tenant's certificate as the API shows it: never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsView {
    /// The DNS names it is valid for.
    pub names: Vec<String>,
    /// When it expires (its notAfter), in Unix seconds.
    pub not_after: u64,
}

impl TlsView {
    /// The view of a loaded certificate.
    pub fn new(cert: &Certificate) -> Self {
        Self {
            names: cert.names.clone(),
            not_after: cert.not_after,
        }
    }
}

/// The body of `PATCH .../handlers/{name}`: either or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerPatch {
    /// A new route.
    pub route: Option<String>,
    /// New config strings, replacing the old ones.
    pub config: Option<BTreeMap<String, String>>,
}

/// The body of `PUT .../handlers/{name}` sent as `application/json`:
/// deploy the component a registry holds, as an upload of its bytes would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerFromOci {
    /// `REGISTRY/REPOSITORY@sha256:HEX` (an `oci://` prefix is allowed).
    pub oci: String,
    /// The new version's config strings; without them it keeps the
    /// handler's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BTreeMap<String, String>>,
}

/// The request header of a handler `PUT` whose body is the component's
/// bytes that carries the new version's config strings, as a JSON object
/// (`{"greeting": "hi"}`); without it the version keeps the handler's.
/// The component and its config arrive in one version, so no request is
/// served by the one without the other.
pub const CONFIG_HEADER: &str = "x-wasmgate-config";

/// The body of a rollback: the version to go back to; none: the previous.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackTo {
    /// The version to serve again.
    pub version: Option<u64>,
}
