//! `wasmgate serve`: load the config, bind both listeners, say where, and
//! serve until SIGINT or SIGTERM; SIGHUP reloads the config file.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::say;
use crate::control::config::Config;
use crate::control::{ControlPlane, Trigger};
use crate::server::Server;

/// What `serve` was asked for on the command line.
#[derive(Debug, Default)]
pub struct ServeArgs<'a> {
    /// `--config`: without it, no tenants and every request 404.
    pub config: Option<&'a Path>,
    /// `--listen`: overrides `server.listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`: overrides `admin.listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--watch`: apply the config file again whenever it or a component
    /// changes.
    pub watch: bool,
}

/// Runs the gateway until SIGINT or SIGTERM, then drains it.
pub fn serve(args: &ServeArgs<'_>) -> anyhow::Result<()> {
    let path = args.config;
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
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(listen) = args.admin_listen {
        config.admin.listen = listen;
    }
    let name = path.map_or_else(|| "<built-in>".to_owned(), |p| p.display().to_string());
    let server = Server::with_config_file(&config, path).with_context(|| name.clone())?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Both are tried before failing, so two ports in use (a second
        // gateway on the defaults) are one error, not two in turn.
        let public = bind(config.server.listen, "server.listen", "--listen").await;
        let admin = bind(config.admin.listen, "admin.listen", "--admin-listen").await;
        let (public, admin) = match (public, admin) {
            (Ok(public), Ok(admin)) => (public, admin),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
            (Err(public), Err(admin)) => anyhow::bail!("{public:#}; {admin:#}"),
        };
        // Watching before the startup lines: whoever waits for them may
        // change a file at once, and that change must count.
        let watching = match path {
            Some(path) if args.watch => Some(
                crate::control::watch::spawn(path, server.control())
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
        tokio::spawn(reload_on_sighup(server.control()));
        server.run(public, admin, shutdown_signal()).await;
        drop(watching);
        anyhow::Ok(())
    })?;
    // Workers may still be finishing abandoned guests; they are bounded by
    // their deadlines, and exiting the process ends them.
    Ok(())
}

/// Binds the listener `key` of the config at `addr`; an address in use
/// says how to pick another (`option` on the command line, or `key`).
async fn bind(
    addr: SocketAddr,
    key: &str,
    option: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    let host = match addr {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(anyhow::anyhow!(
            "binding {key} {addr}: the port is in use (another `wasmgate serve`?): \
             pick a free one with {option} {host}:PORT, or change {key} in the config"
        )),
        Err(e) => Err(e).with_context(|| format!("binding {key} {addr}")),
    }
}

/// Applies the config file again on every SIGHUP; a file that does not
/// load is reported (by the reload) and changes nothing.
#[cfg(unix)]
async fn reload_on_sighup(control: Arc<ControlPlane>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::error!("cannot listen for SIGHUP: {e}");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        let _ = control.reload(Trigger::Sighup).await;
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
