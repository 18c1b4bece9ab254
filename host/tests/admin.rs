//! The admin write API against the real `wasmgate serve` process (tokens
//! come from its environment): auth, deploy, replace, patch, rollback,
//! delete, tenants, rejections that change nothing, persistence across
//! `kill -9`, SIGHUP, and swaps under load that fail no request.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Served, serve_command};
use serde_json::Value;
use wasmgate_handler_components as components;

const ROOT: &str = "root-secret-for-tests";
const DEMO_TOKEN: &str = "demo-secret-for-tests";

/// `demo` on every host with hello at /hello and its own token; `tiny` on
/// `tiny.test`, whose memory limit no Rust component fits.
fn config_text(extra: &str) -> String {
    format!(
        r#"
[runtime]
workers = 2
{extra}
[[tenant]]
name = "demo"
hosts = ["*"]
token_env = "DEMO_TOKEN_FOR_TESTS"
[[tenant.handler]]
name = "hello"
route = "/hello"
component = "{hello}"
config = {{ greeting = "howdy" }}

[[tenant]]
name = "tiny"
hosts = ["tiny.test"]
limits = {{ memory_bytes = 65536 }}
"#,
        hello = components::require(components::HELLO)
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("admin-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
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
        let mut command = serve_command();
        command
            .arg("--config")
            .arg(config)
            .env("DEMO_TOKEN_FOR_TESTS", DEMO_TOKEN)
            .env_remove("WASMGATE_ADMIN_TOKEN");
        if root {
            command.env("WASMGATE_ADMIN_TOKEN", ROOT);
        }
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
        let readyz = gateway
            .client
            .get(format!("{}/readyz", gateway.admin))
            .send()
            .await;
        assert_eq!(readyz.expect("readyz").status(), 200);
        gateway
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// An admin request with `token` (none: no Authorization header).
    fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.admin));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn deploy(&self, tenant: &str, name: &str, route: &str, wasm: Vec<u8>) -> (u16, Value) {
        let response = self
            .admin(
                reqwest::Method::PUT,
                &format!("/admin/tenants/{tenant}/handlers/{name}?route={route}"),
                Some(ROOT),
            )
            .header("content-type", "application/wasm")
            .body(wasm)
            .send()
            .await
            .expect("PUT handler");
        json_of(response).await
    }

    async fn metrics(&self) -> String {
        let response = self
            .client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await;
        response.expect("metrics").text().await.expect("body")
    }
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

#[tokio::test]
async fn writes_need_the_right_token() {
    let dir = scratch("auth");
    let config = dir.join("wasmgate.toml");
    std::fs::write(&config, config_text("")).expect("write config");
    let hello = component(components::HELLO);

    // No root token configured: everything under /admin/ is off, and the
    // answer says how to turn it on.
    let gw = Gateway::start(&config, false).await;
    let (status, body) = json_of(
        gw.admin(reqwest::Method::GET, "/admin/tenants", Some(ROOT))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "admin_disabled");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("WASMGATE_ADMIN_TOKEN")),
        "{body}"
    );
    drop(gw);

    let gw = Gateway::start(&config, true).await;
    let put = |token: Option<&'static str>, tenant: &'static str| {
        let request = gw
            .admin(
                reqwest::Method::PUT,
                &format!("/admin/tenants/{tenant}/handlers/greet?route=/greet"),
                token,
            )
            .header("content-type", "application/wasm")
            .body(hello.clone());
        async move { json_of(request.send().await.expect("PUT")).await }
    };
    let (status, body) = put(None, "demo").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = put(Some("not-the-token"), "demo").await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, _) = put(Some(DEMO_TOKEN), "tiny").await;
    assert_eq!(status, 403, "a tenant token writes its own tenant only");
    let (status, _) = put(Some(DEMO_TOKEN), "demo").await;
    assert_eq!(status, 201);
    // Reads need a token too; tenants as a whole are the root's.
    let list = gw
        .admin(reqwest::Method::GET, "/admin/tenants", None)
        .send()
        .await;
    assert_eq!(list.expect("GET").status(), 401);
    let list = gw
        .admin(reqwest::Method::GET, "/admin/tenants", Some(DEMO_TOKEN))
        .send()
        .await;
    assert_eq!(list.expect("GET").status(), 403);
    let list = gw
        .admin(
            reqwest::Method::GET,
            "/admin/tenants/demo/handlers",
            Some(DEMO_TOKEN),
        )
        .send()
        .await;
    assert_eq!(list.expect("GET").status(), 200);
    // The health endpoints need none.
    let (status, _) = gw.get("/hello").await;
    assert_eq!(status, 200);
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .contains(r#"wasmgate_admin_requests_total{operation="put_handler",status="401"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_handler_is_deployed_patched_replaced_rolled_back_and_deleted_at_runtime() {
    let dir = scratch("lifecycle");
    let config = dir.join("wasmgate.toml");
    std::fs::write(&config, config_text("")).expect("write config");
    let gw = Gateway::start(&config, true).await;
    let (hello, echo) = (component(components::HELLO), component(components::ECHO));

    assert_eq!(gw.get("/greet").await.0, 404);
    let (status, body) = gw.deploy("demo", "greet", "/greet", hello.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["result"], "created");
    assert_eq!(body["source"], "api");
    assert_eq!(body["route"], "/greet");
    assert_eq!(body["size"], hello.len());
    assert_eq!(
        gw.get("/greet").await,
        (200, "hello from wasmgate\n".to_owned())
    );

    // The same bytes, route and config: nothing changes.
    let (status, body) = gw.deploy("demo", "greet", "/greet", hello.clone()).await;
    assert_eq!((status, &body["version"]), (200, &Value::from(1)));
    assert_eq!(body["result"], "unchanged");

    // New config without new bytes.
    let patch = gw
        .admin(
            reqwest::Method::PATCH,
            "/admin/tenants/demo/handlers/greet",
            Some(ROOT),
        )
        .json(&serde_json::json!({"config": {"greeting": "hey"}}))
        .send()
        .await
        .expect("PATCH");
    let (status, body) = json_of(patch).await;
    assert_eq!((status, &body["version"]), (200, &Value::from(2)), "{body}");
    assert_eq!(gw.get("/greet").await.1, "hey from wasmgate: hello\n");

    // New bytes keep the config.
    let (status, body) = gw.deploy("demo", "greet", "/greet", echo).await;
    assert_eq!((status, &body["version"]), (200, &Value::from(3)), "{body}");
    assert_eq!(
        gw.get("/greet").await.0,
        204,
        "echo answers an empty GET with 204"
    );

    let rollback = |query: &'static str| {
        gw.admin(
            reqwest::Method::POST,
            &format!("/admin/tenants/demo/handlers/greet/rollback{query}"),
            Some(ROOT),
        )
        .send()
    };
    let (status, body) = json_of(rollback("").await.expect("rollback")).await;
    assert_eq!((status, &body["version"]), (200, &Value::from(2)), "{body}");
    assert_eq!(gw.get("/greet").await.1, "hey from wasmgate: hello\n");
    let (status, body) = json_of(rollback("?version=1").await.expect("rollback")).await;
    assert_eq!((status, &body["version"]), (200, &Value::from(1)), "{body}");
    assert_eq!(gw.get("/greet").await.1, "hello from wasmgate\n");
    let (status, body) = json_of(rollback("?version=9").await.expect("rollback")).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

    // The history, and optimistic concurrency on it.
    let detail = gw
        .admin(
            reqwest::Method::GET,
            "/admin/tenants/demo/handlers/greet",
            Some(ROOT),
        )
        .send()
        .await
        .expect("GET");
    let etag = detail.headers()["etag"].to_str().expect("ascii").to_owned();
    let (_, body) = json_of(detail).await;
    let versions: Vec<(u64, bool)> = body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| (v["version"].as_u64().expect("number"), v["active"] == true))
        .collect();
    assert_eq!(versions, [(1, true), (2, false), (3, false)]);
    let stale = gw
        .admin(
            reqwest::Method::PATCH,
            "/admin/tenants/demo/handlers/greet",
            Some(ROOT),
        )
        .header("if-match", "\"0000000000000000\"")
        .json(&serde_json::json!({"config": {"greeting": "lost"}}))
        .send()
        .await
        .expect("PATCH");
    let (status, body) = json_of(stale).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (412, Some("precondition_failed"))
    );
    let current = gw
        .admin(
            reqwest::Method::PATCH,
            "/admin/tenants/demo/handlers/greet",
            Some(ROOT),
        )
        .header("if-match", &etag)
        .json(&serde_json::json!({"config": {"greeting": "won"}}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(current.status(), 200);
    assert_eq!(gw.get("/greet").await.1, "won from wasmgate: hello\n");

    // A route another handler has.
    let taken = gw
        .admin(
            reqwest::Method::PATCH,
            "/admin/tenants/demo/handlers/greet",
            Some(ROOT),
        )
        .json(&serde_json::json!({"route": "/hello"}))
        .send()
        .await
        .expect("PATCH");
    let (status, body) = json_of(taken).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("route_taken")),
        "{body}"
    );

    let deleted = gw
        .admin(
            reqwest::Method::DELETE,
            "/admin/tenants/demo/handlers/greet",
            Some(ROOT),
        )
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), 204);
    let (status, _) = gw.get("/greet").await;
    assert_eq!(status, 404);
    assert_eq!(
        gw.get("/hello").await.0,
        200,
        "the config's handler is untouched"
    );
}

