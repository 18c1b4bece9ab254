//! wasmgate: a multi-tenant HTTP gateway that answers every request from a
//! fresh, sandboxed instance of a WebAssembly component.
//!
//! The binary (`main.rs`) only parses the command line; everything else is
//! here so tests can start a real gateway on `127.0.0.1:0`:
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
//! Modules, one per concept: [`config`] (the TOML file), [`router`] (host
//! and path to handler, pure), [`registry`] (handler versions by route),
//! [`runtime`] (engine, host functions, worker pool), [`gateway`] (the
//! public request path), [`admin`] (health and metrics), [`metrics`],
//! [`guest_log`] (guest text in the log: rate limit and escaping),
//! [`error`] (failures to statuses), [`body`] (buffered bodies and their
//! memory budget), [`server`] (listeners, connections, shutdown),
//! [`static_files`] (directories served without a guest),
//! [`watch`] (`serve --watch`: reload when a component file changes), and
//! [`cli`] (the command line's library half: the admin API client of
//! `deploy`, `rollback` and `list`, and what they print).

pub mod admin;
pub mod cli;
pub mod control;
pub mod digest;
pub mod error;
pub mod guest_log;
pub mod limits;
pub mod metrics;
pub mod request;
pub mod router;
pub mod runtime;
pub mod server;
