//! The connector `hastcd` on the client host of an [`HaCluster`]: its config
//! (`hastcd.conf`, written from a [`HastcdConf`]), the daemon in namespace `c`
//! ([`Hastcd`]), `hastcctl` against its control socket, and a client that puts
//! ext4 on a local NBD endpoint ([`Ext4Client`]: nbdfuse + loop + mount).
//!
//! hastcd's Unix endpoints and its control socket are paths in the test's
//! directory: a Unix socket is reached by its path from any network
//! namespace, so the client (nbdfuse, the loop device, the mount, the
//! writers) runs in the test's own namespaces, where its mounts are visible
//! and undone by the guards, while hastcd itself lives on host `c` and
//! reaches the data nodes over the cluster's bridge.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::cluster::NsProc;
use crate::env::timeout_s;
use crate::hacluster::{HaCluster, CLIENT, DATA, DISCOVERY_PORT, RES};
use crate::net::{nbd_info, NbdAddr};
use crate::proc::{run, tail, try_run, wait_for};
use crate::tools::{LoopMount, NbdFuse};

/// The connector's binaries. `None` where the root package does not build
/// them (yet): a test that needs one fails saying so.
#[derive(Debug, Clone)]
pub struct ConnBins {
    pub hastcd: Option<PathBuf>,
    pub hastcctl: Option<PathBuf>,
}

impl ConnBins {
    pub fn hastcd(&self) -> &Path {
        self.hastcd
            .as_deref()
            .expect("no hastcd binary: the root package has no src/bin/hastcd.rs")
    }
    pub fn hastcctl(&self) -> &Path {
        self.hastcctl
            .as_deref()
            .expect("no hastcctl binary: the root package has no src/bin/hastcctl.rs")
    }
}

/// What goes into hastcd.conf. Times in seconds (decimals allowed, as
/// hastcd.conf(5) takes them). The defaults are short, for tests.
#[derive(Debug, Clone)]
pub struct HastcdConf {
    pub ctrl_loss_tmo: f64,
    pub poll_interval: f64,
    pub reconnect_interval: f64,
    pub request_timeout: f64,
    pub discovery_timeout: f64,
    /// `controller = host=...;port=...` lines: the data nodes' discovery
    /// addresses by default.
    pub controllers: Vec<String>,
    /// `exclude = resource=NAME` lines.
    pub excludes: Vec<String>,
    /// `connection = resource=NAME;controller=ADDR,ADDR` lines.
    pub connections: Vec<(String, Vec<String>)>,
    /// `tcp_listen = ADDR` (default off).
    pub tcp_listen: Option<String>,
    /// Lines appended to `[Global]` verbatim (for bad-config tests).
    pub global_extra: Vec<String>,
}

impl HastcdConf {
    /// Polls both data nodes' discovery listeners; short intervals.
    pub fn for_cluster(c: &HaCluster) -> HastcdConf {
        HastcdConf {
            ctrl_loss_tmo: 60.0,
            poll_interval: 0.5,
            reconnect_interval: 0.1,
            request_timeout: 2.0,
            discovery_timeout: 1.0,
            controllers: DATA
                .iter()
                .map(|n| format!("host={};port={DISCOVERY_PORT}", c.net.addr(n)))
                .collect(),
            excludes: vec![],
            connections: vec![],
            tcp_listen: None,
            global_extra: vec![],
        }
    }

    /// The file's text; `dir` holds the sockets and the secret.
    pub fn render(&self, dir: &Path) -> String {
        let mut s = String::from("# written by hast-testkit (hastcd)\n[Global]\n");
        let mut kv = |k: &str, v: String| s.push_str(&format!("{k} = {v}\n"));
        kv("ctrl_loss_tmo", fmt_secs(self.ctrl_loss_tmo));
        kv("poll_interval", fmt_secs(self.poll_interval));
        kv("reconnect_interval", fmt_secs(self.reconnect_interval));
        kv("request_timeout", fmt_secs(self.request_timeout));
        kv("discovery_timeout", fmt_secs(self.discovery_timeout));
        kv("socket_dir", socket_dir(dir).display().to_string());
        kv("socket_mode", "0600".into());
        kv(
            "control_socket",
            dir.join("hastcd.sock").display().to_string(),
        );
        kv("secret_file", dir.join("repl.key").display().to_string());
        kv("dbus", "none".into());
        if let Some(t) = &self.tcp_listen {
            kv("tcp_listen", t.clone());
        }
        for l in &self.global_extra {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("\n[Controllers]\n");
        for c in &self.controllers {
            s.push_str(&format!("controller = {c}\n"));
        }
        for e in &self.excludes {
            s.push_str(&format!("exclude = resource={e}\n"));
        }
        for (r, ctrls) in &self.connections {
            s.push_str(&format!(
                "connection = resource={r};controller={}\n",
                ctrls.join(",")
            ));
        }
        s
    }
}

/// hastcd's `socket_dir` for its files in `dir`: next to `dir`, as short as
/// can be, since hastcd refuses a directory that leaves no room for a
/// 64-byte resource name in a 107-byte Unix socket path.
fn socket_dir(dir: &Path) -> PathBuf {
    dir.parent().unwrap_or(dir).join("s")
}

/// Seconds as hastcd.conf takes them: an integer when whole, else a decimal.
fn fmt_secs(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{}", s as i64)
    } else {
        format!("{s}")
    }
}

