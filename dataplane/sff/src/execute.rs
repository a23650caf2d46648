//! The SFF thread's side of the control protocol: each [`Request`] carried
//! out between two forwarding rounds, its [`Response`] built. What to
//! decide is the Hold/Release core's (`Hop::handle_*`, with `now` passed
//! in); this only moves ports, windows and pool slots as it says.

use std::time::Instant;

use nham_dataplane::hold::{CheckpointId, CheckpointPhase, HoldError, HopState, RestorePlan};
use nham_dataplane::window::VnfCapacity;

use crate::protocol::{FailOverOutcome, Request, Response, SffStatus};
use crate::{frozen_window, Engine, HopStatus, PhaseStatus, PortSlot, SffCounters, SffError};

fn refused(e: impl std::fmt::Display) -> Response {
    Response::Refused(e.to_string())
}

/// Why the SFF said no: for now (the core's refusal ends by itself) or for
/// good.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// See [`Response::Busy`].
    Busy(String),
    /// See [`Response::Refused`].
    Refused(String),
}

impl Refusal {
    /// The same refusal, its reason prefixed with `what` it is about.
    pub(crate) fn about(self, what: impl std::fmt::Display) -> Self {
        match self {
            Self::Busy(why) => Self::Busy(format!("{what}: {why}")),
            Self::Refused(why) => Self::Refused(format!("{what}: {why}")),
        }
    }
}

impl From<HoldError> for Refusal {
    fn from(e: HoldError) -> Self {
        if e.is_transient() {
            Self::Busy(e.to_string())
        } else {
            Self::Refused(e.to_string())
        }
    }
}

impl From<SffError> for Refusal {
    fn from(e: SffError) -> Self {
        match e {
            SffError::Hold(h) => h.into(),
            e => Self::Refused(e.to_string()),
        }
    }
}

impl From<String> for Refusal {
    fn from(why: String) -> Self {
        Self::Refused(why)
    }
}

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Busy(why) => Response::Busy(why),
            Refusal::Refused(why) => Response::Refused(why),
        }
    }
}

/// A core's answer as the protocol's.
fn answer<T, E: Into<Refusal>>(r: Result<T, E>, ok: impl FnOnce(T) -> Response) -> Response {
    r.map_or_else(|e| e.into().into(), ok)
}

