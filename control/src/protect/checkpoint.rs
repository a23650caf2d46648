//! The checkpoint protocol of one VNF (see the parent module's steps):
//! the driver of [`crate::vsm::synchronizer::Checkpointing`] (drain,
//! freeze, mark, dump, thaw), then store and commit; the checks that refuse
//! a checkpoint which would count lost input as consumed.

#[allow(unused_imports)]
use super::*;

impl ProtectedVnf {
    /// `Some(now)` if the link lost nothing since the restore point.
    fn link_intact(&self) -> Result<Option<u64>, ProtectError> {
        let Some((iface, base)) = &self.link else {
            return Ok(None);
        };
        let err = |e: nham_netns::NetnsError| ProtectError::Process(format!("{iface}: {e}"));
        let dropped = nham_netns::tx_dropped(iface).map_err(err)?;
        let carrier = nham_netns::has_carrier(iface).map_err(err)?;
        if dropped != *base || !carrier {
            return Err(ProtectError::LinkLoss {
                dropped: dropped.saturating_sub(*base),
                carrier,
            });
        }
        Ok(Some(dropped))
    }

    /// `Ok` if the VNF's receiving sockets dropped nothing (or the kernel
    /// cannot say: then the data-path probes are the only watch).
    fn input_intact(&mut self) -> Result<(), ProtectError> {
        let Some(s) = self.packet_sockets() else {
            return Ok(());
        };
        let dropped = nham_netns::sockdiag::VnfSockets::of_process(&s, self.pid).drops;
        if dropped > 0 {
            return Err(ProtectError::InputDropped { dropped });
        }
        Ok(())
    }

