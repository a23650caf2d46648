//! MR-AA on other hosts (driver): a VNF's members each run on a host of
//! their own where there are enough (member 0 is the VNF's incarnation,
//! checkpointed by its agent; the SFF pauses only it). A member that
//! exits, or whose host is judged down, is failed in the SFF (the others
//! go on serving), restored from the hop's restore point on a live host
//! (its own again if only the process died, else one that runs none of
//! the VNF's other members where there is one), put behind the failed
//! one's member port (`ReplaceMember`: a new tunnel, so what the old one
//! still sends is never accepted), and catches up from the checkpoint's
//! mark. Only the last member's failure fails the hop; it recovers with
//! the first member restored (replay).

use super::remote_vnfs::{recovering, recovery_failed, stored_image, watch_once, RemoteFailure};
#[allow(unused_imports)]
use super::*;
use crate::chain::{remote, RemoteVnf, VnfRuntime};
use crate::cluster::Cluster;
use crate::fms::recovery::{Counters, FailureRecovery, Phase};
use crate::runtime::process::{Niceness, BACKGROUND_NICE};
use nham_dataplane::hold::{CheckpointId, MemberFailure, MemberState};

/// Member `k` of `v` (0: the VNF's own incarnation): its Failure Recovery
/// and its incarnation.
fn member_of(
    v: &mut VnfRuntime,
    k: usize,
) -> Option<(&mut FailureRecovery, &mut Option<RemoteVnf>)> {
    match k {
        0 => Some((&mut v.recovery, &mut v.remote)),
        k => v
            .remote_members
            .get_mut(k - 1)
            .map(|m| (&mut m.recovery, &mut m.remote)),
    }
}

/// How many times a member is restored again when the restore point
/// moved on while it was restored (a checkpoint of member 0 committed
/// meanwhile released what the one restored would catch up from).
const RESTORE_TRIES: usize = 3;

/// How long `ReplaceMember` is asked again while the SFF still flushes or
/// reopens the failed member's port.
const REPLACE_BUSY: Duration = Duration::from_secs(2);

