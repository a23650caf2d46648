//! The forwarding round of the SFF thread: ingress (`ingress.rs`),
//! delivery to each VNF (and MR-AA member, and catch-up), what each VNF
//! sends back (checked, numbered, held), egress. Bursts are sized by the
//! room there is before frames leave a ring.

#[allow(unused_imports)]
use super::*;

impl Engine {
    /// One round over every port at time `now` (read once by the
    /// caller); returns frames moved.
    pub(crate) fn step(&mut self, now: std::time::Instant) -> usize {
        let mut work = self.commands_step(now) + self.ingress_step();
        for i in 0..self.hops.len() {
            work += self.deliver_step(i, now);
            work += self.vnf_output_step(i, now);
        }
        if let Some(chain) = &mut self.chain {
            for i in 0..self.hops.len().saturating_sub(1) {
                work += chain.poll_advance_burst(i, self.config.burst);
            }
        }
        // Fenced frames are read and discarded, but are no work: a stale
        // incarnation that keeps sending must not keep the SFF from
        // sleeping (what it sends meanwhile waits in, or overflows, a
        // ring nobody else reads).
        self.fence_step();
        let work = work + self.egress_step();
        self.kick_stalled_tx(now);
        work
    }

    /// Frames on a hop's standby port are read and discarded, counted as
    /// `fenced`: only the hop's current port speaks for it. The standby is
    /// a 1R-AA replica (stopped: it sends nothing) or, after a failover,
    /// the old incarnation's link: a VNF that failed, or one on a host cut
    /// off that still runs and sends (across hosts each incarnation has a
    /// tunnel of its own, see `nham_netns::tunnel`). Its frames never reach
    /// the core, whatever epoch or sequence number they carry.
    fn fence_step(&mut self) -> usize {
        let burst = self.config.burst;
        let mut fenced = 0;
        for (_, slot) in self.standby.iter_mut().flatten() {
            if let Some(port) = slot.port() {
                fenced += port.recv_burst(burst, |_| {});
            }
        }
        SffCounters::add(&self.counters.fenced, fenced as u64);
        fenced
    }

    /// Frames the kernel left in a port's tx ring, nothing completing for a
    /// millisecond, are asked for again, at most once a millisecond per
    /// port (see
    /// `Port::kick_if_stalled`): a veth whose peer's ring was full (the
    /// sink's, a replica's) stops its queue and copy mode keeps the frames
    /// in the ring until the next wakeup, which no new frame may bring.
    fn kick_stalled_tx(&mut self, now: std::time::Instant) {
        const EVERY: std::time::Duration = std::time::Duration::from_millis(1);
        let mut kicks = u64::from(self.egress.port.kick_if_stalled(now, EVERY));
        let standby = self.standby.iter_mut().flatten().map(|(_, slot)| slot);
        for slot in self.hops.iter_mut().flatten().chain(standby) {
            if let Some(p) = slot.port() {
                kicks += u64::from(p.kick_if_stalled(now, EVERY));
            }
        }
        SffCounters::add(&self.counters.tx_kicks, kicks);
    }

    fn deliver_step(&mut self, i: usize, now: std::time::Instant) -> usize {
        let Some(chain) = &self.chain else {
            return 0;
        };
        let members = self.hops[i].len();
        let burst = self.config.burst;
        if members == 1 {
            return self.deliver_burst(i, &[0], false, burst, now);
        }
        // MR-AA: one burst to every live member; then the catch-up turns
        // the core gives (`Hop::catch_up_turns`).
        // (A buffer reused every round: no allocation on this path.)
        let mut live = std::mem::take(&mut self.member_scratch);
        live.clear();
        live.extend(
            chain
                .hop(i)
                .members()
                .enumerate()
                .filter(|(_, m)| *m == MemberState::Live)
                .map(|(k, _)| k),
        );
        let mut work = self.deliver_burst(i, &live, false, burst, now);
        let mut turns = std::mem::take(&mut self.turn_scratch);
        turns.clear();
        if let Some(chain) = &self.chain {
            turns.extend(chain.hop(i).catch_up_turns(work));
        }
        for &(k, max) in &turns {
            work += self.deliver_burst(i, &[k], true, max, now);
        }
        self.turn_scratch = turns;
        self.member_scratch = live;
        work
    }

