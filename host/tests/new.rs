//! `wasmgate new` as a new handler author uses it, outside this repository's
//! workspace: the crate it creates passes its unit test natively, builds a
//! component that `wasmgate check` accepts, and comes with a config that
//! loads. Also its refusals, and that a wrong handler signature is the only
//! diagnostic the author sees, and that the SDK speaks the host's WIT.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wasmgate::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_wasmgate");

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
fn new_crate_passes_its_test_builds_a_component_and_checks() {
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
