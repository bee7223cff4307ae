//! The rules: [`EgressConfig`] as the operator writes it, compiled once into
//! an [`EgressPolicy`] that answers "may this URL be fetched?" (scheme,
//! credentials in the URL, host lists, port) and "may this address be
//! connected to?" (denied ranges, the special ranges of [`crate::address`],
//! allowed ranges). A refusal is a [`Refusal`] naming the rule.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::address::{AddressClass, classify};

/// The most redirects a policy may allow.
pub const MAX_REDIRECTS: u32 = 20;

/// The guard's settings, as written in a service's configuration.
///
/// ```toml
/// allow_hosts = []                  # empty: any host; "api.example.com", "*.example.com"
/// deny_hosts = ["*.internal"]       # always refused, before allow_hosts
/// schemes = ["http", "https"]
/// ports = []                        # empty: any port
/// allow_cidrs = []                  # e.g. ["10.1.2.0/24"]: special ranges let through
/// deny_cidrs = []                   # refused even when public
/// max_redirects = 5
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Hosts that may be fetched; empty = any host. An entry is an exact
    /// host name or IP address (`api.example.com`), or `*.example.com` for
    /// every subdomain of `example.com` (not `example.com` itself).
    pub allow_hosts: Vec<String>,
    /// Hosts never fetched, in the same syntax; checked before `allow_hosts`.
    pub deny_hosts: Vec<String>,
    /// URL schemes allowed; only `http` and `https` are supported.
    pub schemes: Vec<String>,
    /// Ports allowed (the URL's, or the scheme's default); empty = any.
    pub ports: Vec<u16>,
    /// Address ranges (CIDR) let through although they are loopback,
    /// private, link-local or another special range.
    pub allow_cidrs: Vec<String>,
    /// Address ranges (CIDR) refused although they are public; checked
    /// before `allow_cidrs`.
    pub deny_cidrs: Vec<String>,
    /// Redirects followed per request, each checked like the first URL;
    /// 0 = none followed (the 3xx answer is returned).
    pub max_redirects: u32,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            schemes: vec!["http".to_owned(), "https".to_owned()],
            ports: Vec::new(),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            max_redirects: 5,
        }
    }
}

impl EgressConfig {
    /// Checks the settings and compiles them; the error names the field
    /// (relative to the section) and says what is wrong.
    pub fn compile(&self) -> Result<EgressPolicy, (&'static str, String)> {
        let allow_hosts = patterns("allow_hosts", &self.allow_hosts)?;
        let deny_hosts = patterns("deny_hosts", &self.deny_hosts)?;
        let mut schemes = Vec::new();
        for scheme in &self.schemes {
            let scheme = scheme.to_ascii_lowercase();
            if scheme != "http" && scheme != "https" {
                return Err((
                    "schemes",
                    format!("`{scheme}` is not supported: use http and/or https"),
                ));
            }
            schemes.push(scheme);
        }
        if schemes.is_empty() {
            return Err(("schemes", "must name at least one scheme".to_owned()));
        }
        if self.ports.contains(&0) {
            return Err(("ports", "0 is not a port".to_owned()));
        }
        if self.max_redirects > MAX_REDIRECTS {
            return Err((
                "max_redirects",
                format!(
                    "{} is out of range: use 0 to {MAX_REDIRECTS}",
                    self.max_redirects
                ),
            ));
        }
        Ok(EgressPolicy {
            allow_hosts,
            deny_hosts,
            schemes,
            ports: self.ports.clone(),
            allow_cidrs: cidrs("allow_cidrs", &self.allow_cidrs)?,
            deny_cidrs: cidrs("deny_cidrs", &self.deny_cidrs)?,
            max_redirects: self.max_redirects,
        })
    }
}

/// One host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    Suffix(String),
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(exact) => host == exact,
            Self::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Exact(exact) => exact.clone(),
            Self::Suffix(suffix) => format!("*{suffix}"),
        }
    }
}

