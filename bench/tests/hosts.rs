//! The lab of hosts (`nham_bench::hosts`): hosts in namespaces of their
//! own, joined by an underlay, with an etcd cluster of three members on
//! them. The ground of the host-failure tests (issue 14): a write through
//! one member is read through another; with one member's host cut off the
//! other two still make a quorum, and the one cut off catches up once it is
//! back; a dead member leaves a cluster that still answers.

use std::time::{Duration, Instant};

use anyhow::Result;
use nham_bench::hosts::HostLab;

/// One test of this binary at a time: each runs a lab of hosts (etcd,
/// `nhamd`s, VNFs, an SFF thread) that wants the machine's two cores. In a
/// chain lab no Failure Detector probes the VNFs (see `nham_bench::lab`),
/// so a VNF starved by another test's lab drops input at its socket,
/// uncounted by the SFF: measured, 1,597 frames of 3,000 with two labs at
/// once.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `f` until it succeeds, for `within` at most (an etcd client retries
/// while the cluster elects a new leader: a second or more on a busy
/// 2-core machine); the last error if it never does.
fn eventually<T>(within: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn an_etcd_cluster_on_three_of_four_hosts_survives_a_partition_and_a_dead_member() {
    let _serial = serial();
    let mut lab = HostLab::new(4, 3).expect("the lab of hosts");
    assert_eq!(lab.etcd_endpoints().len(), 3);
    lab.etcd_put(0, "/nham/test/a", "1")
        .expect("put through e0");
    assert_eq!(
        lab.etcd_get(2, "/nham/test/a")
            .expect("get through e2")
            .as_deref(),
        Some("1")
    );
    // Host 3 (no member) reaches the cluster over the underlay.
    let (status, _) = lab
        .http(3, lab.etcd_endpoint(1), "GET", "/health", "")
        .expect("host 3 reaches e1");
    assert_eq!(status, 200);

    // A partition: host 2 cut off. e2 runs on, unseen; e0 and e1 are a
    // quorum.
    lab.cut_off(2).expect("cut host 2 off");
    assert!(
        lab.http(0, lab.etcd_endpoint(2), "GET", "/health", "")
            .is_err(),
        "host 2 is unreachable"
    );
    eventually(Duration::from_secs(15), || {
        lab.etcd_put(1, "/nham/test/a", "2")
    })
    .expect("put with host 2 cut off");
    assert_eq!(
        lab.etcd_get(0, "/nham/test/a")
            .expect("get through e0")
            .as_deref(),
        Some("2")
    );
    lab.reconnect(2).expect("host 2 back");
    eventually(Duration::from_secs(20), || {
        match lab.etcd_get(2, "/nham/test/a")?.as_deref() {
            Some("2") => Ok(()),
            other => anyhow::bail!("e2 reads {other:?}"),
        }
    })
    .expect("e2 caught up within 20 s");

    // A dead member: the other two go on.
    lab.kill_etcd(0);
    assert_eq!(lab.etcd_endpoints().len(), 2);
    eventually(Duration::from_secs(15), || {
        lab.etcd_put(1, "/nham/test/b", "3")
    })
    .expect("put with e0 dead (within the election that may follow)");
    assert_eq!(
        eventually(Duration::from_secs(15), || lab.etcd_get(2, "/nham/test/b"))
            .expect("get through e2")
            .as_deref(),
        Some("3")
    );
}

fn vnf_bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_nham-vnf"))
}

fn spec(count: u64) -> nham_traffic::TrafficSpec {
    nham_traffic::TrafficSpec {
        size: nham_traffic::FrameSize::Fixed(64),
        flows: 16,
        count,
        rate: Some(5_000.0),
    }
}

/// The data path between hosts: the SFF on one host reaches two VNFs on
/// two others, each through a tunnel of its own (Ethernet + NSH in VXLAN
/// over the underlay). Every frame arrives once, in order, as the
/// reference says, and both VNFs end in the failure-free state.
#[test]
fn a_chain_reaches_vnfs_on_other_hosts_through_tunnels() {
    let _serial = serial();
    use nham_bench::lab::{Lab, LabSff};
    use nham_vnf::Kind;
    let mut hosts = HostLab::new(2, 0).expect("the lab of hosts");
    let kinds = [Kind::Monitor, Kind::Firewall];
    let lab = Lab::across_hosts(&kinds, vnf_bin(), &mut hosts, &[0, 1]).expect("the chain");
    let sff = lab.start_sff(LabSff::default()).expect("the SFF");
    let spec = spec(3000);
    let (expected, states) = nham_vnf::reference(&kinds, &spec.frames());
    let trial = lab.trial(&spec, &expected, &sff).expect("trial");
    let status = nham_sff::remote::SffClient::local(&sff)
        .ok()
        .and_then(|c| c.status().ok())
        .map(|s| format!("{s:?}"))
        .unwrap_or_default();
    let stats = sff.stop().expect("SFF ran");
    let links: Vec<String> = (0..kinds.len())
        .map(|i| {
            let v = format!("v{i}");
            let sff_end = lab.sff_netns().run(move || nham_netns::link_counters(&v));
            let vnf_end = lab.vnf_netns(i).run(|| nham_netns::link_counters("eth0"));
            let drops = nham_netns::sockdiag::SockDiag::open(&lab.vnf_netns(i).path())
                .and_then(|mut d| d.packet_sockets())
                .map(|s| nham_netns::sockdiag::VnfSockets::of(&s).drops);
            format!("hop {i}: SFF end {sff_end:?}, VNF end {vnf_end:?}, VNF socket drops {drops:?}")
        })
        .collect();
    let v = trial.verdict;
    assert_eq!(
        (v.lost, v.duplicated, v.reordered, v.digest_equal),
        (0, 0, 0, true),
        "{v:?}, sff {stats:?}, status {status}, links {links:#?}"
    );
    assert_eq!(
        stats.malformed_from_vnf + stats.si_mismatch + stats.fenced,
        0,
        "{stats:?}"
    );
    assert_eq!(lab.vnf_states().expect("VNF states"), states);
}

