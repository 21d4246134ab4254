//! The frame decoder on arbitrary bytes, split into chunks chosen by the first byte.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| proto::fuzz::decoder(data));
