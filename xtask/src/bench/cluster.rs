//! Cluster mode's cases: three release replicas sharing Debian's `etcd`
//! and `docker-registry` on loopback. How long a deploy written on one
//! replica takes to serve on all three, and what 20 swaps written on
//! alternating replicas cost requests sent through HAProxy (cases p and q).
//!
//! Every deploy is a new version whose body says which it is: a PATCH of
//! the greeting, or (every fourth) a PUT of the other of two `hello`
//! variants whose built-in text differs (" from wasmgate: swapA" or
//! "swapB"). Both variants are deployed before measuring, so every
//! replica has their code and the cases measure deploys, not compiles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Plan;
use super::runs::{
    ADMIN_TOKEN, Connections, KeepAlive, Listeners, Load, Runs, Server, WRK_THREADS,
    gateway_command, http, peak_rss_mb, reset_peak_rss, spread_over_load, wait_for_200, wasm_dir,
    wrk_command, wrk_result,
};

/// Replicas of the cluster.
const REPLICAS: usize = 3;
/// Swaps written while case q's load runs.
pub const CLUSTER_SWAPS: usize = 20;
/// wrk connections through HAProxy.
pub const CLUSTER_CONNECTIONS: &str = "32";
/// The tenant and handler the cases deploy.
const TENANT: &str = "bench";
const HANDLER: &str = "hello";
/// How long a daemon may take to answer its health check, and a deploy to
/// serve everywhere, before the bench fails: far beyond any target.
const WITHIN: Duration = Duration::from_secs(30);
/// The text of `hello.wasm` the two variants replace, and with what.
const HELLO_TEXT: &[u8] = b" from wasmgate: hello";
const VARIANTS: [&str; 2] = ["swapA", "swapB"];

/// The HAProxy cases: id, description.
pub const CLUSTER_SWAP_CASES: [(&str, &str); 2] = [
    (
        "p",
        "3 replicas via HAProxy /hello, 32 conns, no writes (baseline for q)",
    ),
    (
        "q",
        "3 replicas via HAProxy /hello, 32 conns, during 20 swaps on alternating replicas",
    ),
];

/// What the cluster cases measured; every sample is kept.
pub struct ClusterResults {
    /// Each deploy: the write sent to all three replicas answering the
    /// new body.
    pub served_everywhere_ms: Vec<f64>,
    /// Each deploy: the write sent to its answer (committed in etcd and
    /// served by the replica written to).
    pub acknowledged_ms: Vec<f64>,
    /// Cases p (no writes) and q (swaps during the load), by id.
    pub swaps: BTreeMap<&'static str, Runs>,
    /// How long the swaps of each run of q took from the start of its load.
    pub swap_seconds: Vec<f64>,
}

/// Runs both cluster cases; `out` is the bench's output folder, under
/// which `cluster/` keeps every daemon's config, data and log.
pub fn run(plan: &Plan, out: &Path) -> anyhow::Result<ClusterResults> {
    let dir = out.join("cluster");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("xtask: cluster: etcd, a registry and {REPLICAS} replicas");
    let cluster = Cluster::start(&dir)?;
    let mut writer = Writer::new()?;
    writer.warm_up(&cluster)?;

    let deploys = if plan.quick { 6 } else { 20 };
    eprintln!("xtask: cluster: deploy to served on {REPLICAS} replicas, {deploys} deploys");
    let mut pollers = cluster.pollers()?;
    let mut served_everywhere_ms = Vec::with_capacity(deploys);
    let mut acknowledged_ms = Vec::with_capacity(deploys);
    for i in 0..deploys {
        let start = Instant::now();
        let body = writer.next(cluster.replica(i)?)?;
        acknowledged_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        let served = served_everywhere(&mut pollers, &body, start)?;
        served_everywhere_ms.push(served.as_secs_f64() * 1000.0);
    }

    let haproxy = Haproxy::start(&dir, &cluster)?;
    let (swaps, swap_seconds) = swap(plan, &cluster, &haproxy, &mut writer, &mut pollers)?;
    Ok(ClusterResults {
        served_everywhere_ms,
        acknowledged_ms,
        swaps,
        swap_seconds,
    })
}

