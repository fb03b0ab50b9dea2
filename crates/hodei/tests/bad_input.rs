//! Bad input over gRPC (HWP) and HTTP (`/api/v1`): each gets the right status
//! with a message naming the problem, the server keeps serving, and a job
//! submitted before is still intact. No agent is needed: jobs stay queued.
//!
//! Each test checks a table of cases and reports every mismatch at once, so
//! one wrong answer does not hide the next.

mod common;

use std::fmt::Debug;

use common::*;
use hodei_core::api::{ErrorBody, SubmitRequest};
use hodei_core::{Job, JobState};
use hwp_proto::pb;
use hwp_proto::pb::worker_service_client::WorkerServiceClient;
use reqwest::StatusCode;
use tonic::{Code, Status};

/// Mismatches collected over one test; `finish` fails with all of them.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn fail(&mut self, what: &str, problem: String) {
        let line = format!("{what}: {problem}");
        eprintln!("MISMATCH {line}");
        self.0.push(line);
    }

    /// A gRPC call must fail with `code` and a message mentioning `words`.
    fn status<T: Debug>(
        &mut self,
        what: &str,
        result: Result<T, Status>,
        codes: &[Code],
        words: &[&str],
    ) {
        match result {
            Ok(v) => self.fail(what, format!("expected {codes:?}, got success {v:?}")),
            Err(s) => {
                if !codes.contains(&s.code()) {
                    self.fail(
                        what,
                        format!("expected {codes:?}, got {:?} ({:?})", s.code(), s.message()),
                    );
                }
                for w in words {
                    if !s.message().contains(w) {
                        self.fail(
                            what,
                            format!("message {:?} does not mention {w:?}", s.message()),
                        );
                    }
                }
            }
        }
    }

    #[track_caller]
    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} check(s) failed:\n  - {}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

// ---------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------

async fn hwp(server: &ServerProc) -> WorkerServiceClient<Authed> {
    hwp_client(&server.url).await
}

fn assign(job_id: &str, command: &[&str]) -> pb::AssignJobRequest {
    pb::AssignJobRequest {
        job_id: job_id.to_string(),
        name: String::new(),
        image: String::new(),
        command: command.iter().map(|s| s.to_string()).collect(),
        spec: None,
    }
}

fn log_entry(job_id: &str, data: &str) -> pb::LogEntry {
    pb::LogEntry {
        job_id: job_id.to_string(),
        data: data.to_string(),
        ..Default::default()
    }
}

const KEEPER_CMD: &[&str] = &["sh", "-c", "echo keep"];
const KEEPER_LOG: &[u8] = b"kept log\n";

/// A queued job with some log, made before the bad input.
async fn grpc_keeper(server: &ServerProc, hwp: &mut WorkerServiceClient<Authed>) -> Job {
    let accepted = hwp
        .assign_job(assign("keeper", KEEPER_CMD))
        .await
        .expect("submit the keeper job")
        .into_inner();
    assert!(accepted.created);
    hwp.stream_logs(tokio_stream::iter(vec![log_entry(
        "keeper",
        std::str::from_utf8(KEEPER_LOG).unwrap(),
    )]))
    .await
    .expect("keeper log");
    server.client().job("keeper").await.expect("keeper job")
}

