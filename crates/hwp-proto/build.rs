//! Generates the HWP messages and gRPC stubs with a pure-Rust proto compiler
//! (protox), so building Hodei needs no system `protoc`. Also writes the
//! encoded `FileDescriptorSet` to `OUT_DIR` for gRPC server reflection.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "protos/hwp.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["protos"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("hwp_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".hwp.LogEntry.bytes")
        // Secret values never reach a log through Debug (see lib.rs).
        .skip_debug([".hwp.SecretEnv"])
        .compile_fds(fds)?;
    Ok(())
}
