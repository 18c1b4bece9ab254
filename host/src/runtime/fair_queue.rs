//! The queue between the request path and the guest workers: bounded, and
//! fair between tenants and between a tenant's handlers.
//!
//! A single FIFO lets one flooded handler delay every other request by the
//! whole backlog in front of it. Here tenants take turns, and within a
//! tenant its handlers take turns (round robin, one request per turn), so a
//! request waits behind at most one queued request of each other busy
//! handler. Each handler's own requests keep their arrival order.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Where a handler's requests queue: its tenant's position and its own
/// position within that tenant, in the config. Assigned once at load, so
/// the request path looks up no names while it holds the queue's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The tenant's index in the config.
    pub tenant: usize,
    /// The handler's index within its tenant.
    pub handler: usize,
}

/// Why [`FairQueue::push`] gave the item back.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected<T> {
    /// The queue holds `capacity` items already.
    Full(T),
    /// [`FairQueue::close`] was called.
    Closed(T),
}

/// A bounded multi-producer, multi-consumer queue served round robin by
/// tenant, then by handler.
#[derive(Debug)]
pub struct FairQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    tenants: RoundRobin<RoundRobin<VecDeque<T>>>,
    len: usize,
    /// Consumers blocked in `pop`: a push only pays for a wake-up when
    /// someone is waiting for one.
    waiting: usize,
    /// Of those, the ones a push has woken that have not taken the lock
    /// back yet. A push wakes only a consumer no other push has woken:
    /// under load, many pushes land between a wake-up and the woken
    /// thread running, and each would otherwise pay a futex call for a
    /// thread already on its way (measured: one call per request).
    woken: usize,
    /// Consumers busy with other work that asked to be woken by the next
    /// push ([`FairQueue::wake_on_push`]): at most one waker each.
    parked: Vec<std::task::Waker>,
    closed: bool,
}

impl<T> FairQueue<T> {
    /// An empty queue that holds at most `capacity` items in all.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                tenants: RoundRobin::default(),
                len: 0,
                waiting: 0,
                woken: 0,
                parked: Vec::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
        }
    }

    /// Queues `item` behind the earlier items of the same flow. Says
    /// whether an idle consumer was woken for it: one blocked in
    /// [`FairQueue::pop`], or one that asked to hear of the next push
    /// ([`FairQueue::wake_on_push`]); either takes the item at once.
    pub fn push(&self, flow: Flow, item: T) -> Result<bool, Rejected<T>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Rejected::Closed(item));
        }
        if state.len >= self.capacity {
            return Err(Rejected::Full(item));
        }
        state
            .tenants
            .schedule(flow.tenant)
            .schedule(flow.handler)
            .push_back(item);
        state.len += 1;
        // A consumer blocked in `pop` and not yet woken is idle: it goes
        // first. Else one that asked to hear of the next push.
        let blocked = state.claim_blocked();
        let parked = if blocked { None } else { state.parked.pop() };
        drop(state);
        if blocked {
            self.ready.notify_one();
        }
        let woke = blocked || parked.is_some();
        if let Some(waker) = parked {
            waker.wake();
        }
        Ok(woke)
    }

    /// Takes the next item in turn, waiting while the queue is empty;
    /// `None` once the queue is closed and empty.
    pub fn pop(&self) -> Option<T> {
        let mut state = self.lock();
        loop {
            let next = state
                .tenants
                .pop_with(|handlers| handlers.pop_with(VecDeque::pop_front));
            if let Some(item) = next {
                state.len -= 1;
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state.waiting += 1;
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.waiting -= 1;
            // Woken by a push, or spuriously: either way this consumer is
            // no longer one a push should wake. (A spurious wake-up that
            // takes a push's count leaves that push's wake-up to a
            // consumer already awake, which looks at the queue next.)
            state.woken = state.woken.saturating_sub(1);
        }
    }

    /// Takes the next item in turn among the tenants `allowed` accepts,
    /// without waiting: a worker whose guest slots a tenant already holds
    /// enough of passes that tenant over, which keeps its turn.
    pub fn try_pop_where(&self, allowed: impl Fn(usize) -> bool) -> Option<T> {
        let mut state = self.lock();
        let item = state
            .tenants
            .pop_where(allowed, |handlers| handlers.pop_with(VecDeque::pop_front))?;
        state.len -= 1;
        Some(item)
    }

    /// Asks for `waker` to be woken by the next push, for a consumer that
    /// cannot block in [`FairQueue::pop`] (it has work in progress) but can
    /// take more. Returns false, registering nothing, if items are queued
    /// already (take them now). A consumer's waker is kept once, however
    /// often it asks.
    pub fn wake_on_push(&self, waker: &std::task::Waker) -> bool {
        let mut state = self.lock();
        if state.len > 0 || state.closed {
            return false;
        }
        if !state.parked.iter().any(|w| w.will_wake(waker)) {
            state.parked.push(waker.clone());
        }
        true
    }

    /// Withdraws `waker`'s request to be woken (its consumer can take no
    /// more for now).
    pub fn forget_waker(&self, waker: &std::task::Waker) {
        self.lock().parked.retain(|w| !w.will_wake(waker));
    }

    /// Refuses further pushes; consumers drain what is queued, then `pop`
    /// returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing in this module panics while holding the lock with the
        // state half-updated, so a poisoned lock still guards a valid queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> State<T> {
    /// Claims a consumer blocked in `pop` that no push has woken yet, if
    /// there is one: the caller wakes it.
    fn claim_blocked(&mut self) -> bool {
        let idle = self.waiting > self.woken;
        if idle {
            self.woken += 1;
        }
        idle
    }
}

