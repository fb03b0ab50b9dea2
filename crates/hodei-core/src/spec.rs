//! What a job is: its spec, and the validation every entry point applies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod limits;

pub use limits::Limits;

/// The capability a worker must advertise to run jobs that have an image.
pub const DOCKER_CAPABILITY: &str = "docker";

/// Default SIGTERM → SIGKILL grace when a job does not set one.
pub const DEFAULT_KILL_GRACE_MS: u64 = 10_000;

/// When a worker pulls a job's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull the image only when the worker does not have it (the default).
    #[default]
    IfNotPresent,
    /// Never pull: a job whose image the worker lacks fails at once.
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Never => "never",
        }
    }

    /// Parses `if-not-present` or `never`.
    pub fn parse(s: &str) -> Result<PullPolicy, String> {
        match s {
            "if-not-present" => Ok(PullPolicy::IfNotPresent),
            "never" => Ok(PullPolicy::Never),
            _ => Err(format!(
                "unknown pull policy {:?}: use if-not-present or never",
                s.chars().take(40).collect::<String>()
            )),
        }
    }
}

impl std::fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a CPU amount into millicores: `500m` (millicores), or a number of
/// CPUs such as `2` or `1.5`.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("invalid CPU amount {s:?}: expected e.g. 500m, 2 or 1.5");
    let millis = if let Some(m) = t.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let cpus: f64 = t.parse().map_err(|_| bad())?;
        if !cpus.is_finite() || cpus < 0.0 || cpus > limits::MAX_CPU_MILLICORES as f64 {
            return Err(bad());
        }
        (cpus * 1000.0).round() as u64
    };
    if millis == 0 {
        return Err(format!("invalid CPU amount {s:?}: must be more than 0"));
    }
    Ok(millis)
}

/// A byte count for people: `256 MiB`, `1 GiB`, or plain bytes.
pub fn human_bytes(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// Everything a user says about a job. Identity and state live in [`crate::Job`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSpec {
    /// Human name; defaults to the command's first word.
    pub name: String,
    /// argv: executed directly, no shell.
    pub command: Vec<String>,
    /// Container image; when set the job needs a worker with `docker`.
    pub image: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Working directory on the worker; `None` = a fresh per-job directory.
    /// For a job with an image: a directory inside the container (`None`:
    /// the per-job directory, mounted at `/workspace`).
    pub working_dir: Option<String>,
    pub timeout_ms: Option<u64>,
    /// Capabilities the worker must have.
    pub labels: Vec<String>,
    /// Higher runs first; FIFO within a priority.
    pub priority: i32,
    /// How many times a lost job is run again.
    pub max_retries: u32,
    /// SIGTERM → SIGKILL grace on cancel or timeout.
    pub kill_grace_ms: Option<u64>,
    /// CPU limit of the job's container in millicores (1000 = one CPU).
    /// Only for jobs with an image.
    pub cpu_millicores: Option<u64>,
    /// Memory limit of the job's container in bytes (no swap beyond it).
    /// Only for jobs with an image.
    pub memory_bytes: Option<u64>,
    /// When the worker pulls the image; `None`: the agent's default
    /// (`if-not-present` unless the agent says otherwise). Only for jobs
    /// with an image.
    pub pull_policy: Option<PullPolicy>,
    /// Names of stored secrets the job gets as environment variables of the
    /// same names. Only names are kept here; the values reach the agent
    /// with the assignment (see `mask` and docs/security.md).
    pub secrets: Vec<String>,
}

