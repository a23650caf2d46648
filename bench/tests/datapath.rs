//! The data path for real: an SFF thread on AF_XDP ports, `nham-vnf`
//! processes in network namespaces of their own, traffic from a source
//! namespace to a sink namespace. Needs root (CI runs as root).

use std::path::Path;

use nham_bench::lab::{Lab, LabSff};
use nham_traffic::{FrameSize, TrafficSpec};
use nham_vnf::Kind;

/// The tests share two cores with their SFF threads, VNF processes,
/// generators and sinks: run them one at a time, or they starve each other
/// and measure the machine instead of NHAM.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn vnf_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nham-vnf"))
}

fn spec(count: u64) -> TrafficSpec {
    TrafficSpec {
        size: FrameSize::Fixed(64),
        flows: 16,
        count,
        rate: Some(5_000.0),
    }
}

fn run_chain(kinds: &[Kind], count: u64) {
    let _serial = serial();
    let lab = Lab::new(kinds, vnf_bin()).expect("building the lab");
    let sff = lab.start_sff(LabSff::default()).expect("starting the SFF");
    let spec = spec(count);
    let (expected, states) = nham_vnf::reference(kinds, &spec.frames());
    let trial = lab.trial(&spec, &expected, &sff).expect("trial");
    let stats = sff.stop().expect("SFF ran");
    let v = trial.verdict;
    assert_eq!(
        (v.lost, v.duplicated, v.reordered),
        (0, 0, 0),
        "{kinds:?}: {v:?}, sff {stats:?}"
    );
    assert!(
        v.digest_equal,
        "{kinds:?}: output differs from the reference"
    );
    assert_eq!(
        stats.malformed_from_vnf + stats.si_mismatch + stats.tx_refused,
        0,
        "{stats:?}"
    );
    assert_eq!(
        lab.vnf_states().expect("VNF states"),
        states,
        "{kinds:?}: VNF states"
    );
}

#[test]
fn forwards_without_vnfs() {
    run_chain(&[], 2000);
}

#[test]
fn forwards_through_one_to_four_vnfs() {
    run_chain(&[Kind::Monitor], 2000);
    run_chain(&[Kind::Monitor, Kind::Firewall], 2000);
    run_chain(&Kind::ALL, 2000);
}

/// Runs 1000 frames through one monitor VNF started with `inject`, and
/// returns (verdict, SFF counters).
fn with_injected(inject: &str) -> (nham_traffic::Verdict, nham_sff::SffStats) {
    let _serial = serial();
    let kinds = [Kind::Monitor];
    let lab = Lab::with_vnf_args(
        &kinds,
        vnf_bin(),
        &["--inject", inject, "--inject-every", "10"],
    )
    .expect("building the lab");
    let sff = lab.start_sff(LabSff::default()).expect("starting the SFF");
    let spec = spec(1000);
    let (expected, _) = nham_vnf::reference(&kinds, &spec.frames());
    let trial = lab.trial(&spec, &expected, &sff).expect("trial");
    // What the VNF's socket dropped (starved of CPU: the lab has no
    // Failure Detector to see it), for a failing assertion to name.
    let drops = nham_netns::sockdiag::SockDiag::open(&lab.vnf_netns(0).path())
        .and_then(|mut d| d.packet_sockets())
        .map(|s| nham_netns::sockdiag::VnfSockets::of(&s).drops);
    eprintln!("VNF socket drops: {drops:?}");
    (trial.verdict, sff.stop().expect("SFF ran"))
}

#[test]
fn non_nsh_frames_from_a_vnf_are_counted_and_dropped() {
    // Every 10th input the VNF also sends a frame that is not NSH.
    let (v, stats) = with_injected("garbage");
    assert_eq!(stats.malformed_from_vnf, 100, "{stats:?}");
    assert_eq!(
        (v.lost, v.duplicated, v.reordered, v.digest_equal),
        (0, 0, 0, true),
        "other traffic unharmed"
    );
}

#[test]
fn si_not_decremented_is_dropped() {
    // "The Service Index MUST be decremented by a value of 1 by Service
    // Functions": every 10th output keeps its SI and must not go on.
    let (v, stats) = with_injected("no-si");
    assert_eq!(stats.si_mismatch, 100, "{stats:?}");
    assert_eq!((v.lost, v.duplicated, v.reordered), (100, 0, 0));
}

