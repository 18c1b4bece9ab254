//! Outbound HTTP: how a guest's `wasi:http/outgoing-handler` call reaches
//! an upstream, and every bound on the way.
//!
//! Each call passes, in order: the tenant's allowlist (by the name as
//! written), the per-request count (`limits.max_outbound_requests`), then
//! the tenant's client (`connector.rs`): a pooled connection to the same
//! upstream, or a new one to a checked address within the tenant's
//! connection cap. A refusal opens no connection. Every wait (connect and
//! response head, each body frame) is clamped to the request's deadline,
//! whatever timeouts the guest asked for. The response head is bounded by
//! hyper's read buffer, the body by the handler's `memory_bytes` (a guest
//! could not hold more).
//!
//! The sending runs on the gateway's tokio threads, not on the guest's
//! worker: a guest waiting for an answer is a suspended future that holds
//! no worker and is charged no CPU (`executor.rs`).

use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use tokio::sync::Semaphore;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::connector::{ConnectError, UpstreamClient, client};
use super::context::HandlerContext;
use crate::allowlist::{AllowList, Scheme};
use crate::guest_log::escape;

/// What one tenant's guests may call, shared by all its requests.
pub struct Outbound {
    /// The tenant's `allowed_outbound_hosts`.
    allowed: Arc<AllowList>,
    /// `limits.max_outbound_requests`: calls one request may make.
    max_requests: u32,
    /// The tenant's connections open at once (`max_outbound_connections`).
    connections: Arc<Semaphore>,
    /// Its pooling client, built on first use (most tenants call nothing).
    client: OnceLock<UpstreamClient>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("allowed", &self.allowed)
            .field("max_requests", &self.max_requests)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// A tenant's policy: `allowed` hosts, `max_requests` calls per request
    /// and `max_connections` connections open at once.
    pub fn new(allowed: AllowList, max_requests: u32, max_connections: usize) -> Self {
        Self {
            allowed: Arc::new(allowed),
            max_requests,
            connections: Arc::new(Semaphore::new(max_connections)),
            client: OnceLock::new(),
        }
    }

    /// The tenant's client.
    fn client(&self) -> &UpstreamClient {
        self.client
            .get_or_init(|| client(Arc::clone(&self.allowed), Arc::clone(&self.connections)))
    }

    /// The policy of a guest that may call nothing (a load's check
    /// instance, benchmarks, tests).
    pub fn deny_all() -> Arc<Self> {
        static DENY_ALL: OnceLock<Arc<Outbound>> = OnceLock::new();
        Arc::clone(DENY_ALL.get_or_init(|| Arc::new(Self::new(AllowList::default(), 0, 0))))
    }
}

/// One request's outbound state: the `wasi:http` hooks of its store.
pub(super) struct OutboundHooks {
    outbound: Arc<Outbound>,
    handler: Arc<HandlerContext>,
    deadline: Instant,
    /// Calls made so far.
    sent: u32,
    /// Largest upstream body the guest may read.
    max_body_bytes: u64,
}

impl OutboundHooks {
    /// The hooks of a request due by `deadline`.
    pub(super) fn new(
        outbound: Arc<Outbound>,
        handler: Arc<HandlerContext>,
        deadline: Instant,
        max_body_bytes: u64,
    ) -> Self {
        Self {
            outbound,
            handler,
            deadline,
            sent: 0,
            max_body_bytes,
        }
    }

    /// Counts and logs a refused call.
    fn refuse(&self, authority: &str, reason: &str) -> Error {
        self.handler.metrics.outbound("denied", None);
        log_refusal(&self.handler, authority, reason);
        Error::HttpRequestDenied
    }