/// Fencing in the data path. A hop's VNF runs on host 0, its replica (a
/// second monitor at the initial state) on host 1, behind the hop's
/// standby port: a tunnel with a VNI of its own. Half way through the
/// traffic the VNF stops (frozen: its socket fills with input it has not
/// answered) and host 0 is cut off; `FailOver` moves the hop to the replica
/// and replays everything held. The sink sees each frame once, in order,
/// and the replica ends in the failure-free state. Then host 0 comes back
/// and its VNF resumes, answering the input it still had: its frames are
/// valid NSH of the chain, but they come from an incarnation that is no
/// longer the hop's, and none is accepted: all are counted as fenced.
#[test]
fn a_vnf_on_a_host_cut_off_fails_over_to_another_host_and_is_fenced() {
    let _serial = serial();
    use nham_bench::lab::{Lab, LabSff};
    use nham_sff::remote::{FailOverOutcome, SffClient};
    use nham_vnf::Kind;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut hosts = HostLab::new(2, 0).expect("the lab of hosts");
    let kinds = [Kind::Monitor, Kind::Monitor];
    let lab = Lab::across_hosts(&kinds, vnf_bin(), &mut hosts, &[0, 1]).expect("the chain");
    let mut config = lab.sff_config(LabSff {
        protect: true,
        ..LabSff::default()
    });
    let replica = config.hops.pop();
    config.standby = vec![replica];
    config.protect = vec![true];
    let sff = nham_sff::spawn(Some(lab.sff_netns().path()), config).expect("the SFF");
    let client = SffClient::local(&sff).expect("client");
    let spec = spec(3000);
    let frames = spec.frames();
    let (expected, states) = nham_vnf::reference(&[Kind::Monitor], &frames);
    let old = Pid::from_raw(lab.vnf_pid(0) as i32);
    let trial = std::thread::scope(|s| {
        let t = s.spawn(|| lab.trial_frames(frames, spec.rate, &expected, &sff));
        std::thread::sleep(Duration::from_millis(300));
        kill(old, Signal::SIGSTOP).expect("freezing the VNF");
        // Input keeps coming for it, up to its window.
        std::thread::sleep(Duration::from_millis(50));
        hosts.cut_off(0).expect("cutting host 0 off");
        match client.fail_over(0, None).expect("failover") {
            FailOverOutcome::Switched(r) => assert!(r.replay > 0, "replayed: {r:?}"),
            o => panic!("not switched: {o:?}"),
        }
        t.join().expect("trial thread")
    })
    .expect("trial");
    let v = trial.verdict;
    assert_eq!(
        (v.lost, v.duplicated, v.reordered, v.digest_equal),
        (0, 0, 0, true),
        "{v:?}"
    );
    assert_eq!(lab.vnf_state(1).expect("replica state"), states[0]);
    let before = sff.counters().snapshot();
    assert_eq!(before.fenced, 0, "nothing from host 0 yet: {before:?}");

    // Host 0 back, its VNF resumes: what it sends is fenced.
    hosts.reconnect(0).expect("host 0 back");
    kill(old, Signal::SIGCONT).expect("resuming the VNF");
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = sff.counters().snapshot();
        if now.fenced > 0 {
            // Whatever else it had queued comes within a moment.
            std::thread::sleep(Duration::from_millis(300));
            break sff.counters().snapshot();
        }
        assert!(
            Instant::now() < deadline,
            "the old incarnation's frames never arrived: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (after.accepted, after.egress, after.stale),
        (before.accepted, before.egress, before.stale),
        "nothing of the old incarnation accepted: {after:?}"
    );
    sff.stop().expect("SFF ran");
}

/// A host as `ListHosts` shows it: name, state, whether it answered.
type Listed = (String, nham_control::api::HostState, bool);

/// The hosts as the `nhamd` at `addr` lists them, and whether it reaches
/// etcd.
fn list_hosts(rt: &tokio::runtime::Runtime, addr: &str) -> Result<(Vec<Listed>, bool)> {
    use nham_control::api::{host_service_client::HostServiceClient, HostState, ListHostsRequest};
    rt.block_on(async {
        let channel = nham_control::connect(addr).await?;
        let r = HostServiceClient::new(channel)
            .list_hosts(ListHostsRequest {})
            .await?
            .into_inner();
        let hosts = r
            .hosts
            .iter()
            .map(|h| {
                let state = HostState::try_from(h.state).unwrap_or(HostState::Unspecified);
                (h.name.clone(), state, h.this_host)
            })
            .collect();
        Ok((hosts, r.etcd_reachable))
    })
}

fn state_of(hosts: &[Listed], name: &str) -> Option<nham_control::api::HostState> {
    hosts.iter().find(|h| h.0 == name).map(|h| h.1)
}

/// The states `host` takes in the `HostChanged` events of the `nhamd` at
/// `addr`, up to `until` (included): those states, when `until` came, and
/// its detection time.
async fn host_changes(
    addr: String,
    host: &'static str,
    until: nham_control::api::HostState,
) -> Result<(Vec<nham_control::api::HostState>, Instant, f64)> {
    use nham_control::api::{
        event_service_client::EventServiceClient, watch_events_response::Event as E, HostState,
        WatchEventsRequest,
    };
    let channel = nham_control::connect(&addr).await?;
    let mut stream = EventServiceClient::new(channel)
        .watch_events(WatchEventsRequest {
            chain: String::new(),
            since_id: None,
        })
        .await?
        .into_inner();
    let mut states = Vec::new();
    while let Some(e) = stream.message().await? {
        if let Some(E::HostChanged(h)) = e.event {
            if h.host == host {
                states.push(HostState::try_from(h.state)?);
                if h.state == until as i32 {
                    return Ok((states, Instant::now(), h.detection_ms));
                }
            }
        }
    }
    anyhow::bail!("the event stream of {addr} ended")
}

/// Hosts of a cluster find each other through etcd and watch each other
/// through heartbeats (every 10 ms, judged down after 5 silent ones):
/// three `nhamd`s on three hosts of the lab, an etcd cluster of three.
/// - Each lists all three, alive.
/// - A host whose `nhamd` is killed is judged down by the others within a
///   second of the kill (the event names the detection time), and is gone
///   from the cluster once its lease (3 s) expires.
/// - A host cut off is judged down, and alive again once it is back.
/// - A host whose `nhamd` stops cleanly says it leaves: never judged down,
///   gone from the list at once; restarted, it is alive again.
/// - With all of etcd down, `nhamd` still answers, says etcd is
///   unreachable, and heartbeats go on: the hosts it knew stay alive.
#[test]
fn nhamd_hosts_find_each_other_through_etcd_and_judge_a_silent_one_down() {
    let _serial = serial();
    use nham_control::api::HostState;
    let nhamd = nham_bench::ha::sibling_binary("nhamd", "NHAM_NHAMD").expect("nhamd");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let mut lab = HostLab::new(3, 3).expect("the lab of hosts");
    for i in 0..3 {
        lab.start_nhamd(i, &nhamd).expect("nhamd");
    }
    let all_alive = |lab: &HostLab, i: usize| -> Result<()> {
        let (hosts, etcd) = list_hosts(&rt, &lab.nhamd_addr(i))?;
        let alive = hosts.iter().filter(|h| h.1 == HostState::Alive).count();
        anyhow::ensure!(etcd && alive == 3, "h{i} sees {hosts:?}, etcd {etcd}");
        Ok(())
    };
    for i in 0..3 {
        eventually(Duration::from_secs(20), || all_alive(&lab, i))
            .unwrap_or_else(|e| panic!("{e}: {}", lab.nhamd_log(i)));
    }
    let (hosts, _) = list_hosts(&rt, &lab.nhamd_addr(0)).unwrap();
    assert_eq!(
        hosts[0],
        ("h0".into(), HostState::Alive, true),
        "itself first"
    );

    // h2's nhamd killed: h0 judges it down, fast, and says so in an event.
    let watch = rt.spawn(host_changes(lab.nhamd_addr(0), "h2", HostState::Down));
    std::thread::sleep(Duration::from_millis(200));
    let killed = Instant::now();
    lab.kill_nhamd(2);
    let (_, seen, detection_ms) = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), watch).await })
        .expect("h2 judged down within 5 s")
        .expect("watch task")
        .expect("watch");
    let since_kill = seen.duration_since(killed);
    eprintln!("h2 killed: judged down {since_kill:?} after the kill, detection {detection_ms:.1} ms from last heard");
    assert!(
        since_kill < Duration::from_secs(1),
        "judged down {since_kill:?} after the kill"
    );
    assert!(
        detection_ms >= 50.0,
        "never before 5 silent intervals: {detection_ms}"
    );
    eventually(Duration::from_secs(15), || {
        let (hosts, _) = list_hosts(&rt, &lab.nhamd_addr(0))?;
        anyhow::ensure!(
            state_of(&hosts, "h2").is_none(),
            "h2 still listed: {hosts:?}"
        );
        Ok(())
    })
    .expect("h2 left the cluster once its lease expired");

    // h1 cut off: down; back: alive.
    lab.cut_off(1).expect("cut h1 off");
    eventually(Duration::from_secs(5), || {
        let (hosts, _) = list_hosts(&rt, &lab.nhamd_addr(0))?;
        anyhow::ensure!(state_of(&hosts, "h1") == Some(HostState::Down), "{hosts:?}");
        Ok(())
    })
    .expect("h1 judged down while cut off");
    lab.reconnect(1).expect("h1 back");
    eventually(Duration::from_secs(5), || {
        let (hosts, _) = list_hosts(&rt, &lab.nhamd_addr(0))?;
        anyhow::ensure!(
            state_of(&hosts, "h1") == Some(HostState::Alive),
            "{hosts:?}"
        );
        // And registered again (its etcd session broke while it was cut
        // off): a clean stop revokes the lease of a session that runs.
        let (_, etcd) = list_hosts(&rt, &lab.nhamd_addr(1))?;
        anyhow::ensure!(etcd, "h1 not back in etcd yet");
        Ok(())
    })
    .expect("h1 alive once back");

    // h1's nhamd stopped cleanly: it says it leaves, so h0 never judges it
    // down, and its registration goes (at once when its lease is revoked).
    let watch = rt.spawn(host_changes(lab.nhamd_addr(0), "h1", HostState::Left));
    std::thread::sleep(Duration::from_millis(200));
    let stopped = Instant::now();
    lab.stop_nhamd(1);
    let (states, left, _) = rt
        // At once when its lease is revoked (5-21 ms seen); if h1's etcd
        // session was broken at the stop, when the lease expires (3 s).
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), watch).await })
        .expect("h1 left within 5 s of a clean stop")
        .expect("watch task")
        .expect("watch");
    eprintln!(
        "h1 stopped cleanly: {states:?}, left {:?} after the stop",
        left.duration_since(stopped)
    );
    // (Leaving comes first unless h0's heartbeat thread hears the goodbye
    // after its etcd task sees the registration go: either way, no Down.)
    assert!(
        !states.contains(&HostState::Down) && states.last() == Some(&HostState::Left),
        "a clean stop is never judged down: {states:?}"
    );
    lab.start_nhamd(1, &nhamd).expect("h1's nhamd again");
    eventually(Duration::from_secs(10), || {
        let (hosts, _) = list_hosts(&rt, &lab.nhamd_addr(0))?;
        anyhow::ensure!(
            state_of(&hosts, "h1") == Some(HostState::Alive),
            "{hosts:?}"
        );
        Ok(())
    })
    .expect("h1 alive again once restarted");

    // All of etcd down: nhamd answers, says so; heartbeats go on.
    for k in 0..3 {
        lab.kill_etcd(k);
    }
    eventually(Duration::from_secs(15), || {
        let (hosts, etcd) = list_hosts(&rt, &lab.nhamd_addr(0))?;
        anyhow::ensure!(!etcd, "etcd still reachable? {hosts:?}");
        anyhow::ensure!(
            state_of(&hosts, "h1") == Some(HostState::Alive),
            "{hosts:?}"
        );
        Ok(())
    })
    .expect("etcd unreachable, h1 still alive");
    std::thread::sleep(Duration::from_millis(500));
    let (hosts, _) = list_hosts(&rt, &lab.nhamd_addr(1)).expect("h1 answers without etcd");
    assert_eq!(state_of(&hosts, "h0"), Some(HostState::Alive), "{hosts:?}");
}

