//! `cargo xtask bench --against OLD_BINARY`: this tree's gateway against
//! another build of it, both serving `/hello` at the same time.
//!
//! On a shared machine throughput drifts by 20% and more from one minute
//! to the next, so two builds measured one after the other cannot show a
//! change of a few percent. Run at the same moment, each under its own
//! `wrk -t1 -c32`, both see the same machine, and the ratio of their
//! rates cancels the drift (a binary against itself read 0.97 to 1.01 per
//! round, 0.99 over six). Each round starts both gateways afresh, in
//! alternating order, and the report is every round's ratio and their
//! mean.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::Plan;
use super::runs::{
    HandlerEntry, Listeners, Server, gateway_binary_command, http, spawn_wrk, write_config,
    wrk_result,
};

/// The path both gateways serve, and what it must answer.
const PATH: &str = "/hello";
const EXPECTED: &str = "hi from wasmgate: hello";
/// Each gateway's load: half of the bench's `-t2 -c64`, so that the two
/// together load the machine as one load case does.
const WRK_THREADS: &str = "1";
const WRK_CONNECTIONS: &str = "32";
/// A first second of load on both, not measured: connections, caches and
/// the malloc arenas settle.
const WARM_UP_SECONDS: u64 = 1;
/// Rounds when `--runs` does not say.
pub const DEFAULT_ROUNDS: usize = 6;

/// One round: both gateways' rates, measured over the same seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    /// `OLD_BINARY`'s requests per second.
    pub old: f64,
    /// This tree's.
    pub new: f64,
}

impl Round {
    /// This tree's rate as a share of the other build's.
    pub fn ratio(&self) -> f64 {
        self.new / self.old
    }
}

/// Compares `target/release/wasmgate` with `old`, `rounds` times, and
/// prints every round and the mean ratio.
pub fn run(plan: &Plan, out: &Path, old: &Path, rounds: usize) -> anyhow::Result<()> {
    let old = std::fs::canonicalize(old)
        .with_context(|| format!("--against {}: no such binary", old.display()))?;
    let new = std::fs::canonicalize("target/release/wasmgate")?;
    let handlers = [HandlerEntry {
        greeting: Some("hi"),
        ..HandlerEntry::new("hello", PATH, "hello.wasm")
    }];
    let configs = [
        write_config(&out.join("against/old/bench.toml"), true, &handlers)?,
        write_config(&out.join("against/new/bench.toml"), true, &handlers)?,
    ];
    let mut measured = Vec::with_capacity(rounds);
    for round in 0..rounds {
        eprintln!("xtask: --against, round {} of {rounds}", round + 1);
        // The build started (and loaded) first gets the first pick of
        // ports, pages and cores; which one that is alternates.
        let old_first = round % 2 == 0;
        let (old_server, new_server) = if old_first {
            let old_server = start(&old, &configs[0])?;
            (old_server, start(&new, &configs[1])?)
        } else {
            let new_server = start(&new, &configs[1])?;
            (start(&old, &configs[0])?, new_server)
        };
        both(&old_server, &new_server, old_first, WARM_UP_SECONDS)?;
        let (old_rate, new_rate) = both(&old_server, &new_server, old_first, plan.seconds)?;
        measured.push(Round {
            old: old_rate,
            new: new_rate,
        });
    }
    println!("{}", report(&old, &measured));
    Ok(())
}

/// Starts the gateway `binary` on `config` and checks its answer.
fn start(binary: &Path, config: &Path) -> anyhow::Result<Server> {
    let server = Server::start(gateway_binary_command(binary, config), Listeners::GATEWAY)?;
    let response = http("GET", &server.url, PATH, &[], &[])?;
    if response.status != 200 || !response.body.contains(EXPECTED) {
        bail!(
            "{} answered {PATH} with {} {:?}, not 200 {EXPECTED:?}",
            binary.display(),
            response.status,
            response.body
        );
    }
    Ok(server)
}

