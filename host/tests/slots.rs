//! A tenant's concurrency slot is free before its client can see the
//! response: a client that keeps exactly `max_concurrency` requests going,
//! each connection sending its next request as soon as it has the previous
//! answer, never meets 503 `overloaded`.
//!
//! The slot used to be let go only after the worker tore the guest's store
//! down, after the answer had left: a client fast enough sent its next
//! request in between and was refused (0.4-0.75% of requests under `wrk`).

mod common;

use std::time::{Duration, Instant};

use common::{TestGateway, demo};

/// The tenant's `max_concurrency`, and the number of connections.
const SLOTS: usize = 4;

/// How long each connection keeps sending.
const FOR: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_with_max_concurrency_connections_is_never_refused() {
    let gw = TestGateway::start(&demo(&format!("[limits]\nmax_concurrency = {SLOTS}"))).await;
    let url = format!("{}/hello", gw.url);
    let clients: Vec<_> = (0..SLOTS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                // A client of its own per task: one keep-alive connection
                // carrying one request at a time.
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("client");
                let (mut ok, mut refused) = (0_usize, Vec::new());
                let end = Instant::now() + FOR;
                while Instant::now() < end {
                    let response = client.get(&url).send().await.expect("request");
                    let status = response.status();
                    let body = response.text().await.expect("body");
                    if status == 200 {
                        ok += 1;
                    } else {
                        refused.push(format!("{status}: {}", body.trim_end()));
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, Vec::new());
    for client in clients {
        let (n, errors) = client.await.expect("client task");
        ok += n;
        refused.extend(errors);
    }
    let total = ok + refused.len();
    refused.truncate(5);
    assert_eq!(
        total - ok,
        0,
        "{} of {total} requests were not 200; the first: {refused:?}",
        total - ok
    );
    // Enough requests to have crossed the gap many times over.
    assert!(total >= 200, "only {total} requests in {FOR:?}");
    gw.shutdown().await;
}
