//! The Hodei worker agent.

pub mod executor;
pub mod process;
