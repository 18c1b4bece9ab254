//! `wasmgate new` as a new handler author uses it, outside this repository's
//! workspace: the crate it creates passes its unit test natively, builds a
//! component that `wasmgate check` accepts, and comes with a config that
//! loads. Also its refusals, and that a wrong handler signature is the only
//! diagnostic the author sees, and that the SDK speaks the host's WIT.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{BIN, Served, serve_command};

use wasmgate::control::config::Config;

/// A fresh, empty folder under the target dir for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("new-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn wasmgate(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run wasmgate")
}

/// `cargo ARGS` in `dir`, building into one target dir shared by these tests
/// and kept between runs, so only the first run compiles the SDK.
fn cargo(args: &[&str], dir: &Path) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("new-target"),
        )
        .output()
        .expect("run cargo")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Panics with the command's output unless it succeeded.
fn succeeded(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn from_an_empty_folder_to_a_tested_called_and_live_served_handler() {
    let root = scratch("first-hour");
    let out = wasmgate(&["new", "greeter"], &root);
    succeeded("wasmgate new", &out);
    assert!(
        text(&out.stdout).contains("cargo build --release --target wasm32-wasip2"),
        "{}",
        text(&out.stdout)
    );
    let dir = root.join("greeter");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        ".gitignore",
        "wasmgate.toml",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }

    let out = cargo(&["test"], &dir);
    succeeded("cargo test", &out);
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("test result: ok. 2 passed"),
        "{}",
        text(&out.stdout)
    );

    let out = cargo(&["build", "--release", "--target", "wasm32-wasip2"], &dir);
    succeeded("cargo build", &out);
    let component = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("new-target/wasm32-wasip2/release/greeter.wasm");
    let out = wasmgate(&["check", &component.to_string_lossy()], &dir);
    succeeded("wasmgate check", &out);

    // The config it serves with loads and points at the component the
    // build makes (with the default target dir).
    let config = Config::load(&dir.join("wasmgate.toml")).expect("generated config loads");
    let handler = &config.tenants[0].handlers[0];
    assert_eq!(handler.name, "greeter");
    assert_eq!(handler.route, "/");
    assert_eq!(
        handler.component,
        dir.join("target/wasm32-wasip2/release/greeter.wasm")
    );

    // One request through the sandbox, as text and as JSON.
    let component_arg = component.to_string_lossy().into_owned();
    let out = wasmgate(&["call", &component_arg, "--path", "/?name=you"], &dir);
    succeeded("wasmgate call", &out);
    assert_eq!(
        text(&out.stdout),
        "HTTP/1.1 200 OK\ncontent-type: text/plain; charset=utf-8\n\nhello, you!\n"
    );
    let out = wasmgate(
        &["call", &component_arg, "--path", "/?name=you", "--json"],
        &dir,
    );
    succeeded("wasmgate call --json", &out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(json["status"], 200, "{json}");
    assert_eq!(json["body"], "hello, you!\n", "{json}");
    assert!(
        json["fuel_consumed"].as_u64().is_some_and(|f| f > 0),
        "{json}"
    );
    assert_eq!(json["metrics"]["counters"]["greetings"], 1, "{json}");

    // Served with --watch from the config `new` wrote, then changed live.
    let served = dir.join("target/wasm32-wasip2/release/greeter.wasm");
    place(&component, &served);
    let server = serve_watching(&dir);
    assert_eq!(
        get(&server, "/?name=you"),
        (200, "hello, you!\n".to_owned())
    );
    let lib = dir.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).expect("read lib.rs");
    let changed = code.replace(r#""{greeting}, {name}!\n""#, r#""{greeting}, {name}!!\n""#);
    assert_ne!(code, changed, "the template's format string moved");
    std::fs::write(&lib, changed).expect("edit lib.rs");
    let out = cargo(&["build", "--release", "--target", "wasm32-wasip2"], &dir);
    succeeded("cargo build (changed)", &out);
    place(&component, &served);
    let started = std::time::Instant::now();
    loop {
        let (status, body) = get(&server, "/?name=you");
        assert_eq!(status, 200, "a request failed during the update: {body}");
        if body == "hello, you!!\n" {
            break;
        }
        assert_eq!(body, "hello, you!\n");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the new build was never served"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    stop(server);
}

/// Puts a built component where the config expects it the way cargo
/// does: a new file appears in one step.
fn place(built: &Path, at: &Path) {
    std::fs::create_dir_all(at.parent().expect("a folder")).expect("create folder");
    let temp = at.with_extension("wasm.tmp");
    std::fs::copy(built, &temp).expect("copy component");
    std::fs::rename(&temp, at).expect("rename component");
}

/// `wasmgate serve --config wasmgate.toml --watch` in a crate's folder.
fn serve_watching(dir: &Path) -> Served {
    Served::spawn(
        serve_command()
            .args(["--config", "wasmgate.toml", "--watch"])
            .current_dir(dir),
    )
}

/// One GET over a fresh connection: (status, body).
fn get(served: &Served, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(served.address()).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{head}"));
    (status, body.to_owned())
}

/// SIGTERM, and the gateway exits 0.
fn stop(mut served: Served) {
    let pid = served.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(killed.is_ok_and(|s| s.success()), "kill -TERM failed");
    let status = served.child.wait().expect("wait for the gateway");
    assert!(status.success(), "the gateway exited with {status}");
}

#[test]
fn new_names_the_crate_after_the_folder_or_name() {
    let root = scratch("names");
    succeeded(
        "wasmgate new --name",
        &wasmgate(&["new", "folder", "--name", "my-api"], &root),
    );
    let manifest = std::fs::read_to_string(root.join("folder/Cargo.toml")).expect("manifest");
    assert!(manifest.contains("name = \"my-api\""), "{manifest}");

    std::fs::create_dir(root.join("empty")).expect("mkdir");
    succeeded(
        "wasmgate new in an empty folder",
        &wasmgate(&["new", "."], &root.join("empty")),
    );
    let manifest = std::fs::read_to_string(root.join("empty/Cargo.toml")).expect("manifest");
    assert!(manifest.contains("name = \"empty\""), "{manifest}");
}

#[test]
fn new_refuses_a_folder_with_files_and_leaves_it_alone() {
    let root = scratch("refuse");
    std::fs::create_dir(root.join("taken")).expect("mkdir");
    std::fs::write(root.join("taken/notes.txt"), "mine").expect("write");
    let out = wasmgate(&["new", "taken"], &root);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: taken already exists and is not empty: `wasmgate new` never overwrites \
         files; pick a new folder\n"
    );
    let left: Vec<_> = std::fs::read_dir(root.join("taken"))
        .expect("read")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["notes.txt"]);

    std::fs::write(root.join("file"), "").expect("write");
    let out = wasmgate(&["new", "file"], &root);
    assert_eq!(
        text(&out.stderr),
        "error: file already exists and is not a folder\n"
    );
}

