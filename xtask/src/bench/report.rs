//! The report: every figure computed once from the runs into a
//! [`Summary`], then written as `report.json` (figures, every run and
//! sample) and `report.md` (tables with targets).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

use super::Plan;
use super::cases::{CaseRuns, HTTPS_CASES, InProcess, LOAD_CASES, LoadResults};
use super::cluster::{CLUSTER_CONNECTIONS, CLUSTER_SWAP_CASES, CLUSTER_SWAPS, ClusterResults};
use super::hotload::{HotloadResults, MANY_HANDLERS, SWAP_CASES, SWAPS, rss_per_handler_kb};
use super::isolation::IsolationResults;
use super::runs::{Runs, TlsHandshakes, WRK_CONNECTIONS, WRK_THREADS, best, median, minimum};

/// Every figure of the report, each computed once.
struct Summary {
    /// In-process instantiate + call of `hello`: median, the target's figure.
    instantiate_call_p50_us: f64,
    /// Its tail.
    instantiate_call_p99_us: f64,
    /// Instantiation alone, to split the call's cost.
    instantiate_mean_us: f64,
    /// Instances per second on one thread.
    instances_per_sec_1_thread: f64,
    /// And on `threads` threads, to show how it scales.
    instances_per_sec_n_threads: f64,
    /// Threads of the in-process bench's second figure.
    threads: f64,
    /// b/a: gateway `/hello` against bare hyper.
    hello_ratio: f64,
    /// c/d: gateway `/cpu` against the native loop.
    cpu_ratio: f64,
    /// Fairness of the queue under a CPU-bound load.
    cpu_p99_over_p50: f64,
    /// c/e: `/cpu` with fuel metering against without.
    fuel_cost_ratio: f64,
    /// i/j: one wasi:http component, the gateway against `wasmtime serve`,
    /// a fresh instance per request in both.
    wasi_hello_vs_wasmtime_serve: f64,
    /// i/k: the same, `wasmtime serve` reusing instances.
    wasi_hello_vs_wasmtime_serve_reuse: f64,
    /// b/j: the SDK's `/hello` against `wasmtime serve`, fresh instances.
    hello_vs_wasmtime_serve: f64,
    /// b/k: the SDK's `/hello` against `wasmtime serve` reusing instances.
    hello_vs_wasmtime_serve_reuse: f64,
    /// l/a: a request through a guest that calls bare hyper, against the
    /// same request sent to bare hyper directly.
    proxied_vs_direct: f64,
    /// Best (lowest) p99 of the f probes: the admin listener...
    metrics_p99_ms_under_cpu: f64,
    /// ...and a cheap handler, while `/cpu` saturates the workers.
    hello_p99_ms_under_cpu: f64,
    /// Peak memory of case b's better run.
    peak_rss_mb_hello: f64,
    /// Idle memory after a restart (code cached).
    idle_rss_mb: f64,
    /// Idle memory after a first start (compiled in a child).
    idle_rss_mb_first_start: f64,
    /// Median PUT-to-200 of a component whose code is loaded.
    upload_to_serving_cached_ms: f64,
    /// Median PUT-to-200 of a component never seen (compiles).
    upload_to_serving_new_ms: f64,
    /// Failed requests over every run of h: any failure counts.
    swap_failed_requests: u64,
    /// h/g, better runs of each.
    swap_throughput_dip: f64,
    /// Best of the starts with 100 handlers, spawn to `/readyz` 200.
    startup_100_handlers_ms: f64,
    /// The same with one handler, for comparison.
    startup_1_handler_ms: f64,
    /// Idle memory each handler beyond the first adds.
    rss_per_handler_kb: f64,
    /// HTTPS against plain HTTP (m, n, o against b).
    https: HttpsFigures,
    /// Cluster mode: deploys across three replicas, p and q.
    cluster: ClusterFigures,
}

/// HTTPS against plain HTTP on one gateway: cases b and m to o.
pub struct HttpsFigures {
    /// m/b: HTTPS `/hello` over plain `/hello`, both keep-alive.
    https_hello_vs_plain: f64,
    /// n: HTTPS `/hello` with a handshake per request, req/s.
    tls_handshakes_per_sec: f64,
    /// n/o: a TLS handshake per request over a TCP connection per request.
    https_new_conn_vs_plain_new_conn: f64,
    /// The gateway's handshake counters over the runs.
    handshakes: TlsHandshakes,
}

