//! VNFs on other hosts (driver): each incarnation is watched through its
//! host's `WatchVnf`; its exit, or its host judged down, makes it failed,
//! and it is placed again — on the same host if that host is alive and only
//! the process died, else on another live host — as a new incarnation
//! behind a new tunnel: attached as the hop's standby port, the SFF fails
//! the hop over to it in one exchange (what the old incarnation still
//! sends is fenced). By its mechanism: unprotected, afresh; 0R, restored
//! from its committed checkpoint on the new host; 1R-AA and 1R-AS, its
//! replica or standby on another host takes over; MR-AA, its members are
//! restored one by one while the others serve (`remote_members`).

#[allow(unused_imports)]
use super::*;
use crate::chain::remote;
use crate::cluster::Cluster;
use crate::fms::recovery::{Counters, FailureRecovery, Phase};

/// Why a VNF on another host failed.
#[derive(Debug, Clone)]
pub(super) enum RemoteFailure {
    /// Its host said it exited, at this moment of that host's clock.
    Exited {
        /// Unix ns.
        at_unix_ns: u64,
    },
    /// Its host was judged down (its heartbeats stopped).
    HostDown {
        /// When it was last heard, Unix ns.
        last_heard_unix_ns: u64,
    },
    /// Its placement failed for want of a live host, and a host is up
    /// now: placed again.
    Retry,
}

