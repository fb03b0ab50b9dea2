//! Tokens, worker identities and secrets shared by `hodei server` replicas
//! on one PostgreSQL database (private PostgreSQL from `pg-harness`, real
//! processes): a token created on one replica works on another at once, a
//! revocation reaches every replica, a worker id bound through one replica
//! is refused to another identity on the next, bootstrap tokens are made
//! once for all replicas, a secret set through one replica is delivered by
//! another, and a replica with another secrets key refuses to start.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use hodei_core::JobState;
use hodei_core::api::JobQuery;
use hodei_core::auth::{CreateTokenRequest, Role};
use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body;
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Starts one replica per data directory on `url`, all at once (so that
/// they race for the first start), each with `extra` flags.
async fn start_together(url: &str, dirs: &[PathBuf], extra: &[&str]) -> Vec<ServerProc> {
    let starts: Vec<_> = dirs
        .iter()
        .map(|dir| {
            let (dir, url) = (dir.clone(), url.to_string());
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            tokio::task::spawn_blocking(move || {
                let mut args = vec!["--database", url.as_str()];
                args.extend(extra.iter().map(String::as_str));
                ServerProc::start(&dir, &args)
            })
        })
        .collect();
    let mut servers = Vec::new();
    for start in starts {
        servers.push(start.await.expect("start a replica"));
    }
    servers
}

/// Creates a token through `server`; returns (id, value).
async fn token(server: &ServerProc, role: Role) -> (String, String) {
    let created = server
        .client()
        .create_token(&CreateTokenRequest {
            role: Some(role),
            name: Some(format!("replica-{role}")),
            expires_in: None,
        })
        .await
        .expect("create token");
    (created.info.id, created.token)
}

/// The status of `GET /api/v1/jobs` on `server` with `token`.
async fn list_status(server: &ServerProc, token: &str) -> StatusCode {
    http_with(token)
        .get(format!("{}/api/v1/jobs?limit=1", server.url))
        .send()
        .await
        .expect("request")
        .status()
}

/// Opens an Attach session as `worker` with `token` on `url` and waits for
/// the Welcome.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_revocations_and_worker_ids_hold_on_every_replica() {
    let url = create_db(pg_harness::shared()).await;
    let dir = tempdir();
    let dirs = [dir.path().join("a"), dir.path().join("b")];
    let servers = start_together(&url, &dirs, &[]).await;
    let (a, b) = (&servers[0], &servers[1]);

    // Both were provisioned with the same bootstrap tokens: made once.
    let tokens = b.client().tokens().await.expect("tokens on b");
    let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"bootstrap-admin") && names.contains(&"bootstrap-agent"));

    // A token made on A works on B at once.
    let (id, submit) = token(a, Role::Submit).await;
    assert_eq!(list_status(b, &submit).await, StatusCode::OK);
    let job = b
        .client_with(Some(&submit))
        .submit(&sh_job("via-b", "true"))
        .await
        .expect("submit on b with a token made on a")
        .job;
    assert_eq!(job.submitter.as_deref(), Some(id.as_str()));

    // Revoked on A: refused on A at once, and on B within moments.
    let revoked = a.client().revoke_token(&id).await.expect("revoke on a");
    assert!(revoked.revoked_at.is_some());
    assert_eq!(list_status(a, &submit).await, StatusCode::UNAUTHORIZED);
    let since = Instant::now();
    wait_for(Duration::from_secs(10), "b to refuse the token", || async {
        (list_status(b, &submit).await == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    eprintln!("revocation on a refused on b after {:?}", since.elapsed());
    let listed = wait_for(Duration::from_secs(10), "b to list it revoked", || async {
        let tokens = b.client().tokens().await.ok()?;
        tokens
            .into_iter()
            .find(|t| t.id == id && t.revoked_at.is_some())
    })
    .await;
    assert_eq!(listed.name, "replica-submit");

    // A token made on B can be revoked through A right away.
    let (id_b, read_b) = token(b, Role::Read).await;
    a.client()
        .revoke_token(&id_b)
        .await
        .expect("revoke on a a token made on b");
    wait_for(
        Duration::from_secs(10),
        "b to refuse its own token",
        || async { (list_status(b, &read_b).await == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;

    // A worker id registered through A belongs to that identity on B too.
    let (_, agent_1) = token(a, Role::Agent).await;
    let (_, agent_2) = token(b, Role::Agent).await;
    let session = attach(&a.url, &agent_1, "bound-worker")
        .await
        .expect("attach to a");
    let err = attach(&b.url, &agent_2, "bound-worker")
        .await
        .expect_err("a worker id bound to another identity, through another replica");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    drop(session);
}

/// `hodei server` with no bootstrap tokens provisioned.
fn unprovisioned(data_dir: &Path, url: &str) -> ServerProc {
    let mut cmd = hodei();
    cmd.env_remove("HODEI_BOOTSTRAP_ADMIN_TOKEN")
        .env_remove("HODEI_BOOTSTRAP_JOIN_TOKEN")
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(["--database", url])
        .env("HODEI_LOG", test_log_level())
        .stderr(Stdio::inherit());
    ServerProc::spawn(cmd, data_dir, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bootstrap_tokens_are_made_once_for_all_replicas() {
    let url = create_db(pg_harness::shared()).await;
    let dir = tempdir();
    let starts: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let (data, url) = (dir.path().join(name), url.clone());
            tokio::task::spawn_blocking(move || unprovisioned(&data, &url))
        })
        .collect();
    let mut servers = Vec::new();
    for start in starts {
        servers.push(start.await.expect("start a replica"));
    }
    // Exactly one replica made (and saved) the tokens.
    let made: Vec<&ServerProc> = servers
        .iter()
        .filter(|s| s.data_dir.join("admin.token").exists())
        .collect();
    assert_eq!(made.len(), 1, "replicas that made bootstrap tokens");
    let admin = std::fs::read_to_string(made[0].data_dir.join("admin.token")).expect("admin");
    let admin = admin.trim();
    assert!(made[0].data_dir.join("agent.token").exists());
    // Output is collected by a thread: wait until the maker's line is in.
    let printed_by = |s: &ServerProc| s.output().contains("admin token (shown once");
    wait_for(Duration::from_secs(10), "the admin token line", || {
        let seen = printed_by(made[0]);
        async move { seen.then_some(()) }
    })
    .await;
    let printed = servers.iter().filter(|s| printed_by(s)).count();
    assert_eq!(printed, 1, "replicas that printed an admin token");
    for server in &servers {
        let tokens = server
            .client_with(Some(admin))
            .tokens()
            .await
            .expect("the admin token works on every replica");
        assert_eq!(tokens.len(), 2, "{tokens:?}");
    }
}

/// Runs `hodei server` expecting it to fail at start; returns its stderr.
async fn failed_start(data_dir: &Path, args: &[&str]) -> String {
    let mut cmd = hodei();
    cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("HODEI_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("spawn hodei server");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(!status.success(), "the server was expected to fail");
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server started (or hung) instead of failing");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        }
        err
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_set_on_one_replica_is_delivered_by_another() {
    let url = create_db(pg_harness::shared()).await;
    let dir = tempdir();
    let key = dir.path().join("secrets.key");
    std::fs::write(&key, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").expect("key");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\n")
        .expect("other key");
    for k in [&key, &other_key] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(k, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let key_arg = key.to_string_lossy().into_owned();
    let dirs = [dir.path().join("a"), dir.path().join("b")];
    let servers = start_together(&url, &dirs, &["--secrets-key-file", &key_arg]).await;
    let (a, b) = (&servers[0], &servers[1]);
    // The only agent is attached to B: B delivers every assignment.
    let _agent = AgentProc::start(&b.url, "secret-replica-w", &dir.path().join("work"), &[]);
    wait_workers_ready(&b.client(), 1).await;

    a.client()
        .set_secret("X", "value".into())
        .await
        .expect("set the secret on a");
    for (name, via) in [("submitted-on-b", b), ("submitted-on-a", a)] {
        let mut job = sh_job(name, r#"test "$X" = value"#);
        job.secrets = vec!["X".into()];
        let id = via.client().submit(&job).await.expect("submit").job.id;
        let done = wait_for(Duration::from_secs(30), "the job to finish", || async {
            let job = via.client().job(&id).await.ok()?;
            job.state.is_terminal().then_some(job)
        })
        .await;
        assert_eq!(done.state, JobState::Succeeded, "{name}: {done:?}");
        assert_eq!(done.exit_code, Some(0), "{name}");
        assert_eq!(done.worker.as_deref(), Some("secret-replica-w"));
    }
    let listed = b.client().secrets().await.expect("secrets on b");
    assert_eq!(listed.len(), 1);

    // A third replica with another key cannot open them: it refuses to
    // start, and says what to do.
    let other_arg = other_key.to_string_lossy().into_owned();
    let err = failed_start(
        &dir.path().join("c"),
        &["--database", &url, "--secrets-key-file", &other_arg],
    )
    .await;
    assert!(
        err.contains("same --secrets-key-file") && err.contains("X (key"),
        "{err}"
    );
    // With the shared key it starts and serves the same secrets.
    let c = ServerProc::start(
        &dir.path().join("c"),
        &["--database", &url, "--secrets-key-file", &key_arg],
    );
    let jobs = c
        .client()
        .list_jobs(&JobQuery::default())
        .await
        .expect("jobs on c");
    assert_eq!(jobs.jobs.len(), 2);
}
