//! The error of this crate: `syntax::FileError` (one line `FILE:LINE:
//! message`, or `FILE: message` when no line is to blame, with a sysexits(3)
//! status from `exit_code()`) over hast.conf's `ErrorKind`, so the daemon and
//! the CLI can print it as is.

use crate::level::Level;
use crate::syntax::{ExitStatus, FileError, SyntaxError, EX_CONFIG};

/// A configuration error: the file, the line (when one is to blame) and what
/// went wrong.
pub type ConfigError = FileError<ErrorKind>;

impl ExitStatus for ErrorKind {
    fn exit_code(&self) -> i32 {
        match self {
            ErrorKind::Syntax(e) => e.exit_code(),
            ErrorKind::SecretFile { error, .. } => error.exit_code(),
            ErrorKind::NbdTlsFile { error, .. } => error.exit_code(),
            ErrorKind::TlsFile { code, .. } => *code,
            _ => EX_CONFIG,
        }
    }
}

/// What went wrong. The Display text is the message part of the line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading the file, tokens, statements, values and names: the part
    /// hast.conf shares with hastmon.conf.
    #[error(transparent)]
    Syntax(#[from] SyntaxError),

    #[error("\"{key}\" is not allowed in the {level}")]
    WrongLevel { key: String, level: Level },
    #[error("sections nested deeper than {max} levels")]
    TooDeep { max: usize },

    #[error(
        "no configuration for resource \"{resource}\" on this node (acceptable node names: {acceptable})"
    )]
    NoNodeSection {
        resource: String,
        acceptable: String,
    },
    #[error("resource \"{resource}\": \"local\" is not set for this node")]
    MissingLocal { resource: String },
    #[error(
        "resource \"{resource}\": \"remote\" is not set for this node (use \"remote none\" for a single-node resource)"
    )]
    MissingRemote { resource: String },
    #[error("resource \"{resource}\": export name \"{name}\" is already used by resource \"{other}\" (line {other_line})")]
    DuplicateExportName {
        resource: String,
        name: String,
        other: String,
        other_line: u32,
    },
    #[error("resource \"{resource}\": local {path} is already used by resource \"{other}\" (line {other_line})")]
    DuplicateLocal {
        resource: String,
        /// `"PATH"`, or `"PATH" (the same file as "OTHER")` when the other
        /// resource reaches it by another path (one field: every config
        /// error carries this enum's size).
        path: String,
        other: String,
        other_line: u32,
    },
    /// A name the system does not know (user, group), found by hastd.
    #[error("{0}")]
    Lookup(String),
    #[error("secret_file \"{}\": {error}", .path.display())]
    SecretFile {
        path: std::path::PathBuf,
        error: crate::secret::SecretError,
    },
    #[error("{option} \"{}\": {error}", .path.display())]
    NbdTlsFile {
        option: &'static str,
        path: std::path::PathBuf,
        error: PemFileError,
    },
    /// `nbd_tls*` options that do not fit together.
    #[error("{0}")]
    NbdTls(&'static str),
    /// A `tls://` address on this node without what TLS needs.
    #[error("{addr} needs {missing}")]
    TlsIncomplete { addr: String, missing: String },
    /// hastd could not use a `tls_cert`/`tls_key` file; `code` is the
    /// sysexits status (66 unreadable, 78 malformed).
    #[error("{option} \"{}\": {error}", .path.display())]
    TlsFile {
        option: &'static str,
        path: std::path::PathBuf,
        error: String,
        code: i32,
    },
    /// A peer that answers keepalives is judged by `timeout`; declaring it
    /// dead for silence must not take longer than that.
    #[error("resource \"{resource}\": ping_timeout {ping} is longer than timeout {timeout}")]
    PingAboveTimeout {
        resource: String,
        ping: u32,
        timeout: u32,
    },
    #[error("resource \"{resource}\": NBD socket path \"{path}\" is longer than {max} bytes")]
    SocketPathTooLong {
        resource: String,
        path: String,
        max: usize,
    },
}

/// Why a PEM file could not be used. `Io` is exit 66, the rest 78.
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("not a regular file")]
    NotAFile,
    /// Larger than the limit it carries (`nbd_tls::PEM_FILE_SIZE_MAX`).
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    /// A private key anyone on the host can read is no longer private.
    #[error("readable or writable by others (mode {0:03o}); chmod o-rwx it")]
    Exposed(u32),
    /// Set by hastd: the PEM does not hold what it should.
    #[error("{0}")]
    Invalid(String),
}

impl PemFileError {
    pub fn exit_code(&self) -> i32 {
        match self {
            PemFileError::Io(_) => crate::syntax::EX_NOINPUT,
            _ => crate::syntax::EX_CONFIG,
        }
    }
}
