//! The worker pool: a fixed set of threads, fed by a bounded queue, that
//! run every guest call.
//!
//! A full queue answers 503 at once rather than letting work pile up; a
//! fixed number of threads (about one per core) keeps CPU-heavy guests from
//! fighting over cores, which is what keeps tail latency flat under load.
//! The queue serves tenants, and each tenant's handlers, in turn
//! ([`FairQueue`]), so a flooded handler delays the others by one request,
//! not by its whole backlog.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use wasmtime::{Store, Trap};

use super::bindings::Response as GuestResponse;
use super::engine::{Runtime, RuntimeError, deadline_ticks};
use super::fair_queue::{FairQueue, Flow, Rejected};
use super::handler::HandlerVersion;
use super::host::{GuestRequest, State};
use crate::error::RequestError;
use crate::metrics::{Metrics, TrapKind};

/// The result of one guest call.
#[derive(Debug)]
pub struct GuestOutcome {
    /// The validated response, or why there is none.
    pub result: Result<http::Response<Bytes>, RequestError>,
    /// Fuel the guest consumed, when it ran.
    pub fuel_consumed: Option<u64>,
}

struct Job {
    version: Arc<HandlerVersion>,
    request: GuestRequest,
    deadline: Instant,
    reply: oneshot::Sender<GuestOutcome>,
    /// The tenant's concurrency slot, held until the guest is done even if
    /// the client leaves earlier.
    _permit: OwnedSemaphorePermit,
}