#[tokio::test]
async fn rejected_writes_say_why_and_change_nothing() {
    let dir = scratch("rejections");
    let config = dir.join("wasmgate.toml");
    std::fs::write(&config, config_text("[admin]\nmax_upload_bytes = 1000000")).expect("write");
    let gw = Gateway::start(&config, true).await;
    let before = gw
        .admin(
            reqwest::Method::GET,
            "/admin/tenants/demo/handlers",
            Some(ROOT),
        )
        .send()
        .await
        .expect("GET");
    let etag = before.headers()["etag"].clone();

    let upload = |tenant: &'static str, content_type: &'static str, body: Vec<u8>| {
        gw.admin(
            reqwest::Method::PUT,
            &format!("/admin/tenants/{tenant}/handlers/bad?route=/bad"),
            Some(ROOT),
        )
        .header("content-type", content_type)
        .body(body)
        .send()
    };
    let small = component(components::HELLO);
    /// Tenant, content type, body; status, error code, part of the message.
    type Case = (
        &'static str,
        &'static str,
        Vec<u8>,
        u16,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "demo",
            "text/plain",
            small.clone(),
            415,
            "unsupported_media_type",
            "application/wasm",
        ),
        (
            "demo",
            "application/wasm",
            vec![0; 2_000_000],
            413,
            "too_large",
            "1000000",
        ),
        (
            "demo",
            "application/wasm",
            b"not wasm".to_vec(),
            400,
            "invalid_component",
            "not a valid WebAssembly component",
        ),
        (
            "demo",
            "application/wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            400,
            "invalid_component",
            "core wasm module",
        ),
        (
            "tiny",
            "application/wasm",
            small.clone(),
            400,
            "invalid_component",
            "cannot be instantiated",
        ),
        (
            "nobody",
            "application/wasm",
            small.clone(),
            404,
            "not_found",
            "nobody",
        ),
    ];
    for (tenant, content_type, body, status, code, needle) in cases {
        let (got, body) = json_of(upload(tenant, content_type, body).await.expect("PUT")).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(code)),
            "{body}"
        );
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{code}: {message}");
    }
    // A digest that does not match the bytes.
    let mismatch = gw
        .admin(
            reqwest::Method::PUT,
            "/admin/tenants/demo/handlers/bad?route=/bad",
            Some(ROOT),
        )
        .header("content-type", "application/wasm")
        .header(
            "content-digest",
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
        )
        .body(small.clone())
        .send()
        .await
        .expect("PUT");
    let (status, body) = json_of(mismatch).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("digest_mismatch"))
    );
    // A new handler without a route.
    let no_route = gw
        .admin(
            reqwest::Method::PUT,
            "/admin/tenants/demo/handlers/bad",
            Some(ROOT),
        )
        .header("content-type", "application/wasm")
        .body(small)
        .send()
        .await
        .expect("PUT");
    assert_eq!(no_route.status(), 400);

    let after = gw
        .admin(
            reqwest::Method::GET,
            "/admin/tenants/demo/handlers",
            Some(ROOT),
        )
        .send()
        .await
        .expect("GET");
    assert_eq!(after.headers()["etag"], etag, "nothing changed");
    assert_eq!(gw.get("/bad").await.0, 404);
    assert_eq!(gw.get("/hello").await.0, 200);
}