    /// The packet sockets of the VNF's namespace, from sock_diag (`None`
    /// when the kernel cannot be asked).
    fn packet_sockets(&mut self) -> Option<Vec<nham_netns::sockdiag::PacketSocket>> {
        // A 1R-AA failover moves the VNF to its replica's namespace.
        if self.diag.as_ref().is_none_or(|(p, _)| *p != self.netns) {
            self.diag = nham_netns::sockdiag::SockDiag::open(&self.netns)
                .ok()
                .map(|d| (self.netns.clone(), d));
        }
        let (_, diag) = self.diag.as_mut()?;
        match diag.packet_sockets() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!("sock_diag: {e}");
                self.diag = None;
                None
            }
        }
    }

    /// The VNF's `TPACKET_V3` receive rings, mapped for this checkpoint
    /// (not kept: the mapping holds the socket open).
    fn rings(&mut self) -> Result<Option<crate::vsm::ring::VnfRings>, ProtectError> {
        let Some(sockets) = self.packet_sockets() else {
            return Ok(None);
        };
        if !sockets.iter().any(|s| s.rx_ring.is_some()) {
            return Ok(None);
        }
        let rings = crate::vsm::ring::VnfRings::of(self.pid, &sockets)?;
        Ok((!rings.is_empty()).then_some(rings))
    }

    /// Runs the checkpoint protocol once: [`dump`](Self::dump),
    /// [`Dumped::store`], [`commit`](Self::commit).
    pub fn checkpoint(&mut self, sff: &SffClient) -> Result<CheckpointStats, ProtectError> {
        let dumped = self.dump(sff)?;
        let stored = dumped.store(sff)?;
        self.commit(sff, stored)
    }

    /// Steps 1 to 5 of the checkpoint protocol: stop delivery, let the VNF
    /// drain, freeze, mark, dump, thaw; delivery resumes. The image is not
    /// durable yet: [`Dumped::store`] makes it so, without this agent (so a
    /// failure meanwhile is not kept waiting), then [`commit`](Self::commit).
    pub fn dump(&mut self, sff: &SffClient) -> Result<Dumped, ProtectError> {
        use crate::vsm::synchronizer::{Checkpointing, Failure, Look, Step};
        use nix::sys::signal::Signal;
        if self.retired {
            return Err(ProtectError::Retired);
        }
        let started = Instant::now();
        let (hop, pid) = (self.hop, self.pid);
        let id = sff.begin_checkpoint(hop).map_err(ProtectError::Sff)?;
        let dir = self.slot.scratch.join(format!("ckpt-{id}"));
        // The protocol's decisions are the machine's; this loop does what
        // it says. (MR-AA: member 0 is the one dumped, and the SFF pauses
        // only it; the other members go on serving.)
        let mut m = Checkpointing::new(
            started,
            OUTPUT_SETTLE,
            DRAIN_TIMEOUT,
            Duration::from_micros(200),
        );
        // A VNF reading through a ring: what waits there is not in rmem.
        let mut rings = None;
        match self.rings() {
            Ok(Some(r)) if r.losing() => {
                m.handle_look(started, Err(ProtectError::InputDropped { dropped: 1 }));
            }
            Ok(r) => rings = r,
            Err(e) => m.handle_look(started, Err(e)),
        }
        let mut link_now = None;
        let mut report = None;
        let (frozen, resumed) = loop {
            match m.poll(Instant::now()) {
                Step::Look => {
                    let look = packet_rmem(pid).map(|rmem| Look {
                        rmem,
                        ring_unread: rings.as_ref().is_some_and(|r| r.unread()),
                        stopped: is_stopped(pid),
                    });
                    m.handle_look(Instant::now(), look);
                }
                Step::Sleep(d) => std::thread::sleep(d),
                Step::Stop => m.handle_stop(Instant::now(), signal(pid, Signal::SIGSTOP)),
                // Every frame delivered must have reached the VNF's state:
                // one lost on its link (cut off) or dropped at its full
                // socket would be counted as consumed. (Its sockets were
                // opened by this incarnation: any drop is one since the
                // restore point.)
                Step::CheckIntact => {
                    let intact = self
                        .link_intact()
                        .map(|d| link_now = d)
                        .and_then(|()| self.input_intact());
                    m.handle_intact(intact);
                }
                Step::Mark => {
                    m.handle_mark(sff.quiesced(hop, id).map(drop).map_err(ProtectError::Sff))
                }
                // With the worker started ahead of time.
                Step::Dump => {
                    clear_stale_proc_dir(pid);
                    // MR-AA: the others serve meanwhile: the dump is
                    // background work and must not take the CPU from them.
                    let _background = (self.mechanism == Mechanism::MultiActive).then(|| {
                        if let Some(w) = &self.dump_worker {
                            w.renice(BACKGROUND_NICE);
                        }
                        Niceness::for_this_thread(BACKGROUND_NICE)
                    });
                    let _ = std::fs::remove_dir_all(&dir);
                    // Where the kernel is in each ring (the restore puts it
                    // back there); the mapping goes before the dump.
                    let positions = rings.take().map(|r| r.positions()).unwrap_or_default();
                    let dumped = criu::dump(self.dump_worker.take(), pid, &self.netns, &dir)
                        .map_err(ProtectError::from)
                        .and_then(|r| Ok(crate::vsm::ring::save(&dir, &positions).map(|()| r)?));
                    m.handle_dump(Instant::now(), dumped.map(|r| report = Some(r)));
                }
                Step::Resume => {
                    let _ = signal(pid, Signal::SIGCONT);
                }
                Step::Report => {
                    m.handle_report(
                        sff.checkpoint_dumped(hop, id)
                            .map(drop)
                            .map_err(ProtectError::Sff),
                    );
                }
                Step::Done { frozen, resumed } => break (frozen, resumed),
                Step::Fail(why) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    let _ = sff.checkpoint_failed(hop, id);
                    return Err(match why {
                        Failure::NotDrained { rmem } => ProtectError::NotDrained { pid, rmem },
                        Failure::Stopped => ProtectError::Stopped(pid),
                        Failure::Step(e) => e,
                        Failure::Ended => ProtectError::Process("checkpoint protocol ended".into()),
                    });
                }
            }
        };
        let report =
            report.ok_or_else(|| ProtectError::Process("dumped without a report".into()))?;
        let pause = started.elapsed();
        // The next dump's worker starts now, off the pause.
        self.dump_worker = Swrk::spawn(&self.netns).ok();
        Ok(Dumped {
            id,
            hop,
            dir,
            slot: self.slot.clone(),
            link_now,
            started,
            pause,
            drain: frozen.duration_since(started),
            frozen: resumed.duration_since(frozen),
            dump: report.duration,
            size: report.size,
        })
    }

    /// Step 6: the image is durable; release what it includes, and hand it
    /// to the standby or replica. Fails if the VNF failed meanwhile (the
    /// SFF aborted the checkpoint): the image is then never restored.
    pub fn commit(
        &mut self,
        sff: &SffClient,
        stored: Stored,
    ) -> Result<CheckpointStats, ProtectError> {
        let Stored { dumped, stored } = stored;
        let Dumped {
            id,
            hop,
            dir,
            link_now,
            started,
            ..
        } = dumped;
        let s = &self.slot;
        // A checkpoint not committed is never restored: its image goes.
        let not_committed = || {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = s.store.remove_checkpoint(&s.chain, &s.vnf, id);
        };
        if self.retired || hop != self.hop {
            // Its agent changed meanwhile (unprotected, moved): the SFF's
            // hop must not wait for this checkpoint for ever.
            not_committed();
            let _ = sff.checkpoint_failed(hop, id);
            return Err(ProtectError::Retired);
        }
        let done = match sff.checkpoint_done(hop, id) {
            Ok(d) => d,
            // Refused: not committed. Any other failure (a lost answer)
            // may have come after the SFF committed and released: the
            // image is kept (the next commit's retention drops it if it
            // is not restorable).
            Err(e @ nham_sff::remote::RemoteError::Refused(_)) => {
                not_committed();
                return Err(ProtectError::Sff(e));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(ProtectError::Sff(e));
            }
        };
        // Kept: what the SFF can restore (this checkpoint and its
        // fallback), whatever else the store holds. (Keeping the newest
        // two by number threw the fallback away when a newer checkpoint
        // had been stored and not committed.)
        let keep: Vec<CheckpointId> = std::iter::once(id).chain(done.fallback).collect();
        let _ = s.store.retain(&s.chain, &s.vnf, &keep);
        if let (Some((_, base)), Some(now)) = (self.link.as_mut(), link_now) {
            *base = now;
        }
        // The standby takes the image it will import; 0R keeps only the
        // store's copy.
        match self.mechanism {
            Mechanism::ActiveStandby => {
                let staged = s.scratch.join("standby");
                let _ = std::fs::remove_dir_all(&staged);
                std::fs::rename(&dir, &staged).map_err(|e| {
                    ProtectError::Process(format!("staging {}: {e}", staged.display()))
                })?;
                self.standby.staged = Some((id, staged));
            }
            // MR-AA members are restored from the store when one fails.
            Mechanism::NoReplica | Mechanism::MultiActive => {
                let _ = std::fs::remove_dir_all(&dir);
            }
            // The replica becomes this checkpoint: the old copy goes, the
            // image is restored (stopped: it was dumped stopped) in the
            // replica's namespace, on a thread of its own, off the pause and
            // the agent lock: a failure meanwhile fails over to the copy
            // there is (the one before, whose packets the SFF still keeps).
            Mechanism::ActiveActive => match self.replica.as_mut() {
                Some(r) => self.refreshing = Some(r.refresh(id, dir)),
                None => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            },
        }
        Ok(CheckpointStats {
            id,
            pause: dumped.pause,
            drain: dumped.drain,
            frozen: dumped.frozen,
            dump: dumped.dump,
            total: started.elapsed(),
            size: dumped.size,
            stored,
            released: done.released,
        })
    }
}
