//! The real gateway on `127.0.0.1:0`, spoken to over real HTTP: the happy
//! paths, the statuses of the README, the metrics they leave, the queue's
//! order and the sandbox's promises.
//!
//! Nothing here depends on how fast the machine is. Where a test needs
//! requests to wait in the queue it holds the worker with a sleeping guest
//! ([`Hold`]) and observes the queue through `/metrics`; an attempt whose
//! hold ran out before the scenario was in place is repeated with a longer
//! hold ([`with_hold`]), never judged.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    Hold, TestGateway, assert_metrics, demo, handler, metric, raw_exchange, report, requests,
    require_metric, tenant, with_hold,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ERROR: &str = "x-wasmgate-error";

/// The `state` handler's `tag` in a fresh instance (`INITIAL_TAG` in
/// `handlers/state`, which a cdylib cannot export to Rust).
const STATE_INITIAL_TAG: u64 = 0x5EED_F00D;
/// Pages the `state` handler grows its memory by on every request.
const STATE_GROW_PAGES: u64 = 64;

/// A tenant on Host `hold.test` whose `/faults/sleep` requests hold a
/// worker (see [`Hold`]); its deadline is far beyond the longest hold.
fn hold_tenant() -> String {
    tenant(
        "hold",
        "hold.test",
        "limits = { timeout_ms = 600000 }",
        &["faults"],
    )
}

/// A tenant on `HOST` named `name` whose faults handler has `limits`.
fn faults_tenant(name: &str, host: &str, limits: &str) -> String {
    tenant(name, host, &format!("limits = {{ {limits} }}"), &["faults"])
}

