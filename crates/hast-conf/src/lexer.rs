//! Tokenizer for hast.conf: words, double-quoted strings, `{`, `}`, `;` and
//! newlines, each with the line it starts on. `#` starts a comment up to the
//! end of the line. It streams one token at a time, so memory stays bounded
//! by the longest token (`TOKEN_LEN_MAX`), whatever the input.
//! hastmon.conf (crate `hast-mon`) uses it too, so both files share one
//! lexical syntax.

use crate::syntax::SyntaxError;
use crate::TOKEN_LEN_MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// A bare word or a quoted string. `quoted` keeps `"on"` or `"{"` from
    /// being read as syntax.
    Word {
        text: String,
        quoted: bool,
    },
    LBrace,
    RBrace,
    Semi,
    Newline,
    Eof,
}

impl Tok {
    /// How the token is named in error messages.
    pub fn describe(&self) -> String {
        match self {
            Tok::Word { text, .. } => format!("\"{text}\""),
            Tok::LBrace => "\"{\"".to_owned(),
            Tok::RBrace => "\"}\"".to_owned(),
            Tok::Semi => "\";\"".to_owned(),
            Tok::Newline => "end of line".to_owned(),
            Tok::Eof => "end of file".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub line: u32,
}

pub struct Lexer<'a> {
    rest: &'a str,
    line: u32,
}

/// Characters that end a bare word. Everything else that is not whitespace
/// or a control character belongs to it, so paths and URIs need no quoting.
fn is_delimiter(c: char) -> bool {
    c.is_ascii_whitespace() || matches!(c, '{' | '}' | ';' | '#' | '"')
}

impl<'a> Lexer<'a> {
    pub fn new(text: &'a str) -> Self {
        Lexer {
            rest: text,
            line: 1,
        }
    }

    pub fn next_token(&mut self) -> Result<Token, (u32, SyntaxError)> {
        self.skip_blanks_and_comment();
        let line = self.line;
        let mut chars = self.rest.chars();
        let Some(c) = chars.next() else {
            return Ok(Token {
                tok: Tok::Eof,
                line,
            });
        };
        let single = match c {
            '\n' => Some(Tok::Newline),
            '{' => Some(Tok::LBrace),
            '}' => Some(Tok::RBrace),
            ';' => Some(Tok::Semi),
            _ => None,
        };
        if let Some(tok) = single {
            self.rest = chars.as_str();
            if c == '\n' {
                // A 1 MiB file cannot have u32::MAX lines; saturate anyway.
                self.line = self.line.saturating_add(1);
            }
            return Ok(Token { tok, line });
        }
        let tok = if c == '"' {
            self.rest = chars.as_str();
            self.quoted(line)?
        } else {
            self.bare(line)?
        };
        Ok(Token { tok, line })
    }

    fn skip_blanks_and_comment(&mut self) {
        self.rest = self
            .rest
            .trim_start_matches(|c: char| c != '\n' && c.is_ascii_whitespace());
        if self.rest.starts_with('#') {
            let end = self.rest.find('\n').unwrap_or(self.rest.len());
            self.rest = &self.rest[end..];
        }
    }

    fn bare(&mut self, line: u32) -> Result<Tok, (u32, SyntaxError)> {
        let end = self.rest.find(is_delimiter).unwrap_or(self.rest.len());
        let word = &self.rest[..end];
        if word.len() > TOKEN_LEN_MAX {
            return Err((line, SyntaxError::TokenTooLong { max: TOKEN_LEN_MAX }));
        }
        if let Some(bad) = word.chars().find(|c| c.is_control()) {
            return Err((line, SyntaxError::BadChar(bad)));
        }
        self.rest = &self.rest[end..];
        Ok(Tok::Word {
            text: word.to_owned(),
            quoted: false,
        })
    }

    /// Reads after the opening quote. A quoted string may not span lines:
    /// a missing closing quote is then reported on its own line, not at EOF.
    fn quoted(&mut self, line: u32) -> Result<Tok, (u32, SyntaxError)> {
        let mut text = String::new();
        let mut chars = self.rest.char_indices();
        loop {
            let Some((_, c)) = chars.next() else {
                return Err((line, SyntaxError::UnterminatedString));
            };
            let c = match c {
                '"' => break,
                '\n' => return Err((line, SyntaxError::UnterminatedString)),
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => e,
                    Some((_, '\n')) | None => return Err((line, SyntaxError::UnterminatedString)),
                    Some((_, e)) => return Err((line, SyntaxError::BadEscape(e))),
                },
                c if c.is_control() && c != '\t' => return Err((line, SyntaxError::BadChar(c))),
                c => c,
            };
            if text.len() + c.len_utf8() > TOKEN_LEN_MAX {
                return Err((line, SyntaxError::TokenTooLong { max: TOKEN_LEN_MAX }));
            }
            text.push(c);
        }
        self.rest = chars.as_str();
        Ok(Tok::Word { text, quoted: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(text: &str) -> Result<Vec<(Tok, u32)>, (u32, String)> {
        let mut lexer = Lexer::new(text);
        let mut out = Vec::new();
        loop {
            let t = lexer.next_token().map_err(|(l, k)| (l, k.to_string()))?;
            if t.tok == Tok::Eof {
                return Ok(out);
            }
            out.push((t.tok, t.line));
        }
    }

    fn word(s: &str) -> Tok {
        Tok::Word {
            text: s.to_owned(),
            quoted: false,
        }
    }

    #[test]
    fn tokens_and_lines() {
        let toks = lex("a b{ # c }\n\n  \"x y\" ;}\r\n").unwrap();
        assert_eq!(
            toks,
            vec![
                (word("a"), 1),
                (word("b"), 1),
                (Tok::LBrace, 1),
                (Tok::Newline, 1),
                (Tok::Newline, 2),
                (
                    Tok::Word {
                        text: "x y".into(),
                        quoted: true
                    },
                    3
                ),
                (Tok::Semi, 3),
                (Tok::RBrace, 3),
                (Tok::Newline, 3),
            ]
        );
    }

    #[test]
    fn quoted_escapes() {
        let toks = lex(r#""a\"b\\c" "{""#).unwrap();
        assert_eq!(
            toks,
            vec![
                (
                    Tok::Word {
                        text: "a\"b\\c".into(),
                        quoted: true
                    },
                    1
                ),
                (
                    Tok::Word {
                        text: "{".into(),
                        quoted: true
                    },
                    1
                ),
            ]
        );
    }

    #[test]
    fn errors() {
        let cases: &[(&str, u32, &str)] = &[
            ("\n\"abc", 2, "unterminated quoted string"),
            ("\"abc\ndef\"", 1, "unterminated quoted string"),
            ("x \"a\\n\"", 1, "invalid escape \"\\n\""),
            ("\n\nab\u{1}c", 3, "invalid character"),
            ("\"a\u{0}\"", 1, "invalid character"),
        ];
        for (text, line, msg) in cases {
            let (l, m) = lex(text).unwrap_err();
            assert_eq!(l, *line, "{text:?}");
            assert!(m.contains(msg), "{text:?}: {m}");
        }
    }

    #[test]
    fn token_limit() {
        let ok = "a".repeat(TOKEN_LEN_MAX);
        assert!(lex(&ok).is_ok());
        assert!(lex(&format!("\"{ok}\"")).is_ok());
        let long = "a".repeat(TOKEN_LEN_MAX + 1);
        assert_eq!(lex(&long).unwrap_err().0, 1);
        assert_eq!(lex(&format!("\n\"{long}\"")).unwrap_err().0, 2);
    }
}