impl Daemon {
    /// Watches MR-AA member `k` of VNF `vnf` of `chain` (0: the VNF's own
    /// incarnation, any mechanism), incarnation `incarnation`, on its host:
    /// once it exits, or its host is judged down, it is failed and
    /// recovered ([`on_remote_failure`](Self::on_remote_failure) for 0,
    /// [`on_remote_member_failure`](Self::on_remote_member_failure) else).
    pub(super) fn watch_remote_member(
        self: &Arc<Self>,
        chain: String,
        vnf: String,
        k: usize,
        incarnation: u64,
    ) {
        let daemon = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(d) = daemon.upgrade() else { return };
                let Some((cluster, host, key)) =
                    d.remote_member_of(&chain, &vnf, k, incarnation).await
                else {
                    return;
                };
                drop(d);
                let Some(why) = watch_once(&cluster, &host, &key).await else {
                    continue;
                };
                if let Some(d) = daemon.upgrade() {
                    match k {
                        0 => d.on_remote_failure(&chain, &vnf, incarnation, why).await,
                        k => {
                            d.on_remote_member_failure(&chain, &vnf, k, incarnation, why)
                                .await
                        }
                    }
                }
                return;
            }
        });
    }

    /// Watches the MR-AA members on other hosts a chain started with.
    pub(super) fn watch_remote_members(self: &Arc<Self>, runtime: &ChainRuntime) {
        for v in &runtime.vnfs {
            for (i, m) in v.remote_members.iter().enumerate() {
                self.watch_remote_member(
                    runtime.plan.name.clone(),
                    v.plan.name.clone(),
                    i + 1,
                    m.recovery.incarnation(),
                );
            }
        }
    }

    /// The cluster, host and key of incarnation `incarnation` of member
    /// `k` of VNF `vnf` of `chain`, while it is current and running.
    async fn remote_member_of(
        &self,
        chain: &str,
        vnf: &str,
        k: usize,
        incarnation: u64,
    ) -> Option<(Arc<Cluster>, String, crate::cluster::hosting::HostedKey)> {
        let mut chains = self.chains.lock().await;
        let v = vnf_in(&mut chains, chain, vnf)?;
        let (recovery, remote) = member_of(v, k)?;
        let r = remote.as_ref()?;
        (recovery.incarnation() == incarnation && recovery.phase() == Phase::Running)
            .then(|| (r.cluster().clone(), r.host.clone(), r.key.clone()))
    }

    /// The MR-AA members (1 or more) of the VNFs of this daemon's chains
    /// that run on `host`, with their incarnations.
    pub(super) async fn remote_members_on(&self, host: &str) -> Vec<(String, String, usize, u64)> {
        let chains = self.chains.lock().await;
        let mut found = Vec::new();
        for (name, e) in chains.iter() {
            for v in &e.runtime.vnfs {
                for (i, m) in v.remote_members.iter().enumerate() {
                    if m.remote.as_ref().is_some_and(|r| r.host == host) {
                        let inc = m.recovery.incarnation();
                        found.push((name.clone(), v.plan.name.clone(), i + 1, inc));
                    }
                }
            }
        }
        found
    }

    /// Incarnation `incarnation` of MR-AA member `k` (0: the VNF's own) of
    /// VNF `vnf` of `chain`, on another host, failed: the SFF stops
    /// sending to it, it is restored from the hop's restore point on a
    /// live host and catches up (see the module's doc).
    pub(super) async fn on_remote_member_failure(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        k: usize,
        incarnation: u64,
        why: RemoteFailure,
    ) {
        let noticed = Instant::now();
        let retry = matches!(why, RemoteFailure::Retry);
        let mut chains = self.chains.lock().await;
        let Some(e) = chains.get_mut(chain) else {
            return;
        };
        let Ok(hop) = e.runtime.vnf_index(vnf) else {
            return;
        };
        let sff = e.runtime.sff.clone();
        // How many of the chain's VNFs and members each host runs.
        let mut load = BTreeMap::<String, usize>::new();
        for v in &e.runtime.vnfs {
            let members = v.remote_members.iter().filter_map(|m| m.remote.as_ref());
            for r in v.remote.iter().chain(members) {
                *load.entry(r.host.clone()).or_default() += 1;
            }
        }
        let v = &mut e.runtime.vnfs[hop];
        // The hosts of its other members that run.
        let others: Vec<String> = (0..=v.remote_members.len())
            .filter(|&j| j != k)
            .filter_map(|j| {
                let (fr, r) = member_of(v, j)?;
                let r = r.as_ref()?;
                (fr.phase() == Phase::Running).then(|| r.host.clone())
            })
            .collect();
        let ifindex = v.remote.as_ref().map_or(0, |r| r.ifindex);
        let (plan, target, turn, agent) = (
            v.plan.clone(),
            v.remote_target.clone(),
            v.member_turn.clone(),
            v.agent.clone(),
        );
        let Some((fr, remote)) = member_of(v, k) else {
            return;
        };
        let Some(old) = remote.as_ref() else { return };
        let (cluster, old_host) = (old.cluster().clone(), old.host.clone());
        let Some((cause, failed_at)) = recovering(fr, incarnation, &why) else {
            return; // an old incarnation, already replaced
        };
        drop(chains);
        let who = super::failure_recovery::who(k);
        if !retry {
            self.emit(failure_detected(
                chain,
                vnf,
                format!("{who}{cause} (on host {old_host})"),
                None,
                failed_at,
                noticed,
            ));
        }
        self.emit(event(chain, vnf, Event::RecoveryStarted));
        // Back where it was if only its process died; else, first, a
        // live host running none of its other members (the least loaded),
        // and where there is none, one that does.
        let same_host = matches!(why, RemoteFailure::Exited { .. });
        let pick = move |cluster: &Cluster| {
            if same_host && cluster.underlay_of(&old_host).is_ok() {
                return Some(old_host.clone());
            }
            let least = |hosts: Vec<String>| {
                hosts
                    .into_iter()
                    .enumerate()
                    .min_by_key(|(i, n)| (load.get(n).copied().unwrap_or(0), *i))
                    .map(|(_, n)| n)
            };
            let mut except: Vec<&str> = vec![old_host.as_str()];
            except.extend(others.iter().map(String::as_str));
            least(remote::live_hosts(cluster, &except))
                .or_else(|| least(remote::live_hosts(cluster, &[old_host.as_str()])))
        };
        let again_later = pick(&cluster).is_some();
        let store = self.state.store.clone();
        let chain_name = chain.to_string();
        let whom = who.clone();
        let restored = match sff {
            None => Err(ControlError::FailedPrecondition(
                "the chain's SFF is gone".into(),
            )),
            Some(sff) => tokio::task::spawn_blocking(move || {
                let restore = MemberRestore {
                    cluster: &cluster,
                    sff: &sff,
                    hop,
                    k,
                    chain: &chain_name,
                    plan: &plan,
                    ifindex,
                    store: &store,
                };
                // The SFF stops sending to it at once, whatever waits
                // below (a member lost with others of its VNF must not be
                // sent to while they are restored in turn).
                let told = restore.fail()?;
                // While others serve, its restore is background work.
                let _background = told
                    .is_none()
                    .then(|| Niceness::for_this_thread(BACKGROUND_NICE));
                // One member of a VNF restored at a time.
                let _turn = turn
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Members 1 to M-1: no checkpoint of member 0 begins while
                // one is restored (as a local member's restore holds its
                // agent), so the restore point it is restored from stays
                // one the SFF keeps (it keeps the one before too, for a
                // checkpoint already under way). Not waited on for long: a
                // checkpoint of a lost member 0 may hold the agent until
                // its calls time out; then a moved restore point is
                // restored again.
                let _agent = agent
                    .as_ref()
                    .filter(|_| k > 0)
                    .and_then(|a| lock_within(a, AGENT_WAIT));
                // (Chosen again if its host went down meanwhile.)
                let host = pick(&cluster).ok_or_else(|| {
                    ControlError::FailedPrecondition(
                        "no live host to restore it on (the chain's own host keeps only the \
                         SFF): restored once one is up"
                            .into(),
                    )
                })?;
                let (mut checkpoint, mut fallback) = restore.source(told)?;
                let mut tries = 0;
                loop {
                    tries += 1;
                    match restore.on(&host, checkpoint, fallback, target.as_deref())? {
                        Err(Moved(e)) if tries < RESTORE_TRIES => {
                            tracing::debug!(
                                chain = chain_name,
                                vnf = plan.name,
                                "{whom}restored again: {e}"
                            );
                            (checkpoint, fallback) = restore.source(None)?;
                        }
                        Err(Moved(e)) => return Err(e),
                        Ok(done) => return Ok(done),
                    }
                }
            })
            .await
            .map_err(ControlError::from)
            .and_then(|r| r),
        };
        let mut chains = self.chains.lock().await;
        let Some(v) = vnf_in(&mut chains, chain, vnf) else {
            std::thread::spawn(move || drop(restored));
            return;
        };
        let Some((fr, remote)) = member_of(v, k) else {
            std::thread::spawn(move || drop(restored));
            return;
        };
        // (A chain made anew under its name meanwhile: not its member.)
        if fr.incarnation() != incarnation || fr.phase() != Phase::Recovering {
            std::thread::spawn(move || drop(restored));
            return;
        }
        let counters = fr.counters().clone();
        match restored {
            Ok((member, iface, report, from, fallback_reason)) => {
                // Detection to running again (as for a VNF here); its log
                // line says how long after it was last heard, too.
                let took = noticed.elapsed();
                let since_failed = failed_at.elapsed();
                let (pid, host) = (member.pid, member.host.clone());
                *fr = FailureRecovery::found(
                    Phase::Running,
                    incarnation + 1,
                    Counters {
                        recoveries: counters.recoveries + 1,
                        last_error: None,
                        ..counters
                    },
                );
                // The one before stops (best effort: its host may be gone
                // or cut off; its tunnel is no port of the SFF's any more).
                let old = remote.replace(member);
                if let Some(old) = &old {
                    old.stop_hosted();
                }
                let older = match k {
                    0 => std::mem::replace(&mut v.remote_previous, old),
                    k => std::mem::replace(&mut v.remote_members[k - 1].previous, old),
                };
                std::thread::spawn(move || drop(older));
                if k == 0 {
                    v.sff_iface = iface.clone();
                    super::remote_vnfs::rewatch_link(v.agent.clone(), v.remote_target.clone());
                }
                tracing::info!(
                    chain,
                    vnf,
                    host,
                    ?took,
                    ?since_failed,
                    "{who}MR-AA member restored"
                );
                if let Some(e) = chains.get(chain) {
                    let _ = self.records.put(&e.runtime, false);
                }
                drop(chains);
                let stats = RecoveryStats {
                    duration: took,
                    resumed_at: Some(Instant::now()),
                    replay: report.replay,
                    restored: from.is_some(),
                    pid,
                    checkpoint: from,
                    fallback_reason,
                    switched: false,
                };
                self.emit(recovery_finished(chain, vnf, stats, took));
                match k {
                    0 => self.watch_remote(chain.to_string(), vnf.to_string(), incarnation + 1),
                    k => self.watch_remote_member(
                        chain.to_string(),
                        vnf.to_string(),
                        k,
                        incarnation + 1,
                    ),
                }
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(chain, vnf, "{who}restoring it: {reason}");
                let backoff = recovery_failed(fr, incarnation, &reason);
                drop(chains);
                self.emit(event(
                    chain,
                    vnf,
                    Event::RecoveryFailed {
                        reason: format!("{who}{reason}"),
                    },
                ));
                if again_later {
                    self.retry_member_later(chain, vnf, k, incarnation, backoff);
                }
            }
        }
    }

    /// Restores member `k` of `vnf` of `chain` (incarnation
    /// `incarnation`) again after `delay`, if it is still failed then.
    fn retry_member_later(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        k: usize,
        incarnation: u64,
        delay: Duration,
    ) {
        let (d, chain, vnf) = (self.clone(), chain.to_string(), vnf.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            d.on_remote_member_failure(&chain, &vnf, k, incarnation, RemoteFailure::Retry)
                .await;
        });
    }
}