/// Cases p and q, alternating: wrk through HAProxy alone, then with
/// [`CLUSTER_SWAPS`] writes spread over the run on alternating replicas;
/// after each q, every replica must serve the last write.
fn swap(
    plan: &Plan,
    cluster: &Cluster,
    haproxy: &Haproxy,
    writer: &mut Writer,
    pollers: &mut [KeepAlive],
) -> anyhow::Result<(BTreeMap<&'static str, Runs>, Vec<f64>)> {
    let url = format!("{}/hello", haproxy.url);
    let seconds = plan.seconds;
    let mut runs: BTreeMap<&str, Runs> = BTreeMap::new();
    let mut swap_seconds = Vec::new();
    for rep in 0..plan.repetitions {
        let [(p, p_name), (q, q_name)] = CLUSTER_SWAP_CASES;
        eprintln!("xtask: case {p} ({p_name}), run {}", rep + 1);
        let load = cluster.load(&url, seconds, |_| Ok(()))?;
        runs.entry(p).or_default().push(load.0);

        eprintln!("xtask: case {q} ({q_name}), run {}", rep + 1);
        let mut body = String::new();
        let (load, took) = cluster.load(&url, seconds, |start| {
            spread_over_load(start, seconds, CLUSTER_SWAPS, |i| {
                body = writer.next(cluster.replica(i)?)?;
                Ok(())
            })
        })?;
        served_everywhere(pollers, &body, Instant::now())?;
        swap_seconds.push(took.as_secs_f64());
        runs.entry(q).or_default().push(load);
    }
    Ok((runs, swap_seconds))
}

/// One version of the handler: its greeting (set by PATCH) and which
/// component variant it runs (set by PUT).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    greeting: String,
    variant: usize,
}

impl Version {
    /// What `/hello` answers for it.
    fn body(&self) -> String {
        format!(
            "{} from wasmgate: {}\n",
            self.greeting, VARIANTS[self.variant]
        )
    }

    /// The version written after this one, the `count`th write: every
    /// fourth swaps the component, the others set greeting `v{count}`.
    fn after(&self, count: usize) -> Self {
        if count.is_multiple_of(4) {
            Self {
                greeting: self.greeting.clone(),
                variant: 1 - self.variant,
            }
        } else {
            Self {
                greeting: format!("v{count}"),
                variant: self.variant,
            }
        }
    }
}

/// Writes the handler's versions through the replicas' admin APIs.
struct Writer {
    /// `hello.wasm` with each of [`VARIANTS`].
    components: [Vec<u8>; 2],
    /// The active version.
    current: Version,
    /// Writes so far.
    count: usize,
}

impl Writer {
    fn new() -> anyhow::Result<Self> {
        let hello = std::fs::read(wasm_dir()?.join("hello.wasm")).context("reading hello.wasm")?;
        Ok(Self {
            components: [
                with_text(&hello, HELLO_TEXT, VARIANTS[0].as_bytes())?,
                with_text(&hello, HELLO_TEXT, VARIANTS[1].as_bytes())?,
            ],
            current: Version {
                greeting: "v0".to_owned(),
                variant: 0,
            },
            count: 0,
        })
    }

    /// Creates the tenant and the handler (greeting `v0`, variant A) and
    /// deploys variant B and A again, each served everywhere before the
    /// next: every replica has pulled and compiled both.
    fn warm_up(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        let admin = cluster.replica(0)?;
        admin_write(
            admin,
            "PUT",
            &format!("/admin/tenants/{TENANT}"),
            "application/json",
            br#"{"hosts": ["*"]}"#,
        )?;
        let handler = format!("/admin/tenants/{TENANT}/handlers/{HANDLER}");
        admin_write(
            admin,
            "PUT",
            &format!("{handler}?route=/hello"),
            "application/wasm",
            &self.components[0],
        )?;
        self.write(admin, &self.current.clone())?;
        let mut pollers = cluster.pollers()?;
        served_everywhere(&mut pollers, &self.current.body(), Instant::now())?;
        for variant in [1, 0] {
            let version = Version {
                variant,
                ..self.current.clone()
            };
            self.write(admin, &version)?;
            served_everywhere(&mut pollers, &version.body(), Instant::now())?;
            self.current = version;
        }
        Ok(())
    }

