//! The checkpoint protocol of one VNF as two state machines: up to the
//! dump ([`Checkpointing`]), then from the dump to the commit
//! ([`Committing`]). Each asks for one step at a time (`poll`) and is fed
//! what came of it (`handle_*`); a driver ([`super::checkpointer`]) does the
//! I/O: looking at the VNF's sockets, signals, the SFF, CRIU. No clock:
//! every moment is passed in.
//!
//! ```text
//! Draining ──empty──▶ Stop ──▶ Settling ──still empty──▶ Frozen ──intact──▶ Mark ──▶ Dump ──▶ Verifying ──still empty──▶ Resume ──▶ Report ──▶ Done
//!    ▲  │ not empty,            │ not empty                   │ in transit         any error after Stop, or
//!    │  │ wait                  ▼                             ▼                    not empty after the dump:
//!    └──┴──────────────────── Resume ◀──────────────────────────                   Resume, then Fail
//! ```
//!
//! Invariants (checked against a reference model below):
//! - the mark is taken only while the VNF is stopped by us and after a look,
//!   at least `settle` after the stop, found its socket (and ring) empty: a
//!   frame still on its way at the first look would otherwise be left in a
//!   socket queue, which is not in the image;
//! - the SFF may refuse the mark for now, frames for the VNF still on their
//!   way out of its tx ring ([`Checkpointing::handle_mark_in_transit`]):
//!   the VNF is resumed and drains again (they land after the stop, where
//!   no look is sure to see them before the dump);
//! - the image is reported (delivery resumes) only after a look taken once
//!   the dump is over, the VNF still stopped, found its socket empty: a
//!   frame that landed after the mark is in no image, yet the mark counts
//!   it consumed, so the checkpoint fails instead;
//! - a VNF stopped by someone else is never resumed by us (it may be the
//!   hang the Failure Detector is about to judge), and is not checkpointed;
//! - every stop of ours is followed by exactly one resume before the end:
//!   the VNF is never left stopped;
//! - the protocol ends once, in [`Step::Done`] or [`Step::Fail`], and every
//!   failure (`NotDrained` only after the drain timeout) ends in `Fail`, so
//!   the SFF is told and releases nothing.

use std::time::{Duration, Instant};

/// What the VNF looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// Bytes queued on its packet sockets.
    pub rmem: u64,
    /// Frames wait unread in its receive ring.
    pub ring_unread: bool,
    /// Someone else has it stopped (looked at only while draining, before
    /// our own stop).
    pub stopped: bool,
}

impl Look {
    fn empty(&self) -> bool {
        self.rmem == 0 && !self.ring_unread
    }
}

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<E> {
    /// Look at the VNF: [`Checkpointing::handle_look`].
    Look,
    /// Sleep this long, then poll again.
    Sleep(Duration),
    /// Stop the VNF (SIGSTOP): [`Checkpointing::handle_stop`].
    Stop,
    /// Check that nothing sent to it was lost on its link or at its
    /// sockets since the restore point: [`Checkpointing::handle_intact`].
    CheckIntact,
    /// Tell the SFF `Quiesced` (the mark): [`Checkpointing::handle_mark`].
    Mark,
    /// Dump it: [`Checkpointing::handle_dump`].
    Dump,
    /// Resume it (SIGCONT), then poll again.
    Resume,
    /// Tell the SFF `CheckpointDumped` (delivery resumes):
    /// [`Checkpointing::handle_report`].
    Report,
    /// The end: the VNF was frozen (stopped, drained) from `frozen` until
    /// `resumed`.
    Done {
        /// When it was stopped for the dump.
        frozen: Instant,
        /// When it was resumed.
        resumed: Instant,
    },
    /// The end: tell the SFF `CheckpointFailed`, with why.
    Fail(Failure<E>),
}

