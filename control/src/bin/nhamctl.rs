//! `nhamctl`: the command line for `nhamd`'s gRPC API.
#![forbid(unsafe_code)]

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use nham_control::api::{
    self, chain_service_client::ChainServiceClient, event_service_client::EventServiceClient,
    vnf_service_client::VnfServiceClient,
};

#[derive(Parser, Debug)]
#[command(name = "nhamctl", version, about = "Command line for the NHAM daemon")]
struct Args {
    /// Daemon address: `unix:/path` (nhamd's default socket), or
    /// `https://host:port` (with --tls-ca, --tls-cert, --tls-key).
    #[arg(long, default_value = "unix:/run/nham/nhamd.sock", env = "NHAM_ADDR")]
    addr: String,
    /// Verify the daemon's TLS certificate against this CA (PEM); use an
    /// `https://` address.
    #[arg(long, env = "NHAM_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for daemons that require one.
    #[arg(long, env = "NHAM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "NHAM_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    /// Name the daemon's certificate carries, if not the address's host.
    #[arg(long)]
    tls_domain: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Create a chain.
    Create {
        /// Chain name.
        #[arg(long)]
        name: String,
        /// Service Path Identifier.
        #[arg(long)]
        spi: u32,
        /// A VNF as `NAME=MECHANISM:COMMAND ...` (mechanism none, 0r,
        /// 1r-as, 1r-aa, mr-aa); `{iface}` in the command is its interface.
        /// Repeat for each VNF, in order.
        #[arg(long = "vnf", required = true)]
        vnfs: Vec<String>,
        /// IP protocol number the chain takes (0: any).
        #[arg(long, default_value_t = 0)]
        protocol: u32,
        /// Ingress interface.
        #[arg(long)]
        ingress: String,
        /// Egress interface.
        #[arg(long)]
        egress: String,
        /// Checkpoint period of every VNF, ms (0: the daemon's default).
        #[arg(long, default_value_t = 0)]
        checkpoint_interval_ms: u32,
    },
    /// Show a chain.
    Get { name: String },
    /// List chains.
    List,
    /// Delete a chain.
    Delete { name: String },
    /// Inject a fault: crash, hang or cut-off.
    Inject {
        chain: String,
        vnf: String,
        fault: String,
        /// Land it while the VNF is frozen for a checkpoint.
        #[arg(long)]
        during_checkpoint: bool,
        /// MR-AA: crash this member (0: the VNF's own process).
        #[arg(long, default_value_t = 0)]
        member: u32,
    },
    /// Heal a VNF: restart it from its latest checkpoint (protected VNFs)
    /// or afresh (MECHANISM_NONE).
    Heal {
        chain: String,
        vnf: String,
        /// failure or maintenance.
        #[arg(long, default_value = "maintenance")]
        cause: String,
    },
    /// Change a VNF's mechanism (none, 0r, 1r-as, 1r-aa, mr-aa).
    SetMechanism {
        chain: String,
        vnf: String,
        mechanism: String,
        /// Replicas, for mr-aa.
        #[arg(long, default_value_t = 0)]
        replicas: u32,
    },
    /// Checkpoint a VNF now.
    Checkpoint { chain: String, vnf: String },
    /// Print events as they happen.
    Watch {
        /// Only this chain.
        #[arg(long, default_value = "")]
        chain: String,
    },
    /// Data-path counters of a chain.
    Stats { chain: String },
    /// The hosts of the cluster this daemon is in, and whether each is
    /// alive (a table: name, state, last heard, API, heartbeat address).
    Hosts,
    /// The gRPC services the daemon offers (server reflection).
    Services,
    /// The daemon's health (grpc.health.v1), overall or of one service.
    Health {
        #[arg(default_value = "")]
        service: String,
    },
}

fn mechanism(s: &str) -> anyhow::Result<api::Mechanism> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "none" => api::Mechanism::None,
        "0r" => api::Mechanism::Mechanism0r,
        "1r-as" => api::Mechanism::Mechanism1rAs,
        "1r-aa" => api::Mechanism::Mechanism1rAa,
        "mr-aa" => api::Mechanism::MrAa,
        other => bail!("unknown mechanism {other:?} (none, 0r, 1r-as, 1r-aa, mr-aa)"),
    })
}

