//! Proof that the simulator can fail: each planted bug (`Mutation`) must be
//! caught by some seed within the budget, and the failure must name the
//! broken promise.

use hast_core::mutation::{plant, Mutation};
use hast_core::sim::{run, Config};

const SEEDS: u64 = 3000;
const STEPS: u64 = 2000;

/// The first seed that fails with `m` planted.
fn caught(m: Mutation) -> Option<(u64, String)> {
    let _planted = plant(Some(m));
    (1..=SEEDS).find_map(|seed| {
        run(Config {
            seed,
            steps: STEPS,
            verbose: false,
        })
        .err()
        .map(|f| (seed, f.what))
    })
}

fn expect(m: Mutation, promise: &str) {
    let Some((seed, what)) = caught(m) else {
        panic!("{m:?} was not caught in {SEEDS} seeds");
    };
    println!("[sim] {m:?}: caught by seed {seed}: {what}");
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