/// Why a checkpoint failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure<E> {
    /// Its socket still held `rmem` bytes at the drain timeout.
    NotDrained {
        /// Bytes queued at the last look.
        rmem: u64,
    },
    /// Frames for it were still leaving the SFF at the drain timeout (the
    /// mark refused for that at every try).
    InTransit,
    /// A frame landed in its socket after the mark, while it was stopped
    /// for the dump: the image lacks it though the mark counts it.
    LandedDuringDump {
        /// Bytes queued at the look after the dump.
        rmem: u64,
    },
    /// Someone else stopped it: not checkpointed (nor resumed).
    Stopped,
    /// Polled after the protocol had ended.
    Ended,
    /// A step failed.
    Step(E),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Draining,
    Stopping,
    Settling {
        frozen: Instant,
    },
    Frozen {
        frozen: Instant,
    },
    Marking {
        frozen: Instant,
    },
    Dumping {
        frozen: Instant,
    },
    /// Dumped, still stopped: one look more.
    Verifying {
        frozen: Instant,
    },
    Reporting {
        frozen: Instant,
        resumed: Instant,
    },
    Over,
}

/// One checkpoint's protocol up to the dump, for a VNF.
#[derive(Debug)]
pub struct Checkpointing<E> {
    started: Instant,
    settle: Duration,
    timeout: Duration,
    poll_every: Duration,
    state: State,
    /// Stopped by us and not resumed yet.
    stopped: bool,
    /// What comes once the VNF is resumed.
    then: Option<Step<E>>,
    /// The next look is not before this.
    wait_until: Option<Instant>,
}

impl<E> Checkpointing<E> {
    /// A checkpoint begun at `started` (delivery to the VNF stopped):
    /// stopped outputs get `settle` to arrive, the VNF `timeout` to drain,
    /// looked at every `poll_every` meanwhile.
    pub fn new(
        started: Instant,
        settle: Duration,
        timeout: Duration,
        poll_every: Duration,
    ) -> Self {
        Self {
            started,
            settle,
            timeout,
            poll_every,
            state: State::Draining,
            stopped: false,
            then: None,
            wait_until: None,
        }
    }

    /// What to do next, at `now`.
    pub fn poll(&mut self, now: Instant) -> Step<E> {
        if let Some(until) = self.wait_until {
            if now < until {
                return Step::Sleep(until - now);
            }
            self.wait_until = None;
        }
        if self.stopped && self.then.is_some() {
            self.stopped = false;
            return Step::Resume;
        }
        if let Some(then) = self.then.take() {
            if matches!(then, Step::Fail(_)) {
                self.state = State::Over;
            }
            return then;
        }
        match self.state {
            State::Draining | State::Settling { .. } | State::Verifying { .. } => Step::Look,
            State::Stopping => Step::Stop,
            State::Frozen { .. } => Step::CheckIntact,
            State::Marking { .. } => Step::Mark,
            State::Dumping { .. } => Step::Dump,
            State::Reporting { .. } => Step::Report,
            State::Over => Step::Fail(Failure::Ended),
        }
    }

    fn fail(&mut self, why: Failure<E>) {
        self.then = Some(Step::Fail(why));
    }

    /// What a look at `now` found (or why it could not be taken).
    pub fn handle_look(&mut self, now: Instant, look: Result<Look, E>) {
        let look = match look {
            Ok(l) => l,
            Err(e) => return self.fail(Failure::Step(e)),
        };
        match self.state {
            State::Draining => {
                // A VNF stopped by someone else must stay stopped: our
                // SIGCONT would end a hang the Failure Detector is about
                // to judge.
                if look.stopped {
                    self.fail(Failure::Stopped);
                } else if look.empty() {
                    self.state = State::Stopping;
                } else if now.saturating_duration_since(self.started) > self.timeout {
                    self.fail(Failure::NotDrained { rmem: look.rmem });
                } else {
                    self.wait_until = Some(now + self.poll_every);
                }
            }
            State::Settling { frozen } => {
                if look.empty() {
                    self.state = State::Frozen { frozen };
                } else if now.saturating_duration_since(self.started) > self.timeout {
                    // Resumed (the next poll), then failed: the drain
                    // timeout bounds every round, not only the first.
                    self.fail(Failure::NotDrained { rmem: look.rmem });
                } else {
                    // A frame on its way at the first look landed: resume
                    // (the next poll), let it be read, look again.
                    self.state = State::Draining;
                    self.then = Some(Step::Look);
                }
            }
            // (Its `stopped` says nothing here: CRIU, leaving it running,
            // detaches and stops it again, and a look may fall between.)
            State::Verifying { frozen } => {
                if look.empty() {
                    self.state = State::Reporting {
                        frozen,
                        resumed: now,
                    };
                    self.then = Some(Step::Report);
                } else {
                    self.fail(Failure::LandedDuringDump { rmem: look.rmem });
                }
            }
            _ => {}
        }
    }

