//! From the raw tree to this node's `Config`: picks the sections that match
//! the node name, applies inheritance (resource-node > resource > global and
//! node section > default), and checks what only makes sense once values
//! are resolved (required options, names and paths unique on this node).
//! Sections for other nodes were validated by the parser and are dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::addr::{Addr, UNIX_PATH_MAX};
use crate::error::{ConfigError, ErrorKind};
use crate::nbd_tls::{NbdTls, NbdTlsMode};
use crate::parser::{NodeOpts, RawConfig, RawResource};
use crate::syntax::value::{first_label, pick};
use crate::syntax::{At, SyntaxError};
use crate::{defaults, Config, Resource};

fn acceptable_names(node: &str) -> String {
    let short = first_label(node);
    if short == node {
        node.to_owned()
    } else {
        format!("{node}, {short}")
    }
}

/// What makes two `local` paths the same component: the device and inode
/// when the file exists (a symlink, `..` or a hard link reach the same one),
/// else the path with `.` and `..` taken out lexically. The only I/O of this
/// module, a stat per resource: two resources on one disk would each
/// overwrite the other's data and metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FileKey {
    Inode(u64, u64),
    Path(PathBuf),
}

impl FileKey {
    fn of(path: &Path) -> FileKey {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => FileKey::Inode(m.dev(), m.ino()),
            Err(_) => FileKey::Path(lexical(path)),
        }
    }
}

/// `path` without `.` components and with each `..` removing the component
/// before it (as a shell's `cd -L` would; a file that does not exist yet has
/// no symlinks to follow).
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The innermost of up to three levels that sets the option.
fn inherit<T>(levels: [Option<&At<T>>; 3]) -> Option<&T> {
    levels.into_iter().flatten().next().map(|at| &at.value)
}