impl JobSpec {
    /// A spec that runs `argv` with defaults for everything else.
    pub fn command<I, S>(argv: I) -> JobSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        JobSpec {
            command: argv.into_iter().map(Into::into).collect(),
            ..JobSpec::default()
        }
    }

    /// Labels a worker must have, including `docker` for image jobs.
    pub fn required_labels(&self) -> impl Iterator<Item = &str> {
        let docker = self.image.as_ref().map(|_| DOCKER_CAPABILITY);
        self.labels.iter().map(String::as_str).chain(docker)
    }

    pub fn kill_grace_ms(&self) -> u64 {
        self.kill_grace_ms.unwrap_or(DEFAULT_KILL_GRACE_MS)
    }

    /// Fills defaults (name from argv[0], sorted unique labels) so that two
    /// submissions that mean the same thing compare equal.
    pub fn normalized(mut self) -> JobSpec {
        if self.name.is_empty()
            && let Some(first) = self.command.first()
        {
            let base = first.rsplit('/').next().unwrap_or(first);
            self.name = base.chars().take(limits::MAX_NAME_LEN).collect();
        }
        self.labels.sort();
        self.labels.dedup();
        self.secrets.sort();
        self.secrets.dedup();
        if self.image.as_deref() == Some("") {
            self.image = None;
        }
        if self.working_dir.as_deref() == Some("") {
            self.working_dir = None;
        }
        self
    }

    /// Checks every field against the default [`Limits`]; the error names
    /// the first field that is wrong.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        self.validate_with(&Limits::default())
    }

    /// Checks every field against `lim`; the error names the first field
    /// that is wrong and, for a size or count, the limit.
    pub fn validate_with(&self, lim: &Limits) -> Result<(), InvalidInput> {
        use limits::*;
        let bad = |field: &str, msg: String| Err(InvalidInput::new(field, msg));
        if self.command.is_empty() || self.command[0].is_empty() {
            return bad("command", "must name a program to run".into());
        }
        if self.command.len() > lim.max_args {
            return bad(
                "command",
                format!(
                    "has {} arguments; the limit is {}",
                    self.command.len(),
                    lim.max_args
                ),
            );
        }
        let mut total = 0;
        for (i, arg) in self.command.iter().enumerate() {
            if arg.contains('\0') {
                return bad("command", format!("argument {i} contains a NUL byte"));
            }
            if arg.len() > lim.max_arg_bytes {
                return bad(
                    "command",
                    format!(
                        "argument {i} is {} bytes long; the limit is {}",
                        arg.len(),
                        lim.max_arg_bytes
                    ),
                );
            }
            total += arg.len();
        }
        if total > lim.max_command_bytes {
            return bad(
                "command",
                format!(
                    "is {total} bytes long; the limit is {}",
                    lim.max_command_bytes
                ),
            );
        }
        if self.name.len() > MAX_NAME_LEN {
            return bad("name", format!("is longer than {MAX_NAME_LEN} bytes"));
        }
        if let Some(image) = &self.image
            && (image.len() > MAX_IMAGE_LEN
                || image.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return bad(
                "image",
                "must be an image reference without spaces, at most 512 bytes".into(),
            );
        }
        if self.env.len() > lim.max_env {
            return bad(
                "env",
                format!(
                    "has {} variables; the limit is {}",
                    self.env.len(),
                    lim.max_env
                ),
            );
        }
        let mut env_bytes = 0;
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return bad(
                    "env",
                    format!("variable name {k:?} is empty or contains '=' or NUL"),
                );
            }
            if v.contains('\0') {
                return bad("env", format!("value of {k} contains a NUL byte"));
            }
            env_bytes += k.len() + v.len();
        }
        if env_bytes > lim.max_env_bytes {
            return bad(
                "env",
                format!(
                    "is {env_bytes} bytes (names and values); the limit is {}",
                    lim.max_env_bytes
                ),
            );
        }
        if let Some(dir) = &self.working_dir
            && (dir.len() > MAX_PATH_LEN || dir.contains('\0'))
        {
            return bad(
                "working_dir",
                format!("must be a path of at most {MAX_PATH_LEN} bytes without NUL"),
            );
        }
        if let Some(t) = self.timeout_ms
            && (t == 0 || t > MAX_TIMEOUT_MS)
        {
            return bad(
                "timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            );
        }
        // 0 would reach the agent as "the default grace" (10 s): refused
        // rather than silently changed (found by fuzz/submit_json).
        if let Some(g) = self.kill_grace_ms
            && (g == 0 || g > MAX_TIMEOUT_MS)
        {
            return bad(
                "kill_grace_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS} (leave it out for the default)"),
            );
        }
        // Free text travels to the store too; a NUL byte has no use in
        // any of it and PostgreSQL refuses it.
        if self.name.contains('\0') {
            return bad("name", "contains a NUL byte".into());
        }
        if self.image.as_deref().is_some_and(|i| i.contains('\0')) {
            return bad("image", "contains a NUL byte".into());
        }
        if self.secrets.iter().any(|s| s.contains('\0')) {
            return bad("secrets", "a secret name contains a NUL byte".into());
        }
        if self.labels.len() > MAX_LABELS {
            return bad("labels", format!("has more than {MAX_LABELS} labels"));
        }
        for label in &self.labels {
            validate_label(label).map_err(|msg| InvalidInput::new("labels", msg))?;
        }
        if self.max_retries > MAX_RETRIES {
            return bad("max_retries", format!("must be at most {MAX_RETRIES}"));
        }
        let size = self.size_bytes();
        if size > lim.max_spec_bytes {
            return bad(
                "spec",
                format!(
                    "is {size} bytes in all; the limit is {}",
                    lim.max_spec_bytes
                ),
            );
        }
        self.validate_secrets()?;
        self.validate_container()
    }

    /// Secret names: well-formed, not too many, not also in `env`.
    fn validate_secrets(&self) -> Result<(), InvalidInput> {
        use crate::mask::{MAX_JOB_SECRETS, validate_secret_name};
        if self.secrets.len() > MAX_JOB_SECRETS {
            return Err(InvalidInput::new(
                "secrets",
                format!("has more than {MAX_JOB_SECRETS} secrets"),
            ));
        }
        for name in &self.secrets {
            validate_secret_name(name).map_err(|m| InvalidInput::new("secrets", m))?;
            if self.env.contains_key(name) {
                return Err(InvalidInput::new(
                    "secrets",
                    format!("{name} is also set in env: a variable comes from one or the other"),
                ));
            }
        }
        Ok(())
    }

    /// The container-only fields: limits in range, and only with an image.
    fn validate_container(&self) -> Result<(), InvalidInput> {
        use limits::*;
        let bad = |field: &str, msg: String| Err(InvalidInput::new(field, msg));
        let container_only = [
            ("cpu_millicores", self.cpu_millicores.is_some()),
            ("memory_bytes", self.memory_bytes.is_some()),
            ("pull_policy", self.pull_policy.is_some()),
        ];
        if self.image.is_none()
            && let Some((field, _)) = container_only.iter().find(|(_, set)| *set)
        {
            return bad(
                field,
                "applies only to jobs with an image (container jobs)".into(),
            );
        }
        if let Some(cpu) = self.cpu_millicores
            && !(1..=MAX_CPU_MILLICORES).contains(&cpu)
        {
            return bad(
                "cpu_millicores",
                format!("must be between 1 and {MAX_CPU_MILLICORES} (1000 = one CPU)"),
            );
        }
        if let Some(mem) = self.memory_bytes
            && !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&mem)
        {
            return bad(
                "memory_bytes",
                format!(
                    "must be between {MIN_MEMORY_BYTES} (6 MiB, the engine's minimum) and {MAX_MEMORY_BYTES}"
                ),
            );
        }
        Ok(())
    }
}

