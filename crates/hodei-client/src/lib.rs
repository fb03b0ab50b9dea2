//! A client for Hodei's HTTP API (`/api/v1`). The CLI, the tests and the
//! benchmarks all go through it, so there is one client path per operation.

use std::time::Duration;

use bytes::Bytes;
use hodei_core::api::{
    BatchSubmitRequest, BatchSubmitResponse, ErrorBody, JobList, JobQuery, Stats, SubmitRequest,
    SubmitResponse,
};
use hodei_core::engine::WorkerInfo;
use hodei_core::{Job, JobState, LogStream};
use serde::de::DeserializeOwned;

mod events;
mod follow;
pub mod sse;

pub use events::{ApiEvent, Events};
pub use follow::FollowEvent;

/// What went wrong talking to the orchestrator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Hodei server at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{} ({})", body.message, body.code)]
    Api { status: u16, body: ErrorBody },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("invalid TLS settings: {0}")]
    Tls(String),
}

/// An error and its causes, `: `-separated: reqwest's own message does not
/// say why a connection failed (e.g. which certificate was refused).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

impl ClientError {
    /// The API error code (`not_found`, `invalid_argument`, ...), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.code),
            _ => None,
        }
    }
}

/// A handle on one orchestrator.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer` (marked sensitive: never logged).
    token: Option<String>,
}

/// TLS for an `https://` server URL (rustls with ring).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM CA certificate(s) to trust instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate followed by its private key (mTLS).
    pub identity_pem: Option<Vec<u8>>,
}

impl Client {
    /// `base`: the server URL, e.g. `http://127.0.0.1:50051`.
    pub fn new(base: &str) -> Result<Client, ClientError> {
        Client::with_tls(base, &TlsOptions::default())
    }

