//! Hodei's pure domain: what a job is, how it moves through its life, and
//! where it should run. Nothing here does I/O; the orchestrator and the agent
//! are shells around these functions.
//!
//! - [`auth`]: roles, the route table, token format, report and binding rules;
//! - [`spec`]: the job spec and input validation;
//! - [`job`]: the job record and its single transition function;
//! - [`log`]: log streams and offset bookkeeping;
//! - [`frames`]: the binary form of a live log follow;
//! - [`mask`]: secret names and values, and masking them in output;
//! - [`scheduler`]: placement of queued jobs on workers;
//! - [`engine`]: the orchestrator's state machine (events in, store writes and
//!   messages out).

pub mod api;
pub mod auth;
pub mod engine;
pub mod frames;
pub mod job;
pub mod log;
pub mod mask;
pub mod scheduler;
pub mod spec;

pub use job::{Job, JobEvent, JobState, Millis, Outcome, TransitionError, transition};
pub use log::LogStream;
pub use spec::{InvalidInput, JobSpec};
