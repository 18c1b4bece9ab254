//! The desired state: which tenants, handlers and handler versions the
//! gateway should serve.
//!
//! It is the one thing the config file, the admin API, SIGHUP and the
//! file watcher edit, each through [`DesiredState`]'s methods, which check
//! an edit completely before changing anything: a rejected edit changes
//! nothing. A handler version is the triple (component sha256, route,
//! config), so a route or config change is a new version as much as new
//! bytes are, and a rollback restores all three.
//!
//! How the config file and the API combine: the config file names tenants
//! and handlers; the API may add its own, and may write to the config's. A
//! handler whose active version came from the API keeps it when the config
//! file is applied again (SIGHUP, restart) until the API deletes it; every
//! other handler and tenant follows the file. [`DesiredState::apply_config`]
//! implements that rule.
//!
//! This module is pure: no I/O, no compiling. `persist.rs` stores it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::allowlist::AllowList;
use crate::control::certs::TlsFiles;
use crate::control::config::{Config, TenantSettings};
use crate::control::oci::OciReference;
use crate::limits::{
    LimitOverrides, Limits, check_cpu_weight, check_handler_sizes, check_limits, check_name,
};

/// Checks the name of a tenant token's env var: what a shell can set.
fn check_env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "token_env {name:?} must be an environment variable name: letters, digits and '_', \
             not starting with a digit, at most 128"
        ))
    }
}

/// Where a version or a tenant came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The config file.
    Config,
    /// The admin API (or the `deploy` command, which uses it).
    Api,
}

/// Everything the gateway should serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Tenants by name.
    pub tenants: BTreeMap<String, TenantState>,
    /// The rank the next tenant the API creates gets.
    #[serde(default = "first_api_rank")]
    pub next_rank: u64,
}

/// Ranks below this are config file positions.
fn first_api_rank() -> u64 {
    1 << 32
}

impl Default for DesiredState {
    fn default() -> Self {
        Self {
            tenants: BTreeMap::new(),
            next_rank: first_api_rank(),
        }
    }
}

/// One tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantState {
    /// Host patterns, as in the config file.
    pub hosts: Vec<String>,
    /// Overrides of the config file's `[limits]`.
    pub limits: LimitOverrides,
    /// The env var holding this tenant's admin token, if any.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Its share of the guest CPU when tenants compete (1 when unset).
    #[serde(default = "crate::limits::default_cpu_weight")]
    pub cpu_weight: u32,
    /// The upstreams its guests may call (none when unset).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Its certificate's files: the config file's, or the data dir's for
    /// one the API sent (none when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Who defined the tenant's hosts and limits last.
    pub source: Source,
    /// Where it stands when two tenants' host patterns tie (lower first):
    /// config tenants by their place in the file, then the API's in order
    /// of creation.
    #[serde(default)]
    pub rank: u64,
    /// Handlers by name.
    pub handlers: BTreeMap<String, HandlerState>,
    /// The config file's static mounts: route to canonical directory. The
    /// file is applied at every start, so they are not stored; handlers
    /// may not take their routes.
    #[serde(skip)]
    pub statics: BTreeMap<String, std::path::PathBuf>,
    /// Static mounts the admin API added (root token only: they name
    /// directories of the host), stored; the file's mounts and handlers
    /// may not take their routes either.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub api_statics: BTreeMap<String, std::path::PathBuf>,
}

/// One handler and its recent versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerState {
    /// The number of the version serving now.
    pub active: u64,
    /// The last versions, oldest first, the active one among them.
    pub versions: Vec<Version>,
    /// The number the next version gets: numbers are never reused.
    pub next_version: u64,
}

impl TenantState {
    /// Its settings, as a PUT would send them.
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

/// One version of a handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Counts up from 1 per handler.
    pub number: u64,
    /// Hex sha256 of the component bytes.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// Path prefix it is routed at.
    pub route: String,
    /// The strings its guest reads with `config::get`.
    pub config: BTreeMap<String, String>,
    /// Where it came from.
    pub source: Source,
    /// When it was created, in seconds since the Unix epoch.
    pub created_at: u64,
    /// Where its component can be pulled from: the reference it was
    /// deployed by, or where it was pushed after an upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciReference>,
}

/// A component: what a version needs besides route and config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Hex sha256 of the bytes.
    pub sha256: String,
    /// Their length.
    pub size: u64,
    /// Where it can be pulled from, if known.
    pub oci: Option<OciReference>,
}

