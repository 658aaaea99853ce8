//! Real NBD clients that nobody on this project wrote, against a primary with
//! `remote none`: nbdinfo, qemu-io, qemu-img, nbdcopy and fio (docs/overview.md §2).
//!
//! Each test starts its own hastd on free loopback ports with a small sparse
//! resource, so they run in parallel.

use std::path::Path;
use std::process::Command;

use hast_testkit::pair::qemu_io;
use hast_testkit::{
    bins, output_text, require_tool, require_tools, run, run_ok, timeout_s, Node, MIB,
};
use rand::{RngCore, SeedableRng};

/// The resource file: room for a 256 MiB image plus metadata.
const FILE_SIZE: u64 = 320 * MIB;

#[test]
fn nbdinfo_reports_size_and_flags() {
    if !require_tool("nbdinfo") {
        return;
    }
    let node = Node::primary(bins!(), "nbdinfo", FILE_SIZE);
    let datasize = node.datasize("r0");
    assert!(datasize > 0 && datasize.is_multiple_of(4096) && datasize < FILE_SIZE);
    assert!(
        FILE_SIZE - datasize <= MIB,
        "metadata takes {} bytes",
        FILE_SIZE - datasize
    );

    let json = run_ok(
        Command::new("nbdinfo").args(["--json", &node.uri("r0")]),
        timeout_s(30),
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("nbdinfo --json output");
    assert_eq!(v["protocol"], "newstyle-fixed", "{json}");
    assert_eq!(v["structured"], true, "{json}");
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "r0", "{json}");
    assert_eq!(e["export-size"].as_u64(), Some(datasize), "{json}");
    assert_eq!(e["is_read_only"], false, "{json}");
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_cache",
    ] {
        assert_eq!(e[flag], true, "{flag} in {json}");
    }
    assert!(e["can_multi_conn"].is_boolean(), "{json}");
    let contexts = e["contexts"].as_array().cloned().unwrap_or_default();
    assert!(
        contexts.iter().any(|c| c == "base:allocation"),
        "base:allocation missing: {json}"
    );
    let min = e["block_size_minimum"]
        .as_u64()
        .expect("block_size_minimum");
    let pref = e["block_size_preferred"]
        .as_u64()
        .expect("block_size_preferred");
    let max = e["block_size_maximum"]
        .as_u64()
        .expect("block_size_maximum");
    assert!(min.is_power_of_two() && min <= 65536, "minimum {min}");
    assert!(
        pref.is_power_of_two() && pref >= min.max(512),
        "preferred {pref}"
    );
    assert!(max >= pref && max >= MIB, "maximum {max}");
    assert_eq!(
        datasize % min,
        0,
        "size not a multiple of the minimum block size"
    );

    // BLOCK_STATUS through nbdinfo --map: extents tile the whole export.
    let map = run_ok(
        Command::new("nbdinfo").args(["--map", "--json", &node.uri("r0")]),
        timeout_s(60),
    );
    let extents: serde_json::Value = serde_json::from_str(&map).expect("nbdinfo --map --json");
    let mut next = 0u64;
    for e in extents.as_array().expect("array of extents") {
        assert_eq!(
            e["offset"].as_u64(),
            Some(next),
            "extents not contiguous: {map}"
        );
        let len = e["length"].as_u64().expect("length");
        assert!(len > 0, "{map}");
        next += len;
    }
    assert_eq!(next, datasize, "extents do not cover the export: {map}");

    // Same export over the per-resource Unix socket, and in the export list.
    let unix_size = run_ok(
        Command::new("nbdinfo").args(["--size", &node.layout().unix_uri("r0")]),
        timeout_s(30),
    );
    assert_eq!(unix_size.trim().parse::<u64>().ok(), Some(datasize));
    let list = run_ok(
        Command::new("nbdinfo").args([
            "--list",
            "--json",
            &format!("nbd://127.0.0.1:{}", node.layout().nbd_port),
        ]),
        timeout_s(30),
    );
    let l: serde_json::Value = serde_json::from_str(&list).expect("nbdinfo --list --json");
    let names: Vec<_> = l["exports"]
        .as_array()
        .map(|a| a.iter().map(|x| x["export-name"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec![serde_json::json!("r0")], "{list}");
}

#[test]
fn qemu_io_patterns_read_back_exactly() {
    if !require_tool("qemu-io") {
        return;
    }
    let node = Node::primary(bins!(), "qemuio", FILE_SIZE);
    let size = node.datasize("r0");
    let uri = node.uri("r0");
    let last = size - 64 * 1024;
    let writes: Vec<String> = [
        "write -P 0xa5 0 1M".to_string(),
        "write -P 0x5a 1M 64k".into(),
        "write -f -P 0xc3 2M 128k".into(), // FUA
        "write -P 0x77 3M 512k".into(),
        "write -z 3M 256k".into(), // WRITE_ZEROES over data
        "write -P 0x11 4M 1M".into(),
        "discard 4M 1M".into(), // TRIM: contents unspecified afterwards
        "write -P 0x66 6M 1M".into(),
        "write -z -u 6M 512k".into(), // WRITE_ZEROES, may punch a hole
        "write -P 0x42 5243392 512".into(), // one sector, 512-aligned
        format!("write -f -P 0xee {last} 64k"),
        "flush".into(),
    ]
    .to_vec();
    qemu_io(&uri, &writes);

    // A new connection (and so nothing cached client-side) reads everything back.
    let reads: Vec<String> = [
        "read -P 0xa5 0 1M".to_string(),
        "read -P 0x5a 1M 64k".into(),
        "read -P 0 1114112 960k".into(), // 1M+64k .. 2M never written
        "read -P 0xc3 2M 128k".into(),
        "read -P 0 3M 256k".into(),
        "read -P 0x77 3407872 256k".into(), // 3M+256k
        "read -P 0 5242880 512".into(),
        "read -P 0x42 5243392 512".into(),
        "read -P 0 5243904 3584".into(),
        "read -P 0 6M 512k".into(),
        "read -P 0x66 6815744 512k".into(), // 6M+512k
        format!("read -P 0xee {last} 64k"),
        format!("read -P 0 {} 64k", last - 64 * 1024),
    ]
    .to_vec();
    qemu_io(&uri, &reads);

    // qemu's pattern check itself is trusted only because it can fail.
    let out = run(
        Command::new("qemu-io").args(["-f", "raw", &uri, "-c", "read -P 0x5b 1M 64k"]),
        timeout_s(60),
    );
    assert!(
        !out.status.success(),
        "qemu-io accepted a wrong pattern:\n{}",
        output_text(&out)
    );

    // The same data over the Unix socket.
    qemu_io(
        &node.layout().unix_uri("r0"),
        &[
            "read -P 0xa5 0 1M".to_string(),
            "read -P 0xc3 2M 128k".into(),
        ],
    );
}

#[test]
fn nbdcopy_random_image_in_and_out_is_identical() {
    if !require_tools(&["nbdcopy", "qemu-img"]) {
        return;
    }
    let node = Node::primary(bins!(), "nbdcopy", FILE_SIZE);
    let uri = node.uri("r0");
    let src = node.dir().join("src.raw");
    let out = node.dir().join("out.raw");
    let mut data = vec![0u8; (256 * MIB) as usize];
    rand::rngs::StdRng::seed_from_u64(0x4841_5354).fill_bytes(&mut data);
    // Leave a few holes so the sparse paths (zero/trim) get exercised too.
    for hole in [3usize, 17, 200] {
        let start = hole * MIB as usize;
        data[start..start + MIB as usize].fill(0);
    }
    std::fs::write(&src, &data).expect("write source image");
    drop(data);

    run_ok(
        Command::new("nbdcopy").arg("--flush").arg(&src).arg(&uri),
        timeout_s(300),
    );
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&out), timeout_s(300));
    let cmp = qemu_img_compare(&src, &out);
    assert!(
        cmp.status.success(),
        "images differ:\n{}",
        output_text(&cmp)
    );
    // qemu itself as the client, straight from the export.
    let cmp = qemu_img_compare(&src, &uri);
    assert!(
        cmp.status.success(),
        "export differs from source:\n{}",
        output_text(&cmp)
    );

    // Negative control: the comparison does notice a single changed byte.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&out)
        .expect("open out");
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x55], 123_456_789).expect("poke");
    drop(f);
    let cmp = qemu_img_compare(&src, &out);
    assert_eq!(cmp.status.code(), Some(1), "{}", output_text(&cmp));
}

