//! Fuzz pxeroot-init's DHCP reply parser and the lease keeper's reading of
//! a reply: both take bytes any host on the segment can send. The checks
//! live in `../check_dhcp_reply.rs`, shared with `tests/fuzz_seeds.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

use pxeroot_init::{dhcp, lease};

include!("../check_dhcp_reply.rs");

fuzz_target!(|data: &[u8]| check_dhcp_reply(data));
