//! Grammar of hast.conf: statements and `on`/`resource` sections into a raw
//! tree of typed values with their line numbers. Values are parsed here, so
//! a bad value is reported on its own line even inside a section for another
//! node; choosing this node's sections and applying inheritance is left to
//! `resolve`.
//!
//! A statement is `keyword value`, ended by a newline, `;`, `}`, the end of
//! the file or the next keyword. Newlines carry no other meaning, so `{` may
//! follow `on NAME` on the next line, and FreeBSD's files are read unchanged.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::addr::{Addr, NBD_PORT, REPLICATION_PORT};
use crate::error::{ConfigError, ErrorKind};
use crate::lexer::{Lexer, Tok, Token};
use crate::value::{check_node_name, check_resource_name, parse_size};
use crate::value::{Checksum, Compression, OnIoError, Replication};
use crate::{DEPTH_MAX, LISTEN_MAX, NODE_SECTIONS_MAX, RESOURCES_MAX};

/// The kind of section a statement is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Global,
    /// `on NODE { }` at the top level.
    Node,
    Resource,
    /// `on NODE { }` inside a resource.
    ResourceNode,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Global => "global section",
            Level::Node => "node section",
            Level::Resource => "resource section",
            Level::ResourceNode => "resource-node section",
        })
    }
}

/// A value and the line it was set on.
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub(crate) value: T,
    pub(crate) line: u32,
}

/// Options of the daemon as a whole (global and top-level node sections).
#[derive(Debug, Default)]
pub(crate) struct NodeOpts {
    pub(crate) control: Option<At<Addr>>,
    pub(crate) pidfile: Option<At<PathBuf>>,
    pub(crate) listen: Vec<At<Addr>>,
    pub(crate) nbd_listen: Option<At<Option<Addr>>>,
    pub(crate) nbd_socket_dir: Option<At<Option<PathBuf>>>,
    pub(crate) state_dir: Option<At<PathBuf>>,
    pub(crate) metrics_listen: Option<At<Option<Addr>>>,
}

/// Options of a resource (global, resource and resource-node sections).
#[derive(Debug, Default)]
pub(crate) struct ResOpts {
    pub(crate) replication: Option<At<Replication>>,
    pub(crate) checksum: Option<At<Checksum>>,
    pub(crate) compression: Option<At<Compression>>,
    pub(crate) timeout: Option<At<u32>>,
    pub(crate) exec: Option<At<PathBuf>>,
    /// `fence_peer none` is `Some(At { value: None })`: it overrides a default.
    pub(crate) fence_peer: Option<At<Option<String>>>,
    pub(crate) metaflush: Option<At<bool>>,
    pub(crate) freeze_timeout: Option<At<u32>>,
    pub(crate) on_io_error: Option<At<OnIoError>>,
    pub(crate) resync_rate: Option<At<u64>>,
    pub(crate) name: Option<At<String>>,
    pub(crate) local: Option<At<PathBuf>>,
    pub(crate) remote: Option<At<Option<Addr>>>,
    pub(crate) source: Option<At<Addr>>,
}

#[derive(Debug)]
pub(crate) struct RawNode {
    pub(crate) name: String,
    pub(crate) line: u32,
    pub(crate) opts: NodeOpts,
}

#[derive(Debug)]
pub(crate) struct RawResNode {
    pub(crate) name: String,
    pub(crate) line: u32,
    pub(crate) opts: ResOpts,
}

#[derive(Debug)]
pub(crate) struct RawResource {
    pub(crate) name: String,
    pub(crate) line: u32,
    pub(crate) opts: ResOpts,
    pub(crate) nodes: Vec<RawResNode>,
}

#[derive(Debug, Default)]
pub(crate) struct RawConfig {
    pub(crate) node_opts: NodeOpts,
    pub(crate) res_opts: ResOpts,
    pub(crate) nodes: Vec<RawNode>,
    pub(crate) resources: Vec<RawResource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Control,
    Pidfile,
    Listen,
    NbdListen,
    NbdSocketDir,
    StateDir,
    MetricsListen,
    Replication,
    Checksum,
    Compression,
    Timeout,
    Exec,
    FencePeer,
    Metaflush,
    FreezeTimeout,
    OnIoError,
    ResyncRate,
    Name,
    Local,
    Remote,
    Source,
}

