//! One connection's life after it is accepted: the clocks that close it
//! (no request head in time, idle, a client that stops reading its
//! response) and its part in the server's shutdown.
//!
//! hyper serves the HTTP; [`drive`] polls hyper's connection future next to
//! those clocks. The clocks read a [`ConnState`] that the request wrapper,
//! the response body wrapper and the socket wrapper (`io.rs`) keep up to
//! date, from whichever task they run on (HTTP/2 runs each stream on a
//! task of its own).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use tokio::sync::{Notify, watch};

/// Where the server is in its life. Accept loops and connections watch
/// it (a connection's requests learn it from their connection); it only
/// moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(super) enum Phase {
    /// Accepting and serving.
    Serving,
    /// Shutdown began: no new connections or requests, in-flight ones
    /// finish, then their connections close.
    Draining,
    /// The grace period is over: requests still waiting for their
    /// response get 503 `shutting_down`, which is written if it can be.
    Cut,
    /// Whatever is still open is dropped now.
    Closed,
}

impl Phase {
    /// The phase `as u8` gave.
    fn from_u8(phase: u8) -> Self {
        match phase {
            0 => Self::Serving,
            1 => Self::Draining,
            2 => Self::Cut,
            _ => Self::Closed,
        }
    }
}

/// Why the gateway cut a connection instead of letting it close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CutReason {
    /// No complete request head within `header_read_timeout_ms`.
    Header,
    /// A response was waiting and the client accepted none of it for
    /// `write_timeout_ms`.
    Write,
    /// Still open when the shutdown's grace and flush time ran out.
    Shutdown,
}

impl CutReason {
    /// The `reason` label of `wasmgate_connections_cut_total`.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Write => "write",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The clocks of one listener's connections.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// From accept to the first complete request head (hyper's own timer
    /// bounds later heads on HTTP/1 keep-alive connections).
    pub(super) header_read: Duration,
    /// With nothing in flight for this long, the connection is closed
    /// gracefully.
    pub(super) idle: Duration,
    /// While a response waits to be written, the client must accept some
    /// of it within this.
    pub(super) write: Duration,
}

/// How a connection ended.
#[derive(Debug)]
pub(super) enum Ending<E> {
    /// hyper finished the connection, cleanly or with this error.
    Finished(Result<(), E>),
    /// The gateway dropped it.
    Cut(CutReason),
}

/// What one connection's requests, bodies and socket report, for its
/// clocks. Times are milliseconds since `epoch`, the moment of accept.
#[derive(Debug)]
pub(super) struct ConnState {
    /// When the connection was accepted; every `*_ms` field counts from it.
    epoch: Instant,
    /// A request head has been complete at least once; until then the
    /// header clock runs from accept.
    served_any: AtomicBool,
    /// Requests whose response is not yet fully handed to hyper: from a
    /// complete head until the response body ends or is dropped, so that
    /// the idle clock never runs while a response is being written.
    in_flight: AtomicUsize,
    /// When `in_flight` last dropped to 0.
    idle_at_ms: AtomicU64,
    /// Response bodies with data left: a response is waiting to be
    /// written even when nothing is pending at the socket (an HTTP/2 client
    /// that opens no flow-control window).
    bodies: AtomicUsize,
    /// The socket refused a write and has accepted nothing since.
    write_blocked: AtomicBool,
    /// When the client last made room for response bytes: the socket took
    /// some, a body handed some to hyper, or a wait to write began.
    progress_at_ms: AtomicU64,
    /// A request ending before this moment wakes [`drive`], since the idle
    /// clock it starts could run out before drive's timer fires; one
    /// ending later needs no wake-up (the timer fires first and looks
    /// again). `u64::MAX` while no timer runs. This spares a busy
    /// keep-alive connection a pass of drive's loop per request.
    idle_wake_before_ms: AtomicU64,
    /// Wakes [`drive`] when a clock may have to start: nothing in flight
    /// any more, a body begins, the socket blocks.
    drive: AtomicWaker,
    /// [`drive`] is polling the connection, and looks at the clocks right
    /// after: a change made meanwhile needs no wake-up. On HTTP/1 that is
    /// every response's body beginning, which would otherwise poll the
    /// connection's task once more per request.
    polling: AtomicBool,
    /// The server's phase as [`drive`] last saw it (a [`Phase`] `as u8`):
    /// the connection's requests read it here rather than each watching
    /// the server's phase, which every connection on every thread shares.
    phase: AtomicU8,
    /// Wakes the requests waiting for [`Phase::Cut`].
    cut: Notify,
}

