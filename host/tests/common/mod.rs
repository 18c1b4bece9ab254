//! Test harness: a real gateway on `127.0.0.1:0` (in this process, or a
//! `wasmgate serve` child), configs built from [`tenant`] and [`handler`],
//! a real HTTP client and raw connections, helpers to scrape and assert
//! `/metrics`, [`Hold`], a guest that keeps a worker busy for a known
//! time so tests can build a queue without racing it, and a real OCI
//! registry ([`registry`]).

#![allow(dead_code, missing_docs)]

pub mod cluster;
pub mod registry;
pub mod tls;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use wasmgate::control::config::Config;
use wasmgate::server::Server;
use wasmgate_handler_components as components;

/// A gateway running in this process; shut down on drop.
pub struct TestGateway {
    /// The public listener, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin: String,
    /// The HTTPS listener's `127.0.0.1:PORT`.
    pub tls: String,
    /// A client that gives up after 30 s, so no test hangs.
    pub client: reqwest::Client,
    /// Tells the server to shut down; taken when sent.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server, awaited by [`TestGateway::shutdown`].
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A config whose `{hello}`, `{echo}`, `{cpu}`, `{faults}`, `{state}`,
/// `{wasi_hello}` and `{proxy}` placeholders are replaced by the built
/// components' paths.
pub fn config_text(template: &str) -> String {
    template
        .replace("{hello}", components::require(components::HELLO))
        .replace("{echo}", components::require(components::ECHO))
        .replace("{cpu}", components::require(components::CPU))
        .replace("{faults}", components::require(components::FAULTS))
        .replace("{state}", components::require(components::STATE))
        .replace("{wasi_hello}", components::require(components::WASI_HELLO))
        .replace("{proxy}", components::require(components::PROXY))
}

/// A `[[tenant]]` of a test config: `name` on `host` ("" leaves the
/// default, every host), then `keys` (more lines of its table, e.g.
/// `limits = { fuel = 10 }`; "" for none), then one handler per
/// [`config_text`] placeholder in `handlers`, named after it and routed at
/// `/NAME`.
pub fn tenant(name: &str, host: &str, keys: &str, handlers: &[&str]) -> String {
    let mut text = format!("\n[[tenant]]\nname = \"{name}\"\n");
    if !host.is_empty() {
        text.push_str(&format!("hosts = [\"{host}\"]\n"));
    }
    if !keys.is_empty() {
        text.push_str(keys);
        text.push('\n');
    }
    for component in handlers {
        text.push_str(&handler(
            component,
            &format!("/{component}"),
            &format!("{{{component}}}"),
        ));
    }
    text
}

/// A `[[tenant.handler]]` of the tenant above it: `name` at `route`,
/// running `component` (a [`config_text`] placeholder such as `{state}`,
/// or a path).
pub fn handler(name: &str, route: &str, component: &str) -> String {
    format!(
        "[[tenant.handler]]\nname = \"{name}\"\nroute = \"{route}\"\ncomponent = \"{component}\"\n"
    )
}

/// `before` (say, a `[server]` section), then one tenant `demo` on every
/// host with hello (greeting "howdy"), echo, cpu and faults.
pub fn demo(before: &str) -> String {
    format!(
        "{before}\n{}config = {{ greeting = \"howdy\" }}\n{}{}{}",
        tenant("demo", "*", "", &["hello"]),
        handler("echo", "/echo", "{echo}"),
        handler("cpu", "/cpu", "{cpu}"),
        handler("faults", "/faults", "{faults}"),
    )
}

/// A client that gives up after 30 s, so a gateway that never answers
/// fails a test instead of hanging it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A port on 127.0.0.1 that nothing listens on now, for a process a test
/// starts and must name the port to (etcd, a registry, a replica, HAProxy).
///
/// Not one the kernel hands out for `127.0.0.1:0`: those come from its
/// ephemeral range, where any test's outgoing connection can take the
/// port between this call and the process's bind (seen once in about
/// fifteen runs of the cluster tests). Ports below that range are only
/// ever bound on purpose. Each process starts at its own offset, so test
/// binaries running side by side seldom try the same ports, and a port
/// in use is skipped.
pub fn unused_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    assert!(
        span >= 1_000,
        "the ephemeral port range starts at {ephemeral_low}: no room below it for test ports"
    );
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(LOWEST + offset).expect("below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("every port from {LOWEST} to {ephemeral_low} is in use");
}

/// A fresh folder under target/ for one test's files.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A client that speaks HTTP/2 without asking (prior knowledge) and gives
/// up after 30 s.
pub fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The `HOST:PORT` of an `http://HOST:PORT` URL.
pub fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// `GET url`: the status and the body's text.
pub async fn get_text(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {:#}", anyhow::Error::new(e)));
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// `POST url` with `body`.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let request = client.post(url).body(body);
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// Polls `check` until it holds; fails after a generous bound.
pub async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends raw bytes on a fresh connection and returns everything the server
/// sends back until it closes the connection (at most 30 s).
pub async fn raw_exchange(address: &str, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .expect("read");
    answer
}

/// A connection whose receive buffer is `receive_buffer` bytes, so the
/// gateway's writes block as soon as the kernel buffers between us are
/// full.
pub async fn connect_small_window(address: &str, receive_buffer: u32) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(receive_buffer)
        .expect("receive buffer");
    socket
        .connect(address.parse().expect("address"))
        .await
        .expect("connect")
}

/// [`raw_exchange`] as text.
pub async fn raw_text(address: &str, request: &str) -> String {
    String::from_utf8_lossy(&raw_exchange(address, request.as_bytes()).await).into_owned()
}

/// A data dir of its own for one in-process gateway (whatever else it
/// keeps there is no other test's business), whose `cache/` is shared by
/// all of them under target/, so each component is compiled once.
pub fn data_dir() -> std::path::PathBuf {
    static GATEWAYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gateway-data");
    let shared = root.join("cache");
    std::fs::create_dir_all(&shared).expect("create the shared code cache");
    static CLEANED: std::sync::Once = std::sync::Once::new();
    CLEANED.call_once(|| remove_dead_data_dirs(&root));
    let n = GATEWAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = root.join(format!("{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a data dir");
    // The cache writes a file by renaming it into place, so gateways
    // sharing the folder never see a half-written one.
    std::os::unix::fs::symlink(&shared, dir.join("cache")).expect("link the shared code cache");
    dir
}

/// Removes the data dirs of test processes that are gone (`PID-N`), so
/// runs do not pile up files under target/.
fn remove_dead_data_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, _)) = name.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl TestGateway {
    /// Starts a gateway on ephemeral ports with `template` (see
    /// [`config_text`]).
    pub async fn start(template: &str) -> Self {
        let text = config_text(template);
        let mut config = Config::parse(&text, Path::new("test.toml"), Path::new("."))
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"));
        config.runtime.data_dir = data_dir();
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
        let tls = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", public.local_addr().expect("addr"));
        let admin_url = format!("http://{}", admin.local_addr().expect("addr"));
        let tls_address = tls.local_addr().expect("addr").to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_with_tls(public, admin, Some(tls), async {
            let _ = stopped.await;
        }));
        Self {
            url,
            admin: admin_url,
            tls: tls_address,
            client: client(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The public listener's `127.0.0.1:PORT`.
    pub fn address(&self) -> &str {
        host_port(&self.url)
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

    /// `POST path` with `body`.
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        post(&self.client, &format!("{}{path}", self.url), body).await
    }

    /// `GET /readyz` of the admin listener: the status.
    pub async fn readyz(&self) -> u16 {
        get_text(&self.client, &format!("{}/readyz", self.admin))
            .await
            .0
    }

    pub async fn metrics(&self) -> String {
        let (status, text) = get_text(&self.client, &format!("{}/metrics", self.admin)).await;
        assert_eq!(status, 200);
        text
    }

    /// Polls `/metrics` until `sample` has a value for which `ok` holds.
    pub async fn wait_for_metric(&self, sample: &str, ok: impl Fn(f64) -> bool) {
        assert!(self.wait_for_metric_while(sample, ok, || true).await);
    }

    /// Polls `/metrics` until `sample` has a value for which `ok` holds
    /// (true), or until `keep_waiting` says the value can no longer be
    /// trusted to come (false): e.g. a [`Hold`] that is over.
    pub async fn wait_for_metric_while(
        &self,
        sample: &str,
        ok: impl Fn(f64) -> bool,
        keep_waiting: impl Fn() -> bool,
    ) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.metrics().await;
            if metric(&text, sample).is_some_and(&ok) {
                return true;
            }
            if !keep_waiting() {
                return false;
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

/// Asserts the value of each `(sample, value)` in a `/metrics` text.
pub fn assert_metrics(text: &str, want: &[(&str, f64)]) {
    for (sample, value) in want {
        assert_eq!(require_metric(text, sample), *value, "{sample} in\n{text}");
    }
}

/// The `wasmgate_requests_total` sample of `handler`, `status` and `tenant`.
pub fn requests(handler: &str, status: u16, tenant: &str) -> String {
    format!(r#"wasmgate_requests_total{{handler="{handler}",status="{status}",tenant="{tenant}"}}"#)
}

/// A request that keeps one worker busy for at least `hold`: by default
/// `/faults/sleep`, which uses no CPU (the tenant serving it needs a
/// `timeout_ms` well above the longest hold) and so holds one of the
/// worker's running slots only with `runtime.waiting_guests_per_worker =
/// 0` (else it waits beside them). It was sent no earlier than
/// `sent`, so its guest cannot finish before `sent + hold`: whatever a test
/// observes before then happened while the worker was held, however slow
/// the machine.
pub struct Hold {
    /// Taken just before the request was sent: a lower bound on when the
    /// guest started.
    sent: Instant,
    /// How long the guest holds its worker once it runs.
    hold: Duration,
    /// The held request; its status once the hold is over, `None` if the
    /// request failed (say, the gateway of an abandoned attempt went away).
    task: tokio::task::JoinHandle<Option<reqwest::StatusCode>>,
}

impl Hold {
    /// Sends `GET /faults/sleep?n=MS` with Host `host`.
    pub fn start(gw: &TestGateway, host: &str, hold: Duration) -> Self {
        let path = format!("/faults/sleep?n={}", hold.as_millis());
        Self::start_path(gw, host, &path, hold)
    }

    /// Sends `GET path` with Host `host`, a request the caller knows runs
    /// for at least `hold` once routed (e.g. an endless loop whose tenant
    /// has a `timeout_ms` of `hold`).
    pub fn start_path(gw: &TestGateway, host: &str, path: &str, hold: Duration) -> Self {
        Self::send(&gw.client, &gw.url, host, path, hold)
    }

    /// [`Hold::start_path`] for a gateway at `url`, e.g. a `wasmgate serve`
    /// process.
    pub fn send(
        client: &reqwest::Client,
        url: &str,
        host: &str,
        path: &str,
        hold: Duration,
    ) -> Self {
        let request = client.get(format!("{url}{path}")).header("host", host);
        let sent = Instant::now();
        let task = tokio::spawn(async move { request.send().await.ok().map(|r| r.status()) });
        Self { sent, hold, task }
    }

    /// How long the guest holds its worker.
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// Whether the guest is certainly still holding (or not yet started).
    pub fn holding(&self) -> bool {
        self.holding_for(Duration::ZERO)
    }

    /// Whether the guest certainly holds its worker for `left` more.
    pub fn holding_for(&self, left: Duration) -> bool {
        self.sent.elapsed() + left < self.hold
    }

    /// Waits for the held request's answer.
    pub async fn status(self) -> reqwest::StatusCode {
        self.task
            .await
            .expect("hold task")
            .expect("the held request was answered")
    }
}

/// Runs `attempt` with a hold time of 1 s, and again with 4, 16 and 64 s
/// while it returns `None`. An attempt returns `None` when its scenario
/// was not in place while its [`Hold`] lasted, which only a very slow
/// machine causes; a conclusive attempt returns what the test asserts on.
pub async fn with_hold<T, F, Fut>(mut attempt: F) -> T
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for seconds in [1, 4, 16, 64] {
        if let Some(result) = attempt(Duration::from_secs(seconds)).await {
            return result;
        }
        eprintln!("the machine was too slow for a {seconds} s hold; trying a longer one");
    }
    panic!("no attempt was conclusive, even with a 64 s hold");
}

/// The `key=value` lines of a `state` (or `faults/wasi`) response.
pub fn report(body: &str) -> std::collections::BTreeMap<String, String> {
    body.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The `wasmgate` binary these tests run.
pub const BIN: &str = env!("CARGO_BIN_EXE_wasmgate");

/// `wasmgate serve` on ports the kernel picks (`--listen` and
/// `--admin-listen` `127.0.0.1:0`), stdout piped for the startup lines,
/// stderr discarded: callers add `--config`, options, env and their own
/// stderr, then [`Served::spawn`] it.
pub fn serve_command() -> std::process::Command {
    let mut command = std::process::Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    command
}

/// [`serve_command`] on `config`, written to `dir/wasmgate.toml`.
pub fn serve_config(dir: &Path, config: &str) -> std::process::Command {
    let path = dir.join("wasmgate.toml");
    std::fs::write(&path, config).expect("write config");
    let mut command = serve_command();
    command.arg("--config").arg(path);
    command
}

/// PUTs component `bytes` to the admin API at `admin` as handler `name`
/// `method` on `url` (an admin API address) with `token` and `body` as
/// JSON (or none): status and JSON answer (`null` for none).
pub async fn admin_json(
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// of `tenant` at `route`, with `token`: status and body.
pub async fn put_component(
    admin: &str,
    token: &str,
    handler: (&str, &str, &str),
    bytes: Vec<u8>,
) -> (u16, String) {
    let (tenant, name, route) = handler;
    let response = reqwest::Client::new()
        .put(format!(
            "{admin}/admin/tenants/{tenant}/handlers/{name}?route={route}"
        ))
        .bearer_auth(token)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .expect("upload");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// A `wasmgate serve` child process; killed on drop.
pub struct Served {
    /// The process, for signals and its exit status.
    pub child: std::process::Child,
    /// The public listener, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The admin listener, `http://127.0.0.1:PORT`.
    pub admin: String,
    /// The rest of its stdout, kept open: the gateway may print more.
    pub stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Served {
    /// Spawns `command` (from [`serve_command`]) and reads the two lines it
    /// prints once both listeners are bound. Blocks until then.
    pub fn spawn(command: &mut std::process::Command) -> Self {
        use std::io::BufRead;
        let mut child = command.spawn().expect("spawn wasmgate serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stdout = std::io::BufReader::new(stdout);
        let mut next = |prefix: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("a startup line");
            let rest = line.trim_end().strip_prefix(prefix);
            let rest = rest.unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"));
            format!("http://{rest}")
        };
        let url = next("listening on http://");
        let admin = next("admin on http://");
        assert!(
            !url.ends_with(":0") && !admin.ends_with(":0"),
            "real ports are printed"
        );
        Self {
            child,
            url,
            admin,
            stdout,
        }
    }

    /// The public listener's `127.0.0.1:PORT`.
    pub fn address(&self) -> &str {
        host_port(&self.url)
    }

    /// Sends `signal` (e.g. `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let killed = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(killed.success());
    }

    /// Waits (at most 20 s) for the process to exit by itself.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                return exit.code();
            }
            assert!(Instant::now() < deadline, "wasmgate did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/metrics` of the admin listener.
    pub async fn metrics(&self) -> String {
        get_text(&client(), &format!("{}/metrics", self.admin))
            .await
            .1
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` (which `cargo xtask test` installs) passes
/// `exposition`.
pub fn promtool_accepts(exposition: &str) {
    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let output = promtool.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
