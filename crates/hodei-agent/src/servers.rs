//! The orchestrator URLs an agent may attach to, and which one it dials
//! next.
//!
//! The agent starts with the **first** URL: the order is the operator's
//! preference (e.g. the nearest replica first), and a fixed start makes the
//! agent's behaviour predictable and its logs easy to follow; agents that
//! should spread over the replicas are given their lists in different
//! orders. When a dial fails or a session ends, the next dial goes to the
//! next URL in the list (round robin): after a short pause (at most the
//! backoff minimum) while some URL of the round is untried, and with the
//! usual exponential backoff with full jitter once every URL failed in a
//! row. A session that lasted starts a new round. With one URL this is
//! exactly the single-server backoff.

use std::time::Duration;

use rand::Rng;
use tonic::transport::Endpoint;

use crate::session::AgentError;
use crate::tls::AgentTls;

/// One orchestrator URL and its endpoint (TLS set up at each dial).
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub endpoint: Endpoint,
}

/// Every URL the agent may dial, checked once at start: a malformed URL or
/// unreadable TLS files stop the agent before it dials anything.
pub async fn targets(urls: &[String], tls: &AgentTls) -> Result<Vec<Target>, AgentError> {
    let urls: Vec<&str> = urls
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(AgentError::NoServer);
    }
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| AgentError::BadUrl {
                url: url.to_string(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        if !crate::tls::is_https(url) && !tls.is_empty() {
            tracing::warn!(server = %url, "TLS files given but the server URL is not https://: they are not used for it");
        }
        // Unreadable TLS files stop the agent now; later dials read them again.
        crate::tls::configure(endpoint.clone(), url, tls).await?;
        out.push(Target {
            url: url.to_string(),
            endpoint,
        });
    }
    Ok(out)
}

/// How the last dial or session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The dial failed, or the session ended soon after it began.
    Failed,
    /// A session that lasted a while ended.
    Ended,
    /// The orchestrator shut down and asked for a redial within this time.
    Shutdown(Duration),
}

/// Which URL to dial next and how long to wait before. Pure (but for the
/// jitter), so the policy is unit-tested.
#[derive(Debug, Clone)]
pub struct Rotation {
    len: usize,
    current: usize,
    /// Dials that failed in a row since the last session that lasted.
    misses: u32,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl Rotation {
    /// A rotation over `len` URLs (at least one), starting with the first.
    pub fn new(len: usize, backoff_min: Duration, backoff_max: Duration) -> Rotation {
        Rotation {
            len: len.max(1),
            current: 0,
            misses: 0,
            backoff_min,
            backoff_max,
        }
    }

    /// The index of the URL to dial now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// Moves on to the next URL after `outcome`; returns how long to wait
    /// before dialing it.
    pub fn advance(&mut self, outcome: Outcome) -> Duration {
        // Always the next URL: after a failure it is the next one to try;
        // after a shutdown the one that shut down is the last choice; after
        // a lost session the next replica is as good and may be healthier.
        self.current = (self.current + 1) % self.len;
        match outcome {
            Outcome::Failed => {
                self.misses = self.misses.saturating_add(1);
                let len = u32::try_from(self.len).unwrap_or(u32::MAX);
                if self.misses.is_multiple_of(len) {
                    // A whole round failed: back off.
                    full_jitter(self.backoff_min, self.backoff_max, self.misses / len)
                } else {
                    // Another URL of this round is untried: go on promptly.
                    full_jitter(self.backoff_min, self.backoff_max, 0)
                }
            }
            Outcome::Ended => {
                self.misses = 0;
                full_jitter(self.backoff_min, self.backoff_max, 0)
            }
            Outcome::Shutdown(within) => {
                self.misses = 0;
                // Spread the agents' return over the window the server gave
                // (when they go to another replica, it spares that one a
                // reconnect storm just the same).
                let ms = within.as_millis().min(u64::MAX as u128) as u64;
                Duration::from_millis(rand::rng().random_range(0..=ms))
            }
        }
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(max, base·2^n)].
pub fn full_jitter(base: Duration, max: Duration, failures: u32) -> Duration {
    let ceiling = base.saturating_mul(1u32 << failures.min(16)).min(max);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=ms.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn failures_go_round_the_list_promptly_then_back_off() {
        let mut r = Rotation::new(3, MIN, MAX);
        assert_eq!(r.current(), 0);
        for round in 1..=6u32 {
            for i in 1..=3 {
                let delay = r.advance(Outcome::Failed);
                assert_eq!(r.current(), i % 3);
                if i < 3 {
                    assert!(delay <= MIN, "within a round: {delay:?}");
                } else {
                    let ceiling = MIN.saturating_mul(1 << round).min(MAX);
                    assert!(delay <= ceiling, "round {round}: {delay:?}");
                }
            }
        }
    }

    #[test]
    fn one_url_backs_off_as_a_single_server_does() {
        let mut r = Rotation::new(1, MIN, MAX);
        for n in 1..=20u32 {
            let delay = r.advance(Outcome::Failed);
            assert_eq!(r.current(), 0);
            assert!(delay <= MIN.saturating_mul(1 << n.min(16)).min(MAX));
        }
        assert!(r.advance(Outcome::Ended) <= MIN);
        assert_eq!(r.current(), 0);
    }

    #[test]
    fn a_session_that_lasted_starts_a_new_round_at_the_next_url() {
        let mut r = Rotation::new(2, MIN, MAX);
        r.advance(Outcome::Failed);
        r.advance(Outcome::Failed);
        assert_eq!(r.current(), 0);
        assert!(r.advance(Outcome::Ended) <= MIN);
        assert_eq!(r.current(), 1);
        // The next failure is the first of a new round: prompt.
        assert!(r.advance(Outcome::Failed) <= MIN);
        assert_eq!(r.current(), 0);
    }

    #[test]
    fn a_shutdown_prefers_another_url_and_waits_within_the_window() {
        let within = Duration::from_millis(250);
        let mut r = Rotation::new(2, MIN, MAX);
        assert!(r.advance(Outcome::Shutdown(within)) <= within);
        assert_eq!(r.current(), 1, "not the one that shut down");
        assert_eq!(r.advance(Outcome::Shutdown(Duration::ZERO)), Duration::ZERO);
        assert_eq!(r.current(), 0);
    }

    #[tokio::test]
    async fn urls_are_checked_at_start() {
        let tls = AgentTls::default();
        assert!(matches!(
            targets(&[], &tls).await,
            Err(AgentError::NoServer)
        ));
        assert!(matches!(
            targets(&[" ".to_string()], &tls).await,
            Err(AgentError::NoServer)
        ));
        let bad = targets(&["http://ok:1".to_string(), "not a url".to_string()], &tls).await;
        assert!(matches!(bad, Err(AgentError::BadUrl { url, .. }) if url == "not a url"));
        let two = targets(
            &["http://a:1".to_string(), " http://b:2 ".to_string()],
            &tls,
        )
        .await
        .expect("two URLs");
        let urls: Vec<&str> = two.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(urls, ["http://a:1", "http://b:2"]);
    }
}
