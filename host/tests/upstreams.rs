//! Upstreams: standard `wasi:http/proxy` components served beside SDK
//! handlers, and guests' outbound calls through the tenant's allowlist and
//! every bound on them, against real upstreams on loopback that count the
//! connections they get.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestGateway, handler, tenant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmgate_handler_components as components;

/// How a test upstream answers.
#[derive(Clone, Copy)]
enum Answer {
    /// `201` with body `upstream says hi`, and the request head echoed in
    /// `x-seen-*` headers.
    Hello,
    /// Reads the request, then says nothing, holding the connection.
    Never,
    /// A response head of about `n` bytes.
    BigHead(usize),
    /// A 200 whose body is `n` bytes.
    BigBody(usize),
    /// [`Answer::Hello`] to every request on a connection, keeping it open.
    KeepAlive,
}

/// An HTTP/1.1 server on `127.0.0.1:0` that counts its connections.
struct Upstream {
    port: u16,
    connections: Arc<AtomicUsize>,
    /// The last request head it read.
    last_head: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(answer: Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let last_head = Arc::new(std::sync::Mutex::new(String::new()));
        let (counted, heads) = (Arc::clone(&connections), Arc::clone(&last_head));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, answer, Arc::clone(&heads)));
            }
        });
        Self {
            port,
            connections,
            last_head,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    answer: Answer,
    heads: Arc<std::sync::Mutex<String>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    *heads.lock().expect("lock") = String::from_utf8_lossy(&head).into_owned();
    if let Answer::KeepAlive = answer {
        // Requests without bodies, one after the other on this connection.
        loop {
            let answer = b"HTTP/1.1 201 Created\r\ncontent-length: 16\r\n\r\nupstream says hi";
            if stream.write_all(answer).await.is_err() {
                return;
            }
            let mut next = Vec::new();
            while !next.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => next.extend_from_slice(&buf[..n]),
                }
            }
        }
    }
    let write = |bytes: Vec<u8>| bytes;
    let response = match answer {
        Answer::Hello => write(
            b"HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\ncontent-length: 16\r\n\r\nupstream says hi"
                .to_vec(),
        ),
        Answer::KeepAlive => unreachable!("served above"),
        Answer::Never => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        Answer::BigHead(n) => {
            let mut text = String::from("HTTP/1.1 200 OK\r\n");
            while text.len() < n {
                text.push_str(&format!("x-filler-{}: {}\r\n", text.len(), "a".repeat(100)));
            }
            text.push_str("content-length: 0\r\n\r\n");
            text.into_bytes()
        }
        Answer::BigBody(n) => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 << 10];
            let mut left = n;
            while left > 0 {
                let take = left.min(chunk.len());
                if stream.write_all(&chunk[..take]).await.is_err() {
                    return;
                }
                left -= take;
            }
            return;
        }
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// A tenant `name` on host `host` with the `wasi-hello` component at
/// `/wasi`, `allowed` as its `allowed_outbound_hosts`, and `keys` (more
/// lines of its table).
fn wasi_tenant(name: &str, host: &str, allowed: &[String], keys: &str) -> String {
    let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    let keys = format!("allowed_outbound_hosts = [{}]\n{keys}", list.join(", "));
    format!(
        "{}{}",
        tenant(name, host, &keys, &["hello"]),
        handler("wasi", "/wasi", "{wasi_hello}")
    )
}

