//! Build orchestration for wasmgate, run as `cargo xtask <command>`:
//!
//! - `build-handlers`: adds the `wasm32-wasip2` target with rustup when it is
//!   missing, then builds every handler component in `handlers/`.
//! - `serve [ARGS]`: builds the handlers and the gateway (release) and serves
//!   `examples/wasmgate.toml` (or the `--config` in ARGS); ARGS go to
//!   `wasmgate serve`.
//! - `install`: `cargo install --path host --locked`, so `wasmgate` is on
//!   PATH (in `~/.cargo/bin`).
//! - `test`: fmt check, clippy `-D warnings` (host and wasm), rustdoc
//!   `-D warnings`, every test of every workspace member (handler crates'
//!   unit tests natively); installs what the tests run (promtool, etcd,
//!   docker-registry, haproxy) with apt-get when missing.
//! - `bench [--quick] [--only isolation|https|cluster] [--against OLD]`:
//!   the benchmark report (see `bench/mod.rs`); installs wrk, etcd, docker-registry and
//!   haproxy (apt-get) and the `wasmtime` CLI (`wasmtime_cli.rs`) when
//!   missing.
//! - `pgo`: `target/pgo/wasmgate`, the gateway built with profile-guided
//!   optimisation from a run of an instrumented build under the bench's
//!   load (see `pgo.rs`); adds rustup's `llvm-tools` and installs wrk when
//!   missing.
//!
//! Every command that builds the gateway installs `protoc` and protobuf's
//! well-known types (Debian's `protobuf-compiler` and `libprotobuf-dev`)
//! first when they are missing: the etcd client crate needs them to build.
//!
//! A command that fails ends xtask with the command's own output and exit
//! status, and nothing more: its output is the message.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};

use anyhow::{Context, bail};

mod bench;
mod pgo;
mod wasmtime_cli;

const WASM_TARGET: &str = "wasm32-wasip2";

const USAGE: &str = "usage: cargo xtask <command>

commands:
  serve [ARGS]     build everything and run the gateway on examples/wasmgate.toml
                   (ARGS go to `wasmgate serve`, --config included)
  install          cargo install --path host --locked: puts `wasmgate` on PATH
  test             fmt check, clippy -D warnings, every test
  bench [--quick]  load and in-process benchmarks; writes target/bench/report.{json,md}
                   (--only isolation|https|cluster: just those cases, printed;
                   --against OLD_BINARY [--runs N]: /hello on this tree's gateway and
                   on OLD_BINARY at the same time, N rounds, printed)
  pgo              build target/pgo/wasmgate, optimised with a profile of the gateway
                   under the bench's load (two release builds' time; target/release is untouched)
  build-handlers   build the handler components for wasm32-wasip2";

/// A command xtask ran failed; it has said why on its own output.
#[derive(Debug)]
pub(crate) struct ChildFailed {
    /// The exit status xtask ends with: the command's own.
    code: u8,
}

impl std::fmt::Display for ChildFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a command failed with exit status {}", self.code)
    }
}

impl std::error::Error for ChildFailed {}

impl ChildFailed {
    fn new(status: ExitStatus) -> Self {
        Self {
            code: exit_code(status),
        }
    }
}

