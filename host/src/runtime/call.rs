//! One guest call: a fresh store with the version's limits, instantiate,
//! call `handle`, classify a trap, validate the response.
//!
//! Runs on whatever thread calls it (the executor's workers, benchmarks);
//! it never blocks past the request's deadline: fuel and epochs stop wasm
//! code, and the blocking host calls wait at most until the deadline
//! (see `deadline.rs`).

use std::borrow::Borrow;
use std::sync::Arc;
use std::time::Instant;

use std::task::Poll;

use bytes::Bytes;
use wasmtime::{Store, Trap};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::bindings::HandlerPre;
use super::block_on::block_on;
use super::engine::Runtime;
use super::handler::{HandlerVersion, World};
use super::request::GuestRequest;
use super::response;
use super::store::State;
use crate::error::{RequestError, TrapKind};
use crate::guest_log::escape;
use crate::metrics::Metrics;

/// Longest guest text (stderr, trap reason) in one log line, after
/// escaping; the guest keeps at most 4 KiB of stderr anyway.
const MAX_LOGGED_STDERR: usize = 4096;

/// The result of one guest call.
#[derive(Debug)]
pub struct GuestOutcome {
    /// The validated response, or why there is none.
    pub result: Result<http::Response<Bytes>, RequestError>,
    /// Fuel the guest consumed, when it ran.
    pub fuel_consumed: Option<u64>,
}

/// Runs one request in a fresh instance with the version's limits, on the
/// calling thread, and hands the outcome to `reply`. Benchmarks call this.
///
/// `reply` runs before the instance is torn down: dropping the store resets
/// the instance's memory for the next request (a page-map scan in the
/// kernel and copies of the dirty pages, about a quarter of a `hello`
/// call's time), and the client need not wait for that.
///
/// This blocking form runs the guest to completion on the calling thread;
/// the executor's workers use `call_guest_async` and switch between
/// guests at its yields.
pub fn call_guest(
    runtime: &Runtime,
    version: &Arc<HandlerVersion>,
    request: &GuestRequest,
    deadline: Instant,
    metrics: &Metrics,
    reply: impl FnOnce(GuestOutcome),
) {
    block_on(call_guest_async(
        runtime,
        version,
        request,
        deadline,
        metrics,
        |outcome, _| reply(outcome),
    ));
}

/// [`call_guest`] as a future: the guest runs on a fiber when polled and
/// the future is pending at every epoch tick (woken at once: it yields,
/// it does not wait) and while the guest waits in `wasi:io/poll`.
///
/// `reply` gets the request back with the outcome, so that the executor
/// frees it on the thread that allocated it.
pub(super) async fn call_guest_async<R: Borrow<GuestRequest>>(
    runtime: &Runtime,
    version: &Arc<HandlerVersion>,
    request: R,
    deadline: Instant,
    metrics: &Metrics,
    reply: impl FnOnce(GuestOutcome, R),
) {
    let (outcome, store) = run_guest(runtime, version, request.borrow(), deadline, metrics).await;
    reply(outcome, request);
    drop(store);
}