    /// Checks what can be checked without the network: the count, the
    /// scheme and the allowlist.
    fn admit(&mut self, request: &http::Request<WasiBody>) -> Result<Target, Error> {
        let uri = request.uri();
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        if self.outbound.allowed.is_empty() {
            return Err(self.refuse(authority, "the tenant's allowed_outbound_hosts is empty"));
        }
        // Refused calls count too: a guest cannot retry past the bound.
        if self.sent >= self.outbound.max_requests {
            let reason = format!(
                "more than limits.max_outbound_requests ({}) in one request",
                self.outbound.max_requests
            );
            return Err(self.refuse(authority, &reason));
        }
        self.sent += 1;
        let scheme = uri.scheme_str().and_then(Scheme::parse);
        let host = uri.host().unwrap_or_default();
        let Some(scheme) = scheme else {
            return Err(self.refuse(authority, "the scheme is not http or https"));
        };
        let port = uri.port_u16().unwrap_or_else(|| scheme.default_port());
        if authority.contains('@') || !self.outbound.allowed.allows(scheme, host, port) {
            return Err(self.refuse(authority, "not in the tenant's allowed_outbound_hosts"));
        }
        Ok(Target {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        })
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        let admitted = self.admit(&request);
        let call = Call {
            outbound: Arc::clone(&self.outbound),
            handler: Arc::clone(&self.handler),
            deadline: self.deadline,
            options: options.unwrap_or_default(),
            max_body_bytes: self.max_body_bytes,
        };
        Box::new(async move {
            let target = admitted?;
            let started = Instant::now();
            let result = call.send(target, request).await;
            let metrics = &call.handler.metrics;
            match &result {
                Ok(response) => {
                    let class = match response.status().as_u16() {
                        200..=299 => "2xx",
                        300..=399 => "3xx",
                        400..=499 => "4xx",
                        500..=599 => "5xx",
                        _ => "1xx",
                    };
                    metrics.outbound(class, Some(started.elapsed().as_secs_f64()));
                }
                Err(Error::HttpRequestDenied) => {}
                Err(e) => metrics.outbound(result_label(e), Some(started.elapsed().as_secs_f64())),
            }
            let response = result?;
            let done: Box<dyn Future<Output = Result<(), Error>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }

    // wasi:http's defaults log every failure at `warn`: a guest (or its
    // upstream) could fill the log. The metrics count failures instead.

    fn p2_error_from_hyper(&mut self, error: &hyper::Error) -> ErrorCode {
        if error.is_timeout() {
            ErrorCode::ConnectionReadTimeout
        } else if error.is_parse_too_large() {
            ErrorCode::HttpResponseHeaderSectionSize(None)
        } else if error.is_incomplete_message() {
            ErrorCode::HttpResponseIncomplete
        } else {
            ErrorCode::HttpProtocolError
        }
    }

    fn p2_error_from_connect(&mut self, error: &std::io::Error) -> ErrorCode {
        match error.kind() {
            std::io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                ErrorCode::ConnectionTerminated
            }
            _ => ErrorCode::ConnectionRefused,
        }
    }

    fn p2_error_from_tls(&mut self, _error: &std::io::Error) -> ErrorCode {
        ErrorCode::TlsProtocolError
    }
}

/// The metric label of a failed call.
fn result_label(error: &Error) -> &'static str {
    match error {
        Error::HttpRequestDenied
        | Error::DestinationIpProhibited
        | Error::ConnectionLimitReached => "denied",
        Error::ConnectionTimeout
        | Error::ConnectionReadTimeout
        | Error::HttpResponseTimeout
        | Error::DnsTimeout => "timeout",
        _ => "error",
    }
}

/// Where an admitted call goes, as the guest named it.
struct Target {
    /// A name, or an address literal without brackets.
    host: String,
    port: u16,
}

/// One admitted call, ready to go to the network.
struct Call {
    outbound: Arc<Outbound>,
    handler: Arc<HandlerContext>,
    deadline: Instant,
    options: RequestOptions,
    max_body_bytes: u64,
}

impl Call {
    /// When the response head must have come: the guest's connect and
    /// first-byte timeouts together, if it gave both (a pooled connection
    /// needs no connect), and never past the deadline.
    fn head_by(&self) -> Instant {
        let RequestOptions {
            connect_timeout,
            first_byte_timeout,
            ..
        } = self.options;
        let asked = match (connect_timeout, first_byte_timeout) {
            (Some(connect), Some(first_byte)) => Some(connect.saturating_add(first_byte)),
            (None, first_byte) => first_byte,
            (connect, None) => connect,
        };
        match asked {
            Some(wait) => (Instant::now() + wait).min(self.deadline),
            None => self.deadline,
        }
    }

