//! `hodei token create|list|revoke`: manage API and join tokens (admin).

use hodei_core::auth::{CreateTokenRequest, Role, TokenInfo};

use super::ServerUrl;
use super::table;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (the only time it is shown).
    Create {
        /// admin, submit, read or agent.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A name to recognise it by.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 30d, 12h; default: no expiry.
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        server: ServerUrl,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerUrl,
    },
    /// Revoke a token by id: refused from now on.
    Revoke {
        id: String,
        #[command(flatten)]
        server: ServerUrl,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("unknown role {s:?}: use admin, submit, read or agent"))
}

/// A moment relative to now: `5m ago`, `in 29d`.
fn when(ms: Option<i64>, now: i64) -> String {
    let Some(ms) = ms else { return "-".into() };
    let d = table::duration((now - ms).abs());
    if ms <= now {
        format!("{d} ago")
    } else {
        format!("in {d}")
    }
}

fn row(t: &TokenInfo, now: i64) -> Vec<String> {
    vec![
        t.id.clone(),
        t.name.clone(),
        t.role.to_string(),
        when(Some(t.created_at), now),
        when(t.expires_at, now),
        when(t.revoked_at, now),
    ]
}

pub async fn token(args: TokenArgs) -> anyhow::Result<u8> {
    match args.command {
        TokenCommand::Create {
            role,
            name,
            expires,
            server,
        } => {
            let created = server
                .client()?
                .create_token(&CreateTokenRequest {
                    role: Some(role),
                    name,
                    expires_in: expires,
                })
                .await?;
            eprintln!(
                "created token {} ({}, role {}); it is shown only now:",
                created.info.id, created.info.name, created.info.role
            );
            println!("{}", created.token);
        }
        TokenCommand::List { json, server } => {
            let tokens = server.client()?.tokens().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                let now = table::now_ms();
                let rows: Vec<Vec<String>> = tokens.iter().map(|t| row(t, now)).collect();
                table::print(
                    &["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "REVOKED"],
                    &rows,
                );
            }
        }
        TokenCommand::Revoke { id, server } => {
            let t = server.client()?.revoke_token(&id).await?;
            println!("revoked token {} ({})", t.id, t.name);
        }
    }
    Ok(0)
}
