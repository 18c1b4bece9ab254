//! `cargo xtask bench [--quick]`: every benchmark case in one run, side by
//! side, reported as ratios against ceilings measured on the same machine in
//! the same run.
//!
//! Load comes from `wrk` (installed with apt-get when missing) against
//! 127.0.0.1 only, for fixed durations, each case twice to show the noise.
//! Writes `target/bench/report.json` and `target/bench/report.md`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{build_handlers, cargo, ensure_apt_tool, run};

/// Connections and threads of every load case.
const WRK_THREADS: &str = "2";
const WRK_CONNECTIONS: &str = "64";
const REPETITIONS: usize = 2;

/// One wrk run.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    peak_rss_mb: f64,
}

/// A running server process, killed on drop.
struct Server {
    child: Child,
    url: String,
    admin: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `command` and reads the `listening on` (and `admin on`) lines.
    fn start(mut command: Command, has_admin: bool) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut next = |prefix: &str| -> anyhow::Result<String> {
            let line = lines
                .next()
                .context("server exited before printing its address")??;
            line.strip_prefix(prefix)
                .map(|rest| format!("http://{rest}"))
                .with_context(|| format!("expected {prefix:?}, got {line:?}"))
        };
        let url = next("listening on http://")?;
        let admin = if has_admin {
            Some(next("admin on http://")?)
        } else {
            None
        };
        Ok(Self { child, url, admin })
    }
}

/// Resident memory of a process now, and resets its peak.
fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    status_kb(pid, "VmRSS:").map(|kb| kb / 1024.0)
}

fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    status_kb(pid, "VmHWM:").map(|kb| kb / 1024.0)
}

/// Resets the peak resident set size (`VmHWM`) of a process.
fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

fn status_kb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Parses a wrk duration such as `412.00us`, `1.20ms` or `2.00s` into ms.
fn parse_ms(text: &str) -> Option<f64> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(output: &str) -> anyhow::Result<Load> {
    let mut load = Load::default();
    for line in output.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["50%", v] => load.p50_ms = parse_ms(v).context("p50")?,
            ["99%", v] => load.p99_ms = parse_ms(v).context("p99")?,
            ["Requests/sec:", v] => load.requests_per_sec = v.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => load.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                load.errors += rest
                    .iter()
                    .filter_map(|s| s.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if load.requests_per_sec == 0.0 {
        bail!("wrk reported no requests:\n{output}");
    }
    Ok(load)
}

/// Runs wrk against `url` and measures the server's peak RSS meanwhile.
fn wrk(
    url: &str,
    threads: &str,
    connections: &str,
    seconds: u64,
    pid: u32,
) -> anyhow::Result<Load> {
    reset_peak_rss(pid)?;
    let output = Command::new("wrk")
        .args(["-t", threads, "-c", connections, "-d"])
        .arg(format!("{seconds}s"))
        .args(["--timeout", "10s", "--latency", url])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk {url} failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut load = parse_wrk(&text)?;
    load.peak_rss_mb = peak_rss_mb(pid)?;
    Ok(load)
}

/// The bench config: the example handlers with limits that let the cpu
/// loop finish; `consume_fuel` switches fuel metering.
fn write_config(dir: &Path, consume_fuel: bool) -> anyhow::Result<PathBuf> {
    let wasm =
        std::fs::canonicalize("target/wasm32-wasip2/release").context("handlers are not built")?;
    let path = dir.join(if consume_fuel {
        "bench.toml"
    } else {
        "bench-nofuel.toml"
    });
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[runtime]
consume_fuel = {consume_fuel}
queue_depth = 4096
[limits]
fuel = 100000000000
timeout_ms = 10000
max_concurrency = 1024
[[tenant]]
name = "bench"
hosts = ["*"]
[[tenant.handler]]
name = "hello"
route = "/hello"
component = "{wasm}/hello.wasm"
config = {{ greeting = "hi" }}
[[tenant.handler]]
name = "cpu"
route = "/cpu"
component = "{wasm}/cpu.wasm"
"#,
        wasm = wasm.display()
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn gateway(config: &Path) -> anyhow::Result<Server> {
    let mut command = Command::new("target/release/wasmgate");
    command.args(["serve", "--config"]).arg(config);
    Server::start(command, true)
}

/// Each load case, twice; the report keeps every run and uses the better of
/// the two for ratios (noise on a shared machine only ever slows a run).
type Runs = Vec<Load>;

fn best(runs: &Runs) -> Load {
    runs.iter()
        .copied()
        .max_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec))
        .unwrap_or_default()
}

