//! Filling the code cache: compiling components on a thread per core
//! (`wasmgate compile`), and the child process of that command that the
//! server has compile for it, so a compile never becomes part of the
//! long-running server's memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::digest::sha256_hex;
use crate::runtime::{Compiled, LoadError, Runtime};

/// An error and its causes on one line, as `{:#}` prints them in `anyhow`.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}

/// What compiling one file gave: where its code is cached, or why not.
pub type Outcome = Result<PathBuf, String>;

/// Compiles `files` into `runtime`'s code cache on one thread per core and
/// returns each file's outcome, in order. Each distinct component is
/// compiled once, by one thread, however many of the files hold it.
pub fn compile_files(runtime: &Runtime, files: &[PathBuf]) -> Vec<Outcome> {
    let Some(cache) = runtime.cache.as_ref() else {
        return files
            .iter()
            .map(|_| Err("no code cache".to_owned()))
            .collect();
    };
    // Read and hash first, so equal files are compiled once.
    let read: Vec<Result<(String, Vec<u8>), LoadError>> = files
        .iter()
        .map(|file| {
            let bytes = std::fs::read(file).map_err(|error| LoadError::Read {
                path: file.display().to_string(),
                error,
            })?;
            Ok((sha256_hex(&bytes), bytes))
        })
        .collect();
    let mut distinct: Vec<(&str, &[u8])> = Vec::new();
    for (sha256, bytes) in read.iter().flatten() {
        if !distinct.iter().any(|(seen, _)| seen == sha256) {
            distinct.push((sha256, bytes));
        }
    }
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(distinct.len());
    let done: Vec<(&str, Outcome)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(sha256, bytes)) = distinct.get(i) else {
                            break done;
                        };
                        let outcome = Compiled::get(runtime, sha256, || Ok(bytes.to_vec()))
                            .map(|compiled| cache.path(&runtime.engine, &compiled.sha256))
                            .map_err(|e| with_causes(&e));
                        done.push((sha256, outcome));
                    }
                })
            })
            .collect();
        // A compile thread that panicked leaves its components unreported;
        // their files count as failed below.
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_default())
            .collect()
    });
    read.iter()
        .map(|got| match got {
            Err(e) => Err(e.to_string()),
            Ok((sha256, _)) => done
                .iter()
                .find(|(compiled, _)| compiled == sha256)
                .map_or_else(|| Err("not compiled".to_owned()), |(_, o)| o.clone()),
        })
        .collect()
}

/// Fills the code cache from a child `wasmgate compile` process, so that
/// compiling never becomes part of the long-running server's memory: a
/// server that compiled sits 10-17 MB higher for good (the compiler's code
/// pages it touched, and heap it cannot give back). Best effort: what the
/// child could not compile, the caller compiles in-process, which also
/// gives the exact error.
#[derive(Debug, Clone)]
pub struct ChildCompiler {
    /// This program: `wasmgate`.
    exe: PathBuf,
    /// The config the server runs, so the child's engine (and so its cache
    /// keys) match the server's.
    config: PathBuf,
}

impl ChildCompiler {
    /// A compiler for a server of the `wasmgate` binary running the config
    /// at `config`; `None` when this program cannot find itself. Only the
    /// `wasmgate` binary may use it: the child runs this very executable.
    pub fn for_this_binary(config: &Path) -> Option<Self> {
        match std::env::current_exe() {
            Ok(exe) => Some(Self {
                exe,
                config: config.to_owned(),
            }),
            Err(e) => {
                tracing::debug!("cannot find my own executable ({e}); compiling in-process");
                None
            }
        }
    }

    /// Compiles `files` into the cache; true when all of them made it.
    pub fn compile(&self, files: &[impl AsRef<Path>]) -> bool {
        if files.is_empty() {
            return true;
        }
        let started = Instant::now();
        let status = std::process::Command::new(&self.exe)
            .arg("compile")
            .arg("--config")
            .arg(&self.config)
            .args(files.iter().map(AsRef::as_ref))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => {
                tracing::info!(
                    components = files.len(),
                    elapsed_ms = started.elapsed().as_millis(),
                    "code cache ready (checked and filled by a child process)"
                );
                true
            }
            Ok(status) => {
                tracing::debug!("child compile {status}; compiling the rest in-process");
                false
            }
            Err(e) => {
                tracing::debug!("cannot run a child compile ({e}); compiling in-process");
                false
            }
        }
    }
}
