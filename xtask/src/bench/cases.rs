//! The throughput, latency and memory cases: the in-process instantiate
//! bench, wrk against the gateway and its ceilings (a to e), against the
//! gateway and `wasmtime serve` with the same wasi:http component (i to k),
//! through a guest that calls an upstream (l), HTTPS against plain HTTP on
//! one gateway (m to o, against b), latency probes while `/cpu` saturates
//! the workers (f), and idle memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::Plan;
use super::runs::{
    Connections, HandlerEntry, Instances, Runs, Server, TlsHandshakes, WRK_CONNECTIONS,
    WRK_THREADS, bare_hyper, finish_wrk, gateway, http, https_gateway, rss_mb, spawn_wrk_with,
    wasm_dir, wasmtime_serve, write_config, write_https_config, wrk,
};
use crate::cargo;

/// One load case: wrk `-t2 -c64` on one server and path.
pub struct LoadCase {
    /// Its letter in the report.
    pub id: &'static str,
    /// What it loads, as the report names it.
    pub name: &'static str,
    /// Which server.
    pub target: Target,
    /// The path wrk requests.
    pub path: &'static str,
    /// Whether a connection carries many requests or one.
    pub connections: Connections,
}

/// A keep-alive load case.
const fn case(
    id: &'static str,
    name: &'static str,
    target: Target,
    path: &'static str,
) -> LoadCase {
    LoadCase {
        id,
        name,
        target,
        path,
        connections: Connections::KeepAlive,
    }
}

/// The load cases a to e and i to o. They run interleaved, in this order,
/// once per repetition.
pub const LOAD_CASES: [LoadCase; 12] = [
    case(
        "a",
        "bare hyper /hello (ceiling for b)",
        Target::Bare,
        "/hello",
    ),
    case("b", "gateway /hello", Target::Gateway, "/hello"),
    case("c", "gateway /cpu", Target::Gateway, "/cpu"),
    case(
        "d",
        "native cpu loop behind bare hyper (ceiling for c)",
        Target::Bare,
        "/cpu",
    ),
    case(
        "e",
        "gateway /cpu, fuel metering off",
        Target::GatewayNoFuel,
        "/cpu",
    ),
    case(
        "i",
        "gateway, wasi:http component wasi_hello.wasm",
        Target::GatewayWasi,
        "/",
    ),
    case(
        "j",
        "wasmtime serve, the same component, fresh instance per request",
        Target::WasmtimeFresh,
        "/",
    ),
    case(
        "k",
        "wasmtime serve, the same component, an instance reused for 1000 requests",
        Target::WasmtimeReused,
        "/",
    ),
    case(
        "l",
        "gateway proxy handler to bare hyper /hello (direct: a)",
        Target::GatewayWasi,
        "/proxy/hello",
    ),
    case(
        "m",
        "gateway HTTPS /hello, keep-alive (plain: b)",
        Target::GatewayHttps,
        "/hello",
    ),
    LoadCase {
        connections: Connections::PerRequest,
        ..case(
            "n",
            "gateway HTTPS /hello, a TLS handshake per request",
            Target::GatewayHttps,
            "/hello",
        )
    },
    LoadCase {
        connections: Connections::PerRequest,
        ..case(
            "o",
            "gateway /hello, a TCP connection per request (HTTPS: n)",
            Target::Gateway,
            "/hello",
        )
    },
];

/// The cases `--only https` runs: plain and HTTPS `/hello` on one gateway.
pub const HTTPS_CASES: [&str; 4] = ["b", "m", "n", "o"];

/// Which server a load case loads.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The bare hyper ceiling.
    Bare,
    /// The gateway with fuel metering, as in production, on its plain
    /// listener.
    Gateway,
    /// The same gateway on its HTTPS listener.
    GatewayHttps,
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
    /// Runs of cases a to e and i to o, by id.
    pub cases: BTreeMap<&'static str, Runs>,
    /// What the gateway's TLS handshake counters rose by over those runs.
    pub handshakes: TlsHandshakes,
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

/// The config of the gateway of cases b, c, f and m to o, with fuel
/// metering and an HTTPS listener, in `out`.
fn fuel_config(out: &Path) -> anyhow::Result<PathBuf> {
    write_https_config(&out.join("fuel/bench.toml"), &handlers())
}

