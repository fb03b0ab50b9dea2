//! `hodei secret set|list|rm`: manage secrets (admin), and the server's
//! secrets and log-limit options.
//!
//! A value is read from standard input or a file, never from the command
//! line, so it does not land in shell history or `ps` output.

use std::path::PathBuf;

use anyhow::Context;
use hodei_core::mask::{validate_secret_name, validate_secret_value};

use super::ServerUrl;
use super::table;

/// `hodei server` options for secrets and the per-job log limit.
#[derive(Debug, Clone, clap::Args)]
pub struct SecretsArgs {
    /// The secrets key: 32 bytes, base64 (`openssl rand -base64 32`) or
    /// raw. Default: `<data-dir>/secrets.key`, made at the first start.
    #[arg(long, env = "HODEI_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// A previous secrets key: secrets sealed with it are re-encrypted with
    /// the current key at start (key rotation). Repeatable.
    #[arg(long)]
    pub secrets_old_key_file: Vec<PathBuf>,
    /// Most output one job's log keeps (e.g. 100M, 1G; 0 = no limit); past
    /// it the log says so and the rest is dropped, the job keeps running.
    #[arg(long, env = "HODEI_MAX_LOG_BYTES", default_value = "1G", value_parser = hodei_agent::parse_size)]
    pub max_log_bytes: u64,
}

impl SecretsArgs {
    pub fn config(&self) -> hodei_server::secrets::SecretsConfig {
        hodei_server::secrets::SecretsConfig {
            key_file: self.secrets_key_file.clone(),
            old_key_files: self.secrets_old_key_file.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    pub command: SecretCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Set a secret from standard input (or --from-file); one trailing
    /// newline is dropped. Jobs get it with `hodei run --secret NAME`.
    Set {
        /// The name; also the job's environment variable.
        name: String,
        /// Read the value from this file instead of standard input.
        #[arg(long)]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        server: ServerUrl,
    },
    /// List secrets: names and times, never values.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerUrl,
    },
    /// Delete a secret.
    Rm {
        name: String,
        #[command(flatten)]
        server: ServerUrl,
    },
}

/// The value as read: without one trailing `\n` (or `\r\n`).
fn value_of(mut raw: Vec<u8>) -> anyhow::Result<String> {
    if raw.ends_with(b"\n") {
        raw.pop();
        if raw.ends_with(b"\r") {
            raw.pop();
        }
    }
    let value =
        String::from_utf8(raw).map_err(|_| anyhow::anyhow!("the value is not UTF-8 text"))?;
    validate_secret_value(&value).map_err(|m| anyhow::anyhow!("invalid value: {m}"))?;
    Ok(value)
}

pub async fn secret(args: SecretArgs) -> anyhow::Result<u8> {
    match args.command {
        SecretCommand::Set {
            name,
            from_file,
            server,
        } => {
            validate_secret_name(&name).map_err(|m| anyhow::anyhow!("invalid name: {m}"))?;
            let raw = match &from_file {
                Some(path) => tokio::fs::read(path)
                    .await
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!("value of {name} (end with Ctrl-D):");
                    }
                    tokio::task::spawn_blocking(|| {
                        let mut raw = Vec::new();
                        std::io::Read::read_to_end(&mut std::io::stdin(), &mut raw).map(|_| raw)
                    })
                    .await?
                    .context("cannot read standard input")?
                }
            };
            let info = server.client()?.set_secret(&name, value_of(raw)?).await?;
            let verb = if info.created_at == info.updated_at {
                "created"
            } else {
                "updated"
            };
            println!("{verb} secret {}", info.name);
        }
        SecretCommand::List { json, server } => {
            let secrets = server.client()?.secrets().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&secrets)?);
            } else {
                let now = table::now_ms();
                let ago = |ms: i64| format!("{} ago", table::duration((now - ms).max(0)));
                let rows: Vec<Vec<String>> = secrets
                    .iter()
                    .map(|s| vec![s.name.clone(), ago(s.created_at), ago(s.updated_at)])
                    .collect();
                table::print(&["NAME", "CREATED", "UPDATED"], &rows);
            }
        }
        SecretCommand::Rm { name, server } => {
            server.client()?.delete_secret(&name).await?;
            println!("deleted secret {name}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(value_of(b"abcd\n".to_vec()).unwrap(), "abcd");
        assert_eq!(value_of(b"abcd\r\n".to_vec()).unwrap(), "abcd");
        assert_eq!(value_of(b"abcd\n\n".to_vec()).unwrap(), "abcd\n");
        assert_eq!(value_of(b"a b c d".to_vec()).unwrap(), "a b c d");
        assert!(value_of(b"abc\n".to_vec()).is_err(), "too short");
        assert!(value_of(vec![0xff, 0xfe, 0xfd, 0xfc]).is_err(), "not UTF-8");
    }
}