/// `limits.max_handlers` bounds what a tenant's token can create: the
/// handler past it is refused with 409 and changes nothing, a handler the
/// tenant has still gets new versions, and a delete makes room.
#[tokio::test]
async fn a_tenant_token_cannot_create_handlers_past_max_handlers() {
    let dir = scratch("max-handlers");
    let config = dir.join("wasmgate.toml");
    std::fs::write(&config, config_text("[limits]\nmax_handlers = 2")).expect("write");
    let gw = Gateway::start(&config, true).await;
    let put = |name: &'static str| {
        gw.admin(
            reqwest::Method::PUT,
            &format!("/admin/tenants/demo/handlers/{name}?route=/{name}"),
            Some(DEMO_TOKEN),
        )
        .header("content-type", "application/wasm")
        .body(component(components::HELLO))
        .send()
    };
    // The config file's hello is the first of two.
    assert_eq!(put("a").await.expect("PUT").status(), 201);
    let (status, body) = json_of(put("b").await.expect("PUT")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "too_many_handlers", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("limits.max_handlers")),
        "{body}"
    );
    assert_eq!(gw.get("/b").await.0, 404, "a refused write changes nothing");
    assert_eq!(put("a").await.expect("PUT").status(), 200, "a new version");
    let deleted = gw
        .admin(
            reqwest::Method::DELETE,
            "/admin/tenants/demo/handlers/a",
            Some(DEMO_TOKEN),
        )
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), 204);
    assert_eq!(put("b").await.expect("PUT").status(), 201);
    assert_eq!(gw.get("/b").await.0, 200);
}

