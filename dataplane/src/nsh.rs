//! The Network Service Header (RFC 8300) on the wire.
//!
//! Two layers, in the manner of smoltcp's `wire` module:
//!
//! - [`NshPacket`] is a *checked view* over a byte buffer. [`NshPacket::new_checked`]
//!   validates everything the accessors rely on (version, length, MD type,
//!   metadata TLV bounds), so after it succeeds no accessor can panic. Setters
//!   are available when the buffer is mutable; the SFF's hot path edits SI, TTL
//!   and the NHAM metadata in place through them.
//! - [`NshRepr`] is the *value type*: a parsed, owned header that can be
//!   emitted back into a buffer. `parse(emit(x)) == x` for every valid `x`.
//!
//! # Where NHAM's sequence number lives
//!
//! NHAM stamps every classified packet with a per-chain 64-bit sequence number
//! and a per-hop epoch (see [`NhamMetadata`]). They travel as one MD type 2
//! Variable-Length Context Header in the Experimental MD class range that RFC
//! 8300 section 11.2.4 sets aside (0xFFF6-0xFFFE):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Metadata Class = 0xFFF6     |  Type = 0x01  |U| Length = 12 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Sequence number (high 32 bits)                |
//! |                 Sequence number (low 32 bits)                 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Epoch (32 bits)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The whole NHAM header is therefore 24 bytes (Length = 6 words). An
//! NSH-aware VNF preserves context headers it does not understand, so the
//! metadata comes back unchanged on its output. The epoch names the VNF
//! incarnation the packet was delivered to: after a restore the SFF bumps it,
//! and outputs still in flight from the failed incarnation are recognised as
//! stale (see [`crate::hold`]).
//!
//! Invariants: no function here panics on any input; every length is checked
//! before it is used as an index.

use thiserror::Error;

/// EtherType of NSH over Ethernet (RFC 8300 section 11.3).
pub const ETHERTYPE_NSH: u16 = 0x894F;
/// Length of the base header plus the service path header.
pub const BASE_LEN: usize = 8;
/// Length of an MD type 1 header (base + SPH + 16 bytes of fixed context).
pub const MD1_LEN: usize = 24;
/// Length of the NHAM header: base + SPH + one 12-byte NHAM TLV.
pub const NHAM_HEADER_LEN: usize = BASE_LEN + TLV_HEADER_LEN + NHAM_TLV_VALUE_LEN;
/// Length of a Variable-Length Context Header's own header.
pub const TLV_HEADER_LEN: usize = 4;
/// The MD class NHAM uses (first value of the Experimental range).
pub const NHAM_MD_CLASS: u16 = 0xFFF6;
/// The TLV type NHAM uses within [`NHAM_MD_CLASS`] for its sequence metadata.
pub const NHAM_TLV_TYPE: u8 = 0x01;
const NHAM_TLV_VALUE_LEN: usize = 12;
/// "If no initial value is explicitly provided, the default initial TTL value
/// of 63 MUST be used." (RFC 8300 section 2.2)
pub const DEFAULT_TTL: u8 = 63;
/// "The initial classifier for a given SFP SHOULD set the SI to 255"
/// (RFC 8300 section 2.3)
pub const DEFAULT_INITIAL_SI: u8 = 255;
const MAX_TTL: u8 = 0x3F;

/// What is wrong with a byte buffer that claims to be NSH.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than the header needs.
    #[error("truncated NSH header: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the header needs.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A version other than 0.
    #[error("unsupported NSH version {0} (only version 0 is defined)")]
    Version(u8),
    /// MD type 0 (reserved), 0xF (experimental) or unassigned.
    #[error("unsupported NSH MD type {0:#x}")]
    MdType(u8),
    /// The Length field contradicts the MD type.
    #[error("NSH length {words} words is invalid for MD type {md_type:#x}")]
    Length {
        /// The Length field, in 4-byte words.
        words: u8,
        /// The MD type.
        md_type: u8,
    },
    /// A Variable-Length Context Header runs past the end of the NSH header.
    #[error("NSH context header at offset {offset} overruns the header")]
    TlvOverrun {
        /// Byte offset of the offending TLV within the NSH header.
        offset: usize,
    },
    /// A value does not fit its field (SPI > 24 bits, TTL > 63, metadata too long).
    #[error("NSH field {field} out of range")]
    FieldRange {
        /// Which field.
        field: &'static str,
    },
    /// An Ethernet frame whose EtherType is not NSH (0x894F).
    #[error("EtherType {0:#06x} is not NSH")]
    NotNsh(u16),
    /// The buffer to emit into is too small.
    #[error("buffer too small to emit NSH: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes the header needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Result type of this module.
