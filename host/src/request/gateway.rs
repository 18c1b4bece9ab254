//! The public request path: route, read the body, admit, run the guest on
//! the executor, count it. A route to a static mount is answered by
//! [`crate::request::static_files`] instead, counted the same way with the handler
//! label `static:ROUTE`.
//!
//! Runs on tokio's async workers and never runs guest code itself: the
//! only waiting it does is for the body and for the executor's reply, and
//! both are bounded (`server.body_read_timeout_ms`, the request's deadline).
//! The body is read before the request takes one of its tenant's slots, so
//! a client that sends slowly holds its own connection and nothing else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use crate::control::table::{Route, RouteTable, Target};
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::request::body::{ByteBudget, Reservation, ResponseBody};
use crate::runtime::{Executor, GuestRequest};

pub use crate::runtime::{PROTO_HEADER, ROUTE_HEADER};

/// What the HTTPS listener puts in the extensions of each request of a TLS
/// connection: the server name (SNI) its handshake asked for, empty when
/// it sent none.
#[derive(Debug, Clone)]
pub struct TlsConnection {
    /// The SNI, lower case.
    pub server_name: Arc<str>,
}

/// Everything the request path needs, shared by all connections.
#[derive(Debug)]
pub struct Gateway {
    /// Routes to handler versions; the admin API writes to it.
    pub routes: Arc<RouteTable>,
    /// Runs guest calls on the worker threads.
    pub executor: Executor,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// `server.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `server.body_read_timeout_ms`.
    pub body_read_timeout: Duration,
    /// Caps the request and response bytes all connections hold
    /// (`server.max_buffered_bytes`).
    pub budget: Arc<ByteBudget>,
}

/// The gateway's answer to one request.
#[derive(Debug)]
pub struct Answer {
    /// What the client gets.
    pub response: Response<ResponseBody>,
    /// The request's body when the response was decided before it was read
    /// to the end (413, 404, 429, ...). It must outlive the response: on
    /// HTTP/2, a body dropped before the response is sent resets the stream
    /// with CANCEL and the client sees no response at all, while one
    /// dropped after it resets the stream with NO_ERROR (RFC 9113 8.1),
    /// which clients read as "the server needs no more". The server
    /// discards it, within a bound, once the response is written.
    pub unread: Option<Incoming>,
}

impl Answer {
    fn new(response: Response<ResponseBody>, unread: Option<Incoming>) -> Self {
        let unread = unread.filter(|body| !body.is_end_stream());
        Self { response, unread }
    }
}

impl Gateway {
    /// Answers one request; every failure becomes its status (see
    /// [`RequestError`]).
    pub async fn handle(&self, request: Request<Incoming>) -> Answer {
        let started = Instant::now();
        let (head, body) = request.into_parts();
        let host = match request_host(&head) {
            Ok(host) => host,
            Err(error) => return Answer::new(self.unrouted(&error), Some(body)),
        };
        let router = self.routes.current();
        let tls = head.extensions.get::<TlsConnection>();
        if let Some(tls) = tls
            && let Err(error) = check_server_name(&router, host, &tls.server_name)
        {
            return Answer::new(self.unrouted(&error), Some(body));
        }
        let https = tls.is_some();
        let Some((_, target)) = router.route(host, head.uri.path()) else {
            return Answer::new(self.unrouted(&RequestError::NoRoute), Some(body));
        };
        let route = match target {
            Target::Handler(route) => Arc::clone(route),
            Target::Static(mount) => {
                let mount = Arc::clone(mount);
                drop(router);
                let _in_flight = InFlight::start(&self.metrics);
                let response = mount.serve(&head).await;
                let seconds = started.elapsed().as_secs_f64();
                mount
                    .metrics
                    .request(response.status(), seconds, None, None);
                return Answer::new(response, Some(body));
            }
        };
        drop(router);

        let _in_flight = InFlight::start(&self.metrics);
        let (result, fuel, unread) = self.run(&route, head, body, https).await;
        let trap = result.as_ref().err().and_then(RequestError::trap_kind);
        let response = result.unwrap_or_else(|e| e.to_response().map(ResponseBody::from));
        route.version.context.metrics.request(
            response.status(),
            started.elapsed().as_secs_f64(),
            fuel,
            trap,
        );
        Answer::new(response, unread)
    }

