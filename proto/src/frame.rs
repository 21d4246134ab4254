//! Whole frames: the incremental [`FrameDecoder`] and the encoders that write a frame into a
//! caller's buffer.
//!
//! The decoder takes bytes in any split. When a whole frame lies in the caller's input it is
//! verified in place and handed out without a copy; only a frame cut across reads is copied, into
//! one buffer that never exceeds one maximal frame. An oversized `body_len` is refused from the
//! header alone, before a byte of the body is buffered.

use core::fmt;

use crate::body::{ErrorBody, Message, OpcodeBody, Push, Reply, Request, Response};
use crate::codec::{BodyError, Field};
use crate::codes::{Opcode, Status};
use crate::header::{checksum_frame, offset, Flags, Header, RawHeader, HEADER_LEN, MAGIC, VERSION};

/// The largest `body_len` any configuration may allow (1 MiB). A server's own limit is at most
/// this; [`BODY_LEN_MAX_DEFAULT`] is the usual one.
pub const BODY_LEN_LIMIT: u32 = 1 << 20;
/// The default largest body (64 KiB).
pub const BODY_LEN_MAX_DEFAULT: u32 = 64 << 10;

/// Why bytes did not make a frame.
///
/// The first four are fatal: the stream can no longer be split into frames, so the connection
/// must close (a server may first send an error response). The others are about one frame that
/// was consumed whole; the stream goes on, and the error carries the frame's raw header so an
/// error response can echo its `req_id` and `opcode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// `magic` is not 0x4E53.
    BadMagic {
        /// What was there.
        found: u16,
    },
    /// `version` is not 1.
    BadVersion {
        /// What was there.
        found: u8,
    },
    /// `header_len` is not 32.
    BadHeaderLen {
        /// What was there.
        found: u16,
    },
    /// `body_len` is over the decoder's limit.
    BodyTooLong {
        /// The header, as read.
        header: RawHeader,
        /// The decoder's limit.
        body_len_max: u32,
    },
    /// The CRC-32 does not match the frame.
    BadChecksum {
        /// The header, as read.
        header: RawHeader,
        /// The CRC-32 of what arrived.
        computed: u32,
    },
    /// A reserved byte is not zero.
    ReservedNotZero {
        /// The header, as read.
        header: RawHeader,
    },
    /// A flag bit this version does not define is set.
    UnknownFlags {
        /// The header, as read.
        header: RawHeader,
    },
    /// The opcode is not one this version defines.
    UnknownOpcode {
        /// The header, as read.
        header: RawHeader,
    },
    /// The status is not one this version defines.
    UnknownStatus {
        /// The header, as read.
        header: RawHeader,
    },
    /// A request or push carries a non-zero status.
    StatusNotZero {
        /// The header, as read.
        header: RawHeader,
    },
}

