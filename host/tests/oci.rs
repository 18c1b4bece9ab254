//! Components in an OCI registry, against a real `docker-registry` and the
//! real `wasmgate serve`: a pushed component deploys by reference and
//! serves, again is a no-op, and every refusal (a digest the registry does
//! not have, an artifact that is not a wasm component, one larger than
//! `admin.max_upload_bytes`, a registry that is down) changes nothing;
//! `wasmgate push` then `wasmgate deploy oci://` does it from the command
//! line.

mod common;

use std::path::Path;

use common::registry::Registry;
use common::{BIN, Served, get_text, scratch, serve_config, tenant};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wasmgate::control::oci::{Oci, OciReference, RegistryBase};
use wasmgate_handler_components as components;

const ROOT: &str = "root-secret-for-oci-tests";

/// `wasmgate serve` with one tenant `demo` (hello at /hello), the root
/// token `ROOT`, the shared code cache, and `extra` config lines.
async fn serve(name: &str, extra: &str) -> Served {
    let dir = scratch(&format!("oci-{name}"));
    let config = common::config_text(&format!(
        "{extra}\n[runtime]\nworkers = 1\ndata_dir = {:?}\n{}",
        common::data_dir(),
        tenant("demo", "*", "", &["hello"])
    ));
    let mut command = serve_config(&dir, &config);
    command.env("WASMGATE_ADMIN_TOKEN", ROOT);
    tokio::task::spawn_blocking(move || Served::spawn(&mut command))
        .await
        .expect("startup lines")
}

fn component(path: &str) -> Vec<u8> {
    std::fs::read(components::require(path)).expect("read component")
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `http://127.0.0.1:PORT/REPOSITORY` of `registry`.
fn base(registry: &Registry, repository: &str) -> RegistryBase {
    format!("{}/{repository}", registry.base_url())
        .parse()
        .expect("a loopback registry base")
}

/// `PUT` of `body` as JSON to handler `name` of `demo` at `route`: the
/// status, `Retry-After` and the JSON answer.
async fn put_json(
    gw: &Served,
    name: &str,
    route: &str,
    body: Value,
) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .put(format!(
            "{}/admin/tenants/demo/handlers/{name}?route={route}",
            gw.admin
        ))
        .bearer_auth(ROOT)
        .json(&body)
        .send()
        .await
        .expect("admin answer");
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, retry, json)
}

/// Deploys `reference` as handler `name` of `demo` at `route`.
async fn deploy(gw: &Served, name: &str, route: &str, reference: &str) -> (u16, Value) {
    let (status, _, body) = put_json(gw, name, route, json!({ "oci": reference })).await;
    (status, body)
}

