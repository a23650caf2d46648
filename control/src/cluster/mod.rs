//! Hosts: one `nhamd` per host, finding each other through etcd, watching
//! each other through heartbeats (issue 14's ground floor).
//!
//! - **Registration** (etcd, the authority on membership): each `nhamd`
//!   puts its [`HostRecord`](membership::HostRecord) under
//!   `/nham/v1/hosts/<name>`, bound to a lease it keeps alive; a host whose
//!   lease expires leaves the cluster. Each `nhamd` watches that prefix.
//! - **Heartbeats** (the fast path, host to host, no etcd in between):
//!   every interval (10 ms) a datagram ([`heartbeat`]) to every member, on
//!   the underlay; a member silent for `misses` intervals is judged down
//!   ([`membership`] decides; this module only does the I/O).
//!
//! Nothing on a host's data path waits on etcd: with etcd unreachable,
//! chains forward, checkpoint and recover as before, heartbeats go on
//! between the members already known, and this module retries etcd every
//! half second, saying why it cannot reach it (`nhamctl hosts`). Only what
//! changes membership waits.
//!
//! The driver: a thread of its own for heartbeats (sending on time must not
//! depend on the async runtime's load), a task for etcd, one lock around
//! the [`Membership`] machine (never held across I/O), and a broadcast of
//! [`HostEvent`]s.

pub mod chains;
pub mod heartbeat;
pub mod hosting;
pub mod membership;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;
use tokio::sync::broadcast;

use heartbeat::Heartbeat;
use membership::{HostEvent, HostRecord, Liveness, Member, Membership};

/// Where hosts register in etcd.
pub const HOSTS_PREFIX: &str = "/nham/v1/hosts/";

/// Errors of the cluster driver.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The heartbeat thread could not be started.
    #[error("starting the heartbeat thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The cluster configuration makes no sense.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// The heartbeat socket could not be opened.
    #[error("heartbeat socket on {addr}: {source}")]
    Socket {
        /// Its address.
        addr: SocketAddr,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
}

/// How this host takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// This host's name (1 to 63 bytes, unique in the cluster).
    pub host: String,
    /// Where this host's API listens, as other hosts reach it.
    pub api: String,
    /// Where this host hears heartbeats (its underlay address), and sends
    /// them from.
    pub heartbeat: SocketAddr,
    /// etcd's client endpoints (`http://host:2379`).
    pub etcd: Vec<String>,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Intervals of silence before a member is judged down.
    pub misses: u32,
    /// The registration lease's time to live.
    pub lease_ttl: Duration,
    /// Where this host's peer service listens (copies of other hosts'
    /// checkpoints), as the others reach it.
    pub peer: Option<SocketAddr>,
    /// The cluster's shared secret: every peer call carries it.
    pub token: Vec<u8>,
}

impl ClusterOptions {
    /// Checks the options, naming what is wrong.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |m: String| Err(ClusterError::Config(m));
        // It names directories of copies on other hosts.
        crate::plan::name("host", &self.host).map_err(|e| ClusterError::Config(e.to_string()))?;
        if !self.token.iter().all(u8::is_ascii_graphic) {
            return bad("the cluster token must be printable ASCII, no spaces".into());
        }
        if self.token.len() < 16 {
            return bad(format!(
                "the cluster token is {} bytes: at least 16 (peers prove with it who they are)",
                self.token.len()
            ));
        }
        if self.heartbeat.ip().is_unspecified()
            || self.peer.is_some_and(|p| p.ip().is_unspecified())
        {
            return bad(format!(
                "heartbeat {} and peer {:?} addresses: other hosts reach them, so not 0.0.0.0",
                self.heartbeat, self.peer
            ));
        }
        if self.etcd.is_empty() {
            return bad("no etcd endpoint".into());
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&self.heartbeat_interval)
        {
            return bad(format!(
                "heartbeat interval {:?}: 1 ms to 10 s",
                self.heartbeat_interval
            ));
        }
        if !(2..=1000).contains(&self.misses) {
            return bad(format!("heartbeat misses {}: 2 to 1000", self.misses));
        }
        if self.lease_ttl < Duration::from_secs(2) {
            return bad(format!(
                "lease TTL {:?}: at least 2 s (etcd's minimum is 1.5 election timeouts)",
                self.lease_ttl
            ));
        }
        Ok(())
    }
}

/// A host event, with the wall-clock time it was decided.
#[derive(Debug, Clone)]
pub struct ClusterEvent {
    /// What happened.
    pub event: HostEvent,
    /// When, in nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
}

/// A member as the API shows it.
#[derive(Debug, Clone)]
pub struct HostView {
    /// Its registration.
    pub record: HostRecord,
    /// Alive or not (this host: alive).
    pub liveness: Liveness,
    /// Since it was last heard (`Some(0)` for this host).
    pub last_heard_ago: Option<Duration>,
    /// Its incarnation.
    pub incarnation: u64,
    /// Whether it is the host that answers.
    pub this_host: bool,
}

/// What this host knows of the cluster.
#[derive(Debug, Clone)]
pub struct HostsView {
    /// This host first, then the members by name.
    pub hosts: Vec<HostView>,
    /// `None` if etcd is reachable now, else why not.
    pub etcd_error: Option<String>,
}

/// Counters of the heartbeat path.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Heartbeats sent.
    pub sent: AtomicU64,
    /// Heartbeats that could not be sent (the socket refused them).
    pub send_errors: AtomicU64,
    /// Heartbeats received from members.
    pub received: AtomicU64,
    /// Datagrams on the heartbeat port that were not heartbeats, or not
    /// from the address their host registered; dropped.
    pub malformed: AtomicU64,
}

