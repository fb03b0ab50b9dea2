//! The Hodei orchestrator: a durable job queue and the dispatcher that pushes
//! jobs to worker agents over HWP.
//!
//! - [`store`]: durable state behind the [`store::Store`] trait (SQLite or
//!   PostgreSQL); [`recovery`] rebuilds the engine from it;
//! - [`reactor`]: the task that owns the engine and commits its batches;
//! - [`grpc`]: the HWP service (seed RPCs and the agent session);
//! - [`http`]: the HTTP API, operator endpoints and OpenAPI document;
//! - [`dashboard`]: the web dashboard (`/ui`);
//! - [`metrics`], [`grpc_metrics`]: Prometheus metrics;
//! - [`server`]: wiring it all onto one port;
//! - [`tls`]: TLS, client certificates and the verified [`tls::PeerIdentity`].

pub mod auth;
pub mod convert;
pub mod dashboard;
pub mod grpc;
pub mod grpc_metrics;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod reactor;
pub mod recovery;
pub mod secrets;
pub mod serve;
pub mod server;
pub mod store;
pub mod tls;

pub use server::{Server, ServerConfig, ServerError};
