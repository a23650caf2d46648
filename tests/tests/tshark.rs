//! Frames NHAM emits are valid NSH to an independent dissector: they are
//! written to a pcap and read back with `tshark`, which must decode the base
//! header, SPI, SI, TTL, MD type 2 and NHAM's TLV (class 0xFFF6, type 1, 12
//! bytes: the sequence number and epoch) and flag nothing as malformed.
//!
//! tshark is installed by `scripts/setup.sh`; without it this test fails
//! rather than skipping.

use std::fs::File;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use etherparse::PacketBuilder;
use nham_dataplane::classifier::encapsulate;
use nham_dataplane::nsh::{NhamMetadata, NshPacket};
use nham_tests::unique_temp_path;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;

fn inner_udp(i: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2])
        .ipv4([192, 0, 2, 1], [198, 51, 100, 7], 64)
        .udp(4000 + i, 9999);
    let payload = [i as u8; 26];
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut out, &payload)
        .expect("building a UDP frame");
    out
}

struct Expected {
    spi: u32,
    si: u8,
    seq: u64,
    epoch: u32,
}

#[test]
fn tshark_dissects_nham_frames_as_nsh() -> Result<()> {
    let path = unique_temp_path("nsh.pcap");
    let mut expected = Vec::new();
    {
        let file = File::create(&path).context("creating the pcap")?;
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            ..PcapHeader::default()
        };
        let mut writer = PcapWriter::with_header(file, header)?;
        for i in 0..6u16 {
            let e = Expected {
                spi: [1, 42, 0xAB_CDEF, 0xFF_FFFF, 7, 1000][usize::from(i)],
                si: 255 - i as u8,
                seq: [0, 1, 1 << 40, u64::MAX, 12345, 99][usize::from(i)],
                epoch: u32::from(i) * 3,
            };
            let mut frame = vec![0u8; 256];
            let n = encapsulate(
                &mut frame,
                [2, 0, 0, 0, 0, 2],
                [2, 0, 0, 0, 0, 1],
                e.spi,
                NhamMetadata {
                    seq: e.seq,
                    epoch: e.epoch,
                },
                &inner_udp(i),
            )?;
            frame.truncate(n);
            // The SFF edits SI in place, as a VNF's SI decrement would.
            let mut nsh = NshPacket::new_checked(&mut frame[14..])?;
            nsh.set_si(e.si);
            writer.write_packet(&PcapPacket::new(
                Duration::from_millis(u64::from(i)),
                n as u32,
                &frame,
            ))?;
            expected.push(e);
        }
    }

    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&path)
        .args([
            "-T",
            "fields",
            "-E",
            "separator=;",
            "-e",
            "nsh.version",
            "-e",
            "nsh.ttl",
            "-e",
            "nsh.length",
            "-e",
            "nsh.mdtype",
            "-e",
            "nsh.nextproto",
            "-e",
            "nsh.spi",
            "-e",
            "nsh.si",
            "-e",
            "nsh.metadataclass",
            "-e",
            "nsh.metadatatype",
            "-e",
            "nsh.metadatalen",
            "-e",
            "nsh.metadata",
            "-e",
            "udp.dstport",
            "-e",
            "_ws.malformed",
            "-e",
            "_ws.expert",
        ])
        .output()
        .context("running tshark (installed by scripts/setup.sh)")?;
    if std::env::var_os("NHAM_KEEP_PCAP").is_none() {
        let _ = std::fs::remove_file(&path);
    }
    ensure!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    ensure!(lines.len() == expected.len(), "tshark printed {text}");
    for (line, e) in lines.iter().zip(&expected) {
        let f: Vec<&str> = line.split(';').collect();
        ensure!(f.len() == 14, "unexpected tshark line {line}");
        // tshark prints some fields in hex ("0x3f"), others in decimal.
        let num = |v: &str| match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => v.parse(),
        };
        ensure!(num(f[0])? == 0, "version {line}");
        ensure!(num(f[1])? == 63, "ttl {line}");
        ensure!(num(f[2])? == 6, "length in words {line}");
        ensure!(num(f[3])? == 2, "md type {line}");
        ensure!(num(f[4])? == 3, "next protocol Ethernet {line}");
        ensure!(num(f[5])? == u64::from(e.spi), "spi {line}");
        ensure!(num(f[6])? == u64::from(e.si), "si {line}");
        ensure!(num(f[7])? == 0xFFF6, "md class {line}");
        ensure!(num(f[8])? == 1, "tlv type {line}");
        ensure!(num(f[9])? == 12, "tlv length {line}");
        let metadata: String = f[10].chars().filter(|c| *c != ':').collect();
        ensure!(
            metadata == format!("{:016x}{:08x}", e.seq, e.epoch),
            "sequence number and epoch {line}"
        );
        ensure!(f[11] == "9999", "inner UDP dissected {line}");
        ensure!(
            f[12].is_empty() && f[13].is_empty(),
            "tshark flags a problem: {line}"
        );
    }
    Ok(())
}