fn vnf_spec(s: &str) -> anyhow::Result<api::VnfSpec> {
    let (name, rest) = s.split_once('=').context("--vnf NAME=MECHANISM:COMMAND")?;
    let (mech, cmd) = rest
        .split_once(':')
        .context("--vnf NAME=MECHANISM:COMMAND")?;
    Ok(api::VnfSpec {
        name: name.to_string(),
        command: cmd.split_whitespace().map(str::to_string).collect(),
        mechanism: mechanism(mech)? as i32,
        ..Default::default()
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut tls = match &args.tls_ca {
        Some(ca) => {
            let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
                tonic::transport::Certificate::from_pem(
                    std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?,
                ),
            );
            if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
                tls = tls.identity(nham_control::tls_identity(cert, key)?);
            }
            Some(tls)
        }
        None => None,
    };
    // (The name given is the first daemon's, not an owner's it redirects
    // to.)
    let first_tls = match (&tls, &args.tls_domain) {
        (Some(t), Some(d)) => Some(t.clone().domain_name(d.clone())),
        _ => tls.clone(),
    };
    // A chain another host owns: that host's nhamd is asked again, once,
    // with the same credentials (its address comes with the refusal).
    let mut addr = args.addr.clone();
    let mut tls_now = first_tls;
    for redirected in [false, true] {
        let channel = nham_control::connect_with(&addr, tls_now.take())
            .await
            .with_context(|| format!("connecting to nhamd at {addr}"))?;
        match run(channel, args.command.clone()).await {
            Err(e) if !redirected => {
                let Some(owner) = e
                    .downcast_ref::<tonic::Status>()
                    .and_then(nham_control::error::owner_api)
                    .filter(|owner| reachable_from(&addr, owner))
                else {
                    return Err(e);
                };
                tls_now = tls.take();
                eprintln!(
                    "{}: asking there",
                    e.downcast_ref::<tonic::Status>()
                        .map_or("", |s| s.message())
                );
                addr = owner;
            }
            r => return r,
        }
    }
    Ok(())
}

/// Whether a daemon at `owner`, named by the one at `asked`, can be asked
/// from here: a Unix socket only by a client of another Unix socket (the
/// same machine, as in a lab of hosts), a TCP address only if it names
/// one host (not `0.0.0.0` or `[::]`).
fn reachable_from(asked: &str, owner: &str) -> bool {
    match owner.strip_prefix("unix:") {
        Some(_) => asked.starts_with("unix:"),
        None => !(owner.contains("//0.0.0.0") || owner.contains("//[::]")),
    }
}