pub type Result<T> = core::result::Result<T, Error>;

/// The Next Protocol field (RFC 8300 section 11.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextProtocol {
    /// 0x1
    Ipv4,
    /// 0x2
    Ipv6,
    /// 0x3
    Ethernet,
    /// 0x4
    Nsh,
    /// 0x5
    Mpls,
    /// Any other value, kept as is.
    Other(u8),
}

impl From<u8> for NextProtocol {
    fn from(v: u8) -> Self {
        match v {
            0x1 => Self::Ipv4,
            0x2 => Self::Ipv6,
            0x3 => Self::Ethernet,
            0x4 => Self::Nsh,
            0x5 => Self::Mpls,
            other => Self::Other(other),
        }
    }
}

impl From<NextProtocol> for u8 {
    fn from(v: NextProtocol) -> u8 {
        match v {
            NextProtocol::Ipv4 => 0x1,
            NextProtocol::Ipv6 => 0x2,
            NextProtocol::Ethernet => 0x3,
            NextProtocol::Nsh => 0x4,
            NextProtocol::Mpls => 0x5,
            NextProtocol::Other(v) => v,
        }
    }
}

/// MD type 1: fixed-length context.
pub const MD_TYPE_1: u8 = 0x1;
/// MD type 2: variable-length context headers.
pub const MD_TYPE_2: u8 = 0x2;

mod field {
    pub(super) const VER_O_U_TTL_LEN: core::ops::Range<usize> = 0..2;
    pub(super) const MD_TYPE: usize = 2;
    pub(super) const NEXT_PROTO: usize = 3;
    pub(super) const SPI: core::ops::Range<usize> = 4..7;
    pub(super) const SI: usize = 7;
}

/// A checked view of an NSH header at the start of a buffer.
#[derive(Debug, Clone)]
pub struct NshPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> NshPacket<T> {
    /// Wraps a buffer without checking it. Accessors may panic on a buffer
    /// that [`check`](Self::check) would refuse; use [`new_checked`](Self::new_checked)
    /// for untrusted bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer and validates it.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    /// Validates the header so that every accessor is safe to call.
    pub fn check(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < BASE_LEN {
            return Err(Error::Truncated {
                need: BASE_LEN,
                have: data.len(),
            });
        }
        // "It MUST be set to 0x0 by the sender, in this first revision of NSH."
        // (RFC 8300 section 2.2) A receiver cannot interpret any other version.
        let version = self.version();
        if version != 0 {
            return Err(Error::Version(version));
        }
        let words = self.length_words();
        let md_type = self.md_type();
        match md_type {
            // "The length MUST be 0x6 for MD Type equal to 0x1"
            MD_TYPE_1 if words != 6 => return Err(Error::Length { words, md_type }),
            // "and MUST be 0x2 or greater for MD Type equal to 0x2."
            MD_TYPE_2 if words < 2 => return Err(Error::Length { words, md_type }),
            MD_TYPE_1 | MD_TYPE_2 => {}
            // "0x0 - This is a reserved value. Implementations SHOULD silently
            // discard packets with MD Type 0x0." and "0xF - ... Implementations
            // not explicitly configured to be part of an experiment SHOULD
            // silently discard packets with MD Type 0xF." (section 2.2)
            other => return Err(Error::MdType(other)),
        }
        let header_len = self.header_len();
        if data.len() < header_len {
            return Err(Error::Truncated {
                need: header_len,
                have: data.len(),
            });
        }
        if md_type == MD_TYPE_2
            && !(header_len == NHAM_HEADER_LEN && self.leading_nham_tlv().is_some())
        {
            // (The header NHAM emits, one NHAM TLV filling it exactly, is
            // known to be well formed and skips the walk.)
            let mut offset = BASE_LEN;
            while offset < header_len {
                if header_len - offset < TLV_HEADER_LEN {
                    return Err(Error::TlvOverrun { offset });
                }
                // "The receiver MUST round up the length field to the nearest
                // 4-byte word boundary, to locate and process the next field in
                // the packet." (section 2.5.1)
                let value_len = usize::from(data[offset + 3] & 0x7F);
                let padded = value_len.div_ceil(4) * 4;
                let next = offset + TLV_HEADER_LEN + padded;
                if next > header_len {
                    return Err(Error::TlvOverrun { offset });
                }
                offset = next;
            }
        }
        Ok(())
    }

