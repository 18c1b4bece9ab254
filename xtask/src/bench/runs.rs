//! How one measurement runs: servers started as child processes, wrk runs
//! and their parsed output, resident memory from `/proc`, gateway configs
//! (with a self-signed certificate for HTTPS), the gateway's TLS handshake
//! counters, and a minimal HTTP/1.1 client for the admin API and for
//! polling.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// wrk threads of every load case.
pub const WRK_THREADS: &str = "2";
/// wrk connections of every load case.
pub const WRK_CONNECTIONS: &str = "64";
/// The root admin token the bench's gateways are started with.
pub const ADMIN_TOKEN: &str = "wasmgate-bench-token";

/// One wrk run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Throughput over the whole run.
    pub requests_per_sec: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// Tail latency.
    pub p99_ms: f64,
    /// Non-2xx/3xx responses plus socket errors (connect, read, write,
    /// timeout): every request that did not succeed.
    pub errors: u64,
    /// The server's peak resident memory during the run.
    pub peak_rss_mb: f64,
}

impl Load {
    /// The run as it appears under `runs` in report.json.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests_per_sec": self.requests_per_sec,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "errors": self.errors,
            "peak_rss_mb": self.peak_rss_mb,
        })
    }
}

/// Each load case runs more than once; the report keeps every run.
pub type Runs = Vec<Load>;

/// The run with the highest throughput: noise on a shared machine only
/// ever slows a run, so the better one is closer to what the code can do.
pub fn best(runs: &Runs) -> Load {
    runs.iter()
        .copied()
        .max_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec))
        .unwrap_or_default()
}

/// A running server process, killed on drop.
pub struct Server {
    /// The process: its pid for `/proc`, and killed on drop so that no
    /// server outlives the bench, even when a case fails.
    child: Child,
    /// Base URL of the public listener, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Base URL of the admin listener, for gateways.
    pub admin: Option<String>,
    /// Base URL of the HTTPS listener, `https://127.0.0.1:PORT`, for
    /// gateways with `server.tls_listen`.
    pub https: Option<String>,
}

/// The listeners a server announces on stdout, beside its public one.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    /// `admin on http://ADDR`.
    pub admin: bool,
    /// `listening on https://ADDR`, after the admin line.
    pub https: bool,
}

impl Listeners {
    /// Bare hyper: the public listener only.
    pub const PUBLIC: Self = Self {
        admin: false,
        https: false,
    };
    /// A gateway without HTTPS.
    pub const GATEWAY: Self = Self {
        admin: true,
        https: false,
    };
    /// A gateway with HTTPS.
    pub const GATEWAY_HTTPS: Self = Self {
        admin: true,
        https: true,
    };
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// The process id, to read its memory in `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin listener's base URL.
    pub fn admin_url(&self) -> anyhow::Result<&str> {
        self.admin
            .as_deref()
            .context("the server has no admin listener")
    }

    /// The HTTPS listener's base URL.
    pub fn https_url(&self) -> anyhow::Result<&str> {
        self.https
            .as_deref()
            .context("the server has no HTTPS listener")
    }

    /// Starts `command` and reads the `listening on` (and `admin on`, and
    /// `listening on https://`) lines, which a gateway prints once every
    /// handler is loaded. Its stderr goes wherever `command` says (null
    /// unless set).
    pub fn start(mut command: Command, listeners: Listeners) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // A Server at once, so that the process is killed if it fails to start.
        let mut server = Self {
            child,
            url: String::new(),
            admin: None,
            https: None,
        };
        let mut next = |prefix: &str, scheme: &str| -> anyhow::Result<String> {
            let line = lines
                .next()
                .context("server exited before printing its address")??;
            line.strip_prefix(prefix)
                .map(|rest| format!("{scheme}://{rest}"))
                .with_context(|| format!("expected {prefix:?}, got {line:?}"))
        };
        server.url = next("listening on http://", "http")?;
        if listeners.admin {
            server.admin = Some(next("admin on http://", "http")?);
        }
        if listeners.https {
            server.https = Some(next("listening on https://", "https")?);
        }
        Ok(server)
    }

    /// Stops the server with SIGTERM and waits, at most `timeout`, for it
    /// to exit on its own (a gateway drains, then writes what it must at
    /// exit).
    pub fn stop(mut self, timeout: Duration) -> anyhow::Result<()> {
        let kill = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("running kill")?;
        if !kill.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the server exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the server did not exit within {timeout:?} of SIGTERM")
    }
}

