//! Flushing a failed VNF's port: what the kernel still holds in its
//! transmit ring for the dead incarnation is sent before the next one
//! listens, and the answer to the request that asked (`Failure`,
//! `MemberFailed`, `FailOver`) waits for it; a ring that cannot drain in
//! [`FLUSH_TIMEOUT`](crate::FLUSH_TIMEOUT) is discarded by reopening the
//! port, on a thread of its own, while the forwarding round goes on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nham_afxdp::Port;

use crate::{attach, Attached, Engine, Response, SffCounters, SffError};

/// A VNF-side port of the SFF, or the gap where one is being reopened (see
/// [`Engine::reopen`]).
// (Few and long-lived: the port kept inline, not behind a box that every
// burst would go through.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum PortSlot {
    /// Open and serving.
    Open(Attached),
    /// Its old socket closed, a new one being opened on a thread of its
    /// own (the kernel lets go of the queue a little later). Nothing is
    /// sent to or read from the gap meanwhile.
    Reopening(Reopen),
}

/// A port being reopened on a thread of its own: the new one comes on
/// `rx`. Dropped (its slot removed or replaced, or the SFF stopping), it
/// tells the thread to give up, so no forgotten port holds the interface.
pub(crate) struct Reopen {
    rx: mpsc::Receiver<Result<Attached, SffError>>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Reopen {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl PortSlot {
    /// The port, unless it is being reopened.
    pub(crate) fn port(&mut self) -> Option<&mut Port> {
        match self {
            Self::Open(a) => Some(&mut a.port),
            Self::Reopening(_) => None,
        }
    }

    /// The port, unless it is being reopened.
    pub(crate) fn port_ref(&self) -> Option<&Port> {
        match self {
            Self::Open(a) => Some(&a.port),
            Self::Reopening(_) => None,
        }
    }

    /// Takes the reopened port if it has come; an error if the reopening
    /// failed for good. `Ok(true)`: it is open again now.
    pub(crate) fn poll_reopened(&mut self) -> Result<bool, SffError> {
        let Self::Reopening(r) = self else {
            return Ok(false);
        };
        match r.rx.try_recv() {
            Ok(Ok(a)) => {
                *self = Self::Open(a);
                Ok(true)
            }
            Ok(Err(e)) => Err(e),
            Err(mpsc::TryRecvError::Empty) => Ok(false),
            Err(mpsc::TryRecvError::Disconnected) => Err(SffError::Panicked),
        }
    }
}

impl Engine {
    /// Puts ports reopened (see [`reopen`](Self::reopen)) back in their
    /// slots; a reopening that failed for good stops the thread.
    pub(super) fn reopen_step(&mut self) -> usize {
        let mut n = 0;
        for (i, ports) in self.hops.iter_mut().enumerate() {
            let standby = self.standby[i].as_mut().map(|(_, s)| s);
            for (k, slot) in ports.iter_mut().map(Some).chain([standby]).enumerate() {
                let Some(slot) = slot else { continue };
                match slot.poll_reopened() {
                    Ok(true) => {
                        n += 1;
                        if let Some(d) = self.drops.2[i].get_mut(k) {
                            *d = 0;
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(hop = i, "reopening a port failed for good: {e}");
                        self.fatal = Some(e);
                    }
                }
            }
        }
        n
    }

    /// Kicks the tx rings of ports being flushed, once each, without
    /// waiting; answers those whose ports are empty. A port that has not
    /// drained by the deadline is reopened (its ring discarded).
    pub(super) fn flushing_step(&mut self, now: std::time::Instant) -> usize {
        if self.flushing.is_empty() {
            return 0;
        }
        let mut flushing = std::mem::take(&mut self.flushing);
        let waiting = flushing.len();
        flushing.retain_mut(|f| {
            let late = now > f.deadline;
            f.ports.retain(|(hop, iface)| {
                // Being reopened: the answer waits for the new port.
                if self.reopening(*hop, iface) {
                    return true;
                }
                let stuck = self
                    .port_named(*hop, iface)
                    .is_some_and(|p| p.kick_tx() > 0);
                if stuck && late {
                    self.reopen(*hop, iface);
                }
                stuck
            });
            if f.ports.is_empty() {
                let _ = f
                    .reply
                    .send(std::mem::replace(&mut f.response, Response::Ok));
            }
            !f.ports.is_empty()
        });
        // Answers given count as work; a flush still waiting does not (the
        // idle round sleeps as usual meanwhile: no spinning for 200 ms).
        let answered = waiting - flushing.len();
        self.flushing.append(&mut flushing);
        answered
    }

    /// Member `k` of hop `hop` failed: nothing sent to the failed
    /// incarnation may reach the next one. Frames the kernel still holds
    /// in the port's tx ring (a veth without carrier keeps them there)
    /// would go out at the next wakeup, after the restore, to the new
    /// process, which would apply them before its replay. So they are sent
    /// now, while no VNF listens (the control plane reconnects the link
    /// first). What does not leave at once is kicked every round after,
    /// and the request's answer waits for it (see
    /// [`flushing_step`](Self::flushing_step)); the forwarding goes on. If
    /// they cannot leave, the port is reopened: a closed socket's ring is
    /// discarded.
    pub(super) fn flush_port(&mut self, hop: usize, k: usize) {
        if self.hops[hop][k].port().is_some_and(|p| p.kick_tx() > 0) {
            let iface = self.port_spec(hop, k).iface.clone();
            self.to_flush.push((hop, iface));
        }
    }

    /// The port of hop `hop` on interface `iface`: a member port or the
    /// standby.
    fn port_named(&mut self, hop: usize, iface: &str) -> Option<&mut Port> {
        self.port_slot_named(hop, iface)?.port()
    }

    /// The slot of the port of hop `hop` on `iface`.
    fn port_slot_named(&mut self, hop: usize, iface: &str) -> Option<&mut PortSlot> {
        match self.slot_named(hop, iface)? {
            Some(k) => Some(&mut self.hops[hop][k]),
            None => self.standby[hop].as_mut().map(|(_, s)| s),
        }
    }

    /// Whether the port of hop `hop` on `iface` is being reopened.
    fn reopening(&mut self, hop: usize, iface: &str) -> bool {
        matches!(
            self.port_slot_named(hop, iface),
            Some(PortSlot::Reopening(_))
        )
    }

    /// Where the port of hop `hop` on `iface` is: member port `Some(k)`, or
    /// the standby (`None`); `None` outside if the hop has no such port.
    fn slot_named(&self, hop: usize, iface: &str) -> Option<Option<usize>> {
        match (0..self.hops[hop].len()).find(|&k| self.port_spec(hop, k).iface == iface) {
            Some(k) => Some(Some(k)),
            None => self.standby[hop]
                .as_ref()
                .filter(|(spec, _)| spec.iface == iface)
                .map(|_| None),
        }
    }

    /// Reopens the port of hop `hop` on `iface`, whose tx ring did not
    /// drain in [`FLUSH_TIMEOUT`]: a closed socket's ring is discarded.
    /// The old socket closes here; the new one is opened on a thread of its
    /// own, which tries for 3 s (a closed AF_XDP socket lets go of its
    /// queue a little later: deferred kernel work, slow on a loaded
    /// machine). The forwarding round goes on meanwhile; the gap is put
    /// back by [`reopen_step`](Self::reopen_step), and the answer that
    /// waits for the flush waits for it (rare: it needs a link without
    /// carrier after the control plane brought it up).
    fn reopen(&mut self, hop: usize, iface: &str) {
        let spec = match self.slot_named(hop, iface) {
            Some(Some(k)) => self.port_spec(hop, k).clone(),
            Some(None) => match &self.standby[hop] {
                Some((spec, _)) => spec.clone(),
                None => return,
            },
            None => return,
        };
        let left = self
            .port_named(hop, iface)
            .map_or(0, |p| p.tx_outstanding());
        tracing::warn!(
            hop,
            port = spec.iface,
            "{left} frames for the failed VNF stuck in its tx ring: reopening the port"
        );
        let (tx, rx) = mpsc::channel();
        let Some(slot) = self.port_slot_named(hop, iface) else {
            return;
        };
        // The old socket (and its ring) must be gone before the XDP
        // program and a new socket take the link: dropped here.
        let cancel = Arc::new(AtomicBool::new(false));
        *slot = PortSlot::Reopening(Reopen {
            rx,
            cancel: cancel.clone(),
        });
        SffCounters::add(&self.counters.tx_discarded, left as u64);
        let config = self.config.port;
        // (A thread inherits this one's network namespace.)
        let spawned = std::thread::Builder::new()
            .name("nham-sff-reopen".into())
            .spawn(move || {
                let mut tries = 0;
                let fresh = loop {
                    if cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    match attach(&spec, config) {
                        Ok(f) => break Ok(f),
                        Err(e) if tries >= 1500 => break Err(e),
                        Err(_) => {
                            tries += 1;
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                };
                // Not wanted any more: dropped here (the link let go).
                if !cancel.load(Ordering::Relaxed) {
                    let _ = tx.send(fresh);
                }
            });
        if let Err(e) = spawned {
            self.fatal = Some(SffError::Socket(e));
        }
    }
}