impl ConnState {
    /// The state of a connection accepted now.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            served_any: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_at_ms: AtomicU64::new(0),
            bodies: AtomicUsize::new(0),
            write_blocked: AtomicBool::new(false),
            progress_at_ms: AtomicU64::new(0),
            idle_wake_before_ms: AtomicU64::new(u64::MAX),
            drive: AtomicWaker::new(),
            polling: AtomicBool::new(false),
            phase: AtomicU8::new(Phase::Serving as u8),
            cut: Notify::new(),
        })
    }

    /// When the connection was accepted.
    pub(super) fn accepted_at(&self) -> Instant {
        self.epoch
    }

    /// The server's phase, as this connection last saw it.
    pub(super) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Resolves once the server's grace period is over ([`Phase::Cut`]).
    pub(super) async fn cut(&self) {
        // Created before the look, so a notification in between counts.
        let cut = self.cut.notified();
        if self.phase() >= Phase::Cut {
            return;
        }
        cut.await;
    }

    /// The server's phase moved on to `now`.
    fn phase_moved(&self, now: Phase) {
        self.phase.store(now as u8, Ordering::Release);
        if now >= Phase::Cut {
            self.cut.notify_waiters();
        }
    }

    /// A clock may have to start: wakes [`drive`] unless it is about to
    /// look anyway.
    fn changed(&self) {
        // With `drive`'s fence between `polling = false` and its look at
        // the clocks: either it sees this change, or this sees it done
        // polling and wakes it.
        fence(Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.drive.wake();
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: &AtomicU64) -> Instant {
        self.epoch + Duration::from_millis(ms.load(Ordering::Acquire))
    }

    /// `at` in milliseconds since accept.
    fn ms_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Tells requests ending from now on whether they must wake [`drive`]:
    /// its timer fires at `armed` (or not at all), and the idle clock
    /// runs for `idle`.
    fn timer_armed(&self, armed: Option<Instant>, idle: Duration) {
        let before = armed.map_or(u64::MAX, |at| {
            let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
            self.ms_since_epoch(at).saturating_sub(idle_ms)
        });
        // SeqCst here and in `InFlight::drop`: either drive sees the
        // request gone when it looks at the clocks, or the request sees
        // that no timer runs and wakes it.
        self.idle_wake_before_ms.store(before, Ordering::SeqCst);
    }

    /// A request head is complete; the request is in flight until the
    /// returned guard is dropped.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.served_any.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// The socket accepted response bytes.
    pub(super) fn wrote(&self) {
        // The write clock runs only while a response waits to be written,
        // and starts from when it began to wait: no clock to read else.
        if self.waiting_to_write() {
            self.progress_at_ms.store(self.now_ms(), Ordering::Release);
        }
        self.write_blocked.store(false, Ordering::Release);
    }

    /// The socket refused a write.
    pub(super) fn write_pending(&self) {
        if !self.write_blocked.swap(true, Ordering::AcqRel) {
            self.progress_at_ms.store(self.now_ms(), Ordering::Release);
            self.changed();
        }
    }

    /// A response body with data left was handed to hyper.
    pub(super) fn body_started(&self) {
        if self.bodies.fetch_add(1, Ordering::AcqRel) == 0 {
            if !self.write_blocked.load(Ordering::Acquire) {
                self.progress_at_ms.store(self.now_ms(), Ordering::Release);
            }
            self.changed();
        }
    }

    /// A response body handed hyper some data: the client made room for it.
    pub(super) fn body_progressed(&self) {
        self.progress_at_ms.store(self.now_ms(), Ordering::Release);
    }

    /// A response body has no data left, or was dropped.
    pub(super) fn body_finished(&self) {
        self.bodies.fetch_sub(1, Ordering::AcqRel);
    }

    /// A response is waiting to be written.
    fn waiting_to_write(&self) -> bool {
        self.bodies.load(Ordering::Acquire) > 0 || self.write_blocked.load(Ordering::Acquire)
    }

    /// When nothing went in flight since, or `None` while something is.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(self.at(&self.idle_at_ms))
    }

    /// The next moment a clock may run out, if any runs. The idle clock is
    /// left out once the connection is `closing` (it was asked to close).
    fn next_check(&self, timeouts: &Timeouts, closing: bool) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if !self.served_any.load(Ordering::Acquire) {
            consider(self.epoch + timeouts.header_read);
        }
        if self.waiting_to_write() {
            consider(self.at(&self.progress_at_ms) + timeouts.write);
        }
        if !closing && let Some(idle) = self.idle_since() {
            consider(idle + timeouts.idle);
        }
        next
    }

    /// Whether the connection must be cut at `now`.
    fn overdue(&self, timeouts: &Timeouts, now: Instant) -> Option<CutReason> {
        if !self.served_any.load(Ordering::Acquire) && now >= self.epoch + timeouts.header_read {
            return Some(CutReason::Header);
        }
        if self.waiting_to_write() && now >= self.at(&self.progress_at_ms) + timeouts.write {
            return Some(CutReason::Write);
        }
        None
    }

    /// Whether the connection has been idle for `idle` at `now`.
    fn idle_for(&self, idle: Duration, now: Instant) -> bool {
        self.idle_since().is_some_and(|since| now >= since + idle)
    }
}

