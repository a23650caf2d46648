//! NHAM's XDP program and its loader.
//!
//! The program (`src/bpf/redirect.bpf.c`, compiled by `build.rs`) redirects
//! every frame arriving on an interface to the AF_XDP socket registered for
//! its receive queue in the `xsks` XSKMAP, and passes frames for queues with
//! no socket to the kernel. [`XdpRedirect::attach`] loads one instance per
//! interface (each with its own map) and attaches it through a BPF link, so
//! it is detached when the value is dropped or the process dies.
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

impl XdpRedirect {
    /// Loads a fresh instance of the program and attaches it to `ifindex`
    /// (in the calling thread's network namespace). The kernel picks native
    /// (driver) mode where the driver supports it, as veth does.
    pub fn attach(ifindex: u32) -> Result<Self, EbpfError> {
        let open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(EbpfError::Load)?;
        let object = open.load().map_err(EbpfError::Load)?;
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
