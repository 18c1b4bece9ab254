//! Build orchestration for wasmgate, run as `cargo xtask <command>`:
//!
//! - `build-handlers`: adds the `wasm32-wasip2` target with rustup when it is
//!   missing, then builds every handler component in `handlers/`.
//! - `serve [ARGS]`: builds the handlers and the gateway (release) and serves
//!   `examples/wasmgate.toml`; ARGS go to `wasmgate serve`.
//! - `test`: fmt check, clippy `-D warnings` (host and wasm), rustdoc
//!   `-D warnings`, every test of every workspace member (handler crates'
//!   unit tests natively).
//! - `bench [--quick]`: the benchmark report (see `bench.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

mod bench;

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root()?;
    std::env::set_current_dir(&root).with_context(|| format!("entering {}", root.display()))?;
    match command.as_str() {
        "build-handlers" => build_handlers(),
        "serve" => serve(&rest),
        "test" => test(),
        "bench" => bench::bench(&rest),
        _ => bail!(
            "usage: cargo xtask <command>\n\n\
             commands:\n  \
             serve [ARGS]     build everything and run the gateway on examples/wasmgate.toml\n  \
             test             fmt check, clippy -D warnings, every test\n  \
             bench [--quick]  load and in-process benchmarks; writes target/bench/report.{{json,md}}\n  \
             build-handlers   build the handler components for {WASM_TARGET}"
        ),
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent folder")
}

/// Runs a command, failing with its command line when it fails.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    let line = format!("{command:?}");
    eprintln!("xtask: {}", line.replace('"', ""));
    let status = command
        .status()
        .with_context(|| format!("starting {line}"))?;
    if !status.success() {
        bail!("{line} failed ({status})");
    }
    Ok(())
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The packages in `handlers/` that build a component (cdylib).
fn handler_packages() -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("handlers").context("reading handlers/")? {
        let path = entry?.path();
        if let Ok(manifest) = std::fs::read_to_string(path.join("Cargo.toml"))
            && manifest.contains("cdylib")
            && let Some(name) = path.file_name()
        {
            names.push(name.to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Installs a Debian package when its program is not on PATH.
pub(crate) fn ensure_apt_tool(program: &str, package: &str) -> anyhow::Result<()> {
    if Command::new(program).arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: {program} is missing; installing Debian package {package}");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup: wasmgate needs rustup to add the wasm32-wasip2 target")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

fn with_packages<'a>(command: &'a mut Command, packages: &[String]) -> &'a mut Command {
    for package in packages {
        command.args(["-p", package]);
    }
    command
}

pub(crate) fn build_handlers() -> anyhow::Result<()> {
    ensure_wasm_target()?;
    let packages = handler_packages()?;
    run(with_packages(
        cargo().args(["build", "--release", "--target", WASM_TARGET]),
        &packages,
    ))
}

fn serve(args: &[String]) -> anyhow::Result<()> {
    build_handlers()?;
    run(cargo()
        .args(["run", "--release", "-p", "wasmgate", "--", "serve"])
        .args(["--config", "examples/wasmgate.toml"])
        .args(args))
}

fn test() -> anyhow::Result<()> {
    build_handlers()?;
    // The metrics test checks the exposition with promtool (DESIGN.md).
    ensure_apt_tool("promtool", "prometheus")?;
    let packages = handler_packages()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(with_packages(
        cargo().args(["clippy", "--release", "--target", WASM_TARGET]),
        &packages,
    )
    .args(["--", "-D", "warnings"]))?;
    // Broken intra-doc links are bugs in the docs handler authors read.
    run(cargo()
        .args(["doc", "--no-deps", "-p", "wasmgate", "-p", "wasmgate-sdk"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    // Every member, handler crates included: they are components, but
    // their unit tests (query parsing and the like) run natively, where
    // the SDK's imports are never called. The host's integration tests run
    // the same crates as components through the gateway.
    run_tests(cargo().args(["test", "--workspace"]))
}

/// Runs `cargo test`, passing its output through, and ends with one line
/// totalling every test binary (the last binary alone, often doc tests with
/// nothing in them, says little).
fn run_tests(command: &mut Command) -> anyhow::Result<()> {
    use std::io::BufRead;
    eprintln!("xtask: {}", format!("{command:?}").replace('"', ""));
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// `test result: ok. 23 passed; 0 failed; ...` -> (23, 0).
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split([';', '.'])
            .find_map(|part| part.trim().strip_suffix(word)?.trim().parse::<u64>().ok())
    };
    Some((count(" passed")?, count(" failed")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_test_result_lines() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 23 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some((23, 0))
        );
        assert_eq!(
            parse_test_result("test result: FAILED. 2 passed; 1 failed; 0 ignored"),
            Some((2, 1))
        );
        assert_eq!(parse_test_result("running 3 tests"), None);
    }
}
