//! Cluster mode end to end, on the real parts: etcd, an OCI registry
//! (docker-registry) and three `wasmgate serve` replicas, some behind
//! HAProxy. Writes on any replica reach all of them; concurrent writes are
//! not lost; a replica killed and restarted catches up; with etcd down the
//! replicas keep serving and writes answer 503, and everything converges
//! once it is back.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Etcd, Haproxy, Replica, TENANT_TOKEN, TOKEN, cluster_status};
use common::registry::Registry;
use reqwest::Method;
use serde_json::json;
use wasmgate_handler_components as components;

/// Each test's own key prefix, so tests never see each other's state.
fn prefix(test: &str) -> String {
    format!("/test-{test}-{}", std::process::id())
}

/// A cluster: etcd, a registry and `n` replicas, all ready.
struct Cluster {
    etcd: Etcd,
    registry: Registry,
    replicas: Vec<Replica>,
}

impl Cluster {
    async fn start(test: &str, n: usize) -> Self {
        let etcd = Etcd::start().await;
        let registry = Registry::start().await;
        let prefix = prefix(test);
        let replicas: Vec<Replica> = (1..=n)
            .map(|i| {
                Replica::start(
                    &format!("gw-{i}"),
                    &etcd.url(),
                    &prefix,
                    &registry.base_url(),
                    "",
                )
            })
            .collect();
        for replica in &replicas {
            replica.wait_ready().await;
        }
        Self {
            etcd,
            registry,
            replicas,
        }
    }

    /// [`Cluster::start`], then tenant `acme` with `hello` at `/hello`,
    /// written through the first replica and served by all.
    async fn with_hello(test: &str, n: usize) -> Self {
        let cluster = Self::start(test, n).await;
        put_tenant(&cluster.replicas[0], "acme").await;
        let (status, body) = deploy_hello(&cluster.replicas[0], "acme", "hello", "/hello").await;
        assert_eq!(status, 201, "{body}");
        let all: Vec<&Replica> = cluster.replicas.iter().collect();
        until_all_serve(&all, "/hello", "hello from wasmgate\n").await;
        cluster
    }
}

/// `method` on `admin` + `path` with the root token.
async fn admin(
    method: Method,
    admin: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    common::admin_json(method, &format!("{admin}{path}"), TOKEN, body).await
}

/// Creates tenant `t` on every host through `replica`.
async fn put_tenant(replica: &Replica, t: &str) {
    let (status, body) = admin(
        Method::PUT,
        &replica.admin,
        &format!("/admin/tenants/{t}"),
        Some(json!({"hosts": ["*"]})),
    )
    .await;
    assert!(
        status == 200 || status == 201,
        "PUT tenant: {status} {body}"
    );
}

/// Uploads the `hello` component as `t`/`name` at `route` through
/// `replica`: status and body.
async fn deploy_hello(replica: &Replica, t: &str, name: &str, route: &str) -> (u16, String) {
    let bytes = std::fs::read(components::require(components::HELLO)).expect("hello.wasm");
    common::put_component(&replica.admin, TOKEN, (t, name, route), bytes).await
}

/// Sets the greeting of `t`/`name` through `replica` (a new version of
/// the same component).
async fn set_greeting(replica: &Replica, t: &str, name: &str, greeting: &str) -> u16 {
    let (status, body) = admin(
        Method::PATCH,
        &replica.admin,
        &format!("/admin/tenants/{t}/handlers/{name}"),
        Some(json!({"config": {"greeting": greeting}})),
    )
    .await;
    assert!(status == 200 || status == 503, "PATCH: {status} {body}");
    status
}