/// A queue that can say whether it is empty; `RoundRobin` nests over these.
trait Queue: Default {
    fn is_empty(&self) -> bool;

    /// Called when the queue has just become empty: gives back memory a
    /// burst left behind, since emptied queues are kept for reuse.
    fn emptied(&mut self) {}
}

/// Capacity an emptied handler queue keeps: enough for steady load to
/// allocate nothing, little enough that a past burst does not pin memory.
const KEPT_CAPACITY: usize = 64;

impl<T> Queue for VecDeque<T> {
    fn is_empty(&self) -> bool {
        VecDeque::is_empty(self)
    }

    fn emptied(&mut self) {
        self.shrink_to(KEPT_CAPACITY);
    }
}

/// Sub-queues, one per index, served in turn.
///
/// Indices are positions in the config, a small dense set, so a queue is
/// kept per index once seen and a push allocates nothing. Invariant: an
/// index is in `turns` exactly when its queue is not empty, and then once.
#[derive(Debug)]
struct RoundRobin<Q> {
    queues: Vec<Q>,
    turns: VecDeque<usize>,
}

impl<Q> Default for RoundRobin<Q> {
    fn default() -> Self {
        Self {
            queues: Vec::new(),
            turns: VecDeque::new(),
        }
    }
}

impl<Q: Queue> Queue for RoundRobin<Q> {
    fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }
}

impl<Q: Queue> RoundRobin<Q> {
    /// The sub-queue at `slot`, given a turn at the back of the line if it
    /// had none. The caller must add to it, keeping the invariant.
    fn schedule(&mut self, slot: usize) -> &mut Q {
        if slot >= self.queues.len() {
            // Empty queues allocate nothing until used.
            self.queues.resize_with(slot + 1, Q::default);
        }
        let queue = &mut self.queues[slot];
        if queue.is_empty() {
            self.turns.push_back(slot);
        }
        queue
    }

