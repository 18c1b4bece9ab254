//! The admin listener: health, readiness, Prometheus metrics, and the
//! write API under `/admin/`: its routing (`routes.rs`), operations
//! (`ops.rs`), HTTP in and out (`wire.rs`) and JSON ([`views`], shared
//! with the command line's client).
//!
//! Served on its own listener and its own tasks, so a flood of public
//! traffic or CPU-heavy guests never makes `/metrics` unreachable.

mod ops;
mod routes;
pub mod views;
mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::auth::Tokens;
use crate::body::ResponseBody;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// The admin API.
#[derive(Debug)]
pub struct Admin {
    metrics: Arc<Metrics>,
    /// Worker threads configured: fewer alive makes `/readyz` say 503.
    workers: usize,
    /// What the write API edits.
    registry: Arc<Registry>,
    /// Who may write; read again from the environment on reload.
    tokens: RwLock<Tokens>,
    /// `admin.max_upload_bytes`.
    max_upload_bytes: usize,
    /// The config file `serve` was started with, read again on reload.
    config_path: Option<PathBuf>,
    /// Set at shutdown: `/readyz` then says 503 so load balancers stop
    /// sending traffic while in-flight requests drain.
    pub(crate) draining: AtomicBool,
}

impl Admin {
    /// The admin API of a gateway with `workers` worker threads serving
    /// `registry`, configured by `config` (read from `config_path`, if it
    /// came from a file). Handlers are loaded before the admin listener
    /// starts, so it is ready from the start.
    pub fn new(
        metrics: Arc<Metrics>,
        workers: usize,
        registry: Arc<Registry>,
        config: &Config,
        config_path: Option<PathBuf>,
    ) -> Self {
        Self {
            metrics,
            workers,
            registry,
            tokens: RwLock::new(tokens_of(config)),
            max_upload_bytes: config.admin.max_upload_bytes,
            config_path,
            draining: AtomicBool::new(false),
        }
    }

    fn tokens(&self) -> Tokens {
        self.tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the config file again and applies the difference (SIGHUP,
    /// `POST /admin/reload`): tenants, routes, limits, handlers, tokens.
    /// An invalid file changes nothing and is reported as `serve` would.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoConfigFile)?;
        // A missing component is named with its config line, as at start.
        let config = tokio::task::spawn_blocking(move || {
            let config = Config::load(&path)?;
            config.check_components(&path).map(|()| config)
        })
        .await
        .map_err(|e| ReloadError::Config(e.to_string()))?
        .map_err(|e| ReloadError::Config(e.to_string()))?;
        let tokens = tokens_of(&config);
        self.registry
            .reload(config)
            .await
            .map_err(ReloadError::Apply)?;
        *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = tokens;
        Ok(())
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
                if self.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else if alive < self.workers {
                    // A worker died and its replacement has not started:
                    // requests still run, on fewer threads.
                    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "");
                    *response.body_mut() = ResponseBody::from(Bytes::from(format!(
                        "degraded: {alive} of {} workers alive\n",
                        self.workers
                    )));
                    response
                } else {
                    text(StatusCode::OK, "ready\n")
                }
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

/// The root token and the tenants' tokens `config` names.
fn tokens_of(config: &Config) -> Tokens {
    Tokens::from_env(
        &config.admin.token_env,
        config
            .tenants
            .iter()
            .filter_map(|t| Some((t.name.as_str(), t.token_env.as_deref()?))),
    )
}

/// Why a config reload did not happen; nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The gateway was started without a config file.
    #[error("the gateway was started without --config: there is no file to reload")]
    NoConfigFile,
    /// The file does not parse or validate (the message `serve` gives).
    #[error("{0}")]
    Config(String),
    /// Its handlers did not load, or do not fit the state.
    #[error(transparent)]
    Apply(crate::registry::StartError),
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
