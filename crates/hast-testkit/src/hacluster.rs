//! A whole HA cluster in network namespaces: two data nodes `a` and `b` (each
//! running hastd and hastmon), a witness `w` (hastmon only) and a client host
//! `c`, on the bridge of a [`Net`]. The failover tests drive it: faults with the
//! `Net` (partitions) or on the processes (kill -9, SIGSTOP/SIGCONT), a client
//! that follows the primary (`follow_writer.py`), and the checker
//! (`cluster_check.py`) over the client's history and hastd's own logs.
//!
//! Every host has its own directory, configs and sockets under the test's
//! temporary directory; the control sockets are Unix paths, reachable from the
//! test's own namespace. The resource is `r0` in both hast.conf and
//! hastmon.conf, with `fence_peer` calling `hastmonctl outdate` and hastmon's
//! `exec` being the shipped `contrib/hastmon/hastmon-hastd`, all with default
//! timing. hastmon picks no role by itself (HASTMON(8)): the harness sets the
//! roles at start and after restarting a host's daemons.
//!
//! [`HaOptions`] change that: `fuse_disks` puts each data node's component on
//! an nbdkit + nbdfuse mount in the node's directory ([`crate::faults::FuseDisk`])
//! so that its disk can hang ([`HaCluster::hang_disk`]); `hastd_only` starts
//! hastd alone with the roles set by hand (`hastctl role`, `a` primary), and
//! hastmon comes later, host by host ([`HaCluster::start_hastmon`]), as when a
//! running pair is put under hastmon. `discovery` adds a discovery listener
//! to each data node for the connector on `c` ([`crate::hastcd`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::cluster::{Net, NsProc};
use crate::env::{py_script, repo_root, timeout_s, PYTHON};
use crate::faults::{FuseDisk, PidsCage};
use crate::pair::{compare_areas, ResStatus};
use crate::proc::{run, tail, try_run, wait_for};
use crate::tmp::TempDir;
use crate::tools::output_text;

/// The resource of the cluster.
pub const RES: &str = "r0";
/// The data nodes.
pub const DATA: [&str; 2] = ["a", "b"];
/// The witness.
pub const WITNESS: &str = "w";
/// The client host.
pub const CLIENT: &str = "c";
const NBD_PORT: u16 = 10809;
const REPL_PORT: u16 = 8458;
const MON_PORT: u16 = 8457;
/// Where the data nodes answer discovery (`HaOptions::discovery`).
pub const DISCOVERY_PORT: u16 = 8459;
const KEY: &str = "hast-test-cluster-shared-key-0123456789";
const POLL: Duration = Duration::from_millis(100);

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct HaBins {
    pub hastd: PathBuf,
    pub hastctl: PathBuf,
    pub hastmon: PathBuf,
    pub hastmonctl: PathBuf,
}

/// How [`HaCluster::start_with`] builds the cluster.
#[derive(Debug, Clone, Copy, Default)]
pub struct HaOptions {
    /// Each data node's component is a file behind nbdkit + nbdfuse, mounted
    /// in the node's directory, so its disk can hang on demand.
    pub fuse_disks: bool,
    /// hastd only on `a` (primary, set by hand) and `b` (secondary); no
    /// hastmon anywhere until [`HaCluster::start_hastmon`].
    pub hastd_only: bool,
    /// Each data node's hast.conf has `discovery_listen tcp://ADDR:8459`
    /// (global section) for the connector hastcd.
    pub discovery: bool,
}

pub struct HaCluster {
    pub net: Net,
    dir: TempDir,
    bins: HaBins,
    hastd: BTreeMap<String, NsProc>,
    hastmon: BTreeMap<String, NsProc>,
    area: BTreeMap<&'static str, (u64, u64)>,
    /// The FUSE disks (`fuse_disks`), by data node.
    disks: BTreeMap<&'static str, FuseDisk>,
    /// pids cgroups of hastmons whose forks fail, by host, with the
    /// refusals their probe caused.
    cages: BTreeMap<String, (PidsCage, u64)>,
    opts: HaOptions,
}

