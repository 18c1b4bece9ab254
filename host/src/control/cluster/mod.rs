//! Cluster mode: replicas that share their desired state through etcd and
//! their components through an OCI registry, with no consensus or blob
//! store of their own.
//!
//! An admin write on any replica is made to the state read from etcd,
//! checked here, its new components pushed to the registry, and committed
//! in one etcd transaction that fails if anyone committed since the read
//! (then it starts again). Every replica, the writer included, watches the
//! commits and applies each revision as a single node applies an edit:
//! pulls the components it lacks by digest, compiles them, swaps the
//! routing table. The last applied state stays in the data dir, so a
//! replica serves it while etcd or the registry is down, and after a
//! restart in the meantime. [`etcd`] holds the keys; [`converge`] the loop.

pub mod converge;
pub mod etcd;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::sync::watch;

use self::etcd::{Store, StoreError};
use super::config::{ClusterConfig, Config};
use super::oci::{Oci, OciReference, RegistryBase};
use super::persist::{ComponentStore, DataDir};
use super::registry::Registry;
use super::shared::{BoxFuture, ClusterStatus, ReplicaStatus, SharedError, SharedState, Snapshot};
use super::state::{DesiredState, now_unix};
use crate::metrics::Metrics;

/// How long a write waits for its own replica to serve what it committed
/// before it answers anyway (the answer's revision header then says so).
const WAIT_APPLIED: Duration = Duration::from_secs(10);

/// How long a request waits in [`SharedState::catch_up`] for this replica
/// to apply the store's latest revision: as long as a replica takes to
/// catch up after the store is back.
const WAIT_CAUGHT_UP: Duration = converge::MAX_BACKOFF;

/// One replica's part in the cluster.
pub struct Cluster {
    /// This replica's name.
    node: String,
    /// Its settings.
    config: ClusterConfig,
    /// The etcd client, made when first needed.
    store: tokio::sync::OnceCell<Store>,
    /// Where uploads are pushed and components pulled.
    oci: Oci,
    /// The repository uploads are pushed to.
    registry_base: RegistryBase,
    /// Components this replica pushed, by sha256: a push is
    /// content-addressed (the same bytes make the same manifest), so one is
    /// never pushed twice; the lock also keeps this replica's concurrent
    /// writes from pushing the same blob at once.
    pushed: tokio::sync::Mutex<HashMap<String, OciReference>>,
    /// The handlers served here.
    registry: Arc<Registry>,
    /// Components stored here by sha256: what need not be pulled.
    components: ComponentStore,
    /// Where the applied revision is kept across restarts.
    revision_file: PathBuf,
    /// The largest component pulled (`admin.max_upload_bytes`).
    max_component_bytes: u64,
    /// The revision served here, for writers waiting on it.
    applied: watch::Sender<u64>,
    /// What `/admin/cluster`, the log and the metrics say.
    status: Mutex<Status>,
    /// The last store revision [`SharedState::catch_up`] read, and when
    /// that read began. Held across the read, so at most one runs at a
    /// time, and requests that waited for it use it: a flood of admin
    /// requests costs the store one small read at a time.
    caught_up: tokio::sync::Mutex<Option<(Instant, u64)>>,
    /// `wasmgate_cluster_revision`.
    revision_gauge: IntGauge,
    /// `wasmgate_cluster_store_up`.
    store_up_gauge: IntGauge,
}

/// What this replica knows of the store.
#[derive(Debug, Default)]
struct Status {
    /// The last etcd request succeeded.
    store_up: bool,
    /// The newest revision seen in the store.
    latest: u64,
    /// Why the latest revision is not applied here, if it failed.
    error: Option<String>,
    /// Whether this replica has applied a revision (this run or one
    /// before): until then it has nothing to serve and is not ready.
    has_state: bool,
    /// The store's being down was logged (once per outage).
    down_logged: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Why cluster mode could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("[cluster]: {0}")]
pub struct ClusterSetupError(String);

