//! The Failure Recovery of one VNF process (a VNF, or an MR-AA member other
//! than member 0) as a state machine: fed the process's exit, the
//! detector's verdicts, heal requests and the outcome of the restore, it
//! says what to do ([`Action`]); a driver (`service::failure_recovery`)
//! does it. No I/O, no clock: every moment is passed in.
//!
//! ```text
//!            started                 exit / lost            recovered(Ok)
//!  Starting ─────────▶ Running ─────────────────▶ Recovering ───────────▶ Running
//!                        ▲  │ verdict: Kill            │ recovered(Err)
//!                        │  ▼ (the exit follows)       ▼
//!                        └── started ─────────────── Failed ── heal ──▶ Recovering
//! ```
//!
//! Invariants (checked against a reference model below):
//! - one failure, one recovery: an exit of the current incarnation starts
//!   exactly one; an exit of an older one, a second exit, or a heal while
//!   one runs starts none (a heal joins it);
//! - a verdict kills an incarnation at most once, and its moment is the
//!   failure's detection time (the exit that follows is its consequence);
//! - recovery is timed from the failure (the exit's moment as the kernel
//!   reported it, or the verdict's), not from when a task got round to it;
//! - the counters say what happened: one failure per exit or loss, one
//!   recovery or recovery failure per outcome.

use std::time::{Duration, Instant};

use super::detector::Verdict;

/// How a failed process comes back (from its mechanism and place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comeback {
    /// Not protected (`MECHANISM_NONE`): started afresh, without state.
    Fresh,
    /// Restored in its own namespace, behind its own link (0R, 1R-AS,
    /// MR-AA member 0).
    InPlace,
    /// Failed over to its replica's namespace (1R-AA).
    Elsewhere,
    /// An MR-AA member other than member 0: restored behind its own link
    /// while the other members serve.
    Member,
}

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not started yet.
    Starting,
    /// Its process runs.
    Running,
    /// It failed and is not being recovered (the last recovery failed).
    Failed,
    /// It is being recovered.
    Recovering,
}

/// Why the process is taken for failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// It exited.
    Exited,
    /// The detector judged it (and had it killed).
    Judged(Verdict),
    /// It was gone when a restarted daemon looked.
    Lost,
}

impl Cause {
    /// The cause as events and logs name it.
    pub fn text(self) -> &'static str {
        match self {
            Self::Exited => "process exited",
            Self::Judged(v) => v.cause(),
            Self::Lost => "process gone while no daemon watched it",
        }
    }
}

/// What the driver is to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Announce the failure: its cause, when a fault was injected (if
    /// one was), when it happened, and when it was known.
    Detected {
        /// Why.
        cause: Cause,
        /// When a fault was injected into it, if one was.
        fault_at: Option<Instant>,
        /// When it failed (exited, or was judged).
        at: Instant,
        /// When the daemon knew.
        noticed: Instant,
    },
    /// Stop the process and wait until it is stopped, then bring its link
    /// up: a cut-off member about to be killed, which reconnected while it
    /// runs would answer what it was sent while cut off, numbered as though
    /// it had missed nothing.
    StopAndReconnect,
    /// Kill the process (the exit follows, through its watcher).
    Kill,
    /// Announce that the recovery starts.
    RecoveryStarted,
    /// Bring the process's link up (it may have been cut off; what comes
    /// back needs it). `wait`: until the SFF's end is operationally up
    /// (a restore behind the same link must not start before the SFF can
    /// flush what it was sending the failed incarnation).
    LinkUp {
        /// Wait until the SFF's end is operationally up.
        wait: bool,
    },
    /// Bring the process back as `comeback` says; recovery is timed from
    /// `since`.
    Recover {
        /// How.
        comeback: Comeback,
        /// The failure's moment.
        since: Instant,
    },
    /// Announce the recovery finished (`took` from the failure to the
    /// process running again), watch `incarnation`, record the new pid.
    Finished {
        /// From the failure to the process running again.
        took: Duration,
        /// The incarnation to watch.
        incarnation: u64,
    },
    /// Announce the recovery failed, and why.
    RecoveryFailed {
        /// Why.
        reason: String,
    },
}

/// What a heal request does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heal {
    /// A recovery (or heal) is under way: wait for its outcome.
    Join,
    /// It runs: kill it (its exit starts the recovery), then wait.
    Kill,
    /// Its last recovery failed: these actions start another; then wait.
    Retry(Vec<Action>),
    /// It has not been started yet: nothing to heal.
    NotStarted,
}

