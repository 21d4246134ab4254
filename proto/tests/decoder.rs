//! The frame decoder's rejections, one test each, and the encoder's promises.

use proto::body::{AmountRequest, ErrorBody};
use proto::header::offset;
use proto::{
    write_error, write_frame, write_request, DecodeError, EncodeError, Field, Flags, Frame,
    FrameDecoder, FrameHead, Opcode, RawHeader, Request, Status, BODY_LEN_LIMIT, HEADER_LEN,
};

const MAX: u32 = 1024;

fn deposit(req_id: u64, amount: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_request(
        &mut out,
        req_id,
        &Request::Deposit(AmountRequest { amount }),
        MAX,
    )
    .expect("small body");
    out
}

/// Rewrites one header field through `edit`, then recomputes the checksum so only that field
/// is wrong.
fn with_header(frame: &[u8], edit: impl FnOnce(&mut RawHeader)) -> Vec<u8> {
    let mut h = RawHeader::parse(frame[..HEADER_LEN].try_into().expect("32 bytes"));
    edit(&mut h);
    let mut bytes = [0u8; HEADER_LEN];
    h.write(&mut bytes);
    let crc = proto::header::checksum(&bytes, &frame[HEADER_LEN..]);
    h.checksum = crc;
    h.write(&mut bytes);
    let mut out = bytes.to_vec();
    out.extend_from_slice(&frame[HEADER_LEN..]);
    out
}

/// Decodes the first frame of `bytes` with a fresh decoder; returns its header.
fn decode_one(bytes: &[u8]) -> Result<Option<proto::Header>, DecodeError> {
    FrameDecoder::new(MAX)
        .decode(bytes)
        .1
        .map(|f| f.map(|f| f.header))
}

/// Decodes a whole buffer, collecting every result, until the input is used up or a fatal error.
fn decode_all(
    dec: &mut FrameDecoder,
    mut input: &[u8],
) -> Vec<Result<(u64, Vec<u8>), DecodeError>> {
    let mut out = Vec::new();
    loop {
        let (used, res) = dec.decode(input);
        input = &input[used..];
        match res {
            Ok(Some(f)) => out.push(Ok((f.header.req_id, f.body.to_vec()))),
            Ok(None) => return out,
            Err(e) => {
                let fatal = e.is_fatal();
                out.push(Err(e));
                if fatal {
                    assert!(input.is_empty());
                    return out;
                }
            }
        }
    }
}

#[test]
fn a_whole_frame_decodes_in_place_without_a_copy() {
    let frame = deposit(5, 100);
    let mut dec = FrameDecoder::new(MAX);
    let (used, res) = dec.decode(&frame);
    assert_eq!(used, frame.len());
    let f: Frame<'_> = res.expect("valid").expect("whole");
    assert_eq!(f.header.opcode, Opcode::Deposit);
    assert_eq!(f.header.req_id, 5);
    assert_eq!(
        f.body.as_ptr(),
        frame[HEADER_LEN..].as_ptr(),
        "body borrowed from input"
    );
    assert_eq!(
        f.request(),
        Ok(Request::Deposit(AmountRequest { amount: 100 }))
    );
    assert_eq!(dec.buffer_capacity(), 0, "nothing was buffered");
}

#[test]
fn empty_input_needs_more() {
    let mut dec = FrameDecoder::new(MAX);
    assert_eq!(dec.decode(&[]), (0, Ok(None)));
    assert!(dec.is_idle());
}

#[test]
fn one_byte_at_a_time_gives_the_same_frame() {
    let frame = deposit(9, 77);
    let mut dec = FrameDecoder::new(MAX);
    for (i, b) in frame.iter().enumerate() {
        let (used, res) = dec.decode(std::slice::from_ref(b));
        assert_eq!(used, 1);
        let got = res.expect("valid");
        if i + 1 < frame.len() {
            assert!(got.is_none(), "frame yielded early at byte {i}");
            assert!(!dec.is_idle());
        } else {
            let f = got.expect("whole at the last byte");
            assert_eq!(f.header.req_id, 9);
            assert_eq!(f.body, &frame[HEADER_LEN..]);
        }
    }
    assert_eq!(dec.decode(&[]), (0, Ok(None)));
    assert!(dec.is_idle());
}

#[test]
fn bad_magic_is_fatal_and_sticks() {
    let frame = with_header(&deposit(1, 1), |h| h.magic = 0x4E54);
    let mut dec = FrameDecoder::new(MAX);
    let (used, res) = dec.decode(&frame);
    assert_eq!(used, frame.len());
    let err = res.expect_err("bad magic");
    assert_eq!(err, DecodeError::BadMagic { found: 0x4E54 });
    assert!(err.is_fatal());
    assert_eq!(err.status(), Status::ErrBadPacket);
    // A valid frame after it is not looked at: the stream is lost.
    let good = deposit(2, 2);
    assert_eq!(dec.decode(&good), (good.len(), Err(err)));
}

#[test]
fn bad_version_is_fatal() {
    let frame = with_header(&deposit(1, 1), |h| h.version = 2);
    let res = decode_one(&frame);
    assert_eq!(res, Err(DecodeError::BadVersion { found: 2 }));
}

