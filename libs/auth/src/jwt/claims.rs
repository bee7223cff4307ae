//! From a verified token's claims to the parts of an [`Identity`]: the
//! tenant, subject and scopes, each read from a configurable claim.
//!
//! A claim name is first looked up as it is (Auth0's namespaced claims such
//! as `https://example.com/tenant` contain dots), then as a dotted path
//! into nested objects (Keycloak's `realm_access.roles`). Scopes are a
//! space-separated string (OAuth's `scope`) or an array of strings (`scp`,
//! `roles`); names that are not agentmesh scopes are ignored, since an
//! issuer's tokens carry scopes for other audiences too.

use serde_json::Value;

use crate::identity::{AllowLists, Identity, Mechanism};
use crate::scope::{Scope, ScopeSet};

/// The longest tenant or subject taken from a token.
const MAX_NAME_CHARS: usize = 256;

/// Where the claims are.
#[derive(Debug, Clone)]
pub(crate) struct ClaimNames {
    pub(crate) tenant: String,
    pub(crate) subject: String,
    pub(crate) scopes: String,
}

/// Why verified claims do not make an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// No tenant claim, or an empty one.
    MissingTenant,
    /// A tenant that is not a short string of visible characters.
    InvalidTenant,
    /// No subject claim, or not a usable string.
    MissingSubject,
}

/// The value at `name`: the top-level claim of that name, else the dotted
/// path.
pub(crate) fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    claims.get(name).or_else(|| {
        name.split('.')
            .try_fold(claims, |value, part| value.get(part))
    })
}

/// The identity a verified token stands for. The credential id names the
/// issuer and subject (`jwt:<iss>#<sub>`), never the token.
pub(crate) fn identity(
    claims: &Value,
    names: &ClaimNames,
    issuer: &str,
) -> Result<Identity, ClaimError> {
    let tenant = match claim(claims, &names.tenant) {
        None | Some(Value::Null) => return Err(ClaimError::MissingTenant),
        Some(Value::String(tenant)) if tenant.is_empty() => {
            return Err(ClaimError::MissingTenant);
        }
        Some(Value::String(tenant)) if is_name(tenant, false) => tenant.clone(),
        Some(_) => return Err(ClaimError::InvalidTenant),
    };
    let subject = match claim(claims, &names.subject) {
        Some(Value::String(subject)) if !subject.is_empty() && is_name(subject, true) => {
            subject.clone()
        }
        _ => return Err(ClaimError::MissingSubject),
    };
    Ok(Identity {
        credential_id: credential_id(issuer, &subject),
        tenant,
        subject,
        scopes: scopes(claim(claims, &names.scopes)),
        allow: AllowLists::any(),
        mechanism: Mechanism::Jwt,
        actor: None,
    })
}

/// `jwt:<iss>#<sub>`: who the token is for, by whom, as audit events and
/// metrics name it.
pub(crate) fn credential_id(issuer: &str, subject: &str) -> String {
    format!("jwt:{issuer}#{subject}")
}

/// Whether `text` can travel as an identity header value: visible ASCII
/// (spaces allowed where `spaces`), not too long.
fn is_name(text: &str, spaces: bool) -> bool {
    text.len() <= MAX_NAME_CHARS
        && text
            .bytes()
            .all(|byte| byte.is_ascii_graphic() || (spaces && byte == b' '))
}

/// The agentmesh scopes in a scopes claim.
fn scopes(value: Option<&Value>) -> ScopeSet {
    let known = |name: &str| name.parse::<Scope>().ok();
    match value {
        Some(Value::String(text)) => text.split_whitespace().filter_map(known).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(known)
            .collect(),
        _ => ScopeSet::EMPTY,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn names(tenant: &str, scopes: &str) -> ClaimNames {
        ClaimNames {
            tenant: tenant.to_owned(),
            subject: "sub".to_owned(),
            scopes: scopes.to_owned(),
        }
    }

    #[test]
    fn tenant_subject_and_scopes_come_from_the_named_claims() {
        let claims = json!({
            "sub": "alice",
            "https://example.com/tenant": "acme",
            "realm_access": {"roles": ["runs:read", "offline_access", "runs:write"]},
            "scope": "openid runs:read email",
        });
        let id = identity(
            &claims,
            &names("https://example.com/tenant", "realm_access.roles"),
            "https://idp",
        )
        .unwrap();
        assert_eq!((id.tenant.as_str(), id.subject.as_str()), ("acme", "alice"));
        assert_eq!(
            id.scopes,
            ScopeSet::EMPTY.with(Scope::RunsRead).with(Scope::RunsWrite)
        );
        assert_eq!(id.credential_id, "jwt:https://idp#alice");
        assert_eq!(id.mechanism, Mechanism::Jwt);

        let claims = json!({"sub": "bob", "org": {"id": "globex"}, "scope": "openid runs:read"});
        let id = identity(&claims, &names("org.id", "scope"), "iss").unwrap();
        assert_eq!(id.tenant, "globex");
        assert_eq!(id.scopes, ScopeSet::EMPTY.with(Scope::RunsRead));
        let id = identity(&claims, &names("org.id", "missing"), "iss").unwrap();
        assert_eq!(id.scopes, ScopeSet::EMPTY);
    }

    #[test]
    fn a_token_without_a_usable_tenant_or_subject_is_refused() {
        let n = names("tenant", "scope");
        for (claims, error) in [
            (json!({"sub": "a"}), ClaimError::MissingTenant),
            (json!({"sub": "a", "tenant": ""}), ClaimError::MissingTenant),
            (
                json!({"sub": "a", "tenant": null}),
                ClaimError::MissingTenant,
            ),
            (json!({"sub": "a", "tenant": 7}), ClaimError::InvalidTenant),
            (
                json!({"sub": "a", "tenant": "a b"}),
                ClaimError::InvalidTenant,
            ),
            (
                json!({"sub": "a", "tenant": "x\ny"}),
                ClaimError::InvalidTenant,
            ),
            (json!({"tenant": "acme"}), ClaimError::MissingSubject),
            (
                json!({"tenant": "acme", "sub": 5}),
                ClaimError::MissingSubject,
            ),
        ] {
            assert_eq!(identity(&claims, &n, "iss").unwrap_err(), error, "{claims}");
        }
    }
}
