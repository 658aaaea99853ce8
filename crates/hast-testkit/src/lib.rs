//! Harness for hast's end-to-end tests: everything a test needs to run the real
//! `hastd`/`hastctl` binaries and real NBD clients on loopback, and to clean up after
//! itself even when it fails.
//!
//! It owns: temporary directories ([`tmp`]), loopback ports and a tiny NBD handshake
//! probe ([`net`]), child processes that are always stopped by PID and commands that
//! always run under a time bound ([`proc`]), the "is this tool here / are we root"
//! checks that skip loudly outside CI and fail inside it ([`env`]), and a hastd
//! [`node::Node`] generic over node name and config text, which the multi-node and
//! network-namespace harness will build on; and the outside tools tests drive
//! ([`tools`]: the python NBD scripts, a qemu-nbd reference, FUSE/loop mounts);
//! README.md's command blocks, found by their first line ([`readme`]).
//!
//! Rules this crate keeps so tests stay trustworthy: no process is ever killed by
//! name, every wait has a bound, and a failing test prints the daemon's log.

pub mod cluster;
pub mod coherence;
pub mod env;
pub mod faults;
pub mod hacluster;
pub mod hastcd;
pub mod net;
pub mod node;
pub mod pair;
pub mod proc;
pub mod proxy;
pub mod readme;
pub mod tmp;
pub mod tools;

pub use env::{
    in_ci, py_script, repo_root, require_fuse, require_python_nbd, require_root, require_tool,
    require_tools, timeout_s, which, PYTHON,
};
pub use net::{free_port, nbd_info, nbd_list, NbdAddr};
pub use node::{Bins, Layout, Node, NodeBuilder, ResourceSpec};
pub use pair::{Pair, PairBuilder, ResStatus, Side};
pub use proc::{run, run_ok, tail, try_run, wait_for, Proc};
pub use proxy::Proxy;
pub use tmp::TempDir;
pub use tools::{expect_ok, output_text, python, python_command, LoopMount, NbdFuse, QemuNbd};

/// One mebibyte, for sizes written in tests.
pub const MIB: u64 = 1024 * 1024;
/// One gibibyte.
pub const GIB: u64 = 1024 * MIB;

/// The [`Bins`] of the crate whose integration test calls this: the `hastd` and
/// `hastctl` that Cargo built for it (`CARGO_BIN_EXE_*` is only set there, so this
/// must be a macro expanded in the test itself).
#[macro_export]
macro_rules! bins {
    () => {
        $crate::Bins::new(env!("CARGO_BIN_EXE_hastd"), env!("CARGO_BIN_EXE_hastctl"))
    };
}