/// [`call_guest`] up to the outcome; also returns the store, if one was
/// made, so the caller decides when it is torn down.
async fn run_guest(
    runtime: &Runtime,
    version: &Arc<HandlerVersion>,
    request: &GuestRequest,
    deadline: Instant,
    metrics: &Metrics,
) -> (GuestOutcome, Option<Store<State>>) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        let outcome = GuestOutcome {
            result: Err(RequestError::Expired),
            fuel_consumed: None,
        };
        return (outcome, None);
    }
    let limits = version.limits;
    let mut store = match version.new_store(runtime, request.outbound(), deadline) {
        Ok(store) => store,
        Err(e) => {
            tracing::error!("setting up a store: {e:#}");
            let outcome = GuestOutcome {
                result: Err(RequestError::Trap(TrapKind::Other)),
                fuel_consumed: None,
            };
            return (outcome, None);
        }
    };

    let result = match &version.pre {
        World::Handler(pre) => {
            call_handler(pre, &mut store, request, metrics, limits.max_response_bytes).await
        }
        World::Proxy(pre) => {
            call_proxy(pre, &mut store, request, metrics, limits.max_response_bytes).await
        }
    };
    let fuel_consumed = runtime
        .consume_fuel
        .then(|| limits.fuel - store.get_fuel().unwrap_or(0));
    let context = &version.context;
    let (tenant, handler) = (&context.metrics.tenant, &context.metrics.handler);
    // Guest text is escaped (one line per message, no terminal escapes)
    // and every line about a guest spends its handler's log budget.
    let stderr = || {
        let stderr = store.data().stderr().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr).trim_end().to_owned();
        escape(&stderr, MAX_LOGGED_STDERR).into_owned()
    };
    let result = match result {
        Ok(response) => {
            if tracing::enabled!(tracing::Level::DEBUG) && context.log_permit() {
                let stderr = stderr();
                if !stderr.is_empty() {
                    tracing::debug!(%tenant, %handler, "guest stderr: {stderr}");
                }
            }
            response
        }
        Err(e) => {
            let kind = classify(&e, store.data().limiter.refused);
            if tracing::enabled!(tracing::Level::WARN) && context.log_permit() {
                let reason = e
                    .downcast_ref::<Trap>()
                    .map_or_else(|| format!("{e:#}"), Trap::to_string);
                let reason = escape(&reason, MAX_LOGGED_STDERR);
                tracing::warn!(
                    %tenant,
                    %handler,
                    kind = kind.as_str(),
                    stderr = %stderr(),
                    "guest trapped: {reason}"
                );
            }
            Err(RequestError::Trap(kind))
        }
    };
    let outcome = GuestOutcome {
        result,
        fuel_consumed,
    };
    (outcome, Some(store))
}

/// What a guest call gives: its checked response (or why it is not one),
/// or the trap that ended it.
type CallResult = wasmtime::Result<Result<http::Response<Bytes>, RequestError>>;

/// `instantiate`, its time counted in `wasmgate_instantiation_duration_seconds`.
async fn timed<T>(
    metrics: &Metrics,
    instantiate: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let started = Instant::now();
    let instance = instantiate.await?;
    metrics
        .instantiation_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(instance)
}

/// A fresh instance of a `wasmgate:handler` component, and its `handle`.
async fn call_handler(
    pre: &HandlerPre<State>,
    store: &mut Store<State>,
    request: &GuestRequest,
    metrics: &Metrics,
    max_response_bytes: u64,
) -> CallResult {
    let instance = timed(metrics, pre.instantiate_async(&mut *store)).await?;
    let headers = request.header_view();
    let response = instance
        .call_handle(&mut *store, request.view(&headers))
        .await?;
    Ok(response::from_guest(response, max_response_bytes))
}

/// A fresh instance of a `wasi:http/proxy` component, and its
/// `incoming-handler.handle`, while its response is collected.
async fn call_proxy(
    pre: &ProxyPre<State>,
    store: &mut Store<State>,
    request: &GuestRequest,
    metrics: &Metrics,
    max_response_bytes: u64,
) -> CallResult {
    let proxy = timed(metrics, pre.instantiate_async(&mut *store)).await?;
    let deadline = store.data().deadline;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let mut http = store.data_mut().http();
    let scheme = if request.is_https() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let incoming = http.new_incoming_request(scheme, request.to_http())?;
    let outparam = http.new_response_outparam(sender)?;
    let call = proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut *store, incoming, outparam);
    let collect = response::from_proxy(receiver, max_response_bytes);
    let mut call = std::pin::pin!(call);
    let mut collect = std::pin::pin!(collect);
    // The guest writes its body while it runs, and waits when the body's
    // buffer is full: both go on until one ends.
    let mut returned = None;
    let first = std::future::poll_fn(|cx| {
        if returned.is_none()
            && let Poll::Ready(result) = call.as_mut().poll(cx)
        {
            returned = Some(result);
        }
        match collect.as_mut().poll(cx) {
            Poll::Ready(collected) => Poll::Ready(Ok(collected)),
            Poll::Pending => match returned.take() {
                Some(result) => Poll::Ready(Err(result)),
                None => Poll::Pending,
            },
        }
    })
    .await;
    match first {
        // The response is whole: the guest still finishes its call (a
        // trap after it fails the request, as in the other world).
        Ok(Ok(response)) => {
            match returned {
                Some(result) => result?,
                None => call.await?,
            }
            Ok(Ok(response))
        }
        // A response that fails its checks ends the call: the guest is
        // stopped where it is.
        Ok(Err(bad)) => Ok(Err(bad)),
        // The guest returned (or trapped) first. What it wrote may still be
        // on its way through the body's pipe: wait for the end, but not
        // past the deadline (a guest that never finished its body).
        Err(result) => {
            result?;
            match tokio::time::timeout_at(deadline.into(), collect).await {
                Ok(collected) => Ok(collected),
                Err(_) => Ok(Err(RequestError::BadResponse(
                    "the guest returned without finishing its response body".to_owned(),
                ))),
            }
        }
    }
}

