//! `wasmgate call`: one request through a component in the real sandbox,
//! with no config file and no server, for handler authors and their CI.
//!
//! The component is loaded as `serve` loads a handler
//! ([`HandlerVersion::load`]: compiled, linked and instantiated once to
//! prove it can be) on an engine set up as `serve` sets it up, and the
//! request runs on the same [`Executor`]: the same fuel, memory cap,
//! deadline, response validation and error statuses. Nothing is written:
//! the component is compiled in memory, with no data dir and no code cache.
//!
//! Output: the response on stdout (status line, headers, blank line, body),
//! or with `--json` one JSON object (see `report`). The guest's log lines
//! and the gateway's lines about it (a trap) go to stderr as `serve` writes
//! them. Exit status: 0 when the guest answered, whatever status it chose;
//! [`EXIT_GUEST_FAILED`] when the gateway answered for it (a trap, fuel or
//! time ran out, an invalid response, a body over the limit: the response
//! printed carries `x-wasmgate-error`); 1 when the call could not be made
//! (an unreadable or invalid component); 2 for a command-line error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::allowlist::AllowList;
use crate::control::config::Config;
use crate::error::RequestError;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::runtime::{
    Executor, Flow, GUEST_LOG_TARGET, GuestRequest, GuestSlots, HandlerContext, HandlerVersion,
    Outbound, Runtime,
};
use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method};
use tracing_subscriber::Layer;

/// The exit status when the gateway, not the guest, answered: the guest
/// trapped, ran out of fuel or time, or its response was invalid.
pub const EXIT_GUEST_FAILED: u8 = 3;

/// The tenant name the call's log lines and metrics carry.
const TENANT: &str = "call";

/// `wasmgate call`'s arguments.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The component file.
    file: PathBuf,
    /// The request method. Default: GET, or POST with --data.
    #[arg(long, short = 'X', value_parser = parse_method)]
    method: Option<Method>,
    /// The path and query the guest sees.
    #[arg(long, default_value = "/", value_parser = parse_path)]
    path: PathAndQuery,
    /// A request header (repeatable). No headers are added: the guest sees
    /// exactly these.
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The request body: `@FILE` reads a file, `-` reads stdin, anything
    /// else is the body itself.
    #[arg(long, short = 'd', value_name = "@FILE|-|TEXT")]
    data: Option<String>,
    /// A value the guest reads through the `config` import (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
    config: Vec<(String, String)>,
    /// The fuel budget. Default: `limits.fuel` of a config file's defaults.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    fuel: Option<u64>,
    /// The memory cap. Default: `limits.memory_bytes` of a config file's
    /// defaults.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(65536..=4 << 30))]
    memory: Option<u64>,
    /// The deadline. Default: `limits.timeout_ms` of a config file's
    /// defaults.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// An upstream the guest may call, `scheme://host[:port]` as in a
    /// tenant's `allowed_outbound_hosts` (repeatable). Default: none.
    #[arg(long = "allow-outbound", value_name = "URL")]
    allowed_outbound_hosts: Vec<String>,
    /// Print one JSON object instead of the response: status, headers,
    /// body, fuel_consumed, duration_ms, logs, metrics, error.
    #[arg(long)]
    json: bool,
}

impl CallArgs {
    /// Whether the output is JSON, so the caller captures the guest's log
    /// lines for it ([`Capture`]).
    pub fn json(&self) -> bool {
        self.json
    }
}

fn parse_method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.as_bytes()).map_err(|_| format!("{text:?} is not an HTTP method"))
}

fn parse_path(text: &str) -> Result<PathAndQuery, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "{text:?} must start with '/' (e.g. /hello?name=you)"
        ));
    }
    text.parse()
        .map_err(|e| format!("{text:?} is not a valid path and query: {e}"))
}

fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let Some((name, value)) = text.split_once(':') else {
        return Err(format!(
            "{text:?} has no ':'; write NAME:VALUE (e.g. content-type:text/plain)"
        ));
    };
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a valid header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("{:?} is not a valid header value", value.trim()))?;
    Ok((name, value))
}

