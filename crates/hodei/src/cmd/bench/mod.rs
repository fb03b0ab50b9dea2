//! `hodei bench`: measures Hodei on this machine with every guarantee on
//! (durable store, fsync per commit, the agent's durable spool). Each
//! scenario starts its own orchestrator and agents on loopback and, where
//! there is one, measures a baseline in the same run so that figures from a
//! noisy machine can still be compared.
//!
//! | file | scenario |
//! |---|---|
//! | `throughput.rs` | N no-op jobs through one agent vs spawning `true` directly |
//! | `latency.rs` | one job at a time: submit → running / first line / result |
//! | `logs.rs` | one job writing N bytes: MB/s stored and at a follower vs a file |
//! | `fanout.rs` | 10,000 simulated agents on a server in another process |
//! | `backlog.rs` | 1,000,000 queued jobs submitted in batches, then dispatched |
//! | `replicas.rs` | no-op jobs on 1 and 3 `hodei server` replicas on PostgreSQL; failover |
//!
//! `rig.rs` starts servers and agents, `report.rs` prints the results and
//! checks them against the targets, `plot.rs` draws the SVGs.

mod backlog;
mod fanout;
mod latency;
mod logs;
mod plot;
mod replicas;
mod report;
mod rig;
mod sim_agent;
mod throughput;

use std::path::PathBuf;

use anyhow::bail;

const SCENARIOS: [&str; 5] = ["throughput", "latency", "logs", "fanout", "backlog"];

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// throughput | latency | logs | fanout | backlog | replicas | all
    /// (`all` includes `replicas` only when a database is given)
    #[arg(value_parser = ["throughput", "latency", "logs", "fanout", "backlog", "replicas", "all"])]
    pub scenario: String,
    /// Jobs (throughput, latency, backlog) or simulated agents (fanout).
    /// Default: 10,000 / 200 / 1,000,000 / 10,000.
    #[arg(long)]
    pub n: Option<usize>,
    /// Bytes the logs job writes.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Agent slots (default: 2 × CPUs).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Seconds the fan-out scenario samples the idle server's CPU.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Seconds the backlog scenario lets agents dispatch the queue.
    #[arg(long, default_value_t = 10)]
    pub dispatch_secs: u64,
    /// PostgreSQL server for the replicas scenario (postgres://user@host/db):
    /// each run creates a database of its own there and drops it afterwards.
    #[arg(long, env = "HODEI_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// Agents in the replicas scenario (each gets slots / agents slots).
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Throughput: submit the jobs in batches of this many
    /// (`POST /api/v1/jobs/batch`, 4 clients) instead of one request per
    /// job from 16 clients.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: Option<u32>,
    /// A quick run with small sizes that checks every scenario works and
    /// its numbers are sane (every job done, rates above zero); no timing
    /// targets are checked. For CI.
    #[arg(long)]
    pub smoke: bool,
    /// Write the latency distribution and throughput-over-time plots (SVG)
    /// into this directory.
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub n: Option<usize>,
    pub bytes: u64,
    pub slots: u32,
    pub idle_secs: u64,
    pub dispatch_secs: u64,
    pub database: Option<String>,
    pub agents: usize,
    pub smoke: bool,
    /// Throughput: jobs per submission request (`None`: one per request).
    pub batch: Option<usize>,
}

impl Plan {
    fn n(&self, full: usize, smoke: usize) -> usize {
        self.n.unwrap_or(if self.smoke { smoke } else { full })
    }
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<u8> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let plan = Plan {
        n: args.n,
        bytes: if args.smoke && args.bytes == 1 << 30 {
            8 << 20
        } else {
            args.bytes
        },
        slots: args.slots.unwrap_or(2 * cpus),
        idle_secs: if args.smoke { 2 } else { args.idle_secs },
        dispatch_secs: if args.smoke { 2 } else { args.dispatch_secs },
        database: args.database.clone(),
        agents: args.agents,
        smoke: args.smoke,
        batch: args.batch.map(|b| b as usize),
    };
    if let Some(raised) = rig::raise_nofile() {
        eprintln!("bench: raised the open-file limit to {raised}");
    }
    let scenarios: Vec<&str> = if args.scenario == "all" {
        let mut all = SCENARIOS.to_vec();
        if plan.database.is_some() {
            all.push("replicas");
        }
        all
    } else {
        vec![args.scenario.as_str()]
    };
    let mut reports = Vec::new();
    for name in scenarios {
        let report = if name == "replicas" {
            // Its future is not `Send` (it holds the PostgreSQL harness).
            replicas::run(&plan).await?
        } else {
            // On a runtime worker, not the main thread: the scenario's own
            // tasks (clients, the notice counter) then wake each other
            // without crossing to this thread, which would cost the machine
            // under test a context switch per notice.
            let (scenario, plan) = (name.to_string(), plan.clone());
            tokio::spawn(async move {
                match scenario.as_str() {
                    "throughput" => throughput::run(&plan).await,
                    "latency" => latency::run(&plan).await,
                    "logs" => logs::run(&plan).await,
                    "fanout" => fanout::run(&plan).await,
                    _ => backlog::run(&plan).await,
                }
            })
            .await??
        };
        if !args.json {
            report.print();
        }
        if let Some(dir) = &args.plot_dir {
            plot::write(dir, &report)?;
        }
        reports.push(report);
    }
    if args.json {
        let all: Vec<&serde_json::Value> = reports.iter().map(|r| &r.json).collect();
        let out = match all.as_slice() {
            [one] => serde_json::to_string_pretty(one)?,
            _ => serde_json::to_string_pretty(&all)?,
        };
        println!("{out}");
    }
    let insane: Vec<String> = reports.iter().flat_map(|r| r.insane.clone()).collect();
    if !insane.is_empty() {
        bail!("implausible results: {}", insane.join("; "));
    }
    Ok(0)
}
