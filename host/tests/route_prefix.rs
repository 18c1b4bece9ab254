//! A handler deployed under a route prefix matches paths relative to it:
//! the gateway tells the guest its route in `x-wasmgate-route` (a client's
//! own header of that name never reaches the guest), and the SDK's router
//! matches the path below it. The `router` example deployed with
//! `wasmgate deploy --route /api` answers `/api/users`, and its 404 names
//! the path no pattern matched.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, Served, serve_command};
use wasmgate::request::gateway::ROUTE_HEADER;
use wasmgate_handler_components as components;

const ROOT: &str = "root-secret-for-route-prefix-tests";

/// A running `wasmgate serve` with the root token [`ROOT`] and one tenant,
/// `demo`, with no handlers; its data in a fresh folder named `name`.
fn serve(name: &str) -> Served {
    let dir: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("route-prefix-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    let config = dir.join("wasmgate.toml");
    let text = "[runtime]\nworkers = 1\n\n[[tenant]]\nname = \"demo\"\nhosts = [\"*\"]\n";
    std::fs::write(&config, text).expect("write config");
    Served::spawn(
        serve_command()
            .arg("--config")
            .arg(&config)
            .env("WASMGATE_ADMIN_TOKEN", ROOT),
    )
}

/// `wasmgate deploy` of the `router` example as `demo/NAME` at `route`.
fn deploy(gw: &Served, name: &str, route: &str) {
    let router = components::require(components::ROUTER);
    let output = Command::new(BIN)
        .args(["deploy", router, "--tenant", "demo", "--name", name])
        .args(["--route", route, "--admin", &gw.admin])
        .env("WASMGATE_ADMIN_TOKEN", ROOT)
        .env_remove("WASMGATE_ADMIN_URL")
        .output()
        .expect("run wasmgate deploy");
    assert!(
        output.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `GET path` with `headers`: status and body.
async fn get(gw: &Served, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", gw.url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn a_router_deployed_under_a_prefix_matches_the_paths_below_it() {
    let gw = serve("api");
    deploy(&gw, "api", "/api");
    assert_eq!(
        get(&gw, "/api/users", &[]).await,
        (200, "alice\nbob\n".to_owned())
    );
    assert_eq!(
        get(&gw, "/api/users/7?x=1", &[]).await,
        (200, "user 7\n".to_owned())
    );
    assert_eq!(
        get(&gw, "/api/where", &[]).await,
        (
            200,
            "path: /api/where\nrelative: /where\nroute: /api\n".to_owned()
        )
    );
    // The same component works at any route.
    deploy(&gw, "v2", "/v2");
    assert_eq!(
        get(&gw, "/v2/users", &[]).await,
        (200, "alice\nbob\n".to_owned())
    );
    assert_eq!(get(&gw, "/api/users", &[]).await.0, 200);
}

#[tokio::test]
async fn the_routers_404_names_the_path_no_pattern_matched() {
    let gw = serve("not-found");
    deploy(&gw, "api", "/api");
    let (status, body) = get(&gw, "/api/nope", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        "not found: no route of this handler matches \"/nope\" \
         (the path \"/api/nope\" below the route \"/api\")\n"
    );
    // The route itself is `/` below it, which no pattern of the example
    // matches.
    let (status, body) = get(&gw, "/api", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("matches \"/\""), "{body}");
}

#[tokio::test]
async fn a_client_cannot_change_the_route_a_guest_sees() {
    let gw = serve("spoof");
    deploy(&gw, "api", "/api");
    // Each would change the match if the guest saw it: `/` strips nothing,
    // `/api/users` leaves `/`.
    for spoofed in ["/", "/api/users", "/other"] {
        let header = [(ROUTE_HEADER, spoofed)];
        assert_eq!(
            get(&gw, "/api/users", &header).await,
            (200, "alice\nbob\n".to_owned()),
            "{ROUTE_HEADER}: {spoofed}"
        );
        assert_eq!(
            get(&gw, "/api/where", &header).await.1,
            "path: /api/where\nrelative: /where\nroute: /api\n",
            "{ROUTE_HEADER}: {spoofed}"
        );
    }
    // Sent twice, or in another case, it is still the gateway's.
    let twice = [(ROUTE_HEADER, "/"), ("X-Wasmgate-Route", "/api/where")];
    assert_eq!(
        get(&gw, "/api/where", &twice).await.1,
        "path: /api/where\nrelative: /where\nroute: /api\n"
    );
}
