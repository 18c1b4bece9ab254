//! `wasmgate deploy`, `list` and `rollback` against a real `wasmgate
//! serve`: what they print, their exit codes, and that what they deploy
//! serves; every mistake is one line on stderr and exit code 1.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{BIN, Served};
use serde_json::Value;
use wasmgate::cli::print::format_size;
use wasmgate::digest::sha256_hex;
use wasmgate_handler_components as components;

const ROOT: &str = "root-secret-for-deploy-tests";

/// A running `wasmgate serve` with the root token `ROOT`, killed on drop.
struct Gateway(Served);

impl std::ops::Deref for Gateway {
    type Target = Served;

    fn deref(&self) -> &Served {
        &self.0
    }
}

impl Gateway {
    /// `demo` on every host with hello at /hello.
    fn start(dir: &Path) -> Self {
        let text = format!(
            "[runtime]\nworkers = 1\n\n[[tenant]]\nname = \"demo\"\nhosts = [\"*\"]\n\n\
             [[tenant.handler]]\nname = \"hello\"\nroute = \"/hello\"\ncomponent = \"{}\"\n",
            components::require(components::HELLO)
        );
        let mut command = common::serve_config(dir, &text);
        command.env("WASMGATE_ADMIN_TOKEN", ROOT);
        Self(Served::spawn(&mut command))
    }

    /// `wasmgate ARGS --admin <this gateway>` with `token` in the
    /// environment (none: unset).
    fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .args(["--admin", &self.admin])
            .env_remove("WASMGATE_ADMIN_TOKEN")
            .env_remove("WASMGATE_ADMIN_URL");
        if let Some(token) = token {
            command.env("WASMGATE_ADMIN_TOKEN", token);
        }
        command.output().expect("run wasmgate")
    }

    /// `wasmgate deploy FILE --tenant demo --name greet EXTRA...` with the
    /// root token.
    fn deploy_greet(&self, file: &str, extra: &[&str]) -> Output {
        let mut args = vec!["deploy", file, "--tenant", "demo", "--name", "greet"];
        args.extend(extra);
        self.cli(Some(ROOT), &args)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("{}{path}", self.url))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }
}

/// The command succeeded and printed `stdout` and nothing on stderr.
fn succeeded(output: &Output) -> String {
    let (stdout, stderr) = texts(output);
    assert!(
        output.status.success(),
        "{:?}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    assert_eq!(stderr, "", "nothing on stderr");
    stdout
}

/// The command failed with exit code 1, printed nothing on stdout and one
/// line on stderr, which is returned without its newline.
fn failed(output: &Output) -> String {
    let (stdout, stderr) = texts(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stdout, "", "nothing on stdout");
    let line = stderr
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("a line: {stderr:?}"));
    assert!(!line.contains('\n'), "one line: {stderr}");
    line.to_owned()
}

fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8(output.stdout.clone()).expect("utf-8 stdout"),
        String::from_utf8(output.stderr.clone()).expect("utf-8 stderr"),
    )
}

