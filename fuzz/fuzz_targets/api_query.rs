//! Query strings and headers of the HTTP API, decoded exactly as the server
//! does (axum's `Query` extractor, then the handlers' own parsing):
//! - 0: `GET /api/v1/jobs?…` list filters and cursor (`ListQuery::filter`);
//! - 1: `GET /api/v1/jobs/{id}/logs/follow?…` with a `Last-Event-ID`
//!   header (`logs::follow_start`): offsets read back as written;
//! - 2: bearer tokens (`auth::parse_token`);
//! - 3: the small value parsers behind query values and flags (states,
//!   streams, pull policies, CPU amounts).
//!
//! Must never panic; refusals are 400 with a message.
#![no_main]

use axum::extract::Query;
use axum::http::{StatusCode, Uri};
use hodei_core::auth::{TOKEN_PREFIX, parse_token};
use hodei_core::spec::{PullPolicy, parse_cpu};
use hodei_core::{JobState, LogStream};
use hodei_server::http::ApiError;
use hodei_server::http::jobs::ListQuery;
use hodei_server::http::logs::{LogParams, event_id, follow_start, parse_offsets};
use libfuzzer_sys::fuzz_target;

fn uri(query: &str) -> Option<Uri> {
    Uri::try_from(format!("http://h/api/v1/jobs?{query}")).ok()
}

fn refused(e: &ApiError) {
    assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
    assert!(!e.body.message.is_empty());
}

fn list(query: &str) {
    let Some(uri) = uri(query) else { return };
    let Ok(Query(q)) = Query::<ListQuery>::try_from_uri(&uri) else {
        return;
    };
    match q.filter() {
        Ok(f) => {
            assert!((2..=1001).contains(&f.limit), "page size {}", f.limit);
            if let Some(l) = &f.label {
                assert!(hodei_core::spec::validate_label(l).is_ok());
            }
            if let Some(w) = &f.worker {
                assert!(hodei_core::spec::validate_worker_id(w).is_ok());
            }
        }
        Err(e) => refused(&e),
    }
}

fn follow(input: &str) {
    let (query, last_event_id) = match input.split_once('\n') {
        Some((q, id)) => (q, Some(id)),
        None => (input, None),
    };
    let Some(uri) = uri(query) else { return };
    let Ok(Query(params)) = Query::<LogParams>::try_from_uri(&uri) else {
        return;
    };
    match follow_start(&params, last_event_id) {
        Ok((stream, from)) => {
            // The id of the event at `from` resumes at `from`.
            assert_eq!(parse_offsets(&event_id(from), stream).ok(), Some(from));
        }
        Err(e) => refused(&e),
    }
}

fn token(text: &str) {
    if let Some(parts) = parse_token(text) {
        assert_eq!(format!("{TOKEN_PREFIX}{}_{}", parts.id, parts.secret), text);
    }
}

fn values(text: &str) {
    if let Some(s) = JobState::parse(text) {
        assert_eq!(s.as_str(), text);
    }
    if let Some(s) = LogStream::parse(text) {
        assert_eq!(s.as_str(), text);
    }
    if let Ok(p) = PullPolicy::parse(text) {
        assert_eq!(p.as_str(), text);
    }
    if let Ok(m) = parse_cpu(text) {
        assert!(m > 0);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match mode % 4 {
        0 => list(&text),
        1 => follow(&text),
        2 => token(&text),
        _ => values(&text),
    }
});
