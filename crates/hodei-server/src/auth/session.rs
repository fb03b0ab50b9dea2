//! The dashboard's sign-in: a login form that takes an API token, a session
//! cookie (`hodei_session`: HttpOnly, SameSite=Strict, Path=/, Secure over
//! TLS) and a CSRF token. The CSRF token is also in a cookie the page's
//! script can read (`hodei_csrf`, SameSite=Strict) and must come back with
//! every state-changing request made with the session cookie: as the
//! `X-CSRF-Token` header (the script) or a `csrf` form field (forms).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use askama::Template;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hodei_core::Millis;
use hodei_core::auth::{Refusal, Role, ct_eq};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{Auth, Principal, random_secret};
use crate::reactor::now_ms;

pub const SESSION_COOKIE: &str = "hodei_session";
pub const CSRF_COOKIE: &str = "hodei_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a dashboard session lasts.
const SESSION_TTL_MS: Millis = 12 * 3_600_000;
/// Largest form body read for its CSRF field.
const MAX_FORM: usize = 64 * 1024;

#[derive(Debug, Clone)]
struct Entry {
    token_id: String,
    csrf: String,
    expires_at: Millis,
}

/// Open dashboard sessions (in memory: a restart signs everyone out).
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Entry>>,
    secure: AtomicBool,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks cookies `Secure` (the port serves TLS).
    pub fn set_secure(&self, secure: bool) {
        self.secure.store(secure, Ordering::Relaxed);
    }

    fn get(&self, id: &str) -> Option<Entry> {
        let now = now_ms();
        let mut open = self.lock();
        open.retain(|_, e| e.expires_at > now);
        open.get(id).cloned()
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The principal of the session cookie, if the request has one.
pub fn from_cookie(auth: &Auth, headers: &HeaderMap) -> Option<Result<Principal, Refusal>> {
    let id = cookie(headers, SESSION_COOKIE)?;
    let Some(entry) = auth.sessions().get(id) else {
        return Some(Err(Refusal::Unknown("(dashboard session)".into())));
    };
    Some(auth.still_valid(&entry.token_id))
}

/// Checks the CSRF token of a state-changing, cookie-authenticated request;
/// returns the request (its body read back in if it was a form).
pub async fn check_csrf(auth: &Auth, req: Request) -> Result<Request, String> {
    let expected = cookie(req.headers(), SESSION_COOKIE)
        .and_then(|id| auth.sessions().get(id))
        .map(|e| e.csrf)
        .ok_or("no dashboard session")?;
    if let Some(got) = req.headers().get(CSRF_HEADER) {
        return if ct_eq(got.as_bytes(), expected.as_bytes()) {
            Ok(req)
        } else {
            Err("wrong CSRF token".into())
        };
    }
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Err(format!(
            "missing CSRF token: send the {CSRF_HEADER} header or a csrf form field"
        ));
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| "form too large".to_string())?;
    let fields: Vec<(String, String)> =
        serde_urlencoded_pairs(&bytes).ok_or("malformed form body")?;
    let got = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .ok_or("missing CSRF token in the form")?;
    if !ct_eq(got.as_bytes(), expected.as_bytes()) {
        return Err("wrong CSRF token".into());
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// `application/x-www-form-urlencoded` pairs.
fn serde_urlencoded_pairs(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where to go after signing in: only a dashboard path of this server.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui") && !n.contains("//") && !n.contains('\\') => n.into(),
        _ => "/ui".into(),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    nav: &'static str,
    next: String,
    error: Option<String>,
}

fn login_page(status: StatusCode, next: String, error: Option<String>) -> Response {
    let page = LoginPage {
        nav: "",
        next,
        error,
    };
    match page.render() {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                ),
            ],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the page: {e}"),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LoginQuery {
    /// The dashboard page to show after signing in.
    next: Option<String>,
}

/// The sign-in form.
#[utoipa::path(get, path = "/ui/login", tag = "dashboard", params(LoginQuery),
    responses((status = 200, description = "Sign-in page", content_type = "text/html", body = String)))]
