//! Prometheus metrics: the gateway's fixed metric families in one registry.
//!
//! Per-handler label children are resolved once, when a handler is loaded
//! ([`HandlerMetrics`]), so the request path does no label lookups for them.
//! Guest-defined metrics are validated and capped per handler: a guest can
//! never grow the registry without bound, wrap a counter or make a sum
//! infinite.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::error::TrapKind;
use crate::guest_log::LogLimiter;
use crate::limits::Limits;

/// Distinct guest metric names one handler may use (counters and histograms
/// together); further names are dropped and counted.
pub const MAX_GUEST_METRIC_NAMES: usize = 64;
/// Longest guest metric name accepted, in bytes.
pub const MAX_GUEST_METRIC_NAME_LEN: usize = 64;
/// Largest magnitude a guest histogram accepts; larger (and non-finite)
/// values are dropped. Even 2^64 observations of it keep the `_sum` far
/// from overflowing to infinity, and it is above any duration in
/// nanoseconds (11 days) or size in bytes (a petabyte) a handler measures.
pub const MAX_GUEST_HISTOGRAM_VALUE: f64 = 1e15;

/// The `result` labels of `wasmgate_tls_handshakes_total`.
pub const TLS_HANDSHAKE_RESULTS: [&str; 3] = ["ok", "failed", "timeout"];

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Connections accepted on the public listener.
    pub connections_accepted: IntCounter,
    /// Connections open now.
    pub connections_active: IntGauge,
    /// Connections closed.
    pub connections_closed: IntCounter,
    /// Connections the gateway cut instead of closing them gracefully, by
    /// reason: `header`, `write` or `shutdown`.
    pub connections_cut: IntCounterVec,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    /// Time to instantiate a component for one request.
    pub instantiation_duration: Histogram,
    fuel_consumed: HistogramVec,
    traps: IntCounterVec,
    /// Requests waiting for a worker.
    pub queue_depth: IntGauge,
    /// Workers running guest code now.
    pub workers_busy: IntGauge,
    /// Handler versions currently routed.
    pub handlers_loaded: IntGauge,
    /// Guest worker threads alive; fewer than configured means degraded.
    pub workers_alive: IntGauge,
    /// Requests routed to a handler and not yet answered.
    pub requests_in_flight: IntGauge,
    /// Request and response body bytes held in memory now.
    pub buffered_bytes: IntGauge,
    admin_requests: IntCounterVec,
    handler_versions: prometheus::IntGaugeVec,
    handler_loads: IntCounterVec,
    guest_counters: IntCounterVec,
    guest_histograms: HistogramVec,
    guest_dropped: IntCounterVec,
    guest_log_dropped: IntCounterVec,
    guest_cpu: prometheus::CounterVec,
    /// Guests alive on the workers now: running, waiting for their next
    /// time slice or waiting in `wasi:io/poll`.
    pub guests_alive: IntGauge,
    /// Guests' calls to upstreams, by result.
    outbound_requests: IntCounterVec,
    /// Time from a guest's call to the upstream's response head.
    outbound_duration: HistogramVec,
    /// TLS handshakes on the HTTPS listener, by result.
    tls_handshakes: IntCounterVec,
    /// Each loaded certificate's expiry, by tenant (`""`: the default).
    tls_expiry: prometheus::IntGaugeVec,
    /// `wasmgate_cluster_revision` and `wasmgate_cluster_store_up`,
    /// registered in cluster mode only.
    cluster: std::sync::OnceLock<(IntGauge, IntGauge)>,
    /// Per (tenant, handler): survives reloads so the name cap holds across
    /// versions.
    handlers: Mutex<HashMap<(String, String), Arc<HandlerMetrics>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition is valid");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("static metric definition is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric definition is valid");
    registry
        .register(Box::new(h.clone()))
        .expect("metric names are unique");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            r.register(Box::new(process))
                .expect("process collector registers once");
        }
        let th = &["tenant", "handler"];
        let seconds = vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let instantiate = vec![
            0.000_001,
            0.000_002_5,
            0.000_005,
            0.000_01,
            0.000_025,
            0.000_05,
            0.000_1,
            0.000_25,
            0.000_5,
            0.001,
            0.005,
            0.01,
        ];
        let fuel = prometheus::exponential_buckets(1_000.0, 10.0, 8)
            .expect("static bucket definition is valid");
        Self {
            connections_accepted: counter(
                &r,
                "wasmgate_connections_accepted_total",
                "Connections accepted on the public listener.",
            ),
            connections_active: gauge(&r, "wasmgate_connections_active", "Connections open now."),
            connections_closed: counter(
                &r,
                "wasmgate_connections_closed_total",
                "Connections closed.",
            ),
            connections_cut: {
                let c = counter_vec(
                    &r,
                    "wasmgate_connections_cut_total",
                    "Connections cut by the gateway: header (no request head in time), write (the client accepted no response bytes for write_timeout_ms), shutdown (still open after the grace period).",
                    &["reason"],
                );
                // Present from the start, so a rate over them is defined.
                for reason in ["header", "write", "shutdown"] {
                    c.with_label_values(&[reason]);
                }
                c
            },
            requests: counter_vec(
                &r,
                "wasmgate_requests_total",
                "Requests answered, by tenant, handler and status code (empty tenant and handler: no route).",
                &["tenant", "handler", "status"],
            ),
            request_duration: histogram_vec(
                &r,
                "wasmgate_request_duration_seconds",
                "Time from routing to response, queueing included.",
                th,
                seconds.clone(),
            ),
            instantiation_duration: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "wasmgate_instantiation_duration_seconds",
                        "Time to instantiate a fresh component instance.",
                    )
                    .buckets(instantiate),
                )
                .expect("static metric definition is valid");
                r.register(Box::new(h.clone()))
                    .expect("metric names are unique");
                h
            },
            fuel_consumed: histogram_vec(
                &r,
                "wasmgate_fuel_consumed",
                "Fuel consumed per request, in fuel units.",
                th,
                fuel,
            ),
            traps: counter_vec(
                &r,
                "wasmgate_guest_traps_total",
                "Requests that ended in a guest trap, by kind.",
                &["tenant", "handler", "kind"],
            ),
            queue_depth: gauge(&r, "wasmgate_queue_depth", "Requests waiting for a worker."),
            workers_busy: gauge(&r, "wasmgate_workers_busy", "Workers running guest code."),
            handlers_loaded: gauge(&r, "wasmgate_handlers_loaded", "Handlers currently loaded."),
            workers_alive: gauge(&r, "wasmgate_workers_alive", "Guest worker threads alive."),
            requests_in_flight: gauge(
                &r,
                "wasmgate_requests_in_flight",
                "Requests routed to a handler and not yet answered.",
            ),
            handler_versions: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "wasmgate_handler_version_info",
                        "The version serving each handler: 1 for its number and sha256.",
                    ),
                    &["tenant", "handler", "version", "sha256"],
                )
                .expect("static metric definition is valid");
                r.register(Box::new(g.clone()))
                    .expect("metric names are unique");
                g
            },
            admin_requests: counter_vec(
                &r,
                "wasmgate_admin_requests_total",
                "Admin API requests, by operation and status.",
                &["operation", "status"],
            ),
            buffered_bytes: gauge(
                &r,
                "wasmgate_buffered_bytes",
                "Request and response body bytes held in memory (server.max_buffered_bytes caps it).",
            ),
            tls_handshakes: {
                let c = counter_vec(
                    &r,
                    "wasmgate_tls_handshakes_total",
                    "TLS handshakes on the HTTPS listener, by result: ok, failed (the client's or no certificate for its name) or timeout (not done within header_read_timeout_ms of accept).",
                    &["result"],
                );
                for result in TLS_HANDSHAKE_RESULTS {
                    c.with_label_values(&[result]);
                }
                c
            },
            tls_expiry: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "wasmgate_tls_certificate_expiry_seconds",
                        "When each loaded certificate expires (its notAfter), in Unix seconds, by tenant (empty: server.tls_default).",
                    ),
                    &["tenant"],
                )
                .expect("static metric definition is valid");
                r.register(Box::new(g.clone()))
                    .expect("metric names are unique");
                g
            },
            handler_loads: counter_vec(
                &r,
                "wasmgate_handler_loads_total",
                "Handler loads, by result (ok or error).",
                &["result"],
            ),
            guest_counters: counter_vec(
                &r,
                "wasmgate_guest_events_total",
                "Counters defined by guests through the metrics import.",
                &["tenant", "handler", "name"],
            ),
            guest_histograms: histogram_vec(
                &r,
                "wasmgate_guest_values",
                "Histograms defined by guests through the metrics import.",
                &["tenant", "handler", "name"],
                prometheus::DEFAULT_BUCKETS.to_vec(),
            ),
            guest_dropped: counter_vec(
                &r,
                "wasmgate_guest_metrics_dropped_total",
                "Guest metric updates dropped: invalid name, over the per-handler cap, name used for the other kind, a counter increment that would overflow, or a histogram value that is not finite or above 1e15 in magnitude.",
                th,
            ),
            guest_log_dropped: counter_vec(
                &r,
                "wasmgate_guest_log_lines_dropped_total",
                "Log lines of a handler (its log calls and the gateway's lines about its traps) dropped over limits.log_lines_per_second.",
                th,
            ),
            guest_cpu: {
                let c = prometheus::CounterVec::new(
                    Opts::new(
                        "wasmgate_guest_cpu_seconds_total",
                        "Worker time spent running guests (instantiation, wasm and host calls), by tenant and handler.",
                    ),
                    th,
                )
                .expect("static metric definition is valid");
                r.register(Box::new(c.clone()))
                    .expect("metric names are unique");
                c
            },
            guests_alive: gauge(
                &r,
                "wasmgate_guests_alive",
                "Guests alive on the workers: running or waiting for a time slice or a timer.",
            ),
            outbound_requests: counter_vec(
                &r,
                "wasmgate_outbound_requests_total",
                "Guests' calls to upstreams (wasi:http), by result: the response's status class, denied (not allowed, over a bound, or an internal address), timeout or error.",
                &["tenant", "handler", "result"],
            ),
            outbound_duration: histogram_vec(
                &r,
                "wasmgate_outbound_duration_seconds",
                "Time from a guest's call to the upstream's response head (or the failure).",
                th,
                seconds,
            ),
            cluster: std::sync::OnceLock::new(),
            handlers: Mutex::new(HashMap::new()),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("encoding metrics failed: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The cluster mode's gauges: the revision applied here and whether
    /// the store answers. Registered on first use, so a single node does
    /// not export them.
    pub fn cluster_gauges(&self) -> (IntGauge, IntGauge) {
        self.cluster
            .get_or_init(|| {
                (
                    gauge(
                        &self.registry,
                        "wasmgate_cluster_revision",
                        "Revision of the cluster's desired state this replica serves.",
                    ),
                    gauge(
                        &self.registry,
                        "wasmgate_cluster_store_up",
                        "1 when the last request to the cluster's store (etcd) succeeded, else 0.",
                    ),
                )
            })
            .clone()
    }

    /// Counts one handler load attempt.
    pub fn handler_load(&self, ok: bool) {
        self.handler_loads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Counts a TLS handshake; `result` is one of [`TLS_HANDSHAKE_RESULTS`].
    pub fn tls_handshake(&self, result: &str) {
        self.tls_handshakes.with_label_values(&[result]).inc();
    }

    /// Shows when `tenant`'s certificate expires (Unix seconds), or, with
    /// `None`, that it has none any more.
    pub fn set_certificate_expiry(&self, tenant: &str, not_after: Option<u64>) {
        match not_after {
            Some(at) => self
                .tls_expiry
                .with_label_values(&[tenant])
                .set(i64::try_from(at).unwrap_or(i64::MAX)),
            None => {
                let _ = self.tls_expiry.remove_label_values(&[tenant]);
            }
        }
    }

    /// Counts an admin API request.
    pub fn admin_request(&self, operation: &str, status: http::StatusCode) {
        self.admin_requests
            .with_label_values(&[operation, status.as_str()])
            .inc();
    }

    /// Shows `new` (version number, sha256) as the handler's active version
    /// instead of `old`.
    pub fn set_active_version(
        &self,
        tenant: &str,
        handler: &str,
        old: Option<(u64, &str)>,
        new: (u64, &str),
    ) {
        if let Some((number, sha256)) = old {
            let number = number.to_string();
            let _ = self
                .handler_versions
                .remove_label_values(&[tenant, handler, &number, sha256]);
        }
        let number = new.0.to_string();
        self.handler_versions
            .with_label_values(&[tenant, handler, &number, new.1])
            .set(1);
    }

    /// Forgets a deleted handler: every series labelled with it goes, so a
    /// gateway that sees handlers come and go all day exports only the
    /// live ones. Requests of it still running count nowhere.
    pub fn remove_handler(&self, tenant: &str, handler: &str, active: Option<(u64, &str)>) {
        let removed = self
            .handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(tenant.to_owned(), handler.to_owned()));
        let Some(removed) = removed else {
            return;
        };
        removed
            .removed
            .store(true, std::sync::atomic::Ordering::Release);
        let labels = [tenant, handler];
        let _ = self.request_duration.remove_label_values(&labels);
        let _ = self.fuel_consumed.remove_label_values(&labels);
        let _ = self.guest_dropped.remove_label_values(&labels);
        let _ = self.guest_log_dropped.remove_label_values(&labels);
        let _ = self.guest_cpu.remove_label_values(&labels);
        let _ = self.outbound_duration.remove_label_values(&labels);
        for result in OUTBOUND_RESULTS {
            let _ = self
                .outbound_requests
                .remove_label_values(&[tenant, handler, result]);
        }
        // Statuses are not remembered per handler (that would cost the
        // request path); a delete tries them all.
        for status in 100..=599u16 {
            let status = status.to_string();
            let _ = self
                .requests
                .remove_label_values(&[tenant, handler, &status]);
        }
        for kind in TrapKind::ALL {
            let _ = self
                .traps
                .remove_label_values(&[tenant, handler, kind.as_str()]);
        }
        let guest = removed.guest.lock().unwrap_or_else(PoisonError::into_inner);
        for name in guest.keys() {
            let labels = [tenant, handler, name.as_str()];
            let _ = self.guest_counters.remove_label_values(&labels);
            let _ = self.guest_histograms.remove_label_values(&labels);
        }
        if let Some((number, sha256)) = active {
            let number = number.to_string();
            let _ = self
                .handler_versions
                .remove_label_values(&[tenant, handler, &number, sha256]);
        }
    }

    /// Counts a request that found no route.
    pub fn no_route(&self, status: http::StatusCode) {
        self.requests
            .with_label_values(&["", "", status.as_str()])
            .inc();
    }

    /// The metrics of one handler, created on first use and shared by all
    /// its versions. Its log budget starts at the default rate; the
    /// registry sets the tenant's with [`LogLimiter::set_rate`].
    pub fn handler(self: &Arc<Self>, tenant: &str, handler: &str) -> Arc<HandlerMetrics> {
        let mut handlers = self.handlers.lock().unwrap_or_else(PoisonError::into_inner);
        handlers
            .entry((tenant.to_owned(), handler.to_owned()))
            .or_insert_with(|| {
                let labels = [tenant, handler];
                Arc::new(HandlerMetrics {
                    tenant: tenant.to_owned(),
                    handler: handler.to_owned(),
                    duration: self.request_duration.with_label_values(&labels),
                    fuel: self.fuel_consumed.with_label_values(&labels),
                    dropped: self.guest_dropped.with_label_values(&labels),
                    cpu: self.guest_cpu.with_label_values(&labels),
                    log: LogLimiter::new(
                        tenant,
                        handler,
                        Limits::default().log_lines_per_second,
                        self.guest_log_dropped.with_label_values(&labels),
                        Instant::now(),
                    ),
                    ok: OnceLock::new(),
                    removed: std::sync::atomic::AtomicBool::new(false),
                    guest: Mutex::new(HashMap::new()),
                    metrics: Arc::clone(self),
                })
            })
            .clone()
    }
}

