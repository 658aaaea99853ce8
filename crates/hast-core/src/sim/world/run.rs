//! One seed's run: its settings, its report or the first broken promise,
//! and the shrinking of a failure to the smallest replay found.

use super::*;

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub seed: u64,
    pub steps: u64,
    /// Print every event to stderr as it happens (a replay's full story).
    pub verbose: bool,
    /// The kinds of fault the run may inject.
    pub faults: Faults,
}

impl Config {
    /// The replay `HAST_SIM_SEED` asks for (with `HAST_SIM_FAULTS` and
    /// `HAST_SIM_STEPS` when set), verbose; `None` without it.
    pub fn from_env(steps: u64) -> Result<Option<Config>, String> {
        let var = |name: &str| std::env::var(name).ok();
        let Some(seed) = var("HAST_SIM_SEED") else {
            return Ok(None);
        };
        let seed = seed
            .parse()
            .map_err(|e| format!("HAST_SIM_SEED={seed}: {e}"))?;
        let steps = match var("HAST_SIM_STEPS") {
            Some(s) => s.parse().map_err(|e| format!("HAST_SIM_STEPS={s}: {e}"))?,
            None => steps,
        };
        let faults = match var("HAST_SIM_FAULTS") {
            Some(f) => Faults::parse(&f).map_err(|e| format!("HAST_SIM_FAULTS: {e}"))?,
            None => Faults::ALL,
        };
        Ok(Some(Config {
            seed,
            steps,
            verbose: true,
            faults,
        }))
    }

    /// Every fault, not verbose.
    pub fn new(seed: u64, steps: u64) -> Config {
        Config {
            seed,
            steps,
            verbose: false,
            faults: Faults::ALL,
        }
    }
}

/// Kinds of fault, as a set; a replay names the ones it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults(u8);

impl Faults {
    pub const CRASH: Faults = Faults(1);
    pub const CUT: Faults = Faults(2);
    pub const SWITCHOVER: Faults = Faults(4);
    pub const OPERATOR: Faults = Faults(8);
    pub const ALL: Faults = Faults(15);
    const NAMES: [(Faults, &'static str); 4] = [
        (Faults::CRASH, "crash"),
        (Faults::CUT, "cut"),
        (Faults::SWITCHOVER, "switchover"),
        (Faults::OPERATOR, "operator"),
    ];

    pub fn has(self, f: Faults) -> bool {
        self.0 & f.0 != 0
    }

    pub fn without(self, f: Faults) -> Faults {
        Faults(self.0 & !f.0)
    }

    /// `crash,cut,…` (as `HAST_SIM_FAULTS` takes it); `none` for none.
    pub fn parse(s: &str) -> Result<Faults, String> {
        let mut out = Faults(0);
        for word in s
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty() && *w != "none")
        {
            let (f, _) = Faults::NAMES
                .iter()
                .find(|(_, n)| *n == word)
                .ok_or(format!(
                    "unknown fault {word:?} (crash, cut, switchover, operator)"
                ))?;
            out = Faults(out.0 | f.0);
        }
        Ok(out)
    }
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = Faults::NAMES
            .iter()
            .filter(|(k, _)| self.has(*k))
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: u64,
    /// Steps times the nodes that were up: the simulated work.
    pub node_steps: u64,
    pub mode: Option<Replication>,
    pub acked_writes: u64,
    pub flushes: u64,
    pub crashes: u64,
    pub failovers: u64,
    pub resyncs: u64,
    pub split_brains: u64,
    pub stale_refusals: u64,
}

/// A broken promise: the seed, the step, what, and the last events.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub step: u64,
    pub faults: Faults,
    pub what: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed at step {}: {}",
            self.seed, self.step, self.what
        )?;
        writeln!(
            f,
            "replay: HAST_SIM_SEED={} HAST_SIM_FAULTS={} HAST_SIM_STEPS={}; its last events:",
            self.seed, self.faults, self.step
        )?;
        for t in &self.trace {
            writeln!(f, "  {t}")?;
        }
        Ok(())
    }
}

/// Runs one seed; `Err` names the first broken promise.
pub fn run(cfg: Config) -> Result<Report, Failure> {
    let mut w = World::new(cfg.seed);
    w.verbose = cfg.verbose;
    w.faults = cfg.faults;
    for _ in 0..cfg.steps {
        if w.ended {
            break;
        }
        w.step();
        if let Err(what) = w.check() {
            return Err(w.failure(cfg, what));
        }
        if let Some(what) = w.violation.take() {
            return Err(w.failure(cfg, what));
        }
    }
    Ok(w.report)
}

/// The smallest replay of a failure this finds: fault kinds the failure
/// does not need are left out one at a time (a run without a kind draws
/// other choices, so what remains is a different run of the same seed that
/// still fails), and the run stops at the failing step.
pub fn shrink(cfg: Config, failure: Failure) -> Failure {
    let mut best = failure;
    let mut faults = cfg.faults;
    for (kind, _) in Faults::NAMES {
        if !faults.has(kind) {
            continue;
        }
        let trial = Config {
            faults: faults.without(kind),
            verbose: false,
            ..cfg
        };
        if let Err(f) = run(trial) {
            faults = trial.faults;
            best = f;
        }
    }
    best
}
