//! `serve --watch`: applies the config file again whenever it or a
//! component or certificate file it names changes, so a handler is live
//! within a second of `cargo build` rewriting it, and a renewed
//! certificate serves the next handshake.
//!
//! It watches the files' folders, not the files: cargo and editors replace
//! a file by renaming another over it, which a watch on the old file would
//! never see. Events about other files in those folders are ignored. A
//! change comes as a burst (cargo removes, links and writes; an editor
//! writes a temporary file and renames it), so the watcher applies only
//! after [`QUIET`] without events. Applying is [`ControlPlane::reload`],
//! as for SIGHUP: it reads every component again and loads only those whose
//! bytes changed. A component that does not load (a broken build, a file
//! that does not fit the world) is one error line with the reason, and
//! the versions serving before keep serving. Files whose contents are as
//! they were at the last apply are not applied again, so the same broken
//! build is reported once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

use super::config::{Config, ConfigError};
use super::{ControlPlane, Trigger};
use crate::digest::sha256_hex;

/// How long the folders must be quiet before a change is applied: cargo
/// and editors finish a write within milliseconds, and a person waits for
/// the result, so well under a second.
pub const QUIET: Duration = Duration::from_millis(150);

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The config file does not load, so its components are unknown.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A path could not be made absolute.
    #[error("cannot resolve {}: {error}", path.display())]
    Resolve {
        /// The path.
        path: PathBuf,
        /// Why; in the message, not a `source`, so that printing the
        /// error with its causes does not say it twice.
        error: std::io::Error,
    },
    /// The operating system refused a watch (a missing folder, or the
    /// limit of inotify watches reached).
    #[error("cannot watch {}: {error}", path.display())]
    Watch {
        /// The folder.
        path: PathBuf,
        /// Why (in the message, as for `Resolve`).
        error: notify::Error,
    },
}

/// A running watcher; dropping it stops watching.
#[derive(Debug)]
pub struct WatchHandle {
    /// The task that waits for changes and applies them; it owns the
    /// operating system's watches.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the notify thread and the applying task share.
#[derive(Debug, Default)]
struct Shared {
    /// The files whose changes count: the config, its components and its
    /// certificates.
    files: Mutex<BTreeSet<PathBuf>>,
    /// Those changed since the last apply, for the log line.
    changed: Mutex<BTreeSet<PathBuf>>,
    /// Woken on every change; it keeps one wake-up while nobody waits,
    /// so a burst costs one apply.
    wake: Notify,
}

/// Watches the config file at `config_path` and every component file it
/// names, applying the file through `control` on each change. Must be
/// called within a tokio runtime.
pub fn spawn(config_path: &Path, control: Arc<ControlPlane>) -> Result<WatchHandle, WatchError> {
    let config_path = absolute(config_path)?;
    let config = Config::load(&config_path)?;
    let shared = Arc::new(Shared::default());
    let on_event = {
        let shared = Arc::clone(&shared);
        move |event: notify::Result<notify::Event>| match event {
            Ok(event) => shared.saw(&event),
            Err(e) => tracing::warn!("file watcher: {e}"),
        }
    };
    let watcher = notify::recommended_watcher(on_event).map_err(|error| WatchError::Watch {
        path: config_path.clone(),
        error,
    })?;
    let mut watched = Watched {
        watcher,
        folders: BTreeSet::new(),
        shared: Arc::clone(&shared),
    };
    if let Some(error) = watched.update(&config_path, &config).into_iter().next() {
        return Err(error);
    }
    let files = shared.lock_files().len();
    tracing::info!(
        files,
        "watching the config file and its components; a change is applied after {} ms of quiet",
        QUIET.as_millis()
    );
    let task = tokio::spawn(async move {
        let mut last_applied = None;
        loop {
            settle(&shared.wake, QUIET).await;
            let changed = std::mem::take(&mut *lock(&shared.changed));
            let names: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
            let names = names.join(", ");
            // A burst split by a busy machine, or a save that wrote the same
            // bytes, would apply (or report a broken file) twice.
            let files: Vec<PathBuf> = shared.lock_files().iter().cloned().collect();
            let contents = tokio::task::spawn_blocking(move || fingerprint(&files))
                .await
                .ok();
            if contents.is_some() && contents == last_applied {
                tracing::debug!("changed: {names}; same contents as last time, nothing to do");
                continue;
            }
            last_applied = contents;
            // It logs what it did.
            let _ = control.reload(Trigger::Watch(names)).await;
            // The file may name other components now.
            if let Ok(config) = Config::load(&config_path) {
                for error in watched.update(&config_path, &config) {
                    tracing::warn!("{error}");
                }
            }
        }
    });
    Ok(WatchHandle { task })
}

impl Shared {
    fn lock_files(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        lock(&self.files)
    }

    /// Called on notify's thread for every event in a watched folder.
    fn saw(&self, event: &notify::Event) {
        if !counts(&event.kind) && !event.need_rescan() {
            return;
        }
        let files = self.lock_files();
        let changed: Vec<PathBuf> = if event.need_rescan() {
            // Events were lost (the kernel's queue overflowed): any file
            // may have changed.
            files.iter().cloned().collect()
        } else {
            event
                .paths
                .iter()
                .filter(|path| files.contains(*path))
                .cloned()
                .collect()
        };
        drop(files);
        if !changed.is_empty() {
            lock(&self.changed).extend(changed);
            self.wake.notify_one();
        }
    }
}

/// Whether an event can mean new contents. Reads are not changes (the
/// reload itself reads every file), and neither are new timestamps or
/// permissions.
fn counts(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
    }
}

