//! The rule between the config file and the admin API, as a user sees it:
//! a reload says what it did not apply and why, `GET /admin/tenants` says
//! where each tenant's settings come from, and `follow-config` hands a
//! tenant back to the file without losing its handlers.

mod common;

use common::Served;
use serde_json::{Value, json};
use wasmgate_handler_components as components;

const ROOT: &str = "root-secret-for-reload-tests";

/// `method` on the admin API with the root token and `body` as JSON (or
/// none): status and JSON answer (`null` for none).
async fn admin(gw: &Served, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let url = format!("{}/admin/{path}", gw.admin);
    common::admin_json(method, &url, ROOT, body).await
}

fn dev(list: &Value) -> &Value {
    list["tenants"]
        .as_array()
        .and_then(|tenants| tenants.iter().find(|t| t["name"] == "dev"))
        .expect("tenant dev listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_says_what_the_api_keeps_and_follow_config_hands_a_tenant_back() {
    let dir = common::scratch("reload-rule");
    let text = format!(
        "[[tenant]]\nname = \"dev\"\nlimits = {{ fuel = 2000000000 }}\n\n\
         [[tenant.handler]]\nname = \"hello\"\nroute = \"/hello\"\ncomponent = \"{}\"\n",
        components::require(components::HELLO)
    );
    let mut command = common::serve_config(&dir, &text);
    command.env("WASMGATE_ADMIN_TOKEN", ROOT);
    let gw = Served::spawn(&mut command);

    // A reload with nothing set through the API says nothing more.
    let (status, answer) = admin(&gw, "POST", "reload", None).await;
    assert_eq!((status, answer), (200, json!({"reloaded": true})));

    let (status, _) = admin(
        &gw,
        "PUT",
        "tenants/dev",
        Some(json!({"limits": {"fuel": 5000}})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, list) = admin(&gw, "GET", "tenants", None).await;
    assert_eq!(dev(&list)["source"], "api");
    assert_eq!(dev(&list)["limits"]["fuel"], 5000);

    // The file's fuel is not applied, and the answer says so and how.
    let (status, answer) = admin(&gw, "POST", "reload", None).await;
    assert_eq!(status, 200, "{answer}");
    let not_applied = answer["not_applied"].as_array().expect("not_applied");
    assert_eq!(not_applied.len(), 1, "{answer}");
    let note = not_applied[0].as_str().expect("a sentence");
    assert!(
        note.contains("tenant \"dev\"") && note.contains("POST /admin/tenants/dev/follow-config"),
        "{note}"
    );

    // A version deployed over the file's handler keeps serving too, and
    // the reload says so.
    let hello = std::fs::read(components::require(components::HELLO)).expect("hello");
    let (status, body) =
        common::put_component(&gw.admin, ROOT, ("dev", "hello", "/hi"), hello).await;
    assert_eq!(status, 200, "{body}");
    let (_, answer) = admin(&gw, "POST", "reload", None).await;
    let notes = answer["not_applied"].to_string();
    assert!(
        notes.contains("handler \\\"hello\\\": version 2 was deployed through the admin API"),
        "{notes}"
    );

    // Handed back: the file's settings, the handler still serving.
    let (status, view) = admin(&gw, "POST", "tenants/dev/follow-config", None).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["source"], "config");
    assert_eq!(view["limits"]["fuel"], 2_000_000_000_u64);
    assert_eq!(view["handlers"], json!(["hello"]));
    let response = reqwest::get(format!("{}/hi", gw.url)).await.expect("get");
    assert_eq!(response.status().as_u16(), 200);
    let (_, answer) = admin(&gw, "POST", "reload", None).await;
    assert_eq!(answer["not_applied"].as_array().map(Vec::len), Some(1));

    // A tenant the file does not name has nothing to follow.
    let (status, _) = admin(&gw, "PUT", "tenants/other", Some(json!({}))).await;
    assert_eq!(status, 201);
    let (status, answer) = admin(&gw, "POST", "tenants/other/follow-config", None).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], "not_in_config");
    // No such tenant.
    let (status, _) = admin(&gw, "POST", "tenants/nobody/follow-config", None).await;
    assert_eq!(status, 404);
}
