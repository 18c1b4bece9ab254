//! The admin API's request bodies: read within their size and time limits,
//! and within one byte budget for all of them together.
//!
//! A body is read whole before its write waits for the registry's writer,
//! so without a bound parallel uploads would each hold up to
//! `admin.max_upload_bytes` at once (30 of 60 MB: 3.2 GB). The budget is
//! twice `admin.max_upload_bytes`: one largest upload always fits, with
//! room for another or for smaller ones. A body that does not fit is
//! answered 503 `busy` with `Retry-After` at once rather than queued: the
//! client learns it now, and waiting would hold its connection and
//! buffers. A body is reserved in full from its `Content-Length` before
//! any of it is read, or as its bytes arrive when it is sent without one,
//! and its share is given back when the request is done with it. A
//! component pulled from a registry (a deploy by reference) holds a share
//! the same way, reserved from the size its manifest declares.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Body;
use prometheus::IntGauge;
use serde::de::DeserializeOwned;

use super::views::CONFIG_HEADER;
use super::wire::Rejection;
use crate::request::body::{ByteBudget, Reservation};

/// How long an upload's body may take to arrive: a 64 MiB component over
/// a slow link, but not forever.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest JSON body (tenant settings, route and config changes).
const MAX_JSON_BYTES: usize = 1 << 20;
/// What is read and thrown away of a body the answer does not need (a
/// rejection before the body was read), so that the client finishes
/// sending and reads the answer instead of a reset connection. Beyond it
/// the connection is closed after the answer.
const DRAIN_BYTES: usize = 4 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// What a `busy` answer tells the client to wait before trying again.
const RETRY_AFTER_SECONDS: u32 = 2;

/// How the admin API reads request bodies, and the budget they share.
#[derive(Debug)]
pub(super) struct Bodies {
    /// `admin.max_upload_bytes`.
    max_upload_bytes: usize,
    /// Bytes all bodies being read or waiting for their write may hold.
    budget: Arc<ByteBudget>,
    /// The budget's size, for the `busy` message.
    budget_bytes: usize,
}

/// A body read whole, holding its share of the budget until dropped.
#[derive(Debug)]
pub(super) struct Read {
    pub(super) bytes: Vec<u8>,
    pub(super) held: Reservation,
}

/// An uploaded component and the digest its client sent, if any.
#[derive(Debug)]
pub(super) struct Upload {
    pub(super) bytes: Vec<u8>,
    /// Hex sha256 from a `Content-Digest: sha-256=:...:` header.
    pub(super) digest: Option<String>,
    /// Keep it until the write is done with `bytes`.
    pub(super) held: Reservation,
}

impl Bodies {
    /// Bodies of at most `max_upload_bytes`, twice that in all.
    pub(super) fn new(max_upload_bytes: usize) -> Self {
        let budget_bytes = max_upload_bytes.saturating_mul(2);
        // Not exported: `wasmgate_buffered_bytes` is the public listener's.
        let gauge = IntGauge::new("admin_body_bytes", "admin request body bytes held")
            .expect("static metric definition is valid");
        Self {
            max_upload_bytes,
            budget: ByteBudget::new(budget_bytes, gauge),
            budget_bytes,
        }
    }