    /// The stop was sent at `now` (or failed).
    pub fn handle_stop(&mut self, now: Instant, r: Result<(), E>) {
        if self.state != State::Stopping {
            return;
        }
        match r {
            Ok(()) => {
                self.stopped = true;
                self.state = State::Settling { frozen: now };
                // Its last outputs get `settle` to arrive.
                self.wait_until = Some(now + self.settle);
            }
            Err(e) => self.fail(Failure::Step(e)),
        }
    }

    /// Whether nothing sent to the VNF was lost.
    pub fn handle_intact(&mut self, r: Result<(), E>) {
        if let State::Frozen { frozen } = self.state {
            match r {
                Ok(()) => self.state = State::Marking { frozen },
                Err(e) => self.fail(Failure::Step(e)),
            }
        }
    }

    /// Whether the SFF took the mark.
    pub fn handle_mark(&mut self, r: Result<(), E>) {
        if let State::Marking { frozen } = self.state {
            match r {
                Ok(()) => self.state = State::Dumping { frozen },
                Err(e) => self.fail(Failure::Step(e)),
            }
        }
    }

    /// The SFF refused the mark for now: frames for the VNF were still in
    /// its tx ring, sent only now, into the stopped VNF's socket. It is
    /// resumed (the next poll) to read them, and drains again; past the
    /// drain timeout the checkpoint fails.
    pub fn handle_mark_in_transit(&mut self, now: Instant) {
        if let State::Marking { .. } = self.state {
            if now.saturating_duration_since(self.started) > self.timeout {
                self.fail(Failure::InTransit);
            } else {
                self.state = State::Draining;
                self.then = Some(Step::Look);
            }
        }
    }

    /// Whether the dump succeeded. The VNF, still stopped, is looked at
    /// once more, then resumed.
    pub fn handle_dump(&mut self, r: Result<(), E>) {
        if let State::Dumping { frozen } = self.state {
            match r {
                Ok(()) => {
                    self.state = State::Verifying { frozen };
                }
                Err(e) => self.fail(Failure::Step(e)),
            }
        }
    }

    /// Whether the SFF took the report.
    pub fn handle_report(&mut self, r: Result<(), E>) {
        if let State::Reporting { frozen, resumed } = self.state {
            self.state = State::Over;
            self.then = Some(match r {
                Ok(()) => Step::Done { frozen, resumed },
                Err(e) => Step::Fail(Failure::Step(e)),
            });
        }
    }
}

/// What the SFF said to `CheckpointDone`.
#[derive(Debug, PartialEq, Eq)]
pub enum Done<E> {
    /// Committed: what it includes was released; `fallback` is the
    /// checkpoint a corrupt image would fall back to.
    Released {
        /// The fallback checkpoint, if any.
        fallback: Option<u64>,
    },
    /// Refused (the VNF failed meanwhile, the SFF aborted it): not
    /// committed.
    Refused(E),
    /// No answer (the SFF's socket broke): it may have committed and
    /// released before the answer was lost.
    Lost(E),
    /// Its agent changed meanwhile (unprotected, moved): not asked.
    Retired,
}