/// What happened to one process so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Failures seen.
    pub failures: u64,
    /// Recoveries done.
    pub recoveries: u64,
    /// Recoveries that failed.
    pub recovery_failures: u64,
    /// Why the last recovery failed, until one succeeds.
    pub last_error: Option<String>,
}

/// The Failure Recovery of one VNF process.
#[derive(Debug, Clone)]
pub struct FailureRecovery {
    phase: Phase,
    incarnation: u64,
    judged: Option<(Verdict, Instant)>,
    fault_at: Option<Instant>,
    since: Option<Instant>,
    /// The incarnation that failed (a recovery must bring a newer one).
    failed: u64,
    healing: bool,
    counters: Counters,
}

impl FailureRecovery {
    /// A process not started yet, whose first incarnation will be
    /// `incarnation + 1`.
    pub fn new(incarnation: u64) -> Self {
        Self {
            phase: Phase::Starting,
            incarnation,
            judged: None,
            fault_at: None,
            since: None,
            failed: incarnation,
            healing: false,
            counters: Counters::default(),
        }
    }

    /// One a restarted daemon found: its phase and counters as recorded.
    pub fn found(phase: Phase, incarnation: u64, counters: Counters) -> Self {
        Self {
            phase,
            counters,
            ..Self::new(incarnation)
        }
    }

    /// Where it is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The current incarnation (watchers of older ones are stale).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// What happened to it so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A heal is waiting on the recovery under way.
    pub fn healing(&self) -> bool {
        self.healing
    }

    /// The incarnation the detector may probe: a running one not judged yet.
    pub fn probed(&self) -> Option<u64> {
        (self.phase == Phase::Running && self.judged.is_none()).then_some(self.incarnation)
    }

    /// A process of it runs now (started, or restored and adopted): its
    /// incarnation. A restored one stays [`Phase::Recovering`] until
    /// [`handle_recovered`](Self::handle_recovered).
    pub fn handle_started(&mut self) -> u64 {
        self.incarnation += 1;
        self.judged = None;
        if self.phase != Phase::Recovering {
            self.phase = Phase::Running;
        }
        self.incarnation
    }

    /// A fault was injected into it at `at` (detection is measured from it).
    pub fn handle_fault(&mut self, at: Instant) {
        self.fault_at = Some(at);
    }

    /// The detector judged incarnation `incarnation` failed at `at`:
    /// kill it (a cut-off member: stop it and reconnect it first). Nothing
    /// for an older incarnation, or one judged already.
    pub fn handle_verdict(
        &mut self,
        incarnation: u64,
        verdict: Verdict,
        at: Instant,
        comeback: Comeback,
    ) -> Vec<Action> {
        if verdict == Verdict::Healthy || self.probed() != Some(incarnation) {
            return Vec::new();
        }
        self.judged = Some((verdict, at));
        if comeback == Comeback::Member && verdict == Verdict::CutOff {
            vec![Action::StopAndReconnect, Action::Kill]
        } else {
            vec![Action::Kill]
        }
    }

    /// Incarnation `incarnation` exited at `exited` (known at `noticed`);
    /// `carrier`: its link had carrier then. Starts its recovery, unless it
    /// is an older incarnation or not running.
    pub fn handle_exit(
        &mut self,
        incarnation: u64,
        exited: Instant,
        noticed: Instant,
        carrier: bool,
        comeback: Comeback,
    ) -> Vec<Action> {
        if incarnation != self.incarnation || self.phase != Phase::Running {
            return Vec::new();
        }
        let judged = self.judged.take();
        // A hang or cut-off the detector judged was detected then.
        let (cause, at, noticed) = match judged {
            Some((v, at)) => (Cause::Judged(v), at, at),
            None => (Cause::Exited, exited, noticed),
        };
        let cut_off = matches!(judged, Some((Verdict::CutOff, _))) || !carrier;
        let link = match comeback {
            // A member judged cut off was reconnected before its kill; one
            // that exited on its own when its link went down is restored
            // behind the same link: bring it up.
            Comeback::Member => (judged.is_none() && !carrier).then_some(false),
            // A restore behind the same link waits until it is up.
            // (Without the wait, 1R-AS lost one output in 2 of about 16
            // runs of the second-failure test; with it, 0 of 28.) A
            // failover goes to another namespace: no wait, unless the link
            // was cut.
            Comeback::Elsewhere => cut_off.then_some(true),
            Comeback::Fresh | Comeback::InPlace => Some(true),
        };
        self.fail(cause, at, noticed, link, comeback)
    }

    /// It was gone when a restarted daemon looked at `now`: recover it.
    pub fn handle_lost(&mut self, now: Instant, comeback: Comeback) -> Vec<Action> {
        if self.phase == Phase::Recovering {
            return Vec::new();
        }
        // Its link may have been cut: up (a member's without the wait, as
        // after its exit).
        let link = Some(comeback != Comeback::Member);
        self.fail(Cause::Lost, now, now, link, comeback)
    }

