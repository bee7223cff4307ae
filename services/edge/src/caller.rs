//! [`Caller`]: the credential an HTTP request carries, put on every call
//! made for it. The edge checks no credential itself: the service each
//! call reaches authenticates and authorizes it exactly as it does a gRPC
//! call (scopes, tenant, allow-lists), so the HTTP routes cannot drift from
//! the gRPC ones. The rest of what crosses hops (request id, trace
//! context) is the kit's request context, which the channels forward.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::FromRequestParts;
use http::request::Parts;
use tonic::metadata::MetadataValue;

/// The caller of one HTTP request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Caller {
    /// The caller of a request with these headers.
    pub(crate) fn of(headers: &http::HeaderMap) -> Self {
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| MetadataValue::try_from(value.as_bytes()).ok());
        Self { authorization }
    }

    /// A gRPC request for `message` carrying the caller's credential, with
    /// a deadline when `timeout` is given.
    pub(crate) fn request<T>(&self, message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        request
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_is_passed_on_and_nothing_else() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer am_dev_x"),
        );
        headers.insert("cookie", http::HeaderValue::from_static("a=b"));
        let request = Caller::of(&headers).request((), Some(Duration::from_secs(2)));
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|value| value.to_str().ok()),
            Some("Bearer am_dev_x")
        );
        assert!(request.metadata().get("cookie").is_none());
        assert!(request.metadata().get("grpc-timeout").is_some());
    }

    #[test]
    fn no_credential_no_header() {
        let request = Caller::of(&http::HeaderMap::new()).request((), None);
        assert!(request.metadata().get("authorization").is_none());
    }
}
