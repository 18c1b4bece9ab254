//! `wasmgate apply FILE [--prune]`: makes a running gateway's tenants,
//! handlers and static mounts what a config file says, through the admin
//! API. In cluster mode any replica's admin API writes for the whole
//! cluster, so one apply serves every replica.
//!
//! It is idempotent: the gateway's state is read first and only what
//! differs is written, so a second apply of the same file makes no call
//! that writes and no new version. Every file the config names is read
//! before the first call, so a mistake in the file changes nothing; a
//! failure on the way stops at once and says what was already changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::client::{self, Client, ClientError};
use super::say;
use crate::admin::views::{HandlerList, HandlerPatch, HandlerView, TenantPut, TenantView};
use crate::control::certs::TlsPem;
use crate::control::config::{Config, TenantConfig};
use crate::control::state::Source;
use crate::digest::sha256_hex;

/// `wasmgate apply`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The config file to apply (the format `serve` reads; only its
    /// `[[tenant]]` tables are used).
    file: PathBuf,
    /// Also delete what the file does not list: the handlers and static
    /// mounts of its tenants that it no longer names, and every other
    /// tenant.
    #[arg(long)]
    prune: bool,
    /// The gateway's admin listener (in a cluster: any replica's).
    #[arg(long, value_name = "URL", env = client::URL_ENV, default_value = client::DEFAULT_URL)]
    admin: String,
}

/// What applying did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It is new.
    Created,
    /// It was there and differed: it is as the file says now (a handler:
    /// a new version).
    Replaced,
    /// It was as the file says; nothing was written.
    Unchanged,
    /// `--prune` removed it.
    Deleted,
}

impl Change {
    /// The word printed for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Replaced => "replaced",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
        }
    }
}

/// One object applied: what it is, as printed (`handler demo/hello
/// version 2 at /hello`), and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The object, for a person.
    pub object: String,
    /// What happened to it.
    pub change: Change,
}

impl Applied {
    /// Its line: `handler demo/hello version 2 at /hello: replaced`.
    pub fn line(&self) -> String {
        format!("{}: {}", self.object, self.change.as_str())
    }
}

/// The last line: `applied wasmgate.toml: 1 created, 2 replaced, 3
/// unchanged, 0 deleted`.
fn summary(file: &Path, done: &[Applied]) -> String {
    let counts = [
        Change::Created,
        Change::Replaced,
        Change::Unchanged,
        Change::Deleted,
    ]
    .map(|change| {
        let n = done.iter().filter(|a| a.change == change).count();
        format!("{n} {}", change.as_str())
    });
    format!("applied {}: {}", file.display(), counts.join(", "))
}

/// What follows the error of a failed apply: what it changed before.
fn stopped(done: &[Applied]) -> String {
    match done
        .iter()
        .filter(|a| a.change != Change::Unchanged)
        .count()
    {
        0 => "stopped there; nothing was changed".to_owned(),
        1 => "stopped there; the 1 change printed above was made, nothing after it".to_owned(),
        n => format!("stopped there; the {n} changes printed above were made, nothing after them"),
    }
}

/// A tenant as the file wants it, every file it names read.
#[derive(Debug)]
struct WantedTenant {
    name: String,
    /// Its settings as the API takes them: `tls` is always present, so a
    /// certificate the file does not name is removed.
    settings: TenantPut,
    handlers: Vec<WantedHandler>,
    /// Static mounts: route and canonical directory.
    statics: Vec<(String, PathBuf)>,
}

/// A handler as the file wants it.
#[derive(Debug)]
struct WantedHandler {
    name: String,
    route: String,
    config: BTreeMap<String, String>,
    component: Vec<u8>,
    sha256: String,
}

