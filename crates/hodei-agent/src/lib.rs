//! The Hodei worker agent: dials the orchestrator over HWP, runs the jobs it
//! is given, streams their output back and reports how they ended.
//!
//! - [`session`]: the connection, reconnects and drain; [`config`]: its settings; [`servers`]: which
//!   orchestrator URL (replica) it dials next;
//! - [`outbox`]: what is owed to the orchestrator (logs, results) until acknowledged;
//! - [`spool`]: the on-disk log spool behind the outbox; [`recover`]: what a
//!   restarted agent does with the spool a previous one left;
//! - [`runner`]: one job from assignment to result; [`mask`]: its output's
//!   secrets masked and its log limited on the way to the outbox;
//!   [`workdir`]: its working directory; [`dir_pool`]: emptied
//!   directories kept for reuse (spool entries, working directories);
//! - [`executor`]: the executor trait; [`process`]: local processes, started
//!   by [`spawn`], their programs found in `PATH` through [`path_cache`];
//!   [`docker`]: Docker containers, for jobs with an image;
//! - [`tls`]: TLS to the orchestrator (trusted CA, client certificate).

pub mod config;
pub mod dir_pool;
pub mod docker;
pub mod executor;
pub mod janitor;
pub mod mask;
pub mod outbox;
pub mod path_cache;
pub mod process;
pub mod recover;
pub mod runner;
pub mod servers;
pub mod session;
pub mod slots;
pub mod spawn;
pub mod spool;
pub mod tls;
pub mod workdir;

pub use session::{AgentConfig, AgentError, DEFAULT_SPOOL_MAX_BYTES, parse_size, run};
