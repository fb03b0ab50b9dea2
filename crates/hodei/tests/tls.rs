//! TLS and mTLS end to end, with real `hodei` processes on loopback:
//!
//! - `hodei certs` makes a CA, a server and an agent certificate; a server
//!   with TLS and mTLS, a real agent with its certificate and
//!   `hodei run -- …` over https work, exit code and output included;
//! - a client certificate from another CA, an expired one, and none at all
//!   where one is required are each refused, the server log says why, and
//!   the refused peer learns nothing and gets no work;
//! - in `all` mode a connection without a certificate fails its handshake.

mod common;
#[path = "tls/support.rs"]
mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime};

use common::{AgentProc, hodei, sh_job, tempdir, wait_for, wait_workers_ready};
use hodei_core::JobState;
use hwp_proto::pb;
use hwp_proto::pb::worker_service_client::WorkerServiceClient;
use support::{LoggedServer, TestCa};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn run_hodei(args: &[&str]) -> Output {
    hodei()
        .args(args)
        .env("HODEI_LOG", "warn")
        .env_remove("HODEI_SERVER")
        .env_remove("HODEI_TLS_CA")
        .output()
        .expect("run hodei")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn certs_writes_a_ca_a_server_and_agent_certificates_with_private_keys() {
    let dir = tempdir();
    let certs = dir.path().join("certs");
    let out = run_hodei(&[
        "certs",
        "init",
        "--dir",
        path(&certs),
        "--san",
        "hodei.test",
    ]);
    assert!(out.status.success(), "{out:?}");
    for key in ["ca-key.pem", "server-key.pem"] {
        assert_eq!(mode(&certs.join(key)), 0o600, "{key}");
    }
    for cert in ["ca.pem", "server.pem"] {
        let text = std::fs::read_to_string(certs.join(cert)).expect("cert");
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    }
    assert_eq!(mode(&certs), 0o700);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hodei.test"), "{stdout}");

    let out = run_hodei(&["certs", "agent", "build-7", "--dir", path(&certs)]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&certs.join("agent-build-7-key.pem")), 0o600);
    assert!(certs.join("agent-build-7.pem").is_file());

    // Nothing is replaced without --force, and a refusal says so.
    let before = std::fs::read(certs.join("ca-key.pem")).expect("ca key");
    let out = run_hodei(&["certs", "init", "--dir", path(&certs)]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        std::fs::read(certs.join("ca-key.pem")).expect("ca key"),
        before
    );
    // A name that is no worker id is refused before anything is written.
    let out = run_hodei(&["certs", "agent", "../evil", "--dir", path(&certs)]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker_id"));
    // Without a CA there is nothing to sign with.
    let out = run_hodei(&[
        "certs",
        "agent",
        "w",
        "--dir",
        path(&dir.path().join("none")),
    ]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("hodei certs init"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_hodei_certs_runs_a_job_end_to_end() {
    let dir = tempdir();
    let certs = dir.path().join("certs");
    let c = |f: &str| path(&certs.join(f)).to_string();
    assert!(
        run_hodei(&["certs", "init", "--dir", path(&certs)])
            .status
            .success()
    );
    assert!(
        run_hodei(&["certs", "agent", "tls-agent", "--dir", path(&certs)])
            .status
            .success()
    );
    let server = LoggedServer::start(
        dir.path(),
        &[
            "--tls-cert",
            &c("server.pem"),
            "--tls-key",
            &c("server-key.pem"),
            "--tls-client-ca",
            &c("ca.pem"),
        ],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let _agent = AgentProc::start(
        &server.url,
        "tls-agent",
        &dir.path().join("work"),
        &[
            "--tls-ca",
            &c("ca.pem"),
            "--tls-cert",
            &c("agent-tls-agent.pem"),
            "--tls-key",
            &c("agent-tls-agent-key.pem"),
        ],
    );
    // Users reach the API over https without a client certificate.
    let client = server.client(&certs.join("ca.pem"), None);
    wait_workers_ready(&client, 1).await;

    let run = |script: &str| {
        hodei()
            .args([
                "run",
                "--server",
                &server.url,
                "--tls-ca",
                &c("ca.pem"),
                "--",
            ])
            .args(["sh", "-c", script])
            .env("HODEI_LOG", "warn")
            .output()
            .expect("hodei run")
    };
    let out = run("echo hi");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let out = run("echo out; echo err >&2; exit 3");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));

    // The same URL without trusting the CA is refused by the client, which
    // says why; plain http on the TLS port gets nothing.
    let out = hodei()
        .args(["jobs", "--server", &server.url])
        .env_remove("HODEI_TLS_CA")
        .output()
        .expect("hodei jobs");
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{out:?}"
    );
    let plain = common::Client::new(&format!("http://{}", server.addr())).expect("client");
    assert!(plain.workers().await.is_err());
}

/// Submits a job, which must stay queued while only refused agents try.
async fn queued_job(client: &common::Client) -> String {
    client
        .submit(&sh_job("waits-for-a-good-agent", "echo done"))
        .await
        .expect("submit")
        .job
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused_logged_and_get_nothing() {
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "ca");
    let rogue = TestCa::new(dir.path(), "rogue-ca");
    let server_cert = ca.server("server");
    let server = LoggedServer::start(
        dir.path(),
        &[
            "--tls-cert",
            server_cert.cert(),
            "--tls-key",
            server_cert.key(),
            "--tls-client-ca",
            ca.cert(),
            "--tls-client-auth",
            "workers",
        ],
    );
    let client = server.client(&ca.cert, None);
    let job = queued_job(&client).await;
    let agent = |name: &str, extra: &[&str]| {
        let mut args = vec!["--tls-ca", ca.cert()];
        args.extend_from_slice(extra);
        AgentProc::start(&server.url, name, &dir.path().join(name), &args)
    };

    // 1. A certificate from another CA.
    let wrong = rogue.client("wrong-ca");
    let _wrong = agent(
        "wrong-ca",
        &["--tls-cert", wrong.cert(), "--tls-key", wrong.key()],
    );
    let line = server
        .wait_log(&["TLS handshake refused", "UnknownIssuer", "127.0.0.1:"])
        .await;
    assert!(line.contains("WARN"), "{line}");

    // 2. An expired certificate from the right CA.
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expired = ca.client_valid("expired", now - 10 * day, now - day);
    let _expired = agent(
        "expired",
        &["--tls-cert", expired.cert(), "--tls-key", expired.key()],
    );
    let line = server
        .wait_log(&["TLS handshake refused", "certificate expired", "127.0.0.1:"])
        .await;
    assert!(line.contains("WARN"), "{line}");

    // 3. No certificate at all: TLS is fine, HWP is not.
    let _anonymous = agent("anonymous", &[]);
    let line = server
        .wait_log(&[
            "gRPC call refused",
            "no client certificate",
            "/hwp.WorkerService/Attach",
        ])
        .await;
    assert!(
        line.contains("WARN") && line.contains("127.0.0.1:"),
        "{line}"
    );

    // The refused peers got no work and are not workers; the answer to an
    // HWP call without a certificate (even with a valid token) names the
    // rule and nothing else.
    let channel = Endpoint::from_shared(server.url.clone())
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(&ca.cert).expect("ca"))),
        )
        .expect("tls")
        .connect()
        .await
        .expect("TLS without a client certificate is allowed");
    let status = WorkerServiceClient::with_interceptor(
        channel,
        common::Bearer(common::admin_token().to_string()),
    )
    .register_worker(pb::WorkerRegistration {
        worker_id: "anonymous-seed".into(),
        ..Default::default()
    })
    .await
    .expect_err("RegisterWorker without a certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "a client certificate issued by the server's client CA is required (mTLS)"
    );
    let workers = client.workers().await.expect("workers");
    assert!(
        workers.is_empty(),
        "refused agents became workers: {workers:?}"
    );
    assert_eq!(client.job(&job).await.expect("job").state, JobState::Queued);

    // The server kept serving: a good agent attaches and runs the job.
    let good = ca.client("good");
    let _good = agent(
        "good",
        &["--tls-cert", good.cert(), "--tls-key", good.key()],
    );
    wait_for(Duration::from_secs(20), "the job to succeed", || async {
        let state = client.job(&job).await.ok()?.state;
        (state == JobState::Succeeded).then_some(())
    })
    .await;
    let workers = client.workers().await.expect("workers");
    let names: Vec<&str> = workers.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(names, ["good"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_every_connection_without_a_certificate() {
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "ca");
    let server_cert = ca.server("server");
    let server = LoggedServer::start(
        dir.path(),
        &[
            "--tls-cert",
            server_cert.cert(),
            "--tls-key",
            server_cert.key(),
            "--tls-client-ca",
            ca.cert(),
            "--tls-client-auth",
            "all",
        ],
    );
    let anonymous = server.client(&ca.cert, None);
    let err = anonymous
        .workers()
        .await
        .expect_err("no client certificate");
    assert!(
        matches!(err, hodei_client::ClientError::Unreachable { .. }),
        "{err}"
    );
    let line = server
        .wait_log(&["TLS handshake refused", "peer sent no certificates"])
        .await;
    assert!(
        line.contains("WARN") && line.contains("127.0.0.1:"),
        "{line}"
    );

    // With a certificate the TLS layer lets the CLI and agents in (what
    // they may do is then up to authentication: the CLI sends its token).
    let user = ca.client("alice");
    let client = server.client(&ca.cert, Some(&user));
    assert!(client.workers().await.expect("workers").is_empty());
    let cert_only = server.client(&ca.cert, Some(&user)).with_token(None);
    match cert_only.workers().await {
        Ok(_) | Err(hodei_client::ClientError::Api { .. }) => {}
        Err(e) => panic!("the server did not answer a verified client: {e}"),
    }
    let out = hodei()
        .args(["workers", "--server", &server.url, "--tls-ca", ca.cert()])
        .args(["--tls-cert", user.cert(), "--tls-key", user.key()])
        .output()
        .expect("hodei workers");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let agent_cert = ca.client("strict-agent");
    let _agent = AgentProc::start(
        &server.url,
        "strict-agent",
        &dir.path().join("work"),
        &[
            "--tls-ca",
            ca.cert(),
            "--tls-cert",
            agent_cert.cert(),
            "--tls-key",
            agent_cert.key(),
        ],
    );
    wait_workers_ready(&client, 1).await;
}

#[test]
fn unusable_tls_files_stop_the_server_with_a_clear_error() {
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "ca");
    let missing = dir.path().join("missing.pem");
    let out = hodei()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--tls-cert", ca.cert(), "--tls-key", path(&missing)])
        .output()
        .expect("hodei server");
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.pem"), "{stderr}");
    // A client CA without TLS is a usage error.
    let out = hodei()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--tls-client-ca", ca.cert()])
        .output()
        .expect("hodei server");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
