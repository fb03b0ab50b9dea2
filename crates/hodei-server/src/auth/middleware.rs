//! The authentication layer over every route of the port: HTTP API,
//! dashboard and gRPC. It finds who is calling (a Bearer token, the
//! dashboard's session cookie, or a verified client certificate), checks the
//! role the route table asks for, the CSRF token of cookie-authenticated
//! state changes and the submission rate, and puts the [`Principal`] in the
//! request's extensions. Every refusal is logged (token id, never secret).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use hodei_core::auth::{Need, Refusal, need_of};

use super::{Auth, Principal, Via, session};
use crate::http::ApiError;
use crate::tls::PeerIdentity;

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The bearer token of the `Authorization` header; `Err` when the header is
/// there but is not a bearer token.
fn bearer(req: &Request) -> Option<Result<&str, Refusal>> {
    let value = req.headers().get(header::AUTHORIZATION)?;
    let value = value.to_str().map_err(|_| Refusal::Malformed);
    Some(value.and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ').ok_or(Refusal::Malformed)?;
        if scheme.eq_ignore_ascii_case("bearer") {
            Ok(token.trim())
        } else {
            Err(Refusal::Malformed)
        }
    }))
}

/// Who is calling, if anyone: a bearer token (verified by the caller, as
/// that may read the store), else a session cookie or a certificate.
fn principal(auth: &Auth, req: &Request) -> Result<Principal, Refusal> {
    if let Some(found) = session::from_cookie(auth, req.headers()) {
        return found;
    }
    if let Some(peer) = req.extensions().get::<PeerIdentity>() {
        // A certificate the TLS layer verified against the client CA: an
        // agent, named by its certificate.
        return Ok(Principal {
            id: format!("cert:{}", peer.name),
            name: peer.name.clone(),
            role: hodei_core::auth::Role::Agent,
            via: Via::Certificate,
        });
    }
    Err(Refusal::Missing)
}

/// A gRPC error response (trailers-only) with `status`.
fn grpc_refusal(status: tonic::Status) -> Response {
    status.into_http::<Body>()
}

fn wants_html(req: &Request) -> bool {
    req.method() == Method::GET
        && req.uri().path().starts_with("/ui")
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"))
}

/// The layer's function: see the module documentation.
pub async fn authenticate(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let need = need_of(&method, &path, auth.route_options());
    if need == Need::Public {
        return next.run(req).await;
    }
    let grpc = is_grpc(&req);
    // Owned: the request is not held across the await.
    let token = bearer(&req).map(|t| t.map(str::to_string));
    let found = match token {
        Some(Ok(token)) => auth.verify(&token).await,
        Some(Err(refusal)) => Err(refusal),
        None => principal(&auth, &req),
    };
    let who = match found {
        Ok(p) => p,
        Err(refusal) => {
            tracing::warn!(%method, %path, reason = %refusal, "request refused: not authenticated");
            if grpc {
                return grpc_refusal(tonic::Status::unauthenticated(refusal.to_string()));
            }
            if wants_html(&req) {
                let next = session::encode(&path_and_query(&req));
                return Redirect::to(&format!("/ui/login?next={next}")).into_response();
            }
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                refusal.to_string(),
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hodei\""),
            );
            return resp;
        }
    };
    if !who.role.allows(need) {
        let message = format!(
            "token {} has role {}; this needs role {}",
            who.id,
            who.role,
            need.role_name()
        );
        tracing::warn!(%method, %path, token = %who.id, role = %who.role, needs = need.role_name(), "request refused: permission denied");
        if grpc {
            return grpc_refusal(tonic::Status::permission_denied(message));
        }
        return ApiError::new(StatusCode::FORBIDDEN, "permission_denied", message).into_response();
    }
    if who.via == Via::Cookie && !matches!(req.method(), &Method::GET | &Method::HEAD) {
        req = match session::check_csrf(&auth, req).await {
            Ok(req) => req,
            Err(why) => {
                tracing::warn!(%method, %path, token = %who.id, reason = %why, "request refused: CSRF check failed");
                return ApiError::new(StatusCode::FORBIDDEN, "csrf", why).into_response();
            }
        };
    }
    if Need::is_submission(&method, &path) && !auth.take_submission(&who.id) {
        let message = format!(
            "token {} is over its submission rate ({} per second); slow down and retry",
            who.id,
            auth.config().submit_rate
        );
        tracing::warn!(%method, %path, token = %who.id, "request refused: submission rate exceeded");
        if grpc {
            return grpc_refusal(tonic::Status::resource_exhausted(message));
        }
        let mut resp =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

fn path_and_query(req: &Request) -> String {
    req.uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/ui".to_string())
}
