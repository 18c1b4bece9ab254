//! The throughput, latency and memory cases: the in-process instantiate
//! bench, wrk against the gateway and its ceilings (a to e), against the
//! gateway and `wasmtime serve` with the same wasi:http component (i to k),
//! through a guest that calls an upstream (l), latency probes while `/cpu`
//! saturates the workers (f), and idle memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::Plan;
use super::runs::{
    HandlerEntry, Instances, Runs, WRK_CONNECTIONS, WRK_THREADS, bare_hyper, gateway, http, rss_mb,
    wasm_dir, wasmtime_serve, write_config, wrk,
};
use crate::cargo;

/// The load cases a to e and i to l: id, description, which server, path.
/// They run interleaved, in this order, once per repetition.
pub const LOAD_CASES: [(&str, &str, Target, &str); 9] = [
    (
        "a",
        "bare hyper /hello (ceiling for b)",
        Target::Bare,
        "/hello",
    ),
    ("b", "gateway /hello", Target::Gateway, "/hello"),
    ("c", "gateway /cpu", Target::Gateway, "/cpu"),
    (
        "d",
        "native cpu loop behind bare hyper (ceiling for c)",
        Target::Bare,
        "/cpu",
    ),
    (
        "e",
        "gateway /cpu, fuel metering off",
        Target::GatewayNoFuel,
        "/cpu",
    ),
    (
        "i",
        "gateway, wasi:http component wasi_hello.wasm",
        Target::GatewayWasi,
        "/",
    ),
    (
        "j",
        "wasmtime serve, the same component, fresh instance per request",
        Target::WasmtimeFresh,
        "/",
    ),
    (
        "k",
        "wasmtime serve, the same component, an instance reused for 1000 requests",
        Target::WasmtimeReused,
        "/",
    ),
    (
        "l",
        "gateway proxy handler to bare hyper /hello (direct: a)",
        Target::GatewayWasi,
        "/proxy/hello",
    ),
];

/// Which server a load case loads.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The bare hyper ceiling.
    Bare,
    /// The gateway with fuel metering, as in production.
    Gateway,
    /// The same gateway config with fuel metering off.
    GatewayNoFuel,
    /// A gateway (fuel on) serving `wasi_hello.wasm` at `/` and the
    /// `proxy` handler at `/proxy`, its upstream the bare hyper server.
    GatewayWasi,
    /// `wasmtime serve` on `wasi_hello.wasm`, its default instances.
    WasmtimeFresh,
    /// `wasmtime serve` on `wasi_hello.wasm`, instances reused.
    WasmtimeReused,
}

/// Requests `wasmtime serve` sends to one instance in case k, as in the
/// issue that asked for the comparison.
const REUSE_COUNT: u32 = 1000;

/// What the in-process bench printed: `instantiate_call_p50_us` and so on.
pub type InProcess = BTreeMap<String, f64>;

