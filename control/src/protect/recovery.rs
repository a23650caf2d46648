//! Recovery of one VNF by its mechanism: 0R and 1R-AS restores, the 1R-AA
//! failover to the replica, MR-AA members restored and caught up; the one
//! fallback policy (only an unusable image is given up for the older one).

#[allow(unused_imports)]
use super::*;

impl ProtectedVnf {
    /// After a commit: what hears when the 1R-AA replica restored from it
    /// is ready (or failed), to wait for without the agent lock.
    pub fn replica_refresh(&mut self) -> Option<std::sync::mpsc::Receiver<()>> {
        self.refreshing.take()
    }

    /// The VNF process is gone: bring it back by its mechanism and let the
    /// SFF replay.
    pub fn recover(&mut self, sff: &SffClient) -> Result<RecoveryStats, ProtectError> {
        if self.retired {
            return Err(ProtectError::Retired);
        }
        // The recovery path (and the CRIU restore it starts) before VNFs
        // and background CRIU work; CRIU gives the restored process its own
        // nice value back.
        let _urgent = Niceness::for_this_thread(URGENT_NICE);
        if let Some(w) = &self.standby.swrk {
            w.renice(URGENT_NICE);
        }
        if self.mechanism == Mechanism::MultiActive {
            return self.recover_member(sff, 0);
        }
        let started = Instant::now();
        let hop = self.hop;
        let mut plan = None;
        if self.mechanism == Mechanism::ActiveActive {
            match self.fail_over(sff, started)? {
                FailOver::Done(stats) => return Ok(stats),
                FailOver::Refused(p) => plan = p,
            }
        }
        let plan = match plan {
            Some(p) => p,
            None => sff.failure(hop).map_err(ProtectError::Sff)?,
        };
        // Checkpoint 0 is the restore point of a hop that was not protected
        // (its packets released on delivery): there is no image. The VNF
        // starts afresh and what was held since is replayed; what it had
        // from the released packets is gone, as for any unprotected VNF.
        // (`SetMechanism` checkpoints a VNF it protects before it returns.)
        let restored = plan.checkpoint.is_some_and(|id| id != 0);
        let mut fallback_reason = None;
        let (pid, from) = match plan.checkpoint {
            Some(0) => (self.start_fresh()?, Some(0)),
            Some(id) => {
                let (pid, from) = match (self.restore(id), plan.fallback) {
                    (Ok(pid), _) => (pid, id),
                    // A committed image that is corrupt or gone is never
                    // restored; the older one the SFF kept packets for is.
                    (Err(e), Some(older)) if unusable(&e) => {
                        let s = &self.slot;
                        let _ = s.store.remove_checkpoint(&s.chain, &s.vnf, id);
                        fallback_reason = Some(e.to_string());
                        let newest = fallback_reason.clone().unwrap_or_default();
                        let pid = self
                            .restore(older)
                            .map_err(|e| fallback_failed(newest, older, e))?;
                        (pid, older)
                    }
                    (Err(e), _) => return Err(e),
                };
                // It was dumped while stopped (step 3) and comes back
                // stopped; it is resumed once the SFF replays (below).
                (pid, Some(from))
            }
            None => (self.start_fresh()?, None),
        };
        self.pid = pid;
        // Whatever the link lost before is replayed now.
        self.restart_link_count();
        let r = sff.restored(hop, from).map_err(ProtectError::Sff);
        // Resumed after `Restored`: what it answers first (the input its
        // image was frozen in, in that input's old epoch) is then taken as
        // this incarnation's, not as a stale output of the dead one.
        if restored {
            signal(pid, nix::sys::signal::Signal::SIGCONT)?;
        }
        let r = r?;
        let duration = started.elapsed();
        Ok(RecoveryStats {
            duration,
            resumed_at: Some(started + duration),
            replay: r.replay,
            restored,
            pid: self.pid,
            checkpoint: from,
            fallback_reason,
            switched: false,
        })
    }

