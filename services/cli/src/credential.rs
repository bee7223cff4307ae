//! The caller's credential: `--api-key` (`AGENTMESH_API_KEY`) or `--token`
//! (`AGENTMESH_TOKEN`, a JWT), sent as `authorization: Bearer …` on every
//! call the command line makes.
//!
//! Every client command flattens [`CredentialArgs`] into its target (the
//! orchestrator, the tool runner, the audit or the alerting service);
//! [`CredentialArgs::resolve`] checks the flags once and gives a
//! [`Credential`], and [`channel`] wraps each channel in it, so the header
//! is added in this one place. The secret is never printed: `--help` hides
//! the variables' values, `Debug` shows a placeholder, and errors name the
//! flag, never its value.

use std::fmt;
use std::str::FromStr;

use agentmesh_auth::keys::ApiKey;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A channel whose calls carry the caller's credential.
pub(crate) type CliChannel = InterceptedService<Channel, Credential>;

/// A secret from the command line or the environment; `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.trim().to_owned()))
    }
}

/// The credential flags of a client command.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct CredentialArgs {
    /// API key to present (`am_live_…`), sent as `authorization: Bearer`.
    #[arg(
        long,
        env = "AGENTMESH_API_KEY",
        hide_env_values = true,
        value_name = "KEY",
        global = true
    )]
    pub(crate) api_key: Option<Secret>,
    /// JWT to present instead of an API key.
    #[arg(
        long,
        env = "AGENTMESH_TOKEN",
        hide_env_values = true,
        value_name = "JWT",
        global = true
    )]
    pub(crate) token: Option<Secret>,
}

/// What the CLI presents on its calls; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Credential(Option<AsciiMetadataValue>);

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Credential")
            .field(&self.0.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Credential {
    /// Whether a credential is presented.
    pub(crate) fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// The `authorization` metadata value, when a credential is presented.
    pub(crate) fn authorization(&self) -> Option<&AsciiMetadataValue> {
        self.0.as_ref()
    }
}

impl tonic::service::Interceptor for Credential {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl CredentialArgs {
    /// Checks the flags: at most one credential, of the right shape. The
    /// errors name the flag and the variable, never the value.
    pub(crate) fn resolve(&self) -> anyhow::Result<Credential> {
        let text = match (&self.api_key, &self.token) {
            (Some(Secret(key)), None) if !key.is_empty() => {
                ApiKey::parse(key).map_err(|_| {
                    anyhow::anyhow!(
                        "--api-key (or AGENTMESH_API_KEY) is not an agentmesh API key: they look \
                         like am_live_ followed by 32 letters and digits (make one with \
                         `agentmesh keys create`)"
                    )
                })?;
                key
            }
            (None, Some(Secret(token))) if !token.is_empty() => {
                if !is_jwt(token) {
                    anyhow::bail!(
                        "--token (or AGENTMESH_TOKEN) is not a JWT: three base64url parts \
                         separated by dots"
                    );
                }
                token
            }
            (Some(_), Some(_)) => anyhow::bail!(
                "give either an API key (--api-key, AGENTMESH_API_KEY) or a token (--token, \
                 AGENTMESH_TOKEN), not both"
            ),
            _ => return Ok(Credential::default()),
        };
        let mut value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {text}"))
            .map_err(|_| anyhow::anyhow!("the credential has characters a header cannot carry"))?;
        // Kept out of HPACK's dynamic table and out of debug output.
        value.set_sensitive(true);
        Ok(Credential(Some(value)))
    }
}

/// A compact JWT: `header.payload.signature`, each base64url (the
/// signature may be empty only for `alg: none`, which no service accepts,
/// but that is for the service to say).
fn is_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().take(2).all(|part| !part.is_empty())
        && parts.iter().all(|part| {
            part.bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'='))
        })
}

/// `channel` presenting `credential` on every call.
pub(crate) fn channel(channel: Channel, credential: &Credential) -> CliChannel {
    InterceptedService::new(channel, credential.clone())
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;

    fn args(api_key: Option<&str>, token: Option<&str>) -> CredentialArgs {
        CredentialArgs {
            api_key: api_key.map(|key| Secret(key.to_owned())),
            token: token.map(|token| Secret(token.to_owned())),
        }
    }

    fn sent(credential: &Credential) -> Option<String> {
        let request = credential.clone().call(tonic::Request::new(())).unwrap();
        request
            .metadata()
            .get("authorization")
            .map(|value| value.to_str().unwrap().to_owned())
    }

    #[test]
    fn a_key_or_a_token_is_sent_as_a_bearer() {
        let key = ApiKey::generate("test").unwrap();
        let credential = args(Some(key.expose()), None).resolve().unwrap();
        assert_eq!(sent(&credential), Some(format!("Bearer {}", key.expose())));
        assert!(!format!("{credential:?}").contains(key.expose()));

        let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        let credential = args(None, Some(token)).resolve().unwrap();
        assert_eq!(sent(&credential), Some(format!("Bearer {token}")));

        let none = args(None, None).resolve().unwrap();
        assert!(!none.is_some());
        assert_eq!(sent(&none), None);
    }

    #[test]
    fn bad_credentials_name_the_flag_and_never_the_value() {
        let secret = "am_live_tooshort";
        let err = args(Some(secret), None).resolve().unwrap_err().to_string();
        assert!(err.contains("--api-key"), "{err}");
        assert!(!err.contains(secret), "{err}");

        let secret = "not-a-jwt";
        let err = args(None, Some(secret)).resolve().unwrap_err().to_string();
        assert!(err.contains("--token"), "{err}");
        assert!(!err.contains(secret), "{err}");

        let key = ApiKey::generate("test").unwrap();
        let err = args(Some(key.expose()), Some("a.b.c"))
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
        assert!(!format!("{:?}", args(Some(key.expose()), None)).contains(key.expose()));
    }
}