/// Why an edit was refused; each maps to one admin API status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// No such tenant.
    #[error("no tenant {0:?}")]
    NoTenant(String),
    /// No such handler in the tenant.
    #[error("tenant {tenant:?} has no handler {handler:?}")]
    NoHandler {
        /// The tenant.
        tenant: String,
        /// The handler.
        handler: String,
    },
    /// The handler has no such version (any more).
    #[error("handler {handler:?} has no version {version} (it keeps its last versions only)")]
    NoVersion {
        /// The handler.
        handler: String,
        /// The version asked for.
        version: u64,
    },
    /// Another handler of the tenant has the route.
    #[error("route {route:?} is already used by handler {other:?} of tenant {tenant:?}")]
    RouteTaken {
        /// The tenant.
        tenant: String,
        /// The route.
        route: String,
        /// The handler that has it.
        other: String,
    },
    /// A name, route, host pattern or limit is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The writer's `If-Match` does not match what is there now.
    #[error("{0}")]
    Precondition(String),
    /// The tenant has no static mount the API added at the route.
    #[error(
        "tenant {tenant:?} has no static mount at {route:?} added through the admin API{}",
        if *in_config { " (that one is the config file's: remove it there)" } else { "" }
    )]
    NoStatic {
        /// The tenant.
        tenant: String,
        /// The route.
        route: String,
        /// Whether the config file mounts one there.
        in_config: bool,
    },
    /// The config file does not name the tenant, so it has nothing to
    /// follow.
    #[error("the config file names no tenant {0:?}: there is nothing to follow")]
    NotInConfig(String),
    /// A new handler would take the tenant past `limits.max_handlers`.
    #[error(
        "tenant {tenant:?} is at its limits.max_handlers ({max}): delete a handler first, or raise the limit"
    )]
    TooManyHandlers {
        /// The tenant.
        tenant: String,
        /// Its `max_handlers`.
        max: usize,
    },
}

/// What a write did, for the status it is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new handler or tenant (201).
    Created,
    /// A new active version or new settings (200).
    Replaced,
    /// Nothing changed: the same as what is active (200).
    Unchanged,
}

/// Seconds since the Unix epoch, for `created_at`.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl HandlerState {
    /// The active version. The state's invariant is that it exists.
    pub fn active_version(&self) -> Option<&Version> {
        self.versions.iter().find(|v| v.number == self.active)
    }

    fn active_version_mut(&mut self) -> Option<&mut Version> {
        self.versions.iter_mut().find(|v| v.number == self.active)
    }

    /// Makes (sha256, route, config) the active version: unchanged if it
    /// already is, otherwise a new version.
    fn activate(
        &mut self,
        component: &Component,
        route: &str,
        config: &BTreeMap<String, String>,
        source: Source,
    ) -> Written {
        if let Some(active) = self.active_version_mut()
            && active.sha256 == component.sha256
            && active.route == route
            && &active.config == config
        {
            // The same bytes serve; a reference given says where else
            // they can be pulled from.
            if component.oci.is_some() {
                active.oci.clone_from(&component.oci);
            }
            return Written::Unchanged;
        }
        let number = self.next_version;
        self.next_version += 1;
        self.versions.push(Version {
            number,
            sha256: component.sha256.clone(),
            size: component.size,
            route: route.to_owned(),
            config: config.clone(),
            source,
            created_at: now_unix(),
            oci: component.oci.clone(),
        });
        self.active = number;
        Written::Replaced
    }

    fn new() -> Self {
        Self {
            active: 0,
            versions: Vec::new(),
            next_version: 1,
        }
    }
}

impl DesiredState {
    /// The tenant, or `NoTenant`.
    pub fn tenant(&self, tenant: &str) -> Result<&TenantState, StateError> {
        self.tenants
            .get(tenant)
            .ok_or_else(|| StateError::NoTenant(tenant.to_owned()))
    }

    /// The handler, or `NoTenant` / `NoHandler`.
    pub fn handler(&self, tenant: &str, handler: &str) -> Result<&HandlerState, StateError> {
        self.tenant(tenant)?
            .handlers
            .get(handler)
            .ok_or_else(|| StateError::NoHandler {
                tenant: tenant.to_owned(),
                handler: handler.to_owned(),
            })
    }

    fn tenant_mut(&mut self, tenant: &str) -> Result<&mut TenantState, StateError> {
        self.tenants
            .get_mut(tenant)
            .ok_or_else(|| StateError::NoTenant(tenant.to_owned()))
    }