    /// Answers a request that reached no handler, counted without labels.
    fn unrouted(&self, error: &RequestError) -> Response<ResponseBody> {
        self.metrics.no_route(error.status_and_code().0);
        error.to_response().map(ResponseBody::from)
    }

    /// Runs the request through its handler. Also gives back the request's
    /// body when it was not read to the end.
    async fn run(
        &self,
        route: &Route,
        head: http::request::Parts,
        mut body: Incoming,
        https: bool,
    ) -> (
        Result<Response<ResponseBody>, RequestError>,
        Option<u64>,
        Option<Incoming>,
    ) {
        let read = self.read_request(route, head, &mut body, https).await;
        let (request, body_reservation) = match read {
            Ok(read) => read,
            Err(e) => return (Err(e), None, Some(body)),
        };
        let (result, fuel) = self.call(route, request, body_reservation).await;
        (result, fuel, None)
    }

    /// Calls the handler with a request whose body has been read.
    async fn call(
        &self,
        route: &Route,
        request: GuestRequest,
        body_reservation: Reservation,
    ) -> (Result<Response<ResponseBody>, RequestError>, Option<u64>) {
        let Ok(permit) = Arc::clone(&route.tenant.concurrency).try_acquire_owned() else {
            let error = RequestError::Overloaded("tenant is at its max_concurrency");
            return (Err(error), None);
        };
        let deadline = Instant::now() + Duration::from_millis(route.version.limits.timeout_ms);
        let outcome = self
            .executor
            .call(
                route.flow,
                route.tenant.cpu_weight,
                Arc::clone(&route.version),
                request.with_outbound(Arc::clone(&route.tenant.outbound)),
                deadline,
                permit,
            )
            .await;
        drop(body_reservation);
        let fuel = outcome.fuel_consumed;
        let response = match outcome.result {
            Ok(response) => response,
            Err(e) => return (Err(e), fuel),
        };
        let Some(reservation) = self.budget.try_reserve(response.body().len()) else {
            let error =
                RequestError::Overloaded("the gateway's memory budget for responses is full");
            return (Err(error), fuel);
        };
        let response = response.map(|body| ResponseBody::new(body, Some(reservation)));
        (Ok(response), fuel)
    }