    fn fail(
        &mut self,
        cause: Cause,
        at: Instant,
        noticed: Instant,
        link: Option<bool>,
        comeback: Comeback,
    ) -> Vec<Action> {
        self.counters.failures += 1;
        self.phase = Phase::Failed;
        self.judged = None;
        let mut actions = vec![Action::Detected {
            cause,
            fault_at: self.fault_at.take(),
            at,
            noticed,
        }];
        actions.extend(self.begin(at, link, comeback));
        actions
    }

    fn begin(&mut self, since: Instant, link: Option<bool>, comeback: Comeback) -> Vec<Action> {
        self.phase = Phase::Recovering;
        self.since = Some(since);
        self.failed = self.incarnation;
        let mut actions = vec![Action::RecoveryStarted];
        actions.extend(link.map(|wait| Action::LinkUp { wait }));
        actions.push(Action::Recover { comeback, since });
        actions
    }

    /// An operator asks for it to be brought back, at `now`.
    pub fn handle_heal(&mut self, now: Instant, comeback: Comeback) -> Heal {
        match self.phase {
            Phase::Recovering => Heal::Join,
            _ if self.healing => Heal::Join,
            Phase::Starting => Heal::NotStarted,
            Phase::Running => {
                self.healing = true;
                Heal::Kill
            }
            Phase::Failed => {
                self.healing = true;
                Heal::Retry(self.begin(now, Some(true), comeback))
            }
        }
    }

    /// A heal's kill could not be done (the process is gone already, or
    /// the signal failed): no heal is waiting.
    pub fn handle_heal_abandoned(&mut self) {
        self.healing = false;
    }