    /// Drops every handler's oldest versions beyond the newest `keep`
    /// (`runtime.keep_versions`, a setting of the gateway that the writer
    /// applies after each edit). The active version is always kept.
    pub fn keep_last_versions(&mut self, keep: usize) {
        for handler in self
            .tenants
            .values_mut()
            .flat_map(|t| t.handlers.values_mut())
        {
            let mut excess = handler.versions.len().saturating_sub(keep.max(1));
            let active = handler.active;
            handler.versions.retain(|v| {
                let drop = excess > 0 && v.number != active;
                excess -= usize::from(drop);
                !drop
            });
        }
    }

    /// Every sha256 some kept version uses: the components to keep on disk.
    pub fn components(&self) -> std::collections::BTreeSet<&str> {
        self.tenants
            .values()
            .flat_map(|t| t.handlers.values())
            .flat_map(|h| &h.versions)
            .map(|v| v.sha256.as_str())
            .collect()
    }

    /// Whether the API may put `handler` in `tenant`: a handler there
    /// already may always get a new version, a new one only while the
    /// tenant has fewer than its `max_handlers` (`defaults` are the config
    /// file's `[limits]`, which the tenant's overrides refine). The config
    /// file is checked for the same limit when it is read.
    pub fn check_room_for(
        &self,
        tenant: &str,
        handler: &str,
        defaults: &Limits,
    ) -> Result<(), StateError> {
        let t = self.tenant(tenant)?;
        let max = t.limits.apply(*defaults).max_handlers;
        if t.handlers.contains_key(handler) || t.handlers.len() < max {
            Ok(())
        } else {
            Err(StateError::TooManyHandlers {
                tenant: tenant.to_owned(),
                max,
            })
        }
    }

    /// Creates or replaces a handler's active version with `component` at
    /// `route` with `config`. `config: None` keeps the active version's
    /// config (or none, for a new handler).
    pub fn put_handler(
        &mut self,
        tenant: &str,
        handler: &str,
        component: &Component,
        route: &str,
        config: Option<&BTreeMap<String, String>>,
        source: Source,
    ) -> Result<Written, StateError> {
        check_name(handler).map_err(|e| StateError::Invalid(format!("handler name {e}")))?;
        crate::router::check_route(route).map_err(|e| StateError::Invalid(format!("route {e}")))?;
        let t = self.tenant_mut(tenant)?;
        check_route_free(tenant, t, handler, route)?;
        let existing = t.handlers.get(handler);
        let config = match (config, existing.and_then(HandlerState::active_version)) {
            (Some(config), _) => config.clone(),
            (None, Some(active)) => active.config.clone(),
            (None, None) => BTreeMap::new(),
        };
        check_handler_sizes(route, &config).map_err(StateError::Invalid)?;
        let created = existing.is_none();
        let state = t
            .handlers
            .entry(handler.to_owned())
            .or_insert_with(HandlerState::new);
        let written = state.activate(component, route, &config, source);
        Ok(if created { Written::Created } else { written })
    }

    /// Changes the route and/or config of a handler without new bytes: a new
    /// version with the active one's component.
    pub fn patch_handler(
        &mut self,
        tenant: &str,
        handler: &str,
        route: Option<&str>,
        config: Option<&BTreeMap<String, String>>,
    ) -> Result<Written, StateError> {
        let active = self
            .handler(tenant, handler)?
            .active_version()
            .cloned()
            .ok_or_else(|| StateError::Invalid(format!("handler {handler:?} has no version")))?;
        let component = Component {
            sha256: active.sha256,
            size: active.size,
            oci: active.oci,
        };
        let route = route.unwrap_or(&active.route).to_owned();
        let config = config.cloned().unwrap_or(active.config);
        self.put_handler(
            tenant,
            handler,
            &component,
            &route,
            Some(&config),
            Source::Api,
        )
    }

    /// Makes an earlier version active again: `to`, or the one before the
    /// active one. Its route must still be free.
    pub fn rollback(
        &mut self,
        tenant: &str,
        handler: &str,
        to: Option<u64>,
    ) -> Result<u64, StateError> {
        let state = self.handler(tenant, handler)?;
        let target = match to {
            Some(number) => state.versions.iter().find(|v| v.number == number),
            None => state
                .versions
                .iter()
                .rev()
                .find(|v| v.number < state.active),
        };
        let Some(target) = target.cloned() else {
            return Err(match to {
                Some(version) => StateError::NoVersion {
                    handler: handler.to_owned(),
                    version,
                },
                None => StateError::Invalid(format!(
                    "handler {handler:?} has no version before {}",
                    state.active
                )),
            });
        };
        let t = self.tenant_mut(tenant)?;
        check_route_free(tenant, t, handler, &target.route)?;
        if let Some(state) = t.handlers.get_mut(handler) {
            state.active = target.number;
        }
        Ok(target.number)
    }

