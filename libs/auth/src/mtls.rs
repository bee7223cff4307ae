//! Client certificates as credentials: a verified certificate's names map
//! to an identity through `[[auth.mtls_principals]]`.
//!
//! ```toml
//! [[auth.mtls_principals]]
//! uri = "spiffe://cluster.local/ns/agentmesh/sa/orchestrator"
//! subject = "orchestrator"
//! scopes = ["service", "llm:generate", "tools:execute"]
//!
//! [[auth.mtls_principals]]
//! dns = "batch.acme.internal"
//! tenant = "acme"
//! subject = "nightly-batch"
//! scopes = ["runs:write"]
//! ```
//!
//! The TLS layer (the kit's listener) verifies the certificate chain against
//! the configured client CA during the handshake; only then do the names of
//! the leaf certificate (its subject alternative names: URIs such as SPIFFE
//! ids, and DNS names) reach [`CertificateNames`] and this table. Names are
//! matched exactly: URIs first, in the certificate's order, then DNS names
//! (case-insensitively). A certificate that maps to nothing authenticates
//! nobody. The identity is `mechanism = mtls`, credential id
//! `mtls:<matched name>`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::identity::{AllowList, AllowLists, Identity, Mechanism};
use crate::scope::{Scope, ScopeSet};

/// The longest name looked at (URIs and DNS names of real certificates are
/// far shorter).
const MAX_NAME_BYTES: usize = 1024;

/// One `[[auth.mtls_principals]]` entry: a certificate name and the
/// identity it stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtlsPrincipal {
    /// A URI subject alternative name, e.g. a SPIFFE id
    /// `spiffe://cluster.local/ns/agentmesh/sa/orchestrator`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// A DNS subject alternative name, e.g. `orchestrator.agentmesh.svc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// The tenant ("" for platform identities: services, operators).
    pub tenant: String,
    /// Who holds the certificate.
    pub subject: String,
    /// What it may do; `service` lets it forward end users' identities.
    pub scopes: Vec<String>,
    /// Optional allow-lists (absent = all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
    /// Gateway routes it may call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    /// Tools it may call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
}

/// The names of a verified client certificate (its leaf's subject
/// alternative names), as the TLS layer hands them on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateNames {
    /// URI names (SPIFFE ids), in the certificate's order.
    pub uris: Vec<String>,
    /// DNS names, in the certificate's order.
    pub dns_names: Vec<String>,
}

impl CertificateNames {
    /// Whether the certificate has no name this module can match.
    pub fn is_empty(&self) -> bool {
        self.uris.is_empty() && self.dns_names.is_empty()
    }

    /// The name that stands for the certificate in audit events when it
    /// maps to nobody: its first URI, else its first DNS name.
    pub fn first(&self) -> Option<&str> {
        self.uris
            .first()
            .or(self.dns_names.first())
            .map(String::as_str)
    }
}

/// What the transport knows about a caller: its address (for the failure
/// budget) and the names of the client certificate it presented, when the
/// TLS listener verified one. `Option<IpAddr>` converts into it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer<'a> {
    /// The caller's address.
    pub ip: Option<IpAddr>,
    /// The verified client certificate's names.
    pub certificate: Option<&'a CertificateNames>,
}

impl From<Option<IpAddr>> for Peer<'_> {
    fn from(ip: Option<IpAddr>) -> Self {
        Self {
            ip,
            certificate: None,
        }
    }
}

