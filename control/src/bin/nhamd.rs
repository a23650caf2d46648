//! `nhamd`: the NHAM daemon. Serves the `nham.v1` gRPC API (plus
//! `grpc.health.v1` and reflection) on a Unix socket (by default
//! `/run/nham/nhamd.sock`, mode 0660: root and one group), or on TCP with
//! mutual TLS (roles per client certificate); plain-text TCP only with
//! `--insecure-tcp`. Creating a chain runs commands as root: nothing
//! reaches that without authentication.
//!
//! Configuration: a TOML file (`--config`, unknown keys refused) whose
//! values the command-line flags override.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use nham_control::chain::StateOptions;
use nham_control::runtime::SffOptions;
use nham_control::service::Daemon;
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "nhamd",
    version,
    about = "NHAM daemon: high availability for service function chains"
)]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen on TCP at this address instead of the Unix socket; needs
    /// mutual TLS (--tls-cert, --tls-key, --tls-client-ca) unless
    /// --insecure-tcp.
    #[arg(long, conflicts_with = "unix")]
    listen: Option<SocketAddr>,
    /// The Unix socket to listen on (default /run/nham/nhamd.sock), mode
    /// 0660: root and --socket-group may call.
    #[arg(long)]
    unix: Option<PathBuf>,
    /// The group (name or number) that may use the Unix socket (default:
    /// root's group only).
    #[arg(long)]
    socket_group: Option<String>,
    /// Serve TCP without mutual TLS (plain text, or TLS without client
    /// certificates): whoever reaches the port may run commands as root.
    /// Logged as a warning at start; for a lab on loopback only.
    #[arg(long)]
    insecure_tcp: bool,
    /// Log format on stderr, nhamd's and its SFF processes' (default
    /// text); RUST_LOG filters.
    #[arg(long, value_enum)]
    log_format: Option<nham_control::LogFormat>,
    /// Cap on each VNF's and SFF's log file, bytes (default 16 MiB): a
    /// file over it is copied to `<name>.1` and emptied (checked every
    /// 10 s).
    #[arg(long)]
    log_max_bytes: Option<u64>,
    /// Serve Prometheus metrics on `http://ADDR/metrics` (default: off).
    /// Plain HTTP, read-only: keep it on loopback or a management network.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Pin chains' SFFs to these cores (a list: `1,2,3`), one core per
    /// chain, the chains spread over them.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    sff_cores: Option<Vec<usize>>,
    /// Pin every chain's SFF to this core (as `--sff-cores N`).
    #[arg(long, conflicts_with = "sff_cores")]
    sff_core: Option<usize>,
    /// Packets each hop of a chain may hold until checkpoints include them
    /// (default 8192): at least two checkpoint intervals at the chain's
    /// packet rate. Each takes a 2 KiB buffer.
    #[arg(long)]
    hold_packets: Option<usize>,
    /// Nice value of the SFF processes (default -10: the forwarder wins the
    /// CPU over VNFs and checkpoint work; it sleeps when idle).
    #[arg(long, allow_negative_numbers = true)]
    sff_nice: Option<i32>,
    /// Host tuning: expedited RCU grace periods (`/sys/kernel/rcu_expedited`
    /// set to 1 while nhamd runs, put back when it stops). A VNF's exit then
    /// shows on its pidfd in well under a millisecond instead of after a
    /// grace period (about 10 ms: its packet socket's release waits for
    /// one), and CRIU's socket work is faster. Costs an IPI to every CPU per
    /// grace period: for hosts dedicated to network functions.
    #[arg(long)]
    expedite_rcu: bool,
    /// Empty polling rounds an SFF spins before it sleeps 50 µs a round
    /// (default 2000: lowest latency; fewer leave more CPU to VNFs).
    #[arg(long)]
    sff_spin: Option<u32>,
    /// State directory: checkpoint database and images, VNF logs
    /// (default /var/lib/nham).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Scratch space for images being dumped and restored; tmpfs is best
    /// (default /dev/shm/nham-<pid>).
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
    /// Checkpoint period of VNFs that do not set one, ms (default 1000).
    #[arg(long)]
    checkpoint_interval_ms: Option<u64>,
    /// Checkpoint dumps under way at once on this host (default: one per
    /// two cores); the others wait their turn, so checkpoint work leaves
    /// the chains CPU (the store and commit after a dump do not wait). A
    /// VNF is checkpointed at most once per interval, one at a time.
    #[arg(long)]
    checkpoint_concurrency: Option<usize>,
    /// How often the Failure Detector probes VNFs for hangs and cut-offs,
    /// ms (default 50).
    #[arg(long)]
    probe_interval_ms: Option<u64>,
    /// Consecutive bad probes that make a hang or cut-off (default 3).
    #[arg(long)]
    probe_threshold: Option<u32>,
    /// Serve TCP over TLS with this certificate chain (PEM); needs
    /// --tls-key.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// What becomes of the chains when nhamd stops: `keep` (default: they
    /// go on forwarding, and the next nhamd on this state directory
    /// re-attaches to them, losing no held packet) or `stop` (deleted).
    #[arg(long, value_enum)]
    on_exit: Option<OnExit>,
    /// The `nham-sff` executable (default: next to nhamd, then PATH).
    #[arg(long)]
    sff_bin: Option<PathBuf>,
    /// Join a cluster of hosts as this host name (needs --etcd and
    /// --heartbeat-listen; the config file's `[cluster]` table has the
    /// rest).
    #[arg(long)]
    host_name: Option<String>,
    /// etcd client endpoints, comma-separated (`http://10.0.0.1:2379,...`).
    #[arg(long, value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// Where this host hears heartbeats from the others: its underlay
    /// address and a UDP port (`10.0.0.1:50052`).
    #[arg(long)]
    heartbeat_listen: Option<SocketAddr>,
    /// This host's API as other hosts reach it (default: `unix:` and the
    /// socket with --unix, else `http://` and the TCP listen address).
    #[arg(long)]
    advertise_api: Option<String>,
    /// Where this cluster host's peer service listens on the underlay
    /// (`10.0.0.1:50053`): other hosts' checkpoint copies. With it, each
    /// checkpoint here is committed only once another host keeps a copy.
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// The cluster's shared token (a file, 16 or more printable ASCII
    /// characters): peers' calls carry it; a call without it is refused.
    #[arg(long)]
    cluster_token_file: Option<PathBuf>,
    /// Print nhamd's man page (roff) and exit.
    #[arg(long, hide = true)]
    man: bool,
    /// Print shell completions for nhamd and exit.
    #[arg(long, hide = true, value_enum, value_name = "SHELL")]
    completions: Option<clap_complete::Shell>,
}