/// The exit status to pass on for a child's `status`: its code, or for a
/// child killed by a signal the shell's 128 + signal.
fn exit_code(status: ExitStatus) -> u8 {
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    #[cfg(not(unix))]
    let signal: Option<i32> = None;
    match (status.code(), signal) {
        (Some(code), _) => u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

fn main() -> ExitCode {
    // Not `main() -> Result`: that prints the error's Debug form, with a
    // backtrace of xtask itself under RUST_BACKTRACE=1.
    match xtask() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ending(&e).map_or(ExitCode::FAILURE, ExitCode::from),
    }
}

/// How xtask ends for `error`: a failed command's status, said by the
/// command already; anything else is said here, on one line.
fn ending(error: &anyhow::Error) -> Option<u8> {
    if let Some(failed) = error.downcast_ref::<ChildFailed>() {
        return Some(failed.code);
    }
    eprintln!("xtask: {error:#}");
    None
}

fn xtask() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root()?;
    std::env::set_current_dir(&root).with_context(|| format!("entering {}", root.display()))?;
    ensure_apt_tools(&tools_for(&command))?;
    match command.as_str() {
        "build-handlers" => build_handlers(),
        "serve" => serve(&rest),
        "install" => install(),
        "test" => test(),
        "bench" => bench::bench(&rest),
        "pgo" => pgo::pgo(&rest),
        _ => bail!("{USAGE}"),
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent folder")
}

/// Runs a command, its output passed through; when it fails, fails with
/// [`ChildFailed`] (its output said why).
pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    let line = display(command);
    eprintln!("xtask: {line}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        return Err(ChildFailed::new(status).into());
    }
    Ok(())
}

/// A command as a person would type it: the program's name without its
/// folder (cargo is `$CARGO`, a path into the toolchain), its arguments
/// quoted only where they need it, and the environment it is given.
fn display(command: &Command) -> String {
    let program = Path::new(command.get_program());
    let mut words: Vec<String> = command
        .get_envs()
        .filter_map(|(key, value)| {
            let value = value?;
            Some(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ))
        })
        .collect();
    words.push(
        program
            .file_name()
            .unwrap_or(program.as_os_str())
            .to_string_lossy()
            .into_owned(),
    );
    words.extend(command.get_args().map(|a| quote(&a.to_string_lossy())));
    words.join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The packages in `handlers/` that build a component (cdylib). Fails,
/// saying what to add, if one is not a member of the workspace: cargo
/// would only say that `-p NAME` matches no package.
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
    let metadata = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot start cargo metadata")?;
    if !metadata.status.success() {
        return Err(ChildFailed::new(metadata.status).into());
    }
    let members = member_folders(&metadata.stdout)?;
    let root = std::env::current_dir().context("the workspace folder")?;
    let outside: Vec<String> = names
        .iter()
        .map(|name| format!("handlers/{name}"))
        .filter(|folder| !members.contains(&root.join(folder)))
        .collect();
    if let Some(message) = not_members_message(&outside) {
        bail!("{message}");
    }
    Ok(names)
}

/// The folders of the workspace's members, from `cargo metadata` JSON.
fn member_folders(metadata: &[u8]) -> anyhow::Result<Vec<PathBuf>> {
    let metadata: serde_json::Value =
        serde_json::from_slice(metadata).context("reading cargo metadata's output")?;
    let members = metadata["workspace_members"]
        .as_array()
        .context("cargo metadata lists no workspace_members")?;
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?;
    Ok(packages
        .iter()
        .filter(|package| members.contains(&package["id"]))
        .filter_map(|package| Path::new(package["manifest_path"].as_str()?).parent())
        .map(Path::to_path_buf)
        .collect())
}

/// What to do about handler folders that are not workspace members.
fn not_members_message(folders: &[String]) -> Option<String> {
    let (last, rest) = folders.split_last()?;
    let quoted = |f: &String| format!("\"{f}\"");
    let list = if rest.is_empty() {
        quoted(last)
    } else {
        let rest: Vec<String> = rest.iter().map(quoted).collect();
        format!("{} and {}", rest.join(", "), quoted(last))
    };
    let (is, them) = if rest.is_empty() {
        ("is", "it")
    } else {
        ("are", "them")
    };
    Some(format!(
        "{list} {is} not in the workspace: add {them} to `members` in the [workspace] \
         section of Cargo.toml (the repository's top folder), then build again"
    ))
}

/// Something xtask needs and the Debian package that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AptTool {
    /// What it is, for messages: the program's name for a program.
    program: &'static str,
    /// The package apt-get installs for it.
    package: &'static str,
    /// How xtask tells it is there.
    found: Found,
}

/// How xtask tells that an [`AptTool`] is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// The program is an executable on PATH.
    OnPath,
    /// protoc finds `google/protobuf/*.proto` ([`has_well_known_types`]).
    BesideProtoc,
}

