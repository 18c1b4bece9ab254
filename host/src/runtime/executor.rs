//! The worker pool: a fixed set of threads, fed by a bounded queue, that
//! run every guest call, time-sliced.
//!
//! A full queue answers 503 at once rather than letting work pile up; a
//! fixed number of threads (about one per core) keeps CPU-heavy guests from
//! fighting over cores, which is what keeps tail latency flat under load.
//! The queue serves tenants, and each tenant's handlers, in turn
//! ([`FairQueue`]), so a flooded handler delays the others by one request,
//! not by its whole backlog.
//!
//! A worker keeps up to `guests_per_worker` runnable guests alive, plus up
//! to `waiting_guests_per_worker` more while they wait (for an upstream's
//! answer or a timer: suspended futures that use no CPU), and switches
//! between the runnable ones at every epoch tick (the time slice, [`EPOCH_TICK`]): guest
//! calls are futures on wasmtime fibers that yield when the tick comes. At
//! each switch the worker runs the guest of the tenant that has used the
//! least CPU on it, then of that tenant's handler that has used the least,
//! then the oldest request of that handler. So a tenant's request waits for
//! a busy worker about one slice, not for a whole request of another
//! tenant. A tenant may hold at most half a worker's guest slots (at least
//! one), so a flood of long requests leaves room for others. A new request
//! that finds no idle worker ends the running slices early (an epoch bump)
//! when one of them has run for [`PREEMPT_AFTER`], so the workers look at
//! it now, not at the next tick. Tenants share a worker's CPU in
//! proportion to their `cpu_weight`.
//!
//! No request may cost a worker: a panic while serving one (a gateway bug;
//! guest input must never cause one) fails that request with 500, and a
//! thread that dies anyway is replaced. `wasmgate_workers_alive` counts the
//! threads, and `/readyz` says 503 while fewer than configured are alive.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use rustc_hash::FxHashMap;
use tokio::sync::{Notify, OwnedSemaphorePermit, oneshot};

use super::block_on::block_on;
use super::call::{GuestOutcome, call_guest_async};
use super::engine::{EPOCH_TICK, Runtime, RuntimeError};
use super::fair_queue::{FairQueue, Flow, Rejected};
use super::handler::HandlerVersion;
use super::request::GuestRequest;
use crate::error::RequestError;
use crate::metrics::{HandlerMetrics, Metrics};

/// A request waiting for a worker.
struct Job {
    flow: Flow,
    /// The tenant's `cpu_weight`.
    cpu_weight: u32,
    version: Arc<HandlerVersion>,
    request: GuestRequest,
    deadline: Instant,
    /// Dropped unanswered when serving the job panics; the request path
    /// then answers 500. The request comes back with the outcome, to be
    /// freed where it was allocated: memory a thread frees from another
    /// thread's malloc arena goes back under that arena's lock (under
    /// load, the connection threads and the workers then contend for it)
    /// and may be returned to the kernel, to fault in again.
    reply: oneshot::Sender<(GuestOutcome, GuestRequest)>,
    /// The tenant's concurrency slot, held until the guest's outcome is
    /// ready even if the client leaves earlier, and let go before the
    /// outcome is sent (see [`run_job`]).
    permit: OwnedSemaphorePermit,
}

/// A guest call in progress on a worker.
type GuestFuture = Pin<Box<dyn Future<Output = ()>>>;

/// How a worker serves a job: [`run_job`], or a stand-in in tests.
type JobRunner = fn(Arc<Pool>, Job) -> GuestFuture;

/// What every worker thread shares.
struct Pool {
    runtime: Runtime,
    queue: FairQueue<Job>,
    metrics: Arc<Metrics>,
    run: JobRunner,
    /// Guests one worker keeps alive at once.
    slots: GuestSlots,
    /// When the guest each worker is running first ran (ns since
    /// `started`, plus one; 0 while it runs none), by worker index. A
    /// submit reads them to decide whether ending the slices is worth it.
    slices: Vec<RunningSince>,
    /// The clock `slices` counts from.
    started: Instant,
    /// The runtime of the thread that started the pool, if any: where
    /// guests' timers and network I/O run.
    io: Option<tokio::runtime::Handle>,
}

/// When a worker's running guest first ran, in a cache line of its own:
/// each worker writes its own twice per slice, and sharing a line would
/// make the workers' cores pass it back and forth.
#[derive(Debug, Default)]
#[repr(align(64))]
struct RunningSince(AtomicU64);

