//! 1R-AS: the standby is prepared in advance: a `criu swrk` process
//! already running with the VNF's namespace in hand, and the latest
//! committed image already checked and unpacked. On failure it imports the
//! image at once (the restore itself is [`super::no_replica`]'s, with the
//! image taken from here).

use std::path::{Path, PathBuf};

use nham_dataplane::hold::CheckpointId;

use crate::runtime::process::URGENT_NICE;
use crate::vsm::checkpointer::{restore_stopped, Checkpointer};
use crate::vsm::criu::Swrk;
use crate::vsm::SyncError;

/// A 1R-AS standby: a `criu swrk` with the VNF's namespace, and the image of
/// checkpoint `id`, checked and unpacked in `dir`.
#[derive(Debug, Default)]
pub(super) struct Standby {
    swrk: Option<Swrk>,
    staged: Option<(CheckpointId, PathBuf)>,
}

impl Standby {
    /// Ready for a failure of the VNF `sync` checkpoints: a worker, and the
    /// newest image in the store (if any) unpacked.
    pub(super) fn ready(&mut self, sync: &Checkpointer) -> Result<(), SyncError> {
        if self.swrk.is_none() {
            self.swrk = Some(Swrk::spawn(&sync.netns)?);
        }
        if self.staged.is_none() {
            let s = &sync.slot;
            if let Some(meta) = s.store.list(&s.chain, &s.vnf)?.pop() {
                let dir = s.scratch.join("standby");
                s.store.unpack(&meta, &dir)?;
                self.staged = Some((meta.id, dir));
            }
        }
        Ok(())
    }

    /// No standby any more (another mechanism).
    pub(super) fn let_go(&mut self) {
        self.swrk = None;
        if let Some((_, dir)) = self.staged.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Takes committed checkpoint `id`'s image, unpacked in `dir`, as the
    /// one it will import.
    pub(super) fn stage(
        &mut self,
        sync: &Checkpointer,
        id: CheckpointId,
        dir: PathBuf,
    ) -> Result<(), SyncError> {
        let staged = sync.slot.scratch.join("standby");
        let _ = std::fs::remove_dir_all(&staged);
        std::fs::rename(&dir, &staged)
            .map_err(|e| SyncError::Process(format!("staging {}: {e}", staged.display())))?;
        self.staged = Some((id, staged));
        Ok(())
    }

    /// A recovery is under way: the worker that will restore runs first.
    pub(super) fn hurry(&self) {
        if let Some(w) = &self.swrk {
            w.renice(URGENT_NICE);
        }
    }

    /// After a recovery: a worker for the next one, in the VNF's namespace.
    pub(super) fn prepare(&mut self, netns: &Path) {
        if self.swrk.is_none() {
            self.swrk = Swrk::spawn(netns).ok();
        }
    }

    /// Restores checkpoint `id` through the worker if the standby holds
    /// that image (`None`: it does not, the store's copy is for the
    /// caller).
    pub(super) fn restore(
        &mut self,
        sync: &Checkpointer,
        id: CheckpointId,
    ) -> Option<Result<u32, SyncError>> {
        let (staged, dir) = self.staged.as_ref()?;
        if *staged != id {
            return None;
        }
        Some(restore_stopped(
            self.swrk.take(),
            dir,
            &sync.netns,
            sync.link_iface(),
        ))
    }
}