impl AptTool {
    /// A program of `package`, looked up on PATH.
    const fn program(program: &'static str, package: &'static str) -> Self {
        Self {
            program,
            package,
            found: Found::OnPath,
        }
    }

    /// Whether it is there already.
    fn is_present(&self) -> bool {
        match self.found {
            Found::OnPath => on_path(self.program),
            Found::BesideProtoc => has_well_known_types(),
        }
    }
}

/// The etcd client crate runs `protoc` in its build script, so every
/// command that builds the gateway needs it first.
const PROTOC: AptTool = AptTool::program("protoc", "protobuf-compiler");

/// etcd's protos import `google/protobuf/descriptor.proto` and friends,
/// which Debian ships apart from protoc (a recommendation of
/// protobuf-compiler, which `--no-install-recommends` leaves out).
const PROTOC_INCLUDES: AptTool = AptTool {
    program: "protobuf's well-known types",
    package: "libprotobuf-dev",
    found: Found::BesideProtoc,
};

/// The load generator of `bench`.
const WRK: AptTool = AptTool::program("wrk", "wrk");

/// `promtool`: the tests check the metrics exposition with it.
const PROMTOOL: AptTool = AptTool::program("promtool", "prometheus");

/// What a cluster runs on: etcd, a registry and a load balancer, for the
/// cluster tests and the cluster bench cases.
const CLUSTER_TOOLS: [AptTool; 3] = [
    AptTool::program("etcd", "etcd-server"),
    AptTool::program("docker-registry", "docker-registry"),
    AptTool::program("haproxy", "haproxy"),
];

/// The tools `command` needs before it starts; installed by [`xtask`]
/// when missing. `build-handlers` builds only the components, which need
/// none.
fn tools_for(command: &str) -> Vec<AptTool> {
    let mut tools = match command {
        "serve" | "install" | "test" | "bench" | "pgo" => vec![PROTOC, PROTOC_INCLUDES],
        _ => Vec::new(),
    };
    match command {
        "test" => {
            tools.push(PROMTOOL);
            tools.extend(CLUSTER_TOOLS);
        }
        "bench" => {
            tools.push(WRK);
            tools.extend(CLUSTER_TOOLS);
        }
        "pgo" => tools.push(WRK),
        _ => {}
    }
    tools
}

/// Whether the protoc the build will run finds `google/protobuf/*.proto`.
fn has_well_known_types() -> bool {
    well_known_types_found(
        std::env::var_os("PROTOC_INCLUDE").as_deref(),
        std::env::var_os("PATH").as_deref(),
    )
}

/// Whether `google/protobuf/descriptor.proto` is in `protoc_include` (prost
/// passes `$PROTOC_INCLUDE` to protoc) or in `include/` beside the folder
/// of the first protoc on `path` (where protoc looks: Debian's
/// /usr/bin/protoc finds /usr/include).
fn well_known_types_found(protoc_include: Option<&OsStr>, path: Option<&OsStr>) -> bool {
    const DESCRIPTOR: &str = "google/protobuf/descriptor.proto";
    if protoc_include.is_some_and(|dir| Path::new(dir).join(DESCRIPTOR).is_file()) {
        return true;
    }
    let Some(path) = path else {
        return false;
    };
    std::env::split_paths(path)
        .find(|dir| dir.join("protoc").is_file())
        .is_some_and(|dir| dir.join("../include").join(DESCRIPTOR).is_file())
}

/// Whether `program` is an executable file in a folder of PATH.
fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        let Ok(meta) = std::fs::metadata(dir.join(program)) else {
            return false;
        };
        #[cfg(unix)]
        let executable = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
        #[cfg(not(unix))]
        let executable = true;
        meta.is_file() && executable
    })
}

