//! The OpenAPI 3 document of every HTTP route, generated from the handlers'
//! `#[utoipa::path]` attributes and the schemas in `schema.rs`; served at
//! `/api/v1/openapi.json`. A test checks it describes exactly the routes of
//! [`super::routes`].

use utoipa::OpenApi;

use super::schema::{EndEventSchema, LogEventSchema};
use super::{batch, download, events, jobs, logs, ops, secrets};
use crate::dashboard::pages;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hodei",
        description = "The Hodei orchestrator's HTTP API. Errors are JSON `{code, message, field?}`. \
            gRPC (HWP, health, reflection) shares the port and is not described here.",
    ),
    paths(
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi_json,
        ops::stats,
        jobs::submit,
        batch::submit_batch,
        jobs::list,
        jobs::get,
        jobs::cancel,
        jobs::workers,
        download::download,
        logs::follow,
        events::events,
        pages::root,
        pages::overview,
        pages::jobs,
        pages::job,
        pages::workers,
        pages::stylesheet,
        pages::script,
        crate::auth::session::login_form,
        crate::auth::session::login,
        crate::auth::session::logout,
        crate::auth::api::create,
        crate::auth::api::list,
        crate::auth::api::revoke,
        secrets::set,
        secrets::list,
        secrets::remove,
    ),
    components(schemas(LogEventSchema, EndEventSchema)),
    tags(
        (name = "jobs", description = "Submit, list, inspect and cancel jobs"),
        (name = "logs", description = "Job output: download and live follow"),
        (name = "workers", description = "Worker agents"),
        (name = "events", description = "Live job and worker changes"),
        (name = "operations", description = "Health, readiness, metrics, statistics, this document"),
        (name = "dashboard", description = "The web dashboard (HTML)"),
        (name = "tokens", description = "API and agent join tokens (admin)"),
        (name = "secrets", description = "Secrets jobs get as environment variables (admin; values never returned)"),
    )
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn document() -> serde_json::Value {
        let json = ApiDoc::openapi().to_json().expect("encode");
        serde_json::from_str(&json).expect("the document is JSON")
    }

    #[test]
    fn every_route_is_described_and_nothing_else() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "not OpenAPI 3: {}",
            doc["openapi"]
        );
        let routes: BTreeSet<(String, String)> = super::super::routes()
            .iter()
            .map(|r| (r.method.as_str().to_lowercase(), r.path.to_string()))
            .collect();
        let mut described = BTreeSet::new();
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                described.insert((method.clone(), path.clone()));
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
                // Every `{param}` of the path is a documented path parameter.
                for param in path.split('/').filter(|s| s.starts_with('{')) {
                    let name = param.trim_matches(|c| c == '{' || c == '}');
                    let documented = op["parameters"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| p["name"] == name && p["in"] == "path")
                    });
                    assert!(documented, "{method} {path}: path parameter {name}");
                }
            }
        }
        let undescribed: Vec<_> = routes.difference(&described).collect();
        let unrouted: Vec<_> = described.difference(&routes).collect();
        assert!(
            undescribed.is_empty(),
            "routes not described: {undescribed:?}"
        );
        assert!(
            unrouted.is_empty(),
            "described but not routed: {unrouted:?}"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {r}"));
            assert!(schemas.contains_key(name), "dangling reference {r}");
        }
        for name in [
            "Job",
            "JobSpec",
            "ErrorBody",
            "LogEvent",
            "EndEvent",
            "Stats",
        ] {
            assert!(schemas.contains_key(name), "schema {name} missing");
        }
    }

    fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v.as_str()) {
                        ("$ref", Some(r)) => out.push(r.to_string()),
                        _ => collect_refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| collect_refs(i, out)),
            _ => {}
        }
    }
}
