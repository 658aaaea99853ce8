//! The cluster workload and checker (`tests/py/follow_writer.py`,
//! `tests/py/cluster_check.py`) against one real hastd, without namespaces:
//!
//! - the writer follows its node through a kill -9 and a restart + promotion
//!   (reconnects to the same URI, measures the outage), and the checker finds every
//!   acknowledged-durable write, no phantom and no torn block, and every ack inside
//!   one of the node's primary intervals from hastd's log;
//! - the checker is not blind: blocks tampered with in the component file while
//!   hastd is stopped (zeroes and an older version over durable ones, a version
//!   never written, a torn block) are reported as LOST, PHANTOM and CORRUPT, and
//!   `--compare` finds the tampered blocks;
//! - synthetic hastd logs with two primaries in epoch 3 give SPLIT-BRAIN, an ack
//!   outside the primary interval gives ACK-OUTSIDE-PRIMARY (a warning within the
//!   slack); the checker's pure parts pass their table tests (`--self-test`).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use hast_testkit::{
    bins, output_text, python, python_command, require_python_nbd, tail, timeout_s, wait_for, Node,
    Proc, TempDir, MIB, PYTHON,
};

const FILE_SIZE: u64 = 128 * MIB;
/// The writer's region: 8 MiB at 4 MiB (2048 blocks of 4 KiB).
const FIRST_LBA: u64 = 1024;
const BLOCKS: u64 = 2048;
const BLOCK: u64 = 4096;

fn count(history: &Path, prefix: &str) -> usize {
    std::fs::read_to_string(history)
        .map(|t| t.lines().filter(|l| l.starts_with(prefix)).count())
        .unwrap_or(0)
}

/// The JSON line a script printed (the first line starting with `{`).
fn json_line(text: &str) -> serde_json::Value {
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary in:\n{text}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line}: {e}"))
}

fn check(args: &[&str]) -> (Output, serde_json::Value) {
    let out = python("cluster_check.py", args, timeout_s(300));
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "cluster_check.py failed to run ({:?}):\n{}",
        out.status,
        output_text(&out)
    );
    let v = json_line(&String::from_utf8_lossy(&out.stdout));
    (out, v)
}

