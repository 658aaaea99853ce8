//! A private network of Linux network namespaces for cluster tests: hosts on one
//! bridge, partitions injected with iptables, processes run inside the hosts and
//! always stopped by PID.
//!
//! A [`Net`] creates one "switch" namespace holding a bridge and one namespace per
//! host. Each host gets a veth pair: `eth0` in the host (with `10.X.Y.i/24`), the
//! other end (`v<i>`) enslaved to the bridge in the switch. The interfaces are
//! created directly inside their namespaces, so their names never exist in the
//! machine's own namespace and several `Net`s (threads of one test binary, parallel
//! test binaries) cannot collide; only the namespace names must be unique, and they
//! carry the creating process id and a per-process counter:
//! `hastnet-<pid>-<n>-<host>` and `hastnet-<pid>-<n>-switch`. The subnet is derived
//! from the same pair only so that logs of different runs are told apart: the
//! namespaces form a closed world and nothing routes between two `Net`s.
//!
//! Faults are DROP rules in a chain `HASTFAULT` of each host, hooked first in
//! `INPUT`. A cut of `from -> to` is one rule in `to`'s chain: `-s from -j DROP`.
//! Dropping at the receiver rather than in the sender's `OUTPUT` is deliberate: a
//! DROP in `OUTPUT` makes the sender's `sendto(2)` fail at once with `EPERM`, which
//! no real partition does; at the receiver the packet leaves, crosses the bridge
//! and vanishes. The rules match every packet, not only new connections, so an
//! established TCP connection stalls (and retransmits) as over a dead link. ARP is
//! not filtered, as a partition beyond the first switch would not filter it either.
//! Whichever of `iptables`, `iptables-nft`, `iptables-legacy` can create the chain
//! in a fresh namespace is used ([`Net::iptables`] says which).
//!
//! Dropping a `Net` (also while unwinding from a panic) SIGKILLs any process still
//! inside its namespaces (by PID, from `ip netns pids`: those processes can only
//! have been started there by this test) and deletes the namespaces, which removes
//! the veths and the bridge with them. [`cleanup_stale`] removes what crashed runs
//! of this harness left: namespaces with the prefix whose creating process is gone.
//!
//! Processes: [`Net::command`] runs a program as `ip netns exec <ns> program`.
//! `ip netns exec` switches namespace and then execs the program (it does not fork;
//! `tests/netns_harness.rs` checks it), so the PID of the spawned child is the
//! program's own and can be signalled directly. [`NsProc`] wraps such a child with
//! SIGSTOP/SIGCONT, kill -9 and a log file.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::env::{skip, timeout_s, which};
use crate::proc::{describe, run, tail, wait_for, Proc};

/// Prefix of every namespace this harness creates (and the only ones it removes).
pub const NS_PREFIX: &str = "hastnet-";
/// The iptables chain holding the fault rules of a host.
pub const FAULT_CHAIN: &str = "HASTFAULT";
/// Suffix of the switch namespace (so no host may be called that).
const SWITCH: &str = "switch";
/// Longest host name (namespace names stay short enough to read in `ip netns list`).
const HOST_NAME_MAX: usize = 16;
/// Most hosts on one bridge (addresses .1 to .HOSTS_MAX of a /24).
const HOSTS_MAX: usize = 250;
/// Seconds any single `ip`/`iptables` command may take.
const TOOL_TIMEOUT_S: u64 = 20;
/// Seconds to wait for killed leftover processes to leave a namespace.
const LEFTOVER_EXIT_TIMEOUT_S: u64 = 10;
/// Grace between SIGTERM and SIGKILL when an [`NsProc`] is dropped.
const DROP_GRACE_S: u64 = 10;
/// Lines of a process log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;
/// The iptables front ends tried, in this order.
const IPTABLES_CANDIDATES: [&str; 3] = ["iptables", "iptables-nft", "iptables-legacy"];

static NEXT_NET: AtomicU32 = AtomicU32::new(0);
static STALE_CLEANED: std::sync::Once = std::sync::Once::new();

/// A host name is 1..=16 characters of `[a-z0-9]`, and not `switch`.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= HOST_NAME_MAX
        && name != SWITCH
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The namespace name of `host` (or of the switch, `host == "switch"`) in the
/// `n`-th `Net` of process `pid`.
pub fn ns_name_for(pid: u32, n: u32, host: &str) -> String {
    format!("{NS_PREFIX}{pid}-{n}-{host}")
}

