//! Runs the replication simulator over many seeds, or replays one.
//!
//! ```text
//! cargo run --release -p hast-core --example sim -- --seeds 100000 [--steps 3000] [--first 1]
//! HAST_SIM_SEED=1234 [HAST_SIM_FAULTS=crash,cut] [HAST_SIM_STEPS=900] cargo run -p hast-core --example sim
//! ```
//! Exits 1 at the first failing seed, printing its replay.

use std::process::ExitCode;
use std::time::Instant;

use hast_core::sim::{run, shrink, Config};

fn arg(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .ok_or(format!("{name} needs a number"))?
            .parse()
            .map_err(|e| format!("{name}: {e}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = (|| -> Result<(u64, u64, u64), String> {
        if let Some(bad) = args
            .iter()
            .step_by(2)
            .find(|a| !["--seeds", "--steps", "--first"].contains(&a.as_str()))
        {
            return Err(format!("unknown argument {bad}"));
        }
        Ok((
            arg(&args, "--seeds", 1000)?,
            arg(&args, "--steps", 3000)?,
            arg(&args, "--first", 1)?,
        ))
    })();
    let (seeds, steps, first) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sim: {e}\nusage: sim [--seeds N] [--steps N] [--first SEED]");
            return ExitCode::from(64);
        }
    };
    let configs: Vec<Config> = match Config::from_env(steps) {
        Err(e) => {
            eprintln!("sim: {e}");
            return ExitCode::from(64);
        }
        Ok(Some(cfg)) => vec![cfg],
        Ok(None) => (first..first.saturating_add(seeds))
            .map(|s| Config::new(s, steps))
            .collect(),
    };
    let started = Instant::now();
    let mut total = hast_core::sim::Report::default();
    for cfg in configs {
        match run(cfg) {
            Ok(r) => {
                total.node_steps += r.node_steps;
                total.acked_writes += r.acked_writes;
                total.crashes += r.crashes;
                total.failovers += r.failovers;
                total.resyncs += r.resyncs;
                total.split_brains += r.split_brains;
                total.stale_refusals += r.stale_refusals;
                total.steps += 1;
            }
            Err(f) => {
                let f = if cfg.verbose { f } else { shrink(cfg, f) };
                eprint!("{f}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{} seeds passed in {:.1} s: {} node-steps, {} writes acknowledged, {} crashes, \
         {} failovers, {} resyncs, {} split-brains detected, {} stale primaries refused",
        total.steps,
        started.elapsed().as_secs_f64(),
        total.node_steps,
        total.acked_writes,
        total.crashes,
        total.failovers,
        total.resyncs,
        total.split_brains,
        total.stale_refusals
    );
    ExitCode::SUCCESS
}