    /// Removes a handler and its versions.
    pub fn delete_handler(&mut self, tenant: &str, handler: &str) -> Result<(), StateError> {
        self.handler(tenant, handler)?;
        self.tenant_mut(tenant)?.handlers.remove(handler);
        Ok(())
    }

    /// Creates or updates a tenant's settings; its handlers stay.
    pub fn put_tenant(
        &mut self,
        tenant: &str,
        settings: TenantSettings,
        defaults: &Limits,
        source: Source,
    ) -> Result<Written, StateError> {
        check_name(tenant).map_err(|e| StateError::Invalid(format!("tenant name {e}")))?;
        let TenantSettings {
            hosts,
            limits,
            cpu_weight,
            allowed_outbound_hosts,
            tls,
            token_env,
        } = settings;
        if let Some(env) = &token_env {
            check_env_name(env).map_err(StateError::Invalid)?;
        }
        if hosts.is_empty() {
            return Err(StateError::Invalid("hosts is empty".into()));
        }
        for host in &hosts {
            crate::router::HostPattern::parse(host)
                .map_err(|e| StateError::Invalid(format!("hosts: {e}")))?;
        }
        check_limits("limits", &limits.apply(*defaults)).map_err(StateError::Invalid)?;
        check_cpu_weight(cpu_weight).map_err(StateError::Invalid)?;
        AllowList::parse(&allowed_outbound_hosts).map_err(StateError::Invalid)?;
        match self.tenants.get_mut(tenant) {
            Some(t)
                if t.hosts == hosts
                    && t.limits == limits
                    && t.cpu_weight == cpu_weight
                    && t.allowed_outbound_hosts == allowed_outbound_hosts
                    && t.tls == tls
                    && t.token_env == token_env =>
            {
                Ok(Written::Unchanged)
            }
            Some(t) => {
                t.hosts = hosts;
                t.limits = limits;
                t.cpu_weight = cpu_weight;
                t.allowed_outbound_hosts = allowed_outbound_hosts;
                t.tls = tls;
                t.token_env = token_env;
                t.source = source;
                Ok(Written::Replaced)
            }
            None => {
                let rank = self.next_rank;
                self.next_rank += 1;
                self.tenants.insert(
                    tenant.to_owned(),
                    TenantState {
                        hosts,
                        limits,
                        token_env,
                        cpu_weight,
                        allowed_outbound_hosts,
                        tls,
                        source,
                        rank,
                        handlers: BTreeMap::new(),
                        statics: BTreeMap::new(),
                        api_statics: BTreeMap::new(),
                    },
                );
                Ok(Written::Created)
            }
        }
    }

    /// Removes a tenant with its handlers.
    pub fn delete_tenant(&mut self, tenant: &str) -> Result<(), StateError> {
        self.tenant(tenant)?;
        self.tenants.remove(tenant);
        Ok(())
    }

