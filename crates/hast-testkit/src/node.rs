//! One hastd node under test: its directory, config, resources and daemon.
//!
//! A [`Node`] is generic over its node name and config text: the default config
//! (see [`Layout::default_config`]) is a one-node setup with `remote none`, and a
//! caller can supply any other text built from the [`Layout`] (ports, paths), which is
//! how multi-node tests will describe peers. The daemon always runs in the foreground
//! (`-F`) with its output in `hastd.log` inside the node's directory; when a test
//! fails, the tail of that log is printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use crate::env::timeout_s;
use crate::net::{free_port, nbd_info, NbdAddr};
use crate::proc::{describe, run, tail, wait_for, Proc};
use crate::tmp::TempDir;

/// Seconds to wait for the control socket after starting hastd.
const START_TIMEOUT_S: u64 = 20;
/// Seconds to wait for an export after `role primary`.
const EXPORT_TIMEOUT_S: u64 = 20;
/// Seconds hastd gets to exit after SIGTERM.
const STOP_TIMEOUT_S: u64 = 30;
/// Seconds any hastctl invocation may take.
const HASTCTL_TIMEOUT_S: u64 = 60;
/// Lines of the daemon log printed when a test fails.
const LOG_TAIL_LINES: usize = 200;

/// The binaries under test.
#[derive(Clone, Debug)]
pub struct Bins {
    /// Path of `hastd`.
    pub hastd: PathBuf,
    /// Path of `hastctl`.
    pub hastctl: PathBuf,
}

impl Bins {
    /// From the two paths (usually `env!("CARGO_BIN_EXE_...")`, see [`crate::bins!`]).
    pub fn new(hastd: impl Into<PathBuf>, hastctl: impl Into<PathBuf>) -> Bins {
        Bins {
            hastd: hastd.into(),
            hastctl: hastctl.into(),
        }
    }
}

/// A resource of a node: its name, the size of its local file, extra `create` flags.
#[derive(Clone, Debug)]
pub struct ResourceSpec {
    /// Resource (and export) name.
    pub name: String,
    /// Size of the sparse local file, metadata included.
    pub file_size: u64,
    /// Extra arguments to `hastctl create` (e.g. `-e 1M`).
    pub create_args: Vec<String>,
}

impl ResourceSpec {
    /// A resource backed by a sparse file of `file_size` bytes.
    pub fn new(name: &str, file_size: u64) -> ResourceSpec {
        ResourceSpec {
            name: name.to_string(),
            file_size,
            create_args: Vec::new(),
        }
    }

    /// Extra `hastctl create` arguments.
    pub fn create_args(mut self, args: &[&str]) -> ResourceSpec {
        self.create_args = args.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// Where everything of a node lives; the input of config templates.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The node's private directory.
    pub dir: PathBuf,
    /// The name passed as `--node` and used in `on NAME { }`.
    pub node_name: String,
    /// The config file.
    pub config_path: PathBuf,
    /// The control socket path.
    pub control: PathBuf,
    /// The pidfile.
    pub pidfile: PathBuf,
    /// TCP port of `nbd_listen` on 127.0.0.1.
    pub nbd_port: u16,
    /// TCP port of the replication `listen` on 127.0.0.1.
    pub repl_port: u16,
    /// Directory of the per-resource NBD Unix sockets.
    pub nbd_socket_dir: PathBuf,
    /// `state_dir`.
    pub state_dir: PathBuf,
    /// The resources.
    pub resources: Vec<ResourceSpec>,
}

impl Layout {
    /// The local component (file) of resource `res`.
    pub fn local(&self, res: &str) -> PathBuf {
        self.dir.join(format!("{res}.img"))
    }

    /// The TCP NBD address.
    pub fn nbd_addr(&self) -> NbdAddr {
        NbdAddr::local(self.nbd_port)
    }

    /// The Unix NBD socket of resource `res`.
    pub fn nbd_unix(&self, res: &str) -> NbdAddr {
        NbdAddr::Unix(self.nbd_socket_dir.join(format!("{res}.nbd")))
    }

    /// `nbd://127.0.0.1:PORT/res`.
    pub fn uri(&self, res: &str) -> String {
        self.nbd_addr().uri(res)
    }

    /// `nbd+unix:///res?socket=...`.
    pub fn unix_uri(&self, res: &str) -> String {
        self.nbd_unix(res).uri(res)
    }

