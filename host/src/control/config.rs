//! The gateway configuration: plain structs read from TOML.
//!
//! Every key of the config file is declared here with its default (the
//! reference is docs/operations.md).
//! Unknown keys are an error naming the key, and every error names the file
//! and, where TOML knows it, the line. Component paths are resolved relative
//! to the folder of the config file, so a config works from any directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::allowlist::AllowList;
use crate::control::certs::TlsFiles;
use crate::limits::{LimitOverrides, Limits, check_cpu_weight, check_limits, check_name};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// toml's message, which names the line, column and key.
        message: String,
    },
    /// The TOML parsed but a value is not acceptable.
    #[error("{path}: {message}")]
    Invalid {
        /// The config file (or `<built-in>`).
        path: PathBuf,
        /// Which key or tenant/handler, and why.
        message: String,
    },
    /// A handler's `component` names no readable file.
    #[error("{}:{line}: {message}", path.display())]
    Component {
        /// The config file.
        path: PathBuf,
        /// The line of the `component` key, where the reader fixes it (0
        /// if the file changed since it was loaded).
        line: usize,
        /// The tenant and handler, the path as resolved and normalised (so
        /// the reader sees which file was looked for), and what is wrong
        /// with it in the OS's words: part of the message, not a separate
        /// cause, so error chains do not repeat it.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The public listener and connection handling.
    #[serde(default)]
    pub server: ServerConfig,
    /// The admin listener (health, readiness, metrics).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Guest worker threads and the queue in front of them.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Default limits for every tenant and handler.
    #[serde(default)]
    pub limits: Limits,
    /// The tenants, each with its host patterns and handlers.
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
    /// Cluster mode: the desired state in etcd, components in an OCI
    /// registry. Default: none (a single node).
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: replicas that share their desired state through etcd and
/// their components through an OCI registry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd v3 endpoints (`http://` or `https://`), tried in turn.
    pub etcd: Vec<String>,
    /// The key prefix this fleet's state lives under: fleets may share an
    /// etcd. Default `/wasmgate`.
    #[serde(default = "default_cluster_prefix")]
    pub prefix: String,
    /// The OCI repository base uploaded components are pushed to, e.g.
    /// `http://127.0.0.1:5000/wasmgate` (plain HTTP only for loopback).
    pub registry: String,
    /// This replica's name in `GET /admin/cluster`. Default:
    /// `$WASMGATE_NODE`, else the hostname.
    #[serde(default = "default_node")]
    pub node: String,
}

fn default_cluster_prefix() -> String {
    "/wasmgate".to_owned()
}

/// `$WASMGATE_NODE` (the manifests set it to the pod's name), else the
/// hostname.
fn default_node() -> String {
    std::env::var("WASMGATE_NODE")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "wasmgate".to_owned())
}

impl ClusterConfig {
    /// Checks the values serde cannot.
    fn validate(&self) -> Result<(), String> {
        if self.etcd.is_empty() {
            return Err("cluster.etcd: list at least one endpoint".into());
        }
        for endpoint in &self.etcd {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(format!(
                    "cluster.etcd: {endpoint:?} must start with http:// or https://"
                ));
            }
        }
        let prefix = &self.prefix;
        if !prefix.starts_with('/')
            || prefix.ends_with('/')
            || prefix.len() > 128
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
        {
            return Err(format!(
                "cluster.prefix: {prefix:?} must start with '/', not end with one, and use only \
                 letters, digits and -_./ (at most 128)"
            ));
        }
        self.registry
            .parse::<crate::control::oci::RegistryBase>()
            .map_err(|e| format!("cluster.registry: {e}"))?;
        check_name(&self.node).map_err(|e| format!("cluster.node: {e}"))?;
        Ok(())
    }
}