    /// Reads the body within `max_body_bytes`, `body_read_timeout` and the
    /// memory budget, and builds the guest's view of the request to
    /// `route` (that came over HTTPS if `https`).
    async fn read_request(
        &self,
        route: &Route,
        mut head: http::request::Parts,
        body: &mut Incoming,
        https: bool,
    ) -> Result<(GuestRequest, Reservation), RequestError> {
        let limit = self.max_body_bytes;
        let too_large = || RequestError::BodyTooLarge { limit };
        let declared = head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        // The guest sees the host the request was routed by (RFC 9112
        // 3.2.2: an absolute-form target's authority overrides Host; in
        // HTTP/2 it is `:authority`).
        if let Some(authority) = head.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            head.headers.insert(http::header::HOST, host);
        }
        let route_header = route.route_header.clone();
        let mut reservation = self.budget.reserve_none();
        if body.is_end_stream() {
            let request = GuestRequest::new(head, Bytes::new())
                .with_https(https)
                .routed(route_header);
            return Ok((request, reservation));
        }
        let over_budget =
            || RequestError::Overloaded("the gateway's memory budget for bodies is full");
        // The budget is taken as bytes arrive, never for a declared length
        // alone: a client that only promises a body holds none of it.
        let expected = declared.map_or(0, |n| n as usize);
        let deadline = Instant::now() + self.body_read_timeout;
        let timed_out = || RequestError::BodyTimeout {
            timeout_ms: u64::try_from(self.body_read_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        // One chunk is kept as it came; only a second one costs a copy.
        let mut whole = Bytes::new();
        let mut joined: Option<BytesMut> = None;
        loop {
            let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
                Err(_) => return Err(timed_out()),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(RequestError::BadBody(e.to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers are not passed to guests.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = joined.as_ref().map_or(whole.len(), BytesMut::len) + data.len();
            if len > limit {
                return Err(too_large());
            }
            if len > reservation.bytes() && !reservation.grow(len - reservation.bytes()) {
                return Err(over_budget());
            }
            match &mut joined {
                Some(joined) => joined.extend_from_slice(&data),
                None if whole.is_empty() => whole = data,
                None => {
                    let mut buffer = BytesMut::with_capacity(expected.max(len));
                    buffer.extend_from_slice(&whole);
                    buffer.extend_from_slice(&data);
                    joined = Some(buffer);
                }
            }
        }
        let body = joined.map_or(whole, BytesMut::freeze);
        let request = GuestRequest::new(head, body)
            .with_https(https)
            .routed(route_header);
        Ok((request, reservation))
    }
}

/// Counts a routed request in `wasmgate_requests_in_flight` until dropped,
/// also when the client goes away and the request's future is dropped.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        metrics.requests_in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.requests_in_flight.dec();
    }
}

/// Refuses a request over TLS whose host routes to another tenant than its
/// connection's server name does (RFC 9110 15.5.20): one tenant's
/// certificate must not carry another tenant's requests.
fn check_server_name<T>(
    router: &crate::router::Router<T>,
    host: &str,
    server_name: &str,
) -> Result<(), RequestError> {
    let Some(tenant) = router.tenant(host, true) else {
        // No tenant serves the host: 404 as on any connection.
        return Ok(());
    };
    match router.tenant(server_name, true) {
        Some(named) if Arc::ptr_eq(named, tenant) => Ok(()),
        Some(_) => Err(RequestError::Misdirected(
            "the host belongs to another tenant than the TLS server name (SNI) of this connection",
        )),
        None => Err(RequestError::Misdirected(
            "the TLS server name (SNI) of this connection belongs to no tenant: connect with the host's name",
        )),
    }
}

/// The host a request is for (RFC 9112 3.2): an HTTP/1.1 request must carry
/// exactly one Host header, and no request may carry two. The target's
/// authority (absolute-form, or HTTP/2's `:authority`) wins over Host.
fn request_host(request: &http::request::Parts) -> Result<&str, RequestError> {
    let mut hosts = request.headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(RequestError::BadRequest("more than one Host header"));
    }
    if host.is_none() && request.version == Version::HTTP_11 {
        return Err(RequestError::BadRequest(
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    if let Some(authority) = request.uri.authority() {
        return Ok(authority.as_str());
    }
    match host.map(HeaderValue::to_str) {
        None => Ok(""),
        Some(Ok(host)) => Ok(host),
        Some(Err(_)) => Err(RequestError::BadRequest(
            "the Host header is not a valid host",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, uri: &str, hosts: &[&str]) -> http::request::Parts {
        let mut builder = Request::builder().version(version).uri(uri);
        for host in hosts {
            builder = builder.header("host", *host);
        }
        builder.body(()).expect("valid request").into_parts().0
    }

    #[test]
    fn the_host_comes_from_the_authority_or_the_one_host_header() {
        /// Version, target, Host headers, and the host or part of the error.
        type Case<'a> = (Version, &'a str, &'a [&'a str], Result<&'a str, &'a str>);
        let table: &[Case] = &[
            (
                Version::HTTP_11,
                "/x",
                &["a.example.com:8080"],
                Ok("a.example.com:8080"),
            ),
            // Absolute-form: the authority wins, and Host is still required.
            (
                Version::HTTP_11,
                "http://b.example.com/x",
                &["other"],
                Ok("b.example.com"),
            ),
            (
                Version::HTTP_11,
                "http://b.example.com/x",
                &[],
                Err("needs a Host"),
            ),
            (Version::HTTP_11, "/x", &[], Err("needs a Host")),
            (Version::HTTP_11, "/x", &["a", "b"], Err("more than one")),
            (Version::HTTP_10, "/x", &[], Ok("")),
            (Version::HTTP_10, "/x", &["a", "a"], Err("more than one")),
            // HTTP/2 carries :authority in the URI; Host is optional.
            (
                Version::HTTP_2,
                "http://c.example.com/x",
                &[],
                Ok("c.example.com"),
            ),
            (Version::HTTP_2, "/x", &[], Ok("")),
        ];
        for (version, uri, hosts, want) in table {
            let request = request(*version, uri, hosts);
            let got = request_host(&request).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{version:?} {uri} {hosts:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{version:?} {uri} {hosts:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn an_invalid_host_header_is_a_bad_request() {
        let mut request = request(Version::HTTP_11, "/x", &[]);
        request.headers.insert(
            http::header::HOST,
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("opaque bytes are a valid value"),
        );
        assert!(matches!(
            request_host(&request),
            Err(RequestError::BadRequest(_))
        ));
    }
}