    /// The one-node config: every resource with `remote none`.
    pub fn default_config(&self) -> String {
        let mut c = format!(
            "# written by hast-testkit\n\
             control uds://{control}\n\
             pidfile {pidfile}\n\
             nbd_listen tcp://127.0.0.1:{nbd}\n\
             nbd_socket_dir {sockdir}\n\
             state_dir {state}\n\
             listen tcp://127.0.0.1:{repl}\n",
            control = self.control.display(),
            pidfile = self.pidfile.display(),
            nbd = self.nbd_port,
            sockdir = self.nbd_socket_dir.display(),
            state = self.state_dir.display(),
            repl = self.repl_port,
        );
        for r in &self.resources {
            c.push_str(&format!(
                "\nresource {name} {{\n    on {node} {{\n        local {local}\n        remote none\n    }}\n}}\n",
                name = r.name,
                node = self.node_name,
                local = self.local(&r.name).display(),
            ));
        }
        c
    }
}

type ConfigFn = Box<dyn Fn(&Layout) -> String>;

/// Builds a [`Node`].
pub struct NodeBuilder {
    bins: Bins,
    tag: String,
    node_name: String,
    resources: Vec<ResourceSpec>,
    config: Option<ConfigFn>,
    create: bool,
    hastd_args: Vec<String>,
    nbd_port: Option<u16>,
    repl_port: Option<u16>,
}

impl NodeBuilder {
    /// Use this `nbd_listen` port instead of a fresh one.
    pub fn nbd_port(mut self, port: u16) -> Self {
        self.nbd_port = Some(port);
        self
    }

    /// Use this replication `listen` port instead of a fresh one: a cluster harness
    /// picks every node's port first so each config can name its peers.
    pub fn repl_port(mut self, port: u16) -> Self {
        self.repl_port = Some(port);
        self
    }

    /// Node name (default `nodea`).
    pub fn node_name(mut self, name: &str) -> Self {
        self.node_name = name.to_string();
        self
    }

    /// A word in the temp dir name, to tell tests apart when `HAST_KEEP_TMP` is set.
    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = tag.to_string();
        self
    }

    /// Add a resource.
    pub fn resource(mut self, spec: ResourceSpec) -> Self {
        self.resources.push(spec);
        self
    }

    /// Config text from the layout, instead of [`Layout::default_config`].
    pub fn config(mut self, f: impl Fn(&Layout) -> String + 'static) -> Self {
        self.config = Some(Box::new(f));
        self
    }

    /// Do not run `hastctl create` for the resources (their files are still made).
    pub fn no_create(mut self) -> Self {
        self.create = false;
        self
    }

    /// Extra hastd arguments.
    pub fn hastd_args(mut self, args: &[&str]) -> Self {
        self.hastd_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Make the directory, sparse files and config, and `hastctl create` each
    /// resource; the daemon is not started.
    pub fn build(self) -> Node {
        let dir = TempDir::new(&self.tag);
        let d = dir.path().to_path_buf();
        let layout = Layout {
            node_name: self.node_name.clone(),
            config_path: d.join("hast.conf"),
            control: d.join("ctl.sock"),
            pidfile: d.join("hastd.pid"),
            nbd_port: self.nbd_port.unwrap_or_else(free_port),
            repl_port: self.repl_port.unwrap_or_else(free_port),
            nbd_socket_dir: d.join("nbd"),
            state_dir: d.join("state"),
            resources: self.resources.clone(),
            dir: d.clone(),
        };
        for sub in [&layout.nbd_socket_dir, &layout.state_dir] {
            std::fs::create_dir_all(sub).unwrap_or_else(|e| panic!("mkdir {}: {e}", sub.display()));
        }
        for r in &layout.resources {
            let path = layout.local(&r.name);
            let f = std::fs::File::create(&path)
                .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
            f.set_len(r.file_size)
                .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
        }
        let text = match &self.config {
            Some(f) => f(&layout),
            None => layout.default_config(),
        };
        std::fs::write(&layout.config_path, text).expect("write config");
        let node = Node {
            log_path: d.join("hastd.log"),
            bins: self.bins,
            layout,
            hastd_args: self.hastd_args,
            daemon: None,
            dir,
        };
        if self.create {
            for r in node.layout.resources.clone() {
                let mut args = vec!["create".to_string()];
                args.extend(r.create_args.iter().cloned());
                args.push(r.name.clone());
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                node.hastctl_ok(&refs);
            }
        }
        node
    }

    /// [`build`](Self::build), then start hastd and wait for its control socket.
    pub fn start(self) -> Node {
        let mut node = self.build();
        node.start_daemon();
        node
    }
}

/// A hastd node under test. Dropping it stops the daemon (by PID) and removes its
/// directory (unless `HAST_KEEP_TMP` is set).
pub struct Node {
    bins: Bins,
    layout: Layout,
    hastd_args: Vec<String>,
    log_path: PathBuf,
    // Field order matters: the daemon goes before the directory it works in.
    daemon: Option<Proc>,
    dir: TempDir,
}

impl Node {
    /// Start describing a node.
    pub fn builder(bins: Bins) -> NodeBuilder {
        NodeBuilder {
            bins,
            tag: "e2e".into(),
            node_name: "nodea".into(),
            resources: Vec::new(),
            config: None,
            create: true,
            hastd_args: Vec::new(),
            nbd_port: None,
            repl_port: None,
        }
    }

