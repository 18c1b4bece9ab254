//! Listeners and connections: the accept loops, the clocks that close
//! connections, and graceful shutdown.
//!
//! The accept loop only accepts; each connection is its own task, served by
//! hyper (HTTP/1.1 and HTTP/2) next to its clocks (`connection.rs`): a
//! connection that sends no complete request head within
//! `header_read_timeout_ms` of accept, or whose client accepts none of a
//! waiting response for `write_timeout_ms`, is dropped; one with nothing in
//! flight for `idle_timeout_ms` is closed gracefully. The admin listener
//! has clocks and slots of its own ([`ADMIN_MAX_CONNECTIONS`] and the
//! constants next to it), so public clients can never make `/readyz`
//! unreachable and admin clients cannot either for long.
//!
//! On shutdown the loops stop accepting and every connection finishes its
//! in-flight requests and closes. Requests still without a response when
//! `shutdown_grace_ms` ends get 503 `shutting_down`; connections get
//! [`CUT_FLUSH`] to write those, then whatever is open is dropped, and one
//! log line says what the drain did.

mod connection;
mod io;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use self::connection::{ConnState, CutReason, Ending, Phase, Timeouts};
use self::io::{TrackedBody, WatchedIo};
use crate::admin::Admin;
use crate::control::config::{Config, ServerConfig};
use crate::control::{ControlPlane, StartError};
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::request::body::{ByteBudget, ResponseBody};
use crate::request::gateway::{Gateway, TlsConnection};
use crate::runtime::{Executor, GuestSlots};

/// Connections the admin listener serves at once. Far more than the
/// scrapers and probes that use it need, so that a burst of silent or slow
/// admin clients holds every slot for at most [`ADMIN_HEADER_READ_TIMEOUT`]
/// (or [`ADMIN_WRITE_TIMEOUT`]) and `/readyz` stays reachable.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;

/// An admin client must send a complete request head within this of
/// connecting (and, on a keep-alive connection, of its previous response).
/// Probes and scrapers send theirs at once.
pub const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// An admin connection with no request in flight for this long is closed.
/// Short, so idle admin connections give their slots back soon; a scraper
/// that comes back less often just opens a new connection.
pub const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// An admin client must accept some of a waiting response within this.
pub const ADMIN_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connections get, once the grace period is over, to write the
/// 503 `shutting_down` of the requests cut, before they are dropped.
pub const CUT_FLUSH: Duration = Duration::from_secs(1);

/// The running state of a gateway: what both listeners serve.
#[derive(Debug)]
pub struct Server {
    gateway: Arc<Gateway>,
    admin: Arc<Admin>,
    control: Arc<ControlPlane>,
    config: ServerConfig,
    /// The HTTPS listener's TLS, over the control plane's certificates.
    tls: Arc<rustls::ServerConfig>,
}

impl Server {
    /// Sets up the engine, loads every configured handler and starts the
    /// workers. Fails, naming the handler, if any handler does not load.
    pub fn new(config: &Config) -> Result<Self, StartError> {
        Self::with_config_file(config, None)
    }

