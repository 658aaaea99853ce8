//! Grammar of hastmon.conf: statements and `on`/`resource`/`key` sections
//! into a raw tree of typed values with their line numbers. Values are
//! parsed here, so a bad value is reported on its own line even inside a
//! section for another node; inheritance and the checks that need resolved
//! values are left to `resolve`.
//!
//! Statements and sections are read by `hast_conf::syntax::Reader`, so they
//! end as in hast.conf: at a newline, `;`, `}`, the end of the file or the
//! next keyword. `remote` is the one option with several values (hastmon's
//! `remote addr1 addr2`); they run to the end of the statement.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hast_conf::lexer::Tok;
use hast_conf::syntax::value::{abs_path, bad};
use hast_conf::syntax::{check_unset, set, At, Reader, SyntaxError};
use hast_conf::Addr;

use super::error::{ConfigError, ErrorKind};
use super::level::Level;
use super::value::{duration, metrics_addr, number, remote_addr, tcp_addr, unix_addr};
use super::{Key, NODE_SECTIONS_MAX, REMOTES_MAX, RESOURCES_MAX, RESOURCE_NODES_MAX};

/// Options of the daemon on one host (global and top-level `on` sections).
#[derive(Debug, Default)]
pub(super) struct HostOpts {
    pub(super) control: Option<At<Addr>>,
    pub(super) listen: Option<At<Addr>>,
    pub(super) pidfile: Option<At<PathBuf>>,
    pub(super) state_dir: Option<At<PathBuf>>,
    /// hastd's control socket, or `None` for `hastd_control none`.
    pub(super) hastd_control: Option<At<Option<Addr>>>,
    /// The Prometheus endpoint, or `None` for `metrics_listen none`.
    pub(super) metrics_listen: Option<At<Option<Addr>>>,
}

/// Options of a resource (global defaults and the resource section).
#[derive(Debug, Default)]
pub(super) struct ResOpts {
    pub(super) exec: Option<At<PathBuf>>,
    pub(super) heartbeat_interval: Option<At<Duration>>,
    pub(super) complaint_count: Option<At<u32>>,
    pub(super) complaint_interval: Option<At<Duration>>,
    pub(super) timeout: Option<At<Duration>>,
    pub(super) attempts: Option<At<u32>>,
    pub(super) lease: Option<At<Duration>>,
    pub(super) key: Option<At<Key>>,
}

#[derive(Debug)]
pub(super) struct RawNode {
    pub(super) name: String,
    pub(super) line: u32,
    pub(super) opts: HostOpts,
}

#[derive(Debug)]
pub(super) struct RawResNode {
    pub(super) name: String,
    pub(super) line: u32,
    pub(super) remote: Option<At<Vec<Addr>>>,
    pub(super) priority: Option<At<u32>>,
}

#[derive(Debug)]
pub(super) struct RawResource {
    pub(super) name: String,
    pub(super) line: u32,
    pub(super) opts: ResOpts,
    pub(super) nodes: Vec<RawResNode>,
}

#[derive(Debug, Default)]
pub(super) struct RawConfig {
    pub(super) host: HostOpts,
    pub(super) res: ResOpts,
    pub(super) nodes: Vec<RawNode>,
    pub(super) resources: Vec<RawResource>,
}

/// Every word that starts a statement or a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Word {
    Control,
    Listen,
    Pidfile,
    StateDir,
    HastdControl,
    MetricsListen,
    Exec,
    HeartbeatInterval,
    ComplaintCount,
    ComplaintInterval,
    Timeout,
    Attempts,
    Lease,
    Remote,
    Priority,
    Secret,
    SecretFile,
    On,
    Resource,
    Key,
}

/// Every word of hastmon.conf with its meaning: the one list the parser
/// reads, and `conf::keywords` (the manual page is checked against it,
/// tests/install.rs) is made from.
pub(super) const WORDS: &[(&str, Word)] = &[
    ("control", Word::Control),
    ("listen", Word::Listen),
    ("pidfile", Word::Pidfile),
    ("state_dir", Word::StateDir),
    ("hastd_control", Word::HastdControl),
    ("metrics_listen", Word::MetricsListen),
    ("exec", Word::Exec),
    ("heartbeat_interval", Word::HeartbeatInterval),
    ("complaint_count", Word::ComplaintCount),
    ("complaint_interval", Word::ComplaintInterval),
    ("timeout", Word::Timeout),
    ("attempts", Word::Attempts),
    ("lease", Word::Lease),
    ("remote", Word::Remote),
    ("priority", Word::Priority),
    ("secret", Word::Secret),
    ("secret_file", Word::SecretFile),
    ("on", Word::On),
    ("resource", Word::Resource),
    ("key", Word::Key),
];