impl Cluster {
    /// This replica's part, for `config` (which has `[cluster]`), serving
    /// through `registry`: every later admin write goes to the cluster.
    /// Nothing is contacted until [`Cluster::spawn`].
    pub fn new(
        config: &Config,
        cluster: &ClusterConfig,
        registry: &Arc<Registry>,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, ClusterSetupError> {
        let registry_base = cluster
            .registry
            .parse::<RegistryBase>()
            .map_err(|e| ClusterSetupError(format!("registry: {e}")))?;
        let data_dir = DataDir::new(&config.runtime.data_dir);
        let revision_file = data_dir.cluster_revision();
        let applied = std::fs::read_to_string(&revision_file)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok());
        let (revision_gauge, store_up_gauge) = metrics.cluster_gauges();
        revision_gauge.set(i64::try_from(applied.unwrap_or(0)).unwrap_or(i64::MAX));
        let this = Arc::new(Self {
            node: cluster.node.clone(),
            config: cluster.clone(),
            store: tokio::sync::OnceCell::new(),
            oci: Oci::from_env(),
            registry_base,
            pushed: tokio::sync::Mutex::new(HashMap::new()),
            registry: Arc::clone(registry),
            components: data_dir.components(),
            revision_file,
            max_component_bytes: config.admin.max_upload_bytes as u64,
            applied: watch::Sender::new(applied.unwrap_or(0)),
            status: Mutex::new(Status {
                has_state: applied.is_some(),
                ..Status::default()
            }),
            caught_up: tokio::sync::Mutex::new(None),
            revision_gauge,
            store_up_gauge,
        });
        registry.share_through(Arc::clone(&this) as Arc<dyn SharedState>);
        Ok(this)
    }

    /// Starts following the store: applying each revision, and reporting
    /// this replica. Call once, on the gateway's runtime.
    pub fn spawn(self: &Arc<Self>) {
        tokio::spawn(converge::follow(Arc::clone(self)));
        tokio::spawn(converge::report(Arc::clone(self)));
    }

    /// Whether this replica has a state to serve: one applied this run or
    /// kept from an earlier one. `/readyz` waits for it.
    pub fn has_state(&self) -> bool {
        self.lock().has_state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The etcd client (made on first use; it connects lazily).
    async fn store(&self) -> Result<&Store, StoreError> {
        self.store
            .get_or_try_init(|| Store::connect(&self.config.etcd, &self.config.prefix))
            .await
    }

    /// Notes whether the store answered; logs each change once.
    fn store_answered(&self, error: Option<&StoreError>) {
        let mut status = self.lock();
        match error {
            None => {
                if !status.store_up {
                    tracing::info!(node = %self.node, "cluster store reachable");
                }
                status.store_up = true;
                status.down_logged = false;
                self.store_up_gauge.set(1);
            }
            Some(error) => {
                if !status.down_logged {
                    tracing::warn!(
                        node = %self.node,
                        revision = *self.applied.borrow(),
                        "cluster store unreachable ({error}); serving the last applied state, \
                         which may be stale; admin writes answer 503 until it is back"
                    );
                    status.down_logged = true;
                }
                status.store_up = false;
                self.store_up_gauge.set(0);
            }
        }
    }

    /// Reads the state from the store, noting whether it answered.
    async fn read_store(&self) -> Result<etcd::Read, StoreError> {
        let result = async { self.store().await?.read().await }.await;
        self.store_answered(result.as_ref().err());
        if let Ok(read) = &result {
            let mut status = self.lock();
            status.latest = status.latest.max(read.snapshot.revision);
        }
        result
    }

    /// Makes `snapshot` the state here: pulls the components it names that
    /// are not stored here, then applies it. On success the revision is
    /// served, kept in the data dir and reported.
    async fn apply(&self, snapshot: Snapshot) -> Result<(), String> {
        let mut uploads = HashMap::new();
        let versions = snapshot
            .state
            .tenants
            .values()
            .flat_map(|t| t.handlers.values())
            .flat_map(|h| &h.versions);
        for version in versions {
            let sha256 = &version.sha256;
            if uploads.contains_key(sha256) || self.components.path(sha256).is_file() {
                continue;
            }
            let reference = version.oci.as_ref().ok_or_else(|| {
                format!("component {sha256} is in no OCI registry and not stored here")
            })?;
            let bytes = self.pull(reference, sha256).await?;
            uploads.insert(sha256.clone(), bytes);
        }
        let revision = snapshot.revision;
        self.registry
            .apply_replicated(snapshot.state, uploads)
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) =
            crate::files::write_atomically(&self.revision_file, format!("{revision}\n").as_bytes())
        {
            tracing::warn!(
                "could not keep the applied revision in {}: {e}",
                self.revision_file.display()
            );
        }
        {
            let mut status = self.lock();
            status.error = None;
            status.has_state = true;
            status.latest = status.latest.max(revision);
        }
        self.revision_gauge
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
        self.applied.send_replace(revision);
        tracing::info!(node = %self.node, revision, "cluster revision applied");
        Ok(())
    }

