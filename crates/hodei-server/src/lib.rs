//! The Hodei orchestrator: a durable job queue and the dispatcher that pushes
//! jobs to worker agents over HWP.
//!
//! - [`store`]: durable state behind the [`store::Store`] trait (SQLite);
//! - [`reactor`]: the task that owns the engine and commits its batches;
//! - [`grpc`]: the HWP service (seed RPCs and the agent session);
//! - [`http`]: the HTTP API, operator endpoints and OpenAPI document;
//! - [`dashboard`]: the web dashboard (`/ui`);
//! - [`metrics`], [`grpc_metrics`]: Prometheus metrics;
//! - [`server`]: wiring it all onto one port.

pub mod convert;
pub mod dashboard;
pub mod grpc;
pub mod grpc_metrics;
pub mod http;
pub mod metrics;
pub mod reactor;
pub mod server;
pub mod store;

pub use server::{Server, ServerConfig, ServerError};