/// The `result` values of `wasmgate_outbound_requests_total`.
pub const OUTBOUND_RESULTS: [&str; 8] = [
    "1xx", "2xx", "3xx", "4xx", "5xx", "denied", "timeout", "error",
];

/// A guest metric name's label children, resolved on first use.
enum GuestMetric {
    Counter(IntCounter),
    Histogram(Histogram),
}

/// The metrics of one (tenant, handler).
pub struct HandlerMetrics {
    /// The tenant label.
    pub tenant: String,
    /// The handler label.
    pub handler: String,
    duration: Histogram,
    fuel: Histogram,
    dropped: IntCounter,
    /// `wasmgate_guest_cpu_seconds_total` of this handler.
    cpu: prometheus::Counter,
    /// The handler's log-line budget: here, not in a handler version, so
    /// that all versions and requests of the handler share one.
    pub log: LogLimiter,
    /// The `status="200"` request counter, resolved on the first 200 (not
    /// before, so no series appears until it counts something): the common
    /// case then skips the label lookup.
    ok: OnceLock<IntCounter>,
    /// Set when the handler is deleted: its series are gone, and requests
    /// still running must not bring them back.
    removed: std::sync::atomic::AtomicBool,
    /// Guest metric names seen so far, capped at [`MAX_GUEST_METRIC_NAMES`].
    guest: Mutex<HashMap<String, GuestMetric>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for HandlerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerMetrics")
            .field("tenant", &self.tenant)
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

impl HandlerMetrics {
    /// Counts `seconds` of worker time spent running one of its guests.
    pub fn guest_cpu(&self, seconds: f64) {
        if !self.removed.load(std::sync::atomic::Ordering::Acquire) {
            self.cpu.inc_by(seconds);
        }
    }

