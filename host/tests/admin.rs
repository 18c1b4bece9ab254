//! The admin write API against the real `wasmgate serve` process (tokens
//! come from its environment): auth, deploy, replace, patch, rollback,
//! delete, tenants, rejections that change nothing, persistence across
//! `kill -9`, SIGHUP, and swaps under load that fail no request.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Served, get_text, handler, scratch, serve_command, tenant, wait_until};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wasmgate_handler_components as components;

const ROOT: &str = "root-secret-for-tests";
const DEMO_TOKEN: &str = "demo-secret-for-tests";
const WASM: &str = "application/wasm";
/// The handler the lifecycle test deploys.
const GREET: &str = "/admin/tenants/demo/handlers/greet";

/// `demo` on every host with hello at /hello and its own token; `tiny` on
/// `tiny.test`, whose memory limit no Rust component fits.
fn config_text(extra: &str) -> String {
    common::config_text(&format!(
        "[runtime]\nworkers = 2\n{extra}\n{}config = {{ greeting = \"howdy\" }}\n{}",
        tenant(
            "demo",
            "*",
            "token_env = \"DEMO_TOKEN_FOR_TESTS\"",
            &["hello"]
        ),
        tenant(
            "tiny",
            "tiny.test",
            "limits = { memory_bytes = 65536 }",
            &[]
        ),
    ))
}

/// A fresh folder `admin-NAME` with a `wasmgate.toml` of
/// [`config_text`]`(extra)`; the config's path.
fn write_config(name: &str, extra: &str) -> PathBuf {
    let config = scratch(&format!("admin-{name}")).join("wasmgate.toml");
    std::fs::write(&config, config_text(extra)).expect("write config");
    config
}

fn component(path: &str) -> Vec<u8> {
    std::fs::read(components::require(path)).expect("read component")
}

/// A running `wasmgate serve`, killed on drop.
struct Gateway {
    served: Served,
    url: String,
    admin: String,
    client: reqwest::Client,
    config: PathBuf,
}

impl Gateway {
    /// Starts `wasmgate serve` on `config` with the root token set when
    /// `root` is true, and waits until it says it is ready.
    async fn start(config: &Path, root: bool) -> Self {
        let root: &[(&str, &str)] = if root {
            &[("WASMGATE_ADMIN_TOKEN", ROOT)]
        } else {
            &[]
        };
        Self::start_with(config, root).await
    }

    /// [`Gateway::start`] with the environment variables `env` set.
    async fn start_with(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = serve_command();
        command
            .arg("--config")
            .arg(config)
            .env("DEMO_TOKEN_FOR_TESTS", DEMO_TOKEN)
            .env_remove("WASMGATE_ADMIN_TOKEN")
            .envs(env.iter().copied());
        let served = tokio::task::spawn_blocking(move || Served::spawn(&mut command))
            .await
            .expect("startup lines");
        let gateway = Self {
            url: served.url.clone(),
            admin: served.admin.clone(),
            served,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            config: config.to_owned(),
        };
        let readyz = get_text(&gateway.client, &format!("{}/readyz", gateway.admin)).await;
        assert_eq!(readyz.0, 200);
        gateway
    }

    async fn get(&self, path: &str) -> (u16, String) {
        get_text(&self.client, &format!("{}{path}", self.url)).await
    }

