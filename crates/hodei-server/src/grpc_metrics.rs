//! A tower layer around gRPC services that counts finished calls by method
//! and status (`hodei_grpc_requests_total{method, status}`).
//!
//! A gRPC status travels in the response headers when the call fails before
//! any message ("trailers-only"), else in the trailers after the last
//! message. The layer reads the headers, and wraps the response body to see
//! the trailers; a body dropped before its trailers (the client went away)
//! counts as `Cancelled`. Each call is counted once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::metrics::GRPC_REQUESTS;

#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = req.uri().path().to_string();
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            let mut counted = Counted {
                method: Some(method),
            };
            if let Some(status) = grpc_status(response.headers()) {
                counted.finish(&status);
            }
            Ok(response.map(|inner| CountedBody { inner, counted }))
        })
    }
}

/// The call's counter until it is counted.
#[derive(Debug)]
struct Counted {
    method: Option<String>,
}

impl Counted {
    fn finish(&mut self, status: &str) {
        if let Some(method) = self.method.take() {
            metrics::counter!(GRPC_REQUESTS, "method" => method, "status" => status.to_string())
                .increment(1);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish("Cancelled");
    }
}

/// The name of the `grpc-status` in `headers` (`OK`, `NotFound`, ...).
fn grpc_status(headers: &HeaderMap) -> Option<String> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK".to_string(),
        other => format!("{other:?}"),
    })
}

/// A response body that counts its call when the trailers pass.
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    counted: Counted,
}

impl<B> Body for CountedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(status) = frame.trailers_ref().and_then(grpc_status) {
                    this.counted.finish(&status);
                }
            }
            Poll::Ready(Some(Err(_))) => this.counted.finish("Internal"),
            Poll::Ready(None) => this.counted.finish("Unknown"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_named() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&h).as_deref(), Some("OK"));
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&h).as_deref(), Some("NotFound"));
    }
}
