//! The 32-byte frame header, its byte offsets, and the CRC-32 that covers header and body.
//!
//! Layout (big-endian, offsets in bytes):
//!
//! ```text
//!  0  magic       u16  0x4E53 ("NS")
//!  2  version     u8   1
//!  3  flags       u8   bit0 encrypted, bit1 compressed, bit2 is_response, bits 3..7 zero
//!  4  header_len  u16  32
//!  6  body_len    u32
//! 10  opcode      u16
//! 12  status      u16  0 in requests and pushes
//! 14  req_id      u64
//! 22  checksum    u32  CRC-32 (IEEE) of bytes 0..22, then 26..32, then the body
//! 26  reserved    [u8; 6], all zero
//! ```

use crate::codes::{Opcode, Status};

/// `"NS"`.
pub const MAGIC: u16 = 0x4E53;
/// The only protocol version.
pub const VERSION: u8 = 1;
/// Length of the header on the wire.
pub const HEADER_LEN: usize = 32;

/// Byte offsets of the header fields.
pub mod offset {
    /// `magic`, u16.
    pub const MAGIC: usize = 0;
    /// `version`, u8.
    pub const VERSION: usize = 2;
    /// `flags`, u8.
    pub const FLAGS: usize = 3;
    /// `header_len`, u16.
    pub const HEADER_LEN: usize = 4;
    /// `body_len`, u32.
    pub const BODY_LEN: usize = 6;
    /// `opcode`, u16.
    pub const OPCODE: usize = 10;
    /// `status`, u16.
    pub const STATUS: usize = 12;
    /// `req_id`, u64.
    pub const REQ_ID: usize = 14;
    /// `checksum`, u32.
    pub const CHECKSUM: usize = 22;
    /// `reserved`, 6 bytes.
    pub const RESERVED: usize = 26;
}

/// Length of the `reserved` field.
pub const RESERVED_LEN: usize = 6;

// The fields tile the header exactly: each starts where the previous one ends, and the last one
// ends at byte 32. A change to any offset that breaks this does not compile.
const _: () = {
    assert!(offset::MAGIC == 0);
    assert!(offset::VERSION == offset::MAGIC + 2);
    assert!(offset::FLAGS == offset::VERSION + 1);
    assert!(offset::HEADER_LEN == offset::FLAGS + 1);
    assert!(offset::BODY_LEN == offset::HEADER_LEN + 2);
    assert!(offset::OPCODE == offset::BODY_LEN + 4);
    assert!(offset::STATUS == offset::OPCODE + 2);
    assert!(offset::REQ_ID == offset::STATUS + 2);
    assert!(offset::CHECKSUM == offset::REQ_ID + 8);
    assert!(offset::RESERVED == offset::CHECKSUM + 4);
    assert!(offset::RESERVED + RESERVED_LEN == HEADER_LEN);
    assert!(HEADER_LEN == 32);
};

/// The header flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// bit0: the body is encrypted.
    pub const ENCRYPTED: u8 = 0b001;
    /// bit1: the body is compressed.
    pub const COMPRESSED: u8 = 0b010;
    /// bit2: the frame is a response (req_id echoes the request's).
    pub const IS_RESPONSE: u8 = 0b100;
    /// Every bit this version defines; the others must be zero.
    pub const KNOWN: u8 = Self::ENCRYPTED | Self::COMPRESSED | Self::IS_RESPONSE;

    /// No flag set: a plain request or push.
    pub const NONE: Flags = Flags(0);
    /// Only `is_response`: a plain response.
    pub const RESPONSE: Flags = Flags(Self::IS_RESPONSE);

    /// Flags from a wire byte, or `None` when an undefined bit is set.
    pub const fn from_bits(bits: u8) -> Option<Flags> {
        if bits & !Self::KNOWN == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// The wire byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// bit2.
    pub const fn is_response(self) -> bool {
        self.0 & Self::IS_RESPONSE != 0
    }

    /// bit0.
    pub const fn is_encrypted(self) -> bool {
        self.0 & Self::ENCRYPTED != 0
    }

    /// bit1.
    pub const fn is_compressed(self) -> bool {
        self.0 & Self::COMPRESSED != 0
    }
}