/// A submit that finds no idle worker ends the running slices only if one
/// of the running guests first ran at least this long ago. Ending a slice
/// costs its guest a switch to the worker and back (a few microseconds); a
/// request whose whole guest call is shorter than this (most of them) is
/// never cut, so a flood of short requests does not make every running
/// guest switch once per request, while a long guest is cut at once. (The
/// age is the guest's, not its slice's: a bump restarts every slice, and a
/// client that sends its next request within this time would otherwise
/// always find young slices and wait for the tick; measured, 0.15x of its
/// throughput alone instead of 0.6-0.8x.) A request behind only young
/// guests waits for their end or the next tick.
pub const PREEMPT_AFTER: Duration = Duration::from_micros(100);

/// How long past a request's deadline [`Executor::call`] waits for the
/// worker's answer. The worker stops the guest at the deadline itself and
/// answers within an epoch tick or two, with the trap counted by kind; this
/// only bounds the wait when no worker got to the request at all.
const REPLY_GRACE: Duration = Duration::from_millis(100);

impl Pool {
    /// Nanoseconds since `started`, plus one, so 0 can mean "none".
    fn clock(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_nanos()).unwrap_or(u64::MAX - 1)
            + 1
    }

    /// Bumps the epoch, so running guests yield at their next check, if
    /// one of them has been running for [`PREEMPT_AFTER`] or longer.
    fn end_long_slices(&self) {
        let now = self.clock(Instant::now());
        let min = u64::try_from(PREEMPT_AFTER.as_nanos()).unwrap_or(u64::MAX);
        let long = self.slices.iter().any(|slice| {
            let began = slice.0.load(Ordering::Relaxed);
            began != 0 && now.saturating_sub(began) >= min
        });
        if long {
            self.runtime.engine.increment_epoch();
        }
    }
}

/// How many guests one worker keeps alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSlots {
    /// Guests it time-slices between: running, or ready to run
    /// (`runtime.guests_per_worker`, at least 1).
    pub running: usize,
    /// Guests it keeps besides those while they wait (for an upstream's
    /// answer or a timer) and use no CPU
    /// (`runtime.waiting_guests_per_worker`).
    pub waiting: usize,
}

impl GuestSlots {
    /// All the guests one worker may keep alive.
    pub fn total(self) -> usize {
        self.running.max(1) + self.waiting
    }
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
    /// Starts `workers` threads, each keeping up to `slots` guests alive,
    /// behind a queue of `queue_depth` requests. The runtime must have a
    /// pool slot for every guest (`control::runtime_for`).
    pub fn start(
        runtime: &Runtime,
        workers: usize,
        slots: GuestSlots,
        queue_depth: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RuntimeError> {
        Self::start_with(runtime, workers, slots, queue_depth, metrics, run_job)
    }

    fn start_with(
        runtime: &Runtime,
        workers: usize,
        slots: GuestSlots,
        queue_depth: usize,
        metrics: Arc<Metrics>,
        run: JobRunner,
    ) -> Result<Self, RuntimeError> {
        let pool = Arc::new(Pool {
            runtime: runtime.clone(),
            queue: FairQueue::new(queue_depth),
            metrics,
            run,
            slots: GuestSlots {
                running: slots.running.max(1),
                waiting: slots.waiting,
            },
            slices: (0..workers).map(|_| RunningSince::default()).collect(),
            started: Instant::now(),
            io: tokio::runtime::Handle::try_current().ok(),
        });
        for i in 0..workers {
            let worker = Arc::clone(&pool);
            supervise(
                format!("wasmgate-worker-{i}"),
                pool.metrics.workers_alive.clone(),
                Arc::new(move || work(&worker, i)),
            )?;
        }
        Ok(Self { pool, workers })
    }

    /// The number of worker threads configured.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Runs `version` with `request` on a worker and waits for its outcome:
    /// queued in `flow`, to finish by `deadline`, holding the tenant's
    /// `permit` until the guest's outcome is ready (and no longer: it is
    /// free before this returns); the tenant's guests get CPU in
    /// proportion to `cpu_weight` against other tenants'. The request path
    /// and `wasmgate call` both run guests through this.
    ///
    /// Fails at once with `Overloaded` when the queue is full. A call not
    /// answered by `deadline` and a short grace is `Expired`; one the
    /// worker dropped unanswered (a panic, logged there) is `Internal`. A
    /// failure before the guest ran has no fuel.
    pub async fn call(
        &self,
        flow: Flow,
        cpu_weight: u32,
        version: Arc<HandlerVersion>,
        request: GuestRequest,
        deadline: Instant,
        permit: OwnedSemaphorePermit,
    ) -> GuestOutcome {
        let failed = |error| GuestOutcome {
            result: Err(error),
            fuel_consumed: None,
        };
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            flow,
            cpu_weight,
            version,
            request,
            deadline,
            reply,
            permit,
        };
        if let Err(e) = self.push(job) {
            return failed(e);
        }
        match tokio::time::timeout_at((deadline + REPLY_GRACE).into(), receiver).await {
            Ok(Ok((outcome, request))) => {
                drop(request);
                outcome
            }
            Ok(Err(_)) => failed(RequestError::Internal),
            Err(_) => failed(RequestError::Expired),
        }
    }

