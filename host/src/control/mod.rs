//! The control plane: what the gateway should serve, and the one way to
//! change it.
//!
//! [`config`] reads the TOML file, [`state`] is the desired state (pure),
//! [`persist`] keeps it and the uploaded components in the data dir,
//! [`registry`] is the one writer that loads what an edit needs and
//! publishes the routing table and the certificates ([`certs`]), [`compile`] fills
//! the code cache (in a child process for the server), [`table`] is the
//! routing table published for the request path, [`watch`] applies the
//! file again when it changes, and [`oci`] pushes components to an OCI
//! registry and pulls them from it. [`ControlPlane::reload`] is the
//! single entry point that SIGHUP, `POST /admin/reload` and `serve --watch`
//! all call. In cluster mode ([`cluster`]) the registry commits admin
//! writes to etcd through [`shared`] and applies the revisions it watches.
//!
//! Nothing here runs guest code for a request or sits on the request path:
//! requests read the published table and never wait for a writer.

pub mod certs;
pub mod cluster;
pub mod compile;
pub mod config;
pub mod oci;
pub mod persist;
pub mod registry;
pub mod shared;
pub mod state;
pub mod table;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use self::cluster::{Cluster, ClusterSetupError};
use self::compile::ChildCompiler;
use self::config::Config;
use self::persist::DataDir;
use self::registry::Registry;
use crate::metrics::Metrics;
use crate::runtime::{Runtime, RuntimeError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The engine or the workers could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The handlers did not load.
    #[error(transparent)]
    Registry(#[from] registry::ApplyConfigError),
    /// rustls refused the HTTPS listener's settings.
    #[error("setting up TLS: {0}")]
    Tls(rustls::Error),
    /// `[cluster]` could not be set up.
    #[error(transparent)]
    Cluster(#[from] ClusterSetupError),
}

/// Why a config reload did not happen; nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The gateway was started without a config file.
    #[error("the gateway was started without --config: there is no file to reload")]
    NoConfigFile,
    /// The file does not parse or validate (the message `serve` gives).
    #[error("{0}")]
    Config(String),
    /// Its handlers did not load, or do not fit the state.
    #[error(transparent)]
    Apply(registry::ApplyConfigError),
}

/// What asked for a reload: it only changes the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The process got SIGHUP.
    Sighup,
    /// `POST /admin/reload`, which answers with the outcome itself.
    Api,
    /// `serve --watch` saw these files change.
    Watch(String),
}

/// The desired state's one owner: the registry that edits and publishes
/// it, and the config file it is reloaded from.
#[derive(Debug)]
pub struct ControlPlane {
    /// The one writer, and the routing table it publishes.
    registry: Arc<Registry>,
    /// The engine handler versions are compiled and linked for; the
    /// executor runs guests on it.
    runtime: Runtime,
    /// The config file `serve` was started with, read again on reload.
    config_path: Option<PathBuf>,
    /// The config applied last: the admin API reads its tokens from it.
    applied: RwLock<Arc<Config>>,
    /// This replica's part in the cluster, in cluster mode.
    cluster: Option<Arc<Cluster>>,
}

impl ControlPlane {
    /// Sets up the engine, fills the code cache (in a child process of the
    /// `wasmgate` binary when `config_path` is given, so the server never
    /// holds the compiler's memory), and loads the stored state with the
    /// config over it. Fails, naming the handler, if any configured
    /// component does not load. Call it off the async threads: it may
    /// compile.
    pub fn start(
        config: &Config,
        config_path: Option<&Path>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let runtime = runtime_for(config)?;
        let child = config_path.and_then(ChildCompiler::for_this_binary);
        if let Some(child) = &child {
            child.compile(&startup_components(config));
        }
        let registry = Arc::new(Registry::from_config(config, &runtime, metrics, child)?);
        let cluster = match &config.cluster {
            Some(settings) => Some(Cluster::new(config, settings, &registry, metrics)?),
            None => None,
        };
        Ok(Self {
            registry,
            runtime,
            config_path: config_path.map(Path::to_path_buf),
            applied: RwLock::new(Arc::new(config.clone())),
            cluster,
        })
    }

