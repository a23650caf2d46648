//! The zero-loss throughput of a chain under `nhamd`, unprotected and under
//! each mechanism, trials interleaved (Fig. 6a; `nham-bench throughput
//! --mechanism`).
//!
//! A configuration carries a rate when its trial at that rate is exact:
//! nothing lost, duplicated or reordered at the sink, every VNF's state
//! equal to the failure-free run's, nothing dropped at the chain's ingress.
//! Each repetition walks up the ladder of rates, every configuration still
//! climbing tried at each rate before the next rate (so load on the host
//! drifts over all of them alike); a configuration stops at its first rate
//! not carried, and its repetition's throughput is the last rate it
//! carried. The ladder stops for everyone at a rate the generator could not
//! offer (under 95 % of it achieved).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use nham_bench::ha::{self, HaReport, HaSpec};
use nham_control::api;

use super::stats::Stats;

/// A configuration: unprotected, or a mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Config {
    /// Mechanism none: no holding, no checkpoints.
    None,
    /// Under this mechanism.
    Protected(api::Mechanism),
}

/// Every configuration, unprotected first, then the paper's order.
pub(crate) const ALL: [Config; 5] = [
    Config::None,
    Config::Protected(api::Mechanism::Mechanism0r),
    Config::Protected(api::Mechanism::Mechanism1rAs),
    Config::Protected(api::Mechanism::Mechanism1rAa),
    Config::Protected(api::Mechanism::MrAa),
];

impl Config {
    fn mechanism(self) -> api::Mechanism {
        match self {
            Self::None => api::Mechanism::None,
            Self::Protected(m) => m,
        }
    }

    /// Its name in tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::None => "unprotected",
            Self::Protected(api::Mechanism::Mechanism0r) => "0R",
            Self::Protected(api::Mechanism::Mechanism1rAs) => "1R-AS",
            Self::Protected(api::Mechanism::Mechanism1rAa) => "1R-AA",
            Self::Protected(api::Mechanism::MrAa) => "MR-AA",
            Self::Protected(_) => "none",
        }
    }
}

/// What to compare.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    /// VNFs in the chain.
    pub(crate) vnfs: usize,
    /// Checkpoint period of every protected VNF, ms.
    pub(crate) checkpoint_interval_ms: u32,
    /// Offered rates, frames/s, ascending.
    pub(crate) ladder: Vec<f64>,
    /// Repetitions of the walk.
    pub(crate) trials: usize,
    /// Traffic per trial, s.
    pub(crate) trial_s: f64,
    /// Binaries.
    pub(crate) nhamd: PathBuf,
    /// Binaries.
    pub(crate) vnf_bin: PathBuf,
}

/// One trial.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// Repetition.
    pub(crate) rep: usize,
    /// Configuration.
    pub(crate) config: Config,
    /// Offered rate.
    pub(crate) rate: f64,
    /// Achieved by the generator.
    pub(crate) offered_pps: f64,
    /// Carried exactly.
    pub(crate) exact: bool,
    /// Why not.
    pub(crate) why: Option<String>,
    /// Checkpoints taken.
    pub(crate) checkpoints: usize,
    /// Median CRIU image and stored bytes of its checkpoints.
    pub(crate) image_bytes: Option<f64>,
    /// See `image_bytes`.
    pub(crate) stored_bytes: Option<f64>,
    /// The host's busy CPU time during the traffic, s, and the traffic's
    /// length, s.
    pub(crate) cpu_s: f64,
    /// See `cpu_s`.
    pub(crate) traffic_s: f64,
}

impl Outcome {
    /// The CSV header of [`cells`](Self::cells).
    pub(crate) const HEADER: &'static [&'static str] = &[
        "repetition",
        "configuration",
        "rate_fps",
        "offered_fps",
        "exact",
        "checkpoints",
        "image_bytes_p50",
        "stored_bytes_p50",
        "host_cpu_busy_s",
        "traffic_s",
        "why",
    ];

    /// One CSV row.
    pub(crate) fn cells(&self) -> Vec<String> {
        let o = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.0}"));
        vec![
            self.rep.to_string(),
            self.config.name().into(),
            format!("{}", self.rate),
            format!("{:.0}", self.offered_pps),
            self.exact.to_string(),
            self.checkpoints.to_string(),
            o(self.image_bytes),
            o(self.stored_bytes),
            format!("{:.3}", self.cpu_s),
            format!("{:.2}", self.traffic_s),
            super::quote(self.why.as_deref().unwrap_or("")),
        ]
    }

    fn of(rep: usize, config: Config, rate: f64, r: Result<HaReport>) -> Self {
        let mut o = Self {
            rep,
            config,
            rate,
            offered_pps: 0.0,
            exact: false,
            why: None,
            checkpoints: 0,
            image_bytes: None,
            stored_bytes: None,
            cpu_s: 0.0,
            traffic_s: 0.0,
        };
        match r {
            Ok(r) => {
                o.why = r.violation();
                o.exact = o.why.is_none();
                o.offered_pps = r.offered_pps;
                o.checkpoints = r.checkpoints;
                let c = &r.samples.checkpoints;
                if !c.is_empty() {
                    o.image_bytes = Some(
                        Stats::of(&c.iter().map(|c| c.size_bytes as f64).collect::<Vec<_>>()).p50,
                    );
                    o.stored_bytes = Some(
                        Stats::of(&c.iter().map(|c| c.stored_bytes as f64).collect::<Vec<_>>()).p50,
                    );
                }
                o.cpu_s = r.samples.host_cpu_busy_s;
                o.traffic_s = r.samples.traffic_s;
            }
            Err(e) => o.why = Some(format!("{e:#}")),
        }
        o
    }
}