    /// Queues `job`, or says why it cannot be.
    fn push(&self, job: Job) -> Result<(), RequestError> {
        let metrics = &self.pool.metrics;
        // Counted before the push, so a worker's decrement never comes
        // first and the gauge never shows a stale or negative depth.
        metrics.queue_depth.inc();
        match self.pool.queue.push(job.flow, job) {
            Ok(woke_idle_worker) => {
                // No worker is idle: end the long running slices now, so
                // the workers see this request within microseconds rather
                // than at the next tick. A worker with nothing better to
                // run resumes the same guest.
                if !woke_idle_worker {
                    self.pool.end_long_slices();
                }
                Ok(())
            }
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

/// One worker thread, driving the worker's guests. Their timers
/// (`wasi:io/poll`) and outbound connections (`wasi:http`) live on the
/// gateway's tokio runtime when the pool was started in one: a guest
/// waiting for an upstream is a suspended future here while tokio's
/// threads do the network I/O, so it holds no worker. Outside one (a tool
/// with no runtime), a single-threaded runtime of the worker's own keeps
/// the timers, and outbound calls use WASI's own runtime.
fn work(pool: &Arc<Pool>, index: usize) {
    if let Some(io) = &pool.io {
        let _io = io.enter();
        block_on(Worker::new(Arc::clone(pool), index).run());
        return;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start a worker's runtime: {e}");
            return;
        }
    };
    runtime.block_on(Worker::new(Arc::clone(pool), index).run());
}

/// Serves one job: the guest call, its outcome sent to the request path.
///
/// The tenant's slot is let go before the outcome is sent, so it is free
/// before the client can see the response: a client that sends its next
/// request as soon as it has the answer, on as many connections as the
/// tenant has slots, is never refused for want of one. The instance's
/// teardown after the reply is not the tenant's to wait for; the worker's
/// guest slots bound it (the guest stays one of them until it is done).
fn run_job(pool: Arc<Pool>, job: Job) -> GuestFuture {
    Box::pin(async move {
        let Job {
            version,
            request,
            deadline,
            reply,
            permit,
            ..
        } = job;
        let metrics = &pool.metrics;
        call_guest_async(
            &pool.runtime,
            &version,
            request,
            deadline,
            metrics,
            |outcome, request| {
                drop(permit);
                // The client may have gone away meanwhile; nothing to do then.
                let _ = reply.send((outcome, request));
            },
        )
        .await;
    })
}

/// Marks its guest runnable and wakes the worker if it waits.
struct GuestWaker {
    runnable: AtomicBool,
    worker: Arc<Notify>,
}

impl Wake for GuestWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.runnable.store(true, Ordering::Release);
        self.worker.notify_one();
    }
}

/// Wakes a worker whose guests all wait, when a request is queued.
struct WorkerWaker(Arc<Notify>);