/// Every header field exactly as on the wire, before any check. Errors carry it so a server can
/// echo `req_id` and `opcode` in its error response even for a frame it could not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawHeader {
    /// Should be [`MAGIC`].
    pub magic: u16,
    /// Should be [`VERSION`].
    pub version: u8,
    /// Flag bits.
    pub flags: u8,
    /// Should be [`HEADER_LEN`].
    pub header_len: u16,
    /// Length of the body that follows.
    pub body_len: u32,
    /// Opcode number.
    pub opcode: u16,
    /// Status number.
    pub status: u16,
    /// Request id.
    pub req_id: u64,
    /// CRC-32 as sent.
    pub checksum: u32,
    /// Should be all zero.
    pub reserved: [u8; RESERVED_LEN],
}

impl RawHeader {
    /// Reads the fields from 32 bytes. Never fails: checking is the decoder's job.
    pub fn parse(b: &[u8; HEADER_LEN]) -> RawHeader {
        let u16_at = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
        let mut u32_bytes = [0u8; 4];
        u32_bytes.copy_from_slice(&b[offset::BODY_LEN..offset::BODY_LEN + 4]);
        let body_len = u32::from_be_bytes(u32_bytes);
        u32_bytes.copy_from_slice(&b[offset::CHECKSUM..offset::CHECKSUM + 4]);
        let checksum = u32::from_be_bytes(u32_bytes);
        let mut req_id = [0u8; 8];
        req_id.copy_from_slice(&b[offset::REQ_ID..offset::REQ_ID + 8]);
        let mut reserved = [0u8; RESERVED_LEN];
        reserved.copy_from_slice(&b[offset::RESERVED..]);
        RawHeader {
            magic: u16_at(offset::MAGIC),
            version: b[offset::VERSION],
            flags: b[offset::FLAGS],
            header_len: u16_at(offset::HEADER_LEN),
            body_len,
            opcode: u16_at(offset::OPCODE),
            status: u16_at(offset::STATUS),
            req_id: u64::from_be_bytes(req_id),
            checksum,
            reserved,
        }
    }

    /// Writes the fields, `checksum` included as it stands, into 32 bytes.
    pub fn write(&self, b: &mut [u8; HEADER_LEN]) {
        b[offset::MAGIC..offset::MAGIC + 2].copy_from_slice(&self.magic.to_be_bytes());
        b[offset::VERSION] = self.version;
        b[offset::FLAGS] = self.flags;
        b[offset::HEADER_LEN..offset::HEADER_LEN + 2]
            .copy_from_slice(&self.header_len.to_be_bytes());
        b[offset::BODY_LEN..offset::BODY_LEN + 4].copy_from_slice(&self.body_len.to_be_bytes());
        b[offset::OPCODE..offset::OPCODE + 2].copy_from_slice(&self.opcode.to_be_bytes());
        b[offset::STATUS..offset::STATUS + 2].copy_from_slice(&self.status.to_be_bytes());
        b[offset::REQ_ID..offset::REQ_ID + 8].copy_from_slice(&self.req_id.to_be_bytes());
        b[offset::CHECKSUM..offset::CHECKSUM + 4].copy_from_slice(&self.checksum.to_be_bytes());
        b[offset::RESERVED..].copy_from_slice(&self.reserved);
    }

    /// A well-formed header for these fields, with checksum 0 (filled in by the encoder).
    pub fn new(flags: Flags, opcode: u16, status: u16, req_id: u64, body_len: u32) -> RawHeader {
        RawHeader {
            magic: MAGIC,
            version: VERSION,
            flags: flags.bits(),
            header_len: HEADER_LEN as u16,
            body_len,
            opcode,
            status,
            req_id,
            checksum: 0,
            reserved: [0; RESERVED_LEN],
        }
    }
}

/// A header that passed every check: known flags, opcode and status, reserved bytes zero, and
/// status zero unless it is a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Flag bits, all defined.
    pub flags: Flags,
    /// Length of the body.
    pub body_len: u32,
    /// What the frame is.
    pub opcode: Opcode,
    /// Outcome, `Ok` unless this is a response.
    pub status: Status,
    /// The request id; echoed in responses, 0 in pushes.
    pub req_id: u64,
}

