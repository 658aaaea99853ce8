//! hast-meta (placeholder while the crate is written).