/// `[server]`: the public listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the public listener. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Connections served at once; further connections wait in the kernel's
    /// accept backlog (they are not refused). Default 10000.
    pub max_connections: usize,
    /// A connection must complete its first request head within this time
    /// of being accepted, over HTTP/1 or HTTP/2, or it is closed. For HTTP/1
    /// this clock also runs while a keep-alive connection waits for its
    /// next request. Default 5000.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed.
    /// Default 60000.
    pub idle_timeout_ms: u64,
    /// Largest request body accepted; larger requests get 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// On SIGINT/SIGTERM, in-flight requests get this long to finish.
    /// Default 10000.
    pub shutdown_grace_ms: u64,
    /// A request body must arrive whole within this time from the end of
    /// its headers, or the request gets 408. The body is read before the
    /// request takes one of its tenant's slots, so a slow sender holds only
    /// its own connection. Default 10000.
    pub body_read_timeout_ms: u64,
    /// A connection whose client accepts no response bytes for this long,
    /// while a response is waiting to be written, is closed. Default 10000.
    pub write_timeout_ms: u64,
    /// Request and response bodies held in memory at once, all connections
    /// together. A request body that would go over it gets 503
    /// `overloaded`; so does a guest response. Default 256 MiB.
    pub max_buffered_bytes: usize,
    /// Address of the HTTPS listener (HTTP/2 and HTTP/1.1 by ALPN), which
    /// serves the same tenants under the same limits. Default: none.
    pub tls_listen: Option<SocketAddr>,
    /// The certificate for TLS names no tenant with a certificate claims;
    /// without one, such handshakes fail. Paths relative to the config
    /// file's folder. Default: none.
    pub tls_default: Option<TlsFiles>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 10_000,
            header_read_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            max_body_bytes: 1 << 20,
            shutdown_grace_ms: 10_000,
            body_read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            max_buffered_bytes: 256 << 20,
            tls_listen: None,
            tls_default: None,
        }
    }
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener. Keep it off public interfaces:
    /// `/metrics` needs no token. Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
    /// Name of the environment variable holding the admin write token; when
    /// it is unset, the admin write API is disabled. Default
    /// `WASMGATE_ADMIN_TOKEN`.
    pub token_env: String,
    /// Largest component the admin API accepts, in bytes; larger uploads
    /// get 413 (judged from `Content-Length` before reading when it is
    /// sent). Default 64 MiB.
    pub max_upload_bytes: usize,
    /// A compile of an uploaded component that takes longer is stopped and
    /// the upload refused (400, naming this key). Compiles run in a child
    /// process, outside the writer. Default 60000.
    pub compile_timeout_ms: u64,
    /// The compile child's memory cap (its data segment and private
    /// writable mappings); past it the upload is refused. Default 2 GiB.
    pub compile_memory_bytes: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token_env: "WASMGATE_ADMIN_TOKEN".to_owned(),
            max_upload_bytes: 64 << 20,
            compile_timeout_ms: 60_000,
            compile_memory_bytes: 2 << 30,
        }
    }
}

/// `[runtime]`: where guest code runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Guest worker threads; 0 means one per available core. Default 0.
    pub workers: usize,
    /// Requests waiting for a worker before new ones get 503. Default 1024.
    pub queue_depth: usize,
    /// Compiled code (`cache/`, so restarts skip compilation) and, later,
    /// uploaded handlers; relative to the config file's folder. Default
    /// `wasmgate-data`.
    pub data_dir: PathBuf,
    /// Versions each handler keeps for rollback (the active one included).
    /// Default 5.
    pub keep_versions: usize,
    /// Meter fuel. Off, `limits.fuel` is not enforced (the deadline and
    /// memory limit still are) and guests run a few percent faster.
    /// Default true.
    pub consume_fuel: bool,
    /// Guests one worker keeps alive and time-slices between; more
    /// requests wait in the queue. Each costs a pool slot and a fiber
    /// stack; 1 runs every request to completion. Default 4.
    pub guests_per_worker: usize,
    /// Guests one worker keeps alive, beyond `guests_per_worker`, while
    /// they wait (for an upstream's answer or a timer) and use no CPU. Each
    /// costs a pool slot and a fiber stack. Default 64.
    pub waiting_guests_per_worker: usize,
}

/// `runtime.keep_versions`'s default.
pub const DEFAULT_KEEP_VERSIONS: usize = 5;

