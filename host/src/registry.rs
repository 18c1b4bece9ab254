//! The handler registry: which handler version serves which tenant and
//! route, built from the config at start.
//!
//! The routing table is an immutable snapshot behind an `Arc`; a request
//! takes the snapshot once, so a later swap never changes the version a
//! request started with.

use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::Semaphore;

use crate::config::{Config, Limits};
use crate::metrics::Metrics;
use crate::router::{HostPattern, Router, TenantRoutes};
use crate::runtime::{Flow, HandlerContext, HandlerVersion, LoadError, Runtime};

/// A tenant's shared state.
#[derive(Debug)]
pub struct Tenant {
    /// Its name.
    pub name: String,
    /// Its effective limits.
    pub limits: Limits,
    /// Caps its requests in flight at `limits.max_concurrency`.
    pub concurrency: Arc<Semaphore>,
}

/// A routed handler: what a request needs once routed.
#[derive(Debug)]
pub struct Route {
    /// The handler's name.
    pub handler: String,
    /// Its path prefix.
    pub route: String,
    /// The tenant it belongs to.
    pub tenant: Arc<Tenant>,
    /// Where its requests wait for a worker.
    pub flow: Flow,
    /// The version serving it now.
    pub version: Arc<HandlerVersion>,
}

/// A handler named in the config that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("tenant {tenant:?} handler {handler:?}: component {path}: {source}")]
pub struct HandlerLoadError {
    /// The tenant.
    pub tenant: String,
    /// The handler.
    pub handler: String,
    /// The component file.
    pub path: String,
    /// Why it failed.
    #[source]
    pub source: LoadError,
}

/// Hands memory freed by compilation back to the OS. Compiling leaves
/// megabytes of freed but fragmented heap that glibc keeps; trimming once
/// after loading halves the idle footprint.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only releases free heap pages; it has no
    // preconditions and touches no memory we own.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The current routing table.
#[derive(Debug, Default)]
pub struct Registry {
    router: RwLock<Arc<Router<Arc<Route>>>>,
}

impl Registry {
    /// Loads every handler of the config; fails on the first that does not
    /// load, naming it.
    pub fn from_config(
        config: &Config,
        runtime: &Runtime,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, HandlerLoadError> {
        let mut tenants = Vec::with_capacity(config.tenants.len());
        let mut loaded = 0;
        for (tenant_index, tenant_config) in config.tenants.iter().enumerate() {
            let limits = config.tenant_limits(tenant_config);
            let tenant = Arc::new(Tenant {
                name: tenant_config.name.clone(),
                limits,
                concurrency: Arc::new(Semaphore::new(limits.max_concurrency)),
            });
            // Patterns were checked by `Config::validate`; skipping a bad one
            // here can only narrow the routes.
            let hosts = tenant_config
                .hosts
                .iter()
                .filter_map(|h| HostPattern::parse(h).ok())
                .collect();
            let mut routes = TenantRoutes::new(&tenant.name, hosts);
            for (handler_index, handler) in tenant_config.handlers.iter().enumerate() {
                let context = Arc::new(HandlerContext {
                    config: handler.config.clone(),
                    metrics: metrics.handler(&tenant.name, &handler.name),
                });
                let version =
                    HandlerVersion::load_file(runtime, &handler.component, limits, context);
                metrics.handler_load(version.is_ok());
                let version = version.map_err(|source| HandlerLoadError {
                    tenant: tenant.name.clone(),
                    handler: handler.name.clone(),
                    path: handler.component.display().to_string(),
                    source,
                })?;
                tracing::info!(
                    tenant = %tenant.name,
                    handler = %handler.name,
                    route = %handler.route,
                    sha256 = %version.sha256,
                    from_cache = version.from_cache,
                    "handler loaded"
                );
                routes.add(
                    &handler.route,
                    Arc::new(Route {
                        handler: handler.name.clone(),
                        route: handler.route.clone(),
                        tenant: Arc::clone(&tenant),
                        flow: Flow {
                            tenant: tenant_index,
                            handler: handler_index,
                        },
                        version: Arc::new(version),
                    }),
                );
                loaded += 1;
            }
            tenants.push(routes);
        }
        metrics.handlers_loaded.set(loaded);
        release_freed_memory();
        Ok(Self {
            router: RwLock::new(Arc::new(Router::new(tenants))),
        })
    }

    /// The current routing table.
    pub fn router(&self) -> Arc<Router<Arc<Route>>> {
        Arc::clone(&self.router.read().unwrap_or_else(PoisonError::into_inner))
    }
}
