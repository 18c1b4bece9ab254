//! What the commands that drive a gateway print for a person: one line per
//! write, tables of handlers and tenants, sizes and times as people write
//! them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::client::{Deployed, TenantWritten};
use crate::admin::views::{
    HandlerList, HandlerView, Reloaded, TenantList, TenantView, WriteResult,
};
use crate::control::shared::ClusterStatus;
use crate::control::state::Source;

/// How many hex digits of a sha256 the lines and the table show: enough
/// to tell versions apart at a glance.
const SHA_PREFIX: usize = 12;

/// One line after a deploy: `deployed demo/greet version 3 (sha256
/// 0123456789ab, 113.2 KiB) at /greet: created`.
pub fn deploy_summary(deployed: &Deployed) -> String {
    let h = &deployed.handler.value;
    let config = if h.config.is_empty() {
        String::new()
    } else {
        format!(", config {}", config_list(&h.config))
    };
    format!(
        "deployed {}/{} version {} (sha256 {}, {}) at {}{config}: {}",
        deployed.tenant,
        h.name,
        h.version,
        sha_prefix(&h.sha256),
        format_size(h.size),
        h.route,
        deployed.outcome.as_str()
    )
}

/// Config strings as `KEY=VALUE,...`, or `-` when there are none.
fn config_list(config: &BTreeMap<String, String>) -> String {
    if config.is_empty() {
        return "-".to_owned();
    }
    let pairs: Vec<String> = config
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    pairs.join(",")
}

/// One line after a rollback.
pub fn rollback_summary(tenant: &str, handler: &HandlerView) -> String {
    format!(
        "rolled back {tenant}/{}: version {} (sha256 {}, {}) serves at {}",
        handler.name,
        handler.version,
        sha_prefix(&handler.sha256),
        format_size(handler.size),
        handler.route
    )
}

/// One line after a patch: `patched demo/greet version 3 at /greet, config
/// greeting=hey: replaced`.
pub fn patch_summary(tenant: &str, handler: &HandlerView) -> String {
    format!(
        "patched {tenant}/{} version {} at {}, config {}: {}",
        handler.name,
        handler.version,
        handler.route,
        config_list(&handler.config),
        handler.result.map_or("replaced", WriteResult::as_str)
    )
}

/// A tenant's handlers as a table: one row per handler, columns aligned;
/// an `OCI` column last when any was deployed from a registry.
pub fn handler_table(list: &HandlerList) -> String {
    if list.handlers.is_empty() {
        return format!("tenant {} has no handlers", list.tenant);
    }
    let rows = list.handlers.iter().map(|h| {
        [
            h.name.clone(),
            h.route.clone(),
            h.version.to_string(),
            sha_prefix(&h.sha256).to_owned(),
            format_size(h.size),
            source_name(h.source).to_owned(),
            format_unix_time(h.loaded_at),
        ]
    });
    let header = [
        "NAME", "ROUTE", "VERSION", "SHA256", "SIZE", "SOURCE", "CREATED",
    ];
    if list.handlers.iter().all(|h| h.oci.is_none()) {
        return table(header, &rows.collect::<Vec<_>>());
    }
    let oci = list.handlers.iter().map(|h| {
        h.oci
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string)
    });
    let rows: Vec<[String; 8]> = rows
        .zip(oci)
        .map(|(row, oci)| {
            let [a, b, c, d, e, f, g] = row;
            [a, b, c, d, e, f, g, oci]
        })
        .collect();
    let [a, b, c, d, e, f, g] = header;
    table([a, b, c, d, e, f, g, "OCI"], &rows)
}

/// One line on the cluster: how many replicas serve the latest revision,
/// and what the answering replica knows of the store.
pub fn cluster_line(cluster: &ClusterStatus) -> String {
    let serving = cluster
        .replicas
        .iter()
        .filter(|r| r.applied_revision >= cluster.revision)
        .count();
    let mut line = format!(
        "cluster: {serving} of {} replicas serve the latest revision ({})",
        cluster.replicas.len(),
        cluster.revision
    );
    if let Some(message) = &cluster.message {
        line.push_str(&format!("; {}: {message}", cluster.node));
    }
    line
}

