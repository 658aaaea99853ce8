//! hastctl (placeholder while the crate is written).
pub fn main() -> i32 { 0 }
