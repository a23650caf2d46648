//! Test traffic for NHAM: a generator and a checking sink, both on AF_XDP
//! ports, and the frames they exchange.
//!
//! Every generated frame is Ethernet/IPv4/UDP and carries, at fixed offsets
//! after the UDP header, the generator's sequence number, a send timestamp
//! and a 2-byte marker ([`stamp`]), so the sink can tell exactly which frame
//! it got, however the chain rewrote the headers (NAT) or multiplied it.
//!
//! Flows: flow `f` goes from inside (10.0.x.y, port 1024 + f) to
//! 192.0.2.1:5001, except every fourth flow, which is the reply direction of
//! the flow before it; a stateful firewall drops those replies until the
//! flow they answer has been seen.
//!
//! The [`Checker`] compares what the sink got with what a failure-free
//! chain must output (computed by `nham_vnf::reference`): lost, duplicated
//! and reordered frames, plus a digest of the output stream.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use hdrhistogram::Histogram;

/// Offset of the generator sequence number in a frame.
pub const SEQ_AT: usize = 42;
/// Offset of the timestamp (ns since the run's base instant).
pub const TS_AT: usize = 50;
/// Offset of the marker.
pub const MARK_AT: usize = 58;
/// The marker value.
pub const MARK: u16 = 0x4E48;
/// Smallest frame (64 bytes on the wire, without the 4-byte FCS).
pub const MIN_FRAME: usize = 60;

/// Frame sizes, as pktgen users name them (sizes on the wire, FCS included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSize {
    /// Every frame this size (64 to 1518).
    Fixed(usize),
    /// Simple IMIX: 7 x 64, 4 x 570, 1 x 1518.
    Imix,
}

impl std::str::FromStr for FrameSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(Self::Imix);
        }
        let n: usize = s
            .parse()
            .map_err(|_| format!("frame size {s:?}: a number or imix"))?;
        if !(64..=1518).contains(&n) {
            return Err(format!("frame size {n} outside 64..=1518"));
        }
        Ok(Self::Fixed(n))
    }
}

impl FrameSize {
    /// Wire size (with FCS) of frame number `i`.
    pub fn of(self, i: u64) -> usize {
        match self {
            Self::Fixed(n) => n,
            Self::Imix => match i % 12 {
                0..=6 => 64,
                7..=10 => 570,
                _ => 1518,
            },
        }
    }
}

/// Builds generator frame `seq` of flow `flow`, `wire` bytes on the wire.
pub fn make_frame(seq: u64, flow: u32, wire: usize) -> Vec<u8> {
    let len = wire.saturating_sub(4).max(MIN_FRAME);
    let inside = [10, 0, (flow >> 8) as u8, flow as u8];
    let outside = [192, 0, 2, 1];
    let builder = if flow % 4 == 3 {
        let answered = flow - 1;
        PacketBuilder::ethernet2([2, 0, 0, 0, 0xAA, 1], [2, 0, 0, 0, 0xBB, 1])
            .ipv4(outside, [10, 0, (answered >> 8) as u8, answered as u8], 64)
            .udp(5001, 1024u16.wrapping_add(answered as u16))
    } else {
        PacketBuilder::ethernet2([2, 0, 0, 0, 0xAA, 1], [2, 0, 0, 0, 0xBB, 1])
            .ipv4(inside, outside, 64)
            .udp(1024u16.wrapping_add(flow as u16), 5001)
    };
    let payload = vec![0u8; len - 42];
    let mut frame = Vec::with_capacity(len);
    builder
        .write(&mut frame, &payload)
        .expect("writing to a Vec");
    stamp(&mut frame, seq, 0);
    frame
}

/// Writes sequence number, timestamp and marker into a generator frame.
pub fn stamp(frame: &mut [u8], seq: u64, ts: u64) {
    frame[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_be_bytes());
    frame[TS_AT..TS_AT + 8].copy_from_slice(&ts.to_be_bytes());
    frame[MARK_AT..MARK_AT + 2].copy_from_slice(&MARK.to_be_bytes());
}

/// Reads (sequence number, timestamp) from a frame, if it is one of ours.
pub fn read_stamp(frame: &[u8]) -> Option<(u64, u64)> {
    let mark = frame.get(MARK_AT..MARK_AT + 2)?;
    if u16::from_be_bytes([mark[0], mark[1]]) != MARK {
        return None;
    }
    let s = frame.get(SEQ_AT..SEQ_AT + 8)?;
    let t = frame.get(TS_AT..TS_AT + 8)?;
    Some((
        u64::from_be_bytes(s.try_into().ok()?),
        u64::from_be_bytes(t.try_into().ok()?),
    ))
}