/// A lab of three hosts with etcd on each and `nhamd` on h0 and h1, and an
/// HA trial for a chain's `nhamd` among them: four sample VNFs under
/// `mechanism`, a crash in each of `rounds` rounds, 2,000 frames/s, 200 ms
/// checkpoints.
fn cluster_and_chain(
    mechanism: nham_control::api::Mechanism,
    rounds: usize,
) -> (HostLab, nham_bench::ha::HaSpec) {
    let nhamd = nham_bench::ha::sibling_binary("nhamd", "NHAM_NHAMD").expect("nhamd");
    let mut hosts = HostLab::new(3, 3).expect("the lab of hosts");
    for i in 0..2 {
        hosts.start_nhamd(i, &nhamd).expect("nhamd");
    }
    let spec = nham_bench::ha::HaSpec {
        mechanism,
        kinds: nham_bench::ha::sample_chain(4),
        rounds: vec![1; rounds],
        fault: nham_control::api::Fault::Crash,
        rate: 2000.0,
        gap: Duration::from_millis(400),
        checkpoint_interval_ms: 200,
        flows: 32,
        nhamd,
        vnf_bin: vnf_bin().to_path_buf(),
        ..Default::default()
    };
    (hosts, spec)
}

/// Checkpoints kept on two hosts (issue 14, item 4). The chain's `nhamd`
/// (host "sff", four sample VNFs under 0R, 200 ms checkpoints) is in a
/// cluster with h0 and h1: each checkpoint is committed, and the packets
/// it includes released, only once another host keeps a copy (checked
/// against its hash there, and durable). Under traffic, with a VNF crashed
/// and restored each round, nothing is lost, duplicated or reordered and
/// every VNF ends in the failure-free state; h0 (the next host after
/// "sff" in name order) holds copies of every VNF's checkpoints, the
/// newest two of each. A peer call without the cluster's token is
/// refused.
#[test]
fn checkpoints_are_committed_only_once_another_host_keeps_a_copy() {
    use nham_control::api::{peer_service_client::PeerServiceClient, StoreCheckpointRequest};
    let _serial = serial();
    let (mut hosts, spec) = cluster_and_chain(nham_control::api::Mechanism::Mechanism0r, 4);
    let r = nham_bench::ha::run_in_cluster(&spec, &mut hosts, "sff").expect("the trial");
    eprintln!(
        "0R with copies off the host: {} failures, recovery p50 {:.1} ms, checkpoint pause p50 {:.1} ms over {} checkpoints, lost {} dup {} reordered {}",
        r.failures, r.recovery_ms.p50, r.checkpoint_pause_ms.p50, r.checkpoints, r.lost, r.duplicated, r.reordered
    );
    assert!(r.is_exact(), "{r:#?}");
    assert!(
        r.checkpoints >= 4,
        "checkpoints committed: {}",
        r.checkpoints
    );
    let copies = hosts.state_dir(0).join("copies/sff/ha");
    let vnfs: Vec<_> = std::fs::read_dir(&copies)
        .unwrap_or_else(|e| panic!("{}: {e}", copies.display()))
        .flatten()
        .collect();
    assert_eq!(vnfs.len(), 4, "a directory of copies per VNF on h0");
    for v in vnfs {
        let files: Vec<_> = std::fs::read_dir(v.path()).unwrap().flatten().collect();
        assert!(
            (1..=2).contains(&files.len()),
            "{}: {} copies",
            v.path().display(),
            files.len()
        );
    }

    // Without the token: refused.
    let addr = format!(
        "http://{}:{}",
        hosts.hosts()[0].addr,
        nham_bench::hosts::PEER_PORT
    );
    let status = hosts.hosts()[1]
        .netns
        .run(move || {
            // A runtime of this thread: its sockets are made in h1.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let mut c = PeerServiceClient::connect(addr).await.expect("connect");
                let parts = tokio_stream::iter(Vec::<StoreCheckpointRequest>::new());
                c.store_checkpoint(parts).await.expect_err("refused")
            })
        })
        .expect("in h1");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

