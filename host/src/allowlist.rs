//! Which upstreams a tenant's guests may call: the entries of its
//! `allowed_outbound_hosts`, in Spin's syntax (`scheme://host[:port]`, host
//! may be `*.suffix`), parsed and matched; and which addresses a name alone
//! never reaches (loopback, private, link-local, cloud metadata).
//!
//! Pure values and checks: no I/O, nothing above it imported. The
//! connection itself is made in `runtime/outbound.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most entries one tenant's list may hold: the list is matched on every
/// outbound call and stored with the tenant.
pub const MAX_ALLOWED_HOSTS: usize = 256;

/// The schemes a guest may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `http` or `https`, any case.
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("http") {
            Some(Self::Http)
        } else if text.eq_ignore_ascii_case("https") {
            Some(Self::Https)
        } else {
            None
        }
    }

    /// The port a URL of this scheme means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// The host part of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Exactly this name (lower case).
    Name(String),
    /// Any name ending in this suffix, dot included (`.example.org`).
    Suffix(String),
    /// Exactly this address, written as a literal.
    Address(IpAddr),
}

/// One parsed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    scheme: Scheme,
    host: HostPattern,
    port: u16,
}

/// A tenant's parsed `allowed_outbound_hosts`. Empty (the default) allows
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<AllowedHost>,
}

impl AllowList {
    /// Parses every entry; the error names the first that does not parse,
    /// and why.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        if entries.len() > MAX_ALLOWED_HOSTS {
            return Err(format!(
                "allowed_outbound_hosts has {} entries, more than {MAX_ALLOWED_HOSTS}",
                entries.len()
            ));
        }
        let entries = entries
            .iter()
            .map(|entry| {
                parse_entry(entry)
                    .map_err(|why| format!("allowed_outbound_hosts entry {entry:?}: {why}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// Whether the list allows nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a call to `scheme://host:port` is allowed by the names in
    /// the list. `host` is matched as written (any case; an address literal
    /// may be in brackets): a name never matches an address entry, nor an
    /// address a name entry, whatever either resolves to.
    pub fn allows(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        let address = parse_address(host);
        let name = host.to_ascii_lowercase();
        self.entries.iter().any(|entry| {
            entry.scheme == scheme
                && entry.port == port
                && match (&entry.host, address) {
                    (HostPattern::Address(allowed), Some(address)) => *allowed == address,
                    (HostPattern::Name(allowed), None) => *allowed == name,
                    (HostPattern::Suffix(suffix), None) => {
                        name.len() > suffix.len() && name.ends_with(suffix.as_str())
                    }
                    _ => false,
                }
        })
    }

    /// Whether an entry names `address` itself, which lets the gateway
    /// connect to it even if it is internal ([`is_internal`]).
    pub fn names_address(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.entries
            .iter()
            .any(|entry| entry.host == HostPattern::Address(address))
    }
}

/// Parses one `scheme://host[:port]` entry.
fn parse_entry(entry: &str) -> Result<AllowedHost, String> {
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Err("expected scheme://host[:port], e.g. https://api.example.com".into());
    };
    let scheme = Scheme::parse(scheme)
        .ok_or_else(|| format!("the scheme must be http or https, not {scheme:?}"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err("only scheme, host and port: no path, query or user".into());
    }
    let (host, port) = split_port(rest)?;
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("the port must be 1-65535, not {port:?}"))?,
        None => scheme.default_port(),
    };
    let host = if let Some(address) = parse_address(host) {
        HostPattern::Address(address)
    } else if let Some(suffix) = host.strip_prefix("*.") {
        check_name(suffix)?;
        HostPattern::Suffix(format!(".{}", suffix.to_ascii_lowercase()))
    } else {
        check_name(host)?;
        HostPattern::Name(host.to_ascii_lowercase())
    };
    Ok(AllowedHost { scheme, host, port })
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 literal.
fn split_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if text.starts_with('[') {
        let end = text
            .find(']')
            .ok_or("an IPv6 address needs its closing ']'")?;
        let (host, after) = text.split_at(end + 1);
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("unexpected {after:?} after the address")),
        };
    }
    Ok(match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    })
}

/// A DNS name: dot-separated labels of letters, digits and `-`.
fn check_name(name: &str) -> Result<(), String> {
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if name.is_empty() || name.len() > 253 || !labels_ok {
        return Err(format!(
            "{name:?} is not a host name (letters, digits, '-' and dots; `*.` only as a prefix)"
        ));
    }
    Ok(())
}

