//! xDS scale benchmark (filled in below).
fn main() {}