/// Runs `command` against the daemon at `channel`.
async fn run(channel: tonic::transport::Channel, command: Cmd) -> anyhow::Result<()> {
    let mut chains = ChainServiceClient::new(channel.clone());
    let mut vnfs = VnfServiceClient::new(channel.clone());
    let mut events = EventServiceClient::new(channel.clone());
    let health_channel = channel;
    match command {
        Cmd::Create {
            name,
            spi,
            vnfs: specs,
            protocol,
            ingress,
            egress,
            checkpoint_interval_ms,
        } => {
            let spec = api::ChainSpec {
                name,
                spi,
                vnfs: specs
                    .iter()
                    .map(|s| {
                        vnf_spec(s).map(|v| api::VnfSpec {
                            checkpoint_interval_ms,
                            ..v
                        })
                    })
                    .collect::<Result<_, _>>()?,
                rules: vec![api::ClassifierRule {
                    protocol,
                    ..Default::default()
                }],
                ingress_interface: ingress,
                egress_interface: egress,
            };
            let r = chains
                .create_chain(api::CreateChainRequest { spec: Some(spec) })
                .await?;
            println!("{:#?}", r.into_inner().chain);
        }
        Cmd::Get { name } => println!(
            "{:#?}",
            chains
                .get_chain(api::GetChainRequest { name })
                .await?
                .into_inner()
                .chain
        ),
        Cmd::List => {
            for c in chains
                .list_chains(api::ListChainsRequest {})
                .await?
                .into_inner()
                .chains
            {
                let spec = c.spec.unwrap_or_default();
                println!(
                    "{} spi={} state={:?} vnfs={}",
                    spec.name,
                    spec.spi,
                    api::ChainState::try_from(c.state).unwrap_or_default(),
                    c.vnfs.len()
                );
            }
        }
        Cmd::Delete { name } => {
            chains
                .delete_chain(api::DeleteChainRequest { name })
                .await?;
        }
        Cmd::Inject {
            chain,
            vnf,
            fault,
            during_checkpoint,
            member,
        } => {
            let fault = match fault.as_str() {
                "crash" => api::Fault::Crash,
                "hang" => api::Fault::Hang,
                "cut-off" => api::Fault::CutOff,
                other => bail!("unknown fault {other:?} (crash, hang, cut-off)"),
            };
            vnfs.inject_fault(api::InjectFaultRequest {
                chain,
                vnf,
                fault: fault as i32,
                during_checkpoint,
                member,
            })
            .await?;
        }
        Cmd::Heal { chain, vnf, cause } => {
            let cause = match cause.as_str() {
                "failure" => api::HealCause::Failure,
                "maintenance" => api::HealCause::Maintenance,
                other => bail!("unknown cause {other:?} (failure, maintenance)"),
            };
            let r = vnfs
                .heal_vnf(api::HealVnfRequest {
                    chain,
                    vnf,
                    cause: cause as i32,
                    ..Default::default()
                })
                .await?
                .into_inner();
            println!("healed in {:.2} ms: {:?}", r.recovery_ms, r.vnf);
        }
        Cmd::SetMechanism {
            chain,
            vnf,
            mechanism: m,
            replicas,
        } => {
            let r = vnfs
                .set_mechanism(api::SetMechanismRequest {
                    chain,
                    vnf,
                    mechanism: mechanism(&m)? as i32,
                    replicas,
                })
                .await?;
            println!("{:?}", r.into_inner().vnf);
        }
        Cmd::Checkpoint { chain, vnf } => {
            let r = vnfs
                .checkpoint(api::CheckpointRequest { chain, vnf })
                .await?
                .into_inner();
            println!(
                "checkpoint {} ({} bytes, paused {:.2} ms)",
                r.checkpoint_id, r.size_bytes, r.pause_ms
            );
        }
        Cmd::Watch { chain } => {
            let mut stream = events
                .watch_events(api::WatchEventsRequest { chain })
                .await?
                .into_inner();
            while let Some(e) = stream.message().await? {
                println!("{} {} {} {:?}", e.time_unix_nanos, e.chain, e.vnf, e.event);
            }
        }
        Cmd::Stats { chain } => println!(
            "{:#?}",
            events
                .get_stats(api::GetStatsRequest { chain })
                .await?
                .into_inner()
        ),
        Cmd::Hosts => {
            let r = api::host_service_client::HostServiceClient::new(health_channel)
                .list_hosts(api::ListHostsRequest {})
                .await?
                .into_inner();
            println!(
                "{:<20} {:<8} {:>14} {:<28} {:<22} VNFS",
                "HOST", "STATE", "LAST HEARD", "API", "HEARTBEAT"
            );
            for h in &r.hosts {
                let state = api::HostState::try_from(h.state)
                    .map_or("UNKNOWN", |s| s.as_str_name())
                    .trim_start_matches("HOST_STATE_");
                let heard = h
                    .last_heard_ms_ago
                    .map_or_else(|| "never".to_string(), |ms| format!("{ms:.1} ms ago"));
                let name = if h.this_host {
                    format!("{} (this)", h.name)
                } else {
                    h.name.clone()
                };
                println!(
                    "{name:<20} {state:<8} {heard:>14} {:<28} {:<22} {}",
                    h.api,
                    h.heartbeat,
                    if h.vnfs.is_empty() {
                        "-".to_string()
                    } else {
                        h.vnfs.join(",")
                    }
                );
            }
            if !r.etcd_reachable {
                println!("etcd unreachable: {}", r.etcd_error);
            }
        }
        Cmd::Services => {
            for s in nham_control::list_services(health_channel).await? {
                println!("{s}");
            }
        }
        Cmd::Health { service } => {
            let r = tonic_health::pb::health_client::HealthClient::new(health_channel)
                .check(tonic_health::pb::HealthCheckRequest { service })
                .await?
                .into_inner();
            println!(
                "{}",
                tonic_health::pb::health_check_response::ServingStatus::try_from(r.status)
                    .map_or("UNKNOWN", |s| s.as_str_name())
            );
        }
    }
    Ok(())
}
