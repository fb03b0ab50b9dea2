//! No-op jobs through 1 and 3 `hodei server` replicas sharing one
//! PostgreSQL database, and the agents' failover time when a replica dies.
//!
//! Each run (R replicas, one submission mode) gets a database of its own
//! on the `--database` server (`CREATE DATABASE hodei_bench_<pid>_<R>_<mode>`,
//! dropped afterwards), so runs never see each other's jobs. R server
//! processes start on it with the same provisioned bootstrap tokens; A
//! in-process agents (`--agents`, default 3) with `slots / A` slots each
//! (at least 1) attach, agent `i` listing the replicas from replica `i mod
//! R` so that they spread. 16 concurrent clients submit N `true` jobs
//! round robin over the replicas, one job per request (`single`) or 100
//! per request (`batch`). Jobs/s is counted from the first submit to the
//! last job terminal, seen by polling `stats` on replica 0 every 20 ms
//! (each replica counts the jobs of the shared database).
//!
//! With 3 replicas, after the last run and with nothing running, replica
//! 0 is killed (SIGKILL) and the failover time is how long until every
//! agent whose first URL was replica 0 is ready on replica 1 or 2 (their
//! `workers` list only the workers attached to them).

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hodei_client::Client;
use hodei_core::JobState;
use hodei_core::api::Stats;
use hodei_core::auth::{TOKEN_ID_LEN, TOKEN_SECRET_LEN};
use serde_json::json;
use sqlx::Connection;
use tokio::sync::watch;

use super::Plan;
use super::report::{Report, round3};
use super::rig::{ServerProcess, job, start_agent_on};

/// Concurrent submitting clients.
const SUBMITTERS: usize = 16;
/// Jobs per request in the `batch` mode.
const BATCH: usize = 100;
/// How often replica 0's statistics are read.
const POLL: Duration = Duration::from_millis(20);
/// A run fails when no job finishes for this long.
const STALL: Duration = Duration::from_secs(60);
/// How long agents and replicas get to come up, and agents to fail over.
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One job per `POST /api/v1/jobs`.
    Single,
    /// [`BATCH`] jobs per `POST /api/v1/jobs/batch`.
    Batch,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Batch => "batch",
        }
    }
}

/// The figures of one run.
struct Run {
    replicas: usize,
    mode: Mode,
    /// First submit to the last submission accepted.
    submit: Duration,
    /// First submit to the last job terminal.
    total: Duration,
    failed: u64,
}

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let Some(server_url) = plan.database.as_deref() else {
        bail!(
            "the replicas scenario needs a PostgreSQL server: pass --database \
             postgres://user@host:port/db (or set HODEI_DATABASE); each run creates \
             a database of its own there and drops it afterwards"
        );
    };
    let n = plan.n(10_000, 300);
    let agents = plan.agents.max(1);
    let slots = (plan.slots / u32::try_from(agents).unwrap_or(u32::MAX)).max(1);
    let mut runs = Vec::new();
    let mut failover = None;
    for replicas in [1, 3] {
        for mode in [Mode::Single, Mode::Batch] {
            let name = format!(
                "hodei_bench_{}_{replicas}_{}",
                std::process::id(),
                mode.name()
            );
            let db_url = with_database(server_url, &name)?;
            admin_sql(server_url, &format!("CREATE DATABASE {name}")).await?;
            // Failover once, after the last run with several replicas.
            let fail_over = replicas > 1 && mode == Mode::Batch;
            let result = one_run(&db_url, replicas, agents, slots, n, mode, fail_over).await;
            // FORCE: a killed replica may have left sessions.
            let dropped =
                admin_sql(server_url, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
            let (run, moved) = result?;
            dropped?;
            let rate = n as f64 / run.total.as_secs_f64();
            eprintln!(
                "bench: replicas {replicas} {}: {rate:.1} jobs/s",
                mode.name()
            );
            runs.push(run);
            failover = failover.or(moved);
        }
    }
    Ok(report(plan, n, agents, slots, &runs, failover))
}

