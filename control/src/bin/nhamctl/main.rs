//! `nhamctl`: the command line for `nhamd`'s gRPC API, for people
//! (tables) and scripts (`-o json|yaml`, exit codes by error class).
//!
//! Exit codes: 0 done; 1 any other error; 2 a bad command line (clap);
//! 3 not found; 4 invalid argument; 5 refused in the current state
//! (failed precondition, already exists, aborted); 6 nhamd unreachable or
//! unavailable; 7 not allowed (unauthenticated, permission denied);
//! 8 timed out (`--timeout`); 9 data loss (a corrupt checkpoint);
//! 10 out of range (`watch --since-id`: events no longer kept; resync).
#![forbid(unsafe_code)]

mod view;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use nham_control::api::{
    self, chain_service_client::ChainServiceClient, event_service_client::EventServiceClient,
    vnf_service_client::VnfServiceClient,
};
use view::Output;

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
    /// How answers are printed.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// Give up after this many seconds (0: never; `watch` never does).
    #[arg(long, default_value_t = 60, global = true)]
    timeout: u64,
    /// The mutating call's request id: run it again with the same id and
    /// the same arguments, and a call that succeeded is answered, not done
    /// twice (kept 10 minutes).
    #[arg(long, global = true, default_value = "")]
    request_id: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Create a chain, from a spec file (`-f chain.toml`) or from flags.
    Create {
        /// The whole spec as TOML: name, spi, ingress, egress,
        /// checkpoint_interval_ms, [[rules]] (protocol, src_prefix,
        /// dst_prefix, src_port = "min-max", dst_port), [[vnfs]] (name,
        /// mechanism, command, env, replicas, host,
        /// checkpoint_interval_ms). See docs/nhamctl.md.
        #[arg(short = 'f', long = "file", conflicts_with_all = ["name", "spi", "vnfs", "ingress", "egress", "protocol", "checkpoint_interval_ms"])]
        file: Option<std::path::PathBuf>,
        /// Chain name.
        #[arg(long, required_unless_present = "file")]
        name: Option<String>,
        /// Service Path Identifier.
        #[arg(long, required_unless_present = "file")]
        spi: Option<u32>,
        /// A VNF as `NAME=MECHANISM:COMMAND` (mechanism none, 0r, 1r-as,
        /// 1r-aa, mr-aa); the command is split as a shell would (quotes
        /// keep spaces); `{iface}` in it is its interface. Repeat for each
        /// VNF, in order.
        #[arg(long = "vnf", required_unless_present = "file")]
        vnfs: Vec<String>,
        /// IP protocol number the chain takes (0: any).
        #[arg(long, default_value_t = 0)]
        protocol: u32,
        /// Ingress interface.
        #[arg(long, required_unless_present = "file")]
        ingress: Option<String>,
        /// Egress interface.
        #[arg(long, required_unless_present = "file")]
        egress: Option<String>,
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
    /// Inject a fault.
    Inject {
        chain: String,
        vnf: String,
        #[arg(value_enum)]
        fault: FaultArg,
        /// Land it while the VNF is frozen for a checkpoint.
        #[arg(long)]
        during_checkpoint: bool,
        /// MR-AA: crash this member (0: the VNF's own process).
        #[arg(long, default_value_t = 0)]
        member: u32,
    },
    /// Heal a VNF: restart it from its latest checkpoint (protected VNFs)
    /// or afresh (none).
    Heal {
        chain: String,
        vnf: String,
        #[arg(long, value_enum, default_value_t = HealArg::Maintenance)]
        cause: HealArg,
    },
    /// Change a VNF's mechanism, under traffic.
    SetMechanism {
        chain: String,
        vnf: String,
        #[arg(value_enum)]
        mechanism: MechanismArg,
        /// Replicas, for mr-aa (2 to 8; 0 keeps the count).
        #[arg(long, default_value_t = 0)]
        replicas: u32,
    },
    /// Checkpoint a VNF now.
    Checkpoint { chain: String, vnf: String },
    /// Print events as they happen (times in UTC; `-o json`: one object
    /// per line).
    Watch {
        /// Only this chain.
        #[arg(long, default_value = "")]
        chain: String,
        /// Resume: the events after this id first (those the daemon still
        /// keeps), then new ones.
        #[arg(long)]
        since_id: Option<u64>,
    },
    /// Data-path counters of a chain.
    Stats { chain: String },
    /// The hosts of the cluster this daemon is in, whether each is alive,
    /// and what runs where.
    Hosts,
    /// The daemon's version and the API it serves.
    Version,
    /// The gRPC services the daemon offers (server reflection).
    Services,
    /// The daemon's health (grpc.health.v1), overall or of one service.
    Health {
        #[arg(default_value = "")]
        service: String,
    },
    /// Shell completions for nhamctl on standard output (for example
    /// `nhamctl completion bash > /etc/bash_completion.d/nhamctl`); asks
    /// no daemon.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// nhamctl's man page (roff) on standard output; asks no daemon.
    #[command(hide = true)]
    Man,
}