impl HttpsFigures {
    /// The figures of `cases` (which must hold b, m, n and o).
    pub fn new(cases: &BTreeMap<&str, Runs>, handshakes: TlsHandshakes) -> Self {
        let case = |id: &str| best(&cases[id]);
        let (b, m, n, o) = (case("b"), case("m"), case("n"), case("o"));
        Self {
            https_hello_vs_plain: m.requests_per_sec / b.requests_per_sec,
            tls_handshakes_per_sec: n.requests_per_sec,
            https_new_conn_vs_plain_new_conn: n.requests_per_sec / o.requests_per_sec,
            handshakes,
        }
    }

    /// The figures under their report.json keys.
    fn figures(&self) -> [(&'static str, f64); 3] {
        [
            ("https_hello_vs_plain", self.https_hello_vs_plain),
            ("tls_handshakes_per_sec", self.tls_handshakes_per_sec),
            (
                "https_new_conn_vs_plain_new_conn",
                self.https_new_conn_vs_plain_new_conn,
            ),
        ]
    }

    /// The counts under their report.json keys.
    fn counts(&self) -> [(&'static str, u64); 2] {
        [
            ("tls_handshakes_failed", self.handshakes.failed),
            ("tls_handshakes_timeout", self.handshakes.timeout),
        ]
    }

    /// The rows of the ratio table.
    fn ratio_rows(&self) -> String {
        format!(
            "| gateway HTTPS /hello vs plain /hello, keep-alive (m/b) | {:.3} | >= 0.8 |\n\
             | HTTPS vs plain, a new connection per request (n/o) | {:.3} | (cost of a handshake) |\n",
            self.https_hello_vs_plain, self.https_new_conn_vs_plain_new_conn,
        )
    }

    /// The rows of the measure table.
    fn measure_rows(&self) -> String {
        format!(
            "| TLS handshakes per second (n: HTTPS /hello, a connection per request) | {:.0} | |\n\
             | failed / timed-out TLS handshakes during cases m and n (gateway's counters; {} ok) | {} / {} | 0 / 0 |\n",
            self.tls_handshakes_per_sec,
            self.handshakes.ok,
            self.handshakes.failed,
            self.handshakes.timeout,
        )
    }
}

/// What `--only https` prints: its figures and every run.
pub fn https_only(runs: &CaseRuns) -> String {
    let figures = HttpsFigures::new(&runs.cases, runs.handshakes);
    let mut md = String::from("| ratio | value | target |\n|---|---|---|\n");
    md.push_str(&figures.ratio_rows());
    md.push_str("\n| measure | value | target |\n|---|---|---|\n");
    md.push_str(&figures.measure_rows());
    md.push_str(CASE_HEADER);
    for case in LOAD_CASES
        .iter()
        .filter(|case| HTTPS_CASES.contains(&case.id))
    {
        md.push_str(&case_rows(case.id, case.name, &runs.cases[case.id]));
    }
    md
}

/// Cluster mode: deploys across three replicas, and cases p and q.
pub struct ClusterFigures {
    /// Median of the deploys, write sent to the new body on all three.
    served_everywhere_p50_ms: f64,
    /// The slowest of them.
    served_everywhere_max_ms: f64,
    /// Median of the same deploys, write sent to its answer.
    acknowledged_p50_ms: f64,
    /// Deploys measured.
    deploys: usize,
    /// Better q's req/s through HAProxy.
    swap_requests_per_sec: f64,
    /// Failed requests over every run of q.
    swap_failed_requests: u64,
    /// q/p, better runs of each.
    swap_throughput_dip: f64,
    /// How long each run's swaps took, seconds.
    swap_seconds: Vec<f64>,
}

impl ClusterFigures {
    /// The figures of `results`.
    pub fn new(results: &ClusterResults) -> Self {
        let (p, q) = (best(&results.swaps["p"]), best(&results.swaps["q"]));
        Self {
            served_everywhere_p50_ms: median(&results.served_everywhere_ms),
            served_everywhere_max_ms: results
                .served_everywhere_ms
                .iter()
                .copied()
                .fold(0.0, f64::max),
            acknowledged_p50_ms: median(&results.acknowledged_ms),
            deploys: results.served_everywhere_ms.len(),
            swap_requests_per_sec: q.requests_per_sec,
            swap_failed_requests: results.swaps["q"].iter().map(|l| l.errors).sum(),
            swap_throughput_dip: q.requests_per_sec / p.requests_per_sec,
            swap_seconds: results.swap_seconds.clone(),
        }
    }

    /// The figures under their report.json keys.
    fn figures(&self) -> [(&'static str, f64); 5] {
        [
            (
                "cluster_deploy_to_served_p50_ms",
                self.served_everywhere_p50_ms,
            ),
            (
                "cluster_deploy_to_served_max_ms",
                self.served_everywhere_max_ms,
            ),
            ("cluster_write_answered_p50_ms", self.acknowledged_p50_ms),
            ("cluster_swap_requests_per_sec", self.swap_requests_per_sec),
            ("cluster_swap_throughput_dip", self.swap_throughput_dip),
        ]
    }

    /// The rows of the ratio table.
    fn ratio_rows(&self) -> String {
        format!(
            "| cluster: req/s via HAProxy during {CLUSTER_SWAPS} swaps vs without (q/p) | {:.3} | (cost of swapping) |\n",
            self.swap_throughput_dip,
        )
    }

    /// The rows of the measure table.
    fn measure_rows(&self) -> String {
        let took = self
            .swap_seconds
            .iter()
            .map(|t| format!("{t:.1}"))
            .collect::<Vec<_>>()
            .join(" / ");
        format!(
            "| cluster: deploy to served on 3 replicas (write sent to the new body on all three), code cached, p50 / max of {} | {:.1} / {:.1} ms | p50 <= 200 ms |\n\
             | cluster: of which the write's answer (committed, served by the replica written to), p50 | {:.1} ms | |\n\
             | cluster: {CLUSTER_SWAPS} swaps on alternating replicas under load via HAProxy (q), req/s / failed requests (the swaps took {took} s) | {:.0} / {} | 0 failed |\n",
            self.deploys,
            self.served_everywhere_p50_ms,
            self.served_everywhere_max_ms,
            self.acknowledged_p50_ms,
            self.swap_requests_per_sec,
            self.swap_failed_requests,
        )
    }

    /// Every run of p and q, as rows of the runs table.
    fn case_rows(results: &ClusterResults) -> String {
        CLUSTER_SWAP_CASES
            .iter()
            .map(|(id, name)| case_rows(id, name, &results.swaps[id]))
            .collect()
    }
}

/// What `--only cluster` prints: its figures and every run.
pub fn cluster_only(plan: &Plan, results: &ClusterResults) -> String {
    let figures = ClusterFigures::new(results);
    let mut md = format!(
        "wrk -t{WRK_THREADS} -c{CLUSTER_CONNECTIONS} through HAProxy, {} s per run\n\n\
         | ratio | value | target |\n|---|---|---|\n",
        plan.seconds
    );
    md.push_str(&figures.ratio_rows());
    md.push_str("\n| measure | value | target |\n|---|---|---|\n");
    md.push_str(&figures.measure_rows());
    md.push_str(CASE_HEADER);
    md.push_str(&ClusterFigures::case_rows(results));
    let each = |samples: &[f64]| {
        samples
            .iter()
            .map(|ms| format!("{ms:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    md.push_str(&format!(
        "\ndeploy to served on all three, each (ms): {}\nthe write's answer, each (ms): {}\n",
        each(&results.served_everywhere_ms),
        each(&results.acknowledged_ms),
    ));
    md
}

impl Summary {
    fn new(
        in_process: &InProcess,
        load: &LoadResults,
        hotload: &HotloadResults,
        cluster: &ClusterResults,
    ) -> Self {
        let case = |id: &str| best(&load.cases[id]);
        let (a, b, c, d, e) = (case("a"), case("b"), case("c"), case("d"), case("e"));
        let (i, j, k, l) = (case("i"), case("j"), case("k"), case("l"));
        // Latency probes: the better (lower) p99 of the runs.
        let p99 = |key: &str| {
            load.under_cpu[key]
                .iter()
                .map(|l| l.p99_ms)
                .fold(f64::INFINITY, f64::min)
        };
        let (g, h) = (best(&hotload.swaps["g"]), best(&hotload.swaps["h"]));
        Self {
            instantiate_call_p50_us: in_process["instantiate_call_p50_us"],
            instantiate_call_p99_us: in_process["instantiate_call_p99_us"],
            instantiate_mean_us: in_process["instantiate_mean_us"],
            instances_per_sec_1_thread: in_process["instances_per_sec_1_thread"],
            instances_per_sec_n_threads: in_process["instances_per_sec_n_threads"],
            threads: in_process["threads"],
            hello_ratio: b.requests_per_sec / a.requests_per_sec,
            cpu_ratio: c.requests_per_sec / d.requests_per_sec,
            cpu_p99_over_p50: c.p99_ms / c.p50_ms,
            fuel_cost_ratio: c.requests_per_sec / e.requests_per_sec,
            wasi_hello_vs_wasmtime_serve: i.requests_per_sec / j.requests_per_sec,
            wasi_hello_vs_wasmtime_serve_reuse: i.requests_per_sec / k.requests_per_sec,
            hello_vs_wasmtime_serve: b.requests_per_sec / j.requests_per_sec,
            hello_vs_wasmtime_serve_reuse: b.requests_per_sec / k.requests_per_sec,
            proxied_vs_direct: l.requests_per_sec / a.requests_per_sec,
            metrics_p99_ms_under_cpu: p99("metrics"),
            hello_p99_ms_under_cpu: p99("hello"),
            peak_rss_mb_hello: b.peak_rss_mb,
            idle_rss_mb: load.idle_rss_mb,
            idle_rss_mb_first_start: load.idle_rss_mb_first_start,
            upload_to_serving_cached_ms: median(&hotload.upload_cached_ms),
            upload_to_serving_new_ms: median(&hotload.upload_new_ms),
            swap_failed_requests: hotload.swaps["h"].iter().map(|l| l.errors).sum(),
            swap_throughput_dip: h.requests_per_sec / g.requests_per_sec,
            startup_100_handlers_ms: minimum(&hotload.startup_many_ms),
            startup_1_handler_ms: minimum(&hotload.startup_one_ms),
            rss_per_handler_kb: rss_per_handler_kb(hotload),
            https: HttpsFigures::new(&load.cases, load.handshakes),
            cluster: ClusterFigures::new(cluster),
        }
    }

    /// The figures under their report.json keys.
    fn figures(&self) -> [(&'static str, f64); 29] {
        let [https_hello, handshakes, https_new_conn] = self.https.figures();
        [
            ("instantiate_call_p50_us", self.instantiate_call_p50_us),
            ("instantiate_call_p99_us", self.instantiate_call_p99_us),
            (
                "instances_per_sec_1_thread",
                self.instances_per_sec_1_thread,
            ),
            (
                "instances_per_sec_n_threads",
                self.instances_per_sec_n_threads,
            ),
            ("hello_ratio", self.hello_ratio),
            ("cpu_ratio", self.cpu_ratio),
            ("cpu_p99_over_p50", self.cpu_p99_over_p50),
            ("fuel_cost_ratio", self.fuel_cost_ratio),
            ("metrics_p99_ms_under_cpu", self.metrics_p99_ms_under_cpu),
            ("hello_p99_ms_under_cpu", self.hello_p99_ms_under_cpu),
            ("peak_rss_mb_hello", self.peak_rss_mb_hello),
            ("idle_rss_mb", self.idle_rss_mb),
            ("idle_rss_mb_first_start", self.idle_rss_mb_first_start),
            ("instantiate_mean_us", self.instantiate_mean_us),
            (
                "upload_to_serving_cached_ms",
                self.upload_to_serving_cached_ms,
            ),
            ("upload_to_serving_new_ms", self.upload_to_serving_new_ms),
            ("swap_throughput_dip", self.swap_throughput_dip),
            ("startup_100_handlers_ms", self.startup_100_handlers_ms),
            ("startup_1_handler_ms", self.startup_1_handler_ms),
            ("rss_per_handler_kb", self.rss_per_handler_kb),
            ("threads", self.threads),
            (
                "wasi_hello_vs_wasmtime_serve",
                self.wasi_hello_vs_wasmtime_serve,
            ),
            (
                "wasi_hello_vs_wasmtime_serve_reuse",
                self.wasi_hello_vs_wasmtime_serve_reuse,
            ),
            ("hello_vs_wasmtime_serve", self.hello_vs_wasmtime_serve),
            (
                "hello_vs_wasmtime_serve_reuse",
                self.hello_vs_wasmtime_serve_reuse,
            ),
            ("proxied_vs_direct", self.proxied_vs_direct),
            https_hello,
            handshakes,
            https_new_conn,
        ]
    }
}

/// Writes `report.json` and `report.md` into `out` and prints the latter.
pub fn write(
    plan: &Plan,
    out: &Path,
    in_process: &InProcess,
    load: &LoadResults,
    hotload: &HotloadResults,
    cluster: &ClusterResults,
    isolation: &IsolationResults,
) -> anyhow::Result<()> {
    let summary = Summary::new(in_process, load, hotload, cluster);
    let mut json = json_report(plan, &summary, load, hotload, cluster);
    if let Value::Object(report) = &mut json {
        for (key, value) in isolation.figures() {
            report.insert(key.into(), json!((value * 1000.0).round() / 1000.0));
        }
    }
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let mut md = markdown(plan, &summary, load, hotload, cluster);
    md.push_str(&isolation_rows(isolation));
    std::fs::write(out.join("report.md"), &md)?;
    println!("{md}");
    println!("wrote target/bench/report.json and target/bench/report.md");
    // A full run is the project's current table: the docs show it as
    // measured, never as edited by hand. A quick run is only a smoke test.
    if !plan.quick {
        for doc in ["README.md", "docs/benchmarks.md"] {
            let path = Path::new(doc);
            let text = std::fs::read_to_string(path)?;
            std::fs::write(
                path,
                with_table(&text, &md).with_context(|| doc.to_owned())?,
            )?;
            println!("updated the table in {doc}");
        }
    }
    Ok(())
}

/// Where the bench's table starts and ends in a document.
const TABLE_BEGIN: &str = "<!-- bench:begin (written by `cargo xtask bench`) -->";
const TABLE_END: &str = "<!-- bench:end -->";

/// `doc` with the text between its table markers replaced by `table`.
fn with_table(doc: &str, table: &str) -> anyhow::Result<String> {
    let (Some(begin), Some(end)) = (doc.find(TABLE_BEGIN), doc.find(TABLE_END)) else {
        anyhow::bail!("no {TABLE_BEGIN} ... {TABLE_END} markers");
    };
    anyhow::ensure!(begin < end, "{TABLE_END} comes before {TABLE_BEGIN}");
    let before = &doc[..begin + TABLE_BEGIN.len()];
    Ok(format!("{before}\n\n{}\n\n{}", table.trim(), &doc[end..]))
}

fn json_report(
    plan: &Plan,
    summary: &Summary,
    load: &LoadResults,
    hotload: &HotloadResults,
    cluster: &ClusterResults,
) -> Value {
    let mut report = serde_json::Map::new();
    for (key, value) in summary
        .figures()
        .into_iter()
        .chain(summary.cluster.figures())
    {
        report.insert(key.into(), json!((value * 1000.0).round() / 1000.0));
    }
    report.insert(
        "swap_failed_requests".into(),
        summary.swap_failed_requests.into(),
    );
    for (key, count) in summary.https.counts() {
        report.insert(key.into(), count.into());
    }
    report.insert(
        "cluster_swap_failed_requests".into(),
        summary.cluster.swap_failed_requests.into(),
    );
    let runs: serde_json::Map<String, Value> = load
        .cases
        .iter()
        .chain(load.under_cpu.iter())
        .chain(hotload.swaps.iter())
        .chain(cluster.swaps.iter())
        .map(|(id, runs)| {
            (
                id.to_string(),
                Value::Array(runs.iter().map(|l| l.json()).collect()),
            )
        })
        .collect();
    report.insert("runs".into(), Value::Object(runs));
    report.insert(
        "samples".into(),
        json!({
            "upload_to_serving_cached_ms": hotload.upload_cached_ms,
            "upload_to_serving_new_ms": hotload.upload_new_ms,
            "new_component_bytes": hotload.new_component_bytes,
            "swap_deploys": SWAPS,
            "swap_seconds": hotload.swap_seconds,
            "startup_100_handlers_ms": hotload.startup_many_ms,
            "startup_1_handler_ms": hotload.startup_one_ms,
            "idle_rss_kb_100_handlers": hotload.idle_rss_kb_many,
            "idle_rss_kb_1_handler": hotload.idle_rss_kb_one,
            "cluster_deploy_to_served_ms": cluster.served_everywhere_ms,
            "cluster_write_answered_ms": cluster.acknowledged_ms,
            "cluster_swaps": CLUSTER_SWAPS,
            "cluster_swap_seconds": cluster.swap_seconds,
        }),
    );
    report.insert("seconds_per_case".into(), plan.seconds.into());
    Value::Object(report)
}

fn markdown(
    plan: &Plan,
    summary: &Summary,
    load: &LoadResults,
    hotload: &HotloadResults,
    cluster: &ClusterResults,
) -> String {
    let s = summary;
    let seconds = plan.seconds;
    let repetitions = plan.repetitions;
    let mut md = String::new();
    md.push_str(&format!(
        "Measured by `cargo xtask bench{}` on {}; wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {seconds} s per case, \
         best of {repetitions} runs. Load generator and servers share the machine.\n\n",
        if plan.quick { " --quick" } else { "" },
        machine_description(),
    ));
    md.push_str("| ratio | value | target |\n|---|---|---|\n");
    let row = |name: &str, v: f64, target: &str| format!("| {name} | {v:.3} | {target} |\n");
    md.push_str(&row(
        "gateway /hello vs bare hyper (b/a)",
        s.hello_ratio,
        ">= 0.5",
    ));
    md.push_str(&row(
        "gateway /cpu vs native loop (c/d)",
        s.cpu_ratio,
        ">= 0.95",
    ));
    md.push_str(&row("/cpu p99 / p50", s.cpu_p99_over_p50, "<= 1.25"));
    md.push_str(&row(
        "fuel on vs off (c/e)",
        s.fuel_cost_ratio,
        "(cost of fuel)",
    ));
    md.push_str(&row(
        &format!("req/s during {SWAPS} deploys vs without (h/g)"),
        s.swap_throughput_dip,
        "(cost of swapping)",
    ));
    md.push_str(&row(
        "wasi:http component, gateway vs `wasmtime serve`, fresh instances (i/j)",
        s.wasi_hello_vs_wasmtime_serve,
        ">= 4",
    ));
    md.push_str(&row(
        "the same, `wasmtime serve` reusing instances (i/k)",
        s.wasi_hello_vs_wasmtime_serve_reuse,
        "",
    ));
    md.push_str(&row(
        "gateway /hello vs `wasmtime serve`, fresh instances (b/j)",
        s.hello_vs_wasmtime_serve,
        ">= 8",
    ));
    md.push_str(&row(
        "gateway /hello vs `wasmtime serve` reusing instances (b/k)",
        s.hello_vs_wasmtime_serve_reuse,
        ">= 1.25",
    ));
    md.push_str(&row(
        "proxied through a guest vs straight to bare hyper (l/a)",
        s.proxied_vs_direct,
        "(cost of a guest in the path)",
    ));
    md.push_str(&s.https.ratio_rows());
    md.push_str(&s.cluster.ratio_rows());
    md.push_str(&format!(
        "\n| measure | value | target |\n|---|---|---|\n\
         | instantiate + call `hello`, p50 / p99 (in-process) | {:.1} / {:.1} us | p50 <= 5 us |\n\
         | of which instantiate (mean) | {:.1} us | |\n\
         | instances per second, 1 / {} threads | {:.0} / {:.0} | |\n\
         | admin `/metrics` p99 while `/cpu` saturates workers | {:.2} ms | <= 5 ms |\n\
         | `/hello` p99 while `/cpu` saturates workers | {:.2} ms | |\n\
         | peak RSS under `/hello` load | {:.1} MB | <= 32 MB |\n\
         | idle RSS after a restart (code cache warm) / first start | {:.1} / {:.1} MB | <= 16 MB |\n",
        s.instantiate_call_p50_us,
        s.instantiate_call_p99_us,
        s.instantiate_mean_us,
        s.threads,
        s.instances_per_sec_1_thread,
        s.instances_per_sec_n_threads,
        s.metrics_p99_ms_under_cpu,
        s.hello_p99_ms_under_cpu,
        s.peak_rss_mb_hello,
        s.idle_rss_mb,
        s.idle_rss_mb_first_start,
    ));
    let uploads = plan.uploads;
    let took = hotload
        .swap_seconds
        .iter()
        .map(|t| format!("{t:.1}"))
        .collect::<Vec<_>>()
        .join(" / ");
    md.push_str(&format!(
        "| deploy to serving (PUT sent to first 200), code cached, p50 of {uploads} | {:.1} ms | <= 100 ms |\n\
         | deploy to serving, new {:.0} KB component (compiles), p50 of {uploads} | {:.1} ms | |\n\
         | failed requests during {SWAPS} deploys under load (h; the deploys took {took} s) | {} | 0 |\n\
         | spawn to `/readyz` 200, {MANY_HANDLERS} handlers / 1 (code cached) | {:.0} / {:.0} ms | <= 1000 ms |\n\
         | idle RSS per handler ({MANY_HANDLERS} handlers against 1) | {:.1} KB | |\n",
        s.upload_to_serving_cached_ms,
        hotload.new_component_bytes as f64 / 1024.0,
        s.upload_to_serving_new_ms,
        s.swap_failed_requests,
        s.startup_100_handlers_ms,
        s.startup_1_handler_ms,
        s.rss_per_handler_kb,
    ));
    md.push_str(&s.https.measure_rows());
    md.push_str(&s.cluster.measure_rows());
    md.push_str(CASE_HEADER);
    let load_cases = LOAD_CASES
        .iter()
        .map(|case| (case.id, case.name, &load.cases[case.id]));
    let probe_cases = [
        (
            "f",
            "admin /metrics under /cpu load, 1 conn",
            &load.under_cpu["metrics"],
        ),
        (
            "f",
            "/hello under /cpu load, 1 conn",
            &load.under_cpu["hello"],
        ),
    ];
    let swap_cases = SWAP_CASES
        .iter()
        .map(|(id, name)| (*id, *name, &hotload.swaps[id]));
    for (id, name, runs) in load_cases.chain(probe_cases).chain(swap_cases) {
        md.push_str(&case_rows(id, name, runs));
    }
    md.push_str(&ClusterFigures::case_rows(cluster));
    md
}

/// The isolation figures: good's p99 and throughput against alone.
fn isolation_rows(isolation: &IsolationResults) -> String {
    let row = |name: &str, load: &crate::bench::runs::Load| {
        format!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.3} |\n",
            load.requests_per_sec,
            load.p50_ms,
            load.p99_ms,
            load.requests_per_sec / isolation.alone.requests_per_sec,
        )
    };
    let mut md = String::from(
        "\n| good tenant /hello, 1 conn, while evil sends | req/s | p50 ms | p99 ms | req/s vs alone |\n|---|---|---|---|---|\n",
    );
    md.push_str(&row("nothing", &isolation.alone));
    md.push_str(&row("`/cpu?iters=3000000`, 16 conns", &isolation.under_cpu));
    md.push_str(&row("`/faults/loop`, 8 conns", &isolation.under_loop));
    md.push_str(&row(
        "nothing, but a `SCHED_IDLE` spin loop per core runs outside the gateway (the kernel's floor)",
        &isolation.under_idle_spinners,
    ));
    md
}

/// The head of the table of every run.
const CASE_HEADER: &str =
    "\n| case | req/s | p50 ms | p99 ms | errors | peak RSS MB |\n|---|---|---|---|---|---|\n";

/// One row per run of a case.
fn case_rows(id: &str, name: &str, runs: &Runs) -> String {
    let mut rows = String::new();
    for (i, l) in runs.iter().enumerate() {
        rows.push_str(&format!(
            "| {id}{} {name} | {:.0} | {:.2} | {:.2} | {} | {:.1} |\n",
            i + 1,
            l.requests_per_sec,
            l.p50_ms,
            l.p99_ms,
            l.errors,
            l.peak_rss_mb
        ));
    }
    rows
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
    fn the_table_between_the_markers_is_replaced_and_the_rest_kept() {
        let doc = format!("intro\n{TABLE_BEGIN}\nold | table\n{TABLE_END}\nafter\n");
        let updated = with_table(&doc, "new | table\n").expect("markers");
        assert_eq!(
            updated,
            format!("intro\n{TABLE_BEGIN}\n\nnew | table\n\n{TABLE_END}\nafter\n")
        );
        assert_eq!(with_table(&updated, "new | table").expect("again"), updated);
        assert!(with_table("no markers", "x").is_err());
    }
}
