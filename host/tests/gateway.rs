//! The real gateway on `127.0.0.1:0`, spoken to over real HTTP: the happy
//! paths, every failure status of DESIGN.md, and the metrics they leave.

mod common;

use common::{DEMO, TestGateway, metric, require_metric};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ERROR: &str = "x-wasmgate-error";

#[tokio::test]
async fn serves_hello_echo_and_404() {
    let gw = TestGateway::start(DEMO).await;

    let response = gw.get("/hello").await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("body");
    assert!(body.contains("hello"), "{body}");
    assert!(
        body.contains("howdy"),
        "the greeting config reaches the guest: {body}"
    );

    let response = gw
        .client
        .post(format!("{}/echo/sub?x=1", gw.url))
        .header("x-test", "yes")
        .body("ping body")
        .send()
        .await
        .expect("POST /echo");
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("body");
    for needle in ["POST", "/echo/sub?x=1", "x-test: yes", "ping body"] {
        assert!(
            body.contains(needle),
            "echo should contain {needle:?}: {body}"
        );
    }

    let response = gw
        .client
        .post(format!("{}/echo", gw.url))
        .send()
        .await
        .expect("POST /echo");
    assert_eq!(response.status(), 204, "an empty body gives 204");
    let remaining: u64 = response.headers()["x-fuel-remaining"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number");
    let budget = wasmgate::config::Limits::default().fuel;
    assert!(
        remaining > 0 && remaining < budget,
        "the guest sees its fuel being used: {remaining} of {budget}"
    );

    let response = gw.get("/nowhere").await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()[ERROR], "no_route");

    let response = gw.get("/cpu?iters=1000").await;
    assert_eq!(response.status(), 200);
    let first = response.text().await.expect("body");
    let again = gw.get("/cpu?iters=1000").await.text().await.expect("body");
    assert_eq!(first, again, "the cpu loop is deterministic");
    assert_ne!(
        first,
        gw.get("/cpu?iters=1001").await.text().await.expect("body")
    );
    assert_eq!(gw.get("/cpu?iters=lots").await.status(), 400);

    let text = gw.metrics().await;
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_requests_total{handler="hello",status="200",tenant="demo"}"#
        ),
        1.0
    );
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_requests_total{handler="echo",status="204",tenant="demo"}"#
        ),
        1.0
    );
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_requests_total{handler="",status="404",tenant=""}"#
        ),
        1.0
    );
    assert!(
        require_metric(
            &text,
            r#"wasmgate_fuel_consumed_sum{handler="cpu",tenant="demo"}"#
        ) > 0.0
    );
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_fuel_consumed_count{handler="hello",tenant="demo"}"#
        ),
        1.0
    );
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_guest_events_total{handler="hello",name="hello_requests",tenant="demo"}"#
        ),
        1.0,
        "the guest's own counter is exported"
    );
    for family in [
        "wasmgate_connections_accepted_total",
        "wasmgate_connections_active",
        "wasmgate_connections_closed_total",
        "wasmgate_request_duration_seconds_bucket",
        "wasmgate_instantiation_duration_seconds_bucket",
        "wasmgate_queue_depth",
        "wasmgate_workers_busy",
        "wasmgate_handlers_loaded 4",
        "wasmgate_handler_loads_total{result=\"ok\"} 4",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(family), "missing {family} in\n{text}");
    }
    gw.shutdown().await;
}