/// Runs `wasmgate apply`.
pub fn run(args: &ApplyArgs) -> anyhow::Result<()> {
    let wanted = read(&args.file)?;
    let mut applier = Applier {
        client: Client::from_env(&args.admin)?,
        done: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(applier.apply(wanted, args.prune)) {
        Ok(()) => say(&summary(&args.file, &applier.done)),
        Err(e) => Err(anyhow::anyhow!("{e:#}; {}", stopped(&applier.done))),
    }
}

/// Reads `file` as `serve` does, and every component and certificate it
/// names.
fn read(file: &Path) -> anyhow::Result<Vec<WantedTenant>> {
    let config = Config::load(file)?;
    config.check_components(file)?;
    config
        .tenants
        .iter()
        .map(|tenant| read_tenant(file, tenant))
        .collect()
}

fn read_tenant(file: &Path, tenant: &TenantConfig) -> anyhow::Result<WantedTenant> {
    let t = &tenant.name;
    let read_text = |path: &Path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("{}: tenant {t:?}: tls: {}", file.display(), path.display()))
    };
    let tls = match &tenant.tls {
        Some(files) => Some(TlsPem {
            cert: read_text(&files.cert)?,
            key: read_text(&files.key)?,
        }),
        None => None,
    };
    let handlers = tenant
        .handlers
        .iter()
        .map(|handler| {
            let component = std::fs::read(&handler.component).with_context(|| {
                format!(
                    "{}: tenant {t:?} handler {:?}: component {}",
                    file.display(),
                    handler.name,
                    handler.component.display()
                )
            })?;
            Ok(WantedHandler {
                name: handler.name.clone(),
                route: handler.route.clone(),
                config: handler.config.clone(),
                sha256: sha256_hex(&component),
                component,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let settings = tenant.settings();
    Ok(WantedTenant {
        name: t.clone(),
        settings: TenantPut {
            hosts: settings.hosts,
            limits: settings.limits,
            cpu_weight: settings.cpu_weight,
            allowed_outbound_hosts: settings.allowed_outbound_hosts,
            tls: Some(tls),
            token_env: settings.token_env,
        },
        handlers,
        statics: tenant
            .statics
            .iter()
            .map(|m| (m.route.get_ref().clone(), m.dir.get_ref().clone()))
            .collect(),
    })
}

/// Whether `want` must be sent for a tenant that is `have` now. A
/// certificate the file names always is: the API never shows one's PEM.
fn tenant_differs(want: &TenantPut, have: &TenantView) -> bool {
    matches!(want.tls, Some(Some(_)))
        || want.hosts != have.hosts
        || want.limits != have.limits
        || want.cpu_weight != have.cpu_weight
        || want.allowed_outbound_hosts != have.allowed_outbound_hosts
        || want.token_env != have.token_env
        || have.tls.is_some()
}

/// Whether two views of a tenant have the same settings.
fn same_settings(a: &TenantView, b: &TenantView) -> bool {
    a.hosts == b.hosts
        && a.limits == b.limits
        && a.cpu_weight == b.cpu_weight
        && a.allowed_outbound_hosts == b.allowed_outbound_hosts
        && a.tls == b.tls
        && a.token_env == b.token_env
}

/// The calls that make a handler what the file says.
#[derive(Debug, PartialEq, Eq)]
enum HandlerPlan {
    /// It is as the file says: its version.
    Keep(u64),
    /// Same component: a new route, new config, or both.
    Patch(HandlerPatch),
    /// A new component (or a new handler) at the file's route, in one
    /// version with its config strings when they differ from what it has
    /// (an upload without them keeps the handler's).
    Upload(Option<BTreeMap<String, String>>),
}

fn plan(want: &WantedHandler, have: Option<&HandlerView>) -> HandlerPlan {
    let config =
        |have: &BTreeMap<String, String>| (have != &want.config).then(|| want.config.clone());
    match have {
        None => HandlerPlan::Upload(config(&BTreeMap::new())),
        Some(h) if h.sha256 != want.sha256 => HandlerPlan::Upload(config(&h.config)),
        Some(h) if h.route == want.route && h.config == want.config => HandlerPlan::Keep(h.version),
        Some(h) => HandlerPlan::Patch(HandlerPatch {
            route: (h.route != want.route).then(|| want.route.clone()),
            config: config(&h.config),
        }),
    }
}

/// Applies a file's tenants through one client, printing a line per
/// object as it goes, and keeping them for the summary.
struct Applier {
    client: Client,
    done: Vec<Applied>,
}

impl Applier {
    async fn apply(&mut self, wanted: Vec<WantedTenant>, prune: bool) -> anyhow::Result<()> {
        let before = self.client.tenants().await.context("listing the tenants")?;
        let before = before.value.tenants;
        let listed: Vec<String> = wanted.iter().map(|t| t.name.clone()).collect();
        let mut stale = Vec::new();
        for tenant in wanted {
            let have = before.iter().find(|t| t.name == tenant.name);
            let handlers = match have {
                Some(_) => {
                    let list = self.client.list(&tenant.name).await;
                    let context = || format!("listing tenant {}'s handlers", tenant.name);
                    list.with_context(context)?.value
                }
                None => HandlerList {
                    tenant: tenant.name.clone(),
                    handlers: Vec::new(),
                },
            };
            self.tenant(&tenant, have).await?;
            let statics = have.map(|t| t.statics.as_slice()).unwrap_or_default();
            stale.extend(stale_objects(&tenant, &handlers, statics));
            let name = tenant.name;
            for handler in tenant.handlers {
                let current = handlers.handlers.iter().find(|h| h.name == handler.name);
                self.handler(&name, handler, current).await?;
            }
            for (route, dir) in tenant.statics {
                let current = statics.iter().find(|s| s.route == route);
                self.mount(&name, &route, &dir, current.map(|s| s.dir.as_path()))
                    .await?;
            }
        }
        if !prune {
            return Ok(());
        }
        stale.extend(
            before
                .iter()
                .filter(|t| !listed.contains(&t.name))
                .map(|t| Stale::Tenant(t.name.clone())),
        );
        for object in stale {
            self.delete(object).await?;
        }
        Ok(())
    }

    /// Prints and keeps what happened to `object`.
    fn note(&mut self, object: String, change: Change) -> anyhow::Result<()> {
        let applied = Applied { object, change };
        say(&applied.line())?;
        self.done.push(applied);
        Ok(())
    }

    async fn tenant(
        &mut self,
        want: &WantedTenant,
        have: Option<&TenantView>,
    ) -> anyhow::Result<()> {
        let object = format!("tenant {}", want.name);
        let change = match have {
            Some(have) if !tenant_differs(&want.settings, have) => Change::Unchanged,
            _ => {
                let written = self
                    .client
                    .put_tenant(&want.name, &want.settings)
                    .await
                    .with_context(|| object.clone())?;
                match have {
                    None => Change::Created,
                    Some(have) if same_settings(have, &written.tenant.value) => Change::Unchanged,
                    Some(_) => Change::Replaced,
                }
            }
        };
        self.note(object, change)
    }

    async fn handler(
        &mut self,
        tenant: &str,
        want: WantedHandler,
        have: Option<&HandlerView>,
    ) -> anyhow::Result<()> {
        let name = format!("handler {tenant}/{}", want.name);
        let at = |version: u64| format!("{name} version {version} at {}", want.route);
        let (version, change) = match plan(&want, have) {
            HandlerPlan::Keep(version) => (version, Change::Unchanged),
            HandlerPlan::Patch(patch) => {
                let patched = self
                    .client
                    .patch_handler(tenant, &want.name, &patch)
                    .await
                    .with_context(|| format!("{name} at {}", want.route))?;
                (patched.value.version, Change::Replaced)
            }
            HandlerPlan::Upload(config) => {
                let deployed = self
                    .client
                    .deploy(
                        want.component,
                        tenant,
                        &want.name,
                        Some(&want.route),
                        config.as_ref(),
                    )
                    .await
                    .with_context(|| format!("{name} at {}", want.route))?;
                let version = deployed.handler.value.version;
                let change = if have.is_some() {
                    Change::Replaced
                } else {
                    Change::Created
                };
                (version, change)
            }
        };
        self.note(at(version), change)
    }

    async fn mount(
        &mut self,
        tenant: &str,
        route: &str,
        dir: &Path,
        have: Option<&Path>,
    ) -> anyhow::Result<()> {
        let object = format!("static {tenant} at {route} (dir {})", dir.display());
        let change = match have {
            Some(current) if current == dir => Change::Unchanged,
            _ => {
                self.client
                    .put_static(tenant, route, dir)
                    .await
                    .with_context(|| object.clone())?;
                if have.is_some() {
                    Change::Replaced
                } else {
                    Change::Created
                }
            }
        };
        self.note(object, change)
    }

    async fn delete(&mut self, stale: Stale) -> anyhow::Result<()> {
        let (object, deleted) = match &stale {
            Stale::Handler(t, h) => (
                format!("handler {t}/{h}"),
                self.client.delete_handler(t, h).await,
            ),
            Stale::Static(t, route) => (
                format!("static {t} at {route}"),
                self.client.delete_static(t, route).await,
            ),
            Stale::Tenant(t) => (format!("tenant {t}"), self.client.delete_tenant(t).await),
        };
        match deleted {
            // Gone already (another apply, another replica): as wanted.
            Err(ClientError::Rejected { status: 404, .. }) => Ok(()),
            Err(e) => Err(anyhow::Error::from(e).context(object)),
            Ok(()) => self.note(object, Change::Deleted),
        }
    }
}

/// An object `--prune` deletes.
#[derive(Debug, PartialEq, Eq)]
enum Stale {
    /// Tenant and handler.
    Handler(String, String),
    /// Tenant and route of a mount the admin API added.
    Static(String, String),
    /// A tenant.
    Tenant(String),
}

/// The handlers and API-added static mounts of `want`'s tenant, as it is
/// now, that the file does not name.
fn stale_objects(
    want: &WantedTenant,
    handlers: &HandlerList,
    statics: &[crate::admin::views::StaticView],
) -> Vec<Stale> {
    let handlers = handlers
        .handlers
        .iter()
        .filter(|h| !want.handlers.iter().any(|w| w.name == h.name))
        .map(|h| Stale::Handler(want.name.clone(), h.name.clone()));
    // The gateway's own config file's mounts cannot be deleted through
    // the API.
    let statics = statics
        .iter()
        .filter(|s| s.source == Source::Api)
        .filter(|s| !want.statics.iter().any(|(route, _)| *route == s.route))
        .map(|s| Stale::Static(want.name.clone(), s.route.clone()));
    handlers.chain(statics).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn wanted(route: &str, config: &[(&str, &str)]) -> WantedHandler {
        WantedHandler {
            name: "h".to_owned(),
            route: route.to_owned(),
            config: config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            component: Vec::new(),
            sha256: SHA.to_owned(),
        }
    }

    fn view(sha256: &str, route: &str, config: &[(&str, &str)]) -> HandlerView {
        HandlerView {
            name: "h".to_owned(),
            route: route.to_owned(),
            sha256: sha256.to_owned(),
            size: 1,
            version: 1,
            loaded_at: 0,
            source: Source::Api,
            config: wanted(route, config).config,
            versions: Vec::new(),
            oci: None,
            result: None,
        }
    }

    #[test]
    fn a_handler_is_written_only_where_it_differs() {
        let want = wanted("/a", &[("k", "v")]);
        let config = Some(want.config.clone());
        assert_eq!(plan(&want, None), HandlerPlan::Upload(config.clone()));
        assert_eq!(
            plan(&wanted("/a", &[]), None),
            HandlerPlan::Upload(None),
            "a new handler without config sends none"
        );
        let same = view(SHA, "/a", &[("k", "v")]);
        assert_eq!(plan(&want, Some(&same)), HandlerPlan::Keep(1));
        let other = "f".repeat(64);
        assert_eq!(
            plan(&want, Some(&view(&other, "/a", &[("k", "v")]))),
            HandlerPlan::Upload(None),
            "the config is right already: the upload keeps it"
        );
        assert_eq!(
            plan(&want, Some(&view(&other, "/b", &[]))),
            HandlerPlan::Upload(config.clone())
        );
        assert_eq!(
            plan(&want, Some(&view(SHA, "/b", &[("k", "v")]))),
            HandlerPlan::Patch(HandlerPatch {
                route: Some("/a".to_owned()),
                config: None
            })
        );
        assert_eq!(
            plan(&want, Some(&view(SHA, "/b", &[("k", "w")]))),
            HandlerPlan::Patch(HandlerPatch {
                route: Some("/a".to_owned()),
                config
            }),
            "route and config change in one version"
        );
    }

    #[test]
    fn a_line_per_object_a_summary_and_what_a_failure_left() {
        let applied = |object: &str, change| Applied {
            object: object.to_owned(),
            change,
        };
        let done = [
            applied("tenant demo", Change::Unchanged),
            applied("handler demo/a version 2 at /a", Change::Replaced),
            applied("handler demo/b version 1 at /b", Change::Created),
        ];
        assert_eq!(done[1].line(), "handler demo/a version 2 at /a: replaced");
        assert_eq!(
            summary(Path::new("x.toml"), &done),
            "applied x.toml: 1 created, 1 replaced, 1 unchanged, 0 deleted"
        );
        assert_eq!(
            stopped(&done),
            "stopped there; the 2 changes printed above were made, nothing after them"
        );
        assert_eq!(stopped(&done[..1]), "stopped there; nothing was changed");
    }

    fn tenant_view(tls: bool) -> TenantView {
        let json = serde_json::json!({
            "name": "t", "hosts": ["*"], "limits": {}, "cpu_weight": 1,
            "source": "api", "handlers": [],
        });
        let mut view: TenantView = serde_json::from_value(json).expect("a tenant view");
        view.tls = tls.then(|| crate::admin::views::TlsView {
            names: vec!["t.test".to_owned()],
            not_after: 1,
        });
        view
    }

    #[test]
    fn a_tenant_is_written_only_where_it_differs() {
        let want = TenantPut {
            tls: Some(None),
            ..TenantPut::default()
        };
        assert!(!tenant_differs(&want, &tenant_view(false)));
        assert!(tenant_differs(&want, &tenant_view(true)), "drops the cert");
        let weighted = TenantPut {
            cpu_weight: 2,
            ..want.clone()
        };
        assert!(tenant_differs(&weighted, &tenant_view(false)));
        let with_cert = TenantPut {
            tls: Some(Some(TlsPem {
                cert: String::new(),
                key: String::new(),
            })),
            ..want
        };
        assert!(
            tenant_differs(&with_cert, &tenant_view(true)),
            "a PEM is never shown, so it is always sent"
        );
        assert!(same_settings(&tenant_view(true), &tenant_view(true)));
        assert!(!same_settings(&tenant_view(true), &tenant_view(false)));
    }
}
