//! Replication between two hastd processes on loopback (issue 3, docs/overview.md §4.2, §4.3).
//!
//! - writes through NBD (nbdcopy of a random file, qemu-io patterns, write-zeroes,
//!   trim) arrive on the secondary, and after sync both data areas are
//!   byte-identical, in each of `fullsync`, `memsync` and `async`;
//! - the secondary goes away under a write load — kill -9, the link cut by a proxy,
//!   the link silenced (blackhole) — writes continue without error (after at most
//!   about `timeout` for a silent link), and when it is back only the dirty extents
//!   are resynced: the primary's `resynced_bytes` grows by about the dirtied amount,
//!   not by the device size; copies identical afterwards;
//! - either node is killed at a seeded random point during a (rate-limited) resync:
//!   after a restart the resync resumes where it stopped and completes, no write
//!   acknowledged to the versioned-block writer is lost, copies identical.
//!
//! `HAST_RESYNC_SEED` replays the random kill points (printed at the start).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hast_testkit::pair::{qemu_io, versioned_check, Fio, VersionedWriter};
use hast_testkit::{bins, require_python_nbd, require_tools, run_ok, timeout_s, Pair, Side, MIB};
use rand::{Rng, RngCore, SeedableRng};

/// Extent size hastd uses by default.
const EXTENT: u64 = 2 * MIB;
/// `timeout` in the pair's config (seconds).
const TIMEOUT_S: u64 = 3;

fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn seed_from(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        })
}

/// Bytes `[off, off+len)` of `side`'s data area, read from its image file.
fn read_area(pair: &Pair, side: Side, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let (base, _) = pair.data_area(side);
    let f = std::fs::File::open(pair.image(side)).expect("open image");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, base + off).expect("read image");
    buf
}

// ---------------------------------------------------------------------------
// (a) writes arrive on the secondary, in every mode