/// `runtime.guests_per_worker`'s default: each guest a worker keeps alive
/// holds a pool slot (its memories, at most `linear_memory_keep_resident`
/// of them resident once used) and a fiber stack. Four lets a worker run
/// another tenant's request beside a few long ones; one gives
/// run-to-completion, as before time slicing.
pub const DEFAULT_GUESTS_PER_WORKER: usize = 4;

/// `runtime.waiting_guests_per_worker`'s default: guests waiting on
/// upstreams hold memory, not CPU; 64 per worker lets a proxy tenant keep
/// that many calls in flight per core, for a pool of about 70 instances
/// per worker (address space reserved at start; memory only once used).
pub const DEFAULT_WAITING_GUESTS_PER_WORKER: usize = 64;

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            queue_depth: 1024,
            data_dir: PathBuf::from("wasmgate-data"),
            keep_versions: DEFAULT_KEEP_VERSIONS,
            consume_fuel: true,
            guests_per_worker: DEFAULT_GUESTS_PER_WORKER,
            waiting_guests_per_worker: DEFAULT_WAITING_GUESTS_PER_WORKER,
        }
    }
}

impl RuntimeConfig {
    /// The number of worker threads to start: `workers`, or the core count.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// `[[tenant]]`: one customer of the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Unique name, used in metrics labels and the admin API.
    pub name: String,
    /// Host header patterns: exact (`api.example.com`), suffix
    /// (`*.example.com`) or `*` for any host. Default `["*"]`.
    #[serde(default = "crate::limits::default_hosts")]
    pub hosts: Vec<String>,
    /// Overrides of the `[limits]` defaults for this tenant.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Name of an environment variable holding a token that may write this
    /// tenant (and only it) through the admin API. Default: none.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The tenant's share of the guest CPU when tenants compete for a
    /// worker: a tenant of weight 2 gets twice the time of one of weight 1.
    /// Default 1.
    #[serde(default = "crate::limits::default_cpu_weight")]
    pub cpu_weight: u32,
    /// The upstreams the tenant's guests may call through `wasi:http`, in
    /// Spin's syntax: `scheme://host[:port]`, host may be `*.suffix`, the
    /// scheme's port when none is given. Default: none (no outbound calls).
    /// Checked as the file is read, so a bad entry is an error naming its
    /// line.
    #[serde(default, deserialize_with = "allowed_outbound_hosts")]
    pub allowed_outbound_hosts: Vec<String>,
    /// The tenant's certificate for the HTTPS listener: a PEM chain and
    /// its key, relative to the config file's folder. Default: none (its
    /// names get `server.tls_default`).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The tenant's handlers.
    #[serde(default, rename = "handler")]
    pub handlers: Vec<HandlerConfig>,
    /// Directories the tenant serves read-only, without a guest.
    #[serde(default, rename = "static")]
    pub statics: Vec<StaticConfig>,
}

impl TenantConfig {
    /// Its settings, as the desired state keeps them.
    pub fn settings(&self) -> TenantSettings {
        TenantSettings {
            hosts: self.hosts.clone(),
            limits: self.limits,
            cpu_weight: self.cpu_weight,
            allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
            tls: self.tls.clone(),
            token_env: self.token_env.clone(),
        }
    }
}

