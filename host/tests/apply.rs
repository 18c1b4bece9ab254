//! `wasmgate apply` against a real `wasmgate serve`: it creates what a
//! file lists, a second apply changes nothing (no new versions), an edited
//! file changes only what differs, `--prune` deletes what the file no
//! longer lists, and a bad file or component fails before any write.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{BIN, Served};
use serde_json::Value;
use wasmgate_handler_components as components;

const ROOT: &str = "root-secret-for-apply-tests";

/// A `wasmgate serve` with no tenants of its own and the root token
/// `ROOT`, killed on drop.
struct Gateway(Served);

impl Gateway {
    fn start(dir: &Path) -> Self {
        let mut command = common::serve_config(dir, "[runtime]\nworkers = 1\n");
        command.env("WASMGATE_ADMIN_TOKEN", ROOT);
        Self(Served::spawn(&mut command))
    }

    /// `wasmgate apply FILE [EXTRA]` against this gateway.
    fn apply(&self, file: &Path, extra: &[&str]) -> Output {
        Command::new(BIN)
            .arg("apply")
            .arg(file)
            .args(extra)
            .args(["--admin", &self.0.admin])
            .env("WASMGATE_ADMIN_TOKEN", ROOT)
            .env_remove("WASMGATE_ADMIN_URL")
            .output()
            .expect("run wasmgate apply")
    }

    /// The admin API's answer to GET `path`.
    async fn admin(&self, path: &str) -> Value {
        let url = format!("{}/admin/{path}", self.0.admin);
        let (status, json) = common::admin_json(reqwest::Method::GET, &url, ROOT, None).await;
        assert_eq!(status, 200, "GET {path}: {json}");
        json
    }

    /// Each handler of `tenant`: name, route, version, config.
    async fn handlers(&self, tenant: &str) -> Vec<(String, String, u64, Value)> {
        let list = self.admin(&format!("tenants/{tenant}/handlers")).await;
        let handlers = list["handlers"].as_array().expect("handlers");
        handlers
            .iter()
            .map(|h| {
                (
                    h["name"].as_str().expect("name").to_owned(),
                    h["route"].as_str().expect("route").to_owned(),
                    h["version"].as_u64().expect("version"),
                    h["config"].clone(),
                )
            })
            .collect()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        common::get_text(&common::client(), &format!("{}{path}", self.0.url)).await
    }
}

/// The command's stdout and stderr.
fn texts(output: &Output) -> (String, String) {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (text(&output.stdout), text(&output.stderr))
}

/// The command succeeded, saying nothing on stderr: its stdout.
fn succeeded(output: &Output) -> String {
    let (stdout, stderr) = texts(output);
    let ok = output.status.success() && stderr.is_empty();
    assert!(
        ok,
        "{:?}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    stdout
}

/// The command failed with exit code 1: its stdout and its stderr.
fn failed(output: &Output) -> (String, String) {
    let (stdout, stderr) = texts(output);
    let code = output.status.code();
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    (stdout, stderr)
}

/// A handler table of a config file.
fn handler(name: &str, route: &str, component: &str, config: &str) -> String {
    format!(
        "[[tenant.handler]]\nname = \"{name}\"\nroute = \"{route}\"\ncomponent = \"{component}\"\n\
         config = {{ {config} }}\n"
    )
}

/// Writes `text` to `dir/NAME`.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the file to apply");
    path
}