impl Header {
    /// The kind of frame, from the flags and the opcode.
    pub fn kind(&self) -> FrameKind {
        if self.flags.is_response() {
            FrameKind::Response
        } else if self.opcode.is_push() {
            FrameKind::Push
        } else {
            FrameKind::Request
        }
    }
}

/// What a frame is to its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Client to server, `is_response` clear.
    Request,
    /// Server to client, `is_response` set, `req_id` echoed.
    Response,
    /// Server to client unprompted, `is_response` clear, a push opcode.
    Push,
}

/// The frame checksum: CRC-32 (IEEE 802.3, as zlib's `crc32`) over header bytes `0..22`, then
/// `26..32`, then the body. The checksum field itself is the only part not covered.
pub fn checksum(header: &[u8; HEADER_LEN], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..offset::CHECKSUM]);
    h.update(&header[offset::RESERVED..]);
    h.update(body);
    h.finalize()
}

/// [`checksum`] of a frame that lies whole in one buffer (header then body): two CRC updates
/// instead of three, because the reserved bytes and the body are contiguous. For frames of a
/// hundred bytes the per-update cost is a large part of the whole, and a client reading pushes
/// checks millions a second.
pub fn checksum_frame(frame: &[u8]) -> u32 {
    debug_assert!(frame.len() >= HEADER_LEN);
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[..offset::CHECKSUM]);
    h.update(&frame[offset::RESERVED..]);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_header_round_trips() {
        let h = RawHeader {
            magic: 0x1234,
            version: 7,
            flags: 0xAB,
            header_len: 0xBEEF,
            body_len: 0xDEADBEEF,
            opcode: 0x0203,
            status: 0x0005,
            req_id: 0x0102030405060708,
            checksum: 0xCAFEBABE,
            reserved: [1, 2, 3, 4, 5, 6],
        };
        let mut b = [0u8; HEADER_LEN];
        h.write(&mut b);
        assert_eq!(RawHeader::parse(&b), h);
        assert_eq!(&b[..2], &[0x12, 0x34]);
        assert_eq!(&b[14..22], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[22..26], &[0xCA, 0xFE, 0xBA, 0xBE]);
    }

    #[test]
    fn checksum_skips_only_the_checksum_field() {
        let mut b = [0u8; HEADER_LEN];
        RawHeader::new(Flags::NONE, 1, 0, 9, 3).write(&mut b);
        let body = b"abc";
        let c = checksum(&b, body);
        // The same bytes, concatenated by hand, through an independent CRC-32 call.
        let mut flat = Vec::new();
        flat.extend_from_slice(&b[..22]);
        flat.extend_from_slice(&b[26..]);
        flat.extend_from_slice(body);
        assert_eq!(c, crc32fast::hash(&flat));
        // Changing the checksum field does not change the checksum.
        b[22..26].copy_from_slice(&[0xFF; 4]);
        assert_eq!(checksum(&b, body), c);
        // Changing any other byte does.
        for i in (0..22).chain(26..32) {
            let mut m = b;
            m[i] ^= 0x01;
            assert_ne!(checksum(&m, body), c, "byte {i} not covered");
        }
    }

    #[test]
    fn checksum_frame_is_checksum_of_its_parts() {
        let mut b = [0u8; HEADER_LEN];
        RawHeader::new(Flags::NONE, 1, 0, 9, 3).write(&mut b);
        let mut frame = b.to_vec();
        frame.extend_from_slice(b"a body of some length");
        let (h, body) = frame.split_at(HEADER_LEN);
        let h: &[u8; HEADER_LEN] = h.try_into().expect("32 bytes");
        assert_eq!(checksum_frame(&frame), checksum(h, body));
        assert_ne!(checksum_frame(&frame), checksum(h, &body[1..]));
    }

    #[test]
    fn crc32_is_zlibs() {
        // The standard check value of CRC-32/ISO-HDLC, the CRC zlib's crc32() computes.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn flags_refuse_undefined_bits() {
        assert_eq!(Flags::from_bits(0b111).map(Flags::bits), Some(0b111));
        for bit in 3..8 {
            assert_eq!(Flags::from_bits(1 << bit), None);
        }
    }
}