#[test]
fn ttl_expiry_is_dropped() {
    // A TTL of 1 becomes 0 at the SFF's decrement: "The packet MUST NOT be
    // forwarded if TTL is, after decrement, 0."
    let (v, stats) = with_injected("ttl1");
    assert_eq!(stats.ttl_expired, 100, "{stats:?}");
    assert_eq!((v.lost, v.duplicated, v.reordered), (100, 0, 0));
}

#[test]
fn classifier_miss_and_malformed_ingress_are_counted() {
    let _serial = serial();
    let kinds = [Kind::Monitor];
    let lab = Lab::new(&kinds, vnf_bin()).expect("building the lab");
    let sff = lab.start_sff(LabSff::default()).expect("starting the SFF");
    let udp = spec(500).frames();
    let mut frames = Vec::new();
    for (i, f) in udp.iter().enumerate() {
        frames.push(f.clone());
        if i % 5 == 0 {
            // TCP: no rule for it (the lab's chain takes UDP); the XDP
            // program leaves it to the kernel.
            let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
                .ipv4([10, 0, 0, 1], [192, 0, 2, 1], 64)
                .tcp(1000, 80, 1, 1000);
            let mut t = Vec::new();
            b.write(&mut t, &[0; 10]).unwrap();
            frames.push(t);
            // Not IP at all: the kernel's too.
            let mut junk = vec![0u8; 60];
            junk[12..14].copy_from_slice(&0x88B5u16.to_be_bytes());
            frames.push(junk);
            // UDP, so it may be the chain's, but its IPv4 header claims
            // 1000 bytes of a 60-byte frame: the SFF's, malformed.
            let mut bad = f.clone();
            bad[16..18].copy_from_slice(&1000u16.to_be_bytes());
            frames.push(bad);
        }
    }
    let (expected, _) = nham_vnf::reference(&kinds, &udp);
    let trial = lab
        .trial_frames(frames, Some(5_000.0), &expected, &sff)
        .expect("trial");
    let stats = sff.stop().expect("SFF ran");
    assert_eq!(
        (
            stats.passed_to_kernel,
            stats.classifier_miss,
            stats.malformed_ingress
        ),
        (200, 0, 100),
        "{stats:?}"
    );
    // veth has no zero-copy AF_XDP: each port (ingress, egress, the hop)
    // tried it and fell back to copy mode.
    assert_eq!(
        (stats.zero_copy_ports, stats.copy_ports),
        (0, 3),
        "{stats:?}"
    );
    let v = trial.verdict;
    assert_eq!(
        (v.lost, v.duplicated, v.reordered, v.digest_equal),
        (0, 0, 0, true)
    );
}