/// hastcd running on the client host `c` (`hastcd -f CONF` in the
/// foreground), its files in `dir`. Stopped by PID on drop (SIGTERM, then
/// SIGKILL); the namespace's own cleanup catches anything left.
pub struct Hastcd {
    proc: Option<NsProc>,
    dir: PathBuf,
    bins: ConnBins,
    /// Starts so far (each appends to the same log).
    starts: u32,
}

impl Hastcd {
    /// Writes `conf` into `c`'s directory `hastcd/` (with a copy of the
    /// cluster's replication key as the discovery secret) and starts hastcd
    /// on `c`; returns once its control socket exists.
    pub fn start(c: &HaCluster, bins: &ConnBins, conf: &HastcdConf) -> Hastcd {
        let dir = c.host_dir(CLIENT).join("hastcd");
        std::fs::create_dir_all(&dir).expect("hastcd dir");
        std::fs::create_dir_all(socket_dir(&dir)).expect("hastcd socket dir");
        let key = dir.join("repl.key");
        if !key.exists() {
            std::fs::copy(c.host_dir(DATA[0]).join("repl.key"), &key).expect("copy key");
        }
        let mut h = Hastcd {
            proc: None,
            dir,
            bins: bins.clone(),
            starts: 0,
        };
        h.write_conf(conf);
        h.spawn(c);
        h
    }

    /// Rewrites hastcd.conf (for a reload, or before a restart).
    pub fn write_conf(&self, conf: &HastcdConf) {
        std::fs::write(self.conf(), conf.render(&self.dir)).expect("hastcd.conf");
    }

    fn spawn(&mut self, c: &HaCluster) {
        let _ = std::fs::remove_file(self.control_socket());
        self.starts += 1;
        let mut cmd = c.net.command(CLIENT, self.bins.hastcd());
        cmd.arg("-f").arg(self.conf());
        if std::env::var_os("HAST_TEST_DEBUG").is_some() {
            cmd.arg("--tron");
        }
        let p = NsProc::spawn(&mut cmd, "hastcd@c", &self.log()).expect("spawn hastcd");
        self.proc = Some(p);
        let sock = self.control_socket();
        let up = wait_for(timeout_s(20), || {
            if !self.proc.as_mut().is_some_and(NsProc::is_running) {
                return Some(false);
            }
            sock.exists().then_some(true)
        });
        assert!(
            up == Some(true),
            "hastcd did not start (no {})\n{}",
            sock.display(),
            tail(&self.log(), 40)
        );
    }

    /// Stops hastcd (SIGTERM, bounded) and starts it again with the file as
    /// it is now.
    pub fn restart(&mut self, c: &HaCluster) {
        self.stop();
        self.spawn(c);
    }

