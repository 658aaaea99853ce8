//! hastcd.conf errors: one line each, `FILE:LINE: what is wrong`. Text
//! from the file is quoted with Rust's escapes, so a stray control byte can
//! never break the one-line promise.

use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration error, where it is and what it is.
#[derive(Debug, thiserror::Error)]
pub struct ConfError {
    pub file: PathBuf,
    /// `None` for whole-file errors (cannot read, too large).
    pub line: Option<u32>,
    pub kind: ErrorKind,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.kind),
            None => write!(f, "{}: {}", self.file.display(), self.kind),
        }
    }
}

impl ConfError {
    pub(crate) fn at(file: &Path, line: u32, kind: ErrorKind) -> ConfError {
        ConfError {
            file: file.to_path_buf(),
            line: Some(line),
            kind,
        }
    }

    pub(crate) fn file(file: &Path, kind: ErrorKind) -> ConfError {
        ConfError {
            file: file.to_path_buf(),
            line: None,
            kind,
        }
    }

    /// sysexits(3): a file that cannot be read is `EX_NOINPUT` (66), one
    /// that is wrong is `EX_CONFIG` (78).
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Io(_) => hast_sys::exit::NOINPUT,
            _ => hast_sys::exit::CONFIG,
        }
    }
}

/// What is wrong. Strings from the file are already quoted (`{:?}`).
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot be read: {0}")]
    Io(std::io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error("larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("line longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("expected \"[Section]\", \"key = value\" or a comment, found {0:?}")]
    Syntax(String),
    #[error("unknown section {0:?} (hastcd.conf has [Global] and [Controllers])")]
    UnknownSection(String),
    #[error("section [{name}] appears twice (first at line {first_line})")]
    DuplicateSection { name: &'static str, first_line: u32 },
    #[error("{key:?} outside a section: put it under [Global] or [Controllers]")]
    NoSection { key: String },
    #[error("unknown key {key:?} in [{section}]")]
    UnknownKey { key: String, section: &'static str },
    #[error("{key} is set twice (first at line {first_line})")]
    DuplicateKey { key: &'static str, first_line: u32 },
    #[error("{key} has no value")]
    Empty { key: &'static str },
    #[error("{key} = {value:?}: {why}")]
    BadValue {
        key: &'static str,
        value: String,
        why: String,
    },
    #[error("more than {max} {what} lines")]
    TooMany { what: &'static str, max: usize },
    #[error("{0}")]
    Conflict(String),
    #[error("{key}: {why}")]
    Account { key: &'static str, why: String },
}