    /// This replica's part in the cluster, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The registry: the routing table and the writer that edits it.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The engine guests run on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The config applied last (at start or by the last reload).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.applied.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the config file again and applies the difference: tenants,
    /// routes, limits, handlers, tokens. An invalid file changes nothing
    /// and is reported as `serve` would report it, naming a missing
    /// component with its config line. Returns what the file says that was
    /// not applied because the admin API set it last (one sentence each),
    /// and logs one line saying what happened (for the API, only when
    /// something was not applied: its answer says the rest).
    pub async fn reload(&self, trigger: Trigger) -> Result<Vec<String>, ReloadError> {
        let result = self.apply_file().await;
        let kept = match &result {
            Ok(not_applied) if !not_applied.is_empty() => {
                format!("; not applied: {}", not_applied.join("; "))
            }
            _ => String::new(),
        };
        match (&trigger, &result) {
            (Trigger::Api, Ok(_)) if !kept.is_empty() => {
                tracing::info!("POST /admin/reload: config file applied{kept}");
            }
            (Trigger::Api, _) => {}
            (Trigger::Sighup, Ok(_)) => tracing::info!("SIGHUP: config file applied{kept}"),
            (Trigger::Sighup, Err(e)) => {
                tracing::error!("SIGHUP: config file rejected, nothing changed: {e}");
            }
            (Trigger::Watch(files), Ok(_)) => {
                tracing::info!("changed: {files}; config file applied{kept}");
            }
            (Trigger::Watch(files), Err(e)) => tracing::error!(
                "changed: {files}; not applied, the versions serving stay: {}",
                one_line(&e.to_string())
            ),
        }
        result
    }

    async fn apply_file(&self) -> Result<Vec<String>, ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoConfigFile)?;
        let config = tokio::task::spawn_blocking(move || {
            let config = Config::load(&path)?;
            config.check_components(&path).map(|()| config)
        })
        .await
        .map_err(|e| ReloadError::Config(e.to_string()))?
        .map_err(|e| ReloadError::Config(e.to_string()))?;
        let not_applied = self
            .registry
            .apply_config(config.clone())
            .await
            .map_err(ReloadError::Apply)?;
        *self.applied.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(not_applied)
    }
}

/// The engine `serve` uses for `config`: sized for its workers and largest
/// memory limit, with the code cache in its data dir.
pub fn runtime_for(config: &Config) -> Result<Runtime, RuntimeError> {
    // Each worker keeps up to `guests_per_worker` running guests and
    // `waiting_guests_per_worker` waiting ones alive; one more slot is for
    // loading, which makes one instance to prove a version works.
    let per_worker =
        config.runtime.guests_per_worker.max(1) + config.runtime.waiting_guests_per_worker;
    let guests = config.runtime.worker_count() * per_worker;
    engine_for(config, u32::try_from(guests + 1).unwrap_or(u32::MAX))
}

/// The engine `compile` uses for `config`: `serve`'s settings, so what it
/// caches is what `serve` loads, with a pool of one instance (compiling
/// instantiates nothing), so the compile child's memory cap is spent on
/// compiling rather than on a pool it never uses.
pub fn compile_runtime_for(config: &Config) -> Result<Runtime, RuntimeError> {
    engine_for(config, 1)
}

/// The engine for `config` with a pool of `instances`.
fn engine_for(config: &Config, instances: u32) -> Result<Runtime, RuntimeError> {
    let max_memory = config
        .tenants
        .iter()
        .map(|t| config.tenant_limits(t).memory_bytes)
        .chain([config.limits.memory_bytes])
        .max()
        .unwrap_or(config.limits.memory_bytes);
    let data_dir = DataDir::new(&config.runtime.data_dir);
    Ok(
        Runtime::new(instances, max_memory, config.runtime.consume_fuel)?
            .with_code_cache(crate::runtime::CodeCache::new(data_dir.cache())),
    )
}

/// The components a start needs compiled: the config's and those the
/// stored state names (an earlier run's uploads), each once. Other files
/// in the data dir (left by an interrupted write) are not compiled.
fn startup_components(config: &Config) -> Vec<PathBuf> {
    let data_dir = DataDir::new(&config.runtime.data_dir);
    let mut components: Vec<PathBuf> = config
        .tenants
        .iter()
        .flat_map(|tenant| &tenant.handlers)
        .map(|handler| handler.component.clone())
        .collect();
    if let Ok(Some(state)) = data_dir.state_file().load() {
        let store = data_dir.components();
        components.extend(state.components().into_iter().map(|sha| store.path(sha)));
    }
    components.sort_unstable();
    components.dedup();
    components
}

/// A message on one log line: a loader's message can span lines.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_reason_is_one_line() {
        assert_eq!(one_line("a\n  b\r\nc  d"), "a b c d");
    }
}
