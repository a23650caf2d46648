//! The soak: many failures, of every kind of the fault matrix, across every
//! mechanism, in seeded random order, each stretch checked for exactly-once
//! (nothing lost, duplicated or reordered, every VNF's state equal to the
//! failure-free run's, no deterministic VNF reported non-deterministic).
//!
//! A soak is a sequence of *segments*: one `nhamd` trial each
//! ([`crate::ha::run`]) with one mechanism and one fault kind, drawn from
//! the seed. The first violation stops it and names the seed, the segment
//! and the failures injected before it: the same seed replays the same
//! schedule (timing aside).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use nham_control::api;
use serde::Serialize;

use crate::ha::{self, HaReport, HaSpec};

/// The nine fault kinds of the fault matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum FaultKind {
    /// SIGKILL.
    Crash,
    /// SIGSTOP (judged from data-path probes).
    Hang,
    /// The VNF's link down.
    CutOff,
    /// A crash while the VNF is frozen for a checkpoint.
    CrashDuringCheckpoint,
    /// A second VNF crashes while the first is being recovered.
    SecondFailure,
    /// Every VNF of the chain at once.
    AllAtOnce,
    /// The same VNF, again and again.
    SameVnf,
    /// `nhamd` killed and restarted while VNFs fail unseen.
    NhamdRestart,
    /// The newest checkpoint corrupted on disk before the failure.
    CorruptCheckpoint,
}

impl FaultKind {
    /// All nine.
    pub const ALL: [Self; 9] = [
        Self::Crash,
        Self::Hang,
        Self::CutOff,
        Self::CrashDuringCheckpoint,
        Self::SecondFailure,
        Self::AllAtOnce,
        Self::SameVnf,
        Self::NhamdRestart,
        Self::CorruptCheckpoint,
    ];

    /// The mechanisms this kind is injected under (where the fault means
    /// something for the mechanism and the harness can inject it).
    pub fn mechanisms(self) -> &'static [api::Mechanism] {
        use api::Mechanism::*;
        match self {
            Self::Crash | Self::Hang | Self::CutOff | Self::AllAtOnce => {
                &[Mechanism0r, Mechanism1rAs, Mechanism1rAa, MrAa]
            }
            Self::SameVnf => &[Mechanism0r, Mechanism1rAs, Mechanism1rAa],
            Self::NhamdRestart => &[Mechanism0r, Mechanism1rAs, MrAa],
            Self::CrashDuringCheckpoint | Self::SecondFailure | Self::CorruptCheckpoint => {
                &[Mechanism0r, Mechanism1rAs]
            }
        }
    }
}

/// What to soak.
#[derive(Debug, Clone)]
pub struct SoakSpec {
    /// Failures to inject in all (at least).
    pub failures: usize,
    /// The schedule's seed.
    pub seed: u64,
    /// Sample VNFs in the chain (1 to 8).
    pub vnfs: usize,
    /// Failures per segment, about.
    pub per_segment: usize,
    /// Offered rate, frames/s.
    pub rate: f64,
    /// Only these mechanisms (empty: all four).
    pub mechanisms: Vec<api::Mechanism>,
    /// The `nhamd` and `nham-vnf` binaries.
    pub nhamd: std::path::PathBuf,
    /// See [`HaSpec::vnf_bin`].
    pub vnf_bin: std::path::PathBuf,
    /// Traffic between rounds (the CI soak's: 300 ms).
    pub gap: Duration,
    /// Rounds planned tight (an allowance per round for its recovery by
    /// fault kind, not the harness's generous one), and a round that no
    /// longer fits in the segment's traffic skipped, not an error: many
    /// more failures per hour (`nham-bench paper --only soak`).
    pub tight: bool,
}

impl SoakSpec {
    /// The allowance per round of a tight plan for `kind` under
    /// `mechanism` on `vnfs` VNFs.
    fn tight_allowance(kind: FaultKind, mechanism: api::Mechanism, vnfs: usize) -> Duration {
        let base = match kind {
            FaultKind::Hang | FaultKind::CutOff => 700,
            FaultKind::NhamdRestart => 1500,
            FaultKind::CorruptCheckpoint | FaultKind::CrashDuringCheckpoint => 600,
            FaultKind::SecondFailure | FaultKind::AllAtOnce => 500,
            FaultKind::Crash | FaultKind::SameVnf => 350,
        };
        let members = if mechanism == api::Mechanism::MrAa {
            100 * vnfs as u64
        } else {
            0
        };
        Duration::from_millis(base + members)
    }
}

