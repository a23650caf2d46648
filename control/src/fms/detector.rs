//! The Failure Detector's judgement of hangs and cut-offs, from data-path
//! evidence sampled every probe interval (crashes need no judgement: the
//! VNF's pidfd says so at once).
//!
//! Each probe of a VNF brings these facts:
//! - `rmem`: bytes waiting in the VNF's packet socket (frames the SFF
//!   delivered and the VNF has not read);
//! - `carrier`: whether the SFF's end of the VNF's veth has carrier (it has
//!   none when the VNF's end is down);
//! - `heard`: frames the SFF has received from the VNF so far, when known;
//! - `drops`: frames the kernel dropped at the VNF's receiving packet
//!   sockets because they were full (sock_diag `SK_MEMINFO_DROPS`; the
//!   sockets of a new incarnation start at 0);
//! - `cpu`: the VNF's threads' CPU time and run-queue wait so far, and
//!   whether one is runnable now (`/proc/<pid>/task/*/{schedstat,stat}`),
//!   when known; and `at`, when the probe was taken.
//!
//! Verdicts:
//! - **input dropped** (at once: it is a fact, not a guess): the VNF missed
//!   input it was sent. It is a failure like a crash: the VNF's state no
//!   longer follows its input, and only a restore from the last checkpoint
//!   before the drop and a replay make it whole. Never taken for
//!   non-determinism.
//!
//! The others take `threshold` consecutive probes each, so one slow moment
//! is no failure:
//! - **cut off**: no carrier;
//! - **hung**: frames wait, the queue never shrinks and the VNF sends
//!   nothing back: a VNF that runs reads its socket, so the queue goes
//!   down between some two probes, or answers. (The SFF's flow control
//!   keeps a slow VNF's queue full: as it answers one frame it is sent
//!   the next, so its queue alone looks the same as a stopped one's.)
//!   An idle VNF (nothing queued) is never judged hung: it harms no packet.
//!   An interval in which the VNF was starved of CPU is no evidence either
//!   way (a starved VNF is not a hung one: on a loaded host, that is most
//!   false hangs); it neither counts nor breaks the run. Starved: it waited
//!   for a CPU a quarter of the interval or more, or it is runnable and has
//!   not run since the last probe (the kernel adds a wait to the total
//!   only once the wait ends). A stopped or deadlocked VNF is not
//!   runnable; a VNF spinning in a loop runs.
//!
//! Invariant: a verdict is given once; the detector of a VNF starts afresh
//! for each incarnation ([`Detector::reset`]).

/// What the detector concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing wrong (yet).
    Healthy,
    /// The VNF does not consume its input.
    Hung,
    /// The VNF's link is down.
    CutOff,
    /// The kernel dropped frames at the VNF's full socket: it missed input.
    InputDropped,
}

impl Verdict {
    /// The cause as events and logs name it.
    pub fn cause(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Hung => "hang: frames wait in its socket and it reads none",
            Self::CutOff => "cut off: its link has no carrier",
            Self::InputDropped => {
                "input dropped: its socket was full and the kernel dropped frames sent to it"
            }
        }
    }
}

/// One probe's facts about one VNF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Bytes queued on its packet socket.
    pub rmem: u64,
    /// Carrier on the SFF's end of its link.
    pub carrier: bool,
    /// Frames dropped at its full receiving sockets, since they were opened.
    pub drops: u64,
    /// Frames the SFF has received from it so far (`None`: unknown).
    pub heard: Option<u64>,
    /// Its threads' use of the CPU (`None`: unknown).
    pub cpu: Option<Cpu>,
    /// When the probe was taken (from any fixed origin).
    pub at: std::time::Duration,
}

/// A VNF's threads' use of the CPU, as the scheduler accounts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cpu {
    /// Time they have run, in all.
    pub ran: std::time::Duration,
    /// Time they have waited on a run queue, in all (waits that have ended).
    pub waited: std::time::Duration,
    /// Whether one of them is runnable (or running) now.
    pub runnable: bool,
}

/// The hang and cut-off detector of one VNF incarnation.
#[derive(Debug, Clone)]
pub struct Detector {
    threshold: u32,
    stuck: u32,
    cut: u32,
    last_rmem: u64,
    last_heard: Option<u64>,
    last_cpu: Option<Cpu>,
    last_at: Option<std::time::Duration>,
    judged: bool,
}

