//! `wasmgate new PATH`: creates a handler crate that builds from wherever it
//! is, with a unit test, a README of the commands that build and run it,
//! a config that serves it beside the repository's example, and a lock
//! file of the versions the SDK is tested with ([`super::lockfile`]).
//!
//! The SDK is not on crates.io, so the crate depends on this repository's
//! `guest-sdk` by absolute path: the folder this binary was built from, or
//! `--sdk`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::lockfile;

/// The generated config's listeners: beside the example config's
/// (`cargo xtask serve`: 8080 and 9090), so both can run at once.
const LISTEN: &str = "127.0.0.1:8081";
/// See [`LISTEN`].
const ADMIN_LISTEN: &str = "127.0.0.1:9091";

/// Where the SDK was when this binary was built.
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

/// Names cargo refuses for a package (keywords and the standard crates).
const RESERVED: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// Creates the crate at `dir` and prints what to do next.
pub fn run(dir: &Path, name: Option<&str>, sdk: Option<&Path>) -> anyhow::Result<()> {
    let created = create(dir, name, sdk)?;
    let shown = dir.display();
    if created.lock.is_none() {
        eprintln!(
            "note: no Cargo.lock found above the SDK: the crate's first build picks the newest \
             versions of its dependencies"
        );
    }
    println!(
        "created handler crate `{}` in {shown}\n\n\
         next:\n  \
         cd {shown}\n  \
         cargo test\n  \
         cargo build --release --target wasm32-wasip2\n  \
         wasmgate call {} --path '/?name=you'\n  \
         wasmgate serve --config wasmgate.toml --watch   # http://{LISTEN}/",
        created.name,
        created.component.display(),
    );
    Ok(())
}

/// What [`create`] made.
#[derive(Debug)]
pub struct Created {
    /// The crate's name.
    pub name: String,
    /// The component `cargo build --release --target wasm32-wasip2` makes,
    /// relative to the crate's folder.
    pub component: PathBuf,
    /// The repository lock file the crate's `Cargo.lock` was made from;
    /// none (and no `Cargo.lock`) for an SDK outside a repository.
    pub lock: Option<PathBuf>,
}

/// Writes the crate's files into `dir`, which must not exist or be empty.
pub fn create(dir: &Path, name: Option<&str>, sdk: Option<&Path>) -> anyhow::Result<Created> {
    let shown = dir.display();
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{shown} already exists and is not empty: `wasmgate new` never overwrites files; pick a new folder"
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("{shown} already exists and is not a folder")
        }
        Err(e) => return Err(e).with_context(|| format!("reading {shown}")),
    }
    let name = match name {
        Some(name) => name.to_owned(),
        None => default_name(dir)?,
    };
    check_crate_name(&name).map_err(|reason| {
        anyhow::anyhow!("{name:?} is not a valid crate name: {reason}; pass --name NAME")
    })?;
    let sdk = sdk_path(sdk)?;
    let lock = lockfile::repository_lock(&sdk);
    let lock_text = match &lock {
        Some(path) => {
            let read = |path: &Path| {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            };
            let text =
                lockfile::for_new_crate(&name, &read(path)?, &read(&sdk.join("Cargo.toml"))?)
                    .with_context(|| {
                        format!("pinning the SDK's dependencies from {}", path.display())
                    })?;
            Some(text)
        }
        None => None,
    };
    let lib = name.replace('-', "_");
    let component = Path::new("target/wasm32-wasip2/release").join(format!("{lib}.wasm"));

    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {shown}"))?;
    let mut files = vec![
        ("Cargo.toml", cargo_toml(&name, &sdk)),
        ("src/lib.rs", LIB_RS.replace("@NAME@", &name)),
        ("README.md", readme(&name, &component)),
        ("wasmgate.toml", config_toml(&name, &component)),
        (".gitignore", "/target\n".to_owned()),
    ];
    files.extend(lock_text.map(|text| ("Cargo.lock", text)));
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Created {
        name,
        component,
        lock,
    })
}

