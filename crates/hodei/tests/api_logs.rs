//! Log endpoints against a real server and agent: the full download (both
//! streams interleaved by time, one stream, one attempt) and the live
//! follow, as SSE and as log frames, resumed with `Last-Event-ID` (and by
//! the client across a server restart); with their bad input.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use hodei_core::api::ErrorBody;
use hodei_core::frames::{self, Frame};
use hodei_core::{JobState, LogStream};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_download_interleaves_streams_by_time() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let _agent = AgentProc::start(&server.url, "log-agent", &dir.path().join("w"), &[]);
    let client = server.client();
    let script =
        "echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2; sleep 0.2; echo err2 >&2";
    let job = client
        .submit(&sh_job("streams", script))
        .await
        .expect("submit")
        .job;
    let done = client.wait(&job.id).await.expect("wait");
    assert_eq!(done.state, JobState::Succeeded);

    let both = client.logs(&job.id, None).await.expect("both");
    assert_eq!(&both[..], b"out1\nerr1\nout2\nerr2\n");
    let stdout = client
        .logs(&job.id, Some(hodei_core::LogStream::Stdout))
        .await
        .expect("stdout");
    assert_eq!(&stdout[..], b"out1\nout2\n");
    let stderr = client
        .logs(&job.id, Some(hodei_core::LogStream::Stderr))
        .await
        .expect("stderr");
    assert_eq!(&stderr[..], b"err1\nerr2\n");
    let first = client
        .attempt_logs(&job.id, None, Some(1))
        .await
        .expect("attempt 1");
    assert_eq!(first, both);
    let none = client
        .attempt_logs(&job.id, None, Some(7))
        .await
        .expect("attempt 7");
    assert!(none.is_empty());

    let base = &server.url;
    let path = format!("/api/v1/jobs/{}/logs", job.id);
    let bad = StatusCode::BAD_REQUEST;
    let inv = "invalid_argument";
    expect_error(
        base,
        &format!("{path}?stream=stdin"),
        bad,
        inv,
        Some("stream"),
    )
    .await;
    expect_error(base, &format!("{path}?from=3"), bad, inv, Some("from")).await;
    expect_error(base, &format!("{path}?attempt=x"), bad, inv, None).await;
    expect_error(
        base,
        "/api/v1/jobs/ghost/logs",
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
}

/// One Server-Sent Event.
#[derive(Debug, Default, Clone)]
struct Sse {
    event: String,
    id: String,
    data: String,
}

/// Reads SSE events from `resp` until `stop` says so (or the stream ends).
async fn read_sse(resp: reqwest::Response, mut stop: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut ev = Sse::default();
            for line in block.lines() {
                let (key, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match key {
                    "event" => ev.event = value.to_string(),
                    "id" => ev.id = value.to_string(),
                    "data" => ev.data.push_str(value),
                    _ => {}
                }
            }
            if ev.event.is_empty() && ev.data.is_empty() {
                continue; // keep-alive comment
            }
            let done = stop(&ev);
            out.push(ev);
            if done {
                return out;
            }
        }
        let next = tokio::time::timeout_at(deadline, body.next()).await;
        match next.expect("SSE within 30 s") {
            Some(Ok(bytes)) => buf.push_str(&String::from_utf8_lossy(&bytes)),
            _ => return out,
        }
    }
}