/// The server still answers a normal gRPC request and the keeper job (and
/// its log) is unchanged; `jobs` is how many jobs should exist in all.
async fn grpc_still_serving(server: &ServerProc, keeper: &Job, jobs: usize) {
    let mut hwp = hwp(server).await;
    let ok = hwp
        .assign_job(assign("after-bad-input", &["true"]))
        .await
        .expect("a normal AssignJob after bad input")
        .into_inner();
    assert!(ok.created);
    let client = server.client();
    assert_eq!(&client.job("keeper").await.expect("keeper"), keeper);
    let log = client.logs("keeper", None).await.expect("keeper log");
    assert_eq!(&log[..], KEEPER_LOG);
    let list = client.jobs(None, 1000, None).await.expect("list jobs");
    let ids: Vec<_> = list.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(list.jobs.len(), jobs + 1, "jobs after bad input: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_assign_job_refuses_bad_specs_and_ids() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let mut hwp = hwp(&server).await;
    let keeper = grpc_keeper(&server, &mut hwp).await;
    let mut checks = Checks::default();
    let invalid = [Code::InvalidArgument];

    let r = hwp.assign_job(assign("no-command", &[])).await;
    checks.status("empty command", r, &invalid, &["command"]);
    let r = hwp.assign_job(assign("empty-program", &[""])).await;
    checks.status("empty program", r, &invalid, &["command"]);
    for id in ["a b", "../x", "a/b", "x\0y"] {
        let r = hwp.assign_job(assign(id, &["true"])).await;
        checks.status(&format!("job_id {id:?}"), r, &invalid, &["job_id"]);
    }
    let long = "x".repeat(10 * 1024);
    let r = hwp.assign_job(assign(&long, &["true"])).await;
    checks.status("10 KB job_id", r, &invalid, &["job_id", "10240"]);
    let r = hwp
        .assign_job(assign("keeper", &["sh", "-c", "echo other"]))
        .await;
    checks.status(
        "same id, other command",
        r,
        &[Code::AlreadyExists],
        &["keeper"],
    );
    let mut other_labels = assign("keeper", KEEPER_CMD);
    other_labels.spec = Some(pb::JobSpecExt {
        labels: vec!["gpu".into()],
        ..Default::default()
    });
    let r = hwp.assign_job(other_labels).await;
    checks.status(
        "same id, other labels",
        r,
        &[Code::AlreadyExists],
        &["keeper"],
    );
    let mut bad_env = assign("bad-env", &["true"]);
    bad_env.spec = Some(pb::JobSpecExt {
        env: [("A=B".to_string(), "x".to_string())].into(),
        ..Default::default()
    });
    let r = hwp.assign_job(bad_env).await;
    checks.status("env name with '='", r, &invalid, &["env"]);

    // Same id and same spec is not an error: the same job comes back.
    match hwp.assign_job(assign("keeper", KEEPER_CMD)).await {
        Ok(r) => {
            let r = r.into_inner();
            if r.job_id != "keeper" || r.created {
                checks.fail("same id, same spec", format!("got {r:?}"));
            }
        }
        Err(s) => checks.fail("same id, same spec", format!("refused: {s:?}")),
    }

    grpc_still_serving(&server, &keeper, 1).await;
    checks.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unknown_jobs_and_bad_sessions_are_refused() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let mut hwp = hwp(&server).await;
    let keeper = grpc_keeper(&server, &mut hwp).await;
    let mut checks = Checks::default();
    let invalid = [Code::InvalidArgument];

    // Unknown jobs.
    let r = hwp
        .stream_logs(tokio_stream::iter(vec![log_entry("ghost", "boo\n")]))
        .await;
    checks.status("StreamLogs, unknown job", r, &[Code::NotFound], &["ghost"]);
    let r = hwp
        .cancel_job(pb::CancelJobRequest {
            job_id: "ghost".into(),
            reason: String::new(),
        })
        .await;
    checks.status("CancelJob, unknown job", r, &[Code::NotFound], &["ghost"]);
    // Bad ids there too.
    let r = hwp
        .stream_logs(tokio_stream::iter(vec![log_entry("../x", "boo\n")]))
        .await;
    checks.status("StreamLogs, bad job_id", r, &invalid, &["job_id"]);
    let r = hwp
        .cancel_job(pb::CancelJobRequest {
            job_id: "x".repeat(10 * 1024),
            reason: String::new(),
        })
        .await;
    checks.status("CancelJob, 10 KB job_id", r, &invalid, &["job_id"]);
    let mut bad_stream = log_entry("keeper", "x");
    bad_stream.stream = 7;
    let r = hwp.stream_logs(tokio_stream::iter(vec![bad_stream])).await;
    checks.status("StreamLogs, unknown stream", r, &invalid, &["stream"]);

    // Registration without an id.
    let r = hwp
        .register_worker(pb::WorkerRegistration {
            worker_id: String::new(),
            ..Default::default()
        })
        .await;
    checks.status(
        "RegisterWorker, empty worker_id",
        r,
        &invalid,
        &["worker_id"],
    );
    let r = hwp
        .register_worker(pb::WorkerRegistration {
            worker_id: "w".into(),
            capabilities: vec!["has space".into()],
            ..Default::default()
        })
        .await;
    checks.status(
        "RegisterWorker, bad capability",
        r,
        &invalid,
        &["capabilities"],
    );

    // A session must open with Hello.
    let heartbeat = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat::default())),
    };
    let r = attach(&mut hwp, vec![heartbeat]).await;
    checks.status("Attach, Heartbeat first", r, &invalid, &["Hello"]);
    let r = attach(&mut hwp, vec![]).await;
    checks.status("Attach, no message", r, &invalid, &["Hello"]);
    let no_id = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello::default())),
    };
    let r = attach(&mut hwp, vec![no_id]).await;
    checks.status(
        "Attach, Hello without worker_id",
        r,
        &invalid,
        &["worker_id"],
    );

    // Nothing was cancelled or registered by the refused calls.
    let workers = server.client().workers().await.expect("workers");
    assert!(workers.is_empty(), "refused calls registered {workers:?}");
    grpc_still_serving(&server, &keeper, 1).await;
    checks.finish();
}

