//! kill -9 of hastd during a write-heavy run (issue 2): after a restart the metadata
//! is valid and every write acknowledged with FUA, or before a FLUSH that completed,
//! reads back — that version or a later one that was in flight, never older, never
//! torn.
//!
//! Per round: tests/py/versioned_writer.py keeps 64 versioned 4 KiB writes in flight
//! on one region (1 in 8 with FUA, a FLUSH every 256) and logs which are durable;
//! fio randwrite loads another region; hastd is SIGKILLed at a seeded random moment;
//! hastd restarts, `hastctl dump` must succeed, r0 goes primary again, and
//! tests/py/versioned_check.py checks every logged block against all logs so far.
//!
//! `HAST_CRASH_ROUNDS` (default 3) and `HAST_CRASH_SEED` (default: from the clock,
//! printed) control the run; a failure prints the seed to replay it.

use std::process::Command;
use std::time::{Duration, Instant};

use hast_testkit::{
    bins, output_text, python, python_command, require_python_nbd, require_tool, timeout_s,
    wait_for, Node, Proc, MIB,
};
use rand::{Rng, SeedableRng};

const FILE_SIZE: u64 = 256 * MIB;
/// The writer's region: 64 MiB starting at 16 MiB.
const WRITER_FIRST_LBA: u64 = (16 * MIB) / 4096;
const WRITER_BLOCKS: u64 = (64 * MIB) / 4096;
/// fio's region, disjoint from the writer's.
const FIO_OFFSET: u64 = 128 * MIB;
const FIO_SIZE: u64 = 96 * MIB;
/// Durable writes logged before the kill may happen.
const DURABLE_BEFORE_KILL_MIN: usize = 500;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn count_durable(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().filter(|l| l.starts_with("D ")).count())
        .unwrap_or(0)
}

#[test]
fn kill9_during_writes_loses_no_durable_write() {
    if !(require_python_nbd() && require_tool("fio")) {
        return;
    }
    let rounds = env_u64("HAST_CRASH_ROUNDS").unwrap_or(3);
    let seed = env_u64("HAST_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    // Printed straight to the terminal so it is there even if the test passes.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "crash test: HAST_CRASH_SEED={seed} HAST_CRASH_ROUNDS={rounds}"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut node = Node::primary(bins!(), "crash", FILE_SIZE);
    let datasize = node.datasize("r0");
    let uri = node.uri("r0");
    let dir = node.dir().to_path_buf();
    let mut logs: Vec<String> = Vec::new();

    for round in 0..rounds {
        let log = dir.join(format!("writer-{round}.log"));
        logs.push(log.display().to_string());
        let mut writer = Proc::spawn(
            &mut python_command(
                "versioned_writer.py",
                &[
                    "--uri",
                    &uri,
                    "--first-lba",
                    &WRITER_FIRST_LBA.to_string(),
                    "--blocks",
                    &WRITER_BLOCKS.to_string(),
                    "--log",
                    log.to_str().expect("utf8"),
                    "--seq-base",
                    &((round + 1) << 40).to_string(),
                    "--seed",
                    &(seed ^ round).to_string(),
                    "--duration",
                    "120",
                ],
            ),
            "versioned_writer",
            Some(&dir.join(format!("writer-{round}.out"))),
        )
        .expect("start writer");
        let mut fio = Proc::spawn(
            Command::new("fio").args([
                "--name=load",
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                &format!("--offset={FIO_OFFSET}"),
                &format!("--size={FIO_SIZE}"),
                "--time_based",
                "--runtime=120",
            ]),
            "fio",
            Some(&dir.join(format!("fio-{round}.out"))),
        )
        .expect("start fio");

        let started = Instant::now();
        let enough = wait_for(timeout_s(60), || {
            if !writer.is_running() {
                return Some(false);
            }
            (count_durable(&log) >= DURABLE_BEFORE_KILL_MIN).then_some(true)
        });
        assert_eq!(
            enough,
            Some(true),
            "round {round} (seed {seed}): writer made {} writes durable in {:?} and is {}:\n{}",
            count_durable(&log),
            started.elapsed(),
            if writer.is_running() {
                "running"
            } else {
                "gone"
            },
            hast_testkit::tail(&dir.join(format!("writer-{round}.out")), 20)
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..2000)));
        assert!(
            fio.is_running(),
            "fio (the load) stopped before the kill:\n{}",
            hast_testkit::tail(&dir.join(format!("fio-{round}.out")), 20)
        );
        node.kill9();

        let st = writer
            .wait_timeout(timeout_s(30))
            .unwrap_or_else(|| panic!("writer did not notice the dead server (seed {seed})"));
        let out =
            std::fs::read_to_string(dir.join(format!("writer-{round}.out"))).unwrap_or_default();
        assert!(
            st.success(),
            "writer failed in round {round} (seed {seed}): {st}\n{out}"
        );
        assert!(
            out.contains("connection lost"),
            "writer ended for another reason: {out}"
        );
        // fio notices the dead server too; stop it by PID if it has not yet.
        fio.stop(Duration::from_secs(5));

        node.start_daemon();
        let dump = node.dump("r0");
        assert_eq!(
            dump.get("datasize").and_then(|v| v.parse::<u64>().ok()),
            Some(datasize),
            "metadata after kill -9 (seed {seed}): {dump:?}"
        );
        node.promote("r0");
        let mut args: Vec<&str> = vec!["--uri", &uri];
        for l in &logs {
            args.push("--log");
            args.push(l);
        }
        let check = python("versioned_check.py", &args, timeout_s(300));
        assert!(
            check.status.success(),
            "round {round}: durable writes lost after kill -9 (HAST_CRASH_SEED={seed}):\n{}",
            output_text(&check)
        );
        let summary = String::from_utf8_lossy(&check.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        println!(
            "round {round}: {} durable writes before the kill; check {summary}",
            count_durable(&log)
        );
    }
}