/// What the driver does next, from a dumped image to its commit.
#[derive(Debug, PartialEq, Eq)]
pub enum CommitStep<E> {
    /// Put the image into the store: [`Committing::handle_stored`].
    Store,
    /// Copy the stored file to another host: [`Committing::handle_copied`].
    Copy,
    /// Tell the SFF `CheckpointDone` (unless the agent changed meanwhile):
    /// [`Committing::handle_done`].
    Commit,
    /// The end, committed: remove the image's directory once it has been
    /// handed on, and keep only `keep` of this VNF's checkpoints in the
    /// store (this one and its fallback: what the SFF can restore).
    Committed {
        /// Checkpoints kept.
        keep: Vec<u64>,
    },
    /// The end, not committed: remove the image's directory; `unstore`:
    /// remove the checkpoint from the store (it must never be restored);
    /// `tell_sff`: tell the SFF `CheckpointFailed` (nothing released).
    Aborted {
        /// Remove it from the store.
        unstore: bool,
        /// Tell the SFF.
        tell_sff: bool,
        /// Why (`None`: the agent changed meanwhile).
        why: Option<E>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    Storing,
    Copying,
    Committing,
    Over,
}

/// One checkpoint from its dump to its commit (step 6), as a machine: a
/// checkpoint is committed, and releases what it includes, only once its
/// image is durable in the store, and on another host when `copies` says
/// so; a checkpoint not committed is never left restorable (removed from
/// the store) unless the SFF may have committed it (its answer lost); the
/// SFF is told of a failure exactly when it has not decided itself.
/// Checked against a reference in the tests below.
#[derive(Debug)]
pub struct Committing<E> {
    id: u64,
    copies: bool,
    state: Commit,
    end: Option<CommitStep<E>>,
}

impl<E> Committing<E> {
    /// Checkpoint `id`, dumped; `copies`: it needs a copy on another host.
    pub fn new(id: u64, copies: bool) -> Self {
        Self {
            id,
            copies,
            state: Commit::Storing,
            end: None,
        }
    }

    /// What to do next. After the end, [`CommitStep::Aborted`] with no
    /// reason and nothing to do.
    pub fn poll(&mut self) -> CommitStep<E> {
        if let Some(end) = self.end.take() {
            self.state = Commit::Over;
            return end;
        }
        match self.state {
            Commit::Storing => CommitStep::Store,
            Commit::Copying => CommitStep::Copy,
            Commit::Committing => CommitStep::Commit,
            Commit::Over => CommitStep::Aborted {
                unstore: false,
                tell_sff: false,
                why: None,
            },
        }
    }

    fn abort(&mut self, unstore: bool, tell_sff: bool, why: Option<E>) {
        self.end = Some(CommitStep::Aborted {
            unstore,
            tell_sff,
            why,
        });
    }

    /// Whether the image is in the store now.
    pub fn handle_stored(&mut self, r: Result<(), E>) {
        if self.state != Commit::Storing {
            return;
        }
        match r {
            Ok(()) if self.copies => self.state = Commit::Copying,
            Ok(()) => self.state = Commit::Committing,
            // Nothing stored: nothing to remove there.
            Err(e) => self.abort(false, true, Some(e)),
        }
    }

    /// Whether another host keeps a copy now.
    pub fn handle_copied(&mut self, r: Result<(), E>) {
        if self.state != Commit::Copying {
            return;
        }
        match r {
            Ok(()) => self.state = Commit::Committing,
            // No copy, no commit.
            Err(e) => self.abort(true, true, Some(e)),
        }
    }