impl DecodeError {
    /// True when the stream cannot go on and the connection must close.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            DecodeError::BadMagic { .. }
                | DecodeError::BadVersion { .. }
                | DecodeError::BadHeaderLen { .. }
                | DecodeError::BodyTooLong { .. }
        )
    }

    /// The frame's raw header, where it was read far enough to be trusted for framing.
    pub fn header(&self) -> Option<&RawHeader> {
        match self {
            DecodeError::BadMagic { .. }
            | DecodeError::BadVersion { .. }
            | DecodeError::BadHeaderLen { .. } => None,
            DecodeError::BodyTooLong { header, .. }
            | DecodeError::BadChecksum { header, .. }
            | DecodeError::ReservedNotZero { header }
            | DecodeError::UnknownFlags { header }
            | DecodeError::UnknownOpcode { header }
            | DecodeError::UnknownStatus { header }
            | DecodeError::StatusNotZero { header } => Some(header),
        }
    }

    /// The status a server answers this error with.
    pub fn status(&self) -> Status {
        match self {
            DecodeError::BodyTooLong { .. } => Status::ErrTooLarge,
            DecodeError::BadChecksum { .. } => Status::ErrChecksumFail,
            DecodeError::UnknownOpcode { .. } => Status::ErrUnknownOpcode,
            _ => Status::ErrBadPacket,
        }
    }

    /// A short stable name, for metrics labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            DecodeError::BadMagic { .. } => "bad_magic",
            DecodeError::BadVersion { .. } => "bad_version",
            DecodeError::BadHeaderLen { .. } => "bad_header_len",
            DecodeError::BodyTooLong { .. } => "body_too_long",
            DecodeError::BadChecksum { .. } => "bad_checksum",
            DecodeError::ReservedNotZero { .. } => "reserved_not_zero",
            DecodeError::UnknownFlags { .. } => "unknown_flags",
            DecodeError::UnknownOpcode { .. } => "unknown_opcode",
            DecodeError::UnknownStatus { .. } => "unknown_status",
            DecodeError::StatusNotZero { .. } => "status_not_zero",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadMagic { found } => {
                write!(f, "bad magic 0x{found:04X}, expected 0x{MAGIC:04X}")
            }
            DecodeError::BadVersion { found } => {
                write!(f, "unsupported version {found}, expected {VERSION}")
            }
            DecodeError::BadHeaderLen { found } => {
                write!(f, "header_len {found}, expected {HEADER_LEN}")
            }
            DecodeError::BodyTooLong {
                header,
                body_len_max,
            } => write!(
                f,
                "body_len {} over the limit {body_len_max}",
                header.body_len
            ),
            DecodeError::BadChecksum { header, computed } => write!(
                f,
                "checksum 0x{:08X} does not match the frame's CRC-32 0x{computed:08X}",
                header.checksum
            ),
            DecodeError::ReservedNotZero { header } => {
                write!(f, "reserved bytes {:02X?} are not zero", header.reserved)
            }
            DecodeError::UnknownFlags { header } => {
                write!(f, "undefined flag bits in 0x{:02X}", header.flags)
            }
            DecodeError::UnknownOpcode { header } => {
                write!(f, "unknown opcode 0x{:04X}", header.opcode)
            }
            DecodeError::UnknownStatus { header } => {
                write!(f, "unknown status 0x{:04X}", header.status)
            }
            DecodeError::StatusNotZero { header } => write!(
                f,
                "status 0x{:04X} in a frame that is not a response",
                header.status
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A verified frame: its header passed every check and its body matches the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The checked header.
    pub header: Header,
    /// The body, `header.body_len` bytes, not yet decoded.
    pub body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The body as a request.
    pub fn request(&self) -> Result<Request<'a>, BodyError> {
        Request::decode(self.header.opcode, self.body)
    }

    /// The body as a response: the OK body, or the error status and message.
    pub fn reply(&self) -> Result<Reply<'a>, BodyError> {
        Reply::decode(self.header.opcode, self.header.status, self.body)
    }

    /// The body as a push.
    pub fn push(&self) -> Result<Push<'a>, BodyError> {
        Push::decode(self.header.opcode, self.body)
    }
}

/// Checks the fields that frame the stream; a failure here means the stream is lost.
fn check_framing(raw: &RawHeader, body_len_max: u32) -> Result<(), DecodeError> {
    if raw.magic != MAGIC {
        return Err(DecodeError::BadMagic { found: raw.magic });
    }
    if raw.version != VERSION {
        return Err(DecodeError::BadVersion { found: raw.version });
    }
    if usize::from(raw.header_len) != HEADER_LEN {
        return Err(DecodeError::BadHeaderLen {
            found: raw.header_len,
        });
    }
    if raw.body_len > body_len_max {
        return Err(DecodeError::BodyTooLong {
            header: *raw,
            body_len_max,
        });
    }
    Ok(())
}

/// Checks a whole frame whose framing passed: checksum first (when it fails, no other field can
/// be trusted), then reserved bytes, flags, opcode and status.
fn verify(raw: RawHeader, frame: &[u8]) -> Result<Frame<'_>, DecodeError> {
    debug_assert_eq!(frame.len(), HEADER_LEN + raw.body_len as usize);
    let body = &frame[HEADER_LEN..];
    let computed = checksum_frame(frame);
    if computed != raw.checksum {
        return Err(DecodeError::BadChecksum {
            header: raw,
            computed,
        });
    }
    if raw.reserved != [0; 6] {
        return Err(DecodeError::ReservedNotZero { header: raw });
    }
    let Some(flags) = Flags::from_bits(raw.flags) else {
        return Err(DecodeError::UnknownFlags { header: raw });
    };
    let Some(opcode) = Opcode::from_u16(raw.opcode) else {
        return Err(DecodeError::UnknownOpcode { header: raw });
    };
    let Some(status) = Status::from_u16(raw.status) else {
        return Err(DecodeError::UnknownStatus { header: raw });
    };
    if !flags.is_response() && !status.is_ok() {
        return Err(DecodeError::StatusNotZero { header: raw });
    }
    Ok(Frame {
        header: Header {
            flags,
            body_len: raw.body_len,
            opcode,
            status,
            req_id: raw.req_id,
        },
        body,
    })
}

fn header_array(bytes: &[u8]) -> &[u8; HEADER_LEN] {
    bytes[..HEADER_LEN]
        .try_into()
        .expect("callers pass at least HEADER_LEN bytes")
}

/// Buffer capacity kept between cut frames; a larger buffer is freed once its frame is out.
const PARTIAL_CAPACITY_KEEP: usize = 16 << 10;