/// `GET /wasi/fetch?url=URL&more` on `host`: status and body.
async fn fetch(gw: &TestGateway, host: &str, url: &str, more: &str) -> (u16, String) {
    let url = percent_encoding::utf8_percent_encode(url, percent_encoding::NON_ALPHANUMERIC);
    let response = gw
        .get_host(host, &format!("/wasi/fetch?url={url}{more}"))
        .await;
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_component_runs_unmodified_beside_sdk_handlers() {
    let gw = TestGateway::start(&wasi_tenant("t", "*", &[], "")).await;
    let (status, body) = common::get_text(&gw.client, &format!("{}/wasi", gw.url)).await;
    assert_eq!((status, body.as_str()), (200, "hello from wasi:http\n"));
    let (status, body) = common::get_text(&gw.client, &format!("{}/hello", gw.url)).await;
    assert_eq!((status, body.as_str()), (200, "hello from wasmgate\n"));

    // The guest sees the whole request: method, path and query, the
    // authority it was routed by, headers and body.
    let response = gw
        .client
        .post(format!("{}/wasi/echo?a=1", gw.url))
        .header("host", "shop.example")
        .header("x-custom", "yes")
        .body("the body")
        .send()
        .await
        .expect("echo");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    for line in [
        "method: POST",
        "path: /wasi/echo?a=1",
        "authority: shop.example",
        "scheme: http",
        "x-custom: yes",
        "x-wasmgate-route: /wasi",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
    }
    assert!(text.ends_with("\nthe body"), "{text}");
    let metrics = gw.metrics().await;
    common::assert_metrics(&metrics, &[(&common::requests("wasi", 200, "t"), 2.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_guest_meets_the_same_limits() {
    // Fuel enough for the deadline to come first.
    let keys = "limits = { timeout_ms = 400, fuel = 1000000000000, max_response_bytes = 100000 }";
    let gw = TestGateway::start(&wasi_tenant("t", "*", &[], keys)).await;
    let started = Instant::now();
    let response = gw.get("/wasi/spin").await;
    let status = response.status();
    let why = response.text().await.expect("body");
    assert_eq!(status, 504, "a spinning guest ends at its deadline: {why}");
    assert!(started.elapsed() < Duration::from_millis(400 + 1000));
    let response = gw.get("/wasi/panic").await;
    assert_eq!(response.status(), 500);
    let response = gw.get("/wasi/big?bytes=200000").await;
    assert_eq!(response.status(), 502, "over max_response_bytes");
    let reason = response.text().await.expect("body");
    assert!(reason.contains("max_response_bytes"), "{reason}");
    let response = gw.get("/wasi/big?bytes=90000").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("body").len(), 90000);
    let metrics = gw.metrics().await;
    for kind in ["timeout", "unreachable"] {
        let sample =
            format!("wasmgate_guest_traps_total{{handler=\"wasi\",kind=\"{kind}\",tenant=\"t\"}}");
        assert_eq!(common::metric(&metrics, &sample), Some(1.0), "{sample}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_call_returns_the_upstreams_response_in_both_worlds() {
    let upstream = Upstream::start(Answer::Hello).await;
    let allowed = [format!("http://127.0.0.1:{}", upstream.port)];
    let config = format!(
        "{}config = {{ upstream = \"{}\" }}\n",
        wasi_tenant("t", "*", &allowed, "") + &handler("proxy", "/api", "{proxy}"),
        upstream.url("")
    );
    let gw = TestGateway::start(&config).await;

    let (status, body) = fetch(&gw, "a.test", &upstream.url("/x"), "").await;
    assert_eq!((status, body.as_str()), (201, "upstream says hi"));

    // The SDK's proxy handler: path below its route, a header added.
    let response = gw.get("/api/items?id=7").await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        response
            .headers()
            .get("x-upstream-status")
            .map(|v| v.as_bytes()),
        Some(&b"201"[..])
    );
    assert_eq!(response.text().await.expect("body"), "upstream says hi");
    let head = upstream.last_head.lock().expect("lock").clone();
    assert!(head.starts_with("GET /items?id=7 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-forwarded-by: wasmgate"),
        "{head}"
    );
    assert_eq!(upstream.connections(), 2);

    let metrics = gw.metrics().await;
    common::assert_metrics(
        &metrics,
        &[
            (
                "wasmgate_outbound_requests_total{handler=\"wasi\",result=\"2xx\",tenant=\"t\"}",
                1.0,
            ),
            (
                "wasmgate_outbound_requests_total{handler=\"proxy\",result=\"2xx\",tenant=\"t\"}",
                1.0,
            ),
            (
                "wasmgate_outbound_duration_seconds_count{handler=\"wasi\",tenant=\"t\"}",
                1.0,
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outside_the_list_are_denied_and_open_no_connection() {
    let allowed_upstream = Upstream::start(Answer::Hello).await;
    let other = Upstream::start(Answer::Hello).await;
    let allowed = [format!("http://127.0.0.1:{}", allowed_upstream.port)];
    let config = format!(
        "{}{}",
        wasi_tenant("open", "open.test", &allowed, ""),
        wasi_tenant("closed", "closed.test", &[], "")
    );
    let gw = TestGateway::start(&config).await;

    // Another port of the same address; a name for the same address; the
    // right port over another scheme; a tenant with no list at all.
    let localhost = format!("http://localhost:{}/", allowed_upstream.port);
    let https = format!("https://127.0.0.1:{}/", allowed_upstream.port);
    for (host, url) in [
        ("open.test", other.url("/")),
        ("open.test", localhost),
        ("open.test", https),
        ("closed.test", allowed_upstream.url("/")),
    ] {
        let (status, body) = fetch(&gw, host, &url, "").await;
        assert_eq!((status, body.as_str()), (502, "denied"), "{host} -> {url}");
    }
    assert_eq!(
        allowed_upstream.connections(),
        0,
        "no connection was opened"
    );
    assert_eq!(other.connections(), 0, "no connection was opened");
    let metrics = gw.metrics().await;
    common::assert_metrics(
        &metrics,
        &[
            (
                "wasmgate_outbound_requests_total{handler=\"wasi\",result=\"denied\",tenant=\"open\"}",
                3.0,
            ),
            (
                "wasmgate_outbound_requests_total{handler=\"wasi\",result=\"denied\",tenant=\"closed\"}",
                1.0,
            ),
        ],
    );
    // The allowed call still goes through.
    let (status, _) = fetch(&gw, "open.test", &allowed_upstream.url("/"), "").await;
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_name_that_resolves_to_an_internal_address_is_refused() {
    let upstream = Upstream::start(Answer::Hello).await;
    let by_name = format!("http://localhost:{}", upstream.port);
    let gw = TestGateway::start(&wasi_tenant("t", "*", std::slice::from_ref(&by_name), "")).await;
    let (status, body) = fetch(&gw, "a.test", &format!("{by_name}/"), "").await;
    assert_eq!(status, 502);
    assert!(body.contains("DestinationIpProhibited"), "{body}");
    assert_eq!(upstream.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_past_max_outbound_requests_is_refused() {
    let upstream = Upstream::start(Answer::Hello).await;
    let allowed = [format!("http://127.0.0.1:{}", upstream.port)];
    let keys = "limits = { max_outbound_requests = 2 }";
    let gw = TestGateway::start(&wasi_tenant("t", "*", &allowed, keys)).await;
    let (status, body) = fetch(&gw, "a.test", &upstream.url("/"), "&count=3").await;
    assert_eq!(status, 200, "{body}");
    let results: Vec<&str> = body.lines().collect();
    assert_eq!(results, ["201", "201", "denied"]);
    assert_eq!(upstream.connections(), 2);
    // The count is per request.
    let (status, body) = fetch(&gw, "a.test", &upstream.url("/"), "&count=2").await;
    assert_eq!((status, body.as_str()), (200, "201\n201\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_upstream_that_never_answers_ends_at_the_deadline() {
    let upstream = Upstream::start(Answer::Never).await;
    let allowed = [format!("http://127.0.0.1:{}", upstream.port)];
    let keys = "limits = { timeout_ms = 500 }";
    let gw = TestGateway::start(&wasi_tenant("t", "*", &allowed, keys)).await;
    let started = Instant::now();
    // The guest asks for a minute; the request's deadline wins.
    let (status, _) = fetch(
        &gw,
        "a.test",
        &upstream.url("/"),
        "&first_byte_timeout_ms=60000",
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 504);
    assert!(took < Duration::from_millis(500 + 1000), "took {took:?}");
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_waiting_on_an_upstream_hold_no_worker() {
    let upstream = Upstream::start(Answer::Never).await;
    let allowed = [format!("http://127.0.0.1:{}", upstream.port)];
    // The default slots: 4 running and 64 waiting guests per worker.
    let config = format!(
        "[runtime]\nworkers = 2\n{}{}",
        wasi_tenant(
            "waits",
            "waits.test",
            &allowed,
            "limits = { timeout_ms = 5000 }"
        ),
        tenant("other", "other.test", "", &["hello"])
    );
    let gw = Arc::new(TestGateway::start(&config).await);
    let url = upstream.url("/");
    let waiting: Vec<_> = (0..16)
        .map(|_| {
            let gw = Arc::clone(&gw);
            let url = url.clone();
            tokio::spawn(async move { fetch(&gw, "waits.test", &url, "").await })
        })
        .collect();
    common::wait_until("16 guests wait on the upstream", || async {
        upstream.connections() == 16
    })
    .await;
    // Every worker is free for others while 16 guests wait.
    for _ in 0..20 {
        let started = Instant::now();
        let response = gw.get_host("other.test", "/hello").await;
        assert_eq!(response.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "another tenant waited {:?} behind guests waiting on the network",
            started.elapsed()
        );
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        common::metric(&metrics, "wasmgate_guests_alive"),
        Some(16.0),
        "the waiting guests are alive"
    );
    for task in waiting {
        let (status, _) = task.await.expect("task");
        assert_eq!(status, 504);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_head_and_body_are_bounded() {
    let big_head = Upstream::start(Answer::BigHead(200 << 10)).await;
    let big_body = Upstream::start(Answer::BigBody(64 << 20)).await;
    let allowed = [
        format!("http://127.0.0.1:{}", big_head.port),
        format!("http://127.0.0.1:{}", big_body.port),
    ];
    let keys = "limits = { memory_bytes = 16777216, timeout_ms = 10000 }";
    let gw = TestGateway::start(&wasi_tenant("t", "*", &allowed, keys)).await;
    let (status, body) = fetch(&gw, "a.test", &big_head.url("/"), "").await;
    assert_eq!(status, 502);
    assert!(
        body.contains("HeaderSectionSize") || body.contains("ProtocolError"),
        "{body}"
    );
    // The guest reads and discards: the gateway cuts the body off at the
    // guest's memory_bytes (16 MiB) rather than stream 64 MiB through.
    // (wasi:http hands a body's failure to the guest as a stream error
    // without an error code; its text says why.)
    let (status, body) = fetch(&gw, "a.test", &big_body.url("/"), "&discard=1").await;
    assert_eq!(status, 502);
    assert!(body.contains("body size exceeds limit: 16777216"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_outbound_connections_are_bounded() {
    let upstream = Upstream::start(Answer::Never).await;
    let allowed = [format!("http://127.0.0.1:{}", upstream.port)];
    let keys = "limits = { max_outbound_connections = 2, timeout_ms = 3000 }";
    let config = format!(
        "[runtime]\nguests_per_worker = 8\n{}",
        wasi_tenant("t", "*", &allowed, keys)
    );
    let gw = Arc::new(TestGateway::start(&config).await);
    let url = upstream.url("/");
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let gw = Arc::clone(&gw);
            let url = url.clone();
            tokio::spawn(async move { fetch(&gw, "a.test", &url, "").await })
        })
        .collect();
    common::wait_until("two connections are open", || async {
        upstream.connections() == 2
    })
    .await;
    let (status, body) = fetch(&gw, "a.test", &url, "").await;
    assert_eq!(status, 502);
    assert!(body.contains("ConnectionLimitReached"), "{body}");
    assert_eq!(upstream.connections(), 2);
    for holder in holders {
        assert_eq!(holder.await.expect("task").0, 504);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_allowlist_entry_is_a_config_error_naming_its_line() {
    let text = "[[tenant]]\nname = \"t\"\nallowed_outbound_hosts = [\"ftp://x.example\"]\n";
    let error = wasmgate::control::config::Config::parse(
        text,
        std::path::Path::new("gw.toml"),
        std::path::Path::new("."),
    )
    .expect_err("invalid entry");
    let error = error.to_string();
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("allowed_outbound_hosts"), "{error}");
    assert!(error.contains("http or https"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_sets_a_tenants_allowlist_and_refuses_a_bad_one() {
    const ROOT: &str = "root-secret-for-upstream-tests";
    let upstream = Upstream::start(Answer::Hello).await;
    let dir = common::scratch("upstreams-admin");
    let config = common::config_text(&wasi_tenant("t", "*", &[], ""));
    let mut command = common::serve_config(&dir, &config);
    command
        .env("WASMGATE_ADMIN_TOKEN", ROOT)
        .env("RUST_LOG", "warn");
    let gw = common::Served::spawn(&mut command);
    let tenant_url = format!("{}/admin/tenants/t", gw.admin);
    let target = upstream.url("/");
    let encoded =
        percent_encoding::utf8_percent_encode(&target, percent_encoding::NON_ALPHANUMERIC);
    let fetch_url = format!("{}/wasi/fetch?url={encoded}", gw.url);
    let (status, body) = common::get_text(&common::client(), &fetch_url).await;
    assert_eq!((status, body.as_str()), (502, "denied"), "no list: denied");

    let bad = serde_json::json!({ "allowed_outbound_hosts": ["ftp://x.example"] });
    let (status, answer) =
        common::admin_json(reqwest::Method::PUT, &tenant_url, ROOT, Some(bad)).await;
    assert_eq!(status, 400, "{answer}");
    let message = answer.to_string();
    assert!(
        message.contains("ftp://x.example") && message.contains("http or https"),
        "{message}"
    );

    let allowed = upstream.url("");
    let good = serde_json::json!({ "allowed_outbound_hosts": [allowed] });
    let (status, answer) =
        common::admin_json(reqwest::Method::PUT, &tenant_url, ROOT, Some(good)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["allowed_outbound_hosts"][0], allowed.as_str());
    let (status, body) = common::get_text(&common::client(), &fetch_url).await;
    assert_eq!(
        (status, body.as_str()),
        (201, "upstream says hi"),
        "allowed now"
    );

    let none = serde_json::json!({ "allowed_outbound_hosts": [] });
    let (status, _) = common::admin_json(reqwest::Method::PUT, &tenant_url, ROOT, Some(none)).await;
    assert_eq!(status, 200);
    let (status, body) = common::get_text(&common::client(), &fetch_url).await;
    assert_eq!((status, body.as_str()), (502, "denied"), "taken back");
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_component_answers_every_request_under_load() {
    let gw = Arc::new(TestGateway::start(&wasi_tenant("t", "*", &[], "")).await);
    // 16 clients, 50 requests each: a response whose body ends just after
    // the guest returns must still be whole.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let gw = Arc::clone(&gw);
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for _ in 0..50 {
                    let response = gw.get("/wasi/big?bytes=3000").await;
                    let status = response.status().as_u16();
                    let body = response.bytes().await.expect("body");
                    if status != 200 || body.len() != 3000 {
                        failed.push((status, String::from_utf8_lossy(&body).into_owned()));
                    }
                }
                failed
            })
        })
        .collect();
    for client in clients {
        let failed = client.await.expect("client");
        assert!(
            failed.is_empty(),
            "{} failed, e.g. {:?}",
            failed.len(),
            failed.first()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_calls_reuse_its_connections_and_no_other_tenants() {
    let upstream = Upstream::start(Answer::KeepAlive).await;
    let allowed = [format!("http://127.0.0.1:{}", upstream.port)];
    let config = format!(
        "{}{}",
        wasi_tenant("a", "a.test", &allowed, ""),
        wasi_tenant("b", "b.test", &allowed, "")
    );
    let gw = TestGateway::start(&config).await;
    for _ in 0..5 {
        let (status, body) = fetch(&gw, "a.test", &upstream.url("/"), "").await;
        assert_eq!((status, body.as_str()), (201, "upstream says hi"));
    }
    assert_eq!(
        upstream.connections(),
        1,
        "one kept-alive connection for 5 calls"
    );
    let (status, _) = fetch(&gw, "b.test", &upstream.url("/"), "").await;
    assert_eq!(status, 201);
    assert_eq!(
        upstream.connections(),
        2,
        "tenant b does not get tenant a's connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasmgate_call_runs_a_wasi_http_component_with_the_upstreams_it_allows() {
    let upstream = Upstream::start(Answer::Hello).await;
    let target = upstream.url("/");
    let encoded =
        percent_encoding::utf8_percent_encode(&target, percent_encoding::NON_ALPHANUMERIC);
    let path = format!("/fetch?url={encoded}");
    let call = move |allow: Option<String>| {
        let mut command = std::process::Command::new(common::BIN);
        command.args([
            "call",
            components::require(components::WASI_HELLO),
            "--path",
            &path,
        ]);
        if let Some(allow) = allow {
            command.args(["--allow-outbound", &allow]);
        }
        let output = command.output().expect("run wasmgate call");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let output = tokio::task::spawn_blocking(move || {
        (
            call(None),
            call(Some(upstream.url(""))),
            upstream.connections(),
        )
    })
    .await
    .expect("calls");
    let (denied, allowed, connections) = output;
    assert!(
        denied.starts_with("HTTP/1.1 502") && denied.ends_with("denied"),
        "{denied}"
    );
    assert!(
        allowed.starts_with("HTTP/1.1 201") && allowed.ends_with("upstream says hi"),
        "{allowed}"
    );
    assert_eq!(connections, 1);
}
