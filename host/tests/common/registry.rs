//! A real OCI registry for the tests: Debian's `docker-registry`
//! (distribution 2.8) on 127.0.0.1, storing in a scratch folder of its own,
//! killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The program the Debian package `docker-registry` installs.
const PROGRAM: &str = "docker-registry";

/// A `docker-registry` child process; killed on drop, its folder removed.
pub struct Registry {
    child: Child,
    port: u16,
    /// Its config, storage and log.
    dir: PathBuf,
}

impl Registry {
    /// Starts a registry on a free port of 127.0.0.1 and waits until
    /// `GET /v2/` answers 200.
    pub async fn start() -> Self {
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = super::scratch(&format!("registry-{}-{n}", std::process::id()));
        // Another test process may have taken the port since: then try
        // another.
        for _ in 0..5 {
            let port = super::unused_port();
            let mut registry = Self {
                child: spawn(&dir, port),
                port,
                dir: dir.clone(),
            };
            if registry.wait_until_ready().await {
                return registry;
            }
        }
        panic!(
            "docker-registry did not start; its log:\n{}",
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.host_port())
    }

    /// `127.0.0.1:PORT`: the registry part of a reference.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the registry (its storage stays until drop).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it answered `GET /v2/` before it exited or 20 s passed.
    async fn wait_until_ready(&mut self) -> bool {
        let client = super::client();
        let url = format!("{}/v2/", self.base_url());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(response) = client.get(&url).send().await
                && response.status() == 200
            {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop();
        false
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes the config for `port` into `dir` and starts the registry on it,
/// its log in `dir/registry.log`.
fn spawn(dir: &std::path::Path, port: u16) -> Child {
    let storage = dir.join("storage");
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\n\
             log:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        ),
    )
    .expect("write the registry's config");
    let log = std::fs::File::create(dir.join("registry.log")).expect("create the registry's log");
    let stderr = log.try_clone().expect("clone the log file");
    Command::new(PROGRAM)
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {PROGRAM} ({e}): the OCI tests need a registry; install the \
                 Debian package `docker-registry` (apt-get install docker-registry)"
            )
        })
}