/// The data path never waits on etcd (issue 14, items 1 and 7): the
/// chain's `nhamd` (host "sff", four sample VNFs under 1R-AS, copies of
/// each checkpoint on another host) loses all of etcd two seconds into the
/// traffic; VNFs crash round after round and are recovered on their host,
/// checkpoints go on being committed with their copies (host to host, no
/// etcd in between): nothing lost, duplicated or reordered, every VNF in
/// the failure-free state, and h0 keeps receiving copies after etcd died.
#[test]
fn with_all_of_etcd_down_vnf_crashes_are_recovered_and_copies_go_on() {
    let _serial = serial();
    let (mut hosts, spec) = cluster_and_chain(nham_control::api::Mechanism::Mechanism1rAs, 8);
    let etcd = hosts.etcd_pids();
    let copies = hosts.state_dir(0).join("copies/sff/ha");
    let killed = std::sync::Mutex::new(None);
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_secs(4));
            for pid in &etcd {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            *killed.lock().unwrap() = Some(std::time::SystemTime::now());
        });
        nham_bench::ha::run_in_cluster(&spec, &mut hosts, "sff").expect("the trial")
    });
    let killed = killed
        .into_inner()
        .unwrap()
        .expect("etcd was killed during the trial");
    eprintln!(
        "1R-AS, etcd down: {} failures, recovery p50 {:.1} ms, {} checkpoints (copy p50 {:.1} ms), lost {} dup {} reordered {}",
        r.failures, r.recovery_ms.p50, r.checkpoints, r.checkpoint_copy_ms.p50, r.lost, r.duplicated, r.reordered
    );
    assert!(r.is_exact(), "{r:#?}");
    assert_eq!(r.failures, 8, "every round's crash recovered");
    let newest_copy = std::fs::read_dir(&copies)
        .expect("copies on h0")
        .flatten()
        .flat_map(|v| std::fs::read_dir(v.path()).unwrap().flatten())
        .filter_map(|f| f.metadata().ok()?.modified().ok())
        .max()
        .expect("a copy");
    assert!(
        newest_copy > killed,
        "copies went on after etcd died ({newest_copy:?} <= {killed:?})"
    );
}

/// A chain "far" of two monitors without a mechanism, owned by host
/// "sff" (an `nhamd` in the lab's SFF namespace, joined to the underlay)
/// and run on hosts of a cluster of three (h0 to h2, etcd on all three).
struct FarChain {
    // Dropped in this order: the owner's nhamd, then the lab, the hosts.
    _owner: Owner,
    rt: tokio::runtime::Runtime,
    addr: String,
    dir: std::path::PathBuf,
    chains: nham_control::api::chain_service_client::ChainServiceClient<tonic::transport::Channel>,
    events: tonic::Streaming<nham_control::api::WatchEventsResponse>,
    lab: nham_bench::lab::Lab,
    hosts: HostLab,
}

/// The owner's `nhamd` (working in directory `.1`): stopped on drop as
/// an operator stops it (SIGTERM: its chains and their SFFs go with it),
/// killed if it does not stop within 10 s, and then any SFF of its left
/// behind is killed too — even when a test fails.
struct Owner(std::process::Child, std::path::PathBuf);

impl Drop for Owner {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let dir = self.1.display().to_string();
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline).contains(&dir);
            if let (true, Some(pid)) = (ours, p.file_name().to_str().and_then(|n| n.parse().ok())) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl FarChain {
    /// The cluster, the owner, and the chain with VNF `i` on host
    /// `placement[i]`, created, unprotected.
    fn new(placement: &[&str]) -> Self {
        Self::protected(placement, nham_control::api::Mechanism::None)
    }

    /// [`FarChain::new`], every VNF under `mechanism` (checkpoints every
    /// 200 ms).
    fn protected(placement: &[&str], mechanism: nham_control::api::Mechanism) -> Self {
        use nham_control::api::{
            chain_service_client::ChainServiceClient, event_service_client::EventServiceClient,
            ChainSpec, ClassifierRule, CreateChainRequest, VnfSpec, WatchEventsRequest,
        };
        let nhamd = nham_bench::ha::sibling_binary("nhamd", "NHAM_NHAMD").expect("nhamd");
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        let mut hosts = HostLab::new(3, 3).expect("the lab of hosts");
        for i in 0..3 {
            hosts.start_nhamd(i, &nhamd).expect("nhamd");
        }
        let lab = nham_bench::lab::Lab::new(&[], vnf_bin()).expect("the chain's namespaces");
        let dir = std::env::temp_dir().join(nham_netns::unique_name("nham-remote-"));
        std::fs::create_dir_all(&dir).unwrap();
        let sff_underlay = hosts.attach(lab.sff_netns()).expect("attached");
        let argv = hosts.nhamd_args(&dir, "sff", sff_underlay).expect("flags");
        let owner = Owner(
            nham_bench::ha::spawn_nhamd(lab.sff_netns(), &nhamd, argv, &dir.join("nhamd.log"))
                .expect("the owner's nhamd"),
            dir.clone(),
        );
        let addr = format!("unix:{}", dir.join("nhamd.sock").display());
        let log = || std::fs::read_to_string(dir.join("nhamd.log")).unwrap_or_default();
        eventually(Duration::from_secs(20), || {
            let (listed, _) = list_hosts(&rt, &addr)?;
            let alive = listed
                .iter()
                .filter(|h| h.1 == nham_control::api::HostState::Alive)
                .count();
            anyhow::ensure!(alive == 4, "{listed:?}");
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}: {}", log()));
        let vnf = |i: usize, host: &str| VnfSpec {
            name: format!("v{i}"),
            command: vec![
                vnf_bin().display().to_string(),
                "--kind".into(),
                "monitor".into(),
                "--iface".into(),
                "{iface}".into(),
                "--state".into(),
                dir.join(format!("v{i}.json")).display().to_string(),
            ],
            host: host.into(),
            mechanism: mechanism as i32,
            checkpoint_interval_ms: 200,
            ..Default::default()
        };
        let channel = rt
            .block_on(nham_control::connect(&addr))
            .expect("the owner's API");
        let mut chains = ChainServiceClient::new(channel.clone());
        let events = rt
            .block_on(
                EventServiceClient::new(channel).watch_events(WatchEventsRequest {
                    chain: "far".into(),
                    since_id: None,
                }),
            )
            .expect("events")
            .into_inner();
        rt.block_on(
            chains.create_chain(CreateChainRequest {
                request_id: String::new(),
                spec: Some(ChainSpec {
                    name: "far".into(),
                    spi: 77,
                    vnfs: placement
                        .iter()
                        .enumerate()
                        .map(|(i, h)| vnf(i, h))
                        .collect(),
                    rules: vec![ClassifierRule {
                        protocol: 17,
                        ..Default::default()
                    }],
                    ingress_interface: "in0".into(),
                    egress_interface: "out0".into(),
                }),
            }),
        )
        .unwrap_or_else(|e| panic!("CreateChain: {e}: {}", log()));
        Self {
            _owner: owner,
            rt,
            addr,
            dir,
            chains,
            events,
            lab,
            hosts,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nhamd.log")).unwrap_or_default()
    }

    /// The chain's VNFs as `GetChain` shows them.
    fn vnfs(&mut self) -> Vec<nham_control::api::VnfStatus> {
        let r = self.rt.block_on(
            self.chains
                .get_chain(nham_control::api::GetChainRequest { name: "far".into() }),
        );
        r.expect("GetChain")
            .into_inner()
            .chain
            .expect("the chain")
            .vnfs
    }

    /// The chain's SFF counters.
    fn stats(&self) -> nham_control::api::GetStatsResponse {
        self.rt.block_on(async {
            let c = nham_control::connect(&self.addr).await.expect("connect");
            nham_control::api::event_service_client::EventServiceClient::new(c)
                .get_stats(nham_control::api::GetStatsRequest {
                    chain: "far".into(),
                })
                .await
                .expect("GetStats")
                .into_inner()
        })
    }

    /// `frames` through the chain: every frame once, in order, as
    /// `expected` says.
    fn exact(&self, frames: Vec<Vec<u8>>, expected: &[Vec<u8>]) {
        let trial = self
            .lab
            .trial_through(frames, Some(5000.0), expected, None)
            .expect("trial");
        let v = trial.verdict;
        assert_eq!(
            (v.lost, v.duplicated, v.reordered, v.digest_equal),
            (0, 0, 0, true),
            "{v:?}: {}",
            self.log()
        );
    }

    /// Waits for VNF `vnf`'s recovery: its detection and recovery times.
    fn recovered(&mut self, vnf: &str) -> (Option<f64>, f64) {
        use nham_control::api::watch_events_response::Event as E;
        let events = &mut self.events;
        let r = self.rt.block_on(async {
            let mut detection = None;
            loop {
                let e = tokio::time::timeout(Duration::from_secs(15), events.message())
                    .await??
                    .ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
                match e.event {
                    Some(E::FailureDetected(f)) if e.vnf == vnf => detection = Some(f.detection_ms),
                    Some(E::RecoveryFinished(r)) if e.vnf == vnf => {
                        return Ok::<_, anyhow::Error>((detection, r.recovery_ms))
                    }
                    Some(E::RecoveryFailed(r)) => anyhow::bail!("recovery failed: {}", r.reason),
                    _ => {}
                }
            }
        });
        r.unwrap_or_else(|e| panic!("{e}: {}", self.log()))
    }

    /// Waits until every VNF of `vnfs` has had a checkpoint committed.
    fn checkpointed(&mut self, vnfs: &[&str]) {
        use nham_control::api::watch_events_response::Event as E;
        let events = &mut self.events;
        let mut left: std::collections::BTreeSet<String> =
            vnfs.iter().map(|v| v.to_string()).collect();
        let r = self.rt.block_on(async {
            while !left.is_empty() {
                let e = tokio::time::timeout(Duration::from_secs(15), events.message())
                    .await??
                    .ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
                match e.event {
                    Some(E::CheckpointTaken(_)) => {
                        left.remove(&e.vnf);
                    }
                    Some(E::CheckpointFailed(f)) => eprintln!("{}: {}", e.vnf, f.reason),
                    _ => {}
                }
            }
            Ok::<_, anyhow::Error>(())
        });
        r.unwrap_or_else(|e| panic!("no checkpoint of {left:?}: {e}: {}", self.log()));
    }

    /// VNF `i`'s state through its `--state` file (SIGUSR1 writes it).
    fn vnf_state(&self, i: usize, pid: u32) -> Result<nham_vnf::State> {
        anyhow::ensure!(pid > 1, "no pid");
        let file = self.dir.join(format!("v{i}.json"));
        let _ = std::fs::remove_file(&file);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGUSR1,
        )?;
        eventually(Duration::from_secs(5), || {
            Ok(serde_json::from_slice(&std::fs::read(&file)?)?)
        })
    }
}

impl Drop for FarChain {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // The working directories and logs its VNFs had on their hosts.
        let hosted = std::path::Path::new(nham_control::cluster::hosting::HOSTED_DIR);
        let _ = std::fs::remove_dir_all(hosted.join("sff/far"));
    }
}