    /// A component's bytes from the registry, checked against its sha256.
    async fn pull(&self, reference: &OciReference, sha256: &str) -> Result<Vec<u8>, String> {
        let bytes = self
            .oci
            .pull(reference, self.max_component_bytes)
            .await
            .map_err(|e| format!("pulling {reference}: {e}"))?;
        if crate::digest::sha256_hex(&bytes) != sha256 {
            return Err(format!(
                "pulling {reference}: its bytes do not have the sha256 {sha256} the state names"
            ));
        }
        Ok(bytes)
    }

    /// Notes that the newest revision failed to apply here.
    fn apply_failed(&self, error: &str) {
        tracing::error!(
            node = %self.node,
            "cluster revision not applied, the versions serving stay: {error}"
        );
        self.lock().error = Some(error.to_owned());
    }

    /// This replica's report.
    fn report_status(&self) -> ReplicaStatus {
        let status = self.lock();
        let applied = *self.applied.borrow();
        ReplicaStatus {
            node: self.node.clone(),
            applied_revision: applied,
            last_seen: now_unix(),
            error: status.error.clone().filter(|_| status.latest > applied),
        }
    }

    /// Pushes the components of `next`'s versions that no registry holds
    /// yet and records where they are.
    async fn push_new(
        &self,
        read: &DesiredState,
        next: &mut DesiredState,
        uploads: &HashMap<String, Vec<u8>>,
    ) -> Result<(), SharedError> {
        // Components some version already has in a registry.
        let mut known: HashMap<String, OciReference> = read
            .tenants
            .values()
            .chain(next.tenants.values())
            .flat_map(|t| t.handlers.values())
            .flat_map(|h| &h.versions)
            .filter_map(|v| Some((v.sha256.clone(), v.oci.clone()?)))
            .collect();
        let versions = next
            .tenants
            .values_mut()
            .flat_map(|t| t.handlers.values_mut())
            .flat_map(|h| h.versions.iter_mut())
            .filter(|v| v.oci.is_none());
        for version in versions {
            if let Some(reference) = known.get(&version.sha256) {
                version.oci = Some(reference.clone());
                continue;
            }
            let stored;
            let bytes = match uploads.get(&version.sha256) {
                Some(bytes) => bytes,
                None => {
                    stored = self.components.get(&version.sha256).map_err(|e| {
                        SharedError::RegistryUnavailable(format!(
                            "component {} is not stored here to push: {e}",
                            version.sha256
                        ))
                    })?;
                    &stored
                }
            };
            let reference = self.push(&version.sha256, bytes).await?;
            known.insert(version.sha256.clone(), reference.clone());
            version.oci = Some(reference);
        }
        Ok(())
    }
}

