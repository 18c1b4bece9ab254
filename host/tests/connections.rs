//! Clients that hold connections without using them, clients that stop
//! reading, and shutdown, against the real gateway on `127.0.0.1:0`:
//! every clock of `[server]` closes what it claims to close, the admin
//! listener stays reachable, and a shutdown answers what it cannot finish.
//!
//! Wall-clock times here are only generous upper bounds for a failure; the
//! tests wait on what the gateway exposes (`/metrics`, EOF, its log).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{
    Hold, TestGateway, assert_metrics, connect_small_window, demo, require_metric, tenant,
    with_hold,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ERROR: &str = "x-wasmgate-error";

/// Far longer than any clock under test; a failure, not a measurement.
const BOUND: Duration = Duration::from_secs(20);

/// The HTTP/2 connection preface a client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty HTTP/2 SETTINGS frame: length 0, type 4, no flags, stream 0.
const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Limits that let `/faults/big` answer 32 MiB, far more than the socket
/// buffers between a client that does not read and the gateway can hold.
const BIG_RESPONSES: &str = "[limits]\nmemory_bytes = 134217728\nmax_response_bytes = 67108864\n\
                             fuel = 100000000000\ntimeout_ms = 60000\n";

const BIG: &str = "/faults/big?n=33554432";

/// Connections cut because a client did not take a response in time.
const WRITE_CUTS: &str = r#"wasmgate_connections_cut_total{reason="write"}"#;

/// Reads until the server closes the connection (EOF, or a reset);
/// panics if it is still open after [`BOUND`]. Returns what was read.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let reading = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, reading)
        .await
        .expect("the server closes the connection");
    answer
}

/// Counts how many times `needle` occurs in `haystack`.
fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|window| *window == needle)
        .count()
}