/// Waits until `path` on every one of `replicas` answers `want`; returns
/// how long that took.
async fn until_all_serve(replicas: &[&Replica], path: &str, want: &str) -> Duration {
    let start = Instant::now();
    for replica in replicas {
        loop {
            let (status, body) = replica.get(path).await;
            if status == 200 && body == want {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} still answers {status} {body:?} for {path}, not {want:?}; its log:\n{}",
                replica.node,
                replica.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_through_one_replica_serves_on_all_and_the_cluster_lists_them() {
    let cluster = Cluster::start("deploy", 3).await;
    let all: Vec<&Replica> = cluster.replicas.iter().collect();
    let first = &cluster.replicas[0];
    put_tenant(first, "acme").await;
    let (status, body) = deploy_hello(first, "acme", "hello", "/hello").await;
    assert_eq!(status, 201, "{body}");
    let took = until_all_serve(&all, "/hello", "hello from wasmgate\n").await;
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // The answer said which revision it committed; all three apply it.
    let status = cluster_status(&first.admin).await;
    let revision = status["revision"].as_u64().expect("revision");
    assert!(revision > 0, "{status}");
    for replica in &cluster.replicas {
        common::wait_until("every replica reports the revision", || async {
            let status = cluster_status(&replica.admin).await;
            let replicas = status["replicas"].as_array().cloned().unwrap_or_default();
            replicas.len() == 3
                && replicas
                    .iter()
                    .all(|r| r["applied_revision"].as_u64() == Some(revision))
        })
        .await;
        let metrics = common::get_text(&common::client(), &format!("{}/metrics", replica.admin))
            .await
            .1;
        common::assert_metrics(
            &metrics,
            &[
                ("wasmgate_cluster_store_up", 1.0),
                ("wasmgate_cluster_revision", revision as f64),
            ],
        );
        common::promtool_accepts(&metrics);
    }
    let nodes: Vec<String> = cluster_status(&cluster.replicas[2].admin).await["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| r["node"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(nodes, ["gw-1", "gw-2", "gw-3"]);
    // `wasmgate list` says how many serve the latest revision.
    let list = std::process::Command::new(common::BIN)
        .args(["list", "--admin", &cluster.replicas[1].admin])
        .env("WASMGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("wasmgate list");
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(
        stdout.contains(&format!(
            "cluster: 3 of 3 replicas serve the latest revision ({revision})"
        )),
        "{stdout}{}",
        String::from_utf8_lossy(&list.stderr)
    );

    // The registry holds the component, by the reference the state names.
    let (_, handler) = admin(
        Method::GET,
        &cluster.replicas[1].admin,
        "/admin/tenants/acme/handlers/hello",
        None,
    )
    .await;
    let reference = handler["versions"][0]["oci"]
        .as_str()
        .unwrap_or_else(|| panic!("the version names its OCI reference: {handler}"))
        .to_owned();
    let (repository, digest) = reference
        .strip_prefix(&format!("{}/", cluster.registry.host_port()))
        .and_then(|rest| rest.split_once('@'))
        .unwrap_or_else(|| panic!("a reference into the test registry: {reference}"));
    let manifest = common::client()
        .get(format!(
            "{}/v2/{repository}/manifests/{digest}",
            cluster.registry.base_url()
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("manifest");
    assert_eq!(manifest.status(), 200);
    let manifest: serde_json::Value = manifest.json().await.expect("manifest JSON");
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");

    // A tenant token named through one replica works on every replica,
    // for that tenant only.
    let (status, body) = admin(
        Method::PUT,
        &cluster.replicas[2].admin,
        "/admin/tenants/acme",
        Some(json!({"hosts": ["*"], "token_env": "WASMGATE_CLUSTER_TENANT_TOKEN"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let bytes = std::fs::read(components::require(components::HELLO)).expect("hello.wasm");
    let (status, body) = common::put_component(
        &first.admin,
        TENANT_TOKEN,
        ("acme", "second", "/second"),
        bytes.clone(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    put_tenant(first, "other").await;
    let (status, _) =
        common::put_component(&first.admin, TENANT_TOKEN, ("other", "x", "/x"), bytes).await;
    assert_eq!(status, 403);

    // A write's answer carries the revision it reflects.
    let response = common::client()
        .get(format!("{}/admin/tenants", first.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("list");
    let header = response.headers()["x-wasmgate-revision"]
        .to_str()
        .expect("ascii")
        .parse::<u64>()
        .expect("a number");
    assert!(header >= revision);

    // A component deployed with its config through one replica serves
    // with it on all, in one version.
    let hello = std::fs::read(components::require(components::HELLO)).expect("hello.wasm");
    let response = common::client()
        .put(format!(
            "{}/admin/tenants/acme/handlers/greet?route=/greet",
            cluster.replicas[1].admin
        ))
        .bearer_auth(TOKEN)
        .header("content-type", "application/wasm")
        .header("x-wasmgate-config", r#"{"greeting": "hey"}"#)
        .body(hello)
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(
        (
            body["version"].as_u64(),
            body["config"]["greeting"].as_str()
        ),
        (Some(1), Some("hey"))
    );
    until_all_serve(&all, "/greet", "hey from wasmgate: hello\n").await;
    drop(cluster.etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_on_different_replicas_are_all_kept() {
    let cluster = Cluster::start("concurrent", 2).await;
    let (one, two) = (&cluster.replicas[0], &cluster.replicas[1]);
    put_tenant(one, "acme").await;
    // Eight handlers written at once, alternating replicas: each write
    // reads, edits and commits; a commit that lost the race starts again.
    let bytes = std::fs::read(components::require(components::HELLO)).expect("hello.wasm");
    let writes: Vec<_> = (0..8)
        .map(|i| {
            let admin = if i % 2 == 0 { &one.admin } else { &two.admin }.clone();
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let (name, route) = (format!("h{i}"), format!("/h{i}"));
                common::put_component(&admin, TOKEN, ("acme", &name, &route), bytes).await
            })
        })
        .collect();
    for write in writes {
        let (status, body) = write.await.expect("write task");
        assert_eq!(status, 201, "{body}");
    }
    for replica in [one, two] {
        for i in 0..8 {
            until_all_serve(&[replica], &format!("/h{i}"), "hello from wasmgate\n").await;
        }
    }

    // If-Match holds across replicas: an ETag read on one replica is stale
    // on the other once a write went through either.
    let response = common::client()
        .get(format!("{}/admin/tenants/acme/handlers/h0", one.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    let etag = response.headers()["etag"]
        .to_str()
        .expect("etag")
        .to_owned();
    assert_eq!(set_greeting(two, "acme", "h0", "first").await, 200);
    let stale = common::client()
        .patch(format!("{}/admin/tenants/acme/handlers/h0", one.admin))
        .bearer_auth(TOKEN)
        .header("if-match", etag)
        .json(&json!({"config": {"greeting": "second"}}))
        .send()
        .await
        .expect("patch");
    assert_eq!(stale.status(), 412);
    until_all_serve(&[one, two], "/h0", "first from wasmgate: hello\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_on_alternating_replicas_under_load_fail_no_request() {
    let cluster = Cluster::with_hello("swaps", 3).await;
    let all: Vec<&Replica> = cluster.replicas.iter().collect();
    let haproxy = Haproxy::start(&all).await;

    // Load through HAProxy while 20 swaps are written on alternating
    // replicas.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (url, stop) = (format!("{}/hello", haproxy.url), stop.clone());
            tokio::spawn(async move {
                let client = common::client();
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for swap in 1..=20 {
        let replica = all[swap % 3];
        assert_eq!(
            set_greeting(replica, "acme", "hello", &format!("v{swap}")).await,
            200
        );
    }
    until_all_serve(&all, "/hello", "v20 from wasmgate: hello\n").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for task in load {
        let (o, f) = task.await.expect("load task");
        ok += o;
        failed.extend(f);
    }
    assert!(ok > 100, "only {ok} requests went through");
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_a_deploy_serves_it_after_restart() {
    let mut cluster = Cluster::with_hello("restart", 3).await;
    cluster.replicas[2].kill();
    assert_eq!(
        set_greeting(&cluster.replicas[0], "acme", "hello", "new").await,
        200
    );
    cluster.replicas[2].restart();
    let start = Instant::now();
    cluster.replicas[2].wait_ready().await;
    until_all_serve(
        &[&cluster.replicas[2]],
        "/hello",
        "new from wasmgate: hello\n",
    )
    .await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_down_replicas_serve_writes_fail_and_all_converge_after() {
    let mut cluster = Cluster::with_hello("outage", 3).await;
    cluster.etcd.stop();
    // Writes change nothing and say why.
    let (status, body) = admin(
        Method::PATCH,
        &cluster.replicas[1].admin,
        "/admin/tenants/acme/handlers/hello",
        Some(json!({"config": {"greeting": "lost"}})),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "store_unavailable");
    // Every replica serves, says it may be stale, and exports it.
    for replica in &cluster.replicas {
        assert_eq!(
            replica.get("/hello").await,
            (200, "hello from wasmgate\n".into())
        );
        let status = cluster_status(&replica.admin).await;
        assert_eq!(status["store_up"], false, "{status}");
        assert_eq!(status["stale"], true, "{status}");
    }
    // A token no one has is refused while the store cannot be asked.
    let asked = Instant::now();
    let (status, _) = common::admin_json(
        Method::GET,
        &format!("{}/admin/tenants/acme/handlers", cluster.replicas[0].admin),
        "nobody's token",
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    // A replica restarted meanwhile serves the last state from its data dir.
    cluster.replicas[2].restart();
    cluster.replicas[2].wait_ready().await;
    assert_eq!(
        cluster.replicas[2].get("/hello").await,
        (200, "hello from wasmgate\n".into())
    );
    let metrics = common::get_text(
        &common::client(),
        &format!("{}/metrics", cluster.replicas[2].admin),
    )
    .await
    .1;
    common::assert_metrics(&metrics, &[("wasmgate_cluster_store_up", 0.0)]);

    // etcd back: writes work and every replica converges, no restart.
    cluster.etcd.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while set_greeting(&cluster.replicas[1], "acme", "hello", "back").await != 200 {
        assert!(Instant::now() < deadline, "writes did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all: Vec<&Replica> = cluster.replicas.iter().collect();
    until_all_serve(&all, "/hello", "back from wasmgate: hello\n").await;
}

/// `GET url` (on `behind`'s admin listener) with `token`, sent while
/// `behind` is stopped (SIGSTOP) and `write` runs through another replica:
/// on SIGCONT the request and the write's commit events wait for it
/// together, and the request, which needs no round trip, would be served
/// first from the old state unless the replica catches up with the store.
async fn ask_while_behind(
    behind: &Replica,
    url: String,
    token: &'static str,
    write: impl Future<Output = ()>,
) -> (u16, serde_json::Value) {
    behind.signal("STOP");
    write.await;
    let request =
        tokio::spawn(async move { common::admin_json(Method::GET, &url, token, None).await });
    // Time for the request to reach the stopped replica's socket.
    tokio::time::sleep(Duration::from_millis(100)).await;
    behind.signal("CONT");
    request.await.expect("request")
}

/// Every admin answer reflects the writes acknowledged before it was asked,
/// whichever replica took them: a tenant made through one replica is seen
/// on another that had no time to hear of it, and a tenant's token named
/// through one works on another at once, whether that one did not know the
/// token (round 0) or still took it for another tenant's (the token moves
/// on in each later round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_on_any_replica_reflect_writes_acknowledged_on_another() {
    let cluster = Cluster::start("token", 3).await;
    let (one, two) = (&cluster.replicas[0], &cluster.replicas[1]);
    let url = format!("{}/admin/tenants/early/handlers", two.admin);
    let (status, body) = ask_while_behind(two, url, TOKEN, async {
        put_tenant(one, "early").await;
    })
    .await;
    assert_eq!(status, 200, "{body}");

    let with_token = json!({"hosts": ["*"], "token_env": "WASMGATE_CLUSTER_TENANT_TOKEN"});
    for round in 0..3 {
        let named_on = &cluster.replicas[round % 3];
        let used_on = &cluster.replicas[(round + 1) % 3];
        let url = format!("{}/admin/tenants/t{round}/handlers", used_on.admin);
        let move_token = async {
            let tenant = format!("/admin/tenants/t{round}");
            let named = admin(
                Method::PUT,
                &named_on.admin,
                &tenant,
                Some(with_token.clone()),
            );
            let (status, body) = named.await;
            assert_eq!(status, 201, "{body}");
            if round > 0 {
                let previous = format!("/admin/tenants/t{}", round - 1);
                let unnamed = admin(
                    Method::PUT,
                    &named_on.admin,
                    &previous,
                    Some(json!({"hosts": ["*"]})),
                );
                let (status, body) = unnamed.await;
                assert_eq!(status, 200, "{body}");
            }
        };
        let (status, body) = ask_while_behind(used_on, url, TENANT_TOKEN, move_token).await;
        assert_eq!(status, 200, "round {round}, on {}: {body}", used_on.node);

        // Every replica knows whose the token is before it moves on.
        let revision = cluster_status(&named_on.admin).await["applied_revision"]
            .as_u64()
            .expect("applied_revision");
        for replica in &cluster.replicas {
            common::wait_until("every replica applies the write", || async {
                cluster_status(&replica.admin).await["applied_revision"].as_u64() >= Some(revision)
            })
            .await;
        }
    }

    // A flood of admin requests (with tokens no one has) costs the store
    // a few small reads, not one per request: a read that began after a
    // request arrived answers every request waiting for it.
    let etcd_metrics = format!("{}/metrics", cluster.etcd.url());
    let store_reads = || async {
        let (_, metrics) = common::get_text(&common::client(), &etcd_metrics).await;
        common::require_metric(&metrics, "etcd_mvcc_range_total")
    };
    let before = store_reads().await;
    let url = format!("{}/admin/tenants/t2/handlers", cluster.replicas[0].admin);
    let flood: Vec<_> = (0..100)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                common::admin_json(Method::GET, &url, "nobody's token", None).await
            })
        })
        .collect();
    for request in flood {
        let (status, body) = request.await.expect("request");
        assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    }
    let reads = store_reads().await - before;
    assert!(reads < 50.0, "{reads} store reads for 100 unknown tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_has_no_cluster() {
    let dir = common::scratch(&format!("single-node-{}", std::process::id()));
    let admin_section = "[admin]\ntoken_env = \"WASMGATE_CLUSTER_TEST_TOKEN\"\n";
    let mut command =
        common::serve_config(&dir, &common::config_text(&common::demo(admin_section)));
    command.env("WASMGATE_CLUSTER_TEST_TOKEN", TOKEN);
    let served = common::Served::spawn(&mut command);
    let (status, body) = admin(Method::GET, &served.admin, "/admin/cluster", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_clustered");
    assert!(!served.metrics().await.contains("wasmgate_cluster_"));
}
