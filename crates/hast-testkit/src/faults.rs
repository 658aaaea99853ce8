//! Process-level faults for the cluster tests that a network partition or a
//! signal to the daemon cannot make: a disk that hangs, and a process that
//! cannot fork.
//!
//! [`FuseDisk`]: a file served by `nbdkit` (file plugin, on a Unix socket)
//! and mounted with `nbdfuse`, so that a daemon using `MOUNT/nbd` as its
//! component blocks in its disk for as long as nbdkit is SIGSTOPped
//! ([`FuseDisk::hang`]) and carries on after SIGCONT ([`FuseDisk::heal`]).
//! The file itself stays readable directly (no cache sits in between: FUSE
//! without writeback caching passes every write to nbdfuse, nbdkit writes it
//! with `pwrite`). Released on drop, also while unwinding: nbdkit continued,
//! the mount unmounted (`fusermount3 -u`, lazily if busy), both processes
//! stopped by PID; a process stuck in a FUSE request can only be freed by
//! answering it or aborting the connection, which [`FuseDisk::abort`] does
//! (`/sys/fs/fuse/connections/N/abort`, and kill -9 of nbdfuse, whose death
//! aborts the connection as well).
//!
//! [`PidsCage`]: a `pids` cgroup (v1 `/sys/fs/cgroup/pids`, or v2 with the
//! `pids` controller) holding one process; [`PidsCage::exhaust`] sets
//! `pids.max` to what it holds now, so every fork(2) and thread creation of
//! that process fails with EAGAIN (as under systemd's `TasksMax=`) until
//! [`PidsCage::release`]. This is what makes fork fail for a root daemon:
//! RLIMIT_NPROC is never enforced for uid 0 (kernel `copy_process` exempts
//! `INIT_USER` whatever its capabilities; dropping CAP_SYS_ADMIN and
//! CAP_SYS_RESOURCE with `setpriv` is not enough, checked on 6.x), and a
//! non-zero real uid makes `/bin/sh` (dash) drop the effective uid of every
//! exec script. On drop the processes go back to the root cgroup and the
//! directory is removed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::env::timeout_s;
use crate::proc::{tail, wait_for, Proc};
use crate::tools::NbdFuse;

/// A hangable disk: nbdkit (file plugin) behind an nbdfuse mount.
pub struct FuseDisk {
    fuse: Option<NbdFuse>,
    nbdkit: Proc,
    /// The FUSE connection number (minor device of the mount).
    conn: u32,
    hung: bool,
    nbdkit_log: PathBuf,
}

impl FuseDisk {
    /// Serves `file` (which must exist) through nbdkit on `dir/disk.sock` and
    /// mounts it on `dir/disk`; the component is [`FuseDisk::path`].
    pub fn new(file: &Path, dir: &Path) -> FuseDisk {
        FuseDisk::with_filters(file, dir, &[])
    }

    /// As [`FuseDisk::new`], with nbdkit `filters` (arguments such as
    /// `--filter=delay`, `delay-read=5ms`) in front of the file plugin.
    pub fn with_filters(file: &Path, dir: &Path, filters: &[&str]) -> FuseDisk {
        let sock = dir.join("disk.sock");
        let _ = std::fs::remove_file(&sock);
        let nbdkit_log = dir.join("nbdkit.log");
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-U"]).arg(&sock);
        // Filter options (key=value) go after the plugin, `--filter`s before.
        let (flags, params): (Vec<&str>, Vec<&str>) =
            filters.iter().partition(|f| f.starts_with("--"));
        cmd.args(flags)
            .arg("file")
            .arg(format!("file={}", file.display()))
            .args(params);
        let mut nbdkit = Proc::spawn(&mut cmd, "nbdkit", Some(&nbdkit_log))
            .unwrap_or_else(|e| panic!("cannot start nbdkit: {e}"));
        let up = wait_for(timeout_s(20), || {
            if !nbdkit.is_running() {
                return Some(false);
            }
            if !sock.exists() {
                std::thread::sleep(Duration::from_millis(50));
            }
            sock.exists().then_some(true)
        });
        assert_eq!(
            up,
            Some(true),
            "nbdkit did not come up:\n{}",
            tail(&nbdkit_log, 40)
        );
        let uri = format!("nbd+unix:///?socket={}", sock.display());
        let fuse = NbdFuse::mount(&dir.join("disk"), &uri, &dir.join("nbdfuse.log"));
        let dev = std::fs::metadata(dir.join("disk"))
            .expect("stat the nbdfuse mount")
            .dev();
        FuseDisk {
            fuse: Some(fuse),
            nbdkit,
            conn: libc::minor(dev),
            hung: false,
            nbdkit_log,
        }
    }

    /// The file to use as the component.
    pub fn path(&self) -> PathBuf {
        self.fuse.as_ref().expect("mounted").file()
    }

    /// nbdkit's PID (the process a hang stops).
    pub fn nbdkit_pid(&self) -> u32 {
        self.nbdkit.pid()
    }

    /// From now on every request to the disk waits (nbdkit SIGSTOPped).
    pub fn hang(&mut self) {
        self.nbdkit.signal(libc::SIGSTOP);
        self.hung = true;
    }

    /// The disk answers again (SIGCONT).
    pub fn heal(&mut self) {
        self.nbdkit.signal(libc::SIGCONT);
        self.hung = false;
    }

