//! The Hodei worker agent: dials the orchestrator over HWP, runs the jobs it
//! is given, streams their output back and reports how they ended.
//!
//! - [`session`]: the connection, reconnects and drain;
//! - [`outbox`]: what is owed to the orchestrator (logs, results) until acknowledged;
//! - [`runner`]: one job from assignment to result;
//! - [`executor`]: the executor trait; [`process`]: local processes.

pub mod executor;
pub mod outbox;
pub mod process;
pub mod runner;
pub mod session;

pub use session::{AgentConfig, AgentError, run};
