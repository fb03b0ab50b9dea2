//! Generates the HWP messages and gRPC stubs with a pure-Rust proto compiler
//! (protox), so building Hodei needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "protos/hwp.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["protos"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".hwp.LogEntry.bytes")
        .compile_fds(fds)?;
    Ok(())
}