    /// [`Server::new`] for the `wasmgate` binary, with the config read from
    /// `path`: SIGHUP and `POST /admin/reload` read it again, and new
    /// components are compiled by a child process of this executable.
    pub fn with_config_file(config: &Config, path: Option<&Path>) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let control = Arc::new(ControlPlane::start(config, path, &metrics)?);
        let executor = Executor::start(
            control.runtime(),
            config.runtime.worker_count(),
            GuestSlots {
                running: config.runtime.guests_per_worker,
                waiting: config.runtime.waiting_guests_per_worker,
            },
            config.runtime.queue_depth,
            Arc::clone(&metrics),
        )
        .map_err(StartError::Runtime)?;
        let workers = executor.workers();
        let admin = Admin::new(Arc::clone(&metrics), workers, Arc::clone(&control));
        let gateway = Arc::new(Gateway {
            routes: Arc::clone(control.registry().table()),
            executor,
            metrics: Arc::clone(&metrics),
            max_body_bytes: config.server.max_body_bytes,
            body_read_timeout: Duration::from_millis(config.server.body_read_timeout_ms),
            budget: ByteBudget::new(
                config.server.max_buffered_bytes,
                metrics.buffered_bytes.clone(),
            ),
        });
        let registry = control.registry();
        let tls = tls::settings(Arc::clone(registry.table()), Arc::clone(registry.certs()))
            .map_err(StartError::Tls)?;
        Ok(Self {
            admin: Arc::new(admin),
            gateway,
            control,
            config: config.server.clone(),
            tls,
        })
    }

    /// The control plane: SIGHUP and `serve --watch` reload through it.
    pub fn control(&self) -> Arc<ControlPlane> {
        Arc::clone(&self.control)
    }

    /// Serves the public and admin listeners until `shutdown` resolves,
    /// then drains public connections: in-flight requests get
    /// `shutdown_grace_ms` to finish; those still without a response then
    /// get 503 `shutting_down`, and their connections [`CUT_FLUSH`] to
    /// write it before they are dropped. The admin listener stays up while
    /// they drain, with `/readyz` saying 503, and stops last. Ends with one
    /// log line saying what the drain did.
    pub async fn run(
        self,
        public: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        self.run_with_tls(public, admin, None, shutdown).await;
    }

    /// [`Server::run`] with an HTTPS listener as well (`server.tls_listen`),
    /// serving the same gateway under the same limits: its connections
    /// count in the same metrics and drain with the public ones.
    pub async fn run_with_tls(
        self,
        public: TcpListener,
        admin: TcpListener,
        tls: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) {
        if let Some(cluster) = self.control.cluster() {
            cluster.spawn();
        }
        let (public_phase, public_watch) = watch::channel(Phase::Serving);
        let (admin_phase, admin_watch) = watch::channel(Phase::Serving);
        let metrics = Arc::clone(&self.gateway.metrics);
        let drain = Arc::new(DrainCounts::default());
        let public_loop = tokio::spawn(accept_loop(
            public,
            Listening {
                service: Service::Public(Arc::clone(&self.gateway)),
                options: ConnectionOptions::from(&self.config),
                metrics: Some(Arc::clone(&metrics)),
                phase: public_watch.clone(),
                drain: Arc::clone(&drain),
                tls: None,
            },
        ));
        let tls_loop = tls.map(|listener| {
            let acceptor = TlsAcceptor::from(Arc::clone(&self.tls));
            tokio::spawn(accept_loop(
                listener,
                Listening {
                    service: Service::Public(Arc::clone(&self.gateway)),
                    options: ConnectionOptions::from(&self.config),
                    metrics: Some(Arc::clone(&metrics)),
                    phase: public_watch,
                    drain: Arc::clone(&drain),
                    tls: Some(acceptor),
                },
            ))
        });
        let admin_loop = tokio::spawn(accept_loop(
            admin,
            Listening {
                service: Service::Admin(Arc::clone(&self.admin)),
                options: ConnectionOptions::ADMIN,
                metrics: None,
                phase: admin_watch,
                drain: Arc::new(DrainCounts::default()),
                tls: None,
            },
        ));

        shutdown.await;
        let started = Instant::now();
        let closed_before = metrics.connections_closed.get();
        tracing::info!(
            open = metrics.connections_active.get(),
            "shutting down: no new connections, draining in-flight requests"
        );
        self.admin.draining.store(true, Ordering::Relaxed);
        public_phase.send_replace(Phase::Draining);
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        // The public loop, its connection tasks and their requests each
        // hold a receiver; `closed` resolves when the last one is dropped.
        let mut dropped = 0;
        if tokio::time::timeout(grace, public_phase.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                open = metrics.connections_active.get(),
                "grace period over: answering the requests still running with 503 shutting_down"
            );
            public_phase.send_replace(Phase::Cut);
            if tokio::time::timeout(CUT_FLUSH, public_phase.closed())
                .await
                .is_err()
            {
                dropped = metrics.connections_active.get();
                public_phase.send_replace(Phase::Closed);
                // Each connection task drops its connection as soon as it
                // sees `Closed`; this only bounds the wait for them.
                let _ = tokio::time::timeout(CUT_FLUSH, public_phase.closed()).await;
            }
        }
        admin_phase.send_replace(Phase::Closed);
        // Both loops return as soon as the phase moves on.
        let _ = public_loop.await;
        if let Some(tls_loop) = tls_loop {
            let _ = tls_loop.await;
        }
        let _ = admin_loop.await;
        tracing::info!(
            requests_completed = drain.completed.load(Ordering::Relaxed),
            requests_cut = drain.cut.load(Ordering::Relaxed),
            connections_closed = metrics.connections_closed.get() - closed_before,
            connections_dropped = dropped,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "shutdown complete"
        );
    }
}