impl Key {
    fn from_keyword(word: &str) -> Option<Key> {
        Some(match word {
            "control" => Key::Control,
            "pidfile" => Key::Pidfile,
            "listen" => Key::Listen,
            "nbd_listen" => Key::NbdListen,
            "nbd_socket_dir" => Key::NbdSocketDir,
            "state_dir" => Key::StateDir,
            "metrics_listen" => Key::MetricsListen,
            "replication" => Key::Replication,
            "checksum" => Key::Checksum,
            "compression" => Key::Compression,
            "timeout" => Key::Timeout,
            "exec" => Key::Exec,
            "fence_peer" => Key::FencePeer,
            "metaflush" => Key::Metaflush,
            "freeze_timeout" => Key::FreezeTimeout,
            "on_io_error" => Key::OnIoError,
            "resync_rate" => Key::ResyncRate,
            "name" => Key::Name,
            "local" => Key::Local,
            "remote" => Key::Remote,
            "source" => Key::Source,
            _ => return None,
        })
    }
}

/// The option sets a statement may write to, by section kind. The level
/// rules of the grammar live in `apply`: a key whose set is absent here is
/// "not allowed" in this section.
enum Target<'a> {
    Global(&'a mut NodeOpts, &'a mut ResOpts),
    Node(&'a mut NodeOpts),
    Resource(&'a mut ResOpts),
    ResourceNode(&'a mut ResOpts),
}

impl Target<'_> {
    fn level(&self) -> Level {
        match self {
            Target::Global(..) => Level::Global,
            Target::Node(_) => Level::Node,
            Target::Resource(_) => Level::Resource,
            Target::ResourceNode(_) => Level::ResourceNode,
        }
    }
}

/// What starts a statement, once newlines and `;` are skipped.
enum Head {
    Keyword(String, u32),
    Close(u32),
    Eof,
}

pub(crate) struct Parser<'a> {
    lexer: Lexer<'a>,
    peeked: Option<Token>,
    file: &'a Path,
    depth: usize,
}

pub(crate) fn parse(text: &str, file: &Path) -> Result<RawConfig, ConfigError> {
    let mut p = Parser {
        lexer: Lexer::new(text),
        peeked: None,
        file,
        depth: 0,
    };
    p.top()
}

impl<'a> Parser<'a> {
    fn err(&self, line: u32, kind: ErrorKind) -> ConfigError {
        ConfigError::at(self.file, line, kind)
    }

    fn next(&mut self) -> Result<Token, ConfigError> {
        if let Some(t) = self.peeked.take() {
            return Ok(t);
        }
        self.lexer
            .next_token()
            .map_err(|(line, kind)| self.err(line, kind))
    }

    fn peek(&mut self) -> Result<&Token, ConfigError> {
        let t = self.next()?;
        Ok(self.peeked.insert(t))
    }

