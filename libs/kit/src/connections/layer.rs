//! Counts the calls open on each gRPC connection, so that the idle timeout
//! closes only connections without any (a Follow or Subscribe stream keeps
//! its connection however quiet it is).
//!
//! Tonic puts a guarded connection's [`GuardedInfo`] in each request's
//! extensions; this layer (the outermost) opens a call on its
//! [`super::Activity`] until the response body ends or is dropped, and puts
//! the inner connection's own information (`TcpConnectInfo`, or the
//! `TlsPeer` of a TLS connection) back in the extensions, where
//! `remote_addr()` and the auth layer look for it.

use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;

use super::GuardedInfo;
use crate::body::ObservedBody;

/// The layer (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamCountLayer;

impl<S> tower::Layer<S> for StreamCountLayer {
    type Service = StreamCount<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamCount { inner }
    }
}

/// The service made by [`StreamCountLayer`].
#[derive(Debug, Clone)]
pub struct StreamCount<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for StreamCount<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let extensions = request.extensions_mut();
        let Some(info) = extensions.remove::<GuardedInfo>() else {
            return Box::pin(self.inner.call(request));
        };
        info.restore(extensions);
        let activity = info.activity;
        let call = activity.open_call();
        let future = self.inner.call(request);
        Box::pin(async move {
            let (parts, body) = future.await?.into_parts();
            let body = ObservedBody::new(body, &parts.headers, Box::new(move |_| drop(call)));
            Ok(Response::from_parts(parts, Body::new(body)))
        })
    }
}