impl Word {
    fn from_keyword(word: &str) -> Option<Word> {
        WORDS.iter().find(|(w, _)| *w == word).map(|&(_, k)| k)
    }
}

/// Where the options of a statement go, by section kind. A statement whose
/// word has no place in its section's target is "not allowed" there.
enum Target<'a> {
    Global(&'a mut HostOpts, &'a mut ResOpts),
    Node(&'a mut HostOpts),
    Resource(&'a mut ResOpts),
    ResourceNode(&'a mut RawResNode),
    Key,
}

impl Target<'_> {
    fn level(&self) -> Level {
        match self {
            Target::Global(..) => Level::Global,
            Target::Node(_) => Level::Node,
            Target::Resource(_) => Level::Resource,
            Target::ResourceNode(_) => Level::ResourceNode,
            Target::Key => Level::Key,
        }
    }
}

/// Why the name `all` is refused for a resource.
const ALL_RESERVED: &str = "\"all\" is reserved by hastmonctl";

struct Parser<'a> {
    r: Reader<'a, ErrorKind>,
}

pub(super) fn parse(text: &str, file: &Path) -> Result<RawConfig, ConfigError> {
    let mut p = Parser {
        r: Reader::new(text, file, is_keyword),
    };
    p.top()
}

impl Parser<'_> {
    fn top(&mut self) -> Result<RawConfig, ConfigError> {
        let mut raw = RawConfig::default();
        while let Some((word, line)) = self.r.next_keyword(None)? {
            match word.as_str() {
                "on" => {
                    let node = self.host_section(line, &raw.nodes)?;
                    raw.nodes.push(node);
                }
                "resource" => {
                    let res = self.resource(line, &raw.resources)?;
                    raw.resources.push(res);
                }
                "key" => {
                    check_unset(&raw.res.key, "key").map_err(|k| self.r.err(line, k))?;
                    raw.res.key = Some(self.key_section(line)?);
                }
                _ => self.statement(
                    &word,
                    line,
                    &mut Target::Global(&mut raw.host, &mut raw.res),
                )?,
            }
        }
        Ok(raw)
    }

    /// `on NODE { ... }` at the top level.
    fn host_section(&mut self, line: u32, seen: &[RawNode]) -> Result<RawNode, ConfigError> {
        let name = self.r.node_section(
            line,
            seen,
            |n| (&n.name, n.line),
            "node sections",
            NODE_SECTIONS_MAX,
        )?;
        let label = format!("on {name}");
        let mut opts = HostOpts::default();
        while let Some((word, kw_line)) = self.r.next_keyword(Some((&label, line)))? {
            self.statement(&word, kw_line, &mut Target::Node(&mut opts))?;
        }
        Ok(RawNode { name, line, opts })
    }

    fn resource(&mut self, line: u32, seen: &[RawResource]) -> Result<RawResource, ConfigError> {
        let name = self.r.resource_section(
            line,
            seen,
            |r| (&r.name, r.line),
            RESOURCES_MAX,
            ALL_RESERVED,
        )?;
        let label = format!("resource {name}");
        let mut res = RawResource {
            name,
            line,
            opts: ResOpts::default(),
            nodes: Vec::new(),
        };
        while let Some((word, kw_line)) = self.r.next_keyword(Some((&label, line)))? {
            match word.as_str() {
                "on" => {
                    let node = self.resource_node(kw_line, &res.nodes)?;
                    res.nodes.push(node);
                }
                "key" => {
                    check_unset(&res.opts.key, "key").map_err(|k| self.r.err(kw_line, k))?;
                    res.opts.key = Some(self.key_section(kw_line)?);
                }
                _ => self.statement(&word, kw_line, &mut Target::Resource(&mut res.opts))?,
            }
        }
        Ok(res)
    }

    /// `on NODE { remote ...; priority N }` inside a resource.
    fn resource_node(&mut self, line: u32, seen: &[RawResNode]) -> Result<RawResNode, ConfigError> {
        let name = self.r.node_section(
            line,
            seen,
            |n| (&n.name, n.line),
            "\"on\" sections in one resource",
            RESOURCE_NODES_MAX,
        )?;
        let label = format!("on {name}");
        let mut node = RawResNode {
            name,
            line,
            remote: None,
            priority: None,
        };
        while let Some((word, kw_line)) = self.r.next_keyword(Some((&label, line)))? {
            self.statement(&word, kw_line, &mut Target::ResourceNode(&mut node))?;
        }
        Ok(node)
    }

    /// `key { secret "..." }` or `key { secret_file /path }`. The file is
    /// read here, so its errors name the line that points at it.
    fn key_section(&mut self, line: u32) -> Result<At<Key>, ConfigError> {
        self.r.open_brace()?;
        let mut found: Option<(At<Key>, String)> = None;
        while let Some((word, kw_line)) = self.r.next_keyword(Some(("key", line)))? {
            if word != "secret" && word != "secret_file" {
                self.statement(&word, kw_line, &mut Target::Key)?;
                continue;
            }
            if let Some((first, first_word)) = &found {
                let kind = if *first_word == word {
                    ErrorKind::from(SyntaxError::Duplicate {
                        key: word,
                        first_line: first.line,
                    })
                } else {
                    ErrorKind::SecretConflict {
                        key: word,
                        other: first_word.clone(),
                        other_line: first.line,
                    }
                };
                return Err(self.r.err(kw_line, kind));
            }
            let value = self.r.value(&word)?;
            let key = if word == "secret" {
                if value == super::PLACEHOLDER_SECRET {
                    return Err(self.r.err(kw_line, ErrorKind::PlaceholderSecret));
                }
                let len = value.len();
                Key::new(value.into_bytes())
                    .map_err(|_| ErrorKind::SecretTooShort {
                        len,
                        min: Key::LEN_MIN,
                    })
                    .map_err(|k| self.r.err(kw_line, k))?
            } else {
                let path = abs_path(&word, &value).map_err(|k| self.r.err(kw_line, k))?;
                // hastd's key file format: the current key seals, the next
                // one is accepted too; the mode must deny group and others.
                let secret = hast_conf::Secret::read(&path)
                    .map_err(|error| self.r.err(kw_line, ErrorKind::SecretFile { path, error }))?;
                let mut keys = secret.accepted().map(<[u8]>::to_vec);
                let current = Key::new(keys.next().unwrap_or_default());
                let key = match keys.next() {
                    Some(next) => current.and_then(|k| k.with_next(next)),
                    None => current,
                };
                key.expect("a key file's keys are at least Key::LEN_MIN bytes")
            };
            found = Some((
                At {
                    value: key,
                    line: kw_line,
                },
                word,
            ));
        }
        match found {
            Some((key, _)) => Ok(At {
                value: key.value,
                line,
            }),
            None => Err(self.r.err(line, ErrorKind::EmptyKey)),
        }
    }

    /// One option statement. Section words and options that do not belong
    /// to this section are refused before their value is read.
    fn statement(&mut self, word: &str, line: u32, target: &mut Target) -> Result<(), ConfigError> {
        let Some(w) = Word::from_keyword(word) else {
            return Err(self
                .r
                .err(line, SyntaxError::UnknownKeyword(word.to_owned())));
        };
        let wrong = ErrorKind::WrongLevel {
            key: word.to_owned(),
            level: target.level(),
        };
        let file = self.r.file();
        let at = |e: ErrorKind| ConfigError::at(file, line, e);
        match (w, target) {
            (
                Word::Control
                | Word::Listen
                | Word::Pidfile
                | Word::StateDir
                | Word::HastdControl
                | Word::MetricsListen,
                Target::Global(host, _) | Target::Node(host),
            ) => {
                let v = self.r.value(word)?;
                apply_host(w, word, &v, line, host).map_err(at)
            }
            (
                Word::Exec
                | Word::HeartbeatInterval
                | Word::ComplaintCount
                | Word::ComplaintInterval
                | Word::Timeout
                | Word::Attempts
                | Word::Lease,
                Target::Global(_, res) | Target::Resource(res),
            ) => {
                let v = self.r.value(word)?;
                apply_res(w, word, &v, line, res).map_err(at)
            }
            (Word::Remote, Target::ResourceNode(node)) => {
                check_unset(&node.remote, word).map_err(|e| at(e.into()))?;
                let values = self.values(word, line, REMOTES_MAX)?;
                let mut addrs: Vec<Addr> = Vec::with_capacity(values.len());
                for v in &values {
                    let a = remote_addr(word, v).map_err(at)?;
                    if addrs.contains(&a) {
                        return Err(at(bad(word, v, "listed twice")));
                    }
                    addrs.push(a);
                }
                node.remote = Some(At { value: addrs, line });
                Ok(())
            }
            (Word::Priority, Target::ResourceNode(node)) => {
                check_unset(&node.priority, word).map_err(|e| at(e.into()))?;
                let v = self.r.value(word)?;
                let p = number(word, &v, 0).map_err(at)?;
                node.priority = Some(At { value: p, line });
                Ok(())
            }
            _ => Err(self.r.err(line, wrong)),
        }
    }

    /// The values of a list statement (`remote a b`), at least one and at
    /// most `max`, up to the end of the statement.
    fn values(&mut self, key: &str, line: u32, max: usize) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        loop {
            let t = self.r.peek()?.clone();
            match t.tok {
                Tok::Word { text, quoted } if quoted || !is_keyword(&text) => {
                    if out.len() >= max {
                        return Err(self.r.err(
                            t.line,
                            SyntaxError::TooMany {
                                what: "remote addresses",
                                max,
                            },
                        ));
                    }
                    out.push(text);
                    // Takes the word just peeked; it cannot fail.
                    self.r.next_token()?;
                }
                Tok::LBrace if !out.is_empty() => {
                    return Err(self.r.err(
                        t.line,
                        SyntaxError::ExtraToken {
                            key: key.to_owned(),
                            found: t.tok.describe(),
                        },
                    ));
                }
                _ => break,
            }
        }
        if out.is_empty() {
            return Err(self.r.err(
                line,
                SyntaxError::MissingValue {
                    key: key.to_owned(),
                },
            ));
        }
        Ok(out)
    }
}