fn writes_arrive(mode: &str, options: &[&str]) {
    if !require_tools(&["qemu-io", "nbdcopy"]) {
        return;
    }
    let mut builder = Pair::builder(bins!())
        .tag(&format!("arrive-{mode}"))
        .replication(mode)
        .file_size(512 * MIB);
    for o in options {
        builder = builder.option(o);
    }
    let mut pair = builder.start();
    pair.setup(Side::A, timeout_s(60));
    let uri = pair.uri(Side::A);
    let dir = pair.node(Side::A).dir().to_path_buf();

    // A random 64 MiB file copied to the start of the export.
    let src = dir.join("random.bin");
    let mut data = vec![0u8; (64 * MIB) as usize];
    rand::rngs::StdRng::seed_from_u64(0x6861_7374).fill_bytes(&mut data);
    std::fs::write(&src, &data).expect("write random file");
    run_ok(
        std::process::Command::new("nbdcopy")
            .arg("--destination-is-zero")
            .arg(&src)
            .arg(&uri),
        timeout_s(120),
    );
    // Patterns, zeroes and a trim beyond it: aligned, unaligned, across extents.
    let cmds: Vec<String> = [
        "write -P 0x11 100M 1M",
        "write -P 0x22 130560k 4k", // 127.5 MiB: the last 4 KiB of an extent
        "write -P 0x33 200M 5M",    // spans three extents
        "write -P 0x44 300M 512",
        "write -P 0x55 301M 1536", // 3 sectors
        "write -P 0x66 400M 8M",
        "write -z 402M 2M", // zeroes inside the 0x66 range
        "discard 406M 2M",  // trim inside it too
        "flush",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    qemu_io(&uri, &cmds);

    pair.wait_complete(timeout_s(60));
    pair.assert_identical(timeout_s(20));

    // The secondary has the data itself (not merely the same zeroes as A).
    let b_head = read_area(&pair, Side::B, 0, data.len());
    assert!(
        b_head == data,
        "B's first 64 MiB differ from the file copied to A"
    );
    for (off, len, byte) in [
        (100 * MIB, MIB, 0x11u8),
        (130_560 * 1024, 4096, 0x22),
        (200 * MIB, 5 * MIB, 0x33),
        (300 * MIB, 512, 0x44),
        (301 * MIB, 1536, 0x55),
        (400 * MIB, 2 * MIB, 0x66),
        (402 * MIB, 2 * MIB, 0),
        (404 * MIB, 2 * MIB, 0x66),
        (406 * MIB, 2 * MIB, 0),
    ] {
        let got = read_area(&pair, Side::B, off, len as usize);
        assert!(
            got.iter().all(|b| *b == byte),
            "{mode}: B's bytes at {off}+{len} are not all {byte:#04x}"
        );
    }
    // Both ends agree that the primary served the writes.
    let a = pair.status(Side::A);
    assert!(a.writes > 0, "A served no writes? {}", a.brief());
}

#[test]
fn writes_arrive_on_the_secondary_fullsync() {
    writes_arrive("fullsync", &[]);
}

#[test]
fn writes_arrive_on_the_secondary_memsync() {
    writes_arrive("memsync", &[]);
}

#[test]
fn writes_arrive_on_the_secondary_async() {
    writes_arrive("async", &[]);
}

#[test]
fn writes_arrive_with_sha256_checksum_and_lz4_compression() {
    writes_arrive("fullsync", &["checksum sha256", "compression lz4"]);
}

#[test]
fn writes_arrive_with_crc32c_checksum_and_no_compression() {
    writes_arrive("memsync", &["checksum crc32c", "compression none"]);
}

// ---------------------------------------------------------------------------
// a stale primary reads the extents it lacks from the peer while it resyncs

#[test]
fn stale_primary_reads_newer_extents_from_the_peer_during_resync() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let mut pair = Pair::builder(bins!())
        .tag("stale")
        .file_size(512 * MIB)
        .create_args(&["-k", "4"])
        .start();
    pair.setup(Side::A, timeout_s(60));
    // Slow resyncs from now on (daemons started later read it from the file).
    pair.reconfigure(&["resync_rate 8M"]);

    // B goes away; A is written (A's copy is now the newer one) and stopped.
    pair.stop(Side::B);
    let extents: Vec<u64> = (0..16).map(|i| 40 + i * 3).collect();
    let pattern = |e: u64| (0x20 + e % 200) as u8;
    let cmds: Vec<String> = extents
        .iter()
        .map(|e| format!("write -P 0x{:02x} {} 2M", pattern(*e), e * EXTENT))
        .collect();
    qemu_io(&pair.uri(Side::A), &cmds);
    pair.stop(Side::A);

    // A comes back as secondary, B (stale) becomes primary: the resync goes from
    // A to B, and meanwhile B must serve A's newer data, not its own old copy.
    pair.start_daemon(Side::A);
    pair.make_secondary(Side::A);
    pair.start_daemon(Side::B);
    pair.make_primary(Side::B);
    let st = pair.wait_status(Side::B, timeout_s(20), "resync from A running", |s| {
        s.sync.is_some()
    });
    say(&format!("stale primary B: {}", st.brief()));
    let uri_b = pair.uri(Side::B);
    let reads: Vec<String> = extents
        .iter()
        .rev() // the last extents are the ones the resync reaches last
        .map(|e| format!("read -P 0x{:02x} {} 2M", pattern(*e), e * EXTENT))
        .collect();
    let t = Instant::now();
    let out = qemu_io(&uri_b, &reads);
    assert!(
        !out.contains("Pattern verification failed"),
        "stale primary B served its old data:\n{out}\n{}",
        pair.describe()
    );
    let st = pair.status(Side::B);
    say(&format!(
        "reads on B took {:?}; after them: {}",
        t.elapsed(),
        st.brief()
    ));
    assert!(
        st.sync.is_some(),
        "the resync ended before the reads did; the test proved nothing: {}",
        st.brief()
    );
    pair.wait_complete(timeout_s(60));
    pair.assert_identical(timeout_s(20));
}

// ---------------------------------------------------------------------------
// (b), (c) the secondary goes away under load; only dirty extents are resynced

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// kill -9 of the secondary's hastd.
    Kill,
    /// The proxy drops every connection and refuses new ones.
    Cut,
    /// The proxy stops moving bytes; only `timeout` can tell.
    Blackhole,
}

/// Extents written by qemu-io while the secondary is away (outside fio's region),
/// so we know for sure they must be resynced.
const OUTAGE_EXTENTS: [u64; 3] = [300, 400, 480];
/// keepdirty given to `hastctl create`.
const KEEPDIRTY: u64 = 8;
/// fio's region: 16 extents at 64 MiB.
const FIO_OFFSET: u64 = 64 * MIB;
const FIO_SIZE: u64 = 32 * MIB;