/// VNFs on other hosts (issue 14, items 1, 2 and 5, for VNFs without a
/// mechanism): the chain's `nhamd` (host "sff") keeps the SFF and asks h0
/// and h1 to run its two VNFs (`VnfSpec.host`), each reached through a
/// tunnel of its own (a VNI per incarnation). Every frame arrives once, in
/// order, and both VNFs end in the failure-free state; `GetChain` says
/// where each runs. Then h0 fails as a powered-off host does (its link
/// down, its `nhamd` and everything it ran killed at once): "sff" judges
/// it down, places the VNF again on the live host that runs fewest of the
/// chain's VNFs (h2), and switches the hop to it. Started afresh (it has no
/// mechanism), that VNF then sees exactly the traffic sent after its
/// recovery; the one on h1 everything.
#[test]
fn vnfs_run_on_other_hosts_and_a_lost_host_s_vnf_is_placed_again() {
    use nham_control::api::VnfState;
    use nham_vnf::Kind;
    let _serial = serial();
    let mut far = FarChain::new(&["h0", "h1"]);
    let placed = far.vnfs();
    let where_: Vec<&str> = placed.iter().map(|v| v.host.as_str()).collect();
    assert_eq!(where_, ["h0", "h1"], "{placed:?}");

    // Failure-free: exact, through both tunnels.
    let kinds = [Kind::Monitor, Kind::Monitor];
    let first = spec(2000).frames();
    let (expected, _) = nham_vnf::reference(&kinds, &first);
    far.exact(first.clone(), &expected);

    // h0 fails: its VNF is placed again on h2.
    let failed = Instant::now();
    far.hosts.fail_host(0).expect("h0 fails");
    let (detection_ms, recovery_ms) = far.recovered("v0");
    eprintln!(
        "h0 lost: detection {detection_ms:?} ms, VNF placed again {recovery_ms:.1} ms after it was detected ({:?} after the kill)",
        failed.elapsed()
    );
    let placed = far.vnfs();
    assert_eq!(placed[0].host, "h2", "{placed:?}");
    assert_eq!(placed[0].state, VnfState::Running as i32, "{placed:?}");
    assert_eq!(placed[0].failures, 1, "{placed:?}");
    assert_eq!(placed[1].host, "h1", "{placed:?}");

    // After the recovery: exact again, the new incarnation from scratch.
    let second = spec(2000).frames();
    let (expected, _) = nham_vnf::reference(&kinds, &second);
    far.exact(second.clone(), &expected);
    let (_, after) = nham_vnf::reference(&kinds[..1], &second);
    let all: Vec<Vec<u8>> = first.into_iter().chain(second).collect();
    let (_, before) = nham_vnf::reference(&kinds, &all);
    assert_eq!(
        far.vnf_state(0, placed[0].pid).expect("v0's state"),
        after[0],
        "the VNF placed again saw the second traffic only"
    );
    assert_eq!(
        far.vnf_state(1, placed[1].pid).expect("v1's state"),
        before[1],
        "the VNF on h1 saw everything"
    );
}

/// A partitioned VNF host (issue 14, item 7, for VNFs without a
/// mechanism): h0 is cut off while its VNF, frozen, has input queued that
/// it has not answered. "sff" judges h0 down and places the VNF again on
/// h2; the chain is exact again. When h0 is back its old incarnation,
/// thawed, may answer what it had before "sff" reaches h0 and stops it:
/// valid NSH of the chain, through its own tunnel, from an incarnation
/// that is no longer the hop's: none of it is accepted (what arrives is
/// fenced, as `a_vnf_on_a_host_cut_off_fails_over_to_another_host_and_is_fenced`
/// counts), and the old incarnation is gone within seconds.
#[test]
fn a_partitioned_host_s_old_incarnation_is_fenced_and_stopped_once_it_is_back() {
    use nham_vnf::Kind;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let _serial = serial();
    let mut far = FarChain::new(&["h0", "h1"]);
    let kinds = [Kind::Monitor, Kind::Monitor];
    let first = spec(1000).frames();
    let (expected, _) = nham_vnf::reference(&kinds, &first);
    far.exact(first.clone(), &expected);
    let old = Pid::from_raw(far.vnfs()[0].pid as i32);

    // Frozen, it gets input it does not answer; then h0 is cut off.
    kill(old, Signal::SIGSTOP).expect("freezing the VNF on h0");
    let queued = spec(200).frames();
    let _ = far.lab.trial_through(queued, Some(5000.0), &[], None);
    far.hosts.cut_off(0).expect("h0 cut off");
    far.recovered("v0");
    assert_eq!(far.vnfs()[0].host, "h2");
    let second = spec(1000).frames();
    let (expected, _) = nham_vnf::reference(&kinds, &second);
    far.exact(second, &expected);
    let during = far.stats();
    assert_eq!(
        during.fenced, 0,
        "nothing from h0 while cut off: {during:?}"
    );

    // h0 back, its old incarnation thawed: what it sends is fenced, and
    // it is stopped.
    far.hosts.reconnect(0).expect("h0 back");
    // Thawed at once: it answers what it had as soon as h0's link
    // carries, while "sff" stops it as soon as it reaches h0 (whichever
    // comes first: a race any real partition has too).
    let _ = kill(old, Signal::SIGCONT);
    let gone = eventually(Duration::from_secs(10), || {
        anyhow::ensure!(
            kill(old, None).is_err()
                || nham_netns::process_state(old.as_raw() as u32).is_some_and(|(s, _)| s == 'Z'),
            "the old incarnation on h0 still runs"
        );
        Ok(())
    });
    let after = far.stats();
    eprintln!(
        "h0 partitioned: fenced {} of its old incarnation's answers; stopped: {}",
        after.fenced,
        gone.is_ok()
    );
    gone.unwrap_or_else(|e| panic!("{e}: {}", far.log()));
    assert_eq!(
        (after.egress, after.duplicates_suppressed),
        (during.egress, during.duplicates_suppressed),
        "nothing of the old incarnation accepted: {after:?}"
    );
}