/// Opens an Attach session with `messages` and returns the first thing the
/// server says (a status either for the call or on the response stream).
async fn attach(
    hwp: &mut WorkerServiceClient<Authed>,
    messages: Vec<pb::AgentMessage>,
) -> Result<Option<pb::ServerMessage>, Status> {
    let response = hwp.attach(tokio_stream::iter(messages)).await?;
    response.into_inner().message().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_oversized_log_entry_is_refused_and_the_server_survives() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let mut hwp = hwp(&server).await;
    let keeper = grpc_keeper(&server, &mut hwp).await;
    let mut checks = Checks::default();

    // 10 MB in one message: over the 4 MiB log entry limit.
    let big = pb::LogEntry {
        job_id: "keeper".into(),
        bytes: vec![b'x'; 10 * 1000 * 1000].into(),
        ..Default::default()
    };
    let r = hwp.stream_logs(tokio_stream::iter(vec![big])).await;
    checks.status(
        "StreamLogs, 10 MB entry",
        r,
        &[Code::ResourceExhausted],
        &["too large", "10000000"],
    );
    let big = pb::AssignJobRequest {
        job_id: "big".into(),
        command: vec!["echo".into(), "y".repeat(10 * 1000 * 1000)],
        ..Default::default()
    };
    let r = hwp.assign_job(big).await;
    checks.status(
        "AssignJob, 10 MB command",
        r,
        &[Code::InvalidArgument],
        &["command"],
    );

    // A fresh connection and the old one both still work.
    grpc_still_serving(&server, &keeper, 1).await;
    hwp.cancel_job(pb::CancelJobRequest {
        job_id: "after-bad-input".into(),
        reason: String::new(),
    })
    .await
    .expect("the first connection still serves");
    checks.finish();
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// One bad HTTP request and what the answer must be.
struct Case {
    what: &'static str,
    method: reqwest::Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
    field: Option<&'static str>,
    mentions: &'static [&'static str],
}

impl Case {
    fn get(what: &'static str, path: impl Into<String>) -> Case {
        Case {
            what,
            method: reqwest::Method::GET,
            path: path.into(),
            content_type: None,
            body: Vec::new(),
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            field: None,
            mentions: &[],
        }
    }

    fn post(what: &'static str, path: impl Into<String>, body: impl Into<Vec<u8>>) -> Case {
        Case {
            method: reqwest::Method::POST,
            content_type: Some("application/json"),
            body: body.into(),
            ..Case::get(what, path)
        }
    }

    fn submit(what: &'static str, body: impl Into<Vec<u8>>) -> Case {
        Case::post(what, "/api/v1/jobs", body)
    }

    fn expect(mut self, status: StatusCode, code: &'static str) -> Case {
        self.status = status;
        self.code = code;
        self
    }

    fn invalid(self, field: Option<&'static str>, mentions: &'static [&'static str]) -> Case {
        Case {
            field,
            mentions,
            ..self.expect(StatusCode::BAD_REQUEST, "invalid_argument")
        }
    }

    fn mentioning(mut self, mentions: &'static [&'static str]) -> Case {
        self.mentions = mentions;
        self
    }

