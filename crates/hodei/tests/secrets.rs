//! Secrets end to end, with real `hodei server` and `hodei agent`
//! processes: a secret reaches the job's environment and nothing else; its
//! value, printed whole, byte by byte, split in two writes, base64- and
//! URL-encoded, is `[MASKED]` in the live stream, the stored log and the
//! download; it is not in the API, the dashboard, the database files or the
//! processes' logs. Also: unknown secrets are refused, the secrets API
//! never returns a value, keys rotate, and the per-job log limit truncates
//! with a marker while the job runs on.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hodei_core::JobState;
use reqwest::StatusCode;

/// Has every character base64 and URL-encoding treat specially.
const VALUE: &str = "Zx9-s3cr3t/p@ss w0rd+Q?";

/// The forms the job prints (computed here independently of the masker).
fn leaked_forms(value: &str) -> Vec<String> {
    use base64::Engine as _;
    let std = base64::engine::general_purpose::STANDARD.encode(value);
    let url_safe = base64::engine::general_purpose::URL_SAFE.encode(value);
    let url = value
        .replace('/', "%2F")
        .replace('@', "%40")
        .replace(' ', "%20")
        .replace('+', "%2B")
        .replace('?', "%3F");
    vec![value.to_string(), std, url_safe, url]
}

fn assert_clean(what: &str, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    for form in leaked_forms(VALUE) {
        assert!(
            !text.contains(&form),
            "{what} contains the secret ({form}):\n{text}"
        );
    }
    // Not even most of it.
    assert!(
        !text.contains("s3cr3t/p@ss"),
        "{what} contains part of the secret"
    );
}

/// The job: checks its environment, then prints the secret in every way.
const SCRIPT: &str = r#"
[ "$(printf %s "$APP_TOKEN" | sha256sum | cut -d' ' -f1)" = "$WANT_SHA" ] || { echo "env mismatch" >&2; exit 3; }
printf 'whole: %s\n' "$APP_TOKEN"
printf 'bytes: '
rest="$APP_TOKEN"
while [ -n "$rest" ]; do
  c="${rest%"${rest#?}"}"
  printf '%s' "$c"
  rest="${rest#?}"
  sleep 0.02
done
printf '\n'
a=$(printf %s "$APP_TOKEN" | cut -c1-9)
b=$(printf %s "$APP_TOKEN" | cut -c10-)
printf 'split: %s' "$a"; sleep 0.2; printf '%s\n' "$b"
printf 'b64: %s\n' "$(printf %s "$APP_TOKEN" | base64 -w0)"
printf 'b64url: %s\n' "$(printf %s "$APP_TOKEN" | base64 -w0 | tr '+/' '-_')"
printf 'b64inner: %s\n' "$(printf 'xy%s!tail' "$APP_TOKEN" | base64 -w0)"
printf 'url: %s\n' "$(printf %s "$APP_TOKEN" | sed -e 's|/|%2F|g' -e 's|@|%40|g' -e 's| |%20|g' -e 's|+|%2B|g' -e 's|?|%3F|g')"
printf 'stderr: %s\n' "$APP_TOKEN" >&2
"#;

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `hodei` with `args` and `stdin`, off the async runtime.
async fn hodei_cli(args: Vec<String>, stdin: Option<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = hodei()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hodei");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            std::io::Write::write_all(&mut input, text.as_bytes()).expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("hodei output")
    })
    .await
    .expect("join")
}

/// A server at debug log level whose stderr is collected.
fn debug_server(data_dir: &Path, extra: &[&str]) -> ServerProc {
    let mut cmd = hodei();
    cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("HODEI_LOG", "debug");
    ServerProc::spawn(cmd, data_dir, true)
}

/// An agent at debug log level whose stderr is collected in `log`.
fn debug_agent(url: &str, work_dir: &Path, log: Arc<Mutex<Vec<u8>>>) -> std::process::Child {
    let mut child = hodei()
        .args([
            "agent",
            "--server",
            url,
            "--name",
            "secret-agent",
            "--work-dir",
        ])
        .arg(work_dir)
        .env("HODEI_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let mut stderr = child.stderr.take().expect("agent stderr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = std::io::Read::read(&mut stderr, &mut buf) {
            if n == 0 {
                return;
            }
            if let Ok(mut log) = log.lock() {
                log.extend_from_slice(&buf[..n]);
            }
        }
    });
    child
}