    /// An admin request with `token` (none: no Authorization header).
    fn admin(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.admin));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// An admin request with the root token.
    fn root(&self, method: Method, path: &str) -> RequestBuilder {
        self.admin(method, path, Some(ROOT))
    }

    /// A PUT of `body` as `content_type` to `path` with `token`.
    fn upload(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> RequestBuilder {
        self.admin(Method::PUT, path, token)
            .header("content-type", content_type)
            .body(body)
    }

    async fn deploy(&self, tenant: &str, name: &str, route: &str, wasm: Vec<u8>) -> (u16, Value) {
        let path = format!("/admin/tenants/{tenant}/handlers/{name}?route={route}");
        send(self.upload(&path, Some(ROOT), WASM, wasm)).await
    }

    /// A PUT of `size` zero bytes to `path` with the root token, on a raw
    /// connection that sends the body while it reads the answer, which may
    /// come first (then the connection closes under the upload): all that
    /// came back.
    async fn upload_racing(&self, path: &str, size: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = common::host_port(&self.admin);
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let (mut reading, mut writing) = stream.into_split();
        let head = format!(
            "PUT {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ROOT}\r\n\
             content-type: {WASM}\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n"
        );
        let upload = tokio::spawn(async move {
            let _ = writing.write_all(head.as_bytes()).await;
            let _ = writing.write_all(&vec![0; size]).await;
            writing
        });
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let read = async {
            // A reset after the answer ends it too.
            while let Ok(n @ 1..) = reading.read(&mut buf).await {
                answer.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the admin API answers");
        upload.abort();
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// `GET path` with the root token: the ETag and the JSON.
    async fn read(&self, path: &str) -> (String, Value) {
        let response = self.root(Method::GET, path).send().await.expect("GET");
        let etag = response.headers()["etag"]
            .to_str()
            .expect("ascii")
            .to_owned();
        (etag, send_response(response).await.1)
    }

    /// `DELETE path` with `token`: the status.
    async fn delete(&self, path: &str, token: &str) -> u16 {
        send(self.admin(Method::DELETE, path, Some(token))).await.0
    }

    async fn metrics(&self) -> String {
        get_text(&self.client, &format!("{}/metrics", self.admin))
            .await
            .1
    }
}

/// Sends an admin request: its status and JSON body (a string if the body
/// is not JSON).
async fn send(request: RequestBuilder) -> (u16, Value) {
    send_response(request.send().await.expect("an admin answer")).await
}

async fn send_response(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Asserts an admin answer's status and error code.
fn assert_rejected(answer: &(u16, Value), status: u16, code: &str) {
    let (got, body) = answer;
    assert_eq!(
        (*got, body["error"].as_str()),
        (status, Some(code)),
        "{body}"
    );
}

/// Asserts an admin answer's status and the handler version it reports.
fn assert_version(answer: &(u16, Value), status: u16, version: u64) {
    let (got, body) = answer;
    assert_eq!(
        (*got, &body["version"]),
        (status, &Value::from(version)),
        "{body}"
    );
}

/// Asserts that an admin answer's message contains `part`.
fn assert_message(body: &Value, part: &str) {
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(part), "{part:?} not in {body}");
}

#[tokio::test]
async fn writes_need_the_right_token() {
    let config = write_config("auth", "");
    let hello = component(components::HELLO);

    // No root token configured: everything under /admin/ is off, and the
    // answer says how to turn it on.
    let gw = Gateway::start(&config, false).await;
    let answer = send(gw.root(Method::GET, "/admin/tenants")).await;
    assert_rejected(&answer, 403, "admin_disabled");
    assert_message(&answer.1, "WASMGATE_ADMIN_TOKEN");
    drop(gw);

    let gw = Gateway::start(&config, true).await;
    let put = |token: Option<&str>, tenant: &str| {
        let path = format!("/admin/tenants/{tenant}/handlers/greet?route=/greet");
        send(gw.upload(&path, token, WASM, hello.clone()))
    };
    assert_rejected(&put(None, "demo").await, 401, "unauthorized");
    assert_rejected(&put(Some("not-the-token"), "demo").await, 403, "forbidden");
    let (status, _) = put(Some(DEMO_TOKEN), "tiny").await;
    assert_eq!(status, 403, "a tenant token writes its own tenant only");
    assert_eq!(put(Some(DEMO_TOKEN), "demo").await.0, 201);
    // Reads need a token too; tenants as a whole are the root's.
    for (path, token, status) in [
        ("/admin/tenants", None, 401),
        ("/admin/tenants", Some(DEMO_TOKEN), 403),
        ("/admin/tenants/demo/handlers", Some(DEMO_TOKEN), 200),
    ] {
        let (got, body) = send(gw.admin(Method::GET, path, token)).await;
        assert_eq!(got, status, "{path} with {token:?}: {body}");
    }
    // The health endpoints need none.
    assert_eq!(gw.get("/hello").await.0, 200);
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .contains(r#"wasmgate_admin_requests_total{operation="put_handler",status="401"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_handler_is_deployed_patched_replaced_rolled_back_and_deleted_at_runtime() {
    let gw = Gateway::start(&write_config("lifecycle", ""), true).await;
    let (hello, echo) = (component(components::HELLO), component(components::ECHO));

    assert_eq!(gw.get("/greet").await.0, 404);
    let (status, body) = gw.deploy("demo", "greet", "/greet", hello.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["result"], "created");
    assert_eq!(body["source"], "api");
    assert_eq!(body["route"], "/greet");
    assert_eq!(body["size"], hello.len());
    let hello_text = (200, "hello from wasmgate\n".to_owned());
    assert_eq!(gw.get("/greet").await, hello_text);

    // The same bytes, route and config: nothing changes.
    let answer = gw.deploy("demo", "greet", "/greet", hello.clone()).await;
    assert_version(&answer, 200, 1);
    assert_eq!(answer.1["result"], "unchanged");

    // New config without new bytes.
    let patch = |if_match: &str, change: Value| {
        let request = gw.root(Method::PATCH, GREET).json(&change);
        match if_match {
            "" => send(request),
            tag => send(request.header("if-match", tag)),
        }
    };
    assert_version(
        &patch("", json!({"config": {"greeting": "hey"}})).await,
        200,
        2,
    );
    assert_eq!(gw.get("/greet").await.1, "hey from wasmgate: hello\n");

    // New bytes keep the config.
    assert_version(&gw.deploy("demo", "greet", "/greet", echo).await, 200, 3);
    let (status, _) = gw.get("/greet").await;
    assert_eq!(status, 204, "echo answers an empty GET with 204");

    let rollback = |query: &str| send(gw.root(Method::POST, &format!("{GREET}/rollback{query}")));
    assert_version(&rollback("").await, 200, 2);
    assert_eq!(gw.get("/greet").await.1, "hey from wasmgate: hello\n");
    assert_version(&rollback("?version=1").await, 200, 1);
    assert_eq!(gw.get("/greet").await, hello_text);
    assert_rejected(&rollback("?version=9").await, 404, "not_found");

    // The history, and optimistic concurrency on it.
    let (etag, body) = gw.read(GREET).await;
    let versions: Vec<(u64, bool)> = body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| (v["version"].as_u64().expect("number"), v["active"] == true))
        .collect();
    assert_eq!(versions, [(1, true), (2, false), (3, false)]);
    let stale = patch(
        "\"0000000000000000\"",
        json!({"config": {"greeting": "lost"}}),
    )
    .await;
    assert_rejected(&stale, 412, "precondition_failed");
    let current = patch(&etag, json!({"config": {"greeting": "won"}})).await;
    assert_eq!(current.0, 200, "{}", current.1);
    assert_eq!(gw.get("/greet").await.1, "won from wasmgate: hello\n");

    // A route another handler has.
    assert_rejected(
        &patch("", json!({"route": "/hello"})).await,
        409,
        "route_taken",
    );

    assert_eq!(gw.delete(GREET, ROOT).await, 204);
    assert_eq!(gw.get("/greet").await.0, 404);
    let (status, _) = gw.get("/hello").await;
    assert_eq!(status, 200, "the config's handler is untouched");
}

#[tokio::test]
async fn rejected_writes_say_why_and_change_nothing() {
    let config = write_config("rejections", "[admin]\nmax_upload_bytes = 1000000");
    let gw = Gateway::start(&config, true).await;
    let (etag, _) = gw.read("/admin/tenants/demo/handlers").await;

    let small = component(components::HELLO);
    let (junk, core) = (b"not wasm".to_vec(), b"\0asm\x01\0\0\0".to_vec());
    let big = vec![0; 2_000_000];
    // Tenant, content type, body; status, error code, part of the message.
    let cases = [
        (
            "demo",
            "text/plain",
            &small,
            415,
            "unsupported_media_type",
            WASM,
        ),
        ("demo", WASM, &big, 413, "too_large", "1000000"),
        (
            "demo",
            WASM,
            &junk,
            400,
            "invalid_component",
            "not a valid WebAssembly component",
        ),
        (
            "demo",
            WASM,
            &core,
            400,
            "invalid_component",
            "core wasm module",
        ),
        (
            "tiny",
            WASM,
            &small,
            400,
            "invalid_component",
            "cannot be instantiated",
        ),
        ("nobody", WASM, &small, 404, "not_found", "nobody"),
    ];
    for (tenant, content_type, body, status, code, part) in cases {
        let path = format!("/admin/tenants/{tenant}/handlers/bad?route=/bad");
        let answer = send(gw.upload(&path, Some(ROOT), content_type, body.clone())).await;
        assert_rejected(&answer, status, code);
        assert_message(&answer.1, part);
    }
    // A digest that does not match the bytes.
    let mismatch = gw
        .upload(
            "/admin/tenants/demo/handlers/bad?route=/bad",
            Some(ROOT),
            WASM,
            small.clone(),
        )
        .header(
            "content-digest",
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
        );
    assert_rejected(&send(mismatch).await, 400, "digest_mismatch");
    // A new handler without a route.
    let no_route = gw.upload("/admin/tenants/demo/handlers/bad", Some(ROOT), WASM, small);
    assert_eq!(send(no_route).await.0, 400);

    let (after, _) = gw.read("/admin/tenants/demo/handlers").await;
    assert_eq!(after, etag, "nothing changed");
    assert_eq!(gw.get("/bad").await.0, 404);
    assert_eq!(gw.get("/hello").await.0, 200);
}

/// `limits.max_handlers` bounds what a tenant's token can create: the
/// handler past it is refused with 409 and changes nothing, a handler the
/// tenant has still gets new versions, and a delete makes room.
#[tokio::test]
async fn a_tenant_token_cannot_create_handlers_past_max_handlers() {
    let config = write_config("max-handlers", "[limits]\nmax_handlers = 2");
    let gw = Gateway::start(&config, true).await;
    let put = |name: &str| {
        let path = format!("/admin/tenants/demo/handlers/{name}?route=/{name}");
        send(gw.upload(&path, Some(DEMO_TOKEN), WASM, component(components::HELLO)))
    };
    // The config file's hello is the first of two.
    assert_eq!(put("a").await.0, 201);
    let refused = put("b").await;
    assert_rejected(&refused, 409, "too_many_handlers");
    assert_message(&refused.1, "limits.max_handlers");
    assert_eq!(gw.get("/b").await.0, 404, "a refused write changes nothing");
    assert_eq!(put("a").await.0, 200, "a new version");
    assert_eq!(
        gw.delete("/admin/tenants/demo/handlers/a", DEMO_TOKEN)
            .await,
        204
    );
    assert_eq!(put("b").await.0, 201);
    assert_eq!(gw.get("/b").await.0, 200);
}

#[tokio::test]
async fn tenants_come_and_go_at_runtime() {
    let gw = Gateway::start(&write_config("tenants", ""), true).await;
    let put = |name: &str, tenant: Value| {
        send(
            gw.root(Method::PUT, &format!("/admin/tenants/{name}"))
                .json(&tenant),
        )
    };
    let shop = json!({"hosts": ["shop.test"], "limits": {"fuel": 5000000}, "cpu_weight": 4});
    let (status, body) = put("shop", shop).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["hosts"], json!(["shop.test"]));
    assert_eq!(body["cpu_weight"], 4);
    let heavy = put("heavy", json!({"cpu_weight": 0})).await;
    assert_eq!(heavy.0, 400);
    assert_message(&heavy.1, "cpu_weight must be between 1 and 1000");
    let bad = put("bad", json!({"hosts": ["a.*.com"]})).await;
    assert_eq!(bad.0, 400);
    assert_message(&bad.1, "hosts");

    let (status, _) = gw
        .deploy("shop", "cart", "/cart", component(components::HELLO))
        .await;
    assert_eq!(status, 201);
    let cart = || {
        let request = gw.client.get(format!("{}/cart", gw.url));
        request.header("host", "shop.test").send()
    };
    assert_eq!(cart().await.expect("GET").status(), 200);

    assert_eq!(gw.delete("/admin/tenants/shop", ROOT).await, 204);
    let gone = cart().await.expect("GET");
    assert_eq!(gone.status(), 404, "the * tenant has no /cart");
}

#[tokio::test]
async fn the_last_acknowledged_state_survives_kill_9_and_the_config_file_yields_to_the_api() {
    let config = write_config("restart", "");
    let echo = component(components::ECHO);
    let gw = Gateway::start(&config, true).await;
    let (status, _) = gw.deploy("demo", "greet", "/greet", echo.clone()).await;
    assert_eq!(status, 201);
    // The API writes to a handler the config file names: the API wins.
    assert_version(&gw.deploy("demo", "hello", "/hello", echo).await, 200, 2);
    let mut gw = gw;
    gw.served.child.kill().expect("kill -9");
    gw.served.child.wait().expect("reaped");
    drop(gw);

    let gw = Gateway::start(&config, true).await;
    assert_eq!(gw.get("/greet").await.0, 204, "echo, as deployed");
    let (status, _) = gw.get("/hello").await;
    assert_eq!(status, 204, "the API's version, not the file's");
    let (_, body) = gw.read("/admin/tenants/demo/handlers/hello").await;
    assert_eq!(body["version"], 2);
    assert_eq!(body["source"], "api");

    // SIGHUP applies a changed file: a new handler appears, the API's stay.
    let mut text = config_text("");
    text.push_str(&handler(
        "hi",
        "/hi",
        components::require(components::HELLO),
    ));
    // The new handler belongs to the last tenant in the file: tiny.
    std::fs::write(
        &gw.config,
        text.replace("memory_bytes = 65536", "memory_bytes = 67108864"),
    )
    .expect("write config");
    gw.served.signal("HUP");
    wait_until("the reloaded route is served", || async {
        let response = gw
            .client
            .get(format!("{}/hi", gw.url))
            .header("host", "tiny.test")
            .send()
            .await;
        response.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert_eq!(gw.get("/hello").await.0, 204, "still the API's version");

    // A broken file changes nothing, and the API says why.
    std::fs::write(&gw.config, "[server]\nbogus = 1\n").expect("write config");
    let reload = || send(gw.root(Method::POST, "/admin/reload"));
    let broken = reload().await;
    assert_rejected(&broken, 400, "invalid_config");
    assert_message(&broken.1, "bogus");
    // A component that is not there is named once, with its config line,
    // as at start.
    let missing = format!("{text}\n{}", handler("gone", "/gone", "gone.wasm"));
    let line = missing
        .lines()
        .position(|l| l == "component = \"gone.wasm\"")
        .expect("the line")
        + 1;
    std::fs::write(&gw.config, &missing).expect("write config");
    let (status, body) = reload().await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    let at = format!("{}:{line}: ", gw.config.display());
    assert!(message.starts_with(&at), "{message} should start with {at}");
    assert!(
        message.contains("handler \"gone\": component: ")
            && message.matches("No such file").count() == 1,
        "{message}"
    );
    assert_eq!(gw.get("/greet").await.0, 204);
}

/// `connections` clients requesting `url` until the returned stop is
/// called; it gives how many answers were 200 with `body` and how many
/// were 204 (`echo`'s answer to an empty GET), and fails on any other.
fn keep_requesting(
    url: String,
    connections: usize,
    body: &'static str,
) -> impl AsyncFnOnce() -> (u64, u64) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..connections)
        .map(|_| {
            let client = reqwest::Client::new();
            let url = url.clone();
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut bodies, mut empties, mut others) = (0u64, 0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.text().await {
                            Ok(text) if text == body => bodies += 1,
                            text => others.push(format!("200 {text:?}")),
                        },
                        Ok(r) if r.status() == 204 => empties += 1,
                        Ok(r) => others.push(format!("status {}", r.status())),
                        Err(e) => others.push(format!("error {e}")),
                    }
                }
                (bodies, empties, others)
            })
        })
        .collect();
    async move || {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut bodies, mut empties) = (0, 0);
        for task in load {
            let (b, e, others) = task.await.expect("load task");
            assert!(others.is_empty(), "failed or foreign answers: {others:?}");
            bodies += b;
            empties += e;
        }
        (bodies, empties)
    }
}

