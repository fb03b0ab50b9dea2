//! N simulated agents (default 10,000) attached to an orchestrator in a
//! process of its own ([`super::sim_agent`]). Reports the time to register
//! them all, the server's resident memory and CPU use while they idle, and
//! then how fast it dispatches jobs across them: M jobs (as many as the
//! agents, at least 2,000), each answered at once by the agent it lands on.
//! The baseline for that rate, in the same run, is a small fleet with the
//! same slots in all (10 agents of N / 10 slots) on a fresh server: the
//! ratio is what the size of the fleet costs the scheduler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hodei_client::Client;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::Plan;
use super::report::{Report, round3};
use super::rig::{ServerProcess, cpu_seconds, nofile, submit_noops};
use super::sim_agent::{self, Fleet};

/// Sessions being set up at once (connect, Hello, Welcome).
const DIAL_AT_ONCE: usize = 256;
/// Agents of the small fleet the dispatch rate is compared with.
const SMALL_FLEET: usize = 10;
/// Jobs per submission request, and requests in flight.
const BATCH: usize = 250;
const SUBMITTERS: usize = 4;

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let n = plan.n(10_000, 200);
    let jobs = n.max(if plan.smoke { 200 } else { 2_000 });
    // Each agent holds one socket here and one in the server, plus slack.
    let needed = n as u64 + 256;
    if nofile() < needed {
        bail!(
            "fan-out of {n} agents needs {needed} open files; the limit is {} (raise `ulimit -n`)",
            nofile()
        );
    }
    let server = ServerProcess::start().await?;
    let rss_before = server.rss_bytes()?;
    let start = Instant::now();
    let fleet = match SimFleet::start(&server, n, 1).await {
        Ok(f) => f,
        Err(e) => {
            server.stop().await;
            return Err(e);
        }
    };
    let to_register = start.elapsed();
    // Let the registration burst settle, then sample the idle server.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = cpu_seconds(server.pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(plan.idle_secs)).await;
    let cpu = (cpu_seconds(server.pid)? - cpu0) / t0.elapsed().as_secs_f64();
    let rss = server.rss_bytes()?;
    let still = fleet.registered();
    let failures = fleet.failed.load(Ordering::Relaxed);
    let wide = dispatch(&server, &fleet, jobs).await;
    fleet.stop().await;
    server.stop().await;
    let wide = wide?;
    // The baseline: the same slots on a small fleet.
    let server = ServerProcess::start().await?;
    let slots = (n / SMALL_FLEET).max(1) as u32;
    let small = match SimFleet::start(&server, SMALL_FLEET, slots).await {
        Ok(fleet) => {
            let small = dispatch(&server, &fleet, jobs).await;
            fleet.stop().await;
            small
        }
        Err(e) => Err(e),
    };
    server.stop().await;
    let small = small?;
    let mib = |b: u64| (b as f64 / (1 << 20) as f64 * 10.0).round() / 10.0;
    let cpu_pct = (cpu * 1000.0).round() / 10.0;
    let mut r = Report::new("fanout");
    r.set("agents", n);
    r.set("connections", "one TCP (HTTP/2) connection per agent");
    r.set("seconds_to_register_all", to_register.as_secs_f64());
    r.set(
        "agents_registered_per_second",
        (n as f64 / to_register.as_secs_f64()).round(),
    );
    r.set("server_rss_mib_before", mib(rss_before));
    r.set("server_rss_mib", mib(rss));
    r.set(
        "server_rss_kib_per_agent",
        ((rss.saturating_sub(rss_before)) as f64 / 1024.0 / n as f64).round(),
    );
    r.set("server_idle_cpu_percent_of_one_core", cpu_pct);
    r.set("idle_seconds_sampled", plan.idle_secs);
    r.set("agents_failed", failures);
    r.set("dispatch_jobs", jobs);
    r.set("dispatch_jobs_per_second", wide.rate.round());
    r.set(
        "dispatch_server_cpu_ms_per_job",
        round3(wide.cpu_ms_per_job),
    );
    r.set(
        "dispatch_small_fleet",
        format!("{SMALL_FLEET} agents of {slots} slots"),
    );
    r.set("dispatch_small_fleet_jobs_per_second", small.rate.round());
    r.set(
        "dispatch_small_fleet_server_cpu_ms_per_job",
        round3(small.cpu_ms_per_job),
    );
    r.set(
        "dispatch_ratio_to_small_fleet",
        round3(wide.rate / small.rate),
    );
    r.sane(
        still == n && failures == 0,
        format!("{still} of {n} agents attached, {failures} failed"),
    );
    r.sane(rss > 0, "no server memory read");
    r.sane(wide.rate > 0.0 && small.rate > 0.0, "no dispatch rate");
    r.target("server_rss_mib", mib(rss), false, 1024.0);
    r.target("server_idle_cpu_percent", cpu_pct, false, 10.0);
    Ok(r)
}