    /// Counts a finished request: status, duration and, when the guest ran,
    /// fuel consumed and the trap kind.
    pub fn request(
        &self,
        status: http::StatusCode,
        seconds: f64,
        fuel: Option<u64>,
        trap: Option<TrapKind>,
    ) {
        if self.removed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let by_status = || {
            self.metrics
                .requests
                .with_label_values(&[&self.tenant, &self.handler, status.as_str()])
        };
        if status == http::StatusCode::OK {
            self.ok.get_or_init(by_status).inc();
        } else {
            by_status().inc();
        }
        self.duration.observe(seconds);
        if let Some(fuel) = fuel {
            self.fuel.observe(fuel as f64);
        }
        if let Some(kind) = trap {
            self.metrics
                .traps
                .with_label_values(&[&self.tenant, &self.handler, kind.as_str()])
                .inc();
        }
    }

    /// Counts a guest's call to an upstream by `result` (one of
    /// [`OUTBOUND_RESULTS`]) and, if it got as far as the network, how long
    /// the answer took.
    pub fn outbound(&self, result: &str, seconds: Option<f64>) {
        if self.removed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        self.metrics
            .outbound_requests
            .with_label_values(&[&self.tenant, &self.handler, result])
            .inc();
        if let Some(seconds) = seconds {
            self.metrics
                .outbound_duration
                .with_label_values(&[&self.tenant, &self.handler])
                .observe(seconds);
        }
    }

