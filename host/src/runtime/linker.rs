//! The linker every handler version is resolved against: WASI with no
//! capabilities, its blocking calls bounded by the request's deadline,
//! `wasi:http` (types, and the outgoing handler behind the tenant's
//! allowlist), and the `wasmgate:handler` world's own imports. Built once
//! per engine.

use wasmtime::Engine;
use wasmtime::component::Linker;

use super::store::State;
use super::{deadline, host_fns};

/// The linker with every import of the world.
pub(super) fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    deadline::add_to_linker(&mut linker)?;
    host_fns::add_to_linker(&mut linker)?;
    Ok(linker)
}