fn log_text(events: &[Sse]) -> String {
    use base64::Engine as _;
    let mut text = String::new();
    for ev in events.iter().filter(|e| e.event == "log") {
        let log: hodei_core::api::LogEvent = serde_json::from_str(&ev.data).expect("log event");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(log.data)
            .expect("base64");
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_follow_resumes_from_the_last_event_id() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let _agent = AgentProc::start(&server.url, "follow-agent", &dir.path().join("w"), &[]);
    let client = server.client();
    let script = "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.15; done";
    let job = client
        .submit(&sh_job("lines", script))
        .await
        .expect("submit")
        .job;
    let url = format!("{}/api/v1/jobs/{}/logs/follow", server.url, job.id);
    let http = http();

    // Read until "line 2" arrived, then drop the connection.
    let resp = http.get(&url).send().await.expect("follow");
    assert_eq!(resp.status(), StatusCode::OK);
    let ctype = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap_or("")
        .to_string();
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let mut so_far = String::new();
    let first = read_sse(resp, |ev| {
        so_far = log_text(std::slice::from_ref(ev));
        so_far.contains("line 2") || ev.event == "end"
    })
    .await;
    let last_id = first
        .iter()
        .rev()
        .find(|e| !e.id.is_empty())
        .expect("an event id")
        .id
        .clone();
    // Resume: nothing missed, nothing twice.
    let resp = http
        .get(&url)
        .header("Last-Event-ID", &last_id)
        .send()
        .await
        .expect("resume");
    let rest = read_sse(resp, |ev| ev.event == "end").await;
    let end = rest.last().expect("events after resuming");
    assert_eq!(end.event, "end", "{rest:?}");
    let end: hodei_core::api::EndEvent = serde_json::from_str(&end.data).expect("end event");
    assert_eq!((end.state, end.exit_code), (JobState::Succeeded, Some(0)));
    let text = format!("{}{}", log_text(&first), log_text(&rest));
    let expected: String = (1..=6).map(|i| format!("line {i}\n")).collect();
    assert_eq!(text, expected);

    // The same from the start by query parameter, and bad resume points.
    let resp = http
        .get(format!("{url}?from=0:0"))
        .send()
        .await
        .expect("from 0");
    let all = read_sse(resp, |ev| ev.event == "end").await;
    assert_eq!(log_text(&all), expected);
    let resp = http
        .get(&url)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("bad id");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: ErrorBody = resp.json().await.expect("JSON error");
    assert_eq!(err.field.as_deref(), Some("from"));
    let base = &server.url;
    let path = format!("/api/v1/jobs/{}/logs/follow", job.id);
    expect_error(
        base,
        &format!("{path}?stream=both&from=7"),
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("from"),
    )
    .await;
    expect_error(
        base,
        &format!("{path}?stream=x"),
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("stream"),
    )
    .await;
    expect_error(
        base,
        "/api/v1/jobs/ghost/logs/follow",
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
}

/// Reads log frames until `stop` says so or the body ends.
async fn read_frames(resp: reqwest::Response, mut stop: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut body = resp.bytes_stream();
    let mut decoder = frames::Decoder::default();
    let mut out = Vec::new();
    loop {
        while let Some(frame) = decoder.next_frame().expect("well-formed frames") {
            let done = stop(&frame);
            out.push(frame);
            if done {
                return out;
            }
        }
        match tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("frames within 30 s")
        {
            Some(Ok(bytes)) => decoder.feed(&bytes),
            _ => {
                decoder.finish().expect("the body ends between frames");
                return out;
            }
        }
    }
}

/// The stdout bytes of `frames`, checking that they are contiguous from
/// `from`; with the offset after them.
fn frames_text(frames: &[Frame], from: u64) -> (String, u64) {
    let mut text = String::new();
    let mut at = from;
    for f in frames {
        if let Frame::Log {
            stream: LogStream::Stdout,
            offset,
            data,
            ..
        } = f
        {
            assert_eq!(*offset, at, "frames are contiguous");
            at += data.len() as u64;
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
    (text, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_frames_follow_resumes_from_an_offset() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let _agent = AgentProc::start(&server.url, "frames-agent", &dir.path().join("w"), &[]);
    let client = server.client();
    let script = "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.15; done; exit 3";
    let job = client
        .submit(&sh_job("frames", script))
        .await
        .expect("submit")
        .job;
    let url = format!("{}/api/v1/jobs/{}/logs/follow", server.url, job.id);
    let http = http();
    let ask = |req: reqwest::RequestBuilder| {
        req.header(reqwest::header::ACCEPT, frames::CONTENT_TYPE)
            .send()
    };

    // Read until "line 2" arrived, then drop the connection.
    let resp = ask(http.get(&url)).await.expect("follow");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_TYPE],
        frames::CONTENT_TYPE
    );
    let mut so_far = String::new();
    let first = read_frames(resp, |f| {
        if let Frame::Log { data, .. } = f {
            so_far.push_str(&String::from_utf8_lossy(data));
        }
        so_far.contains("line 2") || matches!(f, Frame::End(_))
    })
    .await;
    let (head, at) = frames_text(&first, 0);
    // Resume from the offset the frames add up to: nothing missed, nothing twice.
    let resp = ask(http.get(&url).header("Last-Event-ID", format!("{at}:0")))
        .await
        .expect("resume");
    let rest = read_frames(resp, |f| matches!(f, Frame::End(_))).await;
    let Some(Frame::End(end)) = rest.last() else {
        panic!("no end frame: {rest:?}");
    };
    let end: hodei_core::api::EndEvent = serde_json::from_slice(end).expect("end JSON");
    assert_eq!((end.state, end.exit_code), (JobState::Failed, Some(3)));
    let (tail, _) = frames_text(&rest, at);
    let expected: String = (1..=6).map(|i| format!("line {i}\n")).collect();
    assert_eq!(format!("{head}{tail}"), expected);

    // Bad input is refused the same way as for SSE.
    let resp = ask(http.get(&url).header("Last-Event-ID", "yesterday"))
        .await
        .expect("bad id");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: ErrorBody = resp.json().await.expect("JSON error");
    assert_eq!(err.field.as_deref(), Some("from"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follow_resumes_across_a_server_restart() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let mut server = ServerProc::start(&data, &[]);
    let addr = server.addr().to_string();
    let _agent = AgentProc::start(&server.url, "restart-agent", &dir.path().join("w"), &[]);
    let client = server.client();
    let script = "i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo tick-$i; sleep 0.05; done";
    let job = client
        .submit(&sh_job("ticks", script))
        .await
        .expect("submit")
        .job;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = client.clone();
    let id = job.id.clone();
    let follow = tokio::spawn(async move {
        follower
            .follow(&id, Duration::from_secs(20), |ev| {
                if let hodei_client::FollowEvent::Log { data, .. } = ev {
                    let _ = tx.send(data);
                }
            })
            .await
    });
    let mut text = String::new();
    wait_for(Duration::from_secs(30), "10 ticks followed", || {
        while let Ok(data) = rx.try_recv() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        let n = text.lines().count();
        async move { (n >= 10).then_some(()) }
    })
    .await;
    while let Ok(data) = rx.try_recv() {
        text.push_str(&String::from_utf8_lossy(&data));
    }
    server.kill();
    // Whatever arrives after this was read on a new connection.
    let before_kill = text.lines().count();
    assert!(
        before_kill < 60,
        "all 60 lines arrived before the server was killed: nothing was resumed"
    );
    let _server = ServerProc::start_on(&data, &addr, &[]);
    let end = tokio::time::timeout(Duration::from_secs(60), follow)
        .await
        .expect("the follow ends")
        .expect("join")
        .expect("the follow resumes and ends");
    assert_eq!(end.state, JobState::Succeeded, "{end:?}");
    while let Ok(data) = rx.try_recv() {
        text.push_str(&String::from_utf8_lossy(&data));
    }
    let expected: String = (1..=60).map(|i| format!("tick-{i}\n")).collect();
    assert_eq!(text, expected, "every line once, in order");
}
