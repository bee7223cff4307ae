//! [`EgressClient`]: a reqwest client that can only reach what its
//! [`EgressPolicy`] allows.
//!
//! How a request flows:
//!
//! ```text
//! send(request) ─▶ check_url (scheme, credentials, hosts, port, IP literal)
//!   ─▶ reqwest ─▶ GuardedResolver: resolve the name once, check every
//!                 address, hand reqwest exactly those (the connection
//!                 goes to a checked address: no second lookup to rebind)
//!   ─▶ response 3xx ─▶ redirect policy: hop count, check_url of the next
//!                 URL, then the resolver again for its host
//!   ─▶ read_capped: the body streamed up to a byte cap
//! ```
//!
//! reqwest itself drops `Authorization`, `Cookie` and
//! `Proxy-Authorization` when a redirect changes scheme, host or port; the
//! tests here hold it to that. No proxy is ever used (a proxy would make
//! the resolver check the proxy's address instead of the destination's),
//! and no `Referer` is sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect::Policy;

use crate::policy::{EgressPolicy, Refusal, Rule};

/// The client's fixed settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Time to establish a connection (resolution included).
    pub connect_timeout: Duration,
    /// `User-Agent` of every request.
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            user_agent: concat!("agentmesh/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Why a guarded request failed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The policy refused the destination (first URL, a redirect, or an
    /// address a name resolved to).
    #[error(transparent)]
    Refused(Refusal),
    /// The request or its body did not finish within its timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection or the exchange failed.
    #[error("{0}")]
    Transport(String),
}

/// A client bound to a policy.
#[derive(Debug, Clone)]
pub struct EgressClient {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

impl EgressClient {
    /// Builds the client. Fails only when TLS cannot be set up.
    pub fn new(policy: EgressPolicy, options: &ClientOptions) -> Result<Self, String> {
        // reqwest (built with `rustls-no-provider`) panics without a
        // process-wide crypto provider: install rustls on ring unless one is.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err("no TLS crypto provider could be installed".to_owned());
        }
        let policy = Arc::new(policy);
        let redirects = Arc::clone(&policy);
        let client = reqwest::Client::builder()
            .no_proxy()
            .referer(false)
            .connect_timeout(options.connect_timeout)
            .user_agent(options.user_agent.clone())
            .dns_resolver(Arc::new(GuardedResolver {
                policy: Arc::clone(&policy),
            }))
            .redirect(Policy::custom(move |attempt| {
                let max = redirects.max_redirects();
                let hops = u32::try_from(attempt.previous().len()).unwrap_or(u32::MAX);
                if hops > max {
                    let target = attempt.url().host_str().unwrap_or_default().to_owned();
                    return attempt.error(Refusal {
                        target,
                        rule: Rule::TooManyRedirects(max),
                    });
                }
                match redirects.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refusal) => attempt.error(refusal),
                }
            }))
            .build()
            .map_err(|err| error_chain(&err))?;
        Ok(Self { client, policy })
    }

    /// The policy the client enforces.
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// A request builder; send what it builds with [`EgressClient::send`].
    pub fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }

    /// Checks the request's URL and sends it; redirects and resolved
    /// addresses are checked on the way.
    pub async fn send(&self, request: reqwest::Request) -> Result<reqwest::Response, EgressError> {
        self.policy
            .check_url(request.url())
            .map_err(EgressError::Refused)?;
        self.client.execute(request).await.map_err(classify_error)
    }
}

/// A body read up to a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CappedBody {
    /// At most the cap's bytes.
    pub bytes: Vec<u8>,
    /// True when the body was longer and reading stopped at the cap.
    pub truncated: bool,
}

/// Reads a response body, stopping at `cap` bytes: a larger body is never
/// held in memory (the rest is not read, and the connection is dropped).
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<CappedBody, EgressError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify_error)? {
        let room = cap.saturating_sub(bytes.len());
        if chunk.len() > room {
            bytes.extend_from_slice(chunk.get(..room).unwrap_or_default());
            return Ok(CappedBody {
                bytes,
                truncated: true,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(CappedBody {
        bytes,
        truncated: false,
    })
}

/// A reqwest error as an [`EgressError`]: a refusal anywhere in its chain
/// (from the resolver or the redirect policy) is a refusal.
fn classify_error(err: reqwest::Error) -> EgressError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(current) = source {
        if let Some(refusal) = current.downcast_ref::<Refusal>() {
            return EgressError::Refused(refusal.clone());
        }
        source = current.source();
    }
    let timeout = err.is_timeout();
    // The URL may carry secrets in its query: never in a message.
    let message = error_chain(&err.without_url());
    if timeout {
        EgressError::Timeout(message)
    } else {
        EgressError::Transport(message)
    }
}

/// An error followed by its causes, each said once.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Resolves a host name once and hands reqwest only the addresses the
/// policy allows, so the connection can only go to a checked address; a
/// name with none left is refused, naming the rule of its first address.
#[derive(Debug)]
struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|addr| match policy.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(rule) => {
                        refused.get_or_insert(rule);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let rule = refused.unwrap_or(Rule::Unresolved);
                return Err(Box::new(Refusal { target: host, rule })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
