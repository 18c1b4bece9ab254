//! The worker pool: a fixed set of threads, fed by a bounded queue, that
//! run every guest call.
//!
//! A full queue answers 503 at once rather than letting work pile up; a
//! fixed number of threads (about one per core) keeps CPU-heavy guests from
//! fighting over cores, which is what keeps tail latency flat under load.
//! The queue serves tenants, and each tenant's handlers, in turn
//! ([`FairQueue`]), so a flooded handler delays the others by one request,
//! not by its whole backlog.
//!
//! No request may cost a worker: a panic while serving one (a gateway bug;
//! guest input must never cause one) fails that request with 500, and a
//! thread that dies anyway is replaced. `wasmgate_workers_alive` counts the
//! threads, and `/readyz` says 503 while fewer than configured are alive.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::call::{GuestOutcome, call_guest};
use super::engine::{Runtime, RuntimeError};
use super::fair_queue::{FairQueue, Flow, Rejected};
use super::handler::HandlerVersion;
use super::host::GuestRequest;
use crate::error::RequestError;
use crate::metrics::Metrics;

/// A request waiting for a worker.
struct Job {
    version: Arc<HandlerVersion>,
    request: GuestRequest,
    deadline: Instant,
    /// Dropped unanswered when serving the job panics; the request path
    /// then answers 500.
    reply: oneshot::Sender<GuestOutcome>,
    /// The tenant's concurrency slot, held until the guest is done even if
    /// the client leaves earlier.
    _permit: OwnedSemaphorePermit,
}

/// How a worker serves a job: [`run_job`], or a stand-in in tests.
type JobRunner = fn(&Runtime, &Metrics, Job);

/// What every worker thread shares.
struct Pool {
    runtime: Runtime,
    queue: FairQueue<Job>,
    metrics: Arc<Metrics>,
    run: JobRunner,
}

/// The pool of guest worker threads. Workers drain the queue and exit once
/// the executor is dropped.
pub struct Executor {
    pool: Arc<Pool>,
    workers: usize,
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.pool.queue.close();
    }
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
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
        Self::start_with(runtime, workers, queue_depth, metrics, run_job)
    }

    fn start_with(
        runtime: &Runtime,
        workers: usize,
        queue_depth: usize,
        metrics: Arc<Metrics>,
        run: JobRunner,
    ) -> Result<Self, RuntimeError> {
        let pool = Arc::new(Pool {
            runtime: runtime.clone(),
            queue: FairQueue::new(queue_depth),
            metrics,
            run,
        });
        for i in 0..workers {
            let worker = Arc::clone(&pool);
            supervise(
                format!("wasmgate-worker-{i}"),
                pool.metrics.workers_alive.clone(),
                Arc::new(move || work(&worker)),
            )?;
        }
        Ok(Self { pool, workers })
    }

    /// The number of worker threads configured.
    pub fn workers(&self) -> usize {
        self.workers
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
        let metrics = &self.pool.metrics;
        // Counted before the push, so a worker's decrement never comes
        // first and the gauge never shows a stale or negative depth.
        metrics.queue_depth.inc();
        match self.pool.queue.push(flow, job) {
            Ok(()) => Ok(receiver),
            Err(rejected) => {
                metrics.queue_depth.dec();
                Err(match rejected {
                    Rejected::Full(_) => RequestError::Overloaded("worker queue is full"),
                    Rejected::Closed(_) => RequestError::ShuttingDown,
                })
            }
        }
    }
}

/// Runs `body` on a thread named `name`, counted in `alive` while it runs
/// (from before it starts, so a fresh pool never looks degraded). If the
/// thread dies of a panic, a new one takes its place.
fn supervise(
    name: String,
    alive: IntGauge,
    body: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<()> {
    alive.inc();
    let guard = Supervised {
        name: name.clone(),
        alive: alive.clone(),
        body: Arc::clone(&body),
    };
    // If the thread cannot start, the closure, guard and all, is dropped
    // unrun: the guard takes the count back.
    std::thread::Builder::new().name(name).spawn(move || {
        let _guard = guard;
        body();
    })?;
    Ok(())
}

/// Lives as long as a supervised thread; its drop sees how the thread ended.
struct Supervised {
    name: String,
    alive: IntGauge,
    body: Arc<dyn Fn() + Send + Sync>,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.alive.dec();
        if std::thread::panicking() {
            tracing::error!(thread = %self.name, "worker thread died; starting a replacement");
            let name = std::mem::take(&mut self.name);
            if let Err(e) = supervise(name, self.alive.clone(), Arc::clone(&self.body)) {
                tracing::error!("cannot start a replacement worker: {e}");
            }
        }
    }
}