/// The other data node.
pub fn other(node: &str) -> &'static str {
    if node == "a" {
        "b"
    } else {
        "a"
    }
}

impl HaCluster {
    /// Builds the cluster with `a` primary, `b` secondary in sync, `w` the
    /// watchdog. `None` (after a loud message) where namespaces cannot be made
    /// outside CI.
    pub fn start(bins: HaBins, size: u64) -> Option<HaCluster> {
        HaCluster::start_with(bins, size, HaOptions::default())
    }

    /// [`HaCluster::start`] with options.
    pub fn start_with(bins: HaBins, size: u64, opts: HaOptions) -> Option<HaCluster> {
        if opts.fuse_disks
            && !(crate::env::require_fuse()
                && crate::env::require_tools(&["nbdkit", "nbdfuse", "fusermount3"]))
        {
            return None;
        }
        let net = Net::new(&["a", "b", "w", "c"])?;
        let dir = TempDir::new("hacluster");
        let mut c = HaCluster {
            net,
            dir,
            bins,
            hastd: BTreeMap::new(),
            hastmon: BTreeMap::new(),
            area: BTreeMap::new(),
            disks: BTreeMap::new(),
            cages: BTreeMap::new(),
            opts,
        };
        for n in ["a", "b", "w"] {
            std::fs::create_dir_all(c.host_dir(n)).expect("host dir");
            std::fs::write(c.mon_conf(n), c.hastmon_config()).expect("hastmon.conf");
        }
        // One replication key, copied to both data hosts (mode 0600).
        let key = c.host_dir(DATA[0]).join("repl.key");
        crate::pair::write_secret(&key);
        for n in &DATA[1..] {
            std::fs::copy(&key, c.host_dir(n).join("repl.key")).expect("copy key file");
        }
        for n in DATA {
            let img = c.host_dir(n).join("r0.img");
            let f = std::fs::File::create(&img).expect("image");
            f.set_len(size).expect("sparse image");
            if opts.fuse_disks {
                let disk = FuseDisk::new(&img, &c.host_dir(n));
                c.disks.insert(n, disk);
            }
            std::fs::write(c.hast_conf(n), c.hast_config(n)).expect("hast.conf");
            c.hastctl_ok(n, &["create", RES]);
            let dump = crate::node::parse_dump(&c.hastctl_ok(n, &["dump", RES]));
            let num = |k: &str| -> u64 {
                dump.get(k)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {k} in dump: {dump:?}"))
            };
            c.area.insert(n, (num("localoff"), num("datasize")));
        }
        if opts.hastd_only {
            for n in DATA {
                c.start_hastd(n);
            }
            c.hastctl_ok("a", &["role", "primary", RES]);
            c.hastctl_ok("b", &["role", "secondary", RES]);
            c.wait_in_sync(timeout_s(60));
            return Some(c);
        }
        for n in ["a", "b", "w"] {
            c.start_daemons(n);
        }
        c.hastmonctl_ok("w", &["role", "watchdog", RES]);
        // The primary first: a secondary with no primary anywhere would take
        // over by itself once the watchdog complains. The watchdog honours
        // one lease after its start before it grants anything.
        let ok = wait_for(timeout_s(30), || {
            let out = c.hastmonctl("a", &["role", "primary", RES]);
            (out.status.success() && c.wait_role("a", "primary", Duration::from_secs(3)))
                .then_some(())
        });
        assert!(ok.is_some(), "a never became primary\n{}", c.describe());
        c.hastmonctl_ok("b", &["role", "secondary", RES]);
        c.wait_in_sync(timeout_s(60));
        Some(c)
    }