    /// A one-resource node (`r0`, a sparse file of `file_size` bytes), hastd started,
    /// `r0` primary and its export being served.
    pub fn primary(bins: Bins, tag: &str, file_size: u64) -> Node {
        let mut node = Node::builder(bins)
            .tag(tag)
            .resource(ResourceSpec::new("r0", file_size))
            .start();
        node.promote("r0");
        node
    }

    /// Where things are.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The node directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The binaries.
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// `nbd://127.0.0.1:PORT/res`.
    pub fn uri(&self, res: &str) -> String {
        self.layout.uri(res)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `hastctl` with `args` exactly as given (no config or node added).
    pub fn hastctl_raw(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bins.hastctl);
        cmd.args(args);
        run(&mut cmd, timeout_s(HASTCTL_TIMEOUT_S))
    }

    /// `hastctl SUBCOMMAND -c CONFIG --node NAME REST...` for `args = [SUBCOMMAND, REST...]`.
    pub fn hastctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.hastctl_command(args);
        run(&mut cmd, timeout_s(HASTCTL_TIMEOUT_S))
    }

    /// The command [`hastctl`](Self::hastctl) runs.
    pub fn hastctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bins.hastctl);
        if let Some((sub, rest)) = args.split_first() {
            cmd.arg(sub)
                .arg("-c")
                .arg(&self.layout.config_path)
                .arg("--node")
                .arg(&self.layout.node_name)
                .args(rest);
        }
        cmd
    }

    /// [`hastctl`](Self::hastctl), asserting exit 0; returns stdout.
    pub fn hastctl_ok(&self, args: &[&str]) -> String {
        let cmd = self.hastctl_command(args);
        let what = describe(&cmd);
        let out = self.hastctl(args);
        if !out.status.success() {
            panic!(
                "`{what}` failed ({}):\nstdout: {}\nstderr: {}\n--- hastd log (tail)\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log_path, 40)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `hastctl dump res` as a map of field -> first word of its value.
    pub fn dump(&self, res: &str) -> BTreeMap<String, String> {
        parse_dump(&self.hastctl_ok(&["dump", res]))
    }

    /// The data size of `res` in bytes, from `hastctl dump`.
    pub fn datasize(&self, res: &str) -> u64 {
        let d = self.dump(res);
        d.get("datasize")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric datasize in dump of {res}: {d:?}"))
    }

    /// The command that starts the daemon.
    pub fn hastd_command(&self) -> Command {
        let mut cmd = Command::new(&self.bins.hastd);
        cmd.arg("-F")
            .arg("-c")
            .arg(&self.layout.config_path)
            .arg("--node")
            .arg(&self.layout.node_name)
            .args(&self.hastd_args);
        if std::env::var_os("HAST_TEST_DEBUG").is_some() {
            cmd.arg("-d");
        }
        cmd
    }

    /// Start hastd and wait until its control socket accepts connections.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "hastd already started");
        let mut cmd = self.hastd_command();
        append_log(&self.log_path, &format!("=== {}", describe(&cmd)));
        let proc = Proc::spawn(&mut cmd, "hastd", Some(&self.log_path))
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bins.hastd.display()));
        self.daemon = Some(proc);
        let control = self.layout.control.clone();
        let ready = wait_for(timeout_s(START_TIMEOUT_S), || {
            if let Some(st) = self.daemon.as_mut().and_then(Proc::try_wait) {
                return Some(Err(st));
            }
            std::os::unix::net::UnixStream::connect(&control)
                .ok()
                .map(|_| Ok(()))
        });
        match ready {
            Some(Ok(())) => {}
            Some(Err(st)) => panic!(
                "hastd exited during startup ({st}):\n{}",
                tail(&self.log_path, LOG_TAIL_LINES)
            ),
            None => panic!(
                "hastd's control socket {} did not appear within {START_TIMEOUT_S} s:\n{}",
                control.display(),
                tail(&self.log_path, LOG_TAIL_LINES)
            ),
        }
    }

    /// PID of the running daemon.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Proc::pid)
    }

    /// True while the daemon runs.
    pub fn daemon_running(&mut self) -> bool {
        self.daemon.as_mut().map(Proc::is_running).unwrap_or(false)
    }

    /// Send a signal to the daemon (by PID).
    pub fn signal(&mut self, sig: libc::c_int) {
        if let Some(p) = self.daemon.as_mut() {
            p.signal(sig);
        }
    }

    /// SIGTERM the daemon and wait for it; panics if it does not exit in time.
    /// Returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut p = self.daemon.take().expect("hastd is not running");
        p.signal(libc::SIGTERM);
        match p.wait_timeout(timeout_s(STOP_TIMEOUT_S)) {
            Some(st) => {
                append_log(&self.log_path, &format!("=== hastd exited: {st}"));
                st
            }
            None => {
                p.kill9();
                panic!(
                    "hastd did not exit within {STOP_TIMEOUT_S} s of SIGTERM:\n{}",
                    tail(&self.log_path, LOG_TAIL_LINES)
                );
            }
        }
    }

    /// SIGKILL the daemon (by PID) and reap it.
    pub fn kill9(&mut self) {
        let mut p = self.daemon.take().expect("hastd is not running");
        let st = p.kill9();
        append_log(&self.log_path, &format!("=== hastd killed: {st}"));
    }

    /// Stop (SIGTERM, asserting exit 0) and start again. Resources come back in `init`.
    pub fn restart(&mut self) {
        let st = self.stop();
        assert!(
            st.success(),
            "hastd exited with {st} on SIGTERM:\n{}",
            tail(&self.log_path, LOG_TAIL_LINES)
        );
        self.start_daemon();
    }

    /// `hastctl role primary res`, then wait until the export is offered.
    /// Returns the export size.
    pub fn promote(&mut self, res: &str) -> u64 {
        self.hastctl_ok(&["role", "primary", res]);
        self.wait_export(res)
    }

    /// Wait until `res` is offered on the TCP NBD port; returns its size.
    pub fn wait_export(&self, res: &str) -> u64 {
        let addr = self.layout.nbd_addr();
        let mut last = String::new();
        let got = wait_for(timeout_s(EXPORT_TIMEOUT_S), || {
            match nbd_info(&addr, res, Duration::from_secs(5)) {
                Ok(size) => Some(size),
                Err(e) => {
                    last = e.to_string();
                    None
                }
            }
        });
        got.unwrap_or_else(|| {
            panic!(
                "export {res} not offered on {} within {EXPORT_TIMEOUT_S} s (last: {last}):\n{}",
                addr.uri(res),
                tail(&self.log_path, LOG_TAIL_LINES)
            )
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- node {} in {}: hastd log (last {LOG_TAIL_LINES} lines) ---\n{}\n--- end of hastd log ---",
                self.layout.node_name,
                self.dir.path().display(),
                tail(&self.log_path, LOG_TAIL_LINES)
            );
        }
        if let Some(mut p) = self.daemon.take() {
            let (st, clean) = p.stop(timeout_s(STOP_TIMEOUT_S));
            if !clean {
                eprintln!("hastd (pid {}) ignored SIGTERM and was killed", p.pid());
            } else if !st.success() && !std::thread::panicking() {
                eprintln!("hastd exited with {st} at teardown");
            }
        }
    }
}

