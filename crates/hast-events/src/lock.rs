//! One event handler per node: an exclusive `flock(2)` on
//! `<state_dir>/handler.lock`, held for the handler's life and released by
//! the kernel when it dies (also by kill -9). The file holds the holder's
//! pid, so the second one can say who has it.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another event handler{} holds {}", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), .path.display())]
    Held { path: PathBuf, pid: Option<u32> },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The lock, held until dropped.
pub struct HandlerLock {
    _private: (),
}

impl HandlerLock {
    /// Takes the lock in `dir` at once, or says who holds it.
    pub fn acquire(_dir: &Path) -> Result<HandlerLock, LockError> {
        unimplemented!("lock")
    }
}