/// A VNF's mechanism.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum MechanismArg {
    /// Not protected (restarted afresh).
    None,
    /// Restored from its last checkpoint.
    #[value(name = "0r")]
    #[serde(rename = "0r")]
    ZeroR,
    /// A standby restored from each checkpoint.
    #[value(name = "1r-as")]
    #[serde(rename = "1r-as")]
    OneRAs,
    /// A replica restored after each checkpoint, resumed at once.
    #[value(name = "1r-aa")]
    #[serde(rename = "1r-aa")]
    OneRAa,
    /// Several members fed the same input.
    #[value(name = "mr-aa")]
    #[serde(rename = "mr-aa")]
    MrAa,
}

impl MechanismArg {
    fn api(self) -> api::Mechanism {
        match self {
            Self::None => api::Mechanism::None,
            Self::ZeroR => api::Mechanism::Mechanism0r,
            Self::OneRAs => api::Mechanism::Mechanism1rAs,
            Self::OneRAa => api::Mechanism::Mechanism1rAa,
            Self::MrAa => api::Mechanism::MrAa,
        }
    }
}

/// A fault to inject.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum FaultArg {
    /// SIGKILL.
    Crash,
    /// SIGSTOP (found by the Failure Detector's probes).
    Hang,
    /// Its link down.
    CutOff,
}

/// Why a VNF is healed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum HealArg {
    /// The orchestrator saw it fail.
    Failure,
    /// Planned.
    Maintenance,
}

fn mechanism(s: &str) -> anyhow::Result<api::Mechanism> {
    <MechanismArg as clap::ValueEnum>::from_str(s, true)
        .map(MechanismArg::api)
        .map_err(|_| anyhow::anyhow!("unknown mechanism {s:?} (none, 0r, 1r-as, 1r-aa, mr-aa)"))
}

/// `NAME=MECHANISM:COMMAND`, the command split as a shell would.
fn vnf_spec(s: &str) -> anyhow::Result<api::VnfSpec> {
    let (name, rest) = s.split_once('=').context("--vnf NAME=MECHANISM:COMMAND")?;
    let (mech, cmd) = rest
        .split_once(':')
        .context("--vnf NAME=MECHANISM:COMMAND")?;
    Ok(api::VnfSpec {
        name: name.to_string(),
        command: words(cmd).with_context(|| format!("--vnf {name}"))?,
        mechanism: mechanism(mech)? as i32,
        ..Default::default()
    })
}

/// A command line split as a shell would (quotes keep spaces).
fn words(cmd: &str) -> anyhow::Result<Vec<String>> {
    shlex::split(cmd).with_context(|| format!("unbalanced quotes in the command {cmd:?}"))
}

/// A chain spec file (`create -f`).
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ChainFile {
    name: String,
    spi: u32,
    ingress: String,
    egress: String,
    /// Every VNF's checkpoint period unless it sets its own, ms.
    #[serde(default)]
    checkpoint_interval_ms: u32,
    #[serde(default)]
    rules: Vec<RuleFile>,
    vnfs: Vec<VnfFile>,
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    protocol: u32,
    #[serde(default)]
    src_prefix: String,
    #[serde(default)]
    dst_prefix: String,
    /// A port or `min-max`.
    #[serde(default)]
    src_port: Option<Ports>,
    #[serde(default)]
    dst_port: Option<Ports>,
}

/// A port (`53`) or a range (`"1024-65535"`).
#[derive(serde::Deserialize, Debug)]
#[serde(untagged)]
enum Ports {
    One(u32),
    Range(String),
}

impl Ports {
    fn range(&self) -> anyhow::Result<(u32, u32)> {
        match self {
            Self::One(p) => Ok((*p, *p)),
            Self::Range(r) => {
                let (a, b) = r
                    .split_once('-')
                    .with_context(|| format!("port range {r:?}: MIN-MAX"))?;
                Ok((
                    a.trim()
                        .parse()
                        .with_context(|| format!("port range {r:?}"))?,
                    b.trim()
                        .parse()
                        .with_context(|| format!("port range {r:?}"))?,
                ))
            }
        }
    }
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct VnfFile {
    name: String,
    mechanism: MechanismArg,
    /// A command line (split as a shell would) or its words.
    command: Command,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    replicas: u32,
    #[serde(default)]
    host: String,
    #[serde(default)]
    checkpoint_interval_ms: Option<u32>,
    /// Who it runs as (default root).
    #[serde(default)]
    user: String,
    #[serde(default)]
    group: String,
    /// Its only capabilities (default net_raw and sys_admin).
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    limits: Option<LimitsFile>,
}

/// A VNF's `[vnfs.limits]`.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default)]
    memory_max_bytes: u64,
    #[serde(default)]
    cpu_max_millicpus: u32,
    #[serde(default)]
    pids_max: u32,
}

