//! The grammar shared by hast.conf and hastmon.conf (crate `hast-mon`), and
//! everything around it that the two files do the same way:
//!
//! - reading the file with a size limit (`read_limited`, `check_size`);
//! - statements and sections over the token stream of `crate::lexer`, each
//!   with its line (`Reader`), and options set once per section (`At`,
//!   `set`);
//! - one-line `FILE:LINE: message` errors with sysexits(3) statuses
//!   (`FileError`, `SyntaxError`, `ExitStatus`);
//! - the value and name rules both use (`value`).
//!
//! Each file's keywords, where they are allowed, their defaults and the
//! resolution of the raw tree stay with that file's parser.

mod error;
mod reader;
pub mod value;

use std::io::Read;
use std::path::Path;

pub use error::{ExitStatus, FileError, SyntaxError, EX_CONFIG, EX_NOINPUT};
pub use reader::{check_unset, set, At, Reader};

use crate::FILE_SIZE_MAX;

/// Refuses text longer than `FILE_SIZE_MAX`, as `read_limited` would.
pub fn check_size<K: From<SyntaxError>>(text: &str, file: &Path) -> Result<(), FileError<K>> {
    let size = u64::try_from(text.len()).unwrap_or(u64::MAX);
    if size > FILE_SIZE_MAX {
        return Err(FileError::whole(file, too_big(size)));
    }
    Ok(())
}

fn too_big(size: u64) -> SyntaxError {
    SyntaxError::TooBig {
        size,
        max: FILE_SIZE_MAX,
    }
}

/// Reads `file` as UTF-8 text of at most `FILE_SIZE_MAX` bytes.
pub fn read_limited<K: From<SyntaxError>>(file: &Path) -> Result<String, FileError<K>> {
    let read_err = |e| FileError::whole(file, SyntaxError::Read(e));
    let f = std::fs::File::open(file).map_err(read_err)?;
    let size = f.metadata().map_err(read_err)?.len();
    if size > FILE_SIZE_MAX {
        return Err(FileError::whole(file, too_big(size)));
    }
    // The size may change under us, or be 0 for special files: read one
    // byte past the limit to notice.
    let mut bytes = Vec::new();
    f.take(FILE_SIZE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > FILE_SIZE_MAX {
        return Err(FileError::whole(file, too_big(len)));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let newlines = good.iter().filter(|&&b| b == b'\n').count();
        let line = u32::try_from(newlines)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        FileError::at(file, line, SyntaxError::NotUtf8)
    })
}
