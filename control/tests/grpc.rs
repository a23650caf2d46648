//! nhamd's gRPC API end to end, in-process: the daemon runs inside a network
//! namespace of its own (so its links never touch the host's), a client
//! talks to it over TCP on localhost. Needs root (CI runs as root).

use std::sync::Arc;
use std::time::Duration;

use nham_control::api::server::ChainSvc;
use nham_control::api::{
    self, chain_service_client::ChainServiceClient, event_service_client::EventServiceClient,
    vnf_service_client::VnfServiceClient,
};
use nham_control::chain::StateOptions;
use nham_control::runtime::SffOptions;
use nham_control::service::Daemon;
use nham_control::vsm::database::Store;
use nham_netns::{unique_name, veth_pair, Netns};
use tonic::Code;

/// A daemon in its own namespace with links `in0`, `out0`, `in1`, `out1`.
struct Harness {
    addr: String,
    state_dir: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
    peers: Netns,
    _daemon_ns: Netns,
}

impl Harness {
    fn start() -> Self {
        nham_netns::sweep_stale();
        let daemon_ns = Netns::create(&unique_name("nhd")).unwrap();
        let peers = Netns::create(&unique_name("nhp")).unwrap();
        veth_pair(&daemon_ns, "in0", &peers, "gen0").unwrap();
        veth_pair(&daemon_ns, "out0", &peers, "sink0").unwrap();
        veth_pair(&daemon_ns, "in1", &peers, "gen1").unwrap();
        veth_pair(&daemon_ns, "out1", &peers, "sink1").unwrap();
        let state_dir = std::env::temp_dir().join(unique_name("nhamd-state-"));
        let dir = state_dir.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let path = daemon_ns.path();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // Worker threads are spawned from here and inherit the namespace.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let state = test_state(&dir, &dir);
                let daemon: Arc<Daemon> = Daemon::new(SffOptions::default(), state);
                // A Unix socket: reachable from the test's namespace, unlike
                // the daemon namespace's loopback.
                let sock = std::env::temp_dir().join(unique_name("nhamd-") + ".sock");
                let listener = tokio::net::UnixListener::bind(&sock).unwrap();
                addr_tx.send(format!("unix:{}", sock.display())).unwrap();
                nham_control::api::server::router(daemon.clone(), None, None)
                    .await
                    .unwrap()
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(listener),
                        async {
                            let _ = stop_rx.await;
                        },
                    )
                    .await
                    .unwrap();
                // Tear the chains down before the runtime goes.
                let names: Vec<String> = {
                    let c = ChainSvc(daemon.clone());
                    let r = api::chain_service_server::ChainService::list_chains(
                        &c,
                        tonic::Request::new(api::ListChainsRequest {}),
                    )
                    .await
                    .unwrap();
                    r.into_inner()
                        .chains
                        .into_iter()
                        .filter_map(|c| c.spec.map(|s| s.name))
                        .collect()
                };
                for n in names {
                    let _ = daemon.delete(&n).await;
                }
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            addr,
            state_dir,
            _stop: stop_tx,
            thread: Some(thread),
            peers,
            _daemon_ns: daemon_ns,
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Dropping `_stop` ends the server; wait for its teardown.
        let (tx, _) = tokio::sync::oneshot::channel();
        let _ = std::mem::replace(&mut self._stop, tx);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A daemon's state as these tests give it: its database in `store`, its
/// logs and scratch space under `dir`, one checkpoint at a time every
/// 500 ms, probes every 50 ms.
fn test_state(store: &std::path::Path, dir: &std::path::Path) -> StateOptions {
    StateOptions {
        store: Arc::new(Store::open(store).unwrap()),
        logs: dir.join("logs"),
        scratch: dir.join("scratch"),
        checkpoint_concurrency: 1,
        copies: None,
        cluster: None,
        checkpoint_interval: Duration::from_millis(500),
        probe_interval: Duration::from_millis(50),
        probe_threshold: 3,
    }
}

/// The cgroup2 path of process `pid` ("" without a cgroup2 hierarchy).
fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .unwrap_or_default()
}