/// One segment's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    /// Its index.
    pub index: usize,
    /// Mechanism.
    pub mechanism: String,
    /// Fault kind.
    pub kind: FaultKind,
    /// Failures injected before this segment.
    pub failures_before: usize,
    /// Its trial.
    pub report: HaReport,
    /// Wall time.
    pub seconds: f64,
}

impl Segment {
    /// Exactly-once held, nothing was dropped at the chain's ingress, and
    /// no deterministic VNF was reported non-deterministic.
    pub fn is_clean(&self) -> bool {
        self.violation().is_none()
    }

    /// What kept the segment from a clean verdict: an overload (frames
    /// dropped at full holds, counted: no exactly-once verdict), a
    /// violation of exactly-once, or outputs taken for non-deterministic.
    pub fn violation(&self) -> Option<String> {
        self.report.violation().or_else(|| {
            (self.report.nondeterministic_outputs > 0).then(|| {
                format!(
                    "{} outputs of deterministic VNFs reported non-deterministic",
                    self.report.nondeterministic_outputs
                )
            })
        })
    }
}

/// The whole soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The seed.
    pub seed: u64,
    /// Failures injected.
    pub failures: usize,
    /// Segments run.
    pub segments: Vec<Segment>,
    /// The first violating segment's index, if any.
    pub first_violation: Option<usize>,
    /// A trial that could not be run or judged (the harness's error, with
    /// the seed, segment and failures before it): the soak stops there,
    /// and what ran before it is kept.
    pub error: Option<String>,
}

/// splitmix64: a small seeded generator, enough for schedules (shared with
/// `nham-bench model`; no crate needed for that).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 for `n` = 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// The trial of one segment of kind `kind` under `mechanism`, about
/// `target` failures, on a chain of `vnfs`; and the failures it injects.
fn segment_spec(
    spec: &SoakSpec,
    kind: FaultKind,
    mechanism: api::Mechanism,
    target: usize,
    rng: &mut Rng,
) -> (HaSpec, usize) {
    let n = spec.vnfs;
    let mut s = HaSpec {
        expedite_rcu: false,
        mechanism,
        kinds: ha::sample_chain(n),
        foreign_vnfs: Vec::new(),
        rounds: Vec::new(),
        fault: api::Fault::Crash,
        rate: spec.rate,
        gap: spec.gap,
        checkpoint_interval_ms: 200,
        flows: 32,
        nhamd: spec.nhamd.clone(),
        vnf_bin: spec.vnf_bin.clone(),
        restarts: Vec::new(),
        corrupt_newest: false,
        during_checkpoint: false,
        same_victim: None,
        second_failure: false,
        members: Vec::new(),
        walk: Vec::new(),
        placement: Vec::new(),
        unit_stop: false,
        progress: false,
        metrics: false,
        host_failures: false,
        host_restarts: false,
        tail: Duration::ZERO,
        replicas: 0,
        gaps: Vec::new(),
        allowance: spec
            .tight
            .then(|| SoakSpec::tight_allowance(kind, mechanism, n)),
        traffic: None,
        skip_late_rounds: spec.tight,
    };
    let victim = rng.below(n);
    // Rounds of one VNF, and (one in three) two at once.
    let mut rounds = |per: &dyn Fn(&mut Rng) -> usize, each: usize| {
        let mut v = Vec::new();
        let mut failures = 0;
        while failures < target.max(1) {
            let k = per(rng).clamp(1, n);
            v.push(k);
            failures += k * each;
        }
        (v, failures)
    };
    let one_or_two = |r: &mut Rng| if r.below(3) == 0 { 2 } else { 1 };
    let failures = match kind {
        FaultKind::Crash | FaultKind::Hang | FaultKind::CutOff => {
            s.fault = match kind {
                FaultKind::Hang => api::Fault::Hang,
                FaultKind::CutOff => api::Fault::CutOff,
                _ => api::Fault::Crash,
            };
            let (v, f) = rounds(&one_or_two, 1);
            s.rounds = v;
            f
        }
        FaultKind::CrashDuringCheckpoint => {
            s.during_checkpoint = true;
            let (v, f) = rounds(&|_| 1, 1);
            s.rounds = v;
            f
        }
        FaultKind::SecondFailure => {
            s.second_failure = true;
            let (v, f) = rounds(&|_| 1, 2);
            s.rounds = v;
            f
        }
        FaultKind::AllAtOnce => {
            let (v, f) = rounds(&|_| n, 1);
            s.rounds = v;
            f
        }
        FaultKind::SameVnf => {
            s.same_victim = Some(victim);
            let (v, f) = rounds(&|_| 1, 1);
            s.rounds = v;
            f
        }
        FaultKind::NhamdRestart => {
            // Every third round restarts nhamd (its victims fail unseen).
            let (v, f) = rounds(&|_| 1, 1);
            s.restarts = (0..v.len()).step_by(3).collect();
            s.rounds = v;
            f
        }
        FaultKind::CorruptCheckpoint => {
            s.corrupt_newest = true;
            // A corrupt round takes an on-demand checkpoint per victim:
            // fewer, longer rounds.
            let (v, _) = rounds(&|_| 1, 1);
            s.rounds = v.into_iter().take(8).collect();
            s.rounds.len()
        }
    };
    (s, failures)
}

