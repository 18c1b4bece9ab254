//! Host bindings generated from `wit/` (the one source of truth for the
//! `wasmgate:handler` world): the types guests see and the `add_to_linker`
//! functions of the world's imports.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    ownership: Borrowing {
        duplicate_if_necessary: true
    },
    // Guest calls run on fibers, so a running guest can give its
    // worker back at every epoch tick (`executor.rs`).
    exports: { default: async },
});

/// A guest's response as the world defines it, before validation.
pub(super) use self::wasmgate::handler::types::Response as GuestResponse;