#[tokio::test]
async fn a_secret_reaches_the_job_and_is_masked_everywhere_else() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let server = debug_server(&data, &[]);
    let set = hodei_cli(
        vec![
            "secret".into(),
            "set".into(),
            "APP_TOKEN".into(),
            "--server".into(),
            server.url.clone(),
        ],
        Some(format!("{VALUE}\n")),
    )
    .await;
    assert!(set.status.success(), "{set:?}");
    assert_clean("hodei secret set output", &set.stdout);

    let agent_log = Arc::new(Mutex::new(Vec::new()));
    let mut agent = debug_agent(&server.url, &dir.path().join("work"), agent_log.clone());
    let client = server.client();
    wait_workers_ready(&client, 1).await;

    let run = hodei_cli(
        vec![
            "run".into(),
            "--server".into(),
            server.url.clone(),
            "--id".into(),
            "secret-job".into(),
            "--secret".into(),
            "APP_TOKEN".into(),
            "--env".into(),
            format!("WANT_SHA={}", sha256_hex(VALUE.as_bytes())),
            "--".into(),
            "sh".into(),
            "-c".into(),
            SCRIPT.into(),
        ],
        None,
    )
    .await;
    let live = String::from_utf8_lossy(&run.stdout).into_owned();
    let live_err = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(
        run.status.code(),
        Some(0),
        "the job saw its secret:\n{live}\n{live_err}"
    );
    assert_clean("the live stream (hodei run stdout)", &run.stdout);
    assert_clean("the live stream (hodei run stderr)", &run.stderr);
    for line in [
        "whole: [MASKED]",
        "bytes: [MASKED]",
        "split: [MASKED]",
        "b64: [MASKED]",
        "b64url: [MASKED]",
        "url: [MASKED]",
    ] {
        assert!(
            live.lines().any(|l| l == line),
            "{line:?} missing from:\n{live}"
        );
    }
    let inner = live
        .lines()
        .find(|l| l.starts_with("b64inner: "))
        .expect("b64inner line");
    assert!(inner.contains("[MASKED]"), "{inner}");
    assert!(live_err.contains("stderr: [MASKED]"), "{live_err}");

    // The stored log, both streams, and the download.
    let stored = client.logs("secret-job", None).await.expect("logs");
    assert_clean("the stored log", &stored);
    assert_eq!(
        String::from_utf8_lossy(&stored).matches("[MASKED]").count(),
        8
    );
    let download = http()
        .get(format!("{}/api/v1/jobs/secret-job/logs", server.url))
        .send()
        .await
        .expect("download");
    assert_eq!(download.status(), StatusCode::OK);
    assert_clean("the download", &download.bytes().await.expect("body"));
    let follow = hodei_cli(
        vec![
            "logs".into(),
            "-f".into(),
            "secret-job".into(),
            "--server".into(),
            server.url.clone(),
        ],
        None,
    )
    .await;
    assert!(String::from_utf8_lossy(&follow.stdout).contains("whole: [MASKED]"));
    assert_clean("hodei logs -f", &follow.stdout);
    // The SSE stream itself, event by event (decoded from its base64).
    let mut chunks = Vec::new();
    client
        .follow("secret-job", Duration::from_secs(5), |event| {
            if let hodei_client::FollowEvent::Log { data, .. } = event {
                chunks.push(data);
            }
        })
        .await
        .expect("follow");
    assert!(String::from_utf8_lossy(&chunks.concat()).contains("bytes: [MASKED]"));
    assert_clean("the SSE follow stream", &chunks.concat());

    // The job's API JSON names the secret, never its value; so does the dashboard.
    let job_json = http()
        .get(format!("{}/api/v1/jobs/secret-job", server.url))
        .send()
        .await
        .expect("job")
        .text()
        .await
        .expect("body");
    assert!(job_json.contains("APP_TOKEN"), "{job_json}");
    assert_clean("the job's API JSON", job_json.as_bytes());
    let job = client.job("secret-job").await.expect("job");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.spec.secrets, vec!["APP_TOKEN".to_string()]);
    let page = http()
        .get(format!("{}/ui/jobs/secret-job", server.url))
        .send()
        .await
        .expect("dashboard");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("[MASKED]") || html.contains("secret-job"),
        "{html}"
    );
    assert_clean("the dashboard page", html.as_bytes());
    let list = http()
        .get(format!("{}/api/v1/secrets", server.url))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("body");
    assert!(list.contains("APP_TOKEN"), "{list}");
    assert_clean("the secrets list", list.as_bytes());

    // The database files, the write-ahead log included, the log files, and
    // both processes' logs.
    let _ = agent.kill();
    let _ = agent.wait();
    let mut files = 0;
    for entry in std::fs::read_dir(&data).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().contains("hodei.db") {
            files += 1;
            assert_clean(
                &path.display().to_string(),
                &std::fs::read(&path).expect("read"),
            );
        }
    }
    assert!(files >= 2, "hodei.db and its -wal");
    // Large log chunks are kept in files beside the database.
    for entry in std::fs::read_dir(data.join("logs")).expect("logs dir") {
        let path = entry.expect("entry").path();
        assert_clean(
            &path.display().to_string(),
            &std::fs::read(&path).expect("read"),
        );
    }
    let server_log = server.output();
    assert!(
        server_log.contains("DEBUG") || server_log.contains("INFO"),
        "the server logged"
    );
    assert_clean("the server's log", server_log.as_bytes());
    let agent_log = agent_log.lock().expect("agent log").clone();
    assert!(!agent_log.is_empty(), "the agent logged");
    assert_clean("the agent's log", &agent_log);
}

