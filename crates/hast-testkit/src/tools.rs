//! Outside tools the tests drive: the python NBD scripts, a `qemu-nbd` reference
//! server, guards for FUSE and loop mounts that unmount even when a test fails,
//! and the ext4 steps (mkfs, fill, fsck) the filesystem tests share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::env::{py_script, require_fuse, require_root, require_tools, timeout_s, PYTHON};
use crate::net::{free_port, nbd_info, NbdAddr};
use crate::proc::{describe, run, tail, wait_for, Proc};

/// Run `tests/py/<script>` with `/usr/bin/python3` under a time bound.
pub fn python(script: &str, args: &[&str], bound: Duration) -> Output {
    let mut cmd = python_command(script, args);
    run(&mut cmd, bound)
}

/// The command [`python`] runs (for spawning in the background).
pub fn python_command(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-B")
        .arg(py_script(script))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

/// Panic with the command's output unless it exited 0; returns stdout.
pub fn expect_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
}

/// stdout and stderr as text, for messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `qemu-nbd` serving a raw file on a loopback port, the reference server tests
/// compare answers with. Stopped by PID on drop.
pub struct QemuNbd {
    proc: Proc,
    port: u16,
    export: String,
}

impl QemuNbd {
    /// Serve `file` as `export` with the writeback cache (as the bench does).
    pub fn start(file: &Path, export: &str, log: &Path) -> QemuNbd {
        let port = free_port();
        let mut cmd = Command::new("qemu-nbd");
        cmd.args([
            "-f",
            "raw",
            "--cache=writeback",
            "--aio=threads",
            "-t",
            "-e",
            "16",
        ])
        .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-x", export])
        .arg(file);
        let what = describe(&cmd);
        let proc = Proc::spawn(&mut cmd, "qemu-nbd", Some(log))
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        let mut q = QemuNbd {
            proc,
            port,
            export: export.to_string(),
        };
        let addr = NbdAddr::local(port);
        let up = wait_for(timeout_s(20), || {
            if !q.proc.is_running() {
                return Some(false);
            }
            nbd_info(&addr, export, Duration::from_secs(5))
                .ok()
                .map(|_| true)
        });
        if up != Some(true) {
            panic!("`{what}` did not come up:\n{}", tail(log, 50));
        }
        q
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nbd://127.0.0.1:PORT/EXPORT`.
    pub fn uri(&self) -> String {
        NbdAddr::local(self.port).uri(&self.export)
    }
}

/// A FUSE mount made by `nbdfuse`; unmounted (`fusermount3 -u`) and its process
/// reaped on drop.
pub struct NbdFuse {
    proc: Option<Proc>,
    mountpoint: PathBuf,
}

impl NbdFuse {
    /// `nbdfuse MOUNTPOINT URI`, waiting (bounded) until `MOUNTPOINT/nbd` exists.
    pub fn mount(mountpoint: &Path, uri: &str, log: &Path) -> NbdFuse {
        NbdFuse::mount_in(mountpoint, uri, log, None)
    }

    /// [`NbdFuse::mount`], with nbdfuse in the network namespace `netns` (a
    /// `/run/netns/NAME` path) when given: `nsenter --net=` changes the
    /// network namespace only, so the mount is made in the test's own mount
    /// namespace (`ip netns exec` would make it in a private one), and
    /// nsenter execs nbdfuse, so the PID is nbdfuse's.
    pub fn mount_in(mountpoint: &Path, uri: &str, log: &Path, netns: Option<&Path>) -> NbdFuse {
        std::fs::create_dir_all(mountpoint).expect("mkdir mountpoint");
        let pidfile = mountpoint.with_extension("nbdfuse.pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg("nbdfuse");
                c
            }
            None => Command::new("nbdfuse"),
        };
        cmd.arg("-P").arg(&pidfile).arg(mountpoint).arg(uri);
        let what = describe(&cmd);
        let proc = Proc::spawn(&mut cmd, "nbdfuse", Some(log))
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        let mut m = NbdFuse {
            proc: Some(proc),
            mountpoint: mountpoint.to_path_buf(),
        };
        let file = m.file();
        let ready = wait_for(timeout_s(20), || {
            if m.proc.as_mut().map(|p| !p.is_running()).unwrap_or(true) {
                return Some(false);
            }
            (pidfile.exists() && file.exists()).then_some(true)
        });
        if ready != Some(true) {
            panic!("`{what}` did not mount:\n{}", tail(log, 50));
        }
        m
    }

    /// The block-device-like file, `MOUNTPOINT/nbd`.
    pub fn file(&self) -> PathBuf {
        self.mountpoint.join("nbd")
    }

    /// kill -9 of nbdfuse (by PID), leaving the mount to [`NbdFuse::unmount`]:
    /// closing /dev/fuse aborts the connection, so every request pending in
    /// it fails at once.
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            if p.is_running() {
                p.kill9();
            }
        }
    }

    /// Unmount and wait for nbdfuse to exit; returns its exit status.
    pub fn unmount(&mut self) -> Option<std::process::ExitStatus> {
        let mut proc = self.proc.take()?;
        // Still busy while something holds MOUNTPOINT/nbd open (a loop device
        // not yet released, see LoopMount::unmount): retried for a while, and
        // fusermount's complaint is kept for the message if nbdfuse then hangs.
        let mut last = None;
        let unmounted = wait_for(timeout_s(10), || {
            let out = run(
                Command::new("fusermount3").arg("-u").arg(&self.mountpoint),
                timeout_s(30),
            );
            if out.status.success() {
                return Some(true);
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            let busy = err.contains("busy");
            last = Some(err);
            (!busy).then_some(false)
        });
        if unmounted != Some(true) {
            eprintln!(
                "fusermount3 -u {}: {}",
                self.mountpoint.display(),
                last.unwrap_or_default().trim_end()
            );
            // Busy for too long or its daemon gone: detach it now, it goes
            // once unused.
            let _ = run(
                Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(&self.mountpoint),
                timeout_s(30),
            );
        }
        match proc.wait_timeout(timeout_s(30)) {
            Some(st) => Some(st),
            None => {
                // Lazy unmount so a killed nbdfuse leaves no dead mount behind.
                let _ = run(
                    Command::new("fusermount3")
                        .arg("-u")
                        .arg("-z")
                        .arg(&self.mountpoint),
                    timeout_s(30),
                );
                Some(proc.kill9())
            }
        }
    }
}

