//! One event handler per node: an exclusive `flock(2)` on
//! `<state_dir>/handler.lock`, held for the handler's life and released by
//! the kernel when it dies (also by kill -9). The file holds the holder's
//! pid, so the second one can say who has it.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock file's name in the state directory.
pub const FILE_NAME: &str = "handler.lock";

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
    /// The lock belongs to this open file description: closing it (drop,
    /// exit, kill) releases it.
    _file: File,
    path: PathBuf,
}

impl HandlerLock {
    /// Takes the lock in `dir` at once, or says who holds it. Creates `dir`
    /// (mode 0700) if needed.
    pub fn acquire(dir: &Path) -> Result<HandlerLock, LockError> {
        let path = dir.join(FILE_NAME);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| LockError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        // Not truncated here: the file holds the holder's pid until we
        // hold the lock ourselves.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(io)?;
        loop {
            // SAFETY: flock on a descriptor `file` owns and keeps open for
            // the call; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    let mut text = String::new();
                    // The holder may not have written its pid yet: then
                    // it is unknown, not an error.
                    let pid = file
                        .read_to_string(&mut text)
                        .ok()
                        .and_then(|_| text.trim().parse::<u32>().ok());
                    return Err(LockError::Held { path, pid });
                }
                _ => return Err(io(err)),
            }
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io)?;
        Ok(HandlerLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_fails_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!(
            "hast-events-lock-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let first = HandlerLock::acquire(&dir).expect("first");
        assert_eq!(first.path(), dir.join(FILE_NAME));
        let text = std::fs::read_to_string(first.path()).expect("lock file");
        assert_eq!(text, format!("{}\n", std::process::id()));
        // flock belongs to the open file description: a second one, even
        // in this process, is refused, and is told our pid.
        for _ in 0..2 {
            match HandlerLock::acquire(&dir) {
                Err(LockError::Held { path, pid }) => {
                    assert_eq!(path, dir.join(FILE_NAME));
                    assert_eq!(pid, Some(std::process::id()));
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("acquired twice"),
            }
        }
        let msg = HandlerLock::acquire(&dir).err().map(|e| e.to_string());
        assert_eq!(
            msg,
            Some(format!(
                "another event handler (pid {}) holds {}",
                std::process::id(),
                dir.join(FILE_NAME).display()
            ))
        );
        // The refused attempts did not clobber the pid.
        assert_eq!(
            std::fs::read_to_string(first.path()).expect("lock file"),
            format!("{}\n", std::process::id())
        );
        drop(first);
        let again = HandlerLock::acquire(&dir).expect("free after drop");
        drop(again);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn unknown_holder_pid_is_none() {
        let dir =
            std::env::temp_dir().join(format!("hast-events-lock-nopid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = HandlerLock::acquire(&dir).expect("first");
        std::fs::write(first.path(), "garbage").expect("overwrite");
        assert!(matches!(
            HandlerLock::acquire(&dir),
            Err(LockError::Held { pid: None, .. })
        ));
        drop(first);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