    async fn check(&self, http: &reqwest::Client, base: &str, checks: &mut Checks) {
        let mut req = http.request(self.method.clone(), format!("{base}{}", self.path));
        if let Some(ct) = self.content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if !self.body.is_empty() {
            req = req.body(self.body.clone());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return checks.fail(self.what, format!("no response: {e:?}")),
        };
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return checks.fail(self.what, format!("body not read: {e:?}")),
        };
        let text = String::from_utf8_lossy(&body);
        if status != self.status {
            checks.fail(
                self.what,
                format!("expected HTTP {}, got {status}: {text}", self.status),
            );
        }
        if !ctype.starts_with("application/json") {
            checks.fail(
                self.what,
                format!("content type {ctype:?} is not JSON: {text}"),
            );
        }
        let err: ErrorBody = match serde_json::from_slice(&body) {
            Ok(e) => e,
            Err(e) => {
                return checks.fail(
                    self.what,
                    format!("body is not {{code, message}} ({e}): {text}"),
                );
            }
        };
        if err.code != self.code {
            checks.fail(
                self.what,
                format!("expected code {:?}, got {err:?}", self.code),
            );
        }
        if let Some(field) = self.field
            && err.field.as_deref() != Some(field)
        {
            checks.fail(self.what, format!("expected field {field:?}, got {err:?}"));
        }
        for w in self.mentions {
            if !err.message.contains(w) {
                checks.fail(
                    self.what,
                    format!("message does not mention {w:?}: {err:?}"),
                );
            }
        }
    }
}

/// A queued job made through HTTP before the bad input.
async fn http_keeper(server: &ServerProc) -> Job {
    let resp = server
        .client()
        .submit(&SubmitRequest {
            id: Some("keeper".into()),
            command: KEEPER_CMD.iter().map(|s| s.to_string()).collect(),
            labels: vec!["nobody-has-this".into()],
            ..Default::default()
        })
        .await
        .expect("submit the keeper job");
    assert!(resp.created);
    assert_eq!(resp.job.state, JobState::Queued);
    resp.job
}