/// A `--config KEY=VALUE` (here and in `wasmgate patch`).
pub(super) fn parse_config(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE (e.g. greeting=hi)")),
    }
}

/// One guest log line, as `--json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct LogLine {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    level: String,
    /// The message, escaped as the gateway logs it.
    message: String,
}

/// Keeps the guest's log lines of this process for `--json`, whatever the
/// level filter of stderr lets through.
#[derive(Debug, Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<LogLine>>>);

impl Capture {
    /// The layer that records the guest's log lines (and nothing else) at
    /// every level.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let guest_only = tracing_subscriber::filter::Targets::new()
            .with_target(GUEST_LOG_TARGET, tracing::Level::TRACE);
        self.clone().with_filter(guest_only)
    }

    fn lines(&self) -> Vec<LogLine> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        /// Takes the `message` field of an event.
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let line = LogLine {
            level: event.metadata().level().as_str().to_ascii_lowercase(),
            message: message.0,
        };
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }
}

/// What one call produced.
struct Called {
    /// The response a client of `serve` would get (without the framing
    /// headers hyper adds).
    response: http::Response<Bytes>,
    /// The `x-wasmgate-error` code when the gateway answered for the guest.
    error: Option<&'static str>,
    /// Fuel the guest consumed, when it ran and fuel is metered.
    fuel_consumed: Option<u64>,
    /// From submitting the request to the worker's answer: instantiation
    /// and the guest's run.
    duration: Duration,
    /// The metrics the guest recorded are in here.
    metrics: Arc<Metrics>,
}

