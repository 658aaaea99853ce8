//! The full path of SPEC §2: nbdfuse -> mkfs.ext4 -> mount -o loop -> files ->
//! umount -> stop and restart hastd -> mount again -> files intact -> fsck.ext4 -n.
//!
//! Needs root, /dev/fuse and loop devices. Mounts are undone by guards even when an
//! assertion fails half-way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use hast_testkit::{
    bins, expect_ok, require_fuse, require_root, require_tools, run, timeout_s, LoopMount, NbdFuse,
    Node, MIB,
};
use rand::{Rng, RngCore, SeedableRng};

/// Random files (relative path -> contents) of sizes from 0 to a few MiB.
fn make_files(seed: u64) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut files = BTreeMap::new();
    let sizes = [
        0usize,
        1,
        511,
        4096,
        4097,
        65_536,
        1_000_003,
        3 * MIB as usize,
        7 * MIB as usize,
    ];
    for (i, size) in sizes.iter().enumerate() {
        let mut data = vec![0u8; *size];
        rng.fill_bytes(&mut data);
        files.insert(PathBuf::from(format!("f{i}.bin")), data);
    }
    for d in 0..20 {
        let n = rng.gen_range(1..40_000);
        let mut data = vec![0u8; n];
        rng.fill_bytes(&mut data);
        files.insert(
            PathBuf::from(format!("dir{}/sub{d}/small{d}.dat", d % 4)),
            data,
        );
    }
    files
}

fn sha256sum(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path), timeout_s(60));
    expect_ok(&out, "sha256sum")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn ext4_through_nbdfuse_survives_hastd_restart() {
    if !(require_root()
        && require_fuse()
        && require_tools(&[
            "nbdfuse",
            "fusermount3",
            "mkfs.ext4",
            "fsck.ext4",
            "mount",
            "umount",
        ]))
    {
        return;
    }
    let mut node = Node::primary(bins!(), "ext4", 256 * MIB);
    let uri = node.uri("r0");
    let dir = node.dir().to_path_buf();
    let fuse_dir = dir.join("fuse");
    let fs_dir = dir.join("fs");
    let files = make_files(0x6578_7434);

    let mut sums = BTreeMap::new();
    {
        let mut fuse = NbdFuse::mount(&fuse_dir, &uri, &dir.join("nbdfuse.log"));
        let image = fuse.file();
        let out = run(
            Command::new("mkfs.ext4")
                .args(["-F", "-q", "-L", "hasttest"])
                .arg(&image),
            timeout_s(300),
        );
        expect_ok(&out, "mkfs.ext4");
        let mut fs = LoopMount::mount(&image, &fs_dir);
        for (rel, data) in &files {
            let p = fs_dir.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir in ext4");
            std::fs::write(&p, data).expect("write file in ext4");
            sums.insert(rel.clone(), sha256sum(&p));
        }
        let out = run(Command::new("sync").arg("-f").arg(&fs_dir), timeout_s(120));
        expect_ok(&out, "sync");
        fs.unmount();
        let st = fuse.unmount().expect("nbdfuse was running");
        assert!(st.success(), "nbdfuse exited with {st}");
    }

    // Stop hastd cleanly (exit 0 is asserted by restart) and bring r0 back.
    node.restart();
    node.promote("r0");

    let mut fuse = NbdFuse::mount(&fuse_dir, &uri, &dir.join("nbdfuse2.log"));
    let image = fuse.file();
    {
        let mut fs = LoopMount::mount(&image, &fs_dir);
        for (rel, data) in &files {
            let p = fs_dir.join(rel);
            let got = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            assert!(got == *data, "{} changed across the restart", rel.display());
            assert_eq!(sha256sum(&p), sums[rel], "{}", rel.display());
        }
        fs.unmount();
    }
    let out = run(
        Command::new("fsck.ext4").args(["-n", "-f"]).arg(&image),
        timeout_s(300),
    );
    assert!(
        out.status.success(),
        "fsck.ext4 -n -f reports problems:\n{}",
        hast_testkit::output_text(&out)
    );
    let st = fuse.unmount().expect("nbdfuse was running");
    assert!(st.success(), "nbdfuse exited with {st}");
}
