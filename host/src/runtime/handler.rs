//! A handler version: component bytes compiled, type-checked against its
//! world and pre-instantiated once, at load time, so a request only pays for
//! a fresh instance.
//!
//! Two worlds are served: `wasmgate:handler` (ours: a component exporting
//! `handle`, built with the SDK) and `wasi:http/proxy` (the standard one:
//! a component exporting `wasi:http/incoming-handler`, from any
//! toolchain). Which one a component implements is read from its exports
//! at load.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::Component;
use wasmtime::component::types::{ComponentExtern, ComponentItem};
use wasmtime::{Store, UpdateDeadline};

use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::bindings::HandlerPre;
use super::block_on::block_on;
use super::context::HandlerContext;
use super::engine::Runtime;
use super::outbound::Outbound;
use super::store::State;
use crate::digest::sha256_hex;
use crate::limits::Limits;

/// How long the instance made at load time to prove that the version can
/// be instantiated may take.
const INSTANTIATE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The component file.
        path: String,
        /// What the OS said (part of the message, not a separate cause, so
        /// error chains do not repeat it).
        error: std::io::Error,
    },
    /// The bytes are not a valid component (or are a core module).
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// The component fits neither world: an import the gateway does not
    /// provide, or neither export (or a mistyped one).
    #[error("component does not fit the wasmgate:handler or wasi:http/proxy world: {0}")]
    World(String),
    /// The component cannot be instantiated under its tenant's limits (its
    /// initial memory is above `memory_bytes`, say).
    #[error("component cannot be instantiated under the tenant's limits: {0}")]
    Instantiate(String),
    /// The compile process refused the component (its own message), or
    /// the compile crossed `admin.compile_timeout_ms` or
    /// `admin.compile_memory_bytes`.
    #[error("{0}")]
    Child(String),
}

/// One loaded version of a handler.
pub struct HandlerVersion {
    /// Hex sha256 of the component bytes.
    pub sha256: String,
    /// When this version was loaded.
    pub loaded_at: SystemTime,
    /// The limits each of its requests runs with.
    pub limits: Limits,
    /// Its machine code came from the code cache, not the compiler: logged,
    /// so an operator (and a test) can see that a restart compiled nothing.
    pub from_cache: bool,
    /// Shared with host functions: config and metrics.
    pub context: Arc<HandlerContext>,
    /// Imports resolved and exports checked once; instantiation from it is
    /// cheap.
    pub(super) pre: World,
}

/// The world a component implements, pre-instantiated.
#[derive(Clone)]
pub(super) enum World {
    /// `wasmgate:handler`: exports `handle`.
    Handler(HandlerPre<State>),
    /// `wasi:http/proxy`: exports `wasi:http/incoming-handler`.
    Proxy(ProxyPre<State>),
}

impl World {
    /// The world's name, as `wasmgate check` prints it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Handler(_) => "wasmgate:handler",
            Self::Proxy(_) => "wasi:http/proxy",
        }
    }
}

