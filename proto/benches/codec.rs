//! Frame throughput on one core: decode+verify (header checks and CRC-32 over header and body),
//! decode+verify+parse of a typed CHAT_SEND body, and encode, for 32, 256 and 1024-byte bodies.
//!
//! `cargo bench -p proto` prints a table and the same figures as CSV. Each figure is the median
//! of several timed rounds over a buffer of many frames, after a warm-up round. Run it with the
//! machine otherwise idle, or pinned (`taskset -c 1 cargo bench -p proto`), for steady numbers.

use std::hint::black_box;
use std::time::{Duration, Instant};

use proto::body::{ChatSendRequest, Text};
use proto::frame::write_frame_with;
use proto::{Flags, FrameDecoder, FrameHead, Opcode, Request, BODY_LEN_LIMIT, HEADER_LEN};

const FRAMES_PER_BUFFER: usize = 4096;
const ROUNDS: usize = 7;
const ROUND_TIME: Duration = Duration::from_millis(400);

/// A CHAT_SEND frame whose body is exactly `body_len` bytes (room id, length prefix, ASCII text).
fn chat_send_frame(out: &mut Vec<u8>, req_id: u64, text: &str) {
    let req = Request::ChatSend(ChatSendRequest {
        room_id: 1,
        text: Text::new(text).expect("bench text fits"),
    });
    proto::write_request(out, req_id, &req, BODY_LEN_LIMIT).expect("fits");
}

fn text_for(body_len: usize) -> String {
    // CHAT_SEND's body is room_id (4) + length (2) + text.
    "x".repeat(body_len - 6)
}

/// Runs `round` repeatedly for ROUND_TIME, ROUNDS times; returns the median of items/second,
/// where one call of `round` handles `items` items.
fn measure(items: usize, mut round: impl FnMut()) -> f64 {
    round(); // Warm-up: caches, branch predictors, page faults in the buffers.
    let mut rates = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < ROUND_TIME {
            round();
            calls += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        rates.push(calls as f64 * items as f64 / secs);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[ROUNDS / 2]
}

struct Row {
    op: &'static str,
    body_len: usize,
    frames_per_s: f64,
}

fn main() {
    let mut rows = Vec::new();
    for body_len in [32usize, 256, 1024] {
        let text = text_for(body_len);
        let mut stream = Vec::with_capacity(FRAMES_PER_BUFFER * (HEADER_LEN + body_len));
        for i in 0..FRAMES_PER_BUFFER {
            chat_send_frame(&mut stream, i as u64, &text);
        }
        assert_eq!(stream.len(), FRAMES_PER_BUFFER * (HEADER_LEN + body_len));
        let mut dec = FrameDecoder::new(BODY_LEN_LIMIT);

        // Decode+verify: split the buffer into frames, check every header and checksum.
        let rate = measure(FRAMES_PER_BUFFER, || {
            let mut input = black_box(&stream[..]);
            let mut n = 0usize;
            loop {
                let (used, res) = dec.decode(input);
                input = &input[used..];
                match res {
                    Ok(Some(f)) => {
                        black_box(f.header.req_id);
                        n += 1;
                    }
                    Ok(None) => break,
                    Err(e) => panic!("bench frame refused: {e}"),
                }
            }
            assert_eq!(n, FRAMES_PER_BUFFER);
        });
        rows.push(Row {
            op: "decode+verify",
            body_len,
            frames_per_s: rate,
        });

        // The same, plus decoding the typed body (UTF-8 check of the text included).
        let rate = measure(FRAMES_PER_BUFFER, || {
            let mut input = black_box(&stream[..]);
            loop {
                let (used, res) = dec.decode(input);
                input = &input[used..];
                match res {
                    Ok(Some(f)) => match f.request() {
                        Ok(Request::ChatSend(c)) => {
                            black_box(c.text.as_str().len());
                        }
                        other => panic!("bench body refused: {other:?}"),
                    },
                    Ok(None) => break,
                    Err(e) => panic!("bench frame refused: {e}"),
                }
            }
        });
        rows.push(Row {
            op: "decode+verify+body",
            body_len,
            frames_per_s: rate,
        });

        // Encode: header, body and checksum into a buffer that already has the capacity, as a
        // worker's output queue does.
        let body = vec![b'x'; body_len];
        let mut out = Vec::with_capacity(stream.len());
        let head = FrameHead {
            flags: Flags::RESPONSE,
            opcode: Opcode::ChatSend.as_u16(),
            status: 0,
            req_id: 0,
        };
        let rate = measure(FRAMES_PER_BUFFER, || {
            out.clear();
            for i in 0..FRAMES_PER_BUFFER as u64 {
                let head = FrameHead { req_id: i, ..head };
                write_frame_with(&mut out, head, body_len, BODY_LEN_LIMIT, |o| {
                    o.extend_from_slice(black_box(&body))
                })
                .expect("fits");
            }
            black_box(out.as_ptr());
        });
        rows.push(Row {
            op: "encode",
            body_len,
            frames_per_s: rate,
        });
    }

    println!(
        "proto codec throughput, one thread, {} cores on this machine",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<20} {:>9} {:>10} {:>14} {:>9}",
        "op", "body_B", "frame_B", "Mframes/s", "GB/s"
    );
    let mut csv = String::from("op,body_bytes,frame_bytes,frames_per_s,gb_per_s\n");
    for r in &rows {
        let frame_len = HEADER_LEN + r.body_len;
        let gb_per_s = r.frames_per_s * frame_len as f64 / 1e9;
        println!(
            "{:<20} {:>9} {:>10} {:>14.2} {:>9.2}",
            r.op,
            r.body_len,
            frame_len,
            r.frames_per_s / 1e6,
            gb_per_s
        );
        csv.push_str(&format!(
            "{},{},{},{:.0},{:.3}\n",
            r.op, r.body_len, frame_len, r.frames_per_s, gb_per_s
        ));
    }
    println!();
    print!("{csv}");
}