    /// Sends through the tenant's client; the response's body is bounded
    /// and ends at the deadline.
    async fn send(
        &self,
        target: Target,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let sent = tokio::time::timeout_at(
            self.head_by().into(),
            self.outbound.client().request(request),
        )
        .await;
        let response = match sent {
            Err(_) => return Err(Error::ConnectionReadTimeout),
            Ok(Err(e)) => return Err(self.failed(&target, &e)),
            Ok(Ok(response)) => response,
        };
        let between_bytes = self.options.between_bytes_timeout;
        let deadline = self.deadline;
        let max_bytes = self.max_body_bytes;
        Ok(response.map(|incoming| {
            BoundedBody {
                incoming,
                remaining: max_bytes,
                max_bytes,
                between_bytes,
                deadline,
                timer: Box::pin(tokio::time::sleep_until(
                    next_frame_by(between_bytes, deadline).into(),
                )),
            }
            .boxed_unsync()
        }))
    }

    /// The guest's error for a call the client could not make; a refusal
    /// (an internal address, no connection slot) is logged like the
    /// allowlist's.
    fn failed(&self, target: &Target, error: &hyper_util::client::legacy::Error) -> Error {
        let mut cause = error.source();
        while let Some(inner) = cause {
            if let Some(refused) = inner.downcast_ref::<ConnectError>() {
                return self.connect_failed(target, refused);
            }
            if let Some(hyper) = inner.downcast_ref::<hyper::Error>() {
                return if hyper.is_timeout() {
                    Error::ConnectionReadTimeout
                } else if hyper.is_parse_too_large() {
                    Error::HttpResponseHeaderSectionSize(None)
                } else if hyper.is_incomplete_message() {
                    Error::HttpResponseIncomplete
                } else {
                    Error::HttpProtocolError
                };
            }
            cause = inner.source();
        }
        Error::HttpProtocolError
    }

    fn connect_failed(&self, target: &Target, refused: &ConnectError) -> Error {
        let copy = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match refused {
            ConnectError::Prohibited { .. } | ConnectError::Busy => {
                let authority = format!("{}:{}", target.host, target.port);
                log_refusal(&self.handler, &authority, &refused.to_string());
                match refused {
                    ConnectError::Busy => Error::ConnectionLimitReached,
                    _ => Error::DestinationIpProhibited,
                }
            }
            ConnectError::BadUri => Error::HttpRequestUriInvalid,
            ConnectError::NotFound { .. } => Error::DestinationNotFound,
            ConnectError::Timeout => Error::ConnectionTimeout,
            ConnectError::Connect(e) => Error::Connect(copy(e)),
            ConnectError::Tls(e) => Error::Tls(copy(e)),
        }
    }
}

/// One warn line about a refused call, within the handler's log budget.
fn log_refusal(handler: &HandlerContext, authority: &str, reason: &str) {
    let metrics = &handler.metrics;
    if tracing::enabled!(tracing::Level::WARN) && handler.log_permit() {
        tracing::warn!(
            tenant = %metrics.tenant,
            handler = %metrics.handler,
            host = %escape(authority, 256),
            "outbound call refused: {reason}"
        );
    }
}

/// When the next body frame must have come.
fn next_frame_by(between_bytes: Option<Duration>, deadline: Instant) -> Instant {
    between_bytes.map_or(deadline, |wait| (Instant::now() + wait).min(deadline))
}