    pub fn host_dir(&self, n: &str) -> PathBuf {
        self.dir.join(n)
    }
    fn hast_conf(&self, n: &str) -> PathBuf {
        self.host_dir(n).join("hast.conf")
    }
    fn mon_conf(&self, n: &str) -> PathBuf {
        self.host_dir(n).join("hastmon.conf")
    }
    /// The test's directory (histories, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The component file of data node `n` (with `fuse_disks`, the file behind
    /// the mount: readable while the disk hangs).
    pub fn image(&self, n: &str) -> PathBuf {
        self.host_dir(n).join("r0.img")
    }
    /// hastd's log of data node `n`.
    pub fn hastd_log(&self, n: &str) -> PathBuf {
        self.host_dir(n).join("hastd.log")
    }
    pub fn hastmon_log(&self, n: &str) -> PathBuf {
        self.host_dir(n).join("hastmon.log")
    }
    /// `nbd://ADDR:10809/r0` of data node `n`.
    pub fn uri(&self, n: &str) -> String {
        format!("nbd://{}:{NBD_PORT}/{RES}", self.net.addr(n))
    }

    fn hast_config(&self, node: &str) -> String {
        let mut s = String::from("# written by hast-testkit (hacluster)\n");
        s.push_str(&format!(
            "secret_file {}\n",
            self.host_dir(node).join("repl.key").display()
        ));
        if self.opts.discovery {
            s.push_str(&format!(
                "discovery_listen tcp://{}:{DISCOVERY_PORT}\n",
                self.net.addr(node)
            ));
        }
        for n in DATA {
            let d = self.host_dir(n);
            s.push_str(&format!(
                "on {n} {{\n    control uds://{ctl}\n    pidfile {pid}\n    nbd_listen tcp://{ip}:{NBD_PORT}\n    \
                 nbd_socket_dir {d}/nbd\n    state_dir {d}/state\n    listen tcp://{ip}:{REPL_PORT}\n}}\n",
                ctl = d.join("hastd.sock").display(),
                pid = d.join("hastd.pid").display(),
                ip = self.net.addr(n),
                d = d.display(),
            ));
        }
        s.push_str(&format!("resource {RES} {{\n    timeout 3\n"));
        s.push_str(&format!(
            "    fence_peer \"{} -c {} outdate\"\n",
            self.bins.hastmonctl.display(),
            self.mon_conf(node).display()
        ));
        for n in DATA {
            let local = self
                .disks
                .get(n)
                .map(FuseDisk::path)
                .unwrap_or_else(|| self.image(n));
            s.push_str(&format!(
                "    on {n} {{\n        local {img}\n        remote tcp://{peer}:{REPL_PORT}\n    }}\n",
                img = local.display(),
                peer = self.net.addr(other(n)),
            ));
        }
        s.push_str("}\n");
        s
    }

    fn hastmon_config(&self) -> String {
        let mut s =
            format!("# written by hast-testkit (hacluster)\nkey {{\n    secret \"{KEY}\"\n}}\n");
        for n in ["a", "b", "w"] {
            let d = self.host_dir(n);
            // Lease and status in-process over hastd's control socket; the
            // witness runs no hastd.
            let hastd = if n == WITNESS {
                "none".to_owned()
            } else {
                format!("unix://{}", d.join("hastd.sock").display())
            };
            s.push_str(&format!(
                "on {n} {{\n    control {ctl}\n    listen tcp://{ip}:{MON_PORT}\n    pidfile {pid}\n    state_dir {d}/monstate\n    hastd_control {hastd}\n}}\n",
                ctl = d.join("hastmon.sock").display(),
                ip = self.net.addr(n),
                pid = d.join("hastmon.pid").display(),
                d = d.display(),
            ));
        }
        s.push_str(&format!(
            "resource {RES} {{\n    exec {}\n",
            repo_root().join("contrib/hastmon/hastmon-hastd").display()
        ));
        for n in ["a", "b", "w"] {
            let remotes: Vec<String> = ["a", "b", "w"]
                .iter()
                .filter(|m| **m != n)
                .map(|m| format!("tcp://{}:{MON_PORT}", self.net.addr(m)))
                .collect();
            s.push_str(&format!(
                "    on {n} {{\n        remote {}\n    }}\n",
                remotes.join(" ")
            ));
        }
        s.push_str("}\n");
        s
    }

