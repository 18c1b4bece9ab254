//! `wasmgate serve --watch`: a component file replaced the way cargo and
//! editors replace it (a new file renamed over the old) is served without
//! a restart; a broken one is one error line and the old version keeps
//! serving; an edited config file is applied too.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Served, serve_command};
use wasmgate::digest::sha256_hex;
use wasmgate_handler_components as components;

/// An upper bound for failure only: the watcher applies a change about
/// 150 ms after it, plus a compile on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("watch-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Replaces `path` with `bytes` as cargo and editors do: a new file in the
/// same folder, renamed over the old one.
fn replace(path: &Path, bytes: &[u8]) {
    let temporary = path.with_extension("partial");
    std::fs::write(&temporary, bytes).expect("write temporary file");
    std::fs::rename(&temporary, path).expect("rename over");
}

fn config(route: &str) -> String {
    format!(
        "[runtime]\nworkers = 1\n\n[[tenant]]\nname = \"demo\"\nhosts = [\"*\"]\n\n\
         [[tenant.handler]]\nname = \"app\"\nroute = \"{route}\"\ncomponent = \"app.wasm\"\n"
    )
}

/// `wasmgate serve --watch`, logging to a file; killed on drop.
struct Gateway {
    /// The process; killed on drop.
    _served: Served,
    url: String,
    log: PathBuf,
    client: reqwest::Client,
}

impl Gateway {
    fn start(dir: &Path) -> Self {
        let log = dir.join("serve.log");
        let stderr = std::fs::File::create(&log).expect("create log");
        // The watch is in place before the startup lines are printed.
        let served = Served::spawn(
            serve_command()
                .arg("--watch")
                .arg("--config")
                .arg(dir.join("wasmgate.toml"))
                .stderr(stderr),
        );
        Self {
            url: served.url.clone(),
            _served: served,
            log,
            client: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// Asks until `path` answers `status`.
    async fn wait_for_status(&self, path: &str, status: u16) {
        let started = Instant::now();
        loop {
            if self.get(path).await.0 == status {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{path} never answered {status}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).expect("read log")
    }

    /// The log's lines that contain every one of `parts`.
    fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until `count` log lines contain every one of `parts`.
    async fn wait_for_lines(&self, parts: &[&str], count: usize) -> Vec<String> {
        let started = Instant::now();
        loop {
            let lines = self.lines_with(parts);
            if lines.len() >= count {
                return lines;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "never {count} lines with {parts:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_rebuilt_component_is_served_and_a_broken_one_is_logged_and_ignored() {
    let dir = scratch("swap");
    let hello = std::fs::read(components::require(components::HELLO)).expect("read hello");
    let echo = std::fs::read(components::require(components::ECHO)).expect("read echo");
    let app = dir.join("app.wasm");
    std::fs::write(&app, &hello).expect("copy hello");
    std::fs::write(dir.join("wasmgate.toml"), config("/app")).expect("write config");
    let gw = Gateway::start(&dir);
    assert_eq!(gw.get("/app").await, (200, "hello from wasmgate\n".into()));

    replace(&app, &echo);
    gw.wait_for_status("/app", 204).await;
    let echo_sha = format!("sha256={}", sha256_hex(&echo));
    let loaded = gw.lines_with(&["handler loaded", "handler=app", "version=2", &echo_sha]);
    assert_eq!(loaded.len(), 1, "{}", gw.log());

    // A broken build: one error line with the reason; echo keeps serving.
    replace(&app, b"this is not a component");
    let reason = "not a valid WebAssembly component";
    let errors = gw.wait_for_lines(&["ERROR", reason], 1).await;
    assert!(
        errors[0].contains("app.wasm"),
        "names the file: {}",
        errors[0]
    );
    assert!(errors[0].contains("handler \"app\""), "{}", errors[0]);
    let answer = gw
        .client
        .post(format!("{}/app", gw.url))
        .body("still echo")
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.expect("body").contains("still echo"));

    // A good build after the broken one is served, and the broken one was
    // reported exactly once.
    replace(&app, &hello);
    gw.wait_for_status("/app", 200).await;
    let hello_sha = format!("sha256={}", sha256_hex(&hello));
    gw.wait_for_lines(&["handler loaded", "version=3", &hello_sha], 1)
        .await;
    assert_eq!(gw.lines_with(&["ERROR"]).len(), 1, "{}", gw.log());
}

#[tokio::test]
async fn an_edited_config_file_is_applied() {
    let dir = scratch("config");
    let app = dir.join("app.wasm");
    std::fs::copy(components::require(components::HELLO), &app).expect("copy hello");
    let config_path = dir.join("wasmgate.toml");
    std::fs::write(&config_path, config("/app")).expect("write config");
    let gw = Gateway::start(&dir);
    assert_eq!(gw.get("/app").await.0, 200);

    replace(&config_path, config("/moved").as_bytes());
    gw.wait_for_status("/moved", 200).await;
    assert_eq!(gw.get("/app").await.0, 404);

    // A config that does not parse changes nothing and says why.
    replace(&config_path, b"[[tenant]\n");
    gw.wait_for_lines(&["ERROR", "wasmgate.toml"], 1).await;
    assert_eq!(gw.get("/moved").await.0, 200);
}
