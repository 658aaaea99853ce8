//! Statements and sections over the token stream, with the line of each:
//! what both grammars mean by a keyword, a value, `NAME {` and `}`. Which
//! keywords exist, where they are allowed and what their values mean is
//! left to each file's parser.
//!
//! A statement is `keyword value`, ended by a newline, `;`, `}`, the end of
//! the file or the next keyword. Newlines carry no other meaning, so `{` may
//! follow `on NAME` on the next line, and FreeBSD's files are read unchanged.

use std::marker::PhantomData;
use std::path::Path;

use super::error::{FileError, SyntaxError};
use super::value::{check_node_name, check_resource_name};
use crate::lexer::{Lexer, Tok, Token};

/// A value and the line it was set on.
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub line: u32,
}

/// `Err(Duplicate)` if the option of `slot` is already set in this section.
pub fn check_unset<T>(slot: &Option<At<T>>, key: &str) -> Result<(), SyntaxError> {
    match slot {
        Some(first) => Err(SyntaxError::Duplicate {
            key: key.to_owned(),
            first_line: first.line,
        }),
        None => Ok(()),
    }
}

/// Sets an option once per section.
pub fn set<T, K: From<SyntaxError>>(
    slot: &mut Option<At<T>>,
    value: T,
    key: &str,
    line: u32,
) -> Result<(), K> {
    check_unset(slot, key)?;
    *slot = Some(At { value, line });
    Ok(())
}

/// What starts a statement, once newlines and `;` are skipped.
enum Head {
    Keyword(String, u32),
    Close(u32),
    Eof,
}

/// Reads statements of `file`; errors are `FileError<K>` on the line to
/// blame.
pub struct Reader<'a, K> {
    lexer: Lexer<'a>,
    peeked: Option<Token>,
    file: &'a Path,
    /// The grammar's keywords: a bare keyword after a value starts the next
    /// statement instead of being a second value.
    is_keyword: fn(&str) -> bool,
    kind: PhantomData<fn() -> K>,
}

impl<'a, K: From<SyntaxError>> Reader<'a, K> {
    pub fn new(text: &'a str, file: &'a Path, is_keyword: fn(&str) -> bool) -> Self {
        Reader {
            lexer: Lexer::new(text),
            peeked: None,
            file,
            is_keyword,
            kind: PhantomData,
        }
    }