/// What a listener serves; an enum so the hot path has no boxing.
#[derive(Clone)]
enum Service {
    Public(Arc<Gateway>),
    Admin(Arc<Admin>),
}

impl Service {
    /// The response, and the request's body if the response was decided
    /// before it was read to the end.
    async fn call(&self, request: Request<Incoming>) -> (Response<ResponseBody>, Option<Incoming>) {
        match self {
            Self::Public(gateway) => {
                let answer = gateway.handle(request).await;
                (answer.response, answer.unread)
            }
            Self::Admin(admin) => (admin.handle(request).await, None),
        }
    }
}

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy)]
struct ConnectionOptions {
    max_connections: usize,
    timeouts: Timeouts,
}

impl ConnectionOptions {
    /// The admin listener's: fixed, not taken from `[server]`.
    const ADMIN: Self = Self {
        max_connections: ADMIN_MAX_CONNECTIONS,
        timeouts: Timeouts {
            header_read: ADMIN_HEADER_READ_TIMEOUT,
            idle: ADMIN_IDLE_TIMEOUT,
            write: ADMIN_WRITE_TIMEOUT,
        },
    };
}

impl From<&ServerConfig> for ConnectionOptions {
    fn from(config: &ServerConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            timeouts: Timeouts {
                header_read: Duration::from_millis(config.header_read_timeout_ms),
                idle: Duration::from_millis(config.idle_timeout_ms),
                write: Duration::from_millis(config.write_timeout_ms),
            },
        }
    }
}

/// What the drain did, for the log line at the end of shutdown.
#[derive(Debug, Default)]
struct DrainCounts {
    /// Requests that got their response after shutdown began.
    completed: AtomicU64,
    /// Requests answered 503 `shutting_down` when the grace period ended.
    cut: AtomicU64,
}

/// Everything one accept loop needs.
struct Listening {
    service: Service,
    options: ConnectionOptions,
    /// The public listener's metrics; the admin listener counts nothing.
    metrics: Option<Arc<Metrics>>,
    phase: watch::Receiver<Phase>,
    drain: Arc<DrainCounts>,
    /// The HTTPS listener's TLS; `None` for plain HTTP.
    tls: Option<TlsAcceptor>,
}