    /// Bytes the bodies being read or written hold now.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.budget.used()
    }

    /// The component a `PUT` uploads: `application/wasm`, at most
    /// `admin.max_upload_bytes`.
    pub(super) async fn component<B>(&self, request: Request<B>) -> Result<Upload, Rejection>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        if media_type(request.headers()) != "application/wasm" {
            let content_type = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            drain(request.into_body()).await;
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "send the component with Content-Type: application/wasm (got {content_type:?})"
                ),
            ));
        }
        let digest = match request.headers().get("content-digest") {
            None => None,
            Some(value) => Some(parse_sha256_digest(value.as_bytes()).ok_or_else(|| {
                Rejection::bad_request("Content-Digest must be sha-256=:<base64>:")
            })?),
        };
        let Read { bytes, held } = self.read(request, self.max_upload_bytes).await?;
        Ok(Upload {
            bytes,
            digest,
            held,
        })
    }

    /// `admin.max_upload_bytes`.
    pub(super) fn max_upload_bytes(&self) -> usize {
        self.max_upload_bytes
    }

    /// A share of the budget for `bytes` that do not come in a body (a
    /// component pulled from a registry), or 503 `busy`.
    pub(super) fn hold(&self, bytes: u64) -> Result<Reservation, Rejection> {
        usize::try_from(bytes)
            .ok()
            .and_then(|bytes| self.budget.try_reserve(bytes))
            .ok_or_else(|| self.busy())
    }

    /// A JSON body.
    pub(super) async fn json<T, B>(&self, request: Request<B>) -> Result<T, Rejection>
    where
        T: DeserializeOwned,
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let read = self.read(request, MAX_JSON_BYTES).await?;
        parse_json(&read.bytes)
    }

    /// A JSON body, or `T`'s default when the body is empty.
    pub(super) async fn json_or_empty<T, B>(&self, request: Request<B>) -> Result<T, Rejection>
    where
        T: DeserializeOwned + Default,
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let read = self.read(request, MAX_JSON_BYTES).await?;
        if read.bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        parse_json(&read.bytes)
    }

    /// Reads a body of at most `limit` bytes within [`UPLOAD_TIMEOUT`]:
    /// 413 when the declared or actual length is over (judged from
    /// `Content-Length` before reading), 503 `busy` when the budget has no
    /// room for it, 408 when it is too slow. What the buffer may grow to
    /// is reserved before it grows, so the budget bounds real memory.
    async fn read<B>(&self, request: Request<B>, limit: usize) -> Result<Read, Rejection>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let too_large = || {
            Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is larger than {limit} bytes (admin.max_upload_bytes)"),
            )
        };
        let hint = request.body().size_hint();
        if hint.lower() > limit as u64 {
            drain(request.into_body()).await;
            return Err(too_large());
        }
        let declared = hint
            .exact()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        let mut body = request.into_body();
        let Some(mut held) = self.budget.try_reserve(declared) else {
            drain(body).await;
            return Err(self.busy());
        };
        let mut bytes = Vec::with_capacity(declared);
        let deadline = tokio::time::Instant::from(Instant::now() + UPLOAD_TIMEOUT);
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Err(Rejection::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "timeout",
                        "the body did not arrive in time",
                    ));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(Rejection::bad_request(format!("reading the body: {e}")));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let total = bytes.len() + data.len();
            if total > limit {
                drain(body).await;
                return Err(too_large());
            }
            if total > bytes.capacity() {
                let capacity = total.max(bytes.capacity().saturating_mul(2)).min(limit);
                if !held.grow(capacity.saturating_sub(held.bytes())) {
                    drain(body).await;
                    return Err(self.busy());
                }
                bytes.reserve_exact(capacity - bytes.len());
            }
            bytes.extend_from_slice(&data);
        }
        Ok(Read { bytes, held })
    }

    fn busy(&self) -> Rejection {
        Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "other uploads hold {} of the {} bytes the admin API reads at once \
                 (2 x admin.max_upload_bytes); try again in a few seconds",
                self.budget.used(),
                self.budget_bytes
            ),
        )
        .retry_after(RETRY_AFTER_SECONDS)
    }
}

/// The request's media type (`Content-Type` without parameters), "" when
/// it has none.
pub(super) fn media_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map_or("", str::trim)
}

/// Reads and discards up to [`DRAIN_BYTES`] of `body` within
/// [`DRAIN_TIME`], a frame at a time: nothing of it is kept.
pub(super) async fn drain<B: Body + Unpin>(mut body: B) {
    let discard = async {
        let mut seen = 0;
        while seen <= DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Buf::remaining),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|e| Rejection::bad_request(format!("invalid JSON: {e}")))
}

/// The config strings a handler upload carries in [`CONFIG_HEADER`], if
/// it does: a JSON object whose values are strings.
pub(super) fn config_header(
    headers: &HeaderMap,
) -> Result<Option<BTreeMap<String, String>>, Rejection> {
    let Some(value) = headers.get(CONFIG_HEADER) else {
        return Ok(None);
    };
    serde_json::from_slice(value.as_bytes())
        .map(Some)
        .map_err(|e| {
            Rejection::bad_request(format!(
                "{CONFIG_HEADER} must be a JSON object of strings, like {{\"greeting\": \"hi\"}}: {e}"
            ))
        })
}