/// Each fault gives its DESIGN.md status and code, is counted by trap kind,
/// and leaves the gateway serving hello.
#[tokio::test]
async fn every_fault_gets_its_status_and_hello_still_works() {
    let gw = TestGateway::start(&format!(
        "[limits]\ntimeout_ms = 1000\nmemory_bytes = 16777216\n{DEMO}"
    ))
    .await;
    let table = [
        ("/faults/panic", 500, "trap", "unreachable"),
        ("/faults/oom", 500, "trap", "memory"),
        ("/faults/stack", 500, "trap", "stack_overflow"),
        ("/faults/badstatus", 502, "bad_response", ""),
        ("/faults/loop", 503, "fuel_exhausted", "fuel_exhausted"),
    ];
    for (path, status, code, kind) in table {
        let response = gw.get(path).await;
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(response.headers()[ERROR], code, "{path}");
        let hello = gw.get("/hello").await;
        assert_eq!(hello.status(), 200, "hello after {path}");
        if !kind.is_empty() {
            let sample = format!(
                r#"wasmgate_guest_traps_total{{handler="faults",kind="{kind}",tenant="demo"}}"#
            );
            assert_eq!(require_metric(&gw.metrics().await, &sample), 1.0, "{path}");
        }
    }
    let text = gw.metrics().await;
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_requests_total{handler="faults",status="500",tenant="demo"}"#
        ),
        3.0
    );
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_requests_total{handler="hello",status="200",tenant="demo"}"#
        ),
        5.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_endless_loop_is_stopped_by_fuel_or_by_the_deadline() {
    let gw = TestGateway::start(&format!(
        r#"
[[tenant]]
name = "lowfuel"
hosts = ["fuel.test"]
limits = {{ fuel = 2000000 }}
[[tenant.handler]]
name = "faults"
route = "/faults"
component = "{{faults}}"

[[tenant]]
name = "slow"
hosts = ["slow.test"]
limits = {{ fuel = 1000000000000000, timeout_ms = 300 }}
[[tenant.handler]]
name = "faults"
route = "/faults"
component = "{{faults}}"
{DEMO}"#
    ))
    .await;

    let response = gw.get_host("fuel.test", "/faults/loop").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()[ERROR], "fuel_exhausted");

    let started = Instant::now();
    let response = gw.get_host("slow.test", "/faults/loop").await;
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()[ERROR], "timeout");
    // Not a timing assertion on speed: only that the deadline is enforced
    // at all, with a generous margin for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(10));

    assert_eq!(gw.get_host("slow.test", "/hello").await.status(), 404);
    assert_eq!(gw.get("/hello").await.status(), 200);
    let text = gw.metrics().await;
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_guest_traps_total{handler="faults",kind="timeout",tenant="slow"}"#
        ),
        1.0
    );
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_requests_total{handler="faults",status="504",tenant="slow"}"#
        ),
        1.0
    );
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_guest_traps_total{handler="faults",kind="fuel_exhausted",tenant="lowfuel"}"#
        ),
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let gw = TestGateway::start(&format!("[server]\nmax_body_bytes = 1024\n{DEMO}")).await;

    // Declared too large.
    let response = gw
        .client
        .post(format!("{}/echo", gw.url))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 413);
    assert_eq!(response.headers()[ERROR], "body_too_large");

    // Chunked, so only counting the bytes can catch it.
    let address = gw.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let chunk = vec![b'y'; 2000];
    let mut request =
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n7d0\r\n".to_vec();
    request.extend_from_slice(&chunk);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    stream.write_all(&request).await.expect("write");
    let mut head = vec![0; 12];
    stream
        .read_exact(&mut head)
        .await
        .expect("read status line");
    assert_eq!(&head, b"HTTP/1.1 413");

    // Exactly at the limit is fine.
    let response = gw
        .client
        .post(format!("{}/echo", gw.url))
        .body(vec![b'z'; 1024])
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn tenant_concurrency_and_a_full_queue_give_503_overloaded() {
    let gw = TestGateway::start(&format!(
        r#"
[runtime]
workers = 1
guests_per_worker = 1
queue_depth = 1

[limits]
timeout_ms = 10000

[[tenant]]
name = "narrow"
hosts = ["narrow.test"]
limits = {{ max_concurrency = 1, fuel = 1000000000000000, timeout_ms = 1000 }}
[[tenant.handler]]
name = "faults"
route = "/faults"
component = "{{faults}}"
{DEMO}"#
    ))
    .await;

    // Occupy the tenant's only slot (and the only worker).
    let busy = tokio::spawn({
        let client = gw.client.clone();
        let url = format!("{}/faults/loop", gw.url);
        async move {
            client
                .get(url)
                .header("host", "narrow.test")
                .send()
                .await
                .expect("loop request")
                .status()
        }
    });
    gw.wait_for_metric("wasmgate_workers_busy", |v| v >= 1.0)
        .await;
    let response = gw.get_host("narrow.test", "/faults/panic").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()[ERROR], "overloaded");
    assert_eq!(response.headers()["retry-after"], "1");

    // The worker is busy: one more request fills the queue, the next is shed.
    let queued = tokio::spawn({
        let client = gw.client.clone();
        let url = format!("{}/hello", gw.url);
        async move { client.get(url).send().await.expect("queued").status() }
    });
    gw.wait_for_metric("wasmgate_queue_depth", |v| v >= 1.0)
        .await;
    let response = gw.get("/hello").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()[ERROR], "overloaded");

    assert_eq!(busy.await.expect("task"), 504);
    assert_eq!(queued.await.expect("task"), 200);
    let text = gw.metrics().await;
    assert_eq!(
        require_metric(
            &text,
            r#"wasmgate_requests_total{handler="hello",status="503",tenant="demo"}"#
        ),
        1.0
    );
    gw.shutdown().await;
}