impl Engine {
    /// Carries out `request` at `now`.
    pub(crate) fn execute(&mut self, request: Request, now: Instant) -> Response {
        let hops = self.hops.len();
        let hop = match &request {
            Request::BeginCheckpoint { hop }
            | Request::Quiesced { hop, .. }
            | Request::CheckpointDumped { hop, .. }
            | Request::CheckpointDone { hop, .. }
            | Request::CheckpointFailed { hop, .. }
            | Request::Failure { hop }
            | Request::Restored { hop, .. }
            | Request::SocketRead { hop, .. }
            | Request::SetCapacity { hop, .. }
            | Request::SetProtected { hop, .. }
            | Request::FailOver { hop, .. }
            | Request::PrepareStandby { hop, .. }
            | Request::AttachStandby { hop, .. }
            | Request::SetMembers { hop, .. }
            | Request::MemberFailed { hop, .. }
            | Request::ReplaceMember { hop, .. }
            | Request::MemberRestored { hop, .. } => Some(*hop),
            Request::Hello { .. } | Request::Stats | Request::Status | Request::Shutdown => None,
        };
        if let Some(hop) = hop.filter(|&h| h >= hops) {
            return refused(format!("no hop {hop} (the chain has {hops})"));
        }
        if let Request::MemberFailed { hop, member }
        | Request::MemberRestored { hop, member, .. }
        | Request::ReplaceMember { hop, member, .. } = &request
        {
            if *member >= self.hops[*hop].len() {
                return refused(format!("hop {hop} has no member {member}"));
            }
        }
        match request {
            Request::Hello { .. } => Response::Hello {
                version: crate::protocol::PROTOCOL_VERSION,
            },
            // The socket server's business; a thread in this process is
            // stopped by its owner.
            Request::Shutdown => Response::Ok,
            Request::Stats => Response::Stats(self.counters.snapshot()),
            Request::Status => Response::Status(SffStatus {
                pid: std::process::id(),
                hops: self.status(),
            }),
            Request::SocketRead { hop, member, sent } => {
                if let Some(r) = self.read_upto[hop].get_mut(member) {
                    *r = (*r).max(sent);
                }
                Response::Ok
            }
            Request::SetCapacity {
                hop,
                member,
                capacity,
            } => match self.in_flight[hop].get_mut(member) {
                Some(w) => {
                    let before = w.capacity();
                    w.set_capacity(VnfCapacity {
                        max_frames: capacity.max_frames.min(self.config.vnf_window),
                        ..capacity
                    });
                    Response::Capacity(before)
                }
                None => refused(format!("hop {hop} has no member {member}")),
            },
            Request::SetMembers { hop, keep, add } => {
                answer(self.set_members(hop, keep, add), |()| Response::Ok)
            }
            // (Done by the asking thread, where the SFF runs in its
            // namespace; else the attach opens the port.)
            Request::PrepareStandby { .. } => Response::Ok,
            Request::AttachStandby { hop, spec } => {
                self.standby[hop] = None;
                answer(self.open_port(&spec), |a| {
                    self.standby[hop] = Some((spec, PortSlot::Open(a)));
                    Response::Ok
                })
            }
            Request::Quiesced { hop, id } => self.quiesced(hop, id, now),
            Request::Failure { hop } => self
                .failure(hop, now)
                .map_or_else(|| refused("the chain has no hops"), Response::Plan),
            Request::Restored { hop, from } => self.restored(hop, from, now),
            Request::FailOver { hop, to } => self.fail_over(hop, to, now),
            Request::MemberFailed { hop, member } => {
                self.in_flight[hop][member].clear();
                let Some(chain) = self.chain.as_mut() else {
                    return refused("the chain has no hops");
                };
                let r = chain.hop_mut(hop).handle_member_failed(member, now);
                // What is still on its way to the dead member must not
                // reach the copy restored in its place.
                self.flush_port(hop, member);
                answer(r, Response::MemberFailure)
            }
            Request::ReplaceMember { hop, member, spec } => {
                answer(self.replace_member(hop, member, spec), |()| Response::Ok)
            }
            Request::MemberRestored { hop, member, from } => {
                // Outputs of the failed incarnation still on the ring
                // would be numbered as the new one's.
                if let Some(port) = self.hops[hop][member].port() {
                    while port.recv_burst(64, |_| {}) > 0 {}
                }
                self.in_flight[hop][member] = frozen_window(
                    &self.frozen_windows[hop],
                    from,
                    &self.in_flight[hop][member],
                );
                self.in_flight[hop][member].on_heard(now);
                let Some(chain) = self.chain.as_mut() else {
                    return refused("the chain has no hops");
                };
                answer(
                    chain.hop_mut(hop).handle_member_restored(member, from, now),
                    Response::Recovered,
                )
            }
            request => {
                let Some(chain) = self.chain.as_mut() else {
                    return refused("the chain has no hops");
                };
                match request {
                    Request::BeginCheckpoint { hop } => {
                        let r = chain.hop_mut(hop).begin_checkpoint(now);
                        // Nothing more goes to the VNF (member 0): what its
                        // port's tx ring still holds is sent now, while it
                        // runs and reads, not after its stop (see
                        // `quiesced`).
                        if r.is_ok() {
                            let port = self.hops.get_mut(hop).and_then(|p| p.first_mut()?.port());
                            if let Some(port) = port {
                                for _ in 0..64 {
                                    if port.kick_tx() == 0 {
                                        break;
                                    }
                                }
                            }
                        }
                        answer(r, Response::Checkpoint)
                    }
                    Request::CheckpointDumped { hop, id } => {
                        answer(chain.hop_mut(hop).handle_dumped(id), Response::Mark)
                    }
                    Request::CheckpointDone { hop, id } => {
                        let pool = &mut self.pool;
                        answer(
                            chain
                                .hop_mut(hop)
                                .handle_checkpoint_complete_with(id, now, |slot| {
                                    pool.release(slot)
                                }),
                            Response::Done,
                        )
                    }
                    Request::CheckpointFailed { hop, id } => {
                        answer(chain.hop_mut(hop).handle_checkpoint_failed(id), |()| {
                            Response::Ok
                        })
                    }
                    Request::SetProtected { hop, protected } => {
                        self.protected[hop] = protected;
                        let pool = &mut self.pool;
                        Response::Count(if protected {
                            0
                        } else {
                            chain
                                .hop_mut(hop)
                                .release_delivered(|slot| pool.release(slot))
                        })
                    }
                    r => refused(format!("not a request of this kind: {r:?}")),
                }
            }
        }
    }

