//! The `keyward` binary: parses flags and hands over to the library crates.
mod cli;
fn main() {}