pub fn bench(args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let seconds = if quick { 2 } else { 10 };
    ensure_apt_tool("wrk", "wrk")?;
    build_handlers()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "wasmgate",
        "--bin",
        "wasmgate",
        "--example",
        "bare_hyper",
    ]))?;
    let out = PathBuf::from("target/bench");
    std::fs::create_dir_all(&out)?;

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
    if quick {
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
    let in_process: BTreeMap<String, f64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("the instantiate bench printed no JSON")?;

    let bare = Server::start(
        {
            let mut c = Command::new("target/release/examples/bare_hyper");
            c.arg("127.0.0.1:0");
            c
        },
        false,
    )?;
    let fuel_config = write_config(&out, true)?;
    let nofuel_config = write_config(&out, false)?;
    // Idle RSS on a first start (which compiles) and on a restart (which
    // loads compiled code from the data dir's cache, as in production).
    let _ = std::fs::remove_dir_all(out.join("wasmgate-data"));
    let first = gateway(&fuel_config)?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss_mb_first_start = rss_mb(first.pid())?;
    drop(first);
    let gw = gateway(&fuel_config)?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss_mb = rss_mb(gw.pid())?;
    let gw_nofuel = gateway(&nofuel_config)?;

    let cases: [(&str, &str, &Server, &str); 5] = [
        ("a", "bare hyper /hello (ceiling for b)", &bare, "/hello"),
        ("b", "gateway /hello", &gw, "/hello"),
        ("c", "gateway /cpu", &gw, "/cpu"),
        (
            "d",
            "native cpu loop behind bare hyper (ceiling for c)",
            &bare,
            "/cpu",
        ),
        ("e", "gateway /cpu, fuel metering off", &gw_nofuel, "/cpu"),
    ];
    let mut results: BTreeMap<&str, Runs> = BTreeMap::new();
    for rep in 0..REPETITIONS {
        for (id, name, server, path) in &cases {
            eprintln!("xtask: case {id} ({name}), run {}", rep + 1);
            let load = wrk(
                &format!("{}{path}", server.url),
                WRK_THREADS,
                WRK_CONNECTIONS,
                seconds,
                server.pid(),
            )?;
            results.entry(id).or_default().push(load);
        }
    }

    // (f): while /cpu saturates the workers, how fast do /metrics and
    // /hello answer? One connection each, so latency is not queueing
    // behind our own probe.
    let admin = gw.admin.clone().context("gateway admin address")?;
    let mut under_cpu: BTreeMap<&str, Runs> = BTreeMap::new();
    for rep in 0..REPETITIONS {
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

    let get = |id: &str| best(&results[id]);
    let (a, b, c, d, e) = (get("a"), get("b"), get("c"), get("d"), get("e"));
    // Latency probes: the better (lower) p99 of the two runs.
    let p99 = |key: &str| {
        under_cpu[key]
            .iter()
            .map(|l| l.p99_ms)
            .fold(f64::INFINITY, f64::min)
    };
    let mut report = serde_json::Map::new();
    let mut put = |k: &str, v: f64| {
        report.insert(k.into(), serde_json::json!((v * 1000.0).round() / 1000.0));
    };
    put(
        "instantiate_call_p50_us",
        in_process["instantiate_call_p50_us"],
    );
    put(
        "instantiate_call_p99_us",
        in_process["instantiate_call_p99_us"],
    );
    put(
        "instances_per_sec_1_thread",
        in_process["instances_per_sec_1_thread"],
    );
    put(
        "instances_per_sec_n_threads",
        in_process["instances_per_sec_n_threads"],
    );
    put("hello_ratio", b.requests_per_sec / a.requests_per_sec);
    put("cpu_ratio", c.requests_per_sec / d.requests_per_sec);
    put("cpu_p99_over_p50", c.p99_ms / c.p50_ms);
    put("fuel_cost_ratio", c.requests_per_sec / e.requests_per_sec);
    put("metrics_p99_ms_under_cpu", p99("metrics"));
    put("hello_p99_ms_under_cpu", p99("hello"));
    put("peak_rss_mb_hello", b.peak_rss_mb);
    put("idle_rss_mb", idle_rss_mb);
    put("idle_rss_mb_first_start", idle_rss_mb_first_start);
    put("instantiate_mean_us", in_process["instantiate_mean_us"]);
    let mut json = serde_json::Value::Object(report.clone());
    let runs: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .chain(under_cpu.iter())
        .map(|(id, runs)| {
            (
                id.to_string(),
                serde_json::Value::Array(
                    runs.iter()
                        .map(|l| {
                            serde_json::json!({
                                "requests_per_sec": l.requests_per_sec,
                                "p50_ms": l.p50_ms,
                                "p99_ms": l.p99_ms,
                                "errors": l.errors,
                                "peak_rss_mb": l.peak_rss_mb,
                            })
                        })
                        .collect(),
                ),
            )
        })
        .collect();
    json["runs"] = serde_json::Value::Object(runs);
    json["threads"] = in_process["threads"].into();
    json["seconds_per_case"] = seconds.into();
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;

    let machine = machine_description();
    let mut md = String::new();
    md.push_str(&format!(
        "Measured by `cargo xtask bench{}` on {machine}; wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {seconds} s per case, \
         best of {REPETITIONS} runs. Load generator and servers share the machine.\n\n",
        if quick { " --quick" } else { "" }
    ));
    md.push_str("| ratio | value | target |\n|---|---|---|\n");
    let row = |name: &str, v: f64, target: &str| format!("| {name} | {v:.3} | {target} |\n");
    md.push_str(&row(
        "gateway /hello vs bare hyper (b/a)",
        b.requests_per_sec / a.requests_per_sec,
        ">= 0.5",
    ));
    md.push_str(&row(
        "gateway /cpu vs native loop (c/d)",
        c.requests_per_sec / d.requests_per_sec,
        ">= 0.95",
    ));
    md.push_str(&row("/cpu p99 / p50", c.p99_ms / c.p50_ms, "<= 1.25"));
    md.push_str(&row(
        "fuel on vs off (c/e)",
        c.requests_per_sec / e.requests_per_sec,
        "(cost of fuel)",
    ));
    md.push_str(&format!(
        "\n| measure | value | target |\n|---|---|---|\n\
         | instantiate + call `hello`, p50 / p99 (in-process) | {:.1} / {:.1} us | p50 <= 5 us |\n\
         | of which instantiate (mean) | {:.1} us | |\n\
         | instances per second, 1 / {} threads | {:.0} / {:.0} | |\n\
         | admin `/metrics` p99 while `/cpu` saturates workers | {:.2} ms | <= 5 ms |\n\
         | `/hello` p99 while `/cpu` saturates workers | {:.2} ms | |\n\
         | peak RSS under `/hello` load | {:.1} MB | <= 32 MB |\n\
         | idle RSS after a restart (code cache warm) / first start | {:.1} / {:.1} MB | <= 16 MB |\n",
        in_process["instantiate_call_p50_us"],
        in_process["instantiate_call_p99_us"],
        in_process["instantiate_mean_us"],
        in_process["threads"],
        in_process["instances_per_sec_1_thread"],
        in_process["instances_per_sec_n_threads"],
        p99("metrics"),
        p99("hello"),
        b.peak_rss_mb,
        idle_rss_mb,
        idle_rss_mb_first_start,
    ));
    md.push_str(
        "\n| case | req/s | p50 ms | p99 ms | errors | peak RSS MB |\n|---|---|---|---|---|---|\n",
    );
    let load_cases = cases
        .iter()
        .map(|(id, name, _, _)| (*id, *name, &results[id]));
    let probe_cases = [
        (
            "f",
            "admin /metrics under /cpu load, 1 conn",
            &under_cpu["metrics"],
        ),
        ("f", "/hello under /cpu load, 1 conn", &under_cpu["hello"]),
    ];
    for (id, name, runs) in load_cases.chain(probe_cases) {
        for (i, l) in runs.iter().enumerate() {
            md.push_str(&format!(
                "| {id}{} {name} | {:.0} | {:.2} | {:.2} | {} | {:.1} |\n",
                i + 1,
                l.requests_per_sec,
                l.p50_ms,
                l.p99_ms,
                l.errors,
                l.peak_rss_mb
            ));
        }
    }
    std::fs::write(out.join("report.md"), &md)?;
    println!("{md}");
    println!("wrote target/bench/report.json and target/bench/report.md");
    Ok(())
}

fn machine_description() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cpus} cores ({model}), Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let output = "Running 2s test @ http://127.0.0.1:1/hello
  2 threads and 64 connections
  Latency Distribution
     50%  412.00us
     75%  600.00us
     90%    1.00ms
     99%    1.20ms
  123456 requests in 2.00s, 12.34MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  61728.00
Transfer/sec:      6.17MB
";
        let load = parse_wrk(output).expect("parses");
        assert_eq!(load.requests_per_sec, 61728.0);
        assert!((load.p50_ms - 0.412).abs() < 1e-9);
        assert!((load.p99_ms - 1.2).abs() < 1e-9);
        assert_eq!(load.errors, 15);
        assert!(parse_wrk("nothing").is_err());
        assert_eq!(parse_ms("2.00s"), Some(2000.0));
    }
}
