//! The gateway's log as an operator gets it: `wasmgate serve` with its
//! stderr in a file (not a terminal). A flooding guest is held to its
//! handler's log budget and every dropped line is counted; a guest can
//! neither forge a log line nor put terminal escapes in the log; and guest
//! metrics cannot be driven to wrapped or infinite values.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Served, serve_command};
use wasmgate::guest_log::SUMMARY_INTERVAL;
use wasmgate_handler_components as components;

/// The dropped-lines counter of the `faults` handler.
const LOG_DROPPED: &str =
    r#"wasmgate_guest_log_lines_dropped_total{handler="faults",tenant="demo"}"#;

/// A running `wasmgate serve` whose stderr goes to a file; killed on drop.
struct Process {
    served: Served,
    log: PathBuf,
    client: reqwest::Client,
}

impl Process {
    /// `wasmgate serve` with tenant `demo` serving `faults` at `/faults`,
    /// `extra` added to its config, in a fresh folder named `name`.
    fn start(name: &str, extra: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        // A data dir of its own: gateways that share one race each other's
        // state writes (each sweeps files it did not write).
        let data = dir.join("data");
        let config = dir.join("wasmgate.toml");
        std::fs::write(
            &config,
            format!(
                "[runtime]\ndata_dir = {data:?}\n{extra}\n\
                 [[tenant]]\nname = \"demo\"\n\
                 [[tenant.handler]]\nname = \"faults\"\nroute = \"/faults\"\ncomponent = {:?}\n",
                components::require(components::FAULTS),
            ),
        )
        .expect("write config");
        let log = dir.join("wasmgate.log");
        let served = Served::spawn(
            serve_command()
                .arg("--config")
                .arg(&config)
                // The default filter (`info`) and no opinion about colours:
                // whatever the gateway writes is its own choice.
                .env_remove("NO_COLOR")
                .stderr(File::create(&log).expect("create log")),
        );
        Self {
            served,
            log,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
        }
    }

    /// GETs `path` and expects 200 with `body`.
    async fn get_ok(&self, path: &str, body: &str) {
        let response = self
            .client
            .get(format!("{}{path}", self.served.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.expect("body"), body, "{path}");
    }

    async fn metrics(&self) -> String {
        let response = self
            .client
            .get(format!("{}/metrics", self.served.admin))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), 200);
        response.text().await.expect("metrics body")
    }

    /// The log so far. Every line about a request is written before its
    /// response is sent, so after a response it is complete.
    fn log(&self) -> String {
        let bytes = std::fs::read(&self.log).expect("read log");
        String::from_utf8(bytes).expect("the log is UTF-8")
    }
}

/// The guest's own lines from `/faults/logflood` in `log`.
fn flood_lines(log: &str) -> u64 {
    log.lines().filter(|l| l.contains("flood line ")).count() as u64
}

/// The counts of the summaries of dropped lines of `demo/faults` in `log`.
fn summaries(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split_once("dropped ")?.1;
            let (n, rest) = rest.split_once(' ')?;
            rest.starts_with("log lines of demo/faults in the last ")
                .then(|| n.parse().expect("a count"))
        })
        .collect()
}