/// What one call to [`FrameDecoder::decode`] found.
pub type Decoded<'a> = Result<Option<Frame<'a>>, DecodeError>;

/// Splits a byte stream into verified frames.
///
/// Call [`decode`](FrameDecoder::decode) with the bytes that arrived; it returns how many it
/// consumed and at most one frame. Call it again with the rest until it returns `Ok(None)`,
/// which means every byte was consumed and the next frame is incomplete. After a fatal error
/// the decoder stays failed and consumes everything.
#[derive(Debug)]
pub struct FrameDecoder {
    body_len_max: u32,
    /// Bytes of one frame cut across inputs: the header, then the body once the header passed.
    partial: Vec<u8>,
    /// The header in `partial`, once all 32 bytes are there and framing passed.
    partial_header: Option<RawHeader>,
    /// Set after a frame was handed out of `partial`; it is cleared on the next call.
    partial_done: bool,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    /// A decoder that refuses bodies over `body_len_max` (clamped to [`BODY_LEN_LIMIT`]).
    pub fn new(body_len_max: u32) -> FrameDecoder {
        FrameDecoder {
            body_len_max: body_len_max.min(BODY_LEN_LIMIT),
            partial: Vec::new(),
            partial_header: None,
            partial_done: false,
            failed: None,
        }
    }

    /// The body limit in force.
    pub fn body_len_max(&self) -> u32 {
        self.body_len_max
    }

    /// Bytes held from a frame cut across inputs.
    pub fn buffered_len(&self) -> usize {
        if self.partial_done {
            0
        } else {
            self.partial.len()
        }
    }

    /// Capacity of the buffer for cut frames; never more than one maximal frame.
    pub fn buffer_capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// True between frames: no partial frame is held. A peer that closes now closed cleanly.
    pub fn is_idle(&self) -> bool {
        self.buffered_len() == 0 && self.failed.is_none()
    }

    /// Consumes bytes from `input` and returns how many, with at most one frame.
    pub fn decode<'a>(&'a mut self, input: &'a [u8]) -> (usize, Decoded<'a>) {
        if let Some(err) = self.failed {
            return (input.len(), Err(err));
        }
        if self.partial_done {
            self.partial.clear();
            // A connection that once sent a large frame should not keep its buffer forever.
            if self.partial.capacity() > PARTIAL_CAPACITY_KEEP {
                self.partial = Vec::new();
            }
            self.partial_header = None;
            self.partial_done = false;
        }
        if self.partial.is_empty() {
            self.decode_in_place(input)
        } else {
            self.decode_buffered(input)
        }
    }

    /// The fast path: nothing is buffered, so a frame that lies whole in `input` is checked and
    /// returned without a copy.
    fn decode_in_place<'a>(&'a mut self, input: &'a [u8]) -> (usize, Decoded<'a>) {
        if input.len() < HEADER_LEN {
            self.partial.extend_from_slice(input);
            return (input.len(), Ok(None));
        }
        let header_bytes = header_array(input);
        let raw = RawHeader::parse(header_bytes);
        if let Err(err) = check_framing(&raw, self.body_len_max) {
            self.failed = Some(err);
            return (input.len(), Err(err));
        }
        let frame_len = HEADER_LEN + raw.body_len as usize;
        if input.len() >= frame_len {
            return (frame_len, verify(raw, &input[..frame_len]).map(Some));
        }
        // The body is cut: buffer what arrived, sized for exactly this frame.
        self.partial.reserve_exact(frame_len);
        self.partial.extend_from_slice(input);
        self.partial_header = Some(raw);
        (input.len(), Ok(None))
    }

    /// The slow path: continue a frame cut across inputs.
    fn decode_buffered<'a>(&'a mut self, input: &'a [u8]) -> (usize, Decoded<'a>) {
        let mut used = 0;
        let raw = match self.partial_header {
            Some(raw) => raw,
            None => {
                let take = (HEADER_LEN - self.partial.len()).min(input.len());
                self.partial.extend_from_slice(&input[..take]);
                used = take;
                if self.partial.len() < HEADER_LEN {
                    return (used, Ok(None));
                }
                let raw = RawHeader::parse(header_array(&self.partial));
                if let Err(err) = check_framing(&raw, self.body_len_max) {
                    self.failed = Some(err);
                    return (input.len(), Err(err));
                }
                self.partial.reserve_exact(raw.body_len as usize);
                self.partial_header = Some(raw);
                raw
            }
        };
        let frame_len = HEADER_LEN + raw.body_len as usize;
        let take = (frame_len - self.partial.len()).min(input.len() - used);
        self.partial.extend_from_slice(&input[used..used + take]);
        used += take;
        if self.partial.len() < frame_len {
            return (used, Ok(None));
        }
        debug_assert!(self.partial.len() <= HEADER_LEN + self.body_len_max as usize);
        self.partial_done = true;
        (used, verify(raw, &self.partial).map(Some))
    }
}

