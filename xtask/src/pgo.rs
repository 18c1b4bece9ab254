//! `cargo xtask pgo`: the gateway built with profile-guided optimisation,
//! into `target/pgo/wasmgate`.
//!
//! An instrumented gateway is built and run under the bench's own load
//! (`/hello`, a `wasi:http` component, a route miss), LLVM merges the
//! profiles it wrote, and the gateway is built again with them, so that
//! the compiler lays out and inlines the request path as it ran. What that
//! is worth, measured side by side with the plain release build, is in
//! docs/benchmarks.md. Both builds get their own target folders under
//! `target/pgo/`, so the plain `target/release` build (which `serve` and
//! `bench` run) is left as it is.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::bench::runs::{
    Connections, HandlerEntry, Listeners, Server, gateway_binary_command, http, write_config,
    wrk_command,
};
use crate::{build_handlers, cargo, run};

/// What the instrumented gateway is trained on (path, the status it must
/// answer, seconds of load): the paths every request takes (routing, the
/// queue, instantiation, the call, the reply), through both kinds of
/// component, and a route miss.
const TRAINING: [(&str, u16, u64); 4] = [
    ("/hello", 200, 8),
    ("/hello?name=pgo", 200, 2),
    ("/wasi", 200, 6),
    ("/no-such-route", 404, 1),
];

/// How long a trained gateway may take to drain and write its profile.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds `target/pgo/wasmgate`; `args` must be empty.
pub fn pgo(args: &[String]) -> anyhow::Result<()> {
    if let Some(arg) = args.first() {
        bail!("cargo xtask pgo takes no arguments, not {arg:?}");
    }
    let profdata = llvm_profdata()?;
    build_handlers()?;
    let host = host_triple()?;
    let dir = std::env::current_dir()?.join("target/pgo");
    let profiles = dir.join("profiles");
    if profiles.exists() {
        std::fs::remove_dir_all(&profiles)
            .with_context(|| format!("removing old profiles in {}", profiles.display()))?;
    }

    let instrumented = build(
        &dir.join("instrumented"),
        &host,
        &format!("-Cprofile-generate={}", profiles.display()),
    )?;
    train(&instrumented, &dir.join("train"))?;

    let merged = dir.join("wasmgate.profdata");
    run(Command::new(&profdata)
        .arg("merge")
        .arg("-o")
        .arg(&merged)
        .arg(&profiles))?;

    let optimized = build(
        &dir.join("optimized"),
        &host,
        &format!("-Cprofile-use={}", merged.display()),
    )?;
    let out = dir.join("wasmgate");
    std::fs::copy(&optimized, &out)
        .with_context(|| format!("copying {} to {}", optimized.display(), out.display()))?;
    println!(
        "{}: the gateway optimised with a profile of its bench load",
        out.display()
    );
    Ok(())
}

/// Builds the gateway for `host` in `target_dir` with `flag` added to
/// RUSTFLAGS; the binary's path. With `--target` given, RUSTFLAGS reach
/// only the gateway's own code and dependencies, not build scripts or
/// proc macros (which are never profiled).
fn build(target_dir: &Path, host: &str, flag: &str) -> anyhow::Result<PathBuf> {
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(existing) if !existing.trim().is_empty() => format!("{existing} {flag}"),
        _ => flag.to_owned(),
    };
    run(cargo()
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "wasmgate",
            "--target",
            host,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTFLAGS", rustflags))?;
    Ok(target_dir.join(host).join("release/wasmgate"))
}

/// Runs the instrumented gateway `binary` under [`TRAINING`], then stops
/// it with SIGTERM: the profile is written as the process exits.
fn train(binary: &Path, dir: &Path) -> anyhow::Result<()> {
    let handlers = [
        HandlerEntry {
            greeting: Some("hi"),
            ..HandlerEntry::new("hello", "/hello", "hello.wasm")
        },
        HandlerEntry::new("wasi", "/wasi", "wasi_hello.wasm"),
    ];
    let config = write_config(&dir.join("train.toml"), true, &handlers)?;
    let server = Server::start(gateway_binary_command(binary, &config), Listeners::GATEWAY)?;
    for (path, expected, seconds) in TRAINING {
        let status = http("GET", &server.url, path, &[], &[])?.status;
        if status != expected {
            bail!("the instrumented gateway answered {path} with {status}, not {expected}");
        }
        eprintln!("xtask: training on {path} for {seconds} s");
        let wrk = wrk_command(
            &format!("{}{path}", server.url),
            "2",
            "32",
            seconds,
            Connections::KeepAlive,
        )
        .stdout(Stdio::null())
        .status()
        .context("running wrk")?;
        if !wrk.success() {
            bail!("wrk failed on {path}");
        }
    }
    server.stop(STOP_TIMEOUT)
}

/// `llvm-profdata` of the toolchain's `llvm-tools` component, added with
/// rustup when it is missing: its profile format must match rustc's LLVM.
fn llvm_profdata() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["--print", "sysroot"]))?;
    let host = host_triple()?;
    let path = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if !path.is_file() {
        run(Command::new("rustup").args(["component", "add", "llvm-tools"]))?;
    }
    if !path.is_file() {
        bail!(
            "{} is missing after `rustup component add llvm-tools`",
            path.display()
        );
    }
    Ok(path)
}

/// The triple rustc builds for by default (`host:` in `rustc -vV`).
fn host_triple() -> anyhow::Result<String> {
    let version = output(Command::new("rustc").arg("-vV"))?;
    parse_host(&version).context("`rustc -vV` printed no host line")
}

fn parse_host(version: &str) -> Option<String> {
    version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(|host| host.trim().to_owned())
}

/// A command's standard output; fails with its standard error.
fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_triple_is_read_from_rustc_s_version() {
        let version = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\n\
                       host: x86_64-unknown-linux-gnu\nrelease: 1.95.0\n";
        assert_eq!(
            parse_host(version).as_deref(),
            Some("x86_64-unknown-linux-gnu")
        );
        assert_eq!(parse_host("rustc 1.95.0\n"), None);
    }
}
