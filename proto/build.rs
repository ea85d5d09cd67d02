//! Generates the gRPC code from proto/*.proto with a vendored protoc (no protoc on PATH needed).
//!
//! Two passes: `cluster.proto` (node to node) and `admin.proto` (operators). Only the admin pass
//! writes a file descriptor set, which the admin port serves through gRPC server reflection: the
//! internal service is never described to operators.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/cluster.proto"],
        &["proto"],
    )?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut admin = prost_build::Config::new();
    admin.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("admin_descriptor.bin"))
        .compile_with_config(admin, &["proto/admin.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
