//! Control sockets: root-only Unix sockets that a second daemon on the same
//! path refuses to steal.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Binds the control socket at `path` (mode 0600). A stale socket left by a
/// dead daemon is replaced; one that still answers is an error naming
/// `program`.
pub fn bind_control(program: &str, path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another {program} answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    bind_private(path)
}

/// Binds a Unix socket with mode 0600: the umask is narrowed around the bind
/// so the socket never exists with looser permissions, even briefly.
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    // SAFETY: umask only swaps the process's file mode mask; restored below.
    let old = unsafe { libc::umask(0o177) };
    let res = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    res
}
