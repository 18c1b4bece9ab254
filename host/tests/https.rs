//! The HTTPS listener: each tenant's certificate picked by SNI, over
//! HTTP/2 and HTTP/1.1 by ALPN; the default certificate or a handshake
//! alert for names no tenant claims; 421 across tenants; silent handshakes
//! cut by the header clock; certificates rotated by a reload or sent
//! through the admin API. Certificates are made at run time (rcgen) and
//! every exchange is real TLS, verified against the test CA.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::tls::{Ca, Leaf};
use common::{Served, TestGateway, scratch, serve_config};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;

/// What one HTTPS request saw.
struct Exchange {
    status: u16,
    headers: http::HeaderMap,
    body: String,
    /// The server's certificate, DER.
    peer: Vec<u8>,
    /// The protocol ALPN chose.
    alpn: Vec<u8>,
    version: http::Version,
}

/// How a client connects.
struct Client<'a> {
    /// The CA's certificate, DER: the one root trusted.
    ca: &'a [u8],
    /// The SNI, also the name verified; `None` sends no SNI (the
    /// certificate is then verified for `localhost`).
    sni: Option<&'a str>,
    alpn: &'a [u8],
    tls12_only: bool,
}

impl Client<'_> {
    fn new<'a>(ca: &'a [u8], sni: &'a str, alpn: &'a [u8]) -> Client<'a> {
        Client {
            ca,
            sni: Some(sni),
            alpn,
            tls12_only: false,
        }
    }

    /// A new connection to `address`, then `GET path` with `host`.
    async fn get(&self, address: &str, host: &str, path: &str) -> Result<Exchange, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.to_vec()))
            .map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![self.alpn.to_vec()];
        config.enable_sni = self.sni.is_some();
        let name = ServerName::try_from(self.sni.unwrap_or("localhost").to_owned())
            .map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let session = tls.get_ref().1;
        let peer = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
            .unwrap_or_default();
        let alpn = session.alpn_protocol().unwrap_or_default().to_vec();
        let io = TokioIo::new(tls);
        let empty = http_body_util::Empty::<bytes::Bytes>::new();
        let response = if alpn == b"h2" {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let request = http::Request::get(format!("https://{host}{path}"))
                .body(empty)
                .map_err(|e| e.to_string())?;
            sender.send_request(request).await
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let request = http::Request::get(path)
                .header("host", host)
                .body(empty)
                .map_err(|e| e.to_string())?;
            sender.send_request(request).await
        }
        .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Exchange {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            peer,
            alpn,
            version,
        })
    }
}

/// Tenants `a` (a.test) and `b` (b.test) with their certificates and a
/// wasi:http handler at /wasi, and, if `default` is given, a default
/// certificate.
fn two_tenants(dir: &std::path::Path, ca: &Ca, default: Option<&Leaf>, server: &str) -> String {
    let a = ca.leaf(&["a.test"]).write(dir, "a");
    let b = ca.leaf(&["b.test"]).write(dir, "b");
    let default = default.map_or(String::new(), |leaf| {
        format!("tls_default = {}\n", leaf.write(dir, "default"))
    });
    let wasi = common::handler("wasi", "/wasi", "{wasi_hello}");
    format!(
        "[server]\n{default}{server}\n{}{wasi}{}{wasi}",
        common::tenant("a", "a.test", &format!("tls = {a}"), &["hello"]),
        common::tenant("b", "b.test", &format!("tls = {b}"), &["hello"]),
    )
}

fn der_of(path: &std::path::Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("read cert");
    CertificateDer::from_pem_slice(&pem)
        .expect("PEM certificate")
        .to_vec()
}