/// Starts a cluster on `db_url`, measures, fails over if asked, stops it.
async fn one_run(
    db_url: &str,
    replicas: usize,
    agents: usize,
    slots: u32,
    n: usize,
    mode: Mode,
    fail_over: bool,
) -> anyhow::Result<(Run, Option<(Duration, usize)>)> {
    let mut cluster = Cluster::start(db_url, replicas, agents, slots).await?;
    let run = cluster.measure(n, mode).await;
    let moved = match (&run, fail_over) {
        (Ok(_), true) => cluster.failover().await.map(Some),
        _ => Ok(None),
    };
    cluster.stop().await;
    Ok((run?, moved?))
}

fn report(
    plan: &Plan,
    n: usize,
    agents: usize,
    slots: u32,
    runs: &[Run],
    failover: Option<(Duration, usize)>,
) -> Report {
    let one = |x: f64| (x * 10.0).round() / 10.0;
    let mut r = Report::new("replicas");
    r.set("jobs_per_run", n);
    r.set("agents", agents);
    r.set(
        "slots_per_agent",
        format!(
            "{slots} (max(1, slots {} / agents {agents}); {} in all)",
            plan.slots,
            slots as usize * agents
        ),
    );
    r.set(
        "submitters",
        format!("{SUBMITTERS} concurrent, round robin over the replicas; batch = {BATCH} jobs"),
    );
    let rate = |run: &Run| n as f64 / run.total.as_secs_f64();
    let mut failed = 0;
    for run in runs {
        failed += run.failed;
        r.set(
            &format!("replicas_{}_{}", run.replicas, run.mode.name()),
            json!({
                "jobs_per_second": one(rate(run)),
                "seconds": one(run.total.as_secs_f64()),
                "submissions_per_second": one(n as f64 / run.submit.as_secs_f64()),
                "failed": run.failed,
            }),
        );
        r.sane(rate(run) > 0.0, "a rate of zero");
    }
    for mode in [Mode::Single, Mode::Batch] {
        let of = |k: usize| runs.iter().find(|x| x.replicas == k && x.mode == mode);
        if let (Some(r1), Some(r3)) = (of(1), of(3)) {
            let ratio = round3(rate(r3) / rate(r1));
            r.set(&format!("ratio_3_to_1_{}", mode.name()), ratio);
        }
    }
    match failover {
        Some((took, moved)) => {
            r.set("failover_ms", one(took.as_secs_f64() * 1000.0));
            r.set("failover_agents", moved);
        }
        None => r.sane(false, "no failover measured"),
    }
    r.set("failed", failed);
    r.sane(failed == 0, format!("{failed} jobs failed"));
    r
}

/// R replicas on one database and A agents spread over them.
struct Cluster {
    servers: Vec<ServerProcess>,
    /// One admin client per replica, in the same order.
    clients: Vec<Client>,
    /// Agent names, agent `i` listing the replicas from `i mod R`.
    names: Vec<String>,
    drains: Vec<watch::Sender<bool>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(
        db_url: &str,
        replicas: usize,
        agents: usize,
        slots: u32,
    ) -> anyhow::Result<Cluster> {
        let admin = random_token()?;
        let join = random_token()?;
        let env = [
            ("HODEI_BOOTSTRAP_ADMIN_TOKEN", admin.as_str()),
            ("HODEI_BOOTSTRAP_JOIN_TOKEN", join.as_str()),
        ];
        let args = ["--database", db_url, "--heartbeat-interval", "1s"];
        let mut servers = Vec::with_capacity(replicas);
        let mut clients = Vec::with_capacity(replicas);
        for _ in 0..replicas {
            let server = ServerProcess::start_with(&args, &env).await?;
            clients.push(Client::new(&server.url)?.with_token(Some(admin.clone())));
            servers.push(server);
        }
        let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
        let dir = tempfile::tempdir().context("temp dir")?;
        let mut names = Vec::with_capacity(agents);
        let mut drains = Vec::with_capacity(agents);
        for i in 0..agents {
            let name = format!("bench-replicas-{i}");
            let list = urls.iter().cycle().skip(i % replicas).take(replicas);
            drains.push(start_agent_on(
                list.cloned().collect(),
                Some(join.clone()),
                &name,
                slots,
                dir.path(),
            )?);
            names.push(name);
        }
        let cluster = Cluster {
            servers,
            clients,
            names,
            drains,
            _dir: dir,
        };
        match wait_ready(&cluster.clients, &cluster.names, Instant::now()).await {
            Ok(_) => Ok(cluster),
            Err(e) => {
                cluster.stop().await;
                Err(e.context(format!("starting {replicas} replicas")))
            }
        }
    }

