//! HWP, the Hodei Worker Protocol.
//!
//! [`pb`] holds the generated protobuf messages and gRPC stubs, so the seed's
//! usage paths compile as written:
//! `hwp_proto::pb::worker_service_client::WorkerServiceClient` and
//! `hwp_proto::pb::worker_service_server::{WorkerService, WorkerServiceServer}`.
//!
//! The protocol is described in `docs/protocol.md`.

/// Generated protobuf messages and gRPC client/server stubs for package `hwp`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("hwp");
}

/// The protocol version an agent announces in `Hello.protocol_version`.
pub const PROTOCOL_VERSION: u32 = 1;