    /// Consumes the view and returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn first_word(&self) -> u16 {
        let d = &self.buffer.as_ref()[field::VER_O_U_TTL_LEN];
        u16::from_be_bytes([d[0], d[1]])
    }

    /// The Ver field (2 bits).
    pub fn version(&self) -> u8 {
        (self.first_word() >> 14) as u8
    }

    /// The O bit: an OAM packet.
    pub fn oam(&self) -> bool {
        self.first_word() & 0x2000 != 0
    }

    /// The TTL field (6 bits).
    pub fn ttl(&self) -> u8 {
        ((self.first_word() >> 6) & 0x3F) as u8
    }

    /// The Length field: "The total length, in 4-byte words, of NSH including
    /// the Base Header, the Service Path Header, the Fixed Length Context
    /// Header or Variable Length Context Header(s)."
    pub fn length_words(&self) -> u8 {
        (self.first_word() & 0x3F) as u8
    }

    /// The NSH header length in bytes.
    pub fn header_len(&self) -> usize {
        usize::from(self.length_words()) * 4
    }

    /// The MD Type field (4 bits).
    pub fn md_type(&self) -> u8 {
        self.buffer.as_ref()[field::MD_TYPE] & 0x0F
    }

    /// The Next Protocol field.
    pub fn next_protocol(&self) -> NextProtocol {
        self.buffer.as_ref()[field::NEXT_PROTO].into()
    }

    /// The Service Path Identifier (24 bits).
    pub fn spi(&self) -> u32 {
        let d = &self.buffer.as_ref()[field::SPI];
        u32::from_be_bytes([0, d[0], d[1], d[2]])
    }

    /// The Service Index.
    pub fn si(&self) -> u8 {
        self.buffer.as_ref()[field::SI]
    }

    /// The context headers: 16 bytes for MD type 1, the TLVs for MD type 2.
    pub fn context(&self) -> &[u8] {
        &self.buffer.as_ref()[BASE_LEN..self.header_len()]
    }

    /// The encapsulated packet after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Iterates the Variable-Length Context Headers (empty for MD type 1).
    pub fn tlvs(&self) -> TlvIter<'_> {
        let context = if self.md_type() == MD_TYPE_2 {
            self.context()
        } else {
            &[]
        };
        TlvIter { rest: context }
    }

    /// The NHAM metadata, if this header carries it (fast path: NHAM puts its
    /// TLV first, so it is found without iterating).
    pub fn nham_metadata(&self) -> Option<NhamMetadata> {
        if let Some(range) = self.leading_nham_tlv() {
            return NhamMetadata::from_bytes(&self.buffer.as_ref()[range]);
        }
        self.tlvs().find_map(|tlv| NhamMetadata::from_tlv(&tlv))
    }

    /// The NHAM TLV's value range when it is the first context header, as
    /// NHAM emits it.
    fn leading_nham_tlv(&self) -> Option<core::ops::Range<usize>> {
        const LEADING: [u8; 4] = [
            (NHAM_MD_CLASS >> 8) as u8,
            NHAM_MD_CLASS as u8,
            NHAM_TLV_TYPE,
            NHAM_TLV_VALUE_LEN as u8,
        ];
        let d = self.buffer.as_ref();
        let range = BASE_LEN + TLV_HEADER_LEN..NHAM_HEADER_LEN;
        (self.md_type() == MD_TYPE_2
            && self.header_len() >= NHAM_HEADER_LEN
            && d.get(BASE_LEN..BASE_LEN + TLV_HEADER_LEN) == Some(&LEADING[..]))
        .then_some(range)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NshPacket<T> {
    fn set_first_word(&mut self, value: u16) {
        self.buffer.as_mut()[field::VER_O_U_TTL_LEN].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the TTL (values above 63 are masked to 6 bits).
    pub fn set_ttl(&mut self, ttl: u8) {
        let w = self.first_word() & !0x0FC0;
        self.set_first_word(w | (u16::from(ttl & MAX_TTL) << 6));
    }

    /// Sets the Service Index.
    pub fn set_si(&mut self, si: u8) {
        self.buffer.as_mut()[field::SI] = si;
    }

    /// Sets the SPI; values above 24 bits are refused.
    pub fn set_spi(&mut self, spi: u32) -> Result<()> {
        if spi > 0x00FF_FFFF {
            return Err(Error::FieldRange { field: "spi" });
        }
        let b = spi.to_be_bytes();
        self.buffer.as_mut()[field::SPI].copy_from_slice(&b[1..]);
        Ok(())
    }

    /// Rewrites the NHAM metadata in place. Returns false if the header
    /// carries no NHAM TLV.
    pub fn set_nham_metadata(&mut self, meta: NhamMetadata) -> bool {
        if let Some(range) = self.leading_nham_tlv() {
            meta.write_value(&mut self.buffer.as_mut()[range]);
            return true;
        }
        if self.md_type() != MD_TYPE_2 {
            return false;
        }
        let header_len = self.header_len();
        let mut offset = BASE_LEN;
        while offset + TLV_HEADER_LEN <= header_len {
            let d = self.buffer.as_ref();
            let class = u16::from_be_bytes([d[offset], d[offset + 1]]);
            let value_len = usize::from(d[offset + 3] & 0x7F);
            let value = offset + TLV_HEADER_LEN;
            if class == NHAM_MD_CLASS
                && d[offset + 2] == NHAM_TLV_TYPE
                && value_len == NHAM_TLV_VALUE_LEN
            {
                meta.write_value(&mut self.buffer.as_mut()[value..value + NHAM_TLV_VALUE_LEN]);
                return true;
            }
            offset = value + value_len.div_ceil(4) * 4;
        }
        false
    }

    /// The encapsulated packet, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

/// One Variable-Length Context Header, borrowed from a checked packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlvRef<'a> {
    /// Metadata Class.
    pub class: u16,
    /// Type (within the class).
    pub tlv_type: u8,
    /// The value: exactly Length bytes, padding excluded ("The receiver MUST
    /// access only those bytes in the metadata indicated by the length field").
    pub value: &'a [u8],
}

/// Iterator over the TLVs of a checked MD type 2 header.
#[derive(Debug, Clone)]
pub struct TlvIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = TlvRef<'a>;

    fn next(&mut self) -> Option<TlvRef<'a>> {
        // Bounds were validated by `check`, but stay defensive: a view built
        // with `new_unchecked` must not panic here either.
        let header = self.rest.get(..TLV_HEADER_LEN)?;
        let value_len = usize::from(header[3] & 0x7F);
        let padded = value_len.div_ceil(4) * 4;
        let value = self.rest.get(TLV_HEADER_LEN..TLV_HEADER_LEN + value_len)?;
        let tlv = TlvRef {
            class: u16::from_be_bytes([header[0], header[1]]),
            tlv_type: header[2],
            value,
        };
        self.rest = self.rest.get(TLV_HEADER_LEN + padded..).unwrap_or(&[]);
        Some(tlv)
    }
}