    pub fn file(&self) -> &'a Path {
        self.file
    }

    pub fn err(&self, line: u32, kind: impl Into<K>) -> FileError<K> {
        FileError::at(self.file, line, kind)
    }

    pub fn next_token(&mut self) -> Result<Token, FileError<K>> {
        if let Some(t) = self.peeked.take() {
            return Ok(t);
        }
        self.lexer
            .next_token()
            .map_err(|(line, kind)| self.err(line, kind))
    }

    pub fn peek(&mut self) -> Result<&Token, FileError<K>> {
        let t = self.next_token()?;
        Ok(self.peeked.insert(t))
    }

    fn head(&mut self) -> Result<Head, FileError<K>> {
        loop {
            let t = self.next_token()?;
            match t.tok {
                Tok::Newline | Tok::Semi => continue,
                Tok::Eof => return Ok(Head::Eof),
                Tok::RBrace => return Ok(Head::Close(t.line)),
                Tok::Word {
                    text,
                    quoted: false,
                } => return Ok(Head::Keyword(text, t.line)),
                other => {
                    return Err(self.err(
                        t.line,
                        SyntaxError::Unexpected {
                            found: other.describe(),
                            expected: "a keyword",
                        },
                    ))
                }
            }
        }
    }

    /// The keyword of the next statement of a section and its line, or
    /// `None` at the section's end. `open` is the section's label and line;
    /// `None` for the top level, which ends at the end of the file.
    pub fn next_keyword(
        &mut self,
        open: Option<(&str, u32)>,
    ) -> Result<Option<(String, u32)>, FileError<K>> {
        match (self.head()?, open) {
            (Head::Keyword(word, line), _) => Ok(Some((word, line))),
            (Head::Eof, None) | (Head::Close(_), Some(_)) => Ok(None),
            (Head::Close(line), None) => Err(self.err(line, SyntaxError::StrayBrace)),
            (Head::Eof, Some((section, line))) => Err(self.err(
                line,
                SyntaxError::Unclosed {
                    section: section.to_owned(),
                },
            )),
        }
    }

    /// Reads `NAME {` after `on` or `resource`.
    pub fn open_section(&mut self, keyword: &str) -> Result<String, FileError<K>> {
        let t = self.next_token()?;
        let name = match t.tok {
            Tok::Word { text, .. } => text,
            other => {
                return Err(self.err(
                    t.line,
                    SyntaxError::Unexpected {
                        found: other.describe(),
                        expected: if keyword == "on" {
                            "a node name after \"on\""
                        } else {
                            "a resource name after \"resource\""
                        },
                    },
                ))
            }
        };
        self.open_brace()?;
        Ok(name)
    }

    /// Reads `{`, which may be on a later line.
    pub fn open_brace(&mut self) -> Result<(), FileError<K>> {
        let brace = loop {
            let t = self.next_token()?;
            if t.tok != Tok::Newline {
                break t;
            }
        };
        if brace.tok != Tok::LBrace {
            return Err(self.err(
                brace.line,
                SyntaxError::Unexpected {
                    found: brace.tok.describe(),
                    expected: "\"{\" to open the section",
                },
            ));
        }
        Ok(())
    }

    /// Reads `NAME {` after the `on` on `line`: a valid node name, unique
    /// among the sections `seen` (as host names, without regard to ASCII
    /// case), and fewer than `max` of them before it (`what` names them in
    /// the message).
    pub fn node_section<T>(
        &mut self,
        line: u32,
        seen: &[T],
        name_line: impl Fn(&T) -> (&str, u32),
        what: &'static str,
        max: usize,
    ) -> Result<String, FileError<K>> {
        let name = self.open_section("on")?;
        if !check_node_name(&name) {
            return Err(self.err(line, SyntaxError::BadNodeName(name)));
        }
        let first = seen
            .iter()
            .map(&name_line)
            .find(|(n, _)| n.eq_ignore_ascii_case(&name));
        if let Some((_, first_line)) = first {
            return Err(self.err(line, SyntaxError::DuplicateNodeSection { name, first_line }));
        }
        if seen.len() >= max {
            return Err(self.err(line, SyntaxError::TooMany { what, max }));
        }
        Ok(name)
    }

    /// Reads `NAME {` after the `resource` on `line`: a valid resource name
    /// (`reserved` says who owns the name `all`), unique among the
    /// resources `seen`, and fewer than `max` of them before it.
    pub fn resource_section<T>(
        &mut self,
        line: u32,
        seen: &[T],
        name_line: impl Fn(&T) -> (&str, u32),
        max: usize,
        reserved: &'static str,
    ) -> Result<String, FileError<K>> {
        let name = self.open_section("resource")?;
        if let Err(reason) = check_resource_name(&name, reserved) {
            return Err(self.err(line, SyntaxError::BadResourceName { name, reason }));
        }
        if let Some((_, first_line)) = seen.iter().map(&name_line).find(|(n, _)| *n == name) {
            return Err(self.err(line, SyntaxError::DuplicateResource { name, first_line }));
        }
        if seen.len() >= max {
            return Err(self.err(
                line,
                SyntaxError::TooMany {
                    what: "resources",
                    max,
                },
            ));
        }
        Ok(name)
    }

    /// The value of a one-value statement, and the check that nothing else
    /// follows it.
    pub fn value(&mut self, key: &str) -> Result<String, FileError<K>> {
        let t = self.next_token()?;
        let Tok::Word { text, .. } = t.tok else {
            return Err(self.err(
                t.line,
                SyntaxError::MissingValue {
                    key: key.to_owned(),
                },
            ));
        };
        let is_keyword = self.is_keyword;
        let after = self.peek()?;
        match after.tok {
            // `}` is left for the section to close: `on a { remote x }`.
            Tok::Newline | Tok::Semi | Tok::Eof | Tok::RBrace => Ok(text),
            // FreeBSD's grammar needs no separators, so a keyword may follow
            // on the same line; any other word is a stray second value.
            Tok::Word {
                text: ref next,
                quoted: false,
            } if is_keyword(next) => Ok(text),
            ref other => {
                let found = other.describe();
                let line = after.line;
                Err(self.err(
                    line,
                    SyntaxError::ExtraToken {
                        key: key.to_owned(),
                        found,
                    },
                ))
            }
        }
    }
}
