//! The `wasmgate` command: parses the command line and calls the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wasmgate::cli::client::{self, Client};
use wasmgate::cli::print;
use wasmgate::config::Config;
use wasmgate::runtime::{ChildCompiler, Compiled, ComponentInfo, LoadError, Runtime};
use wasmgate::server::Server;

mod new;
mod oneshot;

/// A multi-tenant HTTP gateway running every request in a fresh WebAssembly sandbox.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the tenants and handlers of a config file.
    Serve {
        /// The config file (TOML). Without it: no tenants, every request 404.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override `server.listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override `admin.listen` (port 0 picks a free port).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Apply the config file again whenever it or one of its component
        /// files changes (after `cargo build`, say).
        #[arg(long, requires = "config")]
        watch: bool,
        /// How log lines are written to stderr: `text` for people, `json`
        /// (one object per line) for log collectors.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Check a component against the wasmgate:handler world and list its
    /// imports and exports. Exits 1 when it does not fit.
    Check {
        /// The component file.
        file: PathBuf,
    },
    /// Create a handler crate in a new folder: `cargo test`, `cargo build
    /// --release --target wasm32-wasip2` and `wasmgate serve --config
    /// wasmgate.toml --watch` work in it right away.
    New {
        /// The folder to create (it may exist if empty).
        path: PathBuf,
        /// The crate's name; default: the folder's name.
        #[arg(long)]
        name: Option<String>,
        /// The wasmgate-sdk folder to depend on; default: the one this
        /// wasmgate was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Compile components into the code cache of a config's data dir, so
    /// `serve` with that config starts without compiling them. Exits 1 if
    /// any of them fails.
    Compile {
        /// The component files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The config `serve` will use (its data dir and engine settings).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Upload a component to a running gateway as a tenant's handler (new,
    /// or a new version of it). The token comes from $WASMGATE_ADMIN_TOKEN.
    Deploy {
        /// The component file.
        file: PathBuf,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The handler's name.
        #[arg(long)]
        name: String,
        /// The path prefix to serve it at: needed for a new handler; without
        /// it an existing handler keeps its route.
        #[arg(long)]
        route: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make an earlier version of a handler serve again. The token comes
    /// from $WASMGATE_ADMIN_TOKEN.
    Rollback {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The handler's name.
        #[arg(long)]
        name: String,
        /// The version to serve; default: the one before the serving one.
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List a tenant's handlers and the versions serving. The token comes
    /// from $WASMGATE_ADMIN_TOKEN.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run one request through a component in the sandbox `serve` uses
    /// (same limits, statuses and errors) and print the response. Exits 0
    /// when the guest answered, 3 when the gateway answered for it (trap,
    /// fuel, timeout, invalid response), 1 when the component cannot run.
    Call(oneshot::CallArgs),
}

/// `serve --log-format`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One line per event, `key=value` fields, colours at a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the event's fields (`tenant`, `handler`, ...) beside them.
    Json,
}

/// Where the admin API is, and how to print its answers.
#[derive(clap::Args)]
struct AdminArgs {
    /// The gateway's admin listener.
    #[arg(long, value_name = "URL", env = client::URL_ENV, default_value = client::DEFAULT_URL)]
    admin: String,
    /// Print the gateway's JSON answer on stdout (the summary goes to
    /// stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    let capture = init_logging(&command);
    let result = match command {
        Command::Serve {
            config,
            listen,
            admin_listen,
            watch,
            log_format: _,
        } => serve(config.as_deref(), listen, admin_listen, watch),
        Command::Check { file } => check(&file),
        Command::New { path, name, sdk } => new::run(&path, name.as_deref(), sdk.as_deref()),
        Command::Compile { files, config } => compile(&files, config.as_deref()),
        Command::Deploy {
            file,
            tenant,
            name,
            route,
            admin,
        } => call_admin(&admin, async |client| {
            let deployed = client
                .deploy_file(&file, &tenant, &name, route.as_deref())
                .await?;
            Ok((print::deploy_summary(&deployed), deployed.handler.json))
        }),
        Command::Rollback {
            tenant,
            name,
            version,
            admin,
        } => call_admin(&admin, async |client| {
            let handler = client.rollback(&tenant, &name, version).await?;
            let summary = print::rollback_summary(&tenant, &handler.value);
            Ok((summary, handler.json))
        }),
        Command::List { tenant, admin } => call_admin(&admin, async |client| {
            let list = client.list(&tenant).await?;
            Ok((print::handler_table(&list.value), list.json))
        }),
        // Its own exit statuses: a guest that failed is not a usage error.
        Command::Call(args) => return oneshot::main(&args, capture.as_ref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or
/// (`serve --log-format json`) JSON. For `call --json`, also keeps the
/// guest's log lines at every level for the output, and returns where.
fn init_logging(command: &Command) -> Option<oneshot::Capture> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = matches!(
        command,
        Command::Serve {
            log_format: LogFormat::Json,
            ..
        }
    );
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
    let stderr = stderr.with_filter(filter);
    let capture = match command {
        Command::Call(args) if args.json() => Some(oneshot::Capture::default()),
        _ => None,
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(capture.as_ref().map(oneshot::Capture::layer))
        .init();
    capture
}

fn serve(
    path: Option<&Path>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    watch: bool,
) -> anyhow::Result<()> {
    let mut config = match path {
        Some(path) => {
            let config = Config::load(path)?;
            config.check_components(path)?;
            config
        }
        None => {
            tracing::warn!("no --config given: no tenants, every request gets 404");
            Config::default()
        }
    };
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    if let Some(listen) = admin_listen {
        config.admin.listen = listen;
    }
    if let Some(path) = path {
        compile_in_child(path, &config);
    }
    let name = path.map_or_else(|| "<built-in>".to_owned(), |p| p.display().to_string());
    let server = Server::with_config_file(&config, path).with_context(|| name.clone())?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let public = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        let admin = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
        // Watching before the startup lines: whoever waits for them may
        // change a file at once, and that change must count.
        let watching = match path {
            Some(path) if watch => Some(
                wasmgate::watch::spawn(path, server.admin())
                    .with_context(|| format!("--watch {}", path.display()))?,
            ),
            _ => None,
        };
        say(&format!(
            "listening on http://{}\nadmin on http://{}",
            public.local_addr()?,
            admin.local_addr()?
        ))?;
        #[cfg(unix)]
        tokio::spawn(reload_on_sighup(server.admin()));
        server.run(public, admin, shutdown_signal()).await;
        drop(watching);
        anyhow::Ok(())
    })?;
    // Workers may still be finishing abandoned guests; they are bounded by
    // their deadlines, and exiting the process ends them.
    Ok(())
}

/// Applies the config file again on every SIGHUP; a file that does not
/// load is reported and changes nothing.
#[cfg(unix)]
async fn reload_on_sighup(admin: std::sync::Arc<wasmgate::admin::Admin>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::error!("cannot listen for SIGHUP: {e}");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        match admin.reload().await {
            Ok(()) => tracing::info!("SIGHUP: config file applied"),
            Err(e) => tracing::error!("SIGHUP: config file rejected, nothing changed: {e}"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Fills the code cache for the config's handlers and the stored
/// components (an earlier run's uploads) in a child process, so the server
/// starts without compiling (see [`ChildCompiler`]).
fn compile_in_child(path: &Path, config: &Config) {
    let mut components: Vec<PathBuf> = config
        .tenants
        .iter()
        .flat_map(|tenant| &tenant.handlers)
        .map(|handler| handler.component.clone())
        .collect();
    if let Ok(stored) = std::fs::read_dir(config.runtime.data_dir.join("components")) {
        components.extend(
            stored
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|e| e == "wasm")),
        );
    }
    components.sort_unstable();
    components.dedup();
    let files: Vec<&Path> = components.iter().map(PathBuf::as_path).collect();
    if let Some(compiler) = ChildCompiler::for_this_binary(path) {
        compiler.compile(&files);
    }
}

/// Compiles `files` into the config's code cache, on one thread per core,
/// and reports each in order.
fn compile(files: &[PathBuf], config: Option<&Path>) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let runtime = Runtime::from_config(&config)?;
    let cache = runtime.cache.as_ref().context("no code cache")?;
    // Read and hash first: each distinct component is compiled once, by
    // one thread, however many of the files hold it.
    let read: Vec<Result<(String, Vec<u8>), LoadError>> = files
        .iter()
        .map(|file| {
            let bytes = std::fs::read(file).map_err(|error| LoadError::Read {
                path: file.display().to_string(),
                error,
            })?;
            Ok((wasmgate::persist::sha256_hex(&bytes), bytes))
        })
        .collect();
    let mut distinct: Vec<(&str, &[u8])> = Vec::new();
    for (sha256, bytes) in read.iter().flatten() {
        if !distinct.iter().any(|(seen, _)| seen == sha256) {
            distinct.push((sha256, bytes));
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(distinct.len());
    let outcomes: Vec<(&str, Result<PathBuf, String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(sha256, bytes)) = distinct.get(i) else {
                            break done;
                        };
                        let outcome = Compiled::get(&runtime, sha256, || Ok(bytes.to_vec()))
                            .map(|compiled| cache.path(&runtime.engine, &compiled.sha256))
                            .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
                        done.push((sha256, outcome));
                    }
                })
            })
            .collect();
        // A compile thread that panicked leaves its components unreported;
        // their files count as failed below.
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_default())
            .collect()
    });
    let mut compiled = 0;
    for (file, got) in files.iter().zip(&read) {
        let file = file.display();
        let outcome = match got {
            Err(e) => Err(e.to_string()),
            Ok((sha256, _)) => outcomes
                .iter()
                .find(|(done, _)| done == sha256)
                .map_or_else(|| Err("not compiled".to_owned()), |(_, o)| o.clone()),
        };
        match outcome {
            Ok(cached) => {
                say(&format!("{file}: compiled into {}", cached.display()))?;
                compiled += 1;
            }
            Err(e) => eprintln!("error: {file}: {e}"),
        }
    }
    match files.len() - compiled {
        0 => Ok(()),
        failed => anyhow::bail!("{failed} of {} components failed to compile", files.len()),
    }
}