/// The tenants as a table: one row per tenant, its limit overrides last.
pub fn tenant_table(list: &TenantList) -> String {
    if list.tenants.is_empty() {
        return "no tenants".to_owned();
    }
    let rows: Vec<[String; 6]> = list
        .tenants
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.hosts.join(","),
                source_name(t.source).to_owned(),
                t.handlers.len().to_string(),
                t.cpu_weight.to_string(),
                limits_text(t),
            ]
        })
        .collect();
    table(
        [
            "NAME",
            "HOSTS",
            "SOURCE",
            "HANDLERS",
            "CPU_WEIGHT",
            "LIMITS",
        ],
        &rows,
    )
}

/// One line after a tenant's PUT: `created tenant dev: hosts *, cpu_weight
/// 1, limits fuel=5000`.
pub fn tenant_summary(written: &TenantWritten) -> String {
    let t = &written.tenant.value;
    format!(
        "{} tenant {}: hosts {}, cpu_weight {}, limits {}",
        if written.created {
            "created"
        } else {
            "updated"
        },
        t.name,
        t.hosts.join(","),
        t.cpu_weight,
        limits_text(t)
    )
}

/// A tenant's limit overrides as `key=value` pairs, `-` for none. Read
/// through JSON, so a limit added to the API shows without a change here.
fn limits_text(tenant: &TenantView) -> String {
    let overrides = match serde_json::to_value(tenant.limits) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    let pairs: Vec<String> = overrides
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if pairs.is_empty() {
        "-".to_owned()
    } else {
        pairs.join(",")
    }
}

/// `rows` under `header`, columns aligned, the last one unpadded.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        table.push_str(text.trim_end());
        table.push('\n');
    };
    line(&header);
    for row in rows {
        line(&row.each_ref().map(String::as_str));
    }
    table.pop();
    table
}