/// The `[cluster]` table: this host's part in a cluster of hosts.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ClusterConfig {
    host_name: Option<String>,
    etcd: Option<Vec<String>>,
    heartbeat_listen: Option<SocketAddr>,
    advertise_api: Option<String>,
    /// Heartbeat period, ms (default 10).
    heartbeat_interval_ms: Option<u64>,
    /// Silent intervals before a host is judged down (default 5).
    heartbeat_misses: Option<u32>,
    /// The registration lease's TTL, s (default 3).
    lease_ttl_s: Option<u64>,
    peer_listen: Option<SocketAddr>,
    token_file: Option<PathBuf>,
}

/// What becomes of the chains when nhamd stops.
#[derive(clap::ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum OnExit {
    /// Leave them running for the next nhamd.
    Keep,
    /// Delete them.
    Stop,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    listen: Option<SocketAddr>,
    unix: Option<PathBuf>,
    socket_group: Option<String>,
    insecure_tcp: Option<bool>,
    metrics_listen: Option<SocketAddr>,
    log_format: Option<nham_control::LogFormat>,
    log_max_bytes: Option<u64>,
    /// Client certificate names per role (mutual TLS).
    roles: Option<nham_control::api::auth::Roles>,
    sff_core: Option<usize>,
    sff_cores: Option<Vec<usize>>,
    hold_packets: Option<usize>,
    sff_nice: Option<i32>,
    sff_spin: Option<u32>,
    expedite_rcu: Option<bool>,
    state_dir: Option<PathBuf>,
    scratch_dir: Option<PathBuf>,
    checkpoint_interval_ms: Option<u64>,
    checkpoint_concurrency: Option<usize>,
    probe_interval_ms: Option<u64>,
    probe_threshold: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    on_exit: Option<OnExit>,
    sff_bin: Option<PathBuf>,
    #[serde(default)]
    cluster: ClusterConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.man {
        clap_mangen::Man::new(<Args as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .context("writing the man page")?;
        return Ok(());
    }
    if let Some(shell) = args.completions {
        let mut cmd = <Args as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cmd, "nhamd", &mut std::io::stdout());
        return Ok(());
    }
    let config: Config = match &args.config {
        Some(path) => toml::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?,
        None => Config::default(),
    };
    // RUST_LOG (`info` when unset), as operators expect; text or JSON.
    let log_format = args.log_format.or(config.log_format).unwrap_or_default();
    nham_control::init_logging(log_format);
    // Where the API listens: a Unix socket unless a TCP address is given
    // (and then only with mutual TLS, unless said otherwise).
    let listen = args.listen.or(config.listen);
    let unix = match (args.unix.or(config.unix), listen) {
        (Some(_), Some(_)) => {
            anyhow::bail!("listen on a Unix socket (unix) or TCP (listen), not both")
        }
        (Some(path), None) => Some(path),
        (None, Some(_)) => None,
        (None, None) => Some(PathBuf::from(DEFAULT_SOCKET)),
    };
    let tls_cert = args.tls_cert.or(config.tls_cert);
    let tls_key = args.tls_key.or(config.tls_key);
    let tls_client_ca = args.tls_client_ca.or(config.tls_client_ca);
    let insecure_tcp = args.insecure_tcp || config.insecure_tcp.unwrap_or(false);
    let roles = config.roles;
    if let Some(addr) = listen {
        let mutual = tls_cert.is_some() && tls_key.is_some() && tls_client_ca.is_some();
        if !mutual && !insecure_tcp {
            anyhow::bail!(
                "TCP ({addr}) without mutual TLS would let whoever reaches the port run commands \
                 as root: give tls_cert, tls_key and tls_client_ca, listen on the Unix socket \
                 (the default, {DEFAULT_SOCKET}), or pass --insecure-tcp"
            );
        }
        if !mutual {
            tracing::warn!(
                "--insecure-tcp: the API on {addr} is open to whoever reaches it, and creating a \
                 chain runs commands as root"
            );
        }
    }
    match (&roles, &tls_client_ca) {
        (Some(_), None) => anyhow::bail!(
            "[roles] needs mutual TLS (tls_client_ca): they are client certificate names"
        ),
        (None, Some(_)) => tracing::warn!(
            "no [roles]: every client whose certificate the client CA signed is an operator"
        ),
        _ => {}
    }
    if config.sff_core.is_some() && config.sff_cores.is_some() {
        anyhow::bail!("the config sets both sff_core and sff_cores: keep one");
    }
    let sff = SffOptions {
        cores_given: Default::default(),
        cores: args
            .sff_cores
            .or(args.sff_core.map(|c| vec![c]))
            .or(config.sff_cores)
            .or(config.sff_core.map(|c| vec![c]))
            .unwrap_or_default(),
        binary: args.sff_bin.or(config.sff_bin),
        hold_packets: args
            .hold_packets
            .or(config.hold_packets)
            .unwrap_or(nham_control::runtime::DEFAULT_HOLD_PACKETS),
        nice: args
            .sff_nice
            .or(config.sff_nice)
            .unwrap_or(nham_control::runtime::DEFAULT_SFF_NICE),
        poll: nham_sff::PollPolicy {
            spin: args
                .sff_spin
                .or(config.sff_spin)
                .unwrap_or(nham_sff::PollPolicy::default().spin),
            ..nham_sff::PollPolicy::default()
        },
        log_format,
    };
    let on_exit = args.on_exit.or(config.on_exit).unwrap_or(OnExit::Keep);
    let state_dir = args
        .state_dir
        .or(config.state_dir)
        .unwrap_or_else(|| PathBuf::from("/var/lib/nham"));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let scratch = args.scratch_dir.or(config.scratch_dir).unwrap_or_else(|| {
        // Named after the state directory: a restarted daemon clears
        // what the last one left.
        let scratch = PathBuf::from(format!(
            "/dev/shm/nham-{}",
            nham_control::chain::state_tag(&state_dir)
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        scratch
    });
    let interval = args
        .checkpoint_interval_ms
        .or(config.checkpoint_interval_ms)
        .unwrap_or(1000);
    anyhow::ensure!(
        (10..=3_600_000).contains(&interval),
        "checkpoint_interval_ms {interval} must be 10 to 3600000"
    );
    let checkpoint_concurrency = args
        .checkpoint_concurrency
        .or(config.checkpoint_concurrency)
        .unwrap_or_else(nham_control::chain::default_checkpoint_concurrency);
    anyhow::ensure!(
        (1..=1024).contains(&checkpoint_concurrency),
        "checkpoint_concurrency {checkpoint_concurrency} must be 1 to 1024"
    );
    let probe_interval = args
        .probe_interval_ms
        .or(config.probe_interval_ms)
        .unwrap_or(50);
    anyhow::ensure!(
        (5..=60_000).contains(&probe_interval),
        "probe_interval_ms {probe_interval} must be 5 to 60000"
    );
    let probe_threshold = args.probe_threshold.or(config.probe_threshold).unwrap_or(3);
    anyhow::ensure!(
        (1..=1000).contains(&probe_threshold),
        "probe_threshold {probe_threshold} must be 1 to 1000"
    );
    let cluster = config.cluster;
    let mut joined_cluster = None;
    let host_name = args.host_name.or(cluster.host_name);
    if let Some(host) = host_name {
        let etcd = args
            .etcd
            .or(cluster.etcd)
            .context("a cluster host needs etcd endpoints (--etcd or [cluster] etcd)")?;
        let heartbeat = args.heartbeat_listen.or(cluster.heartbeat_listen).context(
            "a cluster host needs its heartbeat address (--heartbeat-listen or [cluster] heartbeat_listen)",
        )?;
        let api = args
            .advertise_api
            .or(cluster.advertise_api)
            .unwrap_or_else(|| match (&unix, listen) {
                (None, Some(listen)) if tls_cert.is_some() => format!("https://{listen}"),
                (None, Some(listen)) => format!("http://{listen}"),
                _ => format!("unix:{}", path_or_default(&unix)),
            });
        let peer = args.peer_listen.or(cluster.peer_listen);
        let token_file = args.cluster_token_file.or(cluster.token_file).context(
            "a cluster host needs the cluster's token (--cluster-token-file or [cluster] token_file)",
        )?;
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .as_bytes()
            .to_vec();
        let options = nham_control::cluster::ClusterOptions {
            host,
            api,
            heartbeat,
            etcd,
            heartbeat_interval: std::time::Duration::from_millis(
                cluster.heartbeat_interval_ms.unwrap_or(10),
            ),
            misses: cluster.heartbeat_misses.unwrap_or(5),
            lease_ttl: std::time::Duration::from_secs(cluster.lease_ttl_s.unwrap_or(3)),
            peer,
            token,
        };
        let joined =
            nham_control::cluster::Cluster::start(options).context("joining the cluster")?;
        tracing::info!(
            "host {} of a cluster; heartbeats on {}",
            joined.record().name,
            joined.record().heartbeat
        );
        joined_cluster = Some(joined);
    }
    let store = nham_control::vsm::database::Store::open(&state_dir)
        .with_context(|| format!("opening the state database in {}", state_dir.display()))?;
    let state = StateOptions {
        store: std::sync::Arc::new(store),
        logs: state_dir.join("logs"),
        scratch: scratch.clone(),
        checkpoint_interval: std::time::Duration::from_millis(interval),
        checkpoint_concurrency,
        probe_interval: std::time::Duration::from_millis(probe_interval),
        probe_threshold,
        // Copies off this host once it has a peer listener.
        copies: joined_cluster
            .as_ref()
            .filter(|c| c.record().peer.is_some())
            .map(|c| c.clone() as std::sync::Arc<dyn nham_control::vsm::checkpointer::OffHostCopy>),
        cluster: joined_cluster.clone(),
    };
    let cgroup_dir = state.cgroup_dir();
    let mut hosted = None;
    if let (Some(c), Some(addr)) = (
        &joined_cluster,
        joined_cluster.as_ref().and_then(|c| c.record().peer),
    ) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the peer listener {addr}"))?;
        let underlay = match c.underlay() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(a) => anyhow::bail!(
                "underlay address {a}: tunnels to VNFs on other hosts are VXLAN over IPv4"
            ),
        };
        let hosting = nham_control::cluster::hosting::VnfHost::new(
            underlay,
            state.hosted_netns_prefix(),
            state_dir.join("hosted"),
            state.cgroup_dir().map(|d| d.join("_hosted")),
        );
        hosted = Some(hosting.clone());
        let router = nham_control::api::server::peer_router(
            nham_control::cluster::CopyKeeper::new(state.store.clone()),
            hosting,
            &c.token(),
            c.record().name.clone(),
        );
        tracing::info!("peer service (checkpoint copies) on {addr}");
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = router.serve_with_incoming(incoming).await {
                tracing::error!("the peer service stopped: {e}");
            }
        });
    }
    let rcu_before = if args.expedite_rcu || config.expedite_rcu.unwrap_or(false) {
        Some(expedite_rcu(true).context("expedite_rcu")?)
    } else {
        None
    };
    // A socket file someone answers on is another nhamd's: never taken
    // over. Refused before any chain is taken back (a failure after that
    // would drop the daemon and tear down the chains it had re-attached).
    if let Some(path) = &unix {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{}: another nhamd is listening there (stop it, or give this one --unix)",
                path.display()
            );
        }
    }
    nham_netns::sweep_stale();
    let daemon = Daemon::new(sff, state);
    if let Some(c) = joined_cluster {
        daemon.join_cluster(c);
    }
    let restored = daemon
        .restore_chains()
        .await
        .context("taking back the recorded chains")?;
    if restored != Default::default() {
        eprintln!("nhamd: recorded chains: {restored:?}");
    }
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            anyhow::ensure!(
                unix.is_none(),
                "TLS is served on TCP; a Unix socket is protected by its file mode"
            );
            let mut tls = tonic::transport::ServerTlsConfig::new()
                .identity(nham_control::tls_identity(&cert, &key).with_context(|| {
                    format!("reading {} and {}", cert.display(), key.display())
                })?);
            if let Some(ca) = tls_client_ca {
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(
                    std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?,
                ));
            }
            Some(tls)
        }
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both tls_cert and tls_key"),
    };
    if let Some(addr) = args.metrics_listen.or(config.metrics_listen) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener {addr}"))?;
        tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
        let metrics = std::sync::Arc::new(nham_control::metrics::Metrics::new());
        nham_control::api::metrics_http::follow(&daemon, metrics.clone());
        let served = nham_control::api::metrics_http::serve(
            listener,
            daemon.clone(),
            metrics,
            std::future::pending(),
        );
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::error!("metrics listener: {e}");
            }
        });
    }
    // VNF and SFF logs stay under their cap.
    {
        let max = args
            .log_max_bytes
            .or(config.log_max_bytes)
            .unwrap_or(nham_control::runtime::logs::DEFAULT_MAX_BYTES);
        // (In VNFs' working directories, only the log NHAM gave them.)
        let dirs = [
            (state_dir.join("logs"), None),
            (
                std::path::PathBuf::from(nham_control::cluster::hosting::HOSTED_DIR),
                Some("vnf.log"),
            ),
        ];
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                let dirs = dirs.clone();
                let capped = tokio::task::spawn_blocking(move || {
                    dirs.iter()
                        .map(|(d, only)| nham_control::runtime::logs::cap(d, max, *only))
                        .fold((0, None), |(n, e), (m, f)| (n + m, e.or(f)))
                })
                .await;
                if let Ok((n, error)) = capped {
                    if n > 0 {
                        tracing::info!("{n} log files over {max} bytes kept as .1 and emptied");
                    }
                    if let Some(e) = error {
                        tracing::warn!("capping logs: {e}");
                    }
                }
            }
        });
    }
    let router = nham_control::api::server::router(daemon.clone(), tls, roles).await?;
    let (stop_tx, stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
    };
    let socket_file = unix.clone();
    watchdog(&daemon);
    let chains = daemon.alive().await;
    let ready = |at: String| {
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("{chains} chains; API on {at}")),
        ])
    };
    match (unix, listen) {
        (Some(path), _) => {
            let listener = bind_unix(&path, args.socket_group.or(config.socket_group))?;
            tracing::info!("nhamd listening on unix:{}", path.display());
            eprintln!("nhamd listening on unix:{}", path.display());
            ready(format!("unix:{}", path.display()));
            let serve = router.serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                shutdown,
            );
            serve_until_stopped(serve, stopped).await?;
        }
        (None, None) => unreachable!("a Unix socket by default"),
        (None, Some(listen)) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let addr = listener.local_addr()?;
            eprintln!("nhamd listening on {addr}");
            ready(addr.to_string());
            let serve = router.serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            );
            serve_until_stopped(serve, stopped).await?;
        }
    }
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status(match on_exit {
            OnExit::Keep => "stopping; chains left running for the next nhamd",
            OnExit::Stop => "stopping; deleting the chains",
        }),
    ]);
    // Chains still being started finish first (their processes would
    // otherwise be left with no record); 20 s at most.
    let still = daemon
        .settle_starts(std::time::Duration::from_secs(20))
        .await;
    if !still.is_empty() {
        tracing::warn!("stopping while chains {still:?} are still starting");
    }
    // The other hosts are told this host leaves on purpose (not judged
    // down), and its registration goes.
    daemon
        .leave_cluster(std::time::Duration::from_secs(1))
        .await;
    // What it ran for other hosts goes with it (a next nhamd could not
    // take it back): their owners see those VNFs fail.
    if let Some(h) = hosted {
        h.stop_all();
    }
    match on_exit {
        OnExit::Keep => {
            daemon.detach_all().await;
            eprintln!("nhamd: stopped; chains left running for the next nhamd");
        }
        OnExit::Stop => daemon.delete_all().await,
    }
    drop(daemon);
    let _ = std::fs::remove_dir_all(&scratch);
    if let Some(path) = socket_file {
        let _ = std::fs::remove_file(path);
    }
    // The groups left empty (those of VNFs left running for the next
    // nhamd stay, with them).
    if let Some(dir) = cgroup_dir {
        nham_control::runtime::cgroup::remove_tree(&dir);
    }
    if let Some(before) = rcu_before {
        let _ = expedite_rcu(before);
    }
    // Done: exit now. Returning would drop the runtime, which waits for
    // every blocking task still parked (VNF exit watchers, SFF reads),
    // and a stop would hang until the service manager's SIGKILL.
    tracing::info!("nhamd: stopped");
    std::process::exit(0)
}