    /// Writes the next version through `admin` (a replica's admin URL):
    /// the body `/hello` answers once it serves.
    fn next(&mut self, admin: &str) -> anyhow::Result<String> {
        self.count += 1;
        let version = self.current.after(self.count);
        self.write(admin, &version)?;
        self.current = version;
        Ok(self.current.body())
    }

    /// Makes `version` active: a PUT of its component when that differs
    /// from the active one's, else a PATCH of its greeting.
    fn write(&self, admin: &str, version: &Version) -> anyhow::Result<()> {
        let handler = format!("/admin/tenants/{TENANT}/handlers/{HANDLER}");
        if version.variant != self.current.variant {
            let bytes = &self.components[version.variant];
            return admin_write(admin, "PUT", &handler, "application/wasm", bytes);
        }
        let body = serde_json::json!({"config": {"greeting": version.greeting}}).to_string();
        admin_write(
            admin,
            "PATCH",
            &handler,
            "application/json",
            body.as_bytes(),
        )
    }
}

/// `method path` on the admin API at `admin` with the root token; fails
/// unless it answers 200 or 201.
fn admin_write(
    admin: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    let response = http(
        method,
        admin,
        path,
        &[
            ("Authorization", &authorization),
            ("Content-Type", content_type),
        ],
        body,
    )?;
    if !matches!(response.status, 200 | 201) {
        bail!(
            "{method} {admin}{path} answered {}: {}",
            response.status,
            response.body.trim()
        );
    }
    Ok(())
}

