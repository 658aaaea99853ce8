//! The error of `conf`: hast.conf's `syntax::FileError` (one line
//! `FILE:LINE: message`, or `FILE: message` when no line is to blame, and a
//! sysexits(3) status from `exit_code()`) over hastmon.conf's `ErrorKind`.
//! Messages never contain the secret.

use std::path::PathBuf;

use hast_conf::syntax::{ExitStatus, FileError, SyntaxError, EX_CONFIG};

use super::level::Level;

pub type ConfigError = FileError<ErrorKind>;

impl ExitStatus for ErrorKind {
    /// A missing or unreadable secret file is `EX_NOINPUT`, like the
    /// config file itself.
    fn exit_code(&self) -> i32 {
        match self {
            ErrorKind::Syntax(e) => e.exit_code(),
            ErrorKind::SecretFile { error, .. } => error.exit_code(),
            _ => EX_CONFIG,
        }
    }
}

/// What went wrong; the Display text is the message part of the line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading the file, tokens, statements, values and names: the part
    /// hastmon.conf shares with hast.conf.
    #[error(transparent)]
    Syntax(#[from] SyntaxError),

    #[error("\"{key}\" is not allowed in the {level}")]
    WrongLevel { key: String, level: Level },

    #[error("the secret is the example's placeholder: generate one with `head -c 32 /dev/urandom | base64`")]
    PlaceholderSecret,
    #[error("the secret is {len} bytes; at least {min} are required")]
    SecretTooShort { len: usize, min: usize },
    /// The key file hastd's `secret_file` uses too (`hast_conf::secret`).
    #[error("secret_file \"{}\": {error}", .path.display())]
    SecretFile {
        path: PathBuf,
        error: hast_conf::SecretError,
    },
    #[error("\"{key}\" and \"{other}\" (line {other_line}) cannot both be set; keep one")]
    SecretConflict {
        key: String,
        other: String,
        other_line: u32,
    },
    #[error("the key section sets neither \"secret\" nor \"secret_file\"")]
    EmptyKey,

    #[error("resource \"{resource}\": \"exec\" is not set (set it in the resource or globally)")]
    MissingExec { resource: String },
    #[error(
        "resource \"{resource}\": no key configured (add key {{ secret \"...\" }} to the resource or the global section)"
    )]
    MissingKey { resource: String },
    #[error(
        "resource \"{resource}\" has {count} \"on\" section(s); it needs 2 or 3 (two data nodes and an optional watchdog host)"
    )]
    NodeCount { resource: String, count: usize },
    #[error(
        "resource \"{resource}\": section \"on {node}\" sets no \"remote\" (the addresses of the other hosts)"
    )]
    MissingRemote { resource: String, node: String },
    #[error(
        "resource \"{resource}\": section \"on {node}\" lists {count} remote addresses, but the resource has only {others} other node(s)"
    )]
    TooManyRemotes {
        resource: String,
        node: String,
        count: usize,
        others: usize,
    },
    #[error(
        "resource \"{resource}\": lease {lease} is shorter than twice heartbeat_interval {heartbeat} (a lease must outlive two missed heartbeats)"
    )]
    LeaseTooShort {
        resource: String,
        lease: String,
        heartbeat: String,
    },
}