#[tokio::test]
async fn unknown_secrets_are_refused_and_values_never_come_back() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let url = &server.url;

    // A job naming an unknown secret: 400 naming `secrets`, over HTTP and
    // from `hodei run` (exit code 2).
    let mut job = sh_job("needs-secret", "true");
    job.secrets = vec!["MISSING_ONE".into()];
    let resp = http()
        .post(format!("{url}/api/v1/jobs"))
        .json(&job)
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: hodei_core::api::ErrorBody = resp.json().await.expect("error body");
    assert_eq!(err.field.as_deref(), Some("secrets"), "{err:?}");
    assert!(err.message.contains("MISSING_ONE"), "{err:?}");
    let run = hodei_cli(
        [
            "run",
            "--server",
            url,
            "--secret",
            "MISSING_ONE",
            "--",
            "true",
        ]
        .map(String::from)
        .to_vec(),
        None,
    )
    .await;
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(String::from_utf8_lossy(&run.stderr).contains("secrets"));

    // Bad names and values: 400 naming the field, never echoing the value.
    let put = |name: &str, body: serde_json::Value| {
        http()
            .put(format!("{url}/api/v1/secrets/{name}"))
            .json(&body)
            .send()
    };
    let resp = put("SHORT", serde_json::json!({"value": "abc"}))
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: hodei_core::api::ErrorBody = resp.json().await.expect("error body");
    assert_eq!(err.field.as_deref(), Some("value"));
    assert!(err.message.contains("at least 4"), "{err:?}");
    let resp = put("bad-name", serde_json::json!({"value": "abcdef"}))
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: hodei_core::api::ErrorBody = resp.json().await.expect("error body");
    assert_eq!(err.field.as_deref(), Some("name"));
    let short = hodei_cli(
        ["secret", "set", "SHORT", "--server", url]
            .map(String::from)
            .to_vec(),
        Some("abc\n".into()),
    )
    .await;
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 4"));

    // Set, replace, list (names and times only), delete.
    let resp = put("DB_PASSWORD", serde_json::json!({"value": "first-value"}))
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body = resp.text().await.expect("body");
    assert!(!body.contains("first-value"), "{body}");
    let resp = put("DB_PASSWORD", serde_json::json!({"value": "second-value"}))
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::OK);
    let secrets = server.client().secrets().await.expect("list");
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].name, "DB_PASSWORD");
    assert!(secrets[0].updated_at >= secrets[0].created_at);
    let listed = hodei_cli(
        ["secret", "list", "--json", "--server", url]
            .map(String::from)
            .to_vec(),
        None,
    )
    .await;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("DB_PASSWORD"), "{listed}");
    assert!(!listed.contains("value"), "{listed}");
    // Without the admin role: refused.
    let resp = reqwest::Client::new()
        .get(format!("{url}/api/v1/secrets"))
        .send()
        .await
        .expect("list");
    assert!(resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN);
    let rm = hodei_cli(
        ["secret", "rm", "DB_PASSWORD", "--server", url]
            .map(String::from)
            .to_vec(),
        None,
    )
    .await;
    assert!(rm.status.success(), "{rm:?}");
    let resp = http()
        .delete(format!("{url}/api/v1/secrets/DB_PASSWORD"))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(server.client().secrets().await.expect("list").is_empty());
}

