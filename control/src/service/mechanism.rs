//! `SetMechanism`: a running VNF moves between none, 0R, 1R-AS, 1R-AA and
//! MR-AA (and an MR-AA VNF between 2 and 8 members) under traffic.
//!
//! [`plan`] decides, without I/O, the steps from where the VNF is to where
//! it is asked to be; [`Daemon::change_mechanism`] carries them out. No step
//! holds the registry across slow work (a CRIU worker's start, a restore, a
//! checkpoint): the registry is taken to read what a step needs and to
//! install what it made. The SFF's hop and the VNF's agent change together,
//! under the agent (so no checkpoint or recovery of the VNF sees one
//! without the other).
//!
//! Why each step is safe (no loss, no duplicate):
//! - A VNF that was not protected is protected, then checkpointed at once:
//!   from then on a failure restores that image and replays what followed.
//! - Members are added failed in the SFF and restored from the restore
//!   point, then catch up from its mark, as after a member's crash; a
//!   checkpoint just before makes the catch-up short.
//! - Members are removed from the end; the output stream of member 0 (the
//!   VNF's own process) goes on, so outputs other members had already
//!   passed on are duplicates when member 0 makes them.
//! - 1R-AA's replica is made in a place of its own and refreshed from the
//!   next committed checkpoint; until then a failure restores as 0R does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nham_sff::remote::{RemoteError, SffClient};

use super::Daemon;
use crate::chain::{self, Agent, MemberPlace, ReplicaPlace};
use crate::error::ControlError;
use crate::fms::recovery::Phase;
use crate::fms::replica_manager::ProtectedVnf;
use crate::plan::Mechanism;
use crate::runtime;

/// How a VNF is protected: its mechanism, and its MR-AA members (member 0
/// included; 1 for any other mechanism).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protection {
    /// The mechanism (`None`: not protected).
    pub mechanism: Option<Mechanism>,
    /// Members, member 0 included.
    pub members: usize,
}

/// One step of a mechanism change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start protecting: an agent (0R) and the SFF holding the VNF's
    /// packets.
    Protect,
    /// A checkpoint now: a restore point for what follows.
    Checkpoint,
    /// A place for a 1R-AA replica: a namespace, its link and the hop's
    /// standby port in the SFF.
    MakeReplicaPlace,
    /// MR-AA members: keep members 1 to `keep`, remove the others (`keep`
    /// 0: an ordinary hop again, its agent 0R until told otherwise).
    RemoveMembers {
        /// Members kept after member 0.
        keep: usize,
    },
    /// MR-AA members: add members until there are `to` (member 0
    /// included), each restored from the restore point and caught up; the
    /// agent protects by MR-AA.
    AddMembers {
        /// Members wanted, member 0 included.
        to: usize,
    },
    /// The agent's mechanism (not MR-AA: that is [`Step::AddMembers`]).
    SetAgent(Mechanism),
    /// Stop protecting: the agent retired, the SFF releasing packets on
    /// delivery.
    Unprotect,
}

/// The steps from `from` to `to`; `replica_place`: the VNF has a 1R-AA
/// replica place already.
pub fn plan(from: Protection, to: Protection, replica_place: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    if from == to {
        return steps;
    }
    let protected = from.mechanism.is_some();
    let Some(to_mechanism) = to.mechanism else {
        if from.members > 1 {
            steps.push(Step::RemoveMembers { keep: 0 });
        }
        if protected {
            steps.push(Step::Unprotect);
        }
        return steps;
    };
    if !protected {
        steps.extend([Step::Protect, Step::Checkpoint]);
    }
    if to_mechanism == Mechanism::MultiActive {
        if from.members > to.members {
            steps.push(Step::RemoveMembers {
                keep: to.members - 1,
            });
        } else if from.members < to.members {
            if protected {
                steps.push(Step::Checkpoint);
            }
            steps.push(Step::AddMembers { to: to.members });
        }
        return steps;
    }
    if from.members > 1 {
        steps.push(Step::RemoveMembers { keep: 0 });
    }
    if to_mechanism == Mechanism::ActiveActive && !replica_place {
        steps.push(Step::MakeReplicaPlace);
    }
    steps.push(Step::SetAgent(to_mechanism));
    steps
}

