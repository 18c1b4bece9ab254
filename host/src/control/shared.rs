//! What the registry needs from a desired state that replicas share (the
//! cluster mode's etcd): read it with its revision, commit an edit only if
//! nobody committed since, and wait until this replica serves a revision.
//!
//! The registry owns the write path and knows nothing of etcd; `cluster/`
//! implements this and sits above the registry, which it feeds the
//! revisions it watches.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use super::state::DesiredState;

/// A boxed future: the store is used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The desired state as the store had it at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The state.
    pub state: DesiredState,
    /// The revision of the last write to it (0: never written).
    pub revision: u64,
}

/// Why the shared state could not be read or written. Nothing changed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SharedError {
    /// Another replica committed since the state was read: read again.
    #[error("another write was committed at the same time; try again")]
    Conflict,
    /// The store (etcd) did not answer.
    #[error("the cluster's store is unavailable: {0}")]
    StoreUnavailable(String),
    /// A component could not be pushed to (or pulled from) the OCI
    /// registry.
    #[error("the OCI registry is unavailable: {0}")]
    RegistryUnavailable(String),
}

/// A desired state shared by replicas.
pub trait SharedState: Send + Sync + std::fmt::Debug {
    /// The state as the store has it now.
    fn read(&self) -> BoxFuture<'_, Result<Snapshot, SharedError>>;

    /// Makes `next` the state, if the store is still at `read`'s revision
    /// (else [`SharedError::Conflict`]); first pushes the components its
    /// new versions need from `uploads` (bytes by sha256) to the registry
    /// and records where they are. Returns the new revision.
    fn commit<'a>(
        &'a self,
        read: &'a Snapshot,
        next: DesiredState,
        uploads: &'a HashMap<String, Vec<u8>>,
    ) -> BoxFuture<'a, Result<u64, SharedError>>;

    /// Waits, boundedly, until this replica serves `revision` or a later
    /// one.
    fn wait_applied(&self, revision: u64) -> BoxFuture<'_, ()>;

    /// Waits, boundedly, until this replica serves what the store holds
    /// now, so that an admin answer reflects a write another replica
    /// acknowledged a moment ago (a token it named, too). Returns at once
    /// when this replica is not behind or the store is down.
    fn catch_up(&self) -> BoxFuture<'_, ()>;

    /// The revision this replica serves.
    fn applied_revision(&self) -> u64;

    /// The cluster as this replica sees it, for `GET /admin/cluster`.
    fn status(&self) -> BoxFuture<'_, ClusterStatus>;
}

/// `GET /admin/cluster`: the store and every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The replica that answered.
    pub node: String,
    /// Whether it reached the store just now.
    pub store_up: bool,
    /// The revision of the last write to the desired state, as far as this
    /// replica knows.
    pub revision: u64,
    /// The revision this replica serves.
    pub applied_revision: u64,
    /// True when this replica may serve an old state: the store is
    /// unreachable, or it has not caught up yet.
    pub stale: bool,
    /// Why, when `stale` (one sentence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Every replica that reported in the last seconds (from the store;
    /// empty when it is unreachable), by node name.
    pub replicas: Vec<ReplicaStatus>,
}

/// One replica's report, kept under a leased key: it disappears seconds
/// after the replica stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Its node name.
    pub node: String,
    /// The revision it serves.
    pub applied_revision: u64,
    /// When it last reported, in seconds since the Unix epoch.
    pub last_seen: u64,
    /// Why it does not serve the latest revision, if it failed to apply
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