/// Runs `cargo bench --bench instantiate` and reads its JSON line.
pub fn in_process(plan: &Plan) -> anyhow::Result<InProcess> {
    eprintln!("xtask: in-process instantiate + call");
    let mut instantiate = cargo();
    instantiate.args([
        "bench",
        "-q",
        "-p",
        "wasmgate",
        "--bench",
        "instantiate",
        "--",
    ]);
    if plan.quick {
        instantiate.arg("--quick");
    }
    let output = instantiate
        .output()
        .context("running the instantiate bench")?;
    if !output.status.success() {
        bail!(
            "instantiate bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let values: InProcess = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("the instantiate bench printed no JSON")?;
    for key in [
        "instantiate_call_p50_us",
        "instantiate_call_p99_us",
        "instantiate_mean_us",
        "instances_per_sec_1_thread",
        "instances_per_sec_n_threads",
        "threads",
    ] {
        if !values.contains_key(key) {
            bail!("the instantiate bench printed no {key}");
        }
    }
    Ok(values)
}

/// What the load cases measured.
pub struct LoadResults {
    /// Runs of cases a to e and i to l, by id.
    pub cases: BTreeMap<&'static str, Runs>,
    /// Case f: one-connection probes (`metrics`, `hello`) under `/cpu` load.
    pub under_cpu: BTreeMap<&'static str, Runs>,
    /// Idle RSS after a restart, when the code cache is warm.
    pub idle_rss_mb: f64,
    /// Idle RSS on a first start, which compiles every handler.
    pub idle_rss_mb_first_start: f64,
}

/// The config of the load cases: `hello` and `cpu`.
fn handlers() -> [HandlerEntry; 2] {
    [
        HandlerEntry {
            greeting: Some("hi"),
            ..HandlerEntry::new("hello", "/hello", "hello.wasm")
        },
        HandlerEntry::new("cpu", "/cpu", "cpu.wasm"),
    ]
}

/// The config of cases i and l: the standard component at `/` and the
/// proxy in front of `upstream`.
fn wasi_handlers(upstream: &str) -> [HandlerEntry; 2] {
    [
        HandlerEntry::new("wasi-hello", "/", "wasi_hello.wasm"),
        HandlerEntry {
            upstream: Some(upstream.to_owned()),
            ..HandlerEntry::new("proxy", "/proxy", "proxy.wasm")
        },
    ]
}

/// Cases a to f, i to l and idle memory; `wasmtime` is the CLI's binary.
pub fn load(plan: &Plan, out: &Path, wasmtime: &Path) -> anyhow::Result<LoadResults> {
    let seconds = plan.seconds;
    let bare = bare_hyper()?;
    // Each gateway has its own data dir: they run side by side.
    let fuel_config = write_config(&out.join("fuel/bench.toml"), true, &handlers())?;
    let nofuel_config = write_config(&out.join("nofuel/bench-nofuel.toml"), false, &handlers())?;
    // Idle RSS on a first start (which compiles) and on a restart (which
    // loads compiled code from the data dir's cache, as in production).
    let _ = std::fs::remove_dir_all(out.join("fuel/wasmgate-data"));
    let _ = std::fs::remove_dir_all(out.join("nofuel/wasmgate-data"));
    let first = gateway(&fuel_config)?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss_mb_first_start = rss_mb(first.pid())?;
    drop(first);
    let gw = gateway(&fuel_config)?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss_mb = rss_mb(gw.pid())?;
    let gw_nofuel = gateway(&nofuel_config)?;
    let wasi_config = write_config(
        &out.join("wasi/bench.toml"),
        true,
        &wasi_handlers(&bare.url),
    )?;
    let gw_wasi = gateway(&wasi_config)?;
    let component = wasm_dir()?.join("wasi_hello.wasm");
    let serve_fresh = wasmtime_serve(wasmtime, &component, Instances::Fresh)?;
    let serve_reused = wasmtime_serve(wasmtime, &component, Instances::Reused(REUSE_COUNT))?;
    // The cases compare answers, so each server must give the right one.
    for (server, path, expected) in [
        (&gw_wasi, "/", "hello from wasi:http"),
        (&serve_fresh, "/", "hello from wasi:http"),
        (&serve_reused, "/", "hello from wasi:http"),
        (&gw_wasi, "/proxy/hello", "hi from wasmgate: hello"),
    ] {
        let response = http("GET", &server.url, path, &[], &[])?;
        if response.status != 200 || !response.body.contains(expected) {
            bail!(
                "{}{path} answered {} {:?}, not 200 {expected:?}",
                server.url,
                response.status,
                response.body
            );
        }
    }

    let mut cases: BTreeMap<&str, Runs> = BTreeMap::new();
    for rep in 0..plan.repetitions {
        for (id, name, target, path) in LOAD_CASES {
            eprintln!("xtask: case {id} ({name}), run {}", rep + 1);
            let server = match target {
                Target::Bare => &bare,
                Target::Gateway => &gw,
                Target::GatewayNoFuel => &gw_nofuel,
                Target::GatewayWasi => &gw_wasi,
                Target::WasmtimeFresh => &serve_fresh,
                Target::WasmtimeReused => &serve_reused,
            };
            let load = wrk(
                &format!("{}{path}", server.url),
                WRK_THREADS,
                WRK_CONNECTIONS,
                seconds,
                server.pid(),
            )?;
            cases.entry(id).or_default().push(load);
        }
    }

    // (f): while /cpu saturates the workers, how fast do /metrics and
    // /hello answer? One connection each, so latency is not queueing
    // behind our own probe.
    let admin = gw.admin_url()?;
    let mut under_cpu: BTreeMap<&str, Runs> = BTreeMap::new();
    for rep in 0..plan.repetitions {
        eprintln!("xtask: case f (latency under /cpu load), run {}", rep + 1);
        let mut background = Command::new("wrk")
            .args(["-t", WRK_THREADS, "-c", WRK_CONNECTIONS, "-d"])
            .arg(format!("{}s", seconds + 2))
            .args(["--timeout", "10s"])
            .arg(format!("{}/cpu", gw.url))
            .stdout(Stdio::null())
            .spawn()
            .context("starting background wrk")?;
        std::thread::sleep(Duration::from_secs(1));
        let probe_seconds = seconds.saturating_sub(1).max(1) / 2 + 1;
        let metrics = wrk(
            &format!("{admin}/metrics"),
            "1",
            "1",
            probe_seconds,
            gw.pid(),
        );
        let hello = wrk(
            &format!("{}/hello", gw.url),
            "1",
            "1",
            probe_seconds,
            gw.pid(),
        );
        let _ = background.wait();
        under_cpu.entry("metrics").or_default().push(metrics?);
        under_cpu.entry("hello").or_default().push(hello?);
    }
    Ok(LoadResults {
        cases,
        under_cpu,
        idle_rss_mb,
        idle_rss_mb_first_start,
    })
}
