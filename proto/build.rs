//! Compiles cache.proto with protox (pure Rust), so no system `protoc` is
//! needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=cache.proto");
    let descriptors = protox::compile(["cache.proto"], ["."])?;
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
