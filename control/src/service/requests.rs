//! What an operator asks of the daemon, one method per request: the gRPC
//! layer ([`crate::api::server`]) decodes, calls one of these and encodes.
//! Every refusal is a typed [`ControlError`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::events::VnfEvent;
use super::{Daemon, Outcome};
use crate::chain::{ChainStatus, VnfStatus};
use crate::error::ControlError;
use crate::fms::recovery::{Heal, Phase};
use crate::plan::{self, ChainPlan, Fault, Mechanism};

/// A chain's counters: its SFF's, and the frames its VNFs' sockets
/// dropped (each a failure recovered).
#[derive(Debug, Clone, Copy, Default)]
pub struct ChainStats {
    /// The SFF's counters.
    pub sff: nham_sff::SffStats,
    /// Frames the kernel dropped at the VNFs' full sockets.
    pub vnf_input_dropped: u64,
}

/// How long `HealVnf` waits for the recovery it started (or joined).
pub const HEAL_TIMEOUT: Duration = Duration::from_secs(30);

/// What `HealVnf` did: the VNF as it runs again, and the time from the
/// request to then.
#[derive(Debug, Clone)]
pub struct Healed {
    /// The VNF.
    pub vnf: VnfStatus,
    /// From the request to the VNF running again.
    pub took: Duration,
}

impl Daemon {
    /// The chain `name`: the spec it was created from (as given, with
    /// mechanism changes since) and its status.
    pub async fn get_chain(&self, name: &str) -> Result<(ChainPlan, ChainStatus), ControlError> {
        self.with_chain(name, |e| Ok((e.runtime.current_plan(), e.runtime.status())))
            .await
    }

    /// Every chain (see [`get_chain`](Self::get_chain)).
    pub async fn list_chains(&self) -> Vec<(ChainPlan, ChainStatus)> {
        let chains = self.chains.lock().await;
        (chains.values())
            .map(|e| (e.runtime.current_plan(), e.runtime.status()))
            .collect()
    }

