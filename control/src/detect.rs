//! The Failure Detector's judgement of hangs and cut-offs, from data-path
//! evidence sampled every probe interval (crashes need no judgement: the
//! VNF's pidfd says so at once).
//!
//! Each probe of a VNF brings two facts:
//! - `rmem`: bytes waiting in the VNF's packet socket (frames the SFF
//!   delivered and the VNF has not read);
//! - `carrier`: whether the SFF's end of the VNF's veth has carrier (it has
//!   none when the VNF's end is down).
//!
//! Verdicts (`threshold` consecutive probes each, so one slow moment is no
//! failure):
//! - **cut off**: no carrier;
//! - **hung**: frames wait and the queue never shrinks: a VNF that runs
//!   reads its socket, so the queue goes down between some two probes.
//!   An idle VNF (nothing queued) is never judged hung: it harms no packet.
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
}

impl Verdict {
    /// The cause as events and logs name it.
    pub fn cause(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Hung => "hang: frames wait in its socket and it reads none",
            Self::CutOff => "cut off: its link has no carrier",
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
}

/// The hang and cut-off detector of one VNF incarnation.
#[derive(Debug, Clone)]
pub struct Detector {
    threshold: u32,
    stuck: u32,
    cut: u32,
    last_rmem: u64,
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
        // Queue non-empty and not shrinking since the last probe.
        self.stuck = if p.rmem > 0 && p.rmem >= self.last_rmem && self.last_rmem > 0 {
            self.stuck + 1
        } else {
            0
        };
        self.last_rmem = p.rmem;
        let verdict = if self.cut >= self.threshold {
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

    fn probe(rmem: u64, carrier: bool) -> Probe {
        Probe { rmem, carrier }
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
        /// Reference model: hung exactly when, at some probe, the last
        /// `threshold + 1` probes all had a non-empty queue that never went
        /// down; cut off exactly when the last `threshold` probes had no
        /// carrier; the first such probe gets the verdict (cut-off first),
        /// and no later one.
        #[test]
        fn agrees_with_the_reference_model(
            threshold in 1u32..5,
            probes in proptest::collection::vec((0u64..4, any::<bool>()), 0..60),
        ) {
            let mut d = Detector::new(threshold);
            let t = threshold as usize;
            let mut judged = false;
            for i in 0..probes.len() {
                let got = d.handle_probe(probe(probes[i].0, probes[i].1));
                let cut = i + 1 >= t && probes[i + 1 - t..=i].iter().all(|p| !p.1);
                let hung = i >= t
                    && probes[i - t..=i].iter().all(|p| p.0 > 0)
                    && probes[i - t..=i].windows(2).all(|w| w[1].0 >= w[0].0);
                let want = if judged {
                    Verdict::Healthy
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
