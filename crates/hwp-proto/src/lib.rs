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

/// A secret's value is never printed: Debug shows its name only.
impl std::fmt::Debug for pb::SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEnv")
            .field("name", &self.name)
            .field("value", &"[MASKED]")
            .finish()
    }
}

/// The encoded `FileDescriptorSet` of `hwp.proto` (package `hwp`), for gRPC
/// server reflection and for tools that need the schema at run time.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hwp_descriptor.bin"));

/// The protocol version an agent announces in `Hello.protocol_version`.
pub const PROTOCOL_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    use prost::Message as _;

    #[test]
    fn descriptor_set_describes_the_worker_service() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        let file = fds
            .file
            .iter()
            .find(|f| f.package() == "hwp")
            .expect("package hwp");
        let service = file
            .service
            .iter()
            .find(|s| s.name() == "WorkerService")
            .expect("service WorkerService");
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        for rpc in [
            "RegisterWorker",
            "AssignJob",
            "StreamLogs",
            "CancelJob",
            "Attach",
        ] {
            assert!(methods.contains(&rpc), "{rpc} missing from {methods:?}");
        }
    }

    #[test]
    fn secret_values_are_redacted_in_debug_output() {
        let a = super::pb::Assignment {
            secrets: vec![super::pb::SecretEnv {
                name: "TOKEN".into(),
                value: "hunter2-value".into(),
            }],
            ..Default::default()
        };
        let shown = format!("{a:?}");
        assert!(shown.contains("TOKEN"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