/// The worker queue serves handlers in turn: a request to `/hello` waits
/// behind at most one queued `/cpu` request, not behind the whole `/cpu`
/// backlog. Checked by completion order, not by timing.
#[tokio::test]
async fn a_flooded_handler_does_not_make_others_wait_for_its_backlog() {
    let gw = TestGateway::start(&format!(
        r#"
[runtime]
workers = 1
guests_per_worker = 1

[limits]
timeout_ms = 60000
{DEMO}"#
    ))
    .await;
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let request = |path: &'static str| {
        let (client, url, done) = (
            gw.client.clone(),
            format!("{}{path}", gw.url),
            std::sync::Arc::clone(&done),
        );
        tokio::spawn(async move {
            let status = client.get(url).send().await.expect(path).status();
            done.lock().expect("lock").push(path);
            status
        })
    };

    // About 20 ms each: one runs, the rest queue up behind it.
    const FLOOD: usize = 12;
    let flood: Vec<_> = (0..FLOOD).map(|_| request("/cpu?iters=10000000")).collect();
    gw.wait_for_metric("wasmgate_queue_depth", |v| v >= (FLOOD - 1) as f64)
        .await;
    assert_eq!(request("/hello").await.expect("hello task"), 200);
    for cpu in flood {
        assert_eq!(cpu.await.expect("cpu task"), 200);
    }

    let done = done.lock().expect("lock").clone();
    let hello_at = done
        .iter()
        .position(|p| *p == "/hello")
        .expect("hello done");
    // Before it: the /cpu request running when it arrived and the one whose
    // turn came first; one more in case a response overtook another.
    assert!(
        hello_at <= 3,
        "/hello finished after {hello_at} /cpu requests: {done:?}"
    );
    // Every request was answered, so none is waiting: the gauge says so
    // exactly, with no stale value from a push racing a pop.
    let text = gw.metrics().await;
    assert_eq!(require_metric(&text, "wasmgate_queue_depth"), 0.0);
    gw.shutdown().await;
}