    pub fn is_hung(&self) -> bool {
        self.hung
    }

    /// Fails every pending and future request of the mount (ENOTCONN):
    /// frees a process stuck in it even if nbdkit never answers.
    pub fn abort(&mut self) {
        let abort = PathBuf::from(format!("/sys/fs/fuse/connections/{}/abort", self.conn));
        if abort.exists() {
            let _ = std::fs::write(&abort, b"1");
        }
        // nbdfuse's death closes /dev/fuse, which aborts the connection too.
        if let Some(f) = self.fuse.as_mut() {
            f.kill9();
        }
    }

    /// Heal, unmount, stop nbdkit; idempotent.
    pub fn release(&mut self) {
        self.heal();
        if let Some(mut f) = self.fuse.take() {
            f.unmount();
        }
        if self.nbdkit.is_running() {
            self.nbdkit.stop(Duration::from_secs(5));
        }
    }

    /// nbdkit's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.nbdkit_log, lines)
    }
}

impl Drop for FuseDisk {
    fn drop(&mut self) {
        self.release();
    }
}

/// A `pids` cgroup holding processes whose forks can be made to fail.
pub struct PidsCage {
    dir: PathBuf,
    root: PathBuf,
}

/// The root of a writable `pids` cgroup hierarchy: v1 `/sys/fs/cgroup/pids`,
/// else v2 `/sys/fs/cgroup` with `pids` enabled for its children.
fn pids_root() -> Result<PathBuf, String> {
    let v1 = PathBuf::from("/sys/fs/cgroup/pids");
    if v1.join("cgroup.procs").exists() {
        return Ok(v1);
    }
    let v2 = PathBuf::from("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(v2.join("cgroup.controllers"))
        .map_err(|e| format!("no pids cgroup (v1 or v2): {e}"))?;
    if !controllers.split_whitespace().any(|c| c == "pids") {
        return Err(format!("cgroup v2 without pids: {controllers:?}"));
    }
    let enabled = std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "pids") {
        std::fs::write(v2.join("cgroup.subtree_control"), b"+pids")
            .map_err(|e| format!("enabling pids in /sys/fs/cgroup/cgroup.subtree_control: {e}"))?;
    }
    Ok(v2)
}

impl PidsCage {
    /// A new cgroup `hast-test-<pid>-<tag>` under the pids root.
    pub fn new(tag: &str) -> Result<PidsCage, String> {
        let root = pids_root()?;
        let dir = root.join(format!("hast-test-{}-{tag}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("mkdir {}: {e}", dir.display())),
        }
        Ok(PidsCage { dir, root })
    }

    fn write(&self, file: &str, what: &str) -> Result<(), String> {
        std::fs::write(self.dir.join(file), what.as_bytes())
            .map_err(|e| format!("echo {what} > {}/{file}: {e}", self.dir.display()))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Moves process `pid` (all its threads) into the cage.
    pub fn enter(&self, pid: u32) -> Result<(), String> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Tasks (processes and threads) in the cage now.
    pub fn current(&self) -> u64 {
        self.read("pids.current").trim().parse().unwrap_or(0)
    }

    /// How many forks/clones the limit refused so far (`pids.events` max).
    pub fn refused(&self) -> u64 {
        self.read("pids.events")
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// No new task from now on: `pids.max` = what the cage holds.
    pub fn exhaust(&self) -> Result<u64, String> {
        let n = self.current().max(1);
        self.write("pids.max", &n.to_string())?;
        Ok(n)
    }

    /// Shows that a fork in the cage fails now: a shell moved into it
    /// (moving a process in is never limited) runs an external command and
    /// must fail to fork. Ok(how many refusals the probe itself caused).
    pub fn probe(&self) -> Result<u64, String> {
        let go = self.dir_tag_file();
        let _ = std::fs::remove_file(&go);
        let before = self.refused();
        let mut cmd = Command::new("/bin/sh");
        // Builtins only until GO exists (the probe cannot fork in the cage);
        // then /bin/true, not the last command, so the shell must fork it.
        cmd.arg("-c")
            .arg("while [ ! -e \"$0\" ]; do :; done; /bin/true; echo forked")
            .arg(&go)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().map_err(|e| format!("probe: {e}"))?;
        let entered = self.enter(child.id());
        std::fs::write(&go, b"").map_err(|e| format!("probe: {e}"))?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("probe: {e}"))?;
        let _ = std::fs::remove_file(&go);
        entered?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() || text.contains("forked") {
            return Err(format!(
                "a fork in the full pids cgroup {} succeeded ({}): {text}",
                self.dir.display(),
                out.status
            ));
        }
        Ok(self.refused().saturating_sub(before))
    }

    fn dir_tag_file(&self) -> PathBuf {
        std::env::temp_dir().join(format!(
            "{}.probe-go",
            self.dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("cage")
        ))
    }

    /// No limit again.
    pub fn release(&self) {
        let _ = self.write("pids.max", "max");
    }
}

impl Drop for PidsCage {
    fn drop(&mut self) {
        self.release();
        let procs = self.read("cgroup.procs");
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid.as_bytes());
        }
        let gone = wait_for(timeout_s(10), || {
            let ok = std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists();
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
            ok.then_some(())
        });
        if gone.is_none() {
            eprintln!("cannot remove cgroup {}", self.dir.display());
        }
    }
}
