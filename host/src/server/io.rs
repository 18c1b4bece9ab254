//! Wrappers that tell a connection's [`ConnState`] how its responses are
//! being written: one around the socket, one around each response body.
//!
//! Both are needed to see a client that stops reading. On HTTP/1 the socket
//! stops accepting bytes ([`WatchedIo`] sees the write go pending). On
//! HTTP/2 a client can instead stop opening flow-control windows: then
//! hyper never asks the body for more and nothing is pending at the socket,
//! and only the body ([`TrackedBody`]) can tell that it has data left that
//! nobody takes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use bytes::Buf;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connection::{ConnState, InFlight};

/// A socket that reports to its connection whether writes go through.
#[derive(Debug)]
pub(super) struct WatchedIo<T> {
    /// The socket.
    inner: T,
    /// Where accepted and refused writes are reported.
    state: Arc<ConnState>,
}

impl<T> WatchedIo<T> {
    /// Wraps `inner`, reporting to `state`.
    pub(super) fn new(inner: T, state: Arc<ConnState>) -> Self {
        Self { inner, state }
    }

    fn report(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => self.state.wrote(),
            Poll::Pending => self.state.write_pending(),
            Poll::Ready(_) => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.report(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.report(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The most of a request body left unread by its response (a 413, say)
/// that is read and thrown away after the response.
pub(super) const DISCARD_BYTES: usize = 16 << 20;

/// How long reading and throwing away a request body left unread by its
/// response may take, in all.
pub(super) const DISCARD_TIME: Duration = Duration::from_secs(5);

/// A response body that keeps its request in flight until it ends or is
/// dropped, and reports to its connection whether hyper takes its data.
#[derive(Debug)]
pub(super) struct TrackedBody<B> {
    /// The body as the service made it.
    inner: B,
    /// Counted in the connection's bodies with data left.
    counted: bool,
    /// The request this body answers; in flight until the body is dropped.
    request: InFlight,
    /// The request's body, if the response came before it was read to the
    /// end; see [`TrackedBody::discarding`].
    unread: Option<Incoming>,
}

impl<B: Body> TrackedBody<B> {
    /// `inner`, answering the request `request`.
    pub(super) fn new(inner: B, request: InFlight) -> Self {
        let counted = !inner.is_end_stream();
        if counted {
            request.state().body_started();
        }
        Self {
            inner,
            counted,
            request,
            unread: None,
        }
    }

    /// Keeps the request's unread body until hyper is done with this
    /// response body, then reads and throws away up to [`DISCARD_BYTES`]
    /// of it within [`DISCARD_TIME`] before dropping it.
    ///
    /// Dropping it earlier loses the response: on HTTP/2 a request body
    /// dropped before the response is sent resets the stream with CANCEL,
    /// and clients (curl: "Stream error in the HTTP/2 framing layer") show
    /// that instead of the response; dropped after the response it resets
    /// with NO_ERROR, which RFC 9113 8.1 defines for exactly this, and a
    /// client that sends little enough finishes without any reset. On
    /// HTTP/1 hyper closes the connection as soon as the body is dropped,
    /// and the kernel answers the bytes still arriving with a TCP reset
    /// that can destroy the response before the client has read it; reading
    /// on for a while gives the client the time to (and a client whose
    /// body fits keeps its connection).
    pub(super) fn discarding(mut self, unread: Option<Incoming>) -> Self {
        self.unread = unread;
        self
    }

    fn finish(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.request.state().body_finished();
        }
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.request.state().body_finished();
        }
        if let Some(unread) = self.unread.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(discard(unread));
        }
    }
}

/// Reads and throws away up to [`DISCARD_BYTES`] of `body` within
/// [`DISCARD_TIME`], then drops it.
async fn discard(mut body: Incoming) {
    let read = async {
        let mut left = DISCARD_BYTES;
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let Some(rest) = left.checked_sub(data.len()) else {
                return;
            };
            left = rest;
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, read).await;
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.data_ref().is_some_and(|data| data.has_remaining()) {
                    this.request.state().body_progressed();
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(_)) | None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::request::body::ResponseBody;

    #[tokio::test]
    async fn a_body_is_in_flight_until_dropped_and_waiting_until_it_ends() {
        let state = ConnState::new();
        let body = TrackedBody::new(
            ResponseBody::from(Bytes::from(vec![1u8; 200 << 10])),
            state.begin(),
        );
        let mut body = Box::pin(body);
        assert_eq!(body.size_hint().exact(), Some(200 << 10));
        assert_eq!(
            state.in_flight_and_bodies(),
            (1, 1),
            "in flight, waiting to write"
        );
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            total += frame.expect("infallible").into_data().expect("data").len();
        }
        assert_eq!(total, 200 << 10);
        assert_eq!(
            state.in_flight_and_bodies(),
            (1, 0),
            "written, still in flight"
        );
        drop(body);
        assert_eq!(state.in_flight_and_bodies(), (0, 0));
    }

    #[test]
    fn an_empty_body_never_waits_and_a_dropped_one_stops_waiting() {
        let state = ConnState::new();
        let empty = TrackedBody::new(ResponseBody::default(), state.begin());
        assert_eq!(state.in_flight_and_bodies(), (1, 0));
        drop(empty);
        let unread = TrackedBody::new(ResponseBody::from("data"), state.begin());
        assert_eq!(state.in_flight_and_bodies(), (1, 1));
        drop(unread);
        assert_eq!(state.in_flight_and_bodies(), (0, 0));
    }

    #[tokio::test]
    async fn a_full_socket_is_reported_and_a_write_that_goes_through_clears_it() {
        let state = ConnState::new();
        let (near, mut far) = tokio::io::duplex(8);
        let mut io = WatchedIo::new(near, Arc::clone(&state));
        io.write_all(b"12345678").await.expect("fits");
        assert!(!state.is_write_blocked());
        let more = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, b"9"));
        assert!(futures_pending(more).await, "the pipe is full");
        assert!(state.is_write_blocked());
        let mut sink = [0u8; 8];
        tokio::io::AsyncReadExt::read_exact(&mut far, &mut sink)
            .await
            .expect("read");
        io.write_all(b"9").await.expect("room now");
        assert!(!state.is_write_blocked());
    }

    /// Whether `future` is pending on its first poll.
    async fn futures_pending<F: std::future::Future>(future: F) -> bool {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_pending())).await
    }
}