    /// A guest's `counter-add`. An increment that would take the counter
    /// past `u64::MAX` (where it would wrap to a small number) is dropped.
    pub fn guest_counter_add(&self, name: &str, value: u64) {
        self.with_guest_metric(name, true, |m| match m {
            GuestMetric::Counter(c) => {
                // Only this handler's guests update this series, under the
                // `guest` lock, so nothing changes it between get and add.
                let fits = c.get().checked_add(value).is_some();
                if fits {
                    c.inc_by(value);
                }
                fits
            }
            GuestMetric::Histogram(_) => false,
        });
    }

    /// A guest's `histogram-observe`. Values that are not finite or larger
    /// in magnitude than [`MAX_GUEST_HISTOGRAM_VALUE`] are dropped, so the
    /// `_sum` stays finite.
    pub fn guest_histogram_observe(&self, name: &str, value: f64) {
        if !value.is_finite() || value.abs() > MAX_GUEST_HISTOGRAM_VALUE {
            self.dropped.inc();
            return;
        }
        self.with_guest_metric(name, false, |m| match m {
            GuestMetric::Histogram(h) => {
                h.observe(value);
                true
            }
            GuestMetric::Counter(_) => false,
        });
    }

    /// Finds or creates the metric for `name`, then applies `update`; counts
    /// a drop when the name is invalid, over the cap, or already used as
    /// the other kind.
    fn with_guest_metric(
        &self,
        name: &str,
        counter: bool,
        update: impl FnOnce(&GuestMetric) -> bool,
    ) {
        let mut guest = self.guest.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the lock `remove_handler` reads the names under, so
        // no name is added after they were removed.
        if self.removed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let metric = match guest.get(name) {
            Some(m) => Some(m),
            None if valid_guest_metric_name(name) && guest.len() < MAX_GUEST_METRIC_NAMES => {
                let labels = [self.tenant.as_str(), self.handler.as_str(), name];
                let m = if counter {
                    GuestMetric::Counter(self.metrics.guest_counters.with_label_values(&labels))
                } else {
                    GuestMetric::Histogram(self.metrics.guest_histograms.with_label_values(&labels))
                };
                Some(&*guest.entry(name.to_owned()).or_insert(m))
            }
            None => None,
        };
        if !metric.is_some_and(update) {
            self.dropped.inc();
        }
    }
}

/// `[a-z_][a-z0-9_]*`, at most [`MAX_GUEST_METRIC_NAME_LEN`] bytes.
pub fn valid_guest_metric_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_GUEST_METRIC_NAME_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_metric_names_are_validated() {
        for good in ["a", "_x", "requests_total", "a1_b2"] {
            assert!(valid_guest_metric_name(good), "{good}");
        }
        let long = "a".repeat(MAX_GUEST_METRIC_NAME_LEN + 1);
        for bad in ["", "1a", "Bad", "a-b", "a.b", "é", long.as_str()] {
            assert!(!valid_guest_metric_name(bad), "{bad}");
        }
    }

