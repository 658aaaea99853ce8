//! A local read error on the primary (docs/overview.md §4.2): the read is retried on the
//! secondary, the client gets the right data, and the primary counts the failure
//! in `stats.read_errors` (`hastctl list --json`). With `on_io_error detach` (the
//! default) the component is detached (`status` says `detached`) until `hastctl
//! attach` after the repair. Without a peer the same read fails with EIO, hastd
//! keeps serving everything else, and the resource is not `complete` until
//! `hastctl attach`. (Write errors: `tests/io_error.rs`.)
//!
//! Errors are injected below A's component, without device-mapper:
//!
//! ```text
//! hastd A --> r0.img (symlink) --> MNT/nbd (nbdfuse) --> nbdkit --filter=error file A.real
//! ```
//!
//! nbdkit's error filter fails every `pread` with EIO while the file `TRIGGER`
//! exists, and nothing else (writes, flushes, zeroing pass). Before each faulty
//! read the kernel page cache is dropped so that hastd's `pread` really reaches
//! the FUSE file. Needs root (drop_caches, FUSE) and /dev/fuse. Teardown: hastd
//! stopped first (it holds the FUSE file), then `fusermount3 -u`, then nbdkit,
//! each by PID and bounded in time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hast_testkit::pair::{compare_areas, qemu_io};
use hast_testkit::{
    bins, free_port, nbd_info, output_text, require_fuse, require_root, require_tools, run, run_ok,
    tail, timeout_s, wait_for, NbdAddr, NbdFuse, Pair, Proc, Side, TempDir, MIB,
};

/// Size of each image file (metadata included).
const FILE_SIZE: u64 = 128 * MIB;

/// Known patterns written through A: (offset, length, byte). Aligned and not,
/// inside one extent and across extent boundaries (2 MiB extents).
const PATTERNS: &[(u64, u64, u8)] = &[
    (0, MIB, 0x5a),
    (3 * MIB, 4096, 0xa5),
    (2 * MIB + 1536, 512, 0x77), // one unaligned sector
    (17 * MIB, 2 * MIB, 0x3c),   // spans two extents
    (63 * MIB + 512 * 1024, MIB, 0xc3),
];

fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Everything one test runs. Field order is drop order: hastd (holding the FUSE
/// file) first, then the FUSE mount, then nbdkit, then the directory.
struct Rig {
    pair: Pair,
    fuse: NbdFuse,
    nbdkit: Proc,
    trigger: PathBuf,
    nbdkit_log: PathBuf,
    dir: TempDir,
}

impl Rig {
    /// Pair built (images created), A's image moved behind nbdkit+nbdfuse, both
    /// daemons started, A primary, B secondary, complete.
    fn new(tag: &str) -> Rig {
        let pair = Pair::builder(bins!()).tag(tag).file_size(FILE_SIZE).build();
        let dir = TempDir::new(&format!("{tag}-inject"));
        let real = dir.join("A.real");
        let trigger = dir.join("TRIGGER");
        let nbdkit_log = dir.join("nbdkit.log");
        let image = pair.image(Side::A);
        std::fs::rename(&image, &real)
            .unwrap_or_else(|e| panic!("mv {} {}: {e}", image.display(), real.display()));

        let port = free_port();
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["--filter=error", "file"])
            .arg(format!("file={}", real.display()))
            .args(["error=EIO", "error-pread-rate=1"])
            .arg(format!("error-pread-file={}", trigger.display()));
        let mut nbdkit = Proc::spawn(&mut cmd, "nbdkit", Some(&nbdkit_log))
            .unwrap_or_else(|e| panic!("cannot start nbdkit: {e}"));
        let addr = NbdAddr::local(port);
        let up = wait_for(timeout_s(20), || {
            if !nbdkit.is_running() {
                return Some(false);
            }
            nbd_info(&addr, "", Duration::from_secs(5))
                .ok()
                .map(|_| true)
        });
        assert_eq!(
            up,
            Some(true),
            "nbdkit did not come up:\n{}",
            tail(&nbdkit_log, 40)
        );

        let fuse = NbdFuse::mount(&dir.join("mnt"), &addr.uri(""), &dir.join("nbdfuse.log"));
        std::os::unix::fs::symlink(fuse.file(), &image)
            .unwrap_or_else(|e| panic!("ln -s {} {}: {e}", fuse.file().display(), image.display()));
        let mut rig = Rig {
            pair,
            fuse,
            nbdkit,
            trigger,
            nbdkit_log,
            dir,
        };
        rig.pair.start();
        rig.pair.setup(Side::A, timeout_s(60));
        rig
    }

    fn uri(&self) -> String {
        self.pair.uri(Side::A)
    }

    /// Reads of A's component fail from now on (until [`Rig::heal`]).
    fn break_reads(&self) {
        std::fs::write(&self.trigger, b"EIO").expect("create TRIGGER");
    }

    fn heal(&self) {
        std::fs::remove_file(&self.trigger).expect("remove TRIGGER");
    }

    /// How many preads the error filter failed so far.
    fn injected(&self) -> usize {
        std::fs::read_to_string(&self.nbdkit_log)
            .unwrap_or_default()
            .matches("injecting EIO error into pread")
            .count()
    }

    /// `stats` of r0 in A's `hastctl list --json`.
    fn stats(&self, side: Side) -> serde_json::Value {
        let text = self.pair.node(side).hastctl_ok(&["list", "--json", "r0"]);
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("list --json on {side} is not JSON ({e}):\n{text}"));
        v["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == "r0"))
            .map(|r| r["stats"].clone())
            .filter(|s| s.is_object())
            .unwrap_or_else(|| panic!("no stats of r0 in list --json on {side}:\n{text}"))
    }

    fn stat(&self, side: Side, key: &str) -> u64 {
        let s = self.stats(side);
        s[key]
            .as_u64()
            .unwrap_or_else(|| panic!("stats.{key} missing on {side}: {s}"))
    }

    /// Stop the daemons (asserting a clean exit), then unmount and stop nbdkit.
    fn finish(mut self) {
        for side in [Side::A, Side::B] {
            if self.pair.node_mut(side).daemon_running() {
                self.pair.stop(side);
            }
        }
        let st = self.fuse.unmount().expect("nbdfuse was running");
        assert!(st.success(), "nbdfuse exited with {st}");
        self.nbdkit.stop(timeout_s(10));
    }
}