impl std::fmt::Debug for HandlerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerVersion")
            .field("sha256", &self.sha256)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HandlerVersion {
    /// Reads, compiles and links a component file.
    pub fn load_file(
        runtime: &Runtime,
        path: &Path,
        limits: Limits,
        context: Arc<HandlerContext>,
    ) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|error| LoadError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::load(runtime, &bytes, limits, context)
    }

    /// Compiles (or takes from the runtime's code cache) and links
    /// component bytes. Compilation is CPU-heavy (tens of ms): call it off
    /// the async workers. Only a component that links is cached.
    pub fn load(
        runtime: &Runtime,
        bytes: &[u8],
        limits: Limits,
        context: Arc<HandlerContext>,
    ) -> Result<Self, LoadError> {
        let sha256 = sha256_hex(bytes);
        let compiled = Compiled::get(runtime, &sha256, || Ok(bytes.to_vec()))?;
        Self::link(runtime, &compiled, limits, context)
    }

    /// A version of `compiled` with `limits` and `context`: its imports
    /// resolved, and one instance made under `limits` to prove that every
    /// request's can be (the pool needs a free slot for it: the runtime
    /// keeps one for loading).
    pub fn link(
        runtime: &Runtime,
        compiled: &Compiled,
        limits: Limits,
        context: Arc<HandlerContext>,
    ) -> Result<Self, LoadError> {
        let pre = link(runtime, &compiled.component)?;
        let version = Self {
            sha256: compiled.sha256.clone(),
            loaded_at: SystemTime::now(),
            limits,
            from_cache: compiled.from_cache,
            context,
            pre,
        };
        version.try_instantiate(runtime)?;
        Ok(version)
    }

    /// The world this version implements.
    pub fn world(&self) -> &'static str {
        self.pre.name()
    }

    /// A fresh store for one instance of this version, due by `deadline`,
    /// its outbound calls under `outbound`: its memory limiter, its fuel,
    /// and its time slices. Every instance is made in one: a request's, and
    /// the one a load makes as a check.
    pub(super) fn new_store(
        &self,
        runtime: &Runtime,
        outbound: Arc<Outbound>,
        deadline: Instant,
    ) -> wasmtime::Result<Store<State>> {
        let mut store = Store::new(
            &runtime.engine,
            State::new(
                Arc::clone(&self.context),
                outbound,
                self.limits.memory_bytes,
                deadline,
            ),
        );
        store.limiter(|state| &mut state.limiter);
        if runtime.consume_fuel {
            store.set_fuel(self.limits.fuel)?;
        }
        // Every tick is the end of a time slice: the guest yields to its
        // worker's scheduler and resumes when it is picked again. Ticks only
        // approximate time (on a loaded machine the ticker oversleeps, or
        // ticks come early when the executor asks running guests to yield),
        // so the real clock decides when the deadline has passed.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            Ok(if Instant::now() >= store.data().deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        Ok(store)
    }

    /// Makes one instance, as a request would, to prove that it can be.
    fn try_instantiate(&self, runtime: &Runtime) -> Result<(), LoadError> {
        let failed = |e: wasmtime::Error| LoadError::Instantiate(format!("{e:#}"));
        let deadline = Instant::now() + INSTANTIATE_CHECK_TIMEOUT;
        let mut store = self
            .new_store(runtime, Outbound::deny_all(), deadline)
            .map_err(failed)?;
        match &self.pre {
            World::Handler(pre) => block_on(pre.instantiate_async(&mut store)).map(drop),
            World::Proxy(pre) => block_on(pre.instantiate_async(&mut store)).map(drop),
        }
        .map_err(failed)
    }
}

/// A component's machine code, shared by every handler that runs it.
#[derive(Clone)]
pub struct Compiled {
    /// Hex sha256 of the component bytes.
    pub sha256: String,
    /// The code, ready to link.
    pub component: Component,
    /// Whether it came from the code cache.
    pub from_cache: bool,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("sha256", &self.sha256)
            .field("from_cache", &self.from_cache)
            .finish_non_exhaustive()
    }
}

impl Compiled {
    /// The code for the component with this sha256: from the code cache if
    /// it has it, else compiled from `bytes()` (whose hash must be
    /// `sha256`) and cached once it links.
    pub fn get(
        runtime: &Runtime,
        sha256: &str,
        bytes: impl FnOnce() -> Result<Vec<u8>, LoadError>,
    ) -> Result<Self, LoadError> {
        let cached = runtime
            .cache
            .as_ref()
            .and_then(|cache| cache.get(&runtime.engine, sha256));
        if let Some(component) = cached {
            return Ok(Self {
                sha256: sha256.to_owned(),
                component,
                from_cache: true,
            });
        }
        let component = compile(runtime, &bytes()?)?;
        link(runtime, &component)?;
        if let Some(cache) = &runtime.cache {
            cache.put(&runtime.engine, sha256, &component);
        }
        Ok(Self {
            sha256: sha256.to_owned(),
            component,
            from_cache: false,
        })
    }
}

fn compile(runtime: &Runtime, bytes: &[u8]) -> Result<Component, LoadError> {
    if !bytes.starts_with(b"\0asm") {
        let start: String = bytes
            .iter()
            .take(8)
            .flat_map(|b| b.escape_ascii())
            .map(char::from)
            .collect();
        return Err(LoadError::Compile(format!(
            "not a WebAssembly file (it starts with \"{start}\", not \"\\0asm\")"
        )));
    }
    if wasmparser_is_core_module(bytes) {
        return Err(LoadError::Compile(
            "this is a core wasm module; build the handler for wasm32-wasip2 to get a component"
                .into(),
        ));
    }
    Component::new(&runtime.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))
}