#[tokio::test]
async fn tenants_come_and_go_at_runtime() {
    let dir = scratch("tenants");
    let config = dir.join("wasmgate.toml");
    std::fs::write(&config, config_text("")).expect("write config");
    let gw = Gateway::start(&config, true).await;
    let put = gw
        .admin(reqwest::Method::PUT, "/admin/tenants/shop", Some(ROOT))
        .json(&serde_json::json!({"hosts": ["shop.test"], "limits": {"fuel": 5000000}, "cpu_weight": 4}))
        .send()
        .await
        .expect("PUT tenant");
    let (status, body) = json_of(put).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["hosts"], serde_json::json!(["shop.test"]));
    assert_eq!(body["cpu_weight"], 4);
    let heavy = gw
        .admin(reqwest::Method::PUT, "/admin/tenants/heavy", Some(ROOT))
        .json(&serde_json::json!({"cpu_weight": 0}))
        .send()
        .await
        .expect("PUT tenant");
    let (status, body) = json_of(heavy).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("cpu_weight must be between 1 and 1000")),
        "{body}"
    );
    let bad = gw
        .admin(reqwest::Method::PUT, "/admin/tenants/bad", Some(ROOT))
        .json(&serde_json::json!({"hosts": ["a.*.com"]}))
        .send()
        .await
        .expect("PUT tenant");
    let (status, body) = json_of(bad).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("hosts")),
        "{body}"
    );

    let (status, _) = gw
        .deploy("shop", "cart", "/cart", component(components::HELLO))
        .await;
    assert_eq!(status, 201);
    let served = gw
        .client
        .get(format!("{}/cart", gw.url))
        .header("host", "shop.test")
        .send()
        .await
        .expect("GET");
    assert_eq!(served.status(), 200);

    let deleted = gw
        .admin(reqwest::Method::DELETE, "/admin/tenants/shop", Some(ROOT))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), 204);
    let gone = gw
        .client
        .get(format!("{}/cart", gw.url))
        .header("host", "shop.test")
        .send()
        .await
        .expect("GET");
    assert_eq!(gone.status(), 404, "the * tenant has no /cart");
}

