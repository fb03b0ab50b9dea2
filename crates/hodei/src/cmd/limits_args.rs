//! `hodei server`'s input limits: `--max-grpc-message`, `--max-http-body`,
//! `--max-job-spec`, `--max-args`, `--max-arg-size`, `--max-command-size`,
//! `--max-env`, `--max-env-size`. Defaults are
//! [`hodei_core::spec::Limits::default`].

use hodei_core::spec::Limits;

/// A byte size such as `16M`, `512K` or `4096`, as a `usize`.
fn parse_size(s: &str) -> Result<usize, String> {
    let n = hodei_agent::parse_size(s)?;
    usize::try_from(n).map_err(|_| format!("invalid size {s:?}: too large"))
}

/// A count of at least 1.
fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("invalid count {s:?}: expected a number above 0")),
        Ok(n) => Ok(n),
    }
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Input limits")]
pub struct LimitsArgs {
    /// Largest gRPC message the server reads; bigger ones are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "HODEI_MAX_GRPC_MESSAGE", default_value = "16M", value_name = "SIZE", value_parser = parse_size)]
    pub max_grpc_message: usize,
    /// Largest HTTP request body the server reads; bigger ones get 413.
    #[arg(long, env = "HODEI_MAX_HTTP_BODY", default_value = "4M", value_name = "SIZE", value_parser = parse_size)]
    pub max_http_body: usize,
    /// Largest job spec: the bytes of all its strings (argv, environment,
    /// name, labels, image, working directory).
    #[arg(long, env = "HODEI_MAX_JOB_SPEC", default_value = "4M", value_name = "SIZE", value_parser = parse_size)]
    pub max_job_spec: usize,
    /// Most arguments in a job's command.
    #[arg(long, env = "HODEI_MAX_ARGS", default_value = "4096", value_name = "N", value_parser = parse_count)]
    pub max_args: usize,
    /// Longest single argument of a job's command.
    #[arg(long, env = "HODEI_MAX_ARG_SIZE", default_value = "128K", value_name = "SIZE", value_parser = parse_size)]
    pub max_arg_size: usize,
    /// Most bytes of a job's command, all arguments together.
    #[arg(long, env = "HODEI_MAX_COMMAND_SIZE", default_value = "1M", value_name = "SIZE", value_parser = parse_size)]
    pub max_command_size: usize,
    /// Most environment variables of a job.
    #[arg(long, env = "HODEI_MAX_ENV", default_value = "1024", value_name = "N", value_parser = parse_count)]
    pub max_env: usize,
    /// Most bytes of a job's environment, names and values together.
    #[arg(long, env = "HODEI_MAX_ENV_SIZE", default_value = "1M", value_name = "SIZE", value_parser = parse_size)]
    pub max_env_size: usize,
}

impl LimitsArgs {
    /// The limits (the server checks them for consistency when it starts).
    pub fn limits(&self) -> Limits {
        Limits {
            max_grpc_message_bytes: self.max_grpc_message,
            max_http_body_bytes: self.max_http_body,
            max_spec_bytes: self.max_job_spec,
            max_args: self.max_args,
            max_arg_bytes: self.max_arg_size,
            max_command_bytes: self.max_command_size,
            max_env: self.max_env,
            max_env_bytes: self.max_env_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: LimitsArgs,
    }

    #[test]
    fn the_flag_defaults_are_the_core_defaults() {
        let cli = Cli::try_parse_from(["hodei"]).expect("defaults parse");
        assert_eq!(cli.limits.limits(), Limits::default());
    }

    #[test]
    fn flags_set_each_limit() {
        let cli = Cli::try_parse_from([
            "hodei",
            "--max-grpc-message=2M",
            "--max-http-body=32K",
            "--max-job-spec=8K",
            "--max-args=8",
            "--max-arg-size=1K",
            "--max-command-size=2K",
            "--max-env=4",
            "--max-env-size=512",
        ])
        .expect("parse");
        let l = cli.limits.limits();
        assert_eq!(l.check(), Ok(()));
        assert_eq!(
            l,
            Limits {
                max_grpc_message_bytes: 2 << 20,
                max_http_body_bytes: 32 << 10,
                max_spec_bytes: 8 << 10,
                max_args: 8,
                max_arg_bytes: 1 << 10,
                max_command_bytes: 2 << 10,
                max_env: 4,
                max_env_bytes: 512,
            }
        );
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(Cli::try_parse_from(["hodei", "--max-args=0"]).is_err());
        assert!(Cli::try_parse_from(["hodei", "--max-env-size=lots"]).is_err());
        let tiny = Cli::try_parse_from(["hodei", "--max-grpc-message=100"]).expect("parses");
        let err = tiny.limits.limits().check().expect_err("too small");
        assert!(err.contains("max_grpc_message_bytes"), "{err}");
    }
}