/// Accepts until the phase leaves [`Phase::Serving`]. At `max_connections`
/// it stops accepting, so further clients wait in the kernel's backlog
/// instead of being refused.
async fn accept_loop(listener: TcpListener, listening: Listening) {
    let Listening {
        service,
        options,
        metrics,
        mut phase,
        drain,
        tls,
    } = listening;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.timeouts.header_read);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let mut backoff = Duration::from_millis(1);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = phase.changed() => return,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then retry,
                    // instead of spinning.
                    tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = phase.changed() => return,
        };
        backoff = Duration::from_millis(1);
        // Latency matters more than packet count for small responses.
        let _ = stream.set_nodelay(true);
        if let Some(m) = &metrics {
            m.connections_accepted.inc();
            m.connections_active.inc();
        }
        let state = ConnState::new();
        let io = WatchedIo::new(stream, Arc::clone(&state));
        let connection = Connection {
            state,
            service: service.clone(),
            builder: Arc::clone(&builder),
            timeouts: options.timeouts,
            phase: phase.clone(),
            drain: Arc::clone(&drain),
            metrics: metrics.clone(),
            permit,
        };
        match &tls {
            None => tokio::spawn(connection.serve(io, None)),
            Some(acceptor) => tokio::spawn(connection.serve_tls(acceptor.clone(), io)),
        };
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    state: Arc<ConnState>,
    service: Service,
    builder: Arc<auto::Builder<TokioExecutor>>,
    timeouts: Timeouts,
    phase: watch::Receiver<Phase>,
    drain: Arc<DrainCounts>,
    metrics: Option<Arc<Metrics>>,
    /// Its slot of the listener's `max_connections`, given back when the
    /// connection ends.
    permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Serves HTTP on `io` until the connection ends or is cut; `tls` is
    /// what each request's extensions get when it came over TLS.
    async fn serve<I>(self, io: I, tls: Option<TlsConnection>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tracked = {
            let state = Arc::clone(&self.state);
            // Each request takes this connection's handles, not the
            // server's: their reference counts stay in this connection's
            // cache lines instead of moving between cores with every
            // request.
            let serving = Arc::new(Serving {
                service: self.service.clone(),
                drain: Arc::clone(&self.drain),
                _phase: self.phase.clone(),
            });
            service_fn(move |mut request: Request<Incoming>| {
                own_head(&mut request);
                let in_flight = state.begin();
                if let Some(tls) = &tls {
                    request.extensions_mut().insert(tls.clone());
                }
                let serving = Arc::clone(&serving);
                async move {
                    let (response, unread) =
                        respond_or_cut(&serving, request, in_flight.state()).await;
                    Ok::<_, Infallible>(
                        response.map(|body| TrackedBody::new(body, in_flight).discarding(unread)),
                    )
                }
            })
        };
        let connection = self.builder.serve_connection(TokioIo::new(io), tracked);
        let ending = connection::drive(
            connection,
            |connection| connection.graceful_shutdown(),
            &self.state,
            self.timeouts,
            self.phase.clone(),
        )
        .await;
        let cut = match ending {
            Ending::Finished(Ok(())) => None,
            Ending::Finished(Err(e)) => {
                tracing::debug!("connection ended with an error: {e}");
                // hyper's own header clock: a head begun, never finished.
                e.downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_timeout)
                    .then_some(CutReason::Header)
            }
            Ending::Cut(reason) => {
                tracing::debug!("connection cut: {}", reason.label());
                Some(reason)
            }
        };
        self.end(cut);
    }

    /// Completes the TLS handshake within the header clock (which runs from
    /// accept), then serves HTTP over it. A handshake that fails or is too
    /// slow, or that is still going on when shutdown begins, drops the
    /// connection.
    async fn serve_tls<I>(self, acceptor: TlsAcceptor, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let deadline = self.state.accepted_at() + self.timeouts.header_read;
        let mut phase = self.phase.clone();
        let handshake = tokio::select! {
            done = tokio::time::timeout_at(deadline.into(), acceptor.accept(io)) => done,
            _ = phase.wait_for(|phase| *phase != Phase::Serving) => {
                self.end(Some(CutReason::Shutdown));
                return;
            }
        };
        let result = match &handshake {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "failed",
            Err(_) => "timeout",
        };
        if let Some(m) = &self.metrics {
            m.tls_handshake(result);
        }
        match handshake {
            Ok(Ok(stream)) => {
                let server_name = stream
                    .get_ref()
                    .1
                    .server_name()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let tls = TlsConnection {
                    server_name: server_name.into(),
                };
                self.serve(stream, Some(tls)).await;
            }
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake failed: {e}");
                self.end(None);
            }
            Err(_) => self.end(Some(CutReason::Header)),
        }
    }

    /// Counts the connection closed (and why it was cut, if it was) and
    /// gives its slot back.
    fn end(self, cut: Option<CutReason>) {
        if let Some(m) = &self.metrics {
            m.connections_active.dec();
            m.connections_closed.inc();
            if let Some(reason) = cut {
                m.connections_cut.with_label_values(&[reason.label()]).inc();
            }
        }
        drop(self.permit);
    }
}