/// Runs a job that checks `APP_TOKEN` against `value`; returns its state.
async fn run_with_secret(server: &ServerProc, id: &str, value: &str) -> JobState {
    let mut job = sh_job(
        id,
        r#"[ "$(printf %s "$APP_TOKEN" | sha256sum | cut -d' ' -f1)" = "$WANT_SHA" ]"#,
    );
    job.id = Some(id.into());
    job.secrets = vec!["APP_TOKEN".into()];
    job.env
        .insert("WANT_SHA".into(), sha256_hex(value.as_bytes()));
    let client = server.client();
    client.submit(&job).await.expect("submit");
    client.wait(id).await.expect("wait").state
}

#[tokio::test]
async fn secrets_survive_a_restart_and_a_key_rotation() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let (k1, k2) = (dir.path().join("k1"), dir.path().join("k2"));
    std::fs::write(&k1, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").expect("k1");
    std::fs::write(&k2, [7u8; 32]).expect("k2");
    for k in [&k1, &k2] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(k, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let key = |p: &Path| p.to_string_lossy().into_owned();
    let mut server = ServerProc::start(&data, &["--secrets-key-file", &key(&k1)]);
    let resp = http()
        .put(format!("{}/api/v1/secrets/APP_TOKEN", server.url))
        .json(&serde_json::json!({ "value": VALUE }))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::CREATED);
    server.stop();

    // The new key, with the old one to rotate from.
    let mut server = ServerProc::start(
        &data,
        &[
            "--secrets-key-file",
            &key(&k2),
            "--secrets-old-key-file",
            &key(&k1),
        ],
    );
    let _agent = AgentProc::start(&server.url, "rotation-agent", &dir.path().join("w"), &[]);
    wait_workers_ready(&server.client(), 1).await;
    assert_eq!(
        run_with_secret(&server, "after-rotation", VALUE).await,
        JobState::Succeeded
    );
    server.stop();

    // The old key is no longer needed; a job whose secret cannot be
    // decrypted fails with a message instead of running without it.
    let server = ServerProc::start(&data, &["--secrets-key-file", &key(&k2)]);
    let _agent = AgentProc::start(&server.url, "rotation-agent-2", &dir.path().join("w2"), &[]);
    wait_workers_ready(&server.client(), 1).await;
    assert_eq!(
        run_with_secret(&server, "new-key-only", VALUE).await,
        JobState::Succeeded
    );
    let mut server = server;
    server.stop();
    let server = ServerProc::start(&data, &["--secrets-key-file", &key(&k1)]);
    let _agent = AgentProc::start(&server.url, "rotation-agent-3", &dir.path().join("w3"), &[]);
    wait_workers_ready(&server.client(), 1).await;
    assert_eq!(
        run_with_secret(&server, "wrong-key", VALUE).await,
        JobState::Failed
    );
    let job = server.client().job("wrong-key").await.expect("job");
    assert_eq!(job.exit_code, Some(125));
    let log = server.client().logs("wrong-key", None).await.expect("logs");
    assert!(
        String::from_utf8_lossy(&log).contains("APP_TOKEN"),
        "the log says which secret"
    );
}

#[tokio::test]
async fn the_log_limit_truncates_with_a_marker_and_the_job_runs_on() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &["--max-log-bytes", "4096"]);
    let _agent = AgentProc::start(&server.url, "limit-agent", &dir.path().join("work"), &[]);
    let client = server.client();
    wait_workers_ready(&client, 1).await;
    let done = dir.path().join("finished");
    // About 100 KiB of output, then a file that proves the job ran on.
    let script = format!(
        "i=0; while [ $i -lt 2000 ]; do echo \"line $i ............................................\"; i=$((i+1)); done; echo to-stderr >&2; touch {}",
        done.display()
    );
    let mut job = sh_job("chatty", &script);
    job.id = Some("chatty".into());
    client.submit(&job).await.expect("submit");
    let job = client.wait("chatty").await.expect("wait");
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert!(done.exists(), "the job kept running past the limit");
    let log = client.logs("chatty", None).await.expect("logs");
    let text = String::from_utf8_lossy(&log);
    assert!(text.starts_with("line 0 "), "{text}");
    assert!(
        text.contains("[hodei: output truncated: this job's log reached its limit of 4 KiB"),
        "{text}"
    );
    assert!(text.contains("bytes of output dropped"), "{text}");
    assert!(
        !text.contains("line 1999"),
        "output past the limit was dropped"
    );
    assert!(log.len() < 4096 + 512, "{} bytes stored", log.len());
}