impl Cluster {
    /// Pushes one component (once per replica), retrying a failed push:
    /// two replicas pushing the same blob at once can make a registry
    /// refuse one of them, and pushing again then finds the blob there.
    async fn push(&self, sha256: &str, bytes: &[u8]) -> Result<OciReference, SharedError> {
        // Distinct components a replica remembers having pushed; past it the
        // memory starts over (a push of a present blob is cheap).
        const REMEMBERED: usize = 4096;
        let mut pushed = self.pushed.lock().await;
        if let Some(reference) = pushed.get(sha256) {
            return Ok(reference.clone());
        }
        let mut attempt = 0;
        let reference = loop {
            match self.oci.push(&self.registry_base, bytes).await {
                Ok(reference) => break reference,
                Err(e) if attempt == 2 => {
                    return Err(SharedError::RegistryUnavailable(e.to_string()));
                }
                Err(e) => {
                    tracing::debug!(sha256, "push failed, trying again: {e}");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
            }
        };
        if pushed.len() >= REMEMBERED {
            pushed.clear();
        }
        pushed.insert(sha256.to_owned(), reference.clone());
        Ok(reference)
    }

    /// The state's revision in the store, read at `asked` or later; `None`
    /// if the store did not answer.
    async fn store_revision_since(&self, asked: Instant) -> Option<u64> {
        let mut caught_up = self.caught_up.lock().await;
        if let Some((began, revision)) = *caught_up
            && began >= asked
        {
            return Some(revision);
        }
        let began = Instant::now();
        let read = async { self.store().await?.state_revision().await }.await;
        self.store_answered(read.as_ref().err());
        let revision = read.ok()?;
        *caught_up = Some((began, revision));
        Some(revision)
    }
}

impl SharedState for Cluster {
    fn read(&self) -> BoxFuture<'_, Result<Snapshot, SharedError>> {
        Box::pin(async move {
            self.read_store()
                .await
                .map(|read| read.snapshot)
                .map_err(|e| SharedError::StoreUnavailable(e.to_string()))
        })
    }

    fn commit<'a>(
        &'a self,
        read: &'a Snapshot,
        mut next: DesiredState,
        uploads: &'a HashMap<String, Vec<u8>>,
    ) -> BoxFuture<'a, Result<u64, SharedError>> {
        Box::pin(async move {
            self.push_new(&read.state, &mut next, uploads).await?;
            let result = async { self.store().await?.commit(read, &next).await }.await;
            self.store_answered(result.as_ref().err());
            match result {
                Ok(Some(revision)) => {
                    let mut status = self.lock();
                    status.latest = status.latest.max(revision);
                    Ok(revision)
                }
                Ok(None) => Err(SharedError::Conflict),
                Err(e) => Err(SharedError::StoreUnavailable(e.to_string())),
            }
        })
    }

    fn wait_applied(&self, revision: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut applied = self.applied.subscribe();
            let reached = applied.wait_for(|applied| *applied >= revision);
            if tokio::time::timeout(WAIT_APPLIED, reached).await.is_err() {
                tracing::warn!(
                    node = %self.node,
                    revision,
                    "a write was committed but this replica has not applied it yet"
                );
            }
        })
    }

    fn catch_up(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // With the store known down, there is nothing to catch up
            // with until the convergence loop reaches it again.
            if !self.lock().store_up {
                return;
            }
            let asked = Instant::now();
            let _ = tokio::time::timeout(WAIT_CAUGHT_UP, async {
                let Some(latest) = self.store_revision_since(asked).await else {
                    return;
                };
                let mut applied = self.applied.subscribe();
                let _ = applied.wait_for(|applied| *applied >= latest).await;
            })
            .await;
        })
    }

    fn applied_revision(&self) -> u64 {
        *self.applied.borrow()
    }

    fn status(&self) -> BoxFuture<'_, ClusterStatus> {
        Box::pin(async move {
            let replicas = async { self.store().await?.replicas().await }.await;
            self.store_answered(replicas.as_ref().err());
            // A fresh read of the revision, so `stale` is current.
            if replicas.is_ok() {
                let _ = self.read_store().await;
            }
            let status = self.lock();
            let applied = *self.applied.borrow();
            let message = if !status.store_up {
                Some(format!(
                    "the store is unreachable: this replica serves revision {applied}, which may \
                     be stale; admin writes answer 503 until it is back"
                ))
            } else if let Some(error) = status.error.as_ref().filter(|_| status.latest > applied) {
                Some(format!(
                    "revision {} is not applied here: {error}",
                    status.latest
                ))
            } else if status.latest > applied {
                Some(format!("catching up with revision {}", status.latest))
            } else {
                None
            };
            ClusterStatus {
                node: self.node.clone(),
                store_up: status.store_up,
                revision: status.latest.max(applied),
                applied_revision: applied,
                stale: message.is_some(),
                message,
                replicas: replicas.unwrap_or_default(),
            }
        })
    }
}