/// `qemu-img compare` of two raw images (files or NBD URIs): exit 0 identical,
/// 1 different.
fn qemu_img_compare(a: &Path, b: impl AsRef<std::ffi::OsStr>) -> std::process::Output {
    run(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(a)
            .arg(b),
        timeout_s(300),
    )
}

fn fio_verify_args(uri: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=hast-verify",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        "--size=64m",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--randrepeat=1",
        "--output-format=json",
    ])
    .args(extra);
    cmd
}

fn fio_json(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print warnings before the JSON document.
    let start = text.find('{').unwrap_or(0);
    serde_json::from_str(&text[start..])
        .unwrap_or_else(|e| panic!("fio output is not JSON ({e}):\n{}", output_text(out)))
}

#[test]
fn fio_randwrite_with_crc32c_verify_passes_and_survives_restart() {
    if !require_tool("fio") {
        return;
    }
    let mut node = Node::primary(bins!(), "fio", FILE_SIZE);
    let uri = node.uri("r0");

    let out = run(
        &mut fio_verify_args(&uri, &["--do_verify=1"]),
        timeout_s(300),
    );
    let v = fio_json(&out);
    assert!(out.status.success(), "fio failed:\n{}", output_text(&out));
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{v}");
    assert_eq!(job["write"]["io_kbytes"].as_u64(), Some(64 * 1024), "{v}");
    assert!(
        job["read"]["io_kbytes"].as_u64().unwrap_or(0) >= 64 * 1024,
        "no verify reads: {v}"
    );

    // A clean stop and start keeps every block: verify only, from a new process.
    node.restart();
    node.promote("r0");
    let out = run(
        &mut fio_verify_args(&uri, &["--verify_only"]),
        timeout_s(300),
    );
    let v = fio_json(&out);
    assert!(
        out.status.success(),
        "fio verify after restart failed:\n{}",
        output_text(&out)
    );
    assert_eq!(v["jobs"][0]["error"], 0, "{v}");
}

#[test]
fn several_connections_in_parallel_with_qemu_io() {
    if !require_tool("qemu-io") {
        return;
    }
    let node = Node::primary(bins!(), "multi", 128 * MIB);
    let uri = node.uri("r0");
    // Four clients at once, each on its own region, then each reads back the others'.
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                let cmds: Vec<String> = (0..16u64)
                    .map(|k| {
                        format!(
                            "aio_write -P {} {} 256k",
                            0x10 + i,
                            (i * 16 + k) * 256 * 1024
                        )
                    })
                    .chain(std::iter::once("aio_flush".to_string()))
                    .collect();
                qemu_io(&uri, &cmds);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
    let reads: Vec<String> = (0..4u64)
        .map(|i| format!("read -P {} {} 4M", 0x10 + i, i * 4 * MIB))
        .collect();
    qemu_io(&uri, &reads);
}
