//! The docs cannot rot: every command in README.md, docs/operations.md and docs/handlers.md
//! is run here, against a real `wasmgate serve`, and its output checked.
//!
//! The convention, which the docs state too:
//! - A ```` ```console ```` block is run. Each line starting with `$ ` is a
//!   command (a line ending in `\` continues it); the lines after it, up to
//!   the next `$ ` line, are its expected output: stdout and stderr as a
//!   terminal shows them, line by line. In an expected line `...` stands
//!   for any text, and a line that is only `...` for any number of lines.
//!   A command with no lines after it is checked for its exit status only.
//!   A command ending in `# exit N` must exit with N, any other with 0.
//! - A shell block tagged `no-run` (```` ```sh no-run ````) is not run: it
//!   builds, installs, or runs until stopped.
//! - Any other shell block (`sh`, `bash`, `shell`) may hold only commands
//!   that cannot run in a test by their nature: `cargo ...` (builds) and
//!   `wasmgate serve` (runs until stopped), plus variable assignments.
//!   Anything else fails [`every_shell_block_is_run_or_exempt`], so a new
//!   command is run or deliberately exempted, never forgotten.
//!
//! Commands run with bash from the repository root, one process each, in
//! document order, against one gateway per file started as the docs say
//! (`wasmgate serve --config examples/wasmgate.toml`, with
//! `WASMGATE_ADMIN_TOKEN=change-me`) but on free ports and with a data dir
//! of its own. So that the commands reach it, each is rewritten:
//! `127.0.0.1:8080` and `localhost:8080` become the public listener,
//! `...:9090` the admin listener, `examples/wasmgate.toml` the test's copy
//! of it and `target/wasm32-wasip2/release/` the built components' folder;
//! `wasmgate` is the binary under test (first on `PATH`), and
//! `WASMGATE_ADMIN_URL` points at the admin listener; curl draws no
//! progress meter into the pipe (a terminal shows none). Assignments
//! (`NAME=...`, `export NAME=...`) carry over to the file's later commands.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Served, serve_command};
use wasmgate_handler_components as components;

/// The files whose commands are run.
const DOCS: &[&str] = &["README.md", "docs/operations.md", "docs/handlers.md"];

/// The token the docs export, and the gateway is started with.
const TOKEN: &str = "change-me";

/// What a command may take before it counts as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Commands an untagged shell block may hold: they cannot run in a test.
const EXEMPT_PREFIXES: &[&str] = &["cargo ", "wasmgate serve"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate is in the workspace")
        .to_owned()
}

/// A fenced code block.
#[derive(Debug)]
struct Block {
    /// Line of the opening fence (1-based).
    line: usize,
    /// The first word of the info string.
    lang: String,
    /// Tagged `no-run`.
    no_run: bool,
    /// The lines between the fences, with their line numbers.
    lines: Vec<(usize, String)>,
}

/// Fenced blocks of a Markdown text (top-level fences of three backticks).
fn blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                let mut words = info.split_whitespace();
                let lang = words.next().unwrap_or("").to_owned();
                let no_run = words.any(|w| w == "no-run");
                open = Some(Block {
                    line: n,
                    lang,
                    no_run,
                    lines: Vec::new(),
                });
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(block), None) => block.lines.push((n, line.to_owned())),
            (None, None) => {}
        }
    }
    blocks
}

fn is_shell(lang: &str) -> bool {
    matches!(lang, "sh" | "bash" | "shell" | "console")
}

/// One documented command and what it must do.
#[derive(Debug, Clone, PartialEq)]
struct DocCommand {
    /// Its first line (1-based).
    line: usize,
    /// The command as written, continuation lines included.
    text: String,
    /// The expected output lines (may be empty: only the status counts).
    expected: Vec<String>,
    /// The exit status it must have.
    status: i32,
}

/// The commands of a `console` block.
fn commands(block: &Block) -> Result<Vec<DocCommand>, String> {
    let mut commands: Vec<DocCommand> = Vec::new();
    let mut lines = block.lines.iter();
    while let Some((n, line)) = lines.next() {
        if let Some(first) = line.strip_prefix("$ ") {
            let mut text = first.to_owned();
            while text.ends_with('\\') {
                let (_, next) = lines
                    .next()
                    .ok_or_else(|| format!("line {n}: the command's last line ends in \\"))?;
                text.push('\n');
                text.push_str(next);
            }
            let status = match text.rsplit_once("# exit ") {
                Some((_, code)) => code
                    .trim()
                    .parse()
                    .map_err(|_| format!("line {n}: `# exit` needs a number, not {code:?}"))?,
                None => 0,
            };
            commands.push(DocCommand {
                line: *n,
                text,
                expected: Vec::new(),
                status,
            });
        } else {
            let command = commands
                .last_mut()
                .ok_or_else(|| format!("line {n}: output before the first `$ ` command"))?;
            command.expected.push(line.trim_end().to_owned());
        }
    }
    for command in &mut commands {
        while command.expected.last().is_some_and(String::is_empty) {
            command.expected.pop();
        }
    }
    if commands.is_empty() {
        return Err(format!(
            "line {}: a console block without a `$ ` command",
            block.line
        ));
    }
    Ok(commands)
}

