//! Authentication and authorization rules: plain decisions over plain data.
//! The orchestrator's shell (`hodei-server/src/auth/`) stores tokens, reads
//! headers and certificates, and asks these functions what to do.
//!
//! - [`Role`] and [`Need`]: who may do what; [`need_of`] is the route table
//!   (HTTP paths and gRPC methods alike);
//! - [`TokenParts`]: the `hodei_<id>_<secret>` format; [`ct_eq`];
//! - [`token_state`]: revoked, expired or valid;
//! - [`judge_report`]: whether an agent's report concerns its own assignment;
//! - [`bind_worker`]: a worker id belongs to the first identity that claims it;
//! - [`may_cancel`]; [`Bucket`]: the submission rate limit.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::Millis;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including token management.
    Admin,
    /// Submit jobs, cancel its own, read everything.
    Submit,
    /// Read jobs, logs, workers, statistics.
    Read,
    /// A worker agent: join, run assigned jobs, report on them.
    Agent,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Submit, Role::Read, Role::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Submit => "submit",
            Role::Read => "read",
            Role::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role grants `need`.
    pub fn allows(self, need: Need) -> bool {
        match need {
            Need::Public => true,
            Need::Admin => self == Role::Admin,
            Need::Submit => matches!(self, Role::Admin | Role::Submit),
            Need::Read => matches!(self, Role::Admin | Role::Submit | Role::Read),
            Need::Agent => matches!(self, Role::Admin | Role::Agent),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A credential held in memory: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, to send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A token as users see it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub role: Option<Role>,
    #[serde(default)]
    pub name: Option<String>,
    /// Lifetime like `30d`, `12h`; none: no expiry.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// The answer to a token creation: the only time the secret is shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The whole token, `hodei_<id>_<secret>`.
    pub token: String,
}

impl fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedToken")
            .field("info", &self.info)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Longest token name.
pub const MAX_TOKEN_NAME: usize = 128;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: open to anyone who reaches the port.
    Public,
    Read,
    Submit,
    Admin,
    Agent,
}

impl Need {
    /// The role to name in a refusal.
    pub fn role_name(self) -> &'static str {
        match self {
            Need::Public => "none",
            Need::Read => "read",
            Need::Submit => "submit",
            Need::Admin => "admin",
            Need::Agent => "agent",
        }
    }

    /// Whether a request with this need counts against the submission rate.
    pub fn is_submission(method: &str, path: &str) -> bool {
        matches!(
            (method, path),
            ("POST", "/api/v1/jobs") | ("POST", "/api/v1/jobs/batch")
        ) || path == "/hwp.WorkerService/AssignJob"
    }
}

/// Options of the route table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteOptions {
    /// `/metrics` without a token (for a scraper on a trusted network).
    pub public_metrics: bool,
}

/// One rule of the route table: a method (`*`: any), a path (a trailing
/// `*` matches any rest) and what it needs. The first matching rule wins.
pub type Rule = (&'static str, &'static str, Need);

/// The route table. Anything not listed needs `read` for GET/HEAD and
/// `admin` for other methods: a route added later is closed until listed.
pub const RULES: &[Rule] = &[
    ("GET", "/healthz", Need::Public),
    ("GET", "/readyz", Need::Public),
    ("*", "/ui/login", Need::Public),
    ("GET", "/ui/static/*", Need::Public),
    // gRPC: health checks and reflection describe no data.
    ("POST", "/grpc.health.v1.Health/*", Need::Public),
    (
        "POST",
        "/grpc.reflection.v1.ServerReflection/*",
        Need::Public,
    ),
    (
        "POST",
        "/grpc.reflection.v1alpha.ServerReflection/*",
        Need::Public,
    ),
    // HWP: the seed RPCs and the agent session.
    ("POST", "/hwp.WorkerService/AssignJob", Need::Submit),
    ("POST", "/hwp.WorkerService/CancelJob", Need::Submit),
    ("POST", "/hwp.WorkerService/RegisterWorker", Need::Agent),
    ("POST", "/hwp.WorkerService/StreamLogs", Need::Agent),
    ("POST", "/hwp.WorkerService/Attach", Need::Agent),
    ("POST", "/hwp.WorkerService/*", Need::Admin),
    // Administration.
    ("*", "/api/v1/tokens*", Need::Admin),
    ("*", "/api/v1/secrets*", Need::Admin),
    // Submissions and cancels (a `submit` token cancels only its own jobs;
    // the handler checks ownership).
    ("POST", "/api/v1/jobs", Need::Submit),
    ("POST", "/api/v1/jobs/batch", Need::Submit),
    ("POST", "/api/v1/jobs/*/cancel", Need::Submit),
    ("POST", "/ui/logout", Need::Read),
];

