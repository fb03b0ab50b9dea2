//! Authentication and authorization against real `hodei server` and
//! `hodei agent` processes: tokens (missing, revoked, expired, wrong role),
//! job ownership, the submission rate, workers acting only on their own
//! assignments (Attach and the seed StreamLogs), worker id binding, sessions
//! per identity, the dashboard's session cookie and CSRF check, and the
//! zero-setup first start. Every refusal is logged by the server, and no
//! token secret ever appears in its output.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use hodei_core::JobState;
use hodei_core::auth::{CreateTokenRequest, Role};
use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body;
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A server whose stdout and stderr (at info) are collected.
fn server_logged(dir: &Path, extra: &[&str]) -> ServerProc {
    let data = dir.join("data");
    let mut cmd = hodei();
    cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(extra)
        .env("HODEI_LOG", "info");
    ServerProc::spawn(cmd, &data, true)
}

/// Creates a token through the API; returns (id, value).
async fn token(server: &ServerProc, role: Role, expires: Option<&str>) -> (String, String) {
    let created = server
        .client()
        .create_token(&CreateTokenRequest {
            role: Some(role),
            name: Some(format!("test-{role}")),
            expires_in: expires.map(str::to_string),
        })
        .await
        .expect("create token");
    (created.info.id, created.token)
}

/// The secret part of a token.
fn secret(token: &str) -> &str {
    token.rsplit('_').next().expect("secret")
}

/// Waits until the server's output has a line containing `what`.
async fn logged(server: &ServerProc, what: &str) {
    wait_for(
        Duration::from_secs(10),
        &format!("the server to log {what:?}"),
        || async { server.output().contains(what).then_some(()) },
    )
    .await
}

fn assert_no_secrets(server: &ServerProc, tokens: &[&str]) {
    let out = server.output();
    for t in tokens {
        assert!(
            !out.contains(secret(t)),
            "a token secret appears in the server's output"
        );
    }
}

async fn get(http: &reqwest::Client, url: &str) -> (StatusCode, String) {
    let resp = http.get(url).send().await.expect("request");
    let status = resp.status();
    (status, resp.text().await.expect("body"))
}

