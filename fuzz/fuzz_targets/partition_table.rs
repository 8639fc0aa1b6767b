//! Fuzz the partition table and superblock readers: pxeroot reads them from
//! every base image at start, and pxeroot-init from the client's own
//! overlay, which the client itself wrote. The checks live in
//! `../check_partition_table.rs`, shared with `tests/fuzz_seeds.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../check_partition_table.rs");

fuzz_target!(|data: &[u8]| check_partition_table(data));
