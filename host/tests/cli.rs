//! The `wasmgate` binary as an operator runs it: startup lines with real
//! ports, refusal to start on bad config, `check`, and SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{DEMO, config_text};
use wasmgate_handler_components as components;

const BIN: &str = env!("CARGO_BIN_EXE_wasmgate");

/// A fresh folder under the target dir for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("wasmgate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// `wasmgate serve` with `config`, on ephemeral ports.
fn serve_command(config: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(config);
    command
}

/// Runs `wasmgate serve` expecting it to refuse to start.
fn serve_fails(config: &Path) -> String {
    let output = serve_command(config).output().expect("run wasmgate");
    assert!(
        !output.status.success(),
        "serve should fail for {}",
        config.display()
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn serve_refuses_bad_config_and_names_the_culprit() {
    let dir = scratch("bad-config");
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "[server]\nlisten = \"127.0.0.1:0\"\nlisten_backlog = 5\n".into(),
            vec!["wasmgate.toml", "line 3", "listen_backlog"],
        ),
        (
            "[limits]\ntimeout_ms = \"soon\"\n".into(),
            vec!["wasmgate.toml", "line 2", "timeout_ms"],
        ),
        (
            "[[tenant]]\nname = \"t\"\n[[tenant.handler]]\nname = \"h\"\nroute = \"/h\"\ncomponent = \"missing.wasm\"\n"
                .into(),
            vec!["wasmgate.toml", "tenant \"t\" handler \"h\"", "missing.wasm", "No such file"],
        ),
        (
            "[[tenant]]\nname = \"t\"\n[[tenant.handler]]\nname = \"core\"\nroute = \"/h\"\ncomponent = \"core.wasm\"\n"
                .into(),
            vec!["tenant \"t\" handler \"core\"", "core wasm module", "wasm32-wasip2"],
        ),
        (
            "[[tenant]]\nname = \"t\"\n[[tenant.handler]]\nname = \"empty\"\nroute = \"/h\"\ncomponent = \"empty.wasm\"\n"
                .into(),
            vec!["tenant \"t\" handler \"empty\"", "does not fit the wasmgate:handler world"],
        ),
    ];
    // A core module and an empty (valid, but exporting nothing) component.
    std::fs::write(dir.join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    std::fs::write(dir.join("empty.wasm"), b"\0asm\x0d\0\x01\0").expect("write");
    for (text, needles) in cases {
        let stderr = serve_fails(&write_config(&dir, &text));
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "stderr for\n{text}\nshould mention {needle:?}:\n{stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let stderr = serve_fails(&dir.join("does-not-exist.toml"));
    assert!(stderr.contains("does-not-exist.toml"), "{stderr}");
}

#[test]
fn check_lists_imports_and_exports_or_fails() {
    let output = Command::new(BIN)
        .args(["check", components::require(components::HELLO)])
        .output()
        .expect("run wasmgate check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for needle in [
        "ok",
        "imports:",
        "wasmgate:handler/config@0.1.0",
        "exports:",
        "handle",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing in:\n{stdout}");
    }

    let dir = scratch("check");
    std::fs::write(dir.join("empty.wasm"), b"\0asm\x0d\0\x01\0").expect("write");
    let output = Command::new(BIN)
        .arg("check")
        .arg(dir.join("empty.wasm"))
        .output()
        .expect("run wasmgate check");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("empty.wasm") && stderr.contains("handle"),
        "{stderr}"
    );
}

/// A running `wasmgate serve` process, killed on drop.
struct Process {
    child: Child,
    url: String,
    admin: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(config: &Path) -> Process {
    spawn_serve_logging(config, Stdio::null())
}

/// `wasmgate serve` with its log (stderr) going to `log`.
fn spawn_serve_logging(config: &Path, log: Stdio) -> Process {
    let mut child = serve_command(config)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn wasmgate");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut next = |prefix: &str| {
        let line = lines.next().expect("a startup line").expect("utf-8");
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
            .to_owned()
    };
    let url = format!("http://{}", next("listening on http://"));
    let admin = format!("http://{}", next("admin on http://"));
    assert!(
        !url.ends_with(":0") && !admin.ends_with(":0"),
        "real ports are printed"
    );
    Process { child, url, admin }
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let dir = scratch("sigterm");
    let config = write_config(
        &dir,
        &config_text(&format!(
            "[server]\nshutdown_grace_ms = 20000\n[limits]\nfuel = 1000000000000\ntimeout_ms = 20000\n{DEMO}"
        )),
    );
    let mut process = spawn_serve(&config);
    let client = reqwest::Client::new();

    assert_eq!(
        client
            .get(format!("{}/healthz", process.admin))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{}/readyz", process.admin))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );

    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = format!("{}/cpu?iters=200000000", process.url);
        async move {
            let response = client.get(url).send().await.expect("cpu request");
            (response.status(), response.text().await.expect("body"))
        }
    });
    // Wait until the guest is running, then signal.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = client
            .get(format!("{}/metrics", process.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        if common::metric(&text, "wasmgate_workers_busy").is_some_and(|v| v >= 1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the cpu request never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = process.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());

    let (status, body) = in_flight.await.expect("task");
    assert_eq!(status, 200, "the request in flight completes");
    assert!(body.trim().parse::<u64>().is_ok(), "{body}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = process.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "wasmgate did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(0));
    assert!(
        client
            .get(format!("{}/hello", process.url))
            .send()
            .await
            .is_err()
    );
}

/// Starts `wasmgate serve`, checks that `/hello` answers 200, stops it.
async fn serve_hello_once(config: &Path) {
    let process = spawn_serve(config);
    let hello = reqwest::get(format!("{}/hello", process.url))
        .await
        .expect("hello");
    assert_eq!(hello.status(), 200);
}

#[tokio::test]
async fn a_restart_uses_the_code_cache_and_survives_a_corrupt_one() {
    let dir = scratch("code-cache");
    let config = write_config(&dir, &config_text(DEMO));
    let cache = dir.join("wasmgate-data").join("cache");

    // The first start compiles in a child process, not in the server.
    let log_path = dir.join("first-start.log");
    let log = std::fs::File::create(&log_path).expect("create log");
    drop(spawn_serve_logging(&config, Stdio::from(log)));
    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert!(
        log.contains("code cache ready (checked and filled by a child process)"),
        "{log}"
    );
    let files: Vec<PathBuf> = std::fs::read_dir(&cache)
        .expect("the cache folder exists after a start")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 4, "one file per handler: {files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "cwasm"))
    );

    // Restart from the cache.
    serve_hello_once(&config).await;

    // A corrupt cache file is ignored and replaced, never trusted.
    for file in &files {
        std::fs::write(file, b"definitely not machine code").expect("corrupt");
    }
    serve_hello_once(&config).await;
    for file in &files {
        let size = std::fs::metadata(file).expect("rewritten").len();
        assert!(
            size > 1000,
            "{} was recompiled and rewritten",
            file.display()
        );
    }
}

#[test]
fn compile_fills_the_cache_that_serve_reads() {
    let dir = scratch("compile");
    let config = write_config(&dir, &config_text(DEMO));
    // A bad file among good ones: the good ones are still compiled, the
    // bad one is named, and the exit status says something failed.
    let output = Command::new(BIN)
        .args([
            "compile",
            "/nonexistent/x.wasm",
            components::require(components::HELLO),
            "--config",
        ])
        .arg(&config)
        .output()
        .expect("run wasmgate compile");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("/nonexistent/x.wasm"), "{stderr}");
    assert!(stderr.contains("1 of 2 components failed"), "{stderr}");
    let cached = stdout
        .trim()
        .rsplit_once("compiled into ")
        .map(|(_, path)| PathBuf::from(path))
        .unwrap_or_else(|| panic!("no path in {stdout:?}"));
    assert!(
        cached.starts_with(dir.join("wasmgate-data").join("cache")),
        "{}",
        cached.display()
    );
    assert!(cached.is_file());

    let output = Command::new(BIN)
        .args(["compile", "/nonexistent/x.wasm"])
        .output()
        .expect("run wasmgate compile");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/x.wasm"));
}

#[tokio::test]
async fn a_guest_panic_message_reaches_the_log() {
    let dir = scratch("panic-log");
    let config = write_config(&dir, &config_text(DEMO));
    let log_path = dir.join("wasmgate.log");
    let log = std::fs::File::create(&log_path).expect("create log");
    let process = spawn_serve_logging(&config, Stdio::from(log));
    let response = reqwest::get(format!("{}/faults/panic", process.url))
        .await
        .expect("panic");
    assert_eq!(response.status(), 500);
    drop(process);
    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert!(
        log.contains("guest trapped") && log.contains("faults: deliberate panic"),
        "the trap and the guest's panic message are logged:\n{log}"
    );
}
