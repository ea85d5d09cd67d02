//! The `medpool` binary.
fn main() {}
