//! hast-conf (placeholder while the crate is written).
