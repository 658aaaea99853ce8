//! The error of `conf`, shaped like hast.conf's: one line `FILE:LINE:
//! message` (or `FILE: message` when no line is to blame), and a sysexits(3)
//! status from `exit_code()`. Messages never contain the secret.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::parser::Level;

#[derive(Debug, thiserror::Error)]
#[error("{}{}: {kind}", .file.display(), LineSuffix(.line))]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<u32>,
    pub kind: ErrorKind,
}

impl ConfigError {
    /// sysexits(3) `EX_CONFIG`: the file exists but says something wrong.
    pub const EX_CONFIG: i32 = 78;
    /// sysexits(3) `EX_NOINPUT`: the file (or the secret file it names) is
    /// missing or unreadable.
    pub const EX_NOINPUT: i32 = 66;

    pub(crate) fn at(file: &Path, line: u32, kind: ErrorKind) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: Some(line),
            kind,
        }
    }

    pub(crate) fn whole(file: &Path, kind: ErrorKind) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            kind,
        }
    }

    /// The process exit status a caller should use for this error.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Read(_) | ErrorKind::SecretFile { .. } => Self::EX_NOINPUT,
            _ => Self::EX_CONFIG,
        }
    }
}

struct LineSuffix<'a>(&'a Option<u32>);

impl fmt::Display for LineSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, ":{line}"),
            None => Ok(()),
        }
    }
}

/// What went wrong; the Display text is the message part of the line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("cannot read: {0}")]
    Read(io::Error),
    #[error("file is too big ({size} bytes; the limit is {max} bytes)")]
    TooBig { size: u64, max: u64 },
    #[error("file is not valid UTF-8")]
    NotUtf8,
    #[error("the node name is empty (give one with --node NAME)")]
    NoNodeName,
    /// From the tokenizer shared with hast.conf.
    #[error(transparent)]
    Syntax(hast_conf::ErrorKind),

    #[error("unknown keyword \"{0}\"")]
    UnknownKeyword(String),
    #[error("\"{key}\" is not allowed in the {level}")]
    WrongLevel { key: String, level: Level },
    #[error("missing value for \"{key}\"")]
    MissingValue { key: String },
    #[error("unexpected {found} after the value of \"{key}\" (one value per statement)")]
    ExtraToken { key: String, found: String },
    #[error("invalid {key} \"{value}\": {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("\"{key}\" is already set in this section at line {first_line}")]
    Duplicate { key: String, first_line: u32 },
    #[error("unexpected {found}, expected {expected}")]
    Unexpected {
        found: String,
        expected: &'static str,
    },
    #[error("unexpected \"}}\": no section is open")]
    StrayBrace,
    #[error("section \"{section}\" is not closed: missing \"}}\" before the end of the file")]
    Unclosed { section: String },
    #[error("too many {what} (the limit is {max})")]
    TooMany { what: &'static str, max: usize },

    #[error("invalid resource name \"{name}\": {reason}")]
    BadResourceName { name: String, reason: &'static str },
    #[error("invalid node name \"{0}\": use 1 to 255 of A-Z a-z 0-9 . _ -")]
    BadNodeName(String),
    #[error("duplicate resource \"{name}\" (first defined at line {first_line})")]
    DuplicateResource { name: String, first_line: u32 },
    #[error("duplicate section \"on {name}\" (first at line {first_line})")]
    DuplicateNodeSection { name: String, first_line: u32 },
    #[error(
        "sections \"on {first}\" (line {first_line}) and \"on {second}\" both match this node"
    )]
    AmbiguousNode {
        first: String,
        first_line: u32,
        second: String,
    },

    #[error("the secret is {len} bytes; at least {min} are required")]
    SecretTooShort { len: usize, min: usize },
    #[error(
        "the secret in \"{}\" is {len} bytes (first line, trimmed); at least {min} are required",
        .path.display()
    )]
    SecretFileTooShort {
        path: PathBuf,
        len: usize,
        min: usize,
    },
    #[error("cannot read secret_file \"{}\": {source}", .path.display())]
    SecretFile { path: PathBuf, source: io::Error },
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
