//! `wasmgate serve`: load the config, bind both listeners, say where, and
//! serve until SIGINT or SIGTERM; SIGHUP reloads the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::say;
use crate::control::config::Config;
use crate::control::persist::DataDir;
use crate::control::{ControlPlane, Trigger};
use crate::server::Server;

/// What `serve` was asked for on the command line.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The config file (TOML). Without it: no tenants, every request 404.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override `server.listen` (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Override `admin.listen` (port 0 picks a free port).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Override `server.tls_listen`, the HTTPS listener (port 0 picks a
    /// free port).
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// Apply the config file again whenever it or one of its component
    /// files changes (after `cargo build`, say).
    #[arg(long, requires = "config")]
    pub watch: bool,
    /// Forget what the admin API deployed (the data dir's state and
    /// components; the code cache stays) and serve the config file alone.
    /// The gateway must not be running on that data dir.
    #[arg(long)]
    pub fresh: bool,
    /// How log lines are written to stderr: `text` for people, `json`
    /// (one object per line) for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `serve --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event, `key=value` fields, colours at a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the event's fields (`tenant`, `handler`, ...) beside them.
    Json,
}

/// Runs the gateway until SIGINT or SIGTERM, then drains it.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let path = args.config.as_deref();
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
    if let Some(listen) = args.tls_listen {
        config.server.tls_listen = Some(listen);
    }
    if args.fresh {
        let data_dir = &config.runtime.data_dir;
        DataDir::new(data_dir)
            .forget_deployed()
            .with_context(|| format!("--fresh: {}", data_dir.display()))?;
        tracing::info!(
            data_dir = %data_dir.display(),
            "--fresh: forgot what the admin API deployed; serving the config file alone"
        );
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
        let tls = match config.server.tls_listen {
            Some(addr) => Some(bind(addr, "server.tls_listen", "--tls-listen").await?),
            None => None,
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
        let mut lines = format!(
            "listening on http://{}\nadmin on http://{}",
            public.local_addr()?,
            admin.local_addr()?
        );
        if let Some(tls) = &tls {
            lines.push_str(&format!("\nlistening on https://{}", tls.local_addr()?));
        }
        say(&lines)?;
        #[cfg(unix)]
        tokio::spawn(reload_on_sighup(server.control()));
        server
            .run_with_tls(public, admin, tls, shutdown_signal())
            .await;
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