/// What `method path` needs. `*` inside a rule's path matches one segment
/// (`/api/v1/jobs/*/cancel`); a trailing `*` matches any rest.
pub fn need_of(method: &str, path: &str, options: RouteOptions) -> Need {
    if path == "/metrics" && method == "GET" && options.public_metrics {
        return Need::Public;
    }
    for (m, pattern, need) in RULES {
        if (*m == "*" || *m == method) && path_matches(pattern, path) {
            return *need;
        }
    }
    match method {
        "GET" | "HEAD" => Need::Read,
        _ => Need::Admin,
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*')
        && !prefix.ends_with('/')
        && !prefix.contains('*')
    {
        // "/api/v1/tokens*": the path itself or anything under it.
        return path == prefix || path.starts_with(&format!("{prefix}/"));
    }
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some("*"), Some(seg)) if !seg.is_empty() => {
                // A trailing `*` takes the rest.
                if p.clone().next().is_none() {
                    return true;
                }
            }
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// A token as given: `hodei_<id>_<secret>`. The id is public (listed,
/// logged); only a hash of the secret is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenParts<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

impl fmt::Debug for TokenParts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "TokenParts {{ id: {:?}, secret: <redacted> }}", self.id)
    }
}

/// Prefix of every token.
pub const TOKEN_PREFIX: &str = "hodei_";
/// Length of a token id and of a secret (lowercase hex / alphanumerics).
pub const TOKEN_ID_LEN: usize = 12;
pub const TOKEN_SECRET_LEN: usize = 40;

/// Splits a token into id and secret; `None` if it is not of the format.
pub fn parse_token(token: &str) -> Option<TokenParts<'_>> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (ok(id, TOKEN_ID_LEN) && ok(secret, TOKEN_SECRET_LEN)).then_some(TokenParts { id, secret })
}

/// Equality in time independent of where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a presented credential is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no credentials: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("malformed token: expected hodei_<id>_<secret>")]
    Malformed,
    #[error("unknown token {0}")]
    Unknown(String),
    #[error("token {0} does not match")]
    Mismatch(String),
    #[error("token {0} was revoked")]
    Revoked(String),
    #[error("token {0} expired")]
    Expired(String),
}

/// Whether a stored token may be used at `now`.
pub fn token_state(
    id: &str,
    revoked_at: Option<Millis>,
    expires_at: Option<Millis>,
    now: Millis,
) -> Result<(), Refusal> {
    if revoked_at.is_some() {
        return Err(Refusal::Revoked(id.to_string()));
    }
    if expires_at.is_some_and(|e| now >= e) {
        return Err(Refusal::Expired(id.to_string()));
    }
    Ok(())
}

/// The current assignment of a live job, as the engine holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment<'a> {
    /// The current attempt (0: never assigned).
    pub attempt: u32,
    /// The worker of the current attempt.
    pub worker: Option<&'a str>,
    /// Whether the current attempt is assigned or running.
    pub holds: bool,
}

/// What to do with an agent's report (log, result, start, rejection,
/// heartbeat entry) about `attempt` of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The reporter holds this attempt: apply it.
    Apply,
    /// The reporter's own attempt, but no longer current (or the job is
    /// finished): change nothing, tell the agent to stop it.
    Stale,
    /// Not the reporter's attempt: refuse (PERMISSION_DENIED).
    Denied(String),
}

/// Judges a report by `worker` about `job_id`'s `attempt`. `job` is the
/// live job's assignment (`None` when the job is unknown or finished);
/// `past_worker` the worker that held `attempt` when it is an earlier
/// attempt the engine remembers.
pub fn judge_report(
    worker: &str,
    job_id: &str,
    attempt: u32,
    job: Option<Assignment<'_>>,
    past_worker: Option<&str>,
) -> Verdict {
    let Some(job) = job else {
        // Finished (or never known): nothing can change; nothing to deny
        // that the store would not refuse anyway.
        return Verdict::Stale;
    };
    let denied = |holder: Option<&str>| {
        Verdict::Denied(match holder {
            Some(h) => format!(
                "attempt {attempt} of job {job_id} is assigned to worker {h}, not to {worker}"
            ),
            None => format!("attempt {attempt} of job {job_id} was never assigned to {worker}"),
        })
    };
    if attempt == 0 || attempt > job.attempt {
        return denied(None);
    }
    if attempt == job.attempt {
        return match job.worker {
            Some(w) if w == worker && job.holds => Verdict::Apply,
            Some(w) if w == worker => Verdict::Stale,
            other => denied(other),
        };
    }
    match past_worker {
        Some(w) if w != worker => denied(Some(w)),
        // Its own earlier attempt, or one from before a restart, whose
        // holder is not remembered: fenced, never applied.
        _ => Verdict::Stale,
    }
}