/// Write back everything and drop the page cache, so the next reads of A's
/// component go to nbdfuse and nbdkit.
fn drop_caches() {
    run_ok(&mut Command::new("sync"), timeout_s(60));
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("echo 3 > /proc/sys/vm/drop_caches");
}

fn prerequisites() -> bool {
    require_root()
        && require_fuse()
        && require_tools(&["nbdkit", "nbdfuse", "fusermount3", "qemu-io", "nbdcopy"])
}

fn write_patterns(uri: &str) {
    let mut list: Vec<String> = PATTERNS
        .iter()
        .map(|(off, len, b)| format!("write -P 0x{b:02x} {off} {len}"))
        .collect();
    list.push("flush".into());
    qemu_io(uri, &list);
}

fn read_patterns_cmds() -> Vec<String> {
    let mut list: Vec<String> = PATTERNS
        .iter()
        .map(|(off, len, b)| format!("read -P 0x{b:02x} {off} {len}"))
        .collect();
    // Never written: zeroes on both copies.
    list.push(format!("read -P 0 {} {}", 40 * MIB, MIB));
    list
}

/// Bytes `[off, off + len)` of `path` (for messages and checks).
fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off)
        .unwrap_or_else(|e| panic!("read {} at {off}: {e}", path.display()));
    buf
}

#[test]
fn local_read_error_on_the_primary_is_served_by_the_secondary() {
    if !prerequisites() {
        return;
    }
    let mut rig = Rig::new("rderr");
    let uri = rig.uri();
    write_patterns(&uri);
    rig.pair.wait_complete(timeout_s(60));

    // Reads are good while the component is healthy, and no error is counted.
    drop_caches();
    qemu_io(&uri, &read_patterns_cmds());
    assert_eq!(
        rig.stat(Side::A, "read_errors"),
        0,
        "{}",
        rig.pair.describe()
    );
    assert_eq!(rig.injected(), 0, "errors injected without TRIGGER?");

    // Now every read of A's component fails: the data must come from B.
    let errors_before = rig.stat(Side::A, "read_errors");
    drop_caches();
    rig.break_reads();
    qemu_io(&uri, &read_patterns_cmds());
    let errors = rig.stat(Side::A, "read_errors");
    say(&format!(
        "read_errors on A: {errors_before} -> {errors}; preads failed by nbdkit: {}",
        rig.injected()
    ));
    assert!(
        rig.injected() > 0,
        "nbdkit failed no pread: the reads did not reach A's component (page cache?)\n{}",
        rig.pair.describe()
    );
    assert!(
        errors > errors_before,
        "A's stats.read_errors did not grow ({errors_before} -> {errors}) although its \
         component failed reads:\n{}",
        rig.pair.describe()
    );

    // The whole export, byte for byte equal to B's data area, with every local
    // read failing.
    let copy = rig.dir.join("export.raw");
    drop_caches();
    let out = run(
        Command::new("nbdcopy")
            .arg("--no-extents")
            .arg(&uri)
            .arg(&copy),
        timeout_s(300),
    );
    assert!(
        out.status.success(),
        "nbdcopy of A's export failed while A's reads fail locally:\n{}\n{}",
        output_text(&out),
        rig.pair.describe()
    );
    let size = rig.pair.datasize();
    let got = std::fs::metadata(&copy).expect("stat copy").len();
    assert_eq!(got, size, "nbdcopy wrote {got} bytes, export has {size}");
    if let Err(e) = compare_areas(
        &copy,
        (0, size),
        &rig.pair.image(Side::B),
        rig.pair.data_area(Side::B),
    ) {
        panic!("A's export (read through B) differs from B's data: {e}");
    }
    for (off, len, b) in PATTERNS {
        let bytes = read_at(&copy, *off, *len as usize);
        assert!(
            bytes.iter().all(|x| x == b),
            "the copy of A's export lacks pattern {b:#04x} at {off}+{len}"
        );
    }
    // Detached at the first error: the nbdcopy never read the component.
    let errors_copy = rig.stat(Side::A, "read_errors");
    assert_eq!(
        errors_copy, errors,
        "the detached component was read by the nbdcopy ({errors} -> {errors_copy})"
    );
    assert!(
        rig.pair.node_mut(Side::A).daemon_running(),
        "hastd on A is gone:\n{}",
        rig.pair.describe()
    );
    let st = rig.pair.status(Side::A);
    assert_eq!(
        st.status,
        "detached",
        "A is not detached after read errors served by B: {}",
        st.brief()
    );

    // Healed and attached: reads are local again and no more errors are
    // counted.
    rig.heal();
    let attach = rig.pair.node(Side::A).hastctl_ok(&["attach", "r0"]);
    say(&format!("attach: {attach}"));
    rig.pair.wait_complete(timeout_s(30));
    drop_caches();
    let injected = rig.injected();
    let reads_before = rig.stat(Side::A, "reads");
    qemu_io(&uri, &read_patterns_cmds());
    assert_eq!(
        rig.stat(Side::A, "read_errors"),
        errors_copy,
        "read errors counted with a healthy component:\n{}",
        rig.pair.describe()
    );
    assert_eq!(
        rig.injected(),
        injected,
        "errors injected after TRIGGER was removed"
    );
    assert!(
        rig.stat(Side::A, "reads") > reads_before,
        "the reads after healing were not counted as local reads"
    );
    rig.pair.wait_complete(timeout_s(30));
    rig.finish();
}