pub(crate) fn resolve(raw: RawConfig, file: &Path, node: &str) -> Result<Config, ConfigError> {
    if node.is_empty() {
        return Err(ConfigError::whole(file, SyntaxError::NoNodeName));
    }
    let err = |(line, kind): (u32, ErrorKind)| ConfigError::at(file, line, kind);

    let g = &raw.node_opts;
    let section = pick(&raw.nodes, |n| (&n.name, n.line), node)
        .map_err(err)?
        .map(|n| &n.opts);
    macro_rules! node_level {
        ($field:ident) => {
            inherit([
                section.and_then(|s| s.$field.as_ref()),
                g.$field.as_ref(),
                None,
            ])
            .cloned()
        };
    }
    let control =
        node_level!(control).unwrap_or_else(|| Addr::Unix(PathBuf::from(defaults::CONTROL_PATH)));
    let pidfile = node_level!(pidfile).unwrap_or_else(|| defaults::PIDFILE.into());
    let state_dir = node_level!(state_dir).unwrap_or_else(|| defaults::STATE_DIR.into());
    let exec_timeout_secs = node_level!(exec_timeout).unwrap_or(defaults::EXEC_TIMEOUT_SECS);
    // Opt-in (unset: none): NBD has no authentication, and a TCP listener
    // on loopback is open to every local user (docs/security.md).
    let nbd_listen = node_level!(nbd_listen).flatten();
    let nbd_socket_dir = match node_level!(nbd_socket_dir) {
        Some(d) => d,
        None => Some(PathBuf::from(defaults::NBD_SOCKET_DIR)),
    };
    let metrics_listen = node_level!(metrics_listen).flatten();
    // Opt-in (unset: none), like nbd_listen: a node answers discovery
    // requests only where the operator asked it to.
    let discovery_listen = node_level!(discovery_listen).flatten();
    let nbd_max_buffer = node_level!(nbd_max_buffer).unwrap_or(defaults::NBD_MAX_BUFFER);
    let nbd_idle_timeout_secs =
        node_level!(nbd_idle_timeout).unwrap_or(defaults::NBD_IDLE_TIMEOUT_SECS);
    let nbd_tls = nbd_tls(section, g).map_err(err)?;
    // A node section's listen list replaces the global one rather than
    // adding to it: the global addresses are usually wildcard binds.
    let listen = match section.map(|s| &s.listen).filter(|l| !l.is_empty()) {
        Some(l) => l.iter().map(|a| a.value.clone()).collect(),
        None if !g.listen.is_empty() => g.listen.iter().map(|a| a.value.clone()).collect(),
        None => vec![defaults::listen()],
    };

    // The node section's statement wins over the global one.
    let tls_file = |f: fn(&crate::parser::NodeOpts) -> &Option<At<PathBuf>>| {
        [section.and_then(|s| f(s).as_ref()), f(g).as_ref()]
            .into_iter()
            .flatten()
            .next()
            .map(|at| (at.value.clone(), at.line))
    };
    let tls_cert = tls_file(|o| &o.tls_cert);
    let tls_key = tls_file(|o| &o.tls_key);
    // A tls:// address is useless without this node's certificate: say so
    // on the address's line, not when the first connection fails.
    let no_identity = match (&tls_cert, &tls_key) {
        (Some(_), Some(_)) => None,
        (None, Some(_)) => Some("tls_cert (this node's certificate, global or in its on section)"),
        (Some(_), None) => Some("tls_key (this node's private key, global or in its on section)"),
        (None, None) => Some(
            "tls_cert and tls_key (this node's certificate and key, global or in its on section)",
        ),
    };
    if let Some(missing) = no_identity {
        let listen_at = match section.map(|s| &s.listen).filter(|l| !l.is_empty()) {
            Some(l) => l.as_slice(),
            None => g.listen.as_slice(),
        };
        if let Some(at) = listen_at.iter().find(|a| a.value.is_tls()) {
            return Err(err((
                at.line,
                ErrorKind::TlsIncomplete {
                    addr: format!("listen {}", at.value),
                    missing: missing.to_string(),
                },
            )));
        }
    }

    let mut resources = Vec::with_capacity(raw.resources.len());
    let mut exports: HashMap<String, (String, u32)> = HashMap::new();
    let mut locals: HashMap<FileKey, (String, u32, PathBuf)> = HashMap::new();
    for res in &raw.resources {
        let r = resource(&raw, res, node).map_err(err)?;
        if let Some(remote) = r.remote.as_ref().filter(|a| a.is_tls()) {
            let missing = match no_identity {
                Some(m) => Some(m),
                None if r.tls_peer_fingerprints.is_empty() => {
                    Some("tls_peer_fingerprint (the SHA-256 of the peer's certificate)")
                }
                None => None,
            };
            if let Some(missing) = missing {
                return Err(err((
                    remote_line(&raw, res, node).unwrap_or(r.line),
                    ErrorKind::TlsIncomplete {
                        addr: format!("resource \"{}\": remote {remote}", r.name),
                        missing: missing.to_string(),
                    },
                )));
            }
        }
        if let Some(dir) = &nbd_socket_dir {
            let path = crate::nbd_socket_path(dir, &r.name);
            if path.as_os_str().len() > UNIX_PATH_MAX {
                return Err(err((
                    r.line,
                    ErrorKind::SocketPathTooLong {
                        resource: r.name.clone(),
                        path: path.display().to_string(),
                        max: UNIX_PATH_MAX,
                    },
                )));
            }
        }
        // Two exports with one name, or two resources on one disk, would
        // send a client's or a peer's writes to the wrong place.
        if let Some((other, other_line)) = exports.get(&r.provider_name) {
            return Err(err((
                r.line,
                ErrorKind::DuplicateExportName {
                    resource: r.name.clone(),
                    name: r.provider_name.clone(),
                    other: other.clone(),
                    other_line: *other_line,
                },
            )));
        }
        let key = FileKey::of(&r.local);
        if let Some((other, other_line, other_path)) = locals.get(&key) {
            let mut path = format!("\"{}\"", r.local.display());
            if *other_path != r.local {
                path.push_str(&format!(" (the same file as \"{}\")", other_path.display()));
            }
            return Err(err((
                r.line,
                ErrorKind::DuplicateLocal {
                    resource: r.name.clone(),
                    path,
                    other: other.clone(),
                    other_line: *other_line,
                },
            )));
        }
        exports.insert(r.provider_name.clone(), (r.name.clone(), r.line));
        locals.insert(key, (r.name.clone(), r.line, r.local.clone()));
        resources.push(r);
    }

    Ok(Config {
        file: file.to_path_buf(),
        node: node.to_owned(),
        control,
        pidfile,
        listen,
        nbd_listen,
        nbd_socket_dir,
        state_dir,
        exec_timeout_secs,
        metrics_listen,
        discovery_listen,
        nbd_max_buffer,
        nbd_idle_timeout_secs,
        nbd_tls,
        tls_cert,
        tls_key,
        resources,
    })
}

