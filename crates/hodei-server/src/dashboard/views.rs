//! What the dashboard templates show: rows and fields formatted from the
//! API types. The script (`assets/app.js`) formats live updates the same way.

use hodei_core::engine::WorkerInfo;
use hodei_core::{Job, JobState, Millis};

/// `2026-03-05 14:02:11 UTC` (the script shows local and relative times).
pub fn fmt_utc(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `850 ms`, `4.2 s`, `3 m 07 s`, `2 h 05 m`.
pub fn fmt_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} m {:02} s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{} h {:02} m", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

/// argv as a shell would need it typed (for display only).
pub fn shell_words(argv: &[String]) -> String {
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    };
    argv.iter()
        .map(|a| {
            if plain(a) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a job ended, for a table cell: the exit code, or the signal.
pub fn exit_text(job: &Job) -> String {
    match (job.exit_code, job.signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => String::new(),
    }
}

/// Run time so far: started → finished (or now while running).
pub fn run_time(job: &Job, now: Millis) -> Option<i64> {
    let started = job.started_at?;
    Some(job.finished_at.unwrap_or(now) - started)
}

/// One row of a jobs table.
pub struct JobRow {
    pub id: String,
    pub seq: u64,
    pub name: String,
    pub state: &'static str,
    pub worker: String,
    pub attempt: u32,
    /// How far the job has got (`progress` in app.js).
    pub progress: u64,
    pub created_ms: Millis,
    pub created: String,
    pub started_ms: String,
    pub finished_ms: String,
    pub duration: String,
    pub exit: String,
}

impl JobRow {
    pub fn of(job: &Job, now: Millis) -> JobRow {
        let opt = |v: Option<Millis>| v.map(|v| v.to_string()).unwrap_or_default();
        JobRow {
            id: job.id.clone(),
            seq: job.seq,
            name: job.spec.name.clone(),
            state: job.state.as_str(),
            worker: job.worker.clone().unwrap_or_default(),
            attempt: job.attempt,
            progress: u64::from(job.attempt) * 10
                + match job.state {
                    JobState::Queued => 0,
                    JobState::Assigned => 1,
                    JobState::Running => 2,
                    _ => 3,
                },
            created_ms: job.created_at,
            created: fmt_utc(job.created_at),
            started_ms: opt(job.started_at),
            finished_ms: opt(job.finished_at),
            duration: run_time(job, now).map(fmt_duration).unwrap_or_default(),
            exit: exit_text(job),
        }
    }
}

/// One row of the workers table.
pub struct WorkerRow {
    pub id: String,
    pub state: String,
    pub labels: Vec<String>,
    pub slots: u32,
    /// Slots in use.
    pub used: usize,
    /// Jobs held beyond the slots (prefetched), waiting for one.
    pub waiting: usize,
    pub running: Vec<String>,
    pub last_seen_ms: Millis,
    pub last_seen: String,
}

impl WorkerRow {
    pub fn of(w: &WorkerInfo) -> WorkerRow {
        let (used, waiting) = w.slots_in_use();
        WorkerRow {
            id: w.id.clone(),
            state: w.state.clone(),
            labels: w.labels.clone(),
            slots: w.slots,
            used,
            waiting,
            running: w.running.clone(),
            last_seen_ms: w.last_seen,
            last_seen: fmt_utc(w.last_seen),
        }
    }
}

/// One labelled time of a job's life.
pub struct Moment {
    pub field: &'static str,
    pub label: &'static str,
    pub ms: Option<Millis>,
    pub text: String,
}

/// The times of a job, in order.
pub fn moments(job: &Job) -> Vec<Moment> {
    let moment = |field, label, ms: Option<Millis>| Moment {
        field,
        label,
        ms,
        text: ms.map(fmt_utc).unwrap_or_else(|| "—".into()),
    };
    vec![
        moment("created_at", "Submitted", Some(job.created_at)),
        moment("assigned_at", "Assigned", job.assigned_at),
        moment("started_at", "Started", job.started_at),
        moment("finished_at", "Finished", job.finished_at),
    ]
}

/// The state names, for the filter menu.
pub fn state_names() -> Vec<&'static str> {
    JobState::ALL.iter().map(|s| s.as_str()).collect()
}

/// JSON for an inline `<script type="application/json">`: `<` escaped so
/// the data cannot close the element.
pub fn inline_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_civil() {
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(fmt_utc(1_772_719_331_999), "2026-03-05 14:02:11 UTC");
        assert_eq!(fmt_utc(-1_000), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(fmt_duration(-5), "0 ms");
        assert_eq!(fmt_duration(850), "850 ms");
        assert_eq!(fmt_duration(4_200), "4.2 s");
        assert_eq!(fmt_duration(187_000), "3 m 07 s");
        assert_eq!(fmt_duration(7_500_000), "2 h 05 m");
    }

    #[test]
    fn commands_are_quoted_for_display() {
        let argv = ["sh", "-c", "echo 'hi' > x"].map(String::from);
        assert_eq!(shell_words(&argv), r#"sh -c 'echo '\''hi'\'' > x'"#);
    }

    #[test]
    fn jobs_held_beyond_the_slots_are_shown_waiting() {
        let mut w = WorkerInfo {
            id: "w".into(),
            labels: Vec::new(),
            slots: 2,
            prefetch: 1,
            running: vec!["a".into(), "b".into(), "c".into()],
            state: "busy".into(),
            last_seen: 0,
        };
        let row = WorkerRow::of(&w);
        assert_eq!((row.used, row.waiting), (2, 1));
        w.running.truncate(1);
        let row = WorkerRow::of(&w);
        assert_eq!((row.used, row.waiting), (1, 0));
    }

    #[test]
    fn inline_json_cannot_close_the_script() {
        assert_eq!(inline_json(&"</script>"), r#""\u003c/script>""#);
    }
}