#[test]
fn local_read_error_without_the_peer_fails_the_read_not_the_daemon() {
    if !prerequisites() {
        return;
    }
    let mut rig = Rig::new("rderr-nopeer");
    let uri = rig.uri();
    write_patterns(&uri);
    rig.pair.wait_complete(timeout_s(60));

    rig.pair.stop(Side::B);
    rig.pair
        .wait_status(Side::A, timeout_s(30), "peer gone, degraded", |s| {
            s.peer.as_deref() != Some("connected") && s.status == "degraded"
        });

    // The one copy that could answer fails: the client gets EIO. On the same
    // connection, still with every local read failing, a write then succeeds
    // (degraded: recorded as dirty for B).
    let errors_before = rig.stat(Side::A, "read_errors");
    let writes_before = rig.stat(Side::A, "writes");
    drop_caches();
    rig.break_reads();
    let out = run(
        Command::new("qemu-io")
            .args(["-f", "raw", &uri])
            .arg("-c")
            .arg(format!("read -P 0x5a 0 {}", 64 * 1024))
            .arg("-c")
            .arg(format!("write -P 0x99 {} {}", 80 * MIB, MIB))
            .arg("-c")
            .arg("flush"),
        timeout_s(120),
    );
    let text = output_text(&out);
    say(&format!(
        "qemu-io read, write, flush without the peer ({}):\n{text}",
        out.status
    ));
    assert!(
        text.contains("read failed: Input/output error"),
        "a read of a failing component with no peer did not fail with EIO \
         (exit {}):\n{text}\n{}",
        out.status,
        rig.pair.describe()
    );
    assert!(
        !out.status.success(),
        "qemu-io exited 0 although its read failed:\n{text}"
    );
    assert!(
        text.contains("wrote 1048576/1048576 bytes")
            && !text.contains("write failed")
            && !text.contains("flush failed"),
        "after the failed read, the write or flush on the same connection failed:\n{text}\n{}",
        rig.pair.describe()
    );
    assert!(rig.injected() > 0, "nbdkit failed no pread (page cache?)");
    let errors = rig.stat(Side::A, "read_errors");
    assert!(
        errors > errors_before,
        "stats.read_errors did not grow ({errors_before} -> {errors})"
    );
    assert!(
        rig.pair.node_mut(Side::A).daemon_running(),
        "hastd on A died after a read error:\n{}",
        rig.pair.describe()
    );
    let st = rig.pair.status(Side::A);
    assert_eq!(st.status, "degraded", "{}", st.brief());
    assert!(
        st.writes > writes_before,
        "write not counted: {}",
        st.brief()
    );
    assert!(
        st.dirty_bytes > 0,
        "degraded write left nothing dirty: {}",
        st.brief()
    );
    assert_eq!(
        rig.stat(Side::A, "write_errors"),
        0,
        "a write failed with only reads broken"
    );

    // Healed: the data reads back locally, and B catches up when it returns
    // (once attached: until then the resource is not complete).
    rig.heal();
    rig.pair.node(Side::A).hastctl_ok(&["attach", "r0"]);
    drop_caches();
    qemu_io(
        &uri,
        &[
            format!("read -P 0x99 {} {}", 80 * MIB, MIB),
            format!("read -P 0x5a 0 {MIB}"),
        ],
    );
    rig.pair.start_daemon(Side::B);
    rig.pair.make_secondary(Side::B);
    rig.pair.wait_complete(timeout_s(60));
    rig.pair.assert_identical(timeout_s(30));
    rig.finish();
}