/// A component's path and bytes.
type ComponentFile = (&'static str, Vec<u8>);

/// The `hello` and `echo` components.
fn hello_and_echo() -> (ComponentFile, ComponentFile) {
    let read = |path: &'static str| (path, std::fs::read(path).expect("read a component"));
    (
        read(components::require(components::HELLO)),
        read(components::require(components::ECHO)),
    )
}

/// What `deploy` prints for `component` deployed as demo/greet.
fn deployed_line(component: &[u8], version: u64, outcome: &str) -> String {
    format!(
        "deployed demo/greet version {version} (sha256 {}, {}) at /greet: {outcome}\n",
        &sha256_hex(component)[..12],
        format_size(component.len() as u64)
    )
}

/// `deploy --config` and `--unset` change the handler's config strings in
/// the version that brings the component: one version per deploy.
#[tokio::test]
async fn deploy_sends_the_component_and_its_config_in_one_version() {
    let dir = common::scratch("deploy-config");
    let gw = Gateway::start(&dir);
    let ((hello_path, hello), (echo_path, echo)) = hello_and_echo();
    let deploy = |file: &str, extra: &[&str]| gw.deploy_greet(file, extra);
    let line = |component: &[u8], version: u64, config: &str, outcome: &str| {
        deployed_line(component, version, outcome)
            .replace(" at /greet:", &format!(" at /greet, config {config}:"))
    };

    // Non-ASCII travels too (the header escapes it).
    let first = deploy(
        hello_path,
        &[
            "--route",
            "/greet",
            "--config",
            "greeting=h\u{e9}",
            "--config",
            "extra=1",
        ],
    );
    let expected = line(&hello, 1, "extra=1,greeting=h\u{e9}", "created");
    assert_eq!(succeeded(&first), expected);
    assert_eq!(
        gw.get("/greet").await,
        (200, "h\u{e9} from wasmgate: hello\n".to_owned())
    );
    let again = deploy(hello_path, &["--config", "greeting=h\u{e9}"]);
    let expected = line(&hello, 1, "extra=1,greeting=h\u{e9}", "unchanged");
    assert_eq!(succeeded(&again), expected);

    // New bytes with a config string taken away; the other stays.
    let second = deploy(echo_path, &["--unset", "extra"]);
    assert_eq!(
        succeeded(&second),
        line(&echo, 2, "greeting=h\u{e9}", "replaced")
    );
    let third = deploy(hello_path, &["--config", "greeting=hey"]);
    assert_eq!(
        succeeded(&third),
        line(&hello, 3, "greeting=hey", "replaced")
    );
    assert_eq!(gw.get("/greet").await.1, "hey from wasmgate: hello\n");
    let stdout = succeeded(&gw.cli(Some(ROOT), &["list", "--tenant", "demo"]));
    assert!(
        stdout
            .lines()
            .any(|row| row.starts_with("greet  /greet  3 ")),
        "three deploys, three versions: {stdout}"
    );
}

#[tokio::test]
async fn deploy_list_and_rollback_drive_a_running_gateway() {
    let dir = common::scratch("deploy-lifecycle");
    let gw = Gateway::start(&dir);
    let ((hello_path, hello), (echo_path, echo)) = hello_and_echo();
    let deploy = |file: &str, route: Option<&str>| match route {
        Some(route) => gw.deploy_greet(file, &["--route", route]),
        None => gw.deploy_greet(file, &[]),
    };

    assert_eq!(gw.get("/greet").await.0, 404);
    let stdout = succeeded(&deploy(hello_path, Some("/greet")));
    assert_eq!(stdout, deployed_line(&hello, 1, "created"));
    assert_eq!(
        gw.get("/greet").await,
        (200, "hello from wasmgate\n".to_owned())
    );

    let stdout = succeeded(&deploy(hello_path, Some("/greet")));
    assert_eq!(stdout, deployed_line(&hello, 1, "unchanged"));

    // Without --route a handler keeps its route.
    let stdout = succeeded(&deploy(echo_path, None));
    assert_eq!(stdout, deployed_line(&echo, 2, "replaced"));
    assert_eq!(gw.get("/greet").await.0, 204, "echo: an empty GET is 204");

    let stdout = succeeded(&gw.cli(Some(ROOT), &["list", "--tenant", "demo"]));
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAME", "ROUTE", "VERSION", "SHA256", "SIZE", "SOURCE", "CREATED"
        ]
    );
    assert_eq!(rows.len(), 3, "{stdout}");
    let echo_size = format_size(echo.len() as u64);
    let hello_size = format_size(hello.len() as u64);
    let expected = [
        format!(
            "greet /greet 2 {} {echo_size} api",
            &sha256_hex(&echo)[..12]
        ),
        format!(
            "hello /hello 1 {} {hello_size} config",
            &sha256_hex(&hello)[..12]
        ),
    ];
    for (row, expected) in rows[1..].iter().zip(expected) {
        let (columns, date) = row.split_at(row.len() - 3);
        assert_eq!(columns.join(" "), expected, "{stdout}");
        assert!(date[0].len() == 10 && date[0].starts_with("20"), "{stdout}");
        assert_eq!(date[2], "UTC", "{stdout}");
    }

    let rollback = gw.cli(
        Some(ROOT),
        &["rollback", "--tenant", "demo", "--name", "greet"],
    );
    let expected = format!(
        "rolled back demo/greet: version 1 (sha256 {}, {hello_size}) serves at /greet\n",
        &sha256_hex(&hello)[..12]
    );
    assert_eq!(succeeded(&rollback), expected);
    assert_eq!(gw.get("/greet").await.1, "hello from wasmgate\n");

    // --json: the gateway's JSON on stdout, the summary on stderr.
    let rollback = gw.cli(
        Some(ROOT),
        &[
            "rollback",
            "--tenant",
            "demo",
            "--name",
            "greet",
            "--version",
            "2",
            "--json",
        ],
    );
    assert!(rollback.status.success());
    let (stdout, stderr) = texts(&rollback);
    let json: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(json["version"], 2);
    assert_eq!(json["sha256"], sha256_hex(&echo));
    assert_eq!(json["versions"].as_array().map(Vec::len), Some(2), "{json}");
    assert!(
        stderr.starts_with("rolled back demo/greet: version 2 "),
        "{stderr}"
    );
    assert_eq!(gw.get("/greet").await.0, 204);

    let list = gw.cli(Some(ROOT), &["list", "--tenant", "demo", "--json"]);
    let json: Value = serde_json::from_slice(&list.stdout).expect("JSON on stdout");
    assert_eq!(json["tenant"], "demo");
    let names: Vec<&str> = json["handlers"]
        .as_array()
        .expect("handlers")
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert_eq!(names, ["greet", "hello"]);

    // The URL can come from the environment.
    let from_env = Command::new(BIN)
        .args(["list", "--tenant", "demo"])
        .env("WASMGATE_ADMIN_TOKEN", ROOT)
        .env("WASMGATE_ADMIN_URL", &gw.admin)
        .output()
        .expect("run wasmgate");
    assert!(succeeded(&from_env).starts_with("NAME "));
}

