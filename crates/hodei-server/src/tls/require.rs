//! Refusing gRPC calls that came without a verified client certificate.

use std::net::SocketAddr;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use futures::future::Either;
use http::{Request, Response};

use super::PeerIdentity;

/// What a refused caller is told (and nothing more).
pub const CERTIFICATE_REQUIRED: &str =
    "a client certificate issued by the server's client CA is required (mTLS)";

/// Wraps a gRPC service: when `required`, a call whose request carries no
/// [`PeerIdentity`] is answered `UNAUTHENTICATED` without reaching the
/// service, and logged at warn with the peer address and the method.
#[derive(Debug, Clone)]
pub struct RequirePeerIdentity<S> {
    inner: S,
    required: bool,
}

impl<S> RequirePeerIdentity<S> {
    pub fn new(inner: S, required: bool) -> RequirePeerIdentity<S> {
        RequirePeerIdentity { inner, required }
    }
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for RequirePeerIdentity<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<Response<ResBody>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if !self.required || req.extensions().get::<PeerIdentity>().is_some() {
            return Either::Left(self.inner.call(req));
        }
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.to_string());
        tracing::warn!(
            peer = peer.as_deref().unwrap_or("unknown"),
            method = req.uri().path(),
            reason = "no client certificate",
            "gRPC call refused: HWP requires a verified client certificate"
        );
        let refused = tonic::Status::unauthenticated(CERTIFICATE_REQUIRED).into_http::<ResBody>();
        Either::Right(std::future::ready(Ok(refused)))
    }
}