    /// Submits `n` no-op jobs and waits until all are terminal.
    async fn measure(&self, n: usize, mode: Mode) -> anyhow::Result<Run> {
        let per_request = match mode {
            Mode::Single => 1,
            Mode::Batch => BATCH,
        };
        let requests = n.div_ceil(per_request);
        let start = Instant::now();
        let mut submitters = tokio::task::JoinSet::new();
        for k in 0..SUBMITTERS.min(requests) {
            let clients = self.clients.clone();
            submitters.spawn(async move {
                // Request j goes to replica j mod R.
                for j in (k..requests).step_by(SUBMITTERS) {
                    let client = &clients[j % clients.len()];
                    let size = per_request.min(n - j * per_request);
                    if mode == Mode::Single {
                        client.submit(&job(&["true"])).await?;
                    } else {
                        let reply = client.submit_batch(vec![job(&["true"]); size]).await?;
                        let created = reply.created.iter().filter(|c| **c).count();
                        if created != size {
                            bail!("a batch of {size} created {created} jobs");
                        }
                    }
                }
                Ok(start.elapsed())
            });
        }
        let mut submit = Duration::ZERO;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut done, mut failed) = (0, 0);
        let mut progress = Instant::now();
        let mut last_error = None;
        while done < n as u64 {
            tick.tick().await;
            while let Some(joined) = submitters.try_join_next() {
                let took = joined.context("a submitter panicked")??;
                submit = submit.max(took);
            }
            match self.clients[0].stats().await {
                Ok(stats) => {
                    let (d, f) = terminal(&stats);
                    if d > done {
                        progress = Instant::now();
                    }
                    (done, failed) = (d, f);
                }
                Err(e) => last_error = Some(e),
            }
            if progress.elapsed() > STALL {
                bail!(
                    "{done} of {n} jobs finished, none in the last {} s (last stats error: {})",
                    STALL.as_secs(),
                    last_error.map_or_else(|| "none".to_string(), |e| e.to_string())
                );
            }
        }
        let total = start.elapsed();
        while let Some(joined) = submitters.join_next().await {
            submit = submit.max(joined.context("a submitter panicked")??);
        }
        let replicas = self.clients.len();
        Ok(Run {
            replicas,
            mode,
            submit,
            total,
            failed,
        })
    }

    /// Kills replica 0 with nothing running; returns the time until every
    /// agent whose first URL was replica 0 is ready on another replica, and
    /// how many agents that is.
    async fn failover(&mut self) -> anyhow::Result<(Duration, usize)> {
        let replicas = self.servers.len();
        if replicas < 2 {
            bail!("a failover needs two replicas");
        }
        let moving: Vec<String> = self.names.iter().step_by(replicas).cloned().collect();
        // Nothing runs: each of them is ready (not busy) on replica 0.
        wait_ready(&self.clients[..1], &moving, Instant::now()).await?;
        let server = self.servers.remove(0);
        self.clients.remove(0);
        let killed = Instant::now();
        server.kill().await;
        let took = wait_ready(&self.clients, &moving, killed).await;
        Ok((took.context("after replica 0 was killed")?, moving.len()))
    }

    /// Drains the agents and stops the replicas.
    async fn stop(self) {
        for drain in &self.drains {
            let _ = drain.send(true);
        }
        for server in self.servers {
            server.stop().await;
        }
    }
}