/// A size for a person: bytes below 1 KiB, then KiB and MiB with one
/// decimal.
pub fn format_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    match bytes {
        0..KIB => format!("{bytes} B"),
        KIB..0x10_0000 => format!("{:.1} KiB", bytes as f64 / KIB as f64),
        _ => format!("{:.1} MiB", bytes as f64 / (KIB * KIB) as f64),
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_unix_time(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Days to a civil date in the proleptic Gregorian calendar (Howard
    // Hinnant's `civil_from_days`), counted from 0000-03-01 so that leap
    // days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

fn sha_prefix(sha256: &str) -> &str {
    sha256.get(..SHA_PREFIX).unwrap_or(sha256)
}

/// The word the API uses for `source`.
fn source_name(source: Source) -> &'static str {
    match source {
        Source::Config => "config",
        Source::Api => "api",
    }
}

/// What `reload` prints: that it reloaded, and each thing the file says
/// that was not applied because the admin API set it last.
pub fn reload_summary(reloaded: &Reloaded) -> String {
    let mut text = "reloaded the config file".to_owned();
    for note in &reloaded.not_applied {
        text.push_str(&format!("\nnot applied: {note}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cli::client::Reply;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn handler(name: &str, route: &str, version: u64, size: u64, loaded_at: u64) -> HandlerView {
        HandlerView {
            name: name.to_owned(),
            route: route.to_owned(),
            sha256: SHA.to_owned(),
            size,
            version,
            loaded_at,
            source: Source::Api,
            config: BTreeMap::new(),
            oci: None,
            versions: Vec::new(),
            result: None,
        }
    }

    #[test]
    fn the_deploy_line_names_tenant_handler_version_digest_size_route_and_outcome() {
        let deployed = Deployed {
            tenant: "demo".to_owned(),
            outcome: WriteResult::Created,
            handler: Reply {
                value: handler("greet", "/greet", 3, 115_900, 0),
                json: String::new(),
            },
        };
        assert_eq!(
            deploy_summary(&deployed),
            "deployed demo/greet version 3 (sha256 0123456789ab, 113.2 KiB) at /greet: created"
        );
        let deployed = Deployed {
            outcome: WriteResult::Unchanged,
            ..deployed
        };
        assert!(deploy_summary(&deployed).ends_with(": unchanged"));
        assert_eq!(
            rollback_summary("demo", &handler("greet", "/g", 1, 12, 0)),
            "rolled back demo/greet: version 1 (sha256 0123456789ab, 12 B) serves at /g"
        );
    }

    #[test]
    fn the_patch_line_names_version_route_config_and_outcome() {
        let mut patched = handler("greet", "/g", 4, 1, 0);
        assert_eq!(
            patch_summary("demo", &patched),
            "patched demo/greet version 4 at /g, config -: replaced"
        );
        patched.config = BTreeMap::from([
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "x y".to_owned()),
        ]);
        patched.result = Some(WriteResult::Unchanged);
        assert_eq!(
            patch_summary("demo", &patched),
            "patched demo/greet version 4 at /g, config a=x y,b=2: unchanged"
        );
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let list = HandlerList {
            tenant: "demo".to_owned(),
            handlers: vec![
                handler("greet", "/greet", 12, 115_900, 1_700_000_000),
                handler("a", "/a/longer/route", 1, 3 << 20, 0),
            ],
        };
        let expected = "\
NAME   ROUTE            VERSION  SHA256        SIZE       SOURCE  CREATED
greet  /greet           12       0123456789ab  113.2 KiB  api     2023-11-14 22:13:20 UTC
a      /a/longer/route  1        0123456789ab  3.0 MiB    api     1970-01-01 00:00:00 UTC";
        assert_eq!(handler_table(&list), expected);
        let mut list = list;
        let reference = format!("127.0.0.1:5000/w@sha256:{SHA}");
        list.handlers[1].oci = Some(reference.parse().expect("valid"));
        let expected = format!(
            "\
NAME   ROUTE            VERSION  SHA256        SIZE       SOURCE  CREATED                  OCI
greet  /greet           12       0123456789ab  113.2 KiB  api     2023-11-14 22:13:20 UTC  -
a      /a/longer/route  1        0123456789ab  3.0 MiB    api     1970-01-01 00:00:00 UTC  {reference}"
        );
        assert_eq!(handler_table(&list), expected);
        let empty = HandlerList {
            tenant: "demo".to_owned(),
            handlers: Vec::new(),
        };
        assert_eq!(handler_table(&empty), "tenant demo has no handlers");
    }

    /// A tenant as the API sends it (through JSON, as the client reads it).
    fn tenant(
        name: &str,
        hosts: &[&str],
        limits: serde_json::Value,
        handlers: &[&str],
    ) -> TenantView {
        let json = serde_json::json!({
            "name": name, "hosts": hosts, "limits": limits, "cpu_weight": 2,
            "source": "api", "handlers": handlers,
        });
        serde_json::from_value(json).expect("a tenant view")
    }

    #[test]
    fn the_tenant_table_shows_hosts_source_handlers_weight_and_overrides() {
        let list = TenantList {
            tenants: vec![
                tenant("dev", &["*"], serde_json::json!({}), &["a", "b"]),
                tenant(
                    "shop",
                    &["shop.test", "*.shop.test"],
                    serde_json::json!({"timeout_ms": 700, "fuel": 5000}),
                    &[],
                ),
            ],
        };
        let expected = "\
NAME  HOSTS                  SOURCE  HANDLERS  CPU_WEIGHT  LIMITS
dev   *                      api     2         2           -
shop  shop.test,*.shop.test  api     0         2           fuel=5000,timeout_ms=700";
        assert_eq!(tenant_table(&list), expected);
        assert_eq!(
            tenant_table(&TenantList {
                tenants: Vec::new()
            }),
            "no tenants"
        );
        let written = TenantWritten {
            created: false,
            tenant: Reply {
                value: list.tenants[1].clone(),
                json: String::new(),
            },
        };
        assert_eq!(
            tenant_summary(&written),
            "updated tenant shop: hosts shop.test,*.shop.test, cpu_weight 2, limits fuel=5000,timeout_ms=700"
        );
    }

    #[test]
    fn sizes_and_times_read_as_people_write_them() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size((1 << 20) - 1), "1024.0 KiB");
        assert_eq!(format_size(1 << 20), "1.0 MiB");
        assert_eq!(format_unix_time(0), "1970-01-01 00:00:00 UTC");
        // A leap day, the last second of a year, and a century leap year.
        assert_eq!(format_unix_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix_time(1_704_067_199), "2023-12-31 23:59:59 UTC");
        assert_eq!(format_unix_time(1_709_164_800), "2024-02-29 00:00:00 UTC");
        assert_eq!(format_unix_time(4_107_542_400), "2100-03-01 00:00:00 UTC");
    }

    #[test]
    fn a_reload_names_what_it_did_not_apply() {
        let quiet = Reloaded {
            reloaded: true,
            not_applied: vec![],
        };
        assert_eq!(reload_summary(&quiet), "reloaded the config file");
        let kept = Reloaded {
            reloaded: true,
            not_applied: vec!["tenant \"dev\": kept".into()],
        };
        assert_eq!(
            reload_summary(&kept),
            "reloaded the config file\nnot applied: tenant \"dev\": kept"
        );
    }
}