#[tokio::test]
async fn serves_hello_echo_and_404() {
    let gw = TestGateway::start(&demo("")).await;

    let response = gw.get("/hello").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("body"),
        "howdy from wasmgate: hello\n",
        "the greeting config reaches the guest"
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
    assert!(body.starts_with("POST /echo/sub?x=1\n"), "{body}");
    assert!(body.contains("\nx-test: yes\n"), "{body}");
    assert!(body.ends_with("\n\nping body"), "{body}");

    let response = gw.post("/echo", "").await;
    assert_eq!(response.status(), 204, "an empty body gives 204");
    let remaining: u64 = response.headers()["x-fuel-remaining"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number");
    // The documented default budget, written out.
    let budget = 1_000_000_000;
    assert!(
        remaining > 0 && remaining < budget,
        "the guest sees its fuel being used: {remaining} of {budget}"
    );

    let response = gw.get("/nowhere").await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()[ERROR], "no_route");
    let reason = response.text().await.expect("body");
    assert!(
        reason.ends_with('\n') && reason.lines().count() == 1,
        "a one-line reason: {reason:?}"
    );

    // The loop's exact result, computed natively by the same code.
    for iters in [1000, 1001] {
        let response = gw.get(&format!("/cpu?iters={iters}")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.text().await.expect("body"),
            format!("{}\n", cpu_work::spin(iters))
        );
    }
    let response = gw.get("/cpu?iters=lots").await;
    assert_eq!(response.status(), 400);
    assert!(
        response.headers().get(ERROR).is_none(),
        "the guest's own 400"
    );

    // Every request is answered, so every worker is idle again.
    gw.wait_for_metric("wasmgate_workers_busy", |v| v == 0.0)
        .await;
    let text = gw.metrics().await;
    let value = |sample: &str| require_metric(&text, sample);
    let counts = [
        (requests("hello", 200, "demo"), 1.0),
        (requests("echo", 200, "demo"), 1.0),
        (requests("echo", 204, "demo"), 1.0),
        (requests("cpu", 200, "demo"), 2.0),
        (requests("cpu", 400, "demo"), 1.0),
        (requests("", 404, ""), 1.0),
    ];
    for (sample, want) in &counts {
        assert_eq!(value(sample), *want, "{sample} in\n{text}");
    }
    assert_metrics(
        &text,
        &[
            (
                r#"wasmgate_request_duration_seconds_count{handler="cpu",tenant="demo"}"#,
                3.0,
            ),
            (
                r#"wasmgate_fuel_consumed_count{handler="hello",tenant="demo"}"#,
                1.0,
            ),
            (
                r#"wasmgate_guest_events_total{handler="hello",name="hello_requests",tenant="demo"}"#,
                1.0,
            ),
            // One fresh instance per request that reached a guest: 1 + 2 + 3.
            ("wasmgate_instantiation_duration_seconds_count", 6.0),
            ("wasmgate_queue_depth", 0.0),
            ("wasmgate_handlers_loaded", 4.0),
            (r#"wasmgate_handler_loads_total{result="ok"}"#, 4.0),
        ],
    );
    assert!(value(r#"wasmgate_request_duration_seconds_sum{handler="hello",tenant="demo"}"#) > 0.0);
    assert!(value("wasmgate_instantiation_duration_seconds_sum") > 0.0);
    // Fuel is about one unit per instruction: the loop's 1000 and 1001
    // rounds cost more than a unit each, and the echo guest had used at
    // least what it saw missing from its budget.
    assert!(value(r#"wasmgate_fuel_consumed_sum{handler="cpu",tenant="demo"}"#) > 2001.0);
    assert!(
        value(r#"wasmgate_fuel_consumed_sum{handler="echo",tenant="demo"}"#)
            >= (budget - remaining) as f64
    );
    assert!(value("process_resident_memory_bytes") > 0.0);
    assert!(value("process_open_fds") > 0.0);
    gw.shutdown().await;
}

/// Each fault gives its README status and code, is counted by trap kind,
/// and leaves the gateway serving hello.
#[tokio::test]
async fn every_fault_gets_its_status_and_hello_still_works() {
    // The deadline is far away, so only the fault itself can end a
    // request; the loop runs out of its tenant's small fuel budget.
    let limits = "[limits]\ntimeout_ms = 600000\nmemory_bytes = 16777216\n";
    let lowfuel = faults_tenant("lowfuel", "fuel.test", "fuel = 2000000");
    let state = handler("state", "/state", "{state}");
    let gw = TestGateway::start(&(demo(&format!("{limits}{lowfuel}")) + &state)).await;
    let table = [
        (
            "x",
            "/faults/panic",
            500,
            "trap",
            "demo",
            "faults",
            "unreachable",
        ),
        ("x", "/faults/oom", 500, "trap", "demo", "faults", "memory"),
        (
            "x",
            "/faults/stack",
            500,
            "trap",
            "demo",
            "faults",
            "stack_overflow",
        ),
        (
            "x",
            "/faults/badstatus",
            502,
            "bad_response",
            "demo",
            "faults",
            "",
        ),
        // A component cannot exit a process: neither a panic nor a limit.
        ("x", "/state?exit=3", 500, "trap", "demo", "state", "other"),
        (
            "fuel.test",
            "/faults/loop",
            503,
            "fuel_exhausted",
            "lowfuel",
            "faults",
            "fuel_exhausted",
        ),
    ];
    for (host, path, status, code, tenant, handler, kind) in table {
        let response = gw.get_host(host, path).await;
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(response.headers()[ERROR], code, "{path}");
        let hello = gw.get("/hello").await;
        assert_eq!(hello.status(), 200, "hello after {path}");
        if !kind.is_empty() {
            let sample = format!(
                r#"wasmgate_guest_traps_total{{handler="{handler}",kind="{kind}",tenant="{tenant}"}}"#
            );
            assert_eq!(require_metric(&gw.metrics().await, &sample), 1.0, "{path}");
        }
    }
    let text = gw.metrics().await;
    let faults = requests("faults", 500, "demo");
    assert_metrics(
        &text,
        &[(&faults, 3.0), (&requests("hello", 200, "demo"), 6.0)],
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_endless_loop_is_stopped_by_fuel_or_by_the_deadline() {
    // Each tenant has one limit that can end the loop: a small fuel budget
    // with a deadline no machine reaches first, or a deadline with fuel no
    // machine burns through first.
    let gw = TestGateway::start(&demo(&format!(
        "{}{}",
        faults_tenant(
            "lowfuel",
            "fuel.test",
            "fuel = 2000000, timeout_ms = 600000"
        ),
        faults_tenant(
            "slow",
            "slow.test",
            "fuel = 1000000000000000, timeout_ms = 300"
        ),
    )))
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
    assert_metrics(
        &text,
        &[
            (
                r#"wasmgate_guest_traps_total{handler="faults",kind="timeout",tenant="slow"}"#,
                1.0,
            ),
            (&requests("faults", 504, "slow"), 1.0),
            (
                r#"wasmgate_guest_traps_total{handler="faults",kind="fuel_exhausted",tenant="lowfuel"}"#,
                1.0,
            ),
        ],
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let gw = TestGateway::start(&demo("[server]\nmax_body_bytes = 1024")).await;

    // Declared too large.
    let response = gw.post("/echo", vec![b'x'; 2048]).await;
    assert_eq!(response.status(), 413);
    assert_eq!(response.headers()[ERROR], "body_too_large");

    // Chunked, so only counting the bytes can catch it.
    let mut stream = tokio::net::TcpStream::connect(gw.address())
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
    let response = gw.post("/echo", vec![b'z'; 1024]).await;
    assert_eq!(response.status(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_malformed_body_gets_400_bad_request() {
    let gw = TestGateway::start(&demo("")).await;
    // `zz` is not a chunk size.
    let answer = raw_exchange(
        gw.address(),
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-wasmgate-error: bad_request"),
        "{answer}"
    );
    gw.shutdown().await;
}

/// What [`tenant_concurrency_and_a_full_queue_give_503_overloaded`] saw.
struct Overload {
    /// The answer to a request of the tenant whose only slot was held.
    tenant_full: reqwest::Response,
    /// The answer to a request that found the one-place queue full.
    queue_full: reqwest::Response,
    /// The request holding the slot and the worker, answered later.
    hold: Hold,
    /// The request that filled the queue, served once the hold ends.
    queued: tokio::task::JoinHandle<Option<reqwest::StatusCode>>,
    /// The gateway, kept for its metrics.
    gw: TestGateway,
}

#[tokio::test]
async fn tenant_concurrency_and_a_full_queue_give_503_overloaded() {
    let seen = with_hold(|hold| async move {
        let gw = TestGateway::start(&demo(&format!(
            "[runtime]\nworkers = 1\nguests_per_worker = 1\nwaiting_guests_per_worker = 0\nqueue_depth = 1\n\
             [limits]\ntimeout_ms = 600000\n{}",
            faults_tenant("narrow", "hold.test", "max_concurrency = 1"),
        )))
        .await;
        // Takes the tenant's only slot and the only worker.
        let hold = Hold::start(&gw, "hold.test", hold);
        if !gw
            .wait_for_metric_while("wasmgate_workers_busy", |v| v >= 1.0, || hold.holding())
            .await
        {
            return None;
        }
        let tenant_full = gw.get_host("hold.test", "/faults/panic").await;
        // The worker is busy: one request fills the queue, the next is shed.
        let queued = tokio::spawn({
            let client = gw.client.clone();
            let url = format!("{}/hello", gw.url);
            async move { client.get(url).send().await.ok().map(|r| r.status()) }
        });
        if !gw
            .wait_for_metric_while("wasmgate_queue_depth", |v| v >= 1.0, || hold.holding())
            .await
        {
            return None;
        }
        let queue_full = gw.get("/hello").await;
        // Both answers came while the hold still had the slot and the
        // worker; otherwise they prove nothing.
        hold.holding().then_some(Overload {
            tenant_full,
            queue_full,
            hold,
            queued,
            gw,
        })
    })
    .await;

    assert_eq!(seen.tenant_full.status(), 503, "tenant at max_concurrency");
    assert_eq!(seen.tenant_full.headers()[ERROR], "overloaded");
    assert_eq!(seen.tenant_full.headers()["retry-after"], "1");
    assert_eq!(seen.queue_full.status(), 503, "worker queue full");
    assert_eq!(seen.queue_full.headers()[ERROR], "overloaded");
    assert_eq!(seen.queue_full.headers()["retry-after"], "1");
    // Shedding lost nothing that was admitted.
    assert_eq!(seen.hold.status().await, 200);
    assert_eq!(
        seen.queued.await.expect("queued task"),
        Some(reqwest::StatusCode::OK)
    );
    let text = seen.gw.metrics().await;
    let (shed, served) = (
        requests("hello", 503, "demo"),
        requests("hello", 200, "demo"),
    );
    let narrow = requests("faults", 503, "narrow");
    assert_metrics(&text, &[(&shed, 1.0), (&served, 1.0), (&narrow, 1.0)]);
    seen.gw.shutdown().await;
}

/// One worker running one guest at a time, and deadlines far beyond any
/// hold.
const ONE_WORKER: &str = "[runtime]\nworkers = 1\nguests_per_worker = 1\nwaiting_guests_per_worker = 0\n[limits]\ntimeout_ms = 600000\n";

/// One `state` response: where it was routed and what it reported.
struct Served {
    /// The request's Host and path.
    label: String,
    /// The `state` handler's report.
    report: BTreeMap<String, String>,
}

impl Served {
    /// The wall clock when the guest began, ns since the epoch: with one
    /// worker, the order in which the queue handed requests out.
    fn started(&self) -> u128 {
        self.report["wall_ns"].parse().expect("wall_ns is a number")
    }
}

/// Queues `requests` (Host, path) one at a time behind a hold on the only
/// worker, each after the one before is seen in the queue, so their
/// arrival order is known; then lets the hold end and returns the answers
/// in the order the worker served them. `None` if the hold ended before
/// all were queued. The gateway has one worker, [`hold_tenant`] and
/// `tenants`.
async fn serve_in_queue_order(
    tenants: &str,
    requests: &[(&str, &str)],
    hold: Duration,
) -> Option<Vec<Served>> {
    let gw = TestGateway::start(&format!("{ONE_WORKER}{}{tenants}", hold_tenant())).await;
    let hold = Hold::start(&gw, "hold.test", hold);
    if !gw
        .wait_for_metric_while("wasmgate_workers_busy", |v| v >= 1.0, || hold.holding())
        .await
    {
        return None;
    }
    let mut answers = Vec::new();
    for (i, (host, path)) in requests.iter().enumerate() {
        let request = gw
            .client
            .get(format!("{}{path}", gw.url))
            .header("host", *host);
        let label = format!("{host}{path}");
        answers.push(tokio::spawn(async move {
            let response = request.send().await.expect("queued request");
            assert_eq!(response.status(), 200, "{label}");
            let report = report(&response.text().await.expect("body"));
            Served { label, report }
        }));
        let queued = (i + 1) as f64;
        if !gw
            .wait_for_metric_while("wasmgate_queue_depth", |v| v >= queued, || hold.holding())
            .await
        {
            return None;
        }
    }
    // Everything was queued at once while the worker was held.
    assert_eq!(hold.status().await, 200);
    let mut served = Vec::new();
    for answer in answers {
        served.push(answer.await.expect("request task"));
    }
    served.sort_by_key(Served::started);
    gw.wait_for_metric("wasmgate_queue_depth", |v| v == 0.0)
        .await;
    gw.shutdown().await;
    Some(served)
}

/// README: tenants are served in turn, then each tenant's handlers in
/// turn, each handler's requests in arrival order. Checked by the order in
/// which the guests ran (their wall clock, one worker), not by timing.
#[tokio::test]
async fn the_queue_serves_tenants_then_handlers_in_turn_each_in_arrival_order() {
    let tenants = [
        tenant("one", "one.test", "", &[]),
        handler("x", "/x", "{state}"),
        handler("y", "/y", "{state}"),
        tenant("two", "two.test", "", &[]),
        handler("z", "/z", "{state}"),
    ]
    .concat();
    let requests = [
        ("one.test", "/x?1"),
        ("one.test", "/x?2"),
        ("one.test", "/x?3"),
        ("one.test", "/x?4"),
        ("one.test", "/y?1"),
        ("one.test", "/y?2"),
        ("two.test", "/z?1"),
        ("two.test", "/z?2"),
        ("two.test", "/z?3"),
    ];
    let served = with_hold(|hold| serve_in_queue_order(&tenants, &requests, hold)).await;
    let order: Vec<&str> = served.iter().map(|s| s.label.as_str()).collect();
    // Tenants alternate while both wait (one, two, one, ...); tenant one's
    // turns alternate x and y; each handler keeps its arrival order.
    assert_eq!(
        order,
        [
            "one.test/x?1",
            "two.test/z?1",
            "one.test/y?1",
            "two.test/z?2",
            "one.test/x?2",
            "two.test/z?3",
            "one.test/y?2",
            "one.test/x?3",
            "one.test/x?4",
        ]
    );
}

/// README: a flooded handler delays others by about one of its requests,
/// not by its whole backlog.
#[tokio::test]
async fn a_flooded_handler_does_not_make_others_wait_for_its_backlog() {
    let bulk = handler("bulk", "/bulk", "{state}");
    let quick = handler("quick", "/quick", "{state}");
    let tenants = format!("{}{bulk}{quick}", tenant("demo", "", "", &[]));
    let mut requests = vec![("x", "/bulk"); 12];
    requests.push(("x", "/quick"));
    let served = with_hold(|hold| serve_in_queue_order(&tenants, &requests, hold)).await;
    let quick_at = served
        .iter()
        .position(|s| s.label == "x/quick")
        .expect("quick was served");
    assert!(
        quick_at <= 1,
        "/quick was served after {quick_at} of the 12 /bulk requests queued before it"
    );
}

/// The metric families of the README's metrics table.
fn documented_families() -> Vec<String> {
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(readme).expect("read README.md");
    // The cluster mode's gauges are checked by the cluster tests.
    let families: Vec<String> = readme
        .lines()
        .filter(|line| !line.contains("cluster mode only"))
        .filter_map(|line| line.strip_prefix("| `wasmgate_")?.split_once('`'))
        .map(|(rest, _)| format!("wasmgate_{rest}"))
        .collect();
    assert!(
        families.len() > 20,
        "the README's metrics table: {families:?}"
    );
    families
}

/// The exposition must pass `promtool check metrics` (which
/// `cargo xtask test` installs), with every family the README lists
/// present.
#[tokio::test]
async fn metrics_pass_promtool() {
    // A tenant whose guest may call port 1 of loopback, where nothing
    // listens: its calls fail after reaching the network.
    let upstreams = format!(
        "{}{}",
        common::tenant(
            "w",
            "w.test",
            "allowed_outbound_hosts = [\"http://127.0.0.1:1\"]",
            &[]
        ),
        common::handler("wasi", "/wasi", "{wasi_hello}")
    );
    // A default certificate, so its expiry gauge appears.
    let certificate = common::tls::Ca::new()
        .leaf(&["default.test"])
        .write(&common::scratch("metrics-promtool"), "default");
    let server = format!("[server]\ntls_default = {certificate}\n");
    let gw = TestGateway::start(&(demo(&server) + &upstreams)).await;
    // Families with labels appear once something is counted under them:
    // a guest counter, histogram, trap, dropped metric and dropped log
    // line, an upstream call, and an admin request (refused: no root
    // token here).
    for path in [
        "/hello",
        "/echo",
        "/faults/panic",
        "/faults/metrics",
        "/faults/logflood?n=2000",
        "/nowhere",
        "/cpu?iters=10",
    ] {
        gw.get(path).await;
    }
    let response = gw
        .get_host("w.test", "/wasi/fetch?url=http%3A%2F%2F127.0.0.1%3A1%2F")
        .await;
    assert_eq!(response.status(), 502, "nothing listens on port 1");
    common::get_text(&gw.client, &format!("{}/admin/tenants", gw.admin)).await;
    let text = gw.metrics().await;
    for family in documented_families() {
        let declared = format!("# TYPE {family} ");
        assert!(
            text.lines().any(|line| line.starts_with(&declared)),
            "{family} is missing:\n{text}"
        );
    }
    common::promtool_accepts(&text);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_guest_metric_flood_is_capped() {
    let gw = TestGateway::start(&demo("")).await;
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
    // The README's number, not the code's constant.
    assert_eq!(series, 64);
    // Each request: 5000 names of which 4936 are over the cap, and 3
    // invalid names.
    let dropped = r#"wasmgate_guest_metrics_dropped_total{handler="faults",tenant="demo"}"#;
    assert_metrics(&text, &[(dropped, 2.0 * (4936.0 + 3.0))]);
    assert_eq!(
        metric(
            &text,
            r#"wasmgate_guest_events_total{handler="faults",name="flood_0",tenant="demo"}"#
        ),
        Some(2.0)
    );
    gw.shutdown().await;
}

/// README: names match `[a-z_][a-z0-9_]*` and are at most 64 bytes;
/// anything else is dropped and counted.
#[tokio::test]
async fn guest_metric_names_follow_the_documented_rules() {
    let gw = TestGateway::start(&tenant("demo", "", "", &["state"])).await;
    let longest = "a".repeat(64);
    let too_long = "a".repeat(65);
    let accepted = ["_x", "a1_b2", longest.as_str()];
    let refused = ["1a", "Bad", "a-b", "a.b", too_long.as_str()];
    for name in accepted.iter().chain(&refused) {
        let response = gw.get(&format!("/state?metric={name}")).await;
        assert_eq!(response.status(), 200, "{name}");
    }
    let text = gw.metrics().await;
    for name in accepted {
        let sample = format!(
            r#"wasmgate_guest_events_total{{handler="state",name="{name}",tenant="demo"}}"#
        );
        assert_eq!(metric(&text, &sample), Some(1.0), "{name} is kept");
    }
    for name in refused {
        assert!(
            !text.contains(&format!("name=\"{name}\"")),
            "{name} is dropped"
        );
    }
    let dropped = r#"wasmgate_guest_metrics_dropped_total{handler="state",tenant="demo"}"#;
    assert_metrics(&text, &[(dropped, refused.len() as f64)]);
    gw.shutdown().await;
}

/// README: guest histograms use Prometheus' default buckets and record the
/// values the guest observes.
#[tokio::test]
async fn guest_histograms_record_values_in_the_default_buckets() {
    let gw = TestGateway::start(&demo("")).await;
    // The cpu handler observes its iteration count.
    for iters in [0, 3, 10] {
        assert_eq!(gw.get(&format!("/cpu?iters={iters}")).await.status(), 200);
    }
    let text = gw.metrics().await;
    let series = r#"handler="cpu",name="cpu_iterations",tenant="demo""#;
    assert_eq!(
        require_metric(&text, &format!("wasmgate_guest_values_sum{{{series}}}")),
        13.0
    );
    assert_eq!(
        require_metric(&text, &format!("wasmgate_guest_values_count{{{series}}}")),
        3.0
    );
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter(|l| l.starts_with("wasmgate_guest_values_bucket{") && l.contains(series))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_owned();
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let want = [
        ("0.005", 1.0),
        ("0.01", 1.0),
        ("0.025", 1.0),
        ("0.05", 1.0),
        ("0.1", 1.0),
        ("0.25", 1.0),
        ("0.5", 1.0),
        ("1", 1.0),
        ("2.5", 1.0),
        ("5", 2.0),
        ("10", 3.0),
        ("+Inf", 3.0),
    ];
    let want: Vec<(String, f64)> = want.iter().map(|(le, n)| ((*le).to_owned(), *n)).collect();
    assert_eq!(buckets, want, "{text}");
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_get_431_and_slow_clients_are_cut_off() {
    let gw = TestGateway::start(&demo("[server]\nheader_read_timeout_ms = 200")).await;
    let address = gw.address();

    let mut huge = b"GET /hello HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    // The server may stop reading and answer before all is written.
    let _ = stream.write_all(&huge).await;
    let mut head = vec![0; 12];
    stream.read_exact(&mut head).await.expect("status line");
    assert_eq!(&head, b"HTTP/1.1 431");

    // Half a request line, then silence: closed by the header read timeout.
    let started = Instant::now();
    let answer = raw_exchange(address, b"GET /hel").await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A bound 20 times the configured 200 ms, and still below the 5 s
    // default: the configured value is the one in force.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        started.elapsed()
    );

    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    // The header timeout is far longer than the idle timeout, so only the
    // idle timeout can close the connection within the margin below.
    let gw = TestGateway::start(&demo(
        "[server]\nheader_read_timeout_ms = 30000\nidle_timeout_ms = 200",
    ))
    .await;
    let started = Instant::now();
    let answer = raw_exchange(gw.address(), b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n").await;
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

/// Connections waiting in the kernel's accept queue of the IPv4 listener on
/// `port` (Linux: a listening socket's `rx_queue` in `/proc/net/tcp`).
fn accept_queue(port: u16) -> u32 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address, remote address, state (0A: listening), queues.
            let listening = fields.get(1)?.ends_with(&local) && *fields.get(3)? == "0A";
            let queues = fields.get(4).filter(|_| listening)?;
            u32::from_str_radix(queues.split(':').nth(1)?, 16).ok()
        })
        .unwrap_or_else(|| panic!("no listener on port {port} in /proc/net/tcp:\n{table}"))
}

#[tokio::test]
async fn connections_over_max_connections_wait_instead_of_being_refused() {
    let gw = TestGateway::start(&demo("[server]\nmax_connections = 1")).await;
    let address = gw.address();
    let port: u16 = address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let request = b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n";

    // The first connection takes the only slot and stays open.
    let mut first = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    // One request and its whole answer (which ends with hello's body).
    let round_trip = async |stream: &mut tokio::net::TcpStream| {
        stream.write_all(request).await.expect("write");
        let mut answer = Vec::new();
        while !answer.ends_with(b"howdy from wasmgate: hello\n") {
            let mut chunk = [0; 512];
            let n = stream.read(&mut chunk).await.expect("answer");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    };
    round_trip(&mut first).await;

    // The second connection is accepted by the kernel and waits in its
    // accept queue, its request unanswered...
    let mut second = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    second.write_all(request).await.expect("write");
    let deadline = Instant::now() + Duration::from_secs(20);
    while accept_queue(port) == 0 {
        assert!(
            Instant::now() < deadline,
            "the second connection never queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...while the gateway keeps serving the first, so it has had every
    // chance to accept the second had it been allowed to.
    for _ in 0..20 {
        round_trip(&mut first).await;
    }
    assert_eq!(
        accept_queue(port),
        1,
        "the second connection is still queued"
    );
    let mut byte = [0u8; 1];
    assert!(
        matches!(second.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the second connection was answered while the first held the only slot"
    );
    let accepted = "wasmgate_connections_accepted_total";
    assert_metrics(&gw.metrics().await, &[(accepted, 1.0)]);

    // ...and is served once the first goes away.
    drop(first);
    let mut head = vec![0; 12];
    tokio::time::timeout(Duration::from_secs(20), second.read_exact(&mut head))
        .await
        .expect("served after the first closed")
        .expect("read");
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_metrics(&gw.metrics().await, &[(accepted, 2.0)]);
    gw.shutdown().await;
}

#[tokio::test]
async fn connection_metrics_count_every_connection() {
    let gw = TestGateway::start(&demo("")).await;
    let address = gw.address();
    for _ in 0..3 {
        let answer = raw_exchange(
            address,
            b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }
    // The gateway counts a close once the connection's task has ended,
    // which may come just after the client saw the end of the stream.
    gw.wait_for_metric("wasmgate_connections_closed_total", |v| v == 3.0)
        .await;
    let (accepted, active) = (
        "wasmgate_connections_accepted_total",
        "wasmgate_connections_active",
    );
    assert_metrics(&gw.metrics().await, &[(accepted, 3.0), (active, 0.0)]);

    // An open keep-alive connection is active until it goes away.
    let mut open = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    open.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut head = vec![0; 12];
    open.read_exact(&mut head).await.expect("answer");
    assert_eq!(&head, b"HTTP/1.1 200");
    gw.wait_for_metric("wasmgate_connections_active", |v| v == 1.0)
        .await;
    let closed = "wasmgate_connections_closed_total";
    assert_metrics(&gw.metrics().await, &[(accepted, 4.0), (closed, 3.0)]);
    drop(open);
    gw.wait_for_metric(closed, |v| v == 4.0).await;
    assert_metrics(&gw.metrics().await, &[(active, 0.0)]);
    gw.shutdown().await;
}

/// README: `wasmgate_request_duration_seconds` runs from routing to
/// response, queueing included; `wasmgate_workers_busy` counts workers
/// running guest code, and goes back to 0.
#[tokio::test]
async fn request_duration_includes_queueing_and_busy_workers_are_counted() {
    let (gw, queued, hold) = with_hold(|hold| async move {
        let runtime =
            "[runtime]\nworkers = 1\nguests_per_worker = 1\nwaiting_guests_per_worker = 0\n";
        let gw = TestGateway::start(&demo(&format!("{runtime}{}", hold_tenant()))).await;
        let hold = Hold::start(&gw, "hold.test", hold);
        if !gw
            .wait_for_metric_while("wasmgate_workers_busy", |v| v == 1.0, || hold.holding())
            .await
        {
            return None;
        }
        let queued = tokio::spawn({
            let client = gw.client.clone();
            let url = format!("{}/hello", gw.url);
            async move { client.get(url).send().await.ok().map(|r| r.status()) }
        });
        if !gw
            .wait_for_metric_while("wasmgate_queue_depth", |v| v == 1.0, || hold.holding())
            .await
        {
            return None;
        }
        // /hello was routed by now and cannot run before the hold ends, so
        // it waited at least what is left of the hold: at least half of it
        // if we got here in the first half.
        let half_left = hold.holding_for(hold.hold() / 2);
        half_left.then_some((gw, queued, hold))
    })
    .await;
    let least = hold.hold().as_secs_f64() / 2.0;
    assert_eq!(hold.status().await, 200);
    assert_eq!(
        queued.await.expect("queued task"),
        Some(reqwest::StatusCode::OK)
    );
    gw.wait_for_metric("wasmgate_workers_busy", |v| v == 0.0)
        .await;
    let text = gw.metrics().await;
    let hello = r#"handler="hello",tenant="demo""#;
    assert_eq!(
        require_metric(
            &text,
            &format!("wasmgate_request_duration_seconds_count{{{hello}}}")
        ),
        1.0
    );
    let waited = require_metric(
        &text,
        &format!("wasmgate_request_duration_seconds_sum{{{hello}}}"),
    );
    assert!(
        waited >= least,
        "/hello counted {waited} s, queued at least {least} s"
    );
    assert_eq!(require_metric(&text, "wasmgate_queue_depth"), 0.0);
    gw.shutdown().await;
}

/// README: `wasmgate_handler_loads_total` counts loads by result. A
/// failed load stops the server from starting, so it is observed through
/// the library, on the registry `serve` builds.
#[test]
fn handler_load_errors_are_counted() {
    use wasmgate::control::config::Config;
    use wasmgate::control::registry::Registry;
    use wasmgate::metrics::Metrics;

    // A valid component that exports nothing: read, compiled, refused.
    let data_dir = common::data_dir();
    let bad = data_dir.join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x0d\0\x01\0").expect("write");
    let text = tenant("t", "", "", &[]) + &handler("bad", "/bad", &bad.display().to_string());
    let mut config =
        Config::parse(&text, "test.toml".as_ref(), ".".as_ref()).expect("valid config");
    config.runtime.data_dir = data_dir;
    let runtime = wasmgate::control::runtime_for(&config).expect("runtime");
    let metrics = Arc::new(Metrics::new());
    let error = Registry::from_config(&config, &runtime, &metrics, None).expect_err("bad handler");
    assert!(error.to_string().contains("handler \"bad\""), "{error}");
    let text = metrics.render();
    assert_eq!(
        require_metric(&text, r#"wasmgate_handler_loads_total{result="error"}"#),
        1.0
    );
    assert_eq!(
        metric(&text, r#"wasmgate_handler_loads_total{result="ok"}"#),
        None,
        "a failed load is not counted as ok"
    );
}

/// README: `limits.memory_bytes` caps each instance's linear memory, per
/// tenant. The `state` guest starts at about 1 MiB and grows its memory by
/// 4 MiB on every request, which fits in 8 MiB but not in 4.
#[tokio::test]
async fn the_memory_limit_is_the_configured_one() {
    let mut template = String::new();
    for (name, mib) in [("small", 4), ("large", 8)] {
        let limits = format!("limits = {{ memory_bytes = {} }}", mib << 20);
        template.push_str(&tenant(name, &format!("{name}.test"), &limits, &["state"]));
    }
    let gw = TestGateway::start(&template).await;
    let grown = async |host: &str| {
        let response = gw.get_host(host, "/state").await;
        assert_eq!(response.status(), 200, "{host}");
        let seen = report(&response.text().await.expect("body"));
        let number = |key: &str| -> u64 { seen[key].parse().expect("a number") };
        (number("pages"), number("pages_after"))
    };
    let (pages, after) = grown("large.test").await;
    assert!(
        pages + STATE_GROW_PAGES <= 8 * 16 && pages + STATE_GROW_PAGES > 4 * 16,
        "the guest starts at {pages} pages: 4 MiB more must fit in 8 MiB, not in 4"
    );
    assert_eq!(after, pages + STATE_GROW_PAGES, "8 MiB allow the growth");
    let (pages, after) = grown("small.test").await;
    assert_eq!(after, pages, "4 MiB refuse the growth");
    gw.shutdown().await;
}

/// README: `runtime.consume_fuel = false` stops enforcing `limits.fuel`;
/// the deadline and the memory limit still apply.
#[tokio::test]
async fn without_fuel_metering_the_deadline_and_memory_limit_still_apply() {
    let template = |consume_fuel: bool| {
        demo(&format!(
            "[runtime]\nconsume_fuel = {consume_fuel}\n\
             [limits]\nfuel = 1000\ntimeout_ms = 600000\nmemory_bytes = 16777216\n{}",
            faults_tenant("slow", "slow.test", "timeout_ms = 300"),
        ))
    };
    // With metering, 1000 units are too few for any request.
    let metered = TestGateway::start(&template(true)).await;
    let response = metered.get("/hello").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()[ERROR], "fuel_exhausted");
    metered.shutdown().await;

    let gw = TestGateway::start(&template(false)).await;
    let response = gw.get("/cpu?iters=1000000").await;
    assert_eq!(response.status(), 200, "fuel is not enforced");
    assert_eq!(
        response.text().await.expect("body"),
        format!("{}\n", cpu_work::spin(1_000_000))
    );
    let response = gw.get_host("slow.test", "/faults/loop").await;
    assert_eq!(response.status(), 504, "the deadline still applies");
    assert_eq!(response.headers()[ERROR], "timeout");
    let response = gw.get("/faults/oom").await;
    assert_eq!(response.status(), 500, "the memory limit still applies");
    assert_eq!(response.headers()[ERROR], "trap");
    assert_eq!(
        require_metric(
            &gw.metrics().await,
            r#"wasmgate_guest_traps_total{handler="faults",kind="memory",tenant="demo"}"#
        ),
        1.0
    );
    gw.shutdown().await;
}

/// README: guest code never runs on the async threads, so CPU-heavy
/// handlers cannot starve the accept loop or `/metrics`.
#[tokio::test]
async fn cpu_heavy_guests_cannot_starve_the_accept_loop_or_metrics() {
    with_hold(|hold| async move {
        // Endless loops with huge fuel, ended by a deadline as long as the
        // hold: every worker spins until then (one guest per worker, so the
        // two loops cannot share a worker and leave the other idle).
        let limits = format!("fuel = 1000000000000000, timeout_ms = {}", hold.as_millis());
        let spin = faults_tenant("spin", "hold.test", &limits);
        let gw = TestGateway::start(&format!(
            "[runtime]\nworkers = 2\nguests_per_worker = 1\n{spin}"
        ))
        .await;
        let spinners: Vec<Hold> = (0..2)
            .map(|_| Hold::start_path(&gw, "hold.test", "/faults/loop", hold))
            .collect();
        let first = &spinners[0];
        if !gw
            .wait_for_metric_while("wasmgate_workers_busy", |v| v == 2.0, || first.holding())
            .await
        {
            return None;
        }
        // A new connection is accepted and answered, and /metrics too.
        let response = gw.get("/nowhere").await;
        assert_eq!(response.status(), 404);
        let text = gw.metrics().await;
        if !first.holding() {
            return None;
        }
        assert_eq!(require_metric(&text, "wasmgate_workers_busy"), 2.0);
        for spinner in spinners {
            assert_eq!(spinner.status().await, 504);
        }
        Some(())
    })
    .await;
}

/// README: WASI is linked with no files, no environment and no network.
/// The guest dials a listener this test opened, so a sandbox that let it
/// out would be seen to connect.
#[tokio::test]
async fn guests_get_no_files_environment_or_network() {
    let gw = TestGateway::start(&demo("")).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let address = listener.local_addr().expect("address");
    let response = gw.get(&format!("/faults/wasi?tcp={address}")).await;
    assert_eq!(response.status(), 200);
    let seen = report(&response.text().await.expect("body"));
    for (key, want) in [
        ("env", "0"),
        ("args", "0"),
        ("read_dir", "false"),
        ("read_file", "false"),
        ("tcp", "false"),
        ("dns", "false"),
        // Clocks are all a guest gets.
        ("clock", "true"),
    ] {
        assert_eq!(
            seen.get(key).map(String::as_str),
            Some(want),
            "{key}: {seen:?}"
        );
    }
    // A connection the guest made would wait in the accept queue by the
    // time its answer came back.
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the guest reached the test's listener: {other:?}"),
    }
    gw.shutdown().await;
}

/// README: every request gets a fresh instance, so nothing leaks between
/// requests or tenants. The `state` guest keeps state in a zeroed static,
/// an initialised static, its heap and its memory size; many requests,
/// concurrent on two workers, to two handlers of each of two tenants, must
/// all find none of it.
#[tokio::test]
async fn every_request_gets_a_fresh_instance() {
    let mut template = String::from("[runtime]\nworkers = 2\n");
    for name in ["alpha", "beta"] {
        template.push_str(&tenant(name, &format!("{name}.test"), "", &[]));
        for route in ["one", "two"] {
            template.push_str(&handler(route, &format!("/{route}"), "{state}"));
            template.push_str(&format!("config = {{ who = \"{name}-{route}\" }}\n"));
        }
    }
    let gw = TestGateway::start(&template).await;

    const PER_HANDLER: usize = 40;
    // Below the tenants' max_concurrency of 64, so nothing is shed.
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..PER_HANDLER {
        for (tenant, handler) in [
            ("alpha", "one"),
            ("beta", "two"),
            ("alpha", "two"),
            ("beta", "one"),
        ] {
            let request = gw
                .client
                .get(format!("{}/{handler}?i={i}", gw.url))
                .header("host", format!("{tenant}.test"));
            let slots = Arc::clone(&slots);
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore");
                let response = request.send().await.expect("state request");
                assert_eq!(response.status(), 200);
                let seen = report(&response.text().await.expect("body"));
                (
                    format!("{tenant}-{handler}"),
                    format!("/{handler}?i={i}"),
                    seen,
                )
            }));
        }
    }
    let mut pages = Vec::new();
    let mut pages_after = Vec::new();
    for task in tasks {
        let (who, uri, seen) = task.await.expect("request task");
        let number = |key: &str| -> u64 { seen[key].parse().expect("a number") };
        assert_eq!(seen["visits"], "0", "a static kept its count: {seen:?}");
        assert_eq!(
            number("tag"),
            STATE_INITIAL_TAG,
            "a static kept its value: {seen:?}"
        );
        assert_eq!(
            seen["heap"], "",
            "the heap kept an earlier request: {seen:?}"
        );
        assert_eq!(seen["who"], who, "another handler's config: {seen:?}");
        assert_eq!(seen["uri"], uri);
        assert!(number("pages_after") >= number("pages") + STATE_GROW_PAGES);
        pages.push(number("pages"));
        pages_after.push(number("pages_after"));
    }
    // A memory that an earlier request had grown would start at least
    // where that one ended.
    let (most, least) = (
        pages.iter().max().expect("some"),
        pages_after.iter().min().expect("some"),
    );
    assert!(
        most < least,
        "memory kept its size: started at up to {most} pages, grew to {least}"
    );
    let text = gw.metrics().await;
    let requests = (4 * PER_HANDLER) as f64;
    assert_eq!(
        require_metric(&text, "wasmgate_instantiation_duration_seconds_count"),
        requests,
        "one instance per request"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn serves_http2_with_prior_knowledge() {
    let gw = TestGateway::start(&demo("")).await;
    let response = common::h2_client()
        .get(format!("{}/hello", gw.url))
        .send()
        .await
        .expect("h2 GET /hello");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.text().await.expect("body").contains("hello"));
    gw.shutdown().await;
}