/// Waits until each of `names` is ready on one of the replicas of
/// `clients`; returns the time since `since`.
async fn wait_ready(
    clients: &[Client],
    names: &[String],
    since: Instant,
) -> anyhow::Result<Duration> {
    loop {
        let ready = ready_on(clients).await;
        let missing = names.iter().filter(|n| !ready.contains(n)).count();
        if missing == 0 {
            return Ok(since.elapsed());
        }
        if since.elapsed() > DEADLINE {
            bail!(
                "{missing} of {} agents not ready after {} s",
                names.len(),
                DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Names of the workers ready on any of these replicas.
async fn ready_on(clients: &[Client]) -> Vec<String> {
    let mut ready = Vec::new();
    for client in clients {
        if let Ok(workers) = client.workers().await {
            ready.extend(
                workers
                    .into_iter()
                    .filter(|w| w.state == "ready")
                    .map(|w| w.id),
            );
        }
    }
    ready
}

/// Jobs in a terminal state, and those of them that did not succeed.
fn terminal(stats: &Stats) -> (u64, u64) {
    let (mut done, mut failed) = (0, 0);
    for (state, count) in &stats.jobs {
        match JobState::parse(state) {
            Some(JobState::Succeeded) => done += count,
            Some(s) if s.is_terminal() => {
                done += count;
                failed += count;
            }
            _ => {}
        }
    }
    (done, failed)
}

/// Runs one statement (`CREATE`/`DROP DATABASE`) on the `--database` server.
async fn admin_sql(server_url: &str, sql: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(server_url)
        .await
        .context("cannot connect to the PostgreSQL server given with --database")?;
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .with_context(|| format!("{sql} failed"))?;
    let _ = conn.close().await;
    Ok(())
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let Some((scheme, rest)) = base.split_once("://") else {
        bail!("--database must be a URL: postgres://user@host:port/db");
    };
    if scheme != "postgres" && scheme != "postgresql" {
        bail!("--database must be a postgres:// URL, not {scheme}://");
    }
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    Ok(match query {
        Some(query) => format!("{scheme}://{authority}/{name}?{query}"),
        None => format!("{scheme}://{authority}/{name}"),
    })
}

/// A random `hodei_<id>_<secret>` token from the system's secure generator.
fn random_token() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let len = TOKEN_ID_LEN + TOKEN_SECRET_LEN;
    let rng = ring::rand::SystemRandom::new();
    let mut chars = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while chars.len() < len {
        rng.fill(&mut buf)
            .map_err(|_| anyhow!("the system random number generator failed"))?;
        // 252 = 7 × 36: rejection sampling keeps the choice uniform.
        for b in buf.into_iter().filter(|b| *b < 252) {
            if chars.len() < len {
                chars.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    let (id, secret) = chars.split_at(TOKEN_ID_LEN);
    Ok(format!("hodei_{id}_{secret}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        let new = |u: &str| with_database(u, "b").ok();
        assert_eq!(
            new("postgres://u:p@h:5432/a?sslmode=disable").as_deref(),
            Some("postgres://u:p@h:5432/b?sslmode=disable")
        );
        assert_eq!(new("postgresql://h").as_deref(), Some("postgresql://h/b"));
        assert_eq!(new("postgres://h/").as_deref(), Some("postgres://h/b"));
        assert!(new("host=h dbname=a").is_none());
        assert!(new("mysql://h/a").is_none());
    }

    #[test]
    fn random_tokens_parse_and_differ() {
        let (a, b) = (random_token().ok(), random_token().ok());
        assert!(
            a.as_deref()
                .and_then(hodei_core::auth::parse_token)
                .is_some()
        );
        assert_ne!(a, b);
    }
}