/// Loads both servers for `seconds` at the same time (the load on `old`
/// starts a moment earlier if `old_first`); their rates.
fn both(old: &Server, new: &Server, old_first: bool, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let old_url = format!("{}{PATH}", old.url);
    let new_url = format!("{}{PATH}", new.url);
    let spawn = |url: &str, server: &Server| {
        spawn_wrk(url, WRK_THREADS, WRK_CONNECTIONS, seconds, server.pid())
    };
    let (old_wrk, new_wrk) = if old_first {
        let old_wrk = spawn(&old_url, old)?;
        (old_wrk, spawn(&new_url, new)?)
    } else {
        let new_wrk = spawn(&new_url, new)?;
        (spawn(&old_url, old)?, new_wrk)
    };
    let old_load = wrk_result(old_wrk, &old_url)?;
    let new_load = wrk_result(new_wrk, &new_url)?;
    for (url, load) in [(&old_url, &old_load), (&new_url, &new_load)] {
        if load.errors > 0 {
            bail!("{url}: {} requests failed", load.errors);
        }
    }
    Ok((old_load.requests_per_sec, new_load.requests_per_sec))
}

/// The rounds as a table, and their mean ratio with its range.
pub fn report(old: &Path, rounds: &[Round]) -> String {
    let mut text = format!(
        "`/hello`, this tree (new) against {} (old), at the same time\n\n\
         | round | old req/s | new req/s | new / old |\n|---|---|---|---|\n",
        old.display()
    );
    for (i, round) in rounds.iter().enumerate() {
        text.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.3} |\n",
            i + 1,
            round.old,
            round.new,
            round.ratio()
        ));
    }
    let ratios: Vec<f64> = rounds.iter().map(Round::ratio).collect();
    if let Some(summary) = Summary::of(&ratios) {
        text.push_str(&format!(
            "\nnew / old: mean {:.3} over {} rounds (range {:.3} to {:.3}); \
             a build against itself reads within about 0.03 of 1 per round\n",
            summary.mean,
            ratios.len(),
            summary.min,
            summary.max
        ));
    }
    text
}

/// Mean and range of some ratios.
#[derive(Debug, PartialEq)]
struct Summary {
    mean: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn of(ratios: &[f64]) -> Option<Self> {
        if ratios.is_empty() {
            return None;
        }
        Some(Self {
            mean: ratios.iter().sum::<f64>() / ratios.len() as f64,
            min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
            max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// `--against PATH [--runs N]` from xtask's arguments: the other build and
/// the rounds, or `None` without `--against`.
pub fn args(args: &[String]) -> anyhow::Result<Option<(PathBuf, usize)>> {
    let value = |flag: &str| -> anyhow::Result<Option<&String>> {
        match args.iter().position(|a| a == flag) {
            None => Ok(None),
            Some(i) => args
                .get(i + 1)
                .map(Some)
                .with_context(|| format!("{flag} needs a value")),
        }
    };
    let Some(old) = value("--against")? else {
        if value("--runs")?.is_some() {
            bail!("--runs goes with --against OLD_BINARY");
        }
        return Ok(None);
    };
    let rounds = match value("--runs")? {
        None => DEFAULT_ROUNDS,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => bail!("--runs takes a number of rounds, 1 or more (got {n:?})"),
        },
    };
    Ok(Some((PathBuf::from(old), rounds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn reads_the_other_build_and_the_rounds() {
        assert_eq!(args(&strings(&["--quick"])).ok(), Some(None));
        assert_eq!(
            args(&strings(&["--against", "/tmp/old"])).ok(),
            Some(Some((PathBuf::from("/tmp/old"), DEFAULT_ROUNDS)))
        );
        assert_eq!(
            args(&strings(&["--runs", "3", "--against", "old"])).ok(),
            Some(Some((PathBuf::from("old"), 3)))
        );
        for bad in [
            &["--against"][..],
            &["--against", "old", "--runs"],
            &["--against", "old", "--runs", "0"],
            &["--against", "old", "--runs", "x"],
            &["--runs", "3"],
        ] {
            assert!(args(&strings(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reports_every_round_and_the_mean_ratio() {
        let rounds = [
            Round {
                old: 50_000.0,
                new: 51_000.0,
            },
            Round {
                old: 60_000.0,
                new: 59_400.0,
            },
        ];
        let text = report(Path::new("/tmp/old"), &rounds);
        assert!(text.contains("| 1 | 50000 | 51000 | 1.020 |"), "{text}");
        assert!(text.contains("| 2 | 60000 | 59400 | 0.990 |"), "{text}");
        assert!(
            text.contains("mean 1.005 over 2 rounds (range 0.990 to 1.020)"),
            "{text}"
        );
        assert_eq!(Summary::of(&[]), None);
    }
}
