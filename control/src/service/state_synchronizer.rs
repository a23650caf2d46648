//! The State Synchronizer's schedule (driver): a checkpoint task per
//! protected VNF runs the checkpoint protocol (`vsm::checkpointer`, through
//! its `fms::replica_manager` agent) every interval,
//! its dump taking turns host-wide; the image is stored without the agent
//! lock (and without the turn), so a failure meanwhile is recovered at once.

#[allow(unused_imports)]
use super::*;

impl Daemon {
    /// Checkpoints VNF `vnf` of `chain` every `interval` while it has the
    /// agent `agent` (the task ends when the agent or the SFF goes).
    pub(super) fn schedule_checkpoints(
        self: &Arc<Self>,
        chain: String,
        vnf: String,
        agent: Weak<std::sync::Mutex<crate::fms::replica_manager::ProtectedVnf>>,
        sff: Weak<nham_sff::remote::SffClient>,
        interval: Duration,
    ) {
        let daemon = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let (Some(d), Some(a), Some(s)) =
                    (daemon.upgrade(), agent.upgrade(), sff.upgrade())
                else {
                    return;
                };
                let r = d.checkpoint_now(&chain, &vnf, a, s).await;
                if let Err(e) = r {
                    tracing::debug!(chain, vnf, "scheduled checkpoint: {e}");
                }
            }
        });
    }

    /// Runs the checkpoint protocol for one VNF now, on a blocking thread.
    pub(super) async fn checkpoint_now(
        &self,
        chain: &str,
        vnf: &str,
        agent: Agent,
        sff: Arc<nham_sff::remote::SffClient>,
    ) -> Result<crate::vsm::checkpointer::CheckpointStats, ControlError> {
        // One checkpoint of this VNF at a time, dump to commit (the turn
        // below covers the dump only).
        let one = self
            .checkpointing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(format!("{chain}/{vnf}"))
            .or_default()
            .clone();
        let _one_at_a_time = one.lock_owned().await;
        // Its turn (FIFO): the dumps of every chain share the host's
        // turns, so their CRIU work leaves the chains CPU. A turn is held
        // for the dump only (not across a recovery's hold of the agent,
        // nor the store and commit after it).
        let turn = self
            .checkpoint_turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ControlError::FailedPrecondition("the daemon is shutting down".into()))?;
        // A VNF on another host: the incarnation checkpointed, as it is
        // when the checkpoint begins (one that a failure places meanwhile
        // is not the one to judge; one placed before it begins is).
        let incarnation = {
            let mut chains = self.chains.lock().await;
            vnf_in(&mut chains, chain, vnf).and_then(|v| v.remote.as_ref().map(|r| r.key.clone()))
        };
        let turns = self.checkpoint_turns.clone();
        let handle = tokio::runtime::Handle::current();
        let r = tokio::task::spawn_blocking(move || {
            let lock = || {
                agent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            };
            // The agent, with the turn held: if a recovery of this VNF has
            // it (a restore can take seconds), the turn is given back while
            // it waits, not held, which would stop the checkpoints of every
            // other VNF on the host; then it queues for a turn again.
            let mut turn = turn;
            let dumped = loop {
                match agent.try_lock() {
                    Ok(mut a) => break a.dump(&sff),
                    Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner().dump(&sff),
                    Err(std::sync::TryLockError::WouldBlock) => {
                        drop(turn);
                        drop(lock());
                        turn = handle
                            .block_on(turns.clone().acquire_owned())
                            .map_err(|_| {
                                crate::vsm::SyncError::Process("the daemon is shutting down".into())
                            })?;
                    }
                }
            };
            // The turn is for the dump (CRIU's freeze and its CPU): the
            // next VNF's begins while this one's image is stored.
            drop(turn);
            let dumped = dumped?;
            // Compressed and stored without the agent: a failure of the VNF
            // meanwhile is recovered at once (and this checkpoint aborted).
            let stored = dumped.store(&sff)?;
            let stats = lock().commit(&sff, stored)?;
            // The 1R-AA replica is restored from it in the background; the
            // next checkpoint of this VNF waits for that, so the replica is
            // never more than one checkpoint behind (the SFF keeps the
            // packets since the one before the restore point).
            let refreshed = lock().replica_refresh();
            if let Some(done) = refreshed {
                let _ = done.recv_timeout(Duration::from_secs(30));
            }
            Ok::<_, crate::vsm::SyncError>(stats)
        })
        .await
        .map_err(|_| ControlError::Panicked("checkpoint"))?;
        match r {
            Ok(c) => {
                if let Some(v) = self
                    .chains
                    .lock()
                    .await
                    .get_mut(chain)
                    .and_then(|e| e.runtime.vnf_mut(vnf).ok())
                {
                    v.checkpoints += 1;
                    v.last_committed = Some(c.id);
                }
                self.emit(event(chain, vnf, Event::CheckpointTaken(c)));
                self.refresh_remote_replica(chain, vnf, c.id).await;
                Ok(c)
            }
            Err(e) => {
                self.emit(event(
                    chain,
                    vnf,
                    Event::CheckpointFailed {
                        reason: e.to_string(),
                    },
                ));
                // Frames lost on its link: only a recovery (which replays
                // them) makes the VNF whole again.
                let verdict = match e {
                    crate::vsm::SyncError::LinkLoss { .. } => {
                        Some(crate::fms::detector::Verdict::CutOff)
                    }
                    crate::vsm::SyncError::InputDropped { .. } => {
                        Some(crate::fms::detector::Verdict::InputDropped)
                    }
                    _ => None,
                };
                // A VNF on another host judged so is killed there (its
                // exit places it again, restored and replayed), if it is
                // still the incarnation checkpointed: one that replaced it
                // meanwhile lost nothing of this. One here is judged.
                if let Some(verdict) = verdict {
                    let now = {
                        let mut chains = self.chains.lock().await;
                        vnf_in(&mut chains, chain, vnf).map(|v| {
                            let remote = v
                                .remote
                                .as_ref()
                                .map(|r| (r.cluster().clone(), r.host.clone(), r.key.clone()));
                            (remote, v.recovery.incarnation())
                        })
                    };
                    match (incarnation, now) {
                        (Some(checkpointed), Some((Some((cluster, host, key)), _)))
                            if key == checkpointed =>
                        {
                            tracing::warn!(chain, vnf, "{e}: killing it on {host}, to be restored");
                            let _ = tokio::task::spawn_blocking(move || {
                                cluster.signal_vnf(&host, &key, nix::sys::signal::Signal::SIGKILL)
                            })
                            .await;
                        }
                        (None, Some((None, inc))) => self.judge(chain, vnf, 0, inc, verdict).await,
                        // Replaced meanwhile, or gone.
                        _ => {}
                    }
                }
                Err(ControlError::FailedPrecondition(format!(
                    "checkpoint of {chain}/{vnf} failed: {e}"
                )))
            }
        }
    }

    /// Starts the checkpoint task of every protected VNF of `runtime`.
    pub(super) fn schedule_all(self: &Arc<Self>, runtime: &ChainRuntime) {
        for hop in 0..runtime.vnfs.len() {
            self.schedule_hop(runtime, hop);
        }
    }

    /// Starts the checkpoint task of VNF `hop`, if it is protected.
    pub(super) fn schedule_hop(self: &Arc<Self>, runtime: &ChainRuntime, hop: usize) {
        let (Some(sff), Some(v)) = (runtime.sff.as_ref(), runtime.vnfs.get(hop)) else {
            return;
        };
        if let Some(agent) = &v.agent {
            self.schedule_checkpoints(
                runtime.plan.name.clone(),
                v.plan.name.clone(),
                Arc::downgrade(agent),
                Arc::downgrade(sff),
                v.plan
                    .checkpoint_interval
                    .unwrap_or(self.state.checkpoint_interval),
            );
        }
    }
}
