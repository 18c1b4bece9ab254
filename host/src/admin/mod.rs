//! The admin listener: health, readiness, Prometheus metrics, and the
//! write API under `/admin/`: its routing (`routes.rs`), operations
//! (`ops.rs`), request bodies (`bodies.rs`), HTTP out (`wire.rs`) and JSON
//! ([`views`], shared with the command line's client).
//!
//! Served on its own listener and its own tasks, so a flood of public
//! traffic or CPU-heavy guests never makes `/metrics` unreachable.

pub mod auth;
mod bodies;
mod ops;
mod routes;
pub mod views;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::admin::auth::Tokens;
pub use crate::control::ReloadError;
use crate::control::oci::Oci;
use crate::control::registry::Registry;
use crate::control::{ControlPlane, Trigger};
use crate::metrics::Metrics;
use crate::request::body::ResponseBody;

/// The admin API.
#[derive(Debug)]
pub struct Admin {
    metrics: Arc<Metrics>,
    /// Worker threads configured: fewer alive makes `/readyz` say 503.
    workers: usize,
    /// What the write API edits, and where its tokens are configured.
    control: Arc<ControlPlane>,
    /// The control plane's registry: the one writer every write goes to.
    registry: Arc<Registry>,
    /// Request bodies: their limits, and the budget they share.
    bodies: bodies::Bodies,
    /// Pulls the components a deploy by reference names.
    oci: Oci,
    /// Set at shutdown: `/readyz` then says 503 so load balancers stop
    /// sending traffic while in-flight requests drain.
    pub(crate) draining: AtomicBool,
}

impl Admin {
    /// The admin API of a gateway with `workers` worker threads, editing
    /// what `control` serves. Handlers are loaded before the admin listener
    /// starts, so it is ready from the start. Without a root token it
    /// says so once, as a warning: otherwise nothing would until a write
    /// failed.
    pub fn new(metrics: Arc<Metrics>, workers: usize, control: Arc<ControlPlane>) -> Self {
        let config = control.config();
        if let Some(disabled) = Tokens::from_env(&config.admin.token_env, []).disabled() {
            tracing::warn!("{disabled}");
        }
        let bodies = bodies::Bodies::new(config.admin.max_upload_bytes);
        Self {
            metrics,
            workers,
            registry: Arc::clone(control.registry()),
            control,
            bodies,
            oci: Oci::from_env(),
            draining: AtomicBool::new(false),
        }
    }

    /// Who may write: the root token the applied config names and each
    /// tenant's the desired state names (a tenant's `token_env`, from the
    /// config file or the API), read from the environment.
    fn tokens(&self) -> Tokens {
        let envs = self.registry.token_envs();
        Tokens::from_env(
            &self.control.config().admin.token_env,
            envs.iter()
                .map(|(tenant, env)| (tenant.as_str(), env.as_str())),
        )
    }

    /// Reads the config file again and applies the difference
    /// (`POST /admin/reload`); see [`ControlPlane::reload`].
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        self.control.reload(Trigger::Api).await
    }

    /// Answers one admin request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let path = request.uri().path();
        if path.starts_with("/admin/") {
            return routes::handle(self, request).await;
        }
        match (request.method(), path) {
            (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET | &Method::HEAD, "/readyz") => {
                let alive = usize::try_from(self.metrics.workers_alive.get()).unwrap_or(0);
                let draining = self.draining.load(Ordering::Relaxed);
                let (status, body) = match self.control.cluster() {
                    // A replica that never applied a revision has nothing
                    // to serve yet.
                    Some(cluster) if !draining && !cluster.has_state() => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for the cluster's state: etcd not reached yet\n".to_owned(),
                    ),
                    _ => readiness(draining, alive, self.workers),
                };
                let mut response = text(status, "");
                *response.body_mut() = ResponseBody::from(Bytes::from(body));
                response
            }
            (&Method::GET | &Method::HEAD, "/metrics") => {
                let mut response =
                    Response::new(ResponseBody::from(Bytes::from(self.metrics.render())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            (_, "/healthz" | "/readyz" | "/metrics") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// `/readyz`: 503 while draining, so load balancers stop sending, and
/// while fewer than `workers` worker threads are alive (one died and its
/// replacement has not started: requests still run, on fewer threads).
fn readiness(draining: bool, alive: usize, workers: usize) -> (StatusCode, String) {
    if draining {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
    } else if alive < workers {
        let body = format!("degraded: {alive} of {workers} workers alive\n");
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else {
        (StatusCode::OK, "ready\n".into())
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_while_draining_or_with_a_dead_worker() {
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        for (draining, alive, want) in [
            (false, 2, (StatusCode::OK, "ready\n")),
            (false, 1, (unavailable, "degraded: 1 of 2 workers alive\n")),
            (false, 0, (unavailable, "degraded: 0 of 2 workers alive\n")),
            (true, 2, (unavailable, "shutting down\n")),
            (true, 1, (unavailable, "shutting down\n")),
        ] {
            let (status, body) = readiness(draining, alive, 2);
            assert_eq!(
                (status, body.as_str()),
                want,
                "draining {draining}, alive {alive}"
            );
        }
    }
}