/// A normal submission still works and the keeper is unchanged; `jobs` is
/// how many jobs should exist before that submission.
async fn http_still_serving(server: &ServerProc, keeper: &Job, jobs: usize) {
    let client = server.client();
    let resp = client
        .submit(&SubmitRequest {
            id: Some("after-bad-input".into()),
            command: vec!["true".into()],
            ..Default::default()
        })
        .await
        .expect("a normal submission after bad input");
    assert!(resp.created);
    assert_eq!(&client.job("keeper").await.expect("keeper"), keeper);
    let list = client.jobs(None, 1000, None).await.expect("list jobs");
    let ids: Vec<_> = list.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(list.jobs.len(), jobs + 1, "jobs after bad input: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_submissions_are_refused_with_json_errors() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let keeper = http_keeper(&server).await;
    let http = http();
    let long_id = "x".repeat(10 * 1024);
    let oversized = format!(
        r#"{{"command":["echo","{}"]}}"#,
        "y".repeat(4 * 1024 * 1024 + 1)
    );

    let cases = vec![
        Case::submit("malformed JSON", r#"{"command": ["true""#).invalid(None, &[]),
        Case::submit("not an object", "[1, 2]").invalid(None, &[]),
        Case::submit("unknown field", r#"{"command":["true"],"bogus":1}"#)
            .invalid(None, &["bogus"]),
        Case::submit("missing command", r#"{"name":"x"}"#).invalid(None, &["command"]),
        Case::submit("command of the wrong type", r#"{"command":"true"}"#)
            .invalid(None, &["command"]),
        Case::submit("empty command", r#"{"command":[]}"#).invalid(Some("command"), &[]),
        Case::submit("empty program", r#"{"command":[""]}"#).invalid(Some("command"), &[]),
        Case::submit("job id with a space", r#"{"id":"a b","command":["true"]}"#)
            .invalid(Some("job_id"), &["job_id"]),
        Case::submit("job id with a path", r#"{"id":"../x","command":["true"]}"#)
            .invalid(Some("job_id"), &["job_id"]),
        Case::submit("empty job id", r#"{"id":"","command":["true"]}"#)
            .invalid(Some("job_id"), &["job_id"]),
        Case::submit(
            "10 KB job id",
            format!(r#"{{"id":"{long_id}","command":["true"]}}"#),
        )
        .invalid(Some("job_id"), &["job_id", "10240"]),
        Case::submit("zero timeout", r#"{"command":["true"],"timeout_ms":0}"#)
            .invalid(Some("timeout_ms"), &["timeout_ms"]),
        Case::submit(
            "bad label",
            r#"{"command":["true"],"labels":["has space"]}"#,
        )
        .invalid(Some("labels"), &["labels"]),
        Case::submit("body over 4 MiB", oversized)
            .expect(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        Case {
            content_type: Some("text/plain"),
            ..Case::submit("wrong content type", r#"{"command":["true"]}"#)
        }
        .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        Case {
            content_type: None,
            ..Case::submit("no content type", r#"{"command":["true"]}"#)
        }
        .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        Case::submit(
            "same id, other command",
            r#"{"id":"keeper","command":["sh","-c","echo other"],"labels":["nobody-has-this"]}"#,
        )
        .expect(StatusCode::CONFLICT, "already_exists")
        .mentioning(&["keeper"]),
        Case::submit(
            "same id, other labels",
            r#"{"id":"keeper","command":["sh","-c","echo keep"]}"#,
        )
        .expect(StatusCode::CONFLICT, "already_exists")
        .mentioning(&["keeper"]),
    ];
    let mut checks = Checks::default();
    for case in &cases {
        case.check(&http, &server.url, &mut checks).await;
    }

    // The same id and spec again is not an error: 200, not created.
    let again = server
        .client()
        .submit(&SubmitRequest {
            id: Some("keeper".into()),
            command: KEEPER_CMD.iter().map(|s| s.to_string()).collect(),
            labels: vec!["nobody-has-this".into()],
            ..Default::default()
        })
        .await
        .expect("same id and spec");
    assert!(!again.created);
    assert_eq!(again.job, keeper);
    http_still_serving(&server, &keeper, 1).await;
    checks.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_reads_and_unknown_jobs_are_refused_with_json_errors() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let keeper = http_keeper(&server).await;
    let http = http();
    let long_id = "x".repeat(10 * 1024);

    let cases = vec![
        Case::get("get unknown job", "/api/v1/jobs/ghost").mentioning(&["ghost"]),
        Case::post("cancel unknown job", "/api/v1/jobs/ghost/cancel", "").mentioning(&["ghost"]),
        Case::get("logs of unknown job", "/api/v1/jobs/ghost/logs").mentioning(&["ghost"]),
        Case::get("follow unknown job", "/api/v1/jobs/ghost/logs/follow").mentioning(&["ghost"]),
        Case::get("get a bad job id", "/api/v1/jobs/a%20b").invalid(Some("job_id"), &["job_id"]),
        Case::get("get a 10 KB job id", format!("/api/v1/jobs/{long_id}"))
            .invalid(Some("job_id"), &["job_id"]),
        Case::post("cancel a bad job id", "/api/v1/jobs/a%20b/cancel", "")
            .invalid(Some("job_id"), &["job_id"]),
        Case::get("list, unknown state", "/api/v1/jobs?state=bogus")
            .invalid(Some("state"), &["bogus"]),
        Case::get("list, limit 0", "/api/v1/jobs?limit=0").invalid(Some("limit"), &[]),
        Case::get("list, limit too big", "/api/v1/jobs?limit=1001").invalid(Some("limit"), &[]),
        Case::get("list, limit not a number", "/api/v1/jobs?limit=ten").invalid(None, &["limit"]),
        Case::get("list, bad cursor", "/api/v1/jobs?cursor=abc").invalid(Some("cursor"), &["abc"]),
        Case::get("list, unknown parameter", "/api/v1/jobs?bogus=1").invalid(None, &["bogus"]),
        Case::get(
            "logs, unknown stream",
            "/api/v1/jobs/keeper/logs?stream=stdin",
        )
        .invalid(Some("stream"), &["stdin"]),
        Case::get(
            "logs, unknown parameter",
            "/api/v1/jobs/keeper/logs?bogus=1",
        )
        .invalid(None, &["bogus"]),
        Case::get("unknown path", "/api/v1/nope"),
        Case::get("unknown path outside the API", "/nope"),
        Case::get("unknown path under a job", "/api/v1/jobs/keeper/nope"),
    ];
    let mut checks = Checks::default();
    for case in &cases {
        case.check(&http, &server.url, &mut checks).await;
    }
    http_still_serving(&server, &keeper, 1).await;
    checks.finish();
}