/// `(pid, n, host)` of a namespace name made by [`ns_name_for`]; `None` for any
/// other name, so nothing else is ever touched.
pub fn parse_ns_name(name: &str) -> Option<(u32, u32, &str)> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?;
    let n = parts.next()?;
    let host = parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) || !(host == SWITCH || valid_host_name(host)) {
        return None;
    }
    Some((pid.parse().ok()?, n.parse().ok()?, host))
}

/// The /24 of the `n`-th `Net` of process `pid`: `10.X.Y.0`. Only for telling runs
/// apart in logs; two `Net`s never share a namespace, so equal subnets are harmless.
pub fn subnet_for(pid: u32, n: u32) -> [u8; 3] {
    [10, 64 + (pid % 128) as u8, (n % 256) as u8]
}

/// The names in `ip netns list` output (`name` or `name (id: N)` per line).
pub fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The set of one-way drops `(from, to)` between hosts (by index): the pure state
/// behind the fault methods. Each change reports which rules to add or remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    set: BTreeSet<(usize, usize)>,
}

impl Drops {
    /// Drop `from -> to`; true if that is new (a rule must be added).
    pub fn add(&mut self, from: usize, to: usize) -> bool {
        from != to && self.set.insert((from, to))
    }

    /// Let `from -> to` flow again; true if it was dropped (a rule must go).
    pub fn remove(&mut self, from: usize, to: usize) -> bool {
        self.set.remove(&(from, to))
    }

    /// Whether `from -> to` is dropped.
    pub fn contains(&self, from: usize, to: usize) -> bool {
        self.set.contains(&(from, to))
    }

    /// Forget every drop; returns the receivers whose chains must be flushed.
    pub fn clear(&mut self) -> BTreeSet<usize> {
        let to: BTreeSet<usize> = self.set.iter().map(|&(_, t)| t).collect();
        self.set.clear();
        to
    }

    /// Every drop, in order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.set.iter().copied()
    }
}

/// Whether process `pid` exists (in our PID namespace).
fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

fn tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Run a command under the tool bound; Err(one line) unless it exits 0.
fn run_tool(cmd: &mut Command) -> Result<String, String> {
    let what = describe(cmd);
    let out: Output = run(cmd, timeout_s(TOOL_TIMEOUT_S));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run_tool(Command::new(tool("ip")).args(args))
}

/// The namespaces that exist now.
pub fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .map(|t| parse_netns_list(&t))
        .unwrap_or_default()
}