/// Maps a wasmtime error to the trap kind reported in metrics.
fn classify(error: &wasmtime::Error, memory_refused: bool) -> TrapKind {
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => TrapKind::FuelExhausted,
        Some(Trap::Interrupt) => TrapKind::Timeout,
        Some(Trap::StackOverflow) => TrapKind::StackOverflow,
        Some(Trap::MemoryOutOfBounds | Trap::HeapMisaligned) => TrapKind::Memory,
        // Rust aborts (`unreachable`) when an allocation is refused.
        _ if memory_refused => TrapKind::Memory,
        Some(Trap::UnreachableCodeReached) => TrapKind::Unreachable,
        _ => TrapKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime with `hello` loaded, and a `GET /hello` for it.
    fn hello() -> (Arc<Metrics>, Runtime, Arc<HandlerVersion>, GuestRequest) {
        let metrics = Arc::new(Metrics::new());
        let limits = crate::limits::Limits::default();
        let runtime = Runtime::new(2, limits.memory_bytes, true).expect("runtime");
        let context = Arc::new(crate::runtime::HandlerContext {
            config: Default::default(),
            metrics: metrics.handler("t", "hello"),
        });
        let path = wasmgate_handler_components::require(wasmgate_handler_components::HELLO);
        let version = Arc::new(
            HandlerVersion::load_file(&runtime, path.as_ref(), limits, context).expect("load"),
        );
        let (head, ()) = http::Request::get("/hello")
            .body(())
            .expect("valid request")
            .into_parts();
        (
            metrics,
            runtime,
            version,
            GuestRequest::new(head, Bytes::new()),
        )
    }

    /// Calls `hello` through `call_guest` and returns every outcome handed
    /// to `reply`, each with whether the request's store was still alive
    /// when `reply` ran (its state holds a reference to the handler's
    /// context, dropped with the store).
    fn call_hello(deadline: Instant) -> Vec<(GuestOutcome, bool)> {
        let (metrics, runtime, version, request) = hello();
        let mut replies = Vec::new();
        call_guest(&runtime, &version, &request, deadline, &metrics, |o| {
            replies.push((o, Arc::strong_count(&version.context)));
        });
        let references_after = Arc::strong_count(&version.context);
        replies
            .into_iter()
            .map(|(o, references)| (o, references > references_after))
            .collect()
    }

    #[test]
    #[ignore = "a measurement, run by hand under callgrind"]
    fn probe_hello_calls() {
        let calls: usize = std::env::var("WASMGATE_PROBE_CALLS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let (metrics, runtime, version, request) = hello();
        for _ in 0..calls {
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            call_guest(&runtime, &version, &request, deadline, &metrics, |o| {
                assert!(o.result.is_ok());
            });
        }
    }

    #[test]
    fn reply_gets_the_response_and_fuel_once_before_the_instance_is_torn_down() {
        let replies = call_hello(Instant::now() + std::time::Duration::from_secs(10));
        assert_eq!(replies.len(), 1);
        let (outcome, store_alive) = &replies[0];
        let response = outcome.result.as_ref().expect("hello answers");
        assert_eq!(response.status(), 200);
        assert!(outcome.fuel_consumed.is_some_and(|f| f > 0));
        assert!(store_alive, "the store was dropped before the reply");
    }

    #[test]
    fn reply_gets_expired_once_when_the_deadline_passed_in_the_queue() {
        let replies = call_hello(Instant::now());
        assert_eq!(replies.len(), 1);
        let (outcome, store_alive) = &replies[0];
        assert!(
            matches!(outcome.result, Err(RequestError::Expired)),
            "{:?}",
            outcome.result
        );
        assert_eq!(outcome.fuel_consumed, None);
        assert!(!store_alive, "no instance is made for an expired request");
    }
}