    /// [`Request::Quiesced`]: every output the (now stopped) VNF emitted
    /// is counted before the mark: what waits in the port's ring is taken
    /// first. Otherwise a restore would renumber those outputs' successors
    /// as duplicates of them.
    ///
    /// Frames delivered before the checkpoint began but still in the
    /// port's tx ring (the kernel sends at most 32 per wakeup in copy
    /// mode; a busy peer leaves the rest for the next one) reach the VNF
    /// only now, into the socket of a stopped process, which is not part
    /// of the image: the mark would count them as consumed. They are sent
    /// now and the mark refused for now (`Busy`): the checkpointer resumes
    /// the VNF, lets it read them, and drains again.
    fn quiesced(&mut self, hop: usize, id: CheckpointId, now: Instant) -> Response {
        // (Only for the checkpoint under way: a void one is refused below.)
        let draining = self.chain.as_ref().is_some_and(|c| {
            hop < c.len()
                && matches!(c.hop(hop).checkpoint_phase(), CheckpointPhase::Draining { id: d, .. } if d == id)
        });
        let port = self.hops.get_mut(hop).and_then(|p| p.first_mut()?.port());
        if let Some(port) = port.filter(|_| draining) {
            let outstanding = port.tx_outstanding();
            if outstanding > 0 {
                let mut left = outstanding;
                for _ in 0..64 {
                    left = port.kick_tx();
                    if left == 0 {
                        break;
                    }
                }
                SffCounters::add(&self.counters.mark_in_transit, 1);
                return Response::Busy(format!(
                    "hop {hop}: {outstanding} frames to the VNF were still in the SFF's tx ring \
                     ({left} still are): sent now, after the stop; let it read them and drain again"
                ));
            }
        }
        while self.vnf_output_step(hop, now) > 0 {}
        let Some(chain) = self.chain.as_mut() else {
            return refused("the chain has no hops");
        };
        let r = chain.hop_mut(hop).handle_quiesced(id);
        if r.is_ok() {
            let frozen = &mut self.frozen_windows[hop];
            frozen.push_back((id, self.in_flight[hop][0].clone()));
            while frozen.len() > 4 {
                frozen.pop_front();
            }
        }
        answer(r, Response::Mark)
    }

    /// [`Request::Failure`]: the hop's VNF failed; nothing sent to it
    /// reaches the next incarnation.
    fn failure(&mut self, hop: usize, now: Instant) -> Option<RestorePlan> {
        self.in_flight[hop].iter_mut().for_each(|q| q.clear());
        let plan = self.chain.as_mut()?.hop_mut(hop).handle_failure(now);
        for k in 0..self.hops[hop].len() {
            self.flush_port(hop, k);
        }
        Some(plan)
    }

