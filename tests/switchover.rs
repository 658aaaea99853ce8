//! Manual switchover, hastctl(8)'s second example, with ext4 on top (issue 3):
//!
//! ```text
//! nodeA# umount /mnt/test            (here: umount, then fusermount -u the nbdfuse)
//! nodeA# hastctl role secondary test
//! nodeB# hastctl role primary test
//! nodeB# fsck -t ufs /dev/hast/test  (here: nbdfuse of B's export, fsck.ext4 -n)
//! nodeB# mount /dev/hast/test /mnt/test
//! ```
//!
//! The files written on A are on B, byte for byte (sha256), the filesystem is
//! clean, and after the switch the pair is complete again with identical copies.
//! Needs root, /dev/fuse and loop devices; mounts are undone by guards.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hast_testkit::tools::{fsck_ext4, mkfs_ext4, require_ext4, sha256sum, write_files};
use hast_testkit::{bins, output_text, timeout_s, LoopMount, NbdFuse, Pair, Side, MIB};
use rand::{Rng, RngCore, SeedableRng};

/// Random files: relative path -> contents.
fn make_files(seed: u64) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut files = BTreeMap::new();
    for (i, size) in [0usize, 1, 4095, 4096, 65_537, 1_000_003, 5 * MIB as usize]
        .iter()
        .enumerate()
    {
        let mut data = vec![0u8; *size];
        rng.fill_bytes(&mut data);
        files.insert(PathBuf::from(format!("f{i}.bin")), data);
    }
    for d in 0..12 {
        let mut data = vec![0u8; rng.gen_range(1..50_000)];
        rng.fill_bytes(&mut data);
        files.insert(PathBuf::from(format!("d{}/s{d}/file{d}.dat", d % 3)), data);
    }
    files
}

#[test]
fn switchover_as_in_hastctl_8_keeps_an_ext4_filesystem() {
    if !require_ext4(&["sha256sum"]) {
        return;
    }
    let mut pair = Pair::builder(bins!())
        .tag("switch")
        .file_size(256 * MIB)
        .start();
    pair.setup(Side::A, timeout_s(60));
    let dir = pair.node(Side::A).dir().to_path_buf();
    let files = make_files(0x5357_4954);
    let sums;

    // On A: nbdfuse, mkfs.ext4, mount, files, umount, fusermount -u.
    {
        let mut fuse = NbdFuse::mount(
            &dir.join("fuse-a"),
            &pair.uri(Side::A),
            &dir.join("nbdfuse-a.log"),
        );
        let image = fuse.file();
        mkfs_ext4(&image, "switch");
        let fs_dir = dir.join("fs-a");
        let mut fs = LoopMount::mount(&image, &fs_dir);
        sums = write_files(&fs_dir, &files);
        fs.unmount();
        let st = fuse.unmount().expect("nbdfuse was running");
        assert!(st.success(), "nbdfuse on A exited with {st}");
    }

    // The switch.
    pair.make_secondary(Side::A);
    pair.make_primary(Side::B);
    assert!(
        hast_testkit::nbd_info(
            &pair.node(Side::A).layout().nbd_addr(),
            "r0",
            std::time::Duration::from_secs(5)
        )
        .is_err(),
        "A still offers r0 after `role secondary`"
    );

    // On B: nbdfuse, fsck -n, mount, files intact.
    let mut fuse = NbdFuse::mount(
        &dir.join("fuse-b"),
        &pair.uri(Side::B),
        &dir.join("nbdfuse-b.log"),
    );
    let image = fuse.file();
    let out = fsck_ext4(&image);
    assert!(
        out.status.success(),
        "fsck.ext4 -n -f on B reports problems:\n{}",
        output_text(&out)
    );
    {
        let fs_dir = dir.join("fs-b");
        let mut fs = LoopMount::mount(&image, &fs_dir);
        for (rel, data) in &files {
            let p = fs_dir.join(rel);
            let got =
                std::fs::read(&p).unwrap_or_else(|e| panic!("read {} on B: {e}", p.display()));
            assert!(got == *data, "{} differs on B", rel.display());
            assert_eq!(sha256sum(&p), sums[rel], "{}", rel.display());
        }
        // B is now the writer: one more file, replicated back to A.
        std::fs::write(fs_dir.join("written-on-b.txt"), b"after the switch\n").expect("write on B");
        fs.unmount();
    }
    let st = fuse.unmount().expect("nbdfuse was running");
    assert!(st.success(), "nbdfuse on B exited with {st}");

    pair.wait_complete(timeout_s(60));
    pair.assert_identical(timeout_s(20));
    let a = pair.status(Side::A);
    assert_eq!(a.role, "secondary", "{}", a.brief());
}
