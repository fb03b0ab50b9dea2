//! Jobs one at a time on an idle cluster: submit → running (the moment the
//! orchestrator has made `running` durable and announces it), submit →
//! first output line at a live follower, submit → result at the follower.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hodei_client::FollowEvent;
use hodei_core::JobState;
use hodei_core::engine::Notice;

use super::Plan;
use super::report::{Dist, Report};
use super::rig::{Rig, cpu_times, job};

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let n = plan.n(200, 20);
    let rig = Rig::start(plan.slots).await?;
    // When each job's `running` state was announced.
    let running_at: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut notices = rig.notices.resubscribe();
    let record = running_at.clone();
    let recorder = tokio::spawn(async move {
        while let Ok(notice) = notices.recv().await {
            if let Notice::JobChanged {
                job_id,
                state: JobState::Running,
            } = notice
                && let Ok(mut map) = record.lock()
            {
                map.insert(job_id, Instant::now());
            }
        }
    });
    let (mut to_running, mut to_line, mut to_result) = (Vec::new(), Vec::new(), Vec::new());
    // CPU per job: the jobs run one at a time, yet the orchestrator, the
    // agent, the job and this client share the machine's cores.
    let agent = rig.agent_pid().context("the agent exited")?;
    let agent_cpu0 = cpu_times(agent)?;
    let self_cpu0 = cpu_times(std::process::id())?;
    for _ in 0..n {
        let t0 = Instant::now();
        let id = rig.client.submit(&job(&["echo", "x"])).await?.job.id;
        let mut first_line = None;
        let end = rig
            .client
            .follow(&id, Duration::from_secs(10), |ev| {
                if matches!(ev, FollowEvent::Log { .. }) && first_line.is_none() {
                    first_line = Some(t0.elapsed());
                }
            })
            .await?;
        to_result.push(t0.elapsed());
        if end.state != JobState::Succeeded {
            bail!("job {id} ended {}", end.state);
        }
        to_line.push(first_line.context("no output line")?);
        let running = running_at.lock().ok().and_then(|m| m.get(&id).copied());
        to_running.push(running.context("no running notice")?.duration_since(t0));
    }
    let agent_cpu = cpu_times(agent)? - agent_cpu0;
    let self_cpu = cpu_times(std::process::id())? - self_cpu0;
    recorder.abort();
    rig.shutdown().await;
    let (running, line, result) = (
        Dist::of(&to_running),
        Dist::of(&to_line),
        Dist::of(&to_result),
    );
    let mut r = Report::new("latency");
    r.set("jobs", n);
    r.set("submit_to_running_ms", running);
    r.set("submit_to_first_line_ms", line);
    r.set("submit_to_result_ms", result);
    r.cpu_per_job(n, agent_cpu, self_cpu);
    r.sane(
        to_result.len() == n && result.p50 > 0.0,
        "not every job measured",
    );
    r.target("submit_to_running_p50_ms", running.p50, false, 2.0);
    r.target("submit_to_running_p99_ms", running.p99, false, 10.0);
    r.target("submit_to_first_line_p50_ms", line.p50, false, 5.0);
    let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    r.latency = vec![
        ("submit → running".into(), ms(&to_running)),
        ("submit → first line".into(), ms(&to_line)),
        ("submit → result".into(), ms(&to_result)),
    ];
    Ok(r)
}
