//! Restart safety (driver): a starting daemon takes back the chains its
//! state database records (re-attach, adopt, recover); a stopping one
//! leaves them running or deletes them.

#[allow(unused_imports)]
use super::*;

impl Daemon {
    /// Takes back the chains recorded in the state database (a restarted
    /// daemon): attaches to what still runs ([`ChainRuntime::reattach`]) and
    /// recovers, by their mechanisms, the VNFs that died meanwhile. A chain
    /// whose SFF (or a namespace) is gone is started afresh from its spec,
    /// and says so: the packets its SFF held went with it. Namespaces of
    /// this state database that no chain claims are deleted.
    pub async fn restore_chains(self: &Arc<Self>) -> Result<RestoreReport, ControlError> {
        let store = self.state.store.clone();
        let (specs, records) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::vsm::database::StoreError>((store.chains()?, store.runtimes()?))
        })
        .await
        .map_err(|_| ControlError::Panicked("reading the state database"))?
        .map_err(ControlError::from)?;
        let records: BTreeMap<String, ChainRecord> = records
            .into_iter()
            .filter_map(|(n, b)| Some((n, serde_json::from_slice(&b).ok()?)))
            .collect();
        if let Some(max) = records.values().map(|r| r.id).max() {
            self.next_id
                .fetch_max(max + 1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut report = RestoreReport::default();
        let mut keep = std::collections::BTreeSet::new();
        let named: std::collections::BTreeSet<String> =
            specs.iter().map(|(n, _)| n.clone()).collect();
        for (name, rec) in &records {
            if !named.contains(name) {
                let rec = rec.clone();
                let _ = tokio::task::spawn_blocking(move || tear_down_record(&rec)).await;
            }
        }
        for (name, bytes) in specs {
            let plan: ChainPlan = match serde_json::from_slice(&bytes) {
                Ok(plan) => plan,
                Err(e) => {
                    tracing::error!(
                        chain = name,
                        "its recorded plan is unreadable ({e}); skipped"
                    );
                    continue;
                }
            };
            let record = records.get(&name).cloned();
            let attached = match record.clone() {
                Some(rec) => {
                    let (plan, state) = (plan.clone(), self.state.clone());
                    tokio::task::spawn_blocking(move || ChainRuntime::reattach(&rec, plan, &state))
                        .await
                        .map_err(|_| ControlError::Panicked("re-attaching"))
                        .and_then(|r| r)
                }
                None => Err(ControlError::FailedPrecondition(
                    "nothing was recorded as running for it".into(),
                )),
            };
            let (runtime, pidfds) = match attached {
                Ok(r) => {
                    report.attached += 1;
                    r
                }
                Err(e) => {
                    tracing::warn!(
                        chain = name,
                        "cannot re-attach ({e}): starting it afresh from its spec; \
                         packets its SFF held are lost"
                    );
                    let (sff, state) = (self.sff.clone(), self.state.clone());
                    let id = self
                        .next_id
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let started = tokio::task::spawn_blocking(move || {
                        if let Some(rec) = &record {
                            tear_down_record(rec);
                        }
                        let _ = state.store.remove_checkpoints(&plan.name);
                        ChainRuntime::start(id, plan, &sff, &state)
                    })
                    .await
                    .map_err(|_| ControlError::Panicked("chain start"))
                    .and_then(|r| r);
                    match started {
                        Ok((rt, fds)) => {
                            report.restarted += 1;
                            (rt, fds)
                        }
                        Err(e) => {
                            tracing::error!(chain = name, "starting it afresh failed: {e}");
                            report.failed += 1;
                            continue;
                        }
                    }
                }
            };
            keep.extend(
                runtime
                    .vnfs
                    .iter()
                    .filter_map(|v| Some(v.netns.as_ref()?.name().to_string())),
            );
            keep.extend(
                runtime
                    .vnfs
                    .iter()
                    .filter_map(|v| Some(v.replica.as_ref()?.netns.name().to_string())),
            );
            keep.extend(
                runtime
                    .vnfs
                    .iter()
                    .flat_map(|v| v.members.iter().map(|m| m.netns.name().to_string())),
            );
            let mut runtime = runtime;
            self.watch_members(&mut runtime);
            let lost_members: Vec<(String, usize)> = std::mem::take(&mut runtime.lost_members)
                .into_iter()
                .filter_map(|(hop, k)| Some((runtime.vnfs.get(hop)?.plan.name.clone(), k)))
                .collect();
            let mut lost = Vec::new();
            for (v, fd) in runtime.vnfs.iter().zip(pidfds) {
                match fd {
                    Some(fd) => self.watch(
                        name.clone(),
                        v.plan.name.clone(),
                        v.recovery.incarnation(),
                        fd,
                    ),
                    None if v.remote.is_some() => self.watch_remote(
                        name.clone(),
                        v.plan.name.clone(),
                        v.recovery.incarnation(),
                    ),
                    None => lost.push(v.plan.name.clone()),
                }
            }
            self.watch_remote_members(&runtime);
            self.schedule_all(&runtime);
            self.watch_data_path(name.clone());
            let _ = self.records.put(&runtime, false).recv();
            self.chains.lock().await.insert(
                name.clone(),
                Entry {
                    runtime,
                    input_dropped: 0,
                },
            );
            // VNFs and MR-AA members that died unseen: failed when this
            // daemon looked.
            for vnf in lost {
                report.recovering += 1;
                let (d, chain) = (self.clone(), name.clone());
                tokio::spawn(async move { d.on_lost(&chain, &vnf, 0).await });
            }
            for (vnf, k) in lost_members {
                report.recovering += 1;
                let (d, chain) = (self.clone(), name.clone());
                tokio::spawn(async move { d.on_lost(&chain, &vnf, k).await });
            }
        }
        // Not what this daemon hosts for other hosts: its peer service is
        // up already, and a VNF placed here meanwhile must not be swept.
        let (prefix, hosted) = (self.state.netns_prefix(), self.state.hosted_netns_prefix());
        report.swept = tokio::task::spawn_blocking(move || {
            nham_netns::sweep_prefix(&prefix, |name| {
                keep.contains(name) || name.starts_with(&hosted)
            })
        })
        .await
        .unwrap_or(0);
        Ok(report)
    }

    /// Leaves every chain running (SFF, VNFs, namespaces), recorded in the
    /// state database for the next daemon, and empties the registry.
    pub async fn detach_all(&self) {
        let entries = std::mem::take(&mut *self.chains.lock().await);
        for (_, mut e) in entries {
            e.runtime.detach();
            let done = self.records.put(&e.runtime, false);
            let _ = tokio::task::spawn_blocking(move || {
                let _ = done.recv();
                drop(e);
            })
            .await;
        }
    }

    /// Waits, at most `limit`, until no chain is being started (one whose
    /// start is under way has processes but no record yet: stopping now
    /// would leave them to no one); returns those still starting.
    pub async fn settle_starts(&self, limit: std::time::Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let starting: Vec<String> = self
                .starting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keys()
                .cloned()
                .collect();
            if starting.is_empty() || std::time::Instant::now() >= deadline {
                return starting;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Deletes every chain (as `DeleteChain` does).
    pub async fn delete_all(&self) {
        let names: Vec<String> = self.chains.lock().await.keys().cloned().collect();
        for n in names {
            if let Err(e) = self.delete(&n).await {
                tracing::warn!(chain = n, "deleting: {e}");
            }
        }
    }
}
