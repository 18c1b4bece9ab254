//! Filling the code cache: compiling components on a thread per core
//! (`wasmgate compile`), and the child process of that command that the
//! server has compile for it, so a compile never becomes part of the
//! long-running server's memory.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// The bounds of one compile of an uploaded component.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// `admin.compile_timeout_ms`: the child is killed past it.
    pub timeout: Duration,
    /// `admin.compile_memory_bytes`: the child's data segment and private
    /// writable mappings may not grow past it (`RLIMIT_DATA`).
    pub memory_bytes: u64,
}

/// The most of a child's stderr kept for its error message.
const STDERR_KEPT: usize = 16 << 10;

/// Compiles uploaded components in a child process, bounded, at most a
/// few at once, and outside the registry's writer, so that one tenant's
/// compile never holds another tenant's writes.
#[derive(Debug)]
pub struct UploadCompiler {
    /// `None`: compile in-process (tests and benchmarks that run no
    /// `wasmgate` binary).
    child: Option<ChildCompiler>,
    /// The bounds of each compile.
    bounds: Bounds,
    /// Where an upload is written for the child to read; removed after.
    staging: PathBuf,
    /// Failed compiles by sha256.
    failures: Failures,
    /// Compiles running at once: one per core.
    slots: tokio::sync::Semaphore,
    /// Each tenant's turn: a tenant compiles one upload at a time, so its
    /// uploads queue behind each other and leave the other slots to other
    /// tenants. One entry per tenant that ever uploaded.
    turns: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl UploadCompiler {
    /// Compiles with `child` (in-process without one) within `bounds`,
    /// staging uploads in `staging`.
    pub fn new(child: Option<ChildCompiler>, bounds: Bounds, staging: PathBuf) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            child,
            bounds,
            staging,
            failures: Failures::default(),
            slots: tokio::sync::Semaphore::new(cores),
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// Fills the code cache for each upload of `tenant` (`""`: the config
    /// file) not in it yet, in the tenant's turn and one compile slot, and
    /// gives the uploads back; failures are remembered for
    /// [`UploadCompiler::compiled`] to report. Without a child this does
    /// nothing: the writer compiles.
    pub async fn prepare(
        self: &std::sync::Arc<Self>,
        tenant: &str,
        runtime: &Runtime,
        uploads: HashMap<String, Vec<u8>>,
    ) -> HashMap<String, Vec<u8>> {
        if self.child.is_none() || uploads.is_empty() {
            return uploads;
        }
        let turn = std::sync::Arc::clone(
            self.turns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(tenant.to_owned())
                .or_default(),
        );
        let _turn = turn.lock().await;
        let Ok(_slot) = self.slots.acquire().await else {
            return uploads;
        };
        // The uploads go to the blocking thread and back, not a copy of
        // them: an upload may be tens of megabytes.
        let (this, runtime) = (std::sync::Arc::clone(self), runtime.clone());
        let compiled = tokio::task::spawn_blocking(move || {
            for (sha256, bytes) in &uploads {
                // Failures are remembered for the writer to report.
                let _ = this.compiled(&runtime, sha256, bytes);
            }
            uploads
        });
        // A panic there (a bug) loses the uploads: the write then fails
        // naming the component, and changes nothing.
        compiled.await.unwrap_or_default()
    }

    /// Makes sure the code cache holds the component with this sha256,
    /// compiling `bytes` in the bounded child if it does not: `Ok` once it
    /// is cached, or why it cannot be (remembered, so a retry is refused
    /// at once). Without a child, `Ok`: the caller compiles in-process.
    pub fn compiled(&self, runtime: &Runtime, sha256: &str, bytes: &[u8]) -> Result<(), String> {
        let (Some(child), Some(cache)) = (&self.child, &runtime.cache) else {
            return Ok(());
        };
        if cache.path(&runtime.engine, sha256).is_file() {
            return Ok(());
        }
        if let Some(why) = self.failures.get(sha256) {
            return Err(why);
        }
        let staged = Staged::write(&self.staging, sha256, bytes)?;
        match child.compile_bounded(&staged.0, self.bounds) {
            Ok(()) => Ok(()),
            Err(Refused::Component(why)) => {
                self.failures.remember(sha256, &why);
                Err(why)
            }
            Err(Refused::Gateway(why)) => Err(why),
        }
    }
}

/// An upload written for the child to read, removed when dropped: nothing
/// of a refused upload stays on disk.
struct Staged(PathBuf);

impl Staged {
    fn write(dir: &Path, sha256: &str, bytes: &[u8]) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Unique per write: two uploads of the same bytes may race.
        static WRITES: AtomicUsize = AtomicUsize::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{sha256}.{n}.wasm"));
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Why a bounded compile did not fill the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The component's own doing (it does not compile or fit, or crossed a
    /// bound): remembered, so the same bytes are refused at once.
    Component(String),
    /// The gateway could not run the compile (no process, no staging
    /// space): not remembered, a retry may succeed.
    Gateway(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Component(why) | Self::Gateway(why) => f.write_str(why),
        }
    }
}

