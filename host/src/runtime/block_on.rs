//! Driving a future to completion on the calling thread: how a blocking
//! caller (a load's instantiation check, [`super::call_guest`]) runs the
//! async guest calls.

use std::sync::Arc;

/// Runs `future` to completion on this thread. Timers (a guest's
/// `wasi:io/poll`) use the tokio runtime the thread is in, if any, which
/// must then be driven by other threads; outside one, WASI's own runtime.
pub(super) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return wasmtime_wasi::runtime::in_tokio(future);
    };
    let _context = handle.enter();
    let mut future = std::pin::pin!(future);
    let waker = Arc::new(ThreadWaker(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

/// Wakes a thread parked in [`block_on`].
struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}