    fn head(&mut self) -> Result<Head, ConfigError> {
        loop {
            let t = self.next()?;
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
                        ErrorKind::Unexpected {
                            found: other.describe(),
                            expected: "a keyword",
                        },
                    ))
                }
            }
        }
    }

    fn top(&mut self) -> Result<RawConfig, ConfigError> {
        let mut raw = RawConfig::default();
        loop {
            match self.head()? {
                Head::Eof => return Ok(raw),
                Head::Close(line) => return Err(self.err(line, ErrorKind::StrayBrace)),
                Head::Keyword(word, line) if word == "on" => {
                    let name = self.open_section(line, "on")?;
                    if !check_node_name(&name) {
                        return Err(self.err(line, ErrorKind::BadNodeName(name)));
                    }
                    check_dup_node(&raw.nodes, &name).map_err(|k| self.err(line, k))?;
                    if raw.nodes.len() >= NODE_SECTIONS_MAX {
                        return Err(self.err(
                            line,
                            ErrorKind::TooMany {
                                what: "node sections",
                                max: NODE_SECTIONS_MAX,
                            },
                        ));
                    }
                    let mut opts = NodeOpts::default();
                    self.body(line, &format!("on {name}"), &mut Target::Node(&mut opts))?;
                    raw.nodes.push(RawNode { name, line, opts });
                }
                Head::Keyword(word, line) if word == "resource" => {
                    let res = self.resource(line, &raw.resources)?;
                    raw.resources.push(res);
                }
                Head::Keyword(word, line) => {
                    let mut target = Target::Global(&mut raw.node_opts, &mut raw.res_opts);
                    self.statement(&word, line, &mut target)?;
                }
            }
        }
    }

    fn resource(&mut self, line: u32, seen: &[RawResource]) -> Result<RawResource, ConfigError> {
        let name = self.open_section(line, "resource")?;
        if let Err(reason) = check_resource_name(&name) {
            return Err(self.err(line, ErrorKind::BadResourceName { name, reason }));
        }
        if let Some(first) = seen.iter().find(|r| r.name == name) {
            return Err(self.err(
                line,
                ErrorKind::DuplicateResource {
                    name,
                    first_line: first.line,
                },
            ));
        }
        if seen.len() >= RESOURCES_MAX {
            return Err(self.err(
                line,
                ErrorKind::TooMany {
                    what: "resources",
                    max: RESOURCES_MAX,
                },
            ));
        }
        let section = format!("resource {name}");
        let mut res = RawResource {
            name,
            line,
            opts: ResOpts::default(),
            nodes: Vec::new(),
        };
        loop {
            match self.head()? {
                Head::Eof => return Err(self.err(line, ErrorKind::Unclosed { section })),
                Head::Close(_) => {
                    self.depth = self.depth.saturating_sub(1);
                    return Ok(res);
                }
                Head::Keyword(word, on_line) if word == "on" => {
                    let node = self.open_section(on_line, "on")?;
                    if !check_node_name(&node) {
                        return Err(self.err(on_line, ErrorKind::BadNodeName(node)));
                    }
                    let seen: Vec<_> = res.nodes.iter().map(|n| (&n.name[..], n.line)).collect();
                    check_dup(&seen, &node).map_err(|k| self.err(on_line, k))?;
                    if res.nodes.len() >= NODE_SECTIONS_MAX {
                        return Err(self.err(
                            on_line,
                            ErrorKind::TooMany {
                                what: "node sections in one resource",
                                max: NODE_SECTIONS_MAX,
                            },
                        ));
                    }
                    let mut opts = ResOpts::default();
                    let label = format!("on {node}");
                    self.body(on_line, &label, &mut Target::ResourceNode(&mut opts))?;
                    res.nodes.push(RawResNode {
                        name: node,
                        line: on_line,
                        opts,
                    });
                }
                Head::Keyword(word, kw_line) => {
                    self.statement(&word, kw_line, &mut Target::Resource(&mut res.opts))?;
                }
            }
        }
    }

    /// Reads `NAME {` after `on` or `resource`.
    fn open_section(&mut self, line: u32, keyword: &str) -> Result<String, ConfigError> {
        let t = self.next()?;
        let name = match t.tok {
            Tok::Word { text, .. } => text,
            other => {
                return Err(self.err(
                    t.line,
                    ErrorKind::Unexpected {
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
        let brace = loop {
            let t = self.next()?;
            if t.tok != Tok::Newline {
                break t;
            }
        };
        if brace.tok != Tok::LBrace {
            return Err(self.err(
                brace.line,
                ErrorKind::Unexpected {
                    found: brace.tok.describe(),
                    expected: "\"{\" to open the section",
                },
            ));
        }
        self.depth += 1;
        if self.depth > DEPTH_MAX {
            return Err(self.err(line, ErrorKind::TooDeep { max: DEPTH_MAX }));
        }
        Ok(name)
    }

    /// Statements of a section without subsections, up to its `}`.
    fn body(&mut self, line: u32, section: &str, target: &mut Target) -> Result<(), ConfigError> {
        loop {
            match self.head()? {
                Head::Eof => {
                    return Err(self.err(
                        line,
                        ErrorKind::Unclosed {
                            section: section.to_owned(),
                        },
                    ))
                }
                Head::Close(_) => {
                    self.depth = self.depth.saturating_sub(1);
                    return Ok(());
                }
                Head::Keyword(word, kw_line) => self.statement(&word, kw_line, target)?,
            }
        }
    }

    fn statement(&mut self, word: &str, line: u32, target: &mut Target) -> Result<(), ConfigError> {
        if word == "on" || word == "resource" {
            return Err(self.err(
                line,
                ErrorKind::WrongLevel {
                    key: word.to_owned(),
                    level: target.level(),
                },
            ));
        }
        let Some(key) = Key::from_keyword(word) else {
            return Err(self.err(line, ErrorKind::UnknownKeyword(word.to_owned())));
        };
        let value = self.value(word)?;
        apply(key, word, &value, line, target).map_err(|k| self.err(line, k))
    }

    /// The value of a statement and the check that nothing else follows it.
    fn value(&mut self, key: &str) -> Result<String, ConfigError> {
        let t = self.next()?;
        let Tok::Word { text, .. } = t.tok else {
            return Err(self.err(
                t.line,
                ErrorKind::MissingValue {
                    key: key.to_owned(),
                },
            ));
        };
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
                    ErrorKind::ExtraToken {
                        key: key.to_owned(),
                        found,
                    },
                ))
            }
        }
    }
}