/// PIDs of the processes inside namespace `ns`.
fn netns_pids(ns: &str) -> Vec<u32> {
    ip(&["netns", "pids", ns])
        .map(|t| {
            t.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL every process inside `ns` (by PID) and wait (bounded) until none is
/// left, then delete the namespace. Errors are printed, not raised: this runs in
/// `Drop` and in cleanup, where a panic would hide the test's own failure.
fn destroy_ns(ns: &str) {
    let pids = netns_pids(ns);
    if !pids.is_empty() {
        eprintln!("netns {ns}: killing leftover processes {pids:?}");
        for pid in &pids {
            if let Ok(p) = libc::pid_t::try_from(*pid) {
                // SAFETY: kill(2) has no memory effects. The PID comes from the
                // namespace this harness created, so it is a process started there.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
        }
        let gone = wait_for(timeout_s(LEFTOVER_EXIT_TIMEOUT_S), || {
            netns_pids(ns).is_empty().then_some(())
        });
        if gone.is_none() {
            eprintln!(
                "netns {ns}: processes still inside after SIGKILL (zombies of a live parent?)"
            );
        }
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("netns {ns}: {e}");
    }
}

/// Remove the namespaces left by crashed runs of this harness: names made by
/// [`ns_name_for`] whose creating process no longer exists. Processes still inside
/// them are SIGKILLed by PID first. Returns the names removed. Namespaces of live
/// processes (other tests running now) and every other namespace are left alone.
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for name in netns_list() {
        let Some((pid, _, _)) = parse_ns_name(&name) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        destroy_ns(&name);
        removed.push(name);
    }
    if !removed.is_empty() {
        eprintln!("removed stale namespaces of dead harness runs: {removed:?}");
    }
    removed
}

struct Host {
    name: String,
    ns: String,
    addr: Ipv4Addr,
}

/// A set of hosts in their own network namespaces on one private bridge.
pub struct Net {
    hosts: Vec<Host>,
    switch_ns: String,
    /// Namespaces created so far, in creation order (removed in reverse on drop).
    created: Vec<String>,
    iptables: PathBuf,
    drops: Mutex<Drops>,
    prefix_len: u8,
}

impl Net {
    /// Create the namespaces, the bridge and a veth per host, addresses `.1`, `.2`,
    /// ... in the order of `hosts`. Returns `None` after printing a loud `SKIPPED:`
    /// line when the machine cannot do it (not root, no `ip netns`, no bridge or veth
    /// support, no working iptables); in CI (`CI` set) that is a panic instead.
    /// Panics on invalid or repeated host names (a bug in the test).
    pub fn new(hosts: &[&str]) -> Option<Net> {
        for (i, h) in hosts.iter().enumerate() {
            assert!(
                valid_host_name(h),
                "host name {h:?}: want 1..={HOST_NAME_MAX} of [a-z0-9], not {SWITCH:?}"
            );
            assert!(!hosts[..i].contains(h), "host name {h:?} given twice");
        }
        assert!(
            !hosts.is_empty() && hosts.len() <= HOSTS_MAX,
            "a Net has 1..={HOSTS_MAX} hosts, not {}",
            hosts.len()
        );
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            skip("network namespaces need root (ip netns, veth, iptables)");
            return None;
        }
        if which("ip").is_none() {
            skip("`ip` (iproute2) not found: cannot create network namespaces");
            return None;
        }
        STALE_CLEANED.call_once(|| {
            cleanup_stale();
        });
        let pid = std::process::id();
        let n = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let [a, b, c] = subnet_for(pid, n);
        let mut net = Net {
            hosts: hosts
                .iter()
                .enumerate()
                .map(|(i, h)| Host {
                    name: h.to_string(),
                    ns: ns_name_for(pid, n, h),
                    addr: Ipv4Addr::new(a, b, c, (i + 1) as u8),
                })
                .collect(),
            switch_ns: ns_name_for(pid, n, SWITCH),
            created: Vec::new(),
            iptables: PathBuf::new(),
            drops: Mutex::new(Drops::default()),
            prefix_len: 24,
        };
        match net.build() {
            Ok(()) => Some(net),
            Err(e) => {
                drop(net);
                skip(&format!("cannot build the network namespaces: {e}"));
                None
            }
        }
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn build(&mut self) -> Result<(), String> {
        let sw = self.switch_ns.clone();
        self.add_ns(&sw)?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        // No STP: ports forward as soon as they are up.
        ip(&[
            "-n",
            &sw,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let hosts: Vec<(String, Ipv4Addr)> =
            self.hosts.iter().map(|h| (h.ns.clone(), h.addr)).collect();
        for (i, (ns, addr)) in hosts.iter().enumerate() {
            self.add_ns(ns)?;
            let port = format!("v{i}");
            // Both ends are born inside their namespaces: no name in the machine's
            // own namespace, so nothing to collide with.
            ip(&[
                "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &sw,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            let cidr = format!("{addr}/{}", self.prefix_len);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        self.iptables = self.pick_iptables()?;
        for h in &self.hosts {
            self.ipt(&h.ns, &["-N", FAULT_CHAIN])?;
            self.ipt(&h.ns, &["-I", "INPUT", "1", "-j", FAULT_CHAIN])?;
        }
        Ok(())
    }

    /// The first iptables front end that can create the fault chain in a host
    /// namespace (the chain is removed again; `build` creates it everywhere).
    fn pick_iptables(&self) -> Result<PathBuf, String> {
        let ns = &self.hosts[0].ns;
        let mut errors = Vec::new();
        for cand in IPTABLES_CANDIDATES {
            let Some(path) = which(cand) else {
                errors.push(format!("{cand}: not installed"));
                continue;
            };
            let probe = |args: &[&str]| {
                run_tool(
                    Command::new(tool("ip"))
                        .args(["netns", "exec", ns])
                        .arg(&path)
                        .arg("-w")
                        .args(args),
                )
            };
            match probe(&["-N", FAULT_CHAIN]) {
                Ok(_) => {
                    probe(&["-X", FAULT_CHAIN])?;
                    return Ok(path);
                }
                Err(e) => errors.push(e),
            }
        }
        Err(format!("no working iptables: {}", errors.join("; ")))
    }

    fn ipt(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        run_tool(
            Command::new(tool("ip"))
                .args(["netns", "exec", ns])
                .arg(&self.iptables)
                .arg("-w")
                .args(args),
        )
    }

    fn index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == host)
            .unwrap_or_else(|| {
                panic!(
                    "no host {host:?} in this Net (hosts: {:?})",
                    self.host_names()
                )
            })
    }

    /// The host names, in the order given to [`Net::new`].
    pub fn host_names(&self) -> Vec<&str> {
        self.hosts.iter().map(|h| h.name.as_str()).collect()
    }

    /// The address of `host` on the bridge.
    pub fn addr(&self, host: &str) -> Ipv4Addr {
        self.hosts[self.index(host)].addr
    }

    /// The prefix length of the hosts' subnet (24).
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The namespace of `host` (for `ip netns exec`, `ip -n`).
    pub fn ns_name(&self, host: &str) -> &str {
        &self.hosts[self.index(host)].ns
    }

    /// The switch namespace holding the bridge `br0`.
    pub fn switch_ns(&self) -> &str {
        &self.switch_ns
    }

    /// The iptables front end in use (`iptables`, `iptables-nft` or `iptables-legacy`).
    pub fn iptables(&self) -> &Path {
        &self.iptables
    }

    /// `ip netns exec <ns of host> program`: add arguments, environment and
    /// spawn it (e.g. with [`NsProc::spawn`]). `ip netns exec` execs the program,
    /// so the child's PID is the program's.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", self.ns_name(host)]).arg(program);
        cmd
    }

    /// `cmd` (program, arguments, environment changes, working directory) made to
    /// run inside `host`, e.g. `net.in_ns("c", &python_command("x.py", &args))`.
    pub fn in_ns(&self, host: &str, cmd: &Command) -> Command {
        let mut out = self.command(host, cmd.get_program());
        out.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => out.env(k, v),
                None => out.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            out.current_dir(dir);
        }
        out
    }

    fn set_drop(&self, from: usize, to: usize, dropped: bool) {
        let mut drops = self.drops.lock().unwrap_or_else(|p| p.into_inner());
        let change = if dropped {
            drops.add(from, to)
        } else {
            drops.remove(from, to)
        };
        if !change {
            return;
        }
        let src = format!("{}/32", self.hosts[from].addr);
        let op = if dropped { "-A" } else { "-D" };
        let to_ns = &self.hosts[to].ns;
        if let Err(e) = self.ipt(to_ns, &[op, FAULT_CHAIN, "-s", &src, "-j", "DROP"]) {
            panic!(
                "fault {} -> {}: {e}",
                self.hosts[from].name, self.hosts[to].name
            );
        }
    }

    /// Drop every packet from `from` to `to`; `to -> from` still flows. (A TCP
    /// connection needs both directions, so a one-way cut breaks it both ways.)
    pub fn cut_oneway(&self, from: &str, to: &str) {
        let (f, t) = (self.index(from), self.index(to));
        assert_ne!(
            f, t,
            "cut_oneway({from}, {to}): a host cannot be cut from itself"
        );
        self.set_drop(f, t, true);
    }

    /// Partition `a` and `b` both ways (established connections included).
    pub fn cut(&self, a: &str, b: &str) {
        self.cut_oneway(a, b);
        self.cut_oneway(b, a);
    }

    /// Cut `host` from every other host of the Net, both ways.
    pub fn isolate(&self, host: &str) {
        let i = self.index(host);
        for j in 0..self.hosts.len() {
            if j != i {
                self.set_drop(i, j, true);
                self.set_drop(j, i, true);
            }
        }
    }

    /// Let `a` and `b` talk again (both directions).
    pub fn heal(&self, a: &str, b: &str) {
        let (i, j) = (self.index(a), self.index(b));
        self.set_drop(i, j, false);
        self.set_drop(j, i, false);
    }

    /// Remove every fault.
    pub fn heal_all(&self) {
        let mut drops = self.drops.lock().unwrap_or_else(|p| p.into_inner());
        for to in drops.clear() {
            if let Err(e) = self.ipt(&self.hosts[to].ns, &["-F", FAULT_CHAIN]) {
                panic!("heal_all on {}: {e}", self.hosts[to].name);
            }
        }
    }

    /// The faults in place, as `(from, to)` host names of dropped directions.
    pub fn faults(&self) -> Vec<(String, String)> {
        let drops = self.drops.lock().unwrap_or_else(|p| p.into_inner());
        drops
            .iter()
            .map(|(f, t)| (self.hosts[f].name.clone(), self.hosts[t].name.clone()))
            .collect()
    }

    /// The rules of `host`'s fault chain as `iptables -S` prints them (for messages).
    pub fn fault_rules(&self, host: &str) -> String {
        self.ipt(self.ns_name(host), &["-S", FAULT_CHAIN])
            .unwrap_or_else(|e| e)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.hosts.is_empty() {
            let faults = self
                .drops
                .lock()
                .map(|d| d.iter().collect::<Vec<_>>())
                .unwrap_or_default();
            eprintln!(
                "--- Net {} (hosts {:?}, drops by index {faults:?}) torn down after a panic",
                self.switch_ns,
                self.hosts
                    .iter()
                    .map(|h| format!("{}={}", h.name, h.addr))
                    .collect::<Vec<_>>()
            );
        }
        // Hosts first: deleting a host namespace deletes its veth, and with it the
        // bridge port; the switch (and the bridge) go last.
        for ns in self.created.iter().rev() {
            destroy_ns(ns);
        }
        self.created.clear();
    }
}

/// A process started inside a namespace (usually with [`Net::command`]), output
/// appended to a log file. Every signal goes to its PID. Dropping it continues it
/// if stopped, then SIGTERM, then SIGKILL after a bound; when the test is failing
/// the tail of its log is printed.
pub struct NsProc {
    proc: Proc,
    log: PathBuf,
    stopped: bool,
}

impl NsProc {
    /// Spawn `cmd` with stdin from /dev/null and stdout+stderr appended to `log`.
    pub fn spawn(cmd: &mut Command, name: &str, log: &Path) -> std::io::Result<NsProc> {
        let proc = Proc::spawn(cmd, name, Some(log))?;
        Ok(NsProc {
            proc,
            log: log.to_path_buf(),
            stopped: false,
        })
    }

    /// The process id (the program's own: `ip netns exec` execs).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        self.proc.name()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// True until the process has exited (a stopped process is running).
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.proc.try_wait()
    }

    /// Wait at most `bound` for the process to exit.
    pub fn wait_timeout(&mut self, bound: Duration) -> Option<ExitStatus> {
        self.proc.wait_timeout(bound)
    }

    /// Send `sig` by PID (nothing once reaped).
    pub fn signal(&mut self, sig: libc::c_int) {
        self.proc.signal(sig);
    }

    /// SIGSTOP: the process freezes (a hung node: its sockets stay open, nothing is
    /// answered). Returns once the kernel reports it stopped (bounded).
    pub fn stop(&mut self) {
        self.proc.signal(libc::SIGSTOP);
        self.stopped = true;
        let pid = self.pid();
        // Gone or a zombie counts too: then there is nothing left to freeze.
        let ok = wait_for(timeout_s(5), || {
            matches!(proc_state(pid), None | Some('T' | 'Z')).then_some(())
        });
        if ok.is_none() {
            panic!(
                "{} (pid {pid}) did not stop within 5 s of SIGSTOP",
                self.name()
            );
        }
    }

    /// SIGCONT: a stopped process resumes.
    pub fn cont(&mut self) {
        self.proc.signal(libc::SIGCONT);
        self.stopped = false;
    }

    /// Whether [`stop`](Self::stop) was called without [`cont`](Self::cont) since.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The state letter of `/proc/PID/stat` (`R`, `S`, `D`, `T` stopped, `Z`), or
    /// `None` once the process is gone or reaped.
    pub fn state(&self) -> Option<char> {
        proc_state(self.pid())
    }

    /// SIGKILL and reap (a crash). Works on a stopped process too.
    pub fn kill9(&mut self) -> ExitStatus {
        self.stopped = false;
        self.proc.kill9()
    }

    /// SIGTERM (and SIGCONT, so a stopped process sees it), wait up to `grace`, then
    /// SIGKILL. Returns the status and whether SIGTERM alone ended it.
    pub fn terminate(&mut self, grace: Duration) -> (ExitStatus, bool) {
        if let Some(st) = self.proc.try_wait() {
            return (st, true);
        }
        self.proc.signal(libc::SIGTERM);
        self.proc.signal(libc::SIGCONT);
        self.stopped = false;
        if let Some(st) = self.proc.wait_timeout(grace) {
            return (st, true);
        }
        (self.proc.kill9(), false)
    }
}

impl Drop for NsProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}) log {} (last {LOG_TAIL_LINES} lines) ---\n{}\n--- end ---",
                self.name(),
                self.pid(),
                self.log.display(),
                tail(&self.log, LOG_TAIL_LINES)
            );
        }
        if self.proc.try_wait().is_none() {
            let (_, clean) = self.terminate(timeout_s(DROP_GRACE_S));
            if !clean {
                eprintln!(
                    "{} (pid {}) ignored SIGTERM; killed",
                    self.name(),
                    self.pid()
                );
            }
        }
    }
}

