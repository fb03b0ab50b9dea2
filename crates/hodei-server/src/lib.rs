//! The Hodei orchestrator.

pub mod store;