impl Wake for WorkerWaker {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

/// A guest alive on a worker.
struct Guest {
    flow: Flow,
    /// Its tenant's share of the CPU against other tenants.
    cpu_weight: u32,
    /// When it first ran: a guest alive that long is a long request.
    first_polled: Option<Instant>,
    /// Arrival order on this worker: the oldest of a handler goes first.
    seq: u64,
    future: GuestFuture,
    state: Arc<GuestWaker>,
    waker: Waker,
    /// Where its CPU time is counted.
    metrics: Arc<HandlerMetrics>,
}

/// One worker's guests and the CPU each tenant and handler used on it.
struct Worker {
    pool: Arc<Pool>,
    /// Its place in `Pool::slices`.
    index: usize,
    guests: Vec<Guest>,
    next_seq: u64,
    /// Woken by the guests' wakers.
    notify: Arc<Notify>,
    /// Wakes this worker (through `notify`) when a request is queued while
    /// all its guests wait.
    wake: Waker,
    /// CPU time per tenant with guests here, the scheduler's key: a tenant
    /// joining starts at the least of the others, so it neither inherits a
    /// debt nor a credit from an earlier visit. (Fx hashing: the keys are
    /// config indices, never a client's, and SipHash over these maps was
    /// 1.7% of a `hello` request's instructions.)
    tenant_used: FxHashMap<usize, Duration>,
    /// The same per (tenant, handler).
    handler_used: FxHashMap<(usize, usize), Duration>,
    busy: IntGauge,
}

impl Worker {
    fn new(pool: Arc<Pool>, index: usize) -> Self {
        let busy = pool.metrics.workers_busy.clone();
        let notify = Arc::new(Notify::new());
        Self {
            pool,
            index,
            guests: Vec::new(),
            next_seq: 0,
            wake: Waker::from(Arc::new(WorkerWaker(Arc::clone(&notify)))),
            notify,
            tenant_used: FxHashMap::default(),
            handler_used: FxHashMap::default(),
            busy,
        }
    }

    async fn run(mut self) {
        loop {
            self.admit();
            if self.guests.is_empty() {
                // Nothing alive here: block until a request comes. No
                // timer of this worker can be pending.
                let Some(job) = self.pool.queue.pop() else {
                    return;
                };
                self.start(job);
                continue;
            }
            match self.next_runnable() {
                Some(index) => self.poll(index),
                // Every guest waits (a timer, an upstream). A push wakes
                // this worker if it can take more; it looks at least once
                // a slice anyway. Queued requests it may not take (their
                // tenants are at their caps here) wait with it: it never
                // spins on them.
                None => {
                    let parked = self.can_admit() && self.pool.queue.wake_on_push(&self.wake);
                    if !parked && self.can_admit() {
                        // Queued since `admit` looked: take it if allowed.
                        let alive = self.guests.len();
                        self.admit();
                        if self.guests.len() > alive {
                            continue;
                        }
                    }
                    let _ = tokio::time::timeout(EPOCH_TICK, self.notify.notified()).await;
                    if parked {
                        self.pool.queue.forget_waker(&self.wake);
                    }
                }
            }
        }
    }

    /// Whether this worker has a free slot for one more guest: fewer than
    /// `slots.running` of its guests are runnable, and fewer than
    /// `slots.total()` are alive. Guests waiting (an upstream, a timer) use
    /// no CPU, so they count only against the total.
    fn can_admit(&self) -> bool {
        let slots = self.pool.slots;
        self.guests.len() < slots.total() && self.runnable() < slots.running
    }

    /// Guests ready to run (or running).
    fn runnable(&self) -> usize {
        self.guests
            .iter()
            .filter(|g| g.state.runnable.load(Ordering::Acquire))
            .count()
    }

    /// Takes queued requests while this worker has free guest slots. A
    /// tenant may hold at most half of each kind of slot (at least one), so
    /// one tenant's flood of long requests, or of requests waiting on a slow
    /// upstream, leaves room for others.
    fn admit(&mut self) {
        let slots = self.pool.slots;
        let running_cap = (slots.running / 2).max(1);
        let total_cap = (slots.total() / 2).max(1);
        while self.can_admit() {
            let guests = &self.guests;
            let job = self.pool.queue.try_pop_where(|tenant| {
                let (mut running, mut alive) = (0, 0);
                for guest in guests.iter().filter(|g| g.flow.tenant == tenant) {
                    alive += 1;
                    if guest.state.runnable.load(Ordering::Acquire) {
                        running += 1;
                    }
                }
                running < running_cap && alive < total_cap
            });
            let Some(job) = job else {
                return;
            };
            self.start(job);
        }
    }

    fn start(&mut self, job: Job) {
        self.pool.metrics.queue_depth.dec();
        // The client went away while the request was queued.
        if job.reply.is_closed() {
            return;
        }
        let (flow, cpu_weight) = (job.flow, job.cpu_weight);
        let metrics = Arc::clone(&job.version.context.metrics);
        let future = (self.pool.run)(Arc::clone(&self.pool), job);
        self.add(flow, cpu_weight, future, metrics);
    }

