//! The Failure Recovery (driver): feeds a VNF's (or MR-AA member's)
//! [`FailureRecovery`] its exit, a heal or a restart's finding, and does
//! what it says: announce, bring the link up, restore by mechanism through
//! the agent on a blocking thread with the registry let go, adopt and
//! watch the new process, and hand the outcome to heals waiting on it.

#[allow(unused_imports)]
use super::*;
use crate::chain::VnfRuntime;
use crate::fms::recovery::{Action, Cause, Comeback};

/// How process `k` (0: the VNF's own) of `v` comes back.
pub(super) fn comeback(v: &VnfRuntime, k: usize) -> Comeback {
    if k > 0 {
        Comeback::Member
    } else if v.agent.is_none() {
        Comeback::Fresh
    } else if v.plan.mechanism == Some(crate::plan::Mechanism::ActiveActive) {
        Comeback::Elsewhere
    } else {
        Comeback::InPlace
    }
}

/// The SFF's end of process `k`'s link.
fn sff_iface(v: &VnfRuntime, k: usize) -> Option<&str> {
    match k {
        0 => Some(&v.sff_iface),
        k => v.members.get(k - 1).map(|m| m.sff_iface.as_str()),
    }
}

/// How logs and events name process `k` of a VNF: nothing for its own
/// process, `MR-AA member k: ` for a member.
pub(super) fn who(k: usize) -> String {
    match k {
        0 => String::new(),
        k => format!("MR-AA member {k}: "),
    }
}

/// What a restore brought back, not adopted yet.
enum Brought {
    /// A process started afresh (`MECHANISM_NONE`).
    Started(u32),
    /// A process restored by the mechanism.
    Restored(RecoveryStats),
}

impl Daemon {
    /// Process `k` (0: the VNF's own; else MR-AA member `k`) of VNF `vnf`
    /// of `chain`, incarnation `incarnation`, exited (as the kernel's exit
    /// watch or, without it, its pidfd said).
    pub(super) async fn on_exit(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        k: usize,
        incarnation: u64,
        e: Exited,
    ) {
        let mut chains = self.chains.lock().await;
        let Some(v) = vnf_in(&mut chains, chain, vnf) else {
            return;
        };
        let how = comeback(v, k);
        let carrier = sff_iface(v, k).is_some_and(has_carrier);
        let Some(fr) = v.recovery_of(k) else {
            return;
        };
        let actions = fr.handle_exit(incarnation, e.exited, e.noticed, carrier, how);
        if actions.is_empty() {
            return; // an old process, already replaced
        }
        match k {
            0 => v.process = None,
            k => v.members[k - 1].process = None,
        }
        self.act(chains, chain, vnf, k, actions).await;
    }

    /// Process `k` of VNF `vnf` of `chain` was gone when this daemon
    /// started: recover it.
    pub(super) async fn on_lost(self: &Arc<Self>, chain: &str, vnf: &str, k: usize) {
        let mut chains = self.chains.lock().await;
        let Some(v) = vnf_in(&mut chains, chain, vnf) else {
            return;
        };
        let how = comeback(v, k);
        let Some(fr) = v.recovery_of(k) else {
            return;
        };
        let actions = fr.handle_lost(Instant::now(), how);
        self.act(chains, chain, vnf, k, actions).await;
    }

