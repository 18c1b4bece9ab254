//! The `wasmgate` binary as an operator runs it: startup lines with real
//! ports, refusal to start on bad config, the documented defaults and the
//! example config, `check`, `compile` and the code cache, worker threads,
//! SIGTERM and SIGINT, and what reaches the log.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{
    BIN, Hold, Served as Process, client, config_text, demo, get_text, handler, post, scratch,
    tenant, with_hold,
};
use wasmgate::control::config::Config;
use wasmgate_handler_components as components;

/// A fresh folder `name` with a `wasmgate.toml` of `template` (see
/// [`config_text`]): the folder and the config's path.
fn gateway_files(name: &str, template: &str) -> (PathBuf, PathBuf) {
    let dir = scratch(name);
    let config = write_config(&dir, &config_text(template));
    (dir, config)
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("wasmgate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// `wasmgate serve` with `config`, on ephemeral ports, at the documented
/// default log level whatever the caller's environment.
fn serve_command(config: &Path) -> Command {
    let mut command = common::serve_command();
    command.arg("--config").arg(config);
    command
}

/// Runs `wasmgate serve` expecting it to refuse to start.
fn serve_fails(config: &Path) -> String {
    let output = serve_command(config)
        .stderr(Stdio::piped())
        .output()
        .expect("run wasmgate");
    assert!(
        !output.status.success(),
        "serve should fail for {}",
        config.display()
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A config with one tenant and one handler, for the refusal cases.
fn one_handler(name: &str, handler_name: &str, route: &str, component: &str) -> String {
    tenant(name, "", "", &[]) + &handler(handler_name, route, component)
}

#[test]
fn serve_refuses_bad_config_and_names_the_culprit() {
    let dir = scratch("bad-config");
    let long = "n".repeat(65);
    let hello = components::require(components::HELLO);
    let cases: Vec<(String, Vec<String>)> =
        vec![
        (
            "[server]\nlisten = \"127.0.0.1:0\"\nlisten_backlog = 5\n".into(),
            vec!["wasmgate.toml".into(), "line 3".into(), "listen_backlog".into()],
        ),
        (
            "[limits]\ntimeout_ms = \"soon\"\n".into(),
            vec!["wasmgate.toml".into(), "line 2".into(), "timeout_ms".into()],
        ),
        (
            one_handler("t", "h", "/h", "missing.wasm"),
            vec![
                "wasmgate.toml".into(),
                "tenant \"t\" handler \"h\"".into(),
                "missing.wasm".into(),
                "No such file".into(),
            ],
        ),
        (
            one_handler("t", "core", "/h", "core.wasm"),
            vec![
                "tenant \"t\" handler \"core\"".into(),
                "core wasm module".into(),
                "wasm32-wasip2".into(),
            ],
        ),
        (
            one_handler("t", "empty", "/h", "empty.wasm"),
            vec![
                "tenant \"t\" handler \"empty\"".into(),
                "does not fit the wasmgate:handler or wasi:http/proxy world".into(),
                "neither `handle`".into(),
            ],
        ),
        // Names: unique, and at most 64 characters.
        (
            format!("{}{}", one_handler("t", "h", "/a", hello), one_handler("t", "x", "/b", hello)),
            vec!["tenant \"t\" is defined twice".into()],
        ),
        (
            one_handler("t", "h", "/a", hello) + &handler("h", "/b", hello),
            vec!["tenant \"t\": handler \"h\" is defined twice".into()],
        ),
        (
            one_handler("t", "h", "/a", hello) + &handler("other", "/a", hello),
            vec![
                "tenant \"t\" handler \"other\"".into(),
                "route \"/a\" is already used".into(),
            ],
        ),
        (
            one_handler(&long, "h", "/h", hello),
            vec![format!("tenant \"{long}\": name"), "1-64 characters".into()],
        ),
        (
            one_handler("t", &long, "/h", hello),
            vec![format!("tenant \"t\" handler \"{long}\": name"), "1-64 characters".into()],
        ),
        // Tenants and handlers have required keys.
        (
            "[[tenant]]\nhosts = [\"*\"]\n".into(),
            vec!["wasmgate.toml".into(), "missing field `name`".into()],
        ),
        (
            "[[tenant]]\nname = \"t\"\n[[tenant.handler]]\nname = \"h\"\ncomponent = \"x.wasm\"\n"
                .into(),
            vec!["wasmgate.toml".into(), "missing field `route`".into()],
        ),
    ];
    // A core module and an empty (valid, but exporting nothing) component.
    std::fs::write(dir.join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    std::fs::write(dir.join("empty.wasm"), b"\0asm\x0d\0\x01\0").expect("write");
    for (text, needles) in cases {
        let stderr = serve_fails(&write_config(&dir, &text));
        for needle in needles {
            assert!(
                stderr.contains(&needle),
                "stderr for\n{text}\nshould mention {needle:?}:\n{stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let stderr = serve_fails(&dir.join("does-not-exist.toml"));
    assert!(stderr.contains("does-not-exist.toml"), "{stderr}");
}

/// README: `serve` listens on `server.listen` and `admin.listen` unless
/// told otherwise, and prints the real ports.
#[test]
fn serve_listens_where_the_config_says() {
    // Two ports that are free now and are not the defaults (8080, 9090),
    // so only the config can have put the listeners there.
    let (public, admin) = (common::unused_port(), common::unused_port());
    assert!(![8080, 9090].contains(&public) && ![8080, 9090].contains(&admin));
    let dir = scratch("listen");
    let config = write_config(
        &dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{public}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
        ),
    );
    let mut command = Command::new(BIN);
    command.arg("serve").arg("--config").arg(&config);
    let process = spawn(command.stderr(Stdio::null()));
    assert_eq!(process.url, format!("http://127.0.0.1:{public}"));
    assert_eq!(process.admin, format!("http://127.0.0.1:{admin}"));
}

/// README: names are `[A-Za-z0-9._-]{1,64}`: 64 characters are fine.
#[test]
fn names_of_64_characters_are_accepted() {
    let name = format!("{}.-_9", "N".repeat(60));
    assert_eq!(name.len(), 64);
    let text = one_handler(&name, &name, "/h", "h.wasm");
    let config = Config::parse(&text, "t.toml".as_ref(), "/base".as_ref()).expect("valid");
    assert_eq!(config.tenants[0].name, name);
    assert_eq!(config.tenants[0].handlers[0].name, name);
}

/// The README's config reference, value by value, written out: comparing
/// with the code's `Default` impls would only compare the code with itself.
#[test]
fn an_empty_config_has_every_documented_default() {
    let config = Config::parse("", "t.toml".as_ref(), "/base".as_ref()).expect("valid");
    let (server, admin, runtime, limits) = (
        &config.server,
        &config.admin,
        &config.runtime,
        &config.limits,
    );
    assert_eq!(server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(server.max_connections, 10_000);
    assert_eq!(server.header_read_timeout_ms, 5_000);
    assert_eq!(server.idle_timeout_ms, 60_000);
    assert_eq!(server.max_body_bytes, 1_048_576);
    assert_eq!(server.shutdown_grace_ms, 10_000);
    assert_eq!(admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(admin.token_env, "WASMGATE_ADMIN_TOKEN");
    assert_eq!(runtime.workers, 0);
    assert_eq!(runtime.queue_depth, 1024);
    assert_eq!(runtime.data_dir, Path::new("/base/wasmgate-data"));
    assert!(runtime.consume_fuel);
    assert_eq!(runtime.guests_per_worker, 4);
    assert_eq!(runtime.waiting_guests_per_worker, 64);
    assert_eq!(limits.fuel, 1_000_000_000);
    assert_eq!(limits.memory_bytes, 67_108_864);
    assert_eq!(limits.timeout_ms, 2_000);
    assert_eq!(limits.max_concurrency, 64);
    assert_eq!(limits.max_outbound_requests, 32);
    assert_eq!(limits.max_outbound_connections, 64);
    assert!(config.tenants.is_empty());

    // A tenant's hosts default to every host, its limits to the global
    // ones, a handler's config to nothing; paths are relative to the
    // config file's folder.
    let text = format!(
        "[limits]\nfuel = 7\n{}",
        one_handler("t", "h", "/h", "h.wasm")
    );
    let dir = scratch("defaults");
    let config = Config::load(&write_config(&dir, &text)).expect("valid");
    let tenant = &config.tenants[0];
    assert_eq!(tenant.hosts, ["*"]);
    assert!(tenant.allowed_outbound_hosts.is_empty(), "no upstreams");
    assert_eq!(config.tenant_limits(tenant), config.limits);
    assert_eq!(config.limits.fuel, 7);
    assert!(tenant.handlers[0].config.is_empty());
    assert_eq!(tenant.handlers[0].component, dir.join("h.wasm"));
    assert_eq!(config.runtime.data_dir, dir.join("wasmgate-data"));
}

/// The example config the README points to parses where it is, and,
/// served with the built components, answers as the README says.
#[tokio::test]
async fn the_example_config_parses_and_serves_what_the_readme_shows() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wasmgate.toml");
    let config = Config::load(&example).expect("examples/wasmgate.toml is valid");
    let tenant = &config.tenants[0];
    assert_eq!(tenant.name, "demo");
    let names: Vec<&str> = tenant.handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["hello", "echo", "cpu"]);
    for handler in &tenant.handlers {
        let file = format!("target/wasm32-wasip2/release/{}.wasm", handler.name);
        assert!(
            handler.component.ends_with(&file),
            "{}",
            handler.component.display()
        );
    }

    // The same text, its components taken from wherever this build put
    // them, and its data dir in a scratch folder instead of examples/.
    let text = std::fs::read_to_string(&example).expect("read the example");
    let built = Path::new(components::require(components::HELLO))
        .parent()
        .expect("a folder");
    let text = text.replace(
        "../target/wasm32-wasip2/release/",
        &format!("{}/", built.display()),
    );
    let dir = scratch("example");
    let process = spawn_serve(&write_config(&dir, &text));
    let client = client();
    let get = |path: &str| client.get(format!("{}{path}", process.url)).send();
    let hello = get("/hello").await.expect("hello");
    assert_eq!(
        hello.text().await.expect("body"),
        "hi from wasmgate: hello\n"
    );
    let echo = post(&client, &format!("{}/echo", process.url), "some body").await;
    assert_eq!(echo.status(), 200);
    assert!(echo.text().await.expect("body").ends_with("\n\nsome body"));
    let cpu = get("/cpu?iters=1000000").await.expect("cpu");
    assert_eq!(
        cpu.text().await.expect("body"),
        format!("{}\n", cpu_work::spin(1_000_000))
    );
    let (status, _) = get_text(&client, &format!("{}/metrics", process.admin)).await;
    assert_eq!(status, 200);
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
        "ok, world wasmgate:handler",
        "imports:",
        "wasmgate:handler/config@0.1.0",
        "exports:",
        "handle",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing in:\n{stdout}");
    }
    // A standard wasi:http component, built without the SDK.
    let output = Command::new(BIN)
        .args(["check", components::require(components::WASI_HELLO)])
        .output()
        .expect("run wasmgate check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for needle in [
        "ok, world wasi:http/proxy",
        "wasi:http/types@0.2",
        "wasi:http/outgoing-handler@0.2",
        "wasi:http/incoming-handler@0.2",
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
        stderr.contains("empty.wasm")
            && stderr.contains("`handle`")
            && stderr.contains("wasi:http/incoming-handler"),
        "{stderr}"
    );
}

fn spawn_serve(config: &Path) -> Process {
    spawn(serve_command(config).stderr(Stdio::null()))
}

/// `wasmgate serve` with its log (stderr) going to a new file `log`.
fn spawn_serve_logging(config: &Path, log: &Path) -> Process {
    spawn(serve_command(config).stderr(log_file(log)))
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::File::create(path).expect("create log")
}

/// `GET url`: the status.
async fn status_of(url: String) -> u16 {
    get_text(&client(), &url).await.0
}

/// Starts a `wasmgate serve` command and reads its two startup lines.
fn spawn(command: &mut Command) -> Process {
    Process::spawn(command.stdout(Stdio::piped()))
}

/// The log file's text without the terminal colours the logger adds.
fn read_log(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).expect("read log");
    let mut plain = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Whether a log line has the field `key` with `value`, quoted or not.
fn has_field(line: &str, key: &str, value: &str) -> bool {
    line.contains(&format!("{key}={value}")) || line.contains(&format!("{key}=\"{value}\""))
}

/// README: on SIGINT or SIGTERM the gateway stops accepting, lets the
/// request in flight finish, and exits 0.
#[tokio::test]
async fn sigterm_and_sigint_let_the_request_in_flight_finish_then_exit_0() {
    for signal in ["TERM", "INT"] {
        with_hold(|hold| async move {
            let dir = scratch(&format!("signal-{signal}"));
            let hold_tenant = tenant(
                "hold",
                "hold.test",
                "limits = { timeout_ms = 600000 }",
                &["faults"],
            );
            let server = format!("[server]\nshutdown_grace_ms = 600000\n{hold_tenant}");
            let config = write_config(&dir, &config_text(&demo(&server)));
            let mut process = spawn_serve(&config);
            let client = client();
            for path in ["/healthz", "/readyz"] {
                let (status, _) = get_text(&client, &format!("{}{path}", process.admin)).await;
                assert_eq!(status, 200, "{path}");
            }

            let path = format!("/faults/sleep?n={}", hold.as_millis());
            let in_flight = Hold::send(&client, &process.url, "hold.test", &path, hold);
            // Signal once the guest is running...
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let text = process.metrics().await;
                if common::metric(&text, "wasmgate_workers_busy").is_some_and(|v| v >= 1.0) {
                    break;
                }
                if !in_flight.holding() {
                    return None;
                }
                assert!(Instant::now() < deadline, "the request never started");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            process.signal(signal);
            // ...and before it can have finished.
            if !in_flight.holding() {
                return None;
            }
            assert_eq!(
                in_flight.status().await,
                200,
                "SIG{signal}: the request in flight completes"
            );
            assert_eq!(process.exit_code().await, Some(0), "SIG{signal}");
            assert!(
                client
                    .get(format!("{}/hello", process.url))
                    .send()
                    .await
                    .is_err(),
                "SIG{signal}: nothing listens any more"
            );
            Some(())
        })
        .await;
    }
}

/// README: `runtime.workers` guest threads, 0 meaning one per core.
/// Counted by the threads' names (`wasmgate-worker-N`, cut to 15 bytes by
/// the kernel) in `/proc`. A thread names itself once it runs, so the count
/// may start low; it must reach the configured number and never pass it.
#[test]
fn workers_0_starts_one_worker_thread_per_core() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (workers, want) in [(0, cores), (3, 3)] {
        let dir = scratch(&format!("workers-{workers}"));
        let config = write_config(&dir, &format!("[runtime]\nworkers = {workers}\n"));
        let process = spawn_serve(&config);
        let tasks = format!("/proc/{}/task", process.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let threads = std::fs::read_dir(&tasks)
                .expect("read /proc/PID/task")
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with("wasmgate-worker"))
                .count();
            assert!(
                threads <= want,
                "{threads} workers for workers = {workers} on {cores} cores"
            );
            if threads == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{threads} workers for workers = {workers} on {cores} cores"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What identifies a file's version: a rewrite (compile + rename) changes
/// the inode, an in-place write the modification time.
fn identity(path: &Path) -> (u64, SystemTime, u64) {
    let meta = std::fs::metadata(path).expect("cache file");
    (meta.ino(), meta.modified().expect("mtime"), meta.len())
}

/// The `from_cache` value of every `handler loaded` line in a log.
fn loads_from_cache(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("handler loaded"))
        .map(|l| {
            l.split_whitespace()
                .find_map(|field| field.strip_prefix("from_cache="))
                .unwrap_or_else(|| panic!("no from_cache in {l:?}"))
                .to_owned()
        })
        .collect()
}

/// Starts `wasmgate serve`, checks that `/hello` answers 200, stops it,
/// and returns its log.
async fn serve_hello_once(config: &Path, log_path: &Path) -> String {
    let process = spawn_serve_logging(config, log_path);
    assert_eq!(status_of(format!("{}/hello", process.url)).await, 200);
    drop(process);
    read_log(log_path)
}

/// `wasmgate compile FILES... [--config CONFIG]`: its exit code, stdout
/// and stderr.
fn compile(files: &[&str], config: Option<&Path>) -> (Option<i32>, String, String) {
    let mut command = Command::new(BIN);
    command.arg("compile").args(files);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let output = command.output().expect("run wasmgate compile");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// The code cache file named by the last line of `wasmgate compile`.
fn compiled_path(stdout: &str) -> PathBuf {
    stdout
        .trim()
        .rsplit_once("compiled into ")
        .map(|(_, path)| PathBuf::from(path))
        .unwrap_or_else(|| panic!("no path in {stdout:?}"))
}

/// The code cache file `wasmgate compile --config CONFIG FILE` names.
fn compiled_into(config: &Path, file: &str) -> PathBuf {
    let (code, stdout, stderr) = compile(&[file], Some(config));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    compiled_path(&stdout)
}

#[tokio::test]
async fn a_restart_uses_the_code_cache_and_recompiles_a_corrupt_or_foreign_one() {
    let (dir, config) = gateway_files("code-cache", &demo(""));
    let cache = dir.join("wasmgate-data").join("cache");

    // The first start compiles in a child process, not in the server.
    let log = serve_hello_once(&config, &dir.join("first.log")).await;
    assert!(
        log.contains("code cache ready (checked and filled by a child process)"),
        "{log}"
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&cache)
        .expect("the cache folder exists after a start")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "one file per handler: {files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "cwasm"))
    );
    let before: Vec<_> = files.iter().map(|f| identity(f)).collect();

    // A restart deserializes every handler and compiles nothing: no file
    // is rewritten, by the server or by its child.
    let log = serve_hello_once(&config, &dir.join("restart.log")).await;
    assert_eq!(loads_from_cache(&log), ["true"; 4], "{log}");
    let after: Vec<_> = files.iter().map(|f| identity(f)).collect();
    assert_eq!(before, after, "the restart rewrote cached code");

    // A corrupt file is recompiled and replaced, never trusted.
    for file in &files {
        std::fs::write(file, b"definitely not machine code").expect("corrupt");
    }
    let corrupt: Vec<_> = files.iter().map(|f| identity(f)).collect();
    let log = serve_hello_once(&config, &dir.join("corrupt.log")).await;
    assert_eq!(loads_from_cache(&log).len(), 4, "{log}");
    for (file, corrupt) in files.iter().zip(&corrupt) {
        let now = identity(file);
        assert_ne!(now.0, corrupt.0, "{} was not rewritten", file.display());
        assert!(now.2 > 1000, "{} holds machine code again", file.display());
    }

    // So is a foreign one: code an engine with other settings (no fuel
    // metering) compiled, under the name this engine looks for.
    let other = write_config(
        &scratch("code-cache-foreign"),
        "[runtime]\nconsume_fuel = false\n",
    );
    let hello = components::require(components::HELLO);
    let foreign = std::fs::read(compiled_into(&other, hello)).expect("foreign code");
    let target = compiled_into(&config, hello);
    assert!(files.contains(&target), "{}", target.display());
    std::fs::write(&target, &foreign).expect("plant foreign code");
    let planted = identity(&target);
    let log = serve_hello_once(&config, &dir.join("foreign.log")).await;
    assert_eq!(loads_from_cache(&log).len(), 4, "{log}");
    assert_ne!(identity(&target).0, planted.0, "the foreign file was kept");
    assert_ne!(
        std::fs::read(&target).expect("cache file"),
        foreign,
        "the foreign code was kept"
    );
}

#[tokio::test]
async fn compile_fills_the_cache_that_serve_reads() {
    let (dir, config) = gateway_files("compile", &tenant("demo", "", "", &["hello"]));
    // A bad file among good ones: the good ones are still compiled, the
    // bad one is named, and the exit status says something failed.
    let files = [
        "/nonexistent/x.wasm",
        components::require(components::HELLO),
    ];
    let (code, stdout, stderr) = compile(&files, Some(&config));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("/nonexistent/x.wasm"), "{stderr}");
    assert!(stderr.contains("1 of 2 components failed"), "{stderr}");
    let cached = compiled_path(&stdout);
    assert!(
        cached.starts_with(dir.join("wasmgate-data").join("cache")),
        "{}",
        cached.display()
    );
    let compiled = identity(&cached);

    // `serve` with that config loads the handler from that file and
    // compiles nothing.
    let log = serve_hello_once(&config, &dir.join("serve.log")).await;
    assert_eq!(loads_from_cache(&log), ["true"], "{log}");
    assert_eq!(
        identity(&cached),
        compiled,
        "serve rewrote the compiled code"
    );

    let (code, _, stderr) = compile(&["/nonexistent/x.wasm"], None);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("/nonexistent/x.wasm"));
}

#[tokio::test]
async fn a_guest_panic_message_reaches_the_log() {
    let (dir, config) = gateway_files("panic-log", &demo(""));
    let log_path = dir.join("wasmgate.log");
    let process = spawn_serve_logging(&config, &log_path);
    assert_eq!(
        status_of(format!("{}/faults/panic", process.url)).await,
        500
    );
    drop(process);
    let log = read_log(&log_path);
    assert!(
        log.contains("guest trapped") && log.contains("faults: deliberate panic"),
        "the trap and the guest's panic message are logged:\n{log}"
    );
}

/// README: a trap is logged with the guest's stderr, up to 4 KiB; stdout
/// is discarded; `log::*` calls reach the gateway log, tagged with tenant
/// and handler; logs go to stderr at `RUST_LOG` level, `info` by default.
#[tokio::test]
async fn guest_output_reaches_the_log_bounded_and_stdout_is_discarded() {
    let (dir, config) = gateway_files(
        "guest-output",
        &format!(
            "{}{}config = {{ who = \"logger\" }}\n",
            demo(""),
            handler("state", "/state", "{state}")
        ),
    );
    let log_path = dir.join("default.log");
    let mut process = spawn_serve_logging(&config, &log_path);
    let client = client();
    // A MiB to stdout, "STDERR-START " and a MiB to stderr, then a panic.
    let flood = format!("{}/faults/stderr?n=1048576", process.url);
    assert_eq!(status_of(flood).await, 500);
    assert_eq!(status_of(format!("{}/state", process.url)).await, 200);
    let echo = format!("{}/echo", process.url);
    assert_eq!(post(&client, &echo, "12345").await.status(), 200);
    process.signal("TERM");
    assert_eq!(process.exit_code().await, Some(0));
    let mut stdout = String::new();
    process
        .stdout
        .read_to_string(&mut stdout)
        .expect("read stdout");
    assert_eq!(stdout, "", "nothing after the startup lines reaches stdout");
    drop(process);

    let log = read_log(&log_path);
    let trap = log
        .lines()
        .find(|l| l.contains("guest trapped") && has_field(l, "handler", "faults"))
        .unwrap_or_else(|| panic!("no trap line in\n{log}"));
    let (_, stderr) = trap
        .split_once("STDERR-START ")
        .unwrap_or_else(|| panic!("the guest's stderr is not in {trap:?}"));
    let flood = stderr.bytes().take_while(|b| *b == b'e').count();
    let kept = "STDERR-START ".len() + flood;
    assert!(
        (1024..=4096).contains(&kept),
        "{kept} bytes of a MiB of stderr kept; at most 4 KiB"
    );
    let longest_run = log
        .split(|c: char| c != 'e')
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert_eq!(
        longest_run, flood,
        "only the kept stderr, not the MiB of stdout, is logged"
    );
    let line = log
        .lines()
        .find(|l| l.contains("state: request for logger /state"))
        .unwrap_or_else(|| panic!("the guest's log::info line is missing:\n{log}"));
    assert!(
        line.contains("INFO")
            && has_field(line, "tenant", "demo")
            && has_field(line, "handler", "state"),
        "{line}"
    );
    assert!(
        !log.contains("echoed 5 bytes"),
        "a guest's log::debug line is below the default level"
    );

    // At RUST_LOG=debug it shows.
    let log_path = dir.join("debug.log");
    let mut debug = serve_command(&config);
    let process = spawn(debug.env("RUST_LOG", "debug").stderr(log_file(&log_path)));
    let echo = format!("{}/echo", process.url);
    assert_eq!(post(&client, &echo, "12345").await.status(), 200);
    drop(process);
    let log = read_log(&log_path);
    let line = log
        .lines()
        .find(|l| l.contains("echoed 5 bytes"))
        .unwrap_or_else(|| panic!("the guest's log::debug line is missing:\n{log}"));
    assert!(
        line.contains("DEBUG") && has_field(line, "handler", "echo"),
        "{line}"
    );
}

// `wasmgate call`: one request through a component, no config or server.

/// The output of `wasmgate call ARGS...`: exit code, stdout, stderr.
struct Called {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Called {
    fn stdout(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }

    /// The `--json` object.
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout()))
    }
}

/// Runs `wasmgate call` with `args` (and `stdin` on its stdin) at the
/// default log level.
fn call_with_stdin(args: &[&str], stdin: &[u8]) -> Called {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("call")
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wasmgate call");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let output = child.wait_with_output().expect("wasmgate call");
    Called {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn call(args: &[&str]) -> Called {
    call_with_stdin(args, b"")
}

#[test]
fn call_prints_the_guests_response_and_exits_0() {
    let hello = components::require(components::HELLO);
    let called = call(&[hello, "--path", "/hello"]);
    assert_eq!(called.code, Some(0), "{}", called.stderr);
    assert_eq!(
        called.stdout(),
        "HTTP/1.1 200 OK\ncontent-type: text/plain; charset=utf-8\n\nhello from wasmgate\n"
    );
    assert_eq!(called.stderr, "", "nothing is logged for a plain answer");
    let called = call(&[hello, "--config", "greeting=howdy"]);
    assert!(
        called
            .stdout()
            .ends_with("\n\nhowdy from wasmgate: hello\n"),
        "--config reaches the guest: {}",
        called.stdout()
    );
}

#[test]
fn call_sends_method_path_headers_and_the_body_from_data() {
    let echo = components::require(components::ECHO);
    let dir = scratch("call-data");
    let file = dir.join("body.txt");
    std::fs::write(&file, "from a file").expect("write body");
    let at_file = format!("@{}", file.display());
    let cases: [(&[&str], &[u8], &str); 4] = [
        (
            &["--data", "hi there"],
            b"",
            "POST /echo?q=1\nx-a: 1\nx-b: two words\n\nhi there",
        ),
        (
            &["--data", &at_file],
            b"",
            "POST /echo?q=1\nx-a: 1\nx-b: two words\n\nfrom a file",
        ),
        (
            &["--data", "-"],
            b"from stdin",
            "POST /echo?q=1\nx-a: 1\nx-b: two words\n\nfrom stdin",
        ),
        (
            &["--data", "x", "--method", "PUT"],
            b"",
            "PUT /echo?q=1\nx-a: 1\nx-b: two words\n\nx",
        ),
    ];
    for (extra, stdin, body) in cases {
        let mut args = vec![
            echo,
            "--path",
            "/echo?q=1",
            "-H",
            "x-a:1",
            "--header",
            "X-B: two words",
        ];
        args.extend_from_slice(extra);
        let called = call_with_stdin(&args, stdin);
        assert_eq!(called.code, Some(0), "{extra:?}: {}", called.stderr);
        let stdout = called.stdout();
        let (head, got) = stdout
            .split_once("\n\n")
            .expect("a blank line after the head");
        assert_eq!(got, body, "{extra:?}");
        assert!(head.starts_with("HTTP/1.1 200 OK\n"), "{head}");
        let method = extra
            .last()
            .filter(|_| extra.contains(&"--method"))
            .unwrap_or(&"POST");
        assert!(
            head.contains(&format!("\nx-echo-method: {method}")),
            "{head}"
        );
    }
    // No body, no --method: GET, and echo's 204.
    let called = call(&[echo]);
    assert_eq!(called.code, Some(0));
    assert!(called.stdout().starts_with("HTTP/1.1 204 No Content\n"));
    assert!(called.stdout().contains("x-echo-method: GET\n"));
}

#[test]
fn call_json_reports_response_fuel_duration_logs_and_metrics() {
    let hello = components::require(components::HELLO);
    let called = call(&[hello, "--json", "--config", "greeting=hi"]);
    assert_eq!(called.code, Some(0), "{}", called.stderr);
    let json = called.json();
    assert_eq!(json["status"], 200);
    assert_eq!(json["body"], "hi from wasmgate: hello\n");
    assert_eq!(
        json["headers"],
        serde_json::json!([["content-type", "text/plain; charset=utf-8"]])
    );
    assert!(
        json["fuel_consumed"].as_u64().is_some_and(|f| f > 0),
        "{json}"
    );
    assert!(
        json["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{json}"
    );
    assert_eq!(json["metrics"]["counters"]["hello_requests"], 1, "{json}");
    assert_eq!(json["error"], serde_json::Value::Null);
    assert_eq!(json["logs"], serde_json::json!([]));

    // The guest's log::debug line is reported though stderr's level is
    // info; a histogram is reported as count and sum.
    let echo = components::require(components::ECHO);
    let json = call(&[echo, "--json", "--data", "12345"]).json();
    assert_eq!(
        json["logs"],
        serde_json::json!([{"level": "debug", "message": "echoed 5 bytes"}])
    );
    let cpu = components::require(components::CPU);
    let json = call(&[cpu, "--json", "--path", "/?iters=3"]).json();
    assert_eq!(
        json["metrics"]["histograms"]["cpu_iterations"],
        serde_json::json!({"count": 1, "sum": 3.0})
    );

    // A body that is not UTF-8 comes as base64, and only so.
    let dir = scratch("call-binary");
    let file = dir.join("body.bin");
    std::fs::write(&file, [0xff, 0x00, 0xfe]).expect("write body");
    let at_file = format!("@{}", file.display());
    let json = call(&[echo, "--json", "--data", &at_file]).json();
    assert_eq!(json.get("body"), None, "{json}");
    let encoded = json["body_base64"].as_str().expect("body_base64");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("valid base64");
    assert!(decoded.ends_with(&[b'\n', 0xff, 0x00, 0xfe]), "{decoded:?}");
}

#[test]
fn call_exits_3_with_the_gateways_answer_when_the_guest_fails() {
    let cpu = components::require(components::CPU);
    let faults = components::require(components::FAULTS);
    let path = |path| [faults, "--path", path];
    let (e500, e502, e503) = (
        "HTTP/1.1 500 Internal Server Error",
        "HTTP/1.1 502 Bad Gateway",
        "HTTP/1.1 503 Service Unavailable",
    );
    let (out_of_fuel, panicked) = ("kind=\"fuel_exhausted\"", "faults: deliberate panic");
    // Arguments, status line, error code, a part of the trap's log line.
    let cases = [
        ([cpu, "--fuel", "1000"], e503, "fuel_exhausted", out_of_fuel),
        (path("/faults/panic"), e500, "trap", panicked),
        (path("/faults/oom"), e500, "trap", "kind=\"memory\""),
        (path("/faults/badstatus"), e502, "bad_response", ""),
    ];
    for (args, status, code, logged) in cases {
        let called = call(&args);
        assert_eq!(called.code, Some(3), "{args:?}: {}", called.stderr);
        let stdout = called.stdout();
        assert!(
            stdout.starts_with(&format!("{status}\n")),
            "{args:?}: {stdout}"
        );
        assert!(
            stdout.contains(&format!("\nx-wasmgate-error: {code}\n")),
            "{stdout}"
        );
        assert!(
            called.stderr.contains(logged),
            "{args:?}: {}",
            called.stderr
        );
        let mut json_args = args.to_vec();
        json_args.push("--json");
        let called = call(&json_args);
        assert_eq!(called.code, Some(3));
        assert_eq!(called.json()["error"], code, "{args:?}");
    }
}

#[test]
fn call_stops_a_guest_at_its_timeout() {
    let faults = components::require(components::FAULTS);
    let started = Instant::now();
    // The default deadline (2 s) would let the 1.5 s sleep finish.
    let called = call(&[
        faults,
        "--path",
        "/faults/sleep?n=1500",
        "--timeout-ms",
        "200",
        "--json",
    ]);
    assert_eq!(called.code, Some(3), "{}", called.stderr);
    let json = called.json();
    assert_eq!(json["status"], 504);
    assert_eq!(json["error"], "timeout");
    assert!(
        json["duration_ms"].as_f64().is_some_and(|d| d >= 200.0),
        "{json}"
    );
    // A generous bound: nothing waits for the guest beyond its deadline.
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn call_caps_memory_at_memory() {
    let faults = components::require(components::FAULTS);
    // The guest allocates 1 MiB chunks until refused: fuel, which is
    // deterministic, tells how far it got.
    let fuel = |extra: &[&str]| {
        let mut args = vec![faults, "--path", "/faults/oom", "--json"];
        args.extend_from_slice(extra);
        let json = call(&args).json();
        assert_eq!(json["error"], "trap", "{json}");
        json["fuel_consumed"].as_u64().expect("fuel consumed")
    };
    let capped = fuel(&["--memory", "4194304"]);
    let default = fuel(&[]);
    assert!(capped < default, "4 MiB: {capped} fuel, 64 MiB: {default}");
}

#[test]
fn call_rejects_bad_arguments_and_files_in_one_line() {
    let hello = components::require(components::HELLO);
    // Command-line errors: exit 2, the argument and the expected form.
    let cases = [
        (
            vec![hello, "--header", "nocolon"],
            "error: invalid value 'nocolon' for '--header <NAME:VALUE>': \"nocolon\" has no ':'; \
             write NAME:VALUE (e.g. content-type:text/plain)\n\nFor more information, try '--help'.\n",
        ),
        (
            vec![hello, "--config", "greeting"],
            "error: invalid value 'greeting' for '--config <KEY=VALUE>': \"greeting\" is not \
             KEY=VALUE (e.g. greeting=hi)\n\nFor more information, try '--help'.\n",
        ),
        (
            vec![hello, "--path", "hello"],
            "error: invalid value 'hello' for '--path <PATH>': \"hello\" must start with '/' \
             (e.g. /hello?name=you)\n\nFor more information, try '--help'.\n",
        ),
    ];
    for (args, stderr) in cases {
        let called = call(&args);
        assert_eq!(called.code, Some(2), "{args:?}");
        assert_eq!(called.stderr, stderr, "{args:?}");
        assert!(called.stdout.is_empty());
    }
    // Files: exit 1, one line naming the file.
    let dir = scratch("call-files");
    let text = dir.join("README.md");
    std::fs::write(&text, "# wasmgate\n").expect("write");
    let missing = dir.join("missing.wasm");
    let cases = [
        (
            text.display().to_string(),
            format!(
                "error: {}: not a valid WebAssembly component: not a WebAssembly file \
                 (it starts with \"# wasmga\", not \"\\0asm\")\n",
                text.display()
            ),
        ),
        (
            missing.display().to_string(),
            format!(
                "error: reading {}: No such file or directory (os error 2)\n",
                missing.display()
            ),
        ),
    ];
    for (file, stderr) in cases {
        let called = call(&[&file]);
        assert_eq!(called.code, Some(1), "{file}");
        assert_eq!(called.stderr, stderr);
        assert!(called.stdout.is_empty());
    }
}

/// A wrong component path is one line: the config file and the line of
/// the `component` key, the tenant and handler, and the path looked for,
/// normalised, once.
#[test]
fn a_wrong_component_path_names_the_config_line_once() {
    let dir = scratch("wrong-component");
    let config = write_config(
        &dir,
        &format!(
            "{}{}",
            one_handler(
                "demo",
                "hello",
                "/hello",
                components::require(components::HELLO)
            ),
            handler(
                "greet",
                "/greet",
                "../target/./wasm32-wasip2/release/gret.wasm"
            ),
        ),
    );
    let stderr = serve_fails(&config);
    let looked_for = dir
        .parent()
        .expect("scratch is in a folder")
        .join("target/wasm32-wasip2/release/gret.wasm");
    assert_eq!(
        stderr,
        format!(
            "error: {}:11: tenant \"demo\" handler \"greet\": component: {}: \
             No such file or directory (os error 2)\n",
            config.display(),
            looked_for.display()
        )
    );
}

/// `serve --log-format json`: every stderr line is one JSON object; guest
/// lines carry tenant and handler as fields, their text escaped within the
/// message, so a guest cannot forge a line or a field.
#[tokio::test]
async fn serve_logs_json_lines_with_guest_fields() {
    let (dir, config) = gateway_files("json-log", &demo(""));
    let log_path = dir.join("wasmgate.log");
    let mut json = serve_command(&config);
    let mut process = spawn(
        json.args(["--log-format", "json"])
            .stderr(log_file(&log_path)),
    );
    for path in ["/faults/lognewline", "/faults/panic"] {
        status_of(format!("{}{path}", process.url)).await;
    }
    process.signal("TERM");
    assert_eq!(process.exit_code().await, Some(0));
    drop(process);
    let log = std::fs::read_to_string(&log_path).expect("read log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    for line in &lines {
        assert!(
            line["timestamp"].is_string()
                && line["level"].is_string()
                && line["message"].is_string(),
            "{line}"
        );
    }
    let about_faults = |needle: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.contains(needle)))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{log}"))
    };
    let forged = about_faults("FORGED");
    assert_eq!(forged["level"], "WARN");
    assert_eq!(forged["tenant"], "demo");
    assert_eq!(forged["handler"], "faults");
    let message = forged["message"].as_str().expect("message");
    assert!(
        message.starts_with("first") && !message.contains(['\n', '\r', '\x1b']),
        "escaped: {message:?}"
    );
    let trap = about_faults("guest trapped");
    assert_eq!(trap["handler"], "faults");
    assert_eq!(trap["kind"], "unreachable");
    assert!(
        trap["stderr"]
            .as_str()
            .is_some_and(|s| s.contains("faults: deliberate panic")),
        "{trap}"
    );
    // The shutdown line is JSON too.
    about_faults("shutting down");
}

/// A port in use stops `serve` with one error that names the option and
/// the config key that pick another; both ports in use are one error.
#[test]
fn a_port_in_use_suggests_listen_and_admin_listen() {
    let dir = scratch("port-in-use");
    let config = write_config(&dir, "");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let taken_2 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port_2 = taken_2.local_addr().expect("addr").port();
    let serve = |listen: &str, admin: &str| {
        let output = Command::new(BIN)
            .args(["serve", "--listen", listen, "--admin-listen", admin])
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run wasmgate");
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("an error line: {stderr}"))
            .to_owned()
    };
    let public = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{port_2}");
    let line = serve(&public, "127.0.0.1:0");
    assert!(
        line.starts_with(&format!(
            "error: binding server.listen {public}: the port is in use"
        )),
        "{line}"
    );
    assert!(
        line.contains("pick a free one with --listen 127.0.0.1:PORT, or change server.listen"),
        "{line}"
    );
    let line = serve("127.0.0.1:0", &admin);
    assert!(
        line.contains(&format!("binding admin.listen {admin}: the port is in use"))
            && line.contains("--admin-listen 127.0.0.1:PORT"),
        "{line}"
    );
    let line = serve(&public, &admin);
    assert!(
        line.contains("--listen 127.0.0.1:PORT") && line.contains("--admin-listen 127.0.0.1:PORT"),
        "{line}"
    );
}