/// A `wasmgate serve --config CONFIG` command with the bench's admin token;
/// its log goes nowhere.
pub fn gateway_command(config: &Path) -> Command {
    gateway_binary_command(Path::new("target/release/wasmgate"), config)
}

/// [`gateway_command`] running the gateway binary `binary`.
pub fn gateway_binary_command(binary: &Path, config: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .args(["serve", "--config"])
        .arg(config)
        .env("WASMGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .stderr(Stdio::null());
    command
}

/// Starts a gateway on `config`.
pub fn gateway(config: &Path) -> anyhow::Result<Server> {
    Server::start(gateway_command(config), Listeners::GATEWAY)
}

/// Starts a gateway on `config`, written by [`write_https_config`].
pub fn https_gateway(config: &Path) -> anyhow::Result<Server> {
    Server::start(gateway_command(config), Listeners::GATEWAY_HTTPS)
}

/// Starts the bare hyper ceiling server.
pub fn bare_hyper() -> anyhow::Result<Server> {
    let mut command = Command::new("target/release/examples/bare_hyper");
    command.arg("127.0.0.1:0").stderr(Stdio::null());
    Server::start(command, Listeners::PUBLIC)
}

/// How `wasmtime serve` treats instances.
#[derive(Debug, Clone, Copy)]
pub enum Instances {
    /// A fresh instance per request: its default for WASIp2 components, and
    /// what the gateway always does.
    Fresh,
    /// Each instance serves this many requests, one at a time
    /// (`--max-instance-reuse-count`).
    Reused(u32),
}

/// Starts `wasmtime serve` (the binary `wasmtime`) on `component`, bound to
/// a free port of 127.0.0.1. It has no thread option: its tokio runtime
/// has one thread per core, as the gateway's, and guests run on those
/// threads. `-S cli` gives the component the `wasi:cli` imports a Rust std
/// guest has, as the gateway does; `-C cache=n` keeps it from writing
/// compiled code to the user's cache folder (it compiles once, at start).
pub fn wasmtime_serve(
    wasmtime: &Path,
    component: &Path,
    instances: Instances,
) -> anyhow::Result<Server> {
    let mut command = Command::new(wasmtime);
    command.args([
        "serve",
        "-S",
        "cli",
        "-C",
        "cache=n",
        "--addr",
        "127.0.0.1:0",
    ]);
    if let Instances::Reused(count) = instances {
        command
            .arg("--max-instance-reuse-count")
            .arg(count.to_string());
    }
    command
        .arg(component)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = command
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    // A Server at once, so that the process is killed if it fails to start.
    let mut server = Server {
        child,
        url: String::new(),
        admin: None,
        https: None,
    };
    let stderr = server.child.stderr.take().context("piped stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    // Its first line: `Serving HTTP on http://127.0.0.1:PORT/`.
    let line = lines
        .next()
        .context("wasmtime serve exited before printing its address")??;
    server.url = line
        .strip_prefix("Serving HTTP on ")
        .map(|url| url.trim_end_matches('/').to_owned())
        .with_context(|| format!("wasmtime serve said {line:?}, not its address"))?;
    // Whatever it logs later is read and dropped: a full pipe would stall it.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(server)
}

/// A handler in a bench config.
pub struct HandlerEntry {
    /// Its name.
    pub name: String,
    /// Its route.
    pub route: String,
    /// The component file, in `target/wasm32-wasip2/release`.
    pub file: &'static str,
    /// Its `greeting` config, if any.
    pub greeting: Option<&'static str>,
    /// Its `upstream` config (`http://HOST:PORT`), if any; the tenant may
    /// then call that address.
    pub upstream: Option<String>,
}

impl HandlerEntry {
    /// `name` at `/route` running `file`, with no config.
    pub fn new(name: impl Into<String>, route: impl Into<String>, file: &'static str) -> Self {
        Self {
            name: name.into(),
            route: route.into(),
            file,
            greeting: None,
            upstream: None,
        }
    }
}

/// The folder the handler components are built in.
pub fn wasm_dir() -> anyhow::Result<PathBuf> {
    std::fs::canonicalize("target/wasm32-wasip2/release").context("handlers are not built")
}

/// Writes a bench config to `path`: one tenant `bench` on every host with
/// `handlers`, limits that let the cpu loop finish, and fuel metering as
/// `consume_fuel` says. The data dir is `wasmgate-data` beside `path`.
/// When handlers name upstreams, the tenant may call them, on as many
/// connections at once as it may serve requests.
pub fn write_config(
    path: &Path,
    consume_fuel: bool,
    handlers: &[HandlerEntry],
) -> anyhow::Result<PathBuf> {
    write_config_file(path, consume_fuel, false, handlers)
}

/// The certificate and key files of [`write_https_config`], beside the config.
const CERT_FILE: &str = "bench-cert.pem";
const KEY_FILE: &str = "bench-key.pem";

/// [`write_config`] with fuel metering on and an HTTPS listener too
/// (`server.tls_listen`), whose default certificate (`server.tls_default`)
/// is a self-signed one for `localhost` written beside `path`. No tenant
/// has its own, so every handshake gets it, with or without SNI, and the
/// tenant on every host serves the requests.
pub fn write_https_config(path: &Path, handlers: &[HandlerEntry]) -> anyhow::Result<PathBuf> {
    let dir = path.parent().context("a config path has a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // rcgen's default key: ECDSA P-256, the common choice for a web
    // server's certificate today.
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .and_then(|params| params.self_signed(&key))
        .context("making a self-signed certificate")?;
    for (file, pem) in [(CERT_FILE, cert.pem()), (KEY_FILE, key.serialize_pem())] {
        let path = dir.join(file);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    write_config_file(path, true, true, handlers)
}

/// Writes [`config_text`] to `path`.
fn write_config_file(
    path: &Path,
    consume_fuel: bool,
    https: bool,
    handlers: &[HandlerEntry],
) -> anyhow::Result<PathBuf> {
    let text = config_text(&wasm_dir()?, consume_fuel, https, handlers);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_owned())
}

/// The text of a bench config, its components in `wasm`; with `https`, an
/// HTTPS listener with [`write_https_config`]'s certificate.
fn config_text(wasm: &Path, consume_fuel: bool, https: bool, handlers: &[HandlerEntry]) -> String {
    let tls = if https {
        format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_default = {{ cert = \"{CERT_FILE}\", key = \"{KEY_FILE}\" }}\n"
        )
    } else {
        String::new()
    };
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:0"
{tls}[admin]
listen = "127.0.0.1:0"
[runtime]
consume_fuel = {consume_fuel}
queue_depth = 4096
[limits]
fuel = 100000000000
timeout_ms = 10000
max_concurrency = 1024
"#
    );
    let upstreams: Vec<String> = handlers
        .iter()
        .filter_map(|h| Some(format!("\"{}\"", h.upstream.as_deref()?)))
        .collect();
    if !upstreams.is_empty() {
        text.push_str("max_outbound_connections = 1024\n");
    }
    text.push_str("[[tenant]]\nname = \"bench\"\nhosts = [\"*\"]\n");
    if !upstreams.is_empty() {
        text.push_str(&format!(
            "allowed_outbound_hosts = [{}]\n",
            upstreams.join(", ")
        ));
    }
    for handler in handlers {
        text.push_str(&format!(
            "[[tenant.handler]]\nname = \"{}\"\nroute = \"{}\"\ncomponent = \"{}\"\n",
            handler.name,
            handler.route,
            wasm.join(handler.file).display()
        ));
        let mut config = Vec::new();
        if let Some(greeting) = handler.greeting {
            config.push(format!("greeting = \"{greeting}\""));
        }
        if let Some(upstream) = &handler.upstream {
            config.push(format!("upstream = \"{upstream}\""));
        }
        if !config.is_empty() {
            text.push_str(&format!("config = {{ {} }}\n", config.join(", ")));
        }
    }
    text
}

/// Resident memory of a process now.
pub fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    status_kb(pid, "VmRSS:").map(|kb| kb / 1024.0)
}

/// Resident memory of a process now, in kB as the kernel counts it.
pub fn rss_kb(pid: u32) -> anyhow::Result<f64> {
    status_kb(pid, "VmRSS:")
}

/// The peak resident memory since the last [`reset_peak_rss`].
pub fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    status_kb(pid, "VmHWM:").map(|kb| kb / 1024.0)
}

/// Resets the peak resident set size (`VmHWM`) of a process.
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

fn status_kb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Parses a wrk duration such as `412.00us`, `1.20ms` or `2.00s` into ms.
pub fn parse_ms(text: &str) -> Option<f64> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

/// Reads wrk's `--latency` output.
pub fn parse_wrk(output: &str) -> anyhow::Result<Load> {
    let mut load = Load::default();
    for line in output.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["50%", v] => load.p50_ms = parse_ms(v).context("p50")?,
            ["99%", v] => load.p99_ms = parse_ms(v).context("p99")?,
            ["Requests/sec:", v] => load.requests_per_sec = v.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => load.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                load.errors += rest
                    .iter()
                    .filter_map(|s| s.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if load.requests_per_sec == 0.0 {
        bail!("wrk reported no requests:\n{output}");
    }
    Ok(load)
}

/// How a wrk run uses its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// Each connection carries request after request (HTTP/1.1 keep-alive).
    KeepAlive,
    /// Each request says `Connection: close`; the server closes the
    /// connection after answering and wrk opens a new one (for HTTPS, a new
    /// TLS handshake) for the next request.
    PerRequest,
}

/// A wrk run as a command, not yet started.
pub fn wrk_command(
    url: &str,
    threads: &str,
    connections: &str,
    seconds: u64,
    reuse: Connections,
) -> Command {
    let mut command = Command::new("wrk");
    command
        .args(["-t", threads, "-c", connections, "-d"])
        .arg(format!("{seconds}s"))
        .args(["--timeout", "10s", "--latency"]);
    if reuse == Connections::PerRequest {
        command.args(["-H", "Connection: close"]);
    }
    command.arg(url);
    command
}

/// Starts wrk against `url` in the background with keep-alive, resetting
/// the peak RSS of the server `pid` first; [`finish_wrk`] reads its result.
pub fn spawn_wrk(
    url: &str,
    threads: &str,
    connections: &str,
    seconds: u64,
    pid: u32,
) -> anyhow::Result<Child> {
    spawn_wrk_with(
        url,
        threads,
        connections,
        seconds,
        Connections::KeepAlive,
        pid,
    )
}

/// [`spawn_wrk`] using connections as `reuse` says.
pub fn spawn_wrk_with(
    url: &str,
    threads: &str,
    connections: &str,
    seconds: u64,
    reuse: Connections,
    pid: u32,
) -> anyhow::Result<Child> {
    reset_peak_rss(pid)?;
    wrk_command(url, threads, connections, seconds, reuse)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk")
}

/// Waits for a wrk started by [`spawn_wrk`] and reads its result and the
/// server's peak RSS meanwhile.
pub fn finish_wrk(wrk: Child, url: &str, pid: u32) -> anyhow::Result<Load> {
    let mut load = wrk_result(wrk, url)?;
    load.peak_rss_mb = peak_rss_mb(pid)?;
    Ok(load)
}

/// Waits for a wrk started with piped output and reads its result (no
/// peak RSS: the caller knows which servers to read).
pub fn wrk_result(wrk: Child, url: &str) -> anyhow::Result<Load> {
    let output = wrk.wait_with_output().context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk {url} failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&text)
}