/// Components whose compile failed, remembered by sha256 so that a retry
/// of the same bytes is refused at once instead of costing a compile again.
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<String, String>>);

/// How many failures are remembered; past it all are forgotten (each
/// only costs a bounded compile again).
const FAILURES_KEPT: usize = 1024;

impl Failures {
    /// Why the component with this sha256 failed to compile, if it did.
    pub fn get(&self, sha256: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sha256)
            .cloned()
    }

    /// Remembers that `sha256` failed, and why.
    pub fn remember(&self, sha256: &str, why: &str) {
        let mut failures = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= FAILURES_KEPT {
            // Forgetting all is simple and bounded; an attacker gains one
            // more compile per component, each bounded.
            failures.clear();
        }
        failures.insert(sha256.to_owned(), why.to_owned());
    }
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

    /// Compiles one uploaded component (the file at `path`) into the cache
    /// in a child held to `bounds`: the child's error message when it
    /// fails, or the bound it crossed. The server never compiles it
    /// itself, whatever the child did.
    pub fn compile_bounded(&self, path: &Path, bounds: Bounds) -> Result<(), Refused> {
        let started = Instant::now();
        let mut child = std::process::Command::new(&self.exe)
            .arg("compile")
            .arg("--config")
            .arg(&self.config)
            .arg("--max-memory")
            .arg(bounds.memory_bytes.to_string())
            .arg(path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Refused::Gateway(format!("cannot start the compile process: {e}")))?;
        // Read on a thread of its own: a child that fills the pipe must not
        // stall, and only the start of what it says is kept.
        let stderr = child.stderr.take().map(|pipe| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let _ = pipe.take(STDERR_KEPT as u64).read_to_end(&mut kept);
                kept
            })
        });
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if started.elapsed() >= bounds.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(Refused::Component(format!(
                        "compiling took longer than admin.compile_timeout_ms ({} ms); refused",
                        bounds.timeout.as_millis()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    break Err(Refused::Gateway(format!(
                        "waiting for the compile process: {e}"
                    )));
                }
            }
        };
        let said = stderr
            .and_then(|reader| reader.join().ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let status = status?;
        if status.success() {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis(),
                "compiled by a child process"
            );
            return Ok(());
        }
        // `compile` says `error: FILE: WHY` for a component it refused.
        let prefix = format!("error: {}: ", path.display());
        if let Some(why) = said.lines().find_map(|line| line.strip_prefix(&prefix)) {
            return Err(Refused::Component(why.to_owned()));
        }
        Err(if status.code().is_none() {
            Refused::Component(format!(
                "the compile process was killed ({status}): over admin.compile_memory_bytes \
                 ({} bytes), or it crashed",
                bounds.memory_bytes
            ))
        } else {
            // It failed without naming the component: the gateway's
            // setting (its config file gone, say), not the bytes.
            Refused::Gateway(format!("the compile process failed ({status})"))
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::CodeCache;

    #[test]
    fn only_the_components_own_failures_are_remembered() {
        let dir = std::env::temp_dir().join(format!("wasmgate-compile-{}", std::process::id()));
        let runtime = Runtime::for_checking()
            .expect("runtime")
            .with_code_cache(CodeCache::new(dir.join("cache")));
        // A compile process that cannot start is the gateway's failure: a
        // retry of the same bytes must be tried again, not refused.
        let child = ChildCompiler {
            exe: dir.join("no-such-wasmgate"),
            config: dir.join("wasmgate.toml"),
        };
        let bounds = Bounds {
            timeout: Duration::from_secs(5),
            memory_bytes: 64 << 20,
        };
        let compiler = UploadCompiler::new(Some(child), bounds, dir.join("staging"));
        let why = compiler
            .compiled(&runtime, "ab", b"\0asm")
            .expect_err("no compile process");
        assert!(why.contains("cannot start the compile process"), "{why}");
        assert_eq!(compiler.failures.get("ab"), None);
        // The staged copy is gone either way.
        assert_eq!(
            std::fs::read_dir(dir.join("staging"))
                .map(Iterator::count)
                .ok(),
            Some(0)
        );
        // A refusal of the component is remembered.
        compiler.failures.remember("cd", "does not fit");
        assert_eq!(
            compiler.compiled(&runtime, "cd", b"\0asm"),
            Err("does not fit".to_owned())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
