//! The hot-loading cases: how long a deploy through the admin API takes to
//! serve, what swapping a handler under load costs, and how start-up time
//! and memory grow with the number of handlers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Plan;
use super::runs::{
    ADMIN_TOKEN, HandlerEntry, Listeners, Response, Runs, Server, WRK_CONNECTIONS, WRK_THREADS,
    finish_wrk, gateway, gateway_command, http, minimum, rss_kb, spawn_wrk, spread_over_load,
    wait_for_200, wasm_dir, write_config, wrk,
};

/// Deploys swapped while case h's load runs.
pub const SWAPS: usize = 20;
/// Handlers of the large start-up config.
pub const MANY_HANDLERS: usize = 100;
/// How long a deployed route may take to answer 200, or a started gateway
/// to be ready, before the bench fails: far beyond any target.
const SERVE_WITHIN: Duration = Duration::from_secs(60);
/// How long a gateway sits idle before its memory is read, as for the
/// idle RSS of the load cases.
const IDLE: Duration = Duration::from_millis(500);
/// The tenant the bench deploys into (the configs' only tenant).
const TENANT: &str = "bench";

/// The swap cases: id, description.
pub const SWAP_CASES: [(&str, &str); 2] = [
    ("g", "gateway /swap, no deploys (baseline for h)"),
    ("h", "gateway /swap during 20 deploys"),
];

/// What the hot-loading cases measured; every sample is kept.
pub struct HotloadResults {
    /// PUT sent to the first 200 from its route, for a component whose
    /// code the gateway has (`hello.wasm`, which the config serves).
    pub upload_cached_ms: Vec<f64>,
    /// The same for components never seen before, which must compile.
    pub upload_new_ms: Vec<f64>,
    /// Size of each new component: `hello.wasm` and a custom section.
    pub new_component_bytes: usize,
    /// Cases g (no deploys) and h (deploys during the load), by id.
    pub swaps: BTreeMap<&'static str, Runs>,
    /// How long the deploys of each run of h took from the start of its
    /// load: more than the load's duration means some swaps ran unloaded.
    pub swap_seconds: Vec<f64>,
    /// Spawn to `/readyz` 200 with 100 handlers, code cached.
    pub startup_many_ms: Vec<f64>,
    /// The same with one handler, for comparison.
    pub startup_one_ms: Vec<f64>,
    /// Idle RSS after each start with 100 handlers.
    pub idle_rss_kb_many: Vec<f64>,
    /// Idle RSS after each start with one handler.
    pub idle_rss_kb_one: Vec<f64>,
}