/// The folder's own name (of its absolute form, so `.` works).
fn default_name(dir: &Path) -> anyhow::Result<String> {
    let absolute =
        std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    absolute
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{} has no folder name to use as the crate's; pass --name NAME",
                dir.display()
            )
        })
}

/// Cargo's rules for a package name, kept to ASCII; they also make a valid
/// wasmgate handler name (`limits::check_name`).
fn check_crate_name(name: &str) -> Result<(), String> {
    let Some(first) = name.chars().next() else {
        return Err("it is empty".to_owned());
    };
    if !first.is_ascii_alphabetic() {
        return Err("it must start with a letter".to_owned());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!("{c:?} is not allowed (use a-z, 0-9, '-' and '_')"));
    }
    if name.len() > 64 {
        return Err("it is longer than 64 characters".to_owned());
    }
    if RESERVED.contains(&name) {
        return Err("it is a Rust keyword or a standard crate's name".to_owned());
    }
    Ok(())
}

/// The SDK folder, absolute, checked to be the SDK.
fn sdk_path(sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    let (path, hint) = match sdk {
        Some(path) => (path.to_path_buf(), "check the --sdk path"),
        None => (
            PathBuf::from(BUILT_SDK),
            "this wasmgate was built from a repository that is no longer there; \
             pass --sdk PATH/TO/wasmgate/guest-sdk",
        ),
    };
    let manifest = std::fs::read_to_string(path.join("Cargo.toml")).ok();
    if !manifest.is_some_and(|m| m.contains("name = \"wasmgate-sdk\"")) {
        bail!(
            "the wasmgate SDK is not at {} (no Cargo.toml of the wasmgate-sdk package there): {hint}",
            path.display()
        );
    }
    std::fs::canonicalize(&path).with_context(|| format!("resolving {}", path.display()))
}

/// `text` as a TOML string, quoted and escaped as needed.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    let sdk = toml_string(&sdk.to_string_lossy());
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A component is a dynamic library (`cargo test` still runs the unit tests
# natively).
[lib]
crate-type = ["cdylib"]

[dependencies]
# The SDK is not on crates.io yet: it comes from the wasmgate repository.
wasmgate-sdk = {{ path = {sdk} }}

# The size settings of wasmgate's own handlers: one code unit and whole
# program optimisation make the component about 15% smaller.
[profile.release]
lto = "fat"
codegen-units = 1

# A crate of its own, even inside another workspace's folder.
[workspace]
"#
    )
}

fn readme(name: &str, component: &Path) -> String {
    let component = component.display();
    format!(
        r#"# {name}

A wasmgate handler: `src/lib.rs` answers
`GET /?name=you` with `hello, you!` (the greeting comes from the handler's
config) and counts greetings in the guest counter `greetings`.

```sh
cargo test                                      # native unit tests, no gateway
cargo build --release --target wasm32-wasip2    # the component
wasmgate check {component}
```

Run one request through it, or serve it (at http://{LISTEN}/, reloaded
after every build; the admin API, for `wasmgate deploy --admin
http://{ADMIN_LISTEN}`, is on when `WASMGATE_ADMIN_TOKEN` is set):

```sh
wasmgate call {component} --path '/?name=you' --config greeting=hi
wasmgate serve --config wasmgate.toml --watch
```

The `wasm32-wasip2` target comes with `rustup target add wasm32-wasip2`.
The SDK's documentation, with every function and an example each:
`cargo doc --open -p wasmgate-sdk`.
"#
    )
}

fn config_toml(name: &str, component: &Path) -> String {
    let component = toml_string(&component.to_string_lossy());
    format!(
        r#"# `wasmgate serve --config wasmgate.toml --watch` serves the handler at
# http://{LISTEN}/ and picks up every new build. Paths are relative to
# this file's folder.

# Ports 8081 and 9091, so that it runs beside the wasmgate repository's
# example (`cargo xtask serve`, on 8080 and 9090).
[server]
listen = "{LISTEN}"

# The admin API (`wasmgate deploy`, `list`, ...: `--admin http://{ADMIN_LISTEN}`)
# is on when WASMGATE_ADMIN_TOKEN is set. Keep it off public interfaces.
[admin]
listen = "{ADMIN_LISTEN}"

[runtime]
data_dir = "target/wasmgate-data"

[[tenant]]
name = "dev"
hosts = ["*"]

[[tenant.handler]]
name = "{name}"
route = "/"
component = {component}
config = {{ greeting = "hello" }}
"#
    )
}