    /// Applies the config file: its tenants' hosts, limits and token, and
    /// its handlers, except the settings of tenants and the versions of
    /// handlers that the API set last; tenants and handlers that came from
    /// an earlier config file and are no longer in it are removed.
    /// `components` gives the sha256 and size of each configured component
    /// file (read by the caller). Returns what the file says that was not
    /// applied for that reason, one sentence each, for the reload's answer
    /// and log line.
    pub fn apply_config(
        &mut self,
        config: &Config,
        components: &BTreeMap<std::path::PathBuf, Component>,
    ) -> Result<Vec<String>, StateError> {
        let mut not_applied = Vec::new();
        let mut next = self.clone();
        for t in next.tenants.values_mut() {
            t.statics.clear();
        }
        // Config-sourced things that the file no longer names go first.
        next.tenants.retain(|name, t| {
            t.source == Source::Api
                || config.tenants.iter().any(|c| &c.name == name)
                || t.handlers.values().any(api_owned)
        });
        for t in next.tenants.values_mut() {
            t.handlers.retain(|name, h| {
                api_owned(h)
                    || config
                        .tenants
                        .iter()
                        .flat_map(|c| &c.handlers)
                        .any(|c| &c.name == name)
            });
        }
        for (position, tenant) in config.tenants.iter().enumerate() {
            let existing_api = next
                .tenants
                .get(&tenant.name)
                .is_some_and(|t| t.source == Source::Api);
            if existing_api {
                if let Some(t) = next.tenants.get(&tenant.name)
                    && t.settings() != tenant.settings()
                {
                    not_applied.push(format!(
                        "tenant {:?}: hosts, limits, cpu_weight, allowed_outbound_hosts and tls were set through the admin API \
                         and are kept; POST /admin/tenants/{}/follow-config hands them back to the file",
                        tenant.name, tenant.name
                    ));
                }
            } else {
                next.put_tenant(
                    &tenant.name,
                    tenant.settings(),
                    &config.limits,
                    Source::Config,
                )?;
            }
            if let Some(t) = next.tenants.get_mut(&tenant.name) {
                t.token_env = tenant.token_env.clone();
                if t.source == Source::Config {
                    t.rank = position as u64;
                }
                t.statics = tenant
                    .statics
                    .iter()
                    .map(|s| (s.route.get_ref().clone(), s.dir.get_ref().clone()))
                    .collect();
            }
            for handler in &tenant.handlers {
                let owned_by_api = next
                    .handler(&tenant.name, &handler.name)
                    .is_ok_and(api_owned);
                let component = components.get(&handler.component).ok_or_else(|| {
                    StateError::Invalid(format!(
                        "no component read for {}",
                        handler.component.display()
                    ))
                })?;
                if owned_by_api {
                    let active = next
                        .handler(&tenant.name, &handler.name)
                        .ok()
                        .and_then(HandlerState::active_version);
                    if let Some(active) = active
                        && (active.sha256 != component.sha256
                            || active.route != handler.route
                            || active.config != handler.config)
                    {
                        not_applied.push(format!(
                            "tenant {:?} handler {:?}: version {} was deployed through the admin API \
                             and keeps serving; delete the handler through the API to hand it back to \
                             the file",
                            tenant.name, handler.name, active.number
                        ));
                    }
                    continue;
                }
                next.put_handler(
                    &tenant.name,
                    &handler.name,
                    component,
                    &handler.route,
                    Some(&handler.config),
                    Source::Config,
                )?;
            }
            // A handler or mount the API put at a route the file now mounts.
            if let Some(t) = next.tenants.get(&tenant.name) {
                for route in t.statics.keys() {
                    check_route_free(&tenant.name, t, "", route)?;
                    if t.api_statics.contains_key(route) {
                        return Err(StateError::RouteTaken {
                            tenant: tenant.name.clone(),
                            route: route.clone(),
                            other: format!("static:{route} (added through the admin API)"),
                        });
                    }
                }
            }
        }
        *self = next;
        Ok(not_applied)
    }

    /// Mounts `dir` (canonical, a directory: the caller checked) read-only
    /// at `route` of `tenant` for the admin API, or moves an API mount to
    /// another directory.
    pub fn put_static(
        &mut self,
        tenant: &str,
        route: &str,
        dir: std::path::PathBuf,
    ) -> Result<Written, StateError> {
        crate::router::check_route(route).map_err(|e| StateError::Invalid(format!("route {e}")))?;
        let t = self.tenant_mut(tenant)?;
        if t.statics.contains_key(route) {
            return Err(StateError::RouteTaken {
                tenant: tenant.to_owned(),
                route: route.to_owned(),
                other: format!("static:{route} (of the config file)"),
            });
        }
        check_route_free(tenant, t, "", route)?;
        Ok(match t.api_statics.insert(route.to_owned(), dir.clone()) {
            None => Written::Created,
            Some(old) if old == dir => Written::Unchanged,
            Some(_) => Written::Replaced,
        })
    }

    /// Removes a static mount the admin API added.
    pub fn delete_static(&mut self, tenant: &str, route: &str) -> Result<(), StateError> {
        let t = self.tenant_mut(tenant)?;
        if t.api_statics.remove(route).is_some() {
            return Ok(());
        }
        Err(StateError::NoStatic {
            tenant: tenant.to_owned(),
            route: route.to_owned(),
            in_config: t.statics.contains_key(route),
        })
    }

    /// Hands a tenant's settings (hosts, limits, cpu_weight,
    /// allowed_outbound_hosts) back to the config file: they become the
    /// file's now and follow it on every reload. Its handlers stay as they
    /// are.
    pub fn follow_config(&mut self, tenant: &str, config: &Config) -> Result<Written, StateError> {
        self.tenant(tenant)?;
        let Some(file) = config.tenants.iter().find(|t| t.name == tenant) else {
            return Err(StateError::NotInConfig(tenant.to_owned()));
        };
        let written = self.put_tenant(tenant, file.settings(), &config.limits, Source::Config)?;
        let t = self.tenant_mut(tenant)?;
        if t.source == Source::Config {
            return Ok(written);
        }
        t.source = Source::Config;
        Ok(Written::Replaced)
    }
}

