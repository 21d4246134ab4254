//! Every body parser on arbitrary bytes; the first two bytes pick the opcode and the kind.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| proto::fuzz::bodies(data));