    /// Starts hastd (data nodes) and hastmon on `n`.
    pub fn start_daemons(&mut self, n: &str) {
        assert!(
            ["a", "b", WITNESS].contains(&n),
            "no host {n} in the cluster"
        );
        if DATA.contains(&n) {
            self.start_hastd(n);
        }
        self.start_hastmon(n);
    }

    /// Starts hastd on data node `n`.
    pub fn start_hastd(&mut self, n: &str) {
        assert!(DATA.contains(&n), "no data node {n} in the cluster");
        // A killed daemon leaves its socket behind; the wait below must see
        // the new one.
        let _ = std::fs::remove_file(self.host_dir(n).join("hastd.sock"));
        {
            let mut cmd = self.net.command(n, &self.bins.hastd);
            cmd.args(["-F", "-c"])
                .arg(self.hast_conf(n))
                .args(["--node", n])
                .env("HASTMON_NODE", n);
            let p = NsProc::spawn(&mut cmd, &format!("hastd@{n}"), &self.hastd_log(n))
                .expect("spawn hastd");
            self.hastd.insert(n.to_owned(), p);
            let sock = self.host_dir(n).join("hastd.sock");
            let up = wait_for(timeout_s(20), || sock.exists().then_some(()));
            assert!(
                up.is_some(),
                "hastd on {n} did not start\n{}",
                tail(&self.hastd_log(n), 30)
            );
        }
    }

    /// Starts hastmon on `n` (no role yet: `hastmonctl role ...`).
    pub fn start_hastmon(&mut self, n: &str) {
        assert!(
            ["a", "b", WITNESS].contains(&n),
            "no host {n} in the cluster"
        );
        let _ = std::fs::remove_file(self.host_dir(n).join("hastmon.sock"));
        let mut cmd = self.net.command(n, &self.bins.hastmon);
        cmd.args(["-F", "-c"])
            .arg(self.mon_conf(n))
            .args(["--node", n])
            .env("HASTCTL", &self.bins.hastctl)
            .env("HAST_CONF", self.hast_conf(n))
            .env("HAST_NODE", n);
        let p = NsProc::spawn(&mut cmd, &format!("hastmon@{n}"), &self.hastmon_log(n))
            .expect("spawn hastmon");
        self.hastmon.insert(n.to_owned(), p);
        let sock = self.host_dir(n).join("hastmon.sock");
        let up = wait_for(timeout_s(20), || sock.exists().then_some(()));
        assert!(
            up.is_some(),
            "hastmon on {n} did not start\n{}",
            tail(&self.hastmon_log(n), 30)
        );
    }

    /// Restarts the daemons of `n` after a kill and gives hastmon its role back
    /// (secondary, or watchdog on `w`).
    pub fn restart(&mut self, n: &str) {
        for p in [self.hastd.get_mut(n), self.hastmon.get_mut(n)]
            .into_iter()
            .flatten()
        {
            if p.is_running() {
                p.kill9();
            }
        }
        self.start_daemons(n);
        let role = if n == WITNESS {
            "watchdog"
        } else {
            "secondary"
        };
        self.hastmonctl_ok(n, &["role", role, RES]);
    }

    /// kill -9 of every daemon of `n` (a crashed host).
    pub fn kill9(&mut self, n: &str) {
        for p in [self.hastmon.get_mut(n), self.hastd.get_mut(n)]
            .into_iter()
            .flatten()
        {
            p.kill9();
        }
    }