/// Installs the Debian packages of the `tools` that are not on PATH, all
/// in one apt-get call after one `apt-get update`.
fn ensure_apt_tools(tools: &[AptTool]) -> anyhow::Result<()> {
    let missing: Vec<AptTool> = tools
        .iter()
        .copied()
        .filter(|tool| !tool.is_present())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let programs: Vec<&str> = missing.iter().map(|t| t.program).collect();
    let packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
    eprintln!(
        "xtask: {} missing; installing Debian packages {}",
        programs.join(", "),
        packages.join(" ")
    );
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
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
    run(cargo().args(["build", "--release", "-p", "wasmgate"]))?;
    // The binary itself, not `cargo run`: cargo would add a line of its own
    // ("process didn't exit successfully: ...") to the gateway's message.
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
    let mut serve = Command::new(target.join("release").join("wasmgate"));
    serve.args(serve_args(args));
    // xtask becomes the gateway: Ctrl-C reaches only it, and its exit
    // status and last words are the end of the run.
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        eprintln!("xtask: {}", display(&serve));
        let error = serve.exec();
        Err(anyhow::Error::from(error).context(format!("cannot start {}", display(&serve))))
    }
    #[cfg(not(unix))]
    run(&mut serve)
}

/// `wasmgate serve`'s arguments: `args`, with the example config unless
/// they name one.
fn serve_args(args: &[String]) -> Vec<String> {
    let mut all = vec!["serve".to_owned()];
    let names_config = args
        .iter()
        .any(|a| a == "--config" || a.starts_with("--config="));
    if !names_config {
        all.extend(["--config".to_owned(), "examples/wasmgate.toml".to_owned()]);
    }
    all.extend(args.iter().cloned());
    all
}

/// `cargo install --path host --locked`: the release build of `wasmgate`
/// in `~/.cargo/bin` (or `$CARGO_HOME/bin`), on PATH as rustup sets it up.
fn install() -> anyhow::Result<()> {
    run(cargo().args(["install", "--path", "host", "--locked"]))
}

fn test() -> anyhow::Result<()> {
    build_handlers()?;
    let packages = handler_packages()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // `--all-features`: the SDK's JSON support (feature `serde`) is code
    // handler authors use, so it is linted and tested like the rest.
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
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
    run_tests(cargo().args(["test", "--workspace", "--all-features"]))
}

