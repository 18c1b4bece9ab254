//! The loops that keep a replica in step with the cluster: [`follow`]
//! applies every committed revision, [`report`] keeps this replica's
//! report in the store.

use std::sync::Arc;
use std::time::Duration;

use super::Cluster;

/// The first wait after the store failed; it doubles up to
/// [`MAX_BACKOFF`] while the store stays down.
const MIN_BACKOFF: Duration = Duration::from_millis(250);

/// The longest wait between two attempts to reach the store: a replica
/// catches up at most this long after etcd is back.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often a replica reports (well within the report's lease).
const REPORT_EVERY: Duration = Duration::from_secs(3);

/// Applies the newest revision, then each commit the watch reports;
/// forever. One watch stays open across applies: a watch opened at a
/// revision already past makes etcd catch it up in a background pass
/// (about every 100 ms), which a fresh watch per commit paid when writes
/// came close together. With the store down it retries with backoff and
/// the state served stays as it is; a revision that fails to apply here
/// is retried (a component may be pullable again later).
pub async fn follow(cluster: Arc<Cluster>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(read) = catch_up(&cluster).await else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        backoff = MIN_BACKOFF;
        let Ok(store) = cluster.store().await else {
            continue;
        };
        let mut stream = match store.watch_commits(read.store_revision + 1).await {
            Ok(stream) => stream,
            Err(e) => {
                cluster.store_answered(Some(&e));
                continue;
            }
        };
        let mut seen = read.snapshot.revision;
        loop {
            match stream.message().await {
                Ok(Some(response)) if !response.canceled() => {
                    let newest = response
                        .events()
                        .iter()
                        .filter_map(|event| event.kv())
                        .map(|kv| u64::try_from(kv.mod_revision()).unwrap_or(0))
                        .max();
                    // A commit this replica has read already (the read
                    // after an earlier event saw it) needs no new read.
                    if newest.is_some_and(|revision| revision > seen) {
                        match catch_up(&cluster).await {
                            Some(read) => seen = read.snapshot.revision,
                            None => break,
                        }
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    cluster.store_answered(Some(&e.into()));
                    break;
                }
            }
        }
    }
}

/// Reads the state and applies it if this replica is behind. `None` when
/// the store did not answer, or the revision did not apply (after a pause,
/// so a failing revision is not retried in a tight loop).
async fn catch_up(cluster: &Cluster) -> Option<super::etcd::Read> {
    let read = cluster.read_store().await.ok()?;
    let behind = read.snapshot.revision != *cluster.applied.borrow() || !cluster.has_state();
    if behind && let Err(error) = cluster.apply(read.snapshot.clone()).await {
        cluster.apply_failed(&error);
        tokio::time::sleep(MAX_BACKOFF).await;
        return None;
    }
    Some(read)
}

/// Keeps this replica's report under a lease in the store, refreshed every
/// `REPORT_EVERY` (3 s) and right after each applied revision.
pub async fn report(cluster: Arc<Cluster>) {
    let mut applied = cluster.applied.subscribe();
    let mut lease = None;
    loop {
        if let Ok(store) = cluster.store().await {
            let result = async {
                let id = match lease {
                    Some(id) if store.keep_alive(id).await? => id,
                    _ => store.grant_lease().await?,
                };
                lease = Some(id);
                store.report(id, &cluster.report_status()).await
            }
            .await;
            if let Err(e) = result {
                lease = None;
                cluster.store_answered(Some(&e));
            }
        }
        let _ = tokio::time::timeout(REPORT_EVERY, applied.changed()).await;
    }
}