/// Injects a crash into VNF `vnf` of chain "far" through the `nhamd` at
/// `addr`.
fn crash(rt: &tokio::runtime::Runtime, addr: &str, vnf: &str) {
    use nham_control::api::{vnf_service_client::VnfServiceClient, Fault, InjectFaultRequest};
    rt.block_on(async {
        let c = nham_control::connect(addr).await?;
        VnfServiceClient::new(c)
            .inject_fault(InjectFaultRequest {
                chain: "far".into(),
                vnf: vnf.into(),
                fault: Fault::Crash as i32,
                ..Default::default()
            })
            .await?;
        Ok::<_, anyhow::Error>(())
    })
    .unwrap_or_else(|e| panic!("crashing {vnf}: {e}"));
}

/// A protected VNF on a lost host (issue 14, items 4, 5 and 7, for 0R):
/// the chain's two monitors run on h0 and h1 under 0R, checkpointed every
/// 200 ms through their hosts (CRIU dumps there, each image brought to
/// "sff", stored, and copied to another host, before the packets it
/// includes are released); after its first, each has a standby place on
/// another host (namespace, tunnel, SFF port, a CRIU worker waiting).
/// Under traffic, v1's process crashes, then h0 fails as a powered-off
/// host does: "sff" judges it down; each time the VNF's restore point is
/// sent to its standby place, restored there, and the SFF replays
/// everything after it. Every frame arrives once, in order, and both VNFs
/// end in the failure-free state.
#[test]
fn a_0r_vnf_on_a_lost_host_is_restored_on_another_from_its_checkpoint() {
    use nham_control::api::Mechanism;
    use nham_vnf::Kind;
    let _serial = serial();
    let mut far = FarChain::protected(&["h0", "h1"], Mechanism::Mechanism0r);
    far.checkpointed(&["v0", "v1"]);
    let kinds = [Kind::Monitor, Kind::Monitor];
    let traffic = nham_traffic::TrafficSpec {
        rate: Some(2000.0),
        ..spec(8000)
    };
    let frames = traffic.frames();
    let (expected, states) = nham_vnf::reference(&kinds, &frames);
    let (lab, hosts, rt, addr) = (&far.lab, &mut far.hosts, &far.rt, &far.addr);
    let trial = std::thread::scope(|s| {
        let t = s.spawn(|| lab.trial_through(frames, traffic.rate, &expected, None));
        // v1's process crashes on h1 (h1 lives): restored there.
        std::thread::sleep(Duration::from_millis(800));
        crash(rt, addr, "v1");
        // h0 fails: v0 restored on h2.
        std::thread::sleep(Duration::from_millis(1200));
        hosts.fail_host(0).expect("h0 fails");
        t.join().expect("trial thread")
    })
    .expect("trial");
    let (detection_ms, recovery_ms) = far.recovered("v1");
    eprintln!(
        "0R, v1 crashed on h1 under traffic: detection {detection_ms:?} ms, restored {recovery_ms:.1} ms after it exited"
    );
    let (detection_ms, recovery_ms) = far.recovered("v0");
    eprintln!(
        "0R, h0 lost under traffic: detection {detection_ms:?} ms, restored on another host {recovery_ms:.1} ms after it was detected"
    );
    let v = trial.verdict;
    assert_eq!(
        (v.lost, v.duplicated, v.reordered, v.digest_equal),
        (0, 0, 0, true),
        "{v:?}: {}",
        far.log()
    );
    // Each restored on its standby place (made on another host after its
    // first checkpoint), away from h0.
    let placed = far.vnfs();
    assert!(
        placed.iter().all(|v| v.host != "h0" && v.failures == 1),
        "{placed:?}"
    );
    assert!(
        far.log().contains("restored on its standby place"),
        "{}",
        far.log()
    );
    for (i, want) in states.iter().enumerate() {
        assert_eq!(
            &far.vnf_state(i, placed[i].pid).expect("state"),
            want,
            "v{i} in the failure-free state"
        );
    }
    published_and_routed(&mut far);
}

