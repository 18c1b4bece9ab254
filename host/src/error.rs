//! Request failures and the one place they become HTTP responses.
//!
//! The statuses and `x-wasmgate-error` codes are a fixed interface
//! (clients and docs/operations.md rely on them); change them here and
//! only here. Also [`TrapKind`], why a guest trapped.

use http::StatusCode;

/// The header naming the cause of a gateway-generated error response.
pub const ERROR_HEADER: &str = "x-wasmgate-error";

/// Why a guest trapped, as the `kind` label of `wasmgate_guest_traps_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrapKind {
    /// The fuel budget ran out.
    FuelExhausted,
    /// The wall-clock deadline passed.
    Timeout,
    /// A memory access out of bounds, or a trap after the memory limit
    /// refused to grow (Rust aborts on allocation failure).
    Memory,
    /// The guest's stack overflowed.
    StackOverflow,
    /// `unreachable` was executed: in Rust, a panic.
    Unreachable,
    /// Any other trap or instantiation failure.
    Other,
}

impl TrapKind {
    /// Every kind.
    pub const ALL: [TrapKind; 6] = [
        Self::FuelExhausted,
        Self::Timeout,
        Self::Memory,
        Self::StackOverflow,
        Self::Unreachable,
        Self::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FuelExhausted => "fuel_exhausted",
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::StackOverflow => "stack_overflow",
            Self::Unreachable => "unreachable",
            Self::Other => "other",
        }
    }
}

/// Why a request did not get the guest's response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No tenant or route matched the Host header and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// The request body is larger than `server.max_body_bytes`.
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The client sent a malformed body or went away while sending it.
    #[error("could not read the request body: {0}")]
    BadBody(String),
    /// The request breaks HTTP's rules in a way the gateway refuses to
    /// guess about (a missing or repeated Host header).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request body did not arrive within `server.body_read_timeout_ms`.
    #[error("the request body did not arrive within {timeout_ms} ms")]
    BodyTimeout {
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// The tenant's concurrency limit or the worker queue is full.
    #[error("{0}")]
    Overloaded(&'static str),
    /// The guest trapped: out of fuel, past its deadline, or a fault.
    #[error("{}", trap_message(*.0))]
    Trap(TrapKind),
    /// The guest answered with something that is not a valid response.
    #[error("invalid response from handler: {0}")]
    BadResponse(String),
    /// The request's deadline passed before the handler answered (while it
    /// waited for a worker, or as the backstop of a running guest's own
    /// deadline).
    #[error("request timed out before the handler answered")]
    Expired,
    /// Serving the request failed inside the gateway (a bug, logged); the
    /// worker that served it lives on.
    #[error("internal error in the gateway")]
    Internal,
    /// The gateway is shutting down and no longer runs guests.
    #[error("gateway is shutting down")]
    ShuttingDown,
    /// An HTTPS request whose host belongs to another tenant than the TLS
    /// server name its connection was made for.
    #[error("misdirected request: {0}")]
    Misdirected(&'static str),
}

fn trap_message(kind: TrapKind) -> &'static str {
    match kind {
        TrapKind::FuelExhausted => "handler ran out of fuel",
        TrapKind::Timeout => "handler exceeded its time limit",
        TrapKind::Memory => "handler trapped: memory limit or out-of-bounds access",
        TrapKind::StackOverflow => "handler trapped: stack overflow",
        TrapKind::Unreachable => "handler trapped: unreachable (a panic)",
        TrapKind::Other => "handler trapped",
    }
}

impl RequestError {
    /// The status and `x-wasmgate-error` value for this failure.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::BadBody(_) | Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Self::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::Trap(TrapKind::FuelExhausted) => {
                (StatusCode::SERVICE_UNAVAILABLE, "fuel_exhausted")
            }
            Self::Trap(TrapKind::Timeout) | Self::Expired => {
                (StatusCode::GATEWAY_TIMEOUT, "timeout")
            }
            Self::Trap(_) => (StatusCode::INTERNAL_SERVER_ERROR, "trap"),
            Self::BadResponse(_) => (StatusCode::BAD_GATEWAY, "bad_response"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Self::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, "misdirected"),
        }
    }

    /// The trap kind, for `wasmgate_guest_traps_total`.
    pub fn trap_kind(&self) -> Option<TrapKind> {
        match self {
            Self::Trap(kind) => Some(*kind),
            _ => None,
        }
    }

    /// The response sent to the client: the status, the error code header,
    /// `Retry-After` when retrying later may help, and a one-line reason.
    pub fn to_response(&self) -> http::Response<bytes::Bytes> {
        let (status, code) = self.status_and_code();
        let mut builder = http::Response::builder()
            .status(status)
            .header(ERROR_HEADER, code)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
        if matches!(self, Self::Overloaded(_) | Self::ShuttingDown) {
            builder = builder.header(http::header::RETRY_AFTER, "1");
        }
        let body = bytes::Bytes::from(format!("{self}\n"));
        builder.body(body).unwrap_or_else(|_| {
            // Unreachable: every part above is a valid constant.
            http::Response::new(bytes::Bytes::from_static(b"error\n"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes_are_the_documented_ones() {
        let table = [
            (RequestError::NoRoute, 404, "no_route"),
            (
                RequestError::BodyTooLarge { limit: 1 },
                413,
                "body_too_large",
            ),
            (RequestError::Overloaded("queue full"), 503, "overloaded"),
            (
                RequestError::Trap(TrapKind::FuelExhausted),
                503,
                "fuel_exhausted",
            ),
            (RequestError::Trap(TrapKind::Timeout), 504, "timeout"),
            (RequestError::Trap(TrapKind::Unreachable), 500, "trap"),
            (RequestError::Trap(TrapKind::Memory), 500, "trap"),
            (RequestError::Trap(TrapKind::StackOverflow), 500, "trap"),
            (RequestError::Trap(TrapKind::Other), 500, "trap"),
            (RequestError::BadResponse("x".into()), 502, "bad_response"),
            (RequestError::BadBody("x".into()), 400, "bad_request"),
            (RequestError::BadRequest("no Host"), 400, "bad_request"),
            (
                RequestError::BodyTimeout { timeout_ms: 1 },
                408,
                "body_timeout",
            ),
            (RequestError::Expired, 504, "timeout"),
            (RequestError::ShuttingDown, 503, "shutting_down"),
            (RequestError::Internal, 500, "internal"),
            (RequestError::Misdirected("x"), 421, "misdirected"),
        ];
        for (error, status, code) in table {
            let response = error.to_response();
            assert_eq!(response.status().as_u16(), status, "{error:?}");
            assert_eq!(response.headers()[ERROR_HEADER], code, "{error:?}");
            assert!(!response.body().is_empty());
        }
    }

    #[test]
    fn overload_says_when_to_retry() {
        let response = RequestError::Overloaded("tenant at max_concurrency").to_response();
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
        assert_eq!(response.body().as_ref(), b"tenant at max_concurrency\n");
    }
}