/// `NAME=value` or `export NAME=value`: carried to later commands.
fn is_assignment(command: &str) -> bool {
    let command = command.strip_prefix("export ").unwrap_or(command);
    let Some((name, _)) = command.split_once('=') else {
        return false;
    };
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether one output line matches an expected line, where `...` stands
/// for any text.
fn line_matches(expected: &str, actual: &str) -> bool {
    let actual = actual.trim_end();
    let mut parts = expected.split("...");
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = actual.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether the output lines match the expected ones, where a line that is
/// only `...` stands for any number of lines.
fn output_matches(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=actual.len()).any(|skip| output_matches(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(line, more)| line_matches(first, line) && output_matches(rest, more)),
    }
}

/// A `wasmgate serve` started as the docs say, on free ports.
struct Gateway {
    /// The process; killed on drop.
    _served: Served,
    public: String,
    admin: String,
    config: PathBuf,
    log: PathBuf,
}

/// The built components' folder, with a trailing slash.
fn components_dir() -> String {
    let hello = Path::new(components::require(components::HELLO));
    format!(
        "{}/",
        hello.parent().expect("a component's folder").display()
    )
}

impl Gateway {
    /// Serves a copy of `examples/wasmgate.toml` whose components are the
    /// built ones and whose data dir is fresh.
    fn start(name: &str) -> Self {
        let example = std::fs::read_to_string(repo_root().join("examples/wasmgate.toml"))
            .expect("read examples/wasmgate.toml");
        let data = common::data_dir();
        let text = example
            .replace("../target/wasm32-wasip2/release/", &components_dir())
            .replace(
                "data_dir = \"wasmgate-data\"",
                &format!("data_dir = {:?}", data.display().to_string()),
            );
        assert!(
            !text.contains("../target") && !text.contains("\"wasmgate-data\""),
            "examples/wasmgate.toml changed: this test cannot point it at the built components and a data dir of its own"
        );
        let config = data.join(format!("{name}.toml"));
        std::fs::write(&config, text).expect("write the config copy");
        let log = data.join(format!("{name}.log"));
        let served = Served::spawn(
            serve_command()
                .arg("--config")
                .arg(&config)
                .env("WASMGATE_ADMIN_TOKEN", TOKEN)
                .stderr(std::fs::File::create(&log).expect("create the log")),
        );
        let public = served.address().to_owned();
        let admin = served.admin.trim_start_matches("http://").to_owned();
        Self {
            _served: served,
            public,
            admin,
            config,
            log,
        }
    }

    /// `command` as it must run against this gateway.
    fn rewrite(&self, command: &str) -> String {
        command
            .replace("127.0.0.1:8080", &self.public)
            .replace("localhost:8080", &self.public)
            .replace("127.0.0.1:9090", &self.admin)
            .replace("localhost:9090", &self.admin)
            .replace("examples/wasmgate.toml", &self.config.display().to_string())
            .replace("target/wasm32-wasip2/release/", &components_dir())
    }
}

/// Runs `script` with bash from the repository root, `wasmgate` first on
/// PATH; returns its exit status and its stdout and stderr together. curl
/// draws no progress meter, as at a terminal (it draws one into a pipe).
fn run(script: &str, gateway: &Gateway) -> (i32, String) {
    let curl_home = gateway.config.with_extension("curl");
    std::fs::create_dir_all(&curl_home).expect("create a folder for .curlrc");
    std::fs::write(curl_home.join(".curlrc"), "no-progress-meter\n").expect("write .curlrc");
    let bin = Path::new(env!("CARGO_BIN_EXE_wasmgate"))
        .parent()
        .expect("the binary's folder");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("timeout")
        .args(["--kill-after=5", &COMMAND_TIMEOUT.as_secs().to_string()])
        .args(["bash", "-c", &format!("{{\n{script}\n}} 2>&1")])
        .current_dir(repo_root())
        .env("PATH", path)
        .env("WASMGATE_ADMIN_URL", format!("http://{}", gateway.admin))
        .env_remove("WASMGATE_ADMIN_TOKEN")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("CURL_HOME", &curl_home)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn read_doc(file: &str) -> String {
    std::fs::read_to_string(repo_root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn every_shell_block_is_run_or_exempt() {
    let mut problems = Vec::new();
    let mut run = 0;
    for file in DOCS {
        for block in blocks(&read_doc(file)).iter().filter(|b| is_shell(&b.lang)) {
            if block.no_run {
                continue;
            }
            if block.lang == "console" {
                match commands(block) {
                    Ok(commands) => run += commands.len(),
                    Err(e) => problems.push(format!("{file}:{}: {e}", block.line)),
                }
                continue;
            }
            for (n, line) in &block.lines {
                let command = line.split(" #").next().unwrap_or("").trim();
                let exempt = command.is_empty()
                    || command.starts_with('#')
                    || is_assignment(command)
                    || EXEMPT_PREFIXES.iter().any(|p| command.starts_with(p));
                if !exempt {
                    problems.push(format!(
                        "{file}:{n}: `{command}` is in a ```{} block, which is not run: \
                         write it as ```console with `$ ` (and its output) so the docs \
                         test runs it, or tag the block `no-run` if it cannot run in a test",
                        block.lang
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(run > 0, "no command of the docs is run");
}

#[test]
fn documented_commands_work() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for file in DOCS {
        let gateway = Gateway::start(&file.replace('/', "-"));
        let mut prelude = String::new();
        for block in blocks(&read_doc(file)) {
            if block.lang != "console" || block.no_run {
                continue;
            }
            let commands = commands(&block).unwrap_or_else(|e| panic!("{file}: {e}"));
            for command in commands {
                let script = gateway.rewrite(&format!("{prelude}{}", command.text));
                let (status, output) = run(&script, &gateway);
                ran += 1;
                let lines: Vec<&str> = output.lines().collect();
                let output_ok =
                    command.expected.is_empty() || output_matches(&command.expected, &lines);
                if status != command.status || !output_ok {
                    failures.push(format!(
                        "{file}:{}: `{}`\n  exit status {status} (documented: {})\n  \
                         documented output:\n    {}\n  output:\n    {}",
                        command.line,
                        command.text,
                        command.status,
                        command.expected.join("\n    "),
                        lines.join("\n    "),
                    ));
                } else if is_assignment(&command.text) {
                    prelude.push_str(&command.text);
                    prelude.push('\n');
                }
            }
        }
        if !failures.is_empty() {
            let log = std::fs::read_to_string(&gateway.log).unwrap_or_default();
            failures.push(format!("the gateway's log for {file}:\n{log}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(ran > 0, "no command of the docs was run");
}

#[test]
fn output_patterns_match_what_they_say() {
    let lines = |text: &str| text.lines().map(str::to_owned).collect::<Vec<_>>();
    assert!(line_matches("ok", "ok  "));
    assert!(!line_matches("ok", "okay"));
    assert!(line_matches("sha256 ...", "sha256 0c716cc24822"));
    assert!(line_matches("a ... b ... c", "a 1 b 2 c"));
    assert!(!line_matches("a ... b ... c", "a 1 c 2 b"));
    assert!(!line_matches("ab...ba", "aba"));
    assert!(output_matches(&lines("a\n...\nd"), &["a", "b", "c", "d"]));
    assert!(output_matches(&lines("a\n...\nd"), &["a", "d"]));
    assert!(!output_matches(&lines("a\n...\nd"), &["a", "b"]));
    assert!(!output_matches(&lines("a\nb"), &["a", "b", "c"]));
    assert!(!output_matches(&lines("a\nc"), &["a", "b"]));
}

#[test]
fn console_blocks_are_parsed_as_documented() {
    let doc = "text\n```console\n$ echo a \\\n  b   # exit 3\na b\n\n$ x=1\n```\n```sh no-run\ncargo x\n```\n";
    let found = blocks(doc);
    assert_eq!(found.len(), 2);
    assert!(found[1].no_run && found[1].lang == "sh");
    let commands = commands(&found[0]).expect("valid block");
    assert_eq!(
        commands,
        vec![
            DocCommand {
                line: 3,
                text: "echo a \\\n  b   # exit 3".to_owned(),
                expected: vec!["a b".to_owned()],
                status: 3,
            },
            DocCommand {
                line: 7,
                text: "x=1".to_owned(),
                expected: Vec::new(),
                status: 0,
            },
        ]
    );
    assert!(is_assignment("export WASMGATE_ADMIN_TOKEN=change-me"));
    assert!(!is_assignment("curl -d a=b localhost"));
}