fn patterns(
    field: &'static str,
    entries: &[String],
) -> Result<Vec<HostPattern>, (&'static str, String)> {
    entries
        .iter()
        .map(|entry| {
            let lower = normalize_host(entry);
            let (suffix, name) = match lower.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, lower.as_str()),
            };
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
                });
            if !valid {
                return Err((
                    field,
                    format!("`{entry}` is not a host name, an IP address or `*.<domain>`"),
                ));
            }
            Ok(if suffix {
                HostPattern::Suffix(format!(".{name}"))
            } else {
                HostPattern::Exact(name.to_owned())
            })
        })
        .collect()
}

fn cidrs(field: &'static str, entries: &[String]) -> Result<Vec<IpNet>, (&'static str, String)> {
    entries
        .iter()
        .map(|entry| {
            IpNet::from_str(entry.trim())
                .or_else(|_| IpAddr::from_str(entry.trim()).map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    (
                        field,
                        format!("`{entry}` is not an address range such as 10.0.0.0/8"),
                    )
                })
        })
        .collect()
}

/// A host as compared: lower case, without a trailing dot or IPv6 brackets.
fn normalize_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) => inner.to_owned(),
        None => host,
    }
}

/// The compiled rules.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    allow_hosts: Vec<HostPattern>,
    deny_hosts: Vec<HostPattern>,
    schemes: Vec<String>,
    ports: Vec<u16>,
    allow_cidrs: Vec<IpNet>,
    deny_cidrs: Vec<IpNet>,
    max_redirects: u32,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            schemes: vec!["http".to_owned(), "https".to_owned()],
            ports: Vec::new(),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            max_redirects: 5,
        }
    }
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The URL's scheme is not among `schemes`.
    Scheme(String),
    /// The URL has no host.
    NoHost,
    /// The URL carries a user name or password.
    Credentials,
    /// The host matches this `deny_hosts` entry.
    HostDenied(String),
    /// `allow_hosts` is set and the host matches none of it.
    HostNotAllowed,
    /// The port is not among `ports`.
    Port(u16),
    /// The address is in this `deny_cidrs` range.
    DeniedRange(IpAddr, String),
    /// The address is in a special range and no `allow_cidrs` entry lets it
    /// through.
    Address(IpAddr, AddressClass),
    /// The name resolved to no address.
    Unresolved,
    /// More redirects than `max_redirects`.
    TooManyRedirects(u32),
}

/// A refused destination: the host (or URL) and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination refused: {target}: {rule}")]
pub struct Refusal {
    /// The host refused (never a full URL, which may carry secrets in its
    /// query).
    pub target: String,
    /// The rule that refused it.
    pub rule: Rule,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scheme(scheme) => write!(f, "the scheme `{scheme}` is not allowed (schemes)"),
            Self::NoHost => f.write_str("the URL has no host"),
            Self::Credentials => f.write_str(
                "URLs carrying a user name or password are refused; send credentials in a header",
            ),
            Self::HostDenied(pattern) => write!(f, "the host matches `{pattern}` of deny_hosts"),
            Self::HostNotAllowed => f.write_str("the host is not in allow_hosts"),
            Self::Port(port) => write!(f, "port {port} is not allowed (ports)"),
            Self::DeniedRange(ip, range) => write!(f, "{ip} is in {range} of deny_cidrs"),
            Self::Address(ip, class) => write!(
                f,
                "{ip} is a {class} address, refused unless allowed by allow_cidrs"
            ),
            Self::Unresolved => f.write_str("the name resolved to no address"),
            Self::TooManyRedirects(max) => write!(f, "more than {max} redirects (max_redirects)"),
        }
    }
}

impl EgressPolicy {
    /// The most redirects followed per request.
    pub fn max_redirects(&self) -> u32 {
        self.max_redirects
    }