/// An upstream's response body as the guest reads it: at most `max_bytes`,
/// each frame within the guest's between-bytes timeout, all of it by the
/// deadline.
struct BoundedBody {
    incoming: Incoming,
    remaining: u64,
    max_bytes: u64,
    between_bytes: Option<Duration>,
    deadline: Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Body for BoundedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        let max = self.max_bytes;
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(max)))));
                    }
                    self.remaining -= len;
                }
                let by = next_frame_by(self.between_bytes, self.deadline);
                self.timer.as_mut().reset(by.into());
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Empty;

    use super::*;
    use crate::guest_log::captured_log;
    use crate::metrics::Metrics;

    /// The hooks of one request of tenant `t`'s handler `h`, whose tenant
    /// may call `allowed` at most `max_requests` times per request.
    fn hooks(allowed: &[&str], max_requests: u32) -> (Arc<Metrics>, OutboundHooks) {
        let metrics = Arc::new(Metrics::new());
        let entries: Vec<String> = allowed.iter().map(|a| (*a).to_owned()).collect();
        let outbound = Outbound::new(AllowList::parse(&entries).expect("valid"), max_requests, 4);
        let handler = Arc::new(HandlerContext {
            config: Default::default(),
            metrics: metrics.handler("t", "h"),
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let hooks = OutboundHooks::new(Arc::new(outbound), handler, deadline, 1 << 20);
        (metrics, hooks)
    }

    fn get(url: &str) -> http::Request<WasiBody> {
        let body = Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Request::get(url).body(body).expect("valid request")
    }

    fn denied(metrics: &Metrics) -> f64 {
        let text = metrics.render();
        let sample =
            "wasmgate_outbound_requests_total{handler=\"h\",result=\"denied\",tenant=\"t\"} ";
        text.lines()
            .find_map(|line| line.strip_prefix(sample))
            .map_or(0.0, |n| n.parse().expect("a number"))
    }

    #[test]
    fn a_listed_host_is_admitted_with_its_port_and_others_are_refused() {
        let (metrics, mut hooks) = hooks(&["http://127.0.0.1:9000", "https://*.example.org"], 10);
        let target = hooks
            .admit(&get("http://127.0.0.1:9000/x"))
            .expect("listed");
        assert_eq!((target.host.as_str(), target.port), ("127.0.0.1", 9000));
        let target = hooks
            .admit(&get("https://api.example.org/"))
            .expect("listed");
        assert_eq!(
            (target.host.as_str(), target.port),
            ("api.example.org", 443)
        );
        for refused in [
            "http://127.0.0.1:9001/",
            "http://localhost:9000/",
            "http://api.example.org/",
            "https://example.org/",
            "http://user@127.0.0.1:9000/",
        ] {
            assert!(
                matches!(hooks.admit(&get(refused)), Err(Error::HttpRequestDenied)),
                "{refused}"
            );
        }
        assert_eq!(denied(&metrics), 5.0);
    }

    #[test]
    fn the_call_past_max_requests_is_refused_and_says_why() {
        let (metrics, mut hooks) = hooks(&["http://127.0.0.1:9000"], 2);
        let request = || get("http://127.0.0.1:9000/");
        assert!(hooks.admit(&request()).is_ok());
        assert!(hooks.admit(&request()).is_ok());
        let log = captured_log(|| {
            assert!(matches!(
                hooks.admit(&request()),
                Err(Error::HttpRequestDenied)
            ));
        });
        assert!(log.contains("max_outbound_requests (2)"), "{log}");
        assert!(
            log.contains("tenant=t") && log.contains("handler=h"),
            "{log}"
        );
        assert!(log.contains("host=127.0.0.1:9000"), "{log}");
        assert_eq!(denied(&metrics), 1.0);
    }

    #[test]
    fn refusals_are_logged_within_the_handlers_log_budget() {
        let (metrics, mut hooks) = hooks(&[], 0);
        metrics.handler("t", "h").log.set_rate(2);
        let log = captured_log(|| {
            for _ in 0..50 {
                assert!(hooks.admit(&get("http://169.254.169.254/")).is_err());
            }
        });
        let lines = log
            .lines()
            .filter(|l| l.contains("outbound call refused"))
            .count();
        assert!(lines <= 4, "{lines} lines logged:\n{log}");
        assert!(log.contains("allowed_outbound_hosts is empty"), "{log}");
        assert_eq!(denied(&metrics), 50.0);
    }
}
