//! A hostile guest and hostile clients against the real gateway: every
//! misbehaviour gets its bounded answer, no worker is lost or held past a
//! deadline, memory held for slow clients stays within the budget, and
//! another tenant is served throughout.
//!
//! No test here depends on the machine's speed: each waits for an event
//! the gateway exposes (a metric, a response) and uses wall-clock time only
//! as a generous upper bound for failure.

mod common;

use std::time::{Duration, Instant};

use common::{TestGateway, assert_metrics, metric, raw_text, requests, require_metric, tenant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ERROR: &str = "x-wasmgate-error";
const MIB: usize = 1 << 20;

/// Two tenants: `evil` runs the faults on `evil.test`, `good` serves hello
/// and echo on every other host. `extra` goes first (a `[server]` or
/// `[runtime]` section, say).
fn two_tenants(extra: &str, evil_limits: &str) -> String {
    let evil_limits = format!("limits = {{ {evil_limits} }}");
    format!(
        "{extra}\n{}{}",
        tenant("evil", "evil.test", &evil_limits, &["faults"]),
        tenant("good", "*", "", &["hello", "echo"]),
    )
}

impl TestGateway {
    async fn evil(&self, path: &str) -> reqwest::Response {
        self.get_host("evil.test", path).await
    }
}

/// Another tenant is served, every worker is alive and idle, and the
/// gateway says it is ready.
async fn assert_healthy(gw: &TestGateway, workers: f64) {
    let hello = gw.get_host("good.test", "/hello").await;
    assert_eq!(hello.status(), 200, "the other tenant is served");
    gw.wait_for_metric("wasmgate_workers_busy", |v| v == 0.0)
        .await;
    let text = gw.metrics().await;
    assert_eq!(require_metric(&text, "wasmgate_workers_alive"), workers);
    assert_eq!(gw.readyz().await, 200);
}

/// Sends `request` on a new connection and reads until the server closes
/// it or the head and `Content-Length` body have arrived.
async fn raw(address: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if response_complete(&answer) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the server answers");
    String::from_utf8_lossy(&answer).into_owned()
}

fn response_complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    length.is_some_and(|n| body.len() >= n)
}