#[tokio::test]
async fn silent_connections_are_cut_at_the_header_timeout_and_free_their_slots() {
    // Idle timeout at its 60 s default: only the header clock can close
    // these within the bound.
    let slots = 4;
    let server = format!("[server]\nheader_read_timeout_ms = 200\nmax_connections = {slots}");
    let gw = TestGateway::start(&demo(&server)).await;
    let address = gw.address();

    // Every slot taken by a client that never completes a request head:
    // two say nothing at all, two start HTTP/2 and say nothing more.
    let mut silent = Vec::new();
    for opening in [
        &b""[..],
        b"",
        H2_PREFACE,
        &[H2_PREFACE, H2_EMPTY_SETTINGS].concat(),
    ] {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(opening).await.expect("write");
        silent.push(stream);
    }
    gw.wait_for_metric("wasmgate_connections_accepted_total", |v| {
        v >= f64::from(slots)
    })
    .await;

    // A real client queues behind them in the backlog and is served once
    // they are cut.
    let hello = tokio::spawn({
        let client = gw.client.clone();
        let url = format!("{}/hello", gw.url);
        async move { client.get(url).send().await.expect("GET /hello").status() }
    });
    for stream in &mut silent {
        read_until_closed(stream).await;
    }
    assert_eq!(hello.await.expect("task"), 200);

    let text = gw.metrics().await;
    assert!(require_metric(&text, "wasmgate_connections_closed_total") >= f64::from(slots));
    assert_eq!(
        require_metric(&text, r#"wasmgate_connections_cut_total{reason="header"}"#),
        f64::from(slots),
        "{text}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_keep_alive_connection_waits_for_its_next_request_only_as_long_as_the_header_timeout() {
    // README: for HTTP/1 the header timeout also bounds the wait for the
    // next request on a keep-alive connection; the idle timeout (60 s
    // default) is not what closes it.
    let gw = TestGateway::start(&demo("[server]\nheader_read_timeout_ms = 200")).await;
    let mut stream = TcpStream::connect(gw.address()).await.expect("connect");
    let request = b"GET /hello HTTP/1.1\r\nhost: localhost\r\n\r\n";
    stream.write_all(request).await.expect("write");
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(occurrences(&answer, b"HTTP/1.1 "), 1, "no 408 after it");
    gw.shutdown().await;
}

#[tokio::test]
async fn silent_admin_clients_cannot_make_readyz_unreachable() {
    let gw = TestGateway::start(&demo("")).await;
    let admin = common::host_port(&gw.admin).to_owned();
    // More than the admin listener has slots: the rest wait in the
    // backlog ahead of the probe below.
    let mut silent = Vec::new();
    for _ in 0..wasmgate::server::ADMIN_MAX_CONNECTIONS + 8 {
        silent.push(TcpStream::connect(&admin).await.expect("connect"));
    }
    let probe = reqwest::Client::builder()
        .timeout(BOUND)
        .build()
        .expect("client");
    let (status, _) = common::get_text(&probe, &format!("{}/readyz", gw.admin)).await;
    assert_eq!(
        status, 200,
        "/readyz answers while silent admin clients wait"
    );
    // The silent ones were cut, not left open.
    read_until_closed(&mut silent[0]).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn an_http1_client_that_stops_reading_is_cut_at_the_write_timeout() {
    let server = format!("[server]\nwrite_timeout_ms = 300\n{BIG_RESPONSES}");
    let gw = TestGateway::start(&demo(&server)).await;
    let mut stream = connect_small_window(gw.address(), 4096).await;
    stream
        .write_all(format!("GET {BIG} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("write");
    // Never read: the gateway's writes block once the buffers between us
    // are full, and it cuts the connection.
    gw.wait_for_metric("wasmgate_connections_active", |v| v == 0.0)
        .await;
    assert_metrics(&gw.metrics().await, &[(WRITE_CUTS, 1.0)]);
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "the response had begun: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(100)])
    );
    assert!(
        answer.len() < 32 << 20,
        "cut before the whole body: {} bytes",
        answer.len()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_http2_client_that_opens_no_window_is_cut_at_the_write_timeout() {
    let gw = TestGateway::start(&demo("[server]\nwrite_timeout_ms = 300")).await;
    let tcp = TcpStream::connect(gw.address()).await.expect("connect");
    // The gateway may send 1 KiB of the body and then has to wait for a
    // WINDOW_UPDATE that never comes; nothing is pending at the socket.
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1024)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::get(format!("{}/faults/big?n=1048576", gw.url))
        .body(())
        .expect("request");
    let (response, _) = client.send_request(request, true).expect("send");
    let response = response.await.expect("response head");
    assert_eq!(response.status(), 200);
    // Hold the body, never read it, never release capacity.
    let _body = response.into_body();

    tokio::time::timeout(BOUND, driver)
        .await
        .expect("the gateway closed the connection")
        .expect("driver task")
        .ok();
    gw.wait_for_metric(WRITE_CUTS, |v| v == 1.0).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_response_being_written_is_never_closed_as_idle() {
    // The idle clock is 1 s; the write clock is far longer. The client
    // stops reading a 32 MiB response for 3 s, longer than the idle
    // timeout, with a second request pipelined behind it: the connection
    // must not be closed as idle (which would leave the second unanswered).
    let gw = TestGateway::start(&demo(&format!(
        "[server]\nidle_timeout_ms = 1000\nwrite_timeout_ms = 60000\n{BIG_RESPONSES}"
    )))
    .await;
    let mut stream = connect_small_window(gw.address(), 64 << 10).await;
    stream
        .write_all(
            format!(
                "GET {BIG} HTTP/1.1\r\nhost: localhost\r\n\r\n\
                 GET /hello HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    // A lower bound that gives the bug its chance, not a window that must
    // hold: on a slow machine this only makes the test weaker.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert!(answer.len() > 32 << 20, "{} bytes", answer.len());
    let tail = String::from_utf8_lossy(&answer[answer.len() - 300..]);
    assert!(
        tail.contains("HTTP/1.1 200") && tail.contains("hello"),
        "the pipelined request was answered too; the connection ended with: {tail}"
    );
    assert_metrics(&gw.metrics().await, &[(WRITE_CUTS, 0.0)]);
    gw.shutdown().await;
}

/// The log lines written on one test's thread. The gateway's tasks run on
/// the test's thread (`#[tokio::test]` is single-threaded), so its lines
/// land here. One global subscriber serves every test: thread-local ones
/// would share tracing's global per-callsite cache, which can remember
/// "disabled" from a test that captures nothing.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

thread_local! {
    /// Where lines written on this thread go, if anywhere.
    static SINK: std::cell::RefCell<Option<Log>> = const { std::cell::RefCell::new(None) };
}

/// The global subscriber's writer: this thread's [`SINK`].
struct ThreadSink;

impl std::io::Write for ThreadSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        SINK.with(|sink| {
            if let Some(log) = &*sink.borrow() {
                log.0.lock().expect("log lock").extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's log lines until the returned guard is dropped.
fn capture_log() -> (Log, impl Drop) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // The gateway's debug lines too: they say why a connection was cut.
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,wasmgate=debug"))
            .with_writer(|| ThreadSink)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
    });
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            SINK.with(|sink| sink.borrow_mut().take());
        }
    }
    let log = Log::default();
    SINK.with(|sink| *sink.borrow_mut() = Some(log.clone()));
    (log, Stop)
}

/// A gateway whose shutdown grace is `grace_ms`, with `extra` (a
/// `[runtime]` section, a tenant, or "") and limits under which a guest
/// may sleep far longer than any grace here.
async fn start_with_grace(grace_ms: u64, extra: &str) -> TestGateway {
    let limits = "[limits]\nfuel = 1000000000000000\ntimeout_ms = 60000";
    let server = format!("[server]\nshutdown_grace_ms = {grace_ms}\n{extra}\n{limits}");
    TestGateway::start(&demo(&server)).await
}

/// The `shutdown complete` line of a captured log.
fn shutdown_summary(log: &Log) -> String {
    let text = log.text();
    let summary = text.lines().find(|line| line.contains("shutdown complete"));
    let summary = summary.unwrap_or_else(|| panic!("no shutdown summary in:\n{text}"));
    summary.to_owned()
}

#[tokio::test]
async fn requests_still_running_when_the_grace_ends_get_503_shutting_down() {
    let (log, _guard) = capture_log();
    let mut gw = start_with_grace(300, "[runtime]\nworkers = 2\n").await;
    // One over HTTP/1, one over HTTP/2. Each sleeps 50 s: it cannot finish
    // within the grace or the client's 30 s.
    let in_flight: Vec<_> = [gw.client.clone(), common::h2_client()]
        .into_iter()
        .map(|client| {
            let url = format!("{}/faults/sleep?n=50000", gw.url);
            tokio::spawn(async move { client.get(url).send().await })
        })
        .collect();
    gw.wait_for_metric("wasmgate_guests_alive", |v| v >= 2.0)
        .await;
    gw.begin_shutdown();
    let mut versions = Vec::new();
    for request in in_flight {
        let response = request
            .await
            .expect("task")
            .expect("an answer, not a connection error");
        versions.push(response.version());
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[ERROR], "shutting_down");
        assert_eq!(response.headers()[reqwest::header::RETRY_AFTER], "1");
    }
    assert_eq!(
        versions,
        [reqwest::Version::HTTP_11, reqwest::Version::HTTP_2]
    );
    gw.shutdown().await;

    let summary = shutdown_summary(&log);
    for field in [
        "requests_completed=0",
        "requests_cut=2",
        "connections_closed=2",
    ] {
        assert!(summary.contains(field), "{field} in {summary}");
    }
    assert!(summary.contains("elapsed_ms="), "{summary}");
}

#[tokio::test]
async fn a_request_that_finishes_within_the_grace_gets_its_response() {
    let (log, _guard) = capture_log();
    let mut gw = start_with_grace(30_000, "").await;
    // Still asleep when the shutdown begins right after it is seen busy,
    // and done long before the grace ends.
    let in_flight = tokio::spawn({
        let client = gw.client.clone();
        let url = format!("{}/faults/sleep?n=3000", gw.url);
        async move {
            let response = client.get(url).send().await.expect("drained request");
            (response.status(), response.text().await.expect("body"))
        }
    });
    gw.wait_for_metric("wasmgate_workers_busy", |v| v >= 1.0)
        .await;
    gw.begin_shutdown();
    let (status, body) = in_flight.await.expect("task");
    assert_eq!(status, 200);
    assert_eq!(body, "slept\n");
    gw.shutdown().await;
    // It was still running when the drain began, and the drain saw it
    // through.
    let summary = shutdown_summary(&log);
    for field in ["requests_completed=1", "requests_cut=0"] {
        assert!(summary.contains(field), "{field} in {summary}");
    }
}

/// Polls `check` until it holds (true) or `hold` is over (false).
async fn while_holding<F, Fut>(hold: &Hold, check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while hold.holding() {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// README: once shutdown begins, `/readyz` says 503 and the public
/// listener takes no new connections, while a request in flight drains.
#[tokio::test]
async fn a_draining_gateway_is_not_ready_and_refuses_new_connections() {
    let (gw, hold) = with_hold(|hold| async move {
        let limits = "limits = { timeout_ms = 600000 }";
        let mut gw =
            start_with_grace(600_000, &tenant("hold", "hold.test", limits, &["faults"])).await;
        assert_eq!(gw.readyz().await, 200);
        let address = gw.address().to_owned();
        let hold = Hold::start(&gw, "hold.test", hold);
        let busy =
            || gw.wait_for_metric_while("wasmgate_workers_busy", |v| v >= 1.0, || hold.holding());
        if !busy().await {
            return None;
        }
        gw.begin_shutdown();
        let refused = || async {
            let connected = TcpStream::connect(&address).await;
            connected.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        };
        // Both seen while the request was still being drained.
        let ready = while_holding(&hold, || async { gw.readyz().await == 503 }).await;
        let refused = ready && while_holding(&hold, refused).await;
        if !refused {
            eprintln!(
                "while draining: /readyz said 503: {ready}; a connection was refused: {refused}"
            );
            return None;
        }
        Some((gw, hold))
    })
    .await;
    assert_eq!(hold.status().await, 200, "the drained request completes");
    gw.shutdown().await;
}

/// README: a connection still open after the grace and the 1 s to write
/// the 503s is cut with reason `shutdown` (counted by
/// `wasmgate_connections_cut_total{reason="shutdown"}`, which no scrape can
/// see: the admin listener closes right after, so the log says it).
#[tokio::test]
async fn a_connection_still_open_after_the_grace_is_cut_at_shutdown() {
    let (log, _guard) = capture_log();
    let server = format!("[server]\nshutdown_grace_ms = 300\n{BIG_RESPONSES}");
    let gw = TestGateway::start(&demo(&server)).await;
    // A response under way to a client that stops reading: it has its
    // answer, so the grace cannot end it, and it never finishes.
    let mut stream = connect_small_window(gw.address(), 4096).await;
    let request = format!("GET {BIG} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .await
        .expect("the response begins");
    assert_eq!(&head, b"HTTP/1.1 200");
    gw.shutdown().await;
    let text = log.text();
    assert!(text.contains("connection cut: shutdown"), "{text}");
    let summary = shutdown_summary(&log);
    for field in ["requests_cut=0", "connections_dropped=1"] {
        assert!(summary.contains(field), "{field} in {summary}");
    }
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.len() < 32 << 20, "cut before the whole body");
}