/// `sha-256=:BASE64:` (RFC 9530) as hex.
fn parse_sha256_digest(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?;
    let encoded = value
        .split(',')
        .map(str::trim)
        .find_map(|item| item.strip_prefix("sha-256="))?
        .strip_prefix(':')?
        .strip_suffix(':')?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    (raw.len() == 32).then(|| raw.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body_util::Full;
    use hyper::body::{Frame, SizeHint};

    use super::*;
    use crate::digest::sha256_hex;

    /// A body that sends `frames`, then waits forever when `stalls`; its
    /// length is declared only when `declared` is set.
    struct Chunks {
        frames: VecDeque<Bytes>,
        stalls: bool,
        declared: Option<u64>,
    }

    impl Chunks {
        fn stalled(declared: Option<u64>, frames: &[usize]) -> Self {
            Self {
                frames: frames.iter().map(|&n| Bytes::from(vec![b'x'; n])).collect(),
                stalls: true,
                declared,
            }
        }

        /// Frames of these sizes, without a declared length.
        fn undeclared(frames: &[usize]) -> Self {
            Self {
                stalls: false,
                ..Self::stalled(None, frames)
            }
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.frames.pop_front() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None if self.stalls => Poll::Pending,
                None => Poll::Ready(None),
            }
        }

        fn size_hint(&self) -> SizeHint {
            self.declared
                .map_or_else(SizeHint::new, SizeHint::with_exact)
        }
    }

    fn upload<B>(body: B) -> Request<B> {
        Request::builder()
            .header(header::CONTENT_TYPE, "application/wasm")
            .body(body)
            .expect("request")
    }

    /// Starts reading `body` and lets it run until it waits for bytes.
    async fn start_reading(bodies: &Arc<Bodies>, body: Chunks) -> tokio::task::JoinHandle<()> {
        let bodies = Arc::clone(bodies);
        let task = tokio::spawn(async move {
            let _ = bodies.component(upload(body)).await;
        });
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        task
    }

    /// Status, `error` and `Retry-After` of a rejection.
    async fn answer(rejection: Rejection) -> (StatusCode, String, Option<String>) {
        let response = rejection.into_response();
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().expect("ascii").to_owned());
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        (
            status,
            body["error"].as_str().unwrap_or("").to_owned(),
            retry,
        )
    }

    #[tokio::test]
    async fn a_declared_length_is_reserved_before_reading_and_given_back_after() {
        let bodies = Arc::new(Bodies::new(1000));
        let first = start_reading(&bodies, Chunks::stalled(Some(1000), &[10])).await;
        assert_eq!(bodies.held(), 1000, "reserved from Content-Length at once");
        let second = start_reading(&bodies, Chunks::stalled(Some(1000), &[])).await;
        assert_eq!(bodies.held(), 2000);
        let refused = bodies
            .component(upload(Full::new(Bytes::from_static(b"\0asm"))))
            .await
            .expect_err("no room");
        assert_eq!(
            answer(refused).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy".into(),
                Some("2".into())
            )
        );
        first.abort();
        second.abort();
        let _ = (first.await, second.await);
        assert_eq!(bodies.held(), 0, "an abandoned read gives its share back");

        let read = bodies
            .component(upload(Full::new(Bytes::from_static(b"\0asm\x0d"))))
            .await
            .expect("fits now");
        assert_eq!(read.bytes, b"\0asm\x0d");
        assert_eq!(bodies.held(), 5, "held while the write needs the bytes");
        drop(read);
        assert_eq!(bodies.held(), 0);
    }

    #[tokio::test]
    async fn a_body_without_a_length_is_admitted_as_it_arrives() {
        let bodies = Arc::new(Bodies::new(1000));
        let a = start_reading(&bodies, Chunks::stalled(Some(900), &[])).await;
        let b = start_reading(&bodies, Chunks::stalled(Some(900), &[])).await;
        // 150 fits (1950 of 2000); growing to 300 does not.
        let chunked = Chunks::undeclared(&[150, 150]);
        let refused = bodies.component(upload(chunked)).await.expect_err("busy");
        assert_eq!(answer(refused).await.1, "busy");
        assert_eq!(bodies.held(), 1800, "the refused body gave its share back");
        a.abort();
        b.abort();
        let _ = (a.await, b.await);

        let whole = Chunks::undeclared(&[300, 300, 300]);
        let read = bodies.component(upload(whole)).await.expect("fits");
        assert_eq!(read.bytes.len(), 900);
        assert!(read.held.bytes() >= 900 && read.held.bytes() <= 1000);
        drop(read);
        let over = Chunks::undeclared(&[600, 600]);
        let refused = bodies.component(upload(over)).await.expect_err("413");
        assert_eq!(answer(refused).await.1, "too_large");
        assert_eq!(bodies.held(), 0);
    }

    #[tokio::test]
    async fn json_bodies_share_the_budget() {
        let bodies = Arc::new(Bodies::new(1000));
        let a = start_reading(&bodies, Chunks::stalled(Some(1000), &[])).await;
        let b = start_reading(&bodies, Chunks::stalled(Some(1000), &[])).await;
        let request = Request::new(Full::new(Bytes::from_static(b"{}")));
        let refused = bodies
            .json::<serde_json::Value, _>(request)
            .await
            .expect_err("busy");
        assert_eq!(answer(refused).await.1, "busy");
        a.abort();
        b.abort();
        let _ = (a.await, b.await);
        let request = Request::new(Full::new(Bytes::from_static(b"{}")));
        let value: serde_json::Value = bodies.json(request).await.expect("fits");
        assert_eq!(value, serde_json::json!({}));
        assert_eq!(bodies.held(), 0);
    }

    #[test]
    fn content_digest_is_parsed_as_rfc_9530_says() {
        let sha = sha256_hex(b"abc");
        let raw: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&sha[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        let header = format!("sha-512=:AAAA:, sha-256=:{encoded}:");
        assert_eq!(parse_sha256_digest(header.as_bytes()), Some(sha));
        for bad in [
            "sha-256=abc",
            "sha-256=:!!:",
            "md5=:AAAA:",
            "sha-256=:AAAA:",
        ] {
            assert_eq!(parse_sha256_digest(bad.as_bytes()), None, "{bad}");
        }
    }
}