/// Cases a to f, i to o and idle memory; `wasmtime` is the CLI's binary.
pub fn load(plan: &Plan, out: &Path, wasmtime: &Path) -> anyhow::Result<LoadResults> {
    let seconds = plan.seconds;
    let bare = bare_hyper()?;
    // Each gateway has its own data dir: they run side by side.
    let fuel_config = fuel_config(out)?;
    let nofuel_config = write_config(&out.join("nofuel/bench-nofuel.toml"), false, &handlers())?;
    // Idle RSS on a first start (which compiles) and on a restart (which
    // loads compiled code from the data dir's cache, as in production).
    let _ = std::fs::remove_dir_all(out.join("fuel/wasmgate-data"));
    let _ = std::fs::remove_dir_all(out.join("nofuel/wasmgate-data"));
    let first = https_gateway(&fuel_config)?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss_mb_first_start = rss_mb(first.pid())?;
    drop(first);
    let gw = https_gateway(&fuel_config)?;
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

    check_https(&gw)?;

    let CaseRuns { cases, handshakes } = interleave(plan, LOAD_CASES.iter(), &gw, |target| {
        Some(match target {
            Target::Bare => &bare,
            Target::Gateway | Target::GatewayHttps => &gw,
            Target::GatewayNoFuel => &gw_nofuel,
            Target::GatewayWasi => &gw_wasi,
            Target::WasmtimeFresh => &serve_fresh,
            Target::WasmtimeReused => &serve_reused,
        })
    })?;

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
        handshakes,
        under_cpu,
        idle_rss_mb,
        idle_rss_mb_first_start,
    })
}

/// The runs of some load cases, and the TLS handshakes meanwhile.
pub struct CaseRuns {
    /// Every run, by case id.
    pub cases: BTreeMap<&'static str, Runs>,
    /// What the gateway's TLS handshake counters rose by over the runs.
    pub handshakes: TlsHandshakes,
}

/// Runs `cases` interleaved, `plan.repetitions` times, each on the server
/// `server` gives for its target; reads the TLS handshake counters of the
/// HTTPS `gateway` before and after.
fn interleave<'s>(
    plan: &Plan,
    cases: impl Iterator<Item = &'static LoadCase> + Clone,
    gateway: &Server,
    server: impl Fn(Target) -> Option<&'s Server>,
) -> anyhow::Result<CaseRuns> {
    let admin = gateway.admin_url()?;
    let before = TlsHandshakes::read(admin)?;
    let mut runs: BTreeMap<&str, Runs> = BTreeMap::new();
    for rep in 0..plan.repetitions {
        for case in cases.clone() {
            eprintln!("xtask: case {} ({}), run {}", case.id, case.name, rep + 1);
            let target =
                server(case.target).with_context(|| format!("no server for case {}", case.id))?;
            let base = match case.target {
                Target::GatewayHttps => target.https_url()?,
                _ => &target.url,
            };
            let url = format!("{base}{}", case.path);
            let child = spawn_wrk_with(
                &url,
                WRK_THREADS,
                WRK_CONNECTIONS,
                plan.seconds,
                case.connections,
                target.pid(),
            )?;
            let load = finish_wrk(child, &url, target.pid())?;
            runs.entry(case.id).or_default().push(load);
        }
    }
    let handshakes = TlsHandshakes::read(admin)?.since(&before);
    Ok(CaseRuns {
        cases: runs,
        handshakes,
    })
}

/// A second of one-connection HTTPS `/hello`: every request must succeed
/// (a handshake the gateway refuses, or a 421, would fail them all).
fn check_https(gw: &Server) -> anyhow::Result<()> {
    let url = format!("{}/hello", gw.https_url()?);
    let load = wrk(&url, "1", "1", 1, gw.pid())?;
    if load.errors > 0 {
        bail!("{url}: {} of the requests failed", load.errors);
    }
    Ok(())
}

/// `--only https`: cases b and m to o alone, on the gateway of the full
/// run's config.
pub fn https(plan: &Plan, out: &Path) -> anyhow::Result<CaseRuns> {
    let gw = https_gateway(&fuel_config(out)?)?;
    check_https(&gw)?;
    let cases = LOAD_CASES
        .iter()
        .filter(|case| HTTPS_CASES.contains(&case.id));
    interleave(plan, cases, &gw, |target| match target {
        Target::Gateway | Target::GatewayHttps => Some(&gw),
        _ => None,
    })
}