/// The handler; `@NAME@` is the crate's name.
const LIB_RS: &str = r#"//! `@NAME@`: a wasmgate handler.
//!
//! Answers `GET /?name=you` with `hello, you!`: the greeting is the handler's
//! `greeting` config value (default `hello`), the name the query parameter
//! `name` (default `world`). Counts every greeting in the guest counter
//! `greetings`.

use wasmgate_sdk::{Request, RequestExt, config, metrics};

#[wasmgate_sdk::handler]
fn greet(req: Request) -> String {
    metrics::counter_add("greetings", 1);
    let greeting = config::get("greeting").unwrap_or_else(|| "hello".to_owned());
    let name = req.query("name").unwrap_or_else(|| "world".to_owned());
    format!("{greeting}, {name}!\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing;

    #[test]
    fn greets_the_name_in_the_query_with_the_configured_greeting() {
        let mut t = testing::Context::new().config("greeting", "hi");
        let resp = t.call(greet, testing::get("/?x=1&name=a%20b"));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.body(), b"hi, a b!\n");
        assert_eq!(t.counter("greetings"), 1);
    }

    #[test]
    fn greets_the_world_by_default() {
        let mut t = testing::Context::new();
        let resp = t.call(greet, testing::get("/"));
        assert_eq!(resp.body(), b"hello, world!\n");
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's first handler is what `wasmgate new greet` writes (less
    /// the crate doc), so it cannot drift, and `tests/new.rs` proves that
    /// code builds and passes its tests.
    #[test]
    fn the_readme_handler_is_what_new_writes() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split_once("## A handler in 20 lines")
            .map(|(_, rest)| rest)
            .expect("README has the handler section");
        let block = section
            .split_once("```rust\n")
            .and_then(|(_, rest)| rest.split_once("```\n"))
            .map(|(code, _)| code)
            .expect("the section has a rust block");
        let written = LIB_RS.replace("@NAME@", "greet");
        let without_doc: Vec<&str> = written
            .lines()
            .skip_while(|l| l.starts_with("//!") || l.is_empty())
            .collect();
        assert_eq!(block.lines().collect::<Vec<_>>(), without_doc);
    }

    #[test]
    fn crate_names_follow_cargo() {
        for good in ["greet", "my-handler", "a_b9", &"x".repeat(64)] {
            assert_eq!(check_crate_name(good), Ok(()), "{good}");
        }
        for (bad, reason) in [
            ("", "empty"),
            ("9lives", "start with a letter"),
            ("-x", "start with a letter"),
            ("a b", "' ' is not allowed"),
            ("a.b", "'.' is not allowed"),
            ("test", "keyword or a standard crate"),
            ("fn", "keyword"),
            (&"x".repeat(65), "longer than 64"),
        ] {
            let err = check_crate_name(bad).expect_err(bad);
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }

    #[test]
    fn toml_strings_round_trip() {
        for text in [r#"a"b\c"#, "it's", "/plain/path", "tab\there"] {
            let table: toml::Table =
                toml::from_str(&format!("x = {}", toml_string(text))).expect(text);
            assert_eq!(table["x"].as_str(), Some(text));
        }
    }

    #[test]
    fn generated_manifests_parse() {
        let manifest = cargo_toml("greet", Path::new("/x/\"quoted\"/guest-sdk"));
        let value: toml::Table = toml::from_str(&manifest).expect("Cargo.toml parses");
        assert_eq!(
            value["dependencies"]["wasmgate-sdk"]["path"].as_str(),
            Some("/x/\"quoted\"/guest-sdk")
        );
        assert!(value["workspace"].is_table());
    }

    #[test]
    fn the_built_sdk_is_found() {
        let sdk = sdk_path(None).expect("this repository's SDK");
        assert!(sdk.is_absolute());
        assert!(sdk.join("src/lib.rs").is_file());
    }
}
