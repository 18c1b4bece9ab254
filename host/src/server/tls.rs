//! The HTTPS listener's TLS: rustls with each tenant's certificate, picked
//! by the server name (SNI) a client asks for.
//!
//! The name picks a tenant by the routing table's host rules (exact, then
//! the longest `*.suffix`; `*` claims no name), and the tenant its loaded
//! certificate; a name no tenant with a certificate claims gets
//! `server.tls_default`, and without one the handshake fails with an
//! alert. Both tables are read once per handshake, so a rotated
//! certificate serves the next handshake and open connections keep theirs.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::control::certs::CertTable;
use crate::control::table::RouteTable;

/// Picks each handshake's certificate from the published tables.
#[derive(Debug)]
struct Resolver {
    routes: Arc<RouteTable>,
    certs: Arc<CertTable>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.current();
        let tenant_cert = hello.server_name().and_then(|name| {
            let router = self.routes.current();
            let tenant = router.tenant(name, false)?;
            certs.tenants.get(&tenant.name).cloned()
        });
        let cert = tenant_cert.or_else(|| certs.default.clone());
        if cert.is_none() {
            tracing::debug!(
                server_name = hello.server_name().unwrap_or(""),
                "TLS handshake refused: no certificate for the name"
            );
        }
        cert.map(|cert| Arc::clone(&cert.key))
    }
}

/// The HTTPS listener's TLS settings: TLS 1.2 and 1.3, HTTP/2 or HTTP/1.1
/// by ALPN, certificates from `certs` by the tenants of `routes`.
pub(super) fn settings(
    routes: Arc<RouteTable>,
    certs: Arc<CertTable>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { routes, certs }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