    /// 1R-AA failover: the replica's stopped copy resumes and the SFF, in
    /// one exchange, marks the hop failed, switches it to the replica's
    /// port and replays, if it kept the packets since the copy's
    /// checkpoint (the restore point, or the one before it while a refresh
    /// is under way). The namespaces swap roles: the failed one is emptied
    /// and takes the next replica. `Refused` when there is no copy (the
    /// caller restores as 0R does), with the SFF's plan if it marked the
    /// hop failed already.
    fn fail_over(&mut self, sff: &SffClient, started: Instant) -> Result<FailOver, ProtectError> {
        let Some(r) = self.replica.as_mut() else {
            return Ok(FailOver::Refused(None));
        };
        let Some((ready, from)) = r.take_current() else {
            tracing::debug!(hop = self.hop, "failover: no replica copy");
            return Ok(FailOver::Refused(None));
        };
        tracing::debug!(hop = self.hop, ready, from, "failover: asking the SFF");
        // Resumed only once the SFF has switched to it and is replaying:
        // its first outputs may finish the input its image was frozen in
        // (stamped with that input's old epoch), which the SFF takes as
        // this incarnation's only from then on (see `Hop::handle_restored`).
        let rr = match sff
            .fail_over(self.hop, Some(from))
            .map_err(ProtectError::Sff)?
        {
            FailOverOutcome::Switched(rr) => {
                signal(ready, nix::sys::signal::Signal::SIGCONT)?;
                rr
            }
            FailOverOutcome::NotSwitched { plan, why } => {
                tracing::warn!(hop = self.hop, "no failover to the replica: {why}");
                kill_and_reap(ready);
                return Ok(FailOver::Refused(Some(plan)));
            }
        };
        let duration = started.elapsed();
        // The chain runs again; what follows is bookkeeping. Roles swap:
        // the replica's namespace and port are the VNF's now.
        std::mem::swap(&mut self.netns, &mut r.netns);
        let old_iface = std::mem::take(&mut r.sff_iface);
        let new_iface = match self.link.as_mut() {
            Some((iface, _)) => std::mem::replace(iface, old_iface),
            None => old_iface,
        };
        r.sff_iface = new_iface;
        self.dump_worker = None;
        self.pid = ready;
        // What the failed incarnation left in its namespace (CRIU workers,
        // stray children) goes: a scan of every process on the host. (The
        // dump worker must run in the new namespace: it is started afresh
        // by `prepare`.)
        nham_netns::kill_processes_in(&r.netns);
        // Drops the new link counted before now are not the new VNF's.
        self.restart_link_count();
        Ok(FailOver::Done(RecoveryStats {
            duration,
            resumed_at: Some(started + duration),
            replay: rr.replay,
            restored: true,
            pid: ready,
            checkpoint: Some(from),
            fallback_reason: None,
            switched: true,
        }))
    }

    /// After a recovery, off its path: the CRIU workers the next checkpoint
    /// and (1R-AS) the next failure want, started ahead of time in the
    /// VNF's (possibly new) namespace.
    pub fn prepare(&mut self) {
        if self.dump_worker.is_none() {
            self.dump_worker = Swrk::spawn(&self.netns).ok();
        }
        if self.mechanism == Mechanism::ActiveStandby && self.standby.swrk.is_none() {
            self.standby.swrk = Swrk::spawn(&self.netns).ok();
        }
    }