#[derive(serde::Deserialize, Debug)]
#[serde(untagged)]
enum Command {
    Line(String),
    Words(Vec<String>),
}

impl ChainFile {
    fn spec(self) -> anyhow::Result<api::ChainSpec> {
        let rules = if self.rules.is_empty() {
            vec![api::ClassifierRule::default()]
        } else {
            (self.rules.into_iter())
                .map(|r| {
                    let (src_port_min, src_port_max) =
                        r.src_port.as_ref().map_or(Ok((0, 0)), Ports::range)?;
                    let (dst_port_min, dst_port_max) =
                        r.dst_port.as_ref().map_or(Ok((0, 0)), Ports::range)?;
                    Ok(api::ClassifierRule {
                        src_prefix: r.src_prefix,
                        dst_prefix: r.dst_prefix,
                        protocol: r.protocol,
                        src_port_min,
                        src_port_max,
                        dst_port_min,
                        dst_port_max,
                    })
                })
                .collect::<anyhow::Result<_>>()?
        };
        let every = self.checkpoint_interval_ms;
        let vnfs = (self.vnfs.into_iter())
            .map(|v| {
                Ok(api::VnfSpec {
                    command: match v.command {
                        Command::Line(l) => words(&l).with_context(|| format!("vnf {}", v.name))?,
                        Command::Words(w) => w,
                    },
                    name: v.name,
                    env: v.env,
                    mechanism: v.mechanism.api() as i32,
                    replicas: v.replicas,
                    checkpoint_interval_ms: v.checkpoint_interval_ms.unwrap_or(every),
                    host: v.host,
                    user: v.user,
                    group: v.group,
                    capabilities: v.capabilities,
                    limits: v.limits.map(|l| api::ResourceLimits {
                        memory_max_bytes: l.memory_max_bytes,
                        cpu_max_millicpus: l.cpu_max_millicpus,
                        pids_max: l.pids_max,
                    }),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(api::ChainSpec {
            name: self.name,
            spi: self.spi,
            vnfs,
            rules,
            ingress_interface: self.ingress,
            egress_interface: self.egress,
        })
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match &args.command {
        Cmd::Completion { shell } => {
            clap_complete::generate(
                *shell,
                &mut Args::command(),
                "nhamctl",
                &mut std::io::stdout(),
            );
            return std::process::ExitCode::SUCCESS;
        }
        Cmd::Man => {
            return match clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout()) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nhamctl: writing the man page: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    match ask(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nhamctl: {e:#}");
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code of error `e` (see the crate's doc).
fn exit_code(e: &anyhow::Error) -> u8 {
    use tonic::Code;
    if e.downcast_ref::<tokio::time::error::Elapsed>().is_some() {
        return 8;
    }
    if e.chain()
        .any(|c| c.downcast_ref::<tonic::transport::Error>().is_some())
    {
        return 6;
    }
    match e.downcast_ref::<tonic::Status>().map(tonic::Status::code) {
        Some(Code::NotFound) => 3,
        Some(Code::InvalidArgument) => 4,
        Some(Code::OutOfRange) => 10,
        Some(Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted) => 5,
        Some(Code::Unavailable) => 6,
        Some(Code::Unauthenticated | Code::PermissionDenied) => 7,
        Some(Code::DeadlineExceeded) => 8,
        Some(Code::DataLoss) => 9,
        _ => 1,
    }
}

/// Asks the daemon what `args` says, following a redirect to a chain's
/// owner once.
async fn ask(args: Args) -> anyhow::Result<()> {
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
    let limit = match (&args.command, args.timeout) {
        (Cmd::Watch { .. }, _) | (_, 0) => None,
        (_, s) => Some(std::time::Duration::from_secs(s)),
    };
    // A chain another host owns: that host's nhamd is asked again, once,
    // with the same credentials (its address comes with the refusal).
    let mut addr = args.addr.clone();
    let mut tls_now = first_tls;
    for redirected in [false, true] {
        let attempt = async {
            let channel = nham_control::connect_with(&addr, tls_now.take())
                .await
                .with_context(|| format!("connecting to nhamd at {addr}"))?;
            run(channel, args.command.clone(), args.output, &args.request_id).await
        };
        let result = match limit {
            Some(limit) => tokio::time::timeout(limit, attempt)
                .await
                .unwrap_or_else(|elapsed| Err(anyhow::Error::new(elapsed))),
            None => attempt.await,
        };
        match result {
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

/// Runs `command` against the daemon at `channel`, printing as `output`
/// says.
async fn run(
    channel: tonic::transport::Channel,
    command: Cmd,
    output: Output,
    request_id: &str,
) -> anyhow::Result<()> {
    use view::{print_doc, ChainView, HostView, VnfView};
    let mut chains = ChainServiceClient::new(channel.clone());
    let mut vnfs = VnfServiceClient::new(channel.clone());
    let mut events = EventServiceClient::new(channel.clone());
    let health_channel = channel;
    let show_chain = |c: Option<api::Chain>| -> anyhow::Result<()> {
        let c = ChainView::from(c.context("the answer has no chain")?);
        if !print_doc(output, &c)? {
            println!(
                "chain {} (SPI {}): {}, {} → {}",
                c.name, c.spi, c.state, c.ingress, c.egress
            );
            println!("{}", view::chains_table(std::slice::from_ref(&c)));
        }
        Ok(())
    };
    let show_vnf = |v: Option<api::VnfStatus>| -> anyhow::Result<()> {
        let v = VnfView::from(v.context("the answer has no VNF")?);
        if !print_doc(output, &v)? {
            println!(
                "{}: {} ({}), pid {}, {} failures, {} recoveries, {} checkpoints",
                v.name, v.state, v.mechanism, v.pid, v.failures, v.recoveries, v.checkpoints
            );
        }
        Ok(())
    };
    match command {
        // Answered in main, without a daemon.
        Cmd::Completion { .. } | Cmd::Man => {}
        Cmd::Create {
            file,
            name,
            spi,
            vnfs: specs,
            protocol,
            ingress,
            egress,
            checkpoint_interval_ms,
        } => {
            let spec = match file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    toml::from_str::<ChainFile>(&text)
                        .with_context(|| format!("{}", path.display()))?
                        .spec()?
                }
                None => api::ChainSpec {
                    name: name.unwrap_or_default(),
                    spi: spi.unwrap_or_default(),
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
                    ingress_interface: ingress.unwrap_or_default(),
                    egress_interface: egress.unwrap_or_default(),
                },
            };
            let r = chains
                .create_chain(api::CreateChainRequest {
                    request_id: request_id.to_string(),
                    spec: Some(spec),
                })
                .await?;
            show_chain(r.into_inner().chain)?;
        }
        Cmd::Get { name } => show_chain(
            chains
                .get_chain(api::GetChainRequest { name })
                .await?
                .into_inner()
                .chain,
        )?,
        Cmd::List => {
            let all: Vec<ChainView> = (chains.list_chains(api::ListChainsRequest {}).await?)
                .into_inner()
                .chains
                .into_iter()
                .map(ChainView::from)
                .collect();
            if !print_doc(output, &all)? {
                println!("{}", view::chains_table(&all));
            }
        }
        Cmd::Delete { name } => {
            chains
                .delete_chain(api::DeleteChainRequest {
                    request_id: request_id.to_string(),
                    name: name.clone(),
                })
                .await?;
            if !print_doc(output, &serde_json::json!({ "deleted": name }))? {
                println!("chain {name} deleted");
            }
        }
        Cmd::Inject {
            chain,
            vnf,
            fault,
            during_checkpoint,
            member,
        } => {
            let fault = match fault {
                FaultArg::Crash => api::Fault::Crash,
                FaultArg::Hang => api::Fault::Hang,
                FaultArg::CutOff => api::Fault::CutOff,
            };
            vnfs.inject_fault(api::InjectFaultRequest {
                request_id: request_id.to_string(),
                chain,
                vnf,
                fault: fault as i32,
                during_checkpoint,
                member,
            })
            .await?;
        }
        Cmd::Heal { chain, vnf, cause } => {
            let cause = match cause {
                HealArg::Failure => api::HealCause::Failure,
                HealArg::Maintenance => api::HealCause::Maintenance,
            };
            let r = vnfs
                .heal_vnf(api::HealVnfRequest {
                    chain,
                    vnf,
                    cause: cause as i32,
                    request_id: request_id.to_string(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if !print_doc(
                output,
                &serde_json::json!({
                    "recovery_ms": r.recovery_ms,
                    "vnf": r.vnf.clone().map(VnfView::from),
                }),
            )? {
                println!("healed in {:.2} ms", r.recovery_ms);
                show_vnf(r.vnf)?;
            }
        }
        Cmd::SetMechanism {
            chain,
            vnf,
            mechanism: m,
            replicas,
        } => {
            let r = vnfs
                .set_mechanism(api::SetMechanismRequest {
                    request_id: request_id.to_string(),
                    chain,
                    vnf,
                    mechanism: m.api() as i32,
                    replicas,
                })
                .await?;
            show_vnf(r.into_inner().vnf)?;
        }
        Cmd::Checkpoint { chain, vnf } => {
            let r = vnfs
                .checkpoint(api::CheckpointRequest {
                    request_id: request_id.to_string(),
                    chain,
                    vnf,
                })
                .await?
                .into_inner();
            if !print_doc(
                output,
                &serde_json::json!({
                    "checkpoint_id": r.checkpoint_id,
                    "size_bytes": r.size_bytes,
                    "pause_ms": r.pause_ms,
                }),
            )? {
                println!(
                    "checkpoint {} ({} bytes, paused {:.2} ms)",
                    r.checkpoint_id, r.size_bytes, r.pause_ms
                );
            }
        }
        Cmd::Watch { chain, since_id } => {
            let mut stream = events
                .watch_events(api::WatchEventsRequest { chain, since_id })
                .await?
                .into_inner();
            while let Some(e) = stream.message().await? {
                match output {
                    Output::Table => println!("{}", view::event_line(&e)),
                    Output::Json => println!("{}", view::event_json(&e)?),
                    Output::Yaml => print!("---\n{}", serde_norway::to_string(&e)?),
                }
            }
        }
        Cmd::Stats { chain } => {
            let s = events
                .get_stats(api::GetStatsRequest { chain })
                .await?
                .into_inner();
            if !print_doc(output, &s)? {
                let v = serde_json::to_value(s)?;
                let rows: Vec<Vec<String>> = (v.as_object().into_iter().flatten())
                    .map(|(k, v)| vec![k.clone(), v.to_string()])
                    .collect();
                println!("{}", view::table(&["COUNTER", "VALUE"], &rows));
            }
        }
        Cmd::Hosts => {
            let r = api::host_service_client::HostServiceClient::new(health_channel)
                .list_hosts(api::ListHostsRequest {})
                .await?
                .into_inner();
            let hosts: Vec<HostView> = r.hosts.into_iter().map(HostView::from).collect();
            let doc = serde_json::json!({
                "hosts": hosts,
                "etcd_reachable": r.etcd_reachable,
                "etcd_error": r.etcd_error,
            });
            if !print_doc(output, &doc)? {
                let rows: Vec<Vec<String>> = hosts
                    .iter()
                    .map(|h| {
                        vec![
                            if h.this_host {
                                format!("{} (this)", h.name)
                            } else {
                                h.name.clone()
                            },
                            h.state.clone(),
                            h.last_heard_ms_ago
                                .map_or_else(|| "never".into(), |ms| format!("{ms:.1} ms ago")),
                            h.api.clone(),
                            h.heartbeat.clone(),
                            if h.vnfs.is_empty() {
                                "-".into()
                            } else {
                                h.vnfs.join(",")
                            },
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    view::table(
                        &["HOST", "STATE", "LAST HEARD", "API", "HEARTBEAT", "VNFS"],
                        &rows
                    )
                );
                if !r.etcd_reachable {
                    println!("etcd unreachable: {}", r.etcd_error);
                }
            }
        }
        Cmd::Version => {
            let v = api::host_service_client::HostServiceClient::new(health_channel)
                .get_version(api::GetVersionRequest {})
                .await?
                .into_inner();
            if !print_doc(output, &v)? {
                println!(
                    "nhamd {} (API {}, SFF protocol {}); nhamctl {}",
                    v.version,
                    v.api,
                    v.sff_protocol,
                    env!("CARGO_PKG_VERSION")
                );
            }
        }
        Cmd::Services => {
            let services = nham_control::list_services(health_channel).await?;
            if !print_doc(output, &services)? {
                for s in services {
                    println!("{s}");
                }
            }
        }
        Cmd::Health { service } => {
            let r = tonic_health::pb::health_client::HealthClient::new(health_channel)
                .check(tonic_health::pb::HealthCheckRequest { service })
                .await?
                .into_inner();
            let status = tonic_health::pb::health_check_response::ServingStatus::try_from(r.status)
                .map_or("UNKNOWN", |s| s.as_str_name());
            if !print_doc(output, &serde_json::json!({ "status": status }))? {
                println!("{status}");
            }
        }
    }
    Ok(())
}
