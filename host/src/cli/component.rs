//! `wasmgate check`, `wasmgate compile` and `wasmgate push`: a component
//! file checked against the world, compiled into a config's code cache, or
//! pushed to an OCI registry.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::say;
use crate::control::compile::compile_files;
use crate::control::config::Config;
use crate::control::oci::{Oci, RegistryBase};
use crate::runtime::{ComponentInfo, Runtime};

/// Checks `file` against the worlds the gateway serves and prints its
/// world, digest, imports and exports.
pub fn check(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let runtime = Runtime::for_checking()?;
    let info =
        ComponentInfo::check(&runtime, &bytes).with_context(|| file.display().to_string())?;
    let mut report = format!(
        "{}: ok, world {}\nsha256 {}\nimports:",
        file.display(),
        info.world,
        info.sha256
    );
    for import in &info.imports {
        report.push_str(&format!("\n  {import}"));
    }
    report.push_str("\nexports:");
    for export in &info.exports {
        report.push_str(&format!("\n  {export}"));
    }
    say(&report)
}

/// Pushes `file` to `registry` (credentials from the environment, see
/// [`Oci::from_env`]) and prints `oci://` and its reference, which
/// `wasmgate deploy` takes as it is.
pub fn push(file: &Path, registry: &RegistryBase) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let reference = runtime
        .block_on(Oci::from_env().push(registry, &bytes))
        .with_context(|| file.display().to_string())?;
    say(&format!("oci://{reference}"))
}

/// Compiles `files` into the code cache of `config` (the defaults without
/// one) and reports each in order; fails if any did not compile. With
/// `max_memory`, this process may not grow past it (the server's bounded
/// compile child).
pub fn compile(
    files: &[PathBuf],
    config: Option<&Path>,
    max_memory: Option<u64>,
) -> anyhow::Result<()> {
    if let Some(bytes) = max_memory {
        limit_memory(bytes)?;
    }
    let config = match config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let runtime = crate::control::compile_runtime_for(&config)?;
    let mut compiled = 0;
    for (file, outcome) in files.iter().zip(compile_files(&runtime, files)) {
        match outcome {
            Ok(cached) => {
                say(&format!(
                    "{}: compiled into {}",
                    file.display(),
                    cached.display()
                ))?;
                compiled += 1;
            }
            Err(e) => eprintln!("error: {}: {e}", file.display()),
        }
    }
    match files.len() - compiled {
        0 => Ok(()),
        failed => anyhow::bail!("{failed} of {} components failed to compile", files.len()),
    }
}

/// Caps this process's data segment and private writable mappings
/// (`RLIMIT_DATA`): an allocation past it fails and the process ends, which
/// its parent reports as the bound crossed. The engine's address-space
/// reservations are not writable, so they do not count.
#[cfg(target_env = "gnu")]
fn limit_memory(bytes: u64) -> anyhow::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    #[allow(unsafe_code)]
    // SAFETY: setrlimit reads the struct passed by reference and touches no
    // other memory of ours.
    let status = unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) };
    if status != 0 {
        anyhow::bail!(
            "cannot cap memory at {bytes} bytes: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// No cap where the C library offers none: the timeout still bounds it.
#[cfg(not(target_env = "gnu"))]
fn limit_memory(_bytes: u64) -> anyhow::Result<()> {
    Ok(())
}
