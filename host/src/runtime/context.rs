//! What every request of one handler version shares: its config, its
//! metrics and its log budget. Host functions serve from it, and the
//! gateway's lines about the handler spend its budget.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::HandlerMetrics;

/// What host functions need to know about the handler they serve; shared by
/// every request of one handler version. Its guest's `log` calls are
/// written by `host_fns.rs`.
#[derive(Debug)]
pub struct HandlerContext {
    /// The handler's `config` table.
    pub config: BTreeMap<String, String>,
    /// Where its requests and guest metrics are counted; also holds its
    /// log budget.
    pub metrics: Arc<HandlerMetrics>,
}

impl HandlerContext {
    /// Whether the gateway may write one more log line about this handler
    /// now (a trap, say): lines about a handler share its guest's budget,
    /// `limits.log_lines_per_second`. A refused line is counted in
    /// `wasmgate_guest_log_lines_dropped_total` and must not be written.
    /// Ask only for a line whose level is enabled (`tracing::enabled!`), so
    /// filtered lines cost no budget; guest text in the line goes through
    /// `crate::guest_log::escape` unless it is a field formatted with
    /// `Debug` (which escapes it already).
    pub fn log_permit(&self) -> bool {
        self.metrics.log.permit(Instant::now())
    }
}
