//! Prints the sample frames as the fenced hex dumps `docs/PROTOCOL.md` holds, or with
//! `--seeds DIR` writes them as fuzzing seeds: one file per frame for `bodies` (opcode index,
//! kind, body) and for `decoder` (split byte, frame).
//!
//! `cargo run -p proto --example frames [-- --seeds fuzz/seeds]`

use std::path::PathBuf;

use proto::{Opcode, RawHeader, HEADER_LEN};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let samples = proto::fuzz::sample_frames();
    if let [flag, dir] = args.as_slice() {
        if flag == "--seeds" {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(dir.join("decoder"))?;
            std::fs::create_dir_all(dir.join("bodies"))?;
            let mut all = vec![7u8];
            for (label, frame) in &samples {
                let mut d = vec![63u8];
                d.extend_from_slice(frame);
                std::fs::write(dir.join("decoder").join(label), d)?;
                all.extend_from_slice(frame);
                let raw = RawHeader::parse(frame[..HEADER_LEN].try_into().expect("32 bytes"));
                let index = Opcode::ALL
                    .iter()
                    .position(|o| o.as_u16() == raw.opcode)
                    .unwrap_or(0);
                let kind = if raw.flags & 0b100 != 0 {
                    0x80 | (if raw.status == 0 { 0 } else { 2 })
                } else {
                    0
                };
                let mut b = vec![index as u8, kind];
                b.extend_from_slice(&frame[HEADER_LEN..]);
                std::fs::write(dir.join("bodies").join(label), b)?;
            }
            std::fs::write(dir.join("decoder").join("all-frames"), all)?;
            return Ok(());
        }
    }
    for (label, frame) in &samples {
        println!("```hex {label}");
        for line in frame.chunks(16) {
            let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
            println!("{}", hex.join(" "));
        }
        println!("```");
    }
    Ok(())
}
