//! The daemon's part in a cluster of hosts (`crate::cluster`): the hosts
//! it knows of, for `ListHosts`, and their changes on the event stream. A
//! daemon outside a cluster is a cluster of one: itself.

use std::sync::Arc;
use std::time::Duration;

use super::events::{Event, VnfEvent};
use super::Daemon;
use crate::cluster::membership::{HostEvent, HostRecord, Liveness};
use crate::cluster::{Cluster, HostView, HostsView};
use crate::error::ControlError;

/// How often a daemon's chains are published to etcd (when they changed).
const CHAINS_PUBLISHED_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl Daemon {
    /// Takes part in `cluster` from now on: its host events go out on the
    /// event stream (chain and VNF empty).
    pub fn join_cluster(self: &Arc<Self>, cluster: Arc<Cluster>) {
        let mut events = cluster.subscribe();
        if self.cluster.set(cluster).is_err() {
            tracing::warn!("this daemon is in a cluster already");
            return;
        }
        // Its chains in etcd, as they are now (see `cluster::chains`).
        let publisher = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHAINS_PUBLISHED_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(d) = publisher.upgrade() else { return };
                let views = d.chain_views().await;
                if let Some(c) = d.cluster.get() {
                    c.publish_chains(views);
                }
            }
        });
        let daemon = Arc::downgrade(self);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let e = match events.recv().await {
                    Ok(e) => e,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!("{n} host events missed (too many at once)");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let Some(daemon) = daemon.upgrade() else {
                    return;
                };
                if let HostEvent::Down {
                    host, detection, ..
                } = &e.event
                {
                    let last_heard = e
                        .time_unix_nanos
                        .saturating_sub(detection.as_nanos() as u64);
                    daemon.on_host_down(host, last_heard).await;
                }
                if let HostEvent::Back { host } | HostEvent::Up { host } = &e.event {
                    daemon.on_host_back(host).await;
                }
                daemon.emit(VnfEvent {
                    id: 0,
                    time_unix_nanos: e.time_unix_nanos,
                    chain: String::new(),
                    vnf: String::new(),
                    event: host_changed(e.event),
                });
            }
        });
    }

    /// This daemon's chains as etcd is to show them (see
    /// [`crate::cluster::chains`]).
    async fn chain_views(
        &self,
    ) -> std::collections::BTreeMap<String, crate::cluster::chains::ChainView> {
        use crate::cluster::chains::{ChainView, VnfView};
        let Some(c) = self.cluster.get() else {
            return Default::default();
        };
        let (owner, api) = (c.name().to_string(), c.record().api.clone());
        let chains = self.chains.lock().await;
        chains
            .iter()
            .map(|(name, e)| {
                let vnfs = (e.runtime.vnfs.iter())
                    .map(|v| {
                        let status = v.status();
                        let committed = v.last_committed;
                        let copy = c
                            .copy_of(name, &v.plan.name)
                            .filter(|(id, _)| Some(*id) == committed);
                        VnfView {
                            name: v.plan.name.clone(),
                            mechanism: v.plan.mechanism.map_or("none", |m| m.name()).to_string(),
                            host: status.host.unwrap_or_else(|| owner.clone()),
                            replica_host: status.replica_host,
                            member_hosts: status.member_hosts,
                            committed,
                            kept_on: committed
                                .map(|_| std::iter::once(owner.clone()).chain(copy.map(|(_, h)| h)))
                                .into_iter()
                                .flatten()
                                .collect(),
                        }
                    })
                    .collect();
                let view = ChainView {
                    owner: owner.clone(),
                    api: api.clone(),
                    spi: e.runtime.plan.spi,
                    vnfs,
                };
                (name.clone(), view)
            })
            .collect()
    }

    /// `e` for a request about chain `chain`; where it is "no such chain"
    /// and another host owns a chain of that name (its record in etcd),
    /// the answer says which host and where its API is
    /// (`FAILED_PRECONDITION`: ask the owner).
    pub async fn or_owner(&self, chain: &str, e: ControlError) -> ControlError {
        let ControlError::NotFound(_) = &e else {
            return e;
        };
        let Some(c) = self.cluster.get() else {
            return e;
        };
        match c.chain_view(chain).await {
            Ok(Some(view)) if view.owner != c.name() => ControlError::OwnedElsewhere {
                chain: chain.to_string(),
                owner: view.owner,
                api: view.api,
            },
            Ok(_) => e,
            Err(why) => ControlError::NotFound(format!(
                "no chain {chain:?} here, and etcd could not say which host owns one: {why}"
            )),
        }
    }

    /// Leaves the cluster on purpose, if in one (see
    /// [`Cluster::leave`]), within `within`.
    pub async fn leave_cluster(&self, within: Duration) {
        if let Some(c) = self.cluster.get() {
            c.leave(within).await;
        }
    }

    /// Where this daemon's chains run: host name (this one's for the VNFs
    /// here) to `chain/vnf`s, and `chain/vnf (replica)`, `(standby)` or
    /// `(member k)` for the 1R-AA replicas, 1R-AS standbys and MR-AA
    /// members of VNFs on other hosts.
    pub async fn placement(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let here = self.hosts().hosts.first().map(|h| h.record.name.clone());
        let mut placed = std::collections::BTreeMap::<String, Vec<String>>::new();
        let chains = self.chains.lock().await;
        for (name, e) in chains.iter() {
            for v in &e.runtime.vnfs {
                let host = v.remote.as_ref().map(|r| r.host.clone()).or(here.clone());
                if let Some(host) = host {
                    placed
                        .entry(host)
                        .or_default()
                        .push(format!("{name}/{}", v.plan.name));
                }
                for (i, m) in v.remote_members.iter().enumerate() {
                    if let Some(r) = &m.remote {
                        placed.entry(r.host.clone()).or_default().push(format!(
                            "{name}/{} (member {})",
                            v.plan.name,
                            i + 1
                        ));
                    }
                }
                if let Some((r, _)) = &v.remote_replica {
                    let what = if r.pid == 0 { "standby" } else { "replica" };
                    placed
                        .entry(r.host.clone())
                        .or_default()
                        .push(format!("{name}/{} ({what})", v.plan.name));
                }
            }
        }
        placed
    }

    /// The hosts this daemon knows of, itself first.
    pub fn hosts(&self) -> HostsView {
        match self.cluster.get() {
            Some(c) => c.hosts(),
            None => HostsView {
                hosts: vec![HostView {
                    record: HostRecord {
                        name: std::fs::read_to_string("/proc/sys/kernel/hostname")
                            .map(|h| h.trim().to_string())
                            .unwrap_or_default(),
                        api: String::new(),
                        heartbeat: ([0, 0, 0, 0], 0).into(),
                        peer: None,
                        incarnation: 0,
                    },
                    liveness: Liveness::Alive,
                    last_heard_ago: Some(Duration::ZERO),
                    incarnation: 0,
                    this_host: true,
                }],
                etcd_error: None,
            },
        }
    }
}

fn host_changed(e: HostEvent) -> Event {
    let (host, liveness, left, detection) = match e {
        HostEvent::Up { host } | HostEvent::Back { host } => {
            (host, Liveness::Alive, false, Duration::ZERO)
        }
        HostEvent::Down {
            host, detection, ..
        } => (
            host,
            Liveness::Down {
                since: Duration::ZERO,
            },
            false,
            detection,
        ),
        HostEvent::Leaving { host } => (host, Liveness::Leaving, false, Duration::ZERO),
        HostEvent::Left { host } => (host, Liveness::Joining, true, Duration::ZERO),
    };
    Event::HostChanged {
        host,
        liveness,
        left,
        detection_ms: detection.as_secs_f64() * 1e3,
    }
}
