//! The desired state in etcd: its keys, and the reads, commits, watches and
//! replica reports on them.
//!
//! Under the fleet's prefix `P`:
//! - `P/state/meta`: the state's own fields (`next_rank`); every commit
//!   writes it, so its mod revision is the revision of the last write, and
//!   comparing it is how a commit knows nobody wrote since its read;
//! - `P/state/tenants/NAME`: one tenant each (JSON), so a value stays far
//!   below etcd's request size limit however many tenants there are;
//! - `P/replicas/NODE`: each replica's report, under a lease that ends
//!   seconds after the replica does.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use serde::{Deserialize, Serialize};

use crate::control::shared::{ReplicaStatus, Snapshot};
use crate::control::state::{DesiredState, TenantState};

/// How long one request to etcd may take: a replica that cannot reach it
/// says so (and admin writes answer 503) within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A replica's report outlives it by at most this (seconds).
pub const REPORT_TTL_SECONDS: i64 = 10;

/// Why etcd did not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// etcd could not be reached, or refused the request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A value under the prefix is not what a replica wrote.
    #[error("etcd key {key}: {error}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong with its value.
        error: String,
    },
}

/// `P/state/meta`.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    next_rank: u64,
}

/// One fleet's keys in an etcd cluster.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A read of the state: the snapshot and the store's revision at the read
/// (watches start after it).
#[derive(Debug)]
pub struct Read {
    /// The state and the revision of its last write.
    pub snapshot: Snapshot,
    /// The store's revision when it was read (includes replica reports).
    pub store_revision: i64,
}

impl Store {
    /// A client for `endpoints`. Connections are made when first used, so
    /// this succeeds while etcd is down.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            // Finds a dead etcd behind a silent network while watching.
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
        })
    }

    fn state_prefix(&self) -> String {
        format!("{}/state/", self.prefix)
    }

    fn meta_key(&self) -> String {
        format!("{}/state/meta", self.prefix)
    }

    fn tenant_key(&self, name: &str) -> String {
        format!("{}/state/tenants/{name}", self.prefix)
    }

    fn replica_key(&self, node: &str) -> String {
        format!("{}/replicas/{node}", self.prefix)
    }

    /// The whole state, read at one revision.
    pub async fn read(&self) -> Result<Read, StoreError> {
        let mut kv = self.client.kv_client();
        let response = kv
            .get(self.state_prefix(), Some(GetOptions::new().with_prefix()))
            .await?;
        let store_revision = response.header().map_or(0, |h| h.revision());
        let tenants_prefix = format!("{}/state/tenants/", self.prefix);
        let meta_key = self.meta_key();
        let mut state = DesiredState::default();
        let mut revision = 0;
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let bad = |error: serde_json::Error| StoreError::Value {
                key: key.clone(),
                error: error.to_string(),
            };
            if key == meta_key {
                let meta: Meta = serde_json::from_slice(kv.value()).map_err(bad)?;
                state.next_rank = meta.next_rank;
                revision = u64::try_from(kv.mod_revision()).unwrap_or(0);
            } else if let Some(name) = key.strip_prefix(&tenants_prefix) {
                let tenant: TenantState = serde_json::from_slice(kv.value()).map_err(bad)?;
                state.tenants.insert(name.to_owned(), tenant);
            }
        }
        Ok(Read {
            snapshot: Snapshot { state, revision },
            store_revision,
        })
    }

    /// The state's revision (its meta key's last write; 0 before the
    /// first): one key read, for a replica checking it is not behind.
    pub async fn state_revision(&self) -> Result<u64, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(self.meta_key(), Some(GetOptions::new().with_keys_only()))
            .await?;
        Ok(response
            .kvs()
            .first()
            .map_or(0, |kv| u64::try_from(kv.mod_revision()).unwrap_or(0)))
    }

    /// Writes `next` in one transaction if the state's last write is
    /// still `read`'s: only the tenants that differ from `read`'s are
    /// written or deleted. `None` when another write came first.
    pub async fn commit(
        &self,
        read: &Snapshot,
        next: &DesiredState,
    ) -> Result<Option<u64>, StoreError> {
        let mut ops = Vec::new();
        for (name, tenant) in &next.tenants {
            if read.state.tenants.get(name) != Some(tenant) {
                let value = serde_json::to_vec(tenant).map_err(|e| StoreError::Value {
                    key: self.tenant_key(name),
                    error: e.to_string(),
                })?;
                ops.push(TxnOp::put(self.tenant_key(name), value, None));
            }
        }
        for name in read.state.tenants.keys() {
            if !next.tenants.contains_key(name) {
                ops.push(TxnOp::delete(self.tenant_key(name), None));
            }
        }
        let meta = serde_json::to_vec(&Meta {
            next_rank: next.next_rank,
        })
        .unwrap_or_default();
        ops.push(TxnOp::put(self.meta_key(), meta, None));
        // A key that does not exist has mod revision 0: the first write
        // to an empty store compares against that.
        let revision = i64::try_from(read.revision).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.meta_key(),
                CompareOp::Equal,
                revision,
            )])
            .and_then(ops);
        let response = self.client.kv_client().txn(txn).await?;
        if !response.succeeded() {
            return Ok(None);
        }
        let committed = response.header().map_or(0, |h| h.revision());
        Ok(Some(u64::try_from(committed).unwrap_or(0)))
    }

    /// Events on the state's meta key from `revision` on: one per commit.
    pub async fn watch_commits(&self, revision: i64) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new().with_start_revision(revision);
        Ok(self
            .client
            .watch_client()
            .watch(self.meta_key(), Some(options))
            .await?)
    }

    /// A lease that ends [`REPORT_TTL_SECONDS`] after its last keep-alive.
    pub async fn grant_lease(&self) -> Result<i64, StoreError> {
        let lease = self
            .client
            .lease_client()
            .grant(REPORT_TTL_SECONDS, None)
            .await?;
        Ok(lease.id())
    }

    /// Keeps `lease` alive one more period; false when it has ended.
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        let (mut keeper, mut responses) = self.client.lease_client().keep_alive(lease).await?;
        keeper.keep_alive().await?;
        let alive = responses.message().await?.is_some_and(|r| r.ttl() > 0);
        Ok(alive)
    }

    /// Writes this replica's report under `lease`.
    pub async fn report(&self, lease: i64, status: &ReplicaStatus) -> Result<(), StoreError> {
        let value = serde_json::to_vec(status).unwrap_or_default();
        self.client
            .kv_client()
            .put(
                self.replica_key(&status.node),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(())
    }

    /// Every replica's report, by node name.
    pub async fn replicas(&self) -> Result<Vec<ReplicaStatus>, StoreError> {
        let prefix = format!("{}/replicas/", self.prefix);
        let response = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut replicas = BTreeMap::new();
        for kv in response.kvs() {
            // A report that does not parse is skipped, not fatal: a newer
            // replica may write more.
            if let Ok(status) = serde_json::from_slice::<ReplicaStatus>(kv.value()) {
                replicas.insert(status.node.clone(), status);
            }
        }
        Ok(replicas.into_values().collect())
    }
}
