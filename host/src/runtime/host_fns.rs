//! The host functions of the `wasmgate:handler` world a guest can call:
//! `log`, `metrics`, `config` and `fuel`, served from the request's store
//! state.
//!
//! A guest's `log` calls share its handler's log budget (see
//! [`crate::guest_log`]) and are escaped to one line each.

use std::time::Instant;

use wasmtime::StoreContextMut;
use wasmtime::component::{HasSelf, Linker};

use super::bindings::wasmgate::handler::{config, log, metrics};
use super::context::HandlerContext;
use super::store::State;
use crate::guest_log::escape;

/// The log target of a guest's `log` lines, by which filters (`RUST_LOG`)
/// and `wasmgate call --json` select them. Set by hand, not taken from
/// this module's path, so that operators' filters stay valid.
pub const GUEST_LOG_TARGET: &str = "wasmgate::runtime::host";

/// Longest log message kept from a guest, in bytes, once escaped.
const MAX_LOG_MESSAGE: usize = 4096;

impl HandlerContext {
    /// A guest's `log` call at `now`: one escaped line if the log level is
    /// enabled and the budget allows. Lines the level filter would discard
    /// cost no budget, so debug logging off is free and never counted.
    fn guest_log(&self, level: log::Level, msg: &str, now: Instant) {
        let (tenant, handler) = (self.metrics.tenant.as_str(), self.metrics.handler.as_str());
        // `tracing`'s macros need the level as a constant.
        macro_rules! write_line {
            ($level:expr) => {
                if tracing::enabled!(target: GUEST_LOG_TARGET, $level) && self.metrics.log.permit(now) {
                    let msg = escape(msg, MAX_LOG_MESSAGE);
                    tracing::event!(target: GUEST_LOG_TARGET, $level, %tenant, %handler, "{msg}");
                }
            };
        }
        match level {
            log::Level::Trace => write_line!(tracing::Level::TRACE),
            log::Level::Debug => write_line!(tracing::Level::DEBUG),
            log::Level::Info => write_line!(tracing::Level::INFO),
            log::Level::Warn => write_line!(tracing::Level::WARN),
            log::Level::Error => write_line!(tracing::Level::ERROR),
        }
    }
}

impl log::Host for State {
    fn log(&mut self, level: log::Level, msg: String) {
        self.handler.guest_log(level, &msg, Instant::now());
    }
}

impl metrics::Host for State {
    fn counter_add(&mut self, name: String, value: u64) {
        self.handler.metrics.guest_counter_add(&name, value);
    }

    fn histogram_observe(&mut self, name: String, value: f64) {
        self.handler.metrics.guest_histogram_observe(&name, value);
    }
}

impl config::Host for State {
    fn get(&mut self, key: String) -> Option<String> {
        self.handler.config.get(&key).cloned()
    }
}

/// Adds the world's own imports (not WASI's) to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    log::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    metrics::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    config::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    // `fuel.remaining` reads the store, which generated `Host` traits
    // cannot reach, so it is defined by hand. Without fuel metering there
    // is no limit to report: u64::MAX.
    linker.instance("wasmgate:handler/fuel@0.1.0")?.func_wrap(
        "remaining",
        |store: StoreContextMut<'_, State>, (): ()| -> wasmtime::Result<(u64,)> {
            Ok((store.get_fuel().unwrap_or(u64::MAX),))
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::guest_log::captured_log;

    fn context(rate: u32) -> (Arc<crate::metrics::Metrics>, Arc<HandlerContext>) {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let handler = metrics.handler("t", "h");
        handler.log.set_rate(rate);
        let context = Arc::new(HandlerContext {
            config: BTreeMap::new(),
            metrics: handler,
        });
        (metrics, context)
    }

    fn log_lines_dropped(metrics: &crate::metrics::Metrics) -> Option<u64> {
        metrics.render().lines().find_map(|l| {
            l.strip_prefix(r#"wasmgate_guest_log_lines_dropped_total{handler="h",tenant="t"} "#)?
                .parse()
                .ok()
        })
    }

    #[test]
    fn guest_lines_and_lines_about_the_handler_share_one_budget() {
        let (metrics, context) = context(2);
        let now = Instant::now();
        let log = captured_log(|| {
            // Below the level filter: no budget spent, nothing counted.
            for _ in 0..10 {
                context.guest_log(log::Level::Debug, "hidden", now);
            }
            context.guest_log(log::Level::Info, "one", now);
            context.guest_log(log::Level::Warn, "two", now);
            // A trap line about the handler finds the budget spent.
            assert!(!context.metrics.log.permit(now));
            context.guest_log(log::Level::Error, "three", now);
            // A second later two lines are earned; the first reports the
            // two dropped before it.
            let later = now + std::time::Duration::from_secs(1);
            context.guest_log(log::Level::Info, "four", later);
            assert!(context.metrics.log.permit(later));
            assert!(!context.metrics.log.permit(later));
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 4, "{log}");
        assert!(
            lines[0].contains(" INFO ") && lines[0].contains("one"),
            "{log}"
        );
        assert!(
            lines[1].contains(" WARN ") && lines[1].contains("two"),
            "{log}"
        );
        assert!(
            lines[2].contains("dropped 2 log lines of t/h in the last 1.0s"),
            "{log}"
        );
        assert!(lines[3].contains("four"), "{log}");
        assert!(!log.contains("hidden") && !log.contains("three"), "{log}");
        assert_eq!(log_lines_dropped(&metrics), Some(3));
    }

    #[test]
    fn a_guest_message_is_one_escaped_line_with_its_labels() {
        let (_metrics, context) = context(100);
        let log = captured_log(|| {
            context.guest_log(
                log::Level::Warn,
                "first\nFORGED level=ERROR\r\x1b[31mred\x1b[0m",
                Instant::now(),
            );
            context.guest_log(log::Level::Info, &"\x1b".repeat(100_000), Instant::now());
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(
            lines[0].contains(r"first\nFORGED level=ERROR\r\u{1b}[31mred\u{1b}[0m"),
            "{log}"
        );
        assert!(lines[0].contains("tenant=t handler=h"), "{log}");
        assert!(!log.contains('\x1b') && !log.contains('\r'), "{log}");
        // 100 000 escapes would be 600 kB; the line keeps 4 KiB of them.
        assert!(lines[1].len() < MAX_LOG_MESSAGE + 200, "{}", lines[1].len());
        assert!(lines[1].contains(r"\u{1b}\u{1b}…"), "{log}");
    }

    #[test]
    fn the_end_of_a_request_reports_drops_once_a_summary_is_due() {
        let (metrics, context) = context(0);
        let log = captured_log(|| {
            let long_ago = Instant::now()
                .checked_sub(std::time::Duration::from_secs(5))
                .expect("the clock is older than 5 s");
            assert!(!context.metrics.log.permit(long_ago));
            assert!(!context.log_permit());
            // A request's store is dropped when it ends.
            drop(State::new(
                Arc::clone(&context),
                crate::runtime::Outbound::deny_all(),
                1 << 16,
                Instant::now(),
            ));
        });
        assert!(
            log.contains("dropped 2 log lines of t/h in the last"),
            "{log}"
        );
        assert_eq!(log.lines().count(), 1, "{log}");
        assert_eq!(log_lines_dropped(&metrics), Some(2));
    }
}