    /// Makes `future` one of this worker's guests, runnable at once.
    fn add(
        &mut self,
        flow: Flow,
        cpu_weight: u32,
        future: GuestFuture,
        metrics: Arc<HandlerMetrics>,
    ) {
        let least = |used: &mut dyn Iterator<Item = Duration>| used.min().unwrap_or_default();
        let tenant_start = least(&mut self.tenant_used.values().copied());
        self.tenant_used.entry(flow.tenant).or_insert(tenant_start);
        let handler_start = least(
            &mut self
                .handler_used
                .iter()
                .filter(|((tenant, _), _)| *tenant == flow.tenant)
                .map(|(_, used)| *used),
        );
        self.handler_used
            .entry((flow.tenant, flow.handler))
            .or_insert(handler_start);
        let state = Arc::new(GuestWaker {
            runnable: AtomicBool::new(true),
            worker: Arc::clone(&self.notify),
        });
        if self.guests.is_empty() {
            self.busy.inc();
        }
        self.pool.metrics.guests_alive.inc();
        self.guests.push(Guest {
            flow,
            cpu_weight,
            first_polled: None,
            seq: self.next_seq,
            future,
            waker: Waker::from(Arc::clone(&state)),
            state,
            metrics,
        });
        self.next_seq += 1;
    }

    /// Counts `used` against the guest's tenant, divided by the tenant's
    /// weight (so a tenant of weight 2 gets twice the CPU of one of weight 1
    /// when both have guests to run), and against its handler.
    fn charge(&mut self, flow: Flow, cpu_weight: u32, used: Duration) {
        if let Some(total) = self.tenant_used.get_mut(&flow.tenant) {
            *total += used / cpu_weight.max(1);
        }
        if let Some(total) = self.handler_used.get_mut(&(flow.tenant, flow.handler)) {
            *total += used;
        }
    }

    /// The runnable guest of the tenant, then handler, that used the least
    /// CPU here; the oldest of that handler's.
    fn next_runnable(&self) -> Option<usize> {
        let tenant_used = |g: &Guest| self.tenant_used.get(&g.flow.tenant).copied();
        let handler_used = |g: &Guest| {
            self.handler_used
                .get(&(g.flow.tenant, g.flow.handler))
                .copied()
        };
        self.guests
            .iter()
            .enumerate()
            .filter(|(_, g)| g.state.runnable.load(Ordering::Acquire))
            .min_by_key(|(_, g)| (tenant_used(g), handler_used(g), g.seq))
            .map(|(index, _)| index)
    }