/// Runs every hot-loading case; `out` is the bench's output folder.
pub fn run(plan: &Plan, out: &Path) -> anyhow::Result<HotloadResults> {
    let hello = std::fs::read(wasm_dir()?.join("hello.wasm")).context("reading hello.wasm")?;
    let dir = out.join("hotload");
    let _ = std::fs::remove_dir_all(dir.join("wasmgate-data"));
    let hello_entry = HandlerEntry::new("hello", "/hello", "hello.wasm");
    let config = write_config(&dir.join("bench.toml"), true, &[hello_entry])?;
    // The log shows where a slow deploy spent its time ("handler loaded"
    // after compiling and trial instantiation, "admin write" once stored).
    let log_path = dir.join("wasmgate.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = gateway_command(&config);
    command.stderr(Stdio::from(log));
    let gw = Server::start(command, Listeners::GATEWAY)?;

    eprintln!("xtask: deploy to serving, code cached");
    let mut upload_cached_ms = Vec::with_capacity(plan.uploads);
    for i in 0..plan.uploads {
        upload_cached_ms.push(upload_to_serving(&gw, &format!("cached-{i}"), &hello)?);
    }

    eprintln!("xtask: deploy to serving, new components");
    // Unique across runs too: the data dir's code cache outlives a run
    // when the bench is interrupted before it is cleared.
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut upload_new_ms = Vec::with_capacity(plan.uploads);
    let mut new_component_bytes = 0;
    for i in 0..plan.uploads {
        let bytes =
            with_custom_section(&hello, "wasmgate-bench", format!("{nonce}-{i}").as_bytes());
        new_component_bytes = bytes.len();
        upload_new_ms.push(upload_to_serving(&gw, &format!("new-{i}"), &bytes)?);
    }

    let (swaps, swap_seconds) = swap(plan, &gw, &hello)?;
    drop(gw);

    eprintln!("xtask: start-up with {MANY_HANDLERS} handlers and with 1");
    let (startup_many_ms, idle_rss_kb_many) = startup(plan, out, MANY_HANDLERS)?;
    let (startup_one_ms, idle_rss_kb_one) = startup(plan, out, 1)?;
    Ok(HotloadResults {
        upload_cached_ms,
        upload_new_ms,
        new_component_bytes,
        swaps,
        swap_seconds,
        startup_many_ms,
        startup_one_ms,
        idle_rss_kb_many,
        idle_rss_kb_one,
    })
}

/// `PUT /admin/tenants/bench/handlers/{handler}?route={route}` with
/// `bytes`; fails unless it answers 200 or 201.
fn deploy(gw: &Server, handler: &str, route: &str, bytes: &[u8]) -> anyhow::Result<Response> {
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    let path = format!("/admin/tenants/{TENANT}/handlers/{handler}?route={route}");
    let response = http(
        "PUT",
        gw.admin_url()?,
        &path,
        &[
            ("Authorization", &authorization),
            ("Content-Type", "application/wasm"),
        ],
        bytes,
    )?;
    if !matches!(response.status, 200 | 201) {
        bail!(
            "PUT {path} answered {}: {}",
            response.status,
            response.body.trim()
        );
    }
    Ok(response)
}

/// Deploys `bytes` as a new handler at `/{handler}` and polls the route:
/// milliseconds from sending the PUT to the route's first 200.
fn upload_to_serving(gw: &Server, handler: &str, bytes: &[u8]) -> anyhow::Result<f64> {
    let route = format!("/{handler}");
    let start = Instant::now();
    deploy(gw, handler, &route, bytes)?;
    let elapsed = wait_for_200(&gw.url, &route, start, SERVE_WITHIN)?;
    Ok(elapsed.as_secs_f64() * 1000.0)
}

/// Cases g and h, alternating: wrk on `/swap` alone, then with [`SWAPS`]
/// deploys spread over the run, alternating two versions of `hello` that
/// differ in a custom section (so each deploy replaces the code).
fn swap(
    plan: &Plan,
    gw: &Server,
    hello: &[u8],
) -> anyhow::Result<(BTreeMap<&'static str, Runs>, Vec<f64>)> {
    let versions = [
        with_custom_section(hello, "wasmgate-bench", b"swap-a"),
        with_custom_section(hello, "wasmgate-bench", b"swap-b"),
    ];
    // Both compiled and in the code cache before any measurement: the
    // case measures swapping, not compiling (upload_new measures that).
    for bytes in [&versions[0], &versions[1], &versions[0]] {
        deploy(gw, "swap", "/swap", bytes)?;
    }
    wait_for_200(&gw.url, "/swap", Instant::now(), SERVE_WITHIN)?;
    let url = format!("{}/swap", gw.url);
    let seconds = plan.seconds;
    let mut runs: BTreeMap<&str, Runs> = BTreeMap::new();
    let mut swap_seconds = Vec::new();
    for rep in 0..plan.repetitions {
        let [(g, g_name), (h, h_name)] = SWAP_CASES;
        eprintln!("xtask: case {g} ({g_name}), run {}", rep + 1);
        let load = wrk(&url, WRK_THREADS, WRK_CONNECTIONS, seconds, gw.pid())?;
        runs.entry(g).or_default().push(load);

        eprintln!("xtask: case {h} ({h_name}), run {}", rep + 1);
        let child = spawn_wrk(&url, WRK_THREADS, WRK_CONNECTIONS, seconds, gw.pid())?;
        // The active version is versions[0]; the first swap moves to
        // versions[1], and so on.
        let deployed = spread_over_load(Instant::now(), seconds, SWAPS, |i| {
            deploy(gw, "swap", "/swap", &versions[(i + 1) % 2]).map(drop)
        });
        let load = finish_wrk(child, &url, gw.pid())?;
        swap_seconds.push(deployed?.as_secs_f64());
        runs.entry(h).or_default().push(load);
    }
    Ok((runs, swap_seconds))
}

/// Start-up of a gateway with `count` handlers (all `hello.wasm`, at
/// `/h0`...), its code cached by a first start: for each of the plan's
/// repetitions, milliseconds from spawning `wasmgate serve` to `/readyz`
/// answering 200, and the idle RSS in kB after it.
fn startup(plan: &Plan, out: &Path, count: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let dir = out.join(format!("startup-{count}"));
    let _ = std::fs::remove_dir_all(dir.join("wasmgate-data"));
    let handlers: Vec<HandlerEntry> = (0..count)
        .map(|i| HandlerEntry::new(format!("h{i}"), format!("/h{i}"), "hello.wasm"))
        .collect();
    let config = write_config(&dir.join("bench.toml"), true, &handlers)?;
    drop(gateway(&config)?);
    let mut startup_ms = Vec::new();
    let mut idle_rss_kb = Vec::new();
    for _ in 0..plan.repetitions {
        let start = Instant::now();
        let gw = gateway(&config)?;
        let ready = wait_for_200(gw.admin_url()?, "/readyz", start, SERVE_WITHIN)?;
        startup_ms.push(ready.as_secs_f64() * 1000.0);
        std::thread::sleep(IDLE);
        idle_rss_kb.push(rss_kb(gw.pid())?);
    }
    Ok((startup_ms, idle_rss_kb))
}

/// Memory each handler beyond the first adds, in kB: from the smallest
/// idle RSS with [`MANY_HANDLERS`] handlers and with one.
pub fn rss_per_handler_kb(results: &HotloadResults) -> f64 {
    let extra = minimum(&results.idle_rss_kb_many) - minimum(&results.idle_rss_kb_one);
    extra / (MANY_HANDLERS - 1) as f64
}

/// `component` with a custom section appended: a component (like a core
/// module) is its header and a sequence of sections, and a custom section
/// (id 0, size, name, payload) may come anywhere and changes nothing it
/// does. So the result is as valid as `component`, with another sha256.
pub fn with_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    let mut contents = Vec::with_capacity(5 + name.len() + payload.len());
    leb128(name.len(), &mut contents);
    contents.extend_from_slice(name.as_bytes());
    contents.extend_from_slice(payload);
    let mut out = Vec::with_capacity(component.len() + 6 + contents.len());
    out.extend_from_slice(component);
    out.push(0);
    leb128(contents.len(), &mut out);
    out.extend_from_slice(&contents);
    out
}

/// Unsigned LEB128, as wasm encodes sizes.
fn leb128(mut value: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: usize) -> Vec<u8> {
        let mut out = Vec::new();
        leb128(value, &mut out);
        out
    }

    #[test]
    fn leb128_matches_the_wasm_spec_examples() {
        assert_eq!(encoded(0), [0x00]);
        assert_eq!(encoded(127), [0x7f]);
        assert_eq!(encoded(128), [0x80, 0x01]);
        assert_eq!(encoded(624_485), [0xe5, 0x8e, 0x26]);
    }

    #[test]
    fn a_custom_section_is_appended_whole() {
        let header = b"\0asm\x0d\0\x01\0";
        let payload = vec![7u8; 200];
        let out = with_custom_section(header, "n", &payload);
        assert_eq!(&out[..8], header);
        // id 0, size 202 (1 for the name's length, 1 for the name, 200
        // payload) in two LEB128 bytes, the name, the payload.
        assert_eq!(&out[8..13], [0, 0xca, 0x01, 1, b'n']);
        assert_eq!(&out[13..], payload.as_slice());
        assert_ne!(
            with_custom_section(header, "n", b"a"),
            with_custom_section(header, "n", b"b")
        );
    }
}