fn is_keyword(word: &str) -> bool {
    word == "on" || word == "resource" || Key::from_keyword(word).is_some()
}

/// Node names compare like host names: without regard to ASCII case.
fn check_dup(seen: &[(&str, u32)], name: &str) -> Result<(), ErrorKind> {
    match seen.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some((_, first_line)) => Err(ErrorKind::DuplicateNodeSection {
            name: name.to_owned(),
            first_line: *first_line,
        }),
        None => Ok(()),
    }
}

fn check_dup_node(nodes: &[RawNode], name: &str) -> Result<(), ErrorKind> {
    let seen: Vec<_> = nodes.iter().map(|n| (&n.name[..], n.line)).collect();
    check_dup(&seen, name)
}

fn set<T>(slot: &mut Option<At<T>>, value: T, key: &str, line: u32) -> Result<(), ErrorKind> {
    if let Some(first) = slot {
        return Err(ErrorKind::Duplicate {
            key: key.to_owned(),
            first_line: first.line,
        });
    }
    *slot = Some(At { value, line });
    Ok(())
}

fn bad(key: &str, value: &str, reason: impl Into<String>) -> ErrorKind {
    ErrorKind::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn addr(key: &str, value: &str, default_port: Option<u16>) -> Result<Addr, ErrorKind> {
    Addr::parse(value, default_port).map_err(|e| bad(key, value, e.to_string()))
}

fn tcp_addr(key: &str, value: &str, default_port: Option<u16>) -> Result<Addr, ErrorKind> {
    let a = addr(key, value, default_port)?;
    if a.is_unix() {
        return Err(bad(key, value, "must be a TCP address"));
    }
    Ok(a)
}

/// Paths are absolute because the daemon does not run in the directory
/// the operator wrote the file from.
fn abs_path(key: &str, value: &str) -> Result<PathBuf, ErrorKind> {
    if !value.starts_with('/') {
        return Err(bad(key, value, "must be an absolute path"));
    }
    Ok(PathBuf::from(value))
}

fn keyword<T: std::str::FromStr<Err = crate::value::ParseKeywordError>>(
    key: &str,
    value: &str,
) -> Result<T, ErrorKind> {
    value.parse().map_err(|e: crate::value::ParseKeywordError| {
        bad(key, value, format!("expected {}", e.expected))
    })
}

fn seconds(key: &str, value: &str, min: u32) -> Result<u32, ErrorKind> {
    let reason = if min == 0 {
        "expected a whole number of seconds"
    } else {
        "expected a whole number of seconds greater than 0"
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(key, value, reason));
    }
    match value.parse::<u32>() {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(bad(key, value, reason)),
        Err(_) => Err(bad(key, value, "too large")),
    }
}

/// Parses `value` for `key` and stores it in the option set of this section,
/// or says that the key does not belong here.
fn apply(
    key: Key,
    word: &str,
    value: &str,
    line: u32,
    target: &mut Target,
) -> Result<(), ErrorKind> {
    let level = target.level();
    let wrong = || ErrorKind::WrongLevel {
        key: word.to_owned(),
        level,
    };
    let is_node_key = matches!(
        key,
        Key::Control
            | Key::Pidfile
            | Key::Listen
            | Key::NbdListen
            | Key::NbdSocketDir
            | Key::StateDir
            | Key::MetricsListen
    );
    if is_node_key {
        let opts = match target {
            Target::Global(n, _) | Target::Node(n) => n,
            Target::Resource(_) | Target::ResourceNode(_) => return Err(wrong()),
        };
        return apply_node(key, word, value, line, opts);
    }
    let opts = match target {
        Target::Global(_, r) => {
            if matches!(key, Key::Name | Key::Local | Key::Remote | Key::Source) {
                return Err(wrong());
            }
            r
        }
        Target::Resource(r) | Target::ResourceNode(r) => r,
        Target::Node(_) => return Err(wrong()),
    };
    apply_res(key, word, value, line, opts)
}