#[test]
fn new_rejects_an_invalid_crate_name() {
    let root = scratch("bad-name");
    let out = wasmgate(&["new", "9lives"], &root);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: \"9lives\" is not a valid crate name: it must start with a letter; pass --name NAME\n"
    );
    let out = wasmgate(&["new", "ok", "--name", "a b"], &root);
    assert_eq!(
        text(&out.stderr),
        "error: \"a b\" is not a valid crate name: ' ' is not allowed (use a-z, 0-9, '-' and \
         '_'); pass --name NAME\n"
    );
    assert!(!root.join("9lives").exists() && !root.join("ok").exists());
}

#[test]
fn new_without_the_sdk_says_where_it_looked() {
    let root = scratch("no-sdk");
    let out = wasmgate(&["new", "h", "--sdk", "/nonexistent/guest-sdk"], &root);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: the wasmgate SDK is not at /nonexistent/guest-sdk (no Cargo.toml of the \
         wasmgate-sdk package there): check the --sdk path\n"
    );
    assert!(!root.join("h").exists());
}

/// #16: a wrong signature used to come with `unused imports` warnings for
/// everything the handler used, because the macro dropped the function.
#[test]
fn a_wrong_handler_signature_is_the_only_diagnostic() {
    let root = scratch("signature");
    succeeded("wasmgate new", &wasmgate(&["new", "badsig"], &root));
    let dir = root.join("badsig");
    std::fs::write(
        dir.join("src/lib.rs"),
        "use wasmgate_sdk::{IntoResponse, Request, config};\n\n\
         #[wasmgate_sdk::handler]\n\
         async fn greet(_req: Request) -> impl IntoResponse {\n    \
             config::get(\"x\").unwrap_or_default()\n\
         }\n",
    )
    .expect("write lib.rs");
    let out = cargo(&["check", "--quiet"], &dir);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    let headlines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error") || l.starts_with("warning"))
        .collect();
    assert_eq!(
        headlines,
        [
            "error: a wasmgate handler cannot be `async`: each request runs to completion synchronously",
            "error: could not compile `badsig` (lib) due to 1 previous error",
        ],
        "{stderr}"
    );
}

