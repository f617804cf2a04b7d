//! Compiles `proto/leash/v1/ingest.proto` with protox (pure Rust, so the build needs no system
//! `protoc`) and generates the prost messages and the tonic client and server from it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/leash/v1/ingest.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Decodes from one contiguous slice; see src/codec.rs.
        .codec_path("crate::codec::SliceCodec")
        .compile_fds(fds)?;
    Ok(())
}