/// Why a frame could not be encoded. Nothing is left in the output buffer when this happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The body would be longer than [`BODY_LEN_LIMIT`] or the limit given.
    BodyTooLong {
        /// The body's length.
        body_len: usize,
        /// The limit.
        body_len_max: u32,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BodyTooLong {
                body_len,
                body_len_max,
            } => write!(
                f,
                "body of {body_len} bytes is over the limit {body_len_max}"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

/// The header fields an encoder takes; the rest are fixed or computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Flag bits.
    pub flags: Flags,
    /// Opcode number (raw, so an error response can echo an opcode this side does not know).
    pub opcode: u16,
    /// Status number.
    pub status: u16,
    /// Request id.
    pub req_id: u64,
}

/// Appends one frame: header, then the body written by `write_body`, with `body_len` and the
/// checksum filled in. Allocates only if `out` lacks the capacity.
pub fn write_frame_with(
    out: &mut Vec<u8>,
    head: FrameHead,
    body_len: usize,
    body_len_max: u32,
    write_body: impl FnOnce(&mut Vec<u8>),
) -> Result<(), EncodeError> {
    let limit = body_len_max.min(BODY_LEN_LIMIT);
    if body_len > limit as usize {
        return Err(EncodeError::BodyTooLong {
            body_len,
            body_len_max: limit,
        });
    }
    let start = out.len();
    let mut header = [0u8; HEADER_LEN];
    // `body_len <= BODY_LEN_LIMIT`, which fits in u32.
    RawHeader::new(
        head.flags,
        head.opcode,
        head.status,
        head.req_id,
        body_len as u32,
    )
    .write(&mut header);
    out.extend_from_slice(&header);
    write_body(out);
    let body = &out[start + HEADER_LEN..];
    assert_eq!(
        body.len(),
        body_len,
        "a body wrote other than its encoded_len"
    );
    let crc = checksum_frame(&out[start..]);
    out[start + offset::CHECKSUM..start + offset::CHECKSUM + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Appends one frame whose body is `body`.
pub fn write_frame<'a, B: Field<'a>>(
    out: &mut Vec<u8>,
    head: FrameHead,
    body: &B,
    body_len_max: u32,
) -> Result<(), EncodeError> {
    write_frame_with(out, head, body.encoded_len(), body_len_max, |o| {
        body.write(o)
    })
}

/// Appends a frame with status OK carrying `message`, whose opcode it takes.
fn write_message<M: OpcodeBody>(
    out: &mut Vec<u8>,
    flags: Flags,
    req_id: u64,
    message: &M,
    body_len_max: u32,
) -> Result<(), EncodeError> {
    let head = FrameHead {
        flags,
        opcode: message.opcode().as_u16(),
        status: Status::Ok.as_u16(),
        req_id,
    };
    write_frame_with(out, head, message.encoded_len(), body_len_max, |o| {
        message.write(o)
    })
}

/// Appends a request frame.
pub fn write_request(
    out: &mut Vec<u8>,
    req_id: u64,
    request: &Request<'_>,
    body_len_max: u32,
) -> Result<(), EncodeError> {
    write_message(out, Flags::NONE, req_id, request, body_len_max)
}

/// Appends an OK response frame.
pub fn write_response(
    out: &mut Vec<u8>,
    req_id: u64,
    response: &Response<'_>,
    body_len_max: u32,
) -> Result<(), EncodeError> {
    write_message(out, Flags::RESPONSE, req_id, response, body_len_max)
}

/// Appends an error response frame. `opcode` is the request's raw opcode, echoed even when it
/// is unknown; `message` is cut at a character boundary to fit 256 bytes.
pub fn write_error(out: &mut Vec<u8>, req_id: u64, opcode: u16, status: Status, message: &str) {
    debug_assert!(!status.is_ok(), "an error response needs an error status");
    let mut cut = message.len().min(crate::body::MESSAGE_LEN_MAX);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let message = Message::new(&message[..cut]).expect("cut to MESSAGE_LEN_MAX above");
    let head = FrameHead {
        flags: Flags::RESPONSE,
        opcode,
        status: status.as_u16(),
        req_id,
    };
    write_frame(out, head, &ErrorBody { message }, BODY_LEN_LIMIT)
        .expect("an error body is at most 258 bytes");
}

/// Appends a push frame (`is_response` clear, `req_id` 0).
pub fn write_push(
    out: &mut Vec<u8>,
    push: &Push<'_>,
    body_len_max: u32,
) -> Result<(), EncodeError> {
    write_message(out, Flags::NONE, 0, push, body_len_max)
}
