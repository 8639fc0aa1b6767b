//! An IPv6 router advertisement responder for segments without an IPv6
//! router. iPXE waits about 16 s for IPv6 autoconfiguration to give up
//! when nothing answers; one router advertisement with router lifetime 0
//! (RFC 4861: "not a default router") and no prefixes ends that wait at once
//! without giving anyone a route. Answers router solicitations and repeats
//! itself every few seconds. Off by default.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
/// All-nodes and all-routers link-local multicast groups.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// RFC 4861: neighbour discovery packets must carry hop limit 255.
const ND_HOP_LIMIT: u32 = 255;
/// Unsolicited advertisements: often enough that a client's first
/// solicitation rarely goes unanswered for long.
pub const RA_INTERVAL: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RaError {
    #[error("cannot send router advertisements on {interface}")]
    Socket {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// A router advertisement with router lifetime 0 and no options. The kernel
/// fills in the checksum for ICMPv6 raw sockets.
pub fn advertisement() -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = ICMPV6_ROUTER_ADVERTISEMENT;
    // code 0, checksum 0 (kernel), cur hop limit 64, flags M=0 O=0,
    // router lifetime 0, reachable time 0, retrans timer 0.
    p[4] = 64;
    p
}

/// Whether an ICMPv6 message is a router solicitation.
pub fn is_solicitation(msg: &[u8]) -> bool {
    msg.first() == Some(&ICMPV6_ROUTER_SOLICITATION) && msg.get(1) == Some(&0)
}

/// Advertise on `interface` until `shutdown`.
pub async fn serve(interface: String, shutdown: CancellationToken) -> Result<(), RaError> {
    let err = |source| RaError::Socket { interface: interface.clone(), source };
    let index = nix::net::if_::if_nametoindex(interface.as_str()).map_err(|e| err(e.into()))?;
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::RAW, Some(socket2::Protocol::ICMPV6)).map_err(err)?;
    s.bind_device(Some(interface.as_bytes())).map_err(err)?;
    s.set_multicast_if_v6(index).map_err(err)?;
    s.set_multicast_hops_v6(ND_HOP_LIMIT).map_err(err)?;
    s.set_unicast_hops_v6(ND_HOP_LIMIT).map_err(err)?;
    s.join_multicast_v6(&ALL_ROUTERS, index).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    let sock = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(s)).map_err(err)?;
    let to = SocketAddr::V6(SocketAddrV6::new(ALL_NODES, 0, 0, index));
    info!(%interface, "IPv6 router advertisements (lifetime 0) on");
    let ra = advertisement();
    let mut tick = tokio::time::interval(RA_INTERVAL);
    let mut buf = [0u8; 1500];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) if is_solicitation(&buf[..n]) => debug!(%from, "router solicitation"),
                Ok(_) => continue,
                Err(e) => {
                    warn!(error = %e, "receiving ICMPv6 failed");
                    continue;
                }
            },
        }
        if let Err(e) = sock.send_to(&ra, to).await {
            // DAD may not have given us a link-local address yet.
            debug!(error = %e, "sending a router advertisement failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_advertisement_says_not_a_router() {
        let p = advertisement();
        assert_eq!(p[0], 134);
        assert_eq!(u16::from_be_bytes([p[6], p[7]]), 0, "router lifetime must be 0");
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[134, 0]));
        assert!(!is_solicitation(&[]));
    }
}
