//! A real cluster for the tests: Debian's `etcd` and `haproxy` on
//! 127.0.0.1, and `wasmgate serve` replicas with `[cluster]` pointing at
//! them (and at a [`super::registry::Registry`]). Everything is killed on
//! drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The root token the replicas' admin APIs take.
pub const TOKEN: &str = "cluster-root-token";

/// What the replicas' `WASMGATE_CLUSTER_TENANT_TOKEN` holds: a tenant
/// whose `token_env` names that variable may write with it.
pub const TENANT_TOKEN: &str = "cluster-tenant-token";

/// A single-member etcd; [`Etcd::stop`] and [`Etcd::start_again`] keep its
/// ports and data.
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
}

impl Etcd {
    /// Starts etcd on free ports and waits until it is healthy.
    pub async fn start() -> Self {
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = super::scratch(&format!("etcd-{}-{n}", std::process::id()));
        for _ in 0..5 {
            let mut etcd = Self {
                child: None,
                client_port: super::unused_port(),
                peer_port: super::unused_port(),
                dir: dir.clone(),
            };
            etcd.spawn();
            if etcd.wait_until_healthy().await {
                return etcd;
            }
            etcd.stop();
        }
        panic!(
            "etcd did not start; its log:\n{}",
            std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
        );
    }

    fn spawn(&mut self) {
        let (client, peer) = (
            format!("http://127.0.0.1:{}", self.client_port),
            format!("http://127.0.0.1:{}", self.peer_port),
        );
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting etcd (Debian package etcd-server; `cargo xtask test` installs it): {e}")
            });
        self.child = Some(child);
    }

    async fn wait_until_healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = super::client();
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && child.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            let health = client.get(format!("{}/health", self.url())).send().await;
            if let Ok(response) = health
                && response.status() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// `http://127.0.0.1:PORT`, its client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub async fn start_again(&mut self) {
        self.spawn();
        assert!(self.wait_until_healthy().await, "etcd did not start again");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `wasmgate serve` replica with `[cluster]`, on fixed ports so it can
/// be restarted where HAProxy expects it.
pub struct Replica {
    /// Its node name.
    pub node: String,
    /// `http://127.0.0.1:PORT` of its public listener.
    pub url: String,
    /// `http://127.0.0.1:PORT` of its admin listener.
    pub admin: String,
    /// Its public and admin ports.
    pub ports: (u16, u16),
    dir: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// Writes the replica's config (in its own folder, with its own data
    /// dir) and starts it: `extra` is more TOML for its top level (before
    /// `[cluster]`, e.g. `[limits]` lines).
    pub fn start(node: &str, etcd: &str, prefix: &str, registry: &str, extra: &str) -> Self {
        let dir = super::scratch(&format!("replica-{}-{node}-{prefix}", std::process::id()));
        let ports = (super::unused_port(), super::unused_port());
        let config = format!(
            "{extra}\n[server]\nlisten = \"127.0.0.1:{}\"\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
             token_env = \"WASMGATE_CLUSTER_TEST_TOKEN\"\n\n[cluster]\netcd = [\"{etcd}\"]\n\
             prefix = \"{prefix}\"\nregistry = \"{registry}/wasmgate\"\nnode = \"{node}\"\n",
            ports.0, ports.1
        );
        std::fs::write(dir.join("wasmgate.toml"), config).expect("write replica config");
        let mut replica = Self {
            node: node.to_owned(),
            url: format!("http://127.0.0.1:{}", ports.0),
            admin: format!("http://127.0.0.1:{}", ports.1),
            ports,
            dir,
            child: None,
        };
        replica.spawn();
        replica
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("wasmgate.log"))
            .expect("replica log");
        let child = Command::new(super::BIN)
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("wasmgate.toml"))
            .env("WASMGATE_CLUSTER_TEST_TOKEN", TOKEN)
            .env("WASMGATE_CLUSTER_TENANT_TOKEN", TENANT_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn wasmgate serve");
        self.child = Some(child);
    }

    /// Its log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("wasmgate.log")).unwrap_or_default()
    }

    /// Waits until `/readyz` says 200.
    pub async fn wait_ready(&self) {
        let client = super::client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client.get(format!("{}/readyz", self.admin)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} not ready in 60 s; its log:\n{}",
                self.node,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills it with SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the replica runs");
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} {}", self.node);
    }

    /// Starts it again on the same ports, config and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `GET path` on its public listener: status and body. A request that
    /// gets no answer fails the test with the replica's log.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.url);
        match super::client().get(&url).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.text().await.expect("body"))
            }
            Err(e) => panic!(
                "GET {url} on {}: {:#}; its log:\n{}",
                self.node,
                anyhow::Error::new(e),
                self.log()
            ),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// HAProxy in front of replicas, checking each one's `/readyz`.
pub struct Haproxy {
    child: Child,
    /// `http://127.0.0.1:PORT`, its frontend.
    pub url: String,
    dir: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy balancing over `replicas` (round robin; a replica
    /// whose `/readyz` fails twice is taken out) and waits until it
    /// accepts connections.
    pub async fn start(replicas: &[&Replica]) -> Self {
        let port = super::unused_port();
        let dir = super::scratch(&format!("haproxy-{}-{port}", std::process::id()));
        let mut config = format!(
            "global\n  maxconn 2000\n\ndefaults\n  mode http\n  timeout connect 2s\n  \
             timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch\n\n\
             frontend public\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\n\
             backend replicas\n  balance roundrobin\n  option httpchk GET /readyz\n  \
             http-check expect status 200\n"
        );
        for replica in replicas {
            config.push_str(&format!(
                "  server {} 127.0.0.1:{} check port {} inter 200ms fall 2 rise 1\n",
                replica.node, replica.ports.0, replica.ports.1
            ));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("haproxy log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting haproxy (Debian package haproxy; `cargo xtask test` installs it): {e}"
                )
            });
        let haproxy = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "haproxy did not start: {}",
                std::fs::read_to_string(haproxy.dir.join("haproxy.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        haproxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET /admin/cluster` on `admin`: the JSON answer.
pub async fn cluster_status(admin: &str) -> serde_json::Value {
    let (status, body) = super::admin_json(
        reqwest::Method::GET,
        &format!("{admin}/admin/cluster"),
        TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200, "GET /admin/cluster: {body}");
    body
}