/// Runs `wasmgate call` and prints its output; `capture` holds the guest's
/// log lines when `--json` is given.
pub fn main(args: &CallArgs, capture: Option<&Capture>) -> ExitCode {
    let outcome = call(args).and_then(|called| {
        let failed = called.error.is_some();
        let out = if args.json {
            let logs = capture.map(Capture::lines).unwrap_or_default();
            let mut json = serde_json::to_vec(&report(&called, &logs))?;
            json.push(b'\n');
            json
        } else {
            render(&called.response)
        };
        write_stdout(&out)?;
        Ok(failed)
    });
    match outcome {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(EXIT_GUEST_FAILED),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn call(args: &CallArgs) -> anyhow::Result<Called> {
    let file = args.file.display();
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {file}"))?;
    let body = read_body(args.data.as_deref())?;
    let defaults = Config::default();
    let limits = Limits {
        fuel: args.fuel.unwrap_or(defaults.limits.fuel),
        memory_bytes: args.memory.unwrap_or(defaults.limits.memory_bytes),
        timeout_ms: args.timeout_ms.unwrap_or(defaults.limits.timeout_ms),
        ..defaults.limits
    };
    // Sized as `control::runtime_for` sizes serve's engine for a tenant
    // with these limits: one guest, one slot for loading, memories up to
    // the larger of the default and the tenant's limit.
    let runtime = Runtime::new(
        2,
        limits.memory_bytes.max(defaults.limits.memory_bytes),
        defaults.runtime.consume_fuel,
    )?;
    let metrics = Arc::new(Metrics::new());
    let handler = metrics.handler(TENANT, &handler_name(&args.file));
    handler.log.set_rate(limits.log_lines_per_second);
    let context = Arc::new(HandlerContext {
        config: args.config.iter().cloned().collect(),
        metrics: handler,
    });
    let version = HandlerVersion::load(&runtime, &bytes, limits, context)
        .with_context(|| file.to_string())?;

    let method = args.method.clone().unwrap_or(if body.is_empty() {
        Method::GET
    } else {
        Method::POST
    });
    let mut request = http::Request::builder()
        .method(method)
        .uri(args.path.clone())
        .body(())
        .context("building the request")?;
    for (name, value) in &args.headers {
        request.headers_mut().append(name, value.clone());
    }
    let (head, ()) = request.into_parts();

    let slots = GuestSlots {
        running: 1,
        waiting: 0,
    };
    let executor = Executor::start(&runtime, 1, slots, 1, Arc::clone(&metrics))?;
    let started = Instant::now();
    let (result, fuel_consumed) = if body.len() > defaults.server.max_body_bytes {
        let limit = defaults.server.max_body_bytes;
        (Err(RequestError::BodyTooLarge { limit }), None)
    } else {
        let deadline = started + Duration::from_millis(limits.timeout_ms);
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .context("taking the only concurrency slot")?;
        let flow = Flow {
            tenant: 0,
            handler: 0,
        };
        let allowed = AllowList::parse(&args.allowed_outbound_hosts)
            .map_err(|e| anyhow::anyhow!("--allow-outbound: {e}"))?;
        let outbound = Outbound::new(
            allowed,
            limits.max_outbound_requests,
            limits.max_outbound_connections,
        );
        let request = GuestRequest::new(head, body).with_outbound(Arc::new(outbound));
        let waiter = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .context("starting the async runtime")?;
        let call = executor.call(flow, 1, Arc::new(version), request, deadline, permit);
        let outcome = waiter.block_on(call);
        (outcome.result, outcome.fuel_consumed)
    };
    let duration = started.elapsed();
    let (response, error) = match result {
        Ok(response) => (response, None),
        Err(e) => (e.to_response(), Some(e.status_and_code().1)),
    };
    Ok(Called {
        response,
        error,
        fuel_consumed,
        duration,
        metrics,
    })
}

/// The body `--data` names.
fn read_body(data: Option<&str>) -> anyhow::Result<Bytes> {
    let bytes = match data {
        None => Vec::new(),
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .context("--data -: reading stdin")?;
            bytes
        }
        Some(data) => match data.strip_prefix('@') {
            Some(path) => std::fs::read(path).with_context(|| format!("--data: reading {path}"))?,
            None => data.as_bytes().to_vec(),
        },
    };
    Ok(Bytes::from(bytes))
}

/// The handler's name in log lines and metrics: the file's stem, if it is
/// a valid name.
fn handler_name(file: &Path) -> String {
    file.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .filter(|stem| crate::limits::check_name(stem).is_ok())
        .unwrap_or_else(|| "handler".to_owned())
}

/// The response as text: status line, one `name: value` line per header,
/// a blank line, then the body as it is.
fn render(response: &http::Response<Bytes>) -> Vec<u8> {
    let status = response.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in response.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(response.body());
    out
}

/// The `--json` object:
///
/// - `status`: the status code;
/// - `headers`: `[name, value]` pairs in order (a repeated name appears
///   once per value; a value that is not UTF-8 is shown lossily);
/// - `body` when the body is UTF-8, otherwise `body_base64` (standard
///   alphabet, padded): exactly one of them is present;
/// - `fuel_consumed`: a number, or `null` when the guest did not run;
/// - `duration_ms`: instantiation and run, in milliseconds (fractional);
/// - `logs`: the guest's `log` calls, `{level, message}`, at every level;
/// - `metrics`: `counters` (name to total) and `histograms` (name to
///   `{count, sum}`) the guest recorded;
/// - `error`: the `x-wasmgate-error` code when the gateway answered for
///   the guest (`trap`, `fuel_exhausted`, `timeout`, `bad_response`, ...),
///   else `null`.
fn report(called: &Called, logs: &[LogLine]) -> serde_json::Value {
    let response = &called.response;
    let headers: Vec<[String; 2]> = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            [name.as_str().to_owned(), value]
        })
        .collect();
    let mut report = serde_json::json!({
        "status": response.status().as_u16(),
        "headers": headers,
        "fuel_consumed": called.fuel_consumed,
        "duration_ms": called.duration.as_secs_f64() * 1000.0,
        "logs": logs,
        "metrics": guest_metrics(&called.metrics.render()),
        "error": called.error,
    });
    match std::str::from_utf8(response.body()) {
        Ok(text) => report["body"] = text.into(),
        Err(_) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(response.body());
            report["body_base64"] = encoded.into();
        }
    }
    report
}

