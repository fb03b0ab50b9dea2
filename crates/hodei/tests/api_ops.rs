//! Operator endpoints against a real `hodei server`: liveness, readiness,
//! Prometheus metrics, gRPC health and reflection on the same port, JSON
//! logs, and the OpenAPI document checked against what the server answers.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use hodei_core::api::{ErrorBody, SubmitRequest};
use reqwest::StatusCode;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let _agent = AgentProc::start(&server.url, "metrics-agent", &dir.path().join("w"), &[]);
    let client = server.client();
    wait_workers_ready(&client, 1).await;
    let health = reqwest::get(format!("{}/healthz", server.url))
        .await
        .expect("healthz");
    assert_eq!(health.status(), StatusCode::OK);
    client.ready().await.expect("ready");
    let job = client
        .submit(&SubmitRequest {
            command: vec!["sh".into(), "-c".into(), "echo out; echo err >&2".into()],
            ..SubmitRequest::default()
        })
        .await
        .expect("submit")
        .job;
    client.wait(&job.id).await.expect("wait");
    // One unary gRPC call, so its counter exists.
    let mut hwp = hwp_client(&server.url).await;
    let missing = hwp
        .cancel_job(hwp_proto::pb::CancelJobRequest {
            job_id: "ghost".into(),
            reason: String::new(),
        })
        .await;
    assert_eq!(
        missing.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::NotFound)
    );

    let text = client.metrics().await.expect("metrics");
    for expected in [
        "hodei_jobs{state=\"succeeded\"} 1",
        "hodei_jobs{state=\"queued\"} 0",
        "hodei_queue_depth 0",
        "hodei_jobs_submitted_total 1",
        "hodei_jobs_finished_total{state=\"succeeded\"} 1",
        "hodei_job_dispatch_latency_seconds_count 1",
        "hodei_job_run_seconds_count 1",
        "hodei_workers{state=\"ready\"} 1",
        "hodei_workers_connected 1",
        "hodei_log_bytes_received_total{stream=\"stdout\"} 4",
        "hodei_log_bytes_stored_total{stream=\"stderr\"} 4",
        "hodei_store_commit_seconds_bucket{le=\"+Inf\"}",
        "hodei_grpc_requests_total{method=\"/hwp.WorkerService/CancelJob\",status=\"NotFound\"} 1",
        "# TYPE hodei_job_dispatch_latency_seconds histogram",
    ] {
        assert!(
            text.contains(expected),
            "metrics lack {expected:?}:\n{text}"
        );
    }
    let resp = http()
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("metrics");
    let ctype = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap_or("")
        .to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection_share_the_port() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "hwp.WorkerService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health of {service:?}: {s:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.Such".into(),
        })
        .await;
    assert_eq!(
        unknown.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::NotFound)
    );

    let mut reflection = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = tokio_stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "hwp.WorkerService".into(),
        )),
    ]);
    let mut answers = reflection
        .server_reflection_info(requests)
        .await
        .expect("reflection")
        .into_inner();
    let mut services = Vec::new();
    let mut files = 0;
    while let Some(answer) = answers.next().await {
        match answer.expect("answer").message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                services = list.service.into_iter().map(|s| s.name).collect();
            }
            Some(MessageResponse::FileDescriptorResponse(fds)) => {
                files = fds.file_descriptor_proto.len();
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }
    for name in ["hwp.WorkerService", "grpc.health.v1.Health"] {
        assert!(
            services.iter().any(|s| s == name),
            "{name} not in {services:?}"
        );
    }
    assert!(files > 0, "no descriptor for hwp.WorkerService");
}

#[test]
fn json_logs_with_the_flag() {
    let dir = tempdir();
    let mut child = hodei()
        .args([
            "--log-format",
            "json",
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("HODEI_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = lines.next().expect("a log line").expect("readable");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        seen.push(v);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Fills a documented path with real ids.
fn concrete(path: &str, job: &str) -> String {
    path.replace("{id}", job)
        .replace("{name}", "NO_SUCH_SECRET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_what_the_server_answers() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let client = server.client();
    let job = client
        .submit(&SubmitRequest {
            id: Some("doc-job".into()),
            command: vec!["true".into()],
            labels: vec!["nobody-has-this".into()],
            ..SubmitRequest::default()
        })
        .await
        .expect("submit")
        .job;
    let doc = client.openapi().await.expect("document");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    for must in [
        "/api/v1/jobs",
        "/api/v1/events",
        "/api/v1/jobs/{id}/logs/follow",
        "/metrics",
        "/readyz",
        "/ui",
    ] {
        assert!(paths.contains_key(must), "{must} not described");
    }
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", admin_token()).parse().expect("header"),
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(auth)
        .build()
        .expect("client");
    let mut checked = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let url = format!("{}{}", server.url, concrete(path, &job.id));
            let req = match method.as_str() {
                "get" => http.get(&url),
                "post" if path == "/api/v1/jobs" => http.post(&url).json(&SubmitRequest {
                    command: vec!["true".into()],
                    labels: vec!["nobody-has-this".into()],
                    ..SubmitRequest::default()
                }),
                "post" => http.post(&url),
                // Without a body: the answer must still be documented.
                "put" => http.put(&url),
                "delete" => http.delete(&url),
                other => panic!("undocumented method {other}"),
            };
            let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
                .await
                .unwrap_or_else(|_| panic!("{method} {path}: no answer"))
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = resp.status().as_u16().to_string();
            let documented = op["responses"].as_object().expect("responses");
            assert!(
                documented.contains_key(&status),
                "{method} {path} answered {status}, documented {:?}",
                documented.keys().collect::<Vec<_>>()
            );
            let ctype = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if let Some(content) = documented[&status]["content"].as_object() {
                let base = ctype.split(';').next().unwrap_or("");
                assert!(
                    content.keys().any(|k| k.split(';').next() == Some(base)),
                    "{method} {path}: content type {ctype} not in {:?}",
                    content.keys().collect::<Vec<_>>()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 19, "checked only {checked} operations");

    // What is not described answers a JSON error.
    for (method, path, status, code) in [
        ("GET", "/api/v2/jobs", 404, "not_found"),
        ("DELETE", "/api/v1/jobs", 405, "method_not_allowed"),
        ("PUT", "/api/v1/jobs/doc-job", 405, "method_not_allowed"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = http
            .request(method.clone(), format!("{}{path}", server.url))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let err: ErrorBody = resp.json().await.expect("JSON error");
        assert_eq!(err.code, code, "{method} {path}");
    }
}
