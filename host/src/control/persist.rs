//! The data dir's durable part: component bytes by sha256 and the desired
//! state, each written so that a crash at any moment (`kill -9` included)
//! leaves either the old file or the new one, never a torn one.
//!
//! A write is acknowledged only after its component and then the state
//! naming it are on disk, so a restart serves exactly the last
//! acknowledged state. Leftovers of an interrupted write (temporary files,
//! components no state names) are removed at start.
//!
//! Layout of `data_dir` ([`DataDir`] names it once): `components/<sha256>.wasm`,
//! the state in `state/` (an index and a file per tenant), uploads being
//! compiled in `staging/`, the code cache `cache/`, and certificates the
//! admin API sent in `tls/` (`<sha256>.crt` and `<sha256>.key`, the key
//! readable by the gateway's user only).

use std::path::{Path, PathBuf};

use super::certs::{TlsFiles, TlsPem};
use super::state::DesiredState;
use crate::digest::sha256_hex;
use crate::files;

/// Why the data dir could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// The OS refused a read or a write.
    #[error("{path}: {error}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// `state.json` is not a state this gateway wrote.
    #[error("{path}: not a valid state file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PersistError + '_ {
    move |error| PersistError::Io {
        path: path.to_owned(),
        error,
    }
}

/// [`files::write_atomically`], its error naming the file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    files::write_atomically(path, bytes).map_err(io(path))
}

/// Component bytes by sha256 (`data_dir/components`).
#[derive(Debug, Clone)]
pub struct ComponentStore {
    dir: PathBuf,
}

impl ComponentStore {
    /// The store in `dir`, created on first write.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Where the component with this sha256 is kept.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.wasm"))
    }

    /// Stores `bytes` (whose hash is `sha256`) unless already stored.
    pub fn put(&self, sha256: &str, bytes: &[u8]) -> Result<(), PersistError> {
        let path = self.path(sha256);
        if path.is_file() {
            return Ok(());
        }
        write_atomically(&path, bytes)
    }

    /// The stored bytes of a component, checked against their hash: a file
    /// changed on disk is an error, never served.
    pub fn get(&self, sha256: &str) -> Result<Vec<u8>, PersistError> {
        let path = self.path(sha256);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if sha256_hex(&bytes) != sha256 {
            return Err(PersistError::Corrupt {
                path,
                message: "its bytes do not match the sha256 in its name".into(),
            });
        }
        Ok(bytes)
    }

    /// Removes every file but the components in `keep`: those of versions
    /// no handler keeps any more, and temporary files of interrupted
    /// writes. Failures are logged: garbage is no reason to stop.
    pub fn retain(&self, keep: &std::collections::BTreeSet<&str>) {
        files::remove_unless(&self.dir, |name| {
            name.strip_suffix(".wasm")
                .is_some_and(|sha| keep.contains(sha))
        });
    }
}

/// Certificates and keys the admin API sent (`data_dir/tls`), named by
/// the sha256 of the chain and key together.
#[derive(Debug, Clone)]
pub struct TlsStore {
    dir: PathBuf,
}

impl TlsStore {
    /// Stores a chain and key (the key with mode 0600) unless already
    /// stored; returns the files.
    pub fn put(&self, pem: &TlsPem) -> Result<TlsFiles, PersistError> {
        let name = super::certs::digest(pem.cert.as_bytes(), pem.key.as_bytes());
        let files = TlsFiles {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        if !files.cert.is_file() || !files.key.is_file() {
            files::write_private(&files.key, pem.key.as_bytes()).map_err(io(&files.key))?;
            write_atomically(&files.cert, pem.cert.as_bytes())?;
        }
        Ok(files)
    }

    /// Removes every file of this store that `state` does not name.
    pub fn retain(&self, state: &DesiredState) {
        let named: std::collections::BTreeSet<&Path> = state
            .tenants
            .values()
            .filter_map(|t| t.tls.as_ref())
            .flat_map(|files| [files.cert.as_path(), files.key.as_path()])
            .collect();
        files::remove_unless(&self.dir, |name| {
            named.contains(self.dir.join(name).as_path())
        });
    }
}

/// The data dir's layout, named once: every path in it comes from here.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root` (`runtime.data_dir`), created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Uploaded and configured components by sha256: `components/`.
    pub fn components(&self) -> ComponentStore {
        ComponentStore::new(self.root.join("components"))
    }

    /// The desired state: `state/` (and `state.json`, the layout of
    /// older gateways, read once and replaced).
    pub fn state_file(&self) -> StateFile {
        StateFile {
            dir: self.root.join("state"),
            legacy: self.root.join("state.json"),
        }
    }

    /// Certificates the admin API sent: `tls/`.
    pub fn tls(&self) -> TlsStore {
        TlsStore {
            dir: self.root.join("tls"),
        }
    }