/// The line of the `remote` statement this node's resource uses.
fn remote_line(raw: &RawConfig, res: &RawResource, node: &str) -> Option<u32> {
    let picked: Result<_, (u32, ErrorKind)> = pick(&res.nodes, |n| (&n.name, n.line), node);
    let rn = picked.ok().flatten()?;
    [&rn.opts, &res.opts, &raw.res_opts]
        .into_iter()
        .find_map(|o| o.remote.as_ref())
        .map(|at| at.line)
}

fn resource(raw: &RawConfig, res: &RawResource, node: &str) -> Result<Resource, (u32, ErrorKind)> {
    let Some(rn) = pick(&res.nodes, |n| (&n.name, n.line), node)? else {
        return Err((
            res.line,
            ErrorKind::NoNodeSection {
                resource: res.name.clone(),
                acceptable: acceptable_names(node),
            },
        ));
    };
    let (n, r, g) = (&rn.opts, &res.opts, &raw.res_opts);
    macro_rules! get {
        ($field:ident) => {
            inherit([n.$field.as_ref(), r.$field.as_ref(), g.$field.as_ref()]).cloned()
        };
    }
    // The value and the line that set it, for errors found by hastd later.
    macro_rules! at {
        ($field:ident) => {
            [n, r, g]
                .into_iter()
                .find_map(|o| o.$field.as_ref())
                .map(|at| (at.value.clone(), at.line))
        };
    }
    let Some(local) = get!(local) else {
        return Err((
            rn.line,
            ErrorKind::MissingLocal {
                resource: res.name.clone(),
            },
        ));
    };
    let Some(remote) = get!(remote) else {
        return Err((
            rn.line,
            ErrorKind::MissingRemote {
                resource: res.name.clone(),
            },
        ));
    };
    let timeout_secs = get!(timeout).unwrap_or(defaults::TIMEOUT_SECS);
    let ping_timeout_secs = match at!(ping_timeout) {
        Some((ping, line)) if ping > timeout_secs => {
            return Err((
                line,
                ErrorKind::PingAboveTimeout {
                    resource: res.name.clone(),
                    ping,
                    timeout: timeout_secs,
                },
            ))
        }
        Some((ping, _)) => ping,
        // The default never exceeds a short `timeout` set on its own.
        None => defaults::PING_TIMEOUT_SECS.min(timeout_secs),
    };
    Ok(Resource {
        name: res.name.clone(),
        provider_name: get!(name).unwrap_or_else(|| res.name.clone()),
        local,
        remote,
        source: get!(source),
        replication: get!(replication).unwrap_or(defaults::REPLICATION),
        checksum: get!(checksum).unwrap_or(defaults::CHECKSUM),
        compression: get!(compression).unwrap_or(defaults::COMPRESSION),
        timeout_secs,
        ping_timeout_secs,
        exec: get!(exec),
        fence_peer: get!(fence_peer).flatten(),
        metaflush: get!(metaflush).unwrap_or(defaults::METAFLUSH),
        freeze_timeout_secs: get!(freeze_timeout).unwrap_or(defaults::FREEZE_TIMEOUT_SECS),
        on_io_error: get!(on_io_error).unwrap_or(defaults::ON_IO_ERROR),
        resync_rate: get!(resync_rate).unwrap_or(defaults::RESYNC_RATE),
        secret_file: [n, r, g]
            .into_iter()
            .find_map(|o| o.secret_file.as_ref())
            .and_then(|at| at.value.clone().map(|p| (p, at.line))),
        secret: None,
        nbd_socket_owner: at!(nbd_socket_owner),
        nbd_socket_group: at!(nbd_socket_group),
        nbd_socket_mode: get!(nbd_socket_mode).unwrap_or(defaults::NBD_SOCKET_MODE),
        tls_peer_fingerprints: get!(tls_peer_fingerprint).unwrap_or_default(),
        line: res.line,
    })
}

