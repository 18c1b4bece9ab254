//! The handler registry: the live routing table, and the one writer that
//! changes it.
//!
//! Requests read the routing table, an immutable snapshot behind an `Arc`:
//! a request takes the snapshot once, so a swap never changes the version a
//! request started with, and readers never wait for a writer. Every change
//! (the config file at start and on SIGHUP, the admin API, the file
//! watcher) goes through [`Registry::apply`]: it edits a copy of the
//! [`DesiredState`], loads what the edit needs (compiling off the async
//! threads), stores it durably, and only then swaps the table. An edit that
//! fails at any step changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::certs::{CertTable, Certificate, Certs, TlsFiles};
use super::compile::{Bounds, ChildCompiler, UploadCompiler};
use super::config::Config;
use super::persist::{ComponentStore, DataDir, PersistError, StateFile, TlsStore};
use super::shared::{SharedError, SharedState};
use super::state::{Component, DesiredState, StateError, TenantState, Version};
use super::table::{Route, RouteTable, StaticMount, Target, Tenant, metrics_label};
use crate::allowlist::AllowList;
use crate::digest::sha256_hex;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::router::{HostPattern, Router, TenantRoutes};
use crate::runtime::{
    Compiled, Flow, HandlerContext, HandlerVersion, LoadError, Outbound, Runtime,
};

/// Why an edit was not applied. Nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The edit does not fit the state (unknown name, route taken, ...).
    #[error(transparent)]
    State(#[from] StateError),
    /// A version did not load: not a component, does not fit the world, or
    /// cannot be instantiated under its tenant's limits.
    #[error("tenant {tenant:?} handler {handler:?}: {error}")]
    Load {
        /// The tenant.
        tenant: String,
        /// The handler.
        handler: String,
        /// Why (part of the message, not a separate cause, so error chains
        /// do not repeat it).
        error: LoadError,
    },
    /// The data dir could not be read or written.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The cluster's shared state could not be read or written.
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// An earlier write panicked and took the writer with it (a bug).
    #[error("the registry's writer was lost to an earlier failure; restart the gateway")]
    WriterLost,
}

/// A component named by the config file that could not be read or loaded.
#[derive(Debug, thiserror::Error)]
pub struct HandlerLoadError {
    /// The tenant.
    pub tenant: String,
    /// The handler.
    pub handler: String,
    /// The component file.
    pub path: String,
    /// Why it failed (part of the message, not a separate cause).
    pub error: LoadError,
}

impl std::fmt::Display for HandlerLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (tenant, handler) = (&self.tenant, &self.handler);
        match &self.error {
            // A read error names the file itself.
            LoadError::Read { .. } => {
                write!(f, "tenant {tenant:?} handler {handler:?}: {}", self.error)
            }
            error => write!(
                f,
                "tenant {tenant:?} handler {handler:?}: component {}: {error}",
                self.path
            ),
        }
    }
}

/// Why the config file could not be applied, at start or on a reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyConfigError {
    /// A configured component could not be read or loaded.
    #[error(transparent)]
    Handler(#[from] HandlerLoadError),
    /// The state could not be loaded, applied or stored.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A certificate was refused at start (each: the tenant, the file and
    /// why).
    #[error("{}", .0.join("; "))]
    Tls(Vec<String>),
}

/// Hands memory freed by compilation back to the OS. Compiling leaves
/// megabytes of freed but fragmented heap that glibc keeps; trimming once
/// after loading halves the idle footprint.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only releases free heap pages; it has no
    // preconditions and touches no memory we own.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Reuses small indices: queue slots of tenants and handlers that come and
/// go, so the fair queue's tables stay as small as the live set.
#[derive(Debug, Default)]
struct Slots {
    by_key: HashMap<String, usize>,
    free: Vec<usize>,
    next: usize,
}