    /// Checks everything a URL says before any connection: scheme,
    /// credentials, host lists, port, and the address when the host is an
    /// IP address (a host name is checked after resolution, by the
    /// resolver of [`crate::EgressClient`]).
    pub fn check_url(&self, url: &Url) -> Result<(), Refusal> {
        let host = url.host_str().map(normalize_host).unwrap_or_default();
        let refuse = |rule| Refusal {
            target: if host.is_empty() {
                url.scheme().to_owned()
            } else {
                host.clone()
            },
            rule,
        };
        if !self.schemes.iter().any(|s| s == url.scheme()) {
            return Err(refuse(Rule::Scheme(url.scheme().to_owned())));
        }
        if host.is_empty() {
            return Err(refuse(Rule::NoHost));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse(Rule::Credentials));
        }
        if let Some(pattern) = self.deny_hosts.iter().find(|p| p.matches(&host)) {
            return Err(refuse(Rule::HostDenied(pattern.text())));
        }
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|p| p.matches(&host)) {
            return Err(refuse(Rule::HostNotAllowed));
        }
        let port = url.port_or_known_default().unwrap_or(0);
        if port == 0 || (!self.ports.is_empty() && !self.ports.contains(&port)) {
            return Err(refuse(Rule::Port(port)));
        }
        if let Ok(ip) = IpAddr::from_str(&host) {
            self.check_ip(ip).map_err(refuse)?;
        }
        Ok(())
    }

    /// Checks one address a connection would go to.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Rule> {
        // Judge an IPv4-mapped address as its IPv4 address in the ranges
        // too, so `allow_cidrs = ["127.0.0.1/32"]` covers `::ffff:127.0.0.1`.
        let plain = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        let within = |nets: &[IpNet]| {
            nets.iter()
                .find(|net| net.contains(&ip) || net.contains(&plain))
                .map(ToString::to_string)
        };
        if let Some(range) = within(&self.deny_cidrs) {
            return Err(Rule::DeniedRange(ip, range));
        }
        match classify(ip) {
            Some(class) if within(&self.allow_cidrs).is_none() => Err(Rule::Address(ip, class)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(config: EgressConfig) -> EgressPolicy {
        config.compile().unwrap()
    }

    fn check(policy: &EgressPolicy, url: &str) -> Result<(), Rule> {
        policy
            .check_url(&Url::parse(url).unwrap())
            .map_err(|refusal| refusal.rule)
    }

    #[test]
    fn the_default_refuses_every_special_address_literal() {
        let policy = EgressPolicy::default();
        for url in [
            "http://127.0.0.1/",
            "http://127.0.0.1:8080/x",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://172.16.5.4/",
            "http://192.168.0.1/",
            "http://100.64.1.1/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[::]/",
            "http://192.0.2.1/",
        ] {
            assert!(
                matches!(check(&policy, url), Err(Rule::Address(..))),
                "{url}: {:?}",
                check(&policy, url)
            );
        }
        assert_eq!(check(&policy, "https://93.184.215.14/"), Ok(()));
        assert_eq!(check(&policy, "https://example.com/"), Ok(()));
    }

    #[test]
    fn refusals_name_the_rule() {
        let refusal = EgressPolicy::default()
            .check_url(&Url::parse("http://169.254.169.254/latest").unwrap())
            .unwrap_err();
        let text = refusal.to_string();
        assert!(text.contains("169.254.169.254"), "{text}");
        assert!(text.contains("cloud metadata"), "{text}");
        assert!(text.contains("allow_cidrs"), "{text}");
        assert!(!text.contains("/latest"), "{text}");
    }

    #[test]
    fn schemes_credentials_and_ports_are_checked() {
        let policy = policy(EgressConfig {
            schemes: vec!["https".into()],
            ports: vec![443, 8443],
            ..EgressConfig::default()
        });
        assert_eq!(check(&policy, "https://example.com/"), Ok(()));
        assert_eq!(check(&policy, "https://example.com:8443/"), Ok(()));
        assert_eq!(
            check(&policy, "http://example.com/"),
            Err(Rule::Scheme("http".into()))
        );
        assert_eq!(
            check(&policy, "file:///etc/passwd"),
            Err(Rule::Scheme("file".into()))
        );
        assert_eq!(
            check(&policy, "gopher://example.com/"),
            Err(Rule::Scheme("gopher".into()))
        );
        assert_eq!(
            check(&policy, "https://example.com:22/"),
            Err(Rule::Port(22))
        );
        assert_eq!(
            check(&policy, "https://u:p@example.com/"),
            Err(Rule::Credentials)
        );
        assert_eq!(
            check(&policy, "https://u@example.com/"),
            Err(Rule::Credentials)
        );
    }

    #[test]
    fn host_lists_match_exact_names_and_subdomains() {
        let policy = policy(EgressConfig {
            allow_hosts: vec!["api.example.com".into(), "*.example.org".into()],
            deny_hosts: vec!["secret.example.org".into()],
            ..EgressConfig::default()
        });
        assert_eq!(check(&policy, "https://api.example.com/"), Ok(()));
        assert_eq!(check(&policy, "https://API.Example.COM./"), Ok(()));
        assert_eq!(check(&policy, "https://a.b.example.org/"), Ok(()));
        assert_eq!(
            check(&policy, "https://example.org/"),
            Err(Rule::HostNotAllowed)
        );
        assert_eq!(
            check(&policy, "https://evilexample.org/"),
            Err(Rule::HostNotAllowed)
        );
        assert_eq!(
            check(&policy, "https://www.example.com/"),
            Err(Rule::HostNotAllowed)
        );
        assert_eq!(
            check(&policy, "https://secret.example.org/"),
            Err(Rule::HostDenied("secret.example.org".into()))
        );
        // An allowed host name is still checked for its address.
        let policy = policy_of_hosts(&["127.0.0.1"]);
        assert!(matches!(
            check(&policy, "http://127.0.0.1/"),
            Err(Rule::Address(..))
        ));
    }

    fn policy_of_hosts(hosts: &[&str]) -> EgressPolicy {
        policy(EgressConfig {
            allow_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            ..EgressConfig::default()
        })
    }

    #[test]
    fn allowed_and_denied_ranges_override_the_classes() {
        let policy = policy(EgressConfig {
            allow_cidrs: vec![
                "127.0.0.1/32".into(),
                "10.1.0.0/16".into(),
                "fd00::/8".into(),
            ],
            deny_cidrs: vec!["10.1.2.0/24".into(), "8.8.8.8".into()],
            ..EgressConfig::default()
        });
        let ok = |text: &str| policy.check_ip(text.parse().unwrap());
        assert_eq!(ok("127.0.0.1"), Ok(()));
        assert_eq!(ok("::ffff:127.0.0.1"), Ok(()));
        assert!(matches!(
            ok("127.0.0.2"),
            Err(Rule::Address(_, AddressClass::Loopback))
        ));
        assert!(matches!(
            ok("::1"),
            Err(Rule::Address(_, AddressClass::Loopback))
        ));
        assert_eq!(ok("10.1.200.1"), Ok(()));
        assert!(matches!(ok("10.1.2.3"), Err(Rule::DeniedRange(..))));
        assert!(matches!(
            ok("10.2.0.1"),
            Err(Rule::Address(_, AddressClass::Private))
        ));
        assert_eq!(ok("fd12::1"), Ok(()));
        assert!(matches!(ok("8.8.8.8"), Err(Rule::DeniedRange(..))));
        assert_eq!(ok("1.1.1.1"), Ok(()));
    }

    #[test]
    fn bad_settings_name_the_field() {
        let field = |config: EgressConfig| config.compile().unwrap_err().0;
        assert_eq!(
            field(EgressConfig {
                allow_cidrs: vec!["10.0.0.0/33".into()],
                ..EgressConfig::default()
            }),
            "allow_cidrs"
        );
        assert_eq!(
            field(EgressConfig {
                deny_cidrs: vec!["nope".into()],
                ..EgressConfig::default()
            }),
            "deny_cidrs"
        );
        assert_eq!(
            field(EgressConfig {
                allow_hosts: vec!["a b".into()],
                ..EgressConfig::default()
            }),
            "allow_hosts"
        );
        assert_eq!(
            field(EgressConfig {
                deny_hosts: vec!["*.".into()],
                ..EgressConfig::default()
            }),
            "deny_hosts"
        );
        assert_eq!(
            field(EgressConfig {
                schemes: vec!["ftp".into()],
                ..EgressConfig::default()
            }),
            "schemes"
        );
        assert_eq!(
            field(EgressConfig {
                schemes: vec![],
                ..EgressConfig::default()
            }),
            "schemes"
        );
        assert_eq!(
            field(EgressConfig {
                ports: vec![0],
                ..EgressConfig::default()
            }),
            "ports"
        );
        assert_eq!(
            field(EgressConfig {
                max_redirects: 21,
                ..EgressConfig::default()
            }),
            "max_redirects"
        );
    }
}
