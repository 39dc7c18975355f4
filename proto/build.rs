//! Compiles `proto/sixfold.proto` with protox (a pure-Rust protobuf compiler): the build needs no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/sixfold.proto");
    let file_descriptors = protox::compile(["sixfold.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(file_descriptors)?;
    Ok(())
}
