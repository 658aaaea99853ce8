//! The simulator's budget in CI: 1,000 seeds of both nodes (well over
//! 100,000 node-steps) must keep every promise. `HAST_SIM_SEED` replays one
//! seed with its whole story on stderr; `cargo run --release -p hast-core
//! --example sim -- --seeds N` runs long.

use hast_core::sim::{run, Config};

const SEEDS: u64 = 1000;
const STEPS: u64 = 2000;

#[test]
fn a_thousand_seeds_keep_every_promise() {
    if let Ok(seed) = std::env::var("HAST_SIM_SEED") {
        let seed: u64 = seed.parse().expect("HAST_SIM_SEED is a number");
        let r = run(Config {
            seed,
            steps: STEPS,
            verbose: true,
        });
        if let Err(f) = r {
            panic!("{f}");
        }
        return;
    }
    let (mut node_steps, mut failovers, mut resyncs, mut split) = (0, 0, 0, 0);
    for seed in 1..=SEEDS {
        match run(Config {
            seed,
            steps: STEPS,
            verbose: false,
        }) {
            Ok(r) => {
                node_steps += r.node_steps;
                failovers += r.failovers;
                resyncs += r.resyncs;
                split += r.split_brains;
            }
            Err(f) => panic!("{f}"),
        }
    }
    println!(
        "[sim] {SEEDS} seeds: {node_steps} node-steps, {failovers} failovers, {resyncs} resyncs, \
         {split} split-brains detected"
    );
    assert!(node_steps >= 100_000, "only {node_steps} node-steps");
    // The runs must reach what they are meant to test.
    assert!(
        failovers > 10 && resyncs > 100 && split > 0,
        "{failovers} {resyncs} {split}"
    );
}