fn is_keyword(word: &str) -> bool {
    Word::from_keyword(word).is_some()
}

fn apply_host(w: Word, key: &str, v: &str, line: u32, o: &mut HostOpts) -> Result<(), ErrorKind> {
    match w {
        Word::Control => set(&mut o.control, unix_addr(key, v)?, key, line),
        Word::Listen => set(&mut o.listen, tcp_addr(key, v)?, key, line),
        Word::Pidfile => set(&mut o.pidfile, abs_path(key, v)?, key, line),
        Word::StateDir => set(&mut o.state_dir, abs_path(key, v)?, key, line),
        Word::HastdControl => {
            let a = if v == "none" {
                None
            } else {
                Some(unix_addr(key, v)?)
            };
            set(&mut o.hastd_control, a, key, line)
        }
        Word::MetricsListen => {
            let a = if v == "none" {
                None
            } else {
                Some(metrics_addr(key, v)?)
            };
            set(&mut o.metrics_listen, a, key, line)
        }
        _ => Err(ErrorKind::WrongLevel {
            key: key.to_owned(),
            level: Level::Node,
        }),
    }
}

fn apply_res(w: Word, key: &str, v: &str, line: u32, o: &mut ResOpts) -> Result<(), ErrorKind> {
    match w {
        Word::Exec => set(&mut o.exec, abs_path(key, v)?, key, line),
        Word::HeartbeatInterval => set(&mut o.heartbeat_interval, duration(key, v)?, key, line),
        Word::ComplaintCount => set(&mut o.complaint_count, number(key, v, 1)?, key, line),
        Word::ComplaintInterval => set(&mut o.complaint_interval, duration(key, v)?, key, line),
        Word::Timeout => set(&mut o.timeout, duration(key, v)?, key, line),
        Word::Attempts => set(&mut o.attempts, number(key, v, 1)?, key, line),
        Word::Lease => set(&mut o.lease, duration(key, v)?, key, line),
        _ => Err(ErrorKind::WrongLevel {
            key: key.to_owned(),
            level: Level::Resource,
        }),
    }
}
