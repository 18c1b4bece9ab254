//! Listeners and connections: the accept loops, per-connection idle
//! tracking, and graceful shutdown.
//!
//! The accept loop only accepts; each connection is its own task, served by
//! hyper (HTTP/1.1 and HTTP/2). On shutdown the loops stop accepting, every
//! connection finishes its in-flight requests and closes, and whatever is
//! still open after `shutdown_grace_ms` is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::admin::Admin;
use crate::body::{ByteBudget, ResponseBody};
use crate::config::{Config, ServerConfig};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::runtime::{ChildCompiler, Executor, Runtime, RuntimeError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The engine or the workers could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The handlers did not load.
    #[error(transparent)]
    Registry(#[from] crate::registry::StartError),
}

/// The running state of a gateway: what both listeners serve.
#[derive(Debug)]
pub struct Server {
    gateway: Arc<Gateway>,
    admin: Arc<Admin>,
    config: ServerConfig,
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
        let runtime = Runtime::from_config(config)?;
        let child = path.and_then(ChildCompiler::for_this_binary);
        let registry = Arc::new(Registry::from_config(config, &runtime, &metrics, child)?);
        let executor = Executor::start(
            &runtime,
            config.runtime.worker_count(),
            config.runtime.guests_per_worker,
            config.runtime.queue_depth,
            Arc::clone(&metrics),
        )?;
        let workers = executor.workers();
        let admin = Admin::new(
            Arc::clone(&metrics),
            workers,
            Arc::clone(&registry),
            config,
            path.map(Path::to_path_buf),
        );
        let gateway = Arc::new(Gateway {
            registry,
            executor,
            metrics: Arc::clone(&metrics),
            max_body_bytes: config.server.max_body_bytes,
            body_read_timeout: Duration::from_millis(config.server.body_read_timeout_ms),
            budget: ByteBudget::new(
                config.server.max_buffered_bytes,
                metrics.buffered_bytes.clone(),
            ),
        });
        Ok(Self {
            admin: Arc::new(admin),
            gateway,
            config: config.server.clone(),
        })
    }

    /// The admin API, e.g. to reload the config on SIGHUP.
    pub fn admin(&self) -> Arc<Admin> {
        Arc::clone(&self.admin)
    }

    /// Serves the public and admin listeners until `shutdown` resolves,
    /// then drains public connections for at most `shutdown_grace_ms`.
    /// The admin listener stays up while they drain, with `/readyz` saying
    /// 503, and stops last.
    pub async fn run(
        self,
        public: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let (stop_public, public_stopped) = watch::channel(false);
        let (stop_admin, admin_stopped) = watch::channel(false);
        let metrics = Arc::clone(&self.gateway.metrics);
        let options = ConnectionOptions::from(&self.config);
        let public_loop = tokio::spawn(accept_loop(
            public,
            Service::Public(Arc::clone(&self.gateway)),
            options,
            Some(Arc::clone(&metrics)),
            public_stopped,
        ));
        let admin_options = ConnectionOptions {
            max_connections: 64,
            ..options
        };
        let admin_loop = tokio::spawn(accept_loop(
            admin,
            Service::Admin(Arc::clone(&self.admin)),
            admin_options,
            None,
            admin_stopped,
        ));

        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        self.admin.draining.store(true, Ordering::Relaxed);
        // Errors only if every receiver is gone, i.e. the loop ended.
        let _ = stop_public.send(true);
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        // The public loop and each of its connection tasks hold a receiver;
        // `closed` resolves when the last one is dropped.
        if tokio::time::timeout(grace, stop_public.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                open = metrics.connections_active.get(),
                "grace period over: closing the remaining connections"
            );
        }
        let _ = stop_admin.send(true);
        public_loop.abort();
        admin_loop.abort();
    }
}

/// What a listener serves; an enum so the hot path has no boxing.
#[derive(Clone)]
enum Service {
    Public(Arc<Gateway>),
    Admin(Arc<Admin>),
}

impl Service {
    async fn call(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        match self {
            Self::Public(gateway) => gateway.handle(request).await,
            Self::Admin(admin) => admin.handle(request).await,
        }
    }
}

/// Connection limits taken from `[server]`.
#[derive(Debug, Clone, Copy)]
struct ConnectionOptions {
    max_connections: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl From<&ServerConfig> for ConnectionOptions {
    fn from(config: &ServerConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        }
    }
}

/// Accepts until told to stop. At `max_connections` it stops accepting, so
/// further clients wait in the kernel's backlog instead of being refused.
async fn accept_loop(
    listener: TcpListener,
    service: Service,
    options: ConnectionOptions,
    metrics: Option<Arc<Metrics>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let mut backoff = Duration::from_millis(1);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.changed() => return,
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
            _ = stop.changed() => return,
        };
        backoff = Duration::from_millis(1);
        // Latency matters more than packet count for small responses.
        let _ = stream.set_nodelay(true);
        if let Some(m) = &metrics {
            m.connections_accepted.inc();
            m.connections_active.inc();
        }
        let activity = Arc::new(Activity::default());
        let tracked = {
            let activity = Arc::clone(&activity);
            let service = service.clone();
            service_fn(move |request| {
                let service = service.clone();
                let guard = activity.begin();
                async move {
                    let response = service.call(request).await;
                    drop(guard);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let connection = builder
            .serve_connection(TokioIo::new(stream), tracked)
            .into_owned();
        let mut stop = stop.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Drive the connection to its end, asking it to close gracefully
            // (finish in-flight requests, then close) when it has been idle
            // too long or the server is stopping.
            let mut connection = std::pin::pin!(connection);
            let mut closing = false;
            loop {
                let idle_deadline = activity
                    .idle_since()
                    .map(|since| since + options.idle_timeout);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!("connection ended with an error: {e}");
                        }
                        break;
                    }
                    _ = stop.changed(), if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    _ = sleep_until_or_forever(idle_deadline), if !closing => {
                        let idle_for = activity.idle_since().map(|since| since.elapsed());
                        if idle_for.is_some_and(|d| d >= options.idle_timeout) {
                            closing = true;
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            if let Some(m) = &metrics {
                m.connections_active.dec();
                m.connections_closed.inc();
            }
            drop(permit);
        });
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Requests in flight on one connection, and when it last went idle.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the last request finished.
    idle_at_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// Marks a request finished when dropped, even if its future is cancelled.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_at_ms.store(ms, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Acquire);
        InFlight(Arc::clone(self))
    }

    /// When the connection went idle, or `None` while a request runs.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_at_ms.load(Ordering::Relaxed);
        Some(self.epoch + Duration::from_millis(ms))
    }
}
