//! The lab of hosts (`nham_bench::hosts`): hosts in namespaces of their
//! own, joined by an underlay, with an etcd cluster of three members on
//! them. The ground of the host-failure tests (issue 14): a write through
//! one member is read through another; with one member's host cut off the
//! other two still make a quorum, and the one cut off catches up once it is
//! back; a dead member leaves a cluster that still answers.

use std::time::{Duration, Instant};

use anyhow::Result;
use nham_bench::hosts::HostLab;

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