fn work(pool: &Pool) {
    while let Some(job) = pool.queue.pop() {
        pool.metrics.queue_depth.dec();
        // The client went away while the request was queued.
        if job.reply.is_closed() {
            continue;
        }
        let _busy = Busy::start(&pool.metrics.workers_busy);
        let served = std::panic::catch_unwind(AssertUnwindSafe(|| {
            (pool.run)(&pool.runtime, &pool.metrics, job);
        }));
        if let Err(panic) = served {
            tracing::error!(
                "a request failed with a panic in the gateway (answered 500): {}",
                panic_message(&*panic)
            );
        }
    }
}

/// Serves one job: the guest call, its outcome sent to the request path.
fn run_job(runtime: &Runtime, metrics: &Metrics, job: Job) {
    let Job {
        version,
        request,
        deadline,
        reply,
        _permit,
    } = job;
    call_guest(runtime, &version, &request, deadline, metrics, |outcome| {
        // The client may have gone away meanwhile; nothing to do then.
        let _ = reply.send(outcome);
    });
}

/// Counts a worker as busy until dropped, panics included.
struct Busy<'a>(&'a IntGauge);

impl<'a> Busy<'a> {
    fn start(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::runtime::HandlerContext;

    /// Waits (bounded, generously) until `done` holds.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_thread_that_dies_is_replaced_and_counted_meanwhile() {
        let alive = IntGauge::new("alive", "test").expect("gauge");
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        let body = {
            let runs = Arc::clone(&runs);
            move || {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first run dies");
                }
                // The replacement stays alive until the test releases it.
                let _ = released.lock().expect("lock").recv();
            }
        };
        supervise("test-worker".into(), alive.clone(), Arc::new(body)).expect("spawn");
        eventually("the replacement runs", || runs.load(Ordering::SeqCst) == 2);
        eventually("the replacement is counted", || alive.get() == 1);
        release.send(()).expect("replacement waits");
        eventually("a normal exit is not replaced", || alive.get() == 0);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    /// Panics on requests for `/panic`, answers the rest with 200.
    fn panicky_runner(_: &Runtime, _: &Metrics, job: Job) {
        assert_ne!(job.request.path(), "/panic", "deliberate panic in a job");
        let _ = job.reply.send(GuestOutcome {
            result: Ok(http::Response::new(Bytes::new())),
            fuel_consumed: None,
        });
    }

    #[tokio::test]
    async fn a_panic_serving_a_request_fails_that_request_and_no_worker() {
        let metrics = Arc::new(Metrics::new());
        let limits = crate::config::Limits::default();
        let runtime = Runtime::new(1, limits.memory_bytes, true).expect("runtime");
        let executor = Executor::start_with(&runtime, 2, 16, Arc::clone(&metrics), panicky_runner)
            .expect("start");
        let context = Arc::new(HandlerContext {
            config: Default::default(),
            metrics: metrics.handler("t", "h"),
        });
        let path = wasmgate_handler_components::require(wasmgate_handler_components::HELLO);
        let version = Arc::new(
            HandlerVersion::load_file(&runtime, path.as_ref(), limits, context).expect("load"),
        );
        let slots = Arc::new(Semaphore::new(100));
        let submit = |path: &str| {
            let (head, ()) = http::Request::get(path)
                .body(())
                .expect("valid")
                .into_parts();
            executor
                .submit(
                    Flow {
                        tenant: 0,
                        handler: 0,
                    },
                    Arc::clone(&version),
                    GuestRequest::new(head, Bytes::new()),
                    Instant::now() + Duration::from_secs(60),
                    Arc::clone(&slots).try_acquire_owned().expect("slot"),
                )
                .expect("queued")
        };
        // More panics than workers: each costs its request only.
        for _ in 0..5 {
            assert!(
                submit("/panic").await.is_err(),
                "a panicked job is unanswered"
            );
        }
        for _ in 0..5 {
            let outcome = submit("/ok").await.expect("answered");
            assert!(outcome.result.is_ok());
        }
        // A worker replies before it finishes the job: wait for it to let
        // go of the job, then check that nothing was lost.
        eventually("the workers are idle", || {
            metrics.workers_busy.get() == 0 && slots.available_permits() == 100
        });
        assert_eq!(metrics.workers_alive.get(), 2);
    }
}
