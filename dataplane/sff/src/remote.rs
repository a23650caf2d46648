//! The SFF as a process of its own, driven over a Unix socket.
//!
//! The packets an SFF holds (its Hold/Release buffers, its packet pool, its
//! AF_XDP ports) must outlive the control plane: a restarted `nhamd` attaches
//! to the running SFF again instead of losing them. So the daemon runs each
//! chain's SFF as a process (`nham-sff`), and talks to it here.
//!
//! Protocol: a stream socket; each message is one line of JSON. The client
//! sends a [`Request`], the server answers with one [`Response`]. Requests on
//! one connection are answered in order; connections are independent, and
//! every request is carried out by the SFF thread between two forwarding
//! rounds, as the in-process [`Command`]s are.
//!
//! Versions: an SFF process outlives the `nhamd` that started it (across an
//! upgrade, too), so each connection opens with [`Request::Hello`] carrying
//! the client's [`PROTOCOL_VERSION`]. The server answers with its own and,
//! when the two differ, closes the connection: a mismatch is refused with
//! both versions named ([`RemoteError::Version`]), never misread.
//!
//! Invariant: the server never exits because a client went away; only
//! [`Request::Shutdown`], SIGTERM (handled by the binary) or a fatal error
//! of the forwarding thread stop it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nham_dataplane::hold::{
    CheckpointId, CheckpointReport, Mark, MemberFailure, RecoveryReport, RestorePlan,
};
use thiserror::Error;

pub use crate::protocol::{FailOverOutcome, Request, Response, SffStatus, PROTOCOL_VERSION};
use crate::{LocalSff, SffError, SffHandle, SffStats};

/// Errors of talking to an SFF process.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// The socket failed (the SFF process is gone, or not there yet).
    #[error("SFF at {path}: {source}")]
    Io {
        /// Its socket.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A message could not be encoded or decoded.
    #[error("SFF at {path}: bad message: {reason}")]
    Protocol {
        /// Its socket.
        path: String,
        /// Why.
        reason: String,
    },
    /// The SFF refused the request (the Hold/Release state machine said no,
    /// or there is no such hop).
    #[error("SFF refused: {0}")]
    Refused(String),
    /// The SFF refused the request for now: the hop is busy with something
    /// that ends by itself (a checkpoint under way, a member catching up).
    #[error("SFF busy, try again: {0}")]
    Busy(String),
    /// The SFF speaks another version of this protocol.
    #[error("SFF at {path} speaks protocol version {}, this client {ours}: refused", theirs.map_or_else(|| "0 (before versions)".to_string(), |v| v.to_string()))]
    Version {
        /// Its socket.
        path: String,
        /// The client's version.
        ours: u32,
        /// The server's (`None`: a server from before the handshake).
        theirs: Option<u32>,
    },
}

fn refused(e: impl std::fmt::Display) -> Response {
    Response::Refused(e.to_string())
}

/// Carries out one request on the SFF thread behind `sff`; `Shutdown`
/// sets `shutdown` (the server's flag), `Hello` is answered here.
fn execute(sff: &LocalSff, request: Request, shutdown: &AtomicBool) -> Response {
    match request {
        Request::Hello { .. } => Response::Hello {
            version: PROTOCOL_VERSION,
        },
        Request::Shutdown => {
            shutdown.store(true, Ordering::Relaxed);
            Response::Ok
        }
        // Counters are shared: read here, never behind the SFF thread's
        // work (and still there when it has stopped).
        Request::Stats => Response::Stats(sff.counters().snapshot()),
        r => sff
            .ask(r)
            .unwrap_or_else(|e| Response::Refused(e.to_string())),
    }
}