    #[test]
    fn guest_metric_names_are_capped_per_handler_across_versions() {
        let metrics = Arc::new(Metrics::new());
        let h = metrics.handler("t", "h");
        for i in 0..1000 {
            h.guest_counter_add(&format!("flood_{i}"), 1);
        }
        h.guest_counter_add("Bad-Name", 1);
        // A new version of the same handler shares the cap.
        let again = metrics.handler("t", "h");
        again.guest_counter_add("one_more", 1);
        // Using a counter's name as a histogram is a drop, not a panic.
        again.guest_histogram_observe("flood_0", 1.0);
        again.guest_histogram_observe("nan_value", f64::NAN);

        let text = metrics.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("wasmgate_guest_events_total{"))
            .count();
        assert_eq!(series, MAX_GUEST_METRIC_NAMES);
        let dropped = 1000 - MAX_GUEST_METRIC_NAMES + 4;
        assert!(
            text.contains(&format!(
                "wasmgate_guest_metrics_dropped_total{{handler=\"h\",tenant=\"t\"}} {dropped}"
            )),
            "{text}"
        );
    }

    #[test]
    fn a_guest_counter_never_wraps() {
        let metrics = Arc::new(Metrics::new());
        let h = metrics.handler("t", "h");
        h.guest_counter_add("big", u64::MAX - 1);
        h.guest_counter_add("big", 1);
        // Each of these would wrap past u64::MAX: dropped instead.
        h.guest_counter_add("big", 1);
        h.guest_counter_add("big", u64::MAX);
        h.guest_counter_add("big", 0);
        let text = metrics.render();
        let sample = r#"wasmgate_guest_events_total{handler="h",name="big",tenant="t"}"#;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse::<f64>().ok());
        assert_eq!(value, Some(u64::MAX as f64), "{text}");
        assert!(
            text.contains(r#"wasmgate_guest_metrics_dropped_total{handler="h",tenant="t"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn guest_histogram_values_beyond_the_cap_are_dropped_so_the_sum_stays_finite() {
        let metrics = Arc::new(Metrics::new());
        let h = metrics.handler("t", "h");
        for value in [
            f64::MAX,
            -f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            MAX_GUEST_HISTOGRAM_VALUE * 1.000_001,
        ] {
            h.guest_histogram_observe("v", value);
        }
        for _ in 0..1000 {
            h.guest_histogram_observe("v", MAX_GUEST_HISTOGRAM_VALUE);
            h.guest_histogram_observe("v", -MAX_GUEST_HISTOGRAM_VALUE);
            h.guest_histogram_observe("v", MAX_GUEST_HISTOGRAM_VALUE);
        }
        let text = metrics.render();
        let sum = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"wasmgate_guest_values_sum{handler="h",name="v",tenant="t"} "#)?
                    .parse::<f64>()
                    .ok()
            })
            .expect("a sum");
        assert_eq!(sum, 1000.0 * MAX_GUEST_HISTOGRAM_VALUE);
        assert!(
            text.contains(r#"wasmgate_guest_values_count{handler="h",name="v",tenant="t"} 3000"#),
            "{text}"
        );
        assert!(
            text.contains(r#"wasmgate_guest_metrics_dropped_total{handler="h",tenant="t"} 6"#),
            "{text}"
        );
    }

    #[test]
    fn requests_and_traps_are_labelled() {
        let metrics = Arc::new(Metrics::new());
        let h = metrics.handler("demo", "faults");
        h.request(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            0.01,
            Some(1234),
            Some(TrapKind::Unreachable),
        );
        metrics.no_route(http::StatusCode::NOT_FOUND);
        let text = metrics.render();
        for needle in [
            "wasmgate_requests_total{handler=\"faults\",status=\"500\",tenant=\"demo\"} 1",
            "wasmgate_requests_total{handler=\"\",status=\"404\",tenant=\"\"} 1",
            "wasmgate_guest_traps_total{handler=\"faults\",kind=\"unreachable\",tenant=\"demo\"} 1",
            "wasmgate_fuel_consumed_count{handler=\"faults\",tenant=\"demo\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