#[tokio::test]
async fn a_guest_answering_with_100000_headers_gets_502_and_costs_no_worker() {
    let gw = TestGateway::start(&two_tenants("[runtime]\nworkers = 2", "")).await;
    // More such requests than workers: each once killed a worker for good.
    for _ in 0..4 {
        let response = gw.evil("/faults/headers?n=100000").await;
        assert_eq!(response.status(), 502);
        assert_eq!(response.headers()[ERROR], "bad_response");
        let reason = response.text().await.expect("body");
        assert!(reason.contains("100000 header fields"), "{reason}");
    }
    let response = gw.evil("/faults/bighead?n=1100000").await;
    assert_eq!(response.status(), 502);
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("response head is")
    );
    assert_healthy(&gw, 2.0).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_response_over_max_response_bytes_gets_502_and_one_within_it_arrives_whole() {
    let gw = TestGateway::start(&two_tenants("", "max_response_bytes = 1048576")).await;
    let response = gw.evil("/faults/big?n=1048577").await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()[ERROR], "bad_response");
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("limits.max_response_bytes is 1048576")
    );

    let response = gw.evil("/faults/big?n=1000000").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(1_000_000));
    let body = response.bytes().await.expect("body");
    assert!(body.len() == 1_000_000 && body.iter().all(|&b| b == b'b'));
    // Once written, the response holds none of the memory budget.
    gw.wait_for_metric("wasmgate_buffered_bytes", |v| v == 0.0)
        .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_guest_blocked_in_a_host_call_gets_504_at_its_deadline() {
    let gw = TestGateway::start(&two_tenants(
        "[runtime]\nworkers = 2",
        "timeout_ms = 300, fuel = 1000000000000",
    ))
    .await;
    // std's sleep uses `pollable.block`; `poll` is the other way to wait.
    // Both ask for 30 s; the deadline is 300 ms.
    let started = Instant::now();
    let (sleep, poll) = tokio::join!(
        gw.evil("/faults/sleep?n=30000"),
        gw.evil("/faults/poll?n=30000")
    );
    for response in [sleep, poll] {
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()[ERROR], "timeout");
    }
    // Generous: the failure this catches is the guest's 30 s.
    assert!(started.elapsed() < Duration::from_secs(20));
    let timeouts = r#"wasmgate_guest_traps_total{handler="faults",kind="timeout",tenant="evil"}"#;
    assert_metrics(&gw.metrics().await, &[(timeouts, 2.0)]);
    assert_healthy(&gw, 2.0).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_queued_request_gets_its_504_while_the_workers_are_still_busy() {
    // One guest per worker (run to completion, as before time slicing):
    // the only worker sleeps for 20 s, within its tenant's 60 s deadline;
    // a request of another tenant with a 300 ms deadline waits behind it.
    let gw = TestGateway::start(&format!(
        "{}\n[limits]\ntimeout_ms = 300\n",
        two_tenants(
            "[runtime]\nworkers = 1\nguests_per_worker = 1\nwaiting_guests_per_worker = 0",
            "timeout_ms = 60000"
        )
    ))
    .await;
    let sleeper = tokio::spawn({
        let client = gw.client.clone();
        let url = format!("{}/faults/sleep?n=20000", gw.url);
        async move { client.get(url).header("host", "evil.test").send().await }
    });
    gw.wait_for_metric("wasmgate_workers_busy", |v| v == 1.0)
        .await;
    let queued = gw.get_host("good.test", "/hello").await;
    assert_eq!(queued.status(), 504);
    assert_eq!(queued.headers()[ERROR], "timeout");
    assert!(
        !sleeper.is_finished(),
        "the 504 came before the worker was free, not after"
    );
    sleeper.abort();
    gw.shutdown().await;
}

/// Writes a request head that promises `length` bytes of body, then sends
/// three of them.
async fn stalled_body(address: &str, host: &str, length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let head =
        format!("POST /echo HTTP/1.1\r\nhost: {host}\r\ncontent-length: {length}\r\n\r\nabc");
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

#[tokio::test]
async fn slow_request_bodies_hold_no_tenant_slot_and_only_the_bytes_they_sent() {
    let server = format!(
        "[server]\nbody_read_timeout_ms = 60000\nmax_buffered_bytes = {}\n[limits]\nmax_concurrency = 2",
        2 * MIB
    );
    let gw = TestGateway::start(&two_tenants(&server, "")).await;
    let address = gw.address();
    let mut stalled = Vec::new();
    for _ in 0..8 {
        stalled.push(stalled_body(address, "good.test", MIB).await);
    }
    // All eight are routed and waiting for their bodies, holding the three
    // bytes each sent, not the megabyte each promised...
    gw.wait_for_metric("wasmgate_requests_in_flight", |v| v >= 8.0)
        .await;
    gw.wait_for_metric("wasmgate_buffered_bytes", |v| v == 24.0)
        .await;
    // ...so the tenant's two slots and the memory budget are still free.
    for _ in 0..3 {
        assert_eq!(gw.get_host("good.test", "/hello").await.status(), 200);
    }
    let upload = gw
        .client
        .post(format!("{}/echo", gw.url))
        .header("host", "good.test")
        .body(vec![b'u'; MIB / 2])
        .send()
        .await
        .expect("POST");
    assert_eq!(upload.status(), 200);
    drop(stalled);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_over_http1_and_http2() {
    let gw = TestGateway::start(&format!(
        "[server]\nbody_read_timeout_ms = 200\n{}",
        two_tenants("", "")
    ))
    .await;
    let answer = raw_text(
        gw.address(),
        "POST /echo HTTP/1.1\r\nhost: good.test\r\ncontent-length: 10\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("x-wasmgate-error: body_timeout"),
        "{answer}"
    );

    // HTTP/2: one stream whose body never ends.
    let client = common::h2_client();
    let never = futures_never_ending_body();
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        client
            .post(format!("{}/echo", gw.url))
            .body(reqwest::Body::wrap_stream(never))
            .send(),
    )
    .await
    .expect("answered within a generous bound")
    .expect("h2 POST");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 408);
    assert_eq!(response.headers()[ERROR], "body_timeout");
    gw.shutdown().await;
}