#[test]
fn arp_and_ping_reach_the_host_through_a_chains_ingress() {
    // A NIC that carries a chain's traffic carries the host's too: what
    // no rule of the chain matches (here ARP and ICMP; the chain takes
    // UDP) goes on to the kernel, while the chain runs.
    let _serial = serial();
    let kinds = [Kind::Monitor, Kind::Firewall];
    let lab = Lab::new(&kinds, vnf_bin()).expect("building the lab");
    let sff = lab.start_sff(LabSff::default()).expect("starting the SFF");
    let (host, peer): (std::net::IpAddr, std::net::IpAddr) =
        ([198, 51, 100, 1].into(), [198, 51, 100, 2].into());
    lab.sff_netns()
        .run(move || nham_netns::add_address("in0", host, 24))
        .expect("entering the SFF's namespace")
        .expect("an address on in0");
    lab.src_netns()
        .run(move || nham_netns::add_address("gen0", peer, 24))
        .expect("entering the source namespace")
        .expect("an address on gen0");
    let spec = TrafficSpec {
        count: 15_000,
        ..spec(0)
    };
    let (expected, states) = nham_vnf::reference(&kinds, &spec.frames());
    // Pings while the trial's 3 s of traffic cross the same interface.
    let ping = lab
        .src_netns()
        .run(move || {
            std::process::Command::new("ping")
                .args(["-c", "5", "-i", "0.3", "-W", "2", &host.to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .expect("entering the source namespace")
        .expect("starting ping (iputils-ping: scripts/setup.sh)");
    let trial = lab.trial(&spec, &expected, &sff).expect("trial");
    let ping = ping.wait_with_output().expect("ping's output");
    let stats = sff.stop().expect("SFF ran");
    assert!(
        ping.status.success(),
        "ping through in0 while the chain ran: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
    // At least an ARP request and five echo requests left to the kernel.
    assert!(stats.passed_to_kernel >= 6, "{stats:?}");
    assert_eq!(stats.classifier_miss, 0, "{stats:?}");
    let v = trial.verdict;
    assert_eq!(
        (v.lost, v.duplicated, v.reordered, v.digest_equal),
        (0, 0, 0, true),
        "{stats:?}"
    );
    assert_eq!(lab.vnf_states().expect("VNF states"), states);
}

#[test]
fn frames_on_a_vnf_veth_dissect_as_nsh() {
    let _serial = serial();
    // Capture inside the VNF's namespace what crosses its interface (an
    // AF_PACKET socket of our own, open before any traffic, sees both
    // directions), write it to a pcap and let tshark (installed by
    // scripts/setup.sh) dissect it.
    let kinds = [Kind::Monitor];
    let lab = Lab::new(&kinds, vnf_bin()).expect("building the lab");
    let sff = lab.start_sff(LabSff::default()).expect("starting the SFF");
    let pcap = std::env::temp_dir().join(nham_netns::unique_name("nham-cap-") + ".pcap");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns_path = lab.vnf_netns(0).path();
    let capture = std::thread::spawn(move || -> Vec<Vec<u8>> {
        let f = std::fs::File::open(ns_path).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == "eth0")
            .unwrap();
        let config = pnet_datalink::Config {
            read_timeout: Some(std::time::Duration::from_millis(50)),
            ..Default::default()
        };
        let pnet_datalink::Channel::Ethernet(_, mut rx) =
            pnet_datalink::channel(&iface, config).unwrap()
        else {
            panic!("not an Ethernet channel")
        };
        ready_tx.send(()).unwrap();
        let mut frames = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while frames.len() < 40 && std::time::Instant::now() < deadline {
            if let Ok(f) = rx.next() {
                if f.get(12..14) == Some(&[0x89, 0x4f]) {
                    frames.push(f.to_vec());
                }
            }
        }
        frames
    });
    ready_rx.recv().unwrap();
    let spec = spec(20);
    let (expected, _) = nham_vnf::reference(&kinds, &spec.frames());
    lab.trial(&spec, &expected, &sff).expect("trial");
    let frames = capture.join().unwrap();
    {
        let header = pcap_file::pcap::PcapHeader {
            datalink: pcap_file::DataLink::ETHERNET,
            ..Default::default()
        };
        let mut w =
            pcap_file::pcap::PcapWriter::with_header(std::fs::File::create(&pcap).unwrap(), header)
                .unwrap();
        for f in &frames {
            w.write_packet(&pcap_file::pcap::PcapPacket::new(
                std::time::Duration::ZERO,
                f.len() as u32,
                f,
            ))
            .unwrap();
        }
    }
    let out = std::process::Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&pcap)
        .args([
            "-T",
            "fields",
            "-E",
            "separator=;",
            "-e",
            "nsh.spi",
            "-e",
            "nsh.si",
            "-e",
            "nsh.metadata",
            "-e",
            "_ws.malformed",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&pcap);
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(';').collect()).collect();
    assert_eq!(rows.len(), 40, "{text}");
    let num = |v: &str| match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => v.parse().unwrap(),
    };
    let mut to_vnf = Vec::new();
    let mut from_vnf = Vec::new();
    for r in &rows {
        assert_eq!(num(r[0]), u64::from(nham_bench::lab::SPI));
        assert!(r[3].is_empty(), "malformed: {r:?}");
        let meta: String = r[2].chars().filter(|c| *c != ':').collect();
        let seq = u64::from_str_radix(&meta[..16], 16).unwrap();
        match num(r[1]) {
            255 => to_vnf.push(seq),
            254 => from_vnf.push(seq),
            si => panic!("unexpected SI {si}"),
        }
    }
    assert_eq!(
        to_vnf,
        (0..20).collect::<Vec<_>>(),
        "sequence numbers 0.. delivered with SI 255"
    );
    assert_eq!(
        from_vnf,
        (0..20).collect::<Vec<_>>(),
        "and returned with SI 254"
    );
}

/// A protected hop of one monitor whose standby port leads to a second
/// monitor (started afresh: a replica at the initial state), its SFF, and
/// the SFF's end of the first monitor's link.
fn replica_lab() -> (Lab, nham_sff::SffHandle, String) {
    let lab = Lab::new(&[Kind::Monitor, Kind::Monitor], vnf_bin()).expect("building the lab");
    let mut config = lab.sff_config(LabSff {
        protect: true,
        ..LabSff::default()
    });
    let replica = config.hops.pop();
    config.standby = vec![replica];
    config.protect = vec![true];
    let first = config.hops[0].iface.clone();
    let sff = nham_sff::spawn(Some(lab.sff_netns().path()), config).expect("starting the SFF");
    (lab, sff, first)
}

/// Failover to a standby port, the SFF's part of an active replica: a
/// one-hop chain whose hop has a standby port on a second VNF's link (a
/// second monitor, started afresh: a replica at the initial state). Half way
/// through the traffic the first VNF is killed; `FailOver` (the failure,
/// the switch of ports, and the replay from the start: no checkpoint) moves
/// the hop to the replica, which gets every held packet replayed. The sink sees each frame
/// once, in order, and the replica ends in the failure-free state.
#[test]
fn a_hop_fails_over_to_its_standby_port() {
    let _serial = serial();
    let (lab, sff, _) = replica_lab();
    let client = nham_sff::remote::SffClient::local(&sff).expect("client");
    // A replica of a checkpoint the hop never had is refused.
    assert!(client.fail_over(1, None).is_err(), "no hop 1");
    let spec = spec(3000);
    let frames = spec.frames();
    let (expected, states) = nham_vnf::reference(&[Kind::Monitor], &frames);
    let trial = std::thread::scope(|s| {
        let t = s.spawn(|| lab.trial_frames(frames, spec.rate, &expected, &sff));
        std::thread::sleep(std::time::Duration::from_millis(300));
        nham_bench::lab::kill_and_wait(lab.vnf_pid(0));
        let r = match client.fail_over(0, None).expect("failover") {
            nham_sff::remote::FailOverOutcome::Switched(r) => r,
            o => panic!("not switched: {o:?}"),
        };
        assert!(r.replay > 0, "everything held is replayed: {r:?}");
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
    let stats = sff.stop().expect("SFF ran");
    assert!(
        stats.duplicates > 0,
        "replayed outputs suppressed: {stats:?}"
    );
}

/// A failed VNF's port whose transmit ring cannot drain (the SFF's end of
/// its link went down before it died: the kernel keeps what the SFF queued
/// for it) is reopened off the forwarding thread, and nothing is lost. The
/// first VNF's link is taken down at the SFF's end, then the VNF is
/// killed; `FailOver` switches the hop
/// to the replica's port and replays; the old port (now the standby) still
/// holds frames for the dead VNF, and after 200 ms it is reopened, its ring
/// discarded, while the chain goes on through the replica. The answer waits
/// for the new port. The sink sees each frame once, in order.
#[test]
fn a_port_that_cannot_drain_is_reopened_and_nothing_is_lost() {
    let _serial = serial();
    let (lab, sff, cut) = replica_lab();
    let client = nham_sff::remote::SffClient::local(&sff).expect("client");
    let spec = spec(3000);
    let frames = spec.frames();
    let (expected, states) = nham_vnf::reference(&[Kind::Monitor], &frames);
    let (trial, took) = std::thread::scope(|s| {
        let t = s.spawn(|| lab.trial_frames(frames, spec.rate, &expected, &sff));
        std::thread::sleep(std::time::Duration::from_millis(300));
        lab.sff_netns()
            .run({
                let cut = cut.clone();
                move || nham_netns::set_down(&cut)
            })
            .expect("entering the SFF's namespace")
            .expect("taking the link down");
        // Frames keep coming for it, up to its window, and stay in the
        // SFF's transmit ring.
        std::thread::sleep(std::time::Duration::from_millis(50));
        nham_bench::lab::kill_and_wait(lab.vnf_pid(0));
        let asked = std::time::Instant::now();
        match client.fail_over(0, None).expect("failover") {
            nham_sff::remote::FailOverOutcome::Switched(r) => {
                assert!(r.replay > 0, "everything held is replayed: {r:?}")
            }
            o => panic!("not switched: {o:?}"),
        }
        let took = asked.elapsed();
        (t.join().expect("trial thread"), took)
    });
    let v = trial.expect("trial").verdict;
    assert_eq!(
        (v.lost, v.duplicated, v.reordered, v.digest_equal),
        (0, 0, 0, true),
        "{v:?}"
    );
    assert_eq!(lab.vnf_state(1).expect("replica state"), states[0]);
    let stats = sff.stop().expect("SFF ran");
    assert!(
        stats.tx_discarded > 0 && took >= std::time::Duration::from_millis(200),
        "the stuck port was reopened (its ring discarded) before the answer, {took:?} after the request: {stats:?}"
    );
}

/// An MR-AA member comes back behind a new port (issue 14: members on
/// other hosts come back behind a tunnel of their own): a one-hop chain
/// whose monitor has a second member on a second monitor's link. Under
/// traffic member 1 is killed; the SFF is told (`MemberFailed`), a third
/// monitor's link (a fresh copy: the initial state) takes the failed
/// member's place (`ReplaceMember`), and it catches up from the start
/// (`MemberRestored` from no checkpoint: the hop holds everything). A
/// live member's port is never replaced. The sink sees each frame once, in
/// order, and the new member ends in the failure-free state.
#[test]
fn a_failed_member_comes_back_behind_a_new_port() {
    let _serial = serial();
    let lab = Lab::new(&[Kind::Monitor, Kind::Monitor, Kind::Monitor], vnf_bin())
        .expect("building the lab");
    let mut config = lab.sff_config(LabSff {
        protect: true,
        ..LabSff::default()
    });
    let replacement = config.hops.pop().expect("a third link");
    let member = config.hops.pop().expect("a second link");
    config.members = vec![vec![member]];
    config.protect = vec![true];
    let sff = nham_sff::spawn(Some(lab.sff_netns().path()), config).expect("starting the SFF");
    let client = nham_sff::remote::SffClient::local(&sff).expect("client");
    assert!(
        client.replace_member(0, 1, replacement.clone()).is_err(),
        "a live member's port stays"
    );
    let spec = spec(3000);
    let frames = spec.frames();
    let (expected, states) = nham_vnf::reference(&[Kind::Monitor], &frames);
    let trial = std::thread::scope(|s| {
        let t = s.spawn(|| lab.trial_frames(frames, spec.rate, &expected, &sff));
        std::thread::sleep(std::time::Duration::from_millis(300));
        nham_bench::lab::kill_and_wait(lab.vnf_pid(1));
        client.member_failed(0, 1).expect("member 1 failed");
        client
            .replace_member(0, 1, replacement)
            .expect("member 1 behind the third link");
        let r = client.member_restored(0, 1, None).expect("restored");
        assert!(r.replay > 0, "it catches up from the start: {r:?}");
        t.join().expect("trial thread")
    })
    .expect("trial");
    let v = trial.verdict;
    assert_eq!(
        (v.lost, v.duplicated, v.reordered, v.digest_equal),
        (0, 0, 0, true),
        "{v:?}"
    );
    // The new member caught up with the whole stream.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = client.status().expect("status");
        if status.hops[0]
            .members
            .iter()
            .all(|m| *m == nham_dataplane::hold::MemberState::Live)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "caught up: {status:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(lab.vnf_state(2).expect("new member's state"), states[0]);
    assert_eq!(lab.vnf_state(0).expect("member 0's state"), states[0]);
    sff.stop().expect("SFF ran");
}

#[test]
fn every_receive_queue_of_the_ingress_reaches_the_chain() {
    // A multi-queue ingress (RSS spreads flows over the queues): one
    // AF_XDP socket per queue, so no queue's traffic bypasses the chain.
    let _serial = serial();
    let kinds = [Kind::Monitor];
    let queues = 4;
    let lab = Lab::with_ingress_queues(&kinds, vnf_bin(), queues).expect("building the lab");
    let sff = lab.start_sff(LabSff::default()).expect("starting the SFF");
    let spec = TrafficSpec {
        flows: 64,
        count: 4000,
        ..spec(0)
    };
    let frames = spec.frames();
    let used: std::collections::BTreeSet<usize> = frames
        .iter()
        .map(|f| nham_traffic::queue_of(f, queues as usize))
        .collect();
    assert_eq!(used.len(), queues as usize, "the flows cover every queue");
    let (expected, _) = nham_vnf::reference(&kinds, &frames);
    let trial = lab
        .trial_frames(frames, Some(5_000.0), &expected, &sff)
        .expect("trial");
    let stats = sff.stop().expect("SFF ran");
    assert_eq!(
        (
            stats.classified,
            stats.passed_to_kernel,
            stats.ingress_kernel_drops
        ),
        (4000, 0, 0),
        "{stats:?}"
    );
    // Ingress queues 0 to 3, egress, the hop.
    assert_eq!(stats.copy_ports, u64::from(queues) + 2, "{stats:?}");
    let v = trial.verdict;
    assert_eq!((v.lost, v.duplicated), (0, 0), "{v:?}");
    // Each flow in order (flows on different queues may interleave
    // differently from the sending order: a NIC keeps order per queue).
    let mut last = std::collections::HashMap::new();
    for &seq in &trial.received.seqs {
        let flow = seq % 64;
        if let Some(prev) = last.insert(flow, seq) {
            assert!(prev < seq, "flow {flow}: {seq} after {prev}");
        }
    }
}
