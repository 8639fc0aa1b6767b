//! Fuzz the NBD decoders the server runs on untrusted bytes. The checks live
//! in `../check_nbd_decode.rs`, shared with `tests/fuzz_seeds.rs`, which
//! replays the seed corpus on stable Rust in every test run.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../check_nbd_decode.rs");

fuzz_target!(|data: &[u8]| check_nbd_decode(data));