/// `demo`'s handlers as the admin API lists them.
async fn handlers(gw: &Served) -> Value {
    let (status, body) = common::admin_json(
        reqwest::Method::GET,
        &format!("{}/admin/tenants/demo/handlers", gw.admin),
        ROOT,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn assert_rejected(answer: &(u16, Value), status: u16, code: &str, words: &str) {
    let (got, body) = answer;
    assert_eq!(
        (*got, body["error"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_component_deploys_by_reference_and_again_is_a_no_op() {
    let registry = Registry::start().await;
    let gw = serve("deploy", "").await;
    let hello = component(components::HELLO);
    let oci = Oci::new(None);
    let reference = oci
        .push(&base(&registry, "wasmgate/hello"), &hello)
        .await
        .expect("pushed");
    assert_eq!(reference.registry(), registry.host_port());
    assert_eq!(reference.repository(), "wasmgate/hello");
    let again = oci
        .push(&base(&registry, "wasmgate/hello"), &hello)
        .await
        .expect("pushed again");
    assert_eq!(again, reference, "the same bytes make the same manifest");

    // The registry holds the CNCF wasm layout, tagged by the bytes' digest.
    let manifest_url =
        |name: &str| format!("{}/v2/wasmgate/hello/manifests/{name}", registry.base_url());
    let manifest: Value = reqwest::Client::new()
        .get(manifest_url(reference.digest()))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("manifest")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(
        manifest["layers"][0]["digest"],
        format!("sha256:{}", sha256(&hello))
    );
    let tagged = reqwest::Client::new()
        .head(manifest_url(&format!("sha256-{}", sha256(&hello))))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("tag");
    assert_eq!(
        tagged.headers()["docker-content-digest"],
        reference.digest()
    );

    let pulled = oci.pull(&reference, 1 << 20).await.expect("pulled");
    assert_eq!(pulled, hello);

    let (status, body) = deploy(&gw, "greet", "/greet", &format!("oci://{reference}")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["result"], "created");
    assert_eq!(body["sha256"], sha256(&hello));
    assert_eq!(
        body["oci"],
        reference.to_string(),
        "recorded without oci://"
    );
    assert_eq!(body["versions"][0]["oci"], reference.to_string());
    assert_eq!(
        get_text(&common::client(), &format!("{}/greet", gw.url)).await,
        (200, "hello from wasmgate\n".to_owned())
    );

    let (status, body) = deploy(&gw, "greet", "/greet", &reference.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["result"].as_str(), body["version"].as_u64()),
        (Some("unchanged"), Some(1))
    );
    let list = handlers(&gw).await;
    let greet = list["handlers"]
        .as_array()
        .and_then(|all| all.iter().find(|h| h["name"] == "greet"))
        .expect("listed");
    assert_eq!(greet["oci"], reference.to_string());
    let hello_handler = list["handlers"]
        .as_array()
        .and_then(|all| all.iter().find(|h| h["name"] == "hello"))
        .expect("listed");
    assert!(
        hello_handler.get("oci").is_none(),
        "only when set: {hello_handler}"
    );
}

/// Pushes a manifest of `config_type` with one layer of `layer_type`
/// holding `data` to `repository`, by hand: what `Oci::push` would never
/// make. Its reference.
async fn push_artifact(
    registry: &Registry,
    repository: &str,
    (config_type, layer_type): (&str, &str),
    data: &[u8],
) -> OciReference {
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let image: oci_client::Reference = format!("{}/{repository}:odd", registry.host_port())
        .parse()
        .expect("reference");
    let layer = ImageLayer::new(data.to_vec(), layer_type.to_owned(), None);
    let config = Config::new(b"{}".to_vec(), config_type.to_owned(), None);
    client
        .push(&image, &[layer], config, &RegistryAuth::Anonymous, None)
        .await
        .expect("pushed by hand");
    let digest = client
        .fetch_manifest_digest(&image, &RegistryAuth::Anonymous)
        .await
        .expect("digest");
    format!("{}/{repository}@{digest}", registry.host_port())
        .parse()
        .expect("reference")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_to_anything_but_a_wasm_component_change_nothing() {
    let registry = Registry::start().await;
    let gw = serve("refused", "").await;
    let before = handlers(&gw).await;
    let reference = Oci::new(None)
        .push(&base(&registry, "wasmgate"), &component(components::HELLO))
        .await
        .expect("pushed");
    let missing = format!(
        "{}/wasmgate@sha256:{}",
        registry.host_port(),
        sha256(b"no such manifest")
    );
    assert_rejected(
        &deploy(&gw, "greet", "/greet", &missing).await,
        400,
        "invalid_reference",
        "not found",
    );
    let other_repository = reference.to_string().replace("/wasmgate@", "/elsewhere@");
    assert_rejected(
        &deploy(&gw, "greet", "/greet", &other_repository).await,
        400,
        "invalid_reference",
        "elsewhere",
    );
    let tagged = format!("{}/wasmgate:latest", registry.host_port());
    assert_rejected(
        &deploy(&gw, "greet", "/greet", &tagged).await,
        400,
        "invalid_reference",
        "names no digest",
    );
    let (status, _, body) = put_json(&gw, "greet", "/greet", json!({ "url": "x" })).await;
    assert_rejected(&(status, body), 400, "invalid_request", "unknown field");

    let image = push_artifact(
        &registry,
        "image",
        (
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar",
        ),
        b"not wasm",
    )
    .await;
    assert_rejected(
        &deploy(&gw, "greet", "/greet", &image.to_string()).await,
        400,
        "invalid_reference",
        "is not a wasm component artifact",
    );
    // The right media types, but bytes no load would take: the checks of
    // an upload refuse it.
    let junk = push_artifact(
        &registry,
        "junk",
        ("application/vnd.wasm.config.v0+json", "application/wasm"),
        b"not wasm",
    )
    .await;
    assert_rejected(
        &deploy(&gw, "greet", "/greet", &junk.to_string()).await,
        400,
        "invalid_component",
        "not a WebAssembly file",
    );
    assert_eq!(handlers(&gw).await, before, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_over_max_upload_bytes_is_refused_from_its_manifest() {
    let registry = Registry::start().await;
    let gw = serve("too-large", "[admin]\nmax_upload_bytes = 50000").await;
    let before = handlers(&gw).await;
    let hello = component(components::HELLO);
    assert!(
        hello.len() > 50_000,
        "the test needs a component over the limit"
    );
    let reference = Oci::new(None)
        .push(&base(&registry, "wasmgate"), &hello)
        .await
        .expect("pushed");
    // Take the layer away: a download would now fail, so a 413 can only
    // come from the size the manifest declares.
    let blob = format!(
        "{}/v2/wasmgate/blobs/sha256:{}",
        registry.base_url(),
        sha256(&hello)
    );
    let client = reqwest::Client::new();
    let deleted = client.delete(&blob).send().await.expect("delete");
    assert_eq!(deleted.status(), 202);
    assert_eq!(client.get(&blob).send().await.expect("get").status(), 404);
    assert_rejected(
        &deploy(&gw, "greet", "/greet", &reference.to_string()).await,
        413,
        "too_large",
        &format!(
            "the component is {} bytes, more than the 50000",
            hello.len()
        ),
    );
    assert_eq!(handlers(&gw).await, before, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_is_503_and_changes_nothing() {
    let mut registry = Registry::start().await;
    let gw = serve("down", "").await;
    let before = handlers(&gw).await;
    let reference = Oci::new(None)
        .push(&base(&registry, "wasmgate"), &component(components::HELLO))
        .await
        .expect("pushed");
    registry.stop();
    let (status, retry, body) = put_json(
        &gw,
        "greet",
        "/greet",
        json!({ "oci": reference.to_string() }),
    )
    .await;
    assert_rejected(
        &(status, body),
        503,
        "registry_unavailable",
        &registry.host_port(),
    );
    assert_eq!(retry.as_deref(), Some("10"));
    assert_eq!(handlers(&gw).await, before, "nothing changed");
}

/// Runs `wasmgate ARGS` with the root token: exit success, stdout, stderr.
async fn wasmgate(args: Vec<String>) -> (bool, String, String) {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .env("WASMGATE_ADMIN_TOKEN", ROOT)
            .env_remove("WASMGATE_REGISTRY_USERNAME")
            .env_remove("RUST_LOG")
            .output()
            .expect("run wasmgate")
    })
    .await
    .expect("wasmgate ran");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pushes_then_deploys_by_reference() {
    let registry = Registry::start().await;
    let gw = serve("cli", "").await;
    let file = components::require(components::HELLO).to_owned();
    let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let registry_url = format!("{}/ci/hello", registry.base_url());
    let (ok, stdout, stderr) = wasmgate(args(&["push", &file, "--registry", &registry_url])).await;
    assert!(ok, "{stderr}");
    let printed = stdout.trim();
    let reference: OciReference = printed
        .strip_prefix("oci://")
        .unwrap_or_else(|| panic!("prints oci://REFERENCE: {printed:?}"))
        .parse()
        .expect("a reference");
    assert_eq!(reference.repository(), "ci/hello");

    let deploy = args(&[
        "deploy", printed, "--tenant", "demo", "--name", "greet", "--route", "/greet", "--admin",
        &gw.admin,
    ]);
    let (ok, stdout, stderr) = wasmgate(deploy.clone()).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("deployed demo/greet version 1")
            && stdout.trim_end().ends_with(": created"),
        "{stdout}"
    );
    assert_eq!(
        get_text(&common::client(), &format!("{}/greet", gw.url)).await,
        (200, "hello from wasmgate\n".to_owned())
    );
    let (ok, stdout, _) = wasmgate(deploy.clone()).await;
    assert!(ok && stdout.trim_end().ends_with(": unchanged"), "{stdout}");
    // The body carries the config: one new version with it.
    let mut with_config = deploy;
    with_config.extend(args(&["--config", "greeting=hey"]));
    let (ok, stdout, stderr) = wasmgate(with_config).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("deployed demo/greet version 2")
            && stdout
                .trim_end()
                .ends_with(", config greeting=hey: replaced"),
        "{stdout}"
    );
    assert_eq!(
        get_text(&common::client(), &format!("{}/greet", gw.url)).await,
        (200, "hey from wasmgate: hello\n".to_owned())
    );
    let (ok, stdout, stderr) =
        wasmgate(args(&["list", "--tenant", "demo", "--admin", &gw.admin])).await;
    assert!(ok, "{stderr}");
    let header = stdout.lines().next().unwrap_or_default();
    assert!(header.ends_with("OCI"), "{stdout}");
    assert!(stdout.contains(&reference.to_string()), "{stdout}");

    // Plain http leaves this machine for no registry.
    let (ok, _, stderr) = wasmgate(args(&[
        "push",
        &file,
        "--registry",
        "http://registry.example.com/ci",
    ]))
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("plain http is only for a registry on this machine"),
        "{stderr}"
    );
    let missing = Path::new(&file).with_extension("missing");
    let (ok, _, stderr) = wasmgate(args(&[
        "push",
        &missing.to_string_lossy(),
        "--registry",
        &registry_url,
    ]))
    .await;
    assert!(!ok);
    assert!(stderr.contains("reading"), "{stderr}");
}
