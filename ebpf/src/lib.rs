//! NHAM's XDP program and its loader.
//!
//! The program (`src/bpf/redirect.bpf.c`, compiled by `build.rs`) redirects
//! frames arriving on an interface to the AF_XDP socket registered for
//! their receive queue in the `xsks` XSKMAP, and passes frames for queues
//! with no socket to the kernel. [`XdpRedirect::attach`] loads one instance
//! per interface (each with its own maps) that redirects every frame (a
//! VNF's port); [`XdpRedirect::attach_filtered`] one that redirects only
//! frames that may match one of a chain's classifier rules ([`XdpRule`])
//! and passes the rest (ARP, ICMP and management traffic on a NIC) to the
//! kernel, counted ([`XdpRedirect::counters`]). Either is attached through
//! a BPF link, so it is detached when the value is dropped or the process
//! dies.
//!
//! Invariant: a frame is never dropped by this program.
//!
//! [`exit::ExitWatch`]: the exit of a watched process the moment it happens
//! (`src/bpf/exit.bpf.c` on the `sched_process_exit` tracepoint).
#![forbid(unsafe_code)]

pub mod exit;

use std::os::fd::{AsRawFd, BorrowedFd};

use libbpf_rs::{Link, MapCore, MapFlags, Object, ObjectBuilder};
use thiserror::Error;

const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));
const PROGRAM: &str = "nham_redirect";
const MAP: &str = "xsks";

/// Rules the XDP program holds at most (`MAX_RULES` in the program).
pub const MAX_RULES: usize = 64;