    /// Uploads being compiled by the child, each removed after: `staging/`.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Forgets everything deployed: the state and the components (and any
    /// staged upload), so the next start serves the config file alone. The
    /// code cache stays: it only saves compiling again. Only for a gateway
    /// that is not running on this data dir.
    pub fn forget_deployed(&self) -> Result<(), PersistError> {
        for dir in [
            self.root.join("state"),
            self.root.join("components"),
            self.root.join("tls"),
            self.staging(),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&dir)(e)),
                _ => {}
            }
        }
        let legacy = self.root.join("state.json");
        match std::fs::remove_file(&legacy) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&legacy)(e)),
            _ => Ok(()),
        }
    }

    /// In cluster mode, the revision of the shared state this replica
    /// applied last: `cluster-revision`.
    pub fn cluster_revision(&self) -> PathBuf {
        self.root.join("cluster-revision")
    }

    /// The compiled-code cache: `cache/`.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
}

/// The desired state on disk (`data_dir/state/`): an index (the tenants'
/// names and the next rank) and a file per tenant, so a write rewrites the
/// tenants it changed and no other: one tenant's large state never makes
/// another's writes slow. Each file is replaced atomically; the index
/// names only tenant files already on disk, and a tenant file is removed
/// only once the index no longer names it, so a crash at any moment leaves
/// a state that was acknowledged (or, for a reload that changed several
/// tenants, part of it: the next start applies the file again).
#[derive(Debug, Clone)]
pub struct StateFile {
    /// `data_dir/state`.
    dir: PathBuf,
    /// `data_dir/state.json`: the whole state in one file, as gateways
    /// before the per-tenant layout wrote it; read if there is no index,
    /// removed at the next write.
    legacy: PathBuf,
}

/// `state/index.json`.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Index {
    /// The rank the next tenant the API creates gets.
    next_rank: u64,
    /// The tenants, each in `tenant.NAME.json`.
    tenants: Vec<String>,
}

impl StateFile {
    fn index(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn tenant(&self, name: &str) -> PathBuf {
        // Names are 1-64 of [A-Za-z0-9._-] (`limits::check_name`): with the
        // prefix and suffix, never a path of its own.
        self.dir.join(format!("tenant.{name}.json"))
    }

    /// The stored state, or `None` on a first start.
    pub fn load(&self) -> Result<Option<DesiredState>, PersistError> {
        let Some(index) = read_json::<Index>(&self.index())? else {
            return read_json(&self.legacy);
        };
        let mut state = DesiredState {
            next_rank: index.next_rank,
            ..DesiredState::default()
        };
        for name in index.tenants {
            let path = self.tenant(&name);
            let tenant = read_json(&path)?.ok_or_else(|| PersistError::Corrupt {
                path: path.clone(),
                message: "the index names this tenant, but its file is missing".into(),
            })?;
            state.tenants.insert(name, tenant);
        }
        Ok(Some(state))
    }

    /// Makes the stored state `next`, durably, writing only what differs
    /// from `stored` (what is on disk now; `None`: unknown, write all).
    pub fn save(
        &self,
        stored: Option<&DesiredState>,
        next: &DesiredState,
    ) -> Result<(), PersistError> {
        for (name, tenant) in &next.tenants {
            if stored.and_then(|s| s.tenants.get(name)) != Some(tenant) {
                write_json(&self.tenant(name), tenant)?;
            }
        }
        let index = Index {
            next_rank: next.next_rank,
            tenants: next.tenants.keys().cloned().collect(),
        };
        let same_index = stored.is_some_and(|s| {
            s.next_rank == next.next_rank && s.tenants.keys().eq(next.tenants.keys())
        });
        if !same_index {
            write_json(&self.index(), &index)?;
            self.remove_unnamed(&index);
        }
        Ok(())
    }

    /// Removes tenant files the index does not name, leftovers of
    /// interrupted writes and the single-file state of older gateways.
    /// Failures are logged: garbage is no reason to fail a write.
    fn remove_unnamed(&self, index: &Index) {
        let keep: std::collections::BTreeSet<PathBuf> = index
            .tenants
            .iter()
            .map(|name| self.tenant(name))
            .chain([self.index()])
            .collect();
        let entries = std::fs::read_dir(&self.dir).into_iter().flatten();
        let stale = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| !keep.contains(path))
            .chain(self.legacy.is_file().then(|| self.legacy.clone()));
        for path in stale {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), "cannot remove: {e}");
            }
        }
    }
}