fn apply_node(key: Key, w: &str, v: &str, line: u32, o: &mut NodeOpts) -> Result<(), ErrorKind> {
    match key {
        Key::Control => {
            let a = addr(w, v, None)?;
            if !a.is_unix() {
                // The control socket is root-only through its file mode.
                return Err(bad(w, v, "must be a Unix socket (uds:///path)"));
            }
            set(&mut o.control, a, w, line)
        }
        Key::Pidfile => set(&mut o.pidfile, abs_path(w, v)?, w, line),
        Key::Listen => {
            let a = addr(w, v, Some(REPLICATION_PORT))?;
            if let Some(first) = o.listen.iter().find(|l| l.value == a) {
                return Err(bad(w, v, format!("already listed at line {}", first.line)));
            }
            if o.listen.len() >= LISTEN_MAX {
                return Err(ErrorKind::TooMany {
                    what: "listen addresses",
                    max: LISTEN_MAX,
                });
            }
            o.listen.push(At { value: a, line });
            Ok(())
        }
        Key::NbdListen => {
            let a = match v {
                "none" => None,
                _ => Some(tcp_addr(w, v, Some(NBD_PORT))?),
            };
            set(&mut o.nbd_listen, a, w, line)
        }
        Key::NbdSocketDir => {
            let d = match v {
                "none" => None,
                _ => Some(abs_path(w, v)?),
            };
            set(&mut o.nbd_socket_dir, d, w, line)
        }
        Key::StateDir => set(&mut o.state_dir, abs_path(w, v)?, w, line),
        Key::MetricsListen => {
            let a = match v {
                "none" => None,
                _ => Some(tcp_addr(w, v, None)?),
            };
            set(&mut o.metrics_listen, a, w, line)
        }
        _ => Err(ErrorKind::WrongLevel {
            key: w.to_owned(),
            level: Level::Node,
        }),
    }
}

fn apply_res(key: Key, w: &str, v: &str, line: u32, o: &mut ResOpts) -> Result<(), ErrorKind> {
    match key {
        Key::Replication => set(&mut o.replication, keyword(w, v)?, w, line),
        Key::Checksum => set(&mut o.checksum, keyword(w, v)?, w, line),
        Key::Compression => set(&mut o.compression, keyword(w, v)?, w, line),
        Key::OnIoError => set(&mut o.on_io_error, keyword(w, v)?, w, line),
        Key::Timeout => set(&mut o.timeout, seconds(w, v, 1)?, w, line),
        Key::FreezeTimeout => set(&mut o.freeze_timeout, seconds(w, v, 0)?, w, line),
        Key::Exec => set(&mut o.exec, abs_path(w, v)?, w, line),
        Key::FencePeer => {
            // A shell command line, run with `/bin/sh -c`; quote it to keep
            // its spaces. `none` turns off a default set in a wider section.
            let cmd = match v {
                "none" => None,
                _ if v.trim().is_empty() => {
                    return Err(bad(w, v, "expected a shell command or none"))
                }
                _ => Some(v.to_owned()),
            };
            set(&mut o.fence_peer, cmd, w, line)
        }
        Key::Metaflush => {
            let on = match v {
                "on" => true,
                "off" => false,
                _ => return Err(bad(w, v, "expected on or off")),
            };
            set(&mut o.metaflush, on, w, line)
        }
        Key::ResyncRate => {
            let Some(rate) = parse_size(v) else {
                return Err(bad(
                    w,
                    v,
                    "expected bytes per second, with an optional k, M, G or T suffix",
                ));
            };
            set(&mut o.resync_rate, rate, w, line)
        }
        Key::Name => {
            if let Err(reason) = check_resource_name(v) {
                return Err(bad(w, v, reason));
            }
            set(&mut o.name, v.to_owned(), w, line)
        }
        Key::Local => set(&mut o.local, abs_path(w, v)?, w, line),
        Key::Remote => {
            let a = match v {
                "none" => None,
                _ => {
                    let a = addr(w, v, Some(REPLICATION_PORT))?;
                    if a.port() == Some(0) {
                        return Err(bad(w, v, "port 0 cannot be connected to"));
                    }
                    Some(a)
                }
            };
            set(&mut o.remote, a, w, line)
        }
        Key::Source => set(&mut o.source, tcp_addr(w, v, Some(0))?, w, line),
        _ => Err(ErrorKind::WrongLevel {
            key: w.to_owned(),
            level: Level::Resource,
        }),
    }
}