/// Runs `cargo test`, passing its output through, and ends with one line
/// totalling every test binary (the last binary alone, often doc tests with
/// nothing in them, says little).
fn run_tests(command: &mut Command) -> anyhow::Result<()> {
    use std::io::BufRead;
    eprintln!("xtask: {}", display(command));
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
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
        return Err(ChildFailed::new(status).into());
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
    fn commands_are_shown_as_typed_without_the_toolchain_path() {
        let mut command = Command::new("/home/u/.rustup/toolchains/stable/bin/cargo");
        command
            .args(["build", "--release", "-p", "wasmgate"])
            .env("RUSTDOCFLAGS", "-D warnings");
        assert_eq!(
            display(&command),
            "RUSTDOCFLAGS='-D warnings' cargo build --release -p wasmgate"
        );
        let mut command = Command::new("target/release/wasmgate");
        command.args(["serve", "--config", "it's here.toml"]);
        assert_eq!(
            display(&command),
            r"wasmgate serve --config 'it'\''s here.toml'"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_failed_command_ends_xtask_with_its_own_status_and_no_words() {
        use std::os::unix::process::ExitStatusExt;
        // Wait statuses: exit code in the high byte, signal in the low.
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(101 << 8)), 101);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 128 + 9);
        let failed = anyhow::Error::from(ChildFailed::new(ExitStatus::from_raw(2 << 8)))
            .context("while serving");
        assert_eq!(ending(&failed), Some(2));
        assert_eq!(ending(&anyhow::anyhow!("no handlers/ folder")), None);
    }

    #[test]
    fn serve_uses_the_example_config_unless_given_one() {
        let args = |a: &[&str]| serve_args(&a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            args(&["--watch"]),
            ["serve", "--config", "examples/wasmgate.toml", "--watch"]
        );
        assert_eq!(
            args(&["--config", "x.toml"]),
            ["serve", "--config", "x.toml"]
        );
        assert_eq!(args(&["--config=x.toml"]), ["serve", "--config=x.toml"]);
    }

    #[test]
    fn handler_folders_outside_the_workspace_are_named_with_the_fix() {
        let metadata = br#"{
            "packages": [
                {"id": "path+file:///w/host#wasmgate@0.1.0", "manifest_path": "/w/host/Cargo.toml"},
                {"id": "path+file:///w/handlers/hello#0.1.0", "manifest_path": "/w/handlers/hello/Cargo.toml"}
            ],
            "workspace_members": [
                "path+file:///w/host#wasmgate@0.1.0",
                "path+file:///w/handlers/hello#0.1.0"
            ]
        }"#;
        assert_eq!(
            member_folders(metadata).expect("valid metadata"),
            [PathBuf::from("/w/host"), PathBuf::from("/w/handlers/hello")]
        );
        assert_eq!(not_members_message(&[]), None);
        assert_eq!(
            not_members_message(&["handlers/greet".to_owned()]).as_deref(),
            Some(
                "\"handlers/greet\" is not in the workspace: add it to `members` in the \
                 [workspace] section of Cargo.toml (the repository's top folder), then build again"
            )
        );
        let two = not_members_message(&["handlers/a".to_owned(), "handlers/b".to_owned()])
            .expect("two folders");
        assert!(
            two.starts_with("\"handlers/a\" and \"handlers/b\" are not in the workspace: add them"),
            "{two}"
        );
    }

    #[test]
    fn every_command_that_builds_the_gateway_gets_protoc_first() {
        for command in ["serve", "install", "test", "bench", "pgo"] {
            assert_eq!(tools_for(command).first(), Some(&PROTOC), "{command}");
        }
        assert!(tools_for("build-handlers").is_empty());
        assert!(tools_for("nonsense").is_empty(), "usage first");
        let test: Vec<&str> = tools_for("test").iter().map(|t| t.package).collect();
        assert_eq!(
            test,
            [
                "protobuf-compiler",
                "libprotobuf-dev",
                "prometheus",
                "etcd-server",
                "docker-registry",
                "haproxy"
            ]
        );
        let bench: Vec<&str> = tools_for("bench").iter().map(|t| t.package).collect();
        assert_eq!(
            bench,
            [
                "protobuf-compiler",
                "libprotobuf-dev",
                "wrk",
                "etcd-server",
                "docker-registry",
                "haproxy"
            ]
        );
        let pgo: Vec<&str> = tools_for("pgo").iter().map(|t| t.package).collect();
        assert_eq!(pgo, ["protobuf-compiler", "libprotobuf-dev", "wrk"]);
    }

    #[test]
    fn well_known_types_are_looked_up_beside_protoc_or_in_protoc_include() {
        let root = std::env::temp_dir().join(format!("xtask-protoc-{}", std::process::id()));
        let bin = root.join("bin");
        let include = root.join("include");
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::write(bin.join("protoc"), "").expect("protoc");
        let path = std::env::join_paths([Path::new("/nonexistent"), &bin]).expect("path");
        assert!(!well_known_types_found(None, Some(&path)), "protoc alone");
        assert!(!well_known_types_found(Some(include.as_os_str()), None));

        let protobuf = include.join("google/protobuf");
        std::fs::create_dir_all(&protobuf).expect("include");
        std::fs::write(protobuf.join("descriptor.proto"), "").expect("descriptor");
        assert!(well_known_types_found(None, Some(&path)), "beside protoc");
        assert!(well_known_types_found(Some(include.as_os_str()), None));
        assert!(!well_known_types_found(None, None));
        std::fs::remove_dir_all(&root).expect("clean up");
    }

    #[test]
    fn programs_are_looked_up_on_path() {
        assert!(on_path("sh"), "every unix has sh");
        assert!(!on_path("no-such-program-wasmgate-xtask"));
    }

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
