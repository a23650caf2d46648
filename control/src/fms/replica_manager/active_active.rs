//! 1R-AA: a replica place (a namespace whose `eth0` has the primary's
//! interface index, behind the hop's standby port) holds a stopped copy of
//! the VNF restored from each committed checkpoint, off the pause and the
//! agent lock. On failure the copy resumes and the SFF, in one exchange,
//! marks the hop failed, switches it to the standby port and replays; the
//! two places swap roles. No copy (or the SFF refuses): the VNF is
//! restored as 0R restores it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nham_dataplane::hold::{CheckpointId, RestorePlan};
use nham_sff::remote::{FailOverOutcome, SffClient};

use super::{ProtectedVnf, RecoveryStats};
use crate::runtime::process::{is_alive, kill_and_reap, signal, Niceness, BACKGROUND_NICE};
use crate::vsm::checkpointer::restore_stopped;
use crate::vsm::SyncError;

/// A 1R-AA replica's place: its namespace (its `eth0` has the primary's
/// interface index), the SFF's end of its link, and the stopped copy
/// restored there from checkpoint `image`.
#[derive(Debug)]
pub(super) struct Replica {
    netns: PathBuf,
    sff_iface: String,
    /// The stopped copy, replaced by a worker thread (a CRIU restore takes
    /// tens of ms: the agent lock is not held meanwhile, so a failure fails
    /// over at once, to the copy there is).
    copies: Arc<std::sync::Mutex<Copies>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// The replica's current copy, and a generation that a failover bumps so
/// that a refresh finishing later throws its copy away.
#[derive(Debug, Default)]
struct Copies {
    current: Option<(u32, CheckpointId)>,
    generation: u64,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.discard();
    }
}

impl Replica {
    fn lock(&self) -> std::sync::MutexGuard<'_, Copies> {
        self.copies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a refresh under way, then kills the copy.
    pub(super) fn discard(&mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        let mut c = self.lock();
        c.generation += 1;
        if let Some((pid, _)) = c.current.take() {
            kill_and_reap(pid);
        }
    }

    /// Restores checkpoint `id` (its images in `dir`, which the worker
    /// removes) as the new copy, on a thread of its own; the old copy stays
    /// until the new one is ready.
    /// The receiver returned hears (a disconnection) when the worker is
    /// done.
    pub(super) fn refresh(
        &mut self,
        id: CheckpointId,
        dir: PathBuf,
    ) -> std::sync::mpsc::Receiver<()> {
        if let Some(w) = self.worker.take() {
            tracing::debug!("replica refresh: waiting for the one before");
            let _ = w.join();
        }
        let (copies, netns, iface) = (
            self.copies.clone(),
            self.netns.clone(),
            self.sff_iface.clone(),
        );
        let generation = self.lock().generation;
        let (done, finished) = std::sync::mpsc::channel::<()>();
        self.worker = std::thread::Builder::new()
            .name("nham-replica".into())
            .spawn(move || {
                let _done = done;
                // Background work: the chain (and recoveries) come first.
                let _background = Niceness::for_this_thread(BACKGROUND_NICE);
                // A failover since this refresh was asked for made the
                // replica's namespace (and link) the VNF's own: nothing is
                // restored there (its ring realignment would send filler
                // frames to the live VNF).
                let stale = || {
                    copies
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .generation
                        != generation
                };
                if stale() {
                    let _ = std::fs::remove_dir_all(&dir);
                    return;
                }
                let restored = restore_stopped(None, &dir, &netns, Some(&iface));
                let _ = std::fs::remove_dir_all(&dir);
                let mut c = copies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match restored {
                    Ok(pid) if c.generation == generation => {
                        if let Some((old, _)) = c.current.replace((pid, id)) {
                            kill_and_reap(old);
                        }
                    }
                    // A failover happened meanwhile: this copy is for a
                    // namespace that is the VNF's own now.
                    Ok(pid) => kill_and_reap(pid),
                    Err(e) => tracing::warn!("restoring the 1R-AA replica: {e}"),
                }
            })
            .ok();
        finished
    }