/// How long calls still open when nhamd is told to stop may go on: an
/// event watcher's stream never ends by itself, and the graceful shutdown
/// would wait for it until the service manager's stop timeout (30 s, then
/// SIGKILL, with nothing detached cleanly).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves the API until the stop signal (`stopped` turns true), then lets
/// open calls finish for [`STOP_GRACE`] and closes what is left.
async fn serve_until_stopped(
    serve: impl std::future::Future<Output = Result<(), tonic::transport::Error>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tokio::pin!(serve);
    tokio::select! {
        r = &mut serve => return Ok(r?),
        _ = stopped.wait_for(|s| *s) => {}
    }
    match tokio::time::timeout(STOP_GRACE, serve).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            tracing::info!(
                "calls still open {STOP_GRACE:?} after the stop signal (event watchers): closed"
            );
            Ok(())
        }
    }
}

/// Tells the service manager (systemd, `Type=notify`: `NOTIFY_SOCKET` set)
/// how nhamd is: READY=1 once its API listens (chains already
/// re-attached), STOPPING=1 when it stops, WATCHDOG=1 while it answers.
/// Without `NOTIFY_SOCKET`, nothing.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!("telling the service manager: {e}");
        }
    }
}

/// With a watchdog asked for (`WatchdogSec=`: `WATCHDOG_USEC` set), pings
/// it four times per period, each time the daemon answers
/// ([`Daemon::alive`]) within a quarter period. A daemon stuck on its
/// chains' lock stops pinging, and the service manager restarts it; the
/// chains forward on meanwhile (their processes are out of nhamd's cgroup)
/// and the next nhamd re-attaches to them.
fn watchdog(daemon: &std::sync::Arc<Daemon>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = std::time::Duration::from_micros(usec);
    let tick = period / 4;
    tracing::info!("watchdog: a ping every {tick:?} (period {period:?})");
    let daemon = std::sync::Arc::downgrade(daemon);
    tokio::spawn(async move {
        let mut t = tokio::time::interval(tick);
        loop {
            t.tick().await;
            let Some(d) = daemon.upgrade() else { return };
            match tokio::time::timeout(tick, d.alive()).await {
                Ok(_) => notify(&[sd_notify::NotifyState::Watchdog]),
                Err(_) => tracing::error!(
                    "watchdog: the daemon did not answer within {tick:?}; no ping (restarted after {period:?} without one)"
                ),
            }
        }
    });
}

