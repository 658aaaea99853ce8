//! The full path of docs/overview.md §2: nbdfuse -> mkfs.ext4 -> mount -o loop -> files ->
//! umount -> stop and restart hastd -> mount again -> files intact -> fsck.ext4 -n.
//!
//! Needs root, /dev/fuse and loop devices. Mounts are undone by guards even when an
//! assertion fails half-way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use hast_testkit::tools::{fsck_ext4, mkfs_ext4, require_ext4, sha256sum, write_files};
use hast_testkit::{bins, expect_ok, run, timeout_s, LoopMount, NbdFuse, Node, TempDir, MIB};
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

#[test]
fn ext4_through_nbdfuse_survives_hastd_restart() {
    if !require_ext4(&[]) {
        return;
    }
    let mut node = Node::primary(bins!(), "ext4", 256 * MIB);
    let uri = node.uri("r0");
    let dir = node.dir().to_path_buf();
    let fuse_dir = dir.join("fuse");
    let fs_dir = dir.join("fs");
    let files = make_files(0x6578_7434);

    let sums;
    {
        let mut fuse = NbdFuse::mount(&fuse_dir, &uri, &dir.join("nbdfuse.log"));
        let image = fuse.file();
        mkfs_ext4(&image, "hasttest");
        let mut fs = LoopMount::mount(&image, &fs_dir);
        sums = write_files(&fs_dir, &files);
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
    let out = fsck_ext4(&image);
    assert!(
        out.status.success(),
        "fsck.ext4 -n -f reports problems:\n{}",
        hast_testkit::output_text(&out)
    );
    let st = fuse.unmount().expect("nbdfuse was running");
    assert!(st.success(), "nbdfuse exited with {st}");
}

/// `losetup -j IMAGE`: the loop devices backed by IMAGE, one line each.
fn loop_devices_of(image: &std::path::Path) -> String {
    let out = run(Command::new("losetup").arg("-j").arg(image), timeout_s(30));
    expect_ok(&out, "losetup -j")
}

/// LoopMount::unmount returns only once no loop device is backed by the image,
/// even when something else still has the device open after umount (here for
/// 1.5 s). Otherwise the FUSE file under it stays open and `fusermount3 -u`
/// fails with EBUSY: tests/switchover.rs then saw nbdfuse killed after 30 s.
#[test]
fn loop_unmount_waits_until_the_image_is_let_go() {
    if !require_ext4(&[]) {
        return;
    }
    let dir = TempDir::new("loopgo");
    let image = dir.join("img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(32 * MIB))
        .expect("create image");
    mkfs_ext4(&image, "loopgo");
    let mut fs = LoopMount::mount(&image, &dir.join("fs"));
    let listed = loop_devices_of(&image);
    let dev = listed
        .split(':')
        .next()
        .filter(|d| d.starts_with("/dev/loop"))
        .unwrap_or_else(|| panic!("no loop device in `losetup -j`: {listed:?}"))
        .to_string();
    let holder = std::fs::File::open(&dev).unwrap_or_else(|e| panic!("open {dev}: {e}"));
    let hold = std::time::Duration::from_millis(1500);
    let t0 = std::time::Instant::now();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(hold);
        drop(holder);
    });
    fs.unmount();
    let waited = t0.elapsed();
    let left = loop_devices_of(&image);
    releaser.join().expect("releaser");
    assert_eq!(left.trim(), "", "still backed right after unmount");
    assert!(
        waited >= hold,
        "unmount returned after {waited:?}, the device was held {hold:?}"
    );
}