/// DESIGN.md: the exposition must pass `promtool check metrics` (which
/// `cargo xtask test` installs), with every family present.
#[tokio::test]
async fn metrics_pass_promtool() {
    let gw = TestGateway::start(DEMO).await;
    for path in [
        "/hello",
        "/echo",
        "/faults/panic",
        "/faults/metrics",
        "/nowhere",
    ] {
        gw.get(path).await;
    }
    // The guest histogram family appears once a guest observes a value.
    gw.get("/cpu?iters=10").await;
    let text = gw.metrics().await;
    assert!(text.contains("wasmgate_guest_values_bucket"), "{text}");
    let mut promtool = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "promtool is needed ({e}): `cargo xtask test` installs it, or `apt-get install prometheus`"
        ),
    };
    std::io::Write::write_all(
        &mut promtool.stdin.take().expect("piped stdin"),
        text.as_bytes(),
    )
    .expect("write to promtool");
    let output = promtool.wait_with_output().expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_guest_metric_flood_is_capped() {
    let gw = TestGateway::start(DEMO).await;
    for _ in 0..2 {
        let response = gw.get("/faults/metrics").await;
        assert_eq!(response.status(), 200);
    }
    let text = gw.metrics().await;
    let series = text
        .lines()
        .filter(|l| {
            l.starts_with("wasmgate_guest_events_total{") && l.contains("handler=\"faults\"")
        })
        .count();
    assert_eq!(series, wasmgate::metrics::MAX_GUEST_METRIC_NAMES);
    let dropped = require_metric(
        &text,
        r#"wasmgate_guest_metrics_dropped_total{handler="faults",tenant="demo"}"#,
    );
    assert!(dropped > 9000.0, "dropped {dropped}");
    assert!(
        metric(
            &text,
            r#"wasmgate_guest_events_total{handler="faults",name="flood_0",tenant="demo"}"#
        ) == Some(2.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let gw = TestGateway::start(&format!(
        "[limits]\nfuel = 1000000000000\ntimeout_ms = 20000\n{DEMO}"
    ))
    .await;
    let in_flight = tokio::spawn({
        let client = gw.client.clone();
        let url = format!("{}/cpu?iters=200000000", gw.url);
        async move {
            let response = client.get(url).send().await.expect("cpu request");
            (response.status(), response.text().await.expect("body"))
        }
    });
    gw.wait_for_metric("wasmgate_workers_busy", |v| v >= 1.0)
        .await;
    let address = gw.url.clone();
    let mut gw = gw;
    gw.begin_shutdown();
    // While the request drains, the admin side is up and says not ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let readyz = gw
            .client
            .get(format!("{}/readyz", gw.admin))
            .send()
            .await
            .expect("admin stays up while draining");
        if readyz.status() == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said 503 while draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the cpu request is still draining"
    );
    gw.shutdown().await;
    let (status, body) = in_flight.await.expect("task");
    assert_eq!(status, 200);
    assert!(body.trim().parse::<u64>().is_ok(), "{body}");
    // After shutdown nothing listens any more.
    assert!(reqwest::get(format!("{address}/hello")).await.is_err());
}

/// Sends raw bytes on a fresh connection and returns everything the server
/// sends back until it closes the connection.
async fn raw_exchange(address: &str, request: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .expect("read");
    answer
}

#[tokio::test]
async fn oversized_headers_get_431_and_slow_clients_are_cut_off() {
    let gw = TestGateway::start(&format!("[server]\nheader_read_timeout_ms = 200\n{DEMO}")).await;
    let address = gw.url.trim_start_matches("http://").to_owned();

    let mut huge = b"GET /hello HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    // The server may stop reading and answer before all is written.
    let _ = stream.write_all(&huge).await;
    let mut head = vec![0; 12];
    stream.read_exact(&mut head).await.expect("status line");
    assert_eq!(&head, b"HTTP/1.1 431");

    // Half a request line, then silence: closed by the header read timeout.
    let answer = raw_exchange(&address, b"GET /hel").await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    // The header timeout is far longer than the idle timeout, so only the
    // idle timeout can close the connection within the margin below.
    let gw = TestGateway::start(&format!(
        "[server]\nheader_read_timeout_ms = 30000\nidle_timeout_ms = 200\n{DEMO}"
    ))
    .await;
    let address = gw.url.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let answer = raw_exchange(&address, b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "closed by the idle timeout, not the 30 s header timeout"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_over_max_connections_wait_instead_of_being_refused() {
    let gw = TestGateway::start(&format!("[server]\nmax_connections = 1\n{DEMO}")).await;
    let address = gw.url.trim_start_matches("http://").to_owned();
    let request = b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n";

    // The first connection takes the only slot and stays open.
    let mut first = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    first.write_all(request).await.expect("write");
    let mut head = vec![0; 12];
    first.read_exact(&mut head).await.expect("first answer");
    assert_eq!(&head, b"HTTP/1.1 200");

    // The second is accepted by the kernel but not served while the first
    // holds the slot...
    let mut second = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    second.write_all(request).await.expect("write");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the second connection was served while the first held the only slot"
    );

    // ...and is served once the first goes away.
    drop(first);
    let mut head = vec![0; 12];
    tokio::time::timeout(Duration::from_secs(20), second.read_exact(&mut head))
        .await
        .expect("served after the first closed")
        .expect("read");
    assert_eq!(&head, b"HTTP/1.1 200");
    gw.shutdown().await;
}

#[tokio::test]
async fn serves_http2_with_prior_knowledge() {
    let gw = TestGateway::start(DEMO).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = client
        .get(format!("{}/hello", gw.url))
        .send()
        .await
        .expect("h2 GET /hello");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.text().await.expect("body").contains("hello"));
    gw.shutdown().await;
}
