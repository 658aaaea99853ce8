//! The pidfile, locked for the daemon's lifetime so that a second daemon on
//! the same config refuses to start instead of fighting over the disks.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub struct PidFile {
    file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("another {program} is already running (pid {pid}), pidfile {path}")]
    Running {
        program: String,
        pid: String,
        path: String,
    },
    #[error("cannot use pidfile {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl PidFile {
    /// Opens and locks the pidfile; fails if another process holds it.
    /// `program` names the daemon in the error.
    pub fn acquire(program: &str, path: &Path) -> Result<PidFile, PidFileError> {
        let io = |source| PidFileError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(PidFileError::Running {
                program: program.to_string(),
                pid: pid.trim().to_string(),
                path: path.display().to_string(),
            });
        }
        Ok(PidFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Records our pid (after daemonizing, so it is the daemon's).
    pub fn write_pid(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        writeln!(self.file, "{}", std::process::id())?;
        self.file.sync_data()
    }

    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
