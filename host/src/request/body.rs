//! Bodies held in memory, and the byte budget that bounds them.
//!
//! Request bodies are buffered whole before a guest runs, and a guest's
//! response is buffered whole before it is written. A client that sends or
//! reads slowly therefore makes the gateway hold bytes on its behalf; the
//! [`ByteBudget`] caps what all connections together may hold
//! (`server.max_buffered_bytes`), so no number of slow clients can grow
//! memory without bound. A body releases its share when it is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};
use prometheus::IntGauge;

/// The most a response body hands hyper at once. Larger bodies are copied
/// out in pieces of this size, so that once the body is dropped (and its
/// reservation released) hyper holds at most one piece, not a share of the
/// whole allocation.
const CHUNK: usize = 64 << 10;

/// Bytes all buffered bodies may hold together.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
    /// `wasmgate_buffered_bytes`: what is held now.
    gauge: IntGauge,
}

impl ByteBudget {
    /// A budget of `limit` bytes, reported through `gauge`.
    pub fn new(limit: usize, gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
            gauge,
        })
    }

    /// An empty reservation, to [`Reservation::grow`] as bytes arrive.
    pub fn reserve_none(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    /// Reserves `bytes`, or `None` when they do not fit.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let mut reservation = self.reserve_none();
        reservation.grow(bytes).then_some(reservation)
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok();
        if taken {
            self.gauge.add(gauge_value(bytes));
        }
        taken
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.gauge.sub(gauge_value(bytes));
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// A share of a [`ByteBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Reservation {
    /// Takes `more` bytes; false (and nothing taken) when they do not fit.
    pub fn grow(&mut self, more: usize) -> bool {
        let taken = self.budget.take(more);
        if taken {
            self.bytes += more;
        }
        taken
    }

    /// Bytes held by this reservation.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

/// A body produced as hyper asks for it (a static file read from disk).
type Stream = Pin<Box<dyn Body<Data = Bytes, Error = std::convert::Infallible> + Send>>;

/// The body of every response the gateway sends: bytes in memory, handed
/// to hyper in pieces of at most 64 KiB, holding their share of the budget
/// until the body is dropped; or a stream (a static file) that holds no
/// more than the piece it is producing.
#[derive(Default)]
pub struct ResponseBody {
    data: Bytes,
    _reservation: Option<Reservation>,
    /// When set, the body is this stream and `data` is empty.
    stream: Option<Stream>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("data", &self.data.len())
            .field("stream", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// A body of `data`, accounted by `reservation` when it has one.
    pub fn new(data: Bytes, reservation: Option<Reservation>) -> Self {
        Self {
            data,
            _reservation: reservation,
            stream: None,
        }
    }

    /// A body that is `stream`, which must bound what it holds itself.
    pub fn streaming(
        stream: impl Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static,
    ) -> Self {
        Self {
            stream: Some(Box::pin(stream)),
            ..Self::default()
        }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(data: Bytes) -> Self {
        Self::new(data, None)
    }
}

impl From<&'static str> for ResponseBody {
    fn from(text: &'static str) -> Self {
        Self::new(Bytes::from_static(text.as_bytes()), None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(stream) = &mut this.stream {
            return stream.as_mut().poll_frame(cx);
        }
        if this.data.is_empty() {
            return Poll::Ready(None);
        }
        let piece = if this.data.len() <= CHUNK {
            std::mem::take(&mut this.data)
        } else {
            let piece = Bytes::copy_from_slice(&this.data[..CHUNK]);
            this.data.advance(CHUNK);
            piece
        };
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.stream {
            Some(stream) => stream.is_end_stream(),
            None => self.data.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.stream {
            Some(stream) => stream.size_hint(),
            None => SizeHint::with_exact(self.data.len() as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn budget(limit: usize) -> Arc<ByteBudget> {
        ByteBudget::new(
            limit,
            IntGauge::new("test_buffered_bytes", "test").expect("valid gauge"),
        )
    }

    #[test]
    fn reservations_stay_within_the_limit_and_give_back_on_drop() {
        let budget = budget(100);
        let a = budget.try_reserve(60).expect("fits");
        assert!(budget.try_reserve(41).is_none(), "60 + 41 > 100");
        let mut b = budget.try_reserve(40).expect("fits exactly");
        assert!(!b.grow(1), "full");
        assert_eq!(budget.used(), 100);
        assert_eq!(budget.gauge.get(), 100);
        drop(a);
        assert!(b.grow(60));
        assert_eq!(b.bytes(), 100);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_large_body_comes_in_copied_pieces_and_releases_its_share_when_dropped() {
        let budget = budget(1 << 20);
        let size = CHUNK * 3 + 10;
        let data = Bytes::from(vec![7u8; size]);
        let body = ResponseBody::new(data, budget.try_reserve(size));
        assert_eq!(body.size_hint().exact(), Some(size as u64));
        let mut body = Box::pin(body);
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("infallible").into_data().expect("data");
            pieces.push(data.len());
        }
        assert_eq!(pieces, [CHUNK, CHUNK, CHUNK, 10]);
        assert_eq!(budget.used(), size, "held until the body is dropped");
        drop(body);
        assert_eq!(budget.used(), 0);
    }
}