    /// SIGTERM and wait (bounded: SIGKILL after 10 s); the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut p = self.proc.take()?;
        Some(p.terminate(Duration::from_secs(10)).0)
    }

    /// SIGHUP: hastcd reads its file again.
    pub fn reload(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.signal(libc::SIGHUP);
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(NsProc::pid)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(NsProc::is_running)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn conf(&self) -> PathBuf {
        self.dir.join("hastcd.conf")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("hastcd.log")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("hastcd.sock")
    }
    /// `<socket_dir>/<resource>.nbd`.
    pub fn socket(&self, res: &str) -> PathBuf {
        socket_dir(&self.dir).join(format!("{res}.nbd"))
    }
    /// `nbd+unix:///RES?socket=...`, the endpoint's URI as `hastcctl ls` gives it.
    pub fn uri(&self, res: &str) -> String {
        NbdAddr::Unix(self.socket(res)).uri(res)
    }

    /// Waits until the endpoint of `res` exists and completes a handshake
    /// (hastcd has found a primary and knows the size); its size.
    pub fn wait_endpoint(&self, res: &str, bound: Duration) -> Option<u64> {
        let addr = NbdAddr::Unix(self.socket(res));
        wait_for(bound, || {
            let r = nbd_info(&addr, res, Duration::from_secs(3)).ok();
            if r.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            r
        })
    }

    /// `hastcctl -c CONTROL_SOCKET ARGS` (bounded: 10 s, then `None`).
    pub fn hastcctl(&self, args: &[&str]) -> Option<Output> {
        let mut cmd = Command::new(self.bins.hastcctl());
        cmd.arg("-c").arg(self.control_socket()).args(args);
        try_run(&mut cmd, Duration::from_secs(10))
    }

    /// `hastcctl status --json` parsed; `None` if it failed.
    pub fn status_json(&self) -> Option<serde_json::Value> {
        let out = self.hastcctl(&["status", "--json"])?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The status of `res` (from `hastcctl status --json`).
    pub fn endpoint(&self, res: &str) -> Option<serde_json::Value> {
        self.status_json()?
            .as_array()?
            .iter()
            .find(|e| e["resource"] == res)
            .cloned()
    }

    /// The tail of hastcd's log, for failure messages.
    pub fn describe(&self) -> String {
        let st = self
            .status_json()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "hastcctl status: no answer".into());
        format!(
            "--- hastcd status: {st}\n--- hastcd log:\n{}\n",
            tail(&self.log(), 40)
        )
    }
}

impl Drop for Hastcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- hastcd log (last 60 lines)\n{}", tail(&self.log(), 60));
        }
        self.stop();
    }
}

/// `hastcd -f FILE` run in the test's own namespace to completion (for
/// config errors, `--version`, `-h`), bounded.
pub fn hastcd_once(bins: &ConnBins, args: &[&str]) -> Output {
    let mut cmd = Command::new(bins.hastcd());
    cmd.args(args);
    run(&mut cmd, timeout_s(30))
}

/// ext4 on an NBD URI in the test's own mount namespace: nbdfuse (optionally
/// in a host's network namespace, to reach a data node directly) exposes the
/// export as a file, a loop device of `fs_size` bytes (`sizelimit`, so the
/// rest of the export is free for the versioned-block writer) carries ext4,
/// mounted with `errors=remount-ro` so an error shows as a read-only mount.
/// Unmounted (loop released) and nbdfuse stopped on drop, in that order.
pub struct Ext4Client {
    // Field order is drop order: the filesystem before the FUSE file under
    // it, both before the shared mount they are in.
    fs: Option<LoopMount>,
    fuse: NbdFuse,
    _shared: SharedMount,
    mountpoint: PathBuf,
    fs_size: u64,
}

/// `DIR` bind-mounted on itself and made shared, so that mounts made under
/// it are unmounted everywhere when they are unmounted here.
///
/// `ip netns exec` gives every process it starts (hastd restarted after a
/// kill, a writer, the checker) a new mount namespace, a copy of the
/// mounts of the moment; on a machine whose mounts are private those copies
/// keep the ext4 mount alive after our umount, so its loop device never
/// lets go of the FUSE file. `ip netns exec` makes its copy a slave
/// (`mount --make-rslave /`): under a shared mount, our umount propagates
/// to the copies.
struct SharedMount {
    path: PathBuf,
}