/// Item 1: the chain's placement and checkpoints are in etcd as its owner
/// publishes them (read through h1's etcd member: h0 failed), matching
/// `GetChain`, each VNF's last committed checkpoint kept on the owner and
/// on another host; and another host's `nhamd`, asked for the chain, names
/// its owner.
fn published_and_routed(far: &mut FarChain) {
    use nham_control::cluster::chains::ChainView;
    let view = eventually(Duration::from_secs(10), || {
        let placed = far.vnfs();
        let json = far
            .hosts
            .etcd_get(1, "/nham/v1/chains/far")?
            .ok_or_else(|| anyhow::anyhow!("no record of chain far"))?;
        let view: ChainView = serde_json::from_str(&json)?;
        for (v, p) in view.vnfs.iter().zip(&placed) {
            anyhow::ensure!(
                (&v.name, &v.host, v.replica_host.as_deref().unwrap_or(""))
                    == (&p.name, &p.host, p.replica_host.as_str()),
                "{view:?} against {placed:?}"
            );
            anyhow::ensure!(v.committed.is_some() && v.kept_on.len() == 2, "{view:?}");
        }
        Ok(view)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(view.owner, "sff", "{view:?}");
    assert!(
        view.vnfs
            .iter()
            .all(|v| v.kept_on[0] == "sff" && v.kept_on[1] != "sff"),
        "{view:?}"
    );
    // (Asked again while etcd elects a leader after h0's member was cut
    // off with it.)
    let other = far.hosts.nhamd_addr(1);
    let rt = &far.rt;
    let status = eventually(Duration::from_secs(10), || {
        let status = rt
            .block_on(async {
                let c = nham_control::connect(&other).await?;
                let r = nham_control::api::chain_service_client::ChainServiceClient::new(c)
                    .get_chain(nham_control::api::GetChainRequest { name: "far".into() })
                    .await;
                Ok::<_, anyhow::Error>(r)
            })?
            .expect_err("h1 does not own chain far");
        anyhow::ensure!(
            status.code() == tonic::Code::FailedPrecondition,
            "{status:?}"
        );
        Ok(status)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.message().contains("owned by host sff"), "{status:?}");
    // The refusal says where to ask (metadata), and nhamctl asks there.
    let owner_api = nham_control::error::owner_api(&status).expect("a redirect");
    assert_eq!(owner_api, far.addr, "{status:?}");
    let nhamctl = nham_bench::ha::sibling_binary("nhamctl", "NHAM_NHAMCTL").unwrap();
    let out = std::process::Command::new(nhamctl)
        .args(["--addr", &other, "get", "far"])
        .output()
        .expect("nhamctl");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("chain far (SPI") && stderr.contains("asking there"),
        "{stdout}\n{stderr}"
    );
    // Events of the chain are its owner's to send; its name is taken.
    rt.block_on(async {
        let c = nham_control::connect(&other).await.unwrap();
        let watch = nham_control::api::event_service_client::EventServiceClient::new(c.clone())
            .watch_events(nham_control::api::WatchEventsRequest {
                chain: "far".into(),
                since_id: None,
            })
            .await
            .map(|_| ())
            .expect_err("h1 sends no events of chain far");
        assert_eq!(
            nham_control::error::owner_api(&watch).as_deref(),
            Some(owner_api.as_str()),
            "{watch:?}"
        );
        let spec = nham_control::api::ChainSpec {
            name: "far".into(),
            spi: 77,
            vnfs: vec![nham_control::api::VnfSpec {
                name: "v".into(),
                command: vec!["true".into()],
                mechanism: nham_control::api::Mechanism::None as i32,
                ..Default::default()
            }],
            rules: vec![nham_control::api::ClassifierRule::default()],
            ingress_interface: "in0".into(),
            egress_interface: "out0".into(),
        };
        let created = nham_control::api::chain_service_client::ChainServiceClient::new(c)
            .create_chain(nham_control::api::CreateChainRequest {
                request_id: String::new(),
                spec: Some(spec),
            })
            .await
            .map(|_| ())
            .expect_err("chain far exists on sff");
        assert_eq!(created.code(), tonic::Code::AlreadyExists, "{created:?}");
        assert!(
            created.message().contains("host sff owns it"),
            "{created:?}"
        );
    });
}

/// 1R-AA across hosts (issue 14, items 3, 5 and 7): the chain's two
/// monitors run on h0 and h1 under 1R-AA; after each committed checkpoint
/// each gets a replica (a stopped copy restored from it) on a live host
/// other than its own, behind the hop's standby port. Under traffic h0
/// fails as a powered-off host does: "sff" judges it down, the SFF fails
/// v0's hop over to its replica and replays, and the replica runs. Every
/// frame arrives once, in order, both VNFs end in the failure-free state,
/// and v0 has a replica again afterwards, away from its new host.
#[test]
fn a_1r_aa_vnf_on_a_lost_host_fails_over_to_its_replica_on_another() {
    let _serial = serial();
    lost_host_with_a_copy_elsewhere(
        nham_control::api::Mechanism::Mechanism1rAa,
        "failed over to its replica",
    );
}

/// 1R-AS across hosts (issue 14, items 3, 5 and 7): as 1R-AA above, but
/// each VNF's standby on another host is the place of its next
/// incarnation (namespace, tunnel, standby port) with the last committed
/// checkpoint staged there, unpacked, and a `criu swrk` waiting; nothing
/// runs until h0 fails. Then v0's standby is restored at once, the SFF
/// fails the hop over to it and replays: exact, states equal.
#[test]
fn a_1r_as_vnf_on_a_lost_host_is_restored_on_its_standby_on_another() {
    let _serial = serial();
    lost_host_with_a_copy_elsewhere(
        nham_control::api::Mechanism::Mechanism1rAs,
        "its standby took over",
    );
}

/// v0 on h0 and v1 on h1 under `mechanism` (1R-AA or 1R-AS); h0 fails
/// under traffic; `took_over` must be in the owner's log.
fn lost_host_with_a_copy_elsewhere(mechanism: nham_control::api::Mechanism, took_over: &str) {
    use nham_vnf::Kind;
    let what = mechanism.as_str_name();
    let mut far = FarChain::protected(&["h0", "h1"], mechanism);
    far.checkpointed(&["v0", "v1"]);
    // A replica is restored after each checkpoint: let one be.
    far.checkpointed(&["v0", "v1"]);
    // Placed away from its VNF, and shown so (GetChain).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = far.vnfs();
        if v.iter().all(|v| !v.replica_host.is_empty()) {
            assert!(
                v.iter().all(|v| v.replica_host != v.host),
                "{what}: a copy away from its VNF: {v:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{what}: no copy placed: {v:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kinds = [Kind::Monitor, Kind::Monitor];
    let traffic = nham_traffic::TrafficSpec {
        rate: Some(2000.0),
        ..spec(6000)
    };
    let frames = traffic.frames();
    let (expected, states) = nham_vnf::reference(&kinds, &frames);
    let (lab, hosts) = (&far.lab, &mut far.hosts);
    let trial = std::thread::scope(|s| {
        let t = s.spawn(|| lab.trial_through(frames, traffic.rate, &expected, None));
        std::thread::sleep(Duration::from_millis(1500));
        hosts.fail_host(0).expect("h0 fails");
        t.join().expect("trial thread")
    })
    .expect("trial");
    let (detection_ms, recovery_ms) = far.recovered("v0");
    eprintln!(
        "{what}, h0 lost under traffic: detection {detection_ms:?} ms, running on another host {recovery_ms:.1} ms after it was detected"
    );
    let v = trial.verdict;
    assert_eq!(
        (v.lost, v.duplicated, v.reordered, v.digest_equal),
        (0, 0, 0, true),
        "{v:?}: {}",
        far.log()
    );
    let placed = far.vnfs();
    assert_ne!(placed[0].host, "h0", "{placed:?}");
    for (i, want) in states.iter().enumerate() {
        assert_eq!(
            &far.vnf_state(i, placed[i].pid).expect("state"),
            want,
            "v{i} in the failure-free state"
        );
    }
    let log = far.log();
    assert!(log.contains(took_over), "{what}: {took_over}: {log}");
}

/// Hosts lost in turn (issue 14, item 7): the chain's four sample VNFs
/// run on h0 and h1 (h2 spare), under 0R, 1R-AS and 1R-AA; h0 fails, its
/// VNFs are recovered on the others, h0 comes back empty; then h1 fails
/// likewise. Under traffic, through the HA harness: nothing lost,
/// duplicated or reordered, every VNF in the failure-free state, every
/// failure recovered.
#[test]
fn a_chain_loses_one_host_and_then_another() {
    use nham_control::api::Mechanism;
    let _serial = serial();
    let nhamd = nham_bench::ha::sibling_binary("nhamd", "NHAM_NHAMD").expect("nhamd");
    for mechanism in [
        Mechanism::Mechanism0r,
        Mechanism::Mechanism1rAs,
        Mechanism::Mechanism1rAa,
    ] {
        let (mut hosts, spec) = spread_over_two_hosts(mechanism, &nhamd);
        let r = nham_bench::ha::run_in_cluster(&spec, &mut hosts, "sff").expect("the trial");
        report(mechanism, "h0 then h1 lost", &r);
        assert_eq!(r.failures, 4, "two VNFs on each host lost");
    }
}

/// MR-AA across hosts (issue 14, items 3, 5 and 7): the chain's four
/// sample VNFs under MR-AA with two members each, member 0 on h0 or h1
/// and member 1 on another host (h2 spare at first). h0 fails (member 0 of
/// v0 and v2 lost: restored on a live host from the restore point, behind
/// a new tunnel in the failed member's port, caught up while member 1
/// serves), h0 comes back empty, then h1 fails (member 0 of v1 and v3 and
/// member 1 of v0 and v2). Under traffic: exact, and every member of every
/// VNF in the failure-free state.
#[test]
fn an_mr_aa_chain_loses_one_host_and_then_another() {
    use nham_control::api::Mechanism;
    let _serial = serial();
    let nhamd = nham_bench::ha::sibling_binary("nhamd", "NHAM_NHAMD").expect("nhamd");
    let mechanism = Mechanism::MrAa;
    let (mut hosts, spec) = spread_over_two_hosts(mechanism, &nhamd);
    let spec = nham_bench::ha::HaSpec {
        replicas: 2,
        ..spec
    };
    let r = nham_bench::ha::run_in_cluster(&spec, &mut hosts, "sff").expect("the trial");
    report(mechanism, "h0 then h1 lost", &r);
    assert!(
        r.failures >= 4,
        "at least two members on each host lost: {}",
        r.failures
    );
}

/// MR-AA members on other hosts crash (issue 14, item 5): as above, but
/// in each round member 1 of a VNF crashes (its host alive: restored there
/// and caught up while member 0 serves), then member 0 of another
/// (restored likewise while member 1 serves; its agent checkpoints the new
/// one). Exact, every member in the failure-free state.
#[test]
fn mr_aa_members_on_other_hosts_crash_and_catch_up() {
    use nham_control::api::Mechanism;
    let _serial = serial();
    let nhamd = nham_bench::ha::sibling_binary("nhamd", "NHAM_NHAMD").expect("nhamd");
    let mechanism = Mechanism::MrAa;
    for members in [vec![1], vec![0]] {
        let (mut hosts, spec) = spread_over_two_hosts(mechanism, &nhamd);
        let spec = nham_bench::ha::HaSpec {
            replicas: 2,
            host_failures: false,
            members,
            ..spec
        };
        let r = nham_bench::ha::run_in_cluster(&spec, &mut hosts, "sff").expect("the trial");
        report(mechanism, &format!("members {:?} crash", spec.members), &r);
        assert_eq!(r.failures, 2, "one VNF per round");
    }
}

/// A lab of three hosts (etcd and `nhamd` on each) and an HA trial of the
/// four sample VNFs under `mechanism` on h0 and h1 (h2 spare), two rounds
/// of host failures (h0, then h1), 2,000 frames/s, 400 ms checkpoints.
fn spread_over_two_hosts(
    mechanism: nham_control::api::Mechanism,
    nhamd: &std::path::Path,
) -> (HostLab, nham_bench::ha::HaSpec) {
    let mut hosts = HostLab::new(3, 3).expect("the lab of hosts");
    for i in 0..3 {
        hosts.start_nhamd(i, nhamd).expect("nhamd");
    }
    (hosts, two_host_failures(mechanism, nhamd))
}

/// The trial of [`spread_over_two_hosts`], without its lab.
fn two_host_failures(
    mechanism: nham_control::api::Mechanism,
    nhamd: &std::path::Path,
) -> nham_bench::ha::HaSpec {
    nham_bench::ha::HaSpec {
        mechanism,
        kinds: nham_bench::ha::sample_chain(4),
        rounds: vec![1, 1],
        fault: nham_control::api::Fault::Crash,
        rate: 2000.0,
        gap: Duration::from_millis(500),
        checkpoint_interval_ms: 400,
        flows: 32,
        nhamd: nhamd.to_path_buf(),
        vnf_bin: vnf_bin().to_path_buf(),
        placement: (0..4).map(|i| format!("h{}", i % 2)).collect(),
        host_failures: true,
        ..Default::default()
    }
}

/// Prints trial `r` (`what` under `mechanism`) and asserts it exact.
fn report(mechanism: nham_control::api::Mechanism, what: &str, r: &nham_bench::ha::HaReport) {
    eprintln!(
        "{}: {what}: {} VNF failures, detection p50 {:.1} ms, recovery p50 {:.1} ms, lost {} dup {} reordered {}, state mismatches {}",
        mechanism.as_str_name(),
        r.failures,
        r.detection_ms.p50,
        r.recovery_ms.p50,
        r.lost,
        r.duplicated,
        r.reordered,
        r.state_mismatches
    );
    assert!(r.is_exact(), "{}: {what}: {r:#?}", mechanism.as_str_name());
}

/// One etcd member dies under traffic (issue 14, item 7): four hosts,
/// etcd on h0, h1 and h2 (none on h3), the chain's four VNFs on h0 and h3
/// (h1 and h2 spare). Early in the trial the member on h0 is killed; then
/// h0 fails, and then h3 (a failed host's link is down, so its member is
/// out of reach too: the hosts that fail are chosen so that e1 and e2 stay
/// a quorum throughout — with a second member lost etcd has no quorum, and
/// a host that comes back cannot register until it does). Membership,
/// placement and recovery go on with two members: exact, states equal,
/// all four VNFs recovered.
#[test]
fn one_etcd_member_dies_under_traffic_and_hosts_still_fail_over() {
    use nham_control::api::Mechanism;
    let _serial = serial();
    let nhamd = nham_bench::ha::sibling_binary("nhamd", "NHAM_NHAMD").expect("nhamd");
    let mechanism = Mechanism::Mechanism1rAa;
    let spec = nham_bench::ha::HaSpec {
        placement: (0..4)
            .map(|i| if i % 2 == 0 { "h0" } else { "h3" }.to_string())
            .collect(),
        ..two_host_failures(mechanism, &nhamd)
    };
    let mut hosts = HostLab::new(4, 3).expect("the lab of hosts");
    for i in 0..4 {
        hosts.start_nhamd(i, &nhamd).expect("nhamd");
    }
    let e0 = hosts.etcd_pids()[0];
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(400));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(e0 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        let r = nham_bench::ha::run_in_cluster(&spec, &mut hosts, "sff");
        let logs = (0..4)
            .map(|i| format!("h{i}: {}", hosts.nhamd_log(i)))
            .collect::<Vec<_>>()
            .join("\n");
        match r {
            Ok(r) if r.is_exact() => r,
            Ok(r) => panic!("not exact: {r:#?}\n{logs}"),
            Err(e) => panic!("the trial: {e:#}\n{logs}"),
        }
    });
    report(mechanism, "etcd e0 dead, h0 then h3 lost", &r);
    assert_eq!(r.failures, 4, "two VNFs on each host lost");
}

/// A VNF host's `nhamd` restarts under traffic (issue 14, item 7): h0's,
/// then h1's, is killed and started again at once. The new one sweeps
/// what the old one ran for "sff" (those VNFs die); "sff" sees them gone
/// (or the host silent meanwhile) and recovers each by its mechanism, on
/// that host or another: exact, states equal.
#[test]
fn a_vnf_host_s_nhamd_restarts_under_traffic() {
    use nham_control::api::Mechanism;
    let _serial = serial();
    let nhamd = nham_bench::ha::sibling_binary("nhamd", "NHAM_NHAMD").expect("nhamd");
    let mechanism = Mechanism::Mechanism1rAs;
    let (mut hosts, mut spec) = spread_over_two_hosts(mechanism, &nhamd);
    spec.host_restarts = true;
    let r = nham_bench::ha::run_in_cluster(&spec, &mut hosts, "sff").expect("the trial");
    report(mechanism, "h0's nhamd restarted, then h1's", &r);
    assert_eq!(r.failures, 4, "two VNFs on each host lost");
}

/// No host to go to (issue 14, item 5): the chain's only VNF runs on h0;
/// h1 and h2 are stopped cleanly (they leave), then h0 fails. "sff" judges
/// h0 down and has nowhere to place the VNF: the hop stops (what comes for
/// it waits) and the VNF is failed, saying why. Once h1 is back, the VNF is
/// placed there, and the chain is exact again.
#[test]
fn a_vnf_with_no_live_host_left_is_placed_once_one_is_up() {
    use nham_control::api::VnfState;
    use nham_vnf::Kind;
    let _serial = serial();
    let nhamd = nham_bench::ha::sibling_binary("nhamd", "NHAM_NHAMD").expect("nhamd");
    let mut far = FarChain::new(&["h0"]);
    far.hosts.stop_nhamd(1);
    far.hosts.stop_nhamd(2);
    far.hosts.fail_host(0).expect("h0 fails");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = far.vnfs();
        if v[0].state == VnfState::Failed as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "not failed: {v:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    far.hosts.start_nhamd(1, &nhamd).expect("h1 back");
    let deadline = Instant::now() + Duration::from_secs(20);
    let placed = loop {
        let v = far.vnfs();
        if v[0].state == VnfState::Running as i32 && v[0].host == "h1" {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "not placed on h1: {v:?}: {}\nh1: {}\nvnf: {:?}",
            far.log(),
            far.hosts.nhamd_log(1),
            std::fs::read_to_string("/run/nham/hosted/sff/far/v0/vnf.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("placed once h1 was up: {placed:?}");
    let kinds = [Kind::Monitor];
    let frames = spec(1000).frames();
    let (expected, _) = nham_vnf::reference(&kinds, &frames);
    far.exact(frames, &expected);
}
