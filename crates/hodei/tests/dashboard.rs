//! The dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver with fantoccini, against a real
//! server and agent: a job submitted through the API appears in the open
//! jobs page and its log streams in live with ANSI colours; a running job is
//! cancelled with the button; the workers page shows the agent; the pages
//! fit a phone. Screenshots go to `target/test-artifacts/dashboard/`.
//!
//! Skipped, with the reason printed, when chromium or chromedriver is not
//! installed (`.ci/run` installs both).

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use hodei_core::JobState;
use hodei_core::api::SubmitRequest;
use serde_json::{Value, json};

/// How long a page gets to show something.
const WAIT: Duration = Duration::from_secs(20);

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// A chromedriver process on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(binary: &PathBuf) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where screenshots are kept: `<target dir>/test-artifacts/dashboard`.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            // target/debug/deps/dashboard-<hash>
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("test-artifacts").join("dashboard");
    std::fs::create_dir_all(&dir).expect("artifact directory");
    dir
}

async fn screenshot(browser: &Browser, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    let path = artifacts().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// Polls `script` (a function body returning a value) until its result is
/// truthy; returns it.
async fn wait_js(browser: &Browser, script: &str, what: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = browser.execute(script, vec![]).await.expect("script");
        let truthy = match &last {
            Value::Null | Value::Bool(false) => false,
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what} (last: {last})");
}

async fn text_of(browser: &Browser, css: &str) -> String {
    let script =
        format!("const e = document.querySelector({css:?}); return e ? e.textContent : null;");
    browser
        .execute(&script, vec![])
        .await
        .expect("script")
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Whether `css` shows `want` within the wait.
async fn wait_text_for(browser: &Browser, css: &str, want: &str) -> bool {
    let script = format!(
        "const e = document.querySelector({css:?}); return !!e && e.textContent.includes({want:?});"
    );
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if browser.execute(&script, vec![]).await.expect("script") == json!(true) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn wait_text(browser: &Browser, css: &str, want: &str) {
    let script = format!(
        "const e = document.querySelector({css:?}); return !!e && e.textContent.includes({want:?});"
    );
    wait_js(browser, &script, &format!("{css} to show {want:?}")).await;
}

/// Opens `path` and waits until the page subscribed to live updates.
async fn open_live(browser: &Browser, base: &str, path: &str) {
    browser.goto(&format!("{base}{path}")).await.expect("goto");
    wait_js(
        browser,
        "return document.body.dataset.live === 'true';",
        &format!("{path} to go live"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let (Some(chromium), Some(chromedriver)) = (
        which(&["chromium", "chromium-browser", "google-chrome"]),
        which(&["chromedriver"]),
    ) else {
        eprintln!(
            "SKIPPED dashboard_in_a_real_browser: chromium and chromedriver are not installed \
             (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let _agent = AgentProc::start(
        &server.url,
        "browser-agent",
        &dir.path().join("w"),
        &["--labels", "linux,x86_64", "--slots", "3"],
    );
    let client = server.client();
    wait_workers_ready(&client, 1).await;

    let driver = Driver::start(&chromedriver);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900"],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("start a headless Chromium session");
    let base = server.url.clone();

    // 0. Signing in: the dashboard asks for a token, then sets its session.
    browser
        .goto(&format!("{base}/ui/jobs"))
        .await
        .expect("goto");
    wait_js(
        &browser,
        "return location.pathname === '/ui/login';",
        "the sign-in page",
    )
    .await;
    browser
        .find(Locator::Css("input[name=token]"))
        .await
        .expect("token field")
        .send_keys(admin_token())
        .await
        .expect("type the token");
    browser
        .find(Locator::Css("form.login button"))
        .await
        .expect("sign-in button")
        .click()
        .await
        .expect("sign in");
    wait_js(
        &browser,
        "return location.pathname === '/ui/jobs';",
        "the jobs page after signing in",
    )
    .await;

    // 1. The jobs page is open; a job submitted through the API appears in
    //    it, live, and reaches its final state.
    open_live(&browser, &base, "/ui/jobs").await;
    let quick = SubmitRequest {
        id: Some("browser-quick".into()),
        name: "quick-build".into(),
        command: vec!["sh".into(), "-c".into(), "echo built; sleep 0.5".into()],
        ..SubmitRequest::default()
    };
    client.submit(&quick).await.expect("submit");
    let row = r#"tr[data-id="browser-quick"]"#;
    wait_text(&browser, row, "quick-build").await;
    wait_text(&browser, &format!("{row} .badge"), "succeeded").await;
    wait_text(&browser, &format!("{row} td.exit"), "0").await;
    screenshot(&browser, "jobs").await;

    // 2. A running job's page: the log streams in, colours rendered, the
    //    stdout/stderr toggle works.
    let ticker = SubmitRequest {
        id: Some("browser-ticker".into()),
        name: "ticker".into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "i=0; while true; do i=$((i+1)); printf '\\033[1;31mtick\\033[0m %d\\n' $i; \
             echo \"warn $i\" >&2; sleep 0.2; done"
                .into(),
        ],
        env: [("GREETING".to_string(), "hello".to_string())].into(),
        ..SubmitRequest::default()
    };
    client.submit(&ticker).await.expect("submit");
    open_live(&browser, &base, "/ui/jobs/browser-ticker").await;
    wait_text(&browser, "#log", "tick 3").await;
    wait_text(&browser, "#state", "running").await;
    let red = text_of(&browser, "#log span.o span.f1.bold").await;
    assert_eq!(red, "tick", "the ANSI colour was not rendered");
    assert!(
        text_of(&browser, "#log").await.contains("warn 2"),
        "stderr is shown"
    );
    screenshot(&browser, "job-running").await;
    let hidden_stderr =
        "return getComputedStyle(document.querySelector('#log span.e')).display === 'none';";
    assert_eq!(
        browser.execute(hidden_stderr, vec![]).await.expect("js"),
        json!(false)
    );
    browser
        .find(Locator::Css("#show-stderr"))
        .await
        .expect("stderr toggle")
        .click()
        .await
        .expect("click");
    wait_js(&browser, hidden_stderr, "stderr to be hidden").await;
    assert!(text_of(&browser, "table.env").await.contains("GREETING"));
    screenshot(&browser, "job-stdout-only").await;

    // 3. Cancel with the button: the page shows the state change.
    browser
        .find(Locator::Css("#cancel"))
        .await
        .expect("cancel button")
        .click()
        .await
        .expect("click");
    if !wait_text_for(&browser, "#state", "cancelled").await {
        screenshot(&browser, "failure-cancel").await;
        let job = client.job("browser-ticker").await.expect("job");
        panic!("the page does not show the job cancelled; the API says {job:?}");
    }
    wait_text(&browser, "#log-status", "cancelled").await;
    wait_js(
        &browser,
        "return document.querySelector('#cancel').hidden;",
        "the cancel button to go away",
    )
    .await;
    assert_eq!(
        client.job("browser-ticker").await.expect("job").state,
        JobState::Cancelled
    );
    screenshot(&browser, "job-cancelled").await;

    // 4. The workers page shows the agent with its labels and slots.
    open_live(&browser, &base, "/ui/workers").await;
    let agent_row = r#"tr[data-id="browser-agent"]"#;
    wait_text(&browser, &format!("{agent_row} .badge"), "ready").await;
    let row_text = text_of(&browser, agent_row).await;
    for want in ["browser-agent", "linux", "x86_64", "0/3"] {
        assert!(row_text.contains(want), "{want:?} not in {row_text:?}");
    }
    screenshot(&browser, "workers").await;
    // Four long jobs on three slots: the agent (prefetch 3 by default, as
    // many as its slots) holds the fourth, waiting for a slot; the row
    // updates live.
    let sleepers: Vec<String> = (1..=4).map(|i| format!("browser-sleep-{i}")).collect();
    for id in &sleepers {
        let job = SubmitRequest {
            id: Some(id.clone()),
            command: vec!["sleep".into(), "30".into()],
            ..SubmitRequest::default()
        };
        client.submit(&job).await.expect("submit");
    }
    wait_text(&browser, &format!("{agent_row} td.slots"), "3/3 +1 waiting").await;
    screenshot(&browser, "workers-waiting").await;
    for id in &sleepers {
        client.cancel(id).await.expect("cancel");
    }
    wait_text(&browser, &format!("{agent_row} td.slots"), "0/3").await;

    // 5. The overview counts what happened.
    open_live(&browser, &base, "/ui").await;
    wait_text(&browser, r#"[data-stat="succeeded"]"#, "1").await;
    wait_text(&browser, r#"[data-stat="connected"]"#, "1").await;
    wait_js(
        &browser,
        "return document.querySelectorAll('#chart rect').length > 0;",
        "the chart bars",
    )
    .await;
    screenshot(&browser, "overview").await;

    // 6. A phone: secondary columns are hidden, nothing overflows the page.
    browser.set_window_size(390, 844).await.expect("resize");
    open_live(&browser, &base, "/ui/jobs").await;
    let fits = "return document.documentElement.scrollWidth <= window.innerWidth + 1 && \
        getComputedStyle(document.querySelector('th.opt')).display === 'none';";
    wait_js(&browser, fits, "the jobs page to fit a phone").await;
    screenshot(&browser, "jobs-phone").await;
    open_live(&browser, &base, "/ui/jobs/browser-ticker").await;
    screenshot(&browser, "job-phone").await;

    browser.close().await.expect("close the browser");
    drop(driver);
}