/// Calls `write(0)` to `write(count - 1)` spread evenly over a load of
/// `seconds` that began at `start`: from 250 ms after it began (its
/// connections are up) to 250 ms before it ends. Returns how long the
/// writes took from `start`, and warns when that is longer than the load
/// (then some writes ran unloaded).
pub fn spread_over_load(
    start: Instant,
    seconds: u64,
    count: usize,
    mut write: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let lead_in = Duration::from_millis(250);
    let spread = Duration::from_secs(seconds).saturating_sub(2 * lead_in);
    let interval = spread / u32::try_from(count).unwrap_or(u32::MAX).max(1);
    for i in 0..count {
        let at = start + lead_in + interval * u32::try_from(i).unwrap_or(u32::MAX);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        write(i)?;
    }
    let took = start.elapsed();
    if took > Duration::from_secs(seconds) {
        eprintln!(
            "xtask: warning: the {count} writes took {took:?}, longer than the {seconds} s load"
        );
    }
    Ok(took)
}

/// Runs wrk against `url` with keep-alive and measures the server's peak
/// RSS meanwhile.
pub fn wrk(
    url: &str,
    threads: &str,
    connections: &str,
    seconds: u64,
    pid: u32,
) -> anyhow::Result<Load> {
    let child = spawn_wrk(url, threads, connections, seconds, pid)?;
    finish_wrk(child, url, pid)
}