/// Errors of loading, attaching and configuring the XDP program.
#[derive(Debug, Error)]
pub enum EbpfError {
    /// libbpf refused to open or load the object.
    #[error("loading the XDP program: {0}")]
    Load(#[source] libbpf_rs::Error),
    /// The object lacks the program or map this crate expects.
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    /// Attaching to the interface failed.
    #[error("attaching XDP to ifindex {ifindex}: {source}")]
    Attach {
        /// The interface.
        ifindex: u32,
        /// Why.
        #[source]
        source: libbpf_rs::Error,
    },
    /// Attaching the exit watch to its tracepoint failed.
    #[error("attaching to the sched_process_exit tracepoint (tp_btf; needs BTF and root): {0}")]
    AttachTracepoint(#[source] libbpf_rs::Error),
    /// The exit watch's thread could not start.
    #[error("starting the exit watch's thread: {0}")]
    Thread(String),
    /// More classifier rules than the program holds.
    #[error("{0} classifier rules: the XDP program holds at most {MAX_RULES}")]
    TooManyRules(usize),
    /// Writing the program's rules or settings failed.
    #[error("configuring the XDP program: {0}")]
    Configure(#[source] libbpf_rs::Error),
    /// Reading the program's counters failed.
    #[error("reading the XDP program's counters: {0}")]
    Counters(#[source] libbpf_rs::Error),
    /// Registering a socket in the XSKMAP failed.
    #[error("registering AF_XDP socket for queue {queue}: {source}")]
    Register {
        /// The receive queue.
        queue: u32,
        /// Why.
        #[source]
        source: libbpf_rs::Error,
    },
}

/// The XDP program attached to one interface.
#[derive(Debug)]
pub struct XdpRedirect {
    object: Object,
    _link: Link,
    ifindex: u32,
}

/// One classifier rule as the XDP program matches it: `None` matches
/// anything. Addresses are in network byte order, an IPv4 one in the first
/// four bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpRule {
    /// The prefixes' family: `None` (both any), `Some(4)`, `Some(6)`; a
    /// rule whose two prefixes are of different families matches nothing
    /// (`Some(0)`).
    pub family: Option<u8>,
    /// Source network and mask.
    pub src: ([u8; 16], [u8; 16]),
    /// Destination network and mask.
    pub dst: ([u8; 16], [u8; 16]),
    /// IP protocol.
    pub proto: Option<u8>,
    /// Source port range.
    pub src_ports: Option<(u16, u16)>,
    /// Destination port range.
    pub dst_ports: Option<(u16, u16)>,
}

impl XdpRule {
    /// The program's `struct nham_rule`, byte for byte.
    fn to_bytes(self) -> [u8; 76] {
        let mut b = [0u8; 76];
        b[0] = match self.family {
            None => 0,
            Some(4) => 4,
            Some(6) => 6,
            Some(_) => 255,
        };
        b[1] = self.proto.unwrap_or(0);
        b[2] = u8::from(self.proto.is_some());
        b[3] = u8::from(self.src_ports.is_some()) | u8::from(self.dst_ports.is_some()) << 1;
        let (s, d) = (
            self.src_ports.unwrap_or((0, u16::MAX)),
            self.dst_ports.unwrap_or((0, u16::MAX)),
        );
        for (i, v) in [s.0, s.1, d.0, d.1].into_iter().enumerate() {
            b[4 + 2 * i..6 + 2 * i].copy_from_slice(&v.to_ne_bytes());
        }
        for (i, part) in [self.src.0, self.src.1, self.dst.0, self.dst.1]
            .into_iter()
            .enumerate()
        {
            b[12 + 16 * i..28 + 16 * i].copy_from_slice(&part);
        }
        b
    }
}

/// What a filtered program did with the frames it saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Redirected to the AF_XDP socket of their queue.
    pub redirected: u64,
    /// Passed to the kernel: no rule matched, or no socket on their queue.
    pub passed: u64,
}

impl XdpRedirect {
    /// Loads a fresh instance of the program and attaches it to `ifindex`
    /// (in the calling thread's network namespace), redirecting every
    /// frame. The kernel picks native (driver) mode where the driver
    /// supports it, as veth does.
    pub fn attach(ifindex: u32) -> Result<Self, EbpfError> {
        Self::load_and_attach(ifindex, None)
    }

    /// As [`attach`](Self::attach), but redirecting only the frames that
    /// may match one of `rules` (none: no frame); the others go on to the
    /// kernel. The rules are in place before the program sees a frame.
    pub fn attach_filtered(ifindex: u32, rules: &[XdpRule]) -> Result<Self, EbpfError> {
        Self::load_and_attach(ifindex, Some(rules))
    }

    fn load_and_attach(ifindex: u32, rules: Option<&[XdpRule]>) -> Result<Self, EbpfError> {
        let open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(EbpfError::Load)?;
        let object = open.load().map_err(EbpfError::Load)?;
        if let Some(rules) = rules {
            if rules.len() > MAX_RULES {
                return Err(EbpfError::TooManyRules(rules.len()));
            }
            let map = |name: &'static str| {
                object
                    .maps()
                    .find(|m| m.name() == name)
                    .ok_or(EbpfError::Missing(name))
            };
            let table = map("rules")?;
            for (i, r) in rules.iter().enumerate() {
                table
                    .update(&(i as u32).to_ne_bytes(), &r.to_bytes(), MapFlags::ANY)
                    .map_err(EbpfError::Configure)?;
            }
            let mut config = [0u8; 8];
            config[..4].copy_from_slice(&1u32.to_ne_bytes());
            config[4..].copy_from_slice(&(rules.len() as u32).to_ne_bytes());
            map("config")?
                .update(&0u32.to_ne_bytes(), &config, MapFlags::ANY)
                .map_err(EbpfError::Configure)?;
        }
        let link = {
            let prog = object
                .progs_mut()
                .find(|p| p.name() == PROGRAM)
                .ok_or(EbpfError::Missing("program nham_redirect"))?;
            prog.attach_xdp(ifindex as i32)
                .map_err(|source| EbpfError::Attach { ifindex, source })?
        };
        Ok(Self {
            object,
            _link: link,
            ifindex,
        })
    }

    /// Frames redirected and passed to the kernel so far (summed over the
    /// CPUs).
    pub fn counters(&self) -> Result<XdpCounters, EbpfError> {
        let map = self
            .object
            .maps()
            .find(|m| m.name() == "counters")
            .ok_or(EbpfError::Missing("map counters"))?;
        let sum = |key: u32| -> Result<u64, EbpfError> {
            Ok(map
                .lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)
                .map_err(EbpfError::Counters)?
                .unwrap_or_default()
                .iter()
                .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_ne_bytes)
                .sum())
        };
        Ok(XdpCounters {
            redirected: sum(0)?,
            passed: sum(1)?,
        })
    }

    /// The interface this instance is attached to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sends frames of receive queue `queue` to the AF_XDP socket `socket`.
    pub fn register_socket(&self, queue: u32, socket: BorrowedFd<'_>) -> Result<(), EbpfError> {
        let map = self
            .object
            .maps()
            .find(|m| m.name() == MAP)
            .ok_or(EbpfError::Missing("map xsks"))?;
        let fd = socket.as_raw_fd() as u32;
        map.update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| EbpfError::Register { queue, source })
    }
}