/// This node's `nbd_tls*` options (its `on` section over the global ones):
/// a certificate and key go together; `nbd_tls` defaults to `required`
/// with them (as qemu-nbd does with `--tls-creds`) and to `off` without;
/// `optional`, `required` and a client fingerprint need the pair.
fn nbd_tls(section: Option<&NodeOpts>, g: &NodeOpts) -> Result<Option<NbdTls>, (u32, ErrorKind)> {
    let mode = section
        .and_then(|s| s.nbd_tls.as_ref())
        .or(g.nbd_tls.as_ref());
    let cert = section
        .and_then(|s| s.nbd_tls_cert.as_ref())
        .or(g.nbd_tls_cert.as_ref());
    let key = section
        .and_then(|s| s.nbd_tls_key.as_ref())
        .or(g.nbd_tls_key.as_ref());
    let fp = section
        .and_then(|s| s.nbd_tls_client_fingerprint.as_ref())
        .or(g.nbd_tls_client_fingerprint.as_ref());
    let pair = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (Some(c), None) => {
            return Err((c.line, ErrorKind::NbdTls("nbd_tls_cert needs nbd_tls_key")))
        }
        (None, Some(k)) => {
            return Err((k.line, ErrorKind::NbdTls("nbd_tls_key needs nbd_tls_cert")))
        }
        (None, None) => None,
    };
    let Some((cert, key)) = pair else {
        if let Some(m) = mode.filter(|m| m.value != NbdTlsMode::Off) {
            return Err((
                m.line,
                ErrorKind::NbdTls(
                    "nbd_tls optional or required needs nbd_tls_cert and nbd_tls_key",
                ),
            ));
        }
        if let Some(f) = fp.filter(|f| f.value.is_some()) {
            return Err((
                f.line,
                ErrorKind::NbdTls("nbd_tls_client_fingerprint needs nbd_tls_cert and nbd_tls_key"),
            ));
        }
        return Ok(None);
    };
    let mode = mode.map_or(NbdTlsMode::Required, |m| m.value);
    if mode == NbdTlsMode::Off {
        return Ok(None);
    }
    Ok(Some(NbdTls {
        mode,
        cert: (cert.value.clone(), cert.line),
        key: (key.value.clone(), key.line),
        client_fingerprint: fp.and_then(|f| f.value),
        pem: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ping_timeout` inherits like `timeout`; its default (3 s) follows a
    /// shorter `timeout` down; one set above `timeout`, or below 1, is an
    /// error on the line that set it.
    #[test]
    fn ping_timeout_rules() {
        #[rustfmt::skip]
        let ok: &[(&str, u32, u32)] = &[
            // text, timeout, ping_timeout
            ("", 20, 3),
            ("timeout 2\n", 2, 2),
            ("timeout 1\n", 1, 1),
            ("ping_timeout 5\n", 20, 5),
            ("ping_timeout 20\n", 20, 20),
            ("timeout 10\nping_timeout 1\n", 10, 1),
        ];
        for (global, timeout, ping) in ok {
            let text = format!("{global}resource r {{ on a {{ local /d\n remote b }} }}\n");
            let c = crate::parse(&text, Path::new("hast.conf"), "a").unwrap();
            let r = &c.resources[0];
            assert_eq!(
                (r.timeout_secs, r.ping_timeout_secs),
                (*timeout, *ping),
                "{global:?}"
            );
        }
        // Resource and node level override the global one.
        let text = "ping_timeout 4\nresource r { ping_timeout 2\n on a { local /d\n remote b } }\n\
            resource s { on a { local /e\n remote b\n ping_timeout 1 } }\n";
        let c = crate::parse(text, Path::new("hast.conf"), "a").unwrap();
        let got: Vec<u32> = c.resources.iter().map(|r| r.ping_timeout_secs).collect();
        assert_eq!(got, [2, 1]);
        #[rustfmt::skip]
        let bad: &[(&str, u32, &str)] = &[
            ("ping_timeout 0\nresource r { on a { local /d\n remote b } }\n", 1, "greater than 0"),
            ("ping_timeout x\nresource r { on a { local /d\n remote b } }\n", 1, "ping_timeout"),
            ("timeout 5\nresource r {\n ping_timeout 6\n on a { local /d\n remote b } }\n", 3,
             "ping_timeout 6 is longer than timeout 5"),
            ("resource r { timeout 2\n on a { local /d\n remote b\n ping_timeout 3 } }\n", 4,
             "ping_timeout 3 is longer than timeout 2"),
        ];
        for (text, line, word) in bad {
            let e = crate::parse(text, Path::new("hast.conf"), "a").unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("hast.conf:{line}:")) && msg.contains(word),
                "{text:?}: {msg}"
            );
        }
    }

    /// `fence_peer` inherits like every resource option; `none` turns a
    /// wider default off; an empty command is an error on its line.
    #[test]
    fn fence_peer_inheritance() {
        const TEXT: &str = "fence_peer \"/usr/sbin/fence-peer --hard\"\n\
            resource dflt { on a { local /d0\n remote b } }\n\
            resource own { fence_peer /bin/true\n on a { local /d1\n remote b } }\n\
            resource off { on a { local /d2\n remote b\n fence_peer none } }\n";
        let c = crate::parse(TEXT, Path::new("hast.conf"), "a").unwrap();
        let got: Vec<_> = c
            .resources
            .iter()
            .map(|r| (r.name.as_str(), r.fence_peer.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("dflt", Some("/usr/sbin/fence-peer --hard")),
                ("own", Some("/bin/true")),
                ("off", None),
            ]
        );
        let unset = "resource r { on a { local /d\n remote b } }\n";
        let c = crate::parse(unset, Path::new("hast.conf"), "a").unwrap();
        assert_eq!(c.resources[0].fence_peer, None);

        let cases = [
            ("fence_peer \"  \"\n", 1, "fence_peer"),
            ("resource r {\n fence_peer\n}\n", 2, "fence_peer"),
            ("on a {\n fence_peer /x\n}\n", 2, "fence_peer"),
        ];
        for (text, line, word) in cases {
            let e = crate::parse(text, Path::new("hast.conf"), "a").unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("hast.conf:{line}:")) && msg.contains(word),
                "{text:?}: {msg}"
            );
        }
    }

    /// `secret_file` inherits like `fence_peer`; the file is read only by
    /// `load_secrets`, whose errors name the statement's line and the file.
    #[test]
    fn secret_file_inheritance_and_loading() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hast-conf-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "secret_file {}\n\
             resource dflt {{ on a {{ local /d0\n remote b }} }}\n\
             resource off {{ secret_file none\n on a {{ local /d1\n remote b }} }}\n",
            key.display()
        );
        let mut c = crate::parse(&text, Path::new("hast.conf"), "a").unwrap();
        assert_eq!(c.resources[0].secret_file, Some((key.clone(), 1)));
        assert_eq!(c.resources[1].secret_file, None);
        assert!(
            c.resources.iter().all(|r| r.secret.is_none()),
            "parse reads no file"
        );
        c.load_secrets().unwrap();
        assert_eq!(
            c.resources[0].secret.as_ref().map(|s| s.current().to_vec()),
            Some(b"0123456789abcdef".to_vec())
        );
        assert!(c.resources[1].secret.is_none());

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = crate::parse(&text, Path::new("hast.conf"), "a").unwrap();
        let e = c.load_secrets().unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("hast.conf:1: secret_file"), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
        assert_eq!(e.exit_code(), crate::syntax::EX_CONFIG);
        std::fs::remove_file(&key).unwrap();
        let e = c.load_secrets().unwrap_err();
        assert_eq!(e.exit_code(), crate::syntax::EX_NOINPUT, "{e}");
        let e = crate::parse("secret_file relative/key\n", Path::new("hast.conf"), "a")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("hast.conf:1:") && e.contains("secret_file"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `tls_cert`/`tls_key` are node options (an `on` section's win),
    /// `tls_peer_fingerprint` a resource option; a `tls://` address without
    /// them is an error on the address's line.
    #[test]
    fn tls_options_and_what_tls_addresses_require() {
        let fp = "AB:".repeat(31) + "CD";
        let text = format!(
            "tls_cert /etc/hast/g.crt\n\
             tls_key /etc/hast/g.key\n\
             tls_peer_fingerprint {fp}\n\
             listen tls://0.0.0.0:7000\n\
             on a {{ tls_cert /etc/hast/a.crt }}\n\
             resource r {{ on a {{ local /d0\n remote tls://10.0.0.2:7000 }} }}\n\
             resource two {{ tls_peer_fingerprint \"{}, {}\"\n on a {{ local /d1\n remote tls://b }} }}\n\
             resource plain {{ on a {{ local /d2\n remote 10.0.0.3 }} }}\n",
            "11".repeat(32),
            "22".repeat(32)
        );
        let c = crate::parse(&text, Path::new("hast.conf"), "a").unwrap();
        assert_eq!(c.tls_cert, Some(("/etc/hast/a.crt".into(), 5)));
        assert_eq!(c.tls_key, Some(("/etc/hast/g.key".into(), 2)));
        assert!(c.listen[0].is_tls());
        assert_eq!(c.listen[0].to_string(), "tls://0.0.0.0:7000");
        let fps: Vec<String> = c.resources[0]
            .tls_peer_fingerprints
            .iter()
            .map(|f| f.hex())
            .collect();
        assert_eq!(fps, ["ab".repeat(31) + "cd"]);
        assert_eq!(c.resources[1].tls_peer_fingerprints.len(), 2);
        assert_eq!(
            c.resources[1].remote.as_ref().unwrap().to_string(),
            "tls://b:8457"
        );
        assert!(!c.resources[2].remote.as_ref().unwrap().is_tls());

        let no_tls = "resource r { on a { local /d\n remote b } }\n";
        let c = crate::parse(no_tls, Path::new("hast.conf"), "a").unwrap();
        assert_eq!((c.tls_cert, c.tls_key), (None, None));
        assert!(c.resources[0].tls_peer_fingerprints.is_empty());

        let r = "resource r { on a { local /d\n remote tls://b } }\n";
        let id = "tls_cert /c\ntls_key /k\n";
        let cases = [
            (
                format!("listen tls://0.0.0.0\n{no_tls}"),
                1,
                "listen tls://0.0.0.0:8457 needs tls_cert and tls_key",
            ),
            (
                format!("tls_cert /c\n\nlisten tls://h:1\n{no_tls}"),
                3,
                "needs tls_key",
            ),
            (
                format!("tls_key /k\non a {{ listen tls://h:1 }}\n{no_tls}"),
                2,
                "needs tls_cert",
            ),
            (
                format!("tls_peer_fingerprint {fp}\n{r}"),
                3,
                "resource \"r\": remote tls://b:8457 needs tls_cert and tls_key",
            ),
            (
                format!("{id}{r}"),
                4,
                "remote tls://b:8457 needs tls_peer_fingerprint",
            ),
            (
                format!("{id}resource r {{\n remote tls://b\n on a {{ local /d }} }}\n"),
                4,
                "needs tls_peer_fingerprint",
            ),
            (
                format!("{id}tls_peer_fingerprint 12:34\n"),
                3,
                "tls_peer_fingerprint",
            ),
            (
                "resource r {\n tls_cert /c\n}\n".into(),
                2,
                "\"tls_cert\" is not allowed",
            ),
            (
                "on a {\n tls_peer_fingerprint x\n}\n".into(),
                2,
                "not allowed",
            ),
            (
                "nbd_listen tls://127.0.0.1\n".into(),
                1,
                "must be a TCP address",
            ),
            (
                "resource r {\n source tls://10.0.0.1\n}\n".into(),
                2,
                "must be a TCP address",
            ),
            ("tls_cert relative.crt\n".into(), 1, "tls_cert"),
        ];
        for (text, line, msg) in cases {
            let e = crate::parse(&text, Path::new("hast.conf"), "a").unwrap_err();
            let got = e.to_string();
            assert!(
                got.starts_with(&format!("hast.conf:{line}: ")) && got.contains(msg),
                "{text:?}: {got}"
            );
            assert!(!got.contains('\n'), "{got}");
            assert_eq!(e.exit_code(), crate::syntax::EX_CONFIG, "{got}");
        }
        // Sections for other nodes are not held to this node's identity.
        let other =
            "resource r { on b { local /d\n remote tls://a } on a { local /d\n remote c } }\n";
        assert!(crate::parse(other, Path::new("hast.conf"), "a").is_ok());
    }

    #[test]
    fn nbd_socket_access_options() {
        let text = "nbd_socket_group hastusers\n\
            resource d { on a { local /d0\n remote b } }\n\
            resource o { nbd_socket_owner 1001\n nbd_socket_mode 0600\n on a { local /d1\n remote b } }\n";
        let c = crate::parse(text, Path::new("hast.conf"), "a").unwrap();
        let got: Vec<_> = c
            .resources
            .iter()
            .map(|r| {
                (
                    r.nbd_socket_owner.clone(),
                    r.nbd_socket_group.clone(),
                    r.nbd_socket_mode,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (None, Some(("hastusers".into(), 1)), 0o660),
                (
                    Some(("1001".into(), 4)),
                    Some(("hastusers".into(), 1)),
                    0o600
                ),
            ]
        );
        for (text, why) in [
            ("nbd_socket_mode 0999\n", "octal"),
            ("nbd_socket_mode 01777\n", "octal"),
            ("nbd_socket_mode rw\n", "octal"),
            ("nbd_socket_group \"a b\"\n", "group name"),
            ("nbd_socket_owner \"\"\n", "user or group"),
        ] {
            let e = crate::parse(text, Path::new("hast.conf"), "a")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("hast.conf:1:") && e.contains(why),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn acceptable() {
        assert_eq!(acceptable_names("a"), "a");
        assert_eq!(acceptable_names("a.b.c"), "a.b.c, a");
    }
}
