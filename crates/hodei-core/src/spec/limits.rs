//! Limits on user input. Anything larger is refused with a message naming
//! the field and the limit.
//!
//! The constants are the fixed rules and the defaults; [`Limits`] holds the
//! ones an operator can change (`hodei server --max-…`), and is what
//! [`JobSpec::validate_with`] checks against.

use super::JobSpec;

pub const MAX_ID_LEN: usize = 128;
pub const MAX_NAME_LEN: usize = 256;
pub const MAX_ARGS: usize = 4096;
pub const MAX_ARG_LEN: usize = 128 * 1024;
pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;
pub const MAX_ENV: usize = 1024;
pub const MAX_ENV_BYTES: usize = 1024 * 1024;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_LEN: usize = 128;
pub const MAX_PATH_LEN: usize = 4096;
pub const MAX_IMAGE_LEN: usize = 512;
pub const MAX_RETRIES: u32 = 100;
/// 30 days.
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;
/// 1000 CPUs.
pub const MAX_CPU_MILLICORES: u64 = 1_000_000;
/// The Docker engine refuses memory limits below 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 << 20;
/// 1 PiB.
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// A whole job spec (see [`JobSpec::size_bytes`]): as large as the HTTP
/// body that carries it, so by default only the per-field limits bite.
pub const MAX_SPEC_BYTES: usize = 4 * 1024 * 1024;
/// Largest gRPC message the orchestrator decodes.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest HTTP request body the orchestrator reads.
pub const MAX_HTTP_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The limits an operator can configure. [`Limits::default`] is the
/// constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest gRPC message decoded (RESOURCE_EXHAUSTED beyond it).
    pub max_grpc_message_bytes: usize,
    /// Largest HTTP request body read (413 beyond it).
    pub max_http_body_bytes: usize,
    /// Largest job spec, counted by [`JobSpec::size_bytes`].
    pub max_spec_bytes: usize,
    /// Most arguments in a command (argv[0] included).
    pub max_args: usize,
    /// Longest single argument.
    pub max_arg_bytes: usize,
    /// Most bytes of all arguments together.
    pub max_command_bytes: usize,
    /// Most environment variables.
    pub max_env: usize,
    /// Most bytes of all environment names and values together.
    pub max_env_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_grpc_message_bytes: MAX_GRPC_MESSAGE_BYTES,
            max_http_body_bytes: MAX_HTTP_BODY_BYTES,
            max_spec_bytes: MAX_SPEC_BYTES,
            max_args: MAX_ARGS,
            max_arg_bytes: MAX_ARG_LEN,
            max_command_bytes: MAX_COMMAND_BYTES,
            max_env: MAX_ENV,
            max_env_bytes: MAX_ENV_BYTES,
        }
    }
}

impl Limits {
    /// Whether the limits make sense together: every one at least 1, and a
    /// gRPC message and an HTTP body big enough to carry a small job.
    pub fn check(&self) -> Result<(), String> {
        let all = [
            ("max_grpc_message_bytes", self.max_grpc_message_bytes),
            ("max_http_body_bytes", self.max_http_body_bytes),
            ("max_spec_bytes", self.max_spec_bytes),
            ("max_args", self.max_args),
            ("max_arg_bytes", self.max_arg_bytes),
            ("max_command_bytes", self.max_command_bytes),
            ("max_env", self.max_env),
            ("max_env_bytes", self.max_env_bytes),
        ];
        if let Some((name, _)) = all.iter().find(|(_, v)| *v == 0) {
            return Err(format!("limit {name} must be at least 1"));
        }
        if self.max_grpc_message_bytes < MIN_GRPC_MESSAGE_BYTES {
            return Err(format!(
                "limit max_grpc_message_bytes is {} bytes; it must be at least \
                 {MIN_GRPC_MESSAGE_BYTES} (agents send log chunks of up to 1 MiB)",
                self.max_grpc_message_bytes
            ));
        }
        if self.max_http_body_bytes < MIN_HTTP_BODY_BYTES {
            return Err(format!(
                "limit max_http_body_bytes is {} bytes; it must be at least \
                 {MIN_HTTP_BODY_BYTES} (a small job must fit)",
                self.max_http_body_bytes
            ));
        }
        Ok(())
    }
}

/// The smallest gRPC message limit accepted: agents send log chunks of up
/// to 1 MiB, and a session whose messages are refused cannot make progress.
pub const MIN_GRPC_MESSAGE_BYTES: usize = 2 * 1024 * 1024;
/// The smallest HTTP body limit accepted.
pub const MIN_HTTP_BODY_BYTES: usize = 4096;

