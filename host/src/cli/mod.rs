//! The command line's library half: what each `wasmgate` command does.
//! `main.rs` only parses the arguments and calls in here; this is the
//! binary's edge, so errors are `anyhow` with context for a person.
//! [`serve`] runs the gateway, [`component`] checks and compiles component
//! files, [`manage`] holds the commands that drive a running gateway
//! (`deploy`, `delete`, `rollback`, `list`, `tenant`, `reload`, and
//! `apply`, which is [`apply`]),
//! [`client`] is their admin API client and [`print`](mod@print) what they
//! print for a person.

pub mod apply;
pub mod call;
pub mod client;
pub mod component;
pub mod lockfile;
pub mod manage;
pub mod new;
pub mod print;
pub mod serve;

use anyhow::Context;

/// Writes `text` and a newline to stdout: a closed stdout (say, piped into
/// `head`) is an error to report, never a panic as with `println!`.
pub fn say(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or
/// (`serve --log-format json`) JSON; `extra` also sees every event (`call
/// --json` keeps the guest's lines with it).
pub fn init_logging<L>(json: bool, extra: Option<L>)
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync,
{
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let stderr = if json {
        // Flat objects: collectors index `tenant` and `handler` without
        // digging into `fields`. Guest text is a JSON string value, so it
        // can neither end the line nor add a field.
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        // Colours only for a person at a terminal: in a file or a log
        // collector the escape codes are noise. NO_COLOR (no-color.org)
        // turns them off there too.
        let colour = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        tracing_subscriber::fmt::layer()
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(extra)
        .with(stderr.with_filter(filter))
        .init();
}
