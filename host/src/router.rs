//! Request routing: Host header to tenant, path prefix to handler.
//!
//! Pure and synchronous: no I/O, no locks, so it is tested by tables. A
//! tenant is chosen by the most specific host pattern (exact, then the
//! longest `*.suffix`, then `*`); within it the longest matching route
//! prefix wins. A prefix matches whole path segments: `/hello` matches
//! `/hello` and `/hello/x`, never `/helloworld`.
//!
//! Paths are matched as the client sent them, percent-encoded, never
//! decoded. So a route may hold only what a client sends unencoded in a
//! path (RFC 3986 `pchar` and `/`) and no `%`: [`check_route`] refuses any
//! other route, which no request could match (or only one of the spellings
//! a client may choose for it), and which would carry control characters
//! into logs.

use std::borrow::Cow;
use std::sync::Arc;

/// A Host header pattern of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Matches this host only (lower case, no port).
    Exact(String),
    /// `*.example.com`: matches any host ending in `.example.com` (stored
    /// with the leading dot), but not `example.com` itself.
    Suffix(String),
    /// `*`: matches every host.
    Any,
}

impl HostPattern {
    /// Parses a pattern from the config.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let lower = pattern.to_ascii_lowercase();
        if lower == "*" {
            return Ok(Self::Any);
        }
        let (kind, name) = match lower.strip_prefix("*.") {
            Some(rest) => ("suffix", rest),
            None => ("exact", lower.as_str()),
        };
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.starts_with('.')
            && !name.ends_with('.');
        if !valid {
            return Err(format!(
                "{pattern:?} is not a host name, \"*.suffix\" or \"*\""
            ));
        }
        Ok(match kind {
            "suffix" => Self::Suffix(format!(".{name}")),
            _ => Self::Exact(name.to_owned()),
        })
    }

    /// How specifically this pattern matches `host`: `None` when it does not.
    /// Exact beats any suffix, a longer suffix beats a shorter one, and
    /// every suffix beats `*`.
    fn specificity(&self, host: &str) -> Option<usize> {
        match self {
            Self::Exact(name) => (name == host).then_some(usize::MAX),
            Self::Suffix(suffix) => host.ends_with(suffix.as_str()).then_some(suffix.len()),
            Self::Any => Some(0),
        }
    }
}

/// Checks a route prefix of the config file or the admin API (every state
/// write goes through it): a path of the characters a request path carries
/// unencoded, which [`Router::route`] can therefore match (see the module
/// doc). The error shows the route escaped to ASCII, so it is safe to log.
pub fn check_route(route: &str) -> Result<(), String> {
    let shown = format!("\"{}\"", route.escape_default());
    if !route.starts_with('/') {
        return Err(format!("{shown} must start with '/'"));
    }
    if let Some(c) = route.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{shown} must be printable ASCII, without spaces or control characters (found '{}')",
            c.escape_default()
        ));
    }
    if route.contains('%') {
        return Err(format!(
            "{shown} may not contain '%': request paths are matched as sent, not decoded, \
             so a percent-encoded route would match only one way of spelling it"
        ));
    }
    if let Some(c) = route.chars().find(|&c| !routable(c)) {
        return Err(format!(
            "{shown} may not contain '{}': a route is letters, digits and - . _ ~ ! $ & ' ( ) * + , ; = : @ /",
            c.escape_default()
        ));
    }
    if route
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(format!(
            "{shown} may not have a '.' or '..' segment: clients remove them before sending"
        ));
    }
    Ok(())
}

/// Whether `c` may appear in a route: what RFC 3986 lets a path carry
/// unencoded (`pchar` and `/`), but `%`.
fn routable(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c)
}