    /// MR-AA: member `k`'s process is gone. The SFF stops sending to it;
    /// while another member is alive the chain goes on, and this one is
    /// restored from the restore point (in its own place) and catches up.
    /// If it was the last, the hop failed and recovers with it (replay).
    pub fn recover_member(
        &mut self,
        sff: &SffClient,
        k: usize,
    ) -> Result<RecoveryStats, ProtectError> {
        if self.retired {
            return Err(ProtectError::Retired);
        }
        let started = Instant::now();
        let hop = self.hop;
        let (netns, iface, cwd) = match k {
            0 => (
                self.netns.clone(),
                self.link.as_ref().map(|(i, _)| i.clone()),
                None,
            ),
            _ => self
                .members
                .get(k - 1)
                .map(|m| (m.netns.clone(), m.sff_iface.clone(), m.cwd.clone()))
                .ok_or_else(|| ProtectError::Process(format!("no member {k}")))?,
        };
        if k > 0 {
            self.members[k - 1].pid = None;
        }
        let mut _background = None;
        let (checkpoint, fallback) = match sff.member_failed(hop, k).map_err(ProtectError::Sff)? {
            nham_dataplane::hold::MemberFailure::Continues => {
                // The chain is served meanwhile: the restore (CRIU runs as
                // a child of this thread) must not take the CPU from it.
                // CRIU gives the restored process its own nice value back.
                _background = Some(Niceness::for_this_thread(BACKGROUND_NICE));
                let st = sff.status().map_err(ProtectError::Sff)?;
                let h = st.hops.get(hop).ok_or_else(|| {
                    ProtectError::Sff(nham_sff::remote::RemoteError::Refused(format!(
                        "no hop {hop}"
                    )))
                })?;
                (h.committed.filter(|&id| id != 0), None)
            }
            nham_dataplane::hold::MemberFailure::HopFailed(plan) => {
                (plan.checkpoint, plan.fallback)
            }
        };
        let mut fallback_reason = None;
        let (pid, from) = match checkpoint {
            None => (self.start_fresh_in(&netns, cwd.as_deref())?, None),
            // The restore point of a hop not protected before: no image
            // (see `recover`).
            Some(0) => (self.start_fresh_in(&netns, cwd.as_deref())?, Some(0)),
            Some(id) => match (self.restore_in(id, &netns, iface.as_deref()), fallback) {
                (Ok(pid), _) => (pid, Some(id)),
                // The same policy as a VNF's (`recover`): only an image
                // that is corrupt or gone is given up for the older one; a
                // transient error (I/O, a busy database) keeps it.
                (Err(e), Some(older)) if unusable(&e) => {
                    fallback_reason = Some(e.to_string());
                    let s = &self.slot;
                    let _ = s.store.remove_checkpoint(&s.chain, &s.vnf, id);
                    (
                        self.restore_in(older, &netns, iface.as_deref())
                            .map_err(|e| {
                                fallback_failed(
                                    fallback_reason.clone().unwrap_or_default(),
                                    older,
                                    e,
                                )
                            })?,
                        Some(older),
                    )
                }
                (Err(e), _) => return Err(e),
            },
        };
        let rr = match sff.member_restored(hop, k, from).map_err(ProtectError::Sff) {
            Ok(rr) => rr,
            Err(e) => {
                let _ = signal(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(e);
            }
        };
        signal(pid, nix::sys::signal::Signal::SIGCONT)?;
        let duration = started.elapsed();
        if k == 0 {
            self.pid = pid;
            self.dump_worker = None;
            // What its link dropped before is caught up now (else every
            // later checkpoint would take it for a loss, for ever).
            self.restart_link_count();
        } else {
            self.members[k - 1].pid = Some(pid);
        }
        Ok(RecoveryStats {
            duration,
            resumed_at: Some(started + duration),
            replay: rr.replay,
            restored: from.is_some_and(|id| id != 0),
            pid,
            checkpoint: from,
            fallback_reason,
            switched: false,
        })
    }

    /// Restores checkpoint `id` from the store into namespace `netns`
    /// (stopped, as it was dumped).
    fn restore_in(
        &self,
        id: CheckpointId,
        netns: &Path,
        iface: Option<&str>,
    ) -> Result<u32, ProtectError> {
        let s = &self.slot;
        let meta = s
            .store
            .get(&s.chain, &s.vnf, id)?
            .ok_or(StoreError::Missing {
                chain: s.chain.clone(),
                vnf: s.vnf.clone(),
                id,
            })?;
        // Members restore at once: each its own unpacked copy.
        let dir = s
            .scratch
            .join(nham_netns::unique_name(&format!("restore-{id}-")));
        s.store.unpack(&meta, &dir)?;
        let r = restore_stopped(None, &dir, netns, iface);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    /// Restores checkpoint `id`: from the standby when it holds that image,
    /// else from the store (checked before anything is handed to CRIU).
    fn restore(&mut self, id: CheckpointId) -> Result<u32, ProtectError> {
        if self.mechanism == Mechanism::ActiveStandby {
            if let Some((staged, dir)) = &self.standby.staged {
                if *staged == id {
                    let dir = dir.clone();
                    let iface = self.link.as_ref().map(|(i, _)| i.as_str());
                    return restore_stopped(self.standby.swrk.take(), &dir, &self.netns, iface);
                }
            }
        }
        let iface = self.link.as_ref().map(|(i, _)| i.as_str());
        self.restore_in(id, &self.netns, iface)
    }

    fn start_fresh(&self) -> Result<u32, ProtectError> {
        self.start_fresh_in(&self.netns, None)
    }

    /// Starts the command afresh in namespace `netns` (running), as it was
    /// first started (environment, log, cgroup), in working directory
    /// `cwd` (an MR-AA member's own) or the VNF's.
    fn start_fresh_in(&self, netns: &Path, cwd: Option<&Path>) -> Result<u32, ProtectError> {
        let mut start = self.start.clone().placed(netns);
        if let Some(dir) = cwd {
            start.cwd = dir.to_path_buf();
        }
        Ok(start.run()?)
    }
}