/// A fleet of simulated agents attached to one server.
struct SimFleet {
    fleet: Fleet,
    failed: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl SimFleet {
    /// Starts `n` agents of `slots` slots and waits until all are attached.
    async fn start(server: &ServerProcess, n: usize, slots: u32) -> anyhow::Result<SimFleet> {
        let (stop, stop_rx) = watch::channel(false);
        let fleet = Fleet {
            url: server.url.clone(),
            token: server.join_token.clone(),
            slots,
            registered: Arc::default(),
            done: Arc::default(),
            dialing: Arc::new(Semaphore::new(DIAL_AT_ONCE)),
            stop: stop_rx,
        };
        let failed = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for i in 0..n {
            let (fleet, failed) = (fleet.clone(), failed.clone());
            tasks.spawn(async move {
                if let Err(e) = sim_agent::run(fleet, format!("sim-{i:05}")).await
                    && failed.fetch_add(1, Ordering::Relaxed) == 0
                {
                    eprintln!("bench: a simulated agent failed: {e:#}");
                }
            });
        }
        let fleet = SimFleet {
            fleet,
            failed,
            stop,
            tasks,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while fleet.registered() < n {
            let failed = fleet.failed.load(Ordering::Relaxed);
            if failed > 0 || Instant::now() > deadline {
                let registered = fleet.registered();
                fleet.stop().await;
                bail!("{registered} of {n} simulated agents registered, {failed} failed");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(fleet)
    }

    fn registered(&self) -> usize {
        self.fleet.registered.load(Ordering::Relaxed)
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// How fast one server dispatched a set of jobs.
struct Dispatch {
    rate: f64,
    cpu_ms_per_job: f64,
}

/// Submits `jobs` no-op jobs and waits until the fleet has had every result
/// acknowledged: jobs per second from the first submission to the last
/// acknowledgement, and the server's CPU per job over that time.
async fn dispatch(
    server: &ServerProcess,
    fleet: &SimFleet,
    jobs: usize,
) -> anyhow::Result<Dispatch> {
    let client = Client::new(&server.url)?.with_token(server.admin_token.clone());
    let done0 = fleet.fleet.done.load(Ordering::Relaxed);
    let cpu0 = cpu_seconds(server.pid)?;
    let start = Instant::now();
    let mut submitters = JoinSet::new();
    for k in 0..SUBMITTERS {
        let client = client.clone();
        let count = jobs / SUBMITTERS + usize::from(k < jobs % SUBMITTERS);
        submitters.spawn(async move { submit_noops(&client, count, BATCH).await });
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while fleet.fleet.done.load(Ordering::Relaxed) - done0 < jobs {
        if Instant::now() > deadline || fleet.failed.load(Ordering::Relaxed) > 0 {
            bail!(
                "{} of {jobs} jobs done across the fleet",
                fleet.fleet.done.load(Ordering::Relaxed) - done0
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.pid)? - cpu0;
    while let Some(s) = submitters.join_next().await {
        s.context("submitter")??;
    }
    Ok(Dispatch {
        rate: jobs as f64 / elapsed,
        cpu_ms_per_job: cpu * 1000.0 / jobs as f64,
    })
}