    /// kill -9 of hastd only on `n`.
    pub fn kill9_hastd(&mut self, n: &str) {
        if let Some(p) = self.hastd.get_mut(n) {
            p.kill9();
        }
    }

    /// SIGSTOP of every daemon of `n` (a hung host).
    pub fn pause(&mut self, n: &str) {
        for p in [self.hastmon.get_mut(n), self.hastd.get_mut(n)]
            .into_iter()
            .flatten()
        {
            p.stop();
        }
    }

    pub fn resume(&mut self, n: &str) {
        for p in [self.hastd.get_mut(n), self.hastmon.get_mut(n)]
            .into_iter()
            .flatten()
        {
            p.cont();
        }
    }

    /// SIGSTOP of hastd alone on `n` (its hastmon keeps running).
    pub fn pause_hastd(&mut self, n: &str) {
        if let Some(p) = self.hastd.get_mut(n) {
            p.stop();
        }
    }

    pub fn resume_hastd(&mut self, n: &str) {
        if let Some(p) = self.hastd.get_mut(n) {
            p.cont();
        }
    }

    /// hastd's PID on `n`, hastmon's PID on `n`.
    pub fn pids(&self, n: &str) -> (Option<u32>, Option<u32>) {
        (
            self.hastd.get(n).map(NsProc::pid),
            self.hastmon.get(n).map(NsProc::pid),
        )
    }

    /// Every request to the disk of data node `n` waits from now on (its
    /// nbdkit SIGSTOPped). Needs `fuse_disks`.
    pub fn hang_disk(&mut self, n: &str) {
        self.disks
            .get_mut(n)
            .expect("hang_disk needs HaOptions::fuse_disks")
            .hang();
    }

    /// The disk of `n` answers again.
    pub fn heal_disk(&mut self, n: &str) {
        if let Some(d) = self.disks.get_mut(n) {
            d.heal();
        }
    }

    /// Whether this cluster's disks can hang (`fuse_disks`).
    pub fn has_fuse_disks(&self) -> bool {
        !self.disks.is_empty()
    }

    /// From now on hastmon on `n` can neither fork nor start a thread (its
    /// pids cgroup is full, checked with a probe that must fail to fork in
    /// it); returns the cgroup's limit. Err where no pids cgroup can be made.
    pub fn fork_fail_hastmon(&mut self, n: &str) -> Result<u64, String> {
        let pid = self.hastmon.get(n).map(NsProc::pid).ok_or("no hastmon")?;
        let cage = PidsCage::new(&format!("hastmon-{n}"))?;
        cage.enter(pid)?;
        let max = cage.exhaust()?;
        let probe = cage.probe()?;
        self.cages.insert(n.to_owned(), (cage, probe));
        Ok(max)
    }

    /// hastmon on `n` may fork again; returns how many of its forks/clones
    /// were refused meanwhile (the probe's not counted).
    pub fn fork_heal_hastmon(&mut self, n: &str) -> u64 {
        match self.cages.remove(n) {
            Some((cage, probe)) => {
                let refused = cage.refused().saturating_sub(probe);
                cage.release();
                refused
            }
            None => 0,
        }
    }

    /// Whether the daemons of `n` run (are not killed).
    pub fn running(&mut self, n: &str) -> bool {
        self.hastmon.get_mut(n).is_some_and(|p| p.is_running())
    }

    fn ctl_command(&self, program: &Path, conf: PathBuf, n: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("-c").arg(conf).args(["--node", n]).args(args);
        cmd
    }

    pub fn hastctl(&self, n: &str, args: &[&str]) -> Output {
        let mut cmd = self.ctl_command(&self.bins.hastctl, self.hast_conf(n), n, args);
        run(&mut cmd, timeout_s(60))
    }

