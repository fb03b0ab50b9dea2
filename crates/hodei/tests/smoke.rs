//! The shortest path through the system: `hodei run` against a real server
//! and agent prints the job's output and exits with its code.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_output_and_returns_the_exit_code() {
    let dir = tempdir();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let _agent = AgentProc::start(
        &server.url,
        "smoke",
        &dir.path().join("work"),
        &["--slots", "2"],
    );
    wait_workers_ready(&server.client(), 1).await;
    let out = hodei()
        .args([
            "run",
            "--server",
            &server.url,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ])
        .output()
        .expect("hodei run");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}