fn serve_connection(sff: &LocalSff, stream: UnixStream, shutdown: &AtomicBool) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut greeted = false;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let request = serde_json::from_str::<Request>(&line);
        // The first message must be a Hello of this version; anything else
        // gets this server's version, or a refusal naming it, and the
        // connection ends.
        let (response, close) = match request {
            Ok(Request::Hello { version }) => (
                Response::Hello {
                    version: PROTOCOL_VERSION,
                },
                version != PROTOCOL_VERSION,
            ),
            Ok(_) | Err(_) if !greeted => (
                refused(format!(
                    "a connection must open with Hello (this SFF speaks protocol version {PROTOCOL_VERSION})"
                )),
                true,
            ),
            Ok(r) => (execute(sff, r, shutdown), false),
            Err(e) => (refused(format!("malformed request: {e}")), false),
        };
        greeted = true;
        let Ok(mut out) = serde_json::to_string(&response) else {
            return;
        };
        out.push('\n');
        if writer.write_all(out.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// Serves the SFF thread `sff` on `listener` until a [`Request::Shutdown`],
/// `stop` becoming true (a signal handler's flag), or the thread stopping by
/// itself; then stops the thread and returns its final counters (or its
/// error).
pub fn serve(
    sff: SffHandle,
    listener: UnixListener,
    stop: Arc<AtomicBool>,
) -> Result<SffStats, SffError> {
    let local = sff.local()?;
    listener.set_nonblocking(true).map_err(SffError::Socket)?;
    while !stop.load(Ordering::Relaxed) && !sff.is_finished() {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let (sff, stop) = (local.clone(), stop.clone());
                std::thread::Builder::new()
                    .name("nham-sff-ctl".into())
                    .spawn(move || serve_connection(&sff, stream, &stop))
                    .map_err(|_| SffError::StartFailed)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    sff.stop()
}

/// A client of an SFF: a process, over its socket, or (for tests and the
/// lab) a thread of this process. Cheap to share: each request to a process
/// takes an idle connection (or opens one) and gives it back.
#[derive(Debug)]
pub struct SffClient {
    transport: Transport,
}

#[derive(Debug)]
enum Transport {
    Socket {
        path: PathBuf,
        idle: Mutex<Vec<BufReader<UnixStream>>>,
        timeout: Duration,
    },
    Local(LocalSff),
}

impl SffClient {
    /// A client of the SFF listening at `path`; checks that it answers.
    pub fn connect(path: &Path) -> Result<Self, RemoteError> {
        let c = Self {
            transport: Transport::Socket {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
                // A failed hop's answer waits until its ports are flushed
                // (up to 200 ms, and a reopen's retries: a few seconds).
                timeout: Duration::from_secs(30),
            },
        };
        c.status()?;
        Ok(c)
    }

    /// A client of the SFF thread `sff` in this process (`Shutdown` does
    /// nothing: its owner stops it).
    pub fn local(sff: &SffHandle) -> Result<Self, SffError> {
        Ok(Self {
            transport: Transport::Local(sff.local()?),
        })
    }

    /// Its socket (empty for a thread in this process).
    pub fn path(&self) -> &Path {
        match &self.transport {
            Transport::Socket { path, .. } => path,
            Transport::Local(_) => Path::new(""),
        }
    }

    fn io(&self, source: std::io::Error) -> RemoteError {
        RemoteError::Io {
            path: self.path().display().to_string(),
            source,
        }
    }

    fn protocol(&self, reason: impl std::fmt::Display) -> RemoteError {
        RemoteError::Protocol {
            path: self.path().display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Sends one request and waits for its answer. A connection that fails
    /// is dropped, never reused.
    pub fn request(&self, request: Request) -> Result<Response, RemoteError> {
        let response = match &self.transport {
            Transport::Local(sff) => execute(sff, request, &AtomicBool::new(false)),
            Transport::Socket {
                path,
                idle,
                timeout,
            } => {
                let pooled = idle
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop();
                let mut conn = match pooled {
                    Some(c) => c,
                    None => {
                        let s = UnixStream::connect(path).map_err(|e| self.io(e))?;
                        s.set_read_timeout(Some(*timeout)).map_err(|e| self.io(e))?;
                        let mut conn = BufReader::new(s);
                        self.hello(&mut conn)?;
                        conn
                    }
                };
                let response = self.exchange(&mut conn, &request)?;
                idle.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(conn);
                response
            }
        };
        match response {
            Response::Refused(why) => Err(RemoteError::Refused(why)),
            Response::Busy(why) => Err(RemoteError::Busy(why)),
            r => Ok(r),
        }
    }

    /// One request and its answer on connection `conn`.
    fn exchange(
        &self,
        conn: &mut BufReader<UnixStream>,
        request: &Request,
    ) -> Result<Response, RemoteError> {
        let mut msg = serde_json::to_string(request).map_err(|e| self.protocol(e))?;
        msg.push('\n');
        conn.get_mut()
            .write_all(msg.as_bytes())
            .map_err(|e| self.io(e))?;
        let mut line = String::new();
        match conn.read_line(&mut line) {
            Ok(0) => Err(self.io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the SFF closed the connection",
            ))),
            Ok(_) => serde_json::from_str(&line).map_err(|e| self.protocol(e)),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Opens a new connection: both sides must speak [`PROTOCOL_VERSION`].
    fn hello(&self, conn: &mut BufReader<UnixStream>) -> Result<(), RemoteError> {
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
        };
        let version = |theirs| RemoteError::Version {
            path: self.path().display().to_string(),
            ours: PROTOCOL_VERSION,
            theirs,
        };
        match self.exchange(conn, &hello)? {
            Response::Hello { version: v } if v == PROTOCOL_VERSION => Ok(()),
            Response::Hello { version: v } => Err(version(Some(v))),
            // A server from before the handshake refuses the unknown request.
            Response::Refused(_) => Err(version(None)),
            r => self.unexpected(r),
        }
    }

    fn unexpected<T>(&self, r: Response) -> Result<T, RemoteError> {
        Err(self.protocol(format!("unexpected answer {r:?}")))
    }

    /// `Hop::begin_checkpoint`: stop delivering to the VNF.
    pub fn begin_checkpoint(&self, hop: usize) -> Result<CheckpointId, RemoteError> {
        match self.request(Request::BeginCheckpoint { hop })? {
            Response::Checkpoint(id) => Ok(id),
            r => self.unexpected(r),
        }
    }

    /// `Hop::handle_quiesced`: the VNF is frozen, having consumed
    /// everything.
    pub fn quiesced(&self, hop: usize, id: CheckpointId) -> Result<Mark, RemoteError> {
        match self.request(Request::Quiesced { hop, id })? {
            Response::Mark(m) => Ok(m),
            r => self.unexpected(r),
        }
    }

    /// `Hop::handle_dumped`: the image is taken; delivery resumes.
    pub fn checkpoint_dumped(&self, hop: usize, id: CheckpointId) -> Result<Mark, RemoteError> {
        match self.request(Request::CheckpointDumped { hop, id })? {
            Response::Mark(m) => Ok(m),
            r => self.unexpected(r),
        }
    }

    /// `Hop::handle_checkpoint_complete`: durable; release.
    pub fn checkpoint_done(
        &self,
        hop: usize,
        id: CheckpointId,
    ) -> Result<CheckpointReport, RemoteError> {
        match self.request(Request::CheckpointDone { hop, id })? {
            Response::Done(d) => Ok(d),
            r => self.unexpected(r),
        }
    }

    /// `Hop::handle_checkpoint_failed`.
    pub fn checkpoint_failed(&self, hop: usize, id: CheckpointId) -> Result<(), RemoteError> {
        match self.request(Request::CheckpointFailed { hop, id })? {
            Response::Ok => Ok(()),
            r => self.unexpected(r),
        }
    }

    /// `Hop::handle_failure`: the VNF failed.
    pub fn failure(&self, hop: usize) -> Result<RestorePlan, RemoteError> {
        match self.request(Request::Failure { hop })? {
            Response::Plan(p) => Ok(p),
            r => self.unexpected(r),
        }
    }

    /// `Hop::handle_restored_from`: the VNF runs again, restored from
    /// checkpoint `from`; replay.
    pub fn restored(
        &self,
        hop: usize,
        from: Option<CheckpointId>,
    ) -> Result<RecoveryReport, RemoteError> {
        match self.request(Request::Restored { hop, from })? {
            Response::Recovered(r) => Ok(r),
            r => self.unexpected(r),
        }
    }

    /// Holds packets for `hop` until checkpoints include them, or not;
    /// returns the packets released by the change.
    pub fn set_protected(&self, hop: usize, protected: bool) -> Result<u64, RemoteError> {
        match self.request(Request::SetProtected { hop, protected })? {
            Response::Count(n) => Ok(n),
            r => self.unexpected(r),
        }
    }

    /// Every frame sent to member `member` (0: the VNF) of hop `hop` before
    /// send index `sent` has been read (its sockets were seen empty).
    pub fn socket_read(&self, hop: usize, member: usize, sent: u64) -> Result<(), RemoteError> {
        match self.request(Request::SocketRead { hop, member, sent })? {
            Response::Ok => Ok(()),
            r => self.unexpected(r),
        }
    }

    /// Member `member` (0: the VNF) of hop `hop` has a socket of
    /// `capacity`: the SFF keeps what is in flight to it within that.
    /// Answers with the capacity used before.
    pub fn set_capacity(
        &self,
        hop: usize,
        member: usize,
        capacity: nham_dataplane::window::VnfCapacity,
    ) -> Result<nham_dataplane::window::VnfCapacity, RemoteError> {
        match self.request(Request::SetCapacity {
            hop,
            member,
            capacity,
        })? {
            Response::Capacity(c) => Ok(c),
            r => self.unexpected(r),
        }
    }

    /// 1R-AA failover to a replica restored from checkpoint `to` (`None`:
    /// the initial state), in one exchange (see [`Request::FailOver`]).
    pub fn fail_over(
        &self,
        hop: usize,
        to: Option<CheckpointId>,
    ) -> Result<FailOverOutcome, RemoteError> {
        match self.request(Request::FailOver { hop, to })? {
            Response::FailOver(o) => Ok(o),
            r => self.unexpected(r),
        }
    }

    /// Opens `spec` ahead of its `attach_standby` as hop `hop`'s standby
    /// port (see [`Request::PrepareStandby`]).
    pub fn prepare_standby(&self, hop: usize, spec: crate::PortSpec) -> Result<(), RemoteError> {
        match self.request(Request::PrepareStandby { hop, spec })? {
            Response::Ok => Ok(()),
            r => self.unexpected(r),
        }
    }

    /// Opens `spec` as hop `hop`'s standby port.
    pub fn attach_standby(&self, hop: usize, spec: crate::PortSpec) -> Result<(), RemoteError> {
        match self.request(Request::AttachStandby { hop, spec })? {
            Response::Ok => Ok(()),
            r => self.unexpected(r),
        }
    }

    /// Hop `hop` keeps MR-AA members 1 to `keep` and adds members behind
    /// `add` (see [`Command::SetMembers`]).
    pub fn set_members(
        &self,
        hop: usize,
        keep: usize,
        add: Vec<crate::PortSpec>,
    ) -> Result<(), RemoteError> {
        match self.request(Request::SetMembers { hop, keep, add })? {
            Response::Ok => Ok(()),
            r => self.unexpected(r),
        }
    }

    /// MR-AA member `member` of hop `hop` failed: whether the hop goes on
    /// or failed with it (the last member).
    pub fn member_failed(&self, hop: usize, member: usize) -> Result<MemberFailure, RemoteError> {
        match self.request(Request::MemberFailed { hop, member })? {
            Response::MemberFailure(f) => Ok(f),
            r => self.unexpected(r),
        }
    }

    /// MR-AA member `member` of hop `hop`, failed, comes back behind
    /// `spec` (a new port in the failed one's place).
    pub fn replace_member(
        &self,
        hop: usize,
        member: usize,
        spec: crate::PortSpec,
    ) -> Result<(), RemoteError> {
        match self.request(Request::ReplaceMember { hop, member, spec })? {
            Response::Ok => Ok(()),
            r => self.unexpected(r),
        }
    }

    /// MR-AA member `member` of hop `hop` was restored from `from`
    /// (stopped); it catches up, or brings the failed hop back.
    pub fn member_restored(
        &self,
        hop: usize,
        member: usize,
        from: Option<CheckpointId>,
    ) -> Result<RecoveryReport, RemoteError> {
        match self.request(Request::MemberRestored { hop, member, from })? {
            Response::Recovered(r) => Ok(r),
            r => self.unexpected(r),
        }
    }

    /// Counters.
    pub fn stats(&self) -> Result<SffStats, RemoteError> {
        match self.request(Request::Stats)? {
            Response::Stats(s) => Ok(s),
            r => self.unexpected(r),
        }
    }

    /// The process and every hop's state.
    pub fn status(&self) -> Result<SffStatus, RemoteError> {
        match self.request(Request::Status)? {
            Response::Status(s) => Ok(s),
            r => self.unexpected(r),
        }
    }

    /// Asks the SFF to stop forwarding and exit.
    pub fn shutdown(&self) -> Result<(), RemoteError> {
        match self.request(Request::Shutdown)? {
            Response::Ok => Ok(()),
            r => self.unexpected(r),
        }
    }
}
