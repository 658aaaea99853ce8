//! The error plumbing of both config files: `FileError<K>` is one line
//! `FILE:LINE: message` (or `FILE: message` when no line is to blame) with a
//! sysexits(3) status, and `SyntaxError` holds the messages of the shared
//! grammar and of reading the file. Each crate's `ErrorKind` wraps
//! `SyntaxError` and adds the messages of its own keywords and resolution.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// sysexits(3) `EX_CONFIG`: the file exists but says something wrong.
pub const EX_CONFIG: i32 = 78;
/// sysexits(3) `EX_NOINPUT`: a file is missing or unreadable.
pub const EX_NOINPUT: i32 = 66;

/// The sysexits(3) status of an error kind.
pub trait ExitStatus {
    fn exit_code(&self) -> i32;
}

/// A configuration error: the file, the line (when one is to blame) and what
/// went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {kind}", .file.display(), LineSuffix(.line))]
pub struct FileError<K> {
    pub file: PathBuf,
    pub line: Option<u32>,
    pub kind: K,
}

impl<K> FileError<K> {
    /// sysexits(3) `EX_CONFIG`: the file exists but says something wrong.
    pub const EX_CONFIG: i32 = EX_CONFIG;
    /// sysexits(3) `EX_NOINPUT`: a file is missing or unreadable.
    pub const EX_NOINPUT: i32 = EX_NOINPUT;

    pub fn at(file: &Path, line: u32, kind: impl Into<K>) -> Self {
        FileError {
            file: file.to_path_buf(),
            line: Some(line),
            kind: kind.into(),
        }
    }

    pub fn whole(file: &Path, kind: impl Into<K>) -> Self {
        FileError {
            file: file.to_path_buf(),
            line: None,
            kind: kind.into(),
        }
    }
}

impl<K: ExitStatus> FileError<K> {
    /// The process exit status a caller should use for this error.
    pub fn exit_code(&self) -> i32 {
        self.kind.exit_code()
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

/// What went wrong in the part both files share: reading the file, tokens,
/// statements and sections, values, names. The Display text is the message
/// part of the line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyntaxError {
    #[error("cannot read: {0}")]
    Read(io::Error),
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
}

impl ExitStatus for SyntaxError {
    fn exit_code(&self) -> i32 {
        match self {
            SyntaxError::Read(_) => EX_NOINPUT,
            _ => EX_CONFIG,
        }
    }
}
