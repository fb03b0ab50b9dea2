//! The seed contract holds: `crates/hwp-proto/protos/hwp.proto` keeps every
//! seed message, field (name, number, type, label), service and RPC, and the
//! vendored seed copy is identical to the shared spec when that is present.

use prost_types::{DescriptorProto, FileDescriptorProto, ServiceDescriptorProto};

fn compile(dir: &str, file: &str) -> FileDescriptorProto {
    let fds = protox::compile([file], [dir]).expect("proto compiles");
    fds.file
        .into_iter()
        .find(|f| f.name() == file)
        .expect("file in set")
}

fn message<'a>(f: &'a FileDescriptorProto, name: &str) -> Option<&'a DescriptorProto> {
    f.message_type.iter().find(|m| m.name() == name)
}

fn service<'a>(f: &'a FileDescriptorProto, name: &str) -> Option<&'a ServiceDescriptorProto> {
    f.service.iter().find(|s| s.name() == name)
}

#[test]
fn hwp_proto_is_a_superset_of_the_seed() {
    let seed = compile("protos", "hwp-seed.proto");
    let ours = compile("../hwp-proto/protos", "hwp.proto");
    assert_eq!(seed.package(), ours.package(), "package name");
    assert_eq!(seed.message_type.len(), 8, "the seed has eight messages");
    for m in &seed.message_type {
        let mine =
            message(&ours, m.name()).unwrap_or_else(|| panic!("message {} missing", m.name()));
        for field in &m.field {
            let same = mine.field.iter().find(|f| f.number() == field.number());
            let same = same.unwrap_or_else(|| {
                panic!(
                    "{}.{} (#{}) missing",
                    m.name(),
                    field.name(),
                    field.number()
                )
            });
            assert_eq!(
                same.name(),
                field.name(),
                "{}: field #{} renamed",
                m.name(),
                field.number()
            );
            assert_eq!(
                same.r#type(),
                field.r#type(),
                "{}.{} type changed",
                m.name(),
                field.name()
            );
            assert_eq!(
                same.label(),
                field.label(),
                "{}.{} label changed",
                m.name(),
                field.name()
            );
            assert_eq!(
                same.type_name(),
                field.type_name(),
                "{}.{} type name changed",
                m.name(),
                field.name()
            );
        }
    }
    for s in &seed.service {
        let mine =
            service(&ours, s.name()).unwrap_or_else(|| panic!("service {} missing", s.name()));
        for rpc in &s.method {
            let same = mine.method.iter().find(|r| r.name() == rpc.name());
            let same = same.unwrap_or_else(|| panic!("rpc {} missing", rpc.name()));
            assert_eq!(same.input_type(), rpc.input_type(), "{} input", rpc.name());
            assert_eq!(
                same.output_type(),
                rpc.output_type(),
                "{} output",
                rpc.name()
            );
            assert_eq!(
                same.client_streaming(),
                rpc.client_streaming(),
                "{} client streaming",
                rpc.name()
            );
            assert_eq!(
                same.server_streaming(),
                rpc.server_streaming(),
                "{} server streaming",
                rpc.name()
            );
        }
    }
}

#[test]
fn vendored_seed_matches_the_shared_spec() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/spec/hwp-seed.proto");
    let Ok(original) = std::fs::read_to_string(&shared) else {
        eprintln!(
            "{} not present; skipping the byte comparison",
            shared.display()
        );
        return;
    };
    let copy = std::fs::read_to_string("protos/hwp-seed.proto").expect("vendored copy");
    assert_eq!(
        copy, original,
        "protos/hwp-seed.proto drifted from the shared spec"
    );
}
