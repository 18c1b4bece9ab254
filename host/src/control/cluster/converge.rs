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
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often a replica reports (well within the report's lease).
const REPORT_EVERY: Duration = Duration::from_secs(3);

/// Applies the newest revision, then waits for the next commit; forever.
/// With the store down it retries with backoff and the state served stays
/// as it is; a revision that fails to apply here is retried (a component
/// may be pullable again later) without holding up the next one.
pub async fn follow(cluster: Arc<Cluster>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let read = match cluster.read_store().await {
            Ok(read) => read,
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        let revision = read.snapshot.revision;
        let behind = revision != *cluster.applied.borrow() || !cluster.has_state();
        if behind && let Err(error) = cluster.apply(read.snapshot).await {
            cluster.apply_failed(&error);
            tokio::time::sleep(MAX_BACKOFF).await;
            continue;
        }
        wait_for_commit(&cluster, read.store_revision + 1).await;
    }
}

/// Returns at the first commit at `from` or later, or when the watch
/// fails (then the caller reads again, which tells a commit from an
/// outage).
async fn wait_for_commit(cluster: &Cluster, from: i64) {
    let Ok(store) = cluster.store().await else {
        return;
    };
    let mut stream = match store.watch_commits(from).await {
        Ok(stream) => stream,
        Err(e) => {
            cluster.store_answered(Some(&e));
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(response)) if response.events().is_empty() && !response.canceled() => {}
            Ok(_) => return,
            Err(e) => {
                cluster.store_answered(Some(&e.into()));
                return;
            }
        }
    }
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