use rustls::pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_is_served_with_its_own_certificate_over_h2_and_http1() {
    let dir = scratch("https-tenants");
    let ca = Ca::new();
    let default = ca.leaf(&["default.test", "unclaimed.test"]);
    let gw = TestGateway::start(&two_tenants(&dir, &ca, Some(&default), "")).await;
    let a_cert = der_of(&dir.join("a.pem"));
    let b_cert = der_of(&dir.join("b.pem"));

    for (sni, cert) in [("a.test", &a_cert), ("b.test", &b_cert)] {
        for (alpn, version) in [
            (&b"h2"[..], http::Version::HTTP_2),
            (b"http/1.1", http::Version::HTTP_11),
        ] {
            let exchange = Client::new(&ca.der, sni, alpn)
                .get(&gw.tls, sni, "/hello")
                .await
                .unwrap_or_else(|e| panic!("{sni} {alpn:?}: {e}"));
            assert_eq!(exchange.status, 200, "{sni}: {}", exchange.body);
            assert_eq!(&exchange.peer, cert, "{sni} gets its own certificate");
            assert_eq!(exchange.alpn, alpn);
            assert_eq!(exchange.version, version);
        }
    }
    // TLS 1.2 as well.
    let client = Client {
        tls12_only: true,
        ..Client::new(&ca.der, "b.test", b"h2")
    };
    let exchange = client
        .get(&gw.tls, "b.test", "/hello")
        .await
        .expect("TLS 1.2");
    assert_eq!((exchange.status, exchange.peer), (200, b_cert.clone()));

    // A name no tenant claims gets the default certificate.
    let exchange = Client::new(&ca.der, "unclaimed.test", b"h2")
        .get(&gw.tls, "unclaimed.test", "/hello")
        .await
        .expect("default certificate");
    assert_eq!(exchange.peer, default.der);
    assert_eq!(exchange.status, 404, "no tenant serves the host");

    // b's host on a connection made for a: 421.
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let exchange = Client::new(&ca.der, "a.test", alpn)
            .get(&gw.tls, "b.test", "/hello")
            .await
            .expect("exchange");
        assert_eq!(exchange.status, 421, "{}", exchange.body);
        assert_eq!(exchange.headers["x-wasmgate-error"], "misdirected");
        assert_eq!(exchange.body.lines().count(), 1, "{}", exchange.body);
    }

    // The wasi:http guest sees the scheme.
    let exchange = Client::new(&ca.der, "a.test", b"h2")
        .get(&gw.tls, "a.test", "/wasi/echo")
        .await
        .expect("echo");
    assert_eq!(exchange.status, 200, "{}", exchange.body);
    assert!(
        exchange.body.lines().any(|l| l == "scheme: https"),
        "{}",
        exchange.body
    );
    assert!(
        exchange
            .body
            .lines()
            .any(|l| l == "x-forwarded-proto: https"),
        "{}",
        exchange.body
    );
    // And plain HTTP is still plain, whatever the client claims.
    let response = gw
        .client
        .get(format!("{}/wasi/echo", gw.url))
        .header("host", "a.test")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("plain echo");
    let text = response.text().await.expect("body");
    assert!(text.lines().any(|l| l == "scheme: http"), "{text}");
    assert!(
        text.lines().any(|l| l == "x-forwarded-proto: http"),
        "{text}"
    );

    let metrics = gw.metrics().await;
    assert!(
        common::require_metric(&metrics, "wasmgate_tls_handshakes_total{result=\"ok\"}") >= 9.0
    );
    for tenant in ["a", "b", ""] {
        let expiry = common::require_metric(
            &metrics,
            &format!("wasmgate_tls_certificate_expiry_seconds{{tenant=\"{tenant}\"}}"),
        );
        assert_eq!(expiry, 4_102_444_800.0, "2100-01-01 for {tenant:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_certificate_an_unclaimed_name_gets_a_handshake_alert() {
    let dir = scratch("https-no-default");
    let ca = Ca::new();
    let gw = TestGateway::start(&two_tenants(&dir, &ca, None, "")).await;
    for sni in [Some("unclaimed.test"), None] {
        let client = Client {
            sni,
            ..Client::new(&ca.der, "", b"h2")
        };
        let error = client
            .get(&gw.tls, "a.test", "/hello")
            .await
            .err()
            .expect("no certificate for the name");
        assert!(error.starts_with("handshake:"), "{sni:?}: {error}");
        assert!(error.contains("alert"), "{sni:?}: {error}");
    }
    let metrics = gw.metrics().await;
    common::assert_metrics(
        &metrics,
        &[("wasmgate_tls_handshakes_total{result=\"failed\"}", 2.0)],
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_handshakes_are_cut_by_the_header_clock_while_others_are_served() {
    const SILENT: usize = 500;
    let dir = scratch("https-silent");
    let ca = Ca::new();
    let gw = TestGateway::start(&two_tenants(
        &dir,
        &ca,
        None,
        "header_read_timeout_ms = 1000\n",
    ))
    .await;
    let opened = Instant::now();
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(
            tokio::net::TcpStream::connect(&gw.tls)
                .await
                .expect("connect"),
        );
    }
    let exchange = Client::new(&ca.der, "a.test", b"h2")
        .get(&gw.tls, "a.test", "/hello")
        .await
        .expect("served beside the silent ones");
    assert_eq!(exchange.status, 200);
    let cut_by = opened + Duration::from_millis(1000 + 1000);
    for mut stream in silent {
        let mut buffer = [0u8; 16];
        let read = tokio::time::timeout_at(cut_by.into(), stream.read(&mut buffer)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a silent connection is closed within header_read_timeout_ms + 1 s: {read:?}"
        );
    }
    gw.wait_for_metric("wasmgate_tls_handshakes_total{result=\"timeout\"}", |n| {
        n >= SILENT as f64
    })
    .await;
    let metrics = gw.metrics().await;
    assert!(
        common::require_metric(
            &metrics,
            "wasmgate_connections_cut_total{reason=\"header\"}"
        ) >= SILENT as f64
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_stops_the_start_naming_tenant_and_file() {
    let dir = scratch("https-broken-start");
    let ca = Ca::new();
    let good = ca.leaf(&["a.test"]);
    let other = ca.leaf(&["a.test"]);
    let cases = [
        (ca.expired(&["a.test"]), "expired"),
        (
            Leaf {
                key: other.key.clone(),
                ..good.clone()
            },
            "does not match",
        ),
        (
            Leaf {
                cert: "not a certificate".into(),
                ..good.clone()
            },
            "no PEM certificate",
        ),
    ];
    for (leaf, reason) in cases {
        let tls = leaf.write(&dir, "a");
        let text =
            common::config_text(&common::tenant("a", "a.test", &format!("tls = {tls}"), &[]));
        let mut config = wasmgate::control::config::Config::parse(
            &text,
            std::path::Path::new("test.toml"),
            std::path::Path::new("."),
        )
        .expect("the file parses: certificates are checked when loaded");
        config.runtime.data_dir = common::data_dir();
        let error = tokio::task::spawn_blocking(move || wasmgate::server::Server::new(&config))
            .await
            .expect("start task")
            .expect_err("refused")
            .to_string();
        for part in ["tenant \"a\"", "a.", reason] {
            assert!(error.contains(part), "{part:?} in {error}");
        }
    }
}

/// `wasmgate serve --tls-listen` with the root token: the child, and its
/// HTTPS address read from the third startup line.
fn serve_https(dir: &std::path::Path, config: &str) -> (Served, String) {
    use std::io::BufRead;
    let mut command = serve_config(dir, config);
    command
        .args(["--tls-listen", "127.0.0.1:0"])
        .env("WASMGATE_ADMIN_TOKEN", ROOT);
    let mut served = Served::spawn(&mut command);
    let mut line = String::new();
    served
        .stdout
        .read_line(&mut line)
        .expect("third startup line");
    let address = line
        .trim_end()
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| panic!("the HTTPS line: {line:?}"))
        .to_owned();
    (served, address)
}

const ROOT: &str = "root-token-for-https-tests";

async fn reload(served: &Served) -> serde_json::Value {
    let (status, answer) = common::admin_json(
        reqwest::Method::POST,
        &format!("{}/admin/reload", served.admin),
        ROOT,
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_reload_and_through_the_admin_api() {
    let dir = scratch("https-rotation");
    let ca = Ca::new();
    let first = ca.leaf(&["a.test"]);
    let tls = first.write(&dir, "a");
    let config = common::config_text(&format!(
        "[runtime]\nworkers = 1\ndata_dir = \"{}\"\n{}",
        dir.join("data").display(),
        common::tenant("a", "a.test", &format!("tls = {tls}"), &["hello"])
    ));
    let (served, address) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || serve_https(&dir, &config)
    })
    .await
    .expect("serve");
    let peer = |sni: &'static str| {
        let address = address.clone();
        let ca = &ca.der;
        async move {
            Client::new(ca, sni, b"http/1.1")
                .get(&address, sni, "/hello")
                .await
                .map(|e| (e.status, e.peer))
        }
    };
    assert_eq!(
        peer("a.test").await.expect("first"),
        (200, first.der.clone())
    );

    // Light load across the rotations: a new connection (a new handshake)
    // for each request.
    let stop = Arc::new(AtomicBool::new(false));
    let (served_ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = tokio::spawn({
        let (stop, served_ok, failed) = (stop.clone(), served_ok.clone(), failed.clone());
        let (address, ca_der) = (address.clone(), ca.der.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let result = Client::new(&ca_der, "a.test", b"h2")
                    .get(&address, "a.test", "/hello")
                    .await;
                match result {
                    Ok(e) if e.status == 200 => served_ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    let second = ca.leaf(&["a.test"]);
    second.write(&dir, "a");
    let answer = reload(&served).await;
    assert!(answer.get("not_applied").is_none(), "{answer}");
    assert_eq!(peer("a.test").await.expect("second").1, second.der);

    // Broken replacements are refused, naming tenant and file; the second
    // certificate keeps serving.
    let (cert_path, _) = second.paths(&dir, "a");
    let broken = [
        (
            Leaf {
                cert: "garbage".into(),
                ..second.clone()
            },
            "no PEM certificate",
        ),
        (
            Leaf {
                key: ca.leaf(&["a.test"]).key,
                ..second.clone()
            },
            "does not match",
        ),
        (ca.expired(&["a.test"]), "expired"),
    ];
    for (leaf, reason) in broken {
        leaf.write(&dir, "a");
        let answer = reload(&served).await;
        let notes = answer["not_applied"].to_string();
        for part in ["tenant \\\"a\\\"", "a.", reason, "keeps serving"] {
            assert!(notes.contains(part), "{part:?} in {notes}");
        }
        assert!(notes.contains(&*cert_path.parent().expect("dir").display().to_string()));
        assert_eq!(peer("a.test").await.expect("kept").1, second.der);
    }
    second.write(&dir, "a");
    reload(&served).await;

    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(served_ok.load(Ordering::Relaxed) > 0);

    // Through the admin API: PEM text in, stored with a private key file,
    // never shown again.
    let tenant_b = ca.leaf(&["b.test"]);
    let url = format!("{}/admin/tenants/b", served.admin);
    let put =
        |body: serde_json::Value| common::admin_json(reqwest::Method::PUT, &url, ROOT, Some(body));
    let (status, answer) = put(serde_json::json!({
        "hosts": ["b.test"],
        "tls": {"cert": tenant_b.cert, "key": tenant_b.key},
    }))
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["tls"]["names"], serde_json::json!(["b.test"]));
    assert_eq!(answer["tls"]["not_after"], 4_102_444_800u64);
    assert_eq!(peer("b.test").await.expect("b").1, tenant_b.der);
    let keys: Vec<_> = std::fs::read_dir(dir.join("data/tls"))
        .expect("tls folder")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".key"))
        .collect();
    assert_eq!(keys.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = keys[0].metadata().expect("metadata").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Settings without `tls` keep the certificate; broken PEM is refused.
    let (status, answer) = put(serde_json::json!({"hosts": ["b.test"], "cpu_weight": 2})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["tls"]["names"], serde_json::json!(["b.test"]));
    let expired = ca.expired(&["b.test"]);
    let (status, answer) = put(serde_json::json!({
        "hosts": ["b.test"],
        "tls": {"cert": expired.cert, "key": expired.key},
    }))
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("expired"), "{answer}");
    assert_eq!(peer("b.test").await.expect("b kept").1, tenant_b.der);

    let (status, list) = common::admin_json(
        reqwest::Method::GET,
        &format!("{}/admin/tenants", served.admin),
        ROOT,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let list = list.to_string();
    assert!(!list.contains("PRIVATE KEY"), "{list}");
    assert!(list.contains("\"not_after\""), "{list}");
    let metrics = served.metrics().await;
    common::require_metric(
        &metrics,
        "wasmgate_tls_certificate_expiry_seconds{tenant=\"b\"}",
    );

    // `"tls": null` removes it: b.test then has no certificate.
    let (status, answer) = put(serde_json::json!({"hosts": ["b.test"], "tls": null})).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.get("tls").is_none(), "{answer}");
    assert!(peer("b.test").await.is_err(), "no certificate for b.test");
}