fn check(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let runtime = Runtime::for_checking()?;
    let info =
        ComponentInfo::check(&runtime, &bytes).with_context(|| file.display().to_string())?;
    let mut report = format!(
        "{}: ok, fits wasmgate:handler@0.1.0\nsha256 {}\nimports:",
        file.display(),
        info.sha256
    );
    for import in &info.imports {
        report.push_str(&format!("\n  {import}"));
    }
    report.push_str("\nexports:");
    for export in &info.exports {
        report.push_str(&format!("\n  {export}"));
    }
    say(&report)
}

/// Runs one admin API call on a small runtime of its own and prints its
/// answer: the summary on stdout, or with `--json` the gateway's JSON on
/// stdout and the summary on stderr, so the JSON pipes cleanly.
fn call_admin(
    args: &AdminArgs,
    call: impl AsyncFnOnce(&Client) -> Result<(String, String), client::ClientError>,
) -> anyhow::Result<()> {
    let client = Client::from_env(&args.admin)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (summary, json) = runtime.block_on(call(&client))?;
    if args.json {
        eprintln!("{summary}");
        say(&json)
    } else {
        say(&summary)
    }
}

/// Writes `text` and a newline to stdout: a closed stdout (say, piped into
/// `head`) is an error to report, never a panic as with `println!`.
fn say(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}
