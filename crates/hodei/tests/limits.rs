//! Input limits (`hodei server --max-…`): a server started with small
//! limits refuses everything over them, over HTTP and gRPC, with the right
//! code and a message naming the field and the limit; it keeps serving, and
//! a job made before is intact. Raised limits let more through. No agent is
//! needed: jobs stay queued.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use hodei_core::api::{ErrorBody, SubmitRequest};
use hodei_core::{Job, JobState};
use hwp_proto::pb;
use hwp_proto::pb::worker_service_client::WorkerServiceClient;
use reqwest::StatusCode;
use tonic::{Code, Status};

/// The small limits every test server here runs with.
const SMALL: &[&str] = &[
    "--max-grpc-message=2M",
    "--max-http-body=64K",
    "--max-job-spec=8K",
    "--max-args=8",
    "--max-arg-size=1K",
    "--max-command-size=2K",
    "--max-env=4",
    "--max-env-size=256",
];
const GRPC_LIMIT: usize = 2 << 20;
const BODY_LIMIT: usize = 64 << 10;

const KEEPER_LOG: &str = "kept log\n";

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn env(n: usize, value_len: usize) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| (format!("V{i}"), "v".repeat(value_len)))
        .collect()
}

/// An HWP client with the admin token.
async fn hwp(server: &ServerProc) -> WorkerServiceClient<Authed> {
    hwp_client(&server.url).await
}