#[tokio::test]
async fn every_mistake_is_one_line_and_exit_code_1_and_changes_nothing() {
    let dir = common::scratch("deploy-mistakes");
    let gw = Gateway::start(&dir);
    let hello = components::require(components::HELLO);
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm but not really").expect("write garbage");
    let garbage = garbage.to_str().expect("utf-8 path");
    let missing = dir.join("missing.wasm");
    let missing = missing.to_str().expect("utf-8 path");
    let before = succeeded(&gw.cli(Some(ROOT), &["list", "--tenant", "demo"]));

    let line = failed(&gw.cli(None, &["list", "--tenant", "demo"]));
    assert_eq!(
        line,
        "error: no admin token: set WASMGATE_ADMIN_TOKEN to the gateway's root token \
         (or to the tenant's token)"
    );
    let line = failed(&gw.cli(Some("wrong"), &["list", "--tenant", "demo"]));
    assert!(line.starts_with("error: 403 forbidden: "), "{line}");

    let deploy = |file: &str, name: &str, route: Option<&str>| {
        let mut args = vec!["deploy", file, "--tenant", "demo", "--name", name];
        args.extend(route.iter().flat_map(|r| ["--route", r]));
        gw.cli(Some(ROOT), &args)
    };
    let line = failed(&deploy(garbage, "hello", None));
    assert!(
        line.starts_with(r#"error: 400 invalid_component: tenant "demo" handler "hello": "#),
        "{line}"
    );
    let line = failed(&deploy(missing, "x", Some("/x")));
    assert!(
        line.starts_with(&format!("error: cannot read {missing}: ")),
        "{line}"
    );
    let line = failed(&deploy(hello, "new", None));
    assert_eq!(
        line,
        "error: demo/new is a new handler: give it a route with --route /path"
    );
    let line = failed(&deploy(hello, "other", Some("/hello")));
    assert!(line.starts_with("error: 409 route_taken: "), "{line}");
    let line = failed(&gw.cli(
        Some(ROOT),
        &[
            "rollback",
            "--tenant",
            "demo",
            "--name",
            "hello",
            "--version",
            "9",
        ],
    ));
    assert!(line.starts_with("error: 404 not_found: "), "{line}");
    let line = failed(&gw.cli(Some(ROOT), &["list", "--tenant", "nobody"]));
    assert_eq!(line, r#"error: 404 not_found: no tenant "nobody""#);

    // Pointed at the wrong place.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let wrong_place = |url: &str| {
        Command::new(BIN)
            .args(["list", "--tenant", "demo", "--admin", url])
            .env("WASMGATE_ADMIN_TOKEN", ROOT)
            .output()
            .expect("run wasmgate")
    };
    let line = failed(&wrong_place(&closed_url));
    assert!(
        line.starts_with(&format!(
            "error: cannot reach the admin API at {closed_url}: "
        )),
        "{line}"
    );
    assert!(line.contains("is `wasmgate serve` running?"), "{line}");
    let line = failed(&wrong_place(&gw.url));
    assert!(
        line.starts_with(&format!(
            "error: {} answered 404 with something other than the admin API's JSON",
            gw.url
        )),
        "{line}"
    );
    let line = failed(&wrong_place("https://127.0.0.1:1"));
    assert!(line.starts_with("error: invalid admin URL"), "{line}");

    // Nothing changed.
    assert_eq!(
        succeeded(&gw.cli(Some(ROOT), &["list", "--tenant", "demo"])),
        before
    );
    assert_eq!(
        gw.get("/hello").await,
        (200, "hello from wasmgate\n".to_owned())
    );
}

/// Columns of each line of a table.
fn table_rows(stdout: &str) -> Vec<Vec<&str>> {
    stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect()
}

#[tokio::test]
async fn patch_delete_tenant_and_reload_do_what_the_admin_api_does() {
    let dir = common::scratch("deploy-admin-commands");
    let gw = Gateway::start(&dir);
    let hello = components::require(components::HELLO);

    // `list` without --tenant lists the tenants.
    let stdout = succeeded(&gw.cli(Some(ROOT), &["list"]));
    assert_eq!(
        table_rows(&stdout),
        [
            vec![
                "NAME",
                "HOSTS",
                "SOURCE",
                "HANDLERS",
                "CPU_WEIGHT",
                "LIMITS"
            ],
            vec!["demo", "*", "config", "1", "1", "-"],
        ]
    );

    let put = |args: &[&str]| {
        let mut all = vec!["tenant", "put", "shop"];
        all.extend(args);
        gw.cli(Some(ROOT), &all)
    };
    assert_eq!(
        succeeded(&put(&["--host", "shop.test", "--fuel", "5000"])),
        "created tenant shop: hosts shop.test, cpu_weight 1, limits fuel=5000\n"
    );
    // What is not given keeps its value.
    assert_eq!(
        succeeded(&put(&["--cpu-weight", "2", "--timeout-ms", "700"])),
        "updated tenant shop: hosts shop.test, cpu_weight 2, limits fuel=5000,timeout_ms=700\n"
    );
    let output = put(&["--limits", "{}", "--json"]);
    assert!(output.status.success());
    let (stdout, stderr) = texts(&output);
    let json: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(json["name"], "shop");
    assert_eq!(json["cpu_weight"], 2);
    assert_eq!(json["limits"]["fuel"], Value::Null, "{json}");
    assert_eq!(
        stderr,
        "updated tenant shop: hosts shop.test, cpu_weight 2, limits -\n"
    );
    let line = failed(&put(&["--limits", "{\"fuell\": 1}"]));
    assert!(
        line.starts_with("error: --limits {\"fuell\": 1}: "),
        "{line}"
    );
    assert!(line.contains("unknown field `fuell`"), "{line}");
    let line = failed(&put(&["--memory-bytes", "1"]));
    assert!(line.starts_with("error: 400 "), "{line}");

    let stdout = succeeded(&gw.cli(Some(ROOT), &["tenant", "list"]));
    assert_eq!(
        table_rows(&stdout)[1..],
        [
            vec!["demo", "*", "config", "1", "1", "-"],
            vec!["shop", "shop.test", "api", "0", "2", "-"],
        ]
    );
    let list = gw.cli(Some(ROOT), &["list", "--json"]);
    let json: Value = serde_json::from_slice(&list.stdout).expect("JSON on stdout");
    let names: Vec<&str> = json["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["demo", "shop"]);

    // `delete` removes a handler; deleting it again is a one-line 404.
    succeeded(&gw.cli(
        Some(ROOT),
        &[
            "deploy", hello, "--tenant", "demo", "--name", "greet", "--route", "/greet",
        ],
    ));
    assert_eq!(gw.get("/greet").await.0, 200);

    // `patch` sets and removes config strings, keeping the others, and
    // moves the route.
    let patch = |args: &[&str]| {
        let mut all = vec!["patch", "--tenant", "demo", "--name", "greet"];
        all.extend(args);
        gw.cli(Some(ROOT), &all)
    };
    assert_eq!(
        succeeded(&patch(&["--config", "greeting=hey", "--config", "x=1"])),
        "patched demo/greet version 2 at /greet, config greeting=hey,x=1: replaced\n"
    );
    assert_eq!(
        gw.get("/greet").await,
        (200, "hey from wasmgate: hello\n".to_owned())
    );
    assert_eq!(
        succeeded(&patch(&["--unset", "x", "--route", "/greet2"])),
        "patched demo/greet version 3 at /greet2, config greeting=hey: replaced\n"
    );
    assert_eq!(gw.get("/greet2").await.0, 200);
    let line = failed(&patch(&[]));
    assert_eq!(
        line,
        "error: nothing to change: give --route, --config KEY=VALUE or --unset KEY"
    );
    let output = patch(&["--route", "/greet", "--json"]);
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "{stderr}");
    let json: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(json["route"], "/greet");
    assert_eq!(json["config"]["greeting"], "hey");

    let delete = ["delete", "--tenant", "demo", "--name", "greet"];
    assert_eq!(
        succeeded(&gw.cli(Some(ROOT), &delete)),
        "deleted demo/greet\n"
    );
    assert_eq!(gw.get("/greet").await.0, 404);
    let line = failed(&gw.cli(Some(ROOT), &delete));
    assert!(line.starts_with("error: 404 not_found: "), "{line}");
    succeeded(&gw.cli(
        Some(ROOT),
        &[
            "deploy", hello, "--tenant", "shop", "--name", "h", "--route", "/h",
        ],
    ));
    let output = gw.cli(
        Some(ROOT),
        &["delete", "--tenant", "shop", "--name", "h", "--json"],
    );
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "{stderr}");
    let json: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(
        json,
        serde_json::json!({"deleted": true, "tenant": "shop", "handler": "h"})
    );
    assert_eq!(stderr, "deleted shop/h\n");

    // Tenants are the root's: a tenant token may not delete one.
    let line = failed(&gw.cli(Some("not-a-token"), &["tenant", "delete", "shop"]));
    assert!(line.starts_with("error: 403 forbidden: "), "{line}");
    assert_eq!(
        succeeded(&gw.cli(Some(ROOT), &["tenant", "delete", "shop"])),
        "deleted tenant shop\n"
    );
    let stdout = succeeded(&gw.cli(Some(ROOT), &["list"]));
    assert_eq!(table_rows(&stdout).len(), 2, "{stdout}");
    let line = failed(&gw.cli(Some(ROOT), &["tenant", "delete", "shop"]));
    assert!(line.starts_with("error: 404 not_found: "), "{line}");

    assert_eq!(
        succeeded(&gw.cli(Some(ROOT), &["reload"])),
        "reloaded the config file\n"
    );
    let output = gw.cli(Some(ROOT), &["reload", "--json"]);
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "{stderr}");
    let json: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(json["reloaded"], true, "{json}");
    assert_eq!(gw.get("/hello").await.0, 200);
}