/// The sha256 of each file's contents (`None`: unreadable).
fn fingerprint(files: &[PathBuf]) -> BTreeMap<PathBuf, Option<String>> {
    files
        .iter()
        .map(|file| {
            let sha256 = std::fs::read(file).ok().map(|bytes| sha256_hex(&bytes));
            (file.clone(), sha256)
        })
        .collect()
}

/// Waits for a wake-up, then until none came for `quiet`.
async fn settle(wake: &Notify, quiet: Duration) {
    wake.notified().await;
    while tokio::time::timeout(quiet, wake.notified()).await.is_ok() {}
}

/// The watches on the folders of the files that count.
struct Watched {
    /// Dropping it ends the watches.
    watcher: RecommendedWatcher,
    /// The folders watched now.
    folders: BTreeSet<PathBuf>,
    /// Where the files that count are kept for the notify thread.
    shared: Arc<Shared>,
}

impl Watched {
    /// Makes the config file and the components and certificates `config`
    /// names the files that count, and watches their folders (and no others). Returns what
    /// could not be watched; those folders are tried again next time.
    fn update(&mut self, config_path: &Path, config: &Config) -> Vec<WatchError> {
        let mut errors = Vec::new();
        let mut files = BTreeSet::new();
        let certificates = config
            .tenants
            .iter()
            .filter_map(|t| t.tls.as_ref())
            .chain(config.server.tls_default.as_ref())
            .flat_map(|files| [files.cert.as_path(), files.key.as_path()]);
        let paths = std::iter::once(config_path)
            .chain(
                config
                    .tenants
                    .iter()
                    .flat_map(|t| &t.handlers)
                    .map(|h| h.component.as_path()),
            )
            .chain(certificates);
        for path in paths {
            match absolute(path) {
                Ok(path) => {
                    // Through a symlink, a build rewrites the target.
                    if let Ok(target) = std::fs::canonicalize(&path) {
                        files.insert(target);
                    }
                    files.insert(path);
                }
                Err(error) => errors.push(error),
            }
        }
        let wanted: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|file| file.parent().map(Path::to_path_buf))
            .collect();
        for folder in self.folders.difference(&wanted) {
            // Gone already, or never there: nothing left to stop.
            let _ = self.watcher.unwatch(folder);
        }
        self.folders.retain(|folder| wanted.contains(folder));
        for folder in wanted {
            if self.folders.contains(&folder) {
                continue;
            }
            match self.watcher.watch(&folder, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.folders.insert(folder);
                }
                Err(error) => errors.push(WatchError::Watch {
                    path: folder,
                    error,
                }),
            }
        }
        *self.shared.lock_files() = files;
        errors
    }
}

/// `path` from the root, the way the watcher reports it.
fn absolute(path: &Path) -> Result<PathBuf, WatchError> {
    std::path::absolute(path).map_err(|error| WatchError::Resolve {
        path: path.to_owned(),
        error,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    #[test]
    fn writes_renames_and_removals_count_reads_and_timestamps_do_not() {
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            assert!(counts(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)),
        ] {
            assert!(!counts(&kind), "{kind:?}");
        }
    }

    #[test]
    fn only_events_about_the_files_that_count_wake_the_watcher() {
        let shared = Shared::default();
        shared
            .lock_files()
            .extend([PathBuf::from("/d/a.wasm"), PathBuf::from("/d/c.toml")]);
        let event = |kind, paths: &[&str]| {
            let mut event = notify::Event::new(kind);
            event.paths = paths.iter().map(PathBuf::from).collect();
            event
        };
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        shared.saw(&event(rename, &["/d/.a.wasm.tmp", "/d/b.wasm"]));
        shared.saw(&event(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            &["/d/a.wasm"],
        ));
        assert!(lock(&shared.changed).is_empty());
        shared.saw(&event(rename, &["/d/.a.wasm.tmp", "/d/a.wasm"]));
        assert_eq!(
            *lock(&shared.changed),
            BTreeSet::from([PathBuf::from("/d/a.wasm")])
        );
        let lost = event(EventKind::Other, &[]).set_flag(notify::event::Flag::Rescan);
        shared.saw(&lost);
        assert_eq!(lock(&shared.changed).len(), 2, "a rescan counts every file");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_applied_once_after_it_ends() {
        let wake = Arc::new(Notify::new());
        let started = tokio::time::Instant::now();
        let burst = {
            let wake = Arc::clone(&wake);
            tokio::spawn(async move {
                for _ in 0..5 {
                    wake.notify_one();
                    tokio::time::sleep(QUIET / 2).await;
                }
            })
        };
        settle(&wake, QUIET).await;
        // The last event came at 4 * QUIET / 2; quiet for QUIET after it.
        // The clock is paused: time moves only when every task waits.
        assert_eq!(started.elapsed(), QUIET * 2 + QUIET);
        burst.await.expect("burst");
        // The burst is spent: the next settle waits for a new event.
        let next = tokio::time::timeout(QUIET * 10, settle(&wake, QUIET)).await;
        assert!(next.is_err(), "no event, no apply");
    }

    #[test]
    fn the_fingerprint_changes_with_the_contents_only() {
        let dir = std::env::temp_dir().join(format!("wasmgate-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let (a, missing) = (dir.join("a"), dir.join("missing"));
        std::fs::write(&a, b"one").expect("write");
        let files = [a.clone(), missing.clone()];
        let first = fingerprint(&files);
        assert_eq!(first[&missing], None);
        assert_eq!(first[&a].as_deref(), Some(sha256_hex(b"one").as_str()));
        std::fs::write(&a, b"one").expect("write the same");
        assert_eq!(fingerprint(&files), first);
        std::fs::write(&a, b"two").expect("write another");
        assert_ne!(fingerprint(&files), first);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