    /// [`Request::Restored`]: what waits on the port is from an
    /// incarnation that is gone (the restored one is resumed after this):
    /// from here on, the port carries only the restored VNF's outputs.
    fn restored(&mut self, hop: usize, from: Option<CheckpointId>, now: Instant) -> Response {
        // (Bounded: a port that never runs dry must not stop the
        // forwarding thread. A port being reopened holds nothing old.)
        let mut left = 64 * 64;
        if let Some(port) = self.hops[hop][0].port() {
            while left > 0 && port.recv_burst(64, |_| {}) > 0 {
                left -= 1;
            }
        }
        if left == 0 {
            tracing::warn!(
                hop,
                "its port still had frames after 4,096 bursts drained on Restored"
            );
        }
        self.in_flight[hop].iter_mut().for_each(|q| q.clear());
        self.in_flight[hop][0] =
            frozen_window(&self.frozen_windows[hop], from, &self.in_flight[hop][0]);
        self.in_flight[hop][0].on_heard(now);
        let members = self.hops[hop].len() > 1;
        let Some(chain) = self.chain.as_mut() else {
            return refused("the chain has no hops");
        };
        let r = if members {
            chain.hop_mut(hop).handle_member_restored(0, from, now)
        } else {
            chain.hop_mut(hop).handle_restored_from(from, now)
        };
        answer(r, Response::Recovered)
    }

    /// [`Request::FailOver`]: the failure, the core's admission of the
    /// replica's checkpoint (`RestorePlan::restores`), the switch of ports,
    /// the replay: one exchange with the client.
    fn fail_over(&mut self, hop: usize, to: Option<CheckpointId>, now: Instant) -> Response {
        // An unprotected hop (a VNF placed again afresh on another host)
        // has no restore point but what was delivered: nothing is replayed
        // and no output of the new incarnation is taken for a replay's.
        if !self.protected[hop] {
            let pool = &mut self.pool;
            if let Some(chain) = self.chain.as_mut() {
                chain
                    .hop_mut(hop)
                    .release_delivered(|slot| pool.release(slot));
            }
        }
        let Some(plan) = self.failure(hop, now) else {
            return refused("the chain has no hops");
        };
        let not_switched =
            |why: String| Response::FailOver(FailOverOutcome::NotSwitched { plan, why });
        if !plan.restores(to) {
            return not_switched(format!(
                "the replica holds checkpoint {to:?}; the restore point is {:?} (fallback {:?})",
                plan.checkpoint, plan.fallback
            ));
        }
        let (spec, port) = match self.standby[hop].take() {
            Some((spec, PortSlot::Open(port))) => (spec, port),
            Some(reopening) => {
                self.standby[hop] = Some(reopening);
                return not_switched(format!("hop {hop}'s standby port is being reopened"));
            }
            None => return not_switched(format!("hop {hop} has no standby port")),
        };
        // The hop recovers: nothing is in flight on either port.
        let old_port = std::mem::replace(&mut self.hops[hop][0], PortSlot::Open(port));
        let old_spec = std::mem::replace(&mut self.config.hops[hop], spec);
        self.standby[hop] = Some((old_spec, old_port));
        self.drops.2[hop][0] = 0;
        match self.restored(hop, to, now) {
            Response::Recovered(r) => Response::FailOver(FailOverOutcome::Switched(r)),
            r => r,
        }
    }

    /// Every hop's state.
    fn status(&self) -> Vec<HopStatus> {
        let Some(chain) = self.chain.as_ref() else {
            return Vec::new();
        };
        (0..self.hops.len())
            .map(|i| {
                let h = chain.hop(i);
                HopStatus {
                    phase: match h.checkpoint_phase() {
                        CheckpointPhase::Idle => PhaseStatus::Idle,
                        CheckpointPhase::Draining { id, .. } => PhaseStatus::Draining(id),
                        CheckpointPhase::Dumping { id, .. } => PhaseStatus::Dumping(id),
                        CheckpointPhase::Storing { id, .. } => PhaseStatus::Storing(id),
                    },
                    recovering: matches!(h.state(), HopState::Recovering { .. }),
                    epoch: h.epoch(),
                    committed: h.committed().map(|c| c.id),
                    held: h.rx().held(),
                    pending: h.rx().pending(),
                    protected: self.protected[i],
                    members: h.members().collect(),
                    divergent: h.stats().divergent,
                    heard: self.heard[i].clone(),
                    in_flight: self.in_flight[i]
                        .iter()
                        .map(|w| (w.len(), w.bytes(), w.capacity().budget(), w.sent()))
                        .collect(),
                }
            })
            .collect()
    }
}