fn append_log(path: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Parse `hastctl dump` output: `key: value ...` lines -> key -> first word of value.
/// `resource: NAME` lines start a new resource; only the first resource is kept.
pub fn parse_dump(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut seen_resource = false;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim();
        if k == "resource" {
            if seen_resource {
                break;
            }
            seen_resource = true;
        }
        let v = v.split_whitespace().next().unwrap_or("");
        map.insert(k.to_string(), v.to_string());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_dump_takes_first_word_and_first_resource() {
        let text = "resource: r0\n    datasize: 1073733632 (1.0GB)\n    prevrole: init\n\
                    resource: r1\n    datasize: 5 (5B)\n";
        let m = parse_dump(text);
        assert_eq!(m["resource"], "r0");
        assert_eq!(m["datasize"], "1073733632");
        assert_eq!(m["prevrole"], "init");
    }

    #[test]
    fn default_config_names_every_path() {
        let l = Layout {
            dir: "/t".into(),
            node_name: "n1".into(),
            config_path: "/t/hast.conf".into(),
            control: "/t/ctl.sock".into(),
            pidfile: "/t/hastd.pid".into(),
            nbd_port: 1,
            repl_port: 2,
            nbd_socket_dir: "/t/nbd".into(),
            state_dir: "/t/state".into(),
            resources: vec![ResourceSpec::new("r0", 1)],
        };
        let c = l.default_config();
        for needle in [
            "control uds:///t/ctl.sock",
            "nbd_listen tcp://127.0.0.1:1",
            "listen tcp://127.0.0.1:2",
            "on n1 {",
            "local /t/r0.img",
            "remote none",
        ] {
            assert!(c.contains(needle), "{needle} missing from:\n{c}");
        }
        assert_eq!(l.unix_uri("r0"), "nbd+unix:///r0?socket=/t/nbd/r0.nbd");
    }
}