    /// Does what process `k`'s Failure Recovery said, holding the registry
    /// `chains` until the restore, which goes on without it.
    pub(super) async fn act(
        self: &Arc<Self>,
        mut chains: tokio::sync::MutexGuard<'_, BTreeMap<String, Entry>>,
        chain: &str,
        vnf: &str,
        k: usize,
        actions: Vec<Action>,
    ) {
        let who = |text: &str| format!("{}{text}", who(k));
        let mut settle = false;
        for a in actions {
            match a {
                Action::Detected {
                    cause,
                    fault_at,
                    at,
                    noticed,
                } => {
                    let text = match (cause, k) {
                        (Cause::Exited, k) if k > 0 => "exited",
                        _ => cause.text(),
                    };
                    self.emit(failure_detected(
                        chain,
                        vnf,
                        who(text),
                        fault_at,
                        at,
                        noticed,
                    ));
                }
                Action::RecoveryStarted => self.emit(event(chain, vnf, Event::RecoveryStarted)),
                Action::LinkUp { wait } => {
                    settle |= wait;
                    let Some(v) = vnf_in(&mut chains, chain, vnf) else {
                        return;
                    };
                    let up = match k {
                        0 => v.reconnect(),
                        k => v.members[k - 1]
                            .netns
                            .run(|| nham_netns::set_up(crate::runtime::VNF_IFACE))
                            .and_then(|r| r)
                            .map_err(ControlError::from),
                    };
                    if let Err(e) = up {
                        tracing::error!(
                            chain,
                            vnf,
                            "{}",
                            who(&format!("bringing its link up: {e}"))
                        );
                    }
                }
                Action::Recover { comeback, since } => {
                    let restored = self
                        .restore(chains, chain, vnf, k, comeback, since, settle)
                        .await;
                    let mut chains = self.chains.lock().await;
                    self.finish_recovery(&mut chains, chain, vnf, k, restored);
                    return;
                }
                // The detector's (see `judge`) and the driver's own.
                Action::Kill
                | Action::StopAndReconnect
                | Action::Finished { .. }
                | Action::RecoveryFailed { .. } => {}
            }
        }
    }

