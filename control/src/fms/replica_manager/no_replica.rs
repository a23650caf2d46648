//! 0R: a new instance of the VNF from the committed checkpoint in the
//! store (checked, unpacked, restored by CRIU), or its command started
//! afresh when there is no image. 1R-AS comes here with its standby
//! holding the image already, 1R-AA when there was no copy to fail over
//! to.

use std::time::Instant;

use nham_dataplane::hold::RestorePlan;
use nham_sff::remote::SffClient;

use super::{restore_or_fall_back, ProtectedVnf, RecoveryStats};
use crate::runtime::process::signal;
use crate::vsm::SyncError;

impl ProtectedVnf {
    /// Marks the hop failed (unless `plan` says it is already), restores
    /// the checkpoint the SFF names (or the older one, see
    /// [`super::unusable`]) or starts the command afresh, and lets the SFF
    /// replay.
    pub(super) fn restore_from_store(
        &mut self,
        sff: &SffClient,
        started: Instant,
        plan: Option<RestorePlan>,
    ) -> Result<RecoveryStats, SyncError> {
        let hop = self.sync.hop;
        let plan = match plan {
            Some(p) => p,
            None => sff.failure(hop).map_err(SyncError::Sff)?,
        };
        // Checkpoint 0 is the restore point of a hop that was not protected
        // (its packets released on delivery): there is no image. The VNF
        // starts afresh and what was held since is replayed; what it had
        // from the released packets is gone, as for any unprotected VNF.
        // (`SetMechanism` checkpoints a VNF it protects before it returns.)
        let restored = plan.checkpoint.is_some_and(|id| id != 0);
        let netns = self.sync.netns.clone();
        let (pid, from, fallback_reason) = match plan.checkpoint {
            Some(0) => (self.start_fresh_in(&netns, None)?, Some(0), None),
            Some(id) => {
                let slot = self.sync.slot.clone();
                // It was dumped while stopped (step 3) and comes back
                // stopped; it is resumed once the SFF replays (below).
                let (pid, from, why) =
                    restore_or_fall_back(&slot, id, plan.fallback, |id| self.restore(id))?;
                (pid, Some(from), why)
            }
            None => (self.start_fresh_in(&netns, None)?, None, None),
        };
        self.sync.pid = pid;
        // Whatever the link lost before is replayed now.
        self.sync.restart_link_count();
        let r = sff.restored(hop, from).map_err(SyncError::Sff);
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
            pid,
            checkpoint: from,
            fallback_reason,
            switched: false,
        })
    }
}