/// A digest of a frame with its timestamp left out: its length and the
/// CRC-32 of its bytes with the timestamp zeroed. (`crc32fast` works a
/// word at a time; a byte-wise FNV made the sink, which shares a core with
/// the generator, the bottleneck for 1518-byte frames.)
pub fn frame_digest(frame: &[u8]) -> u64 {
    let ts = TS_AT.min(frame.len())..(TS_AT + 8).min(frame.len());
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[..ts.start]);
    h.update(&[0u8; 8][..ts.len()]);
    h.update(&frame[ts.end..]);
    u64::from(h.finalize()) | (frame.len() as u64) << 32
}

/// What the generator sends.
#[derive(Debug, Clone, Copy)]
pub struct TrafficSpec {
    /// Frame sizes.
    pub size: FrameSize,
    /// Number of flows.
    pub flows: u32,
    /// Frames to send.
    pub count: u64,
    /// Offered rate, frames per second (`None`: as fast as possible).
    pub rate: Option<f64>,
}

impl TrafficSpec {
    /// The frames of this spec, in sending order (timestamps zero).
    pub fn frames(&self) -> Vec<Vec<u8>> {
        (0..self.count)
            .map(|i| {
                make_frame(
                    i,
                    (i % u64::from(self.flows.max(1))) as u32,
                    self.size.of(i),
                )
            })
            .collect()
    }
}

/// Frames of a pcap trace (Ethernet link type), for replay. Frames long
/// enough to carry a stamp (IPv4 without options, UDP, at least 60 bytes)
/// get the replay position as sequence number, so the sink can check them;
/// the others are sent as they are and counted as foreign at the sink.
pub fn frames_from_pcap(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader =
        pcap_file::pcap::PcapReader::new(file).map_err(|e| format!("{}: {e}", path.display()))?;
    if reader.header().datalink != pcap_file::DataLink::ETHERNET {
        return Err(format!("{}: not an Ethernet capture", path.display()));
    }
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.map_err(|e| format!("{}: {e}", path.display()))?;
        let mut f = packet.data.into_owned();
        let stampable = f.len() >= MIN_FRAME
            && f.get(12..14) == Some(&[0x08, 0x00])
            && f[14] == 0x45
            && f[23] == 17;
        if stampable {
            stamp(&mut f, frames.len() as u64, 0);
        }
        frames.push(f);
    }
    Ok(frames)
}

/// Result of the generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    /// Frames that left (queued and taken by the kernel; a frame still in
    /// the tx ring at the end was not sent).
    pub frames: u64,
    /// Time from first to last frame.
    pub elapsed: Duration,
}

/// Sends `frames` through `port` at `rate` (frames/s), stamping each with
/// the time since `base`, in bursts of up to `burst`.
pub fn generate(
    port: &mut nham_afxdp::Port,
    frames: &[Vec<u8>],
    rate: Option<f64>,
    base: Instant,
    burst: usize,
) -> Sent {
    generate_queues(std::slice::from_mut(port), frames, rate, base, burst)
}

