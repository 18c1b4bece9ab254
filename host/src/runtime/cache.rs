//! The compiled-code cache: a restart loads the machine code it compiled
//! before instead of compiling again.
//!
//! Files are keyed by the component's sha256 and the engine's compatibility
//! hash (wasmtime version, target, compilation settings), so a changed
//! engine never picks up stale code. Only files this cache wrote are ever
//! deserialized; component bytes from anywhere else are always compiled.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// A folder of precompiled components (`data_dir/cache`).
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: PathBuf,
}

impl CodeCache {
    /// A cache in `dir`, created on first write.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file for a component with this sha256 compiled by `engine`.
    pub fn path(&self, engine: &Engine, sha256: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir
            .join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
    }

    /// The cached component, if there is a usable one. A corrupt or
    /// incompatible file is reported and ignored (it is overwritten after
    /// the next compilation).
    pub fn get(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(engine, sha256);
        if !path.is_file() {
            return None;
        }
        match deserialize(engine, &path) {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable cached code: {e:#}");
                None
            }
        }
    }

    /// Removes compiled code of components not in `keep` (by sha256):
    /// those no handler keeps a version of any more. Failures are logged.
    pub fn retain(&self, keep: &std::collections::BTreeSet<&str>) {
        crate::files::remove_unless(&self.dir, |name| {
            keep.contains(name.split('-').next().unwrap_or_default())
        });
    }

    /// Stores compiled code; failing to is reported, never fatal.
    pub fn put(&self, engine: &Engine, sha256: &str, component: &Component) {
        let path = self.path(engine, sha256);
        let written = component
            .serialize()
            .map_err(|e| format!("serializing: {e:#}"))
            .and_then(|bytes| {
                crate::files::write_atomically(&path, &bytes).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), "could not cache compiled code: {e}");
        }
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the file be produced by `serialize` of
    // a compatible engine and not be modified. Only `put` writes into this
    // folder, under a name that includes the engine's compatibility hash;
    // wasmtime additionally checks the header and engine settings. Whoever
    // can write the data dir can already replace the gateway itself.
    unsafe { Component::deserialize_file(engine, path) }
}