#[tokio::test]
async fn the_last_acknowledged_state_survives_kill_9_and_the_config_file_yields_to_the_api() {
    let dir = scratch("restart");
    let config = dir.join("wasmgate.toml");
    std::fs::write(&config, config_text("")).expect("write config");
    let echo = component(components::ECHO);
    let gw = Gateway::start(&config, true).await;
    let (status, _) = gw.deploy("demo", "greet", "/greet", echo.clone()).await;
    assert_eq!(status, 201);
    // The API writes to a handler the config file names: the API wins.
    let (status, body) = gw.deploy("demo", "hello", "/hello", echo).await;
    assert_eq!((status, &body["version"]), (200, &Value::from(2)), "{body}");
    let mut gw = gw;
    gw.served.child.kill().expect("kill -9");
    gw.served.child.wait().expect("reaped");
    drop(gw);

    let gw = Gateway::start(&config, true).await;
    assert_eq!(gw.get("/greet").await.0, 204, "echo, as deployed");
    assert_eq!(
        gw.get("/hello").await.0,
        204,
        "the API's version, not the file's"
    );
    let detail = gw
        .admin(
            reqwest::Method::GET,
            "/admin/tenants/demo/handlers/hello",
            Some(ROOT),
        )
        .send()
        .await
        .expect("GET");
    let (_, body) = json_of(detail).await;
    assert_eq!(body["version"], 2);
    assert_eq!(body["source"], "api");

    // SIGHUP applies a changed file: a new handler appears, the API's stay.
    let mut text = config_text("");
    text.push_str(&format!(
        "\n[[tenant.handler]]\nname = \"hi\"\nroute = \"/hi\"\ncomponent = \"{}\"\n",
        components::require(components::HELLO)
    ));
    // The new handler belongs to the last tenant in the file: tiny.
    std::fs::write(
        &gw.config,
        text.replace("memory_bytes = 65536", "memory_bytes = 67108864"),
    )
    .expect("write config");
    signal_hangup(&gw.served.child);
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
    let reload = gw
        .admin(reqwest::Method::POST, "/admin/reload", Some(ROOT))
        .send()
        .await
        .expect("POST reload");
    let (status, body) = json_of(reload).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_config")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("bogus")),
        "{body}"
    );
    // A component that is not there is named once, with its config line,
    // as at start.
    let missing = format!(
        "{text}\n[[tenant.handler]]\nname = \"gone\"\nroute = \"/gone\"\ncomponent = \"gone.wasm\"\n"
    );
    let line = missing
        .lines()
        .position(|l| l == "component = \"gone.wasm\"")
        .expect("the line")
        + 1;
    std::fs::write(&gw.config, &missing).expect("write config");
    let reload = gw
        .admin(reqwest::Method::POST, "/admin/reload", Some(ROOT))
        .send()
        .await
        .expect("POST reload");
    let (status, body) = json_of(reload).await;
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

fn signal_hangup(child: &Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Polls `check` until it holds; fails after a generous bound.
async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 64 connections keep requesting a handler while it is swapped 20 times
/// between two versions: no request fails, and every answer is one of the
/// two versions'.
#[tokio::test]
async fn swaps_under_load_fail_no_request() {
    let dir = scratch("swaps");
    let config = dir.join("wasmgate.toml");
    std::fs::write(&config, config_text("[limits]\nmax_concurrency = 1000")).expect("write");
    let gw = Gateway::start(&config, true).await;
    let (hello, echo) = (component(components::HELLO), component(components::ECHO));
    assert_eq!(
        gw.deploy("demo", "swap", "/swap", hello.clone()).await.0,
        201
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..64)
        .map(|_| {
            let client = reqwest::Client::new();
            let url = format!("{}/swap", gw.url);
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut hellos, mut echoes, mut others) = (0u64, 0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            let body = r.text().await.unwrap_or_default();
                            if body == "hello from wasmgate\n" {
                                hellos += 1;
                            } else {
                                others.push(format!("200 {body:?}"));
                            }
                        }
                        Ok(r) if r.status() == 204 => echoes += 1,
                        Ok(r) => others.push(format!("status {}", r.status())),
                        Err(e) => others.push(format!("error {e}")),
                    }
                }
                (hellos, echoes, others)
            })
        })
        .collect();
    for i in 0..20u32 {
        let wasm = if i.is_multiple_of(2) {
            echo.clone()
        } else {
            hello.clone()
        };
        let (status, body) = gw.deploy("demo", "swap", "/swap", wasm).await;
        assert_eq!(status, 200, "{body}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut hellos, mut echoes) = (0, 0);
    for task in load {
        let (h, e, others) = task.await.expect("load task");
        assert!(others.is_empty(), "failed or foreign answers: {others:?}");
        hellos += h;
        echoes += e;
    }
    assert!(
        hellos > 0 && echoes > 0,
        "both versions served: {hellos} / {echoes}"
    );
}

/// Handlers that come and go leave nothing behind: no metric series, no
/// stored components, no state, and no memory beyond noise. (A day of
/// 10,000 deploys is this loop, longer.)
#[tokio::test]
async fn deploys_and_deletes_do_not_grow_the_gateway() {
    let dir = scratch("growth");
    let config = dir.join("wasmgate.toml");
    std::fs::write(&config, config_text("")).expect("write config");
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
            let deleted = gw
                .admin(
                    reqwest::Method::DELETE,
                    &format!("/admin/tenants/demo/handlers/{name}"),
                    Some(ROOT),
                )
                .send()
                .await
                .expect("DELETE");
            assert_eq!(deleted.status(), 204);
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
    let data = dir.join("wasmgate-data");
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