/// The state letter in `/proc/PID/stat`: the field after the `(comm)`.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_state(&stat)
}

/// The state letter of a `/proc/PID/stat` line (the command name may hold spaces
/// and parentheses, so look after the last `)`).
pub fn parse_stat_state(stat: &str) -> Option<char> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        let cases = [
            ("a", true),
            ("w", true),
            ("node1", true),
            ("abcdefghijklmnop", true),
            ("abcdefghijklmnopq", false),
            ("", false),
            ("switch", false),
            ("A", false),
            ("a-b", false),
            ("a b", false),
        ];
        for (name, ok) in cases {
            assert_eq!(valid_host_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn namespace_names_round_trip_and_foreign_names_are_refused() {
        type Parsed<'a> = Option<(u32, u32, &'a str)>;
        let cases: [(&str, Parsed); 10] = [
            ("hastnet-123-0-a", Some((123, 0, "a"))),
            ("hastnet-4194304-17-switch", Some((4194304, 17, "switch"))),
            ("hastnet-9-1-node1", Some((9, 1, "node1"))),
            ("hastnet-9-1-", None),
            ("hastnet-x-1-a", None),
            ("hastnet-9--a", None),
            ("hastnet-9-1-a-b", None),
            ("hastnet-9-1-A", None),
            ("other-9-1-a", None),
            ("hastnet9-1-a", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_ns_name(name), want, "{name}");
        }
        assert_eq!(parse_ns_name(&ns_name_for(42, 7, "w")), Some((42, 7, "w")));
    }

    #[test]
    fn subnets_are_private_and_differ_between_nets_of_a_process() {
        for (pid, n) in [(1, 0), (127, 255), (128, 256), (u32::MAX, u32::MAX)] {
            let [a, b, _] = subnet_for(pid, n);
            assert_eq!(a, 10);
            assert!((64..192).contains(&b), "{pid} {n}: {b}");
        }
        assert_ne!(subnet_for(1, 0), subnet_for(1, 1));
    }

    #[test]
    fn netns_list_output() {
        let text = "hastnet-1-0-a (id: 3)\nhastnet-1-0-switch\n\nfoo (id: 0)\n";
        assert_eq!(
            parse_netns_list(text),
            ["hastnet-1-0-a", "hastnet-1-0-switch", "foo"]
        );
    }

    #[test]
    fn drops_report_exactly_the_rule_changes() {
        let mut d = Drops::default();
        assert!(d.add(0, 1), "new drop adds a rule");
        assert!(!d.add(0, 1), "repeated drop adds nothing");
        assert!(!d.add(2, 2), "a host is never cut from itself");
        assert!(d.add(1, 0));
        assert!(d.add(2, 1));
        assert!(d.contains(0, 1) && !d.contains(0, 2));
        assert!(d.remove(0, 1));
        assert!(!d.remove(0, 1), "healing twice removes nothing");
        assert_eq!(d.iter().collect::<Vec<_>>(), [(1, 0), (2, 1)]);
        assert_eq!(d.clear().into_iter().collect::<Vec<_>>(), [0, 1]);
        assert!(d.clear().is_empty());
    }

    #[test]
    fn stat_state_letter() {
        let cases = [
            ("123 (python3) S 1 2 3", Some('S')),
            ("123 (a) b) T 1", Some('T')),
            ("123 (x y) R 1", Some('R')),
            ("garbage", None),
            ("1 (x)", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_stat_state(line), want, "{line}");
        }
    }
}
