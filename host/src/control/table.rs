//! The routing table the control plane publishes and the request path
//! reads: what a host and path lead to (a handler's loaded version with
//! its tenant's shared state, or a static mount).
//!
//! A request takes the current table once, so a swap never changes the
//! version a request started with, and readers never wait for a writer:
//! the table is an immutable snapshot behind an `Arc`, replaced whole.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::Semaphore;

use crate::limits::Limits;
use crate::metrics::HandlerMetrics;
use crate::router::Router;
use crate::runtime::{Flow, HandlerVersion, Outbound};

/// The published table.
#[derive(Debug)]
pub struct RouteTable(RwLock<Arc<Router<Target>>>);

impl RouteTable {
    /// A table publishing `router` first.
    pub(super) fn new(router: Router<Target>) -> Self {
        Self(RwLock::new(Arc::new(router)))
    }

    /// The table as it is now.
    pub fn current(&self) -> Arc<Router<Target>> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the table: requests that come after see `router`.
    pub(super) fn publish(&self, router: Router<Target>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(router);
    }
}

/// A tenant's shared state.
#[derive(Debug)]
pub struct Tenant {
    /// Its name.
    pub name: String,
    /// Its effective limits.
    pub limits: Limits,
    /// Caps its requests in flight at `limits.max_concurrency`.
    pub concurrency: Arc<Semaphore>,
    /// Its share of the guest CPU against other tenants.
    pub cpu_weight: u32,
    /// What its guests may call upstream, and its outbound connections.
    pub outbound: Arc<Outbound>,
    /// The list `outbound` was made from, to tell when it changes.
    pub allowed_outbound_hosts: Vec<String>,
}

/// A routed handler: what a request needs once routed.
#[derive(Debug)]
pub struct Route {
    /// The handler's name.
    pub handler: String,
    /// Its path prefix.
    pub route: String,
    /// The prefix as the `x-wasmgate-route` value its guest is shown, made
    /// once here rather than per request (`None` if it were not a valid
    /// value: routes are printable ASCII, so never).
    pub route_header: Option<http::HeaderValue>,
    /// The tenant it belongs to.
    pub tenant: Arc<Tenant>,
    /// Where its requests wait for a worker.
    pub flow: Flow,
    /// The number of the version serving it now.
    pub number: u64,
    /// The version serving it now.
    pub version: Arc<HandlerVersion>,
}

/// What a route leads to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A handler: the request runs in its guest.
    Handler(Arc<Route>),
    /// A static mount: the host serves a file.
    Static(Arc<StaticMount>),
}

/// The `handler` label of a mount's requests in the metrics:
/// `static:ROUTE`. Handler names cannot contain `:` or `/`, so it never
/// collides with a handler's.
pub fn metrics_label(route: &str) -> String {
    format!("static:{route}")
}

/// One mounted directory.
#[derive(Debug)]
pub struct StaticMount {
    /// The route it is mounted at; stripped from request paths.
    pub route: String,
    /// The directory's canonical path: every file served lies under it.
    pub root: PathBuf,
    /// Its request counter and duration histogram.
    pub metrics: Arc<HandlerMetrics>,
}