/// Whether `route` covers `path`, on segment boundaries.
fn prefix_matches(route: &str, path: &str) -> bool {
    match path.strip_prefix(route) {
        Some(rest) => rest.is_empty() || route.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// One tenant's routes, with whatever the caller attaches to them.
#[derive(Debug)]
pub struct TenantRoutes<T> {
    /// The tenant's name.
    pub name: String,
    /// Its host patterns.
    pub hosts: Vec<HostPattern>,
    /// Route prefix and payload, longest prefix first.
    routes: Vec<(String, T)>,
}

impl<T> TenantRoutes<T> {
    /// A tenant with no routes yet.
    pub fn new(name: impl Into<String>, hosts: Vec<HostPattern>) -> Self {
        Self {
            name: name.into(),
            hosts,
            routes: Vec::new(),
        }
    }

    /// Adds a route; the longest prefix is tried first.
    pub fn add(&mut self, route: impl Into<String>, payload: T) {
        self.routes.push((route.into(), payload));
        self.routes
            .sort_by_key(|(route, _)| std::cmp::Reverse(route.len()));
    }

    /// The routes, longest prefix first.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &T)> {
        self.routes.iter().map(|(r, p)| (r.as_str(), p))
    }

    fn find(&self, path: &str) -> Option<&T> {
        self.routes
            .iter()
            .find(|(route, _)| prefix_matches(route, path))
            .map(|(_, payload)| payload)
    }
}

/// The whole routing table.
#[derive(Debug)]
pub struct Router<T> {
    tenants: Vec<Arc<TenantRoutes<T>>>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            tenants: Vec::new(),
        }
    }
}

impl<T> Router<T> {
    /// A router over these tenants.
    pub fn new(tenants: Vec<TenantRoutes<T>>) -> Self {
        Self {
            tenants: tenants.into_iter().map(Arc::new).collect(),
        }
    }

    /// The tenants, in config order.
    pub fn tenants(&self) -> &[Arc<TenantRoutes<T>>] {
        &self.tenants
    }

    /// Finds the tenant and payload for a request. `host` may carry a port
    /// and any case; `path` is the URI path without the query.
    pub fn route(&self, host: &str, path: &str) -> Option<(&Arc<TenantRoutes<T>>, &T)> {
        let tenant = self.tenant(host, true)?;
        tenant.find(path).map(|payload| (tenant, payload))
    }

    /// The tenant whose host patterns match `host` (any port and case)
    /// most specifically; `*` counts only if `any`. A TLS server name
    /// picks its certificate this way, without `*`: a tenant claims the
    /// names it lists, not every name.
    pub fn tenant(&self, host: &str, any: bool) -> Option<&Arc<TenantRoutes<T>>> {
        let host = normalize_host(host);
        self.tenants
            .iter()
            .filter_map(|t| {
                t.hosts
                    .iter()
                    .filter(|p| any || **p != HostPattern::Any)
                    .filter_map(|p| p.specificity(&host))
                    .max()
                    .map(|s| (s, t))
            })
            // max_by_key keeps the last maximum; reverse so the first tenant
            // in config order wins a tie.
            .rev()
            .max_by_key(|(s, _)| *s)
            .map(|(_, t)| t)
    }
}

