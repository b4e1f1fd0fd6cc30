//! `paddock`: the Paddock command-line interface.
fn main() {}
