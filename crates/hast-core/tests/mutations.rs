//! Proof that the simulator can fail: each planted bug (`Mutation`) must be
//! caught by some seed within the budget, and the failure must name the
//! broken promise.

use hast_core::mutation::{plant, Mutation};
use hast_core::sim::{run, shrink, Config};

const SEEDS: u64 = 3000;
const STEPS: u64 = 2000;

/// The first seed that fails with `m` planted.
fn caught(m: Mutation, steps: u64) -> Option<(u64, String)> {
    let _planted = plant(Some(m));
    let seeds = std::env::var("HAST_SIM_MUTATION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS);
    let steps = std::env::var("HAST_SIM_MUTATION_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(steps);
    (1..=seeds)
        .find_map(|seed| {
            let cfg = Config::new(seed, steps);
            run(cfg).err().map(|f| (seed, shrink(cfg, f)))
        })
        .map(|(seed, f)| {
            println!("[sim] {m:?}: {f}");
            (seed, f.what)
        })
}

fn expect(m: Mutation, promise: &str) {
    expect_within(m, STEPS, promise);
}

fn expect_within(m: Mutation, steps: u64, promise: &str) {
    let Some((seed, what)) = caught(m, steps) else {
        panic!("{m:?} was not caught in {SEEDS} seeds");
    };
    println!("[sim] {m:?}: caught by seed {seed}");
    assert!(what.contains(promise), "{m:?}: {what}");
}

#[test]
fn ack_before_reply_is_caught() {
    expect(
        Mutation::AckBeforeReply,
        "acknowledged before the secondary applied it",
    );
}

#[test]
fn clearing_without_the_peers_flush_is_caught() {
    expect(
        Mutation::ClearWithoutPeerFlush,
        "clean in the primary's map",
    );
}

#[test]
fn skipping_the_activemap_flush_is_caught() {
    expect(Mutation::SkipMapFlush, "clean in the primary's map");
}

#[test]
fn accepting_an_older_epoch_is_caught() {
    expect(Mutation::AcceptOlderEpoch, "accepted primary epoch");
}

/// The flaws the simulator found in hastd, kept as mutations.
#[test]
fn the_degraded_flag_of_seed_38_is_caught() {
    expect(
        Mutation::RecordForCurrentPeriod,
        "both copies acknowledged writes alone",
    );
}

#[test]
fn going_alone_across_a_handshake_of_seed_3273_is_caught() {
    expect(Mutation::GoAloneAcrossHandshake, "acknowledged write lost");
}

#[test]
fn sync_done_before_older_writes_of_seed_481_is_caught() {
    expect(
        Mutation::SyncDoneBeforeOlderWrites,
        "acknowledged write lost",
    );
}
