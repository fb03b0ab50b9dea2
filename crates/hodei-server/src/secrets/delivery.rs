//! The last step before an assignment goes on the wire: the values of the
//! job's secrets and the per-job log limit. And the orchestrator's own
//! check of that limit on what agents send.

use bytes::Bytes;
use hwp_proto::pb;

use super::{Secrets, SecretsError};

/// What the orchestrator stores past the log limit on each stream, for the
/// agent's truncation marker; anything beyond is dropped.
pub const LOG_SLACK_BYTES: u64 = 64 * 1024;

/// The default per-job log limit: 1 GiB.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 1 << 30;

/// Completes outgoing assignments. The default has no secrets store and no
/// log limit.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    secrets: Option<Secrets>,
    max_log_bytes: u64,
}

impl Delivery {
    /// `max_log_bytes` 0: no limit.
    pub fn new(secrets: Option<Secrets>, max_log_bytes: u64) -> Delivery {
        Delivery {
            secrets,
            max_log_bytes,
        }
    }

    pub fn max_log_bytes(&self) -> u64 {
        self.max_log_bytes
    }

    /// INVALID_ARGUMENT naming `secrets` when a submission names a secret
    /// that is not stored (the gRPC side of the HTTP API's 400).
    pub async fn check_known(&self, names: &[String]) -> Result<(), tonic::Status> {
        if names.is_empty() {
            return Ok(());
        }
        let Some(secrets) = &self.secrets else {
            return Err(tonic::Status::invalid_argument(
                "invalid secrets: this orchestrator keeps no secrets",
            ));
        };
        secrets.check_known(names).await.map_err(|e| match e {
            SecretsError::Invalid { .. } => tonic::Status::invalid_argument(e.to_string()),
            other => tonic::Status::unavailable(other.to_string()),
        })
    }

    /// For an assignment: sets the log limit and the values of the job's
    /// secrets, or, when one cannot be had, the reason, which makes the
    /// agent fail the job instead of running it without.
    pub async fn complete(&self, msg: &mut pb::ServerMessage) {
        let Some(pb::server_message::Body::Assign(a)) = &mut msg.body else {
            return;
        };
        a.max_log_bytes = self.max_log_bytes;
        let names = a
            .spec
            .as_ref()
            .map(|s| s.secrets.clone())
            .unwrap_or_default();
        if names.is_empty() {
            return;
        }
        let resolved = match &self.secrets {
            Some(secrets) => secrets.resolve(&names).await,
            None => Err("this orchestrator keeps no secrets".to_string()),
        };
        match resolved {
            Ok(values) => {
                a.secrets = values
                    .into_iter()
                    .map(|(name, value)| pb::SecretEnv { name, value })
                    .collect();
            }
            Err(reason) => {
                tracing::warn!(job = %a.job_id, %reason, "cannot give the job its secrets; the agent fails it");
                a.secrets_error = reason;
            }
        }
    }
}

/// Cuts `data`, which starts at `offset` of its stream, so that nothing
/// past `max_log_bytes` + [`LOG_SLACK_BYTES`] is stored (a misbehaving
/// agent); returns how many bytes were dropped. `max_log_bytes` 0: no
/// limit.
pub fn cap_log_entry(offset: u64, data: &mut Bytes, max_log_bytes: u64) -> usize {
    if max_log_bytes == 0 {
        return 0;
    }
    let limit = max_log_bytes.saturating_add(LOG_SLACK_BYTES);
    let keep = limit.saturating_sub(offset).min(data.len() as u64) as usize;
    let dropped = data.len() - keep;
    data.truncate(keep);
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_past_the_limit_and_slack_are_cut() {
        let max = 1000;
        let limit = max + LOG_SLACK_BYTES;
        let mut data = Bytes::from(vec![b'x'; 100]);
        assert_eq!(cap_log_entry(0, &mut data, max), 0);
        assert_eq!(data.len(), 100);
        assert_eq!(cap_log_entry(limit - 40, &mut data, max), 60);
        assert_eq!(data.len(), 40);
        let mut data = Bytes::from(vec![b'x'; 100]);
        assert_eq!(cap_log_entry(limit + 5, &mut data, max), 100);
        assert!(data.is_empty());
        let mut data = Bytes::from(vec![b'x'; 100]);
        assert_eq!(cap_log_entry(u64::MAX - 3, &mut data, 0), 0, "no limit");
        assert_eq!(cap_log_entry(u64::MAX - 3, &mut data, max), 100);
    }
}