/// An owned Variable-Length Context Header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlv {
    /// Metadata Class.
    pub class: u16,
    /// Type (within the class); the top bit is part of the type.
    pub tlv_type: u8,
    /// The value, at most 127 bytes; padding is added on emit.
    pub value: Vec<u8>,
}

/// NHAM's per-packet metadata: the per-chain sequence number assigned at
/// classification and the epoch of the VNF incarnation it was delivered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NhamMetadata {
    /// Per-chain sequence number, assigned by the classifier, never reused.
    pub seq: u64,
    /// Incarnation of the VNF the packet was delivered to.
    pub epoch: u32,
}

impl NhamMetadata {
    fn from_tlv(tlv: &TlvRef<'_>) -> Option<Self> {
        if tlv.class != NHAM_MD_CLASS || tlv.tlv_type != NHAM_TLV_TYPE {
            return None;
        }
        Self::from_bytes(tlv.value)
    }

    fn from_bytes(value: &[u8]) -> Option<Self> {
        let v: &[u8; NHAM_TLV_VALUE_LEN] = value.try_into().ok()?;
        Some(Self {
            seq: u64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]),
            epoch: u32::from_be_bytes([v[8], v[9], v[10], v[11]]),
        })
    }

    fn write_value(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..12].copy_from_slice(&self.epoch.to_be_bytes());
    }

    /// This metadata as an owned TLV.
    pub fn to_tlv(&self) -> Tlv {
        let mut value = vec![0; NHAM_TLV_VALUE_LEN];
        self.write_value(&mut value);
        Tlv {
            class: NHAM_MD_CLASS,
            tlv_type: NHAM_TLV_TYPE,
            value,
        }
    }
}

