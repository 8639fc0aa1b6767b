//! pxeroot-init's pure parts, as a library: the kernel command line, the
//! DHCP client codec and the lease schedule, the files handed to the root,
//! the NBD netlink messages, /proc/net/tcp. No I/O here: the binary
//! (`main.rs` and its stage modules) owns every socket, file and syscall.
//! fuzz/ and the root package's tests use these through the library.
#![forbid(unsafe_code)]

pub mod cmdline;
pub mod dhcp;
pub mod handoff;
pub mod lease;
pub mod netlink;
pub mod tcpstate;

/// A MAC address as the kernel writes it (`52:54:00:12:34:56`).
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