/// Runs the soak; `progress` hears each segment as it ends. Stops at the
/// first violation or the first trial that errs ([`SoakReport::error`]);
/// either way the segments run before it are returned.
pub fn run(spec: &SoakSpec, mut progress: impl FnMut(&Segment)) -> Result<SoakReport> {
    let mut rng = Rng(spec.seed);
    let mut report = SoakReport {
        seed: spec.seed,
        failures: 0,
        segments: Vec::new(),
        first_violation: None,
        error: None,
    };
    let combos: Vec<(FaultKind, api::Mechanism)> = FaultKind::ALL
        .iter()
        .flat_map(|&k| k.mechanisms().iter().map(move |&m| (k, m)))
        .filter(|(_, m)| spec.mechanisms.is_empty() || spec.mechanisms.contains(m))
        .collect();
    anyhow::ensure!(
        !combos.is_empty(),
        "no fault kind applies to those mechanisms"
    );
    while report.failures < spec.failures {
        let index = report.segments.len();
        // Every combination once (in seeded order, the kinds taking turns)
        // before any twice.
        let (kind, mechanism) = if index < combos.len() {
            let mut order: Vec<usize> = (0..combos.len()).collect();
            let mut r = Rng(spec.seed ^ 0x5EED);
            for i in (1..order.len()).rev() {
                order.swap(i, r.below(i + 1));
            }
            let mut turn = BTreeMap::new();
            let mut keyed: Vec<(usize, usize)> = order
                .into_iter()
                .map(|c| {
                    let t = turn.entry(combos[c].0).or_insert(0usize);
                    *t += 1;
                    (*t, c)
                })
                .collect();
            keyed.sort_by_key(|&(t, _)| t);
            combos[keyed[index].1]
        } else {
            combos[rng.below(combos.len())]
        };
        let target = spec
            .per_segment
            .min(spec.failures.saturating_sub(report.failures).max(1));
        let (trial, _) = segment_spec(spec, kind, mechanism, target, &mut rng);
        let started = Instant::now();
        let r = match ha::run(&trial) {
            Ok(r) => r,
            Err(e) => {
                report.error = Some(format!(
                    "soak seed {} segment {index} ({kind:?} under {}), after {} failures: {e:#}",
                    spec.seed,
                    mechanism.as_str_name(),
                    report.failures
                ));
                break;
            }
        };
        let segment = Segment {
            index,
            mechanism: mechanism.as_str_name().to_string(),
            kind,
            failures_before: report.failures,
            seconds: started.elapsed().as_secs_f64(),
            report: r,
        };
        report.failures += segment.report.failures;
        progress(&segment);
        let clean = segment.is_clean();
        report.segments.push(segment);
        if !clean {
            report.first_violation = Some(index);
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_mechanism_and_the_seed_decides_the_schedule() {
        for k in FaultKind::ALL {
            assert!(!k.mechanisms().is_empty(), "{k:?}");
        }
        let draw = |seed| {
            let mut r = Rng(seed);
            (0..8).map(|_| r.below(100)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