/// A label is a short token of letters, digits and `._-:/=`.
pub fn validate_label(label: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._-:/=".contains(c);
    if label.is_empty() || label.len() > limits::MAX_LABEL_LEN || !label.chars().all(ok) {
        return Err(format!(
            "label {:?} must be 1 to {} characters of letters, digits and ._-:/=",
            label.chars().take(40).collect::<String>(),
            limits::MAX_LABEL_LEN
        ));
    }
    Ok(())
}

/// A job id: 1 to 128 characters of letters, digits, `.`, `_` and `-`.
pub fn validate_job_id(id: &str) -> Result<(), InvalidInput> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if id.is_empty() {
        return Err(InvalidInput::new("job_id", "must not be empty"));
    }
    if id.len() > limits::MAX_ID_LEN {
        return Err(InvalidInput::new(
            "job_id",
            format!(
                "is {} bytes long; the limit is {}",
                id.len(),
                limits::MAX_ID_LEN
            ),
        ));
    }
    if !id.chars().all(ok) {
        return Err(InvalidInput::new(
            "job_id",
            "may contain only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// A worker id follows the job id rules.
pub fn validate_worker_id(id: &str) -> Result<(), InvalidInput> {
    validate_job_id(id).map_err(|e| InvalidInput::new("worker_id", e.message))
}

/// Input that breaks a rule; `field` names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct InvalidInput {
    pub field: String,
    pub message: String,
}

impl InvalidInput {
    pub fn new(field: &str, message: impl Into<String>) -> InvalidInput {
        InvalidInput {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_command_is_refused_naming_the_field() {
        let err = JobSpec::default().validate().unwrap_err();
        assert_eq!(err.field, "command");
        let err = JobSpec::command([""]).validate().unwrap_err();
        assert_eq!(err.field, "command");
    }

    #[test]
    fn job_ids_are_checked() {
        assert!(validate_job_id("build-42.x_y").is_ok());
        assert_eq!(validate_job_id("").unwrap_err().field, "job_id");
        assert!(validate_job_id("a b").is_err());
        assert!(validate_job_id("../etc").is_err());
        let long = "x".repeat(10 * 1024);
        assert!(
            validate_job_id(&long)
                .unwrap_err()
                .message
                .contains("10240")
        );
    }

    #[test]
    fn normalization_makes_equivalent_specs_equal() {
        let a = JobSpec {
            labels: vec!["b".into(), "a".into(), "b".into()],
            image: Some(String::new()),
            ..JobSpec::command(["/usr/bin/make", "all"])
        }
        .normalized();
        let b = JobSpec {
            name: "make".into(),
            labels: vec!["a".into(), "b".into()],
            ..JobSpec::command(["/usr/bin/make", "all"])
        }
        .normalized();
        assert_eq!(a, b);
    }

    #[test]
    fn container_limits_are_accepted_with_an_image() {
        let spec = JobSpec {
            image: Some("busybox".into()),
            cpu_millicores: Some(500),
            memory_bytes: Some(limits::MIN_MEMORY_BYTES),
            pull_policy: Some(PullPolicy::Never),
            ..JobSpec::command(["true"])
        };
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn cpu_amounts_parse_to_millicores() {
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("1.5"), Ok(1500));
        assert_eq!(parse_cpu("0.25"), Ok(250));
        for bad in ["", "0", "0m", "-1", "x", "5 cpus", "1e30", "NaN"] {
            assert!(parse_cpu(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn pull_policies_round_trip() {
        for p in [PullPolicy::IfNotPresent, PullPolicy::Never] {
            assert_eq!(PullPolicy::parse(p.as_str()), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        assert!(PullPolicy::parse("always").is_err());
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(2 << 30), "2 GiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
        assert_eq!(human_bytes((1 << 20) + 1), "1048577 bytes");
    }

    #[test]
    fn image_jobs_require_docker() {
        let spec = JobSpec {
            image: Some("rust:1.70".into()),
            labels: vec!["linux".into()],
            ..JobSpec::command(["cargo", "build"])
        };
        let req: Vec<_> = spec.required_labels().collect();
        assert_eq!(req, vec!["linux", "docker"]);
    }

    #[test]
    fn field_errors_name_the_field() {
        let cases: Vec<(JobSpec, &str)> = vec![
            (
                JobSpec {
                    env: [("A=B".to_string(), "x".to_string())].into(),
                    ..JobSpec::command(["true"])
                },
                "env",
            ),
            (
                JobSpec {
                    timeout_ms: Some(0),
                    ..JobSpec::command(["true"])
                },
                "timeout_ms",
            ),
            (
                JobSpec {
                    labels: vec!["has space".into()],
                    ..JobSpec::command(["true"])
                },
                "labels",
            ),
            (
                JobSpec {
                    max_retries: 1000,
                    ..JobSpec::command(["true"])
                },
                "max_retries",
            ),
            (JobSpec::command(["a\0b"]), "command"),
            (
                JobSpec {
                    name: "a\0b".into(),
                    ..JobSpec::command(["true"])
                },
                "name",
            ),
            (
                JobSpec {
                    image: Some("a\0b".into()),
                    ..JobSpec::command(["true"])
                },
                "image",
            ),
            (
                JobSpec {
                    secrets: vec!["a\0b".into()],
                    ..JobSpec::command(["true"])
                },
                "secrets",
            ),
            (
                JobSpec {
                    memory_bytes: Some(64 << 20),
                    ..JobSpec::command(["true"])
                },
                "memory_bytes",
            ),
            (
                JobSpec {
                    image: Some("busybox".into()),
                    memory_bytes: Some(1024),
                    ..JobSpec::command(["true"])
                },
                "memory_bytes",
            ),
            (
                JobSpec {
                    image: Some("busybox".into()),
                    cpu_millicores: Some(0),
                    ..JobSpec::command(["true"])
                },
                "cpu_millicores",
            ),
            (
                JobSpec {
                    cpu_millicores: Some(500),
                    ..JobSpec::command(["true"])
                },
                "cpu_millicores",
            ),
            (
                JobSpec {
                    pull_policy: Some(PullPolicy::Never),
                    ..JobSpec::command(["true"])
                },
                "pull_policy",
            ),
        ];
        for (spec, field) in cases {
            assert_eq!(spec.validate().unwrap_err().field, field);
        }
    }
}