/// This host's part in a cluster, running.
#[derive(Debug)]
pub struct Cluster {
    options: ClusterOptions,
    record: HostRecord,
    incarnation: u64,
    origin: Instant,
    membership: Mutex<Membership>,
    etcd_error: Mutex<Option<String>>,
    events: broadcast::Sender<ClusterEvent>,
    stop: AtomicBool,
    /// Set once the heartbeat thread has said goodbye.
    goodbye: tokio::sync::watch::Sender<bool>,
    /// Tells the etcd task to revoke the lease and end.
    revoke: AtomicBool,
    /// Wakes the etcd task when `revoke` is set.
    wake: tokio::sync::Notify,
    /// The lease of the last etcd session (0: none, or revoked): revoked
    /// at a clean stop that comes between sessions.
    last_lease: std::sync::atomic::AtomicI64,
    /// Which of the etcd endpoints the next session talks to.
    etcd_next: std::sync::atomic::AtomicUsize,
    /// Set once the etcd task has revoked the lease (or ended).
    left: tokio::sync::watch::Sender<bool>,
    /// Counters of the heartbeat path.
    pub counters: ClusterCounters,
    /// The runtime the peer clients run on.
    runtime: tokio::runtime::Handle,
    /// A client of each peer service used so far.
    peers: Mutex<std::collections::BTreeMap<SocketAddr, PeerClient>>,
    /// VNIs handed out by [`Cluster::next_vni`].
    vnis: AtomicU64,
    /// What this host's chains show in etcd (see [`chains`]): by chain,
    /// the JSON of its [`ChainView`](chains::ChainView).
    chains_wanted: Mutex<std::collections::BTreeMap<String, String>>,
    /// The etcd client of the current session (lookups share it).
    etcd: Mutex<Option<EtcdClient>>,
    /// Per chain and VNF, the last checkpoint copied to another host, and
    /// that host.
    copies_of: Mutex<std::collections::BTreeMap<(String, String), (u64, String)>>,
}

type PeerClient = crate::api::peer_service_client::PeerServiceClient<tonic::transport::Channel>;

/// An etcd client (which says nothing of itself).
#[derive(Clone)]
struct EtcdClient(etcd_client::Client);

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdClient")
    }
}

/// Checkpoint copies go to another member alive now: the next after this
/// host in name order (a ring, so copies spread over the hosts), then the
/// others in turn if it fails.
/// This host's side of off-host copies: keeps the checkpoint copies other
/// hosts send (`PeerService.StoreCheckpoint`) in this host's state
/// database, checked before they are written
/// ([`Store::put_copy`](crate::vsm::database::Store::put_copy)).
#[derive(Debug, Clone)]
pub struct CopyKeeper {
    store: Arc<crate::vsm::database::Store>,
}

impl CopyKeeper {
    /// Keeps copies in `store`.
    pub fn new(store: Arc<crate::vsm::database::Store>) -> Self {
        Self { store }
    }

    /// Keeps `file`, host `origin`'s checkpoint `meta`, off the async
    /// threads (it is hashed and synced).
    pub async fn keep(
        &self,
        origin: String,
        meta: crate::vsm::database::CheckpointMeta,
        file: Vec<u8>,
    ) -> Result<(), crate::error::ControlError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put_copy(&origin, &meta, &file))
            .await
            .map_err(crate::error::ControlError::from)??;
        Ok(())
    }
}

impl crate::vsm::checkpointer::OffHostCopy for Cluster {
    fn copy(
        &self,
        meta: &crate::vsm::database::CheckpointMeta,
        file: &std::path::Path,
    ) -> Result<String, String> {
        let bytes = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
        let mut targets: Vec<(String, SocketAddr)> = self
            .membership()
            .members()
            .filter(|m| m.liveness == Liveness::Alive)
            .filter_map(|m| Some((m.record.name.clone(), m.record.peer?)))
            .collect();
        // Members come in name order: start after this host.
        let after = targets
            .iter()
            .position(|(n, _)| *n > self.record.name)
            .unwrap_or(0);
        targets.rotate_left(after);
        if targets.is_empty() {
            return Err("no other host of the cluster is alive (with a peer listener)".into());
        }
        let mut errors = Vec::new();
        for (name, addr) in targets {
            match self.runtime.block_on(self.send_copy(addr, meta, &bytes)) {
                Ok(host) => {
                    self.copies_of
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(
                            (meta.chain.clone(), meta.vnf.clone()),
                            (meta.id, host.clone()),
                        );
                    return Ok(host);
                }
                Err(e) => errors.push(format!("{name} ({addr}): {e}")),
            }
        }
        Err(errors.join("; "))
    }
}

impl Cluster {
    async fn send_copy(
        &self,
        addr: SocketAddr,
        meta: &crate::vsm::database::CheckpointMeta,
        bytes: &[u8],
    ) -> Result<String, String> {
        use crate::api::{store_checkpoint_request::Part, StoreCheckpointRequest};
        let client = self.peer(addr)?;
        let header = Part::Header(crate::api::encode::checkpoint_header(
            &self.record.name,
            meta,
        ));
        let parts: Vec<StoreCheckpointRequest> = std::iter::once(header)
            .chain(bytes.chunks(1 << 20).map(|c| Part::Data(c.to_vec())))
            .map(|p| StoreCheckpointRequest { part: Some(p) })
            .collect();
        let mut request = self.authorized(tokio_stream::iter(parts))?;
        request.set_timeout(Duration::from_secs(10));
        let mut client = client;
        let answer = client
            .store_checkpoint(request)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        Ok(answer.into_inner().host)
    }
}

