//! Generates a client from the seed proto only (a copy of
//! `../shared/spec/hwp-seed.proto`, checked identical by the tests).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "protos/hwp-seed.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["protos"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
