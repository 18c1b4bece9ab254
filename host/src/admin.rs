//! The admin listener: health, readiness and Prometheus metrics.
//!
//! Served on its own listener and its own tasks, so a flood of public
//! traffic or CPU-heavy guests never makes `/metrics` unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::ResponseBody;
use crate::metrics::Metrics;

/// The admin API.
#[derive(Debug)]
pub struct Admin {
    metrics: Arc<Metrics>,
    /// Worker threads configured: fewer alive makes `/readyz` say 503.
    workers: usize,
    /// Set at shutdown: `/readyz` then says 503 so load balancers stop
    /// sending traffic while in-flight requests drain.
    pub(crate) draining: AtomicBool,
}

impl Admin {
    /// The admin API over these metrics, for a gateway with `workers`
    /// worker threads. Handlers are loaded before the admin listener
    /// starts, so it is ready from the start.
    pub fn new(metrics: Arc<Metrics>, workers: usize) -> Self {
        Self {
            metrics,
            workers,
            draining: AtomicBool::new(false),
        }
    }

    /// Answers one admin request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let path = request.uri().path();
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

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