impl Cluster {
    /// A client of the peer service at `addr` (made once, kept).
    fn peer(&self, addr: SocketAddr) -> Result<PeerClient, String> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = peers.get(&addr) {
            return Ok(c.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            // A peer gone silently ends the calls waiting on it (WatchVnf).
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let c = PeerClient::new(channel).max_decoding_message_size(4 << 20);
        peers.insert(addr, c.clone());
        Ok(c)
    }

    /// `message` with the cluster's token.
    fn authorized<T>(&self, message: T) -> Result<tonic::Request<T>, String> {
        let mut request = tonic::Request::new(message);
        let token = String::from_utf8_lossy(&self.options.token).into_owned();
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the cluster token is not valid in a header".to_string())?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// Host `name`'s record, while it is a live member.
    fn live_member(&self, name: &str) -> Result<HostRecord, String> {
        let membership = self.membership();
        let m = membership
            .member(name)
            .ok_or_else(|| format!("host {name} is not a member of the cluster"))?;
        if m.liveness != Liveness::Alive {
            return Err(format!("host {name} is not alive ({:?})", m.liveness));
        }
        Ok(m.record.clone())
    }

    /// This host's underlay address (where its heartbeats and tunnels go).
    pub fn underlay(&self) -> std::net::IpAddr {
        self.options.heartbeat.ip()
    }
}

impl Cluster {
    /// Opens the heartbeat socket and starts the heartbeat thread and the
    /// etcd task (on the current tokio runtime). Returns at once: etcd may
    /// be unreachable (see [`Cluster::hosts`]).
    pub fn start(options: ClusterOptions) -> Result<Arc<Self>, ClusterError> {
        options.validate()?;
        let socket = UdpSocket::bind(options.heartbeat).map_err(|source| ClusterError::Socket {
            addr: options.heartbeat,
            source,
        })?;
        // A new incarnation each start: the wall clock's nanoseconds (a
        // restarted nhamd's are larger).
        let incarnation = unix_nanos().max(1);
        let record = HostRecord {
            name: options.host.clone(),
            api: options.api.clone(),
            heartbeat: socket.local_addr().unwrap_or(options.heartbeat),
            peer: options.peer,
            incarnation,
        };
        let (events, _) = broadcast::channel(1024);
        let cluster = Arc::new(Self {
            membership: Mutex::new(Membership::new(
                &options.host,
                options.heartbeat_interval,
                options.misses,
            )),
            options,
            record,
            incarnation,
            origin: Instant::now(),
            etcd_error: Mutex::new(Some("not connected yet".into())),
            events,
            stop: AtomicBool::new(false),
            goodbye: tokio::sync::watch::channel(false).0,
            revoke: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            last_lease: std::sync::atomic::AtomicI64::new(0),
            etcd_next: std::sync::atomic::AtomicUsize::new(0),
            left: tokio::sync::watch::channel(false).0,
            counters: ClusterCounters::default(),
            runtime: tokio::runtime::Handle::current(),
            peers: Mutex::new(std::collections::BTreeMap::new()),
            vnis: AtomicU64::new(0),
            chains_wanted: Mutex::new(std::collections::BTreeMap::new()),
            etcd: Mutex::new(None),
            copies_of: Mutex::new(std::collections::BTreeMap::new()),
        });
        let c = cluster.clone();
        std::thread::Builder::new()
            .name("nham-heartbeat".into())
            .spawn(move || c.heartbeat_loop(socket))
            .map_err(ClusterError::Thread)?;
        tokio::spawn(cluster.clone().etcd_loop());
        Ok(cluster)
    }

    /// This host's chains as etcd is to show them (all of them: a chain
    /// not named goes). Written by the etcd task, when it reaches etcd;
    /// nothing waits for it.
    pub fn publish_chains(&self, chains: std::collections::BTreeMap<String, chains::ChainView>) {
        let wanted: std::collections::BTreeMap<String, String> = chains
            .into_iter()
            .filter_map(|(name, view)| Some((name, serde_json::to_string(&view).ok()?)))
            .collect();
        let mut w = self
            .chains_wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *w != wanted {
            *w = wanted;
            drop(w);
            self.wake.notify_one();
        }
    }

    /// The last checkpoint of `chain`/`vnf` copied to another host, and
    /// that host.
    pub fn copy_of(&self, chain: &str, vnf: &str) -> Option<(u64, String)> {
        self.copies_of
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(chain.to_string(), vnf.to_string()))
            .cloned()
    }

    /// Chain `chain` as its owner published it in etcd (`None`: no
    /// record). Waits at most a second.
    pub async fn chain_view(&self, chain: &str) -> Result<Option<chains::ChainView>, String> {
        let key = format!("{}{chain}", chains::CHAINS_PREFIX);
        let get = |mut client: etcd_client::Client, key: String, wait: Duration| async move {
            let got = tokio::time::timeout(wait, client.get(key, None))
                .await
                .map_err(|_| format!("no answer within {wait:?}"))?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(
                got.kvs()
                    .first()
                    .and_then(|kv| serde_json::from_slice(kv.value()).ok()),
            )
        };
        // The session's client, else (its endpoint lost meanwhile) each
        // endpoint in turn.
        let session = self
            .etcd
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut why = "etcd is not reached".to_string();
        if let Some(EtcdClient(client)) = session {
            match get(client, key.clone(), Duration::from_millis(500)).await {
                Ok(view) => return Ok(view),
                Err(e) => why = e,
            }
        }
        for endpoint in &self.options.etcd {
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(300))
                .with_timeout(Duration::from_millis(500))
                .with_require_leader(true);
            let client =
                match etcd_client::Client::connect([endpoint.as_str()], Some(options)).await {
                    Ok(c) => c,
                    Err(e) => {
                        why = format!("{endpoint}: {e}");
                        continue;
                    }
                };
            match get(client, key.clone(), Duration::from_millis(500)).await {
                Ok(view) => return Ok(view),
                Err(e) => why = format!("{endpoint}: {e}"),
            }
        }
        Err(why)
    }

