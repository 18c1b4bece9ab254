//! Static mounts through the admin API and the command line: the root
//! token mounts a directory at a tenant's route, it serves at once and
//! after a restart, a tenant's own token may not mount host directories,
//! bad directories and taken routes are refused, and a delete unmounts.

mod common;

use common::{BIN, Served};
use serde_json::{Value, json};
use wasmgate_handler_components as components;

const ROOT: &str = "root-secret-for-static-tests";
const DEMO: &str = "demo-secret-for-static-tests";

/// `wasmgate serve` on a config with tenant `demo` (its token `DEMO`) and
/// hello at /hello, in `dir`.
fn serve(dir: &std::path::Path) -> Served {
    let config = format!(
        "[[tenant]]\nname = \"demo\"\ntoken_env = \"STATIC_TESTS_DEMO_TOKEN\"\n\n\
         [[tenant.handler]]\nname = \"hello\"\nroute = \"/hello\"\ncomponent = \"{}\"\n",
        components::require(components::HELLO)
    );
    let mut command = common::serve_config(dir, &config);
    command
        .env("WASMGATE_ADMIN_TOKEN", ROOT)
        .env("STATIC_TESTS_DEMO_TOKEN", DEMO);
    Served::spawn(&mut command)
}

/// `method` on `/admin/tenants/demo/statics?route=ROUTE` with `token` and
/// `body`: status and JSON answer (`null` for none).
async fn statics(
    gw: &Served,
    method: reqwest::Method,
    route: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}/admin/tenants/demo/statics?route={route}", gw.admin);
    common::admin_json(method, &url, token, body).await
}

/// `wasmgate static ARGS` against `gw`, run in `dir`; it must succeed.
fn cli(gw: &Served, dir: &std::path::Path, args: &[&str]) {
    let output = std::process::Command::new(BIN)
        .arg("static")
        .args(args)
        .args(["--admin", &gw.admin])
        .current_dir(dir)
        .env("WASMGATE_ADMIN_TOKEN", ROOT)
        .output()
        .expect("run wasmgate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {stderr}");
}

async fn get(gw: &Served, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("{}{path}", gw.url))
        .await
        .expect("get");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_token_mounts_a_directory_that_serves_until_deleted() {
    let dir = common::scratch("static-api");
    let site = dir.join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("a.txt"), "from the api\n").expect("file");
    let site_json = json!({"dir": site});
    let put = reqwest::Method::PUT;
    let delete = reqwest::Method::DELETE;

    let mut gw = serve(&dir);
    // A tenant's own token may not mount directories of the host.
    let (status, _) = statics(&gw, put.clone(), "/files", DEMO, Some(site_json.clone())).await;
    assert_eq!(status, 403);
    // Bad directories and taken routes change nothing.
    for (route, body, want, code) in [
        (
            "/files",
            json!({"dir": "relative/site"}),
            400,
            "invalid_request",
        ),
        (
            "/files",
            json!({"dir": "/nonexistent/site"}),
            400,
            "invalid_request",
        ),
        ("/hello", site_json.clone(), 409, "route_taken"),
        ("/e%1b%5b31m", site_json.clone(), 400, "invalid_request"),
    ] {
        let (status, answer) = statics(&gw, put.clone(), route, ROOT, Some(body)).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (want, Some(code)),
            "{route}"
        );
    }
    assert_eq!(get(&gw, "/files/a.txt").await.0, 404);

    let (status, view) = statics(&gw, put.clone(), "/files", ROOT, Some(site_json.clone())).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["statics"][0]["route"], "/files");
    assert_eq!(view["statics"][0]["source"], "api");
    assert_eq!(
        get(&gw, "/files/a.txt").await,
        (200, "from the api\n".into())
    );
    // The same again changes nothing; a handler may not take the route.
    let (status, _) = statics(&gw, put.clone(), "/files", ROOT, Some(site_json)).await;
    assert_eq!(status, 200);
    let hello = std::fs::read(components::require(components::HELLO)).expect("hello");
    let (status, body) =
        common::put_component(&gw.admin, ROOT, ("demo", "h", "/files"), hello).await;
    assert_eq!(status, 409, "{body}");

    // Stored: a restart serves it too.
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    gw = serve(&dir);
    assert_eq!(get(&gw, "/files/a.txt").await.0, 200);

    // The command line removes it.
    cli(
        &gw,
        &dir,
        &["delete", "--tenant", "demo", "--route", "/files"],
    );
    assert_eq!(get(&gw, "/files/a.txt").await.0, 404);
    let (status, answer) = statics(&gw, delete, "/files", ROOT, None).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));
    // And mounts again, from a relative path made absolute.
    cli(
        &gw,
        &dir,
        &["put", "site", "--tenant", "demo", "--route", "/files"],
    );
    assert_eq!(get(&gw, "/files/a.txt").await.0, 200);
}
