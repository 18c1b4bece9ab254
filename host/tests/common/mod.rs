//! Test harness: a real gateway on `127.0.0.1:0`, a real HTTP client, and
//! helpers to scrape `/metrics`.

#![allow(dead_code, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use wasmgate::config::Config;
use wasmgate::server::Server;
use wasmgate_handler_components as components;

/// A gateway running in this process; shut down on drop.
pub struct TestGateway {
    pub url: String,
    pub admin: String,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A config whose `{hello}`, `{echo}`, `{cpu}` and `{faults}` placeholders
/// are replaced by the built components' paths.
pub fn config_text(template: &str) -> String {
    template
        .replace("{hello}", components::require(components::HELLO))
        .replace("{echo}", components::require(components::ECHO))
        .replace("{cpu}", components::require(components::CPU))
        .replace("{faults}", components::require(components::FAULTS))
}

/// One tenant `demo` on every host with hello, echo, cpu and faults.
pub const DEMO: &str = r#"
[[tenant]]
name = "demo"
hosts = ["*"]

[[tenant.handler]]
name = "hello"
route = "/hello"
component = "{hello}"
config = { greeting = "howdy" }

[[tenant.handler]]
name = "echo"
route = "/echo"
component = "{echo}"

[[tenant.handler]]
name = "cpu"
route = "/cpu"
component = "{cpu}"

[[tenant.handler]]
name = "faults"
route = "/faults"
component = "{faults}"
"#;

impl TestGateway {
    /// Starts a gateway on ephemeral ports with `template` (see
    /// [`config_text`]).
    pub async fn start(template: &str) -> Self {
        let text = config_text(template);
        let mut config = Config::parse(&text, Path::new("test.toml"), Path::new("."))
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"));
        // Share one code cache among the in-process tests, under target/.
        config.runtime.data_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gateway-data");
        // Loading compiles components: keep it off the async workers.
        let server = tokio::task::spawn_blocking(move || Server::new(&config))
            .await
            .expect("load task")
            .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
        let public = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", public.local_addr().expect("addr"));
        let admin_url = format!("http://{}", admin.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(public, admin, async {
            let _ = stopped.await;
        }));
        Self {
            url,
            admin: admin_url,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn get_host(&self, host: &str, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .header("host", host)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
    }

    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), 200);
        response.text().await.expect("metrics body")
    }

    /// Polls `/metrics` until `sample` has a value for which `ok` holds.
    pub async fn wait_for_metric(&self, sample: &str, ok: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.metrics().await;
            if metric(&text, sample).is_some_and(&ok) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} never reached the expected value; last scrape:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Tells the gateway to shut down, without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the gateway and waits for it to finish draining.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of one sample, e.g. `wasmgate_requests_total{handler="hello",status="200",tenant="demo"}`
/// (labels in the alphabetical order the exposition uses).
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The value of a sample that must be present.
pub fn require_metric(text: &str, sample: &str) -> f64 {
    metric(text, sample).unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
}