    /// Brings process `k` back as `comeback` says, with the registry
    /// `chains` let go across the restore (and not taken again: the caller
    /// adopts the new process in [`finish_recovery`](Self::finish_recovery)).
    /// `settle_link`: wait until the SFF's end of the link is operationally
    /// up before the SFF flushes what it was sending the failed incarnation
    /// and the VNF is restored.
    #[allow(clippy::too_many_arguments)]
    async fn restore(
        self: &Arc<Self>,
        mut chains: tokio::sync::MutexGuard<'_, BTreeMap<String, Entry>>,
        chain: &str,
        vnf: &str,
        k: usize,
        comeback: Comeback,
        since: Instant,
        settle_link: bool,
    ) -> Result<Brought, ControlError> {
        let gone = || ControlError::NotFound(format!("chain {chain:?} is gone"));
        let entry = chains.get_mut(chain).ok_or_else(gone)?;
        let sff = entry.runtime.sff.clone();
        let v = entry.runtime.vnf_mut(vnf)?;
        let (agent, sff) = match (v.agent.clone(), sff) {
            (Some(a), Some(s)) if comeback != Comeback::Fresh => (a, s),
            _ if k > 0 => {
                return Err(ControlError::FailedPrecondition(format!(
                    "MR-AA member {k} has no State Synchronizer to restore it"
                )))
            }
            _ => {
                // MECHANISM_NONE: start it again, without state. The start
                // waits until it listens (seconds, for some VNFs): not
                // under the registry, which every chain's failure handling
                // needs.
                let spawn = v.spawn_here()?;
                drop(chains);
                let pid = tokio::task::spawn_blocking(move || spawn.run())
                    .await
                    .map_err(|_| ControlError::Panicked("start"))??;
                return Ok(Brought::Started(pid));
            }
        };
        if k > 0 {
            drop(chains);
            let r = tokio::task::spawn_blocking(move || {
                agent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .recover_member(&sff, k)
            })
            .await
            .map_err(|_| ControlError::Panicked("recovery"))??;
            return Ok(Brought::Restored(r));
        }
        let sff_iface = v.sff_iface.clone();
        // A failover never lands in a namespace whose link is down: check
        // the replica's, repair it, then switch.
        let replica_iface = match &v.replica {
            Some(r) if !has_carrier(&r.sff_iface) => {
                tracing::warn!(
                    chain,
                    vnf,
                    "the replica's link is down: bringing it up before failing over"
                );
                match r
                    .netns
                    .run(|| nham_netns::set_up(crate::runtime::VNF_IFACE))
                {
                    Ok(Ok(())) => Some(r.sff_iface.clone()),
                    Ok(Err(e)) | Err(e) => {
                        tracing::error!(chain, vnf, "bringing the replica's link up: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        drop(chains);
        let agent_vnf = vnf.to_string();
        // The agent lock waits for a checkpoint under way to fail (its VNF is
        // gone); the registry stays free meanwhile.
        let r = tokio::task::spawn_blocking(move || {
            // After a cut-off the link transmits again only once the kernel's
            // link watcher has seen the carrier back (up to a second): wait,
            // so the SFF can flush what the failed incarnation was sent.
            let deadline = Instant::now() + Duration::from_secs(2);
            let down = |iface: &str| !nham_netns::is_oper_up(iface).unwrap_or(true);
            while ((settle_link && down(&sff_iface)) || replica_iface.as_deref().is_some_and(down))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            tracing::debug!(vnf = agent_vnf, "recovery: taking the agent");
            let mut a = agent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let r = a.recover(&sff);
            drop(a);
            // The workers for the next checkpoint (and standby), off the
            // path: on a thread of their own, behind the agent lock.
            if r.is_ok() {
                std::thread::spawn(move || {
                    agent
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .prepare();
                });
            }
            r
        })
        .await
        .map_err(|_| ControlError::Panicked("recovery"))??;
        tracing::debug!(chain, vnf, since = ?since.elapsed(), "restored");
        Ok(Brought::Restored(r))
    }

    /// Adopts what a restore brought back (under the same hold of the
    /// registry as the rest: nothing sees the new process unwatched),
    /// records the outcome in process `k`'s Failure Recovery and does what
    /// it says: on success watch the new process and announce the time
    /// from the failure to the process running again (the SFF replaying,
    /// not the bookkeeping after); heals of the VNF are told.
    fn finish_recovery(
        self: &Arc<Self>,
        chains: &mut BTreeMap<String, Entry>,
        chain: &str,
        vnf: &str,
        k: usize,
        brought: Result<Brought, ControlError>,
    ) {
        let restored = brought.and_then(|b| {
            let (pid, r) = match b {
                Brought::Started(pid) => (pid, RecoveryStats::default()),
                Brought::Restored(r) => (r.pid, r),
            };
            let adopted = match vnf_in(chains, chain, vnf) {
                None => Err(ControlError::NotFound(format!("chain {chain:?} is gone"))),
                Some(v) if k > 0 => v.adopt_member(k, pid),
                Some(v) => {
                    if let Some(why) = &r.fallback_reason {
                        tracing::warn!(chain, vnf, "restored an older checkpoint: {why}");
                    }
                    if r.switched {
                        v.swap_replica();
                    }
                    v.adopt(pid)
                }
            };
            match adopted {
                Ok(fd) => Ok((fd, r)),
                // A process that cannot be adopted (its chain or place went
                // meanwhile) does not run on unwatched.
                Err(e) => {
                    crate::runtime::process::kill_and_reap(pid);
                    Err(e)
                }
            }
        });
        let restored = restored.map_err(Arc::new);
        if k == 0 {
            self.settle(
                chain,
                vnf,
                restored.as_ref().map(|_| ()).map_err(Arc::clone),
            );
        }
        let Some(v) = vnf_in(chains, chain, vnf) else {
            return;
        };
        let Some(fr) = v.recovery_of(k) else {
            return;
        };
        let now = Instant::now();
        let (at, outcome, done) = match restored {
            Ok((fd, r)) => (r.resumed_at.unwrap_or(now), Ok(()), Some((fd, r))),
            Err(e) => {
                let reason = format!("{}{e}", who(k));
                tracing::error!(chain, vnf, "recovery failed: {reason}");
                (now, Err(reason), None)
            }
        };
        let incarnation = fr.incarnation();
        let mut done = done;
        for a in fr.handle_recovered(at, outcome) {
            match a {
                Action::Finished { took, incarnation } => {
                    if let Some((fd, r)) = done.take() {
                        self.emit(recovery_finished(chain, vnf, r, took));
                        self.watch_member(chain.to_string(), vnf.to_string(), k, incarnation, fd);
                    }
                }
                Action::RecoveryFailed { reason } => {
                    self.emit(event(chain, vnf, Event::RecoveryFailed { reason }))
                }
                _ => {}
            }
        }
        if let Some((fd, _)) = done {
            // Not its recovery to finish (it was not recovering): the
            // process it adopted is watched all the same.
            tracing::warn!(chain, vnf, k, "a restore finished outside a recovery");
            self.watch_member(chain.to_string(), vnf.to_string(), k, incarnation, fd);
        }
        // The new pid and counters, for a restarted daemon; not waited for.
        if let Some(e) = chains.get(chain) {
            drop(self.records.put(&e.runtime, false));
        }
    }
}
