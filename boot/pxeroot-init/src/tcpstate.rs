//! Whether the kernel still holds an open TCP connection to the NBD
//! server, from `/proc/net/tcp`'s text. Pure: the caller reads the file.
//! pxeroot-disconnect waits on it so the NBD DISC reaches the server
//! before the machine powers off (QEMU, and a real NIC, can drop a packet
//! still queued when the power goes).

use std::net::{Ipv4Addr, SocketAddrV4};

/// TCP states in which our side has not yet seen the server close:
/// ESTABLISHED and FIN_WAIT1 (include/net/tcp_states.h).
const STILL_OPEN: [u8; 2] = [0x01, 0x04];

/// `0100630A:2A29` (address as the kernel's little-endian hex, port) to an address.
fn addr(field: &str) -> Option<SocketAddrV4> {
    let (ip, port) = field.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_le_bytes()), port))
}

/// True while some connection to `server` in `proc_net_tcp` is open from
/// our side (the server has not closed it yet).
pub fn open_to(proc_net_tcp: &str, server: SocketAddrV4) -> bool {
    proc_net_tcp.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let state = f.get(3).and_then(|s| u8::from_str_radix(s, 16).ok());
        f.get(2).and_then(|r| addr(r)) == Some(server) && state.is_some_and(|s| STILL_OPEN.contains(&s))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    #[test]
    fn test_open_until_the_server_closes() {
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 10809);
        let line =
            |st: &str| format!("{HEAD}   0: 0200630A:D1A2 0100630A:2A39 {st} 00000000:00000000 00:00000000 00000000     0        0 0 1\n");
        assert!(open_to(&line("01"), server), "ESTABLISHED");
        assert!(open_to(&line("04"), server), "FIN_WAIT1: our FIN not acknowledged");
        assert!(!open_to(&line("08"), server), "CLOSE_WAIT: the server closed");
        assert!(!open_to(&line("06"), server), "TIME_WAIT");
        assert!(!open_to(HEAD, server), "no connection");
        // Another server, or garbage: not ours.
        assert!(!open_to(&line("01"), SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 80)));
        assert!(!open_to(&format!("{HEAD}garbage\n 1: x y z\n"), server));
    }
}
