//! The simulator's budget in CI: 1,000 seeds of 3,000 steps of both nodes
//! (about 5.7 million node-steps) must keep every promise. `HAST_SIM_SEED` (with
//! `HAST_SIM_FAULTS`, `HAST_SIM_STEPS`) replays one seed with its whole
//! story on stderr; `cargo run --release -p hast-core --example sim --
//! --seeds N` runs long.

use hast_core::sim::{run, shrink, Config};

const SEEDS: u64 = 1000;
const STEPS: u64 = 3000;

#[test]
fn a_thousand_seeds_keep_every_promise() {
    match Config::from_env(STEPS) {
        Err(e) => panic!("{e}"),
        Ok(Some(cfg)) => {
            if let Err(f) = run(cfg) {
                panic!("{f}");
            }
            return;
        }
        Ok(None) => {}
    }
    let (mut node_steps, mut failovers, mut resyncs, mut split, mut stale) = (0, 0, 0, 0, 0);
    for seed in 1..=SEEDS {
        let cfg = Config::new(seed, STEPS);
        match run(cfg) {
            Ok(r) => {
                node_steps += r.node_steps;
                failovers += r.failovers;
                resyncs += r.resyncs;
                split += r.split_brains;
                stale += r.stale_refusals;
            }
            Err(f) => panic!("{}", shrink(cfg, f)),
        }
    }
    println!(
        "[sim] {SEEDS} seeds: {node_steps} node-steps, {failovers} failovers, {resyncs} resyncs, \
         {split} split-brains detected, {stale} stale primaries refused"
    );
    assert!(node_steps >= 100_000, "only {node_steps} node-steps");
    // The runs must reach what they are meant to test.
    assert!(
        failovers > 10 && resyncs > 100 && split + stale > 10,
        "{failovers} failovers, {resyncs} resyncs, {split} split-brains, {stale} stale primaries"
    );
}