pub async fn login_form(query: Result<Query<LoginQuery>, QueryRejection>) -> Response {
    let next = safe_next(query.as_ref().ok().and_then(|q| q.next.as_deref()));
    login_page(StatusCode::OK, next, None)
}

/// Signs in with an API token: sets the session and CSRF cookies.
#[utoipa::path(post, path = "/ui/login", tag = "dashboard",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "`token` (an API token) and `next` (a /ui path)"),
    responses(
        (status = 303, description = "Signed in; cookies set, redirected to `next`"),
        (status = 401, description = "Token refused", content_type = "text/html", body = String),
    ))]
pub async fn login(auth: Option<Extension<Auth>>, body: axum::body::Bytes) -> Response {
    let fields = serde_urlencoded_pairs(&body).unwrap_or_default();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let next = safe_next(field("next"));
    let Some(Extension(auth)) = auth else {
        return login_page(StatusCode::SERVICE_UNAVAILABLE, next, None);
    };
    let token = field("token").unwrap_or("").trim();
    let principal = match auth.verify(token).await {
        Ok(p) if p.role != Role::Agent => p,
        Ok(p) => {
            tracing::warn!(token = %p.id, "dashboard sign-in refused: agent tokens cannot sign in");
            return login_page(
                StatusCode::FORBIDDEN,
                next,
                Some("Agent join tokens cannot sign in to the dashboard.".into()),
            );
        }
        Err(refusal) => {
            tracing::warn!(reason = %refusal, "dashboard sign-in refused");
            return login_page(
                StatusCode::UNAUTHORIZED,
                next,
                Some(format!("Sign-in refused: {refusal}.")),
            );
        }
    };
    let sid = random_secret();
    let csrf = random_secret();
    auth.sessions().lock().insert(
        sid.clone(),
        Entry {
            token_id: principal.id.clone(),
            csrf: csrf.clone(),
            expires_at: now_ms() + SESSION_TTL_MS,
        },
    );
    tracing::info!(token = %principal.id, "dashboard session opened");
    let secure = if auth.sessions().secure.load(Ordering::Relaxed) {
        "; Secure"
    } else {
        ""
    };
    let max_age = SESSION_TTL_MS / 1000;
    let mut resp = Redirect::to(&next).into_response();
    let headers = resp.headers_mut();
    for c in [
        format!(
            "{SESSION_COOKIE}={sid}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
        ),
        format!("{CSRF_COOKIE}={csrf}; Path=/; Max-Age={max_age}; SameSite=Strict{secure}"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// Signs out: ends the session (needs the CSRF token).
#[utoipa::path(post, path = "/ui/logout", tag = "dashboard",
    responses(
        (status = 303, description = "Signed out; redirected to the sign-in page"),
        (status = 403, description = "Missing or wrong CSRF token"),
    ))]
pub async fn logout(auth: Option<Extension<Auth>>, headers: HeaderMap) -> Response {
    if let (Some(Extension(auth)), Some(id)) = (auth, cookie(&headers, SESSION_COOKIE)) {
        auth.sessions().lock().remove(id);
    }
    let mut resp = Redirect::to("/ui/login").into_response();
    for c in [
        format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
        format!("{CSRF_COOKIE}=; Path=/; Max-Age=0; SameSite=Strict"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_next_stays_on_the_dashboard() {
        let pairs = serde_urlencoded_pairs(b"token=a%2Bb+c&next=%2Fui%2Fjobs").expect("form");
        assert_eq!(pairs[0], ("token".into(), "a+b c".into()));
        assert_eq!(pairs[1], ("next".into(), "/ui/jobs".into()));
        assert_eq!(serde_urlencoded_pairs(b"x=%zz"), None);
        assert_eq!(
            safe_next(Some("/ui/jobs?state=failed")),
            "/ui/jobs?state=failed"
        );
        assert_eq!(safe_next(Some("https://evil.example/")), "/ui");
        assert_eq!(safe_next(Some("/ui//evil.example")), "/ui");
        assert_eq!(safe_next(None), "/ui");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; hodei_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