/// Waits for hosted VNF `key` on `host` to exit: why it failed, or `None`
/// to be asked again (after a pause). A host that no longer has it (its
/// `nhamd` restarted) says so; one judged down meanwhile (the
/// incarnation was placed there as it went down, after the host's VNFs
/// were failed) cannot be asked any more: either way it is failed.
pub(super) async fn watch_once(
    cluster: &Cluster,
    host: &str,
    key: &crate::cluster::hosting::HostedKey,
) -> Option<RemoteFailure> {
    match cluster.watch_vnf(host, key).await {
        Ok(at_unix_ns) => Some(RemoteFailure::Exited { at_unix_ns }),
        Err(crate::cluster::hosting::HostingError::Peer {
            code: tonic::Code::NotFound,
            ..
        }) => Some(RemoteFailure::Exited {
            at_unix_ns: now_nanos(),
        }),
        Err(_) if cluster.underlay_of(host).is_err() => {
            let ago = (cluster.hosts().hosts.into_iter())
                .find(|h| h.record.name == host)
                .and_then(|h| h.last_heard_ago)
                .unwrap_or_default();
            Some(RemoteFailure::HostDown {
                last_heard_unix_ns: now_nanos().saturating_sub(ago.as_nanos() as u64),
            })
        }
        Err(e) => {
            tracing::debug!(%key, "watching it on {host}: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
    }
}

/// Marks incarnation `incarnation` (of a VNF or an MR-AA member on another
/// host, its Failure Recovery `fr`) recovering for `why`, a failure counted
/// unless it is a retry. Returns the cause to announce and when it failed;
/// `None` (nothing changed) for an old incarnation, already replaced, or a
/// retry of one no longer failed.
pub(super) fn recovering(
    fr: &mut FailureRecovery,
    incarnation: u64,
    why: &RemoteFailure,
) -> Option<(&'static str, Instant)> {
    let retry = matches!(why, RemoteFailure::Retry);
    let phase = fr.phase();
    if fr.incarnation() != incarnation
        || !(phase == Phase::Running || (retry && phase == Phase::Failed))
    {
        return None;
    }
    let (cause, failed_at) = cause_of(why);
    let counters = fr.counters().clone();
    *fr = FailureRecovery::found(
        Phase::Recovering,
        incarnation,
        Counters {
            failures: counters.failures + u64::from(!retry),
            ..counters
        },
    );
    Some((cause, failed_at))
}

/// What `why` says to announce, and when the failure happened (at the
/// latest).
fn cause_of(why: &RemoteFailure) -> (&'static str, Instant) {
    match *why {
        RemoteFailure::Exited { at_unix_ns } => ("process exited", instant_of(at_unix_ns)),
        RemoteFailure::HostDown { last_heard_unix_ns } => {
            ("its host was judged down", instant_of(last_heard_unix_ns))
        }
        RemoteFailure::Retry => ("a host to place it on is up", Instant::now()),
    }
}

/// Marks incarnation `incarnation` (its Failure Recovery `fr`) failed
/// again, its recovery having failed for `reason`; returns how long to wait
/// before it is tried again.
pub(super) fn recovery_failed(
    fr: &mut FailureRecovery,
    incarnation: u64,
    reason: &str,
) -> std::time::Duration {
    let counters = fr.counters().clone();
    let backoff = retry_backoff(counters.recovery_failures);
    *fr = FailureRecovery::found(
        Phase::Failed,
        incarnation,
        Counters {
            recovery_failures: counters.recovery_failures + 1,
            last_error: Some(reason.to_string()),
            ..counters
        },
    );
    backoff
}

/// `unix_ns` as an `Instant` of this host's clock.
pub(super) fn instant_of(unix_ns: u64) -> Instant {
    let ago = now_nanos().saturating_sub(unix_ns);
    Instant::now()
        .checked_sub(Duration::from_nanos(ago))
        .unwrap_or_else(Instant::now)
}

impl Daemon {
    /// Watches the current incarnation of VNF `vnf` of `chain`, which runs
    /// on another host: once its host says it exited, it is failed and
    /// placed again. A host that cannot be asked is asked again (its
    /// failure is the membership's to judge), as long as this incarnation
    /// is current, unless it is judged down already (see [`watch_once`]).
    pub(super) fn watch_remote(self: &Arc<Self>, chain: String, vnf: String, incarnation: u64) {
        self.watch_remote_member(chain, vnf, 0, incarnation);
    }

    /// Host `host` was judged down: every VNF that ran there fails, and
    /// every 1R-AA replica there is given up (the next checkpoint of its
    /// VNF makes one on a live host).
    pub(super) async fn on_host_down(self: &Arc<Self>, host: &str, last_heard_unix_ns: u64) {
        let failed: Vec<(String, String, u64)> = {
            let mut chains = self.chains.lock().await;
            for e in chains.values_mut() {
                for v in &mut e.runtime.vnfs {
                    if v.remote_replica
                        .as_ref()
                        .is_some_and(|(r, _)| r.host == host)
                    {
                        let lost = v.remote_replica.take();
                        std::thread::spawn(move || drop(lost));
                    }
                }
            }
            chains
                .iter()
                .flat_map(|(name, e)| {
                    e.runtime
                        .vnfs
                        .iter()
                        .filter(|v| v.remote.as_ref().is_some_and(|r| r.host == host))
                        .map(|v| (name.clone(), v.plan.name.clone(), v.recovery.incarnation()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        // In parallel: each VNF's own placement, each MR-AA member's own
        // restore.
        for (chain, vnf, incarnation) in failed {
            let d = self.clone();
            tokio::spawn(async move {
                let why = RemoteFailure::HostDown { last_heard_unix_ns };
                d.on_remote_failure(&chain, &vnf, incarnation, why).await;
            });
        }
        for (chain, vnf, k, incarnation) in self.remote_members_on(host).await {
            let d = self.clone();
            tokio::spawn(async move {
                let why = RemoteFailure::HostDown { last_heard_unix_ns };
                d.on_remote_member_failure(&chain, &vnf, k, incarnation, why)
                    .await;
            });
        }
    }

    /// 1R-AA and 1R-AS on another host, after checkpoint `id` of VNF
    /// `vnf` of `chain` is committed. 1R-AA: a copy of it is restored
    /// (stopped) on a live host other than the VNF's, behind a new tunnel
    /// that becomes the hop's standby port; the copy before goes. 1R-AS: it
    /// is staged on the VNF's standby there (the place of its next
    /// incarnation, made with the first one, behind the standby port),
    /// restored only when the VNF fails. (The SFF keeps the packets since
    /// the checkpoint before the restore point: a replica or standby one
    /// checkpoint behind still recovers exactly.) 0R: a standby too, made
    /// once (with this checkpoint) and not staged on again: when the VNF
    /// fails its restore point is staged there and restored (its place,
    /// tunnel, SFF port and CRIU worker ready: no replica's state copied on
    /// each commit, as 1R-AS does).
    pub(super) async fn refresh_remote_replica(
        &self,
        chain: &str,
        vnf: &str,
        id: nham_dataplane::hold::CheckpointId,
    ) {
        let found = {
            let chains = self.chains.lock().await;
            chains.get(chain).and_then(|e| {
                let hop = e.runtime.vnf_index(vnf).ok()?;
                let v = &e.runtime.vnfs[hop];
                let r = v.remote.as_ref()?;
                // (0R: a standby place once, its checkpoint staged only
                // when it fails.)
                let wanted = match v.plan.mechanism {
                    Some(
                        crate::plan::Mechanism::ActiveActive
                        | crate::plan::Mechanism::ActiveStandby,
                    ) => true,
                    // (Again if its host is no longer live.)
                    Some(crate::plan::Mechanism::NoReplica) => v
                        .remote_replica
                        .as_ref()
                        .is_none_or(|(sb, _)| sb.cluster().underlay_of(&sb.host).is_err()),
                    _ => false,
                } && v.phase() == Phase::Running;
                let mut load = BTreeMap::<String, usize>::new();
                for r in e.runtime.vnfs.iter().filter_map(|v| v.remote.as_ref()) {
                    *load.entry(r.host.clone()).or_default() += 1;
                }
                wanted.then(|| {
                    (
                        r.cluster().clone(),
                        r.host.clone(),
                        v.plan.clone(),
                        hop,
                        r.ifindex,
                        v.recovery.incarnation(),
                        e.runtime.sff.clone(),
                        load,
                    )
                })
            })
        };
        let Some((cluster, primary, plan, hop, ifindex, incarnation, Some(sff), load)) = found
        else {
            return;
        };
        let store = self.state.store.clone();
        let chain_name = chain.to_string();
        if plan.mechanism == Some(crate::plan::Mechanism::ActiveStandby)
            && self.stage_on_standby(chain, vnf, incarnation, id).await
        {
            return;
        }
        let standby = plan.mechanism != Some(crate::plan::Mechanism::ActiveActive);
        let mechanism = plan.mechanism;
        let placed = tokio::task::spawn_blocking(move || {
            let host = pick_host(&cluster, &primary, false, &load).ok_or_else(|| {
                ControlError::FailedPrecondition(format!(
                    "no live host other than {primary} for it"
                ))
            })?;
            let image = stored_image(&store, &chain_name, &plan.name, id)?;
            let start = if standby {
                remote::Start::Standby { ifindex, image }
            } else {
                remote::Start::Restore { ifindex, image }
            };
            remote::place(&cluster, &host, &chain_name, &plan, &start)
        })
        .await
        .map_err(ControlError::from)
        .and_then(|r| r);
        let (copy, port) = match placed {
            Ok(p) => p,
            Err(e) => {
                let what = match mechanism {
                    Some(crate::plan::Mechanism::ActiveActive) => "1R-AA replica",
                    Some(crate::plan::Mechanism::ActiveStandby) => "1R-AS standby",
                    _ => "0R standby place",
                };
                // (0R goes without one: it is restored elsewhere.)
                if mechanism == Some(crate::plan::Mechanism::NoReplica) {
                    tracing::debug!(chain, vnf, "no {what} of checkpoint {id}: {e}");
                } else {
                    tracing::warn!(chain, vnf, "no {what} of checkpoint {id}: {e}");
                }
                return;
            }
        };
        // (A copy given up goes off the registry: its host is asked to stop
        // it, which may wait.)
        let give_up = |copy: remote::RemoteVnf| {
            std::thread::spawn(move || drop(copy));
        };
        // The hop's standby port changes under the VNF's standby turn,
        // which its failure takes before it takes the copy: the port a
        // failover switches to is always the copy it took. The SFF opens
        // the port first (tens of ms), outside the turn: under it, the
        // attach only swaps it in, and a failure meanwhile waits for no
        // more (nor does the attach hold the registry).
        let ahead = {
            let (sff, port) = (sff.clone(), port.clone());
            tokio::task::spawn_blocking(move || sff.prepare_standby(hop, port)).await
        };
        if let Ok(Err(e)) = ahead {
            tracing::debug!(chain, vnf, "the standby port not opened ahead: {e}");
        }
        let turn = {
            let mut chains = self.chains.lock().await;
            let Some(v) = vnf_in(&mut chains, chain, vnf) else {
                return give_up(copy);
            };
            v.standby_turn.clone()
        };
        let _turn = turn.lock().await;
        let current = |v: &crate::chain::VnfRuntime| {
            v.recovery.incarnation() == incarnation && v.phase() == Phase::Running
        };
        {
            let mut chains = self.chains.lock().await;
            // A failure meanwhile: this copy is of the incarnation lost.
            if !vnf_in(&mut chains, chain, vnf).is_some_and(|v| current(v)) {
                return give_up(copy);
            }
        }
        let attached = tokio::task::spawn_blocking(move || sff.attach_standby(hop, port)).await;
        if let Err(e) = attached
            .map_err(ControlError::from)
            .and_then(|r| r.map_err(ControlError::from))
        {
            tracing::warn!(chain, vnf, "attaching the replica or standby: {e}");
            // The SFF let go of the standby port before it failed: the
            // copy behind it is of no use any more either.
            let mut chains = self.chains.lock().await;
            if let Some(v) = vnf_in(&mut chains, chain, vnf) {
                let lost = v.remote_replica.take();
                std::thread::spawn(move || drop(lost));
            }
            return give_up(copy);
        }
        let mut chains = self.chains.lock().await;
        let Some(v) = vnf_in(&mut chains, chain, vnf).filter(|v| current(v)) else {
            return give_up(copy);
        };
        // Its host judged down meanwhile (its failure found no copy to
        // drop yet): of no use.
        if copy.cluster().underlay_of(&copy.host).is_err() {
            return give_up(copy);
        }
        // The SFF let go of the standby port before: the copy (or the
        // incarnation) behind it goes.
        let before = (
            v.remote_replica.replace((copy, id)),
            v.remote_previous.take(),
        );
        std::thread::spawn(move || drop(before));
    }

    /// 1R-AS on another host: stages checkpoint `id` on the standby that
    /// incarnation `incarnation` of `vnf` has on a live host (the standby
    /// keeps the checkpoint before until this one is staged). Returns
    /// whether it did; if not (no standby, its host not live, staging
    /// failed), the caller makes a new one.
    async fn stage_on_standby(
        &self,
        chain: &str,
        vnf: &str,
        incarnation: u64,
        id: nham_dataplane::hold::CheckpointId,
    ) -> bool {
        // The standby stays in the registry while its image goes (a
        // failure meanwhile activates it with the checkpoint before).
        let target = {
            let mut chains = self.chains.lock().await;
            let Some(v) = vnf_in(&mut chains, chain, vnf) else {
                return true;
            };
            let Some((sb, _)) = v.remote_replica.as_ref() else {
                return false;
            };
            if sb.cluster().underlay_of(&sb.host).is_err() {
                return false;
            }
            (
                sb.cluster().clone(),
                sb.host.clone(),
                sb.key.clone(),
                sb.ifindex,
            )
        };
        let (cluster, host, key, ifindex) = target;
        let store = self.state.store.clone();
        let (chain_name, vnf_name, staged_key) = (chain.to_string(), vnf.to_string(), key.clone());
        let staged = tokio::task::spawn_blocking(move || {
            let image = stored_image(&store, &chain_name, &vnf_name, id)?;
            remote::stage(&cluster, &host, &staged_key, ifindex, image)
        })
        .await
        .map_err(ControlError::from)
        .and_then(|r| r);
        let mut chains = self.chains.lock().await;
        let Some(v) = vnf_in(&mut chains, chain, vnf) else {
            return true;
        };
        // Only the standby staged on, of the incarnation that committed
        // `id`, is updated or given up (another refresh, or a failure,
        // may have replaced it meanwhile).
        let same = v.recovery.incarnation() == incarnation
            && v.remote_replica
                .as_ref()
                .is_some_and(|(sb, _)| sb.key == key);
        match staged {
            Ok(()) if same => {
                if let Some((_, staged_id)) = v.remote_replica.as_mut() {
                    *staged_id = id;
                }
                true
            }
            Ok(()) => true,
            Err(e) if same => {
                tracing::warn!(
                    chain,
                    vnf,
                    "staging checkpoint {id} on the 1R-AS standby: {e}"
                );
                // (Made anew by the caller, on a live host.)
                let lost = v.remote_replica.take();
                std::thread::spawn(move || drop(lost));
                false
            }
            Err(e) => {
                tracing::debug!(
                    chain,
                    vnf,
                    "staging checkpoint {id} on a replaced standby: {e}"
                );
                true
            }
        }
    }

    /// Host `host` is heard (again: a partition healed, or it restarted):
    /// the incarnations it still runs that were replaced meanwhile are
    /// stopped there (until now, what they sent was fenced), and VNFs whose
    /// placement failed for want of a live host are placed again.
    pub(super) async fn on_host_back(self: &Arc<Self>, host: &str) {
        let mut waiting = Vec::new();
        let chains = self.chains.lock().await;
        for (name, e) in chains.iter() {
            for v in &e.runtime.vnfs {
                if let Some(old) = v.remote_previous.as_ref().filter(|r| r.host == host) {
                    tracing::info!(key = %old.key, host, "stopping a replaced incarnation");
                    old.stop_hosted();
                }
                if v.remote.is_some() && v.phase() == Phase::Failed {
                    waiting.push((
                        name.clone(),
                        v.plan.name.clone(),
                        0,
                        v.recovery.incarnation(),
                    ));
                }
                // (MR-AA: its members 1 to M-1 likewise.)
                for (i, m) in v.remote_members.iter().enumerate() {
                    if let Some(old) = m.previous.as_ref().filter(|r| r.host == host) {
                        tracing::info!(key = %old.key, host, "stopping a replaced member");
                        old.stop_hosted();
                    }
                    if m.recovery.phase() == Phase::Failed {
                        let inc = m.recovery.incarnation();
                        waiting.push((name.clone(), v.plan.name.clone(), i + 1, inc));
                    }
                }
            }
        }
        drop(chains);
        for (chain, vnf, k, incarnation) in waiting {
            let d = self.clone();
            tokio::spawn(async move {
                let why = RemoteFailure::Retry;
                match k {
                    0 => d.on_remote_failure(&chain, &vnf, incarnation, why).await,
                    k => {
                        d.on_remote_member_failure(&chain, &vnf, k, incarnation, why)
                            .await
                    }
                }
            });
        }
    }

    /// Incarnation `incarnation` of VNF `vnf` of `chain` (on another host)
    /// failed: announce it, and place it again.
    pub(super) async fn on_remote_failure(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        incarnation: u64,
        why: RemoteFailure,
    ) {
        let noticed = Instant::now();
        let mut chains = self.chains.lock().await;
        let Some(v) = vnf_in(&mut chains, chain, vnf) else {
            return;
        };
        // MR-AA: its own incarnation is member 0, restored as any member.
        if !v.remote_members.is_empty() {
            drop(chains);
            return self
                .on_remote_member_failure(chain, vnf, 0, incarnation, why)
                .await;
        }
        // The failure is announced at once; its recovery waits for the
        // standby turn (a new replica or standby being attached keeps it
        // for tens of ms), and the hop's standby port stays as it is until
        // the recovery is done (see `refresh_remote_replica`).
        let retry = matches!(why, RemoteFailure::Retry);
        if !retry {
            if v.failure_announced == Some(incarnation) {
                return; // reported twice (its watch, its host): one recovers
            }
            let current = v.recovery.incarnation() == incarnation && v.phase() == Phase::Running;
            let Some(host) = v
                .remote
                .as_ref()
                .map(|r| r.host.clone())
                .filter(|_| current)
            else {
                return; // an old incarnation, already replaced
            };
            v.failure_announced = Some(incarnation);
            let (cause, failed_at) = cause_of(&why);
            self.emit(failure_detected(
                chain,
                vnf,
                format!("{cause} (on host {host})"),
                None,
                failed_at,
                noticed,
            ));
        }
        let turn = v.standby_turn.clone();
        drop(chains);
        let _turn = turn.lock_owned().await;
        tracing::debug!(chain, vnf, waited = ?noticed.elapsed(), "its standby turn");
        let mut chains = self.chains.lock().await;
        let Some(v) = vnf_in(&mut chains, chain, vnf) else {
            return;
        };
        let Some(r) = v.remote.as_ref() else { return };
        let (cluster, old_host) = (r.cluster().clone(), r.host.clone());
        let Some((_, failed_at)) = recovering(&mut v.recovery, incarnation, &why) else {
            return; // an old incarnation, already replaced
        };
        // 1R-AA: its replica takes over, if it has one ready.
        let replica = v.remote_replica.take();
        let replica_key = replica.as_ref().map(|(r, _)| r.key.clone());
        let hop = chains
            .get(chain)
            .and_then(|e| e.runtime.vnf_index(vnf).ok());
        let (Some(hop), Some(e)) = (hop, chains.get(chain)) else {
            return;
        };
        let (plan, sff) = (e.runtime.vnfs[hop].plan.clone(), e.runtime.sff.clone());
        // A protected one (0R) comes back from its committed checkpoint,
        // its eth0 under the index it had.
        let protected = e.runtime.vnfs[hop].agent.is_some();
        let target = e.runtime.vnfs[hop].remote_target.clone();
        let ifindex = e.runtime.vnfs[hop].remote.as_ref().map_or(0, |r| r.ifindex);
        let store = self.state.store.clone();
        // How many of the chain's VNFs each host runs.
        let mut load = BTreeMap::<String, usize>::new();
        for r in e.runtime.vnfs.iter().filter_map(|v| v.remote.as_ref()) {
            *load.entry(r.host.clone()).or_default() += 1;
        }
        drop(chains);
        self.emit(event(chain, vnf, Event::RecoveryStarted));
        let host_alive =
            matches!(why, RemoteFailure::Exited { .. }) && cluster.underlay_of(&old_host).is_ok();
        let picked = pick_host(&cluster, &old_host, host_alive, &load);
        // Tried on a host, and failed there: tried again later (a host
        // that is up again asks at once).
        let again_later = picked.is_some();
        let placed = match (sff, picked) {
            (None, _) => Err(ControlError::FailedPrecondition(
                "the chain's SFF is gone".into(),
            )),
            (Some(sff), None) => {
                // Nothing goes to the lost incarnation meanwhile: the hop
                // stops (what arrives for it waits in its buffer, then
                // backs up into the kernel's ingress ring, counted) until
                // a host is up.
                let stopped = tokio::task::spawn_blocking(move || sff.failure(hop)).await;
                if let Ok(Err(e)) = stopped {
                    tracing::warn!(chain, vnf, "stopping the hop: {e}");
                }
                Err(ControlError::FailedPrecondition(format!(
                    "no live host to run it on ({old_host} failed; the chain's own host keeps only \
                     the SFF): placed once one is up"
                )))
            }
            (Some(sff), Some(host)) => {
                let chain_name = chain.to_string();
                tokio::task::spawn_blocking(move || {
                    if let Some((copy, id)) = replica {
                        let done = if plan.mechanism == Some(crate::plan::Mechanism::NoReplica) {
                            let standby = Standby {
                                cluster: &cluster,
                                sff: &sff,
                                hop,
                                store: &store,
                                chain: &chain_name,
                                vnf: &plan.name,
                            };
                            standby.restore(copy, id, target.as_deref())
                        } else {
                            fail_over_to(&cluster, &sff, hop, copy, id, target.as_deref())
                        };
                        match done {
                            Ok(done) => return Ok(done),
                            Err(e) => tracing::warn!(
                                chain = chain_name,
                                vnf = plan.name,
                                "the replica did not take over ({e}): restoring it elsewhere"
                            ),
                        }
                    }
                    if protected {
                        return restore_elsewhere(
                            &cluster,
                            &host,
                            &chain_name,
                            &plan,
                            hop,
                            ifindex,
                            &sff,
                            &store,
                            target.as_deref(),
                        );
                    }
                    let (remote, port) =
                        remote::place(&cluster, &host, &chain_name, &plan, &remote::Start::Fresh)?;
                    let iface = port.iface.clone();
                    sff.attach_standby(hop, port)?;
                    // An unprotected hop's restore point is "whatever was
                    // delivered" (checkpoint 0, once anything was
                    // released; none before): the new incarnation starts
                    // afresh and nothing is replayed.
                    use nham_sff::remote::FailOverOutcome::{NotSwitched, Switched};
                    let switched = match sff.fail_over(hop, Some(0))? {
                        Switched(r) => r,
                        NotSwitched { plan, .. } if plan.checkpoint.is_none() => {
                            match sff.fail_over(hop, None)? {
                                Switched(r) => r,
                                NotSwitched { why, .. } => return Err(not_switched(why)),
                            }
                        }
                        NotSwitched { why, .. } => return Err(not_switched(why)),
                    };
                    Ok::<_, ControlError>((remote, iface, switched, None))
                })
                .await
                .map_err(ControlError::from)
                .and_then(|r| r)
            }
        };
        let mut chains = self.chains.lock().await;
        let Some(v) = vnf_in(&mut chains, chain, vnf) else {
            // The chain went meanwhile: what was placed goes, off the
            // registry.
            std::thread::spawn(move || drop(placed));
            return;
        };
        let counters = v.recovery.counters().clone();
        match placed {
            Ok((remote, iface, switched, checkpoint)) => {
                let switched_to_replica = replica_key.as_ref() == Some(&remote.key);
                // Detection to running again (as for a VNF here); its log
                // line says how long after it was last heard, too.
                let took = noticed.elapsed();
                let since_failed = failed_at.elapsed();
                let pid = remote.pid;
                let host = remote.host.clone();
                // Its agent checkpoints the new incarnation, through the
                // new tunnel (taken without the agent, which a checkpoint
                // of the lost one may hold until its calls time out).
                if let Some(t) = &v.remote_target {
                    t.set(&remote);
                }
                rewatch_link(v.agent.clone(), v.remote_target.clone());
                // The one before stops (best effort: its host may be gone or
                // cut off, then its frames are fenced); its tunnel end stays
                // until the SFF lets go of it, as the standby port, at the
                // next placement.
                if let Some(old) = v.remote.replace(remote) {
                    old.stop_hosted();
                    if let Some(older) = v.remote_previous.replace(old) {
                        std::thread::spawn(move || drop(older));
                    }
                }
                v.sff_iface = iface;
                v.recovery = FailureRecovery::found(
                    Phase::Running,
                    incarnation + 1,
                    Counters {
                        recoveries: counters.recoveries + 1,
                        last_error: None,
                        ..counters
                    },
                );
                let stats = RecoveryStats {
                    duration: took,
                    resumed_at: Some(Instant::now()),
                    replay: switched.replay,
                    restored: checkpoint.is_some(),
                    pid,
                    checkpoint,
                    fallback_reason: None,
                    switched: true,
                };
                use crate::plan::Mechanism::{ActiveStandby, NoReplica};
                let what = match (switched_to_replica, v.plan.mechanism) {
                    (true, Some(NoReplica)) => "restored on its standby place",
                    (true, Some(ActiveStandby)) => "its standby took over",
                    (true, _) => "failed over to its replica",
                    (false, _) => "VNF placed again",
                };
                tracing::info!(chain, vnf, host, ?took, ?since_failed, "{what}");
                if let Some(e) = chains.get(chain) {
                    let _ = self.records.put(&e.runtime, false);
                }
                drop(chains);
                self.emit(recovery_finished(chain, vnf, stats, took));
                self.watch_remote(chain.to_string(), vnf.to_string(), incarnation + 1);
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(chain, vnf, "placing it again: {reason}");
                let backoff = recovery_failed(&mut v.recovery, incarnation, &reason);
                drop(chains);
                self.emit(event(chain, vnf, Event::RecoveryFailed { reason }));
                if again_later {
                    self.retry_later(chain, vnf, incarnation, backoff);
                }
            }
        }
    }

    /// Places incarnation `incarnation` of `vnf` of `chain` again after
    /// `delay`, if it is still failed then.
    fn retry_later(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        incarnation: u64,
        delay: std::time::Duration,
    ) {
        let (d, chain, vnf) = (self.clone(), chain.to_string(), vnf.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            d.on_remote_failure(&chain, &vnf, incarnation, RemoteFailure::Retry)
                .await;
        });
    }
}

/// Has `agent` watch the link of `target`'s current incarnation (taken
/// without the registry, and without waiting here for the agent, which a
/// checkpoint of a lost incarnation may hold until its calls time out).
/// The link is read once the agent is held: of two placements in a row,
/// the last one's is watched, whichever task runs last.
pub(super) fn rewatch_link(agent: Option<Agent>, target: Option<Arc<remote::RemoteTarget>>) {
    let (Some(agent), Some(target)) = (agent, target) else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        let mut a = agent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let iface = target.device();
        if let Err(e) = a.watch_link(&iface) {
            tracing::warn!("watching {iface}: {e}");
        }
    });
}

/// How long a VNF whose placement failed on a live host waits before it
/// is tried again, after `failures` such failures: 250 ms, doubling, at
/// most 30 s (a host that keeps refusing is not hammered; one that failed
/// once is not waited on long).
pub(super) fn retry_backoff(failures: u64) -> std::time::Duration {
    let ms = 250u64.saturating_mul(1 << failures.min(7));
    std::time::Duration::from_millis(ms.min(30_000))
}

/// Where a failed VNF of host `failed` goes: back there if it is alive
/// (`failed_alive`: only its process died), else the live member that runs
/// the fewest of the chain's VNFs (`load`), the first after `failed` in
/// name order among equals (so VNFs of a lost host spread over the others).
fn pick_host(
    cluster: &Cluster,
    failed: &str,
    failed_alive: bool,
    load: &BTreeMap<String, usize>,
) -> Option<String> {
    if failed_alive {
        return Some(failed.to_string());
    }
    let live = remote::live_hosts(cluster, &[failed]);
    // The first of the least loaded (a stable minimum keeps that order).
    live.into_iter()
        .enumerate()
        .min_by_key(|(i, n)| (load.get(n).copied().unwrap_or(0), *i))
        .map(|(_, n)| n)
}

/// What a placement brought: the new incarnation, the SFF's end of its
/// tunnel, the SFF's replay, the checkpoint restored.
type Placed = (
    remote::RemoteVnf,
    String,
    nham_dataplane::hold::RecoveryReport,
    Option<nham_dataplane::hold::CheckpointId>,
);

/// 1R-AA (and 1R-AS) on another host: the SFF fails the hop over to the
/// replica (a copy restored, stopped, from checkpoint `id`, behind the
/// standby port; a standby is restored now) and replays in one exchange;
/// then the copy runs.
fn fail_over_to(
    cluster: &Arc<Cluster>,
    sff: &nham_sff::remote::SffClient,
    hop: usize,
    mut copy: remote::RemoteVnf,
    id: nham_dataplane::hold::CheckpointId,
    target: Option<&remote::RemoteTarget>,
) -> Result<Placed, ControlError> {
    use nham_sff::remote::FailOverOutcome::{NotSwitched, Switched};
    // (Its host down too: restored elsewhere at once.)
    cluster.underlay_of(&copy.host)?;
    // 1R-AS: the standby is restored from its staged checkpoint first
    // (stopped, behind the standby port already).
    if copy.pid == 0 {
        copy.activate(id)?;
    }
    // The agent checkpoints the copy from the moment the SFF may take it
    // for the hop's (the hop recovers meanwhile: no checkpoint begins).
    if let Some(t) = target {
        t.set(&copy);
    }
    match sff.fail_over(hop, Some(id))? {
        Switched(r) => {
            resume(cluster, &copy);
            let iface = copy.device.clone();
            Ok((copy, iface, r, Some(id)))
        }
        NotSwitched { why, .. } => Err(not_switched(why)),
    }
}

/// 0R on another host: the standby place its VNF has on a live host
/// (namespace, tunnel, SFF standby port, a CRIU worker waiting; the
/// checkpoint staged when it was made).
struct Standby<'a> {
    cluster: &'a Arc<Cluster>,
    sff: &'a nham_sff::remote::SffClient,
    hop: usize,
    store: &'a crate::vsm::database::Store,
    chain: &'a str,
    vnf: &'a str,
}

impl Standby<'_> {
    /// The SFF stops the hop and names its restore point; that checkpoint
    /// is staged on `copy` (unless it is `staged` already), restored there
    /// (stopped), the SFF fails the hop over to it and replays; then it
    /// runs. No checkpoint to restore: an error (placed afresh elsewhere).
    fn restore(
        &self,
        mut copy: remote::RemoteVnf,
        staged: nham_dataplane::hold::CheckpointId,
        target: Option<&remote::RemoteTarget>,
    ) -> Result<Placed, ControlError> {
        use nham_sff::remote::FailOverOutcome::{NotSwitched, Switched};
        let t0 = Instant::now();
        // (Its host down too: restored elsewhere at once.)
        self.cluster.underlay_of(&copy.host)?;
        let id = (self.sff.failure(self.hop)?.checkpoint)
            .filter(|&id| id != 0)
            .ok_or_else(|| {
                ControlError::FailedPrecondition("no checkpoint to restore on its standby".into())
            })?;
        if id != staged {
            let image = stored_image(self.store, self.chain, self.vnf, id)?;
            remote::stage(self.cluster, &copy.host, &copy.key, copy.ifindex, image)?;
        }
        let ready = t0.elapsed();
        copy.activate(id)?;
        let activated = t0.elapsed();
        if let Some(t) = target {
            t.set(&copy);
        }
        let switched = match self.sff.fail_over(self.hop, Some(id))? {
            Switched(r) => r,
            NotSwitched { why, .. } => return Err(not_switched(why)),
        };
        resume(self.cluster, &copy);
        tracing::debug!(
            chain = self.chain,
            vnf = self.vnf,
            ?ready,
            ?activated,
            resumed = ?t0.elapsed(),
            "restored on its standby place on {} (times from the hop's failure)",
            copy.host
        );
        let iface = copy.device.clone();
        Ok((copy, iface, switched, Some(id)))
    }
}

/// A protected (0R) VNF placed again on host `host`: the SFF stops the
/// hop and names its restore point; that checkpoint goes from this host's
/// store to `host`, checked there and restored (stopped) in a new place
/// behind a new tunnel (its eth0 under `ifindex`); the SFF switches the hop
/// to it and replays everything after the checkpoint; then it runs. No
/// checkpoint yet: started afresh, and everything held replays.
#[allow(clippy::too_many_arguments)]
fn restore_elsewhere(
    cluster: &Arc<Cluster>,
    host: &str,
    chain: &str,
    plan: &crate::plan::VnfPlan,
    hop: usize,
    ifindex: u32,
    sff: &nham_sff::remote::SffClient,
    store: &crate::vsm::database::Store,
    target: Option<&remote::RemoteTarget>,
) -> Result<Placed, ControlError> {
    use nham_sff::remote::FailOverOutcome::{NotSwitched, Switched};
    let t0 = Instant::now();
    // Delivery to the lost incarnation stops now.
    let restore_point = sff.failure(hop)?.checkpoint;
    let start = match restore_point {
        Some(id) => remote::Start::Restore {
            ifindex,
            image: stored_image(store, chain, &plan.name, id)?,
        },
        None => remote::Start::Fresh,
    };
    let read = t0.elapsed();
    let (remote, port) = remote::place(cluster, host, chain, plan, &start)?;
    let placed = t0.elapsed();
    let iface = port.iface.clone();
    sff.attach_standby(hop, port)?;
    let attached = t0.elapsed();
    if let Some(t) = target {
        t.set(&remote);
    }
    let switched = match sff.fail_over(hop, restore_point)? {
        Switched(r) => r,
        NotSwitched { why, .. } => return Err(not_switched(why)),
    };
    let failed_over = t0.elapsed();
    if restore_point.is_some() {
        cluster.signal_vnf(&remote.host, &remote.key, nix::sys::signal::Signal::SIGCONT)?;
    }
    tracing::debug!(
        chain,
        vnf = plan.name,
        ?read,
        ?placed,
        ?attached,
        ?failed_over,
        resumed = ?t0.elapsed(),
        "restored on {host} (times from the hop's failure)"
    );
    Ok((remote, iface, switched, restore_point))
}

/// Resumes `copy` (restored stopped) once the SFF has switched to it: the
/// SFF has it, so it is kept even if its host cannot be asked (three
/// tries); a host gone is judged down and its watch fails it then.
pub(super) fn resume(cluster: &Cluster, copy: &remote::RemoteVnf) {
    let mut tries = 0;
    loop {
        tries += 1;
        match cluster.signal_vnf(&copy.host, &copy.key, nix::sys::signal::Signal::SIGCONT) {
            Ok(()) => return,
            Err(e) if tries >= 3 => {
                tracing::warn!(key = %copy.key, "resuming it: {e}");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Checkpoint `id` of `chain`/`vnf` from this host's store, as it goes to
/// another host (checked there).
pub(super) fn stored_image(
    store: &crate::vsm::database::Store,
    chain: &str,
    vnf: &str,
    id: nham_dataplane::hold::CheckpointId,
) -> Result<crate::cluster::hosting::Image, ControlError> {
    let meta =
        store
            .get(chain, vnf, id)?
            .ok_or_else(|| crate::vsm::database::StoreError::Missing {
                chain: chain.to_string(),
                vnf: vnf.to_string(),
                id,
            })?;
    let file = store.read_file(&meta)?;
    Ok(crate::cluster::hosting::Image { meta, file })
}

fn not_switched(why: String) -> ControlError {
    ControlError::FailedPrecondition(format!(
        "the SFF did not switch to the new incarnation: {why}"
    ))
}

#[cfg(test)]
mod tests {
    use super::retry_backoff;
    use std::time::Duration;

    #[test]
    fn placement_retries_back_off_to_thirty_seconds() {
        assert_eq!(retry_backoff(0), Duration::from_millis(250));
        assert_eq!(retry_backoff(1), Duration::from_millis(500));
        assert_eq!(retry_backoff(6), Duration::from_millis(16_000));
        assert_eq!(retry_backoff(7), Duration::from_secs(30));
        assert_eq!(retry_backoff(u64::MAX), Duration::from_secs(30));
    }
}