/// An entry that cannot be used: `(index, setting, problem)`.
pub type PrincipalError = (usize, &'static str, String);

/// The table of `[[auth.mtls_principals]]`, ready to look names up.
#[derive(Debug, Clone, Default)]
pub struct MtlsPrincipals {
    by_uri: HashMap<String, Arc<Identity>>,
    by_dns: HashMap<String, Arc<Identity>>,
}

impl MtlsPrincipals {
    /// Builds the table, checking every entry (exactly one of `uri` and
    /// `dns`, a subject, known scopes, no name twice).
    pub fn new(entries: &[MtlsPrincipal]) -> Result<Self, PrincipalError> {
        let mut table = Self::default();
        for (index, entry) in entries.iter().enumerate() {
            let (map, setting, name) = match (&entry.uri, &entry.dns) {
                (Some(uri), None) => (&mut table.by_uri, "uri", check_uri(uri)),
                (None, Some(dns)) => (&mut table.by_dns, "dns", check_dns(dns)),
                _ => {
                    return Err((
                        index,
                        "uri",
                        "set exactly one of `uri` (e.g. a SPIFFE id) and `dns`".to_owned(),
                    ));
                }
            };
            let name = name.map_err(|problem| (index, setting, problem))?;
            let identity = identity_of(entry, &name)
                .map_err(|(setting, problem)| (index, setting, problem))?;
            if map.insert(name.clone(), Arc::new(identity)).is_some() {
                return Err((index, setting, format!("{name} is mapped twice")));
            }
        }
        Ok(table)
    }

    /// Whether no certificate maps to anybody.
    pub fn is_empty(&self) -> bool {
        self.by_uri.is_empty() && self.by_dns.is_empty()
    }

    /// The identity `names` map to: the first URI that is in the table, else
    /// the first DNS name.
    pub fn identify(&self, names: &CertificateNames) -> Option<Identity> {
        names
            .uris
            .iter()
            .find_map(|uri| self.by_uri.get(uri.as_str()))
            .or_else(|| {
                names
                    .dns_names
                    .iter()
                    .find_map(|dns| self.by_dns.get(dns.to_ascii_lowercase().as_str()))
            })
            .map(|identity| Identity::clone(identity))
    }
}

impl MtlsPrincipals {
    /// The identity of a caller that sent no bearer but a verified
    /// certificate, or the credential id of a certificate that maps to
    /// nobody; `None` when mTLS is off here (the certificate then proves
    /// nothing and the call has no credential).
    pub(crate) fn authenticate(
        &self,
        names: &CertificateNames,
    ) -> Option<Result<Identity, String>> {
        if self.is_empty() {
            return None;
        }
        Some(self.identify(names).ok_or_else(|| {
            names
                .first()
                .map(|name| format!("mtls:{name}"))
                .unwrap_or_else(|| "mtls:".to_owned())
        }))
    }
}

fn check_uri(uri: &str) -> Result<String, String> {
    let well_formed = uri.len() <= MAX_NAME_BYTES
        && uri.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !rest.is_empty()
        })
        && !uri.chars().any(|c| c.is_whitespace() || c.is_control());
    if well_formed {
        Ok(uri.to_owned())
    } else {
        Err(format!(
            "{uri:?} is not a URI like spiffe://cluster.local/ns/agentmesh/sa/orchestrator"
        ))
    }
}

fn check_dns(dns: &str) -> Result<String, String> {
    let name = dns.to_ascii_lowercase();
    let well_formed = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if well_formed {
        Ok(name)
    } else {
        Err(format!(
            "{dns:?} is not a DNS name (exact names only: no wildcards)"
        ))
    }
}