/// A queued job with some log, made before the bad input. No worker has
/// its label, so it stays queued even while a test agent is attached.
async fn keeper(server: &ServerProc) -> Job {
    let mut hwp = hwp(server).await;
    hwp.assign_job(pb::AssignJobRequest {
        job_id: "keeper".into(),
        command: argv(&["sh", "-c", "echo keep"]),
        spec: Some(pb::JobSpecExt {
            labels: vec!["nobody-has-this".into()],
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("submit the keeper job");
    hwp.stream_logs(tokio_stream::iter(vec![pb::LogEntry {
        job_id: "keeper".into(),
        data: KEEPER_LOG.into(),
        ..Default::default()
    }]))
    .await
    .expect("keeper log");
    server.client().job("keeper").await.expect("keeper job")
}

/// The server still takes a job over both protocols, and the keeper job and
/// its log are as they were.
async fn still_serving(server: &ServerProc, keeper: &Job, tag: &str) {
    let client = server.client();
    let created = client
        .submit(&SubmitRequest {
            id: Some(format!("after-http-{tag}")),
            command: argv(&["true"]),
            ..Default::default()
        })
        .await
        .expect("a normal HTTP submission after the refusals");
    assert!(created.created);
    let accepted = hwp(server)
        .await
        .assign_job(pb::AssignJobRequest {
            job_id: format!("after-grpc-{tag}"),
            command: argv(&["true"]),
            ..Default::default()
        })
        .await
        .expect("a normal AssignJob after the refusals")
        .into_inner();
    assert!(accepted.created);
    assert_eq!(&client.job("keeper").await.expect("keeper"), keeper);
    let log = client.logs("keeper", None).await.expect("keeper log");
    assert_eq!(&log[..], KEEPER_LOG.as_bytes());
    assert_eq!(keeper.state, JobState::Queued);
}

/// POSTs `body` to `/api/v1/jobs` and checks status, code, field and words.
async fn post_refused(
    server: &ServerProc,
    what: &str,
    body: reqwest::Body,
    status: StatusCode,
    code: &str,
    field: Option<&str>,
    words: &[&str],
) {
    let resp = http()
        .post(format!("{}/api/v1/jobs", server.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
    let got = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(got, status, "{what}: {text}");
    let err: ErrorBody =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert_eq!(err.code, code, "{what}: {err:?}");
    assert_eq!(err.field.as_deref(), field, "{what}: {err:?}");
    for w in words {
        assert!(err.message.contains(w), "{what}: {err:?} lacks {w:?}");
    }
}

fn json(request: &SubmitRequest) -> reqwest::Body {
    serde_json::to_vec(request).expect("JSON").into()
}

/// The spec cases over each spec limit: (what, request, field, words).
fn spec_cases() -> Vec<(&'static str, SubmitRequest, &'static str, Vec<String>)> {
    let base = |command: Vec<String>| SubmitRequest {
        command,
        ..Default::default()
    };
    let long = "a".repeat(1000);
    vec![
        (
            "9 arguments",
            base(argv(&["echo", "1", "2", "3", "4", "5", "6", "7", "8"])),
            "command",
            vec!["9 arguments".into(), "limit is 8".into()],
        ),
        (
            "an argument of 1025 bytes",
            base(vec!["echo".into(), "b".repeat(1025)]),
            "command",
            vec!["1025 bytes".into(), "limit is 1024".into()],
        ),
        (
            "3004 bytes of arguments",
            base(vec!["echo".into(), long.clone(), long.clone(), long]),
            "command",
            vec!["3004 bytes".into(), "limit is 2048".into()],
        ),
        (
            "5 variables",
            SubmitRequest {
                env: env(5, 1),
                ..base(argv(&["true"]))
            },
            "env",
            vec!["5 variables".into(), "limit is 4".into()],
        ),
        (
            "300 bytes of environment",
            SubmitRequest {
                env: env(2, 148),
                ..base(argv(&["true"]))
            },
            "env",
            vec!["300 bytes".into(), "limit is 256".into()],
        ),
        (
            "a spec of 9 KB",
            SubmitRequest {
                labels: (0..60).map(|i| format!("{i:0>128}")).collect(),
                working_dir: Some("/w".repeat(500)),
                ..base(argv(&["true"]))
            },
            "spec",
            vec!["limit is 8192".into()],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refuses_what_is_over_each_limit() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), SMALL);
    let keeper = keeper(&server).await;

    for (what, request, field, words) in spec_cases() {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let request = SubmitRequest {
            id: Some("refused".into()),
            ..request
        };
        post_refused(
            &server,
            what,
            json(&request),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            Some(field),
            &words,
        )
        .await;
    }

    // A body over the limit: refused on its Content-Length, and (chunked,
    // no length) once that many bytes arrived.
    let big = SubmitRequest {
        id: Some("refused".into()),
        command: vec!["echo".into(), "c".repeat(BODY_LIMIT)],
        ..Default::default()
    };
    let limit = BODY_LIMIT.to_string();
    post_refused(
        &server,
        "body over the limit",
        json(&big),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
        &["request body", &limit],
    )
    .await;
    let bytes = serde_json::to_vec(&big).expect("JSON");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(4096).map(|c| Ok(c.to_vec())).collect();
    post_refused(
        &server,
        "chunked body over the limit",
        reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
        &["request body", &limit],
    )
    .await;

    // Nothing refused was stored.
    let err = server
        .client()
        .job("refused")
        .await
        .expect_err("no such job");
    assert_eq!(err.code(), Some("not_found"), "{err}");
    still_serving(&server, &keeper, "http").await;
}

/// A gRPC call must fail with `code` and a message mentioning `words`.
#[track_caller]
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code, words: &[&str]) {
    match result {
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {:?}", s.message());
            for w in words {
                assert!(
                    s.message().contains(w),
                    "{what}: {:?} lacks {w:?}",
                    s.message()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refuses_what_is_over_each_limit() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), SMALL);
    let keeper = keeper(&server).await;
    let mut hwp = hwp(&server).await;

    for (what, request, field, words) in spec_cases() {
        let mut words: Vec<&str> = words.iter().map(String::as_str).collect();
        let field = format!("invalid {field}");
        words.push(&field);
        let req = pb::AssignJobRequest {
            job_id: "refused".into(),
            name: request.name,
            image: String::new(),
            command: request.command,
            spec: Some(pb::JobSpecExt {
                env: request.env.into_iter().collect(),
                labels: request.labels,
                working_dir: request.working_dir.unwrap_or_default(),
                ..Default::default()
            }),
        };
        refused(
            what,
            hwp.assign_job(req).await,
            Code::InvalidArgument,
            &words,
        );
    }

    // Messages over the gRPC limit, on every kind of call.
    let limit = GRPC_LIMIT.to_string();
    let words = ["message too large", limit.as_str()];
    let huge = "x".repeat(GRPC_LIMIT + 1);
    let r = hwp
        .assign_job(pb::AssignJobRequest {
            job_id: "refused".into(),
            command: vec!["echo".into(), huge.clone()],
            ..Default::default()
        })
        .await;
    refused(
        "AssignJob over the limit",
        r,
        Code::ResourceExhausted,
        &words,
    );
    let r = hwp
        .register_worker(pb::WorkerRegistration {
            worker_id: "w".into(),
            capabilities: vec![huge.clone()],
            ..Default::default()
        })
        .await;
    refused(
        "RegisterWorker over the limit",
        r,
        Code::ResourceExhausted,
        &words,
    );
    let entry = |data: String| pb::LogEntry {
        job_id: "keeper".into(),
        data,
        ..Default::default()
    };
    // The first message is fine; the second is over the limit.
    let r = hwp
        .stream_logs(tokio_stream::iter(vec![
            entry("ok\n".into()),
            entry(huge.clone()),
        ]))
        .await;
    refused(
        "StreamLogs over the limit",
        r,
        Code::ResourceExhausted,
        &words,
    );

    // An agent session: Hello, then a log message over the limit ends the
    // session with the status.
    let hello = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            registration: Some(pb::WorkerRegistration {
                worker_id: "big-talker".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let log = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Log(pb::LogEntry {
            job_id: "keeper".into(),
            attempt: 1,
            bytes: huge.clone().into_bytes().into(),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello).await.expect("queue hello");
    let mut inbound = hwp
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("attach")
        .into_inner();
    let first = inbound
        .message()
        .await
        .expect("welcome")
        .expect("a message");
    assert!(
        matches!(first.body, Some(pb::server_message::Body::Welcome(_))),
        "{first:?}"
    );
    tx.send(log).await.expect("queue the big log message");
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the session ends");
    refused(
        "Attach, log message over the limit",
        end,
        Code::ResourceExhausted,
        &words,
    );
    drop(tx);

    // The keeper's log holds only the message that fit.
    let mut keeper_log = KEEPER_LOG.to_string();
    keeper_log.push_str("ok\n");
    let log = server.client().logs("keeper", None).await.expect("log");
    assert_eq!(String::from_utf8_lossy(&log), keeper_log);
    let refused_job = server.client().job("refused").await;
    assert!(
        refused_job.is_err(),
        "a refused job was stored: {refused_job:?}"
    );

    // still_serving compares the log with KEEPER_LOG: check the rest here.
    let client = server.client();
    assert_eq!(client.job("keeper").await.expect("keeper"), keeper);
    let accepted = hwp
        .assign_job(pb::AssignJobRequest {
            job_id: "after-grpc".into(),
            command: argv(&["true"]),
            ..Default::default()
        })
        .await
        .expect("the same connection still works")
        .into_inner();
    assert!(accepted.created);
    let created = client
        .submit(&SubmitRequest {
            command: argv(&["true"]),
            ..Default::default()
        })
        .await
        .expect("HTTP still works");
    assert!(created.created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raised_limits_let_more_through() {
    let dir = tempdir();
    let server = ServerProc::start(
        &dir.path().join("data"),
        &["--max-args=6000", "--max-http-body=8M"],
    );
    let keeper = keeper(&server).await;
    // 5000 arguments: over the default (4096), under the raised limit.
    let mut command = vec!["echo".to_string()];
    command.extend((0..4999).map(|i| i.to_string()));
    let created = server
        .client()
        .submit(&SubmitRequest {
            id: Some("many-args".into()),
            command: command.clone(),
            ..Default::default()
        })
        .await
        .expect("5000 arguments under --max-args=6000");
    assert_eq!(created.job.spec.command.len(), 5000);
    let accepted = hwp(&server)
        .await
        .assign_job(pb::AssignJobRequest {
            job_id: "many-args-grpc".into(),
            command,
            ..Default::default()
        })
        .await
        .expect("the same over gRPC");
    assert!(accepted.into_inner().created);
    still_serving(&server, &keeper, "raised").await;
}

#[test]
fn nonsense_limits_stop_the_server_at_start() {
    let dir = tempdir();
    for (flag, words) in [
        ("--max-grpc-message=1K", "max_grpc_message_bytes"),
        ("--max-http-body=100", "max_http_body_bytes"),
        ("--max-args=0", "--max-args"),
        ("--max-env-size=lots", "--max-env-size"),
    ] {
        let stderr = refused_start(&dir.path().join("data"), &[flag]);
        assert!(stderr.contains(words), "{flag}: {stderr}");
    }
}
