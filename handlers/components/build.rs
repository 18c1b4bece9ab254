//! Generates a path constant for every handler component in `handlers/`
//! (each folder whose Cargo.toml builds a `cdylib`), pointing at where
//! `cargo xtask build-handlers` puts it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let handlers_dir = manifest_dir
        .parent()
        .expect("handlers/components has a parent");
    let workspace = handlers_dir.parent().expect("handlers/ has a parent");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_relative() {
                workspace.join(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let wasm_dir = target_dir.join("wasm32-wasip2").join("release");

    let mut names = handler_names(handlers_dir);
    names.sort();
    let mut out = String::new();
    for name in &names {
        let path = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
        writeln!(
            out,
            "/// `{name}.wasm`, built by `cargo xtask build-handlers`.\npub const {}: &str = {:?};",
            name.to_uppercase().replace('-', "_"),
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    writeln!(
        out,
        "/// Every handler component: (name, path).\npub const ALL: &[(&str, &str)] = &["
    )
    .expect("writing to a String");
    for name in &names {
        writeln!(
            out,
            "    ({name:?}, {}),",
            name.to_uppercase().replace('-', "_")
        )
        .expect("writing to a String");
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out_dir.join("components.rs"), out).expect("OUT_DIR is writable");
    println!("cargo:rerun-if-changed={}", handlers_dir.display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
}

/// Folders of `handlers/` whose Cargo.toml declares a cdylib.
fn handler_names(handlers_dir: &Path) -> Vec<String> {
    let entries = std::fs::read_dir(handlers_dir).expect("handlers/ is readable");
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let manifest = std::fs::read_to_string(entry.path().join("Cargo.toml")).ok()?;
            manifest
                .contains("cdylib")
                .then(|| entry.file_name().to_string_lossy().into_owned())
        })
        .collect()
}