impl SharedMount {
    fn new(path: &Path) -> SharedMount {
        std::fs::create_dir_all(path).expect("mkdir shared mount");
        let out = run(
            Command::new("mount").arg("--bind").arg(path).arg(path),
            timeout_s(30),
        );
        crate::tools::expect_ok(&out, "mount --bind");
        let m = SharedMount {
            path: path.to_path_buf(),
        };
        let out = run(
            Command::new("mount").arg("--make-shared").arg(path),
            timeout_s(30),
        );
        crate::tools::expect_ok(&out, "mount --make-shared");
        m
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let out = run(Command::new("umount").arg(&self.path), timeout_s(60));
        if !out.status.success() {
            eprintln!(
                "umount {}: {}; detaching it",
                self.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let _ = run(
                Command::new("umount").arg("-l").arg(&self.path),
                timeout_s(30),
            );
        }
    }
}

impl Ext4Client {
    /// nbdfuse on `uri` at `dir/fuse` (in `netns`, a `/run/netns/` path, when
    /// given); with `mkfs`, a fresh ext4 of `fs_size` bytes; mounted at
    /// `dir/fs`.
    pub fn mount(dir: &Path, uri: &str, netns: Option<&Path>, fs_size: u64, mkfs: bool) -> Self {
        let log = dir.join(format!(
            "nbdfuse-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ));
        let shared = SharedMount::new(&dir.join("mnt"));
        let fuse = NbdFuse::mount_in(&shared.path.join("fuse"), uri, &log, netns);
        let image = fuse.file();
        if mkfs {
            let out = run(
                Command::new("mkfs.ext4")
                    .args(["-F", "-q", "-L", "hastcd"])
                    .arg(&image)
                    .arg(format!("{}k", fs_size / 1024)),
                timeout_s(300),
            );
            crate::tools::expect_ok(&out, "mkfs.ext4");
        }
        let mountpoint = shared.path.join("fs");
        let fs = LoopMount::mount_with(
            &image,
            &mountpoint,
            &format!("loop,sizelimit={fs_size},errors=remount-ro"),
        );
        Ext4Client {
            fs: Some(fs),
            fuse,
            _shared: shared,
            mountpoint,
            fs_size,
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The nbdfuse file (the whole export).
    pub fn image(&self) -> PathBuf {
        self.fuse.file()
    }

    /// Size of the filesystem area at the start of the export.
    pub fn fs_size(&self) -> u64 {
        self.fs_size
    }

    /// The mount's source device and options from /proc/mounts.
    pub fn mount_entry(&self) -> Option<(String, String)> {
        let text = std::fs::read_to_string("/proc/mounts").ok()?;
        let mp = self.mountpoint.to_str()?;
        text.lines().rev().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[1] == mp).then(|| (f[0].to_owned(), f[3].to_owned()))
        })
    }

    /// Mounted read-write (not remounted read-only after an error).
    pub fn is_rw(&self) -> bool {
        self.mount_entry()
            .is_some_and(|(_, o)| o.split(',').any(|x| x == "rw"))
    }

    /// Whether a file can still be created and removed: since Linux 6.12 an
    /// ext4 error with `errors=remount-ro` sets ext4's own emergency
    /// read-only flag, which /proc/mounts does not show ("rw" stays), and
    /// writes fail with EROFS. `Err` with the error otherwise.
    pub fn write_probe(&self) -> Result<(), String> {
        let p = self.mountpoint.join(".probe");
        std::fs::write(&p, b"probe")
            .and_then(|_| std::fs::remove_file(&p))
            .map_err(|e| format!("{}: {e}", p.display()))
    }

    /// `/sys/fs/ext4/<loopN>/errors_count` (None if unreadable).
    pub fn errors_count(&self) -> Option<u64> {
        let (dev, _) = self.mount_entry()?;
        let name = Path::new(&dev).file_name()?.to_str()?.to_owned();
        std::fs::read_to_string(format!("/sys/fs/ext4/{name}/errors_count"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Unmounts ext4 (panics if umount fails) and, with `fuse`, nbdfuse too
    /// (its exit status).
    pub fn unmount_fs(&mut self) {
        if let Some(mut fs) = self.fs.take() {
            fs.unmount();
        }
    }

    /// Mounts the filesystem again on the same nbdfuse file.
    pub fn remount_fs(&mut self) {
        if self.fs.is_none() {
            self.fs = Some(LoopMount::mount_with(
                &self.fuse.file(),
                &self.mountpoint,
                &format!("loop,sizelimit={},errors=remount-ro", self.fs_size),
            ));
        }
    }

    /// Unmounts everything; nbdfuse's exit status.
    pub fn unmount_all(&mut self) -> Option<std::process::ExitStatus> {
        self.unmount_fs();
        self.fuse.unmount()
    }
}

/// `/run/netns/<ns>` of host `n` (for `nsenter --net=`).
pub fn netns_path(c: &HaCluster, n: &str) -> PathBuf {
    Path::new("/run/netns").join(c.net.ns_name(n))
}

/// The resource every helper here defaults to.
pub const RESOURCE: &str = RES;
