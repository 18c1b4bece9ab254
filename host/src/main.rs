//! The `wasmgate` command: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wasmgate::cli;
use wasmgate::cli::serve::LogFormat;
use wasmgate::control::oci::RegistryBase;

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
    /// Push a component to an OCI registry and print its reference,
    /// oci://REGISTRY/REPOSITORY@sha256:HEX, which `wasmgate deploy` takes.
    /// Credentials come from $WASMGATE_REGISTRY_USERNAME and
    /// $WASMGATE_REGISTRY_PASSWORD (none: anonymous).
    Push {
        /// The component file.
        file: PathBuf,
        /// The registry and repository to push to: http://HOST[:PORT]/REPOSITORY
        /// for a registry on this machine, https://HOST[:PORT]/REPOSITORY for any
        /// other.
        #[arg(long, value_name = "URL")]
        registry: RegistryBase,
    },
    #[command(flatten)]
    Manage(cli::manage::Command),
    /// Run one request through a component in the sandbox `serve` uses
    /// (same limits, statuses and errors) and print the response. Exits 0
    /// when the guest answered, 3 when the gateway answered for it (trap,
    /// fuel, timeout, invalid response), 1 when the component cannot run.
    Call(cli::call::CallArgs),
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
        Command::Push { file, registry } => cli::component::push(&file, &registry),
        Command::Manage(command) => cli::manage::run(command),
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
