//! hast-meta: the on-disk metadata of a local component and the in-memory
//! activemap.
//!
//! - [`header`]: the header slot format (encode, strict decode), the geometry rules
//!   ([`Layout`]) and the choice between the two crash-atomic slots ([`pick_slot`]).
//! - [`activemap`]: dirty-extent tracking with the keepdirty LRU, group-committed map
//!   flushes and barrier-gated clearing — the "mark dirty before writing" safety core.
//! - [`store`]: the only I/O — positional reads and writes of a component's header
//!   and map, and `hastctl create`.
//!
//! On-disk layout (format version 1, integers little-endian):
//!
//! ```text
//! offset 0            header slot A (4096 bytes)
//! offset 4096         header slot B (4096 bytes)
//! offset 8192         activemap: 1 bit per extent (bit i of byte i/8, LSB first),
//!                     size rounded up to 4096
//! data_offset         data (= 8192 + map_size)
//! ```

pub mod activemap;
pub mod error;
pub mod header;
pub mod store;

pub use activemap::{ActiveMap, FlushJob};
pub use error::{slot_name, HeaderError, MetaError};
pub use header::{
    check_name, extent_count, map_size, pick_slot, validate_name, Header, Layout, Picked, Role,
    FLAGS_KNOWN, FLAG_INCONSISTENT, FLAG_OUTDATED,
};
pub use store::{min_provider_size, Store};

/// Size of one header slot.
pub const SLOT_SIZE: u64 = 4096;
/// The activemap starts after the two header slots.
pub const MAP_OFFSET: u64 = 8192;
/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
pub const MAGIC: &[u8; 8] = b"HASTMETA";
/// Alignment of the data area and unit of map writes.
pub const BLOCK_SIZE: u64 = 4096;
pub const NAME_LEN_MAX: usize = 64;
pub const EXTENT_SIZE_MIN: u64 = 4096;
pub const EXTENT_SIZE_MAX: u64 = 1 << 30;
pub const EXTENT_SIZE_DEFAULT: u32 = 2 << 20;
pub const KEEPDIRTY_MAX: u64 = 65536;
pub const KEEPDIRTY_DEFAULT: u32 = 64;
/// Smallest data area `create` accepts.
pub const DATASIZE_MIN: u64 = 1 << 20;
/// Largest activemap (2^28 extents: 1 TiB at 4 KiB extents, 512 TiB at 2 MiB).
/// Bounds what a header can make us allocate and keeps the daemon's memory small.
pub const MAP_SIZE_MAX: u64 = 32 << 20;

/// Recompute a slot's checksum at the length it claims (fuzzing and tests only).
#[doc(hidden)]
pub use header::reseal;
