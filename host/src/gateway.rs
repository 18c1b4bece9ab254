//! The public request path: route, admit, read the body, run the guest on
//! the executor, count it.
//!
//! Runs on tokio's async workers and never runs guest code itself: the
//! only waiting it does is for the body and for the executor's reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::body::ResponseBody;
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::registry::{Registry, Route};
use crate::runtime::{Executor, GuestRequest};

/// Everything the request path needs, shared by all connections.
#[derive(Debug)]
pub struct Gateway {
    /// Routes to handler versions.
    pub registry: Registry,
    /// Runs guest calls on the worker threads.
    pub executor: Executor,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// `server.max_body_bytes`.
    pub max_body_bytes: usize,
}

impl Gateway {
    /// Answers one request; every failure becomes its DESIGN.md status.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let router = self.registry.router();
        let Some((_, route)) = router.route(request_host(&request), request.uri().path()) else {
            let error = RequestError::NoRoute;
            self.metrics.no_route(error.status_and_code().0);
            return error.to_response().map(ResponseBody::from);
        };
        let route = Arc::clone(route);
        drop(router);

        let (result, fuel) = self.run(&route, request).await;
        let trap = result.as_ref().err().and_then(RequestError::trap_kind);
        let response = result.unwrap_or_else(|e| e.to_response());
        route.version.context.metrics.request(
            response.status(),
            started.elapsed().as_secs_f64(),
            fuel,
            trap,
        );
        response.map(ResponseBody::from)
    }

    async fn run(
        &self,
        route: &Route,
        request: Request<Incoming>,
    ) -> (Result<Response<Bytes>, RequestError>, Option<u64>) {
        let permit = match Arc::clone(&route.tenant.concurrency).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                return (
                    Err(RequestError::Overloaded("tenant is at its max_concurrency")),
                    None,
                );
            }
        };
        let request = match self.read_request(request).await {
            Ok(request) => request,
            Err(e) => return (Err(e), None),
        };
        let timeout = Duration::from_millis(route.version.limits.timeout_ms);
        let reply = self.executor.submit(
            route.flow,
            Arc::clone(&route.version),
            request,
            Instant::now() + timeout,
            permit,
        );
        match reply {
            Ok(reply) => match reply.await {
                Ok(outcome) => (outcome.result, outcome.fuel_consumed),
                Err(_) => (Err(RequestError::ShuttingDown), None),
            },
            Err(e) => (Err(e), None),
        }
    }

    /// Reads the body within `max_body_bytes` and builds the guest's view.
    async fn read_request(&self, request: Request<Incoming>) -> Result<GuestRequest, RequestError> {
        let limit = self.max_body_bytes;
        let too_large = RequestError::BodyTooLarge { limit };
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large);
        }
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large),
            Err(e) => return Err(RequestError::BadBody(e.to_string())),
        };
        Ok(GuestRequest::new(parts, body))
    }
}

/// The host a request is for: the URI's authority (HTTP/2, absolute-form)
/// or the Host header.
fn request_host<B>(request: &Request<B>) -> &str {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_comes_from_authority_or_header() {
        let with_header = Request::builder()
            .uri("/x")
            .header("host", "a.example.com:8080")
            .body(())
            .expect("valid request");
        assert_eq!(request_host(&with_header), "a.example.com:8080");
        let absolute = Request::builder()
            .uri("http://b.example.com/x")
            .header("host", "ignored")
            .body(())
            .expect("valid request");
        assert_eq!(request_host(&absolute), "b.example.com");
        let none = Request::builder()
            .uri("/x")
            .body(())
            .expect("valid request");
        assert_eq!(request_host(&none), "");
    }
}