/// An address literal, bracketed or not, in canonical form.
fn parse_address(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().ok().map(canonical)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is, so that
/// `::ffff:127.0.0.1` is checked and named as `127.0.0.1`.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `address` is one a public name must not lead to: loopback,
/// private, shared (CGNAT), link-local (which holds the cloud metadata
/// service, 169.254.169.254), unique-local (fd00::/8 and the rest of
/// fc00::/7, AWS's metadata fd00:ec2::254 among them), unspecified,
/// multicast, broadcast and reserved ranges, and the IPv6 forms that embed
/// an IPv4 address (mapped, NAT64) when that address is one of these.
pub fn is_internal(address: IpAddr) -> bool {
    match canonical(address) {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    v4.is_unspecified()
        || v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn is_internal_v6(v6: Ipv6Addr) -> bool {
    let segments = v6.segments();
    // NAT64 (64:ff9b::/96) embeds an IPv4 address in the last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        return is_internal_v4(v4);
    }
    v6.is_unspecified()
        || v6.is_loopback()
        || v6.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (segments[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
        || v6.to_ipv4().is_some() // IPv4-compatible ::a.b.c.d (deprecated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        AllowList::parse(&entries).expect("valid list")
    }

    fn error(entry: &str) -> String {
        AllowList::parse(&[entry.to_owned()]).expect_err("invalid entry")
    }

    #[test]
    fn names_match_exactly_with_the_schemes_port_by_default() {
        let allowed = list(&["https://api.example.com", "http://127.0.0.1:9000"]);
        assert!(allowed.allows(Scheme::Https, "api.example.com", 443));
        assert!(allowed.allows(Scheme::Https, "API.Example.com", 443));
        assert!(!allowed.allows(Scheme::Https, "api.example.com", 8443));
        assert!(!allowed.allows(Scheme::Http, "api.example.com", 443));
        assert!(!allowed.allows(Scheme::Https, "example.com", 443));
        assert!(!allowed.allows(Scheme::Https, "x.api.example.com", 443));
        assert!(allowed.allows(Scheme::Http, "127.0.0.1", 9000));
        assert!(!allowed.allows(Scheme::Http, "127.0.0.1", 9001));
        // A name is not its address, nor the address its name.
        assert!(!allowed.allows(Scheme::Http, "localhost", 9000));
    }

    #[test]
    fn a_suffix_matches_every_subdomain_and_not_the_domain_itself() {
        let allowed = list(&["https://*.example.org"]);
        assert!(allowed.allows(Scheme::Https, "a.example.org", 443));
        assert!(allowed.allows(Scheme::Https, "a.b.example.org", 443));
        assert!(!allowed.allows(Scheme::Https, "example.org", 443));
        assert!(!allowed.allows(Scheme::Https, "badexample.org", 443));
        assert!(!allowed.allows(Scheme::Https, "a.example.org.evil.com", 443));
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        let allowed = AllowList::default();
        assert!(allowed.is_empty());
        assert!(!allowed.allows(Scheme::Https, "api.example.com", 443));
    }

    #[test]
    fn ipv6_literals_match_in_brackets_and_mapped_addresses_as_ipv4() {
        let allowed = list(&["http://[::1]:8080", "http://10.0.0.5"]);
        assert!(allowed.allows(Scheme::Http, "[::1]", 8080));
        assert!(allowed.allows(Scheme::Http, "[::ffff:10.0.0.5]", 80));
        assert!(allowed.names_address("::1".parse().expect("ip")));
        assert!(allowed.names_address("::ffff:10.0.0.5".parse().expect("ip")));
        assert!(!allowed.names_address("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn entries_that_do_not_parse_say_why() {
        assert!(error("api.example.com").contains("scheme://host"));
        assert!(error("ftp://example.com").contains("http or https"));
        assert!(error("https://example.com/path").contains("no path"));
        assert!(error("https://user@example.com").contains("no path"));
        assert!(error("https://example.com:0").contains("1-65535"));
        assert!(error("https://example.com:99999").contains("1-65535"));
        assert!(error("https://*").contains("not a host name"));
        assert!(error("https://a.*.example.com").contains("not a host name"));
        assert!(error("https://exa mple.com").contains("not a host name"));
        assert!(error("http://[::1").contains("closing"));
        let entries = vec!["https://a.example".to_owned(); MAX_ALLOWED_HOSTS + 1];
        assert!(AllowList::parse(&entries).is_err());
        // A trailing slash is harmless.
        assert!(list(&["https://example.com/"]).allows(Scheme::Https, "example.com", 443));
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            let address: IpAddr = internal.parse().expect("ip");
            assert!(is_internal(address), "{internal} is internal");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            let address: IpAddr = public.parse().expect("ip");
            assert!(!is_internal(address), "{public} is public");
        }
    }
}
