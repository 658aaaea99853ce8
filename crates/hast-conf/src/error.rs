//! The one error type of this crate. Every failure is reported as a single
//! line `FILE:LINE: message` (or `FILE: message` when no line is to blame),
//! so the daemon and the CLI can print it as is and exit with `exit_code()`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::parser::Level;

/// A configuration error: the file, the line (when one is to blame) and what
/// went wrong.
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
    /// sysexits(3) `EX_NOINPUT`: the file is missing or unreadable.
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
            ErrorKind::Read(_) => Self::EX_NOINPUT,
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

/// What went wrong. The Display text is the message part of the line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("file is too big ({size} bytes; the limit is {max} bytes)")]
    TooBig { size: u64, max: u64 },
    #[error("file is not valid UTF-8")]
    NotUtf8,
    #[error("the node name is empty (give one with --node NAME)")]
    NoNodeName,

    #[error("token longer than {max} bytes")]
    TokenTooLong { max: usize },
    #[error("invalid character {0:?}")]
    BadChar(char),
    #[error("unterminated quoted string")]
    UnterminatedString,
    #[error("invalid escape \"\\{0}\" in quoted string (only \\\" and \\\\ are allowed)")]
    BadEscape(char),

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
    #[error("sections nested deeper than {max} levels")]
    TooDeep { max: usize },
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
        "no configuration for resource \"{resource}\" on this node (acceptable node names: {acceptable})"
    )]
    NoNodeSection {
        resource: String,
        acceptable: String,
    },
    #[error(
        "sections \"on {first}\" (line {first_line}) and \"on {second}\" both match this node"
    )]
    AmbiguousNode {
        first: String,
        first_line: u32,
        second: String,
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
    #[error("resource \"{resource}\": local \"{path}\" is already used by resource \"{other}\" (line {other_line})")]
    DuplicateLocal {
        resource: String,
        path: String,
        other: String,
        other_line: u32,
    },
    #[error("resource \"{resource}\": NBD socket path \"{path}\" is longer than {max} bytes")]
    SocketPathTooLong {
        resource: String,
        path: String,
        max: usize,
    },
}
