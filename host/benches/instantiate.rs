//! In-process benchmark: a fresh instance of `hello` per call, with fuel,
//! epoch deadline and memory limiter on, exactly as the gateway's workers
//! run it, minus the network and the queue.
//!
//! Run by `cargo xtask bench` (or `cargo bench -p wasmgate --bench
//! instantiate -- [--quick]`). Prints one JSON object: p50/p99 of
//! instantiate + call in microseconds, and instances per second at 1 thread
//! and at one thread per core. A second run of calls splits each one at
//! the reply (the gateway's worker answers the client there, before it
//! tears the instance down): `to_reply_p50_us` and `teardown_p50_us`. A
//! custom harness because the report needs percentiles and multi-thread
//! throughput, which criterion does not give.
//!
//! `-- --calls N` makes exactly N calls (after the warm-up) in
//! `measured_calls` and prints nothing: for instruction counts,
//! `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*measured_calls*' target/release/deps/instantiate-*
//! --calls 1000`. `-- --component PATH` measures another component.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgate::limits::Limits;
use wasmgate::metrics::Metrics;
use wasmgate::runtime::{GuestRequest, HandlerContext, HandlerVersion, Runtime, call_guest};
use wasmgate_handler_components as components;

/// The request `wrk` sends, as the gateway hands it to a worker. Built
/// once: in the gateway hyper parses it on the connection task, so it is not
/// part of instantiate + call.
fn request() -> GuestRequest {
    let (head, ()) = http::Request::get("/hello")
        .header("host", "localhost")
        .body(())
        .expect("valid request")
        .into_parts();
    GuestRequest::new(head, bytes::Bytes::new())
}

fn call(
    runtime: &Runtime,
    version: &Arc<HandlerVersion>,
    request: &GuestRequest,
    metrics: &Metrics,
) {
    call_then(runtime, version, request, metrics, || ());
}

/// [`call`], running `replied` when the outcome is handed over.
fn call_then(
    runtime: &Runtime,
    version: &Arc<HandlerVersion>,
    request: &GuestRequest,
    metrics: &Metrics,
    replied: impl FnOnce(),
) {
    call_guest(
        runtime,
        version,
        request,
        Instant::now() + Duration::from_secs(10),
        metrics,
        |outcome| {
            assert!(
                outcome.result.is_ok(),
                "hello failed: {:?}",
                outcome.result.err()
            );
            replied();
        },
    );
}

/// Runs `f` inside a current-thread tokio runtime, as a gateway worker
/// thread does: `call_guest` then drives the guest's fiber itself. Outside
/// any runtime it would go through WASI's shared multi-thread runtime,
/// which no worker uses and which costs more than the call.
fn as_a_worker<R>(f: impl FnOnce() -> R) -> R {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let _entered = runtime.enter();
    f()
}

/// Calls per second over `duration` on `threads` threads.
fn throughput(
    runtime: &Runtime,
    version: &Arc<HandlerVersion>,
    request: &GuestRequest,
    metrics: &Arc<Metrics>,
    threads: usize,
    duration: Duration,
) -> f64 {
    let started = Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    as_a_worker(|| {
                        let mut n = 0u64;
                        while started.elapsed() < duration {
                            call(runtime, version, request, metrics);
                            n += 1;
                        }
                        n
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    as_a_worker(measure);
}

/// The value after `flag` on the command line, if any.
fn arg(flag: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != flag);
    args.next()?;
    args.next()
}

/// `calls` calls in a function of their own, which callgrind counts alone.
#[inline(never)]
fn measured_calls(
    runtime: &Runtime,
    version: &Arc<HandlerVersion>,
    request: &GuestRequest,
    metrics: &Metrics,
    calls: u64,
) {
    for _ in 0..calls {
        call(runtime, version, request, metrics);
    }
}

fn measure() {
    let quick = std::env::args().any(|a| a == "--quick");
    let calls: Option<u64> = arg("--calls").map(|n| n.parse().expect("--calls takes a number"));
    let component = arg("--component").unwrap_or_else(|| components::HELLO.to_owned());
    let duration = if quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let metrics = Arc::new(Metrics::new());
    let limits = Limits::default();
    let runtime = Runtime::new(threads as u32, limits.memory_bytes, true).expect("runtime");
    let context = Arc::new(HandlerContext {
        config: Default::default(),
        metrics: metrics.handler("bench", "hello"),
    });
    let version = Arc::new(
        HandlerVersion::load_file(
            &runtime,
            components::require(&component).as_ref(),
            limits,
            context,
        )
        .expect("load hello"),
    );

    let request = request();
    // Warm up: fault in pool slots and code pages.
    for _ in 0..2_000 {
        call(&runtime, &version, &request, &metrics);
    }
    if let Some(calls) = calls {
        measured_calls(&runtime, &version, &request, &metrics, calls);
        return;
    }
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        let t = Instant::now();
        call(&runtime, &version, &request, &metrics);
        samples.push(t.elapsed().as_nanos() as f64 / 1_000.0);
    }
    let mut to_reply = Vec::new();
    let mut teardown = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        let t = Instant::now();
        let mut reply = t;
        call_then(&runtime, &version, &request, &metrics, || {
            reply = Instant::now();
        });
        let end = Instant::now();
        to_reply.push((reply - t).as_nanos() as f64 / 1_000.0);
        teardown.push((end - reply).as_nanos() as f64 / 1_000.0);
    }
    let p50 = |samples: &mut Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples[(samples.len() - 1) / 2]
    };
    let (to_reply_p50, teardown_p50) = (p50(&mut to_reply), p50(&mut teardown));
    samples.sort_by(f64::total_cmp);
    let percentile = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    // The gateway's own histogram times `instantiate` alone.
    let instantiate_mean_us = metrics.instantiation_duration.get_sample_sum()
        / metrics.instantiation_duration.get_sample_count() as f64
        * 1e6;
    let one = throughput(&runtime, &version, &request, &metrics, 1, duration);
    let all = throughput(&runtime, &version, &request, &metrics, threads, duration);
    println!(
        "{{\"instantiate_call_p50_us\": {:.2}, \"instantiate_call_p99_us\": {:.2}, \
         \"instances_per_sec_1_thread\": {:.0}, \"instances_per_sec_n_threads\": {:.0}, \
         \"instantiate_mean_us\": {instantiate_mean_us:.2}, \"to_reply_p50_us\": {to_reply_p50:.2}, \
         \"teardown_p50_us\": {teardown_p50:.2}, \"threads\": {threads}, \"samples\": {}}}",
        percentile(0.5),
        percentile(0.99),
        one,
        all,
        samples.len()
    );
}