fn sleeper(name: &str) -> hodei_core::api::SubmitRequest {
    sh_job(name, "echo started; sleep 30")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_roles_enforced_over_http_and_the_cli() {
    let dir = tempdir();
    let server = server_logged(dir.path(), &[]);
    let base = server.url.clone();
    let plain = reqwest::Client::new();

    // Open: health and readiness.
    assert_eq!(
        get(&plain, &format!("{base}/healthz")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&plain, &format!("{base}/readyz")).await.0,
        StatusCode::OK
    );

    // No token: 401 with a Bearer challenge and a JSON error.
    let resp = plain
        .get(format!("{base}/api/v1/jobs"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()[reqwest::header::WWW_AUTHENTICATE]
        .to_str()
        .expect("header")
        .to_string();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    let body: hodei_core::api::ErrorBody = resp.json().await.expect("JSON error");
    assert_eq!(body.code, "unauthenticated");
    assert_eq!(
        get(&plain, &format!("{base}/metrics")).await.0,
        StatusCode::UNAUTHORIZED
    );
    logged(&server, "request refused: not authenticated").await;

    // A read token reads but cannot submit: 403 naming the role.
    let (_, read) = token(&server, Role::Read, None).await;
    let reader = server.client_with(Some(&read));
    reader
        .jobs(None, 10, None)
        .await
        .expect("read with a read token");
    let err = reader
        .submit(&sleeper("nope"))
        .await
        .expect_err("a read token must not submit");
    assert!(
        matches!(&err, hodei_client::ClientError::Api { status: 403, body } if body.message.contains("submit")),
        "{err:?}"
    );
    assert!(
        reader
            .jobs(None, 10, None)
            .await
            .expect("list")
            .jobs
            .is_empty()
    );
    logged(&server, "request refused: permission denied").await;

    // A submit token cancels its own jobs, not another's.
    let (alice_id, alice) = token(&server, Role::Submit, None).await;
    let (_, bob) = token(&server, Role::Submit, None).await;
    let alice_c = server.client_with(Some(&alice));
    let bob_c = server.client_with(Some(&bob));
    let job = alice_c.submit(&sleeper("alice")).await.expect("submit").job;
    assert_eq!(job.submitter.as_deref(), Some(alice_id.as_str()));
    let err = bob_c
        .cancel(&job.id)
        .await
        .expect_err("bob must not cancel alice's job");
    assert_eq!(err.code(), Some("permission_denied"), "{err:?}");
    assert_eq!(
        server.client().job(&job.id).await.expect("job").state,
        JobState::Queued,
        "a refused cancel changed the job"
    );
    logged(&server, "cancel refused: not the submitter").await;
    let cancelled = alice_c.cancel(&job.id).await.expect("alice cancels hers");
    assert!(cancelled.cancel_requested || cancelled.state == JobState::Cancelled);
    // So do the jobs of a batch.
    let batch = alice_c
        .submit_batch(vec![sleeper("alice-batch")])
        .await
        .expect("batch");
    let err = bob_c.cancel(&batch.ids[0]).await.expect_err("not bob's");
    assert_eq!(err.code(), Some("permission_denied"), "{err:?}");
    alice_c
        .cancel(&batch.ids[0])
        .await
        .expect("alice cancels her batch job");
    // Unknown job: still 404 for a submit token.
    assert_eq!(
        bob_c.cancel("no-such-job").await.expect_err("404").code(),
        Some("not_found")
    );
    // The token list shows no secrets; submit tokens cannot list.
    let listed = server.client().tokens().await.expect("list tokens");
    assert!(listed.iter().any(|t| t.id == alice_id));
    let listed_json = serde_json::to_string(&listed).expect("json");
    assert!(!listed_json.contains(secret(&alice)));
    assert_eq!(
        alice_c.tokens().await.expect_err("admin only").code(),
        Some("permission_denied")
    );

    // Revoked: refused from then on.
    let (revoked_id, revoked) = token(&server, Role::Read, None).await;
    let revoked_c = server.client_with(Some(&revoked));
    revoked_c
        .jobs(None, 1, None)
        .await
        .expect("valid before revocation");
    server
        .client()
        .revoke_token(&revoked_id)
        .await
        .expect("revoke");
    let err = revoked_c
        .jobs(None, 1, None)
        .await
        .expect_err("a revoked token must be refused");
    assert!(
        matches!(&err, hodei_client::ClientError::Api { status: 401, body } if body.message.contains("revoked")),
        "{err:?}"
    );

    // Expired: refused once its lifetime has passed.
    let (_, expiring) = token(&server, Role::Read, Some("1s")).await;
    let expiring_c = server.client_with(Some(&expiring));
    expiring_c
        .jobs(None, 1, None)
        .await
        .expect("valid before expiry");
    let err = wait_for(Duration::from_secs(10), "the token to expire", || async {
        expiring_c.jobs(None, 1, None).await.err()
    })
    .await;
    assert!(
        matches!(&err, hodei_client::ClientError::Api { status: 401, body } if body.message.contains("expired")),
        "{err:?}"
    );
    // A wrong secret for a real id, and garbage.
    let forged = format!(
        "{}{}",
        &read[..read.len() - 1],
        if read.ends_with('a') { 'b' } else { 'a' }
    );
    assert_eq!(
        get(&http_with(&forged), &format!("{base}/api/v1/jobs"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&http_with("not-a-token"), &format!("{base}/api/v1/jobs"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // The CLI: token from HODEI_TOKEN; none at all is a clear refusal.
    let out = hodei()
        .args([
            "token", "create", "--role", "read", "--name", "cli", "--server", &base,
        ])
        .output()
        .expect("hodei token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(cli_token.starts_with("hodei_"), "{cli_token}");
    let out = hodei()
        .args(["jobs", "--server", &base])
        .env("HODEI_TOKEN", &cli_token)
        .output()
        .expect("hodei jobs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hodei()
        .args(["jobs", "--server", &base])
        .env_remove("HODEI_TOKEN")
        .current_dir(dir.path())
        .output()
        .expect("hodei jobs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Authorization"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hodei()
        .args(["token", "list", "--server", &base])
        .output()
        .expect("hodei token list");
    assert!(String::from_utf8_lossy(&out.stdout).contains("cli"));
    let cli_id = &cli_token["hodei_".len().."hodei_".len() + 12];
    let out = hodei()
        .args(["token", "revoke", cli_id, "--server", &base])
        .output()
        .expect("hodei token revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hodei()
        .args(["jobs", "--server", &base])
        .env("HODEI_TOKEN", &cli_token)
        .output()
        .expect("hodei jobs");
    assert!(
        !out.status.success(),
        "a revoked token still works in the CLI"
    );

    assert_no_secrets(
        &server,
        &[
            &read,
            &alice,
            &bob,
            &revoked,
            &expiring,
            &cli_token,
            admin_token(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_per_token_are_rate_limited() {
    let dir = tempdir();
    let server = server_logged(dir.path(), &["--submit-rate", "0.1", "--submit-burst", "2"]);
    let (_, t) = token(&server, Role::Submit, None).await;
    let c = server.client_with(Some(&t));
    c.submit(&sleeper("r1")).await.expect("first");
    c.submit(&sleeper("r2")).await.expect("second (burst)");
    let err = c.submit(&sleeper("r3")).await.expect_err("over the rate");
    assert!(
        matches!(&err, hodei_client::ClientError::Api { status: 429, body } if body.code == "rate_limited" && body.message.contains("per second")),
        "{err:?}"
    );
    // Another token has its own allowance.
    server
        .client()
        .submit(&sleeper("admin"))
        .await
        .expect("admin");
    // The seed AssignJob counts too: RESOURCE_EXHAUSTED.
    let mut seed = seed_client_with(&server.url, &t).await;
    let err = seed
        .assign_job(hwp_seed::pb::AssignJobRequest {
            job_id: "seed-r".into(),
            name: String::new(),
            image: String::new(),
            command: vec!["true".into()],
        })
        .await
        .expect_err("over the rate");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    logged(&server, "submission rate exceeded").await;
    assert_no_secrets(&server, &[&t]);
}

/// Opens an Attach session as `worker` with `token`; returns the sender of
/// agent messages and the server's stream, after its Welcome.
async fn attach(
    url: &str,
    token: &str,
    worker: &str,
) -> Result<
    (
        mpsc::Sender<pb::AgentMessage>,
        tonic::Streaming<pb::ServerMessage>,
    ),
    tonic::Status,
> {
    let mut client = hwp_client_with(url, token).await;
    let (tx, rx) = mpsc::channel(16);
    let hello = pb::Hello {
        registration: Some(pb::WorkerRegistration {
            worker_id: worker.into(),
            capabilities: vec![],
            slots: 1,
            hostname: worker.into(),
            agent_version: "test".into(),
        }),
        ..Default::default()
    };
    tx.send(pb::AgentMessage {
        body: Some(Body::Hello(hello)),
    })
    .await
    .expect("send Hello");
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.message().await? {
        Some(pb::ServerMessage {
            body: Some(pb::server_message::Body::Welcome(_)),
        }) => Ok((tx, inbound)),
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// Reads the session until it ends; returns how it ended.
async fn ending(inbound: &mut tonic::Streaming<pb::ServerMessage>) -> tonic::Status {
    let read = async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return tonic::Status::ok("ended"),
                Err(status) => return status,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the session did not end")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_acts_only_on_its_own_assignments() {
    let dir = tempdir();
    let server = server_logged(dir.path(), &["--max-sessions-per-identity", "1"]);
    let client = server.client();
    let (_, token_a) = token(&server, Role::Agent, None).await;
    let (_, token_b) = token(&server, Role::Agent, None).await;
    let (_, token_c) = token(&server, Role::Agent, None).await;
    let _victim = AgentProc::start(
        &server.url,
        "victim",
        &dir.path().join("work"),
        &["--token", &token_a],
    );
    wait_workers_ready(&client, 1).await;
    let job = client
        .submit(&sleeper("victim-job"))
        .await
        .expect("submit")
        .job;
    let running = wait_for(Duration::from_secs(20), "the job to run", || async {
        let j = client.job(&job.id).await.ok()?;
        let logs = client.logs(&job.id, None).await.ok()?;
        (j.state == JobState::Running && &logs[..] == b"started\n").then_some(j)
    })
    .await;
    assert_eq!(running.worker.as_deref(), Some("victim"));
    let attempt = running.attempt;

    // Another identity cannot take the victim's worker id.
    let err = attach(&server.url, &token_b, "victim")
        .await
        .expect_err("a worker id bound to another identity");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // Logs for another worker's job over Attach: the session ends with
    // PERMISSION_DENIED.
    let (tx, mut inbound) = attach(&server.url, &token_b, "intruder")
        .await
        .expect("attach as intruder");
    // One session per identity here: a second one is refused.
    let err = attach(&server.url, &token_b, "intruder-2")
        .await
        .expect_err("over the session limit");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    tx.send(pb::AgentMessage {
        body: Some(Body::Log(pb::LogEntry {
            job_id: job.id.clone(),
            attempt,
            stream: pb::LogStream::Stdout as i32,
            offset: 8,
            bytes: b"forged output\n".to_vec().into(),
            ..Default::default()
        })),
    })
    .await
    .expect("send log");
    let status = ending(&mut inbound).await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(&job.id), "{status:?}");
    drop(tx);

    // A result for another worker's job: the same.
    let (tx, mut inbound) = attach(&server.url, &token_c, "intruder-c")
        .await
        .expect("attach as another intruder");
    tx.send(pb::AgentMessage {
        body: Some(Body::Result(pb::JobResult {
            job_id: job.id.clone(),
            exit_code: 0,
            attempt,
            ..Default::default()
        })),
    })
    .await
    .expect("send result");
    let status = ending(&mut inbound).await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    drop(tx);

    // The seed StreamLogs: the same rule, whatever the job id says.
    let mut seed = seed_client_with(&server.url, &token_c).await;
    seed.register_worker(hwp_seed::pb::WorkerRegistration {
        worker_id: "seed-intruder".into(),
        capabilities: vec![],
    })
    .await
    .expect("RegisterWorker");
    let err = seed
        .stream_logs(tokio_stream::iter(vec![hwp_seed::pb::LogEntry {
            job_id: job.id.clone(),
            data: "forged by seed\n".into(),
        }]))
        .await
        .expect_err("seed logs for another worker's job");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // A read token cannot even reach the worker RPCs.
    let (_, read) = token(&server, Role::Read, None).await;
    let mut reader = seed_client_with(&server.url, &read).await;
    let err = reader
        .stream_logs(tokio_stream::iter(vec![hwp_seed::pb::LogEntry {
            job_id: job.id.clone(),
            data: "x".into(),
        }]))
        .await
        .expect_err("read token");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // No token at all: UNAUTHENTICATED.
    let mut anon =
        hwp_seed::pb::worker_service_client::WorkerServiceClient::connect(server.url.clone())
            .await
            .expect("connect");
    let err = anon
        .register_worker(hwp_seed::pb::WorkerRegistration {
            worker_id: "anon".into(),
            capabilities: vec![],
        })
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // The job is untouched: still running on the victim, its log intact.
    let now = client.job(&job.id).await.expect("job");
    assert_eq!(now.state, JobState::Running);
    assert_eq!(now.worker.as_deref(), Some("victim"));
    assert_eq!(now.attempt, attempt);
    assert_eq!(
        &client.logs(&job.id, None).await.expect("logs")[..],
        b"started\n"
    );

    logged(&server, "agent session refused: permission denied").await;
    logged(&server, "StreamLogs refused: permission denied").await;
    logged(&server, "worker registration refused").await;
    logged(&server, "too many sessions").await;
    client.cancel(&job.id).await.expect("cancel");
    assert_no_secrets(&server, &[&token_a, &token_b, &token_c, &read]);
}

/// Logs in to the dashboard; returns the Set-Cookie headers.
async fn sign_in(base: &str, token: &str) -> Vec<String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = http
        .post(format!("{base}/ui/login"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!("token={token}&next=%2Fui%2Fjobs"))
        .send()
        .await
        .expect("sign in");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[reqwest::header::LOCATION], "/ui/jobs");
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("cookie").to_string())
        .collect()
}

fn cookie_value<'a>(cookies: &'a [String], name: &str) -> &'a str {
    cookies
        .iter()
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie in {cookies:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_session_cookie_and_csrf() {
    let dir = tempdir();
    let server = server_logged(dir.path(), &[]);
    let base = server.url.clone();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // A page without a session sends the browser to the sign-in form.
    let resp = plain
        .get(format!("{base}/ui/jobs"))
        .header(reqwest::header::ACCEPT, "text/html")
        .send()
        .await
        .expect("page");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(
        resp.headers()[reqwest::header::LOCATION]
            .to_str()
            .expect("location")
            .starts_with("/ui/login?next=")
    );
    let (status, form) = get(&plain, &format!("{base}/ui/login")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(form.contains("name=\"token\""), "{form}");

    // A wrong token: refused, no cookie.
    let resp = plain
        .post(format!("{base}/ui/login"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body("token=hodei_xxxxxxxxxxxx_yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy")
        .send()
        .await
        .expect("bad sign in");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get(reqwest::header::SET_COOKIE).is_none());

    // Signing in sets the session cookie: HttpOnly, SameSite=Strict.
    let (_, submitter) = token(&server, Role::Submit, None).await;
    let cookies = sign_in(&base, &submitter).await;
    let session = cookies
        .iter()
        .find(|c| c.starts_with("hodei_session="))
        .expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            session.contains(flag),
            "session cookie lacks {flag}: {session}"
        );
    }
    let csrf_cookie = cookies
        .iter()
        .find(|c| c.starts_with("hodei_csrf="))
        .expect("csrf cookie");
    assert!(csrf_cookie.contains("SameSite=Strict"), "{csrf_cookie}");
    assert!(
        !session.contains(secret(&submitter)),
        "the session cookie holds the token"
    );
    let sid = cookie_value(&cookies, "hodei_session");
    let csrf = cookie_value(&cookies, "hodei_csrf");
    let jar = format!("hodei_session={sid}; hodei_csrf={csrf}");

    // The session reads pages and the API.
    let resp = plain
        .get(format!("{base}/ui/jobs"))
        .header(reqwest::header::COOKIE, &jar)
        .send()
        .await
        .expect("page");
    assert_eq!(resp.status(), StatusCode::OK);

    // A job the session's token submitted.
    let job = server
        .client_with(Some(&submitter))
        .submit(&sleeper("mine"))
        .await
        .expect("submit")
        .job;

    // A cross-site form post with the cookie but without the CSRF token: 403.
    let resp = plain
        .post(format!("{base}/api/v1/jobs/{}/cancel", job.id))
        .header(reqwest::header::COOKIE, &jar)
        .header(reqwest::header::ORIGIN, "http://evil.example")
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body("confirm=yes")
        .send()
        .await
        .expect("cross-site post");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: hodei_core::api::ErrorBody = resp.json().await.expect("JSON error");
    assert_eq!(body.code, "csrf");
    assert_eq!(
        server.client().job(&job.id).await.expect("job").state,
        JobState::Queued,
        "a forged post cancelled the job"
    );
    let resp = plain
        .post(format!("{base}/ui/logout"))
        .header(reqwest::header::COOKIE, &jar)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body("csrf=wrong")
        .send()
        .await
        .expect("forged sign-out");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    logged(&server, "CSRF check failed").await;

    // With the token (as the dashboard's script sends it): allowed.
    let resp = plain
        .post(format!("{base}/api/v1/jobs/{}/cancel", job.id))
        .header(reqwest::header::COOKIE, &jar)
        .header("x-csrf-token", csrf)
        .send()
        .await
        .expect("cancel");
    assert_eq!(resp.status(), StatusCode::OK);
    // The sign-out form with its csrf field ends the session.
    let resp = plain
        .post(format!("{base}/ui/logout"))
        .header(reqwest::header::COOKIE, &jar)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .expect("sign out");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = plain
        .get(format!("{base}/api/v1/jobs"))
        .header(reqwest::header::COOKIE, &jar)
        .send()
        .await
        .expect("after sign-out");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_no_secrets(&server, &[&submitter]);
}

/// Kills a child process on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hodei ARGS` in `dir` with no token of ours in the environment.
fn bare(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hodei"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("HODEI_TOKEN")
        .env_remove("HODEI_JOIN_TOKEN")
        .env_remove("HODEI_DATA_DIR")
        .env_remove("HODEI_SERVER")
        .env("HODEI_LOG", test_log_level());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_needs_no_setup() {
    let dir = tempdir();
    // `hodei server` with no flags about tokens, data in ./hodei-data.
    let mut cmd = bare(dir.path(), &["server", "--listen", "127.0.0.1:0"]);
    cmd.stderr(Stdio::inherit());
    let mut server = ServerProc::spawn(cmd, &dir.path().join("hodei-data"), false);
    let admin_file = dir.path().join("hodei-data").join("admin.token");
    let admin = wait_for(Duration::from_secs(10), "the admin token line", || async {
        let out = server.output();
        out.lines()
            .find_map(|l| l.strip_prefix("admin token (shown once; saved to "))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&admin_file)
            .expect("admin.token")
            .trim(),
        admin
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["admin.token", "agent.token"] {
            let mode = std::fs::metadata(dir.path().join("hodei-data").join(f))
                .expect("token file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f} mode {mode:o}");
        }
    }
    // `hodei agent` and `hodei run` in the same directory find the tokens.
    let _agent = Kill(
        bare(
            dir.path(),
            &[
                "agent",
                "--server",
                &server.url,
                "--name",
                "local",
                "--work-dir",
                "work",
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("agent"),
    );
    wait_workers_ready(&server.client_with(Some(&admin)), 1).await;
    let out = bare(
        dir.path(),
        &["run", "--server", &server.url, "--", "echo", "hi"],
    )
    .output()
    .expect("hodei run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    // A restart keeps the tokens and prints none.
    server.stop();
    let url = server.url.clone();
    drop(server);
    let addr = url.trim_start_matches("http://").to_string();
    let mut cmd = bare(dir.path(), &["server", "--listen", &addr]);
    cmd.stderr(Stdio::inherit());
    let again = ServerProc::spawn(cmd, &dir.path().join("hodei-data"), false);
    again
        .client_with(Some(&admin))
        .jobs(None, 1, None)
        .await
        .expect("the admin token survives a restart");
    assert!(
        !again.output().contains("admin token"),
        "the token was printed again"
    );
}