#[test]
fn header_len_other_than_32_is_fatal() {
    for bad in [0u16, 31, 33, 0xFFFF] {
        let frame = with_header(&deposit(1, 1), |h| h.header_len = bad);
        let res = decode_one(&frame);
        assert_eq!(res, Err(DecodeError::BadHeaderLen { found: bad }));
    }
}

#[test]
fn an_oversized_body_len_is_refused_from_the_header_alone() {
    // Only the header arrives; it claims a 4 GiB body.
    let frame = with_header(&deposit(1, 1), |h| h.body_len = u32::MAX);
    let mut dec = FrameDecoder::new(MAX);
    let err = dec.decode(&frame[..HEADER_LEN]).1.expect_err("too long");
    assert!(matches!(
        err,
        DecodeError::BodyTooLong { header, body_len_max: MAX } if header.body_len == u32::MAX
    ));
    assert!(err.is_fatal());
    assert_eq!(err.status(), Status::ErrTooLarge);
    assert_eq!(err.header().map(|h| h.req_id), Some(1));
    assert!(dec.buffer_capacity() <= HEADER_LEN, "no body was buffered");

    // The same header arriving in pieces is refused the moment its last byte lands.
    let mut dec = FrameDecoder::new(MAX);
    for b in &frame[..HEADER_LEN - 1] {
        assert_eq!(dec.decode(std::slice::from_ref(b)).1, Ok(None));
    }
    assert!(matches!(
        dec.decode(&frame[HEADER_LEN - 1..HEADER_LEN]).1,
        Err(DecodeError::BodyTooLong { .. })
    ));
    assert!(dec.buffer_capacity() <= 2 * HEADER_LEN);
}

#[test]
fn body_len_exactly_at_the_limit_is_accepted() {
    let body = vec![0xAB; MAX as usize];
    let mut frame = Vec::new();
    let head = FrameHead {
        flags: Flags::NONE,
        opcode: Opcode::Hello.as_u16(),
        status: 0,
        req_id: 3,
    };
    proto::frame::write_frame_with(&mut frame, head, body.len(), MAX, |o| {
        o.extend_from_slice(&body)
    })
    .expect("at the limit");
    let mut dec = FrameDecoder::new(MAX);
    let f = dec.decode(&frame).1.expect("valid").expect("whole");
    assert_eq!(f.body.len(), MAX as usize);
    // One more byte is refused by the encoder too.
    let mut out = Vec::new();
    assert_eq!(
        proto::frame::write_frame_with(&mut out, head, body.len() + 1, MAX, |_| {}),
        Err(EncodeError::BodyTooLong {
            body_len: MAX as usize + 1,
            body_len_max: MAX
        })
    );
    assert!(out.is_empty());
}

#[test]
fn the_buffer_never_holds_more_than_one_maximal_frame() {
    let body = vec![0x5A; MAX as usize];
    let mut stream = Vec::new();
    for req_id in 0..4 {
        let head = FrameHead {
            flags: Flags::NONE,
            opcode: Opcode::Hello.as_u16(),
            status: 0,
            req_id,
        };
        proto::frame::write_frame_with(&mut stream, head, body.len(), MAX, |o| {
            o.extend_from_slice(&body)
        })
        .expect("at the limit");
    }
    // Chunks that straddle frame boundaries everywhere.
    let mut dec = FrameDecoder::new(MAX);
    let mut frames = 0;
    for chunk in stream.chunks(777) {
        let mut input = chunk;
        loop {
            let (used, res) = dec.decode(input);
            input = &input[used..];
            let done = match res.expect("valid") {
                Some(f) => {
                    assert_eq!(f.header.req_id, frames);
                    assert_eq!(f.body, &body[..]);
                    frames += 1;
                    false
                }
                None => true,
            };
            assert!(dec.buffered_len() <= HEADER_LEN + MAX as usize);
            assert!(dec.buffer_capacity() <= HEADER_LEN + MAX as usize);
            if done {
                break;
            }
        }
    }
    assert_eq!(frames, 4);
}

#[test]
fn a_flipped_bit_in_the_body_fails_the_checksum_and_the_stream_goes_on() {
    let mut bad = deposit(1, 100);
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let mut stream = bad.clone();
    stream.extend_from_slice(&deposit(2, 200));
    let mut dec = FrameDecoder::new(MAX);
    let results = decode_all(&mut dec, &stream);
    assert_eq!(results.len(), 2);
    let err = results[0].as_ref().expect_err("checksum");
    assert!(matches!(err, DecodeError::BadChecksum { header, .. } if header.req_id == 1));
    assert!(!err.is_fatal());
    assert_eq!(err.status(), Status::ErrChecksumFail);
    assert_eq!(results[1].as_ref().map(|(id, _)| *id), Ok(2));
}