/// [`generate`] over several transmit queues, one port each (queue `q` of
/// the interface is `ports[q]`): each frame on the queue [`queue_of`]
/// names, in order; a burst is a run of frames for the same queue.
pub fn generate_queues(
    ports: &mut [nham_afxdp::Port],
    frames: &[Vec<u8>],
    rate: Option<f64>,
    base: Instant,
    burst: usize,
) -> Sent {
    let start = Instant::now();
    let n = ports.len();
    let queue = |i: usize| if n > 1 { queue_of(&frames[i], n) } else { 0 };
    let mut next = 0usize;
    while next < frames.len() {
        let allowed = paced(start, rate, frames.len());
        if allowed <= next {
            std::thread::sleep(Duration::from_micros(20));
            continue;
        }
        let q = queue(next);
        let run = (next..allowed.min(next + burst.max(1)))
            .take_while(|&i| queue(i) == q)
            .count();
        let port = &mut ports[q];
        port.reclaim();
        let ts = base.elapsed().as_nanos() as u64;
        let sent = port.send_burst(run, |i, out| {
            let f = &frames[next + i];
            out[..f.len()].copy_from_slice(f);
            out[TS_AT..TS_AT + 8].copy_from_slice(&ts.to_be_bytes());
            f.len()
        });
        next += sent;
        if sent == 0 {
            // Every frame is out and the kernel may have left them in the
            // ring (see `drain`): only a wakeup frees them.
            port.kick_tx();
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    let elapsed = start.elapsed();
    let left = drain(ports);
    Sent {
        frames: next.saturating_sub(left) as u64,
        elapsed,
    }
}

/// Frames the generator may have sent `start.elapsed()` into a run of
/// `total` at `rate` (all of them without one).
fn paced(start: Instant, rate: Option<f64>, total: usize) -> usize {
    match rate {
        Some(r) => ((start.elapsed().as_secs_f64() * r) as usize + 1).min(total),
        None => total,
    }
}

/// Every frame queued leaves: in copy mode the kernel sends what the tx
/// ring holds only when woken, and a veth whose peer is full leaves frames
/// there (see `Port::kick_if_stalled`). What never left within two
/// seconds was not sent: returns how many.
fn drain(ports: &mut [nham_afxdp::Port]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left: usize = ports.iter_mut().map(|p| p.kick_tx()).sum();
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
        left = ports.iter_mut().map(|p| p.kick_tx()).sum();
    }
    left
}

/// The queue of `n` a frame goes out on: a hash of its IPv4 addresses and
/// ports (bytes 26 to 37), as a NIC's RSS picks one, so that each flow
/// keeps to one queue (and its order).
pub fn queue_of(frame: &[u8], n: usize) -> usize {
    let key = frame.get(26..38).unwrap_or(&[]);
    (crc32fast::hash(key) as usize) % n.max(1)
}

/// What the sink saw.
#[derive(Debug, Clone)]
pub struct Received {
    /// Generator sequence numbers, in arrival order.
    pub seqs: Vec<u64>,
    /// Digest of the stream (frames in order, timestamps left out).
    pub digest: u64,
    /// CRC-32 (zlib's) of every frame of ours received, in order, bytes as
    /// they came (timestamps included): what a pass-through VNF placed
    /// last served, if it served each frame once.
    pub crc: u32,
    /// One-way latency in microseconds.
    pub latency_us: Histogram<u64>,
    /// Frames without our marker.
    pub foreign: u64,
    /// Time between the first and the last frame received.
    pub span: Duration,
    /// Frames the kernel dropped because this sink was too slow.
    pub kernel_drops: u64,
    /// Arrival time of each frame in `seqs`, microseconds after `base`.
    pub arrival_us: Vec<u64>,
    /// Send time (the generator's stamp) of each frame in `seqs`,
    /// microseconds after `base`.
    pub sent_us: Vec<u64>,
}

/// Receives on `port` until `expected` frames arrived, or until `stop()`
/// says no more is coming and nothing arrived for `quiet`.
pub fn sink(
    port: &mut nham_afxdp::Port,
    expected: usize,
    quiet: Duration,
    base: Instant,
    mut stop: impl FnMut() -> bool,
) -> Received {
    let mut r = Received {
        seqs: Vec::with_capacity(expected),
        digest: 0xcbf2_9ce4_8422_2325,
        crc: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        foreign: 0,
        span: Duration::ZERO,
        kernel_drops: 0,
        arrival_us: Vec::with_capacity(expected),
        sent_us: Vec::with_capacity(expected),
    };
    let mut last = Instant::now();
    let mut first: Option<Instant> = None;
    let mut crc = crc32fast::Hasher::new();
    loop {
        let n = port.recv_burst(64, |f| match read_stamp(f) {
            Some((seq, ts)) => {
                r.seqs.push(seq);
                crc.update(f);
                r.digest = (r.digest ^ frame_digest(f)).wrapping_mul(0x0100_0000_01b3);
                let now = base.elapsed().as_nanos() as u64;
                r.arrival_us.push(now / 1000);
                r.sent_us.push(ts / 1000);
                let _ = r.latency_us.record((now.saturating_sub(ts) / 1000).max(1));
            }
            None => r.foreign += 1,
        });
        if n > 0 {
            last = Instant::now();
            let f = *first.get_or_insert(last);
            r.span = last - f;
        } else {
            // Done when everything expected arrived, or when the caller says
            // no more is coming and nothing arrived for `quiet`.
            if r.seqs.len() >= expected && expected > 0 || last.elapsed() > quiet && stop() {
                r.kernel_drops = port.kernel_rx_drops();
                r.crc = crc.finalize();
                return r;
            }
            let _ = port.wait_rx(1);
        }
    }
}

/// Counts against the expected output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Expected frames that never arrived.
    pub lost: u64,
    /// Frames that arrived more often than expected.
    pub duplicated: u64,
    /// Frames that arrived out of the expected order.
    pub reordered: u64,
    /// Whether the stream digest equals the reference digest.
    pub digest_equal: bool,
}