fn spec(name: &str, spi: u32, vnfs: &[&str], mechanism: api::Mechanism) -> api::ChainSpec {
    api::ChainSpec {
        name: name.into(),
        spi,
        vnfs: vnfs
            .iter()
            .map(|n| api::VnfSpec {
                name: (*n).into(),
                // Any command will do for the control plane: it only has to
                // listen on a packet socket (the daemon waits for that before
                // it sends traffic) and run until it is killed.
                command: vec![
                    "python3".into(),
                    "-c".into(),
                    "import socket, time; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); time.sleep(600)".into(),
                ],
                mechanism: mechanism as i32,
                ..Default::default()
            })
            .collect(),
        rules: vec![api::ClassifierRule {
            protocol: 17,
            ..Default::default()
        }],
        ingress_interface: "in0".into(),
        egress_interface: "out0".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_invalid_argument_and_unknown_names_not_found() {
    let h = tokio::task::spawn_blocking(Harness::start).await.unwrap();
    let mut chains = ChainServiceClient::new(nham_control::connect(&h.addr).await.unwrap());
    let mut vnfs = VnfServiceClient::new(nham_control::connect(&h.addr).await.unwrap());

    let bad = [
        api::ChainSpec::default(),
        spec("UPPER", 1, &["a"], api::Mechanism::None),
        spec("c", 0, &["a"], api::Mechanism::None),
        spec("c", 1, &[], api::Mechanism::None),
        spec("c", 1, &["a", "a"], api::Mechanism::None),
        spec("c", 1, &["a"], api::Mechanism::Unspecified),
    ];
    for s in bad {
        let e = chains
            .create_chain(api::CreateChainRequest {
                request_id: String::new(),
                spec: Some(s.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{s:?}: {e:?}");
        assert!(!e.message().is_empty(), "the reason is given");
    }
    let e = chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            spec: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "spec is required")
    );

    let e = chains
        .get_chain(api::GetChainRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = chains
        .delete_chain(api::DeleteChainRequest {
            request_id: String::new(),
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = vnfs
        .inject_fault(api::InjectFaultRequest {
            chain: "nope".into(),
            vnf: "a".into(),
            fault: api::Fault::Crash as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = vnfs
        .inject_fault(api::InjectFaultRequest {
            chain: "nope".into(),
            vnf: "a".into(),
            fault: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = vnfs
        .inject_fault(api::InjectFaultRequest {
            request_id: String::new(),
            chain: "nope".into(),
            vnf: "a".into(),
            fault: api::Fault::Hang as i32,
            during_checkpoint: true,
            member: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("during_checkpoint"), "{e:?}");

    // MR-AA takes 2 to 8 members.
    let mut bad = spec("c", 1, &["a"], api::Mechanism::MrAa);
    bad.vnfs[0].replicas = 9;
    let e = chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            spec: Some(bad),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("replicas"), "{e:?}");
    let mut bad = spec("c", 1, &["a"], api::Mechanism::Mechanism0r);
    bad.vnfs[0].checkpoint_interval_ms = 1;
    let e = chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            spec: Some(bad),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("checkpoint_interval_ms"), "{e:?}");
    // Clients go first: the server's graceful shutdown waits for them.
    drop((chains, vnfs));
    drop(h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_is_detected_through_the_pidfd_and_the_vnf_restarted() {
    let h = tokio::task::spawn_blocking(Harness::start).await.unwrap();
    let mut chains = ChainServiceClient::new(nham_control::connect(&h.addr).await.unwrap());
    let mut vnfs = VnfServiceClient::new(nham_control::connect(&h.addr).await.unwrap());
    let mut events = EventServiceClient::new(nham_control::connect(&h.addr).await.unwrap());
    let mut stream = events
        .watch_events(api::WatchEventsRequest {
            chain: "web".into(),
            since_id: None,
        })
        .await
        .unwrap()
        .into_inner();

    let created = chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            spec: Some(spec("web", 7, &["fw", "nat"], api::Mechanism::None)),
        })
        .await
        .unwrap()
        .into_inner()
        .chain
        .unwrap();
    assert_eq!(created.state, api::ChainState::Running as i32);
    let old_pid = created.vnfs[1].pid;
    assert!(old_pid > 0);
    // Each VNF runs in a cgroup of its own.
    let group = cgroup_of(old_pid);
    assert!(
        group.starts_with("/nham-") && group.ends_with("/web/nat"),
        "{group}"
    );
    let e = chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            spec: Some(spec("web", 8, &["fw"], api::Mechanism::None)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    vnfs.inject_fault(api::InjectFaultRequest {
        chain: "web".into(),
        vnf: "nat".into(),
        fault: api::Fault::Crash as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(e);
    }
    use api::watch_events_response::Event;
    assert!(matches!(seen[0].event, Some(Event::ChainCreated(_))));
    match &seen[1].event {
        Some(Event::FailureDetected(f)) => {
            assert_eq!(seen[1].vnf, "nat");
            assert!(
                f.detection_ms < 100.0,
                "pidfd detection took {} ms",
                f.detection_ms
            );
            eprintln!("crash detected {:.3} ms after the kill", f.detection_ms);
        }
        other => panic!("expected FailureDetected, got {other:?}"),
    }
    assert!(matches!(seen[2].event, Some(Event::RecoveryStarted(_))));
    assert!(matches!(seen[3].event, Some(Event::RecoveryFinished(_))));

    let chain = chains
        .get_chain(api::GetChainRequest { name: "web".into() })
        .await
        .unwrap()
        .into_inner()
        .chain
        .unwrap();
    let nat = &chain.vnfs[1];
    assert_eq!(
        (nat.failures, nat.recoveries, nat.state),
        (1, 1, api::VnfState::Running as i32)
    );
    assert_ne!(nat.pid, old_pid);
    assert_eq!(
        cgroup_of(nat.pid),
        group,
        "the new process is in the VNF's group"
    );
    let listed = chains
        .list_chains(api::ListChainsRequest {})
        .await
        .unwrap()
        .into_inner()
        .chains;
    assert_eq!(listed.len(), 1);
    sff_speaks_one_protocol_version(&h.state_dir.join("sff"));

    // HealVnf is safe to retry: two at once make one recovery, and both
    // answer when it has finished.
    let heal = || {
        let mut vnfs = vnfs.clone();
        async move {
            vnfs.heal_vnf(api::HealVnfRequest {
                chain: "web".into(),
                vnf: "fw".into(),
                cause: api::HealCause::Failure as i32,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().vnf.unwrap())
        }
    };
    let (a, b) = tokio::join!(heal(), heal());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.recoveries, b.recoveries), (1, 1), "{a:?} {b:?}");
    assert_eq!(a.pid, b.pid);
    assert_eq!(a.state, api::VnfState::Running as i32);

    chains
        .delete_chain(api::DeleteChainRequest {
            request_id: String::new(),
            name: "web".into(),
        })
        .await
        .unwrap();
    let e = chains
        .get_chain(api::GetChainRequest { name: "web".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // The VNF's namespace is gone with the chain, and so are its groups.
    assert!(!std::path::Path::new(&format!("/run/netns/{}", nat.netns)).exists());
    if let Some(root) = nham_control::runtime::cgroup::cgroup2_root() {
        let chain_group = root.join(group.trim_start_matches('/'));
        assert!(!chain_group.exists(), "{} left", chain_group.display());
        assert!(!chain_group.parent().unwrap().exists());
    }
    // Clients go first: the server's graceful shutdown waits for them.
    drop((stream, events, chains, vnfs));
    drop(h);
}

/// The chain's SFF process (its socket in `dir`) answers a client of
/// another protocol version with its own version and closes; a first
/// message that is not `Hello` is refused, naming the version. The
/// daemon's client names both versions when they differ.
fn sff_speaks_one_protocol_version(dir: &std::path::Path) {
    use nham_sff::remote::{RemoteError, Request, Response, PROTOCOL_VERSION};
    use std::io::{BufRead, BufReader, Write};
    let socket = std::fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sock"))
        .expect("the SFF's socket");
    let ask = |first: &Request| {
        let s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut conn = BufReader::new(s);
        let mut line = serde_json::to_string(first).unwrap();
        line.push('\n');
        conn.get_mut().write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        conn.read_line(&mut answer).unwrap();
        let answer: Response = serde_json::from_str(&answer).unwrap();
        // Then the SFF closes the connection.
        let mut more = String::new();
        assert_eq!(conn.read_line(&mut more).unwrap(), 0, "closed: {more}");
        answer
    };
    let other = PROTOCOL_VERSION + 1;
    assert_eq!(
        ask(&Request::Hello { version: other }),
        Response::Hello {
            version: PROTOCOL_VERSION
        }
    );
    match ask(&Request::Stats) {
        Response::Refused(why) => assert!(
            why.contains(&format!("protocol version {PROTOCOL_VERSION}")),
            "{why}"
        ),
        r => panic!("a request before Hello was answered: {r:?}"),
    }
    // The daemon's own client, against a server of another version.
    let fake = dir.join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&fake).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut conn = BufReader::new(s);
        let mut hello = String::new();
        conn.read_line(&mut hello).unwrap();
        let mut answer = serde_json::to_string(&Response::Hello { version: other }).unwrap();
        answer.push('\n');
        conn.get_mut().write_all(answer.as_bytes()).unwrap();
    });
    let e = nham_sff::remote::SffClient::connect(&fake).unwrap_err();
    server.join().unwrap();
    let _ = std::fs::remove_file(&fake);
    assert!(
        matches!(e, RemoteError::Version { ours, theirs: Some(t), .. } if ours == PROTOCOL_VERSION && t == other),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("version {other}"))
            && msg.contains(&format!("client {PROTOCOL_VERSION}")),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_and_health_says_serving() {
    let h = tokio::task::spawn_blocking(Harness::start).await.unwrap();
    let channel = nham_control::connect(&h.addr).await.unwrap();
    let services = nham_control::list_services(channel.clone()).await.unwrap();
    for want in [
        "grpc.health.v1.Health",
        "nham.v1.ChainService",
        "nham.v1.EventService",
        "nham.v1.VnfService",
    ] {
        assert!(services.iter().any(|s| s == want), "{want} in {services:?}");
    }
    let status = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "nham.v1.ChainService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    drop(channel);
    drop(h);
}

/// A VNF created unprotected is given 0R at runtime, checkpointed on
/// request, healed (restored from that checkpoint: same state, new
/// process), switched to 1R-AS and back to none; mechanisms not built yet
/// and checkpoints of unprotected VNFs are refused with the reason.
/// Chain and VNF clients of the harness's daemon, and a watch of `chain`'s
/// events (opened before the test acts, so none is missed).
async fn clients_watching(
    h: &Harness,
    chain: &str,
) -> (
    ChainServiceClient<tonic::transport::Channel>,
    VnfServiceClient<tonic::transport::Channel>,
    tonic::Streaming<api::WatchEventsResponse>,
) {
    let channel = nham_control::connect(&h.addr).await.unwrap();
    let events = EventServiceClient::new(channel.clone())
        .watch_events(api::WatchEventsRequest {
            chain: chain.into(),
            since_id: None,
        })
        .await
        .unwrap()
        .into_inner();
    (
        ChainServiceClient::new(channel.clone()),
        VnfServiceClient::new(channel),
        events,
    )
}

/// The next `RecoveryFinished` on `events` (within 10 s).
async fn recovery_finished(
    events: &mut tonic::Streaming<api::WatchEventsResponse>,
) -> api::RecoveryFinished {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(api::watch_events_response::Event::RecoveryFinished(f)) = e.event {
            return f;
        }
    }
}

/// A heal (after a failure) of VNF "mon" of chain "rt".
fn heal_rt() -> api::HealVnfRequest {
    api::HealVnfRequest {
        chain: "rt".into(),
        vnf: "mon".into(),
        cause: api::HealCause::Failure as i32,
        ..Default::default()
    }
}

/// The VNF `SetMechanism` answers with, once `r` is done.
async fn changed(
    vnfs: &mut VnfServiceClient<tonic::transport::Channel>,
    r: api::SetMechanismRequest,
) -> api::VnfStatus {
    vnfs.set_mechanism(r)
        .await
        .unwrap()
        .into_inner()
        .vnf
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mechanisms_change_at_runtime_and_checkpoints_restore() {
    let h = tokio::task::spawn_blocking(Harness::start).await.unwrap();
    let (mut chains, mut vnfs, mut events) = clients_watching(&h, "rt").await;
    chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            // No scheduled checkpoint in between: the checkpoints this test
            // takes and corrupts are the newest and the one before.
            spec: Some({
                let mut s = spec("rt", 9, &["mon"], api::Mechanism::None);
                s.vnfs[0].checkpoint_interval_ms = 3_600_000;
                s
            }),
        })
        .await
        .unwrap();
    let req = || api::CheckpointRequest {
        request_id: String::new(),
        chain: "rt".into(),
        vnf: "mon".into(),
    };
    let e = vnfs.checkpoint(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let set = |m: api::Mechanism| api::SetMechanismRequest {
        request_id: String::new(),
        chain: "rt".into(),
        vnf: "mon".into(),
        mechanism: m as i32,
        replicas: 0,
    };
    // An unprotected VNF becomes MR-AA at runtime: protected, checkpointed,
    // and members added (restored from that checkpoint); then 2 members
    // become 3, and 3 become none (0R).
    let set_m = |replicas: u32| api::SetMechanismRequest {
        replicas,
        ..set(api::Mechanism::MrAa)
    };
    let v = changed(&mut vnfs, set_m(2)).await;
    assert_eq!(
        (v.mechanism, v.member_pids.len()),
        (api::Mechanism::MrAa as i32, 1),
        "{v:?}"
    );
    let v = changed(&mut vnfs, set_m(3)).await;
    assert_eq!(v.member_pids.len(), 2, "{v:?}");
    assert!(v.member_pids.iter().all(|&p| p > 0), "{v:?}");
    let e = vnfs.set_mechanism(set_m(9)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let v = changed(&mut vnfs, set(api::Mechanism::Mechanism0r)).await;
    assert_eq!(
        (v.mechanism, v.member_pids.len()),
        (api::Mechanism::Mechanism0r as i32, 0),
        "{v:?}"
    );
    vnfs.set_mechanism(set(api::Mechanism::None)).await.unwrap();
    let e = vnfs
        .set_mechanism(set(api::Mechanism::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let v = changed(&mut vnfs, set(api::Mechanism::Mechanism0r)).await;
    assert_eq!(v.mechanism, api::Mechanism::Mechanism0r as i32);
    // 1R-AA at runtime: a replica place is made for it.
    let v = changed(&mut vnfs, set(api::Mechanism::Mechanism1rAa)).await;
    assert_eq!(v.mechanism, api::Mechanism::Mechanism1rAa as i32);
    vnfs.set_mechanism(set(api::Mechanism::Mechanism0r))
        .await
        .unwrap();
    let c = vnfs.checkpoint(req()).await.unwrap().into_inner();
    assert!(c.size_bytes > 0 && c.pause_ms > 0.0, "{c:?}");
    eprintln!(
        "checkpoint {} of {} bytes, pause {:.1} ms",
        c.checkpoint_id, c.size_bytes, c.pause_ms
    );
    let healed = vnfs
        .heal_vnf(api::HealVnfRequest {
            chain: "rt".into(),
            vnf: "mon".into(),
            cause: api::HealCause::Maintenance as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let after = healed.vnf.unwrap();
    assert_eq!(
        (after.recoveries, after.state),
        (1, api::VnfState::Running as i32)
    );
    // Restored from the checkpoint, not restarted: the event says so.
    let finished = recovery_finished(&mut events).await;
    assert!(finished.restored, "{finished:?}");
    assert_eq!(finished.checkpoint_id, c.checkpoint_id);
    // The VNF is the first process of a PID namespace of its own (so its
    // restore needs no particular host pid).
    let nspid = std::fs::read_to_string(format!("/proc/{}/status", after.pid)).unwrap();
    let nspid = nspid.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.ends_with("\t1"), "{nspid}");
    assert!(
        cgroup_of(after.pid).ends_with("/rt/mon"),
        "the restored process is in the VNF's group: {}",
        cgroup_of(after.pid)
    );
    eprintln!("healed from the checkpoint in {:.1} ms", healed.recovery_ms);
    vnfs.set_mechanism(set(api::Mechanism::Mechanism1rAs))
        .await
        .unwrap();
    let c2 = vnfs.checkpoint(req()).await.unwrap().into_inner();
    assert!(c2.checkpoint_id > c.checkpoint_id);
    vnfs.set_mechanism(set(api::Mechanism::None)).await.unwrap();
    let e = vnfs.checkpoint(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // A corrupt committed checkpoint is detected and never restored: the
    // one before it (the SFF kept its packets) is restored instead.
    vnfs.set_mechanism(set(api::Mechanism::Mechanism0r))
        .await
        .unwrap();
    let older = vnfs.checkpoint(req()).await.unwrap().into_inner();
    let newer = vnfs.checkpoint(req()).await.unwrap().into_inner();
    let images = h.state_dir.join("images/rt/mon");
    let image_of = |id: u64| {
        std::fs::read_dir(&images)
            .unwrap()
            .map(|f| f.unwrap().path())
            .find(|p| p.file_stem().and_then(|s| s.to_str()) == Some(&id.to_string()))
            .expect("the checkpoint's file")
    };
    let newest = image_of(newer.checkpoint_id);

    // A transient I/O error reading the newest image (here: a directory
    // where its file was) fails the recovery, UNAVAILABLE, and throws
    // nothing away: once the file is back, a heal restores that very
    // checkpoint.
    let aside = newest.with_extension("aside");
    std::fs::rename(&newest, &aside).unwrap();
    std::fs::create_dir(&newest).unwrap();
    let e = vnfs.heal_vnf(heal_rt()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        aside.exists() && image_of(older.checkpoint_id).exists(),
        "both checkpoints are kept"
    );
    std::fs::remove_dir(&newest).unwrap();
    std::fs::rename(&aside, &newest).unwrap();
    vnfs.heal_vnf(heal_rt())
        .await
        .expect("healed once the image is readable again");
    let finished = recovery_finished(&mut events).await;
    assert_eq!(
        (finished.checkpoint_id, finished.fallback_reason.as_str()),
        (newer.checkpoint_id, ""),
        "the checkpoint the I/O error hid is restored, not the older one"
    );
    let mut bytes = std::fs::read(&newest).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&newest, bytes).unwrap();
    let healed = vnfs
        .heal_vnf(heal_rt())
        .await
        .expect("healed from the older checkpoint");
    assert_eq!(
        healed.into_inner().vnf.unwrap().state,
        api::VnfState::Running as i32
    );
    assert!(!newest.exists(), "the corrupt checkpoint is removed");
    eprintln!(
        "checkpoint {} corrupt: restored {} instead",
        newer.checkpoint_id, older.checkpoint_id
    );

    // With every stored image corrupt, nothing is restored: flip one byte
    // of each, then heal with 0R.
    vnfs.checkpoint(req()).await.unwrap();
    let mut flipped = 0;
    for f in std::fs::read_dir(&images).unwrap() {
        let path = f.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        flipped += 1;
    }
    assert!(flipped > 0, "checkpoints in {}", images.display());
    let e = vnfs.heal_vnf(heal_rt()).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(e.message().contains("corrupt"), "{e:?}");
    let status = chains
        .get_chain(api::GetChainRequest { name: "rt".into() })
        .await
        .unwrap()
        .into_inner()
        .chain
        .unwrap()
        .vnfs
        .remove(0);
    assert_eq!(status.state, api::VnfState::Failed as i32, "not restored");
    // Healing it again tries again, and says why it fails again.
    let e = vnfs.heal_vnf(heal_rt()).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(e.message().contains("corrupt"), "{e:?}");
    chains
        .delete_chain(api::DeleteChainRequest {
            request_id: String::new(),
            name: "rt".into(),
        })
        .await
        .unwrap();
    drop((chains, vnfs, events));
    drop(h);
}

/// With a certificate and key, the API is served over TLS only: a client
/// that trusts the CA gets answers, a plain-text one does not; with a
/// client CA, a client without a certificate is turned away (mutual TLS).
/// With roles, an operator's certificate may create a chain, a viewer's
/// may list but not create (`PERMISSION_DENIED`), and one with no role
/// may not even list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_configured() {
    let dir = std::env::temp_dir().join(unique_name("nham-tls-"));
    std::fs::create_dir_all(&dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A CA, and a server and a client certificate it signs.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=nham test CA",
    ]);
    for (name, ext) in [
        ("server", "subjectAltName=DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
        ("viewer", "extendedKeyUsage=clientAuth"),
        ("stranger", "extendedKeyUsage=clientAuth"),
    ] {
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(dir.join("ca.pem")).unwrap());
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(
            nham_control::tls_identity(&dir.join("server.pem"), &dir.join("server.key")).unwrap(),
        )
        .client_ca_root(ca.clone());
    let state = test_state(&dir.join("state"), &dir);
    let daemon = Daemon::new(SffOptions::default(), state);
    let roles = nham_control::api::auth::Roles {
        operators: ["client".to_string()].into(),
        viewers: ["viewer".to_string()].into(),
    };
    let router = nham_control::api::server::router(daemon, Some(tls), Some(roles))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async {
            let _ = stop_rx.await;
        },
    ));
    let client_as = |name: Option<&str>| {
        let t = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .domain_name("localhost");
        match name {
            Some(name) => t.identity(
                nham_control::tls_identity(
                    &dir.join(format!("{name}.pem")),
                    &dir.join(format!("{name}.key")),
                )
                .unwrap(),
            ),
            None => t,
        }
    };
    let client_tls = |with_cert: bool| client_as(with_cert.then_some("client"));
    let ok =
        nham_control::connect_with(&format!("https://localhost:{port}"), Some(client_tls(true)))
            .await
            .unwrap();
    let listed = ChainServiceClient::new(ok.clone())
        .list_chains(api::ListChainsRequest {})
        .await
        .unwrap();
    assert!(listed.into_inner().chains.is_empty());
    // Plain text to a TLS port: no answer.
    if let Ok(plain) = nham_control::connect(&format!("http://127.0.0.1:{port}")).await {
        assert!(ChainServiceClient::new(plain)
            .list_chains(api::ListChainsRequest {})
            .await
            .is_err());
    }
    // No client certificate: refused.
    if let Ok(anon) = nham_control::connect_with(
        &format!("https://localhost:{port}"),
        Some(client_tls(false)),
    )
    .await
    {
        assert!(ChainServiceClient::new(anon)
            .list_chains(api::ListChainsRequest {})
            .await
            .is_err());
    }
    // Roles: the operator passes (its empty spec is refused as such), the
    // viewer reads and is refused a create, the stranger is refused all.
    let create = |channel: tonic::transport::Channel| async move {
        ChainServiceClient::new(channel)
            .create_chain(api::CreateChainRequest {
                request_id: String::new(),
                spec: None,
            })
            .await
            .unwrap_err()
    };
    assert_eq!(
        create(ok.clone()).await.code(),
        tonic::Code::InvalidArgument
    );
    let as_who = |name: &'static str| {
        let tls = client_as(Some(name));
        async move {
            nham_control::connect_with(&format!("https://localhost:{port}"), Some(tls))
                .await
                .unwrap()
        }
    };
    let viewer = as_who("viewer").await;
    assert!(ChainServiceClient::new(viewer.clone())
        .list_chains(api::ListChainsRequest {})
        .await
        .is_ok());
    let denied = create(viewer).await;
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("CreateChain needs the operator role; client viewer is a viewer"),
        "{denied:?}"
    );
    let stranger = ChainServiceClient::new(as_who("stranger").await)
        .list_chains(api::ListChainsRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        stranger.code(),
        tonic::Code::PermissionDenied,
        "{stranger:?}"
    );
    assert!(
        stranger.message().contains("client stranger has no role"),
        "{stranger:?}"
    );
    drop(ok);
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VNF command that exits at once, or does not exist, fails the request
/// with FAILED_PRECONDITION naming the VNF and its command (nothing is
/// taken as ready); so does a missing ingress interface (named), and an
/// interface another chain serves (that chain named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vnf_that_does_not_start_or_a_missing_or_busy_interface_fails_with_the_reason() {
    let h = tokio::task::spawn_blocking(Harness::start).await.unwrap();
    let mut chains = ChainServiceClient::new(nham_control::connect(&h.addr).await.unwrap());
    for (command, says) in [
        (
            vec!["/bin/false".to_string()],
            "exited before it opened a packet socket",
        ),
        (vec!["/nonexistent/vnf".to_string()], "No such file"),
        (
            vec![
                "sh".to_string(),
                "-c".to_string(),
                "echo the licence file is missing >&2; exit 3".to_string(),
            ],
            "the licence file is missing",
        ),
    ] {
        let mut s = spec("bad", 11, &["fw"], api::Mechanism::Mechanism0r);
        s.vnfs[0].command = command.clone();
        let started = std::time::Instant::now();
        let e = chains
            .create_chain(api::CreateChainRequest {
                request_id: String::new(),
                spec: Some(s),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{command:?}: {e:?}");
        assert!(e.message().contains("VNF fw"), "{}", e.message());
        assert!(e.message().contains(&command[0]), "{}", e.message());
        assert!(e.message().contains(says), "{}", e.message());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{command:?} took {:?}",
            started.elapsed()
        );
    }
    // Nothing was left registered.
    let listed = chains
        .list_chains(api::ListChainsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.chains.is_empty(), "{listed:?}");

    let mut s = spec("noin", 12, &["fw"], api::Mechanism::None);
    s.ingress_interface = "nope0".into();
    let e = chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            spec: Some(s),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("\"nope0\""), "{}", e.message());
    assert!(e.message().contains("ingress"), "{}", e.message());

    chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            spec: Some(spec("first", 13, &["fw"], api::Mechanism::None)),
        })
        .await
        .unwrap();
    let e = chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            spec: Some(spec("second", 14, &["fw"], api::Mechanism::None)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("\"first\""), "{}", e.message());
    assert!(!e.message().contains("backtrace"), "{}", e.message());
}

/// No chain waits on another: while chain B's VNF takes 5 s to start (at
/// create, then again when it is healed, then again after the Failure
/// Detector judged it hung under traffic and killed it), a crash in chain
/// A is detected at once and A's VNF recovered in its usual time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_chain_holds_up_no_other() {
    use api::watch_events_response::Event;
    let h = tokio::task::spawn_blocking(Harness::start).await.unwrap();
    let connect = || nham_control::connect(&h.addr);
    let mut chains = ChainServiceClient::new(connect().await.unwrap());
    let mut vnfs = VnfServiceClient::new(connect().await.unwrap());
    let mut events = EventServiceClient::new(connect().await.unwrap());
    let mut stream = events
        .watch_events(api::WatchEventsRequest {
            chain: "a".into(),
            since_id: None,
        })
        .await
        .unwrap()
        .into_inner();
    chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            spec: Some(spec("a", 21, &["mon"], api::Mechanism::None)),
        })
        .await
        .unwrap();
    // Crashes A's VNF; returns (detection_ms, ms from the crash to its
    // RecoveryFinished).
    let mut crash_a = {
        let vnfs = vnfs.clone();
        move || {
            let mut vnfs = vnfs.clone();
            async move {
                let at = std::time::Instant::now();
                vnfs.inject_fault(api::InjectFaultRequest {
                    chain: "a".into(),
                    vnf: "mon".into(),
                    fault: api::Fault::Crash as i32,
                    ..Default::default()
                })
                .await
                .unwrap();
                at
            }
        }
    };
    let _ = &mut crash_a;
    async fn recovered(
        stream: &mut tonic::Streaming<api::WatchEventsResponse>,
        at: std::time::Instant,
    ) -> (f64, f64) {
        let mut detection = None;
        loop {
            let e = tokio::time::timeout(Duration::from_secs(20), stream.message())
                .await
                .expect("an event within 20 s")
                .unwrap()
                .unwrap();
            match e.event {
                Some(Event::FailureDetected(f)) => detection = Some(f.detection_ms),
                Some(Event::RecoveryFinished(_)) => {
                    return (
                        detection.expect("FailureDetected first"),
                        at.elapsed().as_secs_f64() * 1e3,
                    )
                }
                Some(Event::RecoveryFailed(f)) => panic!("A's recovery failed: {}", f.reason),
                _ => {}
            }
        }
    }
    // A's usual time, with nothing else going on.
    let at = crash_a().await;
    let usual = recovered(&mut stream, at).await;
    eprintln!(
        "chain A alone: detected in {:.3} ms, back after {:.1} ms",
        usual.0, usual.1
    );

    // B: a VNF that takes 5 s to open its socket, every time it starts.
    let slow = api::VnfSpec {
        name: "slow".into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "sleep 5; exec python3 -c 'import socket, time; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); time.sleep(600)'".into(),
        ],
        mechanism: api::Mechanism::None as i32,
        ..Default::default()
    };
    let mut b = spec("b", 22, &[], api::Mechanism::None);
    b.vnfs = vec![slow];
    b.ingress_interface = "in1".into();
    b.egress_interface = "out1".into();
    let create_b = {
        let mut chains = chains.clone();
        tokio::spawn(async move {
            chains
                .create_chain(api::CreateChainRequest {
                    request_id: String::new(),
                    spec: Some(b),
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = crash_a().await;
    let during_create = recovered(&mut stream, at).await;
    assert!(
        !create_b.is_finished(),
        "B's create was still starting its VNF"
    );
    eprintln!(
        "chain A while B is created: detected in {:.3} ms, back after {:.1} ms",
        during_create.0, during_create.1
    );
    assert!(
        during_create.0 < 100.0,
        "detection waited: {during_create:?}"
    );
    assert!(
        during_create.1 < 2_000.0,
        "recovery waited: {during_create:?}"
    );
    create_b.await.unwrap().expect("B created");

    // B's VNF healed: its restart takes 5 s again.
    let heal_b = {
        let mut vnfs = vnfs.clone();
        tokio::spawn(async move {
            vnfs.heal_vnf(api::HealVnfRequest {
                chain: "b".into(),
                vnf: "slow".into(),
                cause: api::HealCause::Maintenance as i32,
                ..Default::default()
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = crash_a().await;
    let during_heal = recovered(&mut stream, at).await;
    assert!(!heal_b.is_finished(), "B's heal was still starting its VNF");
    eprintln!(
        "chain A while B is healed: detected in {:.3} ms, back after {:.1} ms",
        during_heal.0, during_heal.1
    );
    assert!(during_heal.0 < 100.0, "detection waited: {during_heal:?}");
    assert!(during_heal.1 < 2_000.0, "recovery waited: {during_heal:?}");
    heal_b.await.unwrap().expect("B healed");

    // B's VNF under traffic: it reads none of it (a hang, as the detector
    // sees it), is judged, killed, and started again: 5 s.
    let mut b_events = events
        .watch_events(api::WatchEventsRequest {
            chain: "b".into(),
            since_id: None,
        })
        .await
        .unwrap()
        .into_inner();
    let traffic = traffic_into(h.peers.path(), "gen1", 15);
    let cause = loop {
        let e = tokio::time::timeout(Duration::from_secs(20), b_events.message())
            .await
            .expect("B judged within 20 s")
            .unwrap()
            .unwrap();
        if let Some(Event::FailureDetected(f)) = e.event {
            break f.cause;
        }
    };
    // Judged, not seen exiting (a frame outside the SFF's window, such as
    // the kernel's own, may make it an input drop rather than a hang).
    assert!(
        cause.starts_with("hang") || cause.starts_with("input dropped"),
        "B judged: {cause}"
    );
    let at = crash_a().await;
    let during_judge = recovered(&mut stream, at).await;
    let b = chains
        .get_chain(api::GetChainRequest { name: "b".into() })
        .await
        .unwrap()
        .into_inner();
    let b_state = b.chain.expect("chain b").vnfs[0].state;
    assert_eq!(
        b_state,
        api::VnfState::Recovering as i32,
        "B's VNF was still starting again"
    );
    eprintln!(
        "chain A while B's hung VNF is judged and restarted: detected in {:.3} ms, back after {:.1} ms",
        during_judge.0, during_judge.1
    );
    assert!(during_judge.0 < 100.0, "detection waited: {during_judge:?}");
    assert!(
        during_judge.1 < 2_000.0,
        "recovery waited: {during_judge:?}"
    );
    traffic.join().expect("traffic into B");
    // B's VNF back before the daemon goes: nothing is left starting.
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), b_events.message())
            .await
            .expect("B recovered within 20 s")
            .unwrap()
            .unwrap();
        if let Some(Event::RecoveryFinished(_)) = e.event {
            break;
        }
    }
    let _ = &mut vnfs;
}

/// Sends UDP frames from `iface` in namespace `netns` at 500 a second for
/// `secs` seconds, on a thread of its own.
fn traffic_into(
    netns: std::path::PathBuf,
    iface: &'static str,
    secs: u64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        nham_netns::run_in(&netns, move || {
            let mut port = nham_afxdp::Port::open(iface, 0, nham_afxdp::PortConfig::default())
                .expect("a generator port");
            let frames: Vec<Vec<u8>> = (0..secs * 500)
                .map(|i| nham_traffic::make_frame(i, (i % 4) as u32, 128))
                .collect();
            nham_traffic::generate(
                &mut port,
                &frames,
                Some(500.0),
                std::time::Instant::now(),
                8,
            );
        })
        .expect("entering the peers' namespace");
    })
}

/// Secure by default (issue 15, item 1): `nhamd` given no address listens
/// on its Unix socket only (`/run/nham/nhamd.sock`, mode 0660) and on no
/// TCP port; a TCP address without mutual TLS is refused at start, saying
/// what to give, unless `--insecure-tcp` (then it serves, and warns).
#[test]
fn nhamd_is_secure_by_default() {
    use std::os::unix::fs::PermissionsExt;
    let nhamd = nham_control::sibling_binary("nhamd").expect("nhamd (cargo build -p nham-control)");
    let dir = std::env::temp_dir().join(unique_name("nham-secure-"));
    std::fs::create_dir_all(&dir).unwrap();
    let nhamd_with = |extra: &[&str]| {
        let mut c = std::process::Command::new(&nhamd);
        c.arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--scratch-dir")
            .arg(dir.join("scratch"))
            .args(extra);
        c
    };
    // Stopped (SIGTERM) and reaped even when an assertion fails.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.0.wait();
        }
    }
    let wait_for = |what: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !what() {
            assert!(
                std::time::Instant::now() < deadline,
                "nhamd did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lists = |addr: &str| {
        rt.block_on(async {
            let c = nham_control::connect(addr).await.ok()?;
            ChainServiceClient::new(c)
                .list_chains(api::ListChainsRequest {})
                .await
                .ok()
        })
        .is_some()
    };

    // Plain-text TCP: refused at start, with the way out.
    let refused = nhamd_with(&["--listen", "127.0.0.1:0"]).output().unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("without mutual TLS") && said.contains("--insecure-tcp"),
        "{said}"
    );

    // No address: the Unix socket, 0660, answering; no TCP.
    let sock = std::path::Path::new("/run/nham/nhamd.sock");
    assert!(
        !lists("unix:/run/nham/nhamd.sock"),
        "a nhamd already serves /run/nham/nhamd.sock on this machine"
    );
    let log = std::fs::File::create(dir.join("default.log")).unwrap();
    let daemon = Running(nhamd_with(&[]).stderr(log).spawn().unwrap());
    wait_for(&|| lists("unix:/run/nham/nhamd.sock"));
    let mode = std::fs::metadata(sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "{mode:o}");
    assert!(std::net::TcpStream::connect("127.0.0.1:50051").is_err());
    drop(daemon);

    // --insecure-tcp: served, with a warning.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path = dir.join("insecure.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Running(
        nhamd_with(&["--listen", &addr, "--insecure-tcp"])
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for(&|| lists(&format!("http://{addr}")));
    let said = std::fs::read_to_string(&log_path).unwrap();
    assert!(said.contains("--insecure-tcp: the API"), "{said}");
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Orchestrator semantics (issue 15, item 7): a mutating call retried
/// with its `request_id` is answered, not run again (a second CreateChain
/// gets the same chain, not ALREADY_EXISTS; two at once, one chain; a
/// second DeleteChain succeeds, not NOT_FOUND), and the same id with
/// another request is INVALID_ARGUMENT. Errors carry `google.rpc` details:
/// an ErrorInfo reason, and for an invalid argument the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_answered_once_and_errors_name_their_field() {
    use tonic_types::StatusExt;
    let h = tokio::task::spawn_blocking(Harness::start).await.unwrap();
    let channel = nham_control::connect(&h.addr).await.unwrap();
    let mut chains = ChainServiceClient::new(channel.clone());
    // With a map in the request (env): a retry must encode to the same
    // bytes (maps in key order) to be known as the same request.
    let create = |name: &str, spi: u32, id: &str| api::CreateChainRequest {
        spec: Some({
            let mut s = spec(name, spi, &["a"], api::Mechanism::None);
            s.vnfs[0].env = (0..8).map(|i| (format!("K{i}"), format!("v{i}"))).collect();
            s
        }),
        request_id: id.into(),
    };
    let pid = |r: Result<tonic::Response<api::CreateChainResponse>, tonic::Status>| {
        r.unwrap().into_inner().chain.unwrap().vnfs[0].pid
    };
    let first = pid(chains.create_chain(create("once", 21, "op-1")).await);
    let again = pid(chains.create_chain(create("once", 21, "op-1")).await);
    assert_eq!(first, again, "the retry is answered with the first chain");
    let e = chains
        .create_chain(create("once", 21, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = chains
        .create_chain(create("once", 22, "op-1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("request_id \"op-1\""), "{e:?}");
    let delete = |name: &str, id: &str| api::DeleteChainRequest {
        name: name.into(),
        request_id: id.into(),
    };
    chains.delete_chain(delete("once", "op-3")).await.unwrap();
    chains.delete_chain(delete("once", "op-3")).await.unwrap();
    let e = chains.delete_chain(delete("once", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let info = e.get_details_error_info().expect("ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("NOT_FOUND", "nham.v1")
    );
    // Two at once: one runs, the other waits for its answer.
    let mut other = ChainServiceClient::new(channel.clone());
    let (a, b) = tokio::join!(
        chains.create_chain(create("twice", 23, "op-4")),
        other.create_chain(create("twice", 23, "op-4")),
    );
    assert_eq!(pid(a), pid(b));
    chains.delete_chain(delete("twice", "op-5")).await.unwrap();

    let mut bad = spec("bad", 24, &["a"], api::Mechanism::None);
    bad.vnfs[0].name = "Not A Name".into();
    let e = chains
        .create_chain(api::CreateChainRequest {
            spec: Some(bad),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(
        e.get_details_error_info().unwrap().reason,
        "INVALID_ARGUMENT"
    );
    let violation = &e
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations[0];
    assert_eq!(violation.field, "spec.vnfs[0].name", "{violation:?}");
    drop((chains, other));
    drop(h);
}

/// A VNF's limit file: the cgroup v2 one where its group has the
/// controller, else the cgroup v1 one of the controller's hierarchy.
fn limit_of(pid: u32, controller: &str, v2: &str, v1: &str) -> String {
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2_root = nham_control::runtime::cgroup::cgroup2_root().unwrap();
    let v2_file = v2_root
        .join(cgroup_of(pid).trim_start_matches('/'))
        .join(v2);
    if let Ok(v) = std::fs::read_to_string(&v2_file) {
        return v.trim().to_string();
    }
    let rel = groups
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller} group: {groups}"));
    let mount = nham_control::runtime::cgroup::cgroup1_root(controller).unwrap();
    std::fs::read_to_string(mount.join(rel.trim_start_matches('/')).join(v1))
        .unwrap_or_else(|e| panic!("{controller} {v1} of {pid} ({rel}): {e}"))
        .trim()
        .to_string()
}

/// A status line of process `pid` (`Uid`, `CapEff`, ...).
fn status_of(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Secure by default, per VNF (issue 15, item 1): a VNF has only the
/// capabilities its spec lists (net_raw alone by default, even as root),
/// runs as the user it names, and within its cgroup limits (v2, or v1 on a
/// hybrid host such as CI's); a checkpointed VNF that crashes is restored
/// by CRIU with the same capabilities and in the same limited group.
/// Unknown users and capabilities are INVALID_ARGUMENT; a protected VNF
/// as another user is FAILED_PRECONDITION where nhamd's root cannot
/// checkpoint other users' processes (no CAP_SYS_RESOURCE: CI's sandbox),
/// and checkpointed and restored with its uid where it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vnfs_run_as_their_user_with_only_their_capabilities_within_their_limits() {
    const NET_RAW: u64 = 1 << 13;
    const NET_ADMIN: u64 = 1 << 12;
    const SYS_ADMIN: u64 = 1 << 21;
    let caps = |pid: u32, set: &str| u64::from_str_radix(&status_of(pid, set), 16).unwrap();
    let h = tokio::task::spawn_blocking(Harness::start).await.unwrap();
    let (mut chains, mut vnfs, mut events) = clients_watching(&h, "lim").await;
    let mut s = spec("lim", 11, &["fw", "mon"], api::Mechanism::Mechanism0r);
    s.vnfs[0].limits = Some(api::ResourceLimits {
        memory_max_bytes: 256 << 20,
        cpu_max_millicpus: 500,
        pids_max: 64,
    });
    s.vnfs[1].mechanism = api::Mechanism::None as i32;
    s.vnfs[1].user = "nobody".into();
    s.vnfs[1].capabilities = vec!["net_raw".into(), "CAP_NET_ADMIN".into()];
    let c = chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            spec: Some(s),
        })
        .await
        .unwrap()
        .into_inner()
        .chain
        .unwrap();
    let (fw, mon) = (c.vnfs[0].pid, c.vnfs[1].pid);
    // Root, with the default net_raw and sys_admin (what its checkpoints
    // take) alone: in every set.
    assert_eq!(status_of(fw, "Uid").split_whitespace().next(), Some("0"));
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(caps(fw, set), NET_RAW | SYS_ADMIN, "fw {set}");
    }
    // nobody, with net_raw and net_admin.
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(
        status_of(mon, "Uid").split_whitespace().next(),
        Some(nobody.uid.to_string().as_str())
    );
    assert_eq!(caps(mon, "CapEff"), NET_RAW | NET_ADMIN);
    assert_eq!(caps(mon, "CapBnd"), NET_RAW | NET_ADMIN);
    let limits = |pid| {
        (
            limit_of(pid, "memory", "memory.max", "memory.limit_in_bytes"),
            limit_of(pid, "cpu", "cpu.max", "cpu.cfs_quota_us"),
            limit_of(pid, "pids", "pids.max", "pids.max"),
        )
    };
    let (memory, cpu, pids) = limits(fw);
    assert_eq!(memory, (256u64 << 20).to_string());
    assert!(cpu == "50000 100000" || cpu == "50000", "{cpu}");
    assert_eq!(pids, "64");
    // Checkpointed, crashed, restored by CRIU: the same capabilities and
    // limits.
    let ck = vnfs
        .checkpoint(api::CheckpointRequest {
            request_id: String::new(),
            chain: "lim".into(),
            vnf: "fw".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ck.size_bytes > 0, "{ck:?}");
    vnfs.inject_fault(api::InjectFaultRequest {
        chain: "lim".into(),
        vnf: "fw".into(),
        fault: api::Fault::Crash as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    let done = recovery_finished(&mut events).await;
    assert!(done.restored, "restored from its checkpoint: {done:?}");
    let restored = chains
        .get_chain(api::GetChainRequest { name: "lim".into() })
        .await
        .unwrap()
        .into_inner()
        .chain
        .unwrap()
        .vnfs[0]
        .pid;
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(
            caps(restored, set),
            NET_RAW | SYS_ADMIN,
            "restored fw {set}"
        );
    }
    assert_eq!(limits(restored), (memory, cpu, pids));

    // Refusals, with the field and the reason.
    let refused = |f: fn(&mut api::VnfSpec)| {
        let mut s = spec("bad", 12, &["a"], api::Mechanism::None);
        f(&mut s.vnfs[0]);
        s
    };
    for (bad, what) in [
        (
            refused(|v| v.capabilities = vec!["net_rawr".into()]),
            "net_rawr",
        ),
        (
            refused(|v| v.user = "no-such-user-here".into()),
            "no-such-user-here",
        ),
        (
            refused(|v| {
                v.limits = Some(api::ResourceLimits {
                    memory_max_bytes: 4096,
                    ..Default::default()
                })
            }),
            "memory_max_bytes",
        ),
    ] {
        let e = chains
            .create_chain(api::CreateChainRequest {
                request_id: String::new(),
                spec: Some(bad),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(what), "{e:?}");
    }
    // Protected, without what a checkpoint takes.
    let e = chains
        .create_chain(api::CreateChainRequest {
            spec: Some(refused(|v| {
                v.capabilities = vec!["net_raw".into()];
                v.mechanism = api::Mechanism::Mechanism0r as i32;
            })),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("sys_admin"), "{e:?}");
    let as_nobody = refused(|v| {
        v.user = "nobody".into();
        v.mechanism = api::Mechanism::Mechanism0r as i32;
    });
    if nham_control::runtime::identity::can_checkpoint_other_users() {
        chains
            .create_chain(api::CreateChainRequest {
                request_id: String::new(),
                spec: Some(as_nobody),
            })
            .await
            .unwrap();
        let ck = vnfs
            .checkpoint(api::CheckpointRequest {
                request_id: String::new(),
                chain: "bad".into(),
                vnf: "a".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(ck.size_bytes > 0, "{ck:?}");
    } else {
        let e = chains
            .create_chain(api::CreateChainRequest {
                request_id: String::new(),
                spec: Some(as_nobody),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("CAP_SYS_RESOURCE"), "{e:?}");
        eprintln!(
            "this host's root has no CAP_SYS_RESOURCE: a protected VNF as another user is \
             refused ({})",
            e.message()
        );
    }
    drop((chains, vnfs, events));
    drop(h);
}

/// nhamd as `packaging/nhamd.service` runs it (`Type=notify`,
/// `WatchdogSec=`): it says READY=1 (with a STATUS line) once its API
/// answers, WATCHDOG=1 four times per watchdog period while it answers,
/// and STOPPING=1 when it is stopped; the socket file goes with it. The
/// test stands for systemd: a datagram socket in `NOTIFY_SOCKET`.
#[test]
fn nhamd_tells_its_service_manager_it_is_ready_alive_and_stopping() {
    use std::time::Instant;
    let nhamd = nham_control::sibling_binary("nhamd").expect("nhamd (cargo build -p nham-control)");
    let dir = std::env::temp_dir().join(unique_name("nham-notify-"));
    std::fs::create_dir_all(&dir).unwrap();
    let manager = std::os::unix::net::UnixDatagram::bind(dir.join("notify")).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let said = || {
        let mut buf = [0u8; 4096];
        let n = manager.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let sock = dir.join("nhamd.sock");
    let log = std::fs::File::create(dir.join("nhamd.log")).unwrap();
    // As systemd does: WATCHDOG_PID is nhamd's pid (the shell execs it in
    // place).
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$@""#)
        .arg("nhamd")
        .arg(&nhamd)
        .arg("--unix")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--scratch-dir")
        .arg(dir.join("scratch"))
        .env("NOTIFY_SOCKET", dir.join("notify"))
        // A 400 ms watchdog: a ping each 100 ms.
        .env("WATCHDOG_USEC", "400000")
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ready = loop {
            let m = said();
            if m.contains("READY=1") {
                break m;
            }
        };
        assert!(
            std::os::unix::net::UnixStream::connect(&sock).is_ok(),
            "READY=1 before the API answers"
        );
        assert!(ready.contains("STATUS=0 chains; API on unix:"), "{ready}");
        let t0 = Instant::now();
        let mut pings = 0;
        while t0.elapsed() < Duration::from_secs(1) {
            if said().contains("WATCHDOG=1") {
                pings += 1;
            }
        }
        assert!(
            (6..=14).contains(&pings),
            "{pings} pings in 1 s, not about 10"
        );
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let stopping = loop {
            let m = said();
            if m.contains("STOPPING=1") {
                break m;
            }
        };
        assert!(stopping.contains("STATUS=stopping"), "{stopping}");
        assert!(child.wait().unwrap().success());
        assert!(!sock.exists(), "the socket file is left behind");
    }));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    if let Err(e) = result {
        eprintln!(
            "nhamd log: {}",
            std::fs::read_to_string(dir.join("nhamd.log")).unwrap_or_default()
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::panic::resume_unwind(e);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Metrics (issue 15, item 2): `/metrics` answers a scrape in Prometheus'
/// text format with the daemon's state (`nham_up`, build info) and what
/// events added (a failure by cause and mechanism, its detection time),
/// and `promtool check metrics` (Debian's `prometheus` package, installed
/// by scripts/setup.sh) finds nothing wrong with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_promtool_accepts_them() {
    use nham_control::service::events::{Event, VnfEvent};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = std::env::temp_dir().join(unique_name("nham-metrics-"));
    std::fs::create_dir_all(&dir).unwrap();
    let state = test_state(&dir.join("state"), &dir);
    let daemon = Daemon::new(SffOptions::default(), state);
    let metrics = Arc::new(nham_control::metrics::Metrics::new());
    nham_control::api::metrics_http::follow(&daemon, metrics.clone());
    let event = |event| VnfEvent {
        id: 0,
        time_unix_nanos: 1,
        chain: "web".into(),
        vnf: "fw".into(),
        event,
    };
    metrics.observe(
        &event(Event::FailureDetected {
            cause: "process exited".into(),
            detection_ms: 0.8,
        }),
        Some("1r-aa"),
    );
    metrics.observe(
        &event(Event::VnfInputDropped {
            member: 0,
            frames: 4,
            budget_bytes: 0,
        }),
        Some("1r-aa"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nham_control::api::metrics_http::serve(
        listener,
        daemon.clone(),
        metrics,
        async {
            let _ = stop_rx.await;
        },
    ));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for want in [
        "nham_up 1",
        "nham_build_info{version=",
        r#"nham_vnf_failures_total{chain="web",vnf="fw",mechanism="1r-aa",cause="process exited"} 1"#,
        r#"nham_failure_detection_seconds_count{chain="web",vnf="fw",mechanism="1r-aa"} 1"#,
        r#"nham_vnf_input_dropped_frames_total{chain="web",vnf="fw"} 4"#,
    ] {
        assert!(body.contains(want), "{want} not in\n{body}");
    }
    // Asked for OpenMetrics (as Prometheus asks), OpenMetrics.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut open = String::new();
    s.read_to_string(&mut open).await.unwrap();
    assert!(open.contains("application/openmetrics-text"), "{open}");
    assert!(open.trim_end().ends_with("# EOF"), "{open}");
    let file = dir.join("scrape.txt");
    std::fs::write(&file, body).unwrap();
    let checked = std::process::Command::new("promtool")
        .arg("check")
        .arg("metrics")
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (scripts/setup.sh installs Debian's prometheus package)");
    assert!(
        checked.status.success(),
        "promtool check metrics:\n{}{}\n{body}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The alert rules shipped for Alertmanager (`packaging/alerts.yml`) are
/// accepted by `promtool check rules`.
#[test]
fn the_alert_rules_pass_promtool() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/alerts.yml");
    let checked = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool (scripts/setup.sh installs Debian's prometheus package)");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// Health says what is so (issue 15, item 2): SERVING while the state
/// directory is there, NOT_SERVING within seconds of it going (and
/// SERVING again once it is back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_state_directory() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = std::env::temp_dir().join(unique_name("nham-health-"));
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&dir).unwrap();
    let state = test_state(&state_dir, &dir);
    let daemon = Daemon::new(SffOptions::default(), state);
    let router = nham_control::api::server::router(daemon, None, None)
        .await
        .unwrap();
    let sock = dir.join("nhamd.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        async {
            let _ = stop_rx.await;
        },
    ));
    let channel = nham_control::connect(&format!("unix:{}", sock.display()))
        .await
        .unwrap();
    let health = || {
        let channel = channel.clone();
        async move {
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "nham.v1.ChainService".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    let becomes = |want: ServingStatus| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if health().await == want as i32 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "health never {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    becomes(ServingStatus::Serving).await;
    let moved = dir.join("state.away");
    std::fs::rename(&state_dir, &moved).unwrap();
    becomes(ServingStatus::NotServing).await;
    std::fs::rename(&moved, &state_dir).unwrap();
    becomes(ServingStatus::Serving).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `nhamctl` for people and scripts (issue 15, item 6): `create -f` takes a
/// whole spec (rules with prefixes and port ranges, env, a quoted command
/// line), `-o json` prints stable views (names, not enum numbers), tables
/// by default, `--help` lists allowed values, and the exit code says the
/// error's class (3 not found, 4 invalid argument, 5 refused in this
/// state, 2 a bad command line).
#[test]
fn nhamctl_scripts_well() {
    let h = Harness::start();
    let nhamctl =
        nham_control::sibling_binary("nhamctl").expect("nhamctl (cargo build -p nham-control)");
    let dir = std::env::temp_dir().join(unique_name("nhamctl-"));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&nhamctl)
            .arg("--addr")
            .arg(&h.addr)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let file = dir.join("chain.toml");
    std::fs::write(
        &file,
        r#"
name = "web"
spi = 9
ingress = "in0"
egress = "out0"
checkpoint_interval_ms = 500

[[rules]]
protocol = 17
dst_prefix = "10.0.0.0/8"
dst_port = "1000-2000"

[[vnfs]]
name = "fw"
mechanism = "0r"
command = "python3 -c 'import socket, time; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); time.sleep(600)'"
env = { MODE = "strict" }
"#,
    )
    .unwrap();
    let file = file.display().to_string();
    let (code, out, err) = run(&["-o", "json", "create", "-f", &file]);
    assert_eq!(code, Some(0), "{out}{err}");
    let chain: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(chain["name"], "web");
    assert_eq!(chain["state"], "running");
    assert_eq!(chain["vnfs"][0]["mechanism"], "0r");
    assert_eq!(chain["vnfs"][0]["state"], "running");
    let (code, out, err) = run(&["list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("CHAIN") && out.contains("web") && out.contains("0r"),
        "{out}"
    );
    // Errors by class.
    for (args, want) in [
        (vec!["get", "nothing"], 3),
        (vec!["checkpoint", "web", "nothing"], 3),
        (
            vec!["set-mechanism", "web", "fw", "mr-aa", "--replicas", "99"],
            4,
        ),
        (vec!["set-mechanism", "web", "fw", "sideways"], 2),
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, Some(want), "{args:?}: {out}{err}");
    }
    let (_, help, _) = run(&["set-mechanism", "--help"]);
    assert!(help.contains("1r-aa") && help.contains("mr-aa"), "{help}");
    let _ = std::fs::remove_dir_all(&dir);
    drop(h);
}

/// Events for orchestrators (issue 15, item 7): each has an id, one more
/// than the one before; a watcher that resumes with `since_id` first gets
/// the events after it that the daemon kept, in order, then new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_have_ids_and_a_watcher_resumes_after_the_last_it_saw() {
    let h = tokio::task::spawn_blocking(Harness::start).await.unwrap();
    let channel = nham_control::connect(&h.addr).await.unwrap();
    let mut chains = ChainServiceClient::new(channel.clone());
    chains
        .create_chain(api::CreateChainRequest {
            request_id: String::new(),
            spec: Some(spec("ids", 11, &["fw"], api::Mechanism::None)),
        })
        .await
        .unwrap();
    let watch = |since_id| {
        let channel = channel.clone();
        async move {
            EventServiceClient::new(channel)
                .watch_events(api::WatchEventsRequest {
                    chain: "ids".into(),
                    since_id,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    // From the start: the chain's creation comes back, numbered.
    let mut from_start = watch(Some(0)).await;
    let first = tokio::time::timeout(Duration::from_secs(5), from_start.message())
        .await
        .expect("the kept events")
        .unwrap()
        .unwrap();
    assert!(first.id >= 1, "{first:?}");
    assert!(
        matches!(
            first.event,
            Some(api::watch_events_response::Event::ChainCreated(_))
        ),
        "{first:?}"
    );
    // New events after it: ids go up by one per event the daemon sent.
    chains
        .delete_chain(api::DeleteChainRequest {
            request_id: String::new(),
            name: "ids".into(),
        })
        .await
        .unwrap();
    let deleted = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), from_start.message())
            .await
            .expect("ChainDeleted")
            .unwrap()
            .unwrap();
        assert!(e.id > first.id, "{e:?}");
        if matches!(
            e.event,
            Some(api::watch_events_response::Event::ChainDeleted(_))
        ) {
            break e;
        }
    };
    // Resuming after the creation: what came after it, the deletion last.
    let mut resumed = watch(Some(first.id)).await;
    let again = loop {
        let e = tokio::time::timeout(Duration::from_secs(5), resumed.message())
            .await
            .expect("the kept events after the first")
            .unwrap()
            .unwrap();
        assert!(e.id > first.id, "{e:?}");
        if e.id == deleted.id {
            break e;
        }
    };
    assert!(matches!(
        again.event,
        Some(api::watch_events_response::Event::ChainDeleted(_))
    ));
    // (The daemon's graceful stop waits for open streams: close them
    // first.)
    drop((from_start, resumed, chains, channel));
    drop(h);
}
