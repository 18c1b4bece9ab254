//! Admin API answers and log lines that tell the user what happened and
//! what to do, against the real `wasmgate serve` process: which token
//! mistake a 403 is, a disabled API said at start with advice that works,
//! an empty upload named as such, a rollback answered as one, and writes
//! logged with the sha256 that serves after them.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Served;
use serde_json::Value;
use wasmgate_handler_components as components;

const ROOT: &str = "root-secret-for-error-tests";
const DEMO: &str = "demo-secret-for-error-tests";
const OTHER: &str = "other-secret-for-error-tests";

/// `demo` and `other`, each with a token of its own.
const TWO_TENANTS: &str = r#"
[[tenant]]
name = "demo"
hosts = ["*"]
token_env = "DEMO_TOKEN_FOR_ERROR_TESTS"

[[tenant]]
name = "other"
hosts = ["other.test"]
token_env = "OTHER_TOKEN_FOR_ERROR_TESTS"
"#;

/// A `wasmgate serve` whose JSON log lines are collected as they come.
struct Gateway {
    served: Served,
    log: Arc<Mutex<Vec<Value>>>,
    client: reqwest::Client,
}

impl Gateway {
    /// Serves `config` (written in `dir`) with the tenants' tokens set and
    /// the root token in `WASMGATE_ADMIN_TOKEN` when `root` is.
    async fn start(dir: &Path, config: &str, root: Option<&str>) -> Self {
        let mut command = common::serve_config(dir, config);
        command
            .args(["--log-format", "json"])
            .env("DEMO_TOKEN_FOR_ERROR_TESTS", DEMO)
            .env("OTHER_TOKEN_FOR_ERROR_TESTS", OTHER)
            .env_remove("WASMGATE_ADMIN_TOKEN")
            .stderr(std::process::Stdio::piped());
        if let Some(root) = root {
            command.env("WASMGATE_ADMIN_TOKEN", root);
        }
        let mut served = tokio::task::spawn_blocking(move || Served::spawn(&mut command))
            .await
            .expect("startup lines");
        // What it logged before it was ready waits in the pipe.
        let stderr = served.child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                lines.lock().expect("log").push(value);
            }
        });
        Self {
            served,
            log,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    /// An admin request with `token` (none: no `Authorization` header):
    /// status and JSON body.
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.served.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(body);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The log lines so far whose `message` is `message`.
    fn logged(&self, message: &str) -> Vec<Value> {
        let log = self.log.lock().expect("log");
        log.iter()
            .filter(|line| line["message"] == message)
            .cloned()
            .collect()
    }

    /// Waits until `count` lines say `message`, and returns them.
    async fn wait_logged(&self, message: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.logged(message);
            if lines.len() >= count || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn component(path: &str) -> Vec<u8> {
    std::fs::read(components::require(path)).expect("read component")
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_says_whether_it_is_unknown_or_another_tenants() {
    let dir = common::scratch("admin-errors-tokens");
    let gw = Gateway::start(&dir, TWO_TENANTS, Some(ROOT)).await;
    let get = reqwest::Method::GET;
    let (status, body) = gw
        .admin(
            get.clone(),
            "/admin/tenants/demo/handlers",
            Some("wrong"),
            None,
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    assert!(message(&body).starts_with("not a known token"), "{body}");
    assert!(message(&body).contains("$WASMGATE_ADMIN_TOKEN"), "{body}");

    let (status, body) = gw
        .admin(
            get.clone(),
            "/admin/tenants/other/handlers",
            Some(DEMO),
            None,
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(
        message(&body),
        r#"this token belongs to tenant "demo", not "other""#
    );

    let (status, body) = gw
        .admin(get.clone(), "/admin/tenants", Some(OTHER), None)
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(
        message(&body),
        r#"this token belongs to tenant "other"; only the root token may do that"#
    );

    // The tenant's own token still works; no answer ever shows a token.
    let (status, _) = gw
        .admin(get, "/admin/tenants/demo/handlers", Some(DEMO), None)
        .await;
    assert_eq!(status, 200);
    let log = format!("{:?}", gw.log.lock().expect("log"));
    for secret in [ROOT, DEMO, OTHER] {
        assert!(!log.contains(secret), "a token was logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_root_token_the_start_says_so_once_and_the_403_gives_the_same_advice() {
    let dir = common::scratch("admin-errors-disabled");
    let config = format!("[admin]\ntoken_env = \"MY_GATEWAY_TOKEN_UNSET\"\n{TWO_TENANTS}");
    let gw = Gateway::start(&dir, &config, None).await;
    for _ in 0..3 {
        let (status, body) = gw
            .admin(reqwest::Method::GET, "/admin/tenants", Some(ROOT), None)
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("admin_disabled"))
        );
        let said = message(&body);
        assert!(
            said.contains("export MY_GATEWAY_TOKEN_UNSET=<token>")
                && said.contains("`wasmgate serve`"),
            "{said}"
        );
        assert!(
            said.contains("SIGHUP cannot pick up a variable exported in another shell"),
            "{said}"
        );
        assert!(!said.contains("or send SIGHUP"), "{said}");
    }
    let (_, body) = gw
        .admin(reqwest::Method::GET, "/admin/tenants", None, None)
        .await;
    let advice = message(&body).to_owned();
    let warned: Vec<Value> = gw
        .log
        .lock()
        .expect("log")
        .iter()
        .filter(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.contains("disabled"))
        })
        .cloned()
        .collect();
    assert_eq!(warned.len(), 1, "one line, at start: {warned:?}");
    assert_eq!(warned[0]["level"], "WARN");
    assert_eq!(warned[0]["message"], advice.as_str(), "the same advice");
    assert!(advice.starts_with("the admin API is disabled"), "{advice}");

    // With the token set, nothing is said.
    let dir = common::scratch("admin-errors-enabled");
    let gw = Gateway::start(&dir, TWO_TENANTS, Some(ROOT)).await;
    let (status, _) = gw
        .admin(reqwest::Method::GET, "/admin/tenants", Some(ROOT), None)
        .await;
    assert_eq!(status, 200);
    let log = gw.log.lock().expect("log");
    assert!(
        !log.iter().any(|l| l["level"] == "WARN"),
        "no warning: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_upload_is_named_as_such() {
    let dir = common::scratch("admin-errors-empty");
    let gw = Gateway::start(&dir, TWO_TENANTS, Some(ROOT)).await;
    // What `curl --data-binary @wrong/path.wasm` sends.
    let (status, body) = gw
        .admin(
            reqwest::Method::PUT,
            "/admin/tenants/demo/handlers/greet?route=/greet",
            Some(ROOT),
            Some(("application/wasm", Vec::new())),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_component"))
    );
    assert!(
        message(&body).starts_with("empty body (0 bytes): "),
        "{body}"
    );
    assert!(message(&body).contains("--data-binary @"), "{body}");
    let (status, _) = gw
        .admin(
            reqwest::Method::GET,
            "/admin/tenants/demo/handlers/greet",
            Some(ROOT),
            None,
        )
        .await;
    assert_eq!(status, 404, "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_says_rolled_back_and_writes_log_the_sha256_that_serves() {
    let dir = common::scratch("admin-errors-rollback");
    let gw = Gateway::start(&dir, TWO_TENANTS, Some(ROOT)).await;
    let path = "/admin/tenants/demo/handlers/greet";
    let put = |wasm: Vec<u8>| {
        gw.admin(
            reqwest::Method::PUT,
            "/admin/tenants/demo/handlers/greet?route=/greet",
            Some(DEMO),
            Some(("application/wasm", wasm)),
        )
    };
    let (status, v1) = put(component(components::HELLO)).await;
    assert_eq!(status, 201, "{v1}");
    let (status, v2) = put(component(components::ECHO)).await;
    assert_eq!((status, v2["result"].as_str()), (200, Some("replaced")));
    let (hello, echo) = (v1["sha256"].clone(), v2["sha256"].clone());

    let (status, patched) = gw
        .admin(
            reqwest::Method::PATCH,
            path,
            Some(DEMO),
            Some(("application/json", br#"{"config": {"a": "b"}}"#.to_vec())),
        )
        .await;
    assert_eq!(
        (status, patched["result"].as_str()),
        (200, Some("replaced"))
    );
    let rollback_to_1 = || {
        gw.admin(
            reqwest::Method::POST,
            "/admin/tenants/demo/handlers/greet/rollback?version=1",
            Some(DEMO),
            None,
        )
    };
    let (status, rolled) = rollback_to_1().await;
    let answered = (
        status,
        rolled["result"].as_str(),
        rolled["version"].as_u64(),
    );
    assert_eq!(answered, (200, Some("rolled_back"), Some(1)));
    let (status, again) = rollback_to_1().await;
    assert_eq!((status, again["result"].as_str()), (200, Some("unchanged")));

    let writes = gw.wait_logged("admin write", 5).await;
    let logged: Vec<(&str, &Value)> = writes
        .iter()
        .map(|w| (w["operation"].as_str().unwrap_or(""), &w["sha256"]))
        .collect();
    assert_eq!(
        logged,
        [
            ("put_handler", &hello),
            ("put_handler", &echo),
            ("patch_handler", &echo),
            ("rollback", &hello),
            ("rollback", &hello),
        ],
        "{writes:?}"
    );
}