    /// What the SFF said to `CheckpointDone` (or that it was not asked).
    pub fn handle_done(&mut self, done: Done<E>) {
        if self.state != Commit::Committing {
            return;
        }
        match done {
            Done::Released { fallback } => {
                let keep = std::iter::once(self.id).chain(fallback).collect();
                self.end = Some(CommitStep::Committed { keep });
            }
            // The SFF aborted it itself.
            Done::Refused(e) => self.abort(true, false, Some(e)),
            // Maybe committed: kept (the next commit's retention drops it
            // if the SFF cannot restore it).
            Done::Lost(e) => self.abort(false, false, Some(e)),
            // The hop must not wait for this checkpoint for ever.
            Done::Retired => self.abort(true, true, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SETTLE: Duration = Duration::from_millis(3);
    const TIMEOUT: Duration = Duration::from_millis(500);
    const EVERY: Duration = Duration::from_micros(200);
    /// A look at a VNF that holds nothing and runs.
    const EMPTY: Look = Look {
        rmem: 0,
        ring_unread: false,
        stopped: false,
    };

    /// What the world answers, drawn in advance.
    #[derive(Debug, Clone)]
    struct World {
        looks: Vec<(u64, bool, bool, bool)>,
        fails: Vec<u8>,
        step_ms: Vec<u64>,
        /// Per mark: the SFF still had frames for the VNF in its tx ring.
        in_transit: Vec<bool>,
        /// Per look after a dump: a frame had landed meanwhile.
        landed: Vec<bool>,
    }

    fn world() -> impl Strategy<Value = World> {
        (
            prop::collection::vec(
                (
                    0u64..3,
                    any::<bool>(),
                    prop::bool::weighted(0.05),
                    prop::bool::weighted(0.03),
                ),
                1..80,
            ),
            prop::collection::vec(0u8..20, 8),
            prop::collection::vec(0u64..40, 1..80),
            prop::collection::vec(prop::bool::weighted(0.3), 1..8),
            prop::collection::vec(prop::bool::weighted(0.15), 1..8),
        )
            .prop_map(|(looks, fails, step_ms, in_transit, landed)| World {
                looks,
                fails,
                step_ms,
                in_transit,
                landed,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn the_mark_is_taken_only_stopped_and_empty_and_the_vnf_is_never_left_stopped(w in world()) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut c: Checkpointing<&'static str> = Checkpointing::new(t0, SETTLE, TIMEOUT, EVERY);
            // The reference: what the world has seen.
            let mut stopped_by_us = false;
            let mut stopped_at: Option<Instant> = None;
            let mut empty_since_stop_settled = false;
            let mut marked = false;
            let mut dumped = false;
            let mut empty_after_dump = false;
            let mut resumes_after_dump = 0;
            let mut stopped_by_other = false;
            let mut looks = w.looks.iter().cycle();
            let mut in_transit = w.in_transit.iter().cycle();
            let mut landed = w.landed.iter().cycle();
            // Told of frames in transit: not marked again before a resume.
            let mut must_resume = false;
            let mut steps = w.step_ms.iter().cycle();
            let fail = |i: usize| w.fails[i] == 0;
            let mut ended = None;
            // Enough polls to reach the drain timeout with time passing
            // only by the machine's own sleeps (a look and a sleep of EVERY
            // per round: 2 x TIMEOUT / EVERY polls, 5,000: CI found a world
            // that never drains and ran out at exactly the timeout).
            for _ in 0..20_000 {
                now += Duration::from_micros(*steps.next().unwrap() * 50);
                match c.poll(now) {
                    Step::Look => {
                        let &(rmem, unread, other, err) = looks.next().unwrap();
                        if err {
                            c.handle_look(now, Err("look"));
                            continue;
                        }
                        // Someone else's stop shows only while we have not
                        // stopped it ourselves.
                        let other = other && !stopped_by_us;
                        stopped_by_other |= other;
                        let mut look = Look { rmem, ring_unread: unread && rmem == 0, stopped: other || stopped_by_us };
                        if dumped && stopped_by_us {
                            look.rmem = u64::from(*landed.next().unwrap()) * 64;
                            look.ring_unread = false;
                        }
                        if stopped_by_us {
                            let settled = stopped_at.is_some_and(|s| now >= s + SETTLE);
                            prop_assert!(settled, "looked before the outputs settled");
                            empty_since_stop_settled = look.empty();
                            if dumped {
                                empty_after_dump = look.empty();
                            }
                        }
                        c.handle_look(now, Ok(look));
                    }
                    Step::Sleep(d) => {
                        prop_assert!(d > Duration::ZERO);
                        now += d;
                    }
                    Step::Stop => {
                        prop_assert!(!stopped_by_us);
                        prop_assert!(!stopped_by_other, "stopped a VNF someone else stopped");
                        if fail(0) {
                            c.handle_stop(now, Err("stop"));
                        } else {
                            stopped_by_us = true;
                            stopped_at = Some(now);
                            empty_since_stop_settled = false;
                            c.handle_stop(now, Ok(()));
                        }
                    }
                    Step::Resume => {
                        prop_assert!(stopped_by_us, "resumed a VNF we had not stopped");
                        must_resume = false;
                        stopped_by_us = false;
                        stopped_at = None;
                        if dumped {
                            resumes_after_dump += 1;
                        }
                    }
                    Step::CheckIntact => {
                        prop_assert!(stopped_by_us && empty_since_stop_settled);
                        c.handle_intact(if fail(1) { Err("lost") } else { Ok(()) });
                    }
                    Step::Mark => {
                        // The invariant: stopped by us, and empty at a look
                        // taken after the outputs settled.
                        prop_assert!(stopped_by_us && empty_since_stop_settled, "marked while not frozen and empty");
                        prop_assert!(!must_resume, "marked again without letting it read what was in transit");
                        if *in_transit.next().unwrap() {
                            // They land now, in the stopped VNF's socket.
                            must_resume = true;
                            empty_since_stop_settled = false;
                            c.handle_mark_in_transit(now);
                        } else {
                            marked = !fail(2);
                            c.handle_mark(if marked { Ok(()) } else { Err("mark") });
                        }
                    }
                    Step::Dump => {
                        prop_assert!(marked && stopped_by_us);
                        dumped = true;
                        c.handle_dump(if fail(3) { Err("dump") } else { Ok(()) });
                    }
                    Step::Report => {
                        prop_assert!(dumped && !stopped_by_us && resumes_after_dump == 1);
                        prop_assert!(empty_after_dump, "reported an image a frame landed beside");
                        c.handle_report(if fail(4) { Err("report") } else { Ok(()) });
                    }
                    Step::Done { frozen, resumed } => {
                        prop_assert!(frozen <= resumed);
                        ended = Some(Ok(()));
                        break;
                    }
                    Step::Fail(why) => {
                        if let Failure::NotDrained { .. } = why {
                            prop_assert!(now.saturating_duration_since(t0) > TIMEOUT);
                        }
                        if let Failure::InTransit = why {
                            prop_assert!(now.saturating_duration_since(t0) > TIMEOUT);
                        }
                        if let Failure::LandedDuringDump { .. } = why {
                            prop_assert!(dumped && !empty_after_dump);
                        }
                        if let Failure::Stopped = why {
                            prop_assert!(stopped_by_other);
                        }
                        ended = Some(Err(why));
                        break;
                    }
                }
            }
            // It ends, and never with the VNF left stopped by us.
            prop_assert!(ended.is_some(), "did not end");
            prop_assert!(!stopped_by_us, "left stopped: {ended:?}");
            if let Some(Ok(())) = ended {
                prop_assert!(marked && dumped);
            }
        }
    }

    #[test]
    fn a_frame_landing_after_the_stop_resumes_it_and_starts_over() {
        let t0 = Instant::now();
        let mut c: Checkpointing<()> = Checkpointing::new(t0, SETTLE, TIMEOUT, EVERY);
        let empty = EMPTY;
        assert_eq!(c.poll(t0), Step::Look);
        c.handle_look(t0, Ok(empty));
        assert_eq!(c.poll(t0), Step::Stop);
        c.handle_stop(t0, Ok(()));
        assert_eq!(c.poll(t0), Step::Sleep(SETTLE));
        let t1 = t0 + SETTLE;
        assert_eq!(c.poll(t1), Step::Look);
        c.handle_look(t1, Ok(Look { rmem: 64, ..empty }));
        assert_eq!(c.poll(t1), Step::Resume);
        assert_eq!(c.poll(t1), Step::Look);
        c.handle_look(t1, Ok(empty));
        assert_eq!(c.poll(t1), Step::Stop);
    }

    #[test]
    fn frames_still_in_transit_at_the_mark_resume_it_and_a_frame_landing_during_the_dump_fails_it()
    {
        let t0 = Instant::now();
        let mut c: Checkpointing<()> = Checkpointing::new(t0, SETTLE, TIMEOUT, EVERY);
        let empty = EMPTY;
        let freeze = |c: &mut Checkpointing<()>, t: Instant| {
            assert_eq!(c.poll(t), Step::Look);
            c.handle_look(t, Ok(empty));
            assert_eq!(c.poll(t), Step::Stop);
            c.handle_stop(t, Ok(()));
            let t = t + SETTLE;
            assert_eq!(c.poll(t), Step::Look);
            c.handle_look(t, Ok(empty));
            assert_eq!(c.poll(t), Step::CheckIntact);
            c.handle_intact(Ok(()));
            assert_eq!(c.poll(t), Step::Mark);
            t
        };
        let t1 = freeze(&mut c, t0);
        c.handle_mark_in_transit(t1);
        assert_eq!(c.poll(t1), Step::Resume);
        let t2 = freeze(&mut c, t1);
        c.handle_mark(Ok(()));
        assert_eq!(c.poll(t2), Step::Dump);
        c.handle_dump(Ok(()));
        // Still stopped: looked at before the resume.
        assert_eq!(c.poll(t2), Step::Look);
        c.handle_look(
            t2,
            Ok(Look {
                rmem: 64,
                stopped: true,
                ..empty
            }),
        );
        assert_eq!(c.poll(t2), Step::Resume);
        assert_eq!(
            c.poll(t2),
            Step::Fail(Failure::LandedDuringDump { rmem: 64 })
        );
    }

    /// How the world answers a commit: store, copy, the SFF.
    #[derive(Debug, Clone, Copy)]
    enum SffSays {
        Released(Option<u64>),
        Refused,
        Lost,
        Retired,
    }

    fn sff_says() -> impl Strategy<Value = SffSays> {
        prop_oneof![
            prop::option::of(0u64..5).prop_map(SffSays::Released),
            Just(SffSays::Refused),
            Just(SffSays::Lost),
            Just(SffSays::Retired),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn a_checkpoint_commits_only_stored_and_copied_and_is_never_left_restorable_uncommitted(
            copies in any::<bool>(),
            stored_ok in any::<bool>(),
            copied_ok in any::<bool>(),
            says in sff_says(),
            extra in prop::collection::vec(0u8..2, 0..4),
        ) {
            let id = 7u64;
            let mut c: Committing<&'static str> = Committing::new(id, copies);
            // The reference: what the world has seen.
            let (mut in_store, mut on_peer, mut asked_sff) = (false, false, false);
            let end = loop {
                let step = c.poll();
                // Steps done so far: 0 store, 1 copy, 2 commit.
                let at = match step {
                    CommitStep::Store => 0,
                    CommitStep::Copy => 1,
                    _ => 2,
                };
                match step {
                    CommitStep::Store => {
                        in_store = stored_ok;
                        c.handle_stored(if stored_ok { Ok(()) } else { Err("store") });
                    }
                    CommitStep::Copy => {
                        prop_assert!(copies && in_store, "a copy of nothing stored");
                        on_peer = copied_ok;
                        c.handle_copied(if copied_ok { Ok(()) } else { Err("copy") });
                    }
                    CommitStep::Commit => {
                        prop_assert!(in_store && (on_peer || !copies), "committed before durable");
                        asked_sff = true;
                        c.handle_done(match says {
                            SffSays::Released(f) => Done::Released { fallback: f },
                            SffSays::Refused => Done::Refused("refused"),
                            SffSays::Lost => Done::Lost("lost"),
                            SffSays::Retired => Done::Retired,
                        });
                    }
                    end => break end,
                }
                // Late answers to steps already answered change nothing.
                for &e in &extra {
                    match e {
                        0 if at > 0 => c.handle_stored(Ok(())),
                        1 if at > 1 => c.handle_copied(Ok(())),
                        _ => {}
                    }
                }
            };
            let durable = stored_ok && (copied_ok || !copies);
            match end {
                CommitStep::Committed { keep } => {
                    prop_assert!(durable && asked_sff);
                    prop_assert!(matches!(says, SffSays::Released(_)));
                    prop_assert_eq!(keep[0], id);
                }
                CommitStep::Aborted { unstore, tell_sff, .. } => {
                    // The SFF is told exactly when it has not decided.
                    let sff_decided = matches!(says, SffSays::Refused | SffSays::Lost) && asked_sff;
                    prop_assert_eq!(tell_sff, !sff_decided);
                    // Never left restorable unless the SFF may have
                    // committed it (its answer lost).
                    let maybe_committed = asked_sff && matches!(says, SffSays::Lost);
                    if in_store && !maybe_committed {
                        prop_assert!(unstore, "an uncommitted checkpoint left in the store");
                    }
                    if maybe_committed {
                        prop_assert!(!unstore, "a checkpoint the SFF may restore was removed");
                    }
                }
                other => prop_assert!(false, "ended in {other:?}"),
            }
            // Once over, it stays over.
            let again = matches!(
                c.poll(),
                CommitStep::Aborted { unstore: false, tell_sff: false, why: None }
            );
            prop_assert!(again);
        }
    }
}