/// The context headers of an NSH header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Metadata {
    /// MD type 1: 16 bytes of fixed-length context.
    Type1([u8; 16]),
    /// MD type 2: zero or more Variable-Length Context Headers.
    Type2(Vec<Tlv>),
}

/// A parsed NSH header, independent of any buffer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NshRepr {
    /// The O bit.
    pub oam: bool,
    /// TTL, 0..=63.
    pub ttl: u8,
    /// Next Protocol.
    pub next_protocol: NextProtocol,
    /// SPI, 24 bits.
    pub spi: u32,
    /// Service Index.
    pub si: u8,
    /// Context headers.
    pub metadata: Metadata,
}

impl NshRepr {
    /// Parses a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &NshPacket<T>) -> Result<Self> {
        packet.check()?;
        let metadata = if packet.md_type() == MD_TYPE_1 {
            let mut fixed = [0; 16];
            fixed.copy_from_slice(packet.context());
            Metadata::Type1(fixed)
        } else {
            Metadata::Type2(
                packet
                    .tlvs()
                    .map(|t| Tlv {
                        class: t.class,
                        tlv_type: t.tlv_type,
                        value: t.value.to_vec(),
                    })
                    .collect(),
            )
        };
        Ok(Self {
            oam: packet.oam(),
            ttl: packet.ttl(),
            next_protocol: packet.next_protocol(),
            spi: packet.spi(),
            si: packet.si(),
            metadata,
        })
    }

    /// The NHAM header for a freshly classified packet.
    pub fn nham(
        spi: u32,
        si: u8,
        ttl: u8,
        next_protocol: NextProtocol,
        meta: NhamMetadata,
    ) -> Self {
        Self {
            oam: false,
            ttl,
            next_protocol,
            spi,
            si,
            metadata: Metadata::Type2(vec![meta.to_tlv()]),
        }
    }

    /// The header's length in bytes when emitted.
    pub fn header_len(&self) -> usize {
        match &self.metadata {
            Metadata::Type1(_) => MD1_LEN,
            Metadata::Type2(tlvs) => {
                BASE_LEN
                    + tlvs
                        .iter()
                        .map(|t| TLV_HEADER_LEN + t.value.len().div_ceil(4) * 4)
                        .sum::<usize>()
            }
        }
    }

    /// The NHAM metadata, if present.
    pub fn nham_metadata(&self) -> Option<NhamMetadata> {
        match &self.metadata {
            Metadata::Type1(_) => None,
            Metadata::Type2(tlvs) => tlvs.iter().find_map(|t| {
                NhamMetadata::from_tlv(&TlvRef {
                    class: t.class,
                    tlv_type: t.tlv_type,
                    value: &t.value,
                })
            }),
        }
    }

    /// Writes the header at the start of `buffer` and returns its length.
    /// Fields out of range are refused rather than truncated.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<usize> {
        if self.spi > 0x00FF_FFFF {
            return Err(Error::FieldRange { field: "spi" });
        }
        if self.ttl > MAX_TTL {
            return Err(Error::FieldRange { field: "ttl" });
        }
        let len = self.header_len();
        if len > 63 * 4 {
            return Err(Error::FieldRange { field: "metadata" });
        }
        if buffer.len() < len {
            return Err(Error::BufferTooSmall {
                need: len,
                have: buffer.len(),
            });
        }
        let md_type = match self.metadata {
            Metadata::Type1(_) => MD_TYPE_1,
            Metadata::Type2(_) => MD_TYPE_2,
        };
        // Ver = 0; "Unassigned bits MUST be set to zero upon origination".
        let first = (u16::from(self.oam) << 13) | (u16::from(self.ttl) << 6) | (len / 4) as u16;
        buffer[0..2].copy_from_slice(&first.to_be_bytes());
        buffer[field::MD_TYPE] = md_type;
        buffer[field::NEXT_PROTO] = self.next_protocol.into();
        buffer[field::SPI].copy_from_slice(&self.spi.to_be_bytes()[1..]);
        buffer[field::SI] = self.si;
        match &self.metadata {
            Metadata::Type1(fixed) => buffer[BASE_LEN..MD1_LEN].copy_from_slice(fixed),
            Metadata::Type2(tlvs) => {
                let mut offset = BASE_LEN;
                for t in tlvs {
                    if t.value.len() > 0x7F {
                        return Err(Error::FieldRange {
                            field: "tlv length",
                        });
                    }
                    buffer[offset..offset + 2].copy_from_slice(&t.class.to_be_bytes());
                    buffer[offset + 2] = t.tlv_type;
                    // "This bit MUST NOT be set" (the U bit before Length).
                    buffer[offset + 3] = t.value.len() as u8;
                    let value = offset + TLV_HEADER_LEN;
                    buffer[value..value + t.value.len()].copy_from_slice(&t.value);
                    // "the sender MUST add pad bytes immediately following the
                    // last metadata byte to extend the metadata to an integer
                    // number of 4-byte words."
                    let padded = t.value.len().div_ceil(4) * 4;
                    buffer[value + t.value.len()..value + padded].fill(0);
                    offset = value + padded;
                }
            }
        }
        Ok(len)
    }
}

