//! Files the gateway keeps in its data dir: each written so that a crash
//! at any moment (`kill -9` or a power cut) leaves the old file or the new
//! one, never a torn one, and folders swept of what no one names any more.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` durably: a temporary file in the same folder,
/// fsynced, renamed over `path`, and the folder fsynced so the rename
/// itself survives a power cut.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_new(path, bytes, false)
}

/// [`write_atomically`] for a secret (a private key): the file is readable
/// and writable by the gateway's user only (mode 0600) from its creation.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_new(path, bytes, true)
}

/// Writes `bytes` to `path` durably, mode 0600 if `private`.
fn write_new(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Unique per process and write: writes may run concurrently.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file_name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let temporary = dir.join(format!(".{file_name}.tmp.{}.{n}", std::process::id()));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut file = options.open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Removes every file in `dir` whose name `keep` refuses (leftovers of
/// interrupted writes among them). Failures are logged: garbage is no
/// reason to stop.
pub fn remove_unless(dir: &Path, keep: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        if !keep(&name.to_string_lossy())
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(path = %entry.path().display(), "cannot remove: {e}");
        }
    }
}
