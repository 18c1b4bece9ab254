//! Tenant isolation: a `good` tenant measured with one connection while an
//! `evil` tenant floods the same gateway, as the isolation issue tried it.
//!
//! `good` serves `hello` on `good.test`; `evil` serves `cpu` and `faults`
//! on every other host, both with the default limits. `good` is measured
//! alone, under 16 connections of `/cpu?iters=3000000`, and under 8
//! connections of `/faults/loop` (each runs until fuel or the 2 s deadline
//! stops it). What matters is good's p99 and its throughput against alone,
//! measured side by side in one run.
//!
//! The reference for the floods: good while evil sends nothing but every
//! core runs a spin loop outside the gateway at the kernel's lowest
//! priority (`SCHED_IDLE`). No scheduler inside the gateway competes with
//! good then, so good's p99 there is what this machine's kernel gives a
//! request path of three wake-ups (client, async thread, client) while
//! every core is busy: the floor under the floods' p99.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use super::Plan;
use super::runs::{Load, Server, finish_wrk, gateway, reset_peak_rss, wasm_dir};

/// The floods, with how many connections each uses.
const CPU_FLOOD: (&str, &str) = ("/cpu?iters=3000000", "16");
const LOOP_FLOOD: (&str, &str) = ("/faults/loop", "8");

/// Good's runs: alone, then under each flood.
pub struct IsolationResults {
    /// Good alone.
    pub alone: Load,
    /// Good while `/cpu` floods.
    pub under_cpu: Load,
    /// Good while `/faults/loop` floods.
    pub under_loop: Load,
    /// Good while a `SCHED_IDLE` spin loop per core runs outside the
    /// gateway: the floor under the floods' p99.
    pub under_idle_spinners: Load,
}

impl IsolationResults {
    /// The report's figures, by JSON key.
    pub fn figures(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("good_p99_ms_alone", self.alone.p99_ms),
            ("good_p99_ms_under_cpu_flood", self.under_cpu.p99_ms),
            ("good_p99_ms_under_loop_flood", self.under_loop.p99_ms),
            (
                "good_p99_ms_under_idle_spinners",
                self.under_idle_spinners.p99_ms,
            ),
            (
                "good_rps_ratio_under_cpu_flood",
                self.under_cpu.requests_per_sec / self.alone.requests_per_sec,
            ),
            (
                "good_rps_ratio_under_loop_flood",
                self.under_loop.requests_per_sec / self.alone.requests_per_sec,
            ),
            ("peak_rss_mb_loop_flood", self.under_loop.peak_rss_mb),
        ]
    }
}

/// Runs good alone and under each flood.
pub fn run(plan: &Plan, out: &Path) -> anyhow::Result<IsolationResults> {
    let config = write_config(&out.join("isolation").join("wasmgate.toml"))?;
    let gw = gateway(&config)?;
    let seconds = plan.seconds;
    let alone = good(&gw, seconds)?;
    let under_cpu = under_flood(&gw, seconds, CPU_FLOOD)?;
    let under_loop = under_flood(&gw, seconds, LOOP_FLOOD)?;
    let under_idle_spinners = under_idle_spinners(&gw, seconds)?;
    Ok(IsolationResults {
        alone,
        under_cpu,
        under_loop,
        under_idle_spinners,
    })
}

/// Good's `/hello` with one connection for `seconds`.
fn good(gw: &Server, seconds: u64) -> anyhow::Result<Load> {
    reset_peak_rss(gw.pid())?;
    let url = format!("{}/hello", gw.url);
    let child = Command::new("wrk")
        .args(["-t1", "-c1", "-d"])
        .arg(format!("{seconds}s"))
        .args(["--timeout", "10s", "--latency", "-H", "Host: good.test"])
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk")?;
    finish_wrk(child, &url, gw.pid())
}

/// Good measured while `flood` (path, connections) runs from one second
/// before until after good's run.
fn under_flood(gw: &Server, seconds: u64, flood: (&str, &str)) -> anyhow::Result<Load> {
    let (path, connections) = flood;
    let mut evil = Command::new("wrk")
        .args(["-t1", "-c", connections, "-d"])
        .arg(format!("{}s", seconds + 2))
        .args(["--timeout", "10s", "-H", "Host: evil.test"])
        .arg(format!("{}{path}", gw.url))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the flood")?;
    std::thread::sleep(Duration::from_secs(1));
    let measured = good(gw, seconds);
    let _ = evil.wait();
    measured
}

/// Spin loops killed when dropped, so an error cannot leave them running.
struct Spinners(Vec<std::process::Child>);

impl Drop for Spinners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Good measured while one `SCHED_IDLE` spin loop per core (`chrt -i 0`,
/// util-linux) runs from one second before until after good's run.
fn under_idle_spinners(gw: &Server, seconds: u64) -> anyhow::Result<Load> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut spinners = Spinners(Vec::new());
    for _ in 0..cores {
        let child = Command::new("chrt")
            .args(["--idle", "0", "sh", "-c", "while :; do :; done"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a spin loop with chrt (util-linux)")?;
        spinners.0.push(child);
    }
    std::thread::sleep(Duration::from_secs(1));
    let measured = good(gw, seconds);
    drop(spinners);
    measured
}

/// The two-tenant config, data dir beside it.
fn write_config(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    let wasm = wasm_dir()?;
    let component = |file: &str| wasm.join(file).display().to_string();
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"

[[tenant]]
name = "good"
hosts = ["good.test"]
handler = [{{ name = "hello", route = "/hello", component = "{hello}" }}]

[[tenant]]
name = "evil"
hosts = ["*"]
handler = [
    {{ name = "cpu", route = "/cpu", component = "{cpu}" }},
    {{ name = "faults", route = "/faults", component = "{faults}" }},
]
"#,
        hello = component("hello.wasm"),
        cpu = component("cpu.wasm"),
        faults = component("faults.wasm"),
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_owned())
}