    /// Takes an item with `take` from the sub-queue whose turn it is, then
    /// sends that sub-queue to the back of the line if it still has items.
    fn pop_with<T>(&mut self, take: impl FnOnce(&mut Q) -> Option<T>) -> Option<T> {
        let slot = self.turns.pop_front()?;
        let queue = self.queues.get_mut(slot)?;
        let item = take(queue);
        if queue.is_empty() {
            queue.emptied();
        } else {
            self.turns.push_back(slot);
        }
        item
    }

    /// [`RoundRobin::pop_with`] for the first slot in turn that `allowed`
    /// accepts; the slots passed over keep their places.
    fn pop_where<T>(
        &mut self,
        allowed: impl Fn(usize) -> bool,
        take: impl FnOnce(&mut Q) -> Option<T>,
    ) -> Option<T> {
        let turn = self.turns.iter().position(|&slot| allowed(slot))?;
        let slot = self.turns.remove(turn)?;
        let queue = self.queues.get_mut(slot)?;
        let item = take(queue);
        if queue.is_empty() {
            queue.emptied();
        } else {
            self.turns.push_back(slot);
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const fn flow(tenant: usize, handler: usize) -> Flow {
        Flow { tenant, handler }
    }

    fn drain(queue: &FairQueue<&'static str>) -> Vec<&'static str> {
        queue.close();
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn one_handler_is_served_in_arrival_order() {
        let queue = FairQueue::new(10);
        for item in ["1", "2", "3"] {
            queue.push(flow(0, 0), item).expect("room");
        }
        assert_eq!(drain(&queue), ["1", "2", "3"]);
    }

    #[test]
    fn tenants_take_turns_then_their_handlers_take_turns() {
        let queue = FairQueue::new(100);
        // Tenant a floods handler x, then sends one request to handler y;
        // tenant b sends two requests after all of that.
        for item in ["ax1", "ax2", "ax3", "ax4"] {
            queue.push(flow(0, 0), item).expect("room");
        }
        queue.push(flow(0, 1), "ay1").expect("room");
        queue.push(flow(1, 0), "bz1").expect("room");
        queue.push(flow(1, 0), "bz2").expect("room");
        assert_eq!(
            drain(&queue),
            ["ax1", "bz1", "ay1", "bz2", "ax2", "ax3", "ax4"]
        );
    }

    #[test]
    fn flows_take_turns_in_order_of_arrival_not_of_index() {
        let queue = FairQueue::new(10);
        queue.push(flow(3, 2), "late index").expect("room");
        queue.push(flow(0, 0), "first index").expect("room");
        queue.push(flow(3, 0), "same tenant").expect("room");
        assert_eq!(drain(&queue), ["late index", "first index", "same tenant"]);
    }

    #[test]
    fn a_flow_that_empties_rejoins_at_the_back() {
        let queue = FairQueue::new(10);
        queue.push(flow(0, 0), "a1").expect("room");
        queue.push(flow(1, 0), "b1").expect("room");
        assert_eq!(queue.pop(), Some("a1"));
        // a emptied and lost its turn: it queues behind b now.
        queue.push(flow(0, 0), "a2").expect("room");
        assert_eq!(drain(&queue), ["b1", "a2"]);
    }

    #[test]
    fn a_tenant_passed_over_keeps_its_turn() {
        let queue = FairQueue::new(10);
        queue.push(flow(0, 0), "a1").expect("room");
        queue.push(flow(1, 0), "b1").expect("room");
        queue.push(flow(1, 0), "b2").expect("room");
        assert_eq!(queue.try_pop_where(|tenant| tenant != 0), Some("b1"));
        assert_eq!(queue.try_pop_where(|tenant| tenant == 2), None);
        assert_eq!(drain(&queue), ["a1", "b2"]);
    }

    #[test]
    fn capacity_counts_every_flow_and_frees_on_pop() {
        let queue = FairQueue::new(2);
        assert_eq!(queue.push(flow(0, 0), "1"), Ok(false));
        assert_eq!(queue.push(flow(1, 0), "2"), Ok(false));
        assert_eq!(queue.push(flow(2, 0), "3"), Err(Rejected::Full("3")));
        assert_eq!(queue.pop(), Some("1"));
        assert_eq!(queue.push(flow(2, 0), "3"), Ok(false));
    }

    #[test]
    fn an_emptied_flow_gives_back_a_burst() {
        let queue = FairQueue::new(10_000);
        for _ in 0..5_000 {
            queue.push(flow(0, 0), "burst").expect("room");
        }
        assert_eq!(drain(&queue).len(), 5_000);
        let state = queue.lock();
        assert!(state.tenants.queues[0].queues[0].capacity() <= KEPT_CAPACITY);
    }

    #[test]
    fn close_refuses_pushes_and_drains_what_is_queued() {
        let queue = FairQueue::new(10);
        queue.push(flow(0, 0), "1").expect("room");
        queue.close();
        assert_eq!(queue.push(flow(0, 0), "2"), Err(Rejected::Closed("2")));
        assert_eq!(queue.pop(), Some("1"));
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn a_waiting_consumer_wakes_for_a_push_and_for_close() {
        let queue = Arc::new(FairQueue::new(1000));
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || std::iter::from_fn(|| queue.pop()).collect::<Vec<u32>>())
            })
            .collect();
        for i in 0..1000 {
            queue.push(flow(0, 0), i).expect("room");
        }
        queue.close();
        let mut seen: Vec<u32> = consumers
            .into_iter()
            .flat_map(|c| c.join().expect("consumer"))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn each_blocked_consumer_is_woken_by_one_push_only() {
        let queue = FairQueue::<u32>::new(8);
        let mut state = queue.lock();
        state.waiting = 2;
        assert!(state.claim_blocked());
        assert!(state.claim_blocked());
        assert!(!state.claim_blocked(), "both are on their way already");
        // One of them takes the lock back: the other is still on its way.
        state.waiting -= 1;
        state.woken -= 1;
        assert!(!state.claim_blocked());
    }

    #[test]
    fn bursts_reach_blocked_consumers_with_no_wake_up_lost() {
        let queue = Arc::new(FairQueue::new(1000));
        let (sender, received) = std::sync::mpsc::channel();
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let queue = Arc::clone(&queue);
                let sender = sender.clone();
                std::thread::spawn(move || {
                    while let Some(item) = queue.pop() {
                        let _ = sender.send(item);
                    }
                })
            })
            .collect();
        for burst in 0..200u32 {
            for i in 0..3 {
                queue.push(flow(0, 0), burst * 3 + i).expect("room");
            }
            // Every item of the burst is taken before the next burst: a
            // lost wake-up leaves one queued with every consumer asleep.
            for _ in 0..3 {
                received
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .expect("a queued item is taken");
            }
        }
        queue.close();
        for consumer in consumers {
            consumer.join().expect("consumer");
        }
    }

    /// Counts its wakes.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_parked_consumer_hears_of_the_next_push_once() {
        let queue = FairQueue::new(8);
        let counter = Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&counter));
        assert_eq!(queue.push(flow(0, 0), 0), Ok(false), "no consumer waits");
        assert_eq!(queue.try_pop_where(|_| true), Some(0));
        assert!(queue.wake_on_push(&waker));
        assert!(queue.wake_on_push(&waker), "asking twice keeps one waker");
        assert_eq!(
            queue.push(flow(0, 0), 1),
            Ok(true),
            "the parked one is woken"
        );
        assert_eq!(queue.push(flow(0, 0), 2), Ok(false), "once");
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!queue.wake_on_push(&waker), "items are queued: take them");
        assert_eq!(queue.try_pop_where(|_| true), Some(1));
        assert_eq!(queue.try_pop_where(|_| true), Some(2));
        assert!(queue.wake_on_push(&waker));
        queue.forget_waker(&waker);
        assert_eq!(queue.push(flow(0, 0), 3), Ok(false));
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