    /// Delivers one burst of hop `i` to its member ports `ports` (the
    /// same frames to each), or (`catch_up`) the next frames member
    /// `ports[0]` missed. Sized by the room and window of every port.
    fn deliver_burst(
        &mut self,
        i: usize,
        ports: &[usize],
        catch_up: bool,
        max: usize,
        now: std::time::Instant,
    ) -> usize {
        let Some(chain) = &mut self.chain else {
            return 0;
        };
        if ports.is_empty() {
            return 0;
        }
        // Flow control towards the VNF: never more unanswered frames than
        // its socket can hold (in the bytes the kernel charges them, see
        // `nham_dataplane::window`), so neither its socket queue nor (with
        // what it sends back) our ring can overflow. A VNF's output with
        // sequence number s answers every input up to s (VNFs are FIFO);
        // silence for `vnf_window_timeout` answers the rest (see
        // `vnf_output_port`).
        let mut n = max;
        for &k in ports {
            // (A live member's port is never being reopened; were it, no
            // burst.)
            let Some(port) = self.hops[i][k].port() else {
                return 0;
            };
            port.reclaim();
            n = n.min(port.tx_room());
        }
        {
            let hop = chain.hop(i);
            let pool = &self.pool;
            for &k in ports {
                let (mut up, mut live);
                let next: &mut dyn Iterator<Item = &u32> = if catch_up {
                    up = hop.peek_catch_up(k);
                    &mut up
                } else {
                    live = hop.peek_delivery();
                    &mut live
                };
                let lens = next.take(n).map(|&slot| pool.frame(slot).len());
                n = n.min(self.in_flight[i][k].admit(lens));
            }
        }
        if n == 0 {
            return 0;
        }
        for &k in ports {
            self.in_flight[i][k].on_burst(now);
        }
        self.scratch.clear();
        let scratch = &mut self.scratch;
        let hop = chain.hop_mut(i);
        let push = |d: nham_dataplane::hold::Delivery<'_, u32>| {
            scratch.push((*d.packet, d.seq, d.epoch));
        };
        if catch_up {
            hop.poll_catch_up(ports[0], n, push);
        } else {
            hop.poll_delivery_burst(n, push);
        }
        if self.scratch.is_empty() {
            return 0;
        }
        for &k in ports {
            let spec = match k {
                0 => &self.config.hops[i],
                _ => &self.config.members[i][k - 1],
            };
            let (pool, scratch) = (&self.pool, &self.scratch);
            let Some(port) = self.hops[i][k].port() else {
                continue;
            };
            let sent = port.send_burst(scratch.len(), |j, out| {
                let (slot, seq, epoch) = scratch[j];
                let frame = pool.frame(slot);
                let len = frame.len().min(out.len());
                out[..len].copy_from_slice(&frame[..len]);
                out[0..6].copy_from_slice(&spec.peer_mac);
                out[6..12].copy_from_slice(&spec.mac);
                NshPacket::new_unchecked(&mut out[ETH..len])
                    .set_nham_metadata(NhamMetadata { seq, epoch });
                len
            });
            let window = &mut self.in_flight[i][k];
            for &(slot, seq, _) in &scratch[..sent] {
                window.on_sent(seq, pool.frame(slot).len());
            }
            SffCounters::add(&self.counters.delivered, sent as u64);
            SffCounters::add(&self.counters.tx_refused, (scratch.len() - sent) as u64);
        }
        if !self.protected[i] {
            if let Some(chain) = &mut self.chain {
                let pool = &mut self.pool;
                chain
                    .hop_mut(i)
                    .release_delivered(|slot| pool.release(slot));
            }
        }
        self.scratch.len()
    }

    pub(crate) fn vnf_output_step(&mut self, i: usize, now: std::time::Instant) -> usize {
        (0..self.hops[i].len())
            .map(|k| self.vnf_output_port(i, k, now))
            .sum()
    }

    /// Takes what member `k` of hop `i` sent back (an ordinary hop has
    /// member 0 only).
    fn vnf_output_port(&mut self, i: usize, k: usize, now: std::time::Instant) -> usize {
        let members = self.hops[i].len() > 1;
        let Some(chain) = &mut self.chain else {
            return 0;
        };
        // A buffer for every frame this burst may take off the ring: an
        // output read is never lost for want of one (a full pool leaves
        // outputs on the ring, where the kernel counts what it drops).
        let max = self.config.burst.min(self.pool.available());
        if max == 0 {
            return 0;
        }
        // "The Service Index MUST be decremented by a value of 1 by Service
        // Functions": after VNF i the SI is 255 - (i + 1).
        let expected_si = nsh::DEFAULT_INITIAL_SI.wrapping_sub(i as u8 + 1);
        let spi = self.config.spi;
        let next_mac = self.config.hops.get(i + 1).map(|h| (h.peer_mac, h.mac));
        let (pool, counters) = (&mut self.pool, &self.counters);
        let hop = chain.hop_mut(i);
        let mut answered: Option<u64> = None;
        let Some(port) = self.hops[i][k].port() else {
            return 0;
        };
        let n = port.recv_burst(max, |frame| {
            let Some(view) = frame
                .get(12..14)
                .filter(|t| u16::from_be_bytes([t[0], t[1]]) == nsh::ETHERTYPE_NSH)
                .and_then(|_| NshPacket::new_checked(&frame[ETH..]).ok())
            else {
                SffCounters::add(&counters.malformed_from_vnf, 1);
                return;
            };
            let Some(meta) = view.nham_metadata().filter(|_| view.spi() == spi) else {
                SffCounters::add(&counters.malformed_from_vnf, 1);
                return;
            };
            if view.si() != expected_si {
                SffCounters::add(&counters.si_mismatch, 1);
                return;
            }
            let ttl = match nsh::decrement_ttl(view.ttl()) {
                TtlVerdict::Forward(t) => t,
                TtlVerdict::Expired => {
                    SffCounters::add(&counters.ttl_expired, 1);
                    return;
                }
            };
            answered = Some(answered.map_or(meta.seq, |a| a.max(meta.seq)));
            // What the VNF made of the packet (the inner frame, and the
            // input it answers; MACs and the rest of the metadata aside), to
            // tell a replay that differs — or an output numbered as another
            // input's answer (a copy that missed an input).
            let digest = {
                use std::hash::Hasher;
                let mut h = std::hash::DefaultHasher::new();
                h.write(frame.get(ETH + view.header_len()..).unwrap_or_default());
                h.write_u64(meta.seq);
                h.finish()
            };
            // (The burst is no larger than the pool's room: never empty
            // here; counted, not a panic, should it ever be.)
            let Some(slot) = pool.alloc() else {
                SffCounters::add(&counters.pool_exhausted, 1);
                return;
            };
            let mut used = false;
            let copy = || {
                used = true;
                let buf = pool.buffer_mut(slot);
                buf[..frame.len()].copy_from_slice(frame);
                if let Some((dst, src)) = next_mac {
                    buf[0..6].copy_from_slice(&dst);
                    buf[6..12].copy_from_slice(&src);
                }
                NshPacket::new_unchecked(&mut buf[ETH..frame.len()]).set_ttl(ttl);
                pool.set_len(slot, frame.len());
                slot
            };
            let disposition = if members {
                hop.handle_member_output(k, meta.epoch, meta.seq, digest, copy)
            } else {
                hop.handle_output_with(meta.epoch, meta.seq, digest, copy)
            };
            if !used {
                pool.release(slot);
            }
            let c = match disposition {
                nham_dataplane::hold::OutputDisposition::Accepted => &counters.accepted,
                nham_dataplane::hold::OutputDisposition::Duplicate => &counters.duplicates,
                nham_dataplane::hold::OutputDisposition::Stale => &counters.stale,
                nham_dataplane::hold::OutputDisposition::Divergent => {
                    SffCounters::add(&counters.divergent, 1);
                    &counters.duplicates
                }
            };
            SffCounters::add(c, 1);
        });
        self.heard[i][k] += n as u64;
        // Silence, judged only with the ring empty: a VNF that drops
        // packets never answers them. (Judged by time alone, an SFF that
        // was itself descheduled for a while would take outputs still
        // waiting on the ring for silence, open the window, and let the
        // ring overflow.)
        if n > 0 {
            self.in_flight[i][k].on_heard(now);
        } else {
            let read = self
                .config
                .vnf_silence_needs_read
                .then_some(self.read_upto[i][k]);
            self.in_flight[i][k].poll_silence(now, self.config.vnf_window_timeout, read);
        }
        if let Some(seq) = answered {
            self.in_flight[i][k].on_answered(seq);
        }
        n
    }

    fn egress_step(&mut self) -> usize {
        let port = &mut self.egress.port;
        port.reclaim();
        let n = self.config.burst.min(port.tx_room());
        self.slots.clear();
        while self.slots.len() < n {
            let next = match &mut self.chain {
                Some(c) => c.poll_egress().map(|(_, slot)| slot),
                None => self.direct.pop_front(),
            };
            match next {
                Some(slot) => self.slots.push(slot),
                None => break,
            }
        }
        if self.slots.is_empty() {
            return 0;
        }
        let (slots, pool) = (&self.slots, &self.pool);
        let sent = port.send_burst(slots.len(), |k, out| {
            // Decapsulate: strip outer Ethernet and NSH.
            match nham_dataplane::classifier::decapsulate(pool.frame(slots[k])) {
                Ok((_, inner)) => {
                    let len = inner.len().min(out.len());
                    out[..len].copy_from_slice(&inner[..len]);
                    len
                }
                Err(_) => 0,
            }
        });
        SffCounters::add(&self.counters.egress, sent as u64);
        SffCounters::add(&self.counters.tx_refused, (slots.len() - sent) as u64);
        for &slot in &self.slots {
            self.pool.release(slot);
        }
        sent
    }
}