#[cfg(test)]
impl ConnState {
    /// Requests in flight and bodies with data left.
    pub(super) fn in_flight_and_bodies(&self) -> (usize, usize) {
        (
            self.in_flight.load(Ordering::Acquire),
            self.bodies.load(Ordering::Acquire),
        )
    }

    /// Whether the socket refused a write and took nothing since.
    pub(super) fn is_write_blocked(&self) -> bool {
        self.write_blocked.load(Ordering::Acquire)
    }
}

/// Marks a request finished when dropped: when its response body is done
/// or dropped, or when its future is cancelled before it had a response.
#[derive(Debug)]
pub(super) struct InFlight(Arc<ConnState>);

impl InFlight {
    /// The connection this request is on.
    pub(super) fn state(&self) -> &ConnState {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        let now = state.now_ms();
        state.idle_at_ms.store(now, Ordering::Release);
        if state.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && now < state.idle_wake_before_ms.load(Ordering::SeqCst)
        {
            state.changed();
        }
    }
}

/// Wakes [`drive`] for a change of the server's phase, and notes that it
/// came, so that drive polls the phase's future only then: the connection's
/// task wakes for every read, write and reply, and polling the phase each
/// time would take the lock that every connection's phase watch shares.
#[derive(Debug)]
struct PhaseSignal {
    came: AtomicBool,
    drive: AtomicWaker,
}

impl Wake for PhaseSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.came.store(true, Ordering::SeqCst);
        self.drive.wake();
    }
}

/// The first phase after `past` (`Closed` if the server is gone), and the
/// receiver, to watch for the next one.
async fn phase_after(
    mut phase: watch::Receiver<Phase>,
    past: Phase,
) -> (Phase, watch::Receiver<Phase>) {
    let now = match phase.wait_for(|now| *now > past).await {
        Ok(now) => *now,
        Err(_) => Phase::Closed,
    };
    (now, phase)
}