#[test]
fn a_flipped_bit_in_the_header_fails_the_checksum() {
    // Flip a bit in req_id: framing stays intact, the checksum catches it.
    let mut bad = deposit(1, 100);
    bad[offset::REQ_ID + 7] ^= 0x80;
    let res = decode_one(&bad);
    assert!(matches!(res, Err(DecodeError::BadChecksum { .. })));
    // A flipped bit in the checksum field itself is caught the same way.
    let mut bad = deposit(1, 100);
    bad[offset::CHECKSUM] ^= 0x01;
    let res = decode_one(&bad);
    assert!(matches!(res, Err(DecodeError::BadChecksum { .. })));
}

#[test]
fn reserved_bytes_must_be_zero() {
    let frame = with_header(&deposit(4, 1), |h| h.reserved[5] = 1);
    let err = decode_one(&frame).expect_err("reserved");
    assert!(matches!(err, DecodeError::ReservedNotZero { header } if header.req_id == 4));
    assert!(!err.is_fatal());
}

#[test]
fn undefined_flag_bits_are_refused() {
    let frame = with_header(&deposit(4, 1), |h| h.flags = 0b1000);
    let err = decode_one(&frame).expect_err("flags");
    assert!(matches!(err, DecodeError::UnknownFlags { .. }));
    assert!(!err.is_fatal());
}

#[test]
fn an_unknown_opcode_is_refused_with_its_req_id_and_the_stream_goes_on() {
    let mut stream = with_header(&deposit(11, 1), |h| h.opcode = 0x0999);
    stream.extend_from_slice(&deposit(12, 1));
    let results = decode_all(&mut FrameDecoder::new(MAX), &stream);
    let err = results[0].as_ref().expect_err("unknown opcode");
    assert!(
        matches!(err, DecodeError::UnknownOpcode { header } if header.opcode == 0x0999 && header.req_id == 11)
    );
    assert_eq!(err.status(), Status::ErrUnknownOpcode);
    assert_eq!(results[1].as_ref().map(|(id, _)| *id), Ok(12));
}

#[test]
fn unknown_status_and_status_in_a_request_are_refused() {
    let frame = with_header(&deposit(1, 1), |h| {
        h.flags = Flags::IS_RESPONSE;
        h.status = 0x7777;
    });
    let err = decode_one(&frame).expect_err("status");
    assert!(matches!(err, DecodeError::UnknownStatus { .. }));

    let frame = with_header(&deposit(1, 1), |h| h.status = Status::ErrNotFound.as_u16());
    let err = decode_one(&frame).expect_err("status");
    assert!(matches!(err, DecodeError::StatusNotZero { .. }));
}

#[test]
fn a_fatal_header_found_in_the_buffered_path_consumes_everything() {
    let frame = with_header(&deposit(1, 1), |h| h.magic = 0);
    let mut dec = FrameDecoder::new(MAX);
    assert_eq!(dec.decode(&frame[..10]), (10, Ok(None)));
    let rest = &frame[10..];
    assert_eq!(
        dec.decode(rest),
        (rest.len(), Err(DecodeError::BadMagic { found: 0 }))
    );
    assert!(!dec.is_idle());
}

#[test]
fn encoding_into_a_buffer_with_capacity_does_not_allocate() {
    let mut out = Vec::with_capacity(4096);
    let ptr = out.as_ptr();
    for req_id in 0..50 {
        write_request(
            &mut out,
            req_id,
            &Request::Deposit(AmountRequest { amount: req_id }),
            MAX,
        )
        .expect("small");
    }
    assert_eq!(out.as_ptr(), ptr, "the buffer was not reallocated");
    assert_eq!(out.capacity(), 4096);
    assert_eq!(out.len(), 50 * (HEADER_LEN + 8));
    let results = decode_all(&mut FrameDecoder::new(MAX), &out);
    assert_eq!(results.len(), 50);
    assert!(results.iter().all(Result::is_ok));
}

#[test]
fn error_responses_echo_the_opcode_and_cut_long_messages_on_a_char_boundary() {
    let mut out = Vec::new();
    let long = "é".repeat(200); // 400 bytes, two per char.
    write_error(&mut out, 77, 0x0999, Status::ErrUnknownOpcode, &long);
    let raw = RawHeader::parse(out[..HEADER_LEN].try_into().expect("32 bytes"));
    assert_eq!(raw.opcode, 0x0999);
    assert_eq!(raw.req_id, 77);
    assert_eq!(raw.flags, Flags::IS_RESPONSE);
    assert_eq!(raw.status, Status::ErrUnknownOpcode.as_u16());
    let body = ErrorBody::decode(&out[HEADER_LEN..]).expect("valid error body");
    assert_eq!(body.message.as_str().len(), 256);
    assert_eq!(body.message.as_str(), &long[..256]);
}

#[test]
fn write_frame_writes_what_a_body_encodes() {
    let mut out = Vec::new();
    let head = FrameHead {
        flags: Flags::NONE,
        opcode: Opcode::Deposit.as_u16(),
        status: 0,
        req_id: 1,
    };
    write_frame(&mut out, head, &AmountRequest { amount: 5 }, BODY_LEN_LIMIT).expect("small");
    assert_eq!(out, deposit(1, 5));
}
