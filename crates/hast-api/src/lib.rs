//! hast-api (placeholder while the crate is written).