fn identity_of(entry: &MtlsPrincipal, name: &str) -> Result<Identity, (&'static str, String)> {
    if entry.subject.trim().is_empty() {
        return Err(("subject", "must name who holds the certificate".to_owned()));
    }
    let scopes = entry
        .scopes
        .iter()
        .map(|scope| scope.parse::<Scope>())
        .collect::<Result<ScopeSet, _>>()
        .map_err(|err| ("scopes", err.to_string()))?;
    let list = |names: &Option<Vec<String>>| {
        names.as_ref().map_or_else(AllowList::any, |names| {
            AllowList::only(names.iter().cloned())
        })
    };
    Ok(Identity {
        tenant: entry.tenant.clone(),
        subject: entry.subject.clone(),
        scopes,
        allow: AllowLists {
            agents: list(&entry.agents),
            routes: list(&entry.routes),
            tools: list(&entry.tools),
        },
        credential_id: format!("mtls:{name}"),
        mechanism: Mechanism::Mtls,
        actor: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORCHESTRATOR: &str = "spiffe://cluster.local/ns/agentmesh/sa/orchestrator";

    fn table() -> MtlsPrincipals {
        MtlsPrincipals::new(&[
            MtlsPrincipal {
                uri: Some(ORCHESTRATOR.to_owned()),
                subject: "orchestrator".to_owned(),
                scopes: vec!["service".to_owned(), "llm:generate".to_owned()],
                ..MtlsPrincipal::default()
            },
            MtlsPrincipal {
                dns: Some("Batch.Acme.Internal".to_owned()),
                tenant: "acme".to_owned(),
                subject: "batch".to_owned(),
                scopes: vec!["runs:write".to_owned()],
                tools: Some(vec!["calculator".to_owned()]),
                ..MtlsPrincipal::default()
            },
        ])
        .unwrap()
    }

    #[test]
    fn names_map_to_their_principal_uris_first() {
        let table = table();
        let names = CertificateNames {
            uris: vec!["spiffe://other/x".to_owned(), ORCHESTRATOR.to_owned()],
            dns_names: vec!["batch.acme.internal".to_owned()],
        };
        let identity = table.identify(&names).unwrap();
        assert_eq!(identity.subject, "orchestrator");
        assert_eq!(identity.mechanism, Mechanism::Mtls);
        assert_eq!(identity.credential_id, format!("mtls:{ORCHESTRATOR}"));
        assert!(identity.is_service());

        let names = CertificateNames {
            uris: vec![],
            dns_names: vec!["BATCH.acme.internal".to_owned()],
        };
        let identity = table.identify(&names).unwrap();
        assert_eq!(
            (identity.tenant.as_str(), identity.subject.as_str()),
            ("acme", "batch")
        );
        assert_eq!(identity.credential_id, "mtls:batch.acme.internal");
        assert!(!identity.is_service());
        assert!(!identity.allow.tools.allows("run_command"));

        let stranger = CertificateNames {
            uris: vec!["spiffe://cluster.local/ns/agentmesh/sa/orchestrator/x".to_owned()],
            dns_names: vec!["acme.internal".to_owned()],
        };
        assert!(table.identify(&stranger).is_none());
        assert_eq!(
            stranger.first(),
            Some("spiffe://cluster.local/ns/agentmesh/sa/orchestrator/x")
        );
    }

    #[test]
    fn bad_entries_name_their_index_and_setting() {
        let entry = |uri: Option<&str>, dns: Option<&str>, scopes: &[&str]| MtlsPrincipal {
            uri: uri.map(str::to_owned),
            dns: dns.map(str::to_owned),
            subject: "x".to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..MtlsPrincipal::default()
        };
        let cases = [
            (vec![entry(None, None, &[])], (0, "uri")),
            (
                vec![entry(Some(ORCHESTRATOR), Some("a.b"), &[])],
                (0, "uri"),
            ),
            (vec![entry(Some("not a uri"), None, &[])], (0, "uri")),
            (vec![entry(None, Some("*.acme.internal"), &[])], (0, "dns")),
            (vec![entry(None, Some("a.b"), &["runs:fly"])], (0, "scopes")),
            (
                vec![entry(None, Some("a.b"), &[]), entry(None, Some("A.B"), &[])],
                (1, "dns"),
            ),
        ];
        for (entries, (index, setting)) in cases {
            let (at, name, problem) = MtlsPrincipals::new(&entries).unwrap_err();
            assert_eq!((at, name), (index, setting), "{problem}");
        }
        let mut nameless = entry(None, Some("a.b"), &[]);
        nameless.subject = " ".to_owned();
        assert_eq!(MtlsPrincipals::new(&[nameless]).unwrap_err().1, "subject");
    }

    #[test]
    fn the_authenticator_takes_a_mapped_certificate_when_no_bearer_is_sent() {
        use crate::authenticate::{Authenticator, RefusalCode};
        use crate::config::{AuthConfig, Method};
        use http::{HeaderMap, HeaderValue};

        let config = AuthConfig {
            methods: vec![Method::Mtls],
            mtls_principals: vec![
                MtlsPrincipal {
                    uri: Some(ORCHESTRATOR.to_owned()),
                    subject: "orchestrator".to_owned(),
                    scopes: vec!["service".to_owned()],
                    ..MtlsPrincipal::default()
                },
                MtlsPrincipal {
                    uri: Some("spiffe://cluster.local/ns/agentmesh/sa/batch".to_owned()),
                    tenant: "acme".to_owned(),
                    subject: "batch".to_owned(),
                    scopes: vec!["runs:read".to_owned()],
                    ..MtlsPrincipal::default()
                },
            ],
            ..AuthConfig::default()
        };
        let auth = Authenticator::from_config(&config).unwrap();
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        let names = |uri: &str| CertificateNames {
            uris: vec![uri.to_owned()],
            dns_names: vec![],
        };
        let with_cert = |names| Peer {
            ip,
            certificate: Some(names),
        };
        let mut forwarded = HeaderMap::new();
        forwarded.insert("x-agentmesh-tenant", HeaderValue::from_static("globex"));

        let service = names(ORCHESTRATOR);
        let identity = auth.authenticate(&forwarded, with_cert(&service)).unwrap();
        assert_eq!(identity.tenant, "globex");
        let actor = identity.actor.unwrap();
        assert_eq!(
            (actor.subject.as_str(), actor.mechanism),
            ("orchestrator", Mechanism::Mtls)
        );

        let batch = names("spiffe://cluster.local/ns/agentmesh/sa/batch");
        let refusal = auth
            .authenticate(&forwarded, with_cert(&batch))
            .unwrap_err();
        assert_eq!(refusal.reason, "forwarded_identity_from_non_service");
        assert_eq!(
            auth.authenticate(&HeaderMap::new(), with_cert(&batch))
                .unwrap()
                .tenant,
            "acme"
        );

        let stranger = names("spiffe://elsewhere/sa/x");
        let refusal = auth
            .authenticate(&HeaderMap::new(), with_cert(&stranger))
            .unwrap_err();
        assert_eq!(
            (refusal.code, refusal.reason, refusal.credential_id.as_str()),
            (
                RefusalCode::Unauthenticated,
                "unknown_certificate",
                "mtls:spiffe://elsewhere/sa/x"
            )
        );
        // Without a certificate there is no credential at all.
        let refusal = auth.authenticate(&HeaderMap::new(), ip).unwrap_err();
        assert_eq!(refusal.reason, "missing");
        // A bearer, when sent, is what counts (api_key is off here).
        let mut bearer = HeaderMap::new();
        bearer.insert(
            "authorization",
            HeaderValue::from_static("Bearer am_test_00000000000000000000000000000000"),
        );
        let refusal = auth.authenticate(&bearer, with_cert(&service)).unwrap_err();
        assert_eq!(refusal.reason, "method_off");
    }
}