/// How long a step waits for a checkpoint under way to end (the SFF
/// changes a hop's members only between checkpoints).
const BETWEEN_CHECKPOINTS: Duration = Duration::from_secs(10);

/// Runs `f` on the VNF's agent, retrying while the SFF says a checkpoint
/// is under way or member 0 is not live (the agent is let go between
/// tries, so a checkpoint can finish).
fn between_checkpoints<T>(
    agent: &Agent,
    mut f: impl FnMut(&mut ProtectedVnf) -> Result<T, ControlError>,
) -> Result<T, ControlError> {
    let deadline = Instant::now() + BETWEEN_CHECKPOINTS;
    loop {
        let mut a = agent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match f(&mut a) {
            // A checkpoint under way, or member 0 catching up after a
            // restore: both pass.
            Err(ControlError::Remote(RemoteError::Busy(_))) if Instant::now() < deadline => {
                drop(a);
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// Takes `agent` off its VNF (hop `hop`) and has the SFF release the
/// hop's packets on delivery again.
async fn unprotect(agent: Agent, sff: Arc<SffClient>, hop: usize) -> Result<(), ControlError> {
    tokio::task::spawn_blocking(move || {
        agent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retire();
        sff.set_protected(hop, false)
    })
    .await??;
    Ok(())
}

/// What a step needs from the registry.
struct Handles {
    hop: usize,
    agent: Option<Agent>,
    sff: Arc<SffClient>,
}

impl Daemon {
    /// Moves VNF `vnf` of `chain` to mechanism `mechanism` with `members`
    /// MR-AA members (member 0 included; 1 for other mechanisms), step by
    /// step (see [`plan`]). Returns the VNF's status. A step that fails
    /// stops the change where it is, and says which.
    pub(super) async fn change_mechanism(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        mechanism: Option<Mechanism>,
        members: usize,
    ) -> Result<chain::VnfStatus, ControlError> {
        let (from, replica_place) = self
            .with_chain(chain, |e| {
                let v = e.runtime.vnf_mut(vnf)?;
                if let Some(r) = &v.remote {
                    return Err(ControlError::FailedPrecondition(format!(
                        "VNF {vnf:?} runs on host {}: its mechanism is the one its chain was \
                         created with (changed at runtime only for a VNF on the chain's own host)",
                        r.host
                    )));
                }
                if v.phase() != Phase::Running || v.process.is_none() {
                    return Err(ControlError::FailedPrecondition(format!(
                        "VNF {vnf:?} is not running (it is {:?}): its mechanism changes once it runs again",
                        v.phase()
                    )));
                }
                Ok((
                    Protection {
                        mechanism: v.plan.mechanism,
                        members: v.members.len() + 1,
                    },
                    v.replica.is_some(),
                ))
            })
            .await?;
        let to = Protection {
            mechanism,
            members: if mechanism == Some(Mechanism::MultiActive) {
                members
            } else {
                1
            },
        };
        let steps = plan(from, to, replica_place);
        tracing::info!(chain, vnf, ?from, ?to, ?steps, "changing the mechanism");
        for step in steps {
            self.step(chain, vnf, step).await.map_err(|e| match e {
                ControlError::FailedPrecondition(m) => {
                    ControlError::FailedPrecondition(format!("{step:?}: {m}"))
                }
                e => e,
            })?;
        }
        self.with_chain(chain, |e| {
            let hop = e.runtime.vnf_index(vnf)?;
            let plan = &mut e.runtime.vnfs[hop].plan;
            plan.mechanism = mechanism;
            plan.replicas = to.members.max(1) as u32;
            // A restarted daemon protects it the same way.
            drop(self.records.put(&e.runtime, true));
            Ok(e.runtime.vnfs[hop].status())
        })
        .await
    }

    async fn handles(&self, chain: &str, vnf: &str) -> Result<Handles, ControlError> {
        self.with_chain(chain, |e| {
            let hop = e.runtime.vnf_index(vnf)?;
            let sff = e.runtime.sff.clone().ok_or_else(|| {
                ControlError::FailedPrecondition("the chain's SFF is not running".into())
            })?;
            Ok(Handles {
                hop,
                agent: e.runtime.vnfs[hop].agent.clone(),
                sff,
            })
        })
        .await
    }

    async fn step(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        step: Step,
    ) -> Result<(), ControlError> {
        let h = self.handles(chain, vnf).await?;
        let protected = h.agent.clone();
        let agent = || {
            protected.clone().ok_or_else(|| {
                ControlError::FailedPrecondition(format!("VNF {vnf:?} is not protected"))
            })
        };
        match step {
            Step::Protect => self.protect_now(chain, vnf).await,
            Step::Checkpoint => {
                let agent = agent()?;
                // A scheduled checkpoint under way, a late output: a
                // checkpoint may fail safely; try a few times.
                let mut tries = 0;
                loop {
                    match self
                        .checkpoint_now(chain, vnf, agent.clone(), h.sff.clone())
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(e) if tries < 10 => {
                            tries += 1;
                            tracing::debug!(chain, vnf, "checkpoint for a mechanism change: {e}");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Step::MakeReplicaPlace => self.make_replica_place(chain, h, agent()?).await,
            Step::RemoveMembers { keep } => self.remove_members(chain, h, agent()?, keep).await,
            Step::AddMembers { to } => self.add_members(chain, vnf, h, agent()?, to).await,
            Step::SetAgent(m) => {
                let agent = agent()?;
                tokio::task::spawn_blocking(move || {
                    agent
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .set_mechanism(m)
                })
                .await??;
                Ok(())
            }
            Step::Unprotect => {
                let (agent, sff, hop) = (agent()?, h.sff, h.hop);
                // Taken off the VNF first: its checkpoint schedule ends.
                self.with_chain(chain, |e| {
                    e.runtime.vnfs[hop].agent = None;
                    Ok(())
                })
                .await?;
                unprotect(agent, sff, hop).await?;
                Ok(())
            }
        }
    }

    /// [`Step::Protect`]: an agent built without the registry (it starts a
    /// CRIU worker), then installed and scheduled.
    async fn protect_now(self: &Arc<Self>, chain: &str, vnf: &str) -> Result<(), ControlError> {
        let state = self.state.clone();
        let (new, sff, hop, incarnation) = self
            .with_chain(chain, |e| {
                let hop = e.runtime.vnf_index(vnf)?;
                let sff = e.runtime.sff.clone().ok_or_else(|| {
                    ControlError::FailedPrecondition("the chain's SFF is not running".into())
                })?;
                let v = &e.runtime.vnfs[hop];
                let new = chain::new_agent(
                    v,
                    None,
                    hop,
                    Mechanism::NoReplica,
                    &state,
                    &e.runtime.plan.name,
                    &e.runtime.work,
                )?;
                Ok((new, sff, hop, v.recovery.incarnation()))
            })
            .await?;
        let agent = {
            let sff = sff.clone();
            tokio::task::spawn_blocking(move || {
                let a = new.build()?;
                sff.set_protected(hop, true)?;
                Ok::<_, ControlError>(a)
            })
            .await??
        };
        // Installed only on the process it was built for: one that failed
        // meanwhile was restarted without state, and is left unprotected.
        let agent = Arc::new(std::sync::Mutex::new(agent));
        let installed = self
            .with_chain(chain, |e| {
                let v = &mut e.runtime.vnfs[hop];
                if v.recovery.incarnation() != incarnation
                    || v.phase() != Phase::Running
                    || v.agent.is_some()
                {
                    return Ok(false);
                }
                v.agent = Some(agent.clone());
                v.plan.mechanism = Some(Mechanism::NoReplica);
                self.schedule_hop(&e.runtime, hop);
                Ok(true)
            })
            .await?;
        if !installed {
            unprotect(agent, sff, hop).await?;
            return Err(ControlError::FailedPrecondition(format!(
                "VNF {vnf:?} failed while it was being protected: it was restarted unprotected; try again"
            )));
        }
        Ok(())
    }

    /// [`Step::MakeReplicaPlace`].
    async fn make_replica_place(
        &self,
        chain: &str,
        h: Handles,
        agent: Agent,
    ) -> Result<(), ControlError> {
        let state = self.state.clone();
        let (names, netns) = self
            .with_chain(chain, |e| {
                Ok((
                    e.runtime.place_names(&state, h.hop, 'r'),
                    e.runtime.vnfs[h.hop].local_netns()?.path(),
                ))
            })
            .await?;
        let hop = h.hop;
        let sff = h.sff;
        let place = tokio::task::spawn_blocking(move || {
            let ifindex =
                nham_netns::run_in(&netns, || nham_netns::link(runtime::VNF_IFACE))??.ifindex;
            let (ns, port) = runtime::make_place(&names.0, &names.1, ifindex)?;
            let iface = port.iface.clone();
            sff.attach_standby(hop, port)?;
            agent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .set_replica(&ns.path(), &iface);
            Ok::<_, ControlError>(ReplicaPlace {
                netns: ns,
                sff_iface: iface,
            })
        })
        .await??;
        self.with_chain(chain, |e| {
            e.runtime.vnfs[hop].replica = Some(place);
            Ok(())
        })
        .await
    }

    /// [`Step::RemoveMembers`]: the SFF and the agent first (together),
    /// then the members' processes and places.
    async fn remove_members(
        &self,
        chain: &str,
        h: Handles,
        agent: Agent,
        keep: usize,
    ) -> Result<(), ControlError> {
        let (hop, sff) = (h.hop, h.sff);
        tokio::task::spawn_blocking(move || {
            between_checkpoints(&agent, |a| {
                sff.set_members(hop, keep, Vec::new())?;
                a.keep_members(keep);
                Ok(())
            })
        })
        .await??;
        let gone: Vec<MemberPlace> = self
            .with_chain(chain, |e| {
                let v = &mut e.runtime.vnfs[hop];
                let keep = keep.min(v.members.len());
                Ok(v.members.split_off(keep))
            })
            .await?;
        // Their watchers find no member of theirs any more: nothing is
        // recovered. The namespaces go with the places.
        tokio::task::spawn_blocking(move || {
            for m in gone {
                if let Some(p) = &m.process {
                    let _ = p.signal(nix::sys::signal::Signal::SIGKILL);
                }
                drop(m);
            }
        })
        .await?;
        Ok(())
    }

    /// [`Step::AddMembers`]: places and SFF ports for the new members, the
    /// SFF and the agent told (together), then each new member restored
    /// from the restore point and watched.
    async fn add_members(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        h: Handles,
        agent: Agent,
        to: usize,
    ) -> Result<(), ControlError> {
        let state = self.state.clone();
        let (hop, sff) = (h.hop, h.sff);
        // Names, places and working directories of the new members.
        let (have, netns, plans) = self
            .with_chain(chain, |e| {
                let v = &e.runtime.vnfs[hop];
                let have = v.members.len() + 1;
                let mut plans = Vec::new();
                for k in have..to {
                    let names = e.runtime.place_names(&state, hop, 'm');
                    let cwd = state.vnf_cwd(chain, &chain::member_dir(vnf, k))?;
                    plans.push((names, cwd));
                }
                Ok((have, v.local_netns()?.path(), plans))
            })
            .await?;
        let made = {
            let (sff, agent) = (sff.clone(), agent.clone());
            tokio::task::spawn_blocking(move || {
                let ifindex =
                    nham_netns::run_in(&netns, || nham_netns::link(runtime::VNF_IFACE))??.ifindex;
                let mut places = Vec::new();
                let mut ports = Vec::new();
                for ((ns_name, iface), cwd) in plans {
                    let (ns, port) = runtime::make_place(&ns_name, &iface, ifindex)?;
                    // Far from any incarnation a removed member's watcher
                    // may still hold.
                    let incarnation =
                        FIRST_INCARNATION.fetch_add(1 << 20, std::sync::atomic::Ordering::Relaxed);
                    places.push(MemberPlace::new(ns, port.iface.clone(), cwd, incarnation));
                    ports.push(port);
                }
                let slots: Vec<_> = places.iter().map(MemberPlace::place).collect();
                between_checkpoints(&agent, |a| {
                    sff.set_members(hop, have - 1, ports.clone())?;
                    a.add_members(slots.clone());
                    a.set_mechanism(Mechanism::MultiActive)?;
                    Ok(())
                })?;
                Ok::<_, ControlError>(places)
            })
            .await??
        };
        self.with_chain(chain, |e| {
            let v = &mut e.runtime.vnfs[hop];
            v.members.extend(made);
            v.plan.mechanism = Some(Mechanism::MultiActive);
            Ok(())
        })
        .await?;
        // Each new member: restored from the restore point, caught up. One
        // that cannot be is removed with those after it (no member is left
        // without a process and a watcher).
        for k in have..to {
            if let Err(e) = self.add_member(chain, vnf, hop, &agent, &sff, k).await {
                tracing::error!(chain, vnf, "MR-AA member {k} could not be added: {e}");
                let h = Handles {
                    hop,
                    agent: Some(agent.clone()),
                    sff: sff.clone(),
                };
                if let Err(r) = self.remove_members(chain, h, agent.clone(), k - 1).await {
                    tracing::error!(chain, vnf, "removing MR-AA members from {k} on: {r}");
                }
                if k == 1 {
                    self.with_chain(chain, |e| {
                        e.runtime.vnfs[hop].plan.mechanism = Some(Mechanism::NoReplica);
                        Ok(())
                    })
                    .await?;
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Daemon {
    /// MR-AA member `k` (its place made, failed in the SFF): restored from
    /// the restore point, adopted and watched.
    async fn add_member(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        hop: usize,
        agent: &Agent,
        sff: &Arc<SffClient>,
        k: usize,
    ) -> Result<(), ControlError> {
        let (agent, sff) = (agent.clone(), sff.clone());
        let restored = tokio::task::spawn_blocking(move || {
            agent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .recover_member(&sff, k)
        })
        .await??;
        let adopted = self
            .with_chain(chain, |e| {
                let v = &mut e.runtime.vnfs[hop];
                let fd = v.adopt_member(k, restored.pid)?;
                Ok((fd, v.members[k - 1].recovery.incarnation()))
            })
            .await;
        let (pidfd, inc) =
            adopted.inspect_err(|_| runtime::process::kill_and_reap(restored.pid))?;
        self.watch_member(chain.to_string(), vnf.to_string(), k, inc, pidfd);
        tracing::info!(
            chain,
            vnf,
            "MR-AA member {k} added: restored from checkpoint {:?} in {:.1} ms, {} to catch up",
            restored.checkpoint,
            restored.duration.as_secs_f64() * 1e3,
            restored.replay
        );
        Ok(())
    }
}

/// Incarnation numbers of members added at runtime start here, each far
/// from the others'.
static FIRST_INCARNATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 32);

#[cfg(test)]
mod tests {
    use super::*;
    const UNPROTECTED: Option<Mechanism> = None;
    const ZERO_R: Option<Mechanism> = Some(Mechanism::NoReplica);
    const ONE_R_AS: Option<Mechanism> = Some(Mechanism::ActiveStandby);
    const ONE_R_AA: Option<Mechanism> = Some(Mechanism::ActiveActive);
    const MR_AA: Option<Mechanism> = Some(Mechanism::MultiActive);

    fn p(mechanism: Option<Mechanism>, members: usize) -> Protection {
        Protection { mechanism, members }
    }

    #[test]
    fn the_issue_s_walk() {
        let walk = [
            (p(UNPROTECTED, 1), p(ZERO_R, 1)),
            (p(ZERO_R, 1), p(MR_AA, 3)),
            (p(MR_AA, 3), p(MR_AA, 2)),
            (p(MR_AA, 2), p(ONE_R_AA, 1)),
            (p(ONE_R_AA, 1), p(ONE_R_AS, 1)),
            (p(ONE_R_AS, 1), p(ZERO_R, 1)),
            (p(ZERO_R, 1), p(UNPROTECTED, 1)),
            (p(UNPROTECTED, 1), p(MR_AA, 2)),
        ];
        let plans: Vec<Vec<Step>> = walk.iter().map(|(a, b)| plan(*a, *b, false)).collect();
        use Mechanism as M;
        assert_eq!(
            plans,
            vec![
                vec![
                    Step::Protect,
                    Step::Checkpoint,
                    Step::SetAgent(M::NoReplica)
                ],
                vec![Step::Checkpoint, Step::AddMembers { to: 3 }],
                vec![Step::RemoveMembers { keep: 1 }],
                vec![
                    Step::RemoveMembers { keep: 0 },
                    Step::MakeReplicaPlace,
                    Step::SetAgent(M::ActiveActive)
                ],
                vec![Step::SetAgent(M::ActiveStandby)],
                vec![Step::SetAgent(M::NoReplica)],
                vec![Step::Unprotect],
                vec![Step::Protect, Step::Checkpoint, Step::AddMembers { to: 2 }],
            ]
        );
        assert!(plan(p(MR_AA, 3), p(MR_AA, 3), false).is_empty());
        assert_eq!(
            plan(p(MR_AA, 2), p(UNPROTECTED, 1), false),
            vec![Step::RemoveMembers { keep: 0 }, Step::Unprotect]
        );
        // A replica place made once is used again.
        assert_eq!(
            plan(p(ZERO_R, 1), p(ONE_R_AA, 1), true),
            vec![Step::SetAgent(M::ActiveActive)]
        );
    }

    proptest::proptest! {
        /// From anywhere to anywhere: the agent ends protecting by the
        /// mechanism asked for, with the members asked for, and never
        /// runs MR-AA without members nor 1R-AA without a replica place.
        #[test]
        fn every_plan_arrives(
            from in 0usize..6, from_m in 2usize..=8, to in 0usize..6, to_m in 2usize..=8,
            replica_place: bool,
        ) {
            let all = [UNPROTECTED, ZERO_R, ONE_R_AS, ONE_R_AA, MR_AA, ZERO_R];
            let at = |i: usize, m: usize| p(all[i], if all[i] == MR_AA { m } else { 1 });
            let (from, to) = (at(from, from_m), at(to, to_m));
            // A model of the VNF: agent mechanism, members, replica place.
            let mut agent = from.mechanism;
            let mut members = from.members;
            let mut place = replica_place || from.mechanism == ONE_R_AA;
            for step in plan(from, to, place) {
                match step {
                    Step::Protect => {
                        proptest::prop_assert!(agent.is_none());
                        agent = Some(Mechanism::NoReplica);
                    }
                    Step::Checkpoint => proptest::prop_assert!(agent.is_some()),
                    Step::MakeReplicaPlace => place = true,
                    Step::RemoveMembers { keep } => {
                        members = keep + 1;
                        if keep == 0 {
                            agent = Some(Mechanism::NoReplica);
                        }
                    }
                    Step::AddMembers { to } => {
                        proptest::prop_assert!(agent.is_some());
                        members = to;
                        agent = Some(Mechanism::MultiActive);
                    }
                    Step::SetAgent(m) => {
                        proptest::prop_assert!(m != Mechanism::MultiActive);
                        proptest::prop_assert!(members == 1);
                        proptest::prop_assert!(m != Mechanism::ActiveActive || place);
                        agent = Some(m);
                    }
                    Step::Unprotect => {
                        proptest::prop_assert!(members == 1);
                        agent = None;
                    }
                }
            }
            proptest::prop_assert_eq!(agent, to.mechanism);
            proptest::prop_assert_eq!(members, to.members);
        }
    }
}
