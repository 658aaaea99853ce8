//! The journal's record codec (to be written).