/// Sets `/sys/kernel/rcu_expedited`; returns what it was.
/// Where the API listens when no address is given.
const DEFAULT_SOCKET: &str = "/run/nham/nhamd.sock";

fn path_or_default(unix: &Option<PathBuf>) -> String {
    unix.as_deref()
        .map_or(DEFAULT_SOCKET.to_string(), |p| p.display().to_string())
}

/// Listens on Unix socket `path` (its directory made if missing, a stale
/// socket replaced), mode 0660: root and `group` (a name or a number;
/// root's group if `None`) may connect, nobody else.
fn bind_unix(
    path: &std::path::Path,
    group: Option<String>,
) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let gid = match group.as_deref() {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => nix::unistd::Gid::from_raw(n),
            Err(_) => {
                nix::unistd::Group::from_name(g)
                    .with_context(|| format!("looking up group {g}"))?
                    .with_context(|| format!("socket_group {g}: no such group"))?
                    .gid
            }
        }),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // (A socket another nhamd answers on was refused before the chains
    // were taken back; one nobody answers on is a stopped daemon's.)
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod 0660 {}", path.display()))?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("chgrp {gid} {}", path.display()))?;
    }
    Ok(listener)
}

fn expedite_rcu(on: bool) -> anyhow::Result<bool> {
    const KNOB: &str = "/sys/kernel/rcu_expedited";
    let before = std::fs::read_to_string(KNOB)
        .with_context(|| format!("reading {KNOB}"))?
        .trim()
        == "1";
    std::fs::write(KNOB, if on { "1" } else { "0" })
        .with_context(|| format!("writing {KNOB} (root needed)"))?;
    tracing::info!("{KNOB}: {} (was {})", u8::from(on), u8::from(before));
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `packaging/nhamd.toml` (installed as `/etc/nham/nhamd.toml`) shows
    /// every key nhamd knows: with its `#key = …` and `#[table]` lines
    /// uncommented it parses (unknown keys are refused) and leaves no key
    /// unset.
    #[test]
    fn the_example_configuration_shows_every_key() {
        let text = include_str!("../../../packaging/nhamd.toml");
        let active: Vec<&str> = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => {
                    rest
                }
                _ => l,
            })
            .collect();
        let config: Config = toml::from_str(&active.join("\n")).expect("the example parses");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("None"),
            "keys the example leaves out (None): {shown}"
        );
        let roles = config.roles.expect("[roles]");
        assert!(!roles.operators.is_empty() && !roles.viewers.is_empty());
    }
}
