//! The heartbeat between `nhamd`s: one UDP datagram from each host to every
//! member, every interval, on the underlay. A checked view over received
//! bytes ([`HeartbeatPacket`]) and a value ([`Heartbeat`]) that parses from
//! it and emits to bytes, after smoltcp's `wire`: parsing never panics
//! (fuzzed: `control/tests/fuzz_heartbeat.rs`).
//!
//! ```text
//!  0      4   5   6   7          7+n          15+n        23+n
//!  +------+---+---+---+----------+------------+-----------+
//!  | NHHB | v | f | n | host (n) | incarnation|    seq    |
//!  +------+---+---+---+----------+------------+-----------+
//!           2   flags  1..=63 bytes, UTF-8  u64 BE     u64 BE
//! ```
//!
//! Flags: bit 0, [`LEAVING`]: the sender stops on purpose (its `nhamd`
//! is shutting down); it is not to be judged down for the silence that
//! follows. Other bits are ignored.

use thiserror::Error;

/// The first four bytes of every heartbeat.
pub const MAGIC: [u8; 4] = *b"NHHB";
/// The version this build speaks.
pub const VERSION: u8 = 2;
/// Flag: the sender is leaving (see the module's documentation).
pub const LEAVING: u8 = 1;
/// The longest host name a heartbeat carries.
pub const MAX_NAME: usize = 63;
/// Magic, version, flags and name length.
const HEADER: usize = 7;

/// Why bytes are not a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeartbeatError {
    /// Shorter than its header says.
    #[error("heartbeat truncated: {0} bytes")]
    Truncated(usize),
    /// Not a heartbeat at all.
    #[error("not a heartbeat (magic {0:02x?})")]
    Magic([u8; 4]),
    /// Of another version.
    #[error("heartbeat version {0}, this nhamd speaks {VERSION}")]
    Version(u8),
    /// A host name empty, too long or not UTF-8.
    #[error("heartbeat host name invalid: {0}")]
    Name(String),
}

/// A checked view of a heartbeat's bytes.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatPacket<'a> {
    bytes: &'a [u8],
    name_len: usize,
}

impl<'a> HeartbeatPacket<'a> {
    /// Checks that `bytes` hold a whole heartbeat of this version.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, HeartbeatError> {
        let header = bytes
            .get(..HEADER)
            .ok_or(HeartbeatError::Truncated(bytes.len()))?;
        let magic = [header[0], header[1], header[2], header[3]];
        if magic != MAGIC {
            return Err(HeartbeatError::Magic(magic));
        }
        if header[4] != VERSION {
            return Err(HeartbeatError::Version(header[4]));
        }
        let name_len = usize::from(header[6]);
        if name_len == 0 || name_len > MAX_NAME {
            return Err(HeartbeatError::Name(format!("{name_len} bytes long")));
        }
        if bytes.len() < HEADER + name_len + 16 {
            return Err(HeartbeatError::Truncated(bytes.len()));
        }
        Ok(Self { bytes, name_len })
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.bytes[5]
    }

    /// The sender's host name, raw.
    pub fn host(&self) -> &'a [u8] {
        &self.bytes[HEADER..HEADER + self.name_len]
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[at..at + 8]);
        u64::from_be_bytes(b)
    }

    /// The sender's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.u64_at(HEADER + self.name_len)
    }

    /// The heartbeat's number.
    pub fn seq(&self) -> u64 {
        self.u64_at(HEADER + 8 + self.name_len)
    }
}

/// A heartbeat: who sends it, which incarnation of its `nhamd` (a new
/// one each start), and its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's host name.
    pub host: String,
    /// The sender's incarnation.
    pub incarnation: u64,
    /// Its number (from 0, per incarnation).
    pub seq: u64,
    /// The sender is leaving on purpose.
    pub leaving: bool,
}

impl Heartbeat {
    /// The value of a checked packet (its name must be UTF-8).
    pub fn parse(packet: &HeartbeatPacket<'_>) -> Result<Self, HeartbeatError> {
        let host = std::str::from_utf8(packet.host())
            .map_err(|e| HeartbeatError::Name(e.to_string()))?
            .to_string();
        Ok(Self {
            host,
            incarnation: packet.incarnation(),
            seq: packet.seq(),
            leaving: packet.flags() & LEAVING != 0,
        })
    }

    /// Parses received bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeartbeatError> {
        Self::parse(&HeartbeatPacket::new_checked(bytes)?)
    }

    /// The bytes to send; refused for a name that does not fit.
    pub fn emit(&self) -> Result<Vec<u8>, HeartbeatError> {
        let name = self.host.as_bytes();
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(HeartbeatError::Name(format!(
                "{:?} must be 1 to {MAX_NAME} bytes",
                self.host
            )));
        }
        let mut out = Vec::with_capacity(HEADER + 16 + name.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(if self.leaving { LEAVING } else { 0 });
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_round_trips_and_bad_bytes_are_named() {
        let hb = Heartbeat {
            host: "host-b".into(),
            incarnation: 7,
            seq: 1 << 40,
            leaving: true,
        };
        let bytes = hb.emit().unwrap();
        assert_eq!(Heartbeat::from_bytes(&bytes).unwrap(), hb);
        assert_eq!(
            Heartbeat::from_bytes(&bytes[..bytes.len() - 1]),
            Err(HeartbeatError::Truncated(bytes.len() - 1))
        );
        let mut other = bytes.clone();
        other[4] = 1;
        assert_eq!(
            Heartbeat::from_bytes(&other),
            Err(HeartbeatError::Version(1))
        );
        assert!(matches!(
            Heartbeat::from_bytes(b"GET / HTTP/1.0"),
            Err(HeartbeatError::Magic(_))
        ));
        let long = Heartbeat {
            host: "x".repeat(64),
            ..hb
        };
        assert!(long.emit().is_err());
    }
}