    /// Takes the current copy (if it still runs) and the checkpoint it
    /// holds; any refresh under way is made obsolete.
    fn take_current(&mut self) -> Option<(u32, CheckpointId)> {
        let mut c = self.lock();
        c.generation += 1;
        match c.current.take() {
            Some((pid, id)) if is_alive(pid) => Some((pid, id)),
            Some((pid, _)) => {
                kill_and_reap(pid);
                None
            }
            None => None,
        }
    }
}

/// What a 1R-AA failover attempt came to.
pub(super) enum FailOver {
    /// The replica took over.
    Done(RecoveryStats),
    /// It could not; the SFF's plan if the hop was marked failed.
    Refused(Option<RestorePlan>),
}

impl ProtectedVnf {
    /// Gives the VNF a place for a 1R-AA replica: namespace file `netns`
    /// (whose `eth0` has the primary's interface index) behind the SFF's
    /// interface `sff_iface` (the hop's standby port).
    pub fn with_replica(mut self, netns: &Path, sff_iface: &str) -> Self {
        self.set_replica(netns, sff_iface);
        self
    }

    /// Gives the VNF a 1R-AA replica place at runtime (see
    /// [`with_replica`](Self::with_replica)); one it has is kept.
    pub fn set_replica(&mut self, netns: &Path, sff_iface: &str) {
        if self.replica.is_none() {
            self.replica = Some(Replica {
                netns: netns.to_path_buf(),
                sff_iface: sff_iface.to_string(),
                copies: Arc::default(),
                worker: None,
            });
        }
    }

    /// 1R-AA failover: the replica's stopped copy resumes and the SFF, in
    /// one exchange, marks the hop failed, switches it to the replica's
    /// port and replays, if it kept the packets since the copy's
    /// checkpoint (the restore point, or the one before it while a refresh
    /// is under way). The namespaces swap roles: the failed one is emptied
    /// and takes the next replica. `Refused` when there is no copy (the
    /// caller restores as 0R does), with the SFF's plan if it marked the
    /// hop failed already.
    pub(super) fn fail_over(
        &mut self,
        sff: &SffClient,
        started: Instant,
    ) -> Result<FailOver, SyncError> {
        let Some(r) = self.replica.as_mut() else {
            return Ok(FailOver::Refused(None));
        };
        let Some((ready, from)) = r.take_current() else {
            tracing::debug!(hop = self.sync.hop, "failover: no replica copy");
            return Ok(FailOver::Refused(None));
        };
        tracing::debug!(hop = self.sync.hop, ready, from, "failover: asking the SFF");
        // Resumed only once the SFF has switched to it and is replaying:
        // its first outputs may finish the input its image was frozen in
        // (stamped with that input's old epoch), which the SFF takes as
        // this incarnation's only from then on (see `Hop::handle_restored`).
        let rr = match sff
            .fail_over(self.sync.hop, Some(from))
            .map_err(SyncError::Sff)?
        {
            FailOverOutcome::Switched(rr) => {
                signal(ready, nix::sys::signal::Signal::SIGCONT)?;
                rr
            }
            FailOverOutcome::NotSwitched { plan, why } => {
                tracing::warn!(hop = self.sync.hop, "no failover to the replica: {why}");
                kill_and_reap(ready);
                return Ok(FailOver::Refused(Some(plan)));
            }
        };
        let duration = started.elapsed();
        // The chain runs again; what follows is bookkeeping. Roles swap:
        // the replica's namespace and port are the VNF's now.
        std::mem::swap(&mut self.sync.netns, &mut r.netns);
        let old_iface = std::mem::take(&mut r.sff_iface);
        let new_iface = match self.sync.link.as_mut() {
            Some((iface, _)) => std::mem::replace(iface, old_iface),
            None => old_iface,
        };
        r.sff_iface = new_iface;
        self.sync.dump_worker = None;
        self.sync.pid = ready;
        // What the failed incarnation left in its namespace (CRIU workers,
        // stray children) goes: a scan of every process on the host. (The
        // dump worker must run in the new namespace: it is started afresh
        // by `prepare`.)
        nham_netns::kill_processes_in(&r.netns);
        // Drops the new link counted before now are not the new VNF's.
        self.sync.restart_link_count();
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
}