/// The guest's counters and histograms, read from the metrics' text
/// exposition (`wasmgate_guest_events_total` and `wasmgate_guest_values`,
/// labelled by `name`).
fn guest_metrics(exposition: &str) -> serde_json::Value {
    let mut counters = serde_json::Map::new();
    let mut histograms = serde_json::Map::new();
    for line in exposition.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((family, labels)) = series.split_once('{') else {
            continue;
        };
        // Guest metric names are `[a-z0-9_]`: nothing in them is escaped.
        let Some(name) = labels
            .split(',')
            .find_map(|label| label.strip_prefix("name=\""))
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let histogram = |field: &str, histograms: &mut serde_json::Map<_, _>| {
            let entry = histograms
                .entry(name.to_owned())
                .or_insert_with(|| serde_json::json!({"count": 0, "sum": 0.0}));
            entry[field] = if field == "count" {
                serde_json::json!(value as u64)
            } else {
                serde_json::json!(value)
            };
        };
        match family {
            "wasmgate_guest_events_total" => {
                counters.insert(name.to_owned(), serde_json::json!(value as u64));
            }
            "wasmgate_guest_values_count" => histogram("count", &mut histograms),
            "wasmgate_guest_values_sum" => histogram("sum", &mut histograms),
            _ => {}
        }
    }
    serde_json::json!({"counters": counters, "histograms": histograms})
}

/// Writes `bytes` to stdout: a closed stdout is an error to report, never
/// a panic.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_config_and_paths_parse_or_say_what_is_expected() {
        let (name, value) = parse_header("X-Trace: abc").expect("valid header");
        assert_eq!((name.as_str(), value.as_bytes()), ("x-trace", &b"abc"[..]));
        // The value keeps any further colons.
        let (_, value) = parse_header("x-url:http://a:1").expect("valid header");
        assert_eq!(value, "http://a:1");
        assert!(
            parse_header("no-colon")
                .expect_err("no colon")
                .contains("NAME:VALUE")
        );
        assert!(
            parse_header("bad name:v")
                .expect_err("space")
                .contains("header name")
        );
        assert_eq!(
            parse_config("greeting=a=b").expect("valid"),
            ("greeting".to_owned(), "a=b".to_owned())
        );
        assert!(
            parse_config("=x")
                .expect_err("empty key")
                .contains("KEY=VALUE")
        );
        assert!(parse_config("x").expect_err("no =").contains("KEY=VALUE"));
        assert_eq!(parse_path("/a?b=1").expect("valid").as_str(), "/a?b=1");
        assert!(
            parse_path("a")
                .expect_err("relative")
                .contains("start with '/'")
        );
        assert!(parse_method("G T").is_err());
    }

    #[test]
    fn guest_metrics_are_read_from_the_exposition() {
        let metrics = Arc::new(Metrics::new());
        let handler = metrics.handler(TENANT, "h");
        handler.guest_counter_add("hits", 2);
        handler.guest_counter_add("hits", 3);
        handler.guest_histogram_observe("size", 1.5);
        handler.guest_histogram_observe("size", 2.0);
        let got = guest_metrics(&metrics.render());
        assert_eq!(got["counters"]["hits"], 5);
        assert_eq!(got["histograms"]["size"]["count"], 2);
        assert_eq!(got["histograms"]["size"]["sum"], 3.5);
    }

    #[test]
    fn the_text_form_is_status_line_headers_blank_line_body() {
        let response = http::Response::builder()
            .status(404)
            .header("x-a", "1")
            .body(Bytes::from_static(b"gone"))
            .expect("valid response");
        assert_eq!(render(&response), b"HTTP/1.1 404 Not Found\nx-a: 1\n\ngone");
    }
}
