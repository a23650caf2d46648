//! MR-AA: members 1 to M-1 of a VNF (member 0 is its own process and
//! place), each in a namespace of its own whose `eth0` has member 0's
//! interface index, so an image restores in any member's place. The SFF
//! spreads the hop's input over the members; a failed member is restored
//! from the hop's restore point in its own place and catches up while the
//! others serve. Only the last member's failure fails the hop (replay).

use std::time::Instant;

use nham_sff::remote::SffClient;

use super::{restore_or_fall_back, Mechanism, ProtectedVnf, RecoveryStats};
use crate::runtime::process::{signal, Niceness, BACKGROUND_NICE};
use crate::runtime::Place;
use crate::vsm::SyncError;

impl ProtectedVnf {
    /// Gives the VNF MR-AA members 1 to M-1 (running, in their places;
    /// their processes are the chain's to watch: a member's recovery
    /// returns its new pid).
    pub fn with_members(mut self, members: Vec<Place>) -> Self {
        self.members = members;
        self
    }

    /// Keeps MR-AA members 1 to `keep` (a smaller member count at
    /// runtime; the SFF's members change with it). None kept: an MR-AA
    /// agent protects by 0R until told otherwise.
    pub fn keep_members(&mut self, keep: usize) {
        self.members.truncate(keep);
        if self.members.is_empty() && self.mechanism == Mechanism::MultiActive {
            self.mechanism = Mechanism::NoReplica;
        }
    }

    /// Adds MR-AA members after the others (a larger member count at
    /// runtime), in their places, with no process yet: each is restored
    /// by [`recover_member`](Self::recover_member).
    pub fn add_members(&mut self, members: impl IntoIterator<Item = Place>) {
        self.members.extend(members);
    }

    /// MR-AA: member `k`'s process is gone. The SFF stops sending to it;
    /// while another member is alive the chain goes on, and this one is
    /// restored from the restore point (in its own place) and catches up.
    /// If it was the last, the hop failed and recovers with it (replay).
    pub fn recover_member(
        &mut self,
        sff: &SffClient,
        k: usize,
    ) -> Result<RecoveryStats, SyncError> {
        if self.sync.retired {
            return Err(SyncError::Retired);
        }
        let started = Instant::now();
        let hop = self.sync.hop;
        let (netns, iface, cwd) = match k {
            0 => (
                self.sync.netns.clone(),
                self.sync.link_iface().map(str::to_string),
                None,
            ),
            _ => self
                .members
                .get(k - 1)
                .map(|m| {
                    (
                        m.netns.clone(),
                        Some(m.sff_iface.clone()),
                        Some(m.cwd.clone()),
                    )
                })
                .ok_or_else(|| SyncError::Process(format!("no member {k}")))?,
        };
        let mut _background = None;
        let (checkpoint, fallback) = match sff.member_failed(hop, k).map_err(SyncError::Sff)? {
            nham_dataplane::hold::MemberFailure::Continues => {
                // The chain is served meanwhile: the restore (CRIU runs as
                // a child of this thread) must not take the CPU from it.
                // CRIU gives the restored process its own nice value back.
                _background = Some(Niceness::for_this_thread(BACKGROUND_NICE));
                let st = sff.status().map_err(SyncError::Sff)?;
                let h = st.hops.get(hop).ok_or_else(|| {
                    SyncError::Sff(nham_sff::remote::RemoteError::Refused(format!(
                        "no hop {hop}"
                    )))
                })?;
                (h.committed.filter(|&id| id != 0), None)
            }
            nham_dataplane::hold::MemberFailure::HopFailed(plan) => {
                (plan.checkpoint, plan.fallback)
            }
        };
        let (pid, from, fallback_reason) = match checkpoint {
            None => (self.start_fresh_in(&netns, cwd.as_deref())?, None, None),
            // The restore point of a hop not protected before: no image
            // (see `restore_from_store`).
            Some(0) => (self.start_fresh_in(&netns, cwd.as_deref())?, Some(0), None),
            // The same policy as a VNF's: only an image that is corrupt or
            // gone is given up for the older one; a transient error (I/O,
            // a busy database) keeps it.
            Some(id) => {
                let (pid, from, why) = restore_or_fall_back(&self.sync.slot, id, fallback, |id| {
                    self.sync.restore_in(id, &netns, iface.as_deref())
                })?;
                (pid, Some(from), why)
            }
        };
        let rr = match sff.member_restored(hop, k, from).map_err(SyncError::Sff) {
            Ok(rr) => rr,
            Err(e) => {
                let _ = signal(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(e);
            }
        };
        signal(pid, nix::sys::signal::Signal::SIGCONT)?;
        let duration = started.elapsed();
        if k == 0 {
            self.sync.pid = pid;
            self.sync.dump_worker = None;
            // What its link dropped before is caught up now (else every
            // later checkpoint would take it for a loss, for ever).
            self.sync.restart_link_count();
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
}