/// An HTTP response as the bench needs it.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Everything after the head, as sent (possibly chunked): only shown
    /// in error messages.
    pub body: String,
}

/// How long one HTTP exchange may take before the bench gives up: far
/// beyond any answer the gateway should give, short of hanging forever.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request on a new connection (`Connection: close`), read to
/// the end. `base` is `http://HOST:PORT`. A new connection per request
/// costs tens of microseconds on loopback and keeps the client trivial.
pub fn http(
    method: &str,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Response> {
    let address = base
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {base}"))?;
    let mut stream =
        TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream
        .write_all(&request)
        .with_context(|| format!("sending {method} {path}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer to {method} {path}"))?;
    parse_response(&answer).with_context(|| format!("the answer to {method} {path}"))
}

/// An HTTP/1.1 connection kept open from one GET to the next, for polling
/// every millisecond without a new connection (and a new accept on the
/// server) per poll. It reconnects when the server closed it.
pub struct KeepAlive {
    /// `HOST:PORT`.
    address: String,
    /// The open connection, if any.
    stream: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    /// A client for `base` (`http://HOST:PORT`); it connects at the first GET.
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let address = base
            .strip_prefix("http://")
            .with_context(|| format!("not an http:// URL: {base}"))?;
        Ok(Self {
            address: address.to_owned(),
            stream: None,
        })
    }

    /// `GET path`, the body read whole (de-chunked). A kept connection the
    /// server closed since the last GET fails at once, so a failure on a
    /// kept connection is retried once on a new one.
    pub fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        let kept = self.stream.is_some();
        match self.try_get(path) {
            Err(_) if kept => self.try_get(path),
            result => result,
        }
    }

    fn try_get(&mut self, path: &str) -> anyhow::Result<Response> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(&self.address)
                    .with_context(|| format!("connecting to {}", self.address))?;
                stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
                stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
                stream.set_nodelay(true)?;
                BufReader::new(stream)
            }
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.address);
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .with_context(|| format!("sending GET {path}"))?;
        let (response, reusable) =
            read_response(&mut stream).with_context(|| format!("the answer to GET {path}"))?;
        if reusable {
            self.stream = Some(stream);
        }
        Ok(response)
    }
}

