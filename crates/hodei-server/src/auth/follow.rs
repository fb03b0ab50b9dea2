//! With PostgreSQL, other replicas create and revoke tokens too: their
//! changes are announced (see `store.rs`) and applied to this replica's
//! cache, and a token not in the cache yet is looked up in the database.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use hodei_core::auth::Refusal;
use tokio::sync::mpsc;

use super::store::TokenEvent;
use super::{Auth, Inner, TokenRow};
use crate::store::StoreError;

/// How often a replica reads every token again, in case a notification
/// was lost (they are normally applied within moments).
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// Database lookups of tokens not in the cache at once (a flood of unknown
/// tokens must not take the pool from the orchestrator's commits).
pub(super) const MAX_LOOKUPS: usize = 2;

/// Puts a token read from the store in the cache. A revocation is final:
/// a row read before it (a stale snapshot) does not undo it.
pub(super) fn merge(tokens: &mut HashMap<String, TokenRow>, mut row: TokenRow) {
    if let Some(cached) = tokens.get(&row.id) {
        row.revoked_at = row.revoked_at.or(cached.revoked_at);
    }
    tokens.insert(row.id.clone(), row);
}

/// Applies the token changes of every replica to the cache of `auth` until
/// it is dropped; reads every token again now and then, and after a lost
/// connection.
pub(super) async fn follow(auth: Weak<Inner>, mut events: mpsc::Receiver<TokenEvent>) {
    loop {
        let event = match tokio::time::timeout(RESYNC_EVERY, events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(_) => TokenEvent::Resync,
        };
        let Some(inner) = auth.upgrade() else {
            return;
        };
        let auth = Auth(inner);
        let done = match &event {
            TokenEvent::Changed(id) => auth.refresh(id).await,
            TokenEvent::Resync => auth.reload().await,
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, ?event, "cannot read tokens changed by another replica");
        }
    }
}

impl Auth {
    /// Reads token `id` again (another replica created or revoked it).
    pub(super) async fn refresh(&self, id: &str) -> Result<(), StoreError> {
        if let Some(row) = self.0.store.token(id).await? {
            merge(&mut self.lock_tokens(), row);
        }
        Ok(())
    }

    /// Reads every token again.
    pub(super) async fn reload(&self) -> Result<(), StoreError> {
        let rows = self.0.store.tokens().await?;
        let mut tokens = self.lock_tokens();
        for row in rows {
            merge(&mut tokens, row);
        }
        Ok(())
    }

    /// Looks token `id` up in the database (another replica may have
    /// created it a moment ago) and caches it; `Err` when it is not there.
    pub(super) async fn look_up(&self, id: &str) -> Result<(), Refusal> {
        let _permit = self.0.lookups.acquire().await;
        match self.0.store.token(id).await {
            Ok(Some(row)) => {
                merge(&mut self.lock_tokens(), row);
                Ok(())
            }
            Ok(None) => Err(Refusal::Unknown(id.to_string())),
            Err(e) => {
                tracing::warn!(token = %id, error = %e, "cannot look up a token in the database");
                Err(Refusal::Unknown(id.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::auth::Role;

    fn row(revoked_at: Option<i64>) -> TokenRow {
        TokenRow {
            id: "t1".into(),
            name: "n".into(),
            role: Role::Read,
            secret_sha256: vec![1],
            created_at: 1,
            expires_at: None,
            revoked_at,
        }
    }

    #[test]
    fn a_stale_row_does_not_undo_a_revocation() {
        let mut tokens = HashMap::new();
        merge(&mut tokens, row(None));
        assert_eq!(tokens["t1"].revoked_at, None);
        merge(&mut tokens, row(Some(5)));
        merge(&mut tokens, row(None));
        assert_eq!(tokens["t1"].revoked_at, Some(5));
    }
}