/// Compares sink output with the expected one.
pub struct Checker;

impl Checker {
    /// `expected`: the reference output frames in order.
    pub fn check(expected: &[Vec<u8>], got: &Received) -> Verdict {
        let mut want_digest: u64 = 0xcbf2_9ce4_8422_2325;
        // Position(s) of each sequence number in the expected stream.
        let mut positions: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, f) in expected.iter().enumerate() {
            want_digest = (want_digest ^ frame_digest(f)).wrapping_mul(0x0100_0000_01b3);
            if let Some((seq, _)) = read_stamp(f) {
                positions.entry(seq).or_default().push(i);
            }
        }
        let mut used: HashMap<u64, usize> = HashMap::new();
        let (mut duplicated, mut reordered, mut matched) = (0u64, 0u64, 0u64);
        let mut high: Option<usize> = None;
        for seq in &got.seqs {
            let k = used.entry(*seq).or_default();
            match positions.get(seq).and_then(|p| p.get(*k)) {
                Some(&pos) => {
                    *k += 1;
                    matched += 1;
                    if high.is_some_and(|h| pos < h) {
                        reordered += 1;
                    }
                    high = Some(high.map_or(pos, |h| h.max(pos)));
                }
                None => duplicated += 1,
            }
        }
        Verdict {
            lost: expected.len() as u64 - matched,
            duplicated,
            reordered,
            digest_equal: want_digest == got.digest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_stamps_and_sizes() {
        let spec = TrafficSpec {
            size: FrameSize::Imix,
            flows: 8,
            count: 24,
            rate: None,
        };
        let frames = spec.frames();
        assert_eq!(frames[0].len(), 60);
        assert_eq!(frames[7].len(), 566);
        assert_eq!(frames[11].len(), 1514);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(read_stamp(f), Some((i as u64, 0)));
        }
        assert_eq!("64".parse::<FrameSize>(), Ok(FrameSize::Fixed(64)));
        assert!("63".parse::<FrameSize>().is_err());
    }

    #[test]
    fn pcap_replay_reads_and_stamps() {
        let path = std::env::temp_dir().join(format!("nham-replay-{}.pcap", std::process::id()));
        {
            let header = pcap_file::pcap::PcapHeader {
                datalink: pcap_file::DataLink::ETHERNET,
                ..Default::default()
            };
            let mut w = pcap_file::pcap::PcapWriter::with_header(
                std::fs::File::create(&path).unwrap(),
                header,
            )
            .unwrap();
            for i in 0..3u64 {
                let f = make_frame(100 + i, 1, 64);
                w.write_packet(&pcap_file::pcap::PcapPacket::new(
                    Duration::ZERO,
                    f.len() as u32,
                    &f,
                ))
                .unwrap();
            }
            let arp = [0u8; 42];
            w.write_packet(&pcap_file::pcap::PcapPacket::new(Duration::ZERO, 42, &arp))
                .unwrap();
        }
        let frames = frames_from_pcap(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(frames.len(), 4);
        assert_eq!(
            read_stamp(&frames[2]),
            Some((2, 0)),
            "replay position as sequence number"
        );
        assert_eq!(read_stamp(&frames[3]), None);
    }

    #[test]
    fn checker_counts_loss_duplicates_and_reordering() {
        let expected: Vec<Vec<u8>> = (0..5).map(|i| make_frame(i, 0, 64)).collect();
        let mut got = Received {
            seqs: vec![0, 2, 1, 2, 4],
            digest: 0,
            crc: 0,
            latency_us: Histogram::new(3).unwrap(),
            foreign: 0,
            span: Duration::ZERO,
            kernel_drops: 0,
            arrival_us: Vec::new(),
            sent_us: Vec::new(),
        };
        let v = Checker::check(&expected, &got);
        assert_eq!(
            (v.lost, v.duplicated, v.reordered, v.digest_equal),
            (1, 1, 1, false)
        );
        got.seqs = vec![0, 1, 2, 3, 4];
        let mut d: u64 = 0xcbf2_9ce4_8422_2325;
        for f in &expected {
            d = (d ^ frame_digest(f)).wrapping_mul(0x0100_0000_01b3);
        }
        got.digest = d;
        assert_eq!(
            Checker::check(&expected, &got),
            Verdict {
                digest_equal: true,
                ..Verdict::default()
            }
        );
    }
}
