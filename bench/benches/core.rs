//! Microbenchmark of the data-plane core alone, on one core, no I/O:
//! classification of a 64-byte UDP frame, NSH encapsulation with the
//! sequence number, an 8-hop Hold/Release chain (per hop: delivery with the
//! epoch written into the header, validation and parsing of the VNF's
//! output, duplicate check, TTL decrement, advance; a checkpoint of every hop each
//! 256 packets releases what is held), and decapsulation at egress.
//!
//! The baseline in the same run is the same pipeline with no chain
//! (classify, encapsulate, decapsulate), so the ratio shows what Hold/Release
//! costs. Packets move in bursts of 32, as the SFF moves them.
//!
//! Run: `cargo bench -p nham-bench --bench core`; criterion prints elements/s
//! (packets/s) for each.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::PacketBuilder;
use nham_dataplane::classifier::{proto, Classifier, Rule};
use nham_dataplane::hold::{Chain, HopConfig, OutputDisposition};
use nham_dataplane::nsh::{self, NextProtocol, NhamMetadata, NshPacket, TtlVerdict};

const BURST: usize = 32;
const HOPS: usize = 8;
const ETH: usize = 14;
/// Headroom in front of each inner frame for the outer Ethernet and NSH.
const HEADROOM: usize = ETH + nsh::NHAM_HEADER_LEN;
const CHECKPOINT_EVERY: u64 = 256;

/// Frames in one contiguous arena, as in an AF_XDP UMEM: frame `i` starts
/// at `i * FRAME`.
struct Frames {
    umem: Vec<u8>,
    inner_len: usize,
}

const FRAME: usize = 128;

impl Frames {
    fn frame(&self, i: usize) -> &[u8] {
        &self.umem[i * FRAME..i * FRAME + HEADROOM + self.inner_len]
    }

    fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        let len = HEADROOM + self.inner_len;
        &mut self.umem[i * FRAME..i * FRAME + len]
    }
}

fn frames() -> Frames {
    let bufs: Vec<Vec<u8>> = (0..BURST as u16)
        .map(|i| {
            let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([10, 0, 0, (i % 16) as u8], [10, 1, 0, 1], 64)
                .udp(1000 + i, 5001);
            // 64-byte frame on the wire (without FCS: 60 bytes).
            let payload = [0u8; 18];
            let mut inner = Vec::with_capacity(builder.size(payload.len()));
            builder.write(&mut inner, &payload).unwrap();
            let mut buf = vec![0u8; HEADROOM];
            buf.extend_from_slice(&inner);
            buf
        })
        .collect();
    let inner_len = bufs[0].len() - HEADROOM;
    let mut umem = vec![0u8; BURST * FRAME];
    for (i, b) in bufs.iter().enumerate() {
        umem[i * FRAME..i * FRAME + b.len()].copy_from_slice(b);
    }
    Frames { umem, inner_len }
}

fn classifier() -> Classifier {
    Classifier::new(vec![
        Rule {
            proto: Some(proto::TCP),
            ..Rule::any(7)
        },
        Rule {
            src: Some("10.0.0.0/16".parse().unwrap()),
            proto: Some(proto::UDP),
            dst_ports: Some(5000..=5100),
            ..Rule::any(42)
        },
    ])
    .unwrap()
}

/// Classifies frame `i` and writes outer Ethernet + NSH into its headroom.
fn classify_and_encap(c: &mut Classifier, f: &mut Frames, i: usize, seq: u64) -> u32 {
    let buf = f.frame_mut(i);
    let spi = c.classify(&buf[HEADROOM..]).unwrap().unwrap();
    buf[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    buf[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 8]);
    buf[12..14].copy_from_slice(&nsh::ETHERTYPE_NSH.to_be_bytes());
    nsh::emit_nham_header(
        &mut buf[ETH..],
        spi,
        nsh::DEFAULT_INITIAL_SI,
        nsh::DEFAULT_TTL,
        NextProtocol::Ethernet,
        NhamMetadata { seq, epoch: 0 },
    )
    .unwrap();
    spi
}

