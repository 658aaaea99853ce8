//! `hastctl snapshot` (issue 14) against real hastd with real clients:
//!
//! - a group's images are coherent: `tests/py/dependent_writer.py` writes
//!   record N to r0 and, once r0 acknowledged it, commit N to r1; in 20
//!   group snapshots taken under that load no commit is newer than its
//!   record, while snapshots of r0 then r1 one after the other show such
//!   commits (so the checker is seen to find what it looks for);
//! - an image is the volume at the freeze: sparse raw (holes stay holes),
//!   readable by `qemu-img`, equal to the export; the refusals (an image
//!   already there, a resource not primary, no directory) change nothing;
//! - copy-before-write: on a primary whose disk reads slowly (nbdkit's
//!   delay filter behind nbdfuse) a client overwrites the whole volume
//!   while the background copy runs, and the image still holds the old
//!   data; a snapshot whose client is killed, or whose resource is
//!   demoted, removes its files and leaves the resource serving;
//! - two ext4 filesystems written to during a group snapshot mount from
//!   their images (journal replay) and check clean.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use hast_testkit::coherence::{self, DependentWriter};
use hast_testkit::hastcd::Ext4Client;
use hast_testkit::pair::qemu_io;
use hast_testkit::tools::{fsck_ext4, require_ext4};
use hast_testkit::{
    bins, require_python_nbd, require_tool, tail, timeout_s, wait_for, LoopMount, Node, Pair, Proc,
    ResourceSpec, Side, TempDir, MIB,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn node(tag: &str, resources: &[(&str, u64)]) -> Node {
    let mut b = Node::builder(bins!()).tag(tag);
    for (r, size) in resources {
        b = b.resource(ResourceSpec::new(r, *size));
    }
    let mut n = b.start();
    for (r, _) in resources {
        n.promote(r);
    }
    n
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `hastctl snapshot --json -o dir names`: the `done` record.
fn snapshot(n: &Node, dir: &Path, names: &[&str]) -> Value {
    let mut args = vec![
        "snapshot",
        "--json",
        "-t",
        "30",
        "-o",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(names);
    let out = n.hastctl(&args);
    assert_eq!(
        code(&out),
        0,
        "hastctl {args:?}: {}\n{}",
        text(&out),
        tail(n.log_path(), 30)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last).expect("JSON Lines");
    assert_eq!(v["event"], "done", "{stdout}");
    v
}

/// A fresh directory for one snapshot.
fn outdir(n: &Node, name: &str) -> PathBuf {
    let d = n.dir().join(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// `count` slots of an image.
fn slots(image: &Path, count: usize) -> Vec<u64> {
    let mut raw = vec![0u8; count * coherence::SLOT];
    std::fs::File::open(image)
        .and_then(|mut f| f.read_exact(&mut raw))
        .unwrap_or_else(|e| panic!("read {}: {e}", image.display()));
    coherence::slots(&raw)
}

#[test]
fn group_snapshots_are_coherent_and_one_by_one_ones_are_not() {
    if !require_python_nbd() {
        return;
    }
    const SLOTS: usize = 64;
    let n = node("snap-coherent", &[("r0", 32 * MIB), ("r1", 32 * MIB)]);
    let writer = DependentWriter::start(n.dir(), &n.uri("r0"), &n.uri("r1"), SLOTS);
    let progress = |d: &Path| {
        slots(&d.join("r1.img"), SLOTS)
            .into_iter()
            .max()
            .unwrap_or(0)
    };

    // One after the other: r0's image, then r1's, each its own snapshot.
    let mut seen = 0;
    for round in 0..10 {
        let d0 = outdir(&n, &format!("apart-{round}-r0"));
        let d1 = outdir(&n, &format!("apart-{round}-r1"));
        snapshot(&n, &d0, &["r0"]);
        snapshot(&n, &d1, &["r1"]);
        let bad = coherence::violations(
            &slots(&d0.join("r0.img"), SLOTS),
            &slots(&d1.join("r1.img"), SLOTS),
        );
        seen += bad.len();
        if seen > 0 {
            break;
        }
    }
    assert!(
        seen > 0,
        "snapshots taken one after the other never showed a commit without its record: {}",
        writer.output()
    );
    eprintln!("one-by-one snapshots: {seen} slots with a commit newer than its record");

    // As a group: 20 snapshots, each coherent, the writer going on between.
    let mut last = 0;
    let mut frozen = Vec::new();
    let mut preserved = 0;
    for round in 0..20 {
        let d = outdir(&n, &format!("group-{round}"));
        let done = snapshot(&n, &d, &["r0", "r1"]);
        frozen.push(done["frozen_ms"].as_u64().expect("frozen_ms"));
        preserved += done["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|i| i["preserved_bytes"].as_u64().unwrap_or(0))
            .sum::<u64>();
        let records = slots(&d.join("r0.img"), SLOTS);
        let commits = slots(&d.join("r1.img"), SLOTS);
        let bad = coherence::violations(&records, &commits);
        assert!(
            bad.is_empty(),
            "round {round}: commits without records (slot, record, commit): {bad:?}"
        );
        let now = progress(&d);
        assert!(now > 0, "round {round}: the writer has not begun");
        if round % 5 == 4 {
            assert!(now > last, "round {round}: the writer does not go on");
            last = now;
        }
        std::fs::remove_dir_all(&d).expect("rm snapshot");
    }
    frozen.sort_unstable();
    eprintln!(
        "20 group snapshots coherent; frozen ms median {} max {}; {preserved} bytes copied before writes",
        frozen[10], frozen[19]
    );
    writer.finish();
}

#[test]
fn an_image_is_the_volume_sparse_and_refusals_change_nothing() {
    if !require_tool("qemu-img") || !require_tool("qemu-io") {
        return;
    }
    let mut n = node("snap-image", &[("r0", 64 * MIB), ("r1", 16 * MIB)]);
    let uri = n.uri("r0");
    qemu_io(
        &uri,
        &[
            "write -P 0x11 0 64k".into(),
            "write -P 0x22 5M 1M".into(),
            "write -P 0x33 40M 4k".into(),
        ],
    );
    let d = outdir(&n, "one");
    let done = snapshot(&n, &d, &["r0"]);
    let img = d.join("r0.img");
    assert!(
        !d.join("r0.img.partial").exists(),
        "the partial name is gone"
    );
    let meta = std::fs::metadata(&img).expect("image");
    let size = done["images"][0]["size"].as_u64().expect("size");
    assert_eq!(meta.len(), size, "{done}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "root's only");
    let allocated = meta.blocks() * 512;
    assert!(
        allocated <= 2 * MIB,
        "holes stay holes: {allocated} bytes allocated for 1.1 MiB written"
    );
    assert_eq!(
        done["images"][0]["written_bytes"].as_u64(),
        Some(2 * 64 * 1024 + MIB),
        "{done}"
    );
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "raw"])
        .arg(&img)
        .output()
        .expect("qemu-img info");
    let info: Value = serde_json::from_slice(&info.stdout).expect("qemu-img info JSON");
    assert_eq!(info["format"], "raw");
    assert_eq!(info["virtual-size"].as_u64(), Some(size));
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&img)
        .arg(&uri)
        .output()
        .expect("qemu-img compare");
    assert_eq!(
        code(&cmp),
        0,
        "image differs from the export: {}",
        text(&cmp)
    );

    // Refusals: each one line, nothing frozen, no file left.
    let d2 = d.to_str().unwrap();
    let out = n.hastctl(&["snapshot", "-o", d2, "r0"]);
    assert_eq!(code(&out), 73, "an image is there: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    let out = n.hastctl(&["snapshot", "-o", "/nonexistent-hast-dir", "r0"]);
    assert_eq!(code(&out), 73, "no such directory: {}", text(&out));
    n.hastctl_ok(&["role", "secondary", "r1"]);
    let d3 = outdir(&n, "refused");
    let out = n.hastctl(&["snapshot", "-o", d3.to_str().unwrap(), "r0", "r1"]);
    assert_eq!(code(&out), 77, "r1 is not primary: {}", text(&out));
    assert!(
        std::fs::read_dir(&d3).expect("ls").next().is_none(),
        "a refused snapshot leaves no file"
    );
    let q = n.hastctl(&["query", "r0"]);
    assert_eq!(code(&q), 1, "r0 is not frozen: {}", text(&q));
    // Still serving, and the freeze of the first snapshot is in the journal
    // with its thaw's reason.
    qemu_io(&uri, &["write -P 0x44 0 4k".into()]);
    let ev: Value = serde_json::from_str(&n.hastctl_ok(&["events", "--all", "--json"])).unwrap();
    let thaws: Vec<&Value> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "thaw" && e["resource"] == "r0")
        .collect();
    assert_eq!(thaws.len(), 1, "{ev}");
    assert_eq!(thaws[0]["args"][0], "snapshot begun");
    n.promote("r1");
}

/// A pair whose primary (A) reads its disk slowly: the background copy of
/// a 48 MiB image takes seconds.
fn slow_pair(tag: &str) -> Pair {
    let mut p = Pair::builder(bins!())
        .tag(tag)
        .file_size(48 * MIB)
        .fuse_disk_filtered(Side::A, &["--filter=delay", "delay-read=10ms"])
        .build();
    p.start();
    p.setup(Side::A, WAIT);
    p
}

/// Drops the page cache of A's component (`dd iflag=nocache`, i.e.
/// POSIX_FADV_DONTNEED): its next reads go to the slow disk.
fn uncache(p: &mut Pair) {
    let file = p.disk_mut(Side::A).path();
    let out = Command::new("dd")
        .arg(format!("if={}", file.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .output()
        .expect("dd");
    assert_eq!(code(&out), 0, "dd: {}", text(&out));
}

/// Starts `hastctl snapshot --json` in the background, A's page cache
/// dropped first; returns it once its `started` record is out.
fn start_snapshot(p: &mut Pair, dir: &Path, log: &Path) -> Proc {
    uncache(p);
    let mut cmd =
        p.node(Side::A)
            .hastctl_command(&["snapshot", "--json", "-o", dir.to_str().unwrap(), "r0"]);
    let mut proc = Proc::spawn(&mut cmd, "hastctl-snapshot", Some(log)).expect("start hastctl");
    let started = wait_for(WAIT, || {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        if t.contains("\"started\"") {
            return Some(true);
        }
        (!proc.is_running()).then_some(false)
    });
    assert_eq!(
        started,
        Some(true),
        "no started record: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    proc
}

#[test]
fn copy_before_write_keeps_the_image_while_clients_overwrite_and_interruptions_clean_up() {
    if !require_tool("qemu-io") || !require_tool("nbdkit") || !require_tool("nbdfuse") {
        return;
    }
    let mut p = slow_pair("snap-cbw");
    let size = p.datasize();
    let uri = p.uri(Side::A);
    qemu_io(&uri, &[format!("write -P 0x5a 0 {size}")]);
    let tmp = TempDir::new("snap-cbw-out");

    // Overwritten while copied: the image keeps what was there.
    let d = tmp.join("cbw");
    std::fs::create_dir_all(&d).unwrap();
    let log = tmp.join("cbw.log");
    let mut hc = start_snapshot(&mut p, &d, &log);
    assert!(
        d.join("r0.img.partial").exists(),
        "copying into the partial file"
    );
    // The end first: the copy goes from the start.
    let tail_at = size - 8 * MIB;
    qemu_io(
        &uri,
        &[
            format!("write -P 0xa5 {tail_at} {}", 8 * MIB),
            format!("write -P 0xa5 0 {tail_at}"),
        ],
    );
    let st = hc.wait_timeout(timeout_s(120)).expect("snapshot ends");
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(st.success(), "snapshot failed ({st}): {out}");
    let done: Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("done record");
    assert_eq!(done["event"], "done", "{out}");
    let image = std::fs::read(d.join("r0.img")).expect("image");
    assert_eq!(image.len() as u64, size);
    let wrong = image.iter().filter(|&&b| b != 0x5a).count();
    assert_eq!(
        wrong, 0,
        "{wrong} bytes of the image are not the data at the freeze"
    );
    let preserved = done["images"][0]["preserved_bytes"].as_u64().unwrap();
    assert!(preserved > 0, "the overwrite ran ahead of the copy: {done}");
    assert!(
        out.lines().any(|l| l.contains("\"progress\"")),
        "progress records: {out}"
    );
    let now = qemu_io(&uri, &[format!("read -P 0xa5 0 {size}")]);
    assert!(!now.contains("Pattern verification failed"), "{now}");
    eprintln!(
        "copy-before-write: {preserved} bytes preserved, frozen {} ms, copy {} ms",
        done["frozen_ms"], done["copy_ms"]
    );

    // The client killed mid-copy: the partial file goes, the resource stays.
    let d = tmp.join("killed");
    std::fs::create_dir_all(&d).unwrap();
    let mut hc = start_snapshot(&mut p, &d, &tmp.join("killed.log"));
    hc.kill9();
    let gone = wait_for(WAIT, || (!d.join("r0.img.partial").exists()).then_some(()));
    assert!(
        gone.is_some(),
        "the partial image stays after its client died"
    );
    assert!(!d.join("r0.img").exists());
    qemu_io(&uri, &["write -P 0x77 0 64k".into()]);
    assert!(p.status(Side::A).is_complete(), "{}", p.describe());

    // Demoted mid-copy: the snapshot fails, its file goes.
    let d = tmp.join("demoted");
    std::fs::create_dir_all(&d).unwrap();
    let log = tmp.join("demoted.log");
    let mut hc = start_snapshot(&mut p, &d, &log);
    p.make_secondary(Side::A);
    let st = hc.wait_timeout(timeout_s(60)).expect("snapshot ends");
    assert!(
        !st.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        std::fs::read_dir(&d).expect("ls").next().is_none(),
        "a failed snapshot leaves no file"
    );
}

#[test]
fn ext4_filesystems_in_a_group_snapshot_mount_and_check_clean() {
    if !require_ext4(&[]) {
        return;
    }
    let n = node("snap-ext4", &[("r0", 64 * MIB), ("r1", 64 * MIB)]);
    let fs_size = 60 * MIB;
    let mut fs0 = Ext4Client::mount(&n.dir().join("c0"), &n.uri("r0"), None, fs_size, true);
    let mut fs1 = Ext4Client::mount(&n.dir().join("c1"), &n.uri("r1"), None, fs_size, true);
    // A writer on both filesystems: files created, written and renamed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let roots = [
        fs0.mountpoint().to_path_buf(),
        fs1.mountpoint().to_path_buf(),
    ];
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 100_000 {
                for r in &roots {
                    let tmp = r.join(format!("f{}.tmp", i % 50));
                    std::fs::write(&tmp, vec![(i % 251) as u8; 16 * 1024]).expect("write");
                    std::fs::rename(&tmp, r.join(format!("f{}", i % 50))).expect("rename");
                }
                i += 1;
            }
            i
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let d = outdir(&n, "ext4");
    snapshot(&n, &d, &["r0", "r1"]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let files = writer.join().expect("writer");
    eprintln!("writer made {files} rounds of writes");
    for r in ["r0", "r1"] {
        let img = d.join(format!("{r}.img"));
        // Mounting replays the journal; then the filesystem checks clean.
        let mnt = d.join(format!("{r}.mnt"));
        let mut m = LoopMount::mount_with(&img, &mnt, &format!("loop,sizelimit={fs_size}"));
        let listed = std::fs::read_dir(&mnt).expect("ls the snapshot").count();
        assert!(listed > 0, "{r}: an empty filesystem");
        m.unmount();
        let out = fsck_ext4(&img);
        assert_eq!(code(&out), 0, "{r}: fsck: {}", text(&out));
    }
    fs0.unmount_all();
    fs1.unmount_all();
}
