//! `state`: tries to keep state from one request to the next, so tests can
//! prove that every request gets a fresh instance. Mounted wherever the test
//! config puts it.
//!
//! Every request first reads what an earlier request in the same instance
//! would have left, then leaves its own traces, and answers 200 with one
//! `key=value` line each:
//!
//! | key | where the state lives | fresh instance |
//! |---|---|---|
//! | `visits` | a zero-initialised static counter (`.bss`), then incremented | `0` |
//! | `tag` | a static initialised to [`INITIAL_TAG`] (`.data`), then overwritten | [`INITIAL_TAG`] |
//! | `heap` | strings a static `Vec` keeps on the heap, one pushed per request | empty |
//! | `pages` | linear memory pages at entry; the request then grows memory by [`GROW_PAGES`] | the same for every request |
//! | `pages_after` | pages after growing | `pages` + [`GROW_PAGES`] or more |
//! | `who` | the handler's `who` config value | what the config says |
//! | `uri` | the request's path and query | as sent |
//! | `wall_ns` | the wall clock at entry, ns since the Unix epoch | orders requests served one after another |
//!
//! It also logs `state: request for WHO URI` at info level. Two query
//! parameters change what it does:
//! - `metric=NAME` adds 1 to the guest counter `NAME` (the gateway checks
//!   the name);
//! - `exit=N` calls `std::process::exit(N)`: a component has no process to
//!   end, so the gateway sees a trap that is neither a panic nor a limit
//!   (kind `other`).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmgate_sdk::{Request, RequestExt, config, log, metrics};

/// What `tag` holds in a fresh instance; any non-zero value puts the static
/// in the data segment, which instantiation writes.
pub const INITIAL_TAG: u64 = 0x5EED_F00D;

/// Wasm pages (64 KiB each) every request adds to its memory: more than any
/// difference between requests, so a reused memory shows in `pages`.
pub const GROW_PAGES: usize = 64;

/// Requests this instance has served (`.bss`: zeroed memory).
static VISITS: AtomicU64 = AtomicU64::new(0);
/// Overwritten by every request (`.data`: initialised memory).
static TAG: AtomicU64 = AtomicU64::new(INITIAL_TAG);
/// One entry per request served, on the heap.
static HEAP: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[wasmgate_sdk::handler]
fn state(req: Request) -> String {
    if let Some(code) = req.query("exit").and_then(|v| v.parse::<i32>().ok()) {
        std::process::exit(code);
    }
    let pages = memory_pages();
    let visits = VISITS.fetch_add(1, Ordering::Relaxed);
    let tag = TAG.swap(visits.wrapping_add(1), Ordering::Relaxed);
    let who = config::get("who").unwrap_or_default();
    let uri = req.uri().to_string();
    let heap = {
        let mut heap = HEAP
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = heap.join(",");
        heap.push(format!("{who}{uri}"));
        before
    };
    let pages_after = grow_memory(GROW_PAGES);
    if let Some(name) = req.query("metric") {
        metrics::counter_add(&name, 1);
    }
    log::info(&format!("state: request for {who} {uri}"));
    report(&[
        ("visits", visits.to_string()),
        ("tag", tag.to_string()),
        ("heap", heap),
        ("pages", pages.to_string()),
        ("pages_after", pages_after.to_string()),
        ("who", who),
        ("uri", uri),
        ("wall_ns", wall_ns().to_string()),
    ])
}

/// One `key=value` line per entry.
fn report(entries: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (key, value) in entries {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{key}={value}");
    }
    out
}

fn wall_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The size of linear memory 0, in pages.
#[cfg(target_arch = "wasm32")]
fn memory_pages() -> usize {
    core::arch::wasm32::memory_size::<0>()
}

/// Grows linear memory 0 by `pages` and returns its new size in pages.
#[cfg(target_arch = "wasm32")]
fn grow_memory(pages: usize) -> usize {
    // The allocator copes with memory grown behind its back: it asks for
    // more with memory.grow too and uses whatever it is given.
    core::arch::wasm32::memory_grow::<0>(pages);
    core::arch::wasm32::memory_size::<0>()
}

/// A native build (unit tests) has no wasm memory to measure.
#[cfg(not(target_arch = "wasm32"))]
fn memory_pages() -> usize {
    0
}

#[cfg(not(target_arch = "wasm32"))]
fn grow_memory(_pages: usize) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{Context, get};

    #[test]
    fn reports_config_and_uri_and_logs_them() {
        let mut t = Context::new().config("who", "alice");
        let resp = t.call(state, get("/state?metric=hits"));
        let text = String::from_utf8(resp.body().clone()).expect("utf-8");
        assert!(
            text.contains("\nwho=alice\nuri=/state?metric=hits\n"),
            "{text}"
        );
        assert_eq!(t.counter("hits"), 1);
        assert_eq!(
            t.logs()[0].message,
            "state: request for alice /state?metric=hits"
        );
    }

    #[test]
    fn report_has_one_line_per_entry() {
        let text = report(&[("a", "1".into()), ("b", String::new())]);
        assert_eq!(text, "a=1\nb=\n");
    }
}