impl Detector {
    /// Judges after `threshold` (at least 1) consecutive bad probes.
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            stuck: 0,
            cut: 0,
            last_rmem: 0,
            last_heard: None,
            last_cpu: None,
            last_at: None,
            judged: false,
        }
    }

    /// Starts afresh (a new incarnation of the VNF).
    pub fn reset(&mut self) {
        *self = Self::new(self.threshold);
    }

    /// Takes one probe; returns a verdict the first time one is reached.
    pub fn handle_probe(&mut self, p: Probe) -> Verdict {
        if self.judged {
            return Verdict::Healthy;
        }
        self.cut = if p.carrier { 0 } else { self.cut + 1 };
        // Queue non-empty and not shrinking since the last probe, and
        // nothing answered meanwhile (as far as is known).
        let answered = matches!((self.last_heard, p.heard), (Some(a), Some(b)) if b != a);
        let starved = match (self.last_cpu, p.cpu, self.last_at) {
            (Some(a), Some(b), Some(t)) => {
                b.waited.saturating_sub(a.waited) * 4 >= p.at.saturating_sub(t)
                    || (b.runnable && b.ran == a.ran)
            }
            _ => false,
        };
        if p.rmem > 0 && p.rmem >= self.last_rmem && self.last_rmem > 0 && !answered {
            self.stuck += u32::from(!starved);
        } else {
            self.stuck = 0;
        }
        self.last_rmem = p.rmem;
        self.last_heard = p.heard;
        self.last_cpu = p.cpu;
        self.last_at = Some(p.at);
        let verdict = if p.drops > 0 {
            Verdict::InputDropped
        } else if self.cut >= self.threshold {
            Verdict::CutOff
        } else if self.stuck >= self.threshold {
            Verdict::Hung
        } else {
            Verdict::Healthy
        };
        self.judged = verdict != Verdict::Healthy;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn probe(rmem: u64, carrier: bool) -> Probe {
        Probe {
            rmem,
            carrier,
            drops: 0,
            heard: None,
            cpu: None,
            at: Duration::ZERO,
        }
    }

    #[test]
    fn a_slow_vnf_that_answers_is_not_hung() {
        let mut d = Detector::new(2);
        // Its queue stays full (the SFF sends one frame per answer), but
        // it answers between every two probes.
        for heard in 0..20 {
            let p = Probe {
                heard: Some(heard),
                ..probe(300, true)
            };
            assert_eq!(d.handle_probe(p), Verdict::Healthy, "probe {heard}");
        }
        // It stops answering: hung after two more probes.
        let stopped = Probe {
            heard: Some(19),
            ..probe(300, true)
        };
        assert_eq!(d.handle_probe(stopped), Verdict::Healthy);
        assert_eq!(d.handle_probe(stopped), Verdict::Hung);
    }

    #[test]
    fn a_vnf_starved_of_cpu_is_not_hung() {
        let mut d = Detector::new(2);
        let at = |i: u32, ran_ms: u64, waited_ms: u64, runnable: bool| Probe {
            cpu: Some(Cpu {
                ran: Duration::from_millis(ran_ms),
                waited: Duration::from_millis(waited_ms),
                runnable,
            }),
            at: Duration::from_millis(50) * i,
            ..probe(300, true)
        };
        // Waiting for a CPU 30 of every 50 ms: no evidence.
        for i in 0..10 {
            let p = at(i, 5 * u64::from(i), 30 * u64::from(i), false);
            assert_eq!(d.handle_probe(p), Verdict::Healthy);
        }
        // Runnable and not run since: waiting now, no evidence either.
        for i in 10..20 {
            assert_eq!(d.handle_probe(at(i, 45, 270, true)), Verdict::Healthy);
        }
        // Stopped (not runnable, not waiting) and still reading nothing.
        assert_eq!(d.handle_probe(at(20, 45, 270, false)), Verdict::Healthy);
        assert_eq!(d.handle_probe(at(21, 45, 270, false)), Verdict::Hung);
    }

    #[test]
    fn a_vnf_spinning_without_reading_is_hung() {
        let mut d = Detector::new(2);
        let at = |i: u32| Probe {
            cpu: Some(Cpu {
                ran: Duration::from_millis(45) * i,
                waited: Duration::from_millis(5) * i,
                runnable: true,
            }),
            at: Duration::from_millis(50) * i,
            ..probe(300, true)
        };
        assert_eq!(d.handle_probe(at(0)), Verdict::Healthy);
        assert_eq!(d.handle_probe(at(1)), Verdict::Healthy);
        assert_eq!(d.handle_probe(at(2)), Verdict::Hung);
    }

    #[test]
    fn a_stopped_vnf_is_hung_after_threshold_probes() {
        let mut d = Detector::new(3);
        // Delivered frames pile up, then stay.
        let seq = [100, 200, 300, 300, 300];
        let verdicts: Vec<_> = seq
            .iter()
            .map(|&r| d.handle_probe(probe(r, true)))
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Healthy,
                Verdict::Healthy,
                Verdict::Healthy,
                Verdict::Hung,
                Verdict::Healthy // judged once
            ]
        );
    }

    #[test]
    fn a_drop_at_its_socket_is_a_failure_at_once() {
        let mut d = Detector::new(3);
        assert_eq!(d.handle_probe(probe(100, true)), Verdict::Healthy);
        let dropped = Probe {
            drops: 2,
            ..probe(100, true)
        };
        assert_eq!(d.handle_probe(dropped), Verdict::InputDropped);
        assert_eq!(d.handle_probe(dropped), Verdict::Healthy); // judged once
    }

    #[test]
    fn a_link_without_carrier_is_cut_off() {
        let mut d = Detector::new(2);
        assert_eq!(d.handle_probe(probe(0, false)), Verdict::Healthy);
        assert_eq!(d.handle_probe(probe(0, false)), Verdict::CutOff);
        d.reset();
        assert_eq!(d.handle_probe(probe(0, false)), Verdict::Healthy);
        assert_eq!(d.handle_probe(probe(0, true)), Verdict::Healthy);
        assert_eq!(d.handle_probe(probe(0, false)), Verdict::Healthy);
    }

    proptest! {
        /// Reference model: take the run of consecutive probe intervals
        /// ending at a probe in which the queue was non-empty at both ends
        /// and did not go down, and the frames heard (when both ends knew
        /// them) did not change; hung exactly when `threshold` of them
        /// were not starved (the VNF waited for a CPU less than a quarter
        /// of the interval, and was not runnable without having run);
        /// cut off exactly when the last `threshold` probes had no
        /// carrier; input dropped at once when a probe saw drops; the first
        /// such probe gets the verdict (drops, then cut-off first),
        /// and no later one.
        #[test]
        fn agrees_with_the_reference_model(
            threshold in 1u32..5,
            probes in proptest::collection::vec(
                (
                    0u64..4,
                    any::<bool>(),
                    proptest::option::of(0u64..3),
                    (0u64..60, 0u64..3, any::<bool>()),
                    proptest::bool::weighted(0.05),
                ),
                0..60,
            ),
        ) {
            let mut d = Detector::new(threshold);
            let t = threshold as usize;
            let mut judged = false;
            // Probes every 40 ms; in the interval before probe i the VNF
            // waits probes[i].3.0 ms for a CPU and runs probes[i].3.1 ms,
            // and is runnable at probe i if probes[i].3.2.
            let total = |f: fn(&(u64, u64, bool)) -> u64| -> Vec<u64> {
                probes
                    .iter()
                    .scan(0, |sum, p| {
                        *sum += f(&p.3);
                        Some(*sum)
                    })
                    .collect()
            };
            let (waited, ran) = (total(|c| c.0), total(|c| c.1));
            let starved = |j: usize| {
                let (wait, run, runnable) = probes[j].3;
                wait * 4 >= 40 || (runnable && run == 0)
            };
            let stuck = |j: usize| {
                let (a, b) = (probes[j - 1], probes[j]);
                let answered = matches!((a.2, b.2), (Some(x), Some(y)) if x != y);
                a.0 > 0 && b.0 >= a.0 && !answered
            };
            for i in 0..probes.len() {
                let (rmem, carrier, heard, (_, _, runnable), dropped) = probes[i];
                let got = d.handle_probe(Probe {
                    rmem,
                    carrier,
                    drops: u64::from(dropped),
                    heard,
                    cpu: Some(Cpu {
                        ran: Duration::from_millis(ran[i]),
                        waited: Duration::from_millis(waited[i]),
                        runnable,
                    }),
                    at: Duration::from_millis(40 * i as u64),
                });
                let cut = i + 1 >= t && probes[i + 1 - t..=i].iter().all(|p| !p.1);
                let run = (1..=i).rev().take_while(|&j| stuck(j));
                let hung = run.filter(|&j| !starved(j)).count() >= t;
                let want = if judged {
                    Verdict::Healthy
                } else if dropped {
                    Verdict::InputDropped
                } else if cut {
                    Verdict::CutOff
                } else if hung {
                    Verdict::Hung
                } else {
                    Verdict::Healthy
                };
                prop_assert_eq!(got, want, "probe {}", i);
                judged |= want != Verdict::Healthy;
            }
        }
    }
}