impl Drop for NbdFuse {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A filesystem mounted with `mount -o loop`; unmounted on drop.
pub struct LoopMount {
    image: PathBuf,
    target: PathBuf,
    mounted: bool,
}

impl LoopMount {
    /// `mount -o loop IMAGE TARGET` (panics with mount's message on failure).
    pub fn mount(image: &Path, target: &Path) -> LoopMount {
        LoopMount::mount_with(image, target, "loop")
    }

    /// `mount -o OPTIONS IMAGE TARGET`; OPTIONS must include `loop`.
    pub fn mount_with(image: &Path, target: &Path, options: &str) -> LoopMount {
        std::fs::create_dir_all(target).expect("mkdir mount target");
        let out = run(
            Command::new(crate::env::which("mount").unwrap_or_else(|| "mount".into()))
                .arg("-o")
                .arg(options)
                .arg(image)
                .arg(target),
            timeout_s(60),
        );
        expect_ok(&out, &format!("mount -o {options} {}", image.display()));
        LoopMount {
            image: image.to_path_buf(),
            target: target.to_path_buf(),
            mounted: true,
        }
    }

    /// `umount TARGET`, then wait until no loop device is backed by IMAGE any
    /// more; panics if either fails (data might not have been written).
    ///
    /// umount(8) returns before the autoclear loop device lets go of IMAGE when
    /// something else still has the device open (seen here: in 3 of 25 runs
    /// of tests/switchover.rs, for 2.6 to 8.3 s), and until then IMAGE stays
    /// open: a FUSE mount under it cannot be unmounted (`fusermount3 -u`:
    /// Device or resource busy).
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        let out = run(Command::new("umount").arg(&self.target), timeout_s(120));
        expect_ok(&out, &format!("umount {}", self.target.display()));
        self.mounted = false;
        if let Err(held) = self.wait_released(timeout_s(30)) {
            panic!(
                "{} still backs a loop device {:?} after umount {}",
                self.image.display(),
                timeout_s(30),
                held.trim_end()
            );
        }
    }

    /// Wait (bounded) until `losetup -j IMAGE` lists no device; Err with the
    /// last listing if one is still there.
    fn wait_released(&self, bound: Duration) -> Result<(), String> {
        let mut held = String::new();
        let released = wait_for(bound, || {
            let out = run(
                Command::new("losetup").arg("-j").arg(&self.image),
                timeout_s(30),
            );
            held = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && held.trim().is_empty()).then_some(())
        });
        released.ok_or(held)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            self.mounted = false;
            let out = run(Command::new("umount").arg(&self.target), timeout_s(120));
            if !out.status.success() {
                // Lazy unmount rather than leave the test machine with a stuck mount.
                let _ = run(
                    Command::new("umount").arg("-l").arg(&self.target),
                    timeout_s(30),
                );
            }
            // So that the FUSE mount under IMAGE, dropped next, can go.
            let _ = self.wait_released(timeout_s(10));
        }
    }
}

/// The tools an ext4-over-nbdfuse test needs besides `extra`; false (the test
/// skips, saying why) unless root, /dev/fuse and all of them are there.
pub fn require_ext4(extra: &[&str]) -> bool {
    let mut tools = vec![
        "nbdfuse",
        "fusermount3",
        "mkfs.ext4",
        "fsck.ext4",
        "mount",
        "umount",
        "losetup",
    ];
    tools.extend_from_slice(extra);
    require_root() && require_fuse() && require_tools(&tools)
}

/// `sha256sum PATH`, the hex digest (an outside tool, so the check does not
/// share code with what wrote the file).
pub fn sha256sum(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path), timeout_s(60));
    expect_ok(&out, "sha256sum")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `mkfs.ext4 -F -q -L LABEL IMAGE`; panics with its output on failure.
pub fn mkfs_ext4(image: &Path, label: &str) {
    let out = run(
        Command::new("mkfs.ext4")
            .args(["-F", "-q", "-L", label])
            .arg(image),
        timeout_s(300),
    );
    expect_ok(&out, "mkfs.ext4");
}

/// `fsck.ext4 -n -f IMAGE` (check only, forced); the caller asserts on the status.
pub fn fsck_ext4(image: &Path) -> Output {
    run(
        Command::new("fsck.ext4").args(["-n", "-f"]).arg(image),
        timeout_s(300),
    )
}

/// Writes `files` (path relative to `root` -> contents) under `root`, making
/// directories as needed; returns each file's [`sha256sum`] as read back.
pub fn write_files(root: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) -> BTreeMap<PathBuf, String> {
    let mut sums = BTreeMap::new();
    for (rel, data) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir in ext4");
        std::fs::write(&p, data).expect("write file in ext4");
        sums.insert(rel.clone(), sha256sum(&p));
    }
    sums
}
