//! hast-nbd (placeholder while the crate is written).