/// Reads one HTTP/1.1 response from `reader`, its body sized by
/// `Content-Length` or chunked; and whether the connection may carry the
/// next request (no `Connection: close`, and the body's end was known).
fn read_response(reader: &mut impl BufRead) -> anyhow::Result<(Response, bool)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))?;
    let (mut length, mut chunked, mut reusable) = (None, false, true);
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            bail!("not a header: {header:?}");
        };
        let value = value.trim().to_ascii_lowercase();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = Some(value.parse::<usize>()?),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => reusable &= value != "close",
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size_text = line.trim_end().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size_text.trim(), 16)
                .with_context(|| format!("not a chunk size: {line:?}"))?;
            if size == 0 {
                // Trailers, if any, up to the empty line that ends them.
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
        reusable = false;
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    Ok((Response { status, body }, reusable))
}

/// Reads the status line of an HTTP/1.1 response and keeps the rest.
fn parse_response(answer: &[u8]) -> anyhow::Result<Response> {
    let text = String::from_utf8_lossy(answer);
    let status_line = text.lines().next().context("an empty answer")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok(Response { status, body })
}

/// GETs `base` + `path` until it answers 200, at most `within`: the time
/// from `since` to that answer.
pub fn wait_for_200(
    base: &str,
    path: &str,
    since: Instant,
    within: Duration,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + within;
    loop {
        // A refused connection is a server not listening yet: poll on.
        let last = match http("GET", base, path, &[], &[]) {
            Ok(response) if response.status == 200 => return Ok(since.elapsed()),
            Ok(response) => format!("{} {}", response.status, response.body.trim()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{base}{path} did not answer 200 within {within:?}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A gateway's `wasmgate_tls_handshakes_total`, by result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsHandshakes {
    /// Completed handshakes.
    pub ok: u64,
    /// Handshakes the client broke off or that found no certificate.
    pub failed: u64,
    /// Handshakes not done within `header_read_timeout_ms` of accept.
    pub timeout: u64,
}

impl TlsHandshakes {
    /// The counters now, from the admin listener's `/metrics` at `admin`.
    pub fn read(admin: &str) -> anyhow::Result<Self> {
        let response = http("GET", admin, "/metrics", &[], &[])?;
        if response.status != 200 {
            bail!("{admin}/metrics answered {}", response.status);
        }
        parse_tls_handshakes(&response.body)
    }

    /// What the counters rose by since `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            ok: self.ok.saturating_sub(before.ok),
            failed: self.failed.saturating_sub(before.failed),
            timeout: self.timeout.saturating_sub(before.timeout),
        }
    }
}

/// Reads the three `wasmgate_tls_handshakes_total` lines of a Prometheus
/// text exposition.
fn parse_tls_handshakes(metrics: &str) -> anyhow::Result<TlsHandshakes> {
    let count = |result: &str| -> anyhow::Result<u64> {
        let series = format!("wasmgate_tls_handshakes_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|value| value.trim().parse::<f64>().ok())
            // A counter is a whole number; the exposition may print it as a float.
            .map(|value| value as u64)
            .with_context(|| format!("no {series}in /metrics"))
    };
    Ok(TlsHandshakes {
        ok: count("ok")?,
        failed: count("failed")?,
        timeout: count("timeout")?,
    })
}

/// The median of `samples` (the mean of the middle two for an even
/// count); 0 for none.
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The smallest of `samples`; 0 for none.
pub fn minimum(samples: &[f64]) -> f64 {
    samples.iter().copied().reduce(f64::min).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that announces a listener, then waits: for SIGTERM it exits
    /// with `on_term`'s status, or ignores it when `on_term` is empty.
    fn announcing_shell(on_term: &str) -> Command {
        let trap = if on_term.is_empty() {
            "trap '' TERM".to_owned()
        } else {
            format!("trap 'exit {on_term}' TERM")
        };
        let mut command = Command::new("sh");
        command.args([
            "-c",
            &format!(
                "{trap}; echo 'listening on http://127.0.0.1:1'; while :; do sleep 0.05; done"
            ),
        ]);
        command
    }

    #[test]
    fn stop_waits_for_a_clean_exit_after_sigterm() -> anyhow::Result<()> {
        let server = Server::start(announcing_shell("0"), Listeners::PUBLIC)?;
        assert_eq!(server.url, "http://127.0.0.1:1");
        server.stop(Duration::from_secs(10))
    }

    #[test]
    fn stop_fails_on_a_bad_exit_or_no_exit() -> anyhow::Result<()> {
        let failing = Server::start(announcing_shell("3"), Listeners::PUBLIC)?;
        let error = failing
            .stop(Duration::from_secs(10))
            .expect_err("exit status 3 is a failure");
        assert!(error.to_string().contains("after SIGTERM"), "{error}");
        let deaf = Server::start(announcing_shell(""), Listeners::PUBLIC)?;
        let error = deaf
            .stop(Duration::from_millis(300))
            .expect_err("a server that ignores SIGTERM is a failure");
        assert!(error.to_string().contains("did not exit"), "{error}");
        Ok(())
    }

    #[test]
    fn parses_wrk_output() {
        let output = "Running 2s test @ http://127.0.0.1:1/hello
  2 threads and 64 connections
  Latency Distribution
     50%  412.00us
     75%  600.00us
     90%    1.00ms
     99%    1.20ms
  123456 requests in 2.00s, 12.34MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  61728.00
Transfer/sec:      6.17MB
";
        let load = parse_wrk(output).expect("parses");
        assert_eq!(load.requests_per_sec, 61728.0);
        assert!((load.p50_ms - 0.412).abs() < 1e-9);
        assert!((load.p99_ms - 1.2).abs() < 1e-9);
        assert_eq!(load.errors, 15);
        assert!(parse_wrk("nothing").is_err());
        assert_eq!(parse_ms("2.00s"), Some(2000.0));
    }

    #[test]
    fn configs_let_a_tenant_call_the_upstreams_its_handlers_name() {
        let wasm = Path::new("/w");
        let plain = config_text(
            wasm,
            true,
            false,
            &[HandlerEntry {
                greeting: Some("hi"),
                ..HandlerEntry::new("hello", "/hello", "hello.wasm")
            }],
        );
        assert!(!plain.contains("outbound"), "{plain}");
        assert!(
            plain.ends_with(
                "[[tenant]]\nname = \"bench\"\nhosts = [\"*\"]\n[[tenant.handler]]\nname = \"hello\"\n\
                 route = \"/hello\"\ncomponent = \"/w/hello.wasm\"\nconfig = { greeting = \"hi\" }\n"
            ),
            "{plain}"
        );
        let proxy = config_text(
            wasm,
            true,
            false,
            &[HandlerEntry {
                upstream: Some("http://127.0.0.1:9".to_owned()),
                ..HandlerEntry::new("proxy", "/proxy", "proxy.wasm")
            }],
        );
        assert!(
            proxy.contains("max_outbound_connections = 1024\n[[tenant]]\n"),
            "{proxy}"
        );
        assert!(
            proxy.contains("allowed_outbound_hosts = [\"http://127.0.0.1:9\"]\n[[tenant.handler]]"),
            "{proxy}"
        );
        assert!(
            proxy.ends_with("config = { upstream = \"http://127.0.0.1:9\" }\n"),
            "{proxy}"
        );
    }

    #[test]
    fn https_configs_listen_with_the_default_certificate() {
        let text = config_text(
            Path::new("/w"),
            true,
            true,
            &[HandlerEntry::new("hello", "/hello", "hello.wasm")],
        );
        assert!(
            text.starts_with(
                "[server]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
                 tls_default = { cert = \"bench-cert.pem\", key = \"bench-key.pem\" }\n[admin]\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn reads_the_tls_handshake_counters() {
        let metrics = "# HELP wasmgate_tls_handshakes_total TLS handshakes\n\
                       # TYPE wasmgate_tls_handshakes_total counter\n\
                       wasmgate_tls_handshakes_total{result=\"failed\"} 3\n\
                       wasmgate_tls_handshakes_total{result=\"ok\"} 120\n\
                       wasmgate_tls_handshakes_total{result=\"timeout\"} 0\n";
        let before = parse_tls_handshakes(metrics).expect("parses");
        assert_eq!(
            before,
            TlsHandshakes {
                ok: 120,
                failed: 3,
                timeout: 0
            }
        );
        let after = TlsHandshakes {
            ok: 200,
            failed: 3,
            timeout: 1,
        };
        assert_eq!(
            after.since(&before),
            TlsHandshakes {
                ok: 80,
                failed: 0,
                timeout: 1
            }
        );
        assert!(parse_tls_handshakes("wasmgate_requests_total 1\n").is_err());
    }

    #[test]
    fn parses_http_responses() {
        let response =
            parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}").expect("parses");
        assert_eq!(response.status, 201);
        assert_eq!(response.body, "{}");
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn reads_sized_and_chunked_responses_and_knows_when_to_reconnect() {
        let mut sized = std::io::Cursor::new(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 404 Not Found\r\n\
              content-length: 0\r\nconnection: close\r\n\r\n"
                .to_vec(),
        );
        let (first, reusable) = read_response(&mut sized).expect("first");
        assert_eq!(
            (first.status, first.body.as_str(), reusable),
            (200, "abc", true)
        );
        let (second, reusable) = read_response(&mut sized).expect("second");
        assert_eq!(
            (second.status, second.body.as_str(), reusable),
            (404, "", false)
        );
        let mut chunked = std::io::Cursor::new(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nv1 f\r\na;x=y\r\nrom wasmga\r\n0\r\n\r\nnext"
                .to_vec(),
        );
        let (response, reusable) = read_response(&mut chunked).expect("chunked");
        assert_eq!((response.body.as_str(), reusable), ("v1 from wasmga", true));
        let mut rest = String::new();
        chunked.read_to_string(&mut rest).expect("the rest");
        assert_eq!(rest, "next");
        let mut to_close = std::io::Cursor::new(b"HTTP/1.0 200 OK\r\n\r\nto the end".to_vec());
        let (response, reusable) = read_response(&mut to_close).expect("unsized");
        assert_eq!((response.body.as_str(), reusable), ("to the end", false));
        assert!(read_response(&mut std::io::Cursor::new(b"".to_vec())).is_err());
    }

    #[test]
    fn medians_and_minimums() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(minimum(&[3.0, 1.0, 2.0]), 1.0);
        assert_eq!(minimum(&[]), 0.0);
    }
}
