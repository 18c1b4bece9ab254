//! Connections to upstreams: made only to checked addresses, counted
//! against the tenant's cap, and kept alive in a pool of the tenant's own.
//!
//! Every tenant has one HTTP client (hyper's pooling client) whose
//! connector resolves the name, refuses it if any address is internal and
//! the allowlist does not name that address, takes one of the tenant's
//! connection slots and connects to the address it checked (so a second
//! DNS answer changes nothing), with TLS for `https` verified against the
//! Mozilla roots. A connection holds its slot until it closes, idle in the
//! pool or not; idle ones close after [`POOL_IDLE_TIMEOUT`]. Pools are never
//! shared between tenants.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::WasiBody;

use super::response::MAX_HEAD_BYTES;
use crate::allowlist::{AllowList, is_internal};

/// Longest a new connection may take: resolve, connect and TLS. A call
/// waits no longer than its request's deadline anyway; this bounds a
/// connection the pool goes on making after the call that asked for it
/// gave up.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An idle pooled connection is closed after this, giving its slot back.
pub(super) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most header fields in an upstream's response head.
const MAX_UPSTREAM_HEADERS: usize = 256;

/// A tenant's pooling HTTP client.
pub(super) type UpstreamClient = Client<Connector, WasiBody>;

/// The pooling client of a tenant with `allowed` hosts and `connections`
/// slots. The connections of a tenant with few slots go back to them soon:
/// at most a quarter of them idle per upstream.
pub(super) fn client(allowed: Arc<AllowList>, connections: Arc<Semaphore>) -> UpstreamClient {
    let idle_per_host = (connections.available_permits() / 4).max(1);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(idle_per_host)
        .http1_max_buf_size(MAX_HEAD_BYTES.max(8192))
        .http1_max_headers(MAX_UPSTREAM_HEADERS)
        .build(Connector {
            allowed,
            connections,
        })
}

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    /// The URI has no host, or a scheme other than http and https.
    #[error("the URI names no http or https host")]
    BadUri,
    /// The name did not resolve.
    #[error("{host} did not resolve")]
    NotFound {
        /// The name.
        host: String,
    },
    /// The name resolved to an internal address the allowlist does not
    /// name.
    #[error("{host} resolves to the internal address {address}, which the allowlist does not name")]
    Prohibited {
        /// The name.
        host: String,
        /// The address refused.
        address: IpAddr,
    },
    /// All the tenant's connection slots are taken.
    #[error("the tenant's outbound connections are all in use")]
    Busy,
    /// Resolving, connecting and TLS took longer than [`CONNECT_TIMEOUT`].
    #[error("connecting took longer than {CONNECT_TIMEOUT:?}")]
    Timeout,
    /// The connection was refused or failed.
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(std::io::Error),
}

/// Makes the connections of one tenant's client.
#[derive(Clone)]
pub(super) struct Connector {
    allowed: Arc<AllowList>,
    connections: Arc<Semaphore>,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = Upstream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Upstream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(uri)).await {
                Ok(connected) => connected,
                Err(_) => Err(ConnectError::Timeout),
            }
        })
    }
}

impl Connector {
    async fn connect(self, uri: http::Uri) -> Result<Upstream, ConnectError> {
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(ConnectError::BadUri),
        };
        let host = uri.host().ok_or(ConnectError::BadUri)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addresses = self.resolve(host, port).await?;
        let slot = Arc::clone(&self.connections)
            .try_acquire_owned()
            .map_err(|_| ConnectError::Busy)?;
        let stream = connect(&addresses).await?;
        let _ = stream.set_nodelay(true);
        let io: Box<dyn Stream> = if https {
            Box::new(tls(host, stream).await?)
        } else {
            Box::new(stream)
        };
        Ok(Upstream {
            io: TokioIo::new(io),
            _slot: slot,
        })
    }

    /// The addresses `host` may be reached at: the literal, or what the
    /// name resolves to if none of that is internal (unless listed).
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
        let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(address) => vec![SocketAddr::new(address, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| ConnectError::NotFound {
                    host: host.to_owned(),
                })?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(ConnectError::NotFound {
                host: host.to_owned(),
            });
        }
        if let Some(address) = addresses
            .iter()
            .map(SocketAddr::ip)
            .find(|ip| is_internal(*ip) && !self.allowed.names_address(*ip))
        {
            return Err(ConnectError::Prohibited {
                host: host.to_owned(),
                address,
            });
        }
        Ok(addresses)
    }
}

/// Connects to the first of `addresses` that answers.
async fn connect(addresses: &[SocketAddr]) -> Result<tokio::net::TcpStream, ConnectError> {
    let mut last = None;
    for address in addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(ConnectError::Connect(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
    })))
}

/// What a connection is written and read through: TCP, or TLS over it.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

/// TLS to `host` over `stream`, verified against the Mozilla roots.
async fn tls(
    host: &str,
    stream: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ConnectError> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The ring provider supports the default versions; were it not so,
        // every HTTPS call fails, not the process (`ClientConfig::builder()`
        // would panic: two providers are linked, none installed).
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()
            .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
    });
    let Some(config) = config else {
        return Err(ConnectError::Tls(std::io::Error::other(
            "no TLS client settings: the ring provider refused the default versions",
        )));
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|_| {
        ConnectError::Tls(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a valid TLS server name",
        ))
    })?;
    tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name, stream)
        .await
        .map_err(ConnectError::Tls)
}

/// A connection to an upstream, holding one of its tenant's slots while it
/// is open.
pub(super) struct Upstream {
    io: TokioIo<Box<dyn Stream>>,
    _slot: OwnedSemaphorePermit,
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Upstream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Upstream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