    /// The recovery ended at `now`: `Ok` with the process running again
    /// (adopted through [`handle_started`](Self::handle_started): without a
    /// new incarnation it counts as failed), or why not. Nothing unless it
    /// was recovering.
    pub fn handle_recovered(&mut self, now: Instant, outcome: Result<(), String>) -> Vec<Action> {
        if self.phase != Phase::Recovering {
            return Vec::new();
        }
        self.healing = false;
        let since = self.since.take().unwrap_or(now);
        let outcome = match outcome {
            // Only a new incarnation (adopted through `handle_started`)
            // ends a recovery.
            Ok(()) if self.incarnation == self.failed => {
                Err("the recovery brought no new process".to_string())
            }
            o => o,
        };
        match outcome {
            Ok(()) => {
                self.phase = Phase::Running;
                self.counters.recoveries += 1;
                self.counters.last_error = None;
                vec![Action::Finished {
                    took: now.saturating_duration_since(since),
                    incarnation: self.incarnation,
                }]
            }
            Err(reason) => {
                self.phase = Phase::Failed;
                self.counters.recovery_failures += 1;
                self.counters.last_error = Some(reason.clone());
                vec![Action::RecoveryFailed { reason }]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Event {
        /// An exit of the incarnation `back` before the current one.
        Exit {
            back: u64,
            carrier: bool,
        },
        /// A verdict on the incarnation `back` before the current one.
        Verdict(Verdict, u64),
        Heal,
        Started,
        Recovered(bool),
        Fault,
        Lost,
    }

    fn event() -> impl Strategy<Value = Event> {
        let verdict = prop_oneof![
            Just(Verdict::Healthy),
            Just(Verdict::Hung),
            Just(Verdict::CutOff),
            Just(Verdict::InputDropped),
        ];
        // Mostly the current incarnation, sometimes an older one.
        let back = prop_oneof![3 => Just(0u64), 1 => 1u64..3];
        prop_oneof![
            4 => (back.clone(), any::<bool>()).prop_map(|(back, carrier)| Event::Exit { back, carrier }),
            2 => (verdict, back).prop_map(|(v, b)| Event::Verdict(v, b)),
            2 => Just(Event::Heal),
            3 => Just(Event::Started),
            3 => any::<bool>().prop_map(Event::Recovered),
            1 => Just(Event::Fault),
            1 => Just(Event::Lost),
        ]
    }

    fn comeback() -> impl Strategy<Value = Comeback> {
        prop_oneof![
            Just(Comeback::Fresh),
            Just(Comeback::InPlace),
            Just(Comeback::Elsewhere),
            Just(Comeback::Member),
        ]
    }

    /// The reference: what the rules in the module doc say, written
    /// plainly.
    #[derive(Debug, Default)]
    struct Model {
        started: bool,
        alive: bool,
        recovering: bool,
        failed: bool,
        incarnation: u64,
        /// The incarnation that failed, while recovering.
        lost: u64,
        judged_at: Option<(Verdict, Instant)>,
        fault_at: Option<Instant>,
        healing: bool,
        failures: u64,
        recoveries: u64,
        recovery_failures: u64,
    }

    /// The link: `wait` for restores behind the same link, never for a
    /// member; a failover only when the link was cut; a member's brought
    /// up only when it left on its own without carrier.
    fn link_ok(how: Comeback, link: Option<bool>, judged: bool, carrier: bool, cut: bool) -> bool {
        match how {
            Comeback::Fresh | Comeback::InPlace => link == Some(true),
            Comeback::Elsewhere => link == cut.then_some(true),
            Comeback::Member => link != Some(true) && link.is_some() == (!judged && !carrier),
        }
    }

    fn link_of(a: &[Action]) -> Option<bool> {
        a.iter().find_map(|x| match x {
            Action::LinkUp { wait } => Some(*wait),
            _ => None,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn one_failure_one_recovery_against_a_model(
            how in comeback(),
            events in prop::collection::vec(event(), 1..60),
        ) {
            let t0 = Instant::now();
            let mut fr = FailureRecovery::new(0);
            let mut m = Model::default();
            for (i, e) in events.into_iter().enumerate() {
                let now = t0 + Duration::from_millis(i as u64);
                match e {
                    Event::Started => {
                        // The driver adopts a process when it started one:
                        // at create, as a recovery's restore, or (a
                        // restarted daemon) one found alive.
                        if m.alive {
                            continue;
                        }
                        let inc = fr.handle_started();
                        m.incarnation += 1;
                        m.judged_at = None;
                        prop_assert_eq!(inc, m.incarnation);
                        if !m.recovering {
                            m.alive = true;
                            m.failed = false;
                        }
                        m.started = true;
                    }
                    Event::Exit { back, carrier } => {
                        let inc = m.incarnation.saturating_sub(back);
                        let a = fr.handle_exit(inc, now, now + Duration::from_micros(300), carrier, how);
                        if inc != m.incarnation || !m.alive || m.recovering {
                            prop_assert!(a.is_empty(), "stale exit acted: {a:?}");
                            continue;
                        }
                        m.alive = false;
                        m.recovering = true;
                        m.lost = m.incarnation;
                        m.failures += 1;
                        let judged = m.judged_at.take();
                        let (cause, at, noticed) = match judged {
                            Some((v, at)) => (Cause::Judged(v), at, at),
                            None => (Cause::Exited, now, now + Duration::from_micros(300)),
                        };
                        let want = Action::Detected { cause, fault_at: m.fault_at.take(), at, noticed };
                        prop_assert_eq!(&a[0], &want);
                        prop_assert_eq!(&a[1], &Action::RecoveryStarted);
                        prop_assert_eq!(a.last(), Some(&Action::Recover { comeback: how, since: at }));
                        let cut = matches!(judged, Some((Verdict::CutOff, _))) || !carrier;
                        prop_assert!(link_ok(how, link_of(&a), judged.is_some(), carrier, cut), "{how:?}: {a:?}");
                    }
                    Event::Verdict(v, back) => {
                        let inc = m.incarnation.saturating_sub(back);
                        let a = fr.handle_verdict(inc, v, now, how);
                        let acts = v != Verdict::Healthy
                            && inc == m.incarnation
                            && m.alive
                            && !m.recovering
                            && m.judged_at.is_none();
                        if acts {
                            m.judged_at = Some((v, now));
                            prop_assert_eq!(a.last(), Some(&Action::Kill));
                            // A cut-off member is stopped and reconnected
                            // before it is killed; nothing else is.
                            let reconnect = a.contains(&Action::StopAndReconnect);
                            prop_assert_eq!(reconnect, how == Comeback::Member && v == Verdict::CutOff);
                        } else {
                            prop_assert!(a.is_empty(), "verdict acted: {a:?}");
                        }
                    }
                    Event::Heal => {
                        let h = fr.handle_heal(now, how);
                        if m.recovering || m.healing {
                            prop_assert_eq!(h, Heal::Join);
                        } else if !m.started {
                            prop_assert_eq!(h, Heal::NotStarted);
                        } else if m.alive {
                            prop_assert_eq!(h, Heal::Kill);
                            m.healing = true;
                        } else {
                            prop_assert!(m.failed);
                            let Heal::Retry(a) = h else { panic!("{h:?}") };
                            prop_assert_eq!(link_of(&a), Some(true));
                            prop_assert_eq!(a.last(), Some(&Action::Recover { comeback: how, since: now }));
                            m.recovering = true;
                            m.lost = m.incarnation;
                            m.healing = true;
                        }
                    }
                    Event::Recovered(ok) => {
                        let a = fr.handle_recovered(now, if ok { Ok(()) } else { Err("no".into()) });
                        if !m.recovering {
                            prop_assert!(a.is_empty());
                            continue;
                        }
                        m.recovering = false;
                        m.healing = false;
                        // A recovery that adopted no new process failed.
                        if ok && m.incarnation != m.lost {
                            m.recoveries += 1;
                            m.alive = true;
                            prop_assert!(matches!(a[..], [Action::Finished { incarnation, .. }] if incarnation == m.incarnation), "{:?}", a);
                        } else {
                            m.recovery_failures += 1;
                            m.alive = false;
                            m.failed = true;
                            prop_assert!(matches!(a[..], [Action::RecoveryFailed { .. }]), "{:?}", a);
                        }
                    }
                    Event::Fault => {
                        fr.handle_fault(now);
                        m.fault_at = Some(now);
                    }
                    Event::Lost => {
                        let a = fr.handle_lost(now, how);
                        if m.recovering {
                            prop_assert!(a.is_empty());
                            continue;
                        }
                        m.alive = false;
                        m.recovering = true;
                        m.started = true;
                        m.lost = m.incarnation;
                        m.failures += 1;
                        m.judged_at = None;
                        let want = Action::Detected { cause: Cause::Lost, fault_at: m.fault_at.take(), at: now, noticed: now };
                        prop_assert_eq!(&a[0], &want);
                        prop_assert_eq!(link_of(&a), Some(how != Comeback::Member));
                        prop_assert_eq!(a.last(), Some(&Action::Recover { comeback: how, since: now }));
                    }
                }
                // At most one recovery at a time, and the phase says so.
                let phase = fr.phase();
                prop_assert_eq!(phase == Phase::Recovering, m.recovering);
                prop_assert_eq!(phase == Phase::Running, m.alive && !m.recovering);
                prop_assert_eq!(fr.healing(), m.healing);
                prop_assert_eq!(fr.incarnation(), m.incarnation);
                prop_assert_eq!(fr.probed(), (m.alive && !m.recovering && m.judged_at.is_none()).then_some(m.incarnation));
                let c = fr.counters();
                prop_assert_eq!((c.failures, c.recoveries, c.recovery_failures), (m.failures, m.recoveries, m.recovery_failures));
            }
        }
    }

    #[test]
    fn a_restarted_daemon_s_finding_runs_once_adopted_and_a_heal_abandoned_waits_for_nothing() {
        let mut fr = FailureRecovery::found(
            Phase::Failed,
            0,
            Counters {
                failures: 2,
                ..Counters::default()
            },
        );
        assert_eq!(fr.phase(), Phase::Failed);
        assert_eq!(fr.handle_started(), 1);
        assert_eq!(fr.phase(), Phase::Running);
        assert_eq!(fr.counters().failures, 2);
        assert_eq!(
            fr.handle_heal(Instant::now(), Comeback::InPlace),
            Heal::Kill
        );
        assert_eq!(
            fr.handle_heal(Instant::now(), Comeback::InPlace),
            Heal::Join
        );
        fr.handle_heal_abandoned();
        assert_eq!(
            fr.handle_heal(Instant::now(), Comeback::InPlace),
            Heal::Kill
        );
    }

    #[test]
    fn recovery_is_timed_from_the_verdict_not_the_exit() {
        let t0 = Instant::now();
        let mut fr = FailureRecovery::new(0);
        let inc = fr.handle_started();
        fr.handle_fault(t0);
        let judged = t0 + Duration::from_millis(300);
        assert_eq!(
            fr.handle_verdict(inc, Verdict::Hung, judged, Comeback::InPlace),
            vec![Action::Kill]
        );
        // Judged once.
        assert!(fr
            .handle_verdict(inc, Verdict::CutOff, judged, Comeback::InPlace)
            .is_empty());
        let exited = judged + Duration::from_millis(2);
        let a = fr.handle_exit(inc, exited, exited, true, Comeback::InPlace);
        assert_eq!(
            a[0],
            Action::Detected {
                cause: Cause::Judged(Verdict::Hung),
                fault_at: Some(t0),
                at: judged,
                noticed: judged,
            }
        );
        fr.handle_started();
        let done = judged + Duration::from_millis(40);
        assert!(matches!(
            fr.handle_recovered(done, Ok(()))[..],
            [Action::Finished { took, incarnation: 2 }] if took == Duration::from_millis(40)
        ));
    }
}
