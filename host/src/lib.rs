//! wasmgate: a multi-tenant HTTP gateway that answers every request from a
//! fresh, sandboxed instance of a WebAssembly component.
//!
//! Everything is here, so tests can start a real gateway on
//! `127.0.0.1:0`:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = wasmgate::control::config::Config::load("wasmgate.toml".as_ref())?;
//! let server = wasmgate::server::Server::new(&config)?;
//! let public = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! server.run(public, admin, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```
//!
//! The modules, from the bottom layer up (a module imports only those
//! below it):
//! - [`limits`] (limits, names and weights, and their rules),
//!   [`allowlist`] (which upstreams a tenant may call), [`digest`]
//!   (sha256 names), [`error`] (request failures to statuses), [`files`]
//!   (crash-safe writes in the data dir),
//!   [`guest_log`] (guest text in the log: rate limit and escaping),
//!   [`router`] (host and path to a target, pure), [`metrics`];
//! - [`runtime`]: where guest code runs (engine, handler versions, host
//!   functions, deadlines, the worker pool);
//! - [`control`]: the control plane (config file, desired state, data dir,
//!   the one writer and the routing table it publishes, bounded compiles,
//!   `--watch`, the one reload entry point);
//! - [`request`]: the public request path (gateway, static files, bodies);
//! - [`admin`]: health, readiness, metrics and the write API;
//! - [`server`]: listeners, connections, shutdown;
//! - [`cli`]: what each `wasmgate` command does (`main.rs` only parses the
//!   command line and calls it).

pub mod admin;
pub mod allowlist;
pub mod cli;
pub mod control;
pub mod digest;
pub mod error;
pub mod files;
pub mod guest_log;
pub mod limits;
pub mod metrics;
pub mod request;
pub mod router;
pub mod runtime;
pub mod server;
