//! A lab of hosts on one machine: the ground on which NHAM's host failures
//! are tested (issue 14). Each host is a network namespace of its own with
//! an address on an underlay (`10.77.0.<host + 1>/24` on its `ul0`, joined
//! by a bridge in a namespace of the lab's); the lab runs an etcd cluster
//! whose members live on the first hosts and listen on those addresses
//! only.
//!
//! ```text
//!  [h0: ul0 10.77.0.1, etcd e0]  [h1: ul0 10.77.0.2, etcd e1]  [h2: …, e2]  [h3: …]
//!            │                              │                       │          │
//!  [underlay: u0 ──────────────────── br0 ───────────────────────── u2 ─────── u3]
//! ```
//!
//! A host is cut off by setting its underlay link down (what runs on it
//! goes on, unseen: a partition). Everything is torn down when the
//! [`HostLab`] is dropped, also on panic: etcd members are killed and
//! reaped, their data removed, the namespaces (and with them every link)
//! deleted. Names are unique per process and call, so labs run side by
//! side.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use nham_netns::tunnel::{set_mtu, UNDERLAY_MTU};
use nham_netns::{unique_name, veth_pair, Netns};

/// etcd's client port.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const ETCD_PEER_PORT: u16 = 2380;

/// One host of the lab.
#[derive(Debug)]
pub struct Host {
    /// Its namespace.
    pub netns: Netns,
    /// Its underlay address.
    pub addr: Ipv4Addr,
    /// The underlay namespace's end of its link.
    uplink: String,
}

/// Hosts joined by an underlay, with an etcd cluster on the first ones.
#[derive(Debug)]
pub struct HostLab {
    underlay: Netns,
    hosts: Vec<Host>,
    /// The etcd member on host `k`, while it runs.
    etcd: Vec<Option<Child>>,
    dir: PathBuf,
    /// Namespaces joined by [`HostLab::attach`].
    attached: u8,
    /// The `nhamd` on host `i`, while it runs.
    nhamd: Vec<Option<Child>>,
}

impl HostLab {
    /// `hosts` hosts (1 to 200) and an etcd cluster of `etcd` members (on
    /// hosts 0 to `etcd - 1`), ready: every member answers `/health`.
    pub fn new(hosts: usize, etcd: usize) -> Result<Self> {
        if hosts == 0 || hosts > 200 || etcd > hosts {
            bail!("a lab has 1 to 200 hosts and at most one etcd member per host, not {hosts} hosts and {etcd} members");
        }
        nham_netns::sweep_stale();
        let underlay = Netns::create(&unique_name("nhul"))?;
        underlay.run(|| nham_netns::bridge_here("br0"))??;
        let dir = std::env::temp_dir().join(unique_name("nham-hosts-"));
        std::fs::create_dir_all(&dir)?;
        let mut lab = Self {
            underlay,
            hosts: Vec::new(),
            etcd: Vec::new(),
            dir,
            attached: 0,
            nhamd: Vec::new(),
        };
        for i in 0..hosts {
            let netns = Netns::create(&unique_name(&format!("nhh{i}")))?;
            let uplink = format!("u{i}");
            let addr = Ipv4Addr::new(10, 77, 0, i as u8 + 1);
            lab.join_underlay(&netns, &uplink, addr)?;
            lab.hosts.push(Host {
                netns,
                addr,
                uplink,
            });
        }
        for k in 0..etcd {
            let child = lab.start_etcd(k, etcd)?;
            lab.etcd.push(Some(child));
        }
        for k in 0..etcd {
            lab.wait_healthy(k, Duration::from_secs(30))?;
        }
        Ok(lab)
    }

    /// Joins `netns` to the underlay: a link `uplink` (underlay end) <->
    /// `ul0` (in `netns`) on the bridge, MTU [`UNDERLAY_MTU`] (tunnels in
    /// it carry full frames), `addr`/24 on `ul0`.
    fn join_underlay(&self, netns: &Netns, uplink: &str, addr: Ipv4Addr) -> Result<()> {
        veth_pair(&self.underlay, uplink, netns, "ul0")?;
        let port = uplink.to_string();
        (self.underlay).run(move || -> Result<(), nham_netns::NetnsError> {
            set_mtu(&port, UNDERLAY_MTU)?;
            nham_netns::set_bridge_port(&port, "br0")
        })??;
        netns.run(move || -> Result<(), nham_netns::NetnsError> {
            set_mtu("ul0", UNDERLAY_MTU)?;
            nham_netns::add_address("ul0", addr.into(), 24)
        })??;
        Ok(())
    }

