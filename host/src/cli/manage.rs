//! The commands that drive a running gateway through its admin API
//! (`deploy`, `patch`, `delete`, `rollback`, `list`, `tenant`, `reload`;
//! `apply` is [`super::apply`]'s): their arguments, the call each makes
//! ([`super::client`]) and what each prints ([`super::print`]). Everything
//! the admin API does, a command does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;

use super::client::{self, Client, ClientError};
use super::{print, say};
use crate::admin::views::{HandlerPatch, TenantPut};
use crate::control::oci::{OciError, OciReference};
use crate::limits::LimitOverrides;

/// Where the admin API is, and how to print its answers.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The gateway's admin listener.
    #[arg(long, value_name = "URL", env = client::URL_ENV, default_value = client::DEFAULT_URL)]
    admin: String,
    /// Print the gateway's JSON answer on stdout (the summary goes to
    /// stderr).
    #[arg(long)]
    json: bool,
}

/// The commands that call the admin API. The token comes from
/// $WASMGATE_ADMIN_TOKEN for all of them.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Upload a component to a running gateway as a tenant's handler (new,
    /// or a new version of it), or have the gateway pull it from an OCI
    /// registry. The token comes from $WASMGATE_ADMIN_TOKEN.
    Deploy {
        /// The component file, or oci://REGISTRY/REPOSITORY@sha256:HEX (what
        /// `wasmgate push` prints) for the gateway to pull.
        #[arg(value_name = "FILE|oci://REFERENCE", value_parser = parse_component)]
        file: ComponentSource,
        /// The handler.
        #[command(flatten)]
        handler: HandlerId,
        /// The path prefix to serve it at: needed for a new handler; without
        /// it an existing handler keeps its route.
        #[arg(long)]
        route: Option<String>,
        /// A config string the new version gets (repeatable); the handler's
        /// others are kept. The component and its config arrive in one
        /// version.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = super::call::parse_config)]
        set: Vec<(String, String)>,
        /// A config string the new version goes without (repeatable).
        #[arg(long = "unset", value_name = "KEY")]
        unset: Vec<String>,
        /// Where the gateway is.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Give a handler a new route or change its config strings: a new
    /// version with the same component. The token comes from
    /// $WASMGATE_ADMIN_TOKEN.
    Patch(PatchArgs),
    /// Remove a tenant's handler with all its versions. The token comes
    /// from $WASMGATE_ADMIN_TOKEN.
    Delete {
        /// The handler.
        #[command(flatten)]
        handler: HandlerId,
        /// Where the gateway is.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make an earlier version of a handler serve again. The token comes
    /// from $WASMGATE_ADMIN_TOKEN.
    Rollback {
        /// The handler.
        #[command(flatten)]
        handler: HandlerId,
        /// The version to serve; default: the one before the serving one.
        #[arg(long)]
        version: Option<u64>,
        /// Where the gateway is.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List a tenant's handlers and the versions serving; without --tenant,
    /// the tenants. The token comes from $WASMGATE_ADMIN_TOKEN.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Where the gateway is.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Create, change, delete or list tenants. The root token comes from
    /// $WASMGATE_ADMIN_TOKEN.
    Tenant {
        /// What to do.
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Mount a directory of the gateway's host read-only at a tenant's
    /// route, or remove such a mount. The root token comes from
    /// $WASMGATE_ADMIN_TOKEN.
    Static {
        /// What to do.
        #[command(subcommand)]
        command: StaticCommand,
    },
    /// Make a running gateway's tenants, handlers and static mounts what a
    /// config file's `[[tenant]]` tables say, writing only what differs
    /// (a second apply changes nothing); with --prune also delete what the
    /// file does not list. The root token comes from $WASMGATE_ADMIN_TOKEN.
    Apply(super::apply::ApplyArgs),
    /// Apply the gateway's config file again, as SIGHUP does, and say
    /// whether it applied. The token comes from $WASMGATE_ADMIN_TOKEN.
    Reload {
        /// Where the gateway is.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// What `deploy` deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentSource {
    /// A component file, uploaded.
    File(PathBuf),
    /// A component in a registry, which the gateway pulls.
    Oci(OciReference),
}

/// `oci://REFERENCE` is a reference, anything else a file.
fn parse_component(text: &str) -> Result<ComponentSource, OciError> {
    if text.starts_with("oci://") {
        text.parse().map(ComponentSource::Oci)
    } else {
        Ok(ComponentSource::File(PathBuf::from(text)))
    }
}

/// The handler a command is about.
#[derive(Debug, clap::Args)]
pub struct HandlerId {
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// The handler's name.
    #[arg(long)]
    name: String,
}

/// `wasmgate patch`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PatchArgs {
    /// The handler.
    #[command(flatten)]
    handler: HandlerId,
    /// The path prefix to serve it at.
    #[arg(long)]
    route: Option<String>,
    /// A config string to set (repeatable); the others are kept.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = super::call::parse_config)]
    set: Vec<(String, String)>,
    /// A config string to remove (repeatable).
    #[arg(long = "unset", value_name = "KEY")]
    unset: Vec<String>,
    /// Where the gateway is.
    #[command(flatten)]
    admin: AdminArgs,
}

/// `wasmgate static ...`.
#[derive(Debug, clap::Subcommand)]
pub enum StaticCommand {
    /// Serve DIR (an absolute path on the gateway's host) read-only at the
    /// tenant's ROUTE; again with another DIR moves the mount.
    Put {
        /// The directory.
        dir: PathBuf,
        /// The mount.
        #[command(flatten)]
        mount: MountId,
        /// Where the gateway is.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a mount the API added (the config file's stay in the file).
    Delete {
        /// The mount.
        #[command(flatten)]
        mount: MountId,
        /// Where the gateway is.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// A static mount: its tenant and route.
#[derive(Debug, clap::Args)]
pub struct MountId {
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// The path prefix it is served at.
    #[arg(long)]
    route: String,
}

/// `wasmgate tenant ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TenantCommand {
    /// Create a tenant or change its settings. A setting not given keeps
    /// its value (for a new tenant: every host, no limit overrides, cpu
    /// weight 1).
    Put(Box<TenantPutArgs>),
    /// Remove a tenant with all its handlers.
    Delete {
        /// The tenant.
        name: String,
        /// Where the gateway is.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make a tenant's hosts, limits and cpu weight the config file's
    /// again, after the API set them (its handlers stay).
    FollowConfig {
        /// The tenant.
        name: String,
        /// Where the gateway is.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the tenants: hosts, source, handlers, cpu weight, limit
    /// overrides.
    List {
        /// Where the gateway is.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `wasmgate tenant put`'s arguments.
#[derive(Debug, clap::Args)]
pub struct TenantPutArgs {
    /// The tenant.
    name: String,
    /// A host pattern it answers (repeatable); replaces its patterns.
    #[arg(long = "host", value_name = "PATTERN")]
    hosts: Vec<String>,
    /// Its overrides of the config file's `[limits]` as JSON, replacing
    /// the ones it has: `'{"fuel": 5000}'`, `'{}'` for none. The options
    /// below change one key each.
    #[arg(long, value_name = "JSON")]
    limits: Option<String>,
    /// Overrides `limits.fuel`.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Overrides `limits.memory_bytes`.
    #[arg(long, value_name = "BYTES")]
    memory_bytes: Option<u64>,
    /// Overrides `limits.timeout_ms`.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Overrides `limits.max_concurrency`.
    #[arg(long, value_name = "N")]
    max_concurrency: Option<usize>,
    /// Overrides `limits.max_response_bytes`.
    #[arg(long, value_name = "BYTES")]
    max_response_bytes: Option<u64>,
    /// Overrides `limits.log_lines_per_second`.
    #[arg(long, value_name = "N")]
    log_lines_per_second: Option<u32>,
    /// Overrides `limits.max_handlers`.
    #[arg(long, value_name = "N")]
    max_handlers: Option<usize>,
    /// Its share of the guest CPU when tenants compete.
    #[arg(long, value_name = "N")]
    cpu_weight: Option<u32>,
    /// An upstream its guests may call, `scheme://host[:port]` (host may be
    /// `*.suffix`); repeat for more. Replaces the tenant's list.
    #[arg(long = "allow-outbound", value_name = "URL")]
    allowed_outbound_hosts: Vec<String>,
    /// Takes every upstream off the tenant's list.
    #[arg(long, conflicts_with = "allowed_outbound_hosts")]
    deny_outbound: bool,
    /// Overrides `limits.max_outbound_requests`.
    #[arg(long, value_name = "N")]
    max_outbound_requests: Option<u32>,
    /// Overrides `limits.max_outbound_connections`.
    #[arg(long, value_name = "N")]
    max_outbound_connections: Option<usize>,
    /// The environment variable holding a token that may read and write
    /// this tenant's handlers (set on every replica, in cluster mode).
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// Takes the tenant's own token away: only the root token writes it.
    #[arg(long, conflicts_with = "token_env")]
    no_token: bool,
    /// Where the gateway is.
    #[command(flatten)]
    admin: AdminArgs,
}

impl TenantPutArgs {
    /// The settings to send: `current` (a new tenant: the defaults) with
    /// what was given on the command line.
    pub fn settings(&self, current: TenantPut) -> anyhow::Result<TenantPut> {
        let mut limits = match &self.limits {
            Some(json) => serde_json::from_str::<LimitOverrides>(json)
                .with_context(|| format!("--limits {json}: not the limits' JSON"))?,
            None => current.limits,
        };
        limits.fuel = self.fuel.or(limits.fuel);
        limits.memory_bytes = self.memory_bytes.or(limits.memory_bytes);
        limits.timeout_ms = self.timeout_ms.or(limits.timeout_ms);
        limits.max_concurrency = self.max_concurrency.or(limits.max_concurrency);
        limits.max_response_bytes = self.max_response_bytes.or(limits.max_response_bytes);
        limits.log_lines_per_second = self.log_lines_per_second.or(limits.log_lines_per_second);
        limits.max_handlers = self.max_handlers.or(limits.max_handlers);
        limits.max_outbound_requests = self.max_outbound_requests.or(limits.max_outbound_requests);
        limits.max_outbound_connections = self
            .max_outbound_connections
            .or(limits.max_outbound_connections);
        let allowed_outbound_hosts = if self.deny_outbound {
            Vec::new()
        } else if self.allowed_outbound_hosts.is_empty() {
            current.allowed_outbound_hosts
        } else {
            self.allowed_outbound_hosts.clone()
        };
        Ok(TenantPut {
            hosts: if self.hosts.is_empty() {
                current.hosts
            } else {
                self.hosts.clone()
            },
            limits,
            cpu_weight: self.cpu_weight.unwrap_or(current.cpu_weight),
            allowed_outbound_hosts,
            // Absent: the tenant keeps its certificate.
            tls: None,
            token_env: if self.no_token {
                None
            } else {
                self.token_env.clone().or(current.token_env)
            },
        })
    }
}

/// Runs `command` against the gateway it names and prints the answer.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Deploy {
            file,
            handler: HandlerId { tenant, name },
            route,
            set,
            unset,
            admin,
        } => call(&admin, async |client| {
            let route = route.as_deref();
            let config = if set.is_empty() && unset.is_empty() {
                None
            } else {
                let mut config = match client.handler(&tenant, &name).await {
                    Ok(current) => current.value.config,
                    Err(ClientError::Rejected { status: 404, .. }) => BTreeMap::new(),
                    Err(e) => return Err(e.into()),
                };
                for key in &unset {
                    config.remove(key);
                }
                config.extend(set);
                Some(config)
            };
            let config = config.as_ref();
            let deployed = match &file {
                ComponentSource::File(file) => {
                    client
                        .deploy_file(file, &tenant, &name, route, config)
                        .await?
                }
                ComponentSource::Oci(reference) => {
                    client
                        .deploy_oci(reference, &tenant, &name, route, config)
                        .await?
                }
            };
            Ok((print::deploy_summary(&deployed), deployed.handler.json))
        }),
        Command::Patch(args) => patch(&args),
        Command::Delete {
            handler: HandlerId { tenant, name },
            admin,
        } => call(&admin, async |client| {
            client.delete_handler(&tenant, &name).await?;
            let json = serde_json::json!({"deleted": true, "tenant": tenant, "handler": name});
            Ok((format!("deleted {tenant}/{name}"), json.to_string()))
        }),
        Command::Rollback {
            handler: HandlerId { tenant, name },
            version,
            admin,
        } => call(&admin, async |client| {
            let handler = client.rollback(&tenant, &name, version).await?;
            let summary = print::rollback_summary(&tenant, &handler.value);
            Ok((summary, handler.json))
        }),
        Command::List {
            tenant: Some(tenant),
            admin,
        } => call(&admin, async |client| {
            let list = client.list(&tenant).await?;
            let table = print::handler_table(&list.value);
            Ok((with_replicas(client, table).await, list.json))
        }),
        Command::List {
            tenant: None,
            admin,
        } => call(&admin, async |client| {
            let list = client.tenants().await?;
            let table = print::tenant_table(&list.value);
            Ok((with_replicas(client, table).await, list.json))
        }),
        Command::Tenant {
            command: TenantCommand::List { admin },
        } => call(&admin, async |client| {
            let list = client.tenants().await?;
            Ok((print::tenant_table(&list.value), list.json))
        }),
        Command::Tenant {
            command: TenantCommand::Put(args),
        } => put_tenant(&args),
        Command::Tenant {
            command: TenantCommand::Delete { name, admin },
        } => call(&admin, async |client| {
            client.delete_tenant(&name).await?;
            let json = serde_json::json!({"deleted": true, "tenant": name});
            Ok((format!("deleted tenant {name}"), json.to_string()))
        }),
        Command::Tenant {
            command: TenantCommand::FollowConfig { name, admin },
        } => call(&admin, async |client| {
            let tenant = client.follow_config(&name).await?;
            let summary = format!("tenant {name} follows the config file again");
            Ok((summary, tenant.json))
        }),
        Command::Static {
            command:
                StaticCommand::Put {
                    dir,
                    mount: MountId { tenant, route },
                    admin,
                },
        } => call(&admin, async |client| {
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let view = client.put_static(&tenant, &route, &dir).await?;
            let summary = format!("tenant {tenant} serves {} at {route}", dir.display());
            Ok((summary, view.json))
        }),
        Command::Static {
            command:
                StaticCommand::Delete {
                    mount: MountId { tenant, route },
                    admin,
                },
        } => call(&admin, async |client| {
            client.delete_static(&tenant, &route).await?;
            let json = serde_json::json!({"deleted": true, "tenant": tenant, "route": route});
            Ok((
                format!("removed tenant {tenant}'s mount at {route}"),
                json.to_string(),
            ))
        }),
        Command::Apply(args) => super::apply::run(&args),
        Command::Reload { admin } => call(&admin, async |client| {
            let reloaded = client.reload().await?;
            Ok((print::reload_summary(&reloaded.value), reloaded.json))
        }),
    }
}

/// `patch`: the config strings are the handler's current ones (the API's
/// PATCH replaces them all) with those given set or removed.
fn patch(args: &PatchArgs) -> anyhow::Result<()> {
    if args.route.is_none() && args.set.is_empty() && args.unset.is_empty() {
        anyhow::bail!("nothing to change: give --route, --config KEY=VALUE or --unset KEY");
    }
    let HandlerId { tenant, name } = &args.handler;
    call(&args.admin, async |client| {
        let config = if args.set.is_empty() && args.unset.is_empty() {
            None
        } else {
            let mut config = client.handler(tenant, name).await?.value.config;
            for key in &args.unset {
                config.remove(key);
            }
            config.extend(args.set.iter().cloned());
            Some(config)
        };
        let patch = HandlerPatch {
            route: args.route.clone(),
            config,
        };
        let handler = client.patch_handler(tenant, name, &patch).await?;
        Ok((print::patch_summary(tenant, &handler.value), handler.json))
    })
}

/// `tenant put`: the tenant's current settings (the API's PUT replaces
/// them all), changed as the command line says.
fn put_tenant(args: &TenantPutArgs) -> anyhow::Result<()> {
    call(&args.admin, async |client| {
        let tenants = client.tenants().await?;
        let current = tenants
            .value
            .tenants
            .into_iter()
            .find(|t| t.name == args.name)
            .map_or_else(TenantPut::default, |t| TenantPut {
                hosts: t.hosts,
                limits: t.limits,
                cpu_weight: t.cpu_weight,
                allowed_outbound_hosts: t.allowed_outbound_hosts,
                tls: None,
                token_env: t.token_env,
            });
        let settings = args.settings(current)?;
        let written = client.put_tenant(&args.name, &settings).await?;
        Ok((print::tenant_summary(&written), written.tenant.json))
    })
}

/// Runs one admin API call on a small runtime of its own and prints its
/// answer: the summary on stdout, or with `--json` the gateway's JSON on
/// stdout and the summary on stderr, so the JSON pipes cleanly.
fn call(
    args: &AdminArgs,
    call: impl AsyncFnOnce(&Client) -> anyhow::Result<(String, String)>,
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

/// `summary` and, from a replica in cluster mode, a line saying how many
/// replicas serve the latest revision. A root-only answer a tenant token
/// cannot read, or a single node, adds nothing.
async fn with_replicas(client: &Client, summary: String) -> String {
    match client.cluster().await {
        Ok(Some(cluster)) => format!("{summary}\n{}", print::cluster_line(&cluster.value)),
        _ => summary,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    fn put_args(args: &[&str]) -> TenantPutArgs {
        let cli = Cli::try_parse_from(["wasmgate", "tenant", "put"].iter().chain(args))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Tenant {
                command: TenantCommand::Put(args),
            } => *args,
            _ => panic!("not tenant put"),
        }
    }

    fn current() -> TenantPut {
        TenantPut {
            hosts: vec!["shop.example".to_owned()],
            limits: LimitOverrides {
                fuel: Some(7),
                timeout_ms: Some(50),
                ..LimitOverrides::default()
            },
            cpu_weight: 3,
            allowed_outbound_hosts: vec!["https://api.example".to_owned()],
            tls: None,
            token_env: None,
        }
    }

    #[test]
    fn tenant_put_replaces_or_clears_the_upstreams_only_when_asked() {
        let kept = put_args(&["dev"]).settings(current()).expect("valid");
        assert_eq!(kept.allowed_outbound_hosts, ["https://api.example"]);
        let replaced = put_args(&[
            "dev",
            "--allow-outbound",
            "http://127.0.0.1:9000",
            "--allow-outbound",
            "https://*.example.org",
        ])
        .settings(current())
        .expect("valid");
        assert_eq!(
            replaced.allowed_outbound_hosts,
            ["http://127.0.0.1:9000", "https://*.example.org"]
        );
        let cleared = put_args(&["dev", "--deny-outbound"])
            .settings(current())
            .expect("valid");
        assert!(cleared.allowed_outbound_hosts.is_empty());
    }

    #[test]
    fn tenant_put_keeps_what_is_not_given() {
        let settings = put_args(&["dev"]).settings(current()).expect("valid");
        assert_eq!(settings, current());
        let settings = put_args(&["dev", "--fuel", "5000", "--host", "a", "--host", "b"])
            .settings(current())
            .expect("valid");
        assert_eq!(settings.hosts, ["a", "b"]);
        assert_eq!(settings.limits.fuel, Some(5000));
        assert_eq!(settings.limits.timeout_ms, Some(50), "kept");
        assert_eq!(settings.cpu_weight, 3);
        let new = put_args(&["dev", "--cpu-weight", "2"])
            .settings(TenantPut::default())
            .expect("valid");
        assert_eq!(new.hosts, ["*"]);
        assert_eq!(new.limits, LimitOverrides::default());
        assert_eq!(new.cpu_weight, 2);
    }

    #[test]
    fn tenant_put_limits_json_replaces_the_overrides_and_options_change_one() {
        let settings = put_args(&[
            "dev",
            "--limits",
            r#"{"memory_bytes": 1048576}"#,
            "--max-handlers",
            "4",
            "--log-lines-per-second",
            "9",
            "--max-concurrency",
            "2",
            "--max-response-bytes",
            "4096",
        ])
        .settings(current())
        .expect("valid");
        assert_eq!(
            settings.limits,
            LimitOverrides {
                memory_bytes: Some(1 << 20),
                max_handlers: Some(4),
                log_lines_per_second: Some(9),
                max_concurrency: Some(2),
                max_response_bytes: Some(4096),
                ..LimitOverrides::default()
            }
        );
        let cleared = put_args(&["dev", "--limits", "{}"])
            .settings(current())
            .expect("valid");
        assert_eq!(cleared.limits, LimitOverrides::default());
        let error = put_args(&["dev", "--limits", r#"{"fuell": 1}"#])
            .settings(current())
            .expect_err("unknown key");
        assert!(
            format!("{error:#}").contains("unknown field `fuell`"),
            "{error:#}"
        );
    }

    #[test]
    fn deploy_takes_a_file_or_an_oci_reference() {
        let deploy = |component: &str| {
            Cli::try_parse_from([
                "wasmgate", "deploy", component, "--tenant", "t", "--name", "h",
            ])
            .map(|cli| match cli.command {
                Command::Deploy { file, .. } => file,
                _ => panic!("not deploy"),
            })
        };
        assert_eq!(
            deploy("app.wasm").expect("a file"),
            ComponentSource::File("app.wasm".into())
        );
        let reference = format!("127.0.0.1:5000/w@sha256:{}", "a".repeat(64));
        assert_eq!(
            deploy(&format!("oci://{reference}")).expect("a reference"),
            ComponentSource::Oci(reference.parse().expect("valid"))
        );
        let error = deploy("oci://127.0.0.1:5000/w:latest").expect_err("a tag");
        assert!(error.to_string().contains("names no digest"), "{error}");
    }

    #[test]
    fn list_takes_an_optional_tenant() {
        let cli = Cli::try_parse_from(["wasmgate", "list"]).expect("no tenant");
        assert!(matches!(cli.command, Command::List { tenant: None, .. }));
        let cli = Cli::try_parse_from(["wasmgate", "list", "--tenant", "t"]).expect("tenant");
        assert!(matches!(cli.command, Command::List { tenant: Some(t), .. } if t == "t"));
    }
}