impl Slots {
    fn get(&mut self, key: &str) -> usize {
        if let Some(&slot) = self.by_key.get(key) {
            return slot;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.by_key.insert(key.to_owned(), slot);
        slot
    }

    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .by_key
            .keys()
            .filter(|key| !keep(key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(slot) = self.by_key.remove(&key) {
                self.free.push(slot);
            }
        }
    }
}

/// A loaded version of a handler.
#[derive(Debug, Clone)]
struct Loaded {
    number: u64,
    version: Arc<HandlerVersion>,
}

/// What the writer owns: the state, what is loaded for it, and where it
/// is stored.
struct Writer {
    state: DesiredState,
    /// The active version of each handler, by (tenant, handler).
    loaded: HashMap<(String, String), Loaded>,
    /// Compiled code of the active versions, by sha256: a handler that
    /// runs bytes another already runs links them again, nothing more.
    compiled: HashMap<String, Compiled>,
    /// Tenants' runtime state, kept while their limits do not change.
    tenants: HashMap<String, Arc<Tenant>>,
    tenant_slots: Slots,
    handler_slots: HashMap<String, Slots>,
    /// The static mounts in the routing table, by (tenant, metrics label):
    /// the metrics of those that go away are removed.
    statics: std::collections::HashSet<(String, String)>,
    /// The config file's `[limits]`, which tenants override.
    defaults: Limits,
    /// `runtime.keep_versions`: versions each handler keeps.
    keep_versions: usize,
    /// Whether the state file holds `state` (false until the first commit
    /// has written it).
    state_saved: bool,
    runtime: Runtime,
    metrics: Arc<Metrics>,
    /// Where components and the state are stored; `None` keeps nothing
    /// (tests and benchmarks that need no data dir).
    storage: Option<Storage>,
    /// Compiles new components in a bounded child process (the `wasmgate`
    /// binary), or in-process when it has none.
    compiler: Arc<UploadCompiler>,
    /// The config file's `server.tls_default`.
    tls_default: Option<TlsFiles>,
    /// The certificates loaded for the current state.
    certs: Certs,
}

#[derive(Debug, Clone)]
struct Storage {
    components: ComponentStore,
    state: StateFile,
    tls: TlsStore,
}

/// What a commit publishes.
struct Commit {
    router: Router<Target>,
    certs: Certs,
    /// Certificates refused, one sentence each (tenant, file, why): the
    /// ones loaded before keep serving.
    refused: Vec<String>,
}

/// What the config file sets beside the state: the tenants' default
/// limits and the default certificate.
struct FileSettings {
    limits: Limits,
    tls_default: Option<TlsFiles>,
}

/// A version to load for an edit.
struct LoadJob {
    tenant: String,
    handler: String,
    version: Version,
    limits: Limits,
}

/// The routing table, and the writer that replaces it.
pub struct Registry {
    /// What requests read; replaced whole after each committed write.
    table: Arc<RouteTable>,
    /// What TLS handshakes read; replaced with the routing table.
    certs: Arc<CertTable>,
    /// Where certificates the admin API sends are stored (`None`: nowhere,
    /// so the API refuses them).
    tls_store: Option<TlsStore>,
    /// Compiles uploads before a write takes the writer.
    compiler: Arc<UploadCompiler>,
    /// The engine uploads are compiled for.
    runtime: Runtime,
    /// Held for the whole of a write. `None` only while a write runs on a
    /// blocking thread, or for good if that thread panicked (a bug: every
    /// later write then fails, and the routing table stays as it was).
    writer: tokio::sync::Mutex<Option<Writer>>,
    /// Each tenant's token env var, as the state applied last names them:
    /// the admin API authenticates tenant tokens by it.
    token_envs: std::sync::RwLock<Arc<BTreeMap<String, String>>>,
    /// In cluster mode, the store edits are committed to; this replica
    /// then applies them as every other does ([`Registry::apply_replicated`]).
    shared: std::sync::OnceLock<Arc<dyn SharedState>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// Loads the stored state (if `data_dir` has one) and the config file
    /// over it, and builds the routing table. Fails, naming the handler,
    /// if any configured component does not load. Call it off the async
    /// threads: it may compile.
    pub fn from_config(
        config: &Config,
        runtime: &Runtime,
        metrics: &Arc<Metrics>,
        child: Option<ChildCompiler>,
    ) -> Result<Self, ApplyConfigError> {
        let data_dir = DataDir::new(&config.runtime.data_dir);
        let storage = Storage {
            components: data_dir.components(),
            state: data_dir.state_file(),
            tls: data_dir.tls(),
        };
        let tls_store = Some(storage.tls.clone());
        let mut state = storage
            .state
            .load()
            .map_err(ApplyError::from)?
            .unwrap_or_default();
        let bounds = Bounds {
            timeout: std::time::Duration::from_millis(config.admin.compile_timeout_ms),
            memory_bytes: config.admin.compile_memory_bytes,
        };
        let compiler = Arc::new(UploadCompiler::new(child, bounds, data_dir.staging()));
        let mut writer = Writer {
            state: DesiredState::default(),
            keep_versions: config.runtime.keep_versions,
            state_saved: false,
            loaded: HashMap::new(),
            compiled: HashMap::new(),
            tenants: HashMap::new(),
            tenant_slots: Slots::default(),
            handler_slots: HashMap::new(),
            statics: std::collections::HashSet::new(),
            defaults: config.limits,
            runtime: runtime.clone(),
            metrics: Arc::clone(metrics),
            storage: Some(storage),
            compiler: Arc::clone(&compiler),
            tls_default: config.server.tls_default.clone(),
            certs: Certs::default(),
        };
        let components = read_config_components(config)?;
        if let Some(storage) = &writer.storage {
            for (sha256, bytes) in components.values() {
                storage
                    .components
                    .put(sha256, bytes)
                    .map_err(ApplyError::from)?;
            }
        }
        let found = found_components(&components);
        let not_applied = state
            .apply_config(config, &found)
            .map_err(ApplyError::from)?;
        for note in not_applied {
            tracing::warn!("config file: not applied: {note}");
        }
        state.keep_last_versions(writer.keep_versions);
        let uploads: HashMap<String, Vec<u8>> = components.into_values().collect();
        let commit = writer.commit(state, &uploads).map_err(|e| match e {
            ApplyError::Load {
                tenant,
                handler,
                error,
            } => {
                let path = config
                    .tenants
                    .iter()
                    .filter(|t| t.name == tenant)
                    .flat_map(|t| &t.handlers)
                    .find(|h| h.name == handler)
                    .map_or_else(
                        || "(stored)".to_owned(),
                        |h| h.component.display().to_string(),
                    );
                ApplyConfigError::Handler(HandlerLoadError {
                    tenant,
                    handler,
                    path,
                    error,
                })
            }
            other => ApplyConfigError::Apply(other),
        })?;
        if !commit.refused.is_empty() {
            return Err(ApplyConfigError::Tls(commit.refused));
        }
        release_freed_memory();
        let certs = CertTable::default();
        certs.publish(commit.certs);
        Ok(Self {
            compiler,
            runtime: runtime.clone(),
            table: Arc::new(RouteTable::new(commit.router)),
            certs: Arc::new(certs),
            tls_store,
            token_envs: std::sync::RwLock::new(Arc::new(token_envs(&writer.state))),
            writer: tokio::sync::Mutex::new(Some(writer)),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// The published certificates: the HTTPS listener reads them, and
    /// only this registry replaces them.
    pub fn certs(&self) -> &Arc<CertTable> {
        &self.certs
    }

    /// Where certificates sent through the admin API are stored, if
    /// anywhere. Store one only from within an edit ([`Registry::apply`]):
    /// every commit removes the stored files its state does not name.
    pub fn tls_store(&self) -> Option<&TlsStore> {
        self.tls_store.as_ref()
    }

    /// The published routing table: the request path reads it, and only
    /// this registry replaces it.
    pub fn table(&self) -> &Arc<RouteTable> {
        &self.table
    }

    /// Commits every later edit to `shared` (cluster mode) instead of
    /// applying it here; call it once, before the admin API serves.
    pub fn share_through(&self, shared: Arc<dyn SharedState>) {
        if self.shared.set(shared).is_err() {
            tracing::error!("the registry was given a shared state twice; the first one stays");
        }
    }

    /// The shared state edits are committed to, in cluster mode.
    pub fn shared(&self) -> Option<&Arc<dyn SharedState>> {
        self.shared.get()
    }

    /// Each tenant's token env var (tenants without one are absent).
    pub fn token_envs(&self) -> Arc<BTreeMap<String, String>> {
        Arc::clone(
            &self
                .token_envs
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// A copy of the desired state as it is now.
    pub async fn state(&self) -> DesiredState {
        self.writer
            .lock()
            .await
            .as_ref()
            .map(|w| w.state.clone())
            .unwrap_or_default()
    }

    /// Applies `edit` to the desired state, with `uploads` (component bytes
    /// by sha256, sent for `tenant`) available to it: loads the versions it
    /// activates, stores the uploads and the new state, then swaps the
    /// routing table. Writes are serialised; requests are not held up by
    /// them, and the uploads are compiled before the write takes its turn.
    ///
    /// In cluster mode the edit is made to the shared state instead and
    /// committed there (see `apply_shared`); it may then run
    /// more than once, which is why it is `Clone`.
    pub async fn apply<T: Send + 'static>(
        &self,
        tenant: &str,
        uploads: HashMap<String, Vec<u8>>,
        edit: impl FnOnce(&mut DesiredState, &Limits) -> Result<T, StateError> + Clone + Send + 'static,
    ) -> Result<T, ApplyError> {
        let uploads = self.compiler.prepare(tenant, &self.runtime, uploads).await;
        if let Some(shared) = self.shared.get() {
            return self.apply_shared(shared.as_ref(), &uploads, edit).await;
        }
        let (value, refused) = self.apply_with_defaults(uploads, None, edit).await?;
        for note in refused {
            tracing::warn!("certificate not applied: {note}");
        }
        Ok(value)
    }

    /// Applies a config file again (SIGHUP, `POST /admin/reload`): its
    /// tenants, handlers and default limits, with the API's handlers left
    /// as they are (see `state.rs`). Handlers whose version and limits did
    /// not change are not loaded again. Settings of the process (listeners,
    /// workers, data dir) need a restart.
    /// Returns what the file says that was not applied because the API
    /// set it last.
    pub async fn apply_config(&self, config: Config) -> Result<Vec<String>, ApplyConfigError> {
        let read = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || read_config_components(&config))
                .await
                .map_err(|_| ApplyError::WriterLost)??
        };
        let found = found_components(&read);
        let uploads: HashMap<String, Vec<u8>> = read.into_values().collect();
        let file = FileSettings {
            limits: config.limits,
            tls_default: config.server.tls_default.clone(),
        };
        // The config file's components compile in a turn of their own.
        let uploads = self.compiler.prepare("", &self.runtime, uploads).await;
        let (mut not_applied, refused) = self
            .apply_with_defaults(uploads, Some(file), move |state, _| {
                state.apply_config(&config, &found)
            })
            .await?;
        not_applied.extend(refused);
        Ok(not_applied)
    }

    /// Cluster mode's write: reads the shared state, makes the edit to it,
    /// checks here that the versions it activates load (so a bad component
    /// never reaches the store), and commits it if no other write was
    /// committed since; on such a conflict it starts again from a fresh
    /// read, so concurrent writes on different replicas are serialised and
    /// none is lost. Answers once this replica serves the result.
    async fn apply_shared<T: Send + 'static>(
        &self,
        shared: &dyn SharedState,
        uploads: &HashMap<String, Vec<u8>>,
        edit: impl FnOnce(&mut DesiredState, &Limits) -> Result<T, StateError> + Clone + Send + 'static,
    ) -> Result<T, ApplyError> {
        // Writers racing on every attempt is not a steady state: after this
        // many the caller hears 503 and tries again later.
        const ATTEMPTS: usize = 16;
        let (defaults, keep_versions) = {
            let slot = self.writer.lock().await;
            let writer = slot.as_ref().ok_or(ApplyError::WriterLost)?;
            (writer.defaults, writer.keep_versions)
        };
        for _ in 0..ATTEMPTS {
            let read = shared.read().await?;
            let mut next = read.state.clone();
            let value = (edit.clone())(&mut next, &defaults)?;
            next.keep_last_versions(keep_versions);
            if next == read.state {
                shared.wait_applied(read.revision).await;
                return Ok(value);
            }
            refuse_unshared_certificates(&read.state, &next)?;
            self.check(&next, uploads).await?;
            match shared.commit(&read, next, uploads).await {
                Ok(revision) => {
                    shared.wait_applied(revision).await;
                    return Ok(value);
                }
                Err(SharedError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SharedError::Conflict.into())
    }

    /// Loads the versions `next` activates, as a commit would, and throws
    /// them away: what proves an edit before it is shared.
    async fn check(
        &self,
        next: &DesiredState,
        uploads: &HashMap<String, Vec<u8>>,
    ) -> Result<(), ApplyError> {
        let mut slot = self.writer.lock().await;
        let writer = slot.take().ok_or(ApplyError::WriterLost)?;
        let (next, uploads) = (next.clone(), uploads.clone());
        let (writer, result) = tokio::task::spawn_blocking(move || {
            let result = writer.check(&next, &uploads);
            (writer, result)
        })
        .await
        .map_err(|_| ApplyError::WriterLost)?;
        *slot = Some(writer);
        result
    }

    /// Makes `next`, a revision of the shared state, the state here (cluster
    /// mode; `uploads` are the components it names that were not stored
    /// here yet). Like any edit it changes nothing if a version fails to
    /// load.
    pub async fn apply_replicated(
        &self,
        next: DesiredState,
        uploads: HashMap<String, Vec<u8>>,
    ) -> Result<(), ApplyError> {
        let uploads = self.compiler.prepare("", &self.runtime, uploads).await;
        let (_, refused) = self
            .apply_with_defaults(uploads, None, move |state, _| {
                // The config file's static mounts are this replica's own.
                let mut next = next;
                for (name, tenant) in &mut next.tenants {
                    if let Some(here) = state.tenants.get(name) {
                        tenant.statics = here.statics.clone();
                    }
                }
                *state = next;
                Ok(())
            })
            .await?;
        for note in refused {
            tracing::warn!("certificate not applied: {note}");
        }
        Ok(())
    }

    /// Applies `edit` (with the config file's settings `file` for a
    /// reload); returns its value and the certificates refused.
    async fn apply_with_defaults<T: Send + 'static>(
        &self,
        uploads: HashMap<String, Vec<u8>>,
        file: Option<FileSettings>,
        edit: impl FnOnce(&mut DesiredState, &Limits) -> Result<T, StateError> + Send + 'static,
    ) -> Result<(T, Vec<String>), ApplyError> {
        // Compiling, the slow part of a write, was done before the writer
        // is taken (`UploadCompiler::prepare`), so a large upload holds up
        // no other tenant's writes; the writer finds the code in the cache.
        let mut slot = self.writer.lock().await;
        let mut writer = slot.take().ok_or(ApplyError::WriterLost)?;
        let mut next = writer.state.clone();
        let new_defaults = file.as_ref().map_or(writer.defaults, |f| f.limits);
        let value = match edit(&mut next, &new_defaults) {
            Ok(value) => {
                next.keep_last_versions(writer.keep_versions);
                value
            }
            Err(e) => {
                *slot = Some(writer);
                return Err(e.into());
            }
        };
        // Loading compiles: off the async threads, with the writer moved
        // there and back (it is locked for the duration anyway).
        let (writer, result) = tokio::task::spawn_blocking(move || {
            let old_defaults = std::mem::replace(&mut writer.defaults, new_defaults);
            let old_tls_default = match file {
                Some(file) => std::mem::replace(&mut writer.tls_default, file.tls_default),
                None => writer.tls_default.clone(),
            };
            let result = writer.commit(next, &uploads);
            if result.is_err() {
                writer.defaults = old_defaults;
                writer.tls_default = old_tls_default;
            }
            (writer, result)
        })
        .await
        .map_err(|_| ApplyError::WriterLost)?;
        let envs = token_envs(&writer.state);
        *slot = Some(writer);
        let commit = result?;
        *self
            .token_envs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(envs);
        self.table.publish(commit.router);
        self.certs.publish(commit.certs);
        Ok((value, commit.refused))
    }
}

/// Each tenant's token env var in `state`.
fn token_envs(state: &DesiredState) -> BTreeMap<String, String> {
    state
        .tenants
        .iter()
        .filter_map(|(name, t)| Some((name.clone(), t.token_env.clone()?)))
        .collect()
}

/// `secs` since the Unix epoch.
fn unix_time(secs: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

/// The sha256 and size of each component read.
fn found_components(read: &BTreeMap<PathBuf, (String, Vec<u8>)>) -> BTreeMap<PathBuf, Component> {
    read.iter()
        .map(|(path, (sha256, bytes))| {
            let component = Component {
                sha256: sha256.clone(),
                size: bytes.len() as u64,
                oci: None,
            };
            (path.clone(), component)
        })
        .collect()
}

/// Reads every component file the config names: path -> (sha256, bytes).
fn read_config_components(
    config: &Config,
) -> Result<BTreeMap<PathBuf, (String, Vec<u8>)>, HandlerLoadError> {
    let mut components = BTreeMap::new();
    for tenant in &config.tenants {
        for handler in &tenant.handlers {
            if components.contains_key(&handler.component) {
                continue;
            }
            let bytes = std::fs::read(&handler.component).map_err(|error| HandlerLoadError {
                tenant: tenant.name.clone(),
                handler: handler.name.clone(),
                path: handler.component.display().to_string(),
                error: LoadError::Read {
                    path: handler.component.display().to_string(),
                    error,
                },
            })?;
            components.insert(handler.component.clone(), (sha256_hex(&bytes), bytes));
        }
    }
    Ok(components)
}

/// Certificates sent through the admin API are files in one replica's data
/// dir, which the others cannot read: refused in cluster mode rather than
/// served by one replica only.
fn refuse_unshared_certificates(
    read: &DesiredState,
    next: &DesiredState,
) -> Result<(), StateError> {
    for (name, tenant) in &next.tenants {
        let before = read.tenants.get(name).and_then(|t| t.tls.as_ref());
        if tenant.tls.is_some() && tenant.tls.as_ref() != before {
            return Err(StateError::Invalid(format!(
                "tenant {name:?}: tls: certificates are not shared between replicas yet; \
                 in cluster mode give the replicas server.tls_default instead"
            )));
        }
    }
    Ok(())
}

impl Writer {
    /// Loads the versions `next` activates without keeping them: the
    /// check a cluster-mode edit passes before it is committed.
    fn check(
        &self,
        next: &DesiredState,
        uploads: &HashMap<String, Vec<u8>>,
    ) -> Result<(), ApplyError> {
        let mut compiled = self.compiled.clone();
        for job in self.jobs(next) {
            self.load(&job, uploads, &mut compiled)
                .map_err(|error| ApplyError::Load {
                    tenant: job.tenant.clone(),
                    handler: job.handler.clone(),
                    error,
                })?;
        }
        Ok(())
    }

    /// Makes `next` the state: loads what it activates, stores the uploads
    /// and the state, and returns the routing table for it. On error the
    /// writer is as it was.
    fn commit(
        &mut self,
        next: DesiredState,
        uploads: &HashMap<String, Vec<u8>>,
    ) -> Result<Commit, ApplyError> {
        let jobs = self.jobs(&next);
        let mut compiled = self.compiled.clone();
        let mut loaded = Vec::with_capacity(jobs.len());
        for job in jobs {
            let version = self.load(&job, uploads, &mut compiled).map_err(|error| {
                self.metrics.handler_load(false);
                ApplyError::Load {
                    tenant: job.tenant.clone(),
                    handler: job.handler.clone(),
                    error,
                }
            })?;
            self.metrics.handler_load(true);
            tracing::info!(
                tenant = %job.tenant,
                handler = %job.handler,
                version = job.version.number,
                route = %job.version.route,
                sha256 = %job.version.sha256,
                from_cache = version.from_cache,
                "handler loaded"
            );
            loaded.push((job, version));
        }
        if let Some(storage) = &self.storage {
            for (sha256, bytes) in uploads {
                if next.components().contains(sha256.as_str()) {
                    storage.components.put(sha256, bytes)?;
                }
            }
            if next != self.state || !self.state_saved {
                // What is on disk is `state` once a commit wrote it; before
                // that (at start) it is unknown, so everything is written.
                let stored = self.state_saved.then_some(&self.state);
                // A write that fails half-way leaves the disk unknown.
                self.state_saved = false;
                storage.state.save(stored, &next)?;
                self.state_saved = true;
            }
            storage.components.retain(&next.components());
            storage.tls.retain(&next);
            if let Some(cache) = &self.runtime.cache {
                cache.retain(&next.components());
            }
        }

        // Durable: from here on nothing fails.
        for (job, version) in loaded {
            let log = &version.context.metrics.log;
            log.set_rate(job.limits.log_lines_per_second);
            let key = (job.tenant, job.handler);
            let old = self.loaded.get(&key);
            self.metrics.set_active_version(
                &key.0,
                &key.1,
                old.map(|o| (o.number, o.version.sha256.as_str())),
                (job.version.number, &job.version.sha256),
            );
            self.loaded.insert(
                key,
                Loaded {
                    number: job.version.number,
                    version: Arc::new(version),
                },
            );
        }
        self.state = next;
        self.forget_removed();
        let active: std::collections::BTreeSet<&str> = self
            .loaded
            .values()
            .map(|l| l.version.sha256.as_str())
            .collect();
        compiled.retain(|sha, _| active.contains(sha.as_str()));
        self.compiled = compiled;
        let refused = self.load_certs();
        Ok(Commit {
            router: self.router(),
            certs: self.certs.clone(),
            refused,
        })
    }

    /// Loads the certificates the state and `tls_default` name, those whose
    /// files did not change kept as they are. One that is refused leaves
    /// the one loaded before serving; returns a sentence for each.
    fn load_certs(&mut self) -> Vec<String> {
        let now = super::state::now_unix();
        let mut refused = Vec::new();
        let mut next = Certs::default();
        let wanted = self
            .state
            .tenants
            .iter()
            .filter_map(|(name, t)| Some((name.as_str(), t.tls.as_ref()?)))
            .chain(self.tls_default.as_ref().map(|files| ("", files)));
        for (tenant, files) in wanted {
            let loaded = match tenant {
                "" => self.certs.default.as_ref(),
                _ => self.certs.tenants.get(tenant),
            };
            let who = match tenant {
                "" => "server.tls_default".to_owned(),
                _ => format!("tenant {tenant:?}: tls"),
            };
            let cert = match Certificate::load(files, loaded, now) {
                Ok(cert) => {
                    if !loaded.is_some_and(|l| Arc::ptr_eq(l, &cert)) {
                        tracing::info!(
                            tenant,
                            names = ?cert.names,
                            not_after = %httpdate::fmt_http_date(unix_time(cert.not_after)),
                            "certificate loaded"
                        );
                    }
                    if let Some(left) = cert.expires_soon(now) {
                        tracing::warn!(
                            tenant,
                            file = %files.cert.display(),
                            "{who}: the certificate expires in {} days ({})",
                            left / 86_400,
                            httpdate::fmt_http_date(unix_time(cert.not_after))
                        );
                    }
                    cert
                }
                Err(e) => {
                    let keeps = if loaded.is_some() {
                        "the certificate loaded before keeps serving"
                    } else {
                        "no certificate serves its names until it is fixed"
                    };
                    refused.push(format!("{who}: {e}; {keeps}"));
                    match loaded {
                        Some(loaded) => Arc::clone(loaded),
                        None => continue,
                    }
                }
            };
            match tenant {
                "" => next.default = Some(cert),
                _ => {
                    next.tenants.insert(tenant.to_owned(), cert);
                }
            }
        }
        let gone = self
            .certs
            .tenants
            .keys()
            .filter(|t| !next.tenants.contains_key(*t))
            .map(String::as_str)
            .chain(next.default.is_none().then_some(""));
        for tenant in gone {
            self.metrics.set_certificate_expiry(tenant, None);
        }
        let present = next.tenants.iter().map(|(t, c)| (t.as_str(), c));
        for (tenant, cert) in present.chain(next.default.as_ref().map(|c| ("", c))) {
            self.metrics
                .set_certificate_expiry(tenant, Some(cert.not_after));
        }
        self.certs = next;
        refused
    }

    /// The versions `next` activates that are not loaded as they must be.
    fn jobs(&self, next: &DesiredState) -> Vec<LoadJob> {
        let mut jobs = Vec::new();
        for (tenant_name, tenant) in &next.tenants {
            let limits = tenant.limits.apply(self.defaults);
            for (handler_name, handler) in &tenant.handlers {
                let Some(version) = handler.active_version() else {
                    continue;
                };
                let current = self
                    .loaded
                    .get(&(tenant_name.clone(), handler_name.clone()));
                let up_to_date = current.is_some_and(|l| {
                    l.number == version.number
                        && l.version.limits == limits
                        && l.version.sha256 == version.sha256
                });
                if !up_to_date {
                    jobs.push(LoadJob {
                        tenant: tenant_name.clone(),
                        handler: handler_name.clone(),
                        version: version.clone(),
                        limits,
                    });
                }
            }
        }
        jobs
    }

    fn load(
        &self,
        job: &LoadJob,
        uploads: &HashMap<String, Vec<u8>>,
        compiled: &mut HashMap<String, Compiled>,
    ) -> Result<HandlerVersion, LoadError> {
        let sha256 = &job.version.sha256;
        let code = match compiled.get(sha256) {
            Some(code) => code.clone(),
            None => {
                let code = self.compile(sha256, uploads)?;
                compiled.insert(sha256.clone(), code.clone());
                code
            }
        };
        let context = Arc::new(HandlerContext {
            config: job.version.config.clone(),
            metrics: self.metrics.handler(&job.tenant, &job.handler),
        });
        HandlerVersion::link(&self.runtime, &code, job.limits, context)
    }

    /// Machine code for a component: from the code cache, filled by the
    /// bounded child compiler when there is one, else compiled here.
    fn compile(
        &self,
        sha256: &str,
        uploads: &HashMap<String, Vec<u8>>,
    ) -> Result<Compiled, LoadError> {
        // Usually cached already: `Registry::apply` compiles uploads before
        // it takes the writer. A stored component whose code was removed
        // from the cache is compiled here.
        let in_cache = |runtime: &Runtime| {
            runtime
                .cache
                .as_ref()
                .is_some_and(|cache| cache.path(&runtime.engine, sha256).is_file())
        };
        let stored = |storage: &Storage| storage.components.path(sha256).is_file();
        if in_cache(&self.runtime) {
            if let Some(storage) = &self.storage
                && !uploads.contains_key(sha256)
                && !stored(storage)
            {
                tracing::warn!(
                    sha256,
                    "component missing from the data dir: serving it from the code cache \
                     alone; deploy it again, or the next start after the cache is cleared fails"
                );
            }
        } else {
            let bytes = self.bytes(sha256, uploads)?;
            self.compiler
                .compiled(&self.runtime, sha256, &bytes)
                .map_err(LoadError::Child)?;
        }
        Compiled::get(&self.runtime, sha256, || self.bytes(sha256, uploads))
    }

    /// The bytes of a component: uploaded with this edit, or stored.
    fn bytes(
        &self,
        sha256: &str,
        uploads: &HashMap<String, Vec<u8>>,
    ) -> Result<Vec<u8>, LoadError> {
        if let Some(bytes) = uploads.get(sha256) {
            return Ok(bytes.clone());
        }
        let Some(storage) = &self.storage else {
            return Err(LoadError::Compile(format!(
                "component {sha256} is not stored"
            )));
        };
        storage.components.get(sha256).map_err(|e| match e {
            // A stored component that is gone: name the file, not a
            // compile problem.
            PersistError::Io { path, error } => LoadError::Read {
                path: path.display().to_string(),
                error,
            },
            other => LoadError::Compile(other.to_string()),
        })
    }

    /// Drops what belongs to handlers and tenants no longer in the state.
    fn forget_removed(&mut self) {
        let state = &self.state;
        let metrics = &self.metrics;
        self.loaded.retain(|(tenant, handler), loaded| {
            let kept = state
                .tenants
                .get(tenant)
                .is_some_and(|t| t.handlers.contains_key(handler));
            if !kept {
                let active = (loaded.number, loaded.version.sha256.as_str());
                metrics.remove_handler(tenant, handler, Some(active));
            }
            kept
        });
        self.tenants
            .retain(|name, _| state.tenants.contains_key(name));
        self.tenant_slots
            .retain(|name| state.tenants.contains_key(name));
        self.handler_slots
            .retain(|tenant, _| state.tenants.contains_key(tenant));
        for (tenant, slots) in &mut self.handler_slots {
            if let Some(t) = state.tenants.get(tenant) {
                slots.retain(|handler| t.handlers.contains_key(handler));
            }
        }
    }

    /// The routing table for the current state and loaded versions.
    fn router(&mut self) -> Router<Target> {
        let mut tenants: Vec<(&String, &TenantState)> = self.state.tenants.iter().collect();
        // The first tenant wins a tie between equal host patterns: config
        // tenants in file order, then the API's in order of creation.
        tenants.sort_by_key(|(name, t)| (t.rank, (*name).clone()));
        let mut table = Vec::with_capacity(tenants.len());
        let mut count = 0;
        let mut statics = std::collections::HashSet::new();
        for (name, tenant_state) in tenants {
            let limits = tenant_state.limits.apply(self.defaults);
            let cpu_weight = tenant_state.cpu_weight;
            let allowed = &tenant_state.allowed_outbound_hosts;
            let outbound = || {
                // Checked when the state was edited; a list that no longer
                // parses allows nothing.
                let list = AllowList::parse(allowed).unwrap_or_default();
                Arc::new(Outbound::new(
                    list,
                    limits.max_outbound_requests,
                    limits.max_outbound_connections,
                ))
            };
            let tenant = self
                .tenants
                .entry(name.clone())
                .and_modify(|t| {
                    if t.limits != limits {
                        *t = Arc::new(Tenant {
                            name: name.clone(),
                            limits,
                            concurrency: Arc::new(Semaphore::new(limits.max_concurrency)),
                            cpu_weight,
                            outbound: outbound(),
                            allowed_outbound_hosts: allowed.clone(),
                        });
                    } else if t.cpu_weight != cpu_weight || t.allowed_outbound_hosts != *allowed {
                        // In-flight requests keep their concurrency slots.
                        *t = Arc::new(Tenant {
                            name: name.clone(),
                            limits,
                            concurrency: Arc::clone(&t.concurrency),
                            cpu_weight,
                            outbound: outbound(),
                            allowed_outbound_hosts: allowed.clone(),
                        });
                    }
                })
                .or_insert_with(|| {
                    Arc::new(Tenant {
                        name: name.clone(),
                        limits,
                        concurrency: Arc::new(Semaphore::new(limits.max_concurrency)),
                        cpu_weight,
                        outbound: outbound(),
                        allowed_outbound_hosts: allowed.clone(),
                    })
                })
                .clone();
            // Patterns were checked when the state was edited; skipping a
            // bad one here can only narrow the routes.
            let hosts = tenant_state
                .hosts
                .iter()
                .filter_map(|h| HostPattern::parse(h).ok())
                .collect();
            let mut routes = TenantRoutes::new(name, hosts);
            let tenant_slot = self.tenant_slots.get(name);
            let slots = self.handler_slots.entry(name.clone()).or_default();
            for (handler, handler_state) in &tenant_state.handlers {
                let (Some(active), Some(loaded)) = (
                    handler_state.active_version(),
                    self.loaded.get(&(name.clone(), handler.clone())),
                ) else {
                    continue;
                };
                routes.add(
                    &active.route,
                    Target::Handler(Arc::new(Route {
                        handler: handler.clone(),
                        route: active.route.clone(),
                        route_header: http::HeaderValue::from_str(&active.route).ok(),
                        tenant: Arc::clone(&tenant),
                        flow: Flow {
                            tenant: tenant_slot,
                            handler: slots.get(handler),
                        },
                        number: loaded.number,
                        version: Arc::clone(&loaded.version),
                    })),
                );
                count += 1;
            }
            for (route, root) in tenant_state.statics.iter().chain(&tenant_state.api_statics) {
                let label = metrics_label(route);
                statics.insert((name.clone(), label.clone()));
                routes.add(
                    route,
                    Target::Static(Arc::new(StaticMount {
                        route: route.clone(),
                        root: root.clone(),
                        metrics: self.metrics.handler(name, &label),
                    })),
                );
            }
            table.push(routes);
        }
        self.metrics.handlers_loaded.set(count);
        for (tenant, label) in self.statics.difference(&statics) {
            self.metrics.remove_handler(tenant, label, None);
        }
        self.statics = statics;
        Router::new(table)
    }
}