    /// Joins a namespace of the caller's (a chain's SFF namespace, see
    /// `Lab::across_hosts`) to the underlay as one more host, and returns
    /// its address (`10.77.0.201` onwards). Cutting the hosts off never
    /// touches it; it goes when `netns` is deleted.
    pub fn attach(&mut self, netns: &Netns) -> Result<Ipv4Addr> {
        if self.attached >= 50 {
            bail!("a lab attaches at most 50 namespaces of its own");
        }
        let addr = Ipv4Addr::new(10, 77, 0, 201 + self.attached);
        let uplink = format!("a{}", self.attached);
        self.join_underlay(netns, &uplink, addr)?;
        self.attached += 1;
        Ok(addr)
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The client endpoint of the etcd member on host `k`.
    pub fn etcd_endpoint(&self, k: usize) -> SocketAddr {
        SocketAddr::from((self.hosts[k].addr, ETCD_CLIENT_PORT))
    }

    /// The client endpoints (`http://<addr>:2379`) of the etcd members that
    /// run.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        (0..self.etcd.len())
            .filter(|&k| self.etcd[k].is_some())
            .map(|k| format!("http://{}", self.etcd_endpoint(k)))
            .collect()
    }

    /// Starts etcd member `e<k>` of a cluster of `members` on host `k`.
    fn start_etcd(&self, k: usize, members: usize) -> Result<Child> {
        let cluster: Vec<String> = (0..members)
            .map(|j| format!("e{j}=http://{}:{ETCD_PEER_PORT}", self.hosts[j].addr))
            .collect();
        let addr = self.hosts[k].addr;
        let log = std::fs::File::create(self.dir.join(format!("e{k}.log")))?;
        let err = log.try_clone()?;
        // Unique per lab: members of another lab never join this cluster.
        let token = self
            .dir
            .file_name()
            .map_or_else(|| "nham".into(), |n| n.to_string_lossy().into_owned());
        let args: Vec<String> = vec![
            format!("--name=e{k}"),
            format!("--data-dir={}", self.dir.join(format!("e{k}")).display()),
            format!("--listen-peer-urls=http://{addr}:{ETCD_PEER_PORT}"),
            format!("--initial-advertise-peer-urls=http://{addr}:{ETCD_PEER_PORT}"),
            format!("--listen-client-urls=http://{addr}:{ETCD_CLIENT_PORT}"),
            format!("--advertise-client-urls=http://{addr}:{ETCD_CLIENT_PORT}"),
            format!("--initial-cluster={}", cluster.join(",")),
            format!("--initial-cluster-token={token}"),
            "--initial-cluster-state=new".into(),
            // A 2-core machine shared with the test: no election because a
            // member was descheduled for a moment.
            "--heartbeat-interval=100".into(),
            "--election-timeout=1000".into(),
        ];
        let child = self.hosts[k].netns.run(move || {
            Command::new("etcd")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
        })?;
        child.with_context(|| {
            format!("starting etcd on host {k} (scripts/setup.sh installs etcd-server)")
        })
    }

