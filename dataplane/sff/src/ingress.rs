//! Ingress, the Classifier's part of the forwarding round: frames read
//! from the ingress port (no more than the first hop's `buffer_rx` has
//! room for, and never the pool buffers VNF outputs need), classified, put
//! in NSH with the chain's next sequence number, and admitted into the
//! chain (or straight to egress for a chain without VNFs). Malformed,
//! oversize and unmatched frames are counted and dropped.

#[allow(unused_imports)]
use super::*;

impl Engine {
    /// One burst from the ingress port (its receive queues in turn);
    /// returns frames read.
    pub(crate) fn ingress_step(&mut self) -> usize {
        let burst = self.config.burst;
        let room = match &self.chain {
            Some(c) => {
                let first = c.hop(0).rx();
                // Capacity minus occupancy of the first hop's buffer_rx.
                first_room(first.len(), self.config.hop.rx_capacity)
            }
            None => burst.saturating_sub(self.direct.len()),
        };
        // Ingress never takes the buffers VNF outputs need: with the pool
        // empty, outputs would stay in (and overflow) the hops' rx rings and
        // a checkpoint's mark would miss them. Overload backs up at ingress.
        let max = burst
            .min(room)
            .min(self.pool.available().saturating_sub(self.output_reserve));
        if max == 0 {
            return 0;
        }
        let (spi, hop0) = (
            self.config.spi,
            self.config
                .hops
                .first()
                .cloned()
                .unwrap_or_else(|| self.config.egress.clone()),
        );
        let Self {
            ingress,
            ingress_turn,
            classifier,
            chain,
            pool,
            counters,
            direct,
            next_seq,
            ..
        } = self;
        let mut on_frame = |frame: &[u8]| {
            SffCounters::add(&counters.ingress, 1);
            match classifier.classify(frame) {
                Err(_) => SffCounters::add(&counters.malformed_ingress, 1),
                Ok(Some(s)) if s == spi => {
                    if frame.len() + ETH + nsh::NHAM_HEADER_LEN > SLOT {
                        SffCounters::add(&counters.oversize, 1);
                        return;
                    }
                    // (Cannot happen: the burst is sized to the pool. Were
                    // it to, the frame is counted, never dropped silently.)
                    let Some(slot) = pool.alloc() else {
                        SffCounters::add(&counters.pool_exhausted, 1);
                        return;
                    };
                    let encap = |seq: u64, pool: &mut Pool| {
                        let n = nham_dataplane::classifier::encapsulate(
                            pool.buffer_mut(slot),
                            hop0.peer_mac,
                            hop0.mac,
                            spi,
                            NhamMetadata { seq, epoch: 0 },
                            frame,
                        )
                        .unwrap_or(0);
                        pool.set_len(slot, n);
                    };
                    match chain {
                        Some(c) => {
                            let admitted = c.try_ingress(|seq| {
                                encap(seq, pool);
                                slot
                            });
                            if admitted.is_err() {
                                pool.release(slot);
                                return;
                            }
                        }
                        None => {
                            encap(*next_seq, pool);
                            *next_seq += 1;
                            direct.push_back(slot);
                        }
                    }
                    SffCounters::add(&counters.classified, 1);
                }
                Ok(_) => SffCounters::add(&counters.classifier_miss, 1),
            }
        };
        // A multi-queue NIC's queues share the burst, a different one
        // first each round, so that a busy queue starves none of the others.
        let queues = 1 + ingress.queues.len();
        let first = *ingress_turn % queues;
        *ingress_turn = ingress_turn.wrapping_add(1);
        let mut read = 0;
        for i in (0..queues).map(|i| (first + i) % queues) {
            if read >= max {
                break;
            }
            let port = match i {
                0 => &mut ingress.port,
                i => &mut ingress.queues[i - 1],
            };
            read += port.recv_burst(max - read, &mut on_frame);
        }
        read
    }
}