#[tokio::test]
async fn apply_creates_then_changes_only_what_differs_and_prunes_on_request() {
    let dir = common::scratch("apply-lifecycle");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).expect("create a static dir");
    std::fs::write(files.join("a.txt"), "static a\n").expect("write a static file");
    let gw = Gateway::start(&dir);
    let hello = components::require(components::HELLO);
    let echo = components::require(components::ECHO);
    let cpu = components::require(components::CPU);
    let shop = format!(
        "[[tenant]]\nname = \"shop\"\ncpu_weight = 2\nlimits = {{ fuel = 50000000 }}\n\n{}{}\
         [[tenant.static]]\nroute = \"/files\"\ndir = \"files\"\n",
        handler("hello", "/hello", hello, "greeting = \"hi\""),
        handler("echo", "/echo", echo, ""),
    );
    let old = "[[tenant]]\nname = \"old\"\nhosts = [\"old.test\"]\n";
    let first = write(&dir, "first.toml", &format!("{shop}\n{old}"));

    let stdout = succeeded(&gw.apply(&first, &[]));
    let lines: Vec<&str> = stdout.lines().collect();
    let files_dir = std::fs::canonicalize(&files).expect("canonical");
    assert_eq!(
        lines,
        [
            "tenant shop: created",
            // The component arrives with its config: one version.
            "handler shop/hello version 1 at /hello: created",
            "handler shop/echo version 1 at /echo: created",
            &format!(
                "static shop at /files (dir {}): created",
                files_dir.display()
            ),
            "tenant old: created",
            &format!(
                "applied {}: 5 created, 0 replaced, 0 unchanged, 0 deleted",
                first.display()
            ),
        ],
        "{stdout}"
    );
    assert_eq!(
        gw.get("/hello").await,
        (200, "hi from wasmgate: hello\n".to_owned())
    );
    assert_eq!(gw.get("/files/a.txt").await, (200, "static a\n".to_owned()));
    let tenants = gw.admin("tenants").await;
    let shop_view = &tenants["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .find(|t| t["name"] == "shop")
        .expect("shop")
        .clone();
    assert_eq!(shop_view["cpu_weight"], 2);
    assert_eq!(shop_view["limits"]["fuel"], 50_000_000);

    // Again: nothing is written, no version is made.
    let before = gw.handlers("shop").await;
    let stdout = succeeded(&gw.apply(&first, &[]));
    assert!(
        stdout
            .lines()
            .take(5)
            .all(|line| line.ends_with(": unchanged")),
        "{stdout}"
    );
    assert!(
        stdout.ends_with(": 0 created, 0 replaced, 5 unchanged, 0 deleted\n"),
        "{stdout}"
    );
    assert_eq!(gw.handlers("shop").await, before);
    assert_eq!(gw.admin("tenants").await, tenants);

    // Edited: hello gets a new route and config (one new version), echo
    // another component and a config (one new version too), cpu is new,
    // tenant old is no longer listed (and without --prune stays).
    let edited = format!(
        "[[tenant]]\nname = \"shop\"\ncpu_weight = 2\nlimits = {{ fuel = 50000000 }}\n\n{}{}{}\
         [[tenant.static]]\nroute = \"/files\"\ndir = \"files\"\n",
        handler("hello", "/hi", hello, "greeting = \"hey\""),
        handler("echo", "/echo", hello, "greeting = \"yo\""),
        handler("cpu", "/cpu", cpu, ""),
    );
    let second = write(&dir, "second.toml", &edited);
    let stdout = succeeded(&gw.apply(&second, &[]));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "tenant shop: unchanged",
            "handler shop/hello version 2 at /hi: replaced",
            "handler shop/echo version 2 at /echo: replaced",
            "handler shop/cpu version 1 at /cpu: created",
        ],
        "{stdout}"
    );
    assert!(
        stdout.ends_with(": 1 created, 2 replaced, 2 unchanged, 0 deleted\n"),
        "{stdout}"
    );
    assert_eq!(
        gw.get("/echo").await,
        (200, "yo from wasmgate: hello\n".to_owned())
    );
    assert_eq!(
        gw.get("/hi").await,
        (200, "hey from wasmgate: hello\n".to_owned())
    );
    assert_eq!(gw.get("/hello").await.0, 404);
    let names = |tenants: &Value| -> Vec<String> {
        tenants["tenants"]
            .as_array()
            .expect("tenants")
            .iter()
            .map(|t| t["name"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(names(&gw.admin("tenants").await), ["old", "shop"]);

    // --prune: echo and the mount leave the file; they and tenant old go.
    let pruned = format!(
        "[[tenant]]\nname = \"shop\"\ncpu_weight = 2\nlimits = {{ fuel = 50000000 }}\n\n{}{}",
        handler("hello", "/hi", hello, "greeting = \"hey\""),
        handler("cpu", "/cpu", cpu, ""),
    );
    let third = write(&dir, "third.toml", &pruned);
    let stdout = succeeded(&gw.apply(&third, &["--prune"]));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[3..],
        [
            "handler shop/echo: deleted",
            "static shop at /files: deleted",
            "tenant old: deleted",
            &format!(
                "applied {}: 0 created, 0 replaced, 3 unchanged, 3 deleted",
                third.display()
            ),
        ],
        "{stdout}"
    );
    assert_eq!(names(&gw.admin("tenants").await), ["shop"]);
    let handlers: Vec<String> = gw.handlers("shop").await.into_iter().map(|h| h.0).collect();
    assert_eq!(handlers, ["cpu", "hello"]);
    assert_eq!(gw.get("/echo").await.0, 404);
    assert_eq!(gw.get("/files/a.txt").await.0, 404);
    let stdout = succeeded(&gw.apply(&third, &["--prune"]));
    assert!(
        stdout.ends_with(": 0 created, 0 replaced, 3 unchanged, 0 deleted\n"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_bad_file_or_component_changes_nothing_and_a_failure_says_what_was_done() {
    let dir = common::scratch("apply-failures");
    let gw = Gateway::start(&dir);
    let hello = components::require(components::HELLO);
    let echo = components::require(components::ECHO);
    let good = format!(
        "[[tenant]]\nname = \"shop\"\n\n{}",
        handler("hello", "/hello", hello, "")
    );
    let file = write(&dir, "shop.toml", &good);
    succeeded(&gw.apply(&file, &[]));
    let tenants = gw.admin("tenants").await;
    let handlers = gw.handlers("shop").await;

    // A TOML mistake: the file and its line, nothing written.
    let bad = write(
        &dir,
        "bad.toml",
        &format!(
            "[[tenant]]\nname = \"new\"\n\n{}cpu_wieght = 3\n",
            handler("e", "/e", echo, "")
        ),
    );
    let (stdout, stderr) = failed(&gw.apply(&bad, &[]));
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with(&format!(
            "error: {}: TOML parse error at line 9",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("cpu_wieght"), "{stderr}");
    // A component that is not there: its line, nothing written, even for
    // the tenant before it.
    let missing = write(
        &dir,
        "missing.toml",
        &format!(
            "[[tenant]]\nname = \"new\"\n\n[[tenant]]\nname = \"shop\"\n\n{}",
            handler(
                "gone",
                "/gone",
                &dir.join("gone.wasm").display().to_string(),
                ""
            )
        ),
    );
    let (stdout, stderr) = failed(&gw.apply(&missing, &[]));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "error: {}:10: tenant \"shop\" handler \"gone\": component: {}: \
             No such file or directory (os error 2)\n",
            missing.display(),
            dir.join("gone.wasm").display()
        )
    );
    assert_eq!(gw.admin("tenants").await, tenants);
    assert_eq!(gw.handlers("shop").await, handlers);

    // The gateway refuses a write half-way: what went before is said.
    // Without --prune hello keeps /hello, so "greet" cannot have it.
    let clash = write(
        &dir,
        "clash.toml",
        &format!(
            "[[tenant]]\nname = \"new\"\n\n[[tenant]]\nname = \"shop\"\n\n{}{}",
            handler("echo", "/echo", echo, ""),
            handler("greet", "/hello", echo, "")
        ),
    );
    let (stdout, stderr) = failed(&gw.apply(&clash, &[]));
    assert_eq!(
        stdout,
        "tenant new: created\ntenant shop: unchanged\n\
         handler shop/echo version 1 at /echo: created\n"
    );
    assert!(
        stderr.starts_with("error: handler shop/greet at /hello: 409 route_taken: "),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(
            "; stopped there; the 2 changes printed above were made, nothing after them\n"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_tenant_certificate_is_sent_and_applying_it_again_changes_nothing() {
    let dir = common::scratch("apply-tls");
    let gw = Gateway::start(&dir);
    let cert = common::tls::Ca::new()
        .leaf(&["shop.test"])
        .write(&dir, "shop");
    let file = write(
        &dir,
        "shop.toml",
        &format!("[[tenant]]\nname = \"shop\"\nhosts = [\"shop.test\"]\ntls = {cert}\n"),
    );
    assert_eq!(
        succeeded(&gw.apply(&file, &[])).lines().next(),
        Some("tenant shop: created")
    );
    let tenants = gw.admin("tenants").await;
    assert_eq!(tenants["tenants"][0]["tls"]["names"][0], "shop.test");
    assert_eq!(
        succeeded(&gw.apply(&file, &[])).lines().next(),
        Some("tenant shop: unchanged")
    );
    assert_eq!(gw.admin("tenants").await, tenants);
    // Without `tls` in the file the certificate goes.
    let plain = write(
        &dir,
        "plain.toml",
        "[[tenant]]\nname = \"shop\"\nhosts = [\"shop.test\"]\n",
    );
    assert_eq!(
        succeeded(&gw.apply(&plain, &[])).lines().next(),
        Some("tenant shop: replaced")
    );
    assert_eq!(gw.admin("tenants").await["tenants"][0]["tls"], Value::Null);
}