/// A body stream that sends a few bytes, then nothing, forever.
fn futures_never_ending_body()
-> impl futures_core::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    struct Never(bool);
    impl futures_core::Stream for Never {
        type Item = Result<bytes::Bytes, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.0 {
                std::task::Poll::Pending
            } else {
                self.0 = true;
                std::task::Poll::Ready(Some(Ok(bytes::Bytes::from_static(b"start"))))
            }
        }
    }
    Never(false)
}

#[tokio::test]
async fn buffered_responses_stay_within_the_memory_budget() {
    let server = format!("[server]\nmax_buffered_bytes = {}", 20 * MIB);
    let gw = TestGateway::start(&two_tenants(&server, "max_response_bytes = 16777216")).await;
    // Two clients that ask for 8 MiB and read none of it.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = common::connect_small_window(gw.address(), 4096).await;
        let request = format!(
            "GET /faults/big?n={} HTTP/1.1\r\nhost: evil.test\r\n\r\n",
            8 * MIB
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        stalled.push(stream);
    }
    gw.wait_for_metric("wasmgate_buffered_bytes", |v| v >= (16 * MIB) as f64)
        .await;
    // A third would go over the 20 MiB budget: 503, not more memory.
    let third = gw.evil(&format!("/faults/big?n={}", 8 * MIB)).await;
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()[ERROR], "overloaded");
    assert_eq!(third.headers()["retry-after"], "1");
    assert!(third.text().await.expect("body").contains("memory budget"));
    // Small responses still fit.
    assert_eq!(gw.get_host("good.test", "/hello").await.status(), 200);
    let held = require_metric(&gw.metrics().await, "wasmgate_buffered_bytes");
    assert!(held <= (20 * MIB) as f64, "{held}");

    // The slow readers leave: their share comes back.
    drop(stalled);
    gw.wait_for_metric("wasmgate_buffered_bytes", |v| v == 0.0)
        .await;
    let again = gw.evil(&format!("/faults/big?n={}", 8 * MIB)).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.bytes().await.expect("body").len(), 8 * MIB);
    gw.shutdown().await;
}

#[tokio::test]
async fn host_headers_follow_rfc_9112_and_the_guest_sees_the_routed_host() {
    let shop = tenant("shop", "shop.test", "", &["echo"]);
    let gw = TestGateway::start(&format!("{shop}{}", two_tenants("", ""))).await;
    let address = gw.address();
    for request in [
        "GET /hello HTTP/1.1\r\n\r\n",
        "GET /hello HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\n\r\n",
    ] {
        let answer = raw(address, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
        assert!(answer.contains("x-wasmgate-error: bad_request"), "{answer}");
    }
    // HTTP/1.0 may omit Host.
    let answer = raw(address, b"GET /hello HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");

    // Absolute form: the authority picks the tenant, and the guest is
    // told that host, not the Host header's.
    let answer = raw(
        address,
        b"POST http://shop.test/echo HTTP/1.1\r\nhost: elsewhere.test\r\ncontent-length: 2\r\n\r\nhi",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("host: shop.test\n"), "{answer}");
    assert!(!answer.contains("elsewhere.test"), "{answer}");
    let (echoed, refused) = (requests("echo", 200, "shop"), requests("", 400, ""));
    assert_metrics(&gw.metrics().await, &[(&echoed, 1.0), (&refused, 2.0)]);
    gw.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_and_forged_gateway_errors_never_leave_the_gateway() {
    let gw = TestGateway::start(&two_tenants("", "")).await;
    let answer = raw(
        gw.address(),
        b"GET /faults/hopbyhop HTTP/1.1\r\nhost: evil.test\r\n\r\n",
    )
    .await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "hop by hop\n");
    let names: Vec<String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "x-wasmgate-error",
    ] {
        assert!(!names.iter().any(|n| n == gone), "{gone} passed: {head}");
    }
    assert!(names.iter().any(|n| n == "x-kept"), "{head}");
    assert!(
        head.contains("content-length: 11"),
        "the gateway frames it: {head}"
    );
    gw.shutdown().await;
}

