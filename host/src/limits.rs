//! Limits and the rules every tenant setting obeys: the one place that
//! says what a usable limit, name or CPU weight is, shared by the config
//! file, the desired state and the admin API.
//!
//! Pure values and checks: no I/O, nothing above it imported.

use serde::{Deserialize, Serialize};

/// A tenant's `hosts` when none are given: every host.
pub fn default_hosts() -> Vec<String> {
    vec!["*".to_owned()]
}

/// A tenant's `cpu_weight` when none is given.
pub fn default_cpu_weight() -> u32 {
    1
}

/// `[limits]`: what one request may use. Tenants override single keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel (roughly, wasm instructions) per request. Default 1e9.
    pub fuel: u64,
    /// Linear memory per instance, in bytes. Default 64 MiB.
    pub memory_bytes: u64,
    /// Wall-clock time per request, queueing included, in ms. Default 2000.
    pub timeout_ms: u64,
    /// Requests of one tenant in flight at once; more get 503. Default 64.
    pub max_concurrency: usize,
    /// Largest response a guest may return, head and body together, in
    /// bytes; a larger one gets 502 `bad_response`. Default 16 MiB.
    pub max_response_bytes: u64,
    /// Log lines a handler may write per second (its `log` calls and the
    /// gateway's lines about its traps), with bursts of up to as many
    /// again; further lines are dropped, counted and summarised. Default 100.
    pub log_lines_per_second: u32,
    /// Handlers one tenant may have. The admin API refuses a new handler
    /// beyond it (409 `too_many_handlers`), so a tenant's token cannot grow
    /// the gateway's memory and data dir without a bound. Default 100.
    pub max_handlers: usize,
    /// Calls to upstreams one request may make (`wasi:http`); the call
    /// past it is refused with `HttpRequestDenied`. Default 32.
    pub max_outbound_requests: u32,
    /// Connections to upstreams one tenant's guests may have open at once;
    /// a call past it is refused with `ConnectionLimitReached`. Default 64.
    pub max_outbound_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 1_000_000_000,
            memory_bytes: 64 << 20,
            timeout_ms: 2_000,
            max_concurrency: 64,
            max_response_bytes: 16 << 20,
            log_lines_per_second: 100,
            max_handlers: 100,
            max_outbound_requests: 32,
            max_outbound_connections: 64,
        }
    }
}

/// Per-tenant overrides of [`Limits`]; absent keys keep the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Overrides `limits.fuel`.
    pub fuel: Option<u64>,
    /// Overrides `limits.memory_bytes`.
    pub memory_bytes: Option<u64>,
    /// Overrides `limits.timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// Overrides `limits.max_concurrency`.
    pub max_concurrency: Option<usize>,
    /// Overrides `limits.max_response_bytes`.
    pub max_response_bytes: Option<u64>,
    /// Overrides `limits.log_lines_per_second`.
    pub log_lines_per_second: Option<u32>,
    /// Overrides `limits.max_handlers`.
    pub max_handlers: Option<usize>,
    /// Overrides `limits.max_outbound_requests`.
    pub max_outbound_requests: Option<u32>,
    /// Overrides `limits.max_outbound_connections`.
    pub max_outbound_connections: Option<usize>,
}

impl LimitOverrides {
    /// The defaults with these overrides applied.
    pub fn apply(&self, defaults: Limits) -> Limits {
        Limits {
            fuel: self.fuel.unwrap_or(defaults.fuel),
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            max_concurrency: self.max_concurrency.unwrap_or(defaults.max_concurrency),
            max_response_bytes: self
                .max_response_bytes
                .unwrap_or(defaults.max_response_bytes),
            log_lines_per_second: self
                .log_lines_per_second
                .unwrap_or(defaults.log_lines_per_second),
            max_handlers: self.max_handlers.unwrap_or(defaults.max_handlers),
            max_outbound_requests: self
                .max_outbound_requests
                .unwrap_or(defaults.max_outbound_requests),
            max_outbound_connections: self
                .max_outbound_connections
                .unwrap_or(defaults.max_outbound_connections),
        }
    }
}

/// Checks that every limit is usable; `what` prefixes the key in errors.
pub fn check_limits(what: &str, limits: &Limits) -> Result<(), String> {
    if limits.fuel == 0 {
        return Err(format!("{what}.fuel must be at least 1"));
    }
    if limits.memory_bytes < 65536 {
        return Err(format!(
            "{what}.memory_bytes must be at least 65536 (one wasm page)"
        ));
    }
    if limits.memory_bytes > 4 << 30 {
        return Err(format!("{what}.memory_bytes must be at most 4 GiB"));
    }
    if limits.timeout_ms == 0 {
        return Err(format!("{what}.timeout_ms must be at least 1"));
    }
    if limits.max_concurrency == 0 {
        return Err(format!("{what}.max_concurrency must be at least 1"));
    }
    if limits.max_response_bytes < 1024 {
        return Err(format!("{what}.max_response_bytes must be at least 1024"));
    }
    if limits.max_handlers == 0 {
        return Err(format!("{what}.max_handlers must be at least 1"));
    }
    // Bounds on what one tenant's guests can make the gateway hold open.
    if limits.max_outbound_requests > 10_000 {
        return Err(format!(
            "{what}.max_outbound_requests must be at most 10000"
        ));
    }
    if limits.max_outbound_connections > 100_000 {
        return Err(format!(
            "{what}.max_outbound_connections must be at most 100000"
        ));
    }
    Ok(())
}

/// The largest `cpu_weight`: enough to give one tenant almost all the CPU,
/// small enough that no tenant's share rounds to nothing.
pub const MAX_CPU_WEIGHT: u32 = 1000;

/// Checks a tenant's `cpu_weight`.
pub fn check_cpu_weight(weight: u32) -> Result<(), String> {
    if (1..=MAX_CPU_WEIGHT).contains(&weight) {
        Ok(())
    } else {
        Err(format!(
            "cpu_weight must be between 1 and {MAX_CPU_WEIGHT} (is {weight})"
        ))
    }
}

/// Tenant and handler names appear in metric labels and admin URLs.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'"
        ))
    }
}

/// The longest route a handler may have, in bytes: routes are stored with
/// every version and written in log lines.
pub const MAX_ROUTE_BYTES: usize = 1024;

/// The most config a handler version may carry, keys and values together,
/// in bytes. Every version keeps its own copy in the stored state, so this
/// bounds what a tenant's writes can make the state file hold.
pub const MAX_CONFIG_BYTES: usize = 64 << 10;

/// Checks the sizes of a handler's route and config.
pub fn check_handler_sizes(
    route: &str,
    config: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    if route.len() > MAX_ROUTE_BYTES {
        return Err(format!(
            "route is {} bytes, more than {MAX_ROUTE_BYTES}",
            route.len()
        ));
    }
    let size: usize = config.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_CONFIG_BYTES {
        return Err(format!(
            "config is {size} bytes (keys and values), more than {MAX_CONFIG_BYTES}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_configs_are_bounded_in_size() {
        let mut config = std::collections::BTreeMap::new();
        assert_eq!(check_handler_sizes("/a", &config), Ok(()));
        let long = format!("/{}", "a".repeat(MAX_ROUTE_BYTES));
        assert!(check_handler_sizes(&long, &config).is_err());
        config.insert("k".to_owned(), "v".repeat(MAX_CONFIG_BYTES - 1));
        assert_eq!(check_handler_sizes("/a", &config), Ok(()));
        config.insert("k2".to_owned(), String::new());
        let error = check_handler_sizes("/a", &config).expect_err("one byte over");
        assert!(error.contains("more than 65536"), "{error}");
    }
}