fn decap(f: &Frames, i: usize) -> usize {
    let (_, inner) = nham_dataplane::classifier::decapsulate(f.frame(i)).unwrap();
    inner.len()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(BURST as u64));

    // Baseline: classify + encapsulate + decapsulate, no chain.
    {
        let mut f = frames();
        let mut cl = classifier();
        let mut seq = 0u64;
        group.bench_function("no_chain", |b| {
            b.iter(|| {
                let mut total = 0;
                for i in 0..BURST {
                    classify_and_encap(&mut cl, &mut f, i, seq);
                    seq += 1;
                    total += decap(&f, i);
                }
                assert_eq!(total, BURST * f.inner_len);
                black_box(total)
            })
        });
    }

    // Classify + encapsulate + 8-hop Hold/Release chain + decapsulate.
    {
        let mut f = frames();
        let mut cl = classifier();
        let mut chain: Chain<u32> = Chain::new(
            42,
            HOPS,
            HopConfig {
                rx_capacity: 1024,
                tx_capacity: 64,
                ..HopConfig::default()
            },
        )
        .unwrap();
        let now = Instant::now();
        let mut handles = [0u32; BURST];
        group.bench_function("chain_8_hops", |b| {
            b.iter(|| {
                for (i, h) in handles.iter_mut().enumerate() {
                    let seq = chain.next_seq();
                    classify_and_encap(&mut cl, &mut f, i, seq);
                    *h = i as u32;
                    chain.try_ingress(|_| i as u32).expect("room in buffer_rx");
                }
                for hop in 0..HOPS {
                    // SFF: deliver a burst, stamping this hop's epoch.
                    let mut sent = [(0u64, 0u32, 0u32); BURST];
                    let n = chain.hop_mut(hop).poll_delivery_burst(BURST, |d| {
                        sent[d.index as usize % BURST] = (d.seq, d.epoch, *d.packet);
                    });
                    for &(seq, epoch, handle) in &sent[..n] {
                        let buf = &mut f.frame_mut(handle as usize)[ETH..];
                        let mut p = NshPacket::new_unchecked(&mut *buf);
                        p.set_nham_metadata(NhamMetadata { seq, epoch });
                    }
                    // (The VNF would process the frames here and send them
                    // back with SI decremented; that is the VNF's work, not
                    // the SFF's, and is left out.)
                    // SFF: parse the VNF's outputs, check, account.
                    let hop_state = chain.hop_mut(hop);
                    for &(_, _, handle) in &sent[..n] {
                        let buf = &mut f.frame_mut(handle as usize)[ETH..];
                        let mut p = NshPacket::new_checked(&mut *buf).expect("valid NSH");
                        let meta = p.nham_metadata().expect("NHAM metadata");
                        match nsh::decrement_ttl(p.ttl()) {
                            TtlVerdict::Forward(t) => p.set_ttl(t),
                            TtlVerdict::Expired => unreachable!("TTL 63 over 8 hops"),
                        }
                        let r = hop_state.handle_output(meta.epoch, meta.seq, handle);
                        debug_assert_eq!(r, OutputDisposition::Accepted);
                    }
                    chain.poll_advance_burst(hop, BURST);
                    if chain.hop(hop).stats().delivered % CHECKPOINT_EVERY == 0 {
                        let h = chain.hop_mut(hop);
                        let id = h.begin_checkpoint(now).unwrap();
                        h.handle_quiesced(id).unwrap();
                        h.handle_checkpoint_complete(id, now).unwrap();
                    }
                }
                let mut total = 0;
                while let Some((_, handle)) = chain.poll_egress() {
                    total += decap(&f, handle as usize);
                }
                assert_eq!(total, BURST * f.inner_len);
                black_box(&handles);
                black_box(total)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