/// Every misbehaviour at once, several times over, against two workers;
/// then every worker is alive and idle and the other tenant is served.
/// The faults that run until stopped have a tenant of their own with a
/// short deadline, so the others never expire behind them in the queue.
#[tokio::test]
async fn fault_matrix_leaves_every_worker_alive_and_the_other_tenant_served() {
    let slow = tenant(
        "slow",
        "slow.test",
        "limits = { timeout_ms = 300, max_concurrency = 1000 }",
        &["faults"],
    );
    let gw = TestGateway::start(&format!(
        "{slow}{}",
        two_tenants(
            "[runtime]\nworkers = 2\nqueue_depth = 4096",
            "timeout_ms = 60000, memory_bytes = 33554432, max_response_bytes = 2097152, max_concurrency = 1000",
        )
    ))
    .await;
    // (host, path, status); 0 = fuel or deadline, whichever comes first.
    let faults: &[(&str, &str, u16)] = &[
        ("slow.test", "/faults/loop", 0),
        ("slow.test", "/faults/sleep?n=30000", 504),
        ("slow.test", "/faults/poll?n=30000", 504),
        ("evil.test", "/faults/oom", 500),
        ("evil.test", "/faults/panic", 500),
        ("evil.test", "/faults/stack", 500),
        ("evil.test", "/faults/badstatus", 502),
        ("evil.test", "/faults/metrics", 200),
        ("evil.test", "/faults/headers?n=100000", 502),
        ("evil.test", "/faults/bighead?n=1100000", 502),
        ("evil.test", "/faults/big?n=4194304", 502),
        ("evil.test", "/faults/logflood?n=2000", 200),
        ("evil.test", "/faults/lognewline", 200),
        ("evil.test", "/faults/hopbyhop", 200),
        ("evil.test", "/faults/counterwrap", 200),
        ("evil.test", "/faults/histinf", 200),
        ("evil.test", "/faults/stderr?n=1048576", 500),
        ("evil.test", "/faults/wasi", 200),
    ];
    let mut tasks = Vec::new();
    for _ in 0..3 {
        for &(host, path, status) in faults {
            let client = gw.client.clone();
            let url = format!("{}{path}", gw.url);
            tasks.push(tokio::spawn(async move {
                let response = client
                    .get(url)
                    .header("host", host)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{path}: {e}"));
                (path, status, response.status().as_u16())
            }));
        }
    }
    for task in tasks {
        let (path, want, got) = task.await.expect("task");
        match want {
            0 => assert!(got == 503 || got == 504, "{path}: {got}"),
            want => assert_eq!(got, want, "{path}"),
        }
    }
    assert_healthy(&gw, 2.0).await;
    let text = gw.metrics().await;
    assert_eq!(require_metric(&text, "wasmgate_queue_depth"), 0.0);
    assert_eq!(require_metric(&text, "wasmgate_requests_in_flight"), 0.0);
    assert_eq!(require_metric(&text, "wasmgate_buffered_bytes"), 0.0);
    assert!(metric(&text, "wasmgate_workers_alive") == Some(2.0));
    gw.shutdown().await;
}