/// Writes the 24-byte NHAM header (MD type 2 with one NHAM TLV) at the start
/// of `out`. This is the classifier's hot path: no allocation, no branches on
/// metadata. `out` must be at least [`NHAM_HEADER_LEN`] bytes.
///
/// ```
/// use nham_dataplane::nsh::{emit_nham_header, NextProtocol, NhamMetadata, NshPacket};
///
/// let mut buf = [0u8; 24];
/// let meta = NhamMetadata { seq: 7, epoch: 1 };
/// emit_nham_header(&mut buf, 42, 255, 63, NextProtocol::Ethernet, meta).unwrap();
/// let packet = NshPacket::new_checked(&buf[..]).unwrap();
/// assert_eq!((packet.spi(), packet.si(), packet.ttl()), (42, 255, 63));
/// assert_eq!(packet.nham_metadata(), Some(meta));
/// ```
#[inline]
pub fn emit_nham_header(
    out: &mut [u8],
    spi: u32,
    si: u8,
    ttl: u8,
    next_protocol: NextProtocol,
    meta: NhamMetadata,
) -> Result<()> {
    if out.len() < NHAM_HEADER_LEN {
        return Err(Error::BufferTooSmall {
            need: NHAM_HEADER_LEN,
            have: out.len(),
        });
    }
    if spi > 0x00FF_FFFF {
        return Err(Error::FieldRange { field: "spi" });
    }
    let first = (u16::from(ttl & MAX_TTL) << 6) | (NHAM_HEADER_LEN / 4) as u16;
    out[0..2].copy_from_slice(&first.to_be_bytes());
    out[2] = MD_TYPE_2;
    out[3] = next_protocol.into();
    let spi_si = (spi << 8) | u32::from(si);
    out[4..8].copy_from_slice(&spi_si.to_be_bytes());
    out[8..10].copy_from_slice(&NHAM_MD_CLASS.to_be_bytes());
    out[10] = NHAM_TLV_TYPE;
    out[11] = NHAM_TLV_VALUE_LEN as u8;
    meta.write_value(&mut out[12..NHAM_HEADER_LEN]);
    Ok(())
}