    /// Like [`Client::new`], with a CA to trust and a client certificate for
    /// an `https://` server.
    pub fn with_tls(base: &str, tls: &TlsOptions) -> Result<Client, ClientError> {
        let tls_error = |e: reqwest::Error| ClientError::Tls(error_chain(&e));
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if let Some(pem) = &tls.ca_pem {
            builder = builder.tls_built_in_root_certs(false);
            for ca in reqwest::Certificate::from_pem_bundle(pem).map_err(tls_error)? {
                builder = builder.add_root_certificate(ca);
            }
        }
        if let Some(pem) = &tls.identity_pem {
            builder = builder.identity(reqwest::Identity::from_pem(pem).map_err(tls_error)?);
        }
        let http = builder.build().map_err(tls_error)?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http,
            token: None,
        })
    }

    /// This client, authenticating with `token` (`hodei_<id>_<secret>`).
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            message: error_chain(&e),
        }
    }

    /// Sends `req`; an error status becomes the server's [`ClientError::Api`]
    /// (or a protocol error when the body is not a JSON error).
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let req = match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        };
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(body) => ClientError::Api {
                status: status.as_u16(),
                body,
            },
            Err(_) => {
                ClientError::Protocol(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
            }
        })
    }

    /// Sends `req` and decodes its JSON answer.
    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let body = self
            .send(req)
            .await?
            .bytes()
            .await
            .map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(self.http.get(self.url(path))).await
    }

    pub async fn submit(&self, request: &SubmitRequest) -> Result<SubmitResponse, ClientError> {
        self.call(self.http.post(self.url("/jobs")).json(request))
            .await
    }

    /// Submits many jobs in one request and one transaction
    /// (`POST /api/v1/jobs/batch`, at most `hodei_core::api::MAX_BATCH_JOBS`).
    pub async fn submit_batch(
        &self,
        jobs: Vec<SubmitRequest>,
    ) -> Result<BatchSubmitResponse, ClientError> {
        let body = BatchSubmitRequest { jobs };
        self.call(self.http.post(self.url("/jobs/batch")).json(&body))
            .await
    }

    pub async fn job(&self, id: &str) -> Result<Job, ClientError> {
        self.get_json(&format!("/jobs/{id}")).await
    }

    /// One page of jobs, newest first.
    pub async fn jobs(
        &self,
        state: Option<JobState>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<JobList, ClientError> {
        self.list_jobs(&JobQuery {
            state,
            limit: Some(limit),
            cursor: cursor.map(str::to_string),
            ..JobQuery::default()
        })
        .await
    }

    /// One page of jobs matching `query` (state, label, worker, name
    /// prefix; cursor paging), newest first.
    pub async fn list_jobs(&self, query: &JobQuery) -> Result<JobList, ClientError> {
        self.call(self.http.get(self.url("/jobs")).query(query))
            .await
    }

    /// The overview numbers (`GET /api/v1/stats`).
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.get_json("/stats").await
    }

    /// The OpenAPI document of the server's HTTP API.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get_json("/openapi.json").await
    }

    /// `Ok` when the server is ready (`GET /readyz`): its store answers and
    /// its reactor runs.
    pub async fn ready(&self) -> Result<(), ClientError> {
        self.get_text("/readyz").await.map(|_| ())
    }

    /// The Prometheus metrics text (`GET /metrics`).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.get_text("/metrics").await
    }

    /// A plain-text endpoint outside `/api/v1`.
    async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        resp.text().await.map_err(|e| self.unreachable(e))
    }

    pub async fn cancel(&self, id: &str) -> Result<Job, ClientError> {
        self.call(self.http.post(self.url(&format!("/jobs/{id}/cancel"))))
            .await
    }

    /// Creates a token (admin); the answer holds its value, shown once.
    pub async fn create_token(
        &self,
        request: &hodei_core::auth::CreateTokenRequest,
    ) -> Result<hodei_core::auth::CreatedToken, ClientError> {
        self.call(self.http.post(self.url("/tokens")).json(request))
            .await
    }

    pub async fn tokens(&self) -> Result<Vec<hodei_core::auth::TokenInfo>, ClientError> {
        self.get_json("/tokens").await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<hodei_core::auth::TokenInfo, ClientError> {
        self.call(self.http.post(self.url(&format!("/tokens/{id}/revoke"))))
            .await
    }

    /// Sets secret `name` to `value` (admin); the answer never holds it.
    pub async fn set_secret(
        &self,
        name: &str,
        value: String,
    ) -> Result<hodei_core::api::SecretInfo, ClientError> {
        let body = hodei_core::api::SetSecretRequest { value };
        self.call(
            self.http
                .put(self.url(&format!("/secrets/{name}")))
                .json(&body),
        )
        .await
    }

    /// Every secret's name and times (admin; never values).
    pub async fn secrets(&self) -> Result<Vec<hodei_core::api::SecretInfo>, ClientError> {
        let list: hodei_core::api::SecretList = self.get_json("/secrets").await?;
        Ok(list.secrets)
    }

    /// Deletes secret `name` (admin).
    pub async fn delete_secret(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.http.delete(self.url(&format!("/secrets/{name}"))))
            .await
            .map(drop)
    }

    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, ClientError> {
        self.get_json("/workers").await
    }

    /// The whole stored log of the current attempt (`None`: both streams
    /// interleaved by time).
    pub async fn logs(&self, id: &str, stream: Option<LogStream>) -> Result<Bytes, ClientError> {
        self.attempt_logs(id, stream, None).await
    }

    /// The whole stored log of one attempt (`None`: the current one).
    pub async fn attempt_logs(
        &self,
        id: &str,
        stream: Option<LogStream>,
        attempt: Option<u32>,
    ) -> Result<Bytes, ClientError> {
        let which = stream.map_or("both", LogStream::as_str);
        let mut url = self.url(&format!("/jobs/{id}/logs?stream={which}"));
        if let Some(a) = attempt {
            url.push_str(&format!("&attempt={a}"));
        }
        let resp = self.send(self.http.get(url)).await?;
        resp.bytes().await.map_err(|e| self.unreachable(e))
    }

    /// Waits until the job is finished (by following its events) and returns it.
    pub async fn wait(&self, id: &str) -> Result<Job, ClientError> {
        self.follow(id, Duration::from_secs(60), |_| {}).await?;
        self.job(id).await
    }
}