/// The pool of guest worker threads. Workers drain the queue and exit once
/// the executor is dropped.
pub struct Executor {
    queue: Arc<FairQueue<Job>>,
    metrics: Arc<Metrics>,
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

impl Executor {
    /// Starts `workers` threads behind a queue of `queue_depth` requests.
    pub fn start(
        runtime: &Runtime,
        workers: usize,
        queue_depth: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RuntimeError> {
        let queue = Arc::new(FairQueue::new(queue_depth));
        for i in 0..workers {
            let queue = Arc::clone(&queue);
            let runtime = runtime.clone();
            let metrics = Arc::clone(&metrics);
            std::thread::Builder::new()
                .name(format!("wasmgate-worker-{i}"))
                .spawn(move || work(&runtime, &queue, &metrics))?;
        }
        Ok(Self { queue, metrics })
    }

    /// Queues a call of `version` with `request` in `flow`, to finish by
    /// `deadline`, holding the tenant's `permit` until it is done.
    /// Fails at once with `Overloaded` when the queue is full.
    pub fn submit(
        &self,
        flow: Flow,
        version: Arc<HandlerVersion>,
        request: GuestRequest,
        deadline: Instant,
        permit: OwnedSemaphorePermit,
    ) -> Result<oneshot::Receiver<GuestOutcome>, RequestError> {
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            version,
            request,
            deadline,
            reply,
            _permit: permit,
        };
        // Counted before the push, so a worker's decrement never comes
        // first and the gauge never shows a stale or negative depth.
        self.metrics.queue_depth.inc();
        match self.queue.push(flow, job) {
            Ok(()) => Ok(receiver),
            Err(rejected) => {
                self.metrics.queue_depth.dec();
                Err(match rejected {
                    Rejected::Full(_) => RequestError::Overloaded("worker queue is full"),
                    Rejected::Closed(_) => RequestError::ShuttingDown,
                })
            }
        }
    }
}

fn work(runtime: &Runtime, queue: &FairQueue<Job>, metrics: &Metrics) {
    while let Some(job) = queue.pop() {
        metrics.queue_depth.dec();
        // The client went away while the request was queued.
        if job.reply.is_closed() {
            continue;
        }
        metrics.workers_busy.inc();
        call_guest(
            runtime,
            &job.version,
            &job.request,
            job.deadline,
            metrics,
            |outcome| {
                // The client may have gone away meanwhile; nothing to do then.
                let _ = job.reply.send(outcome);
            },
        );
        metrics.workers_busy.dec();
    }
}

/// Runs one request in a fresh instance with the version's limits, on the
/// calling thread, and hands the outcome to `reply`. The executor's workers
/// call this; so do benchmarks.
///
/// `reply` runs before the instance is torn down: dropping the store resets
/// the instance's memory for the next request (a page-map scan in the
/// kernel and copies of the dirty pages, about a quarter of a `hello`
/// call's time), and the client need not wait for that.
pub fn call_guest(
    runtime: &Runtime,
    version: &Arc<HandlerVersion>,
    request: &GuestRequest,
    deadline: Instant,
    metrics: &Metrics,
    reply: impl FnOnce(GuestOutcome),
) {
    let (outcome, store) = run_guest(runtime, version, request, deadline, metrics);
    reply(outcome);
    drop(store);
}

/// [`call_guest`] up to the outcome; also returns the store, if one was
/// made, so the caller decides when it is torn down.
fn run_guest(
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
    let mut store = Store::new(
        &runtime.engine,
        State::new(Arc::clone(&version.context), limits.memory_bytes),
    );
    store.limiter(|state| &mut state.limiter);
    if runtime.consume_fuel
        && let Err(e) = store.set_fuel(limits.fuel)
    {
        tracing::error!("setting fuel: {e:#}");
        let outcome = GuestOutcome {
            result: Err(RequestError::Trap(TrapKind::Other)),
            fuel_consumed: None,
        };
        return (outcome, Some(store));
    }
    store.set_epoch_deadline(deadline_ticks(remaining));

    let started = Instant::now();
    let result = version.pre.instantiate(&mut store).and_then(|instance| {
        metrics
            .instantiation_duration
            .observe(started.elapsed().as_secs_f64());
        request.with_view(|request| instance.call_handle(&mut store, request))
    });
    let fuel_consumed = runtime
        .consume_fuel
        .then(|| limits.fuel - store.get_fuel().unwrap_or(0));
    let stderr = store.data().stderr().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim_end();
    let (tenant, handler) = (
        &version.context.metrics.tenant,
        &version.context.metrics.handler,
    );
    let result = match result {
        Ok(response) => {
            if !stderr.is_empty() {
                tracing::debug!(%tenant, %handler, "guest stderr: {stderr}");
            }
            into_http(response)
        }
        Err(e) => {
            let kind = classify(&e, store.data().limiter.refused);
            let reason = e
                .downcast_ref::<Trap>()
                .map_or_else(|| format!("{e:#}"), Trap::to_string);
            tracing::warn!(
                %tenant,
                %handler,
                kind = kind.as_str(),
                stderr,
                "guest trapped: {reason}"
            );
            Err(RequestError::Trap(kind))
        }
    };
    let outcome = GuestOutcome {
        result,
        fuel_consumed,
    };
    (outcome, Some(store))
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

/// Header names the gateway sets itself: a guest's values would break
/// framing or connection handling.
fn is_framing_header(name: &HeaderName) -> bool {
    use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
    name == CONTENT_LENGTH
        || name == TRANSFER_ENCODING
        || name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == UPGRADE
        || name.as_str() == "keep-alive"
}

/// Validates a guest response and turns it into an HTTP response.
fn into_http(response: GuestResponse) -> Result<http::Response<Bytes>, RequestError> {
    let status = match response.status {
        200..=599 => StatusCode::from_u16(response.status)
            .map_err(|_| RequestError::BadResponse(format!("status {}", response.status)))?,
        other => {
            return Err(RequestError::BadResponse(format!(
                "status {other} is outside 200..=599"
            )));
        }
    };
    let mut out = http::Response::new(Bytes::from(response.body));
    *out.status_mut() = status;
    let headers = out.headers_mut();
    for (name, value) in response.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| RequestError::BadResponse(format!("header name {name:?}")))?;
        let value = HeaderValue::from_bytes(&value)
            .map_err(|_| RequestError::BadResponse(format!("value of header {name}")))?;
        if !is_framing_header(&name) {
            headers.append(name, value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &[u8])]) -> GuestResponse {
        GuestResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
                .collect(),
            body: b"body".to_vec(),
        }
    }

    #[test]
    fn valid_responses_pass_and_framing_headers_are_dropped() {
        let out = into_http(response(
            201,
            &[
                ("x-a", b"1"),
                ("X-A", b"2"),
                ("content-length", b"999"),
                ("connection", b"close"),
            ],
        ))
        .expect("valid");
        assert_eq!(out.status(), 201);
        assert_eq!(out.headers().get_all("x-a").iter().count(), 2);
        assert!(out.headers().get("content-length").is_none());
        assert!(out.headers().get("connection").is_none());
        assert_eq!(out.body().as_ref(), b"body");
    }

    /// Calls `hello` through `call_guest` and returns every outcome handed
    /// to `reply`, each with whether the request's store was still alive
    /// when `reply` ran (its state holds a reference to the handler's
    /// context, dropped with the store).
    fn call_hello(deadline: Instant) -> Vec<(GuestOutcome, bool)> {
        let metrics = Arc::new(Metrics::new());
        let limits = crate::config::Limits::default();
        let runtime = Runtime::new(1, limits.memory_bytes, true).expect("runtime");
        let context = Arc::new(super::super::host::HandlerContext {
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
        let request = GuestRequest::new(head, Bytes::new());
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

    #[test]
    fn invalid_responses_are_rejected() {
        for bad in [
            response(1000, &[]),
            response(99, &[]),
            response(101, &[]),
            response(600, &[]),
            response(200, &[("bad name", b"x")]),
            response(200, &[("x", b"line\nbreak")]),
        ] {
            let err = into_http(bad).expect_err("invalid");
            assert!(matches!(err, RequestError::BadResponse(_)), "{err:?}");
        }
    }
}