/// The comparison's trials.
#[derive(Debug, Clone, Default)]
pub(crate) struct Comparison {
    /// Every trial, in the order run.
    pub(crate) trials: Vec<Outcome>,
    /// The ladder stopped at a rate the generator could not offer.
    pub(crate) generator_bound: bool,
    /// Repetitions run.
    pub(crate) reps: usize,
}

/// What a mechanism's checkpoints cost.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cost {
    /// Host CPU time per checkpoint, s (protected less unprotected, same
    /// repetition and rate).
    pub(crate) cpu_s_per_checkpoint: Option<f64>,
    /// Median CRIU image, bytes.
    pub(crate) image_bytes: Option<f64>,
    /// Median stored (compressed), bytes.
    pub(crate) stored_bytes: Option<f64>,
}

impl Comparison {
    /// Each repetition's throughput of `c` (0 when it carried no rate).
    pub(crate) fn carried(&self, c: Config) -> Vec<f64> {
        (0..self.reps)
            .map(|rep| {
                self.trials
                    .iter()
                    .filter(|o| o.rep == rep && o.config == c && o.exact)
                    .map(|o| o.rate)
                    .fold(0.0, f64::max)
            })
            .collect()
    }

    /// Some repetition of `c` carried the ladder's top rate: its
    /// throughput is at least that, not measured.
    pub(crate) fn topped(&self, c: Config) -> bool {
        let top = self.trials.iter().map(|o| o.rate).fold(0.0, f64::max);
        self.trials
            .iter()
            .any(|o| o.config == c && o.exact && o.rate >= top)
    }

    /// Median, min and max of [`carried`](Self::carried).
    pub(crate) fn summary(&self, c: Config) -> Stats {
        Stats::of(&self.carried(c))
    }

    /// The throughput `c` lost against the unprotected chain, % of the
    /// latter's median (NaN when that carried nothing).
    pub(crate) fn lost_pct(&self, c: Config) -> f64 {
        let base = self.summary(Config::None).p50;
        if base > 0.0 {
            100.0 * (1.0 - self.summary(c).p50 / base)
        } else {
            f64::NAN
        }
    }

    /// See [`Cost`].
    pub(crate) fn checkpoint_cost(&self, c: Config) -> Cost {
        let mine: Vec<&Outcome> = self
            .trials
            .iter()
            .filter(|o| o.config == c && o.exact)
            .collect();
        let per: Vec<f64> = mine
            .iter()
            .filter(|o| o.checkpoints > 0)
            .filter_map(|o| {
                let base = self.trials.iter().find(|b| {
                    b.config == Config::None && b.rep == o.rep && b.rate == o.rate && b.exact
                })?;
                // Per second of traffic, then over the checkpoints.
                let extra = o.cpu_s / o.traffic_s.max(1e-9) - base.cpu_s / base.traffic_s.max(1e-9);
                Some(extra * o.traffic_s / o.checkpoints as f64)
            })
            .collect();
        let med = |v: Vec<f64>| (!v.is_empty()).then(|| Stats::of(&v).p50);
        Cost {
            cpu_s_per_checkpoint: med(per),
            image_bytes: med(mine.iter().filter_map(|o| o.image_bytes).collect()),
            stored_bytes: med(mine.iter().filter_map(|o| o.stored_bytes).collect()),
        }
    }

    /// Trials that erred (not those that only did not carry their rate).
    pub(crate) fn problems(&self) -> Vec<String> {
        self.trials
            .iter()
            .filter(|o| o.offered_pps == 0.0)
            .filter_map(|o| {
                o.why
                    .as_ref()
                    .map(|w| format!("fig6a {} at {} frames/s: {w}", o.config.name(), o.rate))
            })
            .collect()
    }
}

/// Runs the walk for `configs`.
pub(crate) fn compare(setup: &Setup, configs: &[Config]) -> Result<Comparison> {
    let mut out = Comparison {
        reps: setup.trials,
        ..Comparison::default()
    };
    for rep in 0..setup.trials {
        let mut climbing: Vec<Config> = configs.to_vec();
        for &rate in &setup.ladder {
            let mut short = false;
            for &c in &climbing.clone() {
                let spec = HaSpec {
                    mechanism: c.mechanism(),
                    kinds: ha::sample_chain(setup.vnfs),
                    fault: api::Fault::Crash,
                    rate,
                    gap: Duration::from_millis(400),
                    checkpoint_interval_ms: setup.checkpoint_interval_ms,
                    flows: 64,
                    nhamd: setup.nhamd.clone(),
                    vnf_bin: setup.vnf_bin.clone(),
                    tail: Duration::from_secs_f64(setup.trial_s),
                    ..HaSpec::default()
                };
                eprintln!(
                    "throughput: repetition {rep}, {} at {rate} frames/s ...",
                    c.name()
                );
                let o = Outcome::of(rep, c, rate, ha::run(&spec));
                eprintln!(
                    "throughput: repetition {rep}, {} at {rate} frames/s: {}",
                    c.name(),
                    if o.exact {
                        "carried".to_string()
                    } else {
                        format!("not carried: {}", o.why.as_deref().unwrap_or(""))
                    }
                );
                if o.offered_pps > 0.0 && o.offered_pps < 0.95 * rate {
                    short = true;
                }
                if !o.exact {
                    climbing.retain(|&x| x != c);
                }
                out.trials.push(o);
            }
            if short {
                out.generator_bound = true;
                break;
            }
            if climbing.is_empty() {
                break;
            }
        }
    }
    Ok(out)
}