/// What a tenant's `[[tenant]]` in the config file and `PUT
/// /admin/tenants/{t}` set (its handlers and statics aside); absent fields
/// take their defaults: any host, no overrides, weight 1, no upstreams.
///
/// `Tls` is how its certificate is given: [`TlsFiles`] (paths) in the
/// config file and the desired state; the admin API's body sends PEM text
/// instead (`admin::views::TenantPut`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    bound(deserialize = "Tls: Deserialize<'de>", serialize = "Tls: Serialize")
)]
pub struct TenantSettings<Tls = TlsFiles> {
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Overrides of the config file's `[limits]`.
    pub limits: LimitOverrides,
    /// Its share of the guest CPU.
    pub cpu_weight: u32,
    /// The upstreams its guests may call, in Spin's syntax
    /// (`scheme://host[:port]`, host may be `*.suffix`).
    pub allowed_outbound_hosts: Vec<String>,
    /// Its certificate; `None` when absent.
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// The env var holding a token that may read and write this tenant's
    /// handlers (every replica's environment, in cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

impl<Tls> Default for TenantSettings<Tls> {
    fn default() -> Self {
        Self {
            hosts: crate::limits::default_hosts(),
            limits: LimitOverrides::default(),
            cpu_weight: crate::limits::default_cpu_weight(),
            allowed_outbound_hosts: Vec::new(),
            tls: None,
            token_env: None,
        }
    }
}

/// Reads a field that is present as `Some`, even when it is JSON `null`
/// (for `Tls = Option<_>`, so `null` and absent differ).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// Reads `allowed_outbound_hosts`, refusing an entry that does not parse
/// (the TOML error then carries the line).
fn allowed_outbound_hosts<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    let entries = Vec::<String>::deserialize(deserializer)?;
    AllowList::parse(&entries).map_err(serde::de::Error::custom)?;
    Ok(entries)
}

/// `[[tenant.static]]`: a directory served read-only under a path prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// Path prefix, starting with `/`; the longest matching prefix of the
    /// tenant's handlers and mounts wins. Spanned so that errors name its
    /// line.
    pub route: toml::Spanned<String>,
    /// The directory, relative to the config file's folder. After parsing,
    /// its canonical path (links resolved), which must be a directory.
    pub dir: toml::Spanned<PathBuf>,
}