/// A worker id and the identity that claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// First claim: record it.
    New,
    /// The identity it is bound to.
    Same,
    /// Bound to another identity.
    Conflict,
}

pub fn bind_worker(bound: Option<&str>, presented: &str) -> Binding {
    match bound {
        None => Binding::New,
        Some(b) if b == presented => Binding::Same,
        Some(_) => Binding::Conflict,
    }
}

/// Whether `role` (token `caller`) may cancel a job submitted by `submitter`.
pub fn may_cancel(role: Role, caller: &str, submitter: Option<&str>) -> bool {
    match role {
        Role::Admin => true,
        Role::Submit => submitter == Some(caller),
        Role::Read | Role::Agent => false,
    }
}

/// A token bucket: `rate` per second, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    last: Millis,
}

impl Bucket {
    pub fn full(burst: f64, now: Millis) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Takes one if available.
    pub fn take(&mut self, rate: f64, burst: f64, now: Millis) -> bool {
        let elapsed = (now - self.last).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now.max(self.last);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Parses a lifetime like `30d`, `12h`, `90m`, `45s` into milliseconds.
pub fn parse_ttl(s: &str) -> Result<Millis, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a lifetime (e.g. 30d, 12h, 90m)"))?;
    let per = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" | "" => 1_000,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use d, h, m or s")),
    };
    match n.checked_mul(per) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(format!("{s:?} is not a positive lifetime")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_they_say() {
        use Need::*;
        assert!(Role::Admin.allows(Admin) && Role::Admin.allows(Agent));
        assert!(Role::Submit.allows(Submit) && Role::Submit.allows(Read));
        assert!(!Role::Submit.allows(Admin) && !Role::Submit.allows(Agent));
        assert!(Role::Read.allows(Read) && !Role::Read.allows(Submit));
        assert!(Role::Agent.allows(Agent) && !Role::Agent.allows(Read));
        for r in Role::ALL {
            assert!(r.allows(Public));
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn the_route_table_closes_by_default() {
        let o = RouteOptions::default();
        assert_eq!(need_of("GET", "/healthz", o), Need::Public);
        assert_eq!(need_of("GET", "/readyz", o), Need::Public);
        assert_eq!(need_of("GET", "/metrics", o), Need::Read);
        let public = RouteOptions {
            public_metrics: true,
        };
        assert_eq!(need_of("GET", "/metrics", public), Need::Public);
        assert_eq!(need_of("POST", "/api/v1/jobs", o), Need::Submit);
        assert_eq!(need_of("POST", "/api/v1/jobs/batch", o), Need::Submit);
        assert_eq!(need_of("GET", "/api/v1/jobs", o), Need::Read);
        assert_eq!(need_of("POST", "/api/v1/jobs/abc/cancel", o), Need::Submit);
        assert_eq!(need_of("POST", "/api/v1/jobs/abc/other", o), Need::Admin);
        assert_eq!(need_of("GET", "/api/v1/tokens", o), Need::Admin);
        assert_eq!(need_of("POST", "/api/v1/tokens/x/revoke", o), Need::Admin);
        assert_eq!(need_of("GET", "/api/v1/tokensx", o), Need::Read);
        assert_eq!(need_of("PUT", "/api/v1/secrets/db", o), Need::Admin);
        assert_eq!(need_of("GET", "/api/v1/secrets", o), Need::Admin);
        assert_eq!(need_of("DELETE", "/api/v1/anything", o), Need::Admin);
        assert_eq!(need_of("GET", "/ui/login", o), Need::Public);
        assert_eq!(need_of("POST", "/ui/login", o), Need::Public);
        assert_eq!(need_of("GET", "/ui/static/app.js", o), Need::Public);
        assert_eq!(need_of("GET", "/ui/jobs", o), Need::Read);
        assert_eq!(need_of("POST", "/hwp.WorkerService/Attach", o), Need::Agent);
        assert_eq!(
            need_of("POST", "/hwp.WorkerService/AssignJob", o),
            Need::Submit
        );
        assert_eq!(need_of("POST", "/hwp.WorkerService/NewRpc", o), Need::Admin);
        assert_eq!(
            need_of("POST", "/grpc.health.v1.Health/Check", o),
            Need::Public
        );
        assert!(Need::is_submission("POST", "/api/v1/jobs"));
        assert!(Need::is_submission("POST", "/hwp.WorkerService/AssignJob"));
        assert!(!Need::is_submission("GET", "/api/v1/jobs"));
    }

    #[test]
    fn tokens_parse_strictly_and_hide_their_secret() {
        let secret = "a".repeat(TOKEN_SECRET_LEN);
        let t = format!("hodei_0123456789ab_{secret}");
        let p = parse_token(&t).expect("parses");
        assert_eq!(p.id, "0123456789ab");
        assert_eq!(p.secret, secret);
        assert!(!format!("{p:?}").contains(&secret));
        assert_eq!(parse_token("hodei_short_x"), None);
        assert_eq!(parse_token(&format!("other_0123456789ab_{secret}")), None);
        assert_eq!(parse_token(&format!("hodei_0123456789ab_{secret}!")), None);
        assert_eq!(parse_token(""), None);
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn revoked_and_expired_tokens_are_refused() {
        assert_eq!(token_state("t", None, None, 5), Ok(()));
        assert_eq!(token_state("t", None, Some(10), 5), Ok(()));
        assert_eq!(
            token_state("t", None, Some(10), 10),
            Err(Refusal::Expired("t".into()))
        );
        assert_eq!(
            token_state("t", Some(1), Some(10), 5),
            Err(Refusal::Revoked("t".into()))
        );
    }

    #[test]
    fn reports_are_judged_against_the_assignment() {
        let current = |worker, holds| {
            Some(Assignment {
                attempt: 2,
                worker: Some(worker),
                holds,
            })
        };
        assert_eq!(
            judge_report("a", "j", 2, current("a", true), None),
            Verdict::Apply
        );
        // Its own attempt, finished: stale.
        assert_eq!(
            judge_report("a", "j", 2, current("a", false), None),
            Verdict::Stale
        );
        // Another worker's current attempt.
        assert!(matches!(
            judge_report("b", "j", 2, current("a", true), None),
            Verdict::Denied(m) if m.contains("worker a") && m.contains("not to b")
        ));
        // An attempt never given.
        assert!(matches!(
            judge_report("a", "j", 3, current("a", true), None),
            Verdict::Denied(_)
        ));
        assert!(matches!(
            judge_report("a", "j", 0, current("a", true), None),
            Verdict::Denied(_)
        ));
        // Its own earlier attempt (after a partition): stale, fenced.
        assert_eq!(
            judge_report("b", "j", 1, current("a", true), Some("b")),
            Verdict::Stale
        );
        // Someone else's earlier attempt.
        assert!(matches!(
            judge_report("c", "j", 1, current("a", true), Some("b")),
            Verdict::Denied(_)
        ));
        // Holder forgotten (restart): fenced, never applied.
        assert_eq!(
            judge_report("c", "j", 1, current("a", true), None),
            Verdict::Stale
        );
        // Finished or unknown job.
        assert_eq!(judge_report("c", "j", 1, None, None), Verdict::Stale);
        // A queued job with no worker: nobody's.
        let queued = Some(Assignment {
            attempt: 1,
            worker: None,
            holds: false,
        });
        assert!(matches!(
            judge_report("a", "j", 1, queued, None),
            Verdict::Denied(_)
        ));
    }

    #[test]
    fn worker_ids_stay_with_their_first_identity() {
        assert_eq!(bind_worker(None, "token:a"), Binding::New);
        assert_eq!(bind_worker(Some("token:a"), "token:a"), Binding::Same);
        assert_eq!(bind_worker(Some("token:a"), "token:b"), Binding::Conflict);
    }

    #[test]
    fn submit_tokens_cancel_only_their_jobs() {
        assert!(may_cancel(Role::Admin, "x", Some("y")));
        assert!(may_cancel(Role::Admin, "x", None));
        assert!(may_cancel(Role::Submit, "x", Some("x")));
        assert!(!may_cancel(Role::Submit, "x", Some("y")));
        assert!(!may_cancel(Role::Submit, "x", None));
        assert!(!may_cancel(Role::Read, "x", Some("x")));
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let mut b = Bucket::full(2.0, 0);
        assert!(b.take(1.0, 2.0, 0));
        assert!(b.take(1.0, 2.0, 0));
        assert!(!b.take(1.0, 2.0, 0));
        assert!(!b.take(1.0, 2.0, 500));
        assert!(b.take(1.0, 2.0, 1000));
        // Never more than the burst.
        assert!(b.take(1.0, 2.0, 100_000));
        assert!(b.take(1.0, 2.0, 100_000));
        assert!(!b.take(1.0, 2.0, 100_000));
    }

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_ttl("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_ttl("2h"), Ok(7_200_000));
        assert_eq!(parse_ttl("90m"), Ok(5_400_000));
        assert_eq!(parse_ttl("5"), Ok(5_000));
        assert!(parse_ttl("0d").is_err());
        assert!(parse_ttl("3w").is_err());
        assert!(parse_ttl("d").is_err());
        assert!(parse_ttl("99999999999999999d").is_err());
    }
}
