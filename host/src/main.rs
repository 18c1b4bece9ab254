//! The `wasmgate` command: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wasmgate::cli::client::{self, Client};
use wasmgate::cli::serve::LogFormat;
use wasmgate::cli::{self, print, say};

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
    Serve(cli::serve::ServeArgs),
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
        /// Memory this process may use, in bytes: how the server bounds
        /// the compiles it hands to a child (`admin.compile_memory_bytes`).
        #[arg(long, hide = true)]
        max_memory: Option<u64>,
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
    Call(cli::call::CallArgs),
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
        Command::Serve(args) => cli::serve::serve(&args),
        Command::Check { file } => cli::component::check(&file),
        Command::New { path, name, sdk } => cli::new::run(&path, name.as_deref(), sdk.as_deref()),
        Command::Compile {
            files,
            config,
            max_memory,
        } => cli::component::compile(&files, config.as_deref(), max_memory),
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
        Command::Call(args) => return cli::call::main(&args, capture.as_ref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts logging for `command`. For `call --json`, also keeps the
/// guest's log lines at every level for the output, and returns where.
fn init_logging(command: &Command) -> Option<cli::call::Capture> {
    let json = matches!(command, Command::Serve(args) if args.log_format == LogFormat::Json);
    let capture = match command {
        Command::Call(args) if args.json() => Some(cli::call::Capture::default()),
        _ => None,
    };
    cli::init_logging(json, capture.as_ref().map(cli::call::Capture::layer));
    capture
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