/// The value in the JSON file at `path`, or `None` if there is none.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, PersistError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| PersistError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// Writes `value` as JSON to `path`, durably.
fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), PersistError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| PersistError::Corrupt {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    write_atomically(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::TenantSettings;
    use crate::control::state::{Component, Source};
    use crate::limits::Limits;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasmgate-persist-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn tenant_with_handler(state: &mut DesiredState, tenant: &str) {
        state
            .put_tenant(
                tenant,
                TenantSettings::default(),
                &Limits::default(),
                Source::Api,
            )
            .expect("valid");
        let component = Component {
            sha256: "ab".into(),
            size: 2,
            oci: None,
        };
        state
            .put_handler(tenant, "h", &component, "/h", None, Source::Api)
            .expect("valid");
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_state_round_trips_and_a_first_start_has_none() {
        let dir = scratch("state");
        let file = DataDir::new(&dir).state_file();
        assert_eq!(file.load().expect("readable"), None);
        let mut state = DesiredState::default();
        tenant_with_handler(&mut state, "t");
        file.save(None, &state).expect("saved");
        assert_eq!(file.load().expect("readable"), Some(state));
        // Nothing but the state itself is left in the folder.
        assert_eq!(names(&dir), ["state"]);
        assert_eq!(names(&dir.join("state")), ["index.json", "tenant.t.json"]);
        std::fs::write(dir.join("state/tenant.t.json"), "{ torn").expect("write");
        assert!(matches!(file.load(), Err(PersistError::Corrupt { .. })));
        std::fs::remove_file(dir.join("state/tenant.t.json")).expect("remove");
        assert!(matches!(file.load(), Err(PersistError::Corrupt { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_write_rewrites_only_the_tenants_it_changed() {
        let dir = scratch("per-tenant");
        let file = DataDir::new(&dir).state_file();
        let mut state = DesiredState::default();
        tenant_with_handler(&mut state, "a");
        tenant_with_handler(&mut state, "b");
        file.save(None, &state).expect("saved");
        // Mark a's file: a write that changes b alone must leave it be.
        let a = dir.join("state/tenant.a.json");
        let marked = format!("{}\n", std::fs::read_to_string(&a).expect("read"));
        std::fs::write(&a, &marked).expect("mark");
        let mut next = state.clone();
        next.delete_handler("b", "h").expect("exists");
        file.save(Some(&state), &next).expect("saved");
        assert_eq!(std::fs::read_to_string(&a).expect("read"), marked);
        assert_eq!(file.load().expect("readable"), Some(next.clone()));
        // A deleted tenant's file goes with it.
        let mut last = next.clone();
        last.delete_tenant("b").expect("exists");
        file.save(Some(&next), &last).expect("saved");
        assert_eq!(names(&dir.join("state")), ["index.json", "tenant.a.json"]);
        assert_eq!(file.load().expect("readable"), Some(last));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn forgetting_what_was_deployed_keeps_the_code_cache() {
        let dir = scratch("forget");
        let data = DataDir::new(&dir);
        let mut state = DesiredState::default();
        tenant_with_handler(&mut state, "t");
        data.state_file().save(None, &state).expect("saved");
        data.components().put("ab", b"ab").expect("stored");
        std::fs::create_dir_all(data.cache()).expect("cache");
        std::fs::write(dir.join("state.json"), "{}").expect("legacy");
        data.forget_deployed().expect("forgotten");
        assert_eq!(names(&dir), ["cache"]);
        assert_eq!(data.state_file().load().expect("readable"), None);
        data.forget_deployed()
            .expect("nothing left to forget is no error");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_single_file_state_of_older_gateways_is_read_then_replaced() {
        let dir = scratch("legacy");
        let file = DataDir::new(&dir).state_file();
        let mut state = DesiredState::default();
        tenant_with_handler(&mut state, "t");
        std::fs::create_dir_all(&dir).expect("dir");
        let legacy = serde_json::to_vec(&state).expect("json");
        std::fs::write(dir.join("state.json"), legacy).expect("write");
        assert_eq!(file.load().expect("readable"), Some(state.clone()));
        file.save(None, &state).expect("saved");
        assert_eq!(names(&dir), ["state"]);
        assert_eq!(file.load().expect("readable"), Some(state));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn components_are_checked_against_their_hash_and_garbage_is_collected() {
        let dir = scratch("components");
        let store = ComponentStore::new(&dir);
        let (a, b) = (b"component a".as_slice(), b"component b".as_slice());
        let (sha_a, sha_b) = (sha256_hex(a), sha256_hex(b));
        store.put(&sha_a, a).expect("stored");
        store.put(&sha_b, b).expect("stored");
        assert_eq!(store.get(&sha_a).expect("readable"), a);
        std::fs::write(store.path(&sha_b), b"tampered").expect("write");
        assert!(matches!(
            store.get(&sha_b),
            Err(PersistError::Corrupt { .. })
        ));
        std::fs::write(dir.join(".x.wasm.tmp.1.1"), b"half").expect("write");
        store.retain(&[sha_a.as_str()].into_iter().collect());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("{sha_a}.wasm")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
