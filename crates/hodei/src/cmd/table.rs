//! Plain-text tables and time formatting for people.

use hodei_core::{Job, Millis};

/// Prints rows as left-aligned columns.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// A duration in ms as `1.2s`, `3m04s`.
pub fn duration(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// How long a job has run (or ran).
pub fn runtime(job: &Job, now: Millis) -> String {
    match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => duration(f - s),
        (Some(s), None) => duration(now - s),
        _ => "-".into(),
    }
}

pub fn job_row(job: &Job, now: Millis) -> Vec<String> {
    let command = job.spec.command.join(" ");
    let command = if command.chars().count() > 48 {
        format!("{}…", command.chars().take(47).collect::<String>())
    } else {
        command
    };
    vec![
        job.id.clone(),
        job.spec.name.clone(),
        job.state.to_string(),
        job.exit_code.map_or("-".into(), |c| c.to_string()),
        job.worker.clone().unwrap_or_else(|| "-".into()),
        runtime(job, now),
        command,
    ]
}

pub const JOB_HEADER: [&str; 7] = ["ID", "NAME", "STATE", "EXIT", "WORKER", "TIME", "COMMAND"];

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