/// Lower case, without the port and without a trailing dot. Borrows in the
/// common case (already lower case), since this runs on every request.
fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let host = without_port.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<&'static str> {
        let tenant = |name: &str, hosts: &[&str], routes: &[(&str, &'static str)]| {
            let hosts = hosts
                .iter()
                .map(|h| HostPattern::parse(h).expect("valid pattern"))
                .collect();
            let mut t = TenantRoutes::new(name, hosts);
            for (route, payload) in routes {
                t.add(*route, *payload);
            }
            t
        };
        Router::new(vec![
            tenant(
                "fallback",
                &["*"],
                &[("/", "fallback-root"), ("/hello", "fallback-hello")],
            ),
            tenant("wild", &["*.example.com"], &[("/hello", "wild-hello")]),
            tenant("deep", &["*.api.example.com"], &[("/", "deep-root")]),
            tenant(
                "exact",
                &["shop.example.com"],
                &[
                    ("/a", "exact-a"),
                    ("/a/b", "exact-ab"),
                    ("/dir/", "exact-dir"),
                ],
            ),
        ])
    }

    #[test]
    fn routes_by_host_specificity_and_longest_prefix() {
        let table: &[(&str, &str, Option<&str>)] = &[
            // Any host falls back to the `*` tenant.
            ("localhost:8080", "/hello", Some("fallback-hello")),
            ("localhost", "/other", Some("fallback-root")),
            // Suffix beats `*`; `example.com` itself is not covered by `*.example.com`.
            ("x.example.com", "/hello", Some("wild-hello")),
            ("example.com", "/hello", Some("fallback-hello")),
            // A chosen tenant without a matching route is a miss, not a fallback.
            ("x.example.com", "/nothing", None),
            // The longer suffix wins.
            ("v1.api.example.com", "/anything", Some("deep-root")),
            // Exact beats every suffix; case and port do not matter.
            ("SHOP.Example.COM:443", "/a", Some("exact-a")),
            ("shop.example.com.", "/a", Some("exact-a")),
            // Longest prefix, on segment boundaries.
            ("shop.example.com", "/a/b/c", Some("exact-ab")),
            ("shop.example.com", "/a/bc", Some("exact-a")),
            ("shop.example.com", "/ab", None),
            ("shop.example.com", "/dir/x", Some("exact-dir")),
            ("shop.example.com", "/dir", None),
            ("localhost", "/hellothere", Some("fallback-root")),
            ("[::1]:8080", "/hello", Some("fallback-hello")),
        ];
        let router = router();
        for (host, path, want) in table {
            let got = router.route(host, path).map(|(_, p)| *p);
            assert_eq!(got, *want, "route({host:?}, {path:?})");
        }
    }

    #[test]
    fn normalizes_hosts_and_borrows_when_it_can() {
        for (host, want) in [
            ("localhost", "localhost"),
            ("localhost:8080", "localhost"),
            ("Shop.Example.COM.:443", "shop.example.com"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("", ""),
        ] {
            assert_eq!(normalize_host(host), want, "{host:?}");
        }
        assert!(matches!(
            normalize_host("a.example.com:80"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize_host("A.example.com"), Cow::Owned(_)));
    }

    #[test]
    fn first_tenant_wins_a_tie() {
        let mut a = TenantRoutes::new("a", vec![HostPattern::Any]);
        a.add("/", "a");
        let mut b = TenantRoutes::new("b", vec![HostPattern::Any]);
        b.add("/", "b");
        let router = Router::new(vec![a, b]);
        assert_eq!(
            router.route("h", "/").map(|(t, _)| t.name.as_str()),
            Some("a")
        );
    }

    #[test]
    fn empty_router_routes_nothing() {
        let router: Router<()> = Router::default();
        assert!(router.route("localhost", "/").is_none());
    }

    #[test]
    fn parses_and_rejects_host_patterns() {
        assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
        assert_eq!(
            HostPattern::parse("*.Example.com"),
            Ok(HostPattern::Suffix(".example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("api.example.com"),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        for bad in ["", "*.", "a.*.com", "exa mple.com", ".example.com", "**"] {
            assert!(
                HostPattern::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn checks_routes() {
        for good in [
            "/",
            "/hello",
            "/a/b/",
            "/v1.2/x_y~z",
            "/a:b@c!$&'()*+,;=",
            "/..a/b.",
        ] {
            assert_eq!(check_route(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "hello",
            "/a?b",
            "/a#b",
            "/a b",
            "/a\tb",
            "/e\u{1b}[31mRED",
            "/a\u{7f}",
            "/caf\u{e9}",
            "/caf%C3%A9",
            "/a%20b",
            "/100%",
            "/a<b>",
            "/a\"b",
            "/a{b}",
            "/a|b",
            "/a\\b",
            "/a^b",
            "/a`b",
            "/a[b]",
            "/a/../b",
            "/a/.",
            "/./a",
        ] {
            let error = check_route(bad).expect_err(bad);
            // The message escapes what it quotes: nothing raw reaches a log.
            assert!(
                error.chars().all(|c| c.is_ascii_graphic() || c == ' '),
                "{error}"
            );
        }
    }

    #[test]
    fn every_accepted_route_matches_itself_and_below_as_requested() {
        for route in ["/", "/hello", "/a/", "/a:b@c!$&'()*+,;=~"] {
            check_route(route).expect(route);
            // A request for exactly that path parses and is routed there.
            let uri: http::Uri = route.parse().expect(route);
            let mut tenant = TenantRoutes::new("t", vec![HostPattern::Any]);
            tenant.add(route, ());
            let router = Router::new(vec![tenant]);
            assert!(router.route("h", uri.path()).is_some(), "{route}");
            let below = format!("{}/x", route.trim_end_matches('/'));
            assert!(router.route("h", &below).is_some(), "{below}");
        }
    }
}