/// Drives `connection` to its end, or cuts it: when no request head came
/// within the header timeout of accept, when a response waited
/// `timeouts.write` without the client accepting any of it, or at
/// [`Phase::Closed`]. Asks it to close gracefully (`graceful`: finish what
/// is in flight, then close) when idle too long or at [`Phase::Draining`].
pub(super) async fn drive<C, E>(
    connection: C,
    graceful: impl Fn(Pin<&mut C>),
    state: &ConnState,
    timeouts: Timeouts,
    phase: watch::Receiver<Phase>,
) -> Ending<E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut connection = pin!(connection);
    let mut closing = false;
    let signal = Arc::new(PhaseSignal {
        // The first poll looks at the phase.
        came: AtomicBool::new(true),
        drive: AtomicWaker::new(),
    });
    let phase_waker = Waker::from(Arc::clone(&signal));
    let mut next_phase = pin!(phase_after(phase, Phase::Serving));
    let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
    let mut armed: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        state.drive.register(cx.waker());
        signal.drive.register(cx.waker());
        loop {
            if signal.came.swap(false, Ordering::SeqCst)
                && let Poll::Ready((now, phase)) = next_phase
                    .as_mut()
                    .poll(&mut Context::from_waker(&phase_waker))
            {
                state.phase_moved(now);
                if now == Phase::Closed {
                    return Poll::Ready(Ending::Cut(CutReason::Shutdown));
                }
                // Draining or Cut: the requests answer a cut themselves.
                if !closing {
                    closing = true;
                    graceful(connection.as_mut());
                }
                next_phase.set(phase_after(phase, now));
                signal.came.store(true, Ordering::SeqCst);
                continue;
            }
            state.polling.store(true, Ordering::SeqCst);
            let polled = connection.as_mut().poll(cx);
            state.polling.store(false, Ordering::SeqCst);
            // See `ConnState::changed`.
            fence(Ordering::SeqCst);
            if let Poll::Ready(result) = polled {
                return Poll::Ready(Ending::Finished(result));
            }
            // Only ever move the timer earlier: a timer that fires before a
            // deadline that moved later (each request on a keep-alive
            // connection moves the idle one) just re-checks and re-arms,
            // which is cheaper than resetting it on every request.
            if let Some(at) = state.next_check(&timeouts, closing)
                && armed.is_none_or(|armed| at < armed)
            {
                timer.as_mut().reset(at.into());
                armed = Some(at);
            }
            state.timer_armed(armed, timeouts.idle);
            if armed.is_none() || timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer has fired: re-arm it on the next pass even if the
            // deadline is the same.
            armed = None;
            state.timer_armed(None, timeouts.idle);
            let now = Instant::now();
            if let Some(reason) = state.overdue(&timeouts, now) {
                return Poll::Ready(Ending::Cut(reason));
            }
            if !closing && state.idle_for(timeouts.idle, now) {
                closing = true;
                graceful(connection.as_mut());
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_millis(100),
        idle: Duration::from_millis(1000),
        write: Duration::from_millis(300),
    };

    fn ms(state: &ConnState, ms: u64) -> Instant {
        state.epoch + Duration::from_millis(ms)
    }

    /// A connection that ends once `asked` is set, as hyper's does when
    /// asked to close while idle.
    fn until_asked_to_close(asked: &AtomicBool) -> impl Future<Output = Result<(), ()>> + '_ {
        std::future::poll_fn(|_| {
            if asked.load(Ordering::Acquire) {
                std::task::Poll::Ready(Ok(()))
            } else {
                std::task::Poll::Pending
            }
        })
    }

    #[test]
    fn a_silent_connection_is_due_at_the_header_timeout_from_accept() {
        let state = ConnState::new();
        assert_eq!(state.next_check(&T, false), Some(ms(&state, 100)));
        assert_eq!(state.overdue(&T, ms(&state, 99)), None);
        assert_eq!(state.overdue(&T, ms(&state, 100)), Some(CutReason::Header));
        // Asked to close, it still has to send a head in time.
        assert_eq!(state.next_check(&T, true), Some(ms(&state, 100)));
    }

    #[test]
    fn a_request_stops_the_header_and_idle_clocks_until_its_body_is_gone() {
        let state = ConnState::new();
        let request = state.begin();
        assert_eq!(state.next_check(&T, false), None, "nothing runs");
        assert_eq!(state.overdue(&T, ms(&state, 10_000)), None);
        state.body_started();
        let write_due = state.next_check(&T, false).expect("write clock runs");
        assert!(write_due >= ms(&state, 300));
        // Data handed on later pushes the write clock out.
        state.progress_at_ms.store(500, Ordering::Release);
        assert_eq!(state.next_check(&T, false), Some(ms(&state, 800)));
        assert_eq!(state.overdue(&T, ms(&state, 799)), None);
        assert_eq!(state.overdue(&T, ms(&state, 800)), Some(CutReason::Write));
        state.body_finished();
        assert_eq!(state.next_check(&T, false), None, "still in flight");
        drop(request);
        let idle_due = state.next_check(&T, false).expect("idle clock runs");
        assert!(state.idle_for(T.idle, idle_due));
        assert!(!state.idle_for(T.idle, idle_due - Duration::from_millis(1)));
        assert_eq!(state.next_check(&T, true), None, "closing: no idle clock");
    }

    #[test]
    fn a_blocked_socket_runs_the_write_clock_until_it_takes_bytes() {
        let state = ConnState::new();
        let _request = state.begin();
        state.write_pending();
        let due = state.next_check(&T, false).expect("write clock runs");
        assert_eq!(state.overdue(&T, due), Some(CutReason::Write));
        state.wrote();
        assert_eq!(state.next_check(&T, false), None);
    }

    #[tokio::test]
    async fn drive_cuts_a_connection_that_never_sends_a_head() {
        let state = ConnState::new();
        let (_phase, watching) = watch::channel(Phase::Serving);
        let timeouts = Timeouts {
            header_read: Duration::from_millis(20),
            ..T
        };
        let never = std::future::pending::<Result<(), ()>>();
        let ending = drive(never, |_| {}, &state, timeouts, watching).await;
        assert!(
            matches!(ending, Ending::Cut(CutReason::Header)),
            "{ending:?}"
        );
    }

    /// Drives a connection that closes when asked, with a request in
    /// flight from the start for `hold` (a response body being written
    /// meanwhile, if `writing`): it must stay open that long, then close
    /// once idle.
    async fn closes_once_idle(timeouts: Timeouts, hold: Duration, writing: bool) {
        let state = ConnState::new();
        let (_phase, watching) = watch::channel(Phase::Serving);
        let asked_to_close = AtomicBool::new(false);
        let request = state.begin();
        if writing {
            state.body_started();
        }
        let driving = drive(
            until_asked_to_close(&asked_to_close),
            |_| asked_to_close.store(true, Ordering::Release),
            &state,
            timeouts,
            watching,
        );
        let mut driving = pin!(driving);
        // In flight: only the write clock may run.
        tokio::select! {
            biased;
            _ = driving.as_mut() => panic!("closed with a request in flight"),
            () = tokio::time::sleep(hold) => {}
        }
        if writing {
            state.body_finished();
        }
        drop(request);
        // Bounded, so a missed wake-up fails rather than hangs.
        let ending = tokio::time::timeout(Duration::from_secs(30), driving)
            .await
            .expect("closed once idle");
        assert!(matches!(ending, Ending::Finished(Ok(()))), "{ending:?}");
        assert!(state.idle_for(timeouts.idle, Instant::now()));
    }

    #[tokio::test]
    async fn drive_closes_gracefully_once_idle_after_the_last_response() {
        let timeouts = Timeouts {
            idle: Duration::from_millis(20),
            ..T
        };
        closes_once_idle(timeouts, Duration::from_millis(100), false).await;
    }

    #[test]
    fn a_request_ending_wakes_drive_only_if_the_idle_clock_runs_out_before_its_timer() {
        let state = ConnState::new();
        state.timer_armed(Some(ms(&state, 5000)), Duration::from_millis(1000));
        assert_eq!(state.idle_wake_before_ms.load(Ordering::SeqCst), 4000);
        state.timer_armed(Some(ms(&state, 500)), Duration::from_millis(1000));
        assert_eq!(state.idle_wake_before_ms.load(Ordering::SeqCst), 0);
        state.timer_armed(None, Duration::from_millis(1000));
        assert_eq!(state.idle_wake_before_ms.load(Ordering::SeqCst), u64::MAX);
    }

    #[tokio::test]
    async fn drive_closes_an_idle_connection_long_before_a_later_timer_fires() {
        // The write clock of the response being written arms drive's timer
        // 60 s out; the idle clock, started by the request's end, must
        // wake drive and run out first.
        let timeouts = Timeouts {
            header_read: Duration::from_secs(60),
            idle: Duration::from_millis(20),
            write: Duration::from_secs(60),
        };
        closes_once_idle(timeouts, Duration::ZERO, true).await;
    }

    /// Timeouts whose write clock alone can end a test.
    const WRITE_ONLY: Timeouts = Timeouts {
        header_read: Duration::from_secs(60),
        idle: Duration::from_secs(60),
        write: Duration::from_millis(20),
    };

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Polls `driving` once, still pending, with a waker that counts the
    /// wake-ups it gets from then on.
    fn poll_once_counting_wakes<F: Future>(driving: Pin<&mut F>) -> Arc<Wakes> {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        assert!(driving.poll(&mut Context::from_waker(&waker)).is_pending());
        wakes
    }

    /// Waits (at most 30 s) for `driving` to end, cut by the write clock.
    async fn cut_by_the_write_clock(driving: impl Future<Output = Ending<()>>) {
        let ending = tokio::time::timeout(Duration::from_secs(30), driving)
            .await
            .expect("cut by the write clock");
        assert!(
            matches!(ending, Ending::Cut(CutReason::Write)),
            "{ending:?}"
        );
    }

    #[tokio::test]
    async fn a_body_beginning_while_drive_polls_starts_the_write_clock_without_a_wake_up() {
        // As hyper does on HTTP/1: the response body is handed over inside
        // the connection's poll. drive must see it when it looks at the
        // clocks after that poll, without waking its task to poll again.
        let state = ConnState::new();
        let (_phase, watching) = watch::channel(Phase::Serving);
        let polls = AtomicUsize::new(0);
        let responding = std::future::poll_fn(|_| {
            if polls.fetch_add(1, Ordering::Relaxed) == 0 {
                std::mem::forget(state.begin());
                state.body_started();
            }
            Poll::<Result<(), ()>>::Pending
        });
        let driving = drive(responding, |_| {}, &state, WRITE_ONLY, watching);
        let mut driving = pin!(driving);
        let wakes = poll_once_counting_wakes(driving.as_mut());
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0, "woken for its own poll");
        cut_by_the_write_clock(driving).await;
    }

    #[tokio::test]
    async fn a_body_beginning_on_another_task_wakes_drive() {
        // As on HTTP/2, where each stream runs on a task of its own.
        let state = ConnState::new();
        let (_phase, watching) = watch::channel(Phase::Serving);
        let never = std::future::pending::<Result<(), ()>>();
        let driving = drive(never, |_| {}, &state, WRITE_ONLY, watching);
        let mut driving = pin!(driving);
        let wakes = poll_once_counting_wakes(driving.as_mut());
        let _request = state.begin();
        state.body_started();
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "drive was not woken");
        cut_by_the_write_clock(driving).await;
    }

    #[tokio::test]
    async fn requests_learn_the_phase_and_the_cut_from_their_connection() {
        let state = ConnState::new();
        let (phase, watching) = watch::channel(Phase::Serving);
        let never = std::future::pending::<Result<(), ()>>();
        let driving = drive(never, |_| {}, &state, T, watching);
        let cut = state.cut();
        let (mut driving, mut cut) = (pin!(driving), pin!(cut));
        for now in [Phase::Serving, Phase::Draining] {
            phase.send_replace(now);
            tokio::select! {
                biased;
                _ = driving.as_mut() => panic!("ended before the server closed"),
                () = cut.as_mut() => panic!("cut at {now:?}"),
                () = tokio::task::yield_now() => {}
            }
            assert_eq!(state.phase(), now);
        }
        phase.send_replace(Phase::Cut);
        let cut_or_ended = async {
            tokio::select! {
                _ = driving.as_mut() => panic!("ended before the server closed"),
                () = cut => {}
            }
        };
        tokio::time::timeout(Duration::from_secs(30), cut_or_ended)
            .await
            .expect("the request learns the cut");
        assert_eq!(state.phase(), Phase::Cut);
        // A request that asks after the cut is cut at once.
        state.cut().await;
    }

    #[tokio::test]
    async fn drive_drops_the_connection_when_the_server_closes() {
        let state = ConnState::new();
        let _request = state.begin();
        let (phase, watching) = watch::channel(Phase::Serving);
        let graceful_calls = std::sync::atomic::AtomicUsize::new(0);
        let never = std::future::pending::<Result<(), ()>>();
        let driving = drive(
            never,
            |_| {
                graceful_calls.fetch_add(1, Ordering::Relaxed);
            },
            &state,
            T,
            watching,
        );
        let mut driving = pin!(driving);
        phase.send_replace(Phase::Draining);
        tokio::select! {
            biased;
            _ = driving.as_mut() => panic!("ended while draining"),
            () = tokio::task::yield_now() => {}
        }
        assert_eq!(graceful_calls.load(Ordering::Relaxed), 1);
        phase.send_replace(Phase::Closed);
        let ending = driving.await;
        assert!(
            matches!(ending, Ending::Cut(CutReason::Shutdown)),
            "{ending:?}"
        );
        assert_eq!(graceful_calls.load(Ordering::Relaxed), 1);
    }
}