fn violations(v: &serde_json::Value, kind: &str) -> u64 {
    v.pointer(&format!("/violations/{kind}"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no count of {kind} in {v}"))
}

/// Per LBA: (newest durable seq, every invoked seq), from a history file.
fn durable_and_invoked(history: &Path) -> std::collections::BTreeMap<u64, (Option<u64>, Vec<u64>)> {
    let mut m = std::collections::BTreeMap::<u64, (Option<u64>, Vec<u64>)>::new();
    let text = std::fs::read_to_string(history).expect("read history");
    for l in text.lines() {
        let p: Vec<&str> = l.split_whitespace().collect();
        let num = |i: usize| p.get(i).and_then(|s| s.parse::<u64>().ok());
        match (p.first().copied(), num(3), num(4)) {
            (Some("invoke"), Some(lba), Some(seq)) => m.entry(lba).or_default().1.push(seq),
            (Some("ok"), Some(lba), Some(seq)) if p.get(5) == Some(&"1") => {
                let e = m.entry(lba).or_default();
                e.0 = e.0.max(Some(seq));
            }
            (Some("durable"), Some(lba), Some(seq)) => {
                let e = m.entry(lba).or_default();
                e.0 = e.0.max(Some(seq));
            }
            _ => {}
        }
    }
    m
}

/// `vblock.make(lba, seq)`, from the python module itself.
fn vblock(lba: u64, seq: u64) -> Vec<u8> {
    let py_dir = hast_testkit::py_script("");
    let code = format!(
        "import sys; sys.path.insert(0, {dir:?}); import vblock; \
         sys.stdout.buffer.write(vblock.make({lba}, {seq}))",
        dir = py_dir.display().to_string()
    );
    let out = hast_testkit::run(
        std::process::Command::new(PYTHON).args(["-B", "-c", &code]),
        timeout_s(30),
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(out.stdout.len() as u64, BLOCK);
    out.stdout
}

#[test]
fn writer_follows_a_restarted_primary_and_the_checker_catches_tampering() {
    if !require_python_nbd() {
        return;
    }
    let mut node = Node::primary(bins!(), "ctools", FILE_SIZE);
    let uri = node.uri("r0");
    let dir = node.dir().to_path_buf();
    let history = dir.join("history");
    let stop = dir.join("stop");
    let hist = history.to_str().expect("utf8");
    let mut writer = Proc::spawn(
        &mut python_command(
            "follow_writer.py",
            &[
                "--uri",
                &uri,
                "--history",
                hist,
                "--first-lba",
                &FIRST_LBA.to_string(),
                "--blocks",
                &BLOCKS.to_string(),
                "--seq-base",
                "1000",
                "--seed",
                "7",
                "--duration",
                "300",
                "--reconnect-timeout",
                "60",
                "--stop-file",
                stop.to_str().expect("utf8"),
            ],
        ),
        "follow_writer",
        Some(&dir.join("writer.out")),
    )
    .expect("start follow_writer");
    let wout = dir.join("writer.out");
    let progress = |n: usize, what: &str, writer: &mut Proc| {
        let ok = wait_for(timeout_s(60), || {
            if !writer.is_running() {
                return Some(false);
            }
            (count(&history, "ok ") >= n).then_some(true)
        });
        assert_eq!(
            ok,
            Some(true),
            "{what}: {} acks so far:\n{}",
            count(&history, "ok "),
            tail(&wout, 30)
        );
    };
    progress(500, "before the kill", &mut writer);

    node.kill9();
    std::thread::sleep(std::time::Duration::from_millis(700));
    node.start_daemon();
    node.promote("r0");
    let acked_before = count(&history, "ok ");
    progress(acked_before + 500, "after restart + promotion", &mut writer);
    assert!(count(&history, "connect ") >= 2, "{}", tail(&wout, 30));

    std::fs::write(&stop, b"").expect("stop file");
    let st = writer
        .wait_timeout(timeout_s(60))
        .unwrap_or_else(|| panic!("writer did not stop:\n{}", tail(&wout, 30)));
    let text = std::fs::read_to_string(&wout).unwrap_or_default();
    assert!(st.success(), "writer exit {st}:\n{text}");
    let s = json_line(&text);
    eprintln!("writer: {s}");
    assert_eq!(s["end"], "stopped", "{s}");
    assert!(s["reconnects"].as_u64() >= Some(1), "{s}");
    let outages = s["outages"].as_array().expect("outages");
    assert_eq!(outages.len(), 1, "{s}");
    let o = &outages[0];
    assert_eq!(o["from"], uri.as_str());
    assert_eq!(o["to"], uri.as_str());
    let after_loss = o["after_loss_s"].as_f64().expect("outage resolved");
    assert!(after_loss > 0.5 && after_loss < 60.0, "{o}");
    assert!(s["max_no_ack_s"].as_f64() >= Some(after_loss), "{s}");
    assert!(
        count(&history, "durable ") > 0,
        "no FLUSH made anything durable"
    );
    assert!(count(&history, "fail ") as u64 == s["failed"].as_u64().expect("failed"));

    let log = node.log_path().display().to_string();
    let hastd_log = format!("nodea={log}");
    let node_uri = format!("nodea={uri}");
    let base = [
        "--uri",
        &uri,
        "--history",
        hist,
        "--hastd-log",
        &hastd_log,
        "--node-uri",
        &node_uri,
    ];
    let (out, v) = check(&base);
    eprintln!("check: {v}");
    assert!(
        out.status.success(),
        "clean run flagged:\n{}",
        output_text(&out)
    );
    let lbas_checked = v["lbas"].as_u64().expect("lbas");
    assert!((500..=BLOCKS).contains(&lbas_checked), "{v}");
    assert!(v["durable_lbas"].as_u64() > Some(100), "{v}");
    let ivs = v["primary_intervals"]["nodea"]
        .as_array()
        .expect("intervals");
    assert_eq!(ivs.len(), 2, "one primary interval per daemon run: {v}");

    // Tamper with the component file while hastd is stopped.
    let data_off: u64 = node.dump("r0")["localoff"]
        .parse()
        .expect("localoff in dump");
    node.stop();
    let img = node.layout().local("r0");
    let pristine = dir.join("pristine.img");
    std::fs::copy(&img, &pristine).expect("copy image");
    let lbas = durable_and_invoked(&history);
    let mut durable = lbas.iter().filter(|(_, (d, _))| d.is_some());
    let (&zeroed, _) = durable.next().expect("a durable LBA");
    let (&older, (d, invoked)) = durable
        .find(|(_, (d, inv))| inv.iter().any(|s| Some(*s) < *d))
        .expect("a durable LBA written more than once");
    let old_seq = *invoked
        .iter()
        .filter(|s| Some(**s) < *d)
        .max()
        .expect("older");
    let (&phantom, _) = lbas
        .iter()
        .find(|(l, _)| ![zeroed, older].contains(l))
        .expect("a third LBA");
    let (&torn, _) = lbas
        .iter()
        .find(|(l, _)| ![zeroed, older, phantom].contains(l))
        .expect("a fourth LBA");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .expect("open image");
    let at = |lba: u64| data_off + lba * BLOCK;
    f.write_all_at(&vec![0u8; BLOCK as usize], at(zeroed))
        .expect("zero");
    f.write_all_at(&vblock(older, old_seq), at(older))
        .expect("older");
    f.write_all_at(&vblock(phantom, 1 << 50), at(phantom))
        .expect("phantom");
    let mut half = vec![0u8; BLOCK as usize];
    f.read_exact_at(&mut half, at(torn)).expect("read");
    half[2048..].copy_from_slice(&vblock(torn, 1 << 51)[2048..]);
    f.write_all_at(&half, at(torn)).expect("torn");
    f.sync_all().expect("sync image");
    drop(f);

    let off = data_off.to_string();
    let (img_s, pristine_s) = (img.display().to_string(), pristine.display().to_string());
    let (out, v) = check(&["--compare", &pristine_s, &img_s, "--offset", &off]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_eq!(violations(&v, "DIFFER"), 1);
    assert_eq!(v["compare"]["differing_blocks"], 4, "{v}");
    let first = v["compare"]["first_difference"].as_u64().expect("offset");
    let lowest = at(*[zeroed, older, phantom, torn].iter().min().expect("min"));
    assert!(
        (lowest..lowest + BLOCK).contains(&first),
        "{first} vs block at {lowest}"
    );
    let (out, v) = check(&["--compare", &pristine_s, &pristine_s, "--offset", &off]);
    assert!(out.status.success() && v["compare"]["differing_blocks"] == 0);

    node.start_daemon();
    node.promote("r0");
    let (out, v) = check(&base[..4]);
    let text = output_text(&out);
    eprintln!("tampered check: {v}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "tampering not detected:\n{text}"
    );
    assert_eq!(violations(&v, "LOST"), 2, "{text}");
    assert_eq!(violations(&v, "PHANTOM"), 1, "{text}");
    assert_eq!(violations(&v, "CORRUPT"), 1, "{text}");
    for (kind, lba) in [
        ("LOST", zeroed),
        ("LOST", older),
        ("PHANTOM", phantom),
        ("CORRUPT", torn),
    ] {
        let needle = format!("{kind} LBA {lba} ");
        assert!(text.contains(&needle), "missing `{needle}` in:\n{text}");
    }
}

const T: &str = "2026-11-18T11:06";

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn two_primaries_in_one_epoch_are_a_split_brain() {
    let dir = TempDir::new("ctools-logs");
    let a = write(
        &dir,
        "a.log",
        &format!(
            "=== hastd -F\n\
             {T}:40.000000Z  INFO role changed resource=r0 role=secondary epoch=2\n\
             {T}:41.000000Z  INFO role changed resource=r0 role=primary epoch=3\n\
             {T}:50.000000Z  INFO role changed resource=r0 role=secondary epoch=3\n"
        ),
    );
    let b_same = write(
        &dir,
        "b3.log",
        &format!("{T}:45.000000Z  INFO role changed resource=r0 role=primary epoch=3\n"),
    );
    let b_next = write(
        &dir,
        "b4.log",
        &format!("{T}:51.000000Z  INFO role changed resource=r0 role=primary epoch=4\n"),
    );
    let arg = |n: &str, p: &Path| format!("{n}={}", p.display());
    let (out, v) = check(&[
        "--hastd-log",
        &arg("a", &a),
        "--hastd-log",
        &arg("b", &b_same),
    ]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(violations(&v, "SPLIT-BRAIN"), 1, "{text}");
    assert!(
        text.contains("SPLIT-BRAIN resource r0 epoch 3: primary on a, b"),
        "{text}"
    );
    let (out, v) = check(&[
        "--hastd-log",
        &arg("a", &a),
        "--hastd-log",
        &arg("b", &b_next),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(violations(&v, "SPLIT-BRAIN"), 0);

    // Acks against the intervals: a is primary 41..50 (T = 11:06).
    let t41 = 1_795_000_001.0_f64; // 2026-11-18T11:06:41Z
    let hist = |name: &str, t: f64| {
        write(
            &dir,
            name,
            &format!(
                "connect {t:.6} nbd://x/r0\ninvoke {t:.6} nbd://x/r0 5 1\nok {t:.6} nbd://x/r0 5 1 1\n"
            ),
        )
    };
    let inside = hist("in", t41 + 4.0);
    let near = hist("near", t41 + 9.5);
    let outside = hist("out", t41 + 20.0);
    let run_ack = |h: &Path| {
        check(&[
            "--history",
            &h.display().to_string(),
            "--hastd-log",
            &arg("a", &a),
            "--node-uri",
            "a=nbd://x/r0",
        ])
    };
    let (out, v) = run_ack(&inside);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(v["warnings"], 0, "{v}");
    let (out, v) = run_ack(&near);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(v["warnings"], 1, "{}", output_text(&out));
    let (out, v) = run_ack(&outside);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_eq!(violations(&v, "ACK-OUTSIDE-PRIMARY"), 1);

    // Usage errors are 2, never 1.
    let bad = python(
        "cluster_check.py",
        &["--hastd-log", "nonsense"],
        timeout_s(30),
    );
    assert_eq!(bad.status.code(), Some(2), "{}", output_text(&bad));
    let missing = python(
        "cluster_check.py",
        &["--hastd-log", "a=/nonexistent/log"],
        timeout_s(30),
    );
    assert_eq!(missing.status.code(), Some(2), "{}", output_text(&missing));
}

#[test]
fn checker_pure_parts_pass_their_tables() {
    let out = python("cluster_check.py", &["--self-test"], timeout_s(60));
    assert!(out.status.success(), "{}", output_text(&out));
}