/// A restore the SFF refused to take as the member's (the checkpoint it
/// restored is no longer one the SFF keeps: the restore point moved on):
/// restored again from the new one.
struct Moved(ControlError);

/// What a member's restore works with (blocking calls: off the async
/// threads, under the VNF's member turn).
struct MemberRestore<'a> {
    cluster: &'a Arc<Cluster>,
    sff: &'a nham_sff::remote::SffClient,
    hop: usize,
    k: usize,
    chain: &'a str,
    plan: &'a crate::plan::VnfPlan,
    /// Member 0's `eth0` index (every member's image is member 0's).
    ifindex: u32,
    store: &'a crate::vsm::database::Store,
}

/// A restored member: the incarnation, the SFF's end of its tunnel, the
/// SFF's report, the checkpoint restored (`None`: started afresh), why
/// the one before it was restored (its newer one unreadable).
type Restored = (
    RemoteVnf,
    String,
    nham_dataplane::hold::RecoveryReport,
    Option<CheckpointId>,
    Option<String>,
);

/// What the hop's failure said to restore from: the checkpoint and its
/// fallback.
type HopRestorePoint = (Option<CheckpointId>, Option<CheckpointId>);

/// How long a member's restore waits for its VNF's agent (see
/// [`Daemon::on_remote_member_failure`]).
const AGENT_WAIT: Duration = Duration::from_secs(1);