/// Gives an HTTP/1 request's target and header values one buffer of their
/// own. hyper parses a head in place, so they share its read buffer, and
/// right after it hands the request over (before the response) hyper reads
/// on to notice a client that goes away: with the buffer still shared it
/// allocates a new one of 8 KiB for that read, for every request (a large
/// allocation, which takes the malloc arena's lock). Copying the head's
/// few bytes here, before hyper reads again, leaves hyper its buffer
/// (unless a body read into it still holds it). The copy is as large as
/// the head, which hyper's head limits bound. An HTTP/2 head is decoded
/// into buffers of its own already.
fn own_head<B>(request: &mut Request<B>) {
    if request.version() > http::Version::HTTP_11 {
        return;
    }
    let uri = request.uri();
    let absolute;
    let target = match uri.path_and_query() {
        Some(origin_form) if uri.authority().is_none() => origin_form.as_str(),
        _ => {
            absolute = uri.to_string();
            &absolute
        }
    };
    let values: usize = request.headers().values().map(|v| v.len()).sum();
    let mut copy = bytes::BytesMut::with_capacity(target.len() + values);
    copy.extend_from_slice(target.as_bytes());
    for value in request.headers().values() {
        copy.extend_from_slice(value.as_bytes());
    }
    let target_len = target.len();
    let mut copy = copy.freeze();
    // Both were valid as parsed, so they parse again; if one did not, it
    // keeps sharing hyper's buffer, which is only slower.
    if let Ok(uri) = http::Uri::from_maybe_shared(copy.split_to(target_len)) {
        *request.uri_mut() = uri;
    }
    for value in request.headers_mut().values_mut() {
        let own = copy.split_to(value.len());
        if let Ok(mut own) = http::HeaderValue::from_maybe_shared(own) {
            own.set_sensitive(value.is_sensitive());
            *value = own;
        }
    }
}

/// What the requests of one connection share.
struct Serving {
    service: Service,
    drain: Arc<DrainCounts>,
    /// Held while any request of the connection is: the server's shutdown
    /// waits for every receiver to be dropped.
    _phase: watch::Receiver<Phase>,
}

/// The service's response (and the request body it left unread), or 503
/// `shutting_down` when the server's grace period ends first (as the
/// request's connection, `on`, learns).
async fn respond_or_cut(
    serving: &Serving,
    request: Request<Incoming>,
    on: &ConnState,
) -> (Response<ResponseBody>, Option<Incoming>) {
    let answered = tokio::select! {
        // A response that is ready wins over a cut that came at once.
        biased;
        response = serving.service.call(request) => Some(response),
        () = on.cut() => None,
    };
    match answered {
        Some(response) => {
            if on.phase() != Phase::Serving {
                serving.drain.completed.fetch_add(1, Ordering::Relaxed);
            }
            response
        }
        None => {
            serving.drain.cut.fetch_add(1, Ordering::Relaxed);
            let response = RequestError::ShuttingDown
                .to_response()
                .map(ResponseBody::from);
            (response, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderValue, Uri};

    #[test]
    fn an_http1_head_no_longer_shares_the_buffer_it_was_parsed_from() {
        let read = Bytes::from(b"/hello?x=1 a two:three http://b.example/p".to_vec());
        let shared = |range: std::ops::Range<usize>| {
            HeaderValue::from_maybe_shared(read.slice(range)).expect("value")
        };
        for (target, range) in [("/hello?x=1", 0..10), ("http://b.example/p", 23..41)] {
            let mut request = Request::builder()
                .uri(Uri::from_maybe_shared(read.slice(range)).expect("uri"))
                .header("host", shared(11..12))
                .header("x-two", shared(13..16))
                .header("x-two", shared(13..22))
                .body(())
                .expect("request");
            request
                .headers_mut()
                .get_mut("host")
                .expect("host")
                .set_sensitive(true);
            own_head(&mut request);
            assert_eq!(request.uri().to_string(), target);
            assert_eq!(request.headers()["host"], "a");
            assert!(request.headers()["host"].is_sensitive());
            let two: Vec<_> = request.headers().get_all("x-two").iter().collect();
            assert_eq!(two, ["two", "two:three"]);
            drop(request);
        }
        assert!(read.is_unique(), "nothing of the request refers to it");
    }

    #[test]
    fn an_http2_head_is_left_as_it_is() {
        let read = Bytes::from(b"/h".to_vec());
        let mut request = Request::builder()
            .version(http::Version::HTTP_2)
            .uri(Uri::from_maybe_shared(read.slice(..)).expect("uri"))
            .body(())
            .expect("request");
        own_head(&mut request);
        assert!(!read.is_unique(), "still shared: not copied");
    }
}