fn outage_resyncs_only_dirty(outage: Outage) {
    if !require_tools(&["qemu-io", "fio"]) {
        return;
    }
    let tag = format!("{outage:?}").to_lowercase();
    let mut builder = Pair::builder(bins!())
        .tag(&format!("outage-{tag}"))
        .file_size(GIB_FILE)
        .create_args(&["-k", &KEEPDIRTY.to_string()]);
    if outage != Outage::Kill {
        builder = builder.proxy();
    }
    let mut pair = builder.start();
    pair.setup(Side::A, timeout_s(60));
    let datasize = pair.datasize();
    let uri = pair.uri(Side::A);
    let dir = pair.node(Side::A).dir().to_path_buf();
    let base = pair.status(Side::A).resynced_bytes;

    // The load: 4 KiB random writes over 16 extents for the whole outage and after.
    let runtime_s = 16;
    let fio = Fio::randwrite(&uri, FIO_OFFSET, FIO_SIZE, 8, runtime_s, &dir, "load");
    std::thread::sleep(Duration::from_secs(2));
    let writes_before = pair.status(Side::A).writes;
    let t_out = Instant::now();
    match outage {
        Outage::Kill => pair.kill9(Side::B),
        Outage::Cut => pair.proxy().cut(),
        Outage::Blackhole => pair.proxy().blackhole(),
    }
    // The primary notices (at once for a kill or a cut, after `timeout` when silent)
    // and keeps serving, degraded.
    let st = pair.wait_status(Side::A, timeout_s(TIMEOUT_S * 3 + 5), "degraded", |s| {
        s.status == "degraded"
    });
    let noticed = t_out.elapsed();
    say(&format!(
        "{outage:?}: A degraded after {noticed:?}: {}",
        st.brief()
    ));
    if outage != Outage::Kill {
        // The secondary, too, lets go of a primary it no longer hears from.
        let st = pair.wait_status(Side::B, timeout_s(TIMEOUT_S + 3), "primary gone", |s| {
            s.peer.as_deref() != Some("connected") && s.status != "complete"
        });
        say(&format!(
            "{outage:?}: B after {:?}: {}",
            t_out.elapsed(),
            st.brief()
        ));
    }
    // Known extents written while apart.
    let cmds: Vec<String> = OUTAGE_EXTENTS
        .iter()
        .map(|e| format!("write -P 0x{:02x} {} 1M", 0x40 + e % 64, e * EXTENT + 4096))
        .collect();
    let t_q = Instant::now();
    qemu_io(&uri, &cmds);
    assert!(
        t_q.elapsed() < timeout_s(TIMEOUT_S + 2),
        "writes while degraded took {:?}",
        t_q.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    let writes_during = pair.status(Side::A).writes;
    assert!(
        writes_during > writes_before + 100,
        "the primary stopped serving during the outage ({writes_before} -> {writes_during} writes)"
    );

    // The secondary comes back.
    match outage {
        Outage::Kill => {
            pair.start_daemon(Side::B);
            pair.make_secondary(Side::B);
        }
        Outage::Cut | Outage::Blackhole => pair.proxy().heal(),
    }
    let res = fio.wait(timeout_s(runtime_s + 60));
    assert!(
        res.success && res.error == 0,
        "{outage:?}: fio saw errors while the secondary was away:\n{}",
        res.text
    );
    assert!(res.write_bytes > 0, "fio wrote nothing:\n{}", res.text);
    // A blocked write may wait for the peer to be declared gone, not longer.
    let max_lat = timeout_s(TIMEOUT_S + 3).as_secs_f64();
    assert!(
        res.max_write_latency_s <= max_lat,
        "{outage:?}: a write waited {:.1} s (bound {max_lat} s)",
        res.max_write_latency_s
    );
    say(&format!(
        "{outage:?}: fio wrote {} MiB, max latency {:.2} s",
        res.write_bytes / MIB,
        res.max_write_latency_s
    ));

    pair.wait_complete(timeout_s(90));
    pair.assert_identical(timeout_s(20));
    if outage != Outage::Kill {
        let (up, down) = pair.proxy().bytes();
        assert!(up > 0 && down > 0, "nothing went through the proxy");
    }

    let resynced = pair.status(Side::A).resynced_bytes - base;
    let written_apart = (FIO_SIZE / EXTENT) + OUTAGE_EXTENTS.len() as u64;
    // Both nodes keep their `keepdirty` hottest extents dirty; a few more for
    // extents being written when the link went.
    let upper = (written_apart + 2 * KEEPDIRTY + 4) * EXTENT;
    let lower = OUTAGE_EXTENTS.len() as u64 * EXTENT;
    say(&format!(
        "{outage:?}: resynced {} MiB after the outage (bounds {}..{} MiB, device {} MiB)",
        resynced / MIB,
        lower / MIB,
        upper / MIB,
        datasize / MIB
    ));
    assert!(
        resynced >= lower,
        "{outage:?}: only {resynced} bytes resynced, but {lower} bytes were written while apart"
    );
    assert!(
        resynced <= upper,
        "{outage:?}: {resynced} bytes resynced for about {} dirtied (bound {upper}, device {datasize})",
        written_apart * EXTENT
    );
}

/// 1 GiB images (+ room for metadata).
const GIB_FILE: u64 = 1024 * MIB + MIB;

#[test]
fn kill9_of_secondary_under_load_resyncs_only_dirty_extents() {
    outage_resyncs_only_dirty(Outage::Kill);
}

#[test]
fn link_cut_under_load_resyncs_only_dirty_extents() {
    outage_resyncs_only_dirty(Outage::Cut);
}

#[test]
fn silent_link_is_dropped_after_timeout_and_resyncs_only_dirty_extents() {
    outage_resyncs_only_dirty(Outage::Blackhole);
}

// ---------------------------------------------------------------------------
// kill either node during a resync

/// The dirty set made while B is away: 192 MiB = 96 extents of patterns.
const DIRTY_MIB: u64 = 192;
/// The rate limit that keeps the resync running long enough to be interrupted.
const RESYNC_RATE: &str = "resync_rate 24M";
/// keepdirty given to `hastctl create` for these tests.
const RESYNC_KEEPDIRTY: u64 = 4;
/// The writer's region (during the resync): 4 extents at 600 MiB.
const WRITER_FIRST_LBA: u64 = 600 * MIB / 4096;
const WRITER_EXTENTS: u64 = 4;
/// Extents the resync copies between two checkpoints (hastd saves its progress
/// every second; at 24 MiB/s that is 12 extents of 2 MiB): a kill just before a
/// checkpoint redoes them.
const CHECKPOINT_EXTENTS: u64 = 24 / 2;
/// What a resumed resync of an idle resource may copy beyond what was left: the
/// extents copied since the last checkpoint, those in flight at the kill (4),
/// both nodes' keepdirty, two more.
const IDLE_SLACK_EXTENTS: u64 = CHECKPOINT_EXTENTS + 4 + 2 * RESYNC_KEEPDIRTY + 2;

/// Interrupt a resync by kill -9 of `victim` at a seeded random point, restart it,
/// and check that the resync resumes and completes with nothing lost.
///
/// With `with_writer`, a versioned-block writer (64 writes in flight, a FLUSH every
/// 256) runs during the resync and every write it saw acknowledged must read back
/// at the end; the client's flushes are what let hastd record progress, so the
/// resumed resync must merely not start over (it copies less than the whole set
/// minus half of what was done). Without a writer nothing else happens during the
/// resync, and the resumed resync must copy what was left plus a few extents.
fn kill_during_resync(victim: Side, with_writer: bool) {
    if !(require_python_nbd() && require_tools(&["qemu-io"])) {
        return;
    }
    let name = format!(
        "kill_during_resync({victim}, {})",
        if with_writer { "writer" } else { "idle" }
    );
    let seed = seed_from("HAST_RESYNC_SEED");
    say(&format!("{name}: HAST_RESYNC_SEED={seed}"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pair = Pair::builder(bins!())
        .tag(&format!("resynckill-{victim}"))
        .file_size(GIB_FILE)
        .create_args(&["-k", &RESYNC_KEEPDIRTY.to_string()])
        .start();
    pair.setup(Side::A, timeout_s(60));
    // The rate limit only now, by SIGHUP (applied live, see tests/reload.rs),
    // so that it only slows the resync this test interrupts.
    pair.reconfigure(&[RESYNC_RATE]);
    pair.wait_complete(timeout_s(30));
    let uri = pair.uri(Side::A);
    let dir = pair.node(Side::A).dir().to_path_buf();

    // B away; a large dirty set on A (a distinct pattern per extent).
    pair.kill9(Side::B);
    let cmds: Vec<String> = (0..DIRTY_MIB / 2)
        .map(|e| format!("write -P 0x{:02x} {} 2M", 1 + (e * 7) % 250, e * EXTENT))
        .collect();
    qemu_io(&uri, &cmds);
    let dirty = DIRTY_MIB * MIB;

    // B back: the resync starts (and the writer, if any).
    pair.start_daemon(Side::B);
    pair.make_secondary(Side::B);
    let mut logs: Vec<PathBuf> = Vec::new();
    let start_writer = |n: u64| {
        VersionedWriter::start(
            &uri,
            WRITER_FIRST_LBA,
            WRITER_EXTENTS * EXTENT / 4096,
            &dir,
            &format!("writer-{n}"),
            (n + 1) << 40,
            seed ^ n,
        )
    };
    let mut writer = with_writer.then(|| start_writer(0));
    if let Some(w) = &writer {
        logs.push(w.log.clone());
    }
    let frac = rng.gen_range(0.4..0.75);
    let st = pair.wait_status(
        Side::A,
        timeout_s(60),
        &format!("resync {:.0}% done", frac * 100.0),
        |s| matches!(s.sync, Some((done, total)) if total > 0 && done as f64 >= frac * total as f64),
    );
    let (done_before, total_first) = st.sync.expect("sync running");
    let base_a = st.resynced_bytes;
    assert!(
        total_first >= dirty,
        "the first resync covers {total_first} bytes, less than the {dirty} dirtied"
    );
    if let Some(w) = writer.as_mut() {
        w.wait_acked(50, timeout_s(30));
    }
    say(&format!(
        "{name}: killing {victim} at {done_before}/{total_first} bytes ({:.0}%)",
        100.0 * done_before as f64 / total_first as f64
    ));
    pair.kill9(victim);

    // Whoever died comes back in its role; the resync resumes.
    let second_total = match victim {
        Side::B => {
            pair.start_daemon(Side::B);
            pair.make_secondary(Side::B);
            pair.wait_complete(timeout_s(120));
            pair.status(Side::A).resynced_bytes - base_a
        }
        Side::A => {
            if let Some(w) = writer.take() {
                let summary = w.wait_lost(timeout_s(30));
                say(&format!("{name}: writer before the kill: {summary}"));
            }
            pair.start_daemon(Side::A);
            pair.make_primary(Side::A);
            if with_writer {
                let w = start_writer(1);
                logs.push(w.log.clone());
                writer = Some(w);
            }
            pair.wait_complete(timeout_s(120));
            // A was restarted: its counter counts only the resumed resync.
            pair.status(Side::A).resynced_bytes
        }
    };
    if let Some(w) = writer.take() {
        let summary = w.stop();
        say(&format!("{name}: writer: {summary}"));
        pair.wait_complete(timeout_s(60));
        let check = versioned_check(&uri, &logs);
        say(&format!("{name}: check: {check}"));
    }
    pair.assert_identical(timeout_s(20));
    // The dirty set itself made it to B (assert_identical showed A == B).
    for e in [0, DIRTY_MIB / 4, DIRTY_MIB / 2 - 1] {
        let byte = (1 + (e * 7) % 250) as u8;
        let got = read_area(&pair, Side::B, e * EXTENT, EXTENT as usize);
        assert!(
            got.iter().all(|b| *b == byte),
            "extent {e} on B does not hold its pattern {byte:#04x}"
        );
    }

    // Resumed, not restarted.
    let left = total_first.saturating_sub(done_before);
    let bound = if with_writer {
        total_first - done_before / 2 + WRITER_EXTENTS * EXTENT
    } else {
        left + IDLE_SLACK_EXTENTS * EXTENT
    };
    say(&format!(
        "{name}: {} MiB of {} copied before the kill, {} MiB after (left {} MiB, bound {} MiB)",
        done_before / MIB,
        total_first / MIB,
        second_total / MIB,
        left / MIB,
        bound / MIB
    ));
    assert!(
        second_total <= bound,
        "{name}: the resync after the kill copied {second_total} bytes: it did not resume \
         where it stopped ({done_before} of {total_first} bytes were done, {left} left; \
         bound {bound}; HAST_RESYNC_SEED={seed})\n{}",
        pair.describe()
    );
}

#[test]
fn kill9_of_secondary_during_resync_under_writes_loses_nothing() {
    kill_during_resync(Side::B, true);
}

#[test]
fn kill9_of_primary_during_resync_under_writes_loses_nothing() {
    kill_during_resync(Side::A, true);
}

#[test]
fn kill9_of_secondary_during_idle_resync_resumes_where_it_stopped() {
    kill_during_resync(Side::B, false);
}

#[test]
fn kill9_of_primary_during_idle_resync_resumes_where_it_stopped() {
    kill_during_resync(Side::A, false);
}