#[tokio::test]
async fn a_log_flood_is_held_to_the_handler_budget_and_every_drop_is_counted() {
    const RATE: u64 = 10;
    const REQUESTS: u64 = 4;
    const LINES: u64 = 100_000;
    // Fuel and time enough for 100 000 log calls on a busy machine: the
    // budget, not a limit, has to stop the flood reaching the log.
    let process = Process::start(
        "log-flood",
        &format!(
            "[limits]\nlog_lines_per_second = {RATE}\nfuel = 100000000000\ntimeout_ms = 100000"
        ),
    );
    let started = Instant::now();
    let floods: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let client = process.client.clone();
            let url = format!("{}/faults/logflood?n={LINES}", process.served.url);
            tokio::spawn(async move {
                let response = client.get(url).send().await.expect("logflood");
                (response.status(), response.text().await.expect("body"))
            })
        })
        .collect();
    for flood in floods {
        let (status, body) = flood.await.expect("request task");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!("logged {LINES} lines\n"));
    }
    let elapsed = started.elapsed();

    // The bucket was full (RATE lines) when the floods started and earned
    // RATE a second since: a bound that only grows with a slower machine.
    let log = process.log();
    let seen = flood_lines(&log);
    let bound = RATE + (RATE as f64 * elapsed.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        (RATE..=bound).contains(&seen),
        "{seen} guest lines in {elapsed:?}, expected {RATE}..={bound}"
    );
    // Those lines are about 100 bytes each; startup adds a few lines.
    let size_bound = (bound + 20) * 256;
    assert!(
        log.len() as u64 <= size_bound,
        "the log grew to {} bytes, expected at most {size_bound}",
        log.len()
    );
    let dropped = common::require_metric(&process.metrics().await, LOG_DROPPED) as u64;
    assert_eq!(
        seen + dropped,
        REQUESTS * LINES,
        "written + dropped = logged"
    );

    // A summary is due a second after the first drop it reports, and the
    // handler's next line writes it (or a request's end, written just after
    // its response): together the summaries report every drop.
    tokio::time::sleep(SUMMARY_INTERVAL + Duration::from_millis(100)).await;
    process
        .get_ok("/faults/logflood?n=1", "logged 1 lines\n")
        .await;
    let dropped = common::require_metric(&process.metrics().await, LOG_DROPPED) as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (log, summaries) = loop {
        let log = process.log();
        let summaries = summaries(&log);
        if summaries.iter().sum::<u64>() == dropped {
            break (log, summaries);
        }
        assert!(
            Instant::now() < deadline,
            "summaries {summaries:?} do not add up to {dropped}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let total = started.elapsed();
    assert_eq!(flood_lines(&log) + dropped, REQUESTS * LINES + 1);
    assert!(
        summaries.len() as u64 <= total.as_secs(),
        "at most one summary a second: {summaries:?} in {total:?}"
    );
}

#[tokio::test]
async fn a_guest_cannot_forge_log_lines_or_send_terminal_escapes() {
    let process = Process::start("log-escape", "");
    process.get_ok("/faults/lognewline", "logged\n").await;
    let log = process.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("FORGED")).collect();
    assert_eq!(lines.len(), 1, "one line for one message:\n{log}");
    let line = lines[0];
    assert!(
        line.contains(r"first\nFORGED level=ERROR tenant=other\r\u{1b}[31mred\u{1b}[0m end"),
        "CR, LF and ESC are escaped in the one line:\n{log}"
    );
    assert!(line.contains("tenant=demo handler=faults"), "{line}");
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "no line starts where the guest wanted:\n{log}"
    );
    // Not a terminal: no colours from the gateway, no escapes from guests.
    assert!(!log.contains('\x1b'), "an ESC byte in the log:\n{log:?}");
    assert!(!log.contains('\r'), "a CR byte in the log:\n{log:?}");
}

#[tokio::test]
async fn guest_metrics_cannot_wrap_or_become_infinite() {
    let process = Process::start("guest-metric-bounds", "");
    // Adds u64::MAX twice and 5; observes f64::MAX four times.
    process.get_ok("/faults/counterwrap", "added\n").await;
    process.get_ok("/faults/histinf", "observed\n").await;
    let text = process.metrics().await;
    let wrapped = common::require_metric(
        &text,
        r#"wasmgate_guest_events_total{handler="faults",name="wrapped",tenant="demo"}"#,
    );
    // Wrapping would have left 3.
    assert_eq!(wrapped, u64::MAX as f64, "the counter stays at its maximum");
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (sample, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(value.is_finite(), "{sample} is {value}");
    }
    // The two increments past the maximum and the four huge values.
    assert_eq!(
        common::require_metric(
            &text,
            r#"wasmgate_guest_metrics_dropped_total{handler="faults",tenant="demo"}"#
        ),
        6.0
    );
}