/// 64 connections keep requesting a handler while it is swapped 20 times
/// between two versions: no request fails, and every answer is one of the
/// two versions'.
#[tokio::test]
async fn swaps_under_load_fail_no_request() {
    let config = write_config("swaps", "[limits]\nmax_concurrency = 1000");
    let gw = Gateway::start(&config, true).await;
    let (hello, echo) = (component(components::HELLO), component(components::ECHO));
    assert_eq!(
        gw.deploy("demo", "swap", "/swap", hello.clone()).await.0,
        201
    );

    let stop = keep_requesting(format!("{}/swap", gw.url), 64, "hello from wasmgate\n");
    for i in 0..20u32 {
        let wasm = if i.is_multiple_of(2) {
            echo.clone()
        } else {
            hello.clone()
        };
        let (status, body) = gw.deploy("demo", "swap", "/swap", wasm).await;
        assert_eq!(status, 200, "{body}");
    }
    let (hellos, echoes) = stop().await;
    assert!(
        hellos > 0 && echoes > 0,
        "both versions served: {hellos} / {echoes}"
    );
}

/// A PUT of a component may carry the new version's config strings
/// (`x-wasmgate-config`): they arrive in the same version as the bytes.
#[tokio::test]
async fn a_component_and_its_config_arrive_in_one_version() {
    let gw = Gateway::start(&write_config("with-config", ""), true).await;
    let (hello, echo) = (component(components::HELLO), component(components::ECHO));
    let put = |wasm: &Vec<u8>, config: Option<&str>| {
        let path = format!("{GREET}?route=/greet");
        let request = gw.upload(&path, Some(ROOT), WASM, wasm.clone());
        match config {
            Some(config) => send(request.header("x-wasmgate-config", config)),
            None => send(request),
        }
    };

    // A new handler starts with its config.
    let created = put(&hello, Some(r#"{"greeting": "hey"}"#)).await;
    assert_version(&created, 201, 1);
    assert_eq!(created.1["config"], json!({"greeting": "hey"}));
    assert_eq!(gw.get("/greet").await.1, "hey from wasmgate: hello\n");
    // The same bytes, route and config: nothing changes.
    let again = put(&hello, Some(r#"{"greeting":"hey"}"#)).await;
    assert_version(&again, 200, 1);
    assert_eq!(again.1["result"], "unchanged");
    // A new config with the same bytes; non-ASCII escaped as JSON allows.
    assert_version(
        &put(&hello, Some(r#"{"greeting": "h\u00e9"}"#)).await,
        200,
        2,
    );
    assert_eq!(gw.get("/greet").await.1, "h\u{e9} from wasmgate: hello\n");
    // Without the header new bytes keep the config.
    let kept = put(&echo, None).await;
    assert_version(&kept, 200, 3);
    assert_eq!(kept.1["config"], json!({"greeting": "h\u{e9}"}));
    // An empty object clears it.
    let cleared = put(&hello, Some("{}")).await;
    assert_version(&cleared, 200, 4);
    assert_eq!(cleared.1["config"], json!({}));
    assert_eq!(gw.get("/greet").await.1, "hello from wasmgate\n");

    // What is not a JSON object of strings is refused, and changes nothing.
    for bad in [
        "greeting=hey",
        r#"["greeting"]"#,
        r#"{"greeting": 1}"#,
        r#"{"a": "b""#,
    ] {
        let refused = put(&echo, Some(bad)).await;
        assert_rejected(&refused, 400, "invalid_request");
        assert_message(
            &refused.1,
            "x-wasmgate-config must be a JSON object of strings",
        );
    }
    // Refused before its body is read, an upload is still read to its end
    // (as far as the admin API drains any), so the client gets the answer.
    let refused = put(&vec![0u8; 3 << 20], Some("greeting=hey")).await;
    assert_rejected(&refused, 400, "invalid_request");
    // Config strings are bounded as a PATCH's are (64 KiB).
    let huge = json!({"k": "v".repeat(100 << 10)}).to_string();
    let refused = put(&echo, Some(&huge)).await;
    assert_rejected(&refused, 400, "invalid_request");
    assert_message(&refused.1, "config is 102401 bytes");
    // A deploy by reference carries its config in the JSON body, not here.
    let both = gw
        .upload(
            GREET,
            Some(ROOT),
            "application/json",
            br#"{"oci": "127.0.0.1:1/x@sha256:0000000000000000000000000000000000000000000000000000000000000000"}"#.to_vec(),
        )
        .header("x-wasmgate-config", "{}");
    let refused = send(both).await;
    assert_rejected(&refused, 400, "invalid_request");
    assert_message(&refused.1, "\"config\" field");
    let (_, now) = gw.read(GREET).await;
    assert_eq!(now["version"], 4, "{now}");
    assert_eq!(gw.get("/greet").await.1, "hello from wasmgate\n");
}

/// 32 connections keep requesting a handler while it is swapped between
/// `echo` (no config) and `hello` with a greeting, each swap one PUT with
/// the config: no request ever meets `hello` without its greeting, as it
/// would between an upload and a later PATCH of its config.
#[tokio::test]
async fn a_swap_with_new_config_shows_no_request_the_component_without_it() {
    let config = write_config("swap-config", "[limits]\nmax_concurrency = 1000");
    let gw = Gateway::start(&config, true).await;
    let (hello, echo) = (component(components::HELLO), component(components::ECHO));
    let put = |wasm: &Vec<u8>, config: &str| {
        let path = format!("{GREET}?route=/greet");
        send(
            gw.upload(&path, Some(ROOT), WASM, wasm.clone())
                .header("x-wasmgate-config", config),
        )
    };
    assert_eq!(put(&echo, "{}").await.0, 201);

    let url = format!("{}/greet", gw.url);
    let stop = keep_requesting(url, 32, "hey from wasmgate: hello\n");
    for i in 0..20u32 {
        let (status, body) = if i.is_multiple_of(2) {
            put(&hello, r#"{"greeting": "hey"}"#).await
        } else {
            put(&echo, "{}").await
        };
        assert_eq!(status, 200, "{body}");
    }
    let (greeted, echoed) = stop().await;
    assert!(
        greeted > 0 && echoed > 0,
        "both versions served: {greeted} / {echoed}"
    );
}

/// Handlers that come and go leave nothing behind: no metric series, no
/// stored components, no state, and no memory beyond noise. (A day of
/// 10,000 deploys is this loop, longer.)
#[tokio::test]
async fn deploys_and_deletes_do_not_grow_the_gateway() {
    let config = write_config("growth", "");
    let gw = Gateway::start(&config, true).await;
    let (hello, echo) = (component(components::HELLO), component(components::ECHO));
    let cycle = |i: usize| {
        let wasm = if i.is_multiple_of(2) {
            hello.clone()
        } else {
            echo.clone()
        };
        let gw = &gw;
        async move {
            let name = format!("h{i}");
            let (status, body) = gw.deploy("demo", &name, &format!("/{name}"), wasm).await;
            assert_eq!(status, 201, "{body}");
            let (status, _) = gw.get(&format!("/{name}")).await;
            assert!(status == 200 || status == 204, "{status}");
            let path = format!("/admin/tenants/demo/handlers/{name}");
            assert_eq!(gw.delete(&path, ROOT).await, 204);
        }
    };
    let rss = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("the process metrics are exported")
    };
    for i in 0..50 {
        cycle(i).await;
    }
    let warm = rss(&gw.metrics().await);
    for i in 50..250 {
        cycle(i).await;
    }
    let text = gw.metrics().await;
    let leftovers: Vec<&str> = text
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && l.split("handler=\"h")
                    .nth(1)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "series of deleted handlers: {leftovers:?}"
    );
    assert!(text.contains("wasmgate_handlers_loaded 1\n"), "{text}");
    let grown = rss(&text) - warm;
    assert!(
        grown < 16.0 * 1024.0 * 1024.0,
        "200 deploys grew the process by {grown} bytes"
    );
    let data = config.with_file_name("wasmgate-data");
    let components = std::fs::read_dir(data.join("components")).expect("components");
    assert_eq!(components.count(), 1, "only the config's hello is kept");
    let compiled = std::fs::read_dir(data.join("cache")).expect("cache");
    assert_eq!(compiled.count(), 1, "and only its compiled code");
    let state: u64 = std::fs::read_dir(data.join("state"))
        .expect("state")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();
    assert!(state < 4096, "the state is {state} bytes");
}

/// README: `admin.token_env` names the variable that holds the root
/// token; `WASMGATE_ADMIN_TOKEN` then holds nothing the API accepts.
#[tokio::test]
async fn the_root_token_comes_from_admin_token_env() {
    let config = write_config(
        "token-env",
        "[admin]\ntoken_env = \"CUSTOM_ROOT_FOR_TESTS\"",
    );
    let env = [
        ("CUSTOM_ROOT_FOR_TESTS", "custom-root"),
        ("WASMGATE_ADMIN_TOKEN", ROOT),
    ];
    let gw = Gateway::start_with(&config, &env).await;
    let list = |token| send(gw.admin(Method::GET, "/admin/tenants", Some(token)));
    assert_eq!(list("custom-root").await.0, 200);
    assert_rejected(&list(ROOT).await, 403, "forbidden");
}

/// README: `admin.max_upload_bytes` is 64 MiB and `runtime.keep_versions`
/// 5 unless configured: a component one byte over 64 MiB gets 413, and a
/// handler's sixth version drops its first.
#[tokio::test]
async fn uploads_and_version_history_have_their_documented_defaults() {
    let gw = Gateway::start(&write_config("defaults", ""), true).await;
    let big = "/admin/tenants/demo/handlers/big?route=/big";
    let answer = gw.upload_racing(big, (64 << 20) + 1).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("too_large") && answer.contains("67108864"),
        "{answer}"
    );
    // Not refused for its size: the limit is not lower.
    let answer = gw.deploy("demo", "big", "/big", vec![0; 64 << 20]).await;
    assert_rejected(&answer, 400, "invalid_component");

    let (status, _) = gw
        .deploy("demo", "greet", "/greet", component(components::HELLO))
        .await;
    assert_eq!(status, 201);
    for greeting in ["a", "b", "c", "d", "e"] {
        let change = json!({"config": {"greeting": greeting}});
        assert_eq!(
            send(gw.root(Method::PATCH, GREET).json(&change)).await.0,
            200
        );
    }
    let (_, body) = gw.read(GREET).await;
    let versions: Vec<u64> = body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["version"].as_u64().expect("number"))
        .collect();
    assert_eq!(versions, [2, 3, 4, 5, 6], "{body}");
    let gone = send(gw.root(Method::POST, &format!("{GREET}/rollback?version=1"))).await;
    assert_rejected(&gone, 404, "not_found");
}

/// README: `wasmgate_handler_version_info` is 1 for the version serving
/// each handler, labelled with its number and sha256, and only for it.
#[tokio::test]
async fn handler_version_info_names_the_serving_version() {
    let gw = Gateway::start(&write_config("version-info", ""), true).await;
    let (hello, echo) = (component(components::HELLO), component(components::ECHO));
    let series = |version: u64, wasm: &[u8]| {
        let sha256: String = Sha256::digest(wasm)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "wasmgate_handler_version_info{{handler=\"greet\",sha256=\"{sha256}\",\
             tenant=\"demo\",version=\"{version}\"}} 1\n"
        )
    };
    assert_eq!(
        gw.deploy("demo", "greet", "/greet", hello.clone()).await.0,
        201
    );
    let text = gw.metrics().await;
    assert!(text.contains(&series(1, &hello)), "{text}");
    assert_eq!(
        gw.deploy("demo", "greet", "/greet", echo.clone()).await.0,
        200
    );
    let text = gw.metrics().await;
    assert!(text.contains(&series(2, &echo)), "{text}");
    assert!(
        !text.contains(&series(1, &hello)),
        "the old version is gone: {text}"
    );
    let greet_lines = text
        .lines()
        .filter(|l| l.starts_with("wasmgate_handler_version_info{handler=\"greet\""))
        .count();
    assert_eq!(greet_lines, 1, "{text}");
}