    /// Waits until the etcd member on host `k` says it is healthy.
    pub fn wait_healthy(&self, k: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.etcd_healthy(k) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.join(format!("e{k}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                bail!("etcd on host {k} not healthy after {timeout:?}; its log ends: {tail:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the etcd member on host `k` answers `/health` with
    /// `"health":"true"` (asked from its own host).
    pub fn etcd_healthy(&self, k: usize) -> bool {
        self.http(k, self.etcd_endpoint(k), "GET", "/health", "")
            .is_ok_and(|(status, body)| status == 200 && body.contains("\"health\":\"true\""))
    }

    /// Puts `key` = `value` through the etcd member on host `k` (its JSON
    /// gateway, asked from host `k`).
    pub fn etcd_put(&self, k: usize, key: &str, value: &str) -> Result<()> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let body = serde_json::json!({ "key": b64(key), "value": b64(value) }).to_string();
        let (status, answer) = self.http(k, self.etcd_endpoint(k), "POST", "/v3/kv/put", &body)?;
        if status != 200 {
            bail!("etcd put through host {k}: HTTP {status}: {answer}");
        }
        Ok(())
    }

    /// The value of `key`, read through the etcd member on host `k` (a
    /// linearizable read: it needs the cluster's quorum).
    pub fn etcd_get(&self, k: usize, key: &str) -> Result<Option<String>> {
        let engine = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({ "key": engine.encode(key) }).to_string();
        let (status, answer) =
            self.http(k, self.etcd_endpoint(k), "POST", "/v3/kv/range", &body)?;
        if status != 200 {
            bail!("etcd range through host {k}: HTTP {status}: {answer}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&answer).with_context(|| format!("etcd's answer: {answer}"))?;
        let Some(value) = v["kvs"][0]["value"].as_str() else {
            return Ok(None);
        };
        let bytes = engine.decode(value).context("etcd's value")?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// One HTTP/1.0 exchange with `to`, from inside host `from`'s
    /// namespace (2 s at most): the status and the body.
    pub fn http(
        &self,
        from: usize,
        to: SocketAddr,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String)> {
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {to}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = self.hosts[from]
            .netns
            .run(move || -> std::io::Result<String> {
                let timeout = Duration::from_secs(2);
                let mut s = TcpStream::connect_timeout(&to, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                s.write_all(request.as_bytes())?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)?;
                Ok(answer)
            })??;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("an HTTP answer from {to}: {head:?}"))?;
        Ok((status, body.to_string()))
    }

    /// Cuts host `i` off the underlay (its link down: what runs there goes
    /// on, unseen).
    pub fn cut_off(&self, i: usize) -> Result<()> {
        let link = self.hosts[i].uplink.clone();
        Ok(self.underlay.run(move || nham_netns::set_down(&link))??)
    }

    /// Joins host `i` to the underlay again.
    pub fn reconnect(&self, i: usize) -> Result<()> {
        let link = self.hosts[i].uplink.clone();
        Ok(self.underlay.run(move || nham_netns::set_up(&link))??)
    }

    /// The pids of the etcd members that run (to kill them from another
    /// thread while the lab is borrowed: they are reaped when it drops).
    pub fn etcd_pids(&self) -> Vec<u32> {
        self.etcd.iter().flatten().map(Child::id).collect()
    }

    /// Kills the etcd member on host `k` (SIGKILL, reaped).
    pub fn kill_etcd(&mut self, k: usize) {
        if let Some(mut c) = self.etcd.get_mut(k).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The UDP port of heartbeats between the lab's `nhamd`s.
pub const HEARTBEAT_PORT: u16 = 50052;
/// The TCP port of their peer services.
pub const PEER_PORT: u16 = 50053;

impl HostLab {
    /// Starts `nhamd` (binary `bin`) on host `i` as cluster host `h<i>`:
    /// its own state directory, its API on a Unix socket in the lab's
    /// directory (what [`HostLab::nhamd_addr`] gives), heartbeats on its
    /// underlay address, registered in the lab's etcd. Returns once its
    /// socket is there. A running one is killed first.
    pub fn start_nhamd(&mut self, i: usize, bin: &std::path::Path) -> Result<()> {
        self.kill_nhamd(i);
        let dir = self.dir.join(format!("h{i}"));
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("nhamd.sock");
        let _ = std::fs::remove_file(&sock);
        let argv = self.nhamd_args(&dir, &format!("h{i}"), self.hosts[i].addr)?;
        let log = dir.join("nhamd.log");
        let child = crate::ha::spawn_nhamd(&self.hosts[i].netns, bin, argv, &log)?;
        while self.nhamd.len() <= i {
            self.nhamd.push(None);
        }
        self.nhamd[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            let exited = self.nhamd[i]
                .as_mut()
                .map(|c| c.try_wait().ok().flatten().is_some())
                .unwrap_or(true);
            if exited || Instant::now() > deadline {
                bail!("nhamd on host {i} did not start: {}", self.nhamd_log(i));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Every flag of `nhamd` as cluster host `name` at underlay address
    /// `addr`, directory `dir`: its API on `dir/nhamd.sock`, its state and
    /// scratch directories in `dir`, its chains stopped when it stops, and
    /// [`HostLab::cluster_args`].
    pub fn nhamd_args(&self, dir: &Path, name: &str, addr: Ipv4Addr) -> Result<Vec<String>> {
        let path = |p: &str| dir.join(p).display().to_string();
        let mut argv: Vec<String> = vec![
            "--unix".into(),
            path("nhamd.sock"),
            "--state-dir".into(),
            path("state"),
            "--scratch-dir".into(),
            path("scratch"),
            "--on-exit".into(),
            "stop".into(),
        ];
        argv.extend(self.cluster_args(name, addr)?);
        Ok(argv)
    }

    /// The `nhamd` flags of cluster host `name` at underlay address `addr`:
    /// its name, the lab's etcd, heartbeats on [`HEARTBEAT_PORT`], its peer
    /// service on [`PEER_PORT`], the lab's token (written once, mode 0600).
    pub fn cluster_args(&self, name: &str, addr: Ipv4Addr) -> Result<Vec<String>> {
        use std::os::unix::fs::OpenOptionsExt;
        let token = self.dir.join("cluster.token");
        if !token.exists() {
            let secret = blake3::hash(format!("{:?}{:?}", self.dir, Instant::now()).as_bytes());
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&token)?
                .write_all(secret.to_hex().as_bytes())?;
        }
        Ok(vec![
            "--host-name".into(),
            name.into(),
            "--etcd".into(),
            self.etcd_endpoints().join(","),
            "--heartbeat-listen".into(),
            SocketAddr::from((addr, HEARTBEAT_PORT)).to_string(),
            "--peer-listen".into(),
            SocketAddr::from((addr, PEER_PORT)).to_string(),
            "--cluster-token-file".into(),
            token.display().to_string(),
        ])
    }

    /// Host `i`'s state directory (its `nhamd`'s).
    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}/state"))
    }

    /// The API address of host `i`'s `nhamd` (`unix:/…`).
    pub fn nhamd_addr(&self, i: usize) -> String {
        format!(
            "unix:{}",
            self.dir.join(format!("h{i}/nhamd.sock")).display()
        )
    }

    /// The end of host `i`'s `nhamd` log.
    pub fn nhamd_log(&self, i: usize) -> String {
        let log =
            std::fs::read_to_string(self.dir.join(format!("h{i}/nhamd.log"))).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Stops host `i`'s `nhamd` with SIGTERM (a clean stop: it leaves the
    /// cluster on purpose) and waits until it is gone (10 s at most, then
    /// SIGKILL).
    pub fn stop_nhamd(&mut self, i: usize) {
        if let Some(mut c) = self.nhamd.get_mut(i).and_then(Option::take) {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Host `i` fails as a host loses power: its underlay link goes down
    /// and every process of the host dies at once — its `nhamd` and the
    /// VNFs it ran for other hosts (everything in the namespaces its
    /// `nhamd` made for them, named after its state directory). Its etcd
    /// member, if any, is left to [`HostLab::kill_etcd`].
    pub fn fail_host(&mut self, i: usize) -> Result<()> {
        self.cut_off(i)?;
        let prefix = format!(
            "nhamd-{}-x",
            nham_control::chain::state_tag(&self.state_dir(i))
        );
        // Frozen first, so that nothing of the host runs on while the rest
        // is killed.
        if let Some(c) = self.nhamd.get(i).and_then(Option::as_ref) {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
        }
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    nham_netns::kill_processes_in(&e.path());
                }
            }
        }
        self.kill_nhamd(i);
        // Its namespaces stay (a dead host's kernel state is gone with it;
        // here they go when the lab's namespaces are swept).
        Ok(())
    }

    /// Kills host `i`'s `nhamd` with SIGKILL (a host failure, as far as
    /// its `nhamd` goes) and reaps it; returns when it is gone.
    pub fn kill_nhamd(&mut self, i: usize) {
        if let Some(mut c) = self.nhamd.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for HostLab {
    fn drop(&mut self) {
        for i in 0..self.nhamd.len() {
            self.kill_nhamd(i);
        }
        for k in 0..self.etcd.len() {
            self.kill_etcd(k);
        }
        // What the hosts' nhamds made and could not remove (killed): the
        // places of VNFs they ran, their own or for other hosts.
        for i in 0..self.hosts.len() {
            // (Their cgroups too, which outlive a killed nhamd.)
            nham_control::chain::sweep_daemon(&self.state_dir(i));
        }
        // NHAM_HA_KEEP keeps the hosts' directories (logs, state) too.
        if std::env::var_os("NHAM_HA_KEEP").is_some() {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // The namespaces (and every link in them) go with their Netns values.
    }
}
