//! Frames sent by an AF_XDP port in one namespace arrive, through the XDP
//! redirect program, at an AF_XDP port in another (root; CI runs as root).

use std::time::{Duration, Instant};

use nham_afxdp::{Port, PortConfig};
use nham_ebpf::XdpRedirect;
use nham_netns::{unique_name, veth_pair, Netns};

#[test]
fn frames_cross_a_veth_between_afxdp_ports() {
    let a = Netns::create(&unique_name("nhxa")).unwrap();
    let b = Netns::create(&unique_name("nhxb")).unwrap();
    let (_ea, eb) = veth_pair(&a, "tx0", &b, "rx0").unwrap();
    const N: usize = 1000;
    let ifindex = eb.ifindex;
    let receiver = {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = b.path();
        let h = std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let xdp = XdpRedirect::attach(ifindex).unwrap();
            let mut port = Port::open("rx0", 0, PortConfig::default()).unwrap();
            xdp.register_socket(0, port.fd()).unwrap();
            ready_tx.send(()).unwrap();
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while seen.len() < N && Instant::now() < deadline {
                port.recv_burst(64, |f| {
                    seen.push(u32::from_be_bytes([f[14], f[15], f[16], f[17]]))
                });
                let _ = port.wait_rx(10);
            }
            seen
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        h
    };
    let sent = a
        .run(|| {
            let mut port = Port::open("tx0", 0, PortConfig::default()).unwrap();
            let mut next = 0u32;
            while (next as usize) < N {
                let n = port.send_burst(32.min(N - next as usize), |i, buf| {
                    buf[..12]
                        .copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1]);
                    buf[12..14].copy_from_slice(&0x88B5u16.to_be_bytes()); // local experimental
                    buf[14..18].copy_from_slice(&(next + i as u32).to_be_bytes());
                    buf[18..60].fill(0);
                    60
                });
                next += n as u32;
                port.reclaim();
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(Duration::from_millis(50));
            port.reclaim();
            next
        })
        .unwrap();
    let seen = receiver.join().unwrap();
    assert_eq!(sent as usize, N);
    assert_eq!(
        seen,
        (0..N as u32).collect::<Vec<_>>(),
        "every frame, in order"
    );
}