/// What an SFF does with a packet's TTL before forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlVerdict {
    /// Forward with this TTL.
    Forward(u8),
    /// "The packet MUST NOT be forwarded if TTL is, after decrement, 0."
    Expired,
}

/// The SFF's TTL rule (RFC 8300 section 2.2): "Each SFF involved in
/// forwarding an NSH packet MUST decrement the TTL value by 1 prior to NSH
/// forwarding lookup. Decrementing by 1 from an incoming value of 0 shall
/// result in a TTL value of 63. The packet MUST NOT be forwarded if TTL is,
/// after decrement, 0."
#[inline]
pub fn decrement_ttl(ttl: u8) -> TtlVerdict {
    match ttl & MAX_TTL {
        0 => TtlVerdict::Forward(MAX_TTL),
        1 => TtlVerdict::Expired,
        t => TtlVerdict::Forward(t - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_tlv() -> impl Strategy<Value = Tlv> {
        (
            any::<u16>(),
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(|(class, tlv_type, value)| Tlv {
                class,
                tlv_type,
                value,
            })
    }

    fn arb_repr() -> impl Strategy<Value = NshRepr> {
        let metadata = prop_oneof![
            any::<[u8; 16]>().prop_map(Metadata::Type1),
            proptest::collection::vec(arb_tlv(), 0..6).prop_map(Metadata::Type2),
        ];
        (
            any::<bool>(),
            0u8..=63,
            any::<u8>(),
            0u32..=0xFF_FFFF,
            any::<u8>(),
            metadata,
        )
            .prop_map(|(oam, ttl, np, spi, si, metadata)| NshRepr {
                oam,
                ttl,
                next_protocol: np.into(),
                spi,
                si,
                metadata,
            })
    }

    proptest! {
        #[test]
        fn repr_round_trips(repr in arb_repr(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = vec![0u8; repr.header_len() + payload.len()];
            let n = repr.emit(&mut buf).unwrap();
            buf[n..].copy_from_slice(&payload);
            let packet = NshPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(packet.header_len(), n);
            prop_assert_eq!(packet.payload(), &payload[..]);
            prop_assert_eq!(NshRepr::parse(&packet).unwrap(), repr);
        }

        #[test]
        fn fast_path_matches_repr(spi in 0u32..=0xFF_FFFF, si: u8, ttl in 0u8..=63, seq: u64, epoch: u32) {
            let meta = NhamMetadata { seq, epoch };
            let mut fast = [0u8; NHAM_HEADER_LEN];
            emit_nham_header(&mut fast, spi, si, ttl, NextProtocol::Ethernet, meta).unwrap();
            let mut slow = [0u8; NHAM_HEADER_LEN];
            NshRepr::nham(spi, si, ttl, NextProtocol::Ethernet, meta).emit(&mut slow).unwrap();
            prop_assert_eq!(fast, slow);
            let packet = NshPacket::new_checked(&fast[..]).unwrap();
            prop_assert_eq!(packet.nham_metadata(), Some(meta));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(packet) = NshPacket::new_checked(&bytes[..]) {
                let _ = NshRepr::parse(&packet).unwrap();
                let _ = packet.nham_metadata();
                let _ = packet.payload();
            }
        }

        #[test]
        fn setters_edit_in_place(seq: u64, epoch: u32, si: u8, ttl in 0u8..=63) {
            let mut buf = [0u8; NHAM_HEADER_LEN];
            emit_nham_header(&mut buf, 7, 255, 63, NextProtocol::Ethernet, NhamMetadata::default()).unwrap();
            let mut packet = NshPacket::new_checked(&mut buf[..]).unwrap();
            packet.set_si(si);
            packet.set_ttl(ttl);
            let written = packet.set_nham_metadata(NhamMetadata { seq, epoch });
            prop_assert!(written);
            prop_assert_eq!(packet.si(), si);
            prop_assert_eq!(packet.ttl(), ttl);
            prop_assert_eq!(packet.spi(), 7);
            prop_assert_eq!(packet.nham_metadata(), Some(NhamMetadata { seq, epoch }));
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let mut ok = [0u8; NHAM_HEADER_LEN];
        emit_nham_header(
            &mut ok,
            1,
            255,
            63,
            NextProtocol::Ethernet,
            NhamMetadata::default(),
        )
        .unwrap();
        assert!(NshPacket::new_checked(&ok[..]).is_ok());
        assert_eq!(
            NshPacket::new_checked(&ok[..7]).unwrap_err(),
            Error::Truncated { need: 8, have: 7 }
        );
        assert_eq!(
            NshPacket::new_checked(&ok[..20]).unwrap_err(),
            Error::Truncated { need: 24, have: 20 }
        );
        let mut v1 = ok;
        v1[0] |= 0x40;
        assert_eq!(
            NshPacket::new_checked(&v1[..]).unwrap_err(),
            Error::Version(1)
        );
        let mut md0 = ok;
        md0[2] = 0;
        assert_eq!(
            NshPacket::new_checked(&md0[..]).unwrap_err(),
            Error::MdType(0)
        );
        let mut md_f = ok;
        md_f[2] = 0xF;
        assert_eq!(
            NshPacket::new_checked(&md_f[..]).unwrap_err(),
            Error::MdType(0xF)
        );
        let mut md1_len = ok;
        md1_len[2] = MD_TYPE_1;
        md1_len[1] = (md1_len[1] & !0x3F) | 5;
        assert!(matches!(
            NshPacket::new_checked(&md1_len[..]),
            Err(Error::Length {
                words: 5,
                md_type: 1
            })
        ));
        let mut overrun = ok;
        overrun[11] = 13; // TLV claims 13 bytes (16 padded) in a 12-byte slot
        assert_eq!(
            NshPacket::new_checked(&overrun[..]).unwrap_err(),
            Error::TlvOverrun { offset: 8 }
        );
    }

    #[test]
    fn ttl_rule() {
        assert_eq!(decrement_ttl(63), TtlVerdict::Forward(62));
        assert_eq!(decrement_ttl(2), TtlVerdict::Forward(1));
        assert_eq!(decrement_ttl(1), TtlVerdict::Expired);
        assert_eq!(decrement_ttl(0), TtlVerdict::Forward(63));
    }

    #[test]
    fn emit_refuses_out_of_range() {
        let mut buf = [0u8; 64];
        let mut r = NshRepr::nham(
            0x100_0000,
            1,
            1,
            NextProtocol::Ethernet,
            NhamMetadata::default(),
        );
        assert_eq!(r.emit(&mut buf), Err(Error::FieldRange { field: "spi" }));
        r.spi = 1;
        r.ttl = 64;
        assert_eq!(r.emit(&mut buf), Err(Error::FieldRange { field: "ttl" }));
        r.ttl = 1;
        assert!(matches!(
            r.emit(&mut buf[..10]),
            Err(Error::BufferTooSmall { .. })
        ));
    }
}