/// Polls `/hello` on every replica (each its own kept connection, every
/// millisecond) until all answer 200 with `want`: the time from `since`.
fn served_everywhere(
    pollers: &mut [KeepAlive],
    want: &str,
    since: Instant,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + WITHIN;
    let mut pending: Vec<usize> = (0..pollers.len()).collect();
    let mut last = String::new();
    loop {
        let mut still = Vec::new();
        for i in pending {
            match pollers[i].get("/hello") {
                Ok(r) if r.status == 200 && r.body == want => continue,
                Ok(r) => last = format!("{} {:?}", r.status, r.body),
                Err(e) => last = format!("{e:#}"),
            }
            still.push(i);
        }
        pending = still;
        if pending.is_empty() {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            bail!("replicas {pending:?} did not answer {want:?} within {WITHIN:?}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `component` with its only occurrence of `text` replaced by its first
/// `text.len() - replacement.len()` bytes and `replacement`: a string
/// literal in a data segment, so the result is as valid as `component`
/// and answers with the new text. Fails unless `text` occurs exactly once.
fn with_text(component: &[u8], text: &[u8], replacement: &[u8]) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(replacement.len() <= text.len(), "a longer replacement");
    let mut found = component
        .windows(text.len())
        .enumerate()
        .filter(|(_, window)| *window == text)
        .map(|(i, _)| i);
    let (Some(at), None) = (found.next(), found.next()) else {
        bail!(
            "hello.wasm holds {:?} not exactly once",
            String::from_utf8_lossy(text)
        );
    };
    let mut out = component.to_vec();
    let end = at + text.len();
    out[end - replacement.len()..end].copy_from_slice(replacement);
    Ok(out)
}

/// A daemon (etcd, the registry, HAProxy) killed on drop, so that none
/// outlives the bench, even when a case fails.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Spawns `command`, its stdout and stderr into `dir/NAME.log`.
    fn spawn(name: &'static str, mut command: Command, dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self { name, child, log })
    }

    /// Whether `GET base+path` answered 200 before the daemon exited (its
    /// port was taken since it was picked) or [`WITHIN`] passed.
    fn healthy(&mut self, base: &str, path: &str) -> anyhow::Result<bool> {
        let deadline = Instant::now() + WITHIN;
        while Instant::now() < deadline {
            if matches!(http("GET", base, path, &[], &[]), Ok(r) if r.status == 200) {
                return Ok(true);
            }
            if self.child.try_wait()?.is_some() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{} did not answer {base}{path} within {WITHIN:?}; see {}",
            self.name,
            self.log.display()
        )
    }

    /// Starts a daemon on free ports: `start` spawns it and names the
    /// base URL whose `health` path says it is up. A port picked free may
    /// be taken before the daemon binds it: then new ports, five tries.
    fn start_healthy(
        name: &'static str,
        health: &str,
        mut start: impl FnMut() -> anyhow::Result<(Self, String)>,
    ) -> anyhow::Result<(Self, String)> {
        for _ in 0..5 {
            let (mut daemon, base) = start()?;
            if daemon.healthy(&base, health)? {
                return Ok((daemon, base));
            }
        }
        bail!("{name} did not start; see its log in target/bench/cluster")
    }
}

/// A port free on 127.0.0.1 a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// etcd, the registry and the replicas; each killed on drop, the replicas
/// first.
struct Cluster {
    replicas: Vec<Server>,
    _registry: Daemon,
    _etcd: Daemon,
}

impl Cluster {
    /// Starts a one-member etcd, a registry and [`REPLICAS`] replicas, in
    /// folders of `dir`, and waits until each replica is ready.
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let (etcd, etcd_url) = Daemon::start_healthy("etcd", "/health", || {
            let (client, peer) = (
                format!("http://127.0.0.1:{}", free_port()?),
                format!("http://127.0.0.1:{}", free_port()?),
            );
            let mut command = Command::new("etcd");
            command
                .arg("--name=bench")
                .arg(format!("--data-dir={}", dir.join("etcd-data").display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=bench={peer}"));
            Ok((Daemon::spawn("etcd", command, dir)?, client))
        })?;
        let (registry, registry_url) = Daemon::start_healthy("registry", "/v2/", || {
            let port = free_port()?;
            let config = dir.join("registry.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: 127.0.0.1:{port}\n",
                    dir.join("registry-data").display()
                ),
            )
            .with_context(|| format!("writing {}", config.display()))?;
            let mut command = Command::new("docker-registry");
            command.arg("serve").arg(&config);
            let base = format!("http://127.0.0.1:{port}");
            Ok((Daemon::spawn("registry", command, dir)?, base))
        })?;
        let mut replicas = Vec::with_capacity(REPLICAS);
        for i in 1..=REPLICAS {
            replicas.push(replica(dir, &format!("gw-{i}"), &etcd_url, &registry_url)?);
        }
        for replica in &replicas {
            let admin = replica.admin_url()?;
            wait_for_200(admin, "/readyz", Instant::now(), WITHIN)?;
        }
        Ok(Self {
            replicas,
            _registry: registry,
            _etcd: etcd,
        })
    }

    /// The admin URL of the replica the `i`th write goes to: they take
    /// turns.
    fn replica(&self, i: usize) -> anyhow::Result<&str> {
        self.replicas[i % self.replicas.len()].admin_url()
    }

    /// A kept connection to each replica's public listener.
    fn pollers(&self) -> anyhow::Result<Vec<KeepAlive>> {
        self.replicas
            .iter()
            .map(|r| KeepAlive::new(&r.url))
            .collect()
    }

    /// wrk `-t2 -c32 --latency` on `url` while `during` runs (given the
    /// load's start), and the highest peak RSS of the replicas meanwhile.
    fn load<T>(
        &self,
        url: &str,
        seconds: u64,
        during: impl FnOnce(Instant) -> anyhow::Result<T>,
    ) -> anyhow::Result<(Load, T)> {
        for replica in &self.replicas {
            reset_peak_rss(replica.pid())?;
        }
        let wrk = wrk_command(
            url,
            WRK_THREADS,
            CLUSTER_CONNECTIONS,
            seconds,
            Connections::KeepAlive,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk")?;
        let done = during(Instant::now());
        let mut load = wrk_result(wrk, url)?;
        let done = done?;
        for replica in &self.replicas {
            load.peak_rss_mb = load.peak_rss_mb.max(peak_rss_mb(replica.pid())?);
        }
        Ok((load, done))
    }
}

/// Starts replica `node` with `[cluster]` on `etcd` and `registry`: its
/// config, data dir and log in `dir/NODE`; the limits of the other cases.
fn replica(dir: &Path, node: &str, etcd: &str, registry: &str) -> anyhow::Result<Server> {
    let dir = dir.join(node);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("wasmgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [runtime]\nqueue_depth = 4096\n\
             [limits]\nfuel = 100000000000\ntimeout_ms = 10000\nmax_concurrency = 1024\n\
             [cluster]\netcd = [\"{etcd}\"]\nprefix = \"/wasmgate-bench\"\n\
             registry = \"{registry}/wasmgate\"\nnode = \"{node}\"\n"
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let log_path = dir.join("wasmgate.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = gateway_command(&config);
    command.stderr(Stdio::from(log));
    Server::start(command, Listeners::GATEWAY)
}

/// HAProxy in front of the replicas: round robin, each replica's admin
/// `/readyz` checked every 200 ms.
struct Haproxy {
    /// `http://127.0.0.1:PORT`, its frontend.
    url: String,
    _daemon: Daemon,
}

impl Haproxy {
    /// Starts it with its config in `dir` and waits until a request
    /// through it reaches each replica.
    fn start(dir: &Path, cluster: &Cluster) -> anyhow::Result<Self> {
        let (daemon, url) = Daemon::start_healthy("haproxy", "/hello", || {
            let port = free_port()?;
            let mut config = format!(
                "global\n  maxconn 2000\n\ndefaults\n  mode http\n  timeout connect 2s\n  \
                 timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch\n\n\
                 frontend public\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\n\
                 backend replicas\n  balance roundrobin\n  option httpchk GET /readyz\n  \
                 http-check expect status 200\n"
            );
            for (i, replica) in cluster.replicas.iter().enumerate() {
                config.push_str(&format!(
                    "  server gw-{} {} check port {} inter 200ms fall 2 rise 1\n",
                    i + 1,
                    address(&replica.url)?,
                    port_of(replica.admin_url()?)?,
                ));
            }
            let path = dir.join("haproxy.cfg");
            std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
            let mut command = Command::new("haproxy");
            command.arg("-db").arg("-f").arg(&path);
            let base = format!("http://127.0.0.1:{port}");
            Ok((Daemon::spawn("haproxy", command, dir)?, base))
        })?;
        // Round robin: the next requests reach every replica.
        for _ in 0..REPLICAS {
            wait_for_200(&url, "/hello", Instant::now(), WITHIN)?;
        }
        Ok(Self {
            url,
            _daemon: daemon,
        })
    }
}

/// `HOST:PORT` of `http://HOST:PORT`.
fn address(base: &str) -> anyhow::Result<&str> {
    base.strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {base}"))
}

/// The port of `http://HOST:PORT`.
fn port_of(base: &str) -> anyhow::Result<u16> {
    let address = address(base)?;
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .with_context(|| format!("no port in {base}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_makes_a_new_body_every_fourth_by_a_put() {
        let mut version = Version {
            greeting: "v0".to_owned(),
            variant: 0,
        };
        let mut bodies = vec![version.body()];
        for count in 1..=8 {
            let next = version.after(count);
            assert_eq!(
                next.variant != version.variant,
                count.is_multiple_of(4),
                "{count}"
            );
            version = next;
            bodies.push(version.body());
        }
        assert_eq!(bodies[3], "v3 from wasmgate: swapA\n");
        assert_eq!(bodies[4], "v3 from wasmgate: swapB\n");
        assert_eq!(bodies[8], "v7 from wasmgate: swapA\n");
        let distinct: std::collections::BTreeSet<&String> = bodies.iter().collect();
        assert_eq!(distinct.len(), bodies.len(), "{bodies:?}");
    }

    #[test]
    fn the_text_is_replaced_in_place_once() {
        let component = b"\0asm....greeting from wasmgate: hello....";
        let out = with_text(component, HELLO_TEXT, b"swapB").expect("once");
        assert_eq!(out.len(), component.len());
        assert_eq!(&out[..], b"\0asm....greeting from wasmgate: swapB....");
        assert!(with_text(b"nothing", HELLO_TEXT, b"swapB").is_err());
        let twice = [&component[..], &component[..]].concat();
        assert!(with_text(&twice, HELLO_TEXT, b"swapB").is_err());
    }

    #[test]
    fn ports_come_from_base_urls() {
        assert_eq!(port_of("http://127.0.0.1:8081").expect("port"), 8081);
        assert_eq!(
            address("http://127.0.0.1:8081").expect("address"),
            "127.0.0.1:8081"
        );
        assert!(port_of("127.0.0.1:8081").is_err());
    }
}
