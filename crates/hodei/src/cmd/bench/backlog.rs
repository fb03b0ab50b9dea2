//! A backlog: N queued jobs (default 1,000,000) submitted in batches
//! (`POST /api/v1/jobs/batch`) to an orchestrator in a process of its own
//! with no agent attached. Reports the submission rate and the server's
//! memory growth per queued job; then attaches an agent and reports how
//! fast the queue is dispatched (jobs that left the queue per second).

use std::time::{Duration, Instant};

use anyhow::bail;
use hodei_client::Client;

use super::Plan;
use super::report::{Report, round3};
use super::rig::{ServerProcess, job, start_agent};

/// Jobs per batch request.
const BATCH: usize = 5_000;
/// Batch requests in flight at once.
const SUBMITTERS: usize = 4;

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let n = plan.n(1_000_000, 5_000);
    let server = ServerProcess::start().await?;
    let client = Client::new(&server.url)?.with_token(server.admin_token.clone());
    client.ready().await?;
    let rss_before = server.rss_bytes()?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    let batches = n.div_ceil(BATCH);
    for k in 0..SUBMITTERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut submitted = 0;
            for b in (k..batches).step_by(SUBMITTERS) {
                let size = BATCH.min(n - b * BATCH);
                let jobs = vec![job(&["true"]); size];
                let reply = client.submit_batch(jobs).await?;
                submitted += reply.created.iter().filter(|c| **c).count();
            }
            Ok::<_, hodei_client::ClientError>(submitted)
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await??;
    }
    let submit_s = start.elapsed().as_secs_f64();
    let rss_queued = server.rss_bytes()?;
    let queued = client.stats().await?.queue_depth;
    // Dispatch: one agent with the usual slots takes the queue.
    let dir = tempfile::tempdir()?;
    let drain = start_agent(
        &server.url,
        server.join_token.clone(),
        "bench-backlog-agent",
        plan.slots,
        dir.path(),
    )?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(plan.dispatch_secs);
    let mut left = queued;
    let mut dispatch_s = 0.0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = client.stats().await?.queue_depth;
        dispatch_s = t0.elapsed().as_secs_f64();
        if left == 0 {
            break;
        }
    }
    let _ = drain.send(true);
    let rss_after = server.rss_bytes()?;
    server.stop().await;
    if dispatch_s == 0.0 {
        bail!("the dispatch phase did not run");
    }
    let dispatched = queued.saturating_sub(left);
    let submit_rate = n as f64 / submit_s;
    let dispatch_rate = dispatched as f64 / dispatch_s;
    let per_job = rss_queued.saturating_sub(rss_before) as f64 / n as f64;
    let mut r = Report::new("backlog");
    r.set("jobs", n);
    r.set("batch_size", BATCH);
    r.set("seconds_to_submit", round3(submit_s));
    r.set("submissions_per_second", submit_rate.round());
    r.set("server_rss_mib_before", mib(rss_before));
    r.set("server_rss_mib_queued", mib(rss_queued));
    r.set("server_rss_bytes_per_queued_job", per_job.round());
    r.set("dispatch_slots", plan.slots);
    r.set("dispatch_seconds", (dispatch_s * 10.0).round() / 10.0);
    r.set("jobs_dispatched", dispatched);
    r.set("dispatch_jobs_per_second", dispatch_rate.round());
    r.set("server_rss_mib_after_dispatch", mib(rss_after));
    r.sane(
        created == n && queued == n as u64,
        format!("{created} of {n} jobs created, {queued} queued"),
    );
    r.sane(
        submit_rate > 0.0 && dispatched > 0,
        "no job submitted or dispatched",
    );
    r.target(
        "submissions_per_second",
        submit_rate.round(),
        true,
        20_000.0,
    );
    r.target(
        "server_rss_bytes_per_queued_job",
        per_job.round(),
        false,
        2048.0,
    );
    Ok(r)
}

fn mib(b: u64) -> f64 {
    (b as f64 / (1 << 20) as f64 * 10.0).round() / 10.0
}
