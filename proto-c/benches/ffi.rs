//! Encode + decode + verify + body parse of CHAT_SEND frames, through the C API (the
//! `extern "C"` functions of nsproto.h, called as C calls them) and through the Rust API, for
//! 32, 256 and 1024-byte bodies: frames/s of each and their ratio. One round encodes a buffer of
//! frames and decodes it back. `cargo bench -p proto-c` (machine otherwise idle).

use std::hint::black_box;
use std::time::{Duration, Instant};

use nsproto::*;
use proto::body::{ChatSendRequest, Text};
use proto::{FrameDecoder, Request, BODY_LEN_LIMIT, HEADER_LEN};

const FRAMES: usize = 2048;
const ROUNDS: usize = 7;
const ROUND_TIME: Duration = Duration::from_millis(300);

fn measure(mut round: impl FnMut()) -> f64 {
    round();
    let mut rates = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < ROUND_TIME {
            round();
            calls += 1;
        }
        rates.push(calls as f64 * FRAMES as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[ROUNDS / 2]
}

fn main() {
    println!("body_len,rust_frames_per_s,c_api_frames_per_s,c_api_over_rust");
    for body_len in [32usize, 256, 1024] {
        let text = "x".repeat(body_len - 6);
        let frame_len = HEADER_LEN + body_len;
        let mut buf = vec![0u8; FRAMES * frame_len];

        // Rust API.
        let mut out = Vec::with_capacity(buf.len());
        let mut dec = FrameDecoder::new(BODY_LEN_LIMIT);
        let rust = measure(|| {
            out.clear();
            for i in 0..FRAMES {
                let req = Request::ChatSend(ChatSendRequest {
                    room_id: 1,
                    text: Text::new(black_box(&text)).expect("fits"),
                });
                proto::write_request(&mut out, i as u64, &req, BODY_LEN_LIMIT).expect("fits");
            }
            let mut input = &out[..];
            let mut n = 0;
            loop {
                let (used, r) = dec.decode(input);
                input = &input[used..];
                match r {
                    Ok(Some(f)) => match f.request() {
                        Ok(Request::ChatSend(c)) => {
                            black_box(c.text.as_str().len());
                            n += 1;
                        }
                        other => panic!("{other:?}"),
                    },
                    Ok(None) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(n, FRAMES);
        });

        // C API.
        let d = ns_decoder_new(BODY_LEN_LIMIT);
        let c_api = measure(|| {
            let mut at = 0usize;
            for i in 0..FRAMES {
                let req = ns_request {
                    opcode: NS_OP_CHAT_SEND,
                    body: ns_request_body {
                        chat_send: ns_chat_send_req {
                            room_id: 1,
                            text: ns_bytes {
                                ptr: black_box(text.as_ptr()),
                                len: text.len(),
                            },
                        },
                    },
                };
                let mut w = 0usize;
                // SAFETY: `req` valid, the buffer has room from `at`.
                let rc = unsafe {
                    ns_encode_request(
                        i as u64,
                        &req,
                        buf.as_mut_ptr().add(at),
                        buf.len() - at,
                        &mut w,
                    )
                };
                assert_eq!(rc, NS_OK);
                at += w;
            }
            let mut input = &buf[..at];
            let mut n = 0;
            loop {
                let (mut used, mut f) = (0usize, ns_frame::default());
                // SAFETY: `d` live, `input` valid, outputs writable.
                let rc =
                    unsafe { ns_decoder_decode(d, input.as_ptr(), input.len(), &mut used, &mut f) };
                input = &input[used..];
                match rc {
                    1 => {
                        let mut r = ns_request {
                            opcode: 0,
                            body: ns_request_body {
                                amount: ns_amount_req { amount: 0 },
                            },
                        };
                        // SAFETY: `f` valid until the next decode.
                        assert_eq!(unsafe { ns_decode_request(&f, &mut r) }, NS_OK);
                        // SAFETY: a CHAT_SEND request's member.
                        black_box(unsafe { r.body.chat_send.text.len });
                        n += 1;
                    }
                    0 => break,
                    e => panic!("{e}"),
                }
            }
            assert_eq!(n, FRAMES);
        });
        // SAFETY: from ns_decoder_new, freed once.
        unsafe { ns_decoder_free(d) };
        println!("{body_len},{rust:.0},{c_api:.0},{:.2}", c_api / rust);
    }
}