/// The export that makes a component a `wasi:http/proxy` handler (any
/// 0.2.x version).
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2.";

/// Resolves the component's imports against the linker and finds its world
/// by its exports: `handle` (wasmgate:handler) or
/// `wasi:http/incoming-handler` (wasi:http/proxy), with the world's types.
fn link(runtime: &Runtime, component: &Component) -> Result<World, LoadError> {
    let world = |e: wasmtime::Error| LoadError::World(format!("{e:#}"));
    let pre = runtime.linker.instantiate_pre(component).map_err(world)?;
    let exports: Vec<String> = component
        .component_type()
        .exports(&runtime.engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if exports.iter().any(|name| name == "handle") {
        return HandlerPre::new(pre).map(World::Handler).map_err(world);
    }
    if exports
        .iter()
        .any(|name| name.starts_with(INCOMING_HANDLER))
    {
        return ProxyPre::new(pre).map(World::Proxy).map_err(world);
    }
    Err(LoadError::World(format!(
        "it exports neither `handle` (the wasmgate:handler world) nor `{INCOMING_HANDLER}x` (the wasi:http/proxy world); it exports: {}",
        if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        }
    )))
}

/// Core modules and components share the magic and differ in the version
/// field: core modules are version 1, layer 0.
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// What `wasmgate check` reports about a component.
#[derive(Debug)]
pub struct ComponentInfo {
    /// Hex sha256 of the bytes.
    pub sha256: String,
    /// Names of the component's imports.
    pub imports: Vec<String>,
    /// Names of the component's exports.
    pub exports: Vec<String>,
    /// The world it implements: `wasmgate:handler` or `wasi:http/proxy`.
    pub world: &'static str,
}

impl ComponentInfo {
    /// Compiles and links `bytes` like a load would, and lists what the
    /// component imports and exports.
    pub fn check(runtime: &Runtime, bytes: &[u8]) -> Result<Self, LoadError> {
        let component = compile(runtime, bytes)?;
        let ty = component.component_type();
        let describe = |(name, item): (&str, ComponentExtern<'_>)| {
            let kind = match item.ty {
                ComponentItem::ComponentFunc(_) => "func",
                ComponentItem::CoreFunc(_) => "core func",
                ComponentItem::Module(_) => "module",
                ComponentItem::Component(_) => "component",
                ComponentItem::ComponentInstance(_) => "instance",
                ComponentItem::Type(_) => "type",
                ComponentItem::Resource(_) => "resource",
            };
            format!("{name} ({kind})")
        };
        let world = link(runtime, &component)?;
        Ok(Self {
            sha256: sha256_hex(bytes),
            imports: ty.imports(&runtime.engine).map(describe).collect(),
            exports: ty.exports(&runtime.engine).map(describe).collect(),
            world: world.name(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_modules_are_told_apart_from_components() {
        assert!(wasmparser_is_core_module(b"\0asm\x01\0\0\0"));
        assert!(!wasmparser_is_core_module(b"\0asm\x0d\0\x01\0"));
        assert!(!wasmparser_is_core_module(b"\0as"));
    }

    #[test]
    fn garbage_is_a_compile_error_in_one_line() {
        let runtime = Runtime::for_checking().expect("engine");
        let err = ComponentInfo::check(&runtime, b"not wasm at all").expect_err("invalid");
        assert!(matches!(err, LoadError::Compile(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "not a valid WebAssembly component: not a WebAssembly file (it starts with \"not wasm\", not \"\\0asm\")"
        );
    }

    #[test]
    fn a_version_that_cannot_instantiate_under_its_limits_is_refused_at_load() {
        let limits = Limits {
            memory_bytes: 65536,
            ..Limits::default()
        };
        let runtime = Runtime::new(1, Limits::default().memory_bytes, true).expect("runtime");
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let context = Arc::new(HandlerContext {
            config: Default::default(),
            metrics: metrics.handler("t", "hello"),
        });
        let path = wasmgate_handler_components::require(wasmgate_handler_components::HELLO);
        // A Rust guest starts with more than one page of memory.
        let err = HandlerVersion::load_file(&runtime, path.as_ref(), limits, Arc::clone(&context))
            .expect_err("one page is too little");
        assert!(matches!(err, LoadError::Instantiate(_)), "{err}");
        HandlerVersion::load_file(&runtime, path.as_ref(), Limits::default(), context)
            .expect("the default limits fit");
    }
}