    /// Runs one guest for a slice (until it yields, waits or finishes),
    /// and charges the time to its tenant and handler.
    fn poll(&mut self, index: usize) {
        let guest = &mut self.guests[index];
        guest.state.runnable.store(false, Ordering::Release);
        let mut cx = Context::from_waker(&guest.waker);
        let started = Instant::now();
        let first_polled = *guest.first_polled.get_or_insert(started);
        let slice = &self.pool.slices[self.index].0;
        slice.store(self.pool.clock(first_polled), Ordering::Relaxed);
        let polled =
            std::panic::catch_unwind(AssertUnwindSafe(|| guest.future.as_mut().poll(&mut cx)));
        slice.store(0, Ordering::Relaxed);
        let used = started.elapsed();
        let (flow, weight) = (guest.flow, guest.cpu_weight);
        guest.metrics.guest_cpu(used.as_secs_f64());
        self.charge(flow, weight, used);
        match polled {
            Ok(Poll::Pending) => return,
            Ok(Poll::Ready(())) => {}
            Err(panic) => tracing::error!(
                "a request failed with a panic in the gateway (answered 500): {}",
                panic_message(&*panic)
            ),
        }
        // The store is torn down here, after the reply was sent.
        drop(self.guests.swap_remove(index));
        self.pool.metrics.guests_alive.dec();
        if self.guests.is_empty() {
            self.busy.dec();
        }
        if !self.guests.iter().any(|g| g.flow.tenant == flow.tenant) {
            self.tenant_used.remove(&flow.tenant);
            self.handler_used
                .retain(|(tenant, _), _| *tenant != flow.tenant);
        } else if !self.guests.iter().any(|g| g.flow == flow) {
            self.handler_used.remove(&(flow.tenant, flow.handler));
        }
    }
}

impl Drop for Worker {
    /// A worker that unwinds (it must not) gives its counts back.
    fn drop(&mut self) {
        self.pool.slices[self.index].0.store(0, Ordering::Relaxed);
        let alive = i64::try_from(self.guests.len()).unwrap_or(i64::MAX);
        self.pool.metrics.guests_alive.sub(alive);
        if !self.guests.is_empty() {
            self.busy.dec();
        }
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
    use std::collections::HashMap;
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

    /// A worker with no thread, for driving its scheduler by hand.
    fn idle_worker() -> Worker {
        let metrics = Arc::new(Metrics::new());
        let runtime = Runtime::new(1, 1 << 20, true).expect("runtime");
        let pool = Arc::new(Pool {
            runtime,
            queue: FairQueue::new(1),
            metrics,
            run: run_job,
            slots: GuestSlots {
                running: 8,
                waiting: 0,
            },
            slices: vec![RunningSince::default()],
            started: Instant::now(),
            io: None,
        });
        Worker::new(pool, 0)
    }

    /// Adds a guest that never finishes, of `tenant`'s `handler`.
    fn add_spinner(worker: &mut Worker, tenant: usize, handler: usize, cpu_weight: u32) {
        let metrics = worker.pool.metrics.handler("t", "h");
        let flow = Flow { tenant, handler };
        worker.add(flow, cpu_weight, Box::pin(std::future::pending()), metrics);
    }

    /// Runs `slices` slices of 1 ms each, charged as `poll` charges them,
    /// and counts the slices each guest (by arrival number) got.
    fn share_out(worker: &mut Worker, slices: usize) -> HashMap<u64, usize> {
        let mut got = HashMap::new();
        for _ in 0..slices {
            let index = worker.next_runnable().expect("all runnable");
            let guest = &worker.guests[index];
            let (flow, weight, seq) = (guest.flow, guest.cpu_weight, guest.seq);
            worker.charge(flow, weight, Duration::from_millis(1));
            *got.entry(seq).or_insert(0) += 1;
        }
        got
    }

    #[test]
    fn waiting_guests_leave_running_slots_free_up_to_the_total() {
        let mut worker = idle_worker();
        let pool = Arc::get_mut(&mut worker.pool).expect("only the worker holds it");
        pool.slots = GuestSlots {
            running: 2,
            waiting: 3,
        };
        add_spinner(&mut worker, 0, 0, 1);
        add_spinner(&mut worker, 1, 0, 1);
        assert!(!worker.can_admit(), "both running slots are taken");
        let wait = |worker: &Worker| {
            for guest in &worker.guests {
                guest.state.runnable.store(false, Ordering::Release);
            }
        };
        wait(&worker);
        assert!(worker.can_admit(), "waiting guests use no running slot");
        for tenant in 2..5 {
            add_spinner(&mut worker, tenant, 0, 1);
            wait(&worker);
        }
        assert_eq!(worker.guests.len(), 5);
        assert!(!worker.can_admit(), "all 5 slots are alive");
    }

    #[test]
    fn tenants_share_the_cpu_equally_whatever_their_number_of_guests() {
        let mut worker = idle_worker();
        // Tenant 0 has three guests (0, 1, 2), tenant 1 one (3): each
        // tenant gets half, and tenant 0's half goes to its oldest guest.
        for _ in 0..3 {
            add_spinner(&mut worker, 0, 0, 1);
        }
        add_spinner(&mut worker, 1, 0, 1);
        let got = share_out(&mut worker, 400);
        assert_eq!(got, HashMap::from([(0, 200), (3, 200)]));
    }

    #[test]
    fn cpu_weight_sets_a_tenants_share() {
        let mut worker = idle_worker();
        add_spinner(&mut worker, 0, 0, 3);
        add_spinner(&mut worker, 1, 0, 1);
        let got = share_out(&mut worker, 400);
        assert_eq!(got, HashMap::from([(0, 300), (1, 100)]));
    }

    #[test]
    fn a_tenants_handlers_share_its_part_in_arrival_order_within_each() {
        let mut worker = idle_worker();
        add_spinner(&mut worker, 0, 0, 1); // 0
        add_spinner(&mut worker, 0, 0, 1); // 1: waits behind 0
        add_spinner(&mut worker, 0, 1, 1); // 2
        add_spinner(&mut worker, 1, 0, 1); // 3
        let got = share_out(&mut worker, 400);
        assert_eq!(got, HashMap::from([(0, 100), (2, 100), (3, 200)]));
    }

    #[test]
    fn a_tenant_that_arrives_late_gets_no_credit_for_its_absence() {
        let mut worker = idle_worker();
        add_spinner(&mut worker, 0, 0, 1);
        share_out(&mut worker, 100);
        // Tenant 1 starts level with tenant 0, so it does not run alone
        // for the 100 ms tenant 0 had, and both share from now on.
        add_spinner(&mut worker, 1, 0, 1);
        let got = share_out(&mut worker, 100);
        assert_eq!(got, HashMap::from([(0, 50), (1, 50)]));
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
    fn panicky_runner(_: Arc<Pool>, job: Job) -> GuestFuture {
        Box::pin(async move {
            assert_ne!(job.request.path(), "/panic", "deliberate panic in a job");
            let outcome = GuestOutcome {
                result: Ok(http::Response::new(Bytes::new())),
                fuel_consumed: None,
            };
            let _ = job.reply.send((outcome, job.request));
        })
    }

    /// The `hello` component, loaded with the default limits.
    fn hello(runtime: &Runtime, metrics: &Arc<Metrics>) -> Arc<HandlerVersion> {
        let context = Arc::new(HandlerContext {
            config: Default::default(),
            metrics: metrics.handler("t", "h"),
        });
        let path = wasmgate_handler_components::require(wasmgate_handler_components::HELLO);
        let limits = crate::limits::Limits::default();
        Arc::new(HandlerVersion::load_file(runtime, path.as_ref(), limits, context).expect("load"))
    }

    /// Calls `version` with `GET path`, holding a slot of `slots`.
    fn call_with_slot<'a>(
        executor: &'a Executor,
        version: &Arc<HandlerVersion>,
        slots: &Arc<Semaphore>,
        path: &str,
    ) -> impl Future<Output = GuestOutcome> + use<'a> {
        let (head, ()) = http::Request::get(path)
            .body(())
            .expect("valid")
            .into_parts();
        executor.call(
            Flow {
                tenant: 0,
                handler: 0,
            },
            1,
            Arc::clone(version),
            GuestRequest::new(head, Bytes::new()),
            Instant::now() + Duration::from_secs(60),
            Arc::clone(slots).try_acquire_owned().expect("slot"),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_tenants_slot_is_free_when_the_outcome_arrives() {
        let metrics = Arc::new(Metrics::new());
        let limits = crate::limits::Limits::default();
        let runtime = Runtime::new(1, limits.memory_bytes, true).expect("runtime");
        let slots = GuestSlots {
            running: 1,
            waiting: 0,
        };
        let executor =
            Executor::start(&runtime, 1, slots, 16, Arc::clone(&metrics)).expect("start");
        let version = hello(&runtime, &metrics);
        let slots = Arc::new(Semaphore::new(1));
        // The instance is torn down after the reply; the slot must not
        // wait for that, or the next request could find it taken.
        for _ in 0..200 {
            let outcome = call_with_slot(&executor, &version, &slots, "/hello").await;
            assert!(outcome.result.is_ok(), "{:?}", outcome.result);
            assert_eq!(slots.available_permits(), 1, "the slot is still held");
        }
    }

    #[tokio::test]
    async fn a_panic_serving_a_request_fails_that_request_and_no_worker() {
        let metrics = Arc::new(Metrics::new());
        let two = GuestSlots {
            running: 2,
            waiting: 0,
        };
        let limits = crate::limits::Limits::default();
        let runtime = Runtime::new(1, limits.memory_bytes, true).expect("runtime");
        let executor =
            Executor::start_with(&runtime, 2, two, 16, Arc::clone(&metrics), panicky_runner)
                .expect("start");
        let version = hello(&runtime, &metrics);
        let slots = Arc::new(Semaphore::new(100));
        let call = |path: &str| call_with_slot(&executor, &version, &slots, path);
        // More panics than workers: each costs its request only.
        for _ in 0..5 {
            let outcome = call("/panic").await;
            assert!(
                matches!(outcome.result, Err(RequestError::Internal)),
                "a panicked job is unanswered: {:?}",
                outcome.result
            );
        }
        for _ in 0..5 {
            let outcome = call("/ok").await;
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