    pub fn hastctl_ok(&self, n: &str, args: &[&str]) -> String {
        let out = self.hastctl(n, args);
        assert!(
            out.status.success(),
            "hastctl {args:?} on {n}: {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn hastmonctl(&self, n: &str, args: &[&str]) -> Output {
        let mut cmd = self.ctl_command(&self.bins.hastmonctl, self.mon_conf(n), n, args);
        run(&mut cmd, timeout_s(60))
    }

    pub fn hastmonctl_ok(&self, n: &str, args: &[&str]) -> String {
        let out = self.hastmonctl(n, args);
        assert!(
            out.status.success(),
            "hastmonctl {args:?} on {n}: {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// hastd's status of `r0` on data node `n` (`None` if hastd does not answer).
    pub fn status(&self, n: &str) -> Option<ResStatus> {
        // Bounded: a paused (SIGSTOPped) hastd never answers.
        let out = self.quick(
            &self.bins.hastctl,
            self.hast_conf(n),
            n,
            &["list", "--json", RES],
        )?;
        if !out.status.success() {
            return None;
        }
        // `{"resources": [ ... ]}`, as hastctl prints it.
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let r = v.pointer("/resources/0")?.clone();
        Some(ResStatus::from_json(r))
    }

    /// A control command bounded by 3 s, for queries of daemons that may be
    /// paused: no answer in time is a failed query, not a failed test.
    fn quick(&self, program: &Path, conf: PathBuf, n: &str, args: &[&str]) -> Option<Output> {
        try_run(
            &mut self.ctl_command(program, conf, n, args),
            Duration::from_secs(3),
        )
    }

    /// hastmon's status of `r0` on `n`, as JSON.
    pub fn mon_status(&self, n: &str) -> Option<serde_json::Value> {
        let out = self.quick(
            &self.bins.hastmonctl,
            self.mon_conf(n),
            n,
            &["status", "--json", RES],
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get(0).cloned()
    }

    /// Data nodes whose hastd is primary now.
    pub fn primaries(&self) -> Vec<&'static str> {
        DATA.into_iter()
            .filter(|n| self.status(n).is_some_and(|s| s.role == "primary"))
            .collect()
    }

    /// Waits until hastd on `n` has `role`; false after `bound`.
    pub fn wait_role(&self, n: &str, role: &str, bound: Duration) -> bool {
        wait_for(bound, || {
            let ok = self.status(n).is_some_and(|s| s.role == role);
            if !ok {
                std::thread::sleep(POLL);
            }
            ok.then_some(())
        })
        .is_some()
    }

    /// Waits until the primary reports its peer connected and in sync,
    /// and the watchdog holds no outdated mark (the primary clears it within
    /// a heartbeat of the resync): fully redundant again.
    pub fn wait_in_sync(&self, bound: Duration) -> &'static str {
        let got = wait_for(bound, || {
            let outdated = self.hastmon.contains_key(WITNESS)
                && self
                    .mon_status(WITNESS)
                    .and_then(|v| v.pointer("/witness/outdated").cloned())
                    .is_none_or(|o| o.as_object().is_some_and(|m| !m.is_empty()));
            for n in DATA {
                if let Some(s) = self.status(n) {
                    if s.role == "primary" && s.is_complete() && !outdated {
                        return Some(n);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            None
        });
        got.unwrap_or_else(|| panic!("the cluster did not get back in sync\n{}", self.describe()))
    }

    /// Starts the client on host `c`: versioned writes to whichever node is
    /// primary, history in `history`, until `stop_file` exists.
    /// `seq_base` must exceed every sequence number of earlier writers.
    pub fn start_writer(
        &self,
        history: &Path,
        stop_file: &Path,
        seed: u64,
        seq_base: u64,
    ) -> NsProc {
        let mut cmd = self.net.command(CLIENT, PYTHON);
        cmd.arg(py_script("follow_writer.py"))
            .args(["--uri", &self.uri("a"), "--uri", &self.uri("b")])
            .arg("--history")
            .arg(history)
            .arg("--stop-file")
            .arg(stop_file)
            .args([
                "--ack-is-durable",
                "--duration",
                "600",
                "--reconnect-timeout",
                "60",
            ])
            .args([
                "--seed",
                &seed.to_string(),
                "--seq-base",
                &seq_base.to_string(),
            ]);
        let log = history.with_extension("out");
        NsProc::spawn(&mut cmd, "follow_writer", &log).expect("spawn writer")
    }

    /// Runs the checker from host `c` against the current primary `n`.
    pub fn check(&self, n: &str, histories: &[PathBuf]) -> Output {
        let mut cmd = self.net.command(CLIENT, PYTHON);
        cmd.arg(py_script("cluster_check.py"))
            .args(["--uri", &self.uri(n)]);
        for h in histories {
            cmd.arg("--history").arg(h);
        }
        for d in DATA {
            cmd.arg("--hastd-log")
                .arg(format!("{d}={}", self.hastd_log(d).display()));
            cmd.arg("--node-uri").arg(format!("{d}={}", self.uri(d)));
        }
        run(&mut cmd, timeout_s(300))
    }

    /// Compares the data areas of both components byte for byte.
    pub fn copies_identical(&self) -> Result<(), String> {
        compare_areas(
            &self.image("a"),
            self.area["a"],
            &self.image("b"),
            self.area["b"],
        )
    }

    /// Both hastd's and hastmon's states and log tails, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for n in DATA {
            s.push_str(&format!(
                "--- {n}: hastd {}\n",
                self.status(n)
                    .map(|s| s.brief())
                    .unwrap_or_else(|| "not answering".into())
            ));
        }
        for n in ["a", "b", "w"] {
            s.push_str(&format!(
                "--- {n}: hastmon {}\n",
                self.mon_status(n)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "not answering".into())
            ));
        }
        for n in DATA {
            s.push_str(&format!(
                "--- hastd log of {n}:\n{}\n",
                tail(&self.hastd_log(n), 25)
            ));
        }
        for n in ["a", "b", "w"] {
            s.push_str(&format!(
                "--- hastmon log of {n}:\n{}\n",
                tail(&self.hastmon_log(n), 25)
            ));
        }
        s
    }

    /// Waits until a node other than `old` is primary in hastd and exports
    /// the resource; returns it and how long it took from `since`.
    pub fn wait_takeover(
        &self,
        old: &str,
        since: Instant,
        bound: Duration,
    ) -> Option<(&'static str, Duration)> {
        let new = other(old);
        wait_for(bound, || {
            let up = self.status(new).is_some_and(|s| {
                s.role == "primary"
                    && s.json
                        .get("nbd")
                        .is_some_and(|e| e.as_array().is_some_and(|a| !a.is_empty()))
            });
            if !up {
                std::thread::sleep(Duration::from_millis(50));
            }
            up.then(|| (new, since.elapsed()))
        })
    }
}

impl Drop for HaCluster {
    /// Frees what could keep a daemon from dying: forks are allowed again, a
    /// hung disk answers again; then the daemons go (kill -9 by PID, a FUSE
    /// connection aborted if one is still stuck), then the disks are
    /// unmounted. The namespaces and the directory go with the fields.
    fn drop(&mut self) {
        self.cages.clear();
        for d in self.disks.values_mut() {
            d.heal();
        }
        if self.disks.is_empty() {
            return;
        }
        for p in self.hastmon.values_mut().chain(self.hastd.values_mut()) {
            if p.is_running() {
                p.signal(libc::SIGKILL);
            }
        }
        for p in self.hastd.values_mut() {
            if p.wait_timeout(Duration::from_secs(5)).is_none() {
                eprintln!(
                    "{} stuck in its disk: aborting the FUSE connections",
                    p.name()
                );
                for d in self.disks.values_mut() {
                    d.abort();
                }
                let _ = p.wait_timeout(Duration::from_secs(10));
            }
        }
        for d in self.disks.values_mut() {
            d.release();
        }
    }
}