    /// Protects VNF `vnf` of `chain` by `mechanism` (or not: NONE), with
    /// `replicas` MR-AA members (0: as it has, or the default), under
    /// traffic (see [`super::mechanism`]). One change of a VNF at a time.
    pub async fn set_mechanism(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        mechanism: Option<Mechanism>,
        replicas: u32,
    ) -> Result<VnfStatus, ControlError> {
        plan::replicas(mechanism, replicas).map_err(ControlError::InvalidArgument)?;
        plan::name("vnf", vnf)?;
        self.with_chain(chain, |e| {
            let v = e.runtime.vnf_mut(vnf)?;
            if mechanism.is_some() {
                crate::validate::checkpointable(&format!("VNF {vnf:?}"), &v.plan.identity)?;
            }
            match &v.remote {
                Some(r) => Err(ControlError::FailedPrecondition(format!(
                    "VNF {vnf:?} runs on host {}: its mechanism is the one it was created with \
                     (changes at runtime are for VNFs on the chain's own host, for now)",
                    r.host
                ))),
                None => Ok(()),
            }
        })
        .await?;
        let members = match replicas {
            0 => {
                self.with_chain(chain, |e| {
                    let v = e.runtime.vnf_mut(vnf)?;
                    Ok(if v.members.is_empty() {
                        plan::DEFAULT_REPLICAS as usize
                    } else {
                        v.members.len() + 1
                    })
                })
                .await?
            }
            m => m as usize,
        };
        let key = crate::plan::VnfId::new(chain, vnf);
        let fresh = self
            .changing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone());
        if !fresh {
            return Err(ControlError::FailedPrecondition(format!(
                "a mechanism change of {key} is under way"
            )));
        }
        let r = self.change_mechanism(chain, vnf, mechanism, members).await;
        self.changing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        r
    }

    /// Checkpoints VNF `vnf` of `chain` now.
    pub async fn checkpoint(
        &self,
        chain: &str,
        vnf: &str,
    ) -> Result<crate::vsm::checkpointer::CheckpointStats, ControlError> {
        let (agent, sff) = self
            .with_chain(chain, |e| {
                let sff = e.runtime.sff.clone();
                let v = e.runtime.vnf_mut(vnf)?;
                match (v.agent.clone(), sff) {
                    (Some(a), Some(s)) => Ok((a, s)),
                    _ => Err(ControlError::FailedPrecondition(format!(
                        "VNF {vnf:?} is not protected (MECHANISM_NONE): it has no checkpoints"
                    ))),
                }
            })
            .await?;
        self.checkpoint_now(chain, vnf, agent, sff).await
    }

    /// Brings VNF `vnf` of `chain` back by its mechanism: kills it (its
    /// watcher recovers it), recovers it again when its last recovery
    /// failed, or joins a recovery (or heal) already under way. Returns
    /// when that recovery has finished, with its outcome; never starts a
    /// second one for the same failure.
    pub async fn heal(self: &Arc<Self>, chain: &str, vnf: &str) -> Result<Healed, ControlError> {
        let started = Instant::now();
        // Subscribed before anything happens: the outcome cannot be missed.
        // What it has seen is read under the registry, where recoveries
        // settle: a recovery that ends meanwhile is not taken for this one.
        let mut outcome = self.outcome(chain, vnf);
        let (retry, seen) = self
            .with_chain(chain, |e| {
                let seen = outcome.borrow().finished;
                let v = e.runtime.vnf_mut(vnf)?;
                let how = super::failure_recovery::comeback(v, 0);
                match v.recovery.handle_heal(Instant::now(), how) {
                    Heal::Join => Ok((None, seen)),
                    Heal::Retry(actions) => Ok((Some(actions), seen)),
                    Heal::NotStarted => Err(ControlError::FailedPrecondition(format!(
                        "VNF {vnf:?} has not been started yet"
                    ))),
                    Heal::Kill => match v.signal(Signal::SIGKILL) {
                        Ok(()) => Ok((None, seen)),
                        Err(e) => {
                            v.recovery.handle_heal_abandoned();
                            Err(e)
                        }
                    },
                }
            })
            .await?;
        if let Some(actions) = retry {
            let d = self.clone();
            let (chain, vnf) = (chain.to_string(), vnf.to_string());
            tokio::spawn(async move {
                let chains = d.chains.lock().await;
                d.act(chains, &chain, &vnf, 0, actions).await;
            });
        }
        let done = tokio::time::timeout(
            HEAL_TIMEOUT,
            outcome.wait_for(|o: &Outcome| o.finished > seen),
        )
        .await
        .map_err(|_| {
            ControlError::DeadlineExceeded(format!(
                "the recovery of {chain}/{vnf} has not finished within {HEAL_TIMEOUT:?}: watch its events"
            ))
        })?
        .map_err(|_| ControlError::NotFound(format!("chain {chain:?} is gone")))?
        .result
        .clone();
        done.map_err(ControlError::NotRecovered)?;
        let vnf = self
            .with_chain(chain, |e| Ok(e.runtime.vnf_mut(vnf)?.status()))
            .await?;
        Ok(Healed {
            vnf,
            took: started.elapsed(),
        })
    }

    /// Injects `fault` into VNF `vnf` of `chain`: into its MR-AA member
    /// `member` when not 0; `during_checkpoint`: a crash while a
    /// checkpoint of it dumps.
    pub async fn inject_fault(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        fault: Fault,
        member: usize,
        during_checkpoint: bool,
    ) -> Result<(), ControlError> {
        if during_checkpoint {
            if member > 0 {
                return Err(ControlError::InvalidArgument(
                    "during_checkpoint is for member 0 (the member a checkpoint dumps)".into(),
                ));
            }
            if fault != Fault::Crash {
                return Err(ControlError::InvalidArgument(
                    "during_checkpoint is for FAULT_CRASH only".into(),
                ));
            }
            return self.crash_during_checkpoint(chain, vnf).await;
        }
        // A VNF (or MR-AA member) on another host: a crash there (its
        // host kills it).
        let remote = self
            .with_chain(chain, |e| {
                let v = e.runtime.vnf_mut(vnf)?;
                let r = match member {
                    0 => v.remote.as_ref(),
                    _ if v.remote_members.is_empty() => None,
                    k => {
                        let count = v.remote_members.len() + 1;
                        let m = v.remote_members.get(k - 1).ok_or_else(|| {
                            ControlError::InvalidArgument(format!(
                                "VNF {vnf:?} has no MR-AA member {k} (it has {count})"
                            ))
                        })?;
                        Some(
                            m.remote
                                .as_ref()
                                .filter(|_| m.recovery.phase() == Phase::Running)
                                .ok_or_else(|| {
                                    ControlError::FailedPrecondition(format!(
                                        "member {k} of VNF {vnf:?} is not running"
                                    ))
                                })?,
                        )
                    }
                };
                Ok(r.map(|r| (r.cluster().clone(), r.host.clone(), r.key.clone())))
            })
            .await?;
        if member > 0 && remote.is_none() {
            return self.inject_member_fault(chain, vnf, fault, member).await;
        }
        if let Some((cluster, host, key)) = remote {
            if fault != Fault::Crash {
                return Err(ControlError::FailedPrecondition(format!(
                    "VNF {vnf:?} runs on host {host}: only FAULT_CRASH is injected there"
                )));
            }
            return Ok(tokio::task::spawn_blocking(move || {
                cluster.signal_vnf(&host, &key, Signal::SIGKILL)
            })
            .await??);
        }
        // A hang of a protected VNF waits for a checkpoint under way to
        // finish: the checkpoint stops and resumes the VNF itself, and would
        // end the hang. (Later checkpoints see it stopped and leave it.)
        // Lock order: never the registry while holding an agent.
        let (agent, process) = self
            .with_chain(chain, |e| {
                let v = e.runtime.vnf_mut(vnf)?;
                Ok((v.agent.clone(), v.process.clone()))
            })
            .await?;
        if let (Fault::Hang, Some(agent), Some(process)) = (fault, agent, process) {
            let at = tokio::task::spawn_blocking(move || {
                let _held = agent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                process.signal(Signal::SIGSTOP).map(|()| Instant::now())
            })
            .await??;
            return self
                .with_chain(chain, |e| {
                    e.runtime.vnf_mut(vnf)?.recovery.handle_fault(at);
                    Ok(())
                })
                .await;
        }
        self.with_chain(chain, |e| {
            let v = e.runtime.vnf_mut(vnf)?;
            let netns = v.local_netns()?.path();
            v.recovery.handle_fault(Instant::now());
            match fault {
                Fault::Crash => v.signal(Signal::SIGKILL),
                Fault::Hang => v.signal(Signal::SIGSTOP),
                Fault::CutOff => Ok(nham_netns::run_in(&netns, || {
                    nham_netns::set_down(crate::runtime::VNF_IFACE)
                })??),
            }
        })
        .await
    }

    async fn inject_member_fault(
        &self,
        chain: &str,
        vnf: &str,
        fault: Fault,
        k: usize,
    ) -> Result<(), ControlError> {
        self.with_chain(chain, |e| {
            let v = e.runtime.vnf_mut(vnf)?;
            let members = v.members.len() + 1;
            let m = v.members.get_mut(k - 1).ok_or_else(|| {
                ControlError::InvalidArgument(format!(
                    "VNF {vnf:?} has no MR-AA member {k} (it has {members})"
                ))
            })?;
            let p = m.process.clone().ok_or_else(|| {
                ControlError::FailedPrecondition(format!(
                    "member {k} of VNF {vnf:?} is not running"
                ))
            })?;
            m.recovery.handle_fault(Instant::now());
            match fault {
                Fault::Crash => Ok(p.signal(Signal::SIGKILL)?),
                // No checkpoint stops a member other than 0.
                Fault::Hang => Ok(p.signal(Signal::SIGSTOP)?),
                Fault::CutOff => Ok(m
                    .netns
                    .run(|| nham_netns::set_down(crate::runtime::VNF_IFACE))??),
            }
        })
        .await
    }

    async fn crash_during_checkpoint(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
    ) -> Result<(), ControlError> {
        let (agent, sff, hop) = self
            .with_chain(chain, |e| {
                let hop = e.runtime.vnf_index(vnf)?;
                let agent = e.runtime.vnfs[hop].agent.clone().ok_or_else(|| {
                    ControlError::FailedPrecondition(format!(
                        "VNF {vnf:?} is not protected: it has no checkpoints to crash in"
                    ))
                })?;
                let sff = e.runtime.sff.clone().ok_or_else(|| {
                    ControlError::FailedPrecondition("the chain's SFF is not running".into())
                })?;
                Ok((agent, sff, hop))
            })
            .await?;
        {
            let (d, chain, vnf, sff) = (
                self.clone(),
                chain.to_string(),
                vnf.to_string(),
                sff.clone(),
            );
            tokio::spawn(async move {
                // It fails, the VNF dying under it: that is the point.
                let _ = d.checkpoint_now(&chain, &vnf, agent, sff).await;
            });
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let s = sff.clone();
            let status = tokio::task::spawn_blocking(move || s.status()).await??;
            if matches!(
                status.hops.get(hop).map(|h| h.phase),
                Some(nham_sff::PhaseStatus::Dumping(_))
            ) {
                return self
                    .with_chain(chain, |e| {
                        let v = e.runtime.vnf_mut(vnf)?;
                        v.recovery.handle_fault(Instant::now());
                        v.signal(Signal::SIGKILL)
                    })
                    .await;
            }
            if Instant::now() > deadline {
                return Err(ControlError::FailedPrecondition(format!(
                    "no checkpoint of {chain}/{vnf} reached its dump within 3 s"
                )));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// The event stream, every chain's (`chain` empty) or one's.
    pub fn subscribe(
        &self,
        chain: &str,
    ) -> Result<tokio::sync::broadcast::Receiver<VnfEvent>, ControlError> {
        if !chain.is_empty() {
            plan::name("chain", chain)?;
        }
        Ok(self.events.subscribe())
    }

    /// Chain `name`'s counters.
    pub async fn stats(&self, name: &str) -> Result<ChainStats, ControlError> {
        let (sff, vnf_input_dropped) = self
            .with_chain(name, |e| Ok((e.runtime.sff.clone(), e.input_dropped)))
            .await?;
        let s = match sff {
            Some(sff) => tokio::task::spawn_blocking(move || sff.stats()).await??,
            None => nham_sff::SffStats::default(),
        };
        Ok(ChainStats {
            sff: s,
            vnf_input_dropped,
        })
    }
}