impl JobSpec {
    /// The size of a spec for [`Limits::max_spec_bytes`]: the bytes of every
    /// string in it (name, argv, image, environment names and values,
    /// working directory, labels) plus 8 per number. Close to its size on
    /// the wire, whatever the encoding.
    pub fn size_bytes(&self) -> usize {
        let JobSpec {
            name,
            command,
            image,
            env,
            working_dir,
            labels,
            ..
        } = self;
        let strings = name.len()
            + command.iter().map(String::len).sum::<usize>()
            + image.as_ref().map_or(0, String::len)
            + env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + working_dir.as_ref().map_or(0, String::len)
            + labels.iter().map(String::len).sum::<usize>();
        // timeout, priority, retries, kill grace, cpu, memory, pull policy.
        strings + 7 * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(spec: &JobSpec, limits: &Limits) -> (String, String) {
        let e = spec.validate_with(limits).expect_err("over a limit");
        (e.field, e.message)
    }

    #[test]
    fn defaults_are_the_constants_and_consistent() {
        let l = Limits::default();
        assert_eq!(l.max_args, MAX_ARGS);
        assert_eq!(l.max_env_bytes, MAX_ENV_BYTES);
        assert_eq!(l.check(), Ok(()));
        // The default spec limit never refuses a spec the field limits allow.
        let biggest = MAX_NAME_LEN
            + MAX_COMMAND_BYTES
            + MAX_IMAGE_LEN
            + MAX_ENV_BYTES
            + MAX_PATH_LEN
            + MAX_LABELS * MAX_LABEL_LEN
            + 7 * 8;
        assert!(biggest <= MAX_SPEC_BYTES);
    }

    #[test]
    fn nonsense_limits_are_refused() {
        let zero = Limits {
            max_env: 0,
            ..Limits::default()
        };
        assert!(zero.check().unwrap_err().contains("max_env"));
        let tiny = Limits {
            max_grpc_message_bytes: 100,
            ..Limits::default()
        };
        assert!(tiny.check().unwrap_err().contains("max_grpc_message_bytes"));
    }

    #[test]
    fn each_limit_names_its_field_and_value() {
        let l = Limits {
            max_args: 3,
            max_arg_bytes: 10,
            max_command_bytes: 20,
            max_env: 2,
            max_env_bytes: 16,
            max_spec_bytes: 200,
            ..Limits::default()
        };
        let ok = JobSpec::command(["echo", "0123456789"]);
        assert_eq!(ok.validate_with(&l), Ok(()));

        let (f, m) = refused(&JobSpec::command(["a", "b", "c", "d"]), &l);
        assert_eq!(f, "command");
        assert!(m.contains("4 arguments") && m.contains("limit is 3"), "{m}");

        let (f, m) = refused(&JobSpec::command(["echo", "01234567890"]), &l);
        assert_eq!(f, "command");
        assert!(m.contains("argument 1") && m.contains("limit is 10"), "{m}");

        let (f, m) = refused(&JobSpec::command(["0123456789", "0123456789", "x"]), &l);
        assert_eq!(f, "command");
        assert!(m.contains("21 bytes") && m.contains("limit is 20"), "{m}");

        let env = |pairs: &[(&str, &str)]| JobSpec {
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..JobSpec::command(["true"])
        };
        let (f, m) = refused(&env(&[("A", "1"), ("B", "2"), ("C", "3")]), &l);
        assert_eq!(f, "env");
        assert!(m.contains("3 variables") && m.contains("limit is 2"), "{m}");
        let (f, m) = refused(&env(&[("A", "0123456789"), ("B", "12345")]), &l);
        assert_eq!(f, "env");
        assert!(m.contains("17 bytes") && m.contains("limit is 16"), "{m}");

        let big = JobSpec {
            labels: vec!["l".repeat(100), "m".repeat(100)],
            ..JobSpec::command(["true"])
        };
        let (f, m) = refused(&big, &l);
        assert_eq!(f, "spec");
        assert!(
            m.contains(&format!("{} bytes", big.size_bytes())) && m.contains("limit is 200"),
            "{m}"
        );
    }

    #[test]
    fn the_engine_checks_submissions_against_its_limits() {
        use crate::engine::{Engine, EngineConfig, EngineError, Input, Output, Reply};
        let mut engine = Engine::new(EngineConfig::default()).with_limits(Limits {
            max_args: 2,
            ..Limits::default()
        });
        let mut out = Output::default();
        for (req, argv) in [(1, vec!["echo", "a"]), (2, vec!["echo", "a", "b"])] {
            let input = Input::Submit {
                req,
                id: format!("j{req}"),
                spec: JobSpec::command(argv),
                submitter: None,
                fresh: false,
                existing: None,
            };
            engine.handle(input, 1_000, &mut out);
        }
        assert!(matches!(out.replies[0], (1, Reply::Submitted { .. })));
        match &out.replies[1] {
            (2, Reply::Error(EngineError::Invalid(e))) => {
                assert_eq!(e.field, "command");
                assert!(e.message.contains("limit is 2"), "{e}");
            }
            other => panic!("expected an invalid command, got {other:?}"),
        }
        assert_eq!(engine.queue_len(), 1);
    }

    /// Regression (fuzz/submit_json): a kill grace of 0 went to the agent
    /// as 0, which HWP reads as "the default", so the job got 10 s.
    #[test]
    fn a_zero_kill_grace_is_refused_not_turned_into_the_default() {
        let spec = JobSpec {
            kill_grace_ms: Some(0),
            ..JobSpec::command(["true"])
        };
        assert_eq!(spec.validate().unwrap_err().field, "kill_grace_ms");
        let one = JobSpec {
            kill_grace_ms: Some(1),
            ..JobSpec::command(["true"])
        };
        assert_eq!(one.validate(), Ok(()));
    }

    #[test]
    fn raised_limits_allow_more_than_the_defaults() {
        let many = JobSpec::command(vec!["x"; MAX_ARGS + 1]);
        assert_eq!(many.validate().unwrap_err().field, "command");
        let l = Limits {
            max_args: MAX_ARGS * 2,
            ..Limits::default()
        };
        assert_eq!(many.validate_with(&l), Ok(()));
    }
}
