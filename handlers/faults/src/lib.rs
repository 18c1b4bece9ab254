//! `faults`: misbehaves on purpose so the gateway's limits can be tested.
//! Mounted at `/faults`; the last path segment picks the fault:
//!
//! | path | what the guest does | what the gateway should do |
//! |---|---|---|
//! | `/faults/loop` | spins forever | stop it when fuel or the deadline runs out |
//! | `/faults/oom` | allocates 1 MiB chunks until refused | trap at the memory cap |
//! | `/faults/panic` | panics | report the trap |
//! | `/faults/stack` | recurses without bound | trap on stack overflow |
//! | `/faults/badstatus` | returns status 1000 | answer 502 `bad_response` |
//! | `/faults/metrics` | writes 5000 metric names plus invalid ones, then 200 | drop the excess and invalid names |
//!
//! Any other path gets 404 with the list of faults.

use std::hint::black_box;

use wasmgate_sdk::http::StatusCode;
use wasmgate_sdk::{IntoResponse, RawResponse, Request, metrics};

/// Every fault, for the 404 text.
const FAULTS: &str = "loop, oom, panic, stack, badstatus, metrics";

/// Distinct valid counter names `metrics` registers.
const FLOOD_NAMES: u32 = 5000;

#[wasmgate_sdk::handler]
fn faults(req: Request) -> RawResponse {
    let fault = req.uri().path().rsplit('/').next().unwrap_or_default();
    match fault {
        "loop" => spin_forever(),
        "oom" => exhaust_memory(),
        "panic" => panic!("faults: deliberate panic"),
        "stack" => {
            let seed = req.uri().path().len() as u64;
            raw(StatusCode::OK, format!("{}\n", recurse(seed, 0)))
        }
        "badstatus" => RawResponse {
            status: 1000,
            headers: Vec::new(),
            body: b"status 1000\n".to_vec(),
        },
        "metrics" => {
            flood_metrics();
            raw(StatusCode::OK, "flooded\n")
        }
        _ => raw(
            StatusCode::NOT_FOUND,
            format!("unknown fault; try one of: {FAULTS}\n"),
        ),
    }
}

/// An ordinary response as a [`RawResponse`], the one return type here.
fn raw(status: StatusCode, body: impl IntoResponse) -> RawResponse {
    (status, body).into_response().into()
}

fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        // `black_box` makes every iteration observable, so no optimisation
        // can shrink this to anything but a loop that burns fuel.
        counter = black_box(counter.wrapping_add(1));
    }
}

fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touching every page makes the memory real; the allocation failure
        // at the cap aborts, which traps the instance.
        let chunk = vec![black_box(1u8); CHUNK];
        chunks.push(black_box(chunk));
    }
}

/// Recurses until wasm's own call stack is gone. Everything stays in wasm
/// locals (nothing address-taken), so the overflow hits the engine's stack
/// limit (`stack_overflow`), not Rust's shadow stack in linear memory, which
/// would surface as an out-of-bounds memory access instead. The seed comes
/// from the request so nothing is known at compile time, and the result is
/// used after the call, so this is neither a loop nor a tail call.
fn recurse(seed: u64, depth: u64) -> u64 {
    if depth == u64::MAX {
        return seed;
    }
    let below = recurse(seed.rotate_left(7) ^ depth, depth + 1);
    below.wrapping_mul(31).wrapping_add(seed)
}

fn flood_metrics() {
    for i in 0..FLOOD_NAMES {
        metrics::counter_add(&format!("flood_{i}"), 1);
    }
    // Invalid names the gateway must drop without failing the request.
    metrics::counter_add("Bad-Name", 1);
    metrics::counter_add("", 1);
    metrics::counter_add(&"x".repeat(200), 1);
}