/// The SDK carries its own copy of the WIT contract so it packages on its
/// own (`cargo package -p wasmgate-sdk-macro -p wasmgate-sdk`); the copy
/// must be the contract the host implements.
#[test]
fn the_sdk_wit_is_the_host_wit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let host = std::fs::read_to_string(root.join("wit/handler.wit")).expect("wit/handler.wit");
    let sdk = std::fs::read_to_string(root.join("guest-sdk/wit/handler.wit"))
        .expect("guest-sdk/wit/handler.wit");
    assert!(
        host == sdk,
        "guest-sdk/wit/handler.wit differs from wit/handler.wit: copy wit/handler.wit over it"
    );
}

/// The packages of a lock file, by name, with their versions.
fn locked_versions(lock: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let lock: toml::Table = toml::from_str(lock).expect("a lock file");
    let mut versions = std::collections::BTreeMap::<String, Vec<String>>::new();
    for package in lock["package"].as_array().expect("packages") {
        versions
            .entry(package["name"].as_str().expect("name").to_owned())
            .or_default()
            .push(package["version"].as_str().expect("version").to_owned());
    }
    versions
}

/// Item 7 of the second hour: the crate builds the SDK's dependencies at
/// the versions the SDK is tested with, resolving none afresh; and it runs
/// beside the repository's example (8080/9090) with an admin listener.
#[test]
fn a_new_crate_pins_the_sdks_dependencies_and_serves_beside_the_example() {
    let root = scratch("pinned");
    succeeded("wasmgate new", &wasmgate(&["new", "pinned"], &root));
    let dir = root.join("pinned");
    let workspace_lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let workspace =
        locked_versions(&std::fs::read_to_string(workspace_lock).expect("the workspace lock"));
    // The SDK's wit-bindgen is pinned exactly (`=0.61.1`) by the workspace.
    let manifest: toml::Table = toml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .expect("the workspace manifest"),
    )
    .expect("TOML");
    let sdk_wit_bindgen = manifest["workspace"]["dependencies"]["wit-bindgen"]["version"]
        .as_str()
        .expect("a version")
        .trim_start_matches('=')
        .to_owned();
    let check = |what: &str| {
        let lock = std::fs::read_to_string(dir.join("Cargo.lock")).expect("a Cargo.lock");
        let pinned = locked_versions(&lock);
        for name in [
            "wit-bindgen",
            "wasmgate-sdk",
            "wasmgate-sdk-macro",
            "http",
            "syn",
        ] {
            assert!(pinned.contains_key(name), "{what}: {name} missing:\n{lock}");
        }
        for (name, versions) in &pinned {
            if name == "pinned" {
                continue;
            }
            for version in versions {
                assert!(
                    workspace.get(name).is_some_and(|v| v.contains(version)),
                    "{what}: {name} {version} is not the workspace's {:?}",
                    workspace.get(name)
                );
            }
        }
        assert_eq!(pinned["wit-bindgen"], [sdk_wit_bindgen.as_str()], "{what}");
    };
    check("as written");
    // Cargo takes it as it is: resolving the crate keeps every version.
    let out = cargo(&["metadata", "--offline", "--format-version", "1"], &dir);
    succeeded("cargo metadata", &out);
    check("after cargo resolved the crate");

    let config = Config::load(&dir.join("wasmgate.toml")).expect("generated config loads");
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8081");
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9091");
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("README");
    assert!(!readme.contains("example.invalid"), "{readme}");
    assert!(readme.contains("http://127.0.0.1:8081/"), "{readme}");
}