    /// Puts the chain records wanted that etcd does not have as wanted
    /// (`synced`: what this session put), under `lease`; deletes the ones
    /// no longer wanted.
    async fn sync_chains(
        &self,
        client: &mut etcd_client::Client,
        lease: i64,
        synced: &mut std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        let wanted = self
            .chains_wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (name, json) in &wanted {
            if synced.get(name) != Some(json) {
                let key = format!("{}{name}", chains::CHAINS_PREFIX);
                let options = etcd_client::PutOptions::new().with_lease(lease);
                client
                    .put(key, json.clone(), Some(options))
                    .await
                    .map_err(|e| format!("publishing chain {name}: {e}"))?;
                synced.insert(name.clone(), json.clone());
            }
        }
        let gone: Vec<String> = (synced.keys())
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            let key = format!("{}{name}", chains::CHAINS_PREFIX);
            client
                .delete(key, None)
                .await
                .map_err(|e| format!("withdrawing chain {name}: {e}"))?;
            synced.remove(&name);
        }
        Ok(())
    }

    /// The cluster's token.
    pub fn token(&self) -> Vec<u8> {
        self.options.token.clone()
    }

    /// This host's registration.
    pub fn record(&self) -> &HostRecord {
        &self.record
    }

    /// Host events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }

    /// Leaves the cluster on purpose (this `nhamd` is shutting down): the
    /// members are told with a last heartbeat flagged leaving (so none
    /// judges this host down for its silence), heartbeats stop, and the
    /// lease is revoked (the registration goes at once) if etcd answers
    /// within `within`. Returns when that is done or `within` has passed.
    pub async fn leave(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        // The goodbye first (the members hear it before the registration
        // goes), then the lease.
        let mut said = self.goodbye.subscribe();
        self.stop.store(true, Ordering::Relaxed);
        let goodbye = (within / 4).min(Duration::from_millis(100));
        let _ = tokio::time::timeout(goodbye, said.wait_for(|done| *done)).await;
        self.revoke.store(true, Ordering::Relaxed);
        // (A permit is kept if the task is not waiting right now.)
        self.wake.notify_one();
        let mut left = self.left.subscribe();
        let _ = tokio::time::timeout_at(deadline, left.wait_for(|done| *done)).await;
    }

    /// The hosts as this host sees them now.
    pub fn hosts(&self) -> HostsView {
        let now = self.now();
        let mut hosts = vec![HostView {
            record: self.record.clone(),
            liveness: Liveness::Alive,
            last_heard_ago: Some(Duration::ZERO),
            incarnation: self.incarnation,
            this_host: true,
        }];
        let membership = self
            .membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        hosts.extend(membership.members().map(|m: &Member| HostView {
            record: m.record.clone(),
            liveness: m.liveness,
            last_heard_ago: m.last_heard.map(|t| now.saturating_sub(t)),
            incarnation: m.incarnation,
            this_host: false,
        }));
        drop(membership);
        HostsView {
            hosts,
            etcd_error: self
                .etcd_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, events: impl IntoIterator<Item = HostEvent>) {
        for event in events {
            match &event {
                HostEvent::Down {
                    host, detection, ..
                } => tracing::warn!(host, ?detection, "host judged down: silent"),
                HostEvent::Up { host } => tracing::info!(host, "host up"),
                HostEvent::Back { host } => tracing::warn!(host, "host back"),
                HostEvent::Leaving { host } => tracing::info!(host, "host leaving on purpose"),
                HostEvent::Left { host } => tracing::info!(host, "host left the cluster"),
            }
            let _ = self.events.send(ClusterEvent {
                event,
                time_unix_nanos: unix_nanos(),
            });
        }
    }

    /// Sends a heartbeat to every member each interval; between two, hears
    /// theirs and judges silence.
    fn heartbeat_loop(self: Arc<Self>, socket: UdpSocket) {
        // As the SFF: a beat that waits behind CRIU, VNFs and etcd for one
        // of a loaded host's CPUs gets this host judged down by the others
        // (and a late poll here judges nobody). The thread does little.
        let _urgent = crate::runtime::process::Niceness::for_this_thread(
            crate::runtime::process::URGENT_NICE,
        );
        if rustix::process::getpriority_process(None).ok()
            != Some(crate::runtime::process::URGENT_NICE)
        {
            tracing::warn!(
                "heartbeats at normal priority (nice {} refused): a loaded host may be judged down by the others",
                crate::runtime::process::URGENT_NICE
            );
        }
        // (Read only when poll(2) says a datagram waits.)
        if let Err(e) = socket.set_nonblocking(true) {
            tracing::warn!("heartbeat socket: {e}");
        }
        let interval = self.options.heartbeat_interval;
        let mut seq = 0u64;
        let mut next = Instant::now();
        let mut buf = [0u8; 128];
        loop {
            if self.stop.load(Ordering::Relaxed) {
                // Leaving on purpose: say so (three times: a datagram may
                // be lost), then go quiet.
                let hb = Heartbeat {
                    host: self.options.host.clone(),
                    incarnation: self.incarnation,
                    seq,
                    leaving: true,
                };
                let bytes = hb.emit().unwrap_or_default();
                let targets: Vec<SocketAddr> = self.membership().heartbeat_targets().collect();
                for _ in 0..3 {
                    for to in &targets {
                        let _ = socket.send_to(&bytes, to);
                    }
                }
                self.goodbye.send_replace(true);
                return;
            }
            if Instant::now() >= next {
                let hb = Heartbeat {
                    host: self.options.host.clone(),
                    incarnation: self.incarnation,
                    seq,
                    leaving: false,
                };
                seq += 1;
                // (The name was validated: it fits.)
                let bytes = hb.emit().unwrap_or_default();
                let targets: Vec<SocketAddr> = self.membership().heartbeat_targets().collect();
                for to in targets {
                    let c = match socket.send_to(&bytes, to) {
                        Ok(_) => &self.counters.sent,
                        Err(_) => &self.counters.send_errors,
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                }
                next += interval;
                // Far behind (this thread starved): start the beat again
                // from now rather than sending a burst.
                if next < Instant::now() {
                    next = Instant::now() + interval;
                }
            }
            let (events, judge_at) = {
                let mut m = self.membership();
                (m.poll(self.now()), m.poll_at())
            };
            self.publish(events);
            // Awake for the next beat to send, or the moment a silent host
            // is to be judged down, whichever comes first (not up to a beat
            // late).
            let judge_in = judge_at.map(|t| t.saturating_sub(self.now()));
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(judge_in.unwrap_or(Duration::MAX));
            // (poll(2) sleeps on a high-resolution timer. A socket's receive
            // timeout counts whole jiffies, 4 ms at HZ=250: this thread woke
            // up to 8 ms late, judged silent hosts late and sent beats
            // late.)
            let wait = rustix::event::Timespec::try_from(wait.max(Duration::from_micros(100)))
                .unwrap_or(rustix::event::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                });
            let mut fds = [rustix::event::PollFd::new(
                &socket,
                rustix::event::PollFlags::IN,
            )];
            if !rustix::event::poll(&mut fds, Some(&wait)).is_ok_and(|n| n > 0) {
                continue;
            }
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                match Heartbeat::from_bytes(&buf[..n]) {
                    Ok(hb) => {
                        self.counters.received.fetch_add(1, Ordering::Relaxed);
                        let now = self.now();
                        let mut membership = self.membership();
                        // Only from the address the host registered.
                        let from_it = membership
                            .member(&hb.host)
                            .is_some_and(|m| m.record.heartbeat.ip() == from.ip());
                        let event = if !from_it {
                            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                            None
                        } else if hb.leaving {
                            membership.handle_leaving(&hb.host, hb.incarnation, now)
                        } else {
                            membership.handle_heartbeat(&hb.host, hb.incarnation, now)
                        };
                        drop(membership);
                        self.publish(event);
                    }
                    Err(_) => {
                        self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn set_etcd_error(&self, error: Option<String>) {
        let mut e = self
            .etcd_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // (The endpoint each session names is left out: a round of
        // sessions through every endpoint is one outage, said once.)
        let cause = |x: &Option<String>| {
            x.as_deref()
                .map(|w| w.split_once(": ").map_or(w, |(_, rest)| rest).to_string())
        };
        if cause(&e) != cause(&error) {
            match &error {
                Some(why) => {
                    tracing::warn!("etcd unreachable: {why}; chains go on, membership changes wait")
                }
                None => tracing::info!("etcd reached: registered as {}", self.record.name),
            }
        }
        *e = error;
    }

    /// Registers this host and follows the others', for as long as the
    /// cluster runs. A session talks to one etcd endpoint; a broken one is
    /// started again with the next endpoint at once, and after 500 ms once
    /// every endpoint failed in a row (a dead member, or one cut off from
    /// the quorum, is left for the others: the etcd client given them all
    /// kept sending to a member that refused connections).
    async fn etcd_loop(self: Arc<Self>) {
        let mut failed_in_row = 0usize;
        loop {
            if self.revoke.load(Ordering::Relaxed) {
                // A clean stop between sessions.
                self.revoke_last_lease().await;
                break;
            }
            let began = std::time::Instant::now();
            match self.etcd_session().await {
                // The session revoked its lease.
                Ok(()) => break,
                Err(e) => self.set_etcd_error(Some(e)),
            }
            // (A session that lasted was no failure to connect.)
            if began.elapsed() > Duration::from_secs(3) {
                failed_in_row = 0;
            }
            self.etcd_next.fetch_add(1, Ordering::Relaxed);
            failed_in_row += 1;
            if failed_in_row % self.options.etcd.len().max(1) != 0 {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.wake.notified() => {}
            }
        }
        self.left.send_replace(true);
    }

    /// Revokes the last session's lease, if etcd answers at once: a host
    /// stopped cleanly while its session was broken (etcd unreachable a
    /// moment ago) leaves at once, not at its registration's expiry.
    async fn revoke_last_lease(&self) {
        let lease = self.last_lease.swap(0, Ordering::Relaxed);
        if lease == 0 {
            return;
        }
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_millis(500));
        // One endpoint at a time, from the last that worked.
        let endpoints = &self.options.etcd;
        let first = self.etcd_next.load(Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_millis(800), async {
            for k in 0..endpoints.len() {
                let at = &endpoints[(first + k) % endpoints.len()];
                if let Ok(mut c) = etcd_client::Client::connect([at], Some(options.clone())).await {
                    if c.lease_revoke(lease).await.is_ok() {
                        return;
                    }
                }
            }
        })
        .await;
    }

    async fn etcd_session(&self) -> Result<(), String> {
        use etcd_client::{
            Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions,
        };
        let endpoints = &self.options.etcd;
        let endpoint = endpoints
            .get(self.etcd_next.load(Ordering::Relaxed) % endpoints.len().max(1))
            .cloned()
            .ok_or_else(|| "no etcd endpoint".to_string())?;
        let at = endpoint.clone();
        let e = move |what: &'static str| {
            let at = at.clone();
            move |err: etcd_client::Error| format!("{at}: {what}: {err}")
        };
        // HTTP/2 pings find a silently dead link; a member without a leader
        // (cut off from the quorum) refuses rather than answers stale.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let mut client = Client::connect([endpoint.as_str()], Some(options))
            .await
            .map_err(e("connecting"))?;
        let ttl = self.options.lease_ttl.as_secs().max(2) as i64;
        let lease = client
            .lease_grant(ttl, None)
            .await
            .map_err(e("granting a lease"))?
            .id();
        self.last_lease.store(lease, Ordering::Relaxed);
        let key = format!("{HOSTS_PREFIX}{}", self.record.name);
        let value = serde_json::to_string(&self.record).map_err(|err| err.to_string())?;
        client
            .put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(e("registering"))?;
        let (mut keeper, mut alive) = client
            .lease_keep_alive(lease)
            .await
            .map_err(e("keeping the lease"))?;
        let listing = client
            .get(HOSTS_PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(e("listing hosts"))?;
        let revision = listing.header().map_or(0, |h| h.revision());
        let mut seen = std::collections::BTreeSet::new();
        for kv in listing.kvs() {
            if let Some(record) = parse_record(kv.value()) {
                seen.insert(record.name.clone());
                let now = self.now();
                self.membership().handle_registered(record, now);
            }
        }
        // Hosts that left while this one could not see etcd.
        let gone: Vec<String> = self
            .membership()
            .members()
            .map(|m| m.record.name.clone())
            .filter(|n| !seen.contains(n))
            .collect();
        for name in gone {
            let event = self.membership().handle_unregistered(&name);
            self.publish(event);
        }
        let mut watch = client
            .watch(
                HOSTS_PREFIX,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(e("watching hosts"))?;
        self.set_etcd_error(None);
        *self.etcd.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(EtcdClient(client.clone()));
        // This host's chains, under this session's lease.
        let mut synced = std::collections::BTreeMap::new();
        self.sync_chains(&mut client, lease, &mut synced).await?;
        let mut tick = tokio::time::interval(self.options.lease_ttl / 3);
        loop {
            if self.revoke.load(Ordering::Relaxed) {
                if client.lease_revoke(lease).await.is_ok() {
                    self.last_lease.store(0, Ordering::Relaxed);
                }
                self.revoke_last_lease().await;
                return Ok(());
            }
            tokio::select! {
                _ = self.wake.notified() => {
                    if !self.revoke.load(Ordering::Relaxed) {
                        self.sync_chains(&mut client, lease, &mut synced).await?;
                    }
                }
                _ = tick.tick() => {
                    // A reply within a third of the TTL, or the session is
                    // given up (streams have no deadline of their own).
                    let wait = self.options.lease_ttl / 3;
                    let reply = tokio::time::timeout(wait, async {
                        keeper.keep_alive().await?;
                        alive.message().await
                    })
                    .await
                    .map_err(|_| format!("no answer to a lease keep-alive within {wait:?}"))?
                    .map_err(e("keeping the lease"))?;
                    match reply {
                        Some(r) if r.ttl() > 0 => {}
                        _ => return Err(format!("lease {lease:x} expired")),
                    }
                }
                message = watch.message() => {
                    let Some(message) = message.map_err(e("watching hosts"))? else {
                        return Err("the watch of hosts ended".into());
                    };
                    if message.canceled() {
                        return Err(format!(
                            "the watch of hosts was cancelled: {}",
                            message.cancel_reason()
                        ));
                    }
                    for event in message.events() {
                        let Some(kv) = event.kv() else { continue };
                        match event.event_type() {
                            EventType::Put => {
                                if let Some(record) = parse_record(kv.value()) {
                                    let now = self.now();
                                    self.membership().handle_registered(record, now);
                                }
                            }
                            EventType::Delete => {
                                let key = String::from_utf8_lossy(kv.key());
                                let Some(name) = key.strip_prefix(HOSTS_PREFIX) else { continue };
                                if name == self.record.name {
                                    // Our own registration gone (lease lost):
                                    // register again.
                                    return Err("this host's registration was deleted".into());
                                }
                                let event = self.membership().handle_unregistered(name);
                                self.publish(event);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn parse_record(bytes: &[u8]) -> Option<HostRecord> {
    serde_json::from_slice(bytes)
        .map_err(|e| tracing::warn!("a host registration that does not parse: {e}"))
        .ok()
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The owner's side of VNFs on other hosts: each call goes to the peer
/// service of the host named (a live member), with the cluster's token.
impl Cluster {
    /// Waits (blocking, on the cluster's runtime) for peer call `call` to
    /// host `host`; see [`Cluster::peer_task`].
    fn peer_call<T>(
        &self,
        host: &str,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, hosting::HostingError> {
        self.peer_task(host, async {
            call.await.map_err(|s| status_error(host, &s))
        })
    }

    /// Waits (blocking, on the cluster's runtime) for `task`, work on an
    /// incarnation that runs on host `host` (probe, signal, dump, fetch:
    /// a checkpoint's steps), refused (`HostDown`) if the host is judged
    /// down, and given up once it is judged down meanwhile: the incarnation
    /// is lost with it, and the checkpoint that waits (holding the VNF's
    /// agent, while held packets pile up) ends at once rather than after
    /// the call's timeout (seconds) or the host's return. (Calls that
    /// start or stop an incarnation there are never given up half-way: a
    /// host judged down may still be running and do it.)
    fn peer_task<T>(
        &self,
        host: &str,
        task: impl std::future::Future<Output = Result<T, hosting::HostingError>>,
    ) -> Result<T, hosting::HostingError> {
        // (Subscribed before the check: a judgement in between is heard.)
        let mut events = self.events.subscribe();
        let down = || {
            self.membership()
                .member(host)
                .is_some_and(|m| matches!(m.liveness, Liveness::Down { .. }))
        };
        let lost = || hosting::HostingError::HostDown(host.to_string());
        if down() {
            return Err(lost());
        }
        self.runtime.block_on(async {
            let judged = async {
                loop {
                    match events.recv().await {
                        Ok(ClusterEvent {
                            event: HostEvent::Down { host: h, .. },
                            ..
                        }) if h == host => return,
                        Err(broadcast::error::RecvError::Lagged(_)) if down() => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                        _ => {}
                    }
                }
            };
            tokio::select! {
                r = task => r,
                () = judged => Err(lost()),
            }
        })
    }

    /// Runs `r` on host `host` (see [`hosting`]); blocking (call it off
    /// the async threads).
    pub fn run_vnf(
        &self,
        host: &str,
        r: hosting::RunRequest,
    ) -> Result<hosting::Running, hosting::HostingError> {
        let request = crate::api::RunVnfRequest {
            vnf: Some(hosted_api(&r.key)),
            owner_underlay: r.owner_underlay.to_string(),
            command: r.command,
            env: r.env.into_iter().collect(),
        };
        // A VNF may take seconds to listen.
        let (mut client, request) = self.prepare(host, true, request, Duration::from_secs(30))?;
        let answer = self
            .runtime
            .block_on(client.run_vnf(request))
            .map_err(|s| status_error(host, &s))?
            .into_inner();
        running(host, answer)
    }

    /// Waits until host `host` says VNF `key` exited; returns when it did
    /// (its clock, Unix ns). Fails when the host cannot be asked (it may be
    /// down: its membership says so, separately).
    pub async fn watch_vnf(
        &self,
        host: &str,
        key: &hosting::HostedKey,
    ) -> Result<u64, hosting::HostingError> {
        let mut client = self.client_of(host, true)?;
        let request = self
            .authorized(hosted_api(key))
            .map_err(|why| peer_error(host, why))?;
        Ok(client
            .watch_vnf(request)
            .await
            .map_err(|s| status_error(host, &s))?
            .into_inner()
            .exited_unix_ns)
    }

    /// Asks host `host` to kill VNF `key` and remove its place; blocking.
    pub fn stop_vnf(
        &self,
        host: &str,
        key: &hosting::HostedKey,
    ) -> Result<(), hosting::HostingError> {
        // (Asked even if it is not alive now: it may be cut off only.)
        let (mut client, request) =
            self.prepare(host, false, hosted_api(key), Duration::from_secs(5))?;
        self.runtime
            .block_on(client.stop_vnf(request))
            .map_err(|s| status_error(host, &s))?;
        Ok(())
    }

    /// A client of host `host`'s peer service (`live`: only while it is
    /// alive) and `message` as a request to it, with the cluster's token
    /// and `timeout`.
    fn prepare<T>(
        &self,
        host: &str,
        live: bool,
        message: T,
        timeout: Duration,
    ) -> Result<(PeerClient, tonic::Request<T>), hosting::HostingError> {
        let client = self.client_of(host, live)?;
        let mut request = self
            .authorized(message)
            .map_err(|why| peer_error(host, why))?;
        request.set_timeout(timeout);
        Ok((client, request))
    }

    /// A client of host `host`'s peer service (`live`: only while it is
    /// alive). A host that is not a member (or not alive) is the caller's
    /// to fix: `FAILED_PRECONDITION`, not worth a retry as such.
    fn client_of(&self, host: &str, live: bool) -> Result<PeerClient, hosting::HostingError> {
        let record = if live {
            self.live_member(host)
        } else {
            (self.membership().member(host))
                .map(|m| m.record.clone())
                .ok_or_else(|| format!("host {host} is not a member of the cluster"))
        }
        .map_err(|why| hosting::HostingError::Peer {
            host: host.to_string(),
            code: tonic::Code::FailedPrecondition,
            why,
        })?;
        let addr = record
            .peer
            .ok_or_else(|| peer_error(host, "it has no peer listener".into()))?;
        self.peer(addr).map_err(|why| peer_error(host, why))
    }

    /// Host `host`'s view of hosted VNF `key`: its sockets and state;
    /// blocking, 1 s at most.
    pub fn probe_vnf(
        &self,
        host: &str,
        key: &hosting::HostedKey,
    ) -> Result<hosting::Probe, hosting::HostingError> {
        let (mut client, request) =
            self.prepare(host, false, hosted_api(key), Duration::from_secs(1))?;
        let p = self
            .peer_call(host, async { client.probe_vnf(request).await })?
            .into_inner();
        Ok(hosting::Probe {
            rmem: p.rmem,
            stopped: p.stopped,
            input_dropped: p.input_dropped,
        })
    }

    /// Sends SIGSTOP, SIGCONT or SIGKILL (an injected crash) to hosted
    /// VNF `key` on host `host`; blocking, 1 s at most.
    pub fn signal_vnf(
        &self,
        host: &str,
        key: &hosting::HostedKey,
        signal: nix::sys::signal::Signal,
    ) -> Result<(), hosting::HostingError> {
        use nix::sys::signal::Signal;
        let signal = match signal {
            Signal::SIGSTOP => crate::api::VnfSignal::Stop,
            Signal::SIGCONT => crate::api::VnfSignal::Cont,
            Signal::SIGKILL => crate::api::VnfSignal::Kill,
            s => return Err(peer_error(host, format!("{s} is not sent to hosted VNFs"))),
        };
        let (mut client, request) = self.prepare(
            host,
            false,
            crate::api::SignalVnfRequest {
                vnf: Some(hosted_api(key)),
                signal: signal as i32,
            },
            Duration::from_secs(1),
        )?;
        self.peer_call(host, async { client.signal_vnf(request).await })?;
        Ok(())
    }

    /// Has host `host` dump hosted VNF `key` (stopped) as checkpoint `id`,
    /// kept there; blocking, 10 s at most.
    pub fn dump_vnf(
        &self,
        host: &str,
        key: &hosting::HostedKey,
        id: u64,
    ) -> Result<crate::vsm::criu::DumpReport, hosting::HostingError> {
        let (mut client, request) = self.prepare(
            host,
            false,
            crate::api::DumpVnfRequest {
                vnf: Some(hosted_api(key)),
                id,
            },
            Duration::from_secs(10),
        )?;
        let r = self
            .peer_call(host, async { client.dump_vnf(request).await })?
            .into_inner();
        Ok(crate::vsm::criu::DumpReport {
            duration: Duration::from_secs_f64(r.dump_ms / 1e3),
            size: r.image_bytes,
        })
    }

    /// Checkpoint `id` of hosted VNF `key`, from host `host`, as a
    /// checkpoint file (unchecked: see `vsm::database::unpack_file`);
    /// blocking, 30 s at most.
    pub fn fetch_image(
        &self,
        host: &str,
        key: &hosting::HostedKey,
        id: u64,
    ) -> Result<hosting::Image, hosting::HostingError> {
        use crate::api::store_checkpoint_request::Part;
        let (mut client, request) = self.prepare(
            host,
            false,
            crate::api::DumpVnfRequest {
                vnf: Some(hosted_api(key)),
                id,
            },
            Duration::from_secs(30),
        )?;
        let err = |s: tonic::Status| status_error(host, &s);
        self.peer_task(host, async {
            let mut stream = client.fetch_image(request).await.map_err(err)?.into_inner();
            let Some(Part::Header(h)) = stream.message().await.map_err(err)?.and_then(|m| m.part)
            else {
                return Err(peer_error(host, "an image without a header".into()));
            };
            let mut file = Vec::with_capacity(h.stored_bytes.min(64 << 20) as usize);
            while let Some(m) = stream.message().await.map_err(err)? {
                match m.part {
                    Some(Part::Data(d)) if (file.len() + d.len()) as u64 <= h.stored_bytes => {
                        file.extend_from_slice(&d)
                    }
                    _ => return Err(peer_error(host, "an image longer than its header".into())),
                }
            }
            Ok(hosting::Image {
                meta: crate::api::encode::checkpoint_meta(h),
                file,
            })
        })
    }

    /// Has host `host` restore `r` (stopped); blocking, 30 s at most.
    pub fn restore_vnf(
        &self,
        host: &str,
        r: hosting::RestoreRequest,
    ) -> Result<hosting::Running, hosting::HostingError> {
        self.send_image(host, r, None)
    }

    /// Has host `host` stage `r` on standby `r.key` (its place made if
    /// `create`: the first call); blocking, 30 s at most. The answer's pid
    /// is 0.
    pub fn stage_standby(
        &self,
        host: &str,
        r: hosting::RestoreRequest,
        create: bool,
    ) -> Result<hosting::Running, hosting::HostingError> {
        self.send_image(host, r, Some(create))
    }

    /// Has host `host` restore standby `key` from its staged checkpoint
    /// `id` (stopped); blocking, 10 s at most.
    pub fn activate_standby(
        &self,
        host: &str,
        key: &hosting::HostedKey,
        id: u64,
    ) -> Result<hosting::Running, hosting::HostingError> {
        let (mut client, request) = self.prepare(
            host,
            true,
            crate::api::DumpVnfRequest {
                vnf: Some(hosted_api(key)),
                id,
            },
            Duration::from_secs(10),
        )?;
        let answer = self
            .runtime
            .block_on(client.activate_standby(request))
            .map_err(|s| status_error(host, &s))?
            .into_inner();
        running(host, answer)
    }

    /// `RestoreVnf` (or `StageStandby`: `stage`, its `create`) of `r` on
    /// host `host`.
    fn send_image(
        &self,
        host: &str,
        r: hosting::RestoreRequest,
        stage: Option<bool>,
    ) -> Result<hosting::Running, hosting::HostingError> {
        use crate::api::restore_vnf_request::Part;
        let header = Part::Header(crate::api::RestoreHeader {
            vnf: Some(hosted_api(&r.key)),
            owner_underlay: r.owner_underlay.to_string(),
            ifindex: r.ifindex,
            checkpoint: Some(crate::api::encode::checkpoint_header(
                &self.record.name,
                &r.image.meta,
            )),
            create: stage == Some(true),
        });
        let parts: Vec<crate::api::RestoreVnfRequest> = std::iter::once(header)
            .chain(r.image.file.chunks(1 << 20).map(|c| Part::Data(c.to_vec())))
            .map(|p| crate::api::RestoreVnfRequest { part: Some(p) })
            .collect();
        let (mut client, request) = self.prepare(
            host,
            true,
            tokio_stream::iter(parts),
            Duration::from_secs(30),
        )?;
        let answer = self
            .runtime
            .block_on(async {
                if stage.is_some() {
                    client.stage_standby(request).await
                } else {
                    client.restore_vnf(request).await
                }
            })
            .map_err(|s| status_error(host, &s))?
            .into_inner();
        running(host, answer)
    }

    /// Host `host`'s underlay address, while it is a live member.
    pub fn underlay_of(&self, host: &str) -> Result<std::net::IpAddr, hosting::HostingError> {
        self.live_member(host)
            .map(|r| r.heartbeat.ip())
            .map_err(|why| peer_error(host, why))
    }

    /// This host's name in the cluster.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// A VNI for a new tunnel to a VNF on another host: one per
    /// incarnation, never handed out twice by this `nhamd` (a counter
    /// through the 2^24-1 VNIs from a point that this host's name and
    /// incarnation choose, so a restarted `nhamd`, or another owner, starts
    /// elsewhere in the space). A VNI taken at either end anyway is found
    /// when the tunnel is made, and the next one is tried.
    pub fn next_vni(&self) -> u32 {
        const SPACE: u64 = (1 << 24) - 1;
        let seed = blake3::hash(format!("{}/{}", self.record.name, self.incarnation).as_bytes());
        let start = u64::from_le_bytes(seed.as_bytes()[..8].try_into().unwrap_or_default());
        let n = self.vnis.fetch_add(1, Ordering::Relaxed);
        (start.wrapping_add(n) % SPACE) as u32 + 1
    }
}

/// A hosted VNF that runs, as host `host` answered.
fn running(
    host: &str,
    answer: crate::api::RunVnfResponse,
) -> Result<hosting::Running, hosting::HostingError> {
    let mac = <[u8; 6]>::try_from(answer.mac.as_slice())
        .map_err(|_| peer_error(host, format!("a MAC of {} bytes", answer.mac.len())))?;
    Ok(hosting::Running {
        pid: answer.pid,
        mac,
        netns: answer.netns,
        ifindex: answer.ifindex,
    })
}

fn hosted_api(k: &hosting::HostedKey) -> crate::api::HostedVnf {
    crate::api::HostedVnf {
        owner: k.owner.clone(),
        chain: k.chain.clone(),
        vnf: k.vnf.clone(),
        vni: k.vni,
    }
}

fn peer_error(host: &str, why: String) -> hosting::HostingError {
    hosting::HostingError::Peer {
        host: host.to_string(),
        code: tonic::Code::Unavailable,
        why,
    }
}

fn status_error(host: &str, s: &tonic::Status) -> hosting::HostingError {
    hosting::HostingError::Peer {
        host: host.to_string(),
        code: s.code(),
        why: s.message().to_string(),
    }
}