/// `agent`, if it is free within `within`.
fn lock_within(
    agent: &crate::chain::Agent,
    within: Duration,
) -> Option<std::sync::MutexGuard<'_, crate::fms::replica_manager::ProtectedVnf>> {
    let deadline = Instant::now() + within;
    loop {
        match agent.try_lock() {
            Ok(a) => return Some(a),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

impl MemberRestore<'_> {
    fn hop_status(&self) -> Result<nham_sff::HopStatus, ControlError> {
        let mut st = self.sff.status()?;
        if self.hop >= st.hops.len() {
            return Err(ControlError::FailedPrecondition(format!(
                "the SFF has no hop {}",
                self.hop
            )));
        }
        Ok(st.hops.swap_remove(self.hop))
    }

    /// Tells the SFF the member failed (a retry finds it failed there
    /// already). Returns the hop's restore point if the hop failed with it
    /// (it was the last member serving).
    fn fail(&self) -> Result<Option<HopRestorePoint>, ControlError> {
        let h = self.hop_status()?;
        if h.members.get(self.k) == Some(&MemberState::Failed) {
            return Ok(None);
        }
        match self.sff.member_failed(self.hop, self.k)? {
            MemberFailure::Continues => Ok(None),
            MemberFailure::HopFailed(plan) => Ok(Some((plan.checkpoint, plan.fallback))),
        }
    }

    /// What to restore the member from now: the hop's restore point (and
    /// fallback) if the hop failed (`told`, or asked again), else the
    /// committed checkpoint (`None`: nothing committed yet, afresh).
    fn source(&self, told: Option<HopRestorePoint>) -> Result<HopRestorePoint, ControlError> {
        let h = self.hop_status()?;
        if h.recovering {
            return match told {
                Some(point) => Ok(point),
                None => {
                    let plan = self.sff.failure(self.hop)?;
                    Ok((plan.checkpoint, plan.fallback))
                }
            };
        }
        Ok((h.committed.filter(|&id| id != 0), None))
    }

    /// Restores the member on `host` from `checkpoint` (its fallback if
    /// that image cannot be read from the store), behind a new tunnel that
    /// takes the failed one's member port; the SFF has it catch up; then
    /// it runs. `Ok(Err(Moved))`: the SFF did not take it, the restore
    /// point having moved on meanwhile.
    fn on(
        &self,
        host: &str,
        checkpoint: Option<CheckpointId>,
        fallback: Option<CheckpointId>,
        target: Option<&remote::RemoteTarget>,
    ) -> Result<Result<Restored, Moved>, ControlError> {
        let (hop, k) = (self.hop, self.k);
        let image = |id| stored_image(self.store, self.chain, &self.plan.name, id);
        let restore = |image| remote::Start::Restore {
            ifindex: self.ifindex,
            image,
        };
        let mut fallback_reason = None;
        let (start, from) = match checkpoint {
            None => (remote::Start::Fresh, None),
            // The restore point of a hop that was not protected: no image,
            // afresh (as a local member).
            Some(0) => (remote::Start::Fresh, Some(0)),
            Some(id) => match (image(id), fallback) {
                (Ok(image), _) => (restore(image), Some(id)),
                (Err(e), Some(fb)) => {
                    let why = format!("checkpoint {id}: {e}");
                    tracing::warn!(
                        chain = self.chain,
                        vnf = self.plan.name,
                        "{why}: restoring {fb}"
                    );
                    fallback_reason = Some(why);
                    (restore(image(fb)?), Some(fb))
                }
                (Err(e), None) => return Err(e),
            },
        };
        let (member, port) = remote::place(self.cluster, host, self.chain, self.plan, &start)?;
        let iface = port.iface.clone();
        let deadline = Instant::now() + REPLACE_BUSY;
        loop {
            match self.sff.replace_member(hop, k, port.clone()) {
                Ok(()) => break,
                Err(nham_sff::remote::RemoteError::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Member 0 is what the agent checkpoints: the new one from now on
        // (none begins while it is failed).
        if k == 0 {
            if let Some(t) = target {
                t.set(&member);
            }
        }
        let report = match self.sff.member_restored(hop, k, from) {
            Ok(r) => r,
            Err(e) => {
                // Taken though the answer was lost: it is the member.
                let h = self.hop_status()?;
                if h.members.get(k).is_some_and(|m| *m != MemberState::Failed) {
                    nham_dataplane::hold::RecoveryReport {
                        replay: 0,
                        duration: Duration::ZERO,
                    }
                } else if h.committed != from && !h.recovering {
                    return Ok(Err(Moved(e.into())));
                } else {
                    return Err(e.into());
                }
            }
        };
        // (Started afresh, it runs already.)
        if from.is_some_and(|id| id != 0) {
            super::remote_vnfs::resume(self.cluster, &member);
        }
        Ok(Ok((member, iface, report, from, fallback_reason)))
    }
}