/// `[[tenant.handler]]`: one component served under a path prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// Name, unique within the tenant; used in metrics labels.
    pub name: String,
    /// Path prefix, starting with `/`; the longest matching prefix wins.
    pub route: String,
    /// The component file, relative to the config file's folder.
    pub component: PathBuf,
    /// String values the guest reads through the `config` import.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl Config {
    /// Reads and validates a config file; relative paths in it are made
    /// relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Checks that every handler's component is a file, naming the config
    /// file `path` and the line of the `component` key if not: a typo there
    /// is the commonest config error, and loading would only name the path.
    /// Separate from [`Config::load`]: `serve --watch` loads a config whose
    /// components are yet to be built, to watch for them.
    pub fn check_components(&self, path: &Path) -> Result<(), ConfigError> {
        for (t, tenant) in self.tenants.iter().enumerate() {
            for (h, handler) in tenant.handlers.iter().enumerate() {
                let problem = match std::fs::metadata(&handler.component) {
                    Ok(meta) if meta.is_dir() => "is a folder, not a component file".to_owned(),
                    Ok(_) => continue,
                    Err(e) => e.to_string(),
                };
                return Err(ConfigError::Component {
                    path: path.to_owned(),
                    line: std::fs::read_to_string(path)
                        .map_or(0, |text| component_line(&text, t, h)),
                    message: format!(
                        "tenant {:?} handler {:?}: component: {}: {problem}",
                        tenant.name,
                        handler.name,
                        handler.component.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Parses config text; `path` is used in errors, `base` to resolve
    /// relative paths.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        if config.cluster.is_some() && !config.tenants.is_empty() {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with("[[tenant]]"))
                .map_or(0, |i| i + 1);
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "line {line}: [[tenant]] with [cluster]: in cluster mode the tenants live in \
                     etcd, shared by every replica; write them with `wasmgate apply FILE` \
                     through any replica's admin API"
                ),
            });
        }
        config.resolve_paths(base);
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        config
            .resolve_statics(text, base)
            .map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                message,
            })?;
        Ok(config)
    }

    /// Checks each `[[tenant.static]]` (a route of the right form that no
    /// handler or other mount of the tenant has, a `dir` that is a
    /// directory) and makes its `dir` canonical. Errors name the line.
    fn resolve_statics(&mut self, text: &str, base: &Path) -> Result<(), String> {
        let line = |span: std::ops::Range<usize>| {
            let before = text.get(..span.start).unwrap_or(text);
            before.bytes().filter(|&b| b == b'\n').count() + 1
        };
        for tenant in &mut self.tenants {
            let t = &tenant.name;
            let mut routes = std::collections::HashSet::new();
            for mount in &mut tenant.statics {
                let route = mount.route.get_ref();
                let at = line(mount.route.span());
                crate::router::check_route(route)
                    .map_err(|e| format!("line {at}: tenant {t:?} static: route: {e}"))?;
                if let Some(h) = tenant.handlers.iter().find(|h| &h.route == route) {
                    return Err(format!(
                        "line {at}: tenant {t:?} static: route {route:?} is already used by handler {:?}",
                        h.name
                    ));
                }
                if !routes.insert(route.clone()) {
                    return Err(format!(
                        "line {at}: tenant {t:?} static: route {route:?} is already used by another static mount"
                    ));
                }
                let at = line(mount.dir.span());
                let dir = normalize(&base.join(mount.dir.get_ref()));
                let canonical = std::fs::canonicalize(&dir).map_err(|e| {
                    format!(
                        "line {at}: tenant {t:?} static {route:?}: dir {}: {e}",
                        dir.display()
                    )
                })?;
                if !canonical.is_dir() {
                    return Err(format!(
                        "line {at}: tenant {t:?} static {route:?}: dir {} is not a directory",
                        dir.display()
                    ));
                }
                *mount.dir.get_mut() = canonical;
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.runtime.data_dir.is_relative() {
            self.runtime.data_dir = base.join(&self.runtime.data_dir);
        }
        let tls = self
            .tenants
            .iter_mut()
            .filter_map(|t| t.tls.as_mut())
            .chain(self.server.tls_default.as_mut());
        for files in tls {
            files.cert = normalize(&base.join(&files.cert));
            files.key = normalize(&base.join(&files.key));
        }
        for handler in self.tenants.iter_mut().flat_map(|t| t.handlers.iter_mut()) {
            if handler.component.is_relative() {
                handler.component = normalize(&base.join(&handler.component));
            }
        }
    }

    /// Checks the values serde cannot: non-zero limits, unique names, routes
    /// and host patterns of the right form.
    pub fn validate(&self) -> Result<(), String> {
        check_limits("limits", &self.limits)?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        if self.server.max_connections == 0 {
            return Err("server.max_connections must be at least 1".into());
        }
        for (key, value) in [
            ("header_read_timeout_ms", self.server.header_read_timeout_ms),
            ("idle_timeout_ms", self.server.idle_timeout_ms),
            ("body_read_timeout_ms", self.server.body_read_timeout_ms),
            ("write_timeout_ms", self.server.write_timeout_ms),
        ] {
            if value == 0 {
                return Err(format!("server.{key} must be at least 1"));
            }
        }
        if self.server.max_buffered_bytes < self.server.max_body_bytes {
            return Err(format!(
                "server.max_buffered_bytes ({}) must be at least server.max_body_bytes ({})",
                self.server.max_buffered_bytes, self.server.max_body_bytes
            ));
        }
        if self.admin.compile_timeout_ms == 0 {
            return Err("admin.compile_timeout_ms must be at least 1".into());
        }
        if self.admin.compile_memory_bytes < 64 << 20 {
            return Err("admin.compile_memory_bytes must be at least 67108864 (64 MiB)".into());
        }
        if self.runtime.keep_versions == 0 {
            return Err("runtime.keep_versions must be at least 1".into());
        }
        if self.runtime.queue_depth == 0 {
            return Err("runtime.queue_depth must be at least 1".into());
        }
        if self.runtime.guests_per_worker == 0 {
            return Err("runtime.guests_per_worker must be at least 1".into());
        }
        // The pool reserves address space for every guest slot at start.
        if self.runtime.guests_per_worker + self.runtime.waiting_guests_per_worker > 4096 {
            return Err(
                "runtime.guests_per_worker + runtime.waiting_guests_per_worker must be at most 4096"
                    .into(),
            );
        }
        let mut tenant_names = std::collections::HashSet::new();
        for tenant in &self.tenants {
            let t = &tenant.name;
            check_name(t).map_err(|e| format!("tenant {t:?}: name {e}"))?;
            if !tenant_names.insert(t) {
                return Err(format!("tenant {t:?} is defined twice"));
            }
            let limits = tenant.limits.apply(self.limits);
            check_limits(&format!("tenant {t:?}: limits"), &limits)?;
            if tenant.handlers.len() > limits.max_handlers {
                return Err(format!(
                    "tenant {t:?} has {} handlers, more than its limits.max_handlers ({})",
                    tenant.handlers.len(),
                    limits.max_handlers
                ));
            }
            check_cpu_weight(tenant.cpu_weight).map_err(|e| format!("tenant {t:?}: {e}"))?;
            if tenant.hosts.is_empty() {
                return Err(format!("tenant {t:?}: hosts is empty"));
            }
            for host in &tenant.hosts {
                crate::router::HostPattern::parse(host)
                    .map_err(|e| format!("tenant {t:?}: hosts: {e}"))?;
            }
            let mut handler_names = std::collections::HashSet::new();
            let mut routes = std::collections::HashSet::new();
            for handler in &tenant.handlers {
                let h = &handler.name;
                check_name(h).map_err(|e| format!("tenant {t:?} handler {h:?}: name {e}"))?;
                if !handler_names.insert(h) {
                    return Err(format!("tenant {t:?}: handler {h:?} is defined twice"));
                }
                crate::router::check_route(&handler.route)
                    .map_err(|e| format!("tenant {t:?} handler {h:?}: route: {e}"))?;
                if !routes.insert(&handler.route) {
                    return Err(format!(
                        "tenant {t:?} handler {h:?}: route {:?} is already used by another handler",
                        handler.route
                    ));
                }
            }
        }
        Ok(())
    }

    /// The effective limits of a tenant.
    pub fn tenant_limits(&self, tenant: &TenantConfig) -> Limits {
        tenant.limits.apply(self.limits)
    }
}

/// The line (from 1) of the `component` key of handler `h` of tenant `t`
/// in config `text`, or 0 if the text does not say (it always does for
/// text that parsed into a config).
fn component_line(text: &str, t: usize, h: usize) -> usize {
    /// Just enough of the file to find where each component is written.
    #[derive(Deserialize)]
    struct Spans {
        #[serde(default)]
        tenant: Vec<TenantSpans>,
    }
    #[derive(Deserialize)]
    struct TenantSpans {
        #[serde(default)]
        handler: Vec<HandlerSpans>,
    }
    #[derive(Deserialize)]
    struct HandlerSpans {
        component: toml::Spanned<toml::Value>,
    }
    let Ok(spans) = toml::from_str::<Spans>(text) else {
        return 0;
    };
    spans
        .tenant
        .get(t)
        .and_then(|tenant| tenant.handler.get(h))
        .and_then(|handler| text.get(..handler.component.span().start))
        .map_or(0, |before| before.matches('\n').count() + 1)
}

/// `path` without `.` and with each `..` taken against the folder before
/// it, as far as the path says: `examples/../target/x` is `target/x`. Only
/// the text changes (links are not followed), so messages show the path
/// a reader would write.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), Path::new("/base"))
    }

    #[test]
    fn cpu_weight_defaults_to_one_and_is_bounded() {
        let config = parse("[[tenant]]\nname = \"a\"\n").expect("valid");
        assert_eq!(config.tenants[0].cpu_weight, 1);
        let config = parse("[[tenant]]\nname = \"a\"\ncpu_weight = 5\n").expect("valid");
        assert_eq!(config.tenants[0].cpu_weight, 5);
        for bad in ["0", "1001"] {
            let text = format!("[[tenant]]\nname = \"a\"\ncpu_weight = {bad}\n");
            let error = parse(&text).expect_err("out of range").to_string();
            assert!(
                error.contains("cpu_weight must be between 1 and 1000"),
                "{error}"
            );
        }
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.server.max_body_bytes, 1048576);
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(config.runtime.queue_depth, 1024);
        assert_eq!(config.server.body_read_timeout_ms, 10_000);
        assert_eq!(config.server.write_timeout_ms, 10_000);
        assert_eq!(config.server.max_buffered_bytes, 256 << 20);
        // The documented values, written out: comparing with
        // `Limits::default()` would only compare the code with itself.
        assert_eq!(
            config.limits,
            Limits {
                fuel: 1_000_000_000,
                memory_bytes: 64 << 20,
                timeout_ms: 2_000,
                max_concurrency: 64,
                max_response_bytes: 16 << 20,
                log_lines_per_second: 100,
                max_handlers: 100,
                max_outbound_requests: 32,
                max_outbound_connections: 64,
            }
        );
        assert_eq!(config.runtime.data_dir, Path::new("/base/wasmgate-data"));
    }

    #[test]
    fn full_example_parses_with_overrides_and_relative_paths() {
        let config = parse(
            r#"
[server]
listen = "127.0.0.1:0"
[limits]
fuel = 1000
[[tenant]]
name = "demo"
hosts = ["*.example.com", "example.com"]
limits = { fuel = 5, timeout_ms = 10 }
[[tenant.handler]]
name = "hello"
route = "/hello"
component = "hello.wasm"
config = { greeting = "hi" }
"#,
        )
        .expect("valid");
        let tenant = &config.tenants[0];
        let limits = config.tenant_limits(tenant);
        assert_eq!(limits.fuel, 5);
        assert_eq!(limits.timeout_ms, 10);
        assert_eq!(limits.memory_bytes, Limits::default().memory_bytes);
        assert_eq!(tenant.handlers[0].component, Path::new("/base/hello.wasm"));
        assert_eq!(tenant.handlers[0].config["greeting"], "hi");
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let table: &[(&str, &[&str])] = &[
            (
                "[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n",
                &["test.toml", "line 3", "bogus"],
            ),
            ("[nope]\n", &["test.toml", "nope"]),
            (
                "[server]\nlisten = \"not an address\"\n",
                &["test.toml", "line 2"],
            ),
            ("[limits]\nfuel = -1\n", &["test.toml", "line 2"]),
            (
                "[limits]\nmax_handlers = 0\n",
                &["test.toml", "limits.max_handlers"],
            ),
            (
                "[[tenant]]\nname = \"a\"\nlimits = { max_handlers = 1 }\n[[tenant.handler]]\nname = \"x\"\nroute = \"/x\"\ncomponent = \"x.wasm\"\n[[tenant.handler]]\nname = \"y\"\nroute = \"/y\"\ncomponent = \"y.wasm\"\n",
                &["tenant \"a\" has 2 handlers, more than its limits.max_handlers (1)"],
            ),
            ("[limits]\nfuel = 0\n", &["test.toml", "limits.fuel"]),
            (
                "[[tenant]]\nname = \"a\"\n[[tenant]]\nname = \"a\"\n",
                &["tenant \"a\" is defined twice"],
            ),
            (
                "[[tenant]]\nname = \"a\"\nlimits = { memory_bytes = 10 }\n",
                &["tenant \"a\": limits.memory_bytes"],
            ),
            (
                "[[tenant]]\nname = \"a\"\n[[tenant.handler]]\nname = \"h\"\nroute = \"x\"\ncomponent = \"h.wasm\"\n",
                &["tenant \"a\" handler \"h\": route"],
            ),
            (
                "[[tenant]]\nname = \"a\"\nhosts = [\"a.*.com\"]\n",
                &["tenant \"a\": hosts"],
            ),
            ("[[tenant]]\nname = \"a b\"\n", &["tenant \"a b\": name"]),
            (
                "[[tenant]]\nname = \"a\"\n[[tenant.handler]]\nname = \"h\"\nroute = \"/x\"\n",
                &["line 3", "missing field `component`"],
            ),
        ];
        for (text, needles) in table {
            let message = parse(text).expect_err(text).to_string();
            for needle in *needles {
                assert!(
                    message.contains(needle),
                    "error for {text:?} should mention {needle:?}, got: {message}"
                );
            }
        }
    }

    #[test]
    fn static_mounts_are_checked_and_errors_name_the_line() {
        let dir = std::env::temp_dir();
        let head = "[[tenant]]\nname = \"a\"\n[[tenant.handler]]\nname = \"h\"\nroute = \"/x\"\ncomponent = \"h.wasm\"\n";
        let mount = |route: &str, dir: &str| {
            format!("[[tenant.static]]\nroute = \"{route}\"\ndir = \"{dir}\"\n")
        };
        let tmp = dir.display().to_string();
        let ok = parse(&format!("{head}{}", mount("/files", &tmp))).expect("valid");
        assert_eq!(
            ok.tenants[0].statics[0].dir.get_ref(),
            &std::fs::canonicalize(&dir).expect("canonical")
        );
        let table: Vec<(String, &[&str])> = vec![
            (
                format!("{head}{}", mount("/x", &tmp)),
                &["test.toml", "line 8", "route \"/x\"", "handler \"h\""],
            ),
            (
                format!("{head}{}{}", mount("/s", &tmp), mount("/s", &tmp)),
                &["line 11", "another static mount"],
            ),
            (
                format!("{head}{}", mount("/s", "/nonexistent/static")),
                &["line 9", "dir /nonexistent/static", "No such file"],
            ),
            (
                format!("{head}{}", mount("s", &tmp)),
                &["line 8", "route", "must start with '/'"],
            ),
            (
                format!("{head}[[tenant.static]]\nroute = \"/s\"\n"),
                &["line 7", "missing field `dir`"],
            ),
        ];
        for (text, needles) in table {
            let message = parse(&text).expect_err(&text).to_string();
            for needle in needles {
                assert!(
                    message.contains(needle),
                    "{text}: want {needle:?} in {message}"
                );
            }
        }
    }

    #[test]
    fn component_paths_are_normalised() {
        for (path, want) in [
            ("examples/../target/x.wasm", "target/x.wasm"),
            ("./a/./b.wasm", "a/b.wasm"),
            ("../up.wasm", "../up.wasm"),
            ("/base/../x.wasm", "/x.wasm"),
            ("a/..", "."),
        ] {
            assert_eq!(normalize(Path::new(path)), Path::new(want), "{path}");
        }
    }

    #[test]
    fn a_component_that_is_not_a_file_is_named_with_its_line() {
        let dir = std::env::temp_dir().join(format!("wasmgate-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("folder.wasm")).expect("create a folder");
        std::fs::write(dir.join("ok.wasm"), b"").expect("write a file");
        // Nothing to say about one that is.
        let ok = "[[tenant]]\nname = \"a\"\n[[tenant.handler]]\nname = \"ok\"\nroute = \"/ok\"\n\
                  component = \"ok.wasm\"\n";
        let config = dir.join("ok.toml");
        std::fs::write(&config, ok).expect("write config");
        let loaded = Config::load(&config).expect("valid");
        loaded.check_components(&config).expect("ok.wasm is a file");
        let text = "[[tenant]]\nname = \"a\"\n[[tenant.handler]]\nname = \"ok\"\nroute = \"/ok\"\n\
                    component = \"ok.wasm\"\n\n[[tenant]]\nname = \"b\"\n\
                    handler = [{ name = \"x\", route = \"/x\", component = \"../x/gone.wasm\" }]\n";
        let config = dir.join("wasmgate.toml");
        std::fs::write(&config, text).expect("write config");
        let check = |config: &Path| {
            Config::load(config)
                .expect("the text is valid")
                .check_components(config)
                .expect_err("not a component file")
                .to_string()
        };
        let got = check(&config);
        let gone = dir.parent().expect("temp dir").join("x/gone.wasm");
        assert_eq!(
            got,
            format!(
                "{}:10: tenant \"b\" handler \"x\": component: {}: \
                 No such file or directory (os error 2)",
                config.display(),
                gone.display()
            )
        );
        let text = text.replace("../x/gone.wasm", "folder.wasm");
        std::fs::write(&config, text).expect("write config");
        let got = check(&config);
        assert_eq!(
            got,
            format!(
                "{}:10: tenant \"b\" handler \"x\": component: {}: \
                 is a folder, not a component file",
                config.display(),
                dir.join("folder.wasm").display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/wasmgate.toml")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/wasmgate.toml"));
    }
}