/// Whether the handler's active version came from the API.
fn api_owned(handler: &HandlerState) -> bool {
    handler
        .active_version()
        .is_some_and(|v| v.source == Source::Api)
}

/// `route` is free in the tenant, or used by `handler` itself. Static
/// mounts hold their routes too; `other` names one as `static:ROUTE`.
fn check_route_free(
    tenant_name: &str,
    tenant: &TenantState,
    handler: &str,
    route: &str,
) -> Result<(), StateError> {
    if !handler.is_empty()
        && (tenant.statics.contains_key(route) || tenant.api_statics.contains_key(route))
    {
        return Err(StateError::RouteTaken {
            tenant: tenant_name.to_owned(),
            route: route.to_owned(),
            other: format!("static:{route}"),
        });
    }
    let taken_by = tenant.handlers.iter().find(|(name, state)| {
        name.as_str() != handler
            && state
                .active_version()
                .is_some_and(|active| active.route == route)
    });
    match taken_by {
        Some((other, _)) => Err(StateError::RouteTaken {
            tenant: tenant_name.to_owned(),
            route: route.to_owned(),
            other: other.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use Limits;

    fn component(sha: &str) -> Component {
        Component {
            sha256: sha.to_owned(),
            size: 10,
            oci: None,
        }
    }

    fn with_tenant() -> DesiredState {
        let mut state = DesiredState::default();
        state
            .put_tenant(
                "t",
                TenantSettings::default(),
                &Limits::default(),
                Source::Api,
            )
            .expect("valid tenant");
        state
    }

    #[test]
    fn a_tenant_gets_no_handler_beyond_its_max_handlers() {
        let mut state = with_tenant();
        let defaults = Limits {
            max_handlers: 2,
            ..Limits::default()
        };
        for name in ["a", "b"] {
            assert_eq!(state.check_room_for("t", name, &defaults), Ok(()));
            let route = format!("/{name}");
            state
                .put_handler("t", name, &component(name), &route, None, Source::Api)
                .expect("room");
        }
        let full = StateError::TooManyHandlers {
            tenant: "t".into(),
            max: 2,
        };
        assert_eq!(state.check_room_for("t", "c", &defaults), Err(full));
        // A handler it has may still get new versions.
        assert_eq!(state.check_room_for("t", "a", &defaults), Ok(()));
        // The tenant's own limit refines the default.
        state
            .tenants
            .get_mut("t")
            .expect("tenant")
            .limits
            .max_handlers = Some(3);
        assert_eq!(state.check_room_for("t", "c", &defaults), Ok(()));
        state.delete_handler("t", "a").expect("exists");
        state
            .tenants
            .get_mut("t")
            .expect("tenant")
            .limits
            .max_handlers = None;
        assert_eq!(state.check_room_for("t", "c", &defaults), Ok(()));
    }

    #[test]
    fn uploads_create_replace_or_change_nothing() {
        let mut state = with_tenant();
        let put = |s: &mut DesiredState, sha: &str, route: &str| {
            s.put_handler("t", "h", &component(sha), route, None, Source::Api)
        };
        assert_eq!(put(&mut state, "a", "/h"), Ok(Written::Created));
        assert_eq!(put(&mut state, "a", "/h"), Ok(Written::Unchanged));
        assert_eq!(put(&mut state, "b", "/h"), Ok(Written::Replaced));
        assert_eq!(put(&mut state, "b", "/h2"), Ok(Written::Replaced));
        let h = state.handler("t", "h").expect("exists");
        assert_eq!(h.active, 3);
        let numbers: Vec<u64> = h.versions.iter().map(|v| v.number).collect();
        assert_eq!(numbers, [1, 2, 3]);
    }

    #[test]
    fn only_the_last_versions_are_kept_and_numbers_are_never_reused() {
        let mut state = with_tenant();
        for i in 0..8 {
            state
                .put_handler(
                    "t",
                    "h",
                    &component(&format!("s{i}")),
                    "/h",
                    None,
                    Source::Api,
                )
                .expect("valid");
            state.keep_last_versions(3);
        }
        let h = state.handler("t", "h").expect("exists");
        let numbers: Vec<u64> = h.versions.iter().map(|v| v.number).collect();
        assert_eq!(numbers, [6, 7, 8]);
        // An active version rolled back to is never the one dropped.
        state.rollback("t", "h", Some(6)).expect("kept");
        state.keep_last_versions(1);
        let h = state.handler("t", "h").expect("exists");
        assert_eq!((h.active, h.versions.len()), (6, 1));
        state.delete_handler("t", "h").expect("exists");
        state
            .put_handler("t", "h", &component("x"), "/h", None, Source::Api)
            .expect("valid");
        assert_eq!(
            state.handler("t", "h").expect("exists").active,
            1,
            "a new handler"
        );
        assert_eq!(
            state.components().len(),
            1,
            "old components are unreferenced"
        );
    }

    #[test]
    fn a_config_over_its_size_bound_is_refused_and_nothing_changes() {
        let mut state = with_tenant();
        let before = state.clone();
        let config = BTreeMap::from([("k".to_owned(), "v".repeat(64 << 10))]);
        let error = state
            .put_handler("t", "h", &component("a"), "/h", Some(&config), Source::Api)
            .expect_err("over the bound");
        assert!(matches!(error, StateError::Invalid(ref m) if m.contains("config is")));
        assert_eq!(state, before);
    }

    #[test]
    fn a_route_taken_by_another_handler_is_refused_and_nothing_changes() {
        let mut state = with_tenant();
        state
            .put_handler("t", "a", &component("a"), "/a", None, Source::Api)
            .expect("valid");
        let before = state.clone();
        let err = state
            .put_handler("t", "b", &component("b"), "/a", None, Source::Api)
            .expect_err("taken");
        assert!(matches!(err, StateError::RouteTaken { ref other, .. } if other == "a"));
        assert_eq!(state, before);
        for (route, handler) in [("nope", "b"), ("/ok", "bad name")] {
            assert!(matches!(
                state.put_handler("t", handler, &component("b"), route, None, Source::Api),
                Err(StateError::Invalid(_))
            ));
        }
        assert_eq!(state, before);
    }

    #[test]
    fn patch_keeps_the_bytes_and_rollback_restores_route_and_config() {
        let mut state = with_tenant();
        let mut config = BTreeMap::new();
        config.insert("greeting".to_owned(), "hi".to_owned());
        state
            .put_handler("t", "h", &component("a"), "/h", Some(&config), Source::Api)
            .expect("valid");
        config.insert("greeting".to_owned(), "yo".to_owned());
        assert_eq!(
            state.patch_handler("t", "h", Some("/new"), Some(&config)),
            Ok(Written::Replaced)
        );
        let active = state
            .handler("t", "h")
            .expect("exists")
            .active_version()
            .expect("active")
            .clone();
        assert_eq!(
            (active.sha256.as_str(), active.route.as_str()),
            ("a", "/new")
        );
        assert_eq!(active.config["greeting"], "yo");
        assert_eq!(state.rollback("t", "h", None), Ok(1));
        let active = state
            .handler("t", "h")
            .expect("exists")
            .active_version()
            .expect("active");
        assert_eq!(
            (active.route.as_str(), active.config["greeting"].as_str()),
            ("/h", "hi")
        );
        assert_eq!(state.rollback("t", "h", Some(2)), Ok(2));
        assert!(matches!(
            state.rollback("t", "h", Some(9)),
            Err(StateError::NoVersion { version: 9, .. })
        ));
        assert!(matches!(
            state.rollback("t", "nope", None),
            Err(StateError::NoHandler { .. })
        ));
        assert!(matches!(
            state.rollback("x", "h", None),
            Err(StateError::NoTenant(_))
        ));
    }

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("test.toml"), Path::new("/base")).expect("valid config")
    }

    fn read(paths: &[(&str, &str)]) -> BTreeMap<PathBuf, Component> {
        paths
            .iter()
            .map(|(path, sha)| (PathBuf::from(path), component(sha)))
            .collect()
    }

    const TWO: &str = r#"
[[tenant]]
name = "t"
[[tenant.handler]]
name = "a"
route = "/a"
component = "a.wasm"
[[tenant.handler]]
name = "b"
route = "/b"
component = "b.wasm"
"#;

    #[test]
    fn a_tenant_set_through_the_api_is_reported_and_can_follow_the_file_again() {
        let file = config("[[tenant]]\nname = \"t\"\nlimits = { fuel = 2000 }\n");
        let mut state = DesiredState::default();
        assert_eq!(state.apply_config(&file, &read(&[])), Ok(vec![]));
        state
            .put_handler("t", "h", &component("a"), "/h", None, Source::Api)
            .expect("valid");
        let api = LimitOverrides {
            fuel: Some(5),
            ..LimitOverrides::default()
        };
        let settings = TenantSettings {
            limits: api,
            ..TenantSettings::default()
        };
        state
            .put_tenant("t", settings.clone(), &Limits::default(), Source::Api)
            .expect("valid");
        // The file's fuel is not applied, and the reload says so.
        let not_applied = state.apply_config(&file, &read(&[])).expect("applies");
        assert_eq!(not_applied.len(), 1, "{not_applied:?}");
        assert!(
            not_applied[0].contains("POST /admin/tenants/t/follow-config"),
            "{not_applied:?}"
        );
        assert_eq!(state.tenant("t").expect("t").limits.fuel, Some(5));
        // Handed back: the file's settings now, its handler kept.
        assert_eq!(state.follow_config("t", &file), Ok(Written::Replaced));
        let t = state.tenant("t").expect("t");
        assert_eq!((t.limits.fuel, t.source), (Some(2000), Source::Config));
        assert!(t.handlers.contains_key("h"));
        assert_eq!(state.apply_config(&file, &read(&[])), Ok(vec![]));
        assert_eq!(state.follow_config("t", &file), Ok(Written::Unchanged));
        // Nothing to follow for a tenant the file does not name.
        state
            .put_tenant("u", settings, &Limits::default(), Source::Api)
            .expect("valid");
        assert_eq!(
            state.follow_config("u", &file),
            Err(StateError::NotInConfig("u".into()))
        );
    }

    #[test]
    fn the_config_file_yields_to_the_api_for_handlers_the_api_wrote() {
        let mut state = DesiredState::default();
        let files = read(&[("/base/a.wasm", "a1"), ("/base/b.wasm", "b1")]);
        state.apply_config(&config(TWO), &files).expect("applies");
        // The API deploys a new version of b and a handler of its own.
        state
            .put_handler("t", "b", &component("b-api"), "/b", None, Source::Api)
            .expect("valid");
        state
            .put_handler("t", "c", &component("c"), "/c", None, Source::Api)
            .expect("valid");
        // The file changes a and b, and drops b: a follows the file, b and c
        // stay as the API left them.
        let files = read(&[("/base/a.wasm", "a2")]);
        let only_a = "[[tenant]]\nname = \"t\"\n[[tenant.handler]]\nname = \"a\"\nroute = \"/a\"\ncomponent = \"a.wasm\"\n";
        state
            .apply_config(&config(only_a), &files)
            .expect("applies");
        let sha = |state: &DesiredState, h: &str| {
            state
                .handler("t", h)
                .expect("exists")
                .active_version()
                .expect("active")
                .sha256
                .clone()
        };
        assert_eq!(sha(&state, "a"), "a2");
        assert_eq!(sha(&state, "b"), "b-api");
        assert_eq!(sha(&state, "c"), "c");
        // A handler the file dropped, that the API never wrote, goes.
        let files = read(&[]);
        state.apply_config(&config(""), &files).expect("applies");
        assert!(
            state.handler("t", "a").is_err(),
            "config-only handler removed"
        );
        assert_eq!(
            sha(&state, "b"),
            "b-api",
            "the tenant stays while the API's handlers need it"
        );
    }

    #[test]
    fn a_config_that_does_not_fit_the_state_changes_nothing() {
        let mut state = DesiredState::default();
        let files = read(&[("/base/a.wasm", "a1"), ("/base/b.wasm", "b1")]);
        state.apply_config(&config(TWO), &files).expect("applies");
        state
            .put_handler("t", "c", &component("c"), "/c", None, Source::Api)
            .expect("valid");
        let before = state.clone();
        // The file now wants /c for a, which the API's handler c has.
        let clash = TWO.replace("route = \"/a\"", "route = \"/c\"");
        let err = state
            .apply_config(&config(&clash), &files)
            .expect_err("clash");
        assert!(matches!(err, StateError::RouteTaken { .. }), "{err}");
        assert_eq!(state, before);
    }

    #[test]
    fn a_tenant_token_env_must_be_a_variable_name() {
        let mut state = DesiredState::default();
        for bad in ["", "1ABC", "A-B", "A B", &"X".repeat(129)] {
            let settings = TenantSettings {
                token_env: Some(bad.to_owned()),
                ..TenantSettings::default()
            };
            let refused = state.put_tenant("t", settings, &Limits::default(), Source::Api);
            assert!(matches!(refused, Err(StateError::Invalid(_))), "{bad:?}");
        }
        let settings = TenantSettings {
            token_env: Some("ACME_TOKEN_2".to_owned()),
            ..TenantSettings::default()
        };
        state
            .put_tenant("t", settings, &Limits::default(), Source::Api)
            .expect("valid");
        assert_eq!(
            state.tenants["t"].token_env.as_deref(),
            Some("ACME_TOKEN_2")
        );
    }
}
