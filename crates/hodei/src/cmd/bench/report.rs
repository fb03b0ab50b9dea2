//! A scenario's result: its figures (printed as a table or JSON), each
//! figure that has a target checked against it, sanity checks (every job
//! done, rates above zero) and the raw samples the plots are drawn from.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::rig::CpuTimes;

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Dist {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(v: &[Duration]) -> Dist {
        let mut v = v.to_vec();
        v.sort();
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len().max(1)) - 1;
            v.get(i).map_or(0.0, |d| round2(d.as_secs_f64() * 1000.0))
        };
        Dist {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Rounds to two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Rounds to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A figure against its target.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub value: f64,
    /// e.g. `>= 1000`.
    pub target: String,
    pub met: bool,
}

/// The result of one scenario.
#[derive(Debug)]
pub struct Report {
    pub name: &'static str,
    pub json: Value,
    pub checks: Vec<Check>,
    /// Why the results cannot be right (a job missing, a zero rate).
    pub insane: Vec<String>,
    /// Latency samples in ms by measure, for the CDF plot.
    pub latency: Vec<(String, Vec<f64>)>,
    /// Seconds from the start at which each job finished, for the
    /// throughput-over-time plot.
    pub finished_at: Vec<f64>,
}

impl Report {
    pub fn new(name: &'static str) -> Report {
        let mut json = Map::new();
        json.insert("scenario".into(), Value::from(name));
        Report {
            name,
            json: Value::Object(json),
            checks: Vec::new(),
            insane: Vec::new(),
            latency: Vec::new(),
            finished_at: Vec::new(),
        }
    }

    /// Sets a figure.
    pub fn set(&mut self, key: &str, value: impl Serialize) {
        if let Value::Object(map) = &mut self.json {
            map.insert(
                key.to_string(),
                serde_json::to_value(value).unwrap_or(Value::Null),
            );
        }
    }

    /// The CPU per job of the agent (its process), of the jobs (the
    /// children it reaped) and of this process (the orchestrator with the
    /// bench's clients), over `jobs` jobs.
    pub fn cpu_per_job(&mut self, jobs: usize, agent: CpuTimes, this: CpuTimes) {
        let per_job = |secs: f64| round3(secs * 1000.0 / jobs.max(1) as f64);
        self.set("cpu_ms_per_job_agent", per_job(agent.own));
        self.set(
            "cpu_ms_per_job_job_processes",
            per_job(agent.reaped_children),
        );
        self.set("cpu_ms_per_job_orchestrator_and_clients", per_job(this.own));
    }

    /// Checks `value` against a target: at least `min` (`at_least`) or at
    /// most `max` otherwise.
    pub fn target(&mut self, what: &str, value: f64, at_least: bool, bound: f64) {
        let (met, op) = if at_least {
            (value >= bound, ">=")
        } else {
            (value <= bound, "<=")
        };
        self.checks.push(Check {
            what: what.to_string(),
            value,
            target: format!("{op} {bound}"),
            met,
        });
        self.set("targets", self.checks.clone());
    }

    /// Records an implausible result unless `ok`.
    pub fn sane(&mut self, ok: bool, why: impl Into<String>) {
        if !ok {
            self.insane.push(format!("{}: {}", self.name, why.into()));
        }
    }

    /// Prints the figures as a table, then the targets.
    pub fn print(&self) {
        println!("== {}", self.name);
        if let Value::Object(map) = &self.json {
            for (k, v) in map {
                if k == "scenario" || k == "targets" {
                    continue;
                }
                let shown = match v {
                    Value::Object(inner) => inner
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join("  "),
                    other => other.to_string(),
                };
                println!("  {k:<34} {shown}");
            }
        }
        for c in &self.checks {
            let mark = if c.met { "met" } else { "MISSED" };
            println!(
                "  target: {:<26} {:>12} {:<12} {mark}",
                c.what, c.value, c.target
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let d = Dist::of(&v);
        assert_eq!((d.p50, d.p90, d.p99, d.max), (50.0, 90.0, 99.0, 100.0));
        let empty = Dist::of(&[]);
        assert_eq!(empty.max, 0.0);
    }

    #[test]
    fn targets_and_sanity_are_recorded() {
        let mut r = Report::new("x");
        r.target("rate", 5.0, true, 10.0);
        r.target("latency", 1.0, false, 2.0);
        r.sane(false, "no jobs");
        assert!(!r.checks[0].met && r.checks[1].met);
        assert_eq!(r.json["targets"][1]["target"], "<= 2");
        assert_eq!(r.insane, vec!["x: no jobs".to_string()]);
    }
}
