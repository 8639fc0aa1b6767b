//! DHCP on the wire for /init and the lease keeper: the socket on port 68,
//! one DISCOVER/OFFER/REQUEST/ACK exchange and its retries, the DHCPINFORM
//! for what iPXE's lease lacks. The packets themselves are `dhcp`'s (pure).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::console::Console;
use crate::error::{Context, InitError};
use crate::{dhcp, handoff, sys};

/// How long the answer to a DHCPINFORM is waited for, from its sending.
/// It is sent before the NBD handshake and read after the attach, beside
/// the mount: an answer within that costs the boot nothing, and so does
/// a server that never answers unless the root mounts sooner than this.
pub(crate) const INFORM_WAIT: Duration = Duration::from_millis(250);

/// A DHCPINFORM on its way (`dhcp::inform`): unicast to the server that
/// leased the address, its answer read by `answer`.
pub(crate) struct Inform {
    pub(crate) sock: std::net::UdpSocket,
    pub(crate) xid: u32,
    pub(crate) mac: [u8; 6],
    pub(crate) server: std::net::Ipv4Addr,
    pub(crate) sent: Instant,
}

impl Inform {
    pub(crate) fn send(iface: &str, mac: [u8; 6], address: std::net::Ipv4Addr, server: std::net::Ipv4Addr) -> Result<Inform, InitError> {
        let sock = dhcp_socket(Via::Name(iface)).with_context(|| format!("opening UDP port 68 on {iface}"))?;
        let xid = new_xid(mac, 0);
        sock.send_to(&dhcp::inform(xid, mac, address), (server, 67)).context("sending it")?;
        Ok(Inform { sock, xid, mac, server, sent: Instant::now() })
    }

    /// What the server's ACK names; nothing when it said NAK or did not
    /// answer within `INFORM_WAIT` of the sending (said on the console).
    pub(crate) fn answer(self, con: &Console, iface: &str) -> handoff::NetServices {
        let reply = await_reply(&self.sock, self.xid, self.mac, dhcp::ACK, self.sent + INFORM_WAIT);
        informed(reply, self.server).unwrap_or_else(|why| {
            con.say(format_args!("{iface}: {why}: the root gets no NTP servers from DHCP"));
            handoff::NetServices::default()
        })
    }
}

/// What the answer to a DHCPINFORM (`await_reply`'s: an ACK, a NAK or
/// none) gives the root, or why it gives nothing.
pub(crate) fn informed(reply: Option<dhcp::Lease>, server: std::net::Ipv4Addr) -> Result<handoff::NetServices, InitError> {
    match reply {
        Some(ack) if ack.message_type == dhcp::ACK => Ok(handoff::NetServices::from_reply(&ack)),
        Some(_) => Err(InitError::new(format!("{server} answered the DHCPINFORM with a NAK"))),
        None => Err(InitError::new(format!("no answer to DHCPINFORM from {server} within {INFORM_WAIT:?}"))),
    }
}

/// How long one DHCP exchange waits for each reply.
pub(crate) const DHCP_REPLY_WAIT: Duration = Duration::from_secs(2);

/// A lease pxeroot-init got, and when (boot clock, seconds) the exchange
/// that got it started: the lease's times count from then.
pub(crate) struct Leased {
    pub(crate) lease: dhcp::Lease,
    pub(crate) sent: u64,
}

/// DISCOVER, take the first OFFER, REQUEST it, wait for the ACK. Retried
/// forever with backoff: a DHCP server may be slow to come up.
pub(crate) fn dhcp_with_retry(con: &Console, iface: &str, mac: [u8; 6]) -> Leased {
    let mut backoff = Duration::from_millis(500);
    let mut attempt = 1u32;
    loop {
        let t = Instant::now();
        let sent = sys::boottime_secs();
        match dhcp_once(iface, mac, attempt) {
            Ok(l) => {
                con.say(format_args!("DHCP on {iface}: {} from {:?} ({:.3} s)", l.address, l.server_id, t.elapsed().as_secs_f64()));
                return Leased { lease: l, sent };
            }
            Err(e) => con.say(format_args!("DHCP on {iface} failed (attempt {attempt}): {e}; is a DHCP server on this segment? retrying")),
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt += 1;
    }
}

/// An interface's index (`/sys/class/net/IFACE/ifindex`).
pub(crate) fn ifindex(iface: &str) -> Result<u32, InitError> {
    let path = format!("/sys/class/net/{iface}/ifindex");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.trim().parse().map_err(|_| InitError::new(format!("{path}: {text:?} is not an interface index")))
}

/// The interface a DHCP socket sends and receives through.
pub(crate) enum Via<'a> {
    Name(&'a str),
    Index(u32),
}

/// A UDP socket on the DHCP client port of an interface, for broadcasts too.
pub(crate) fn dhcp_socket(via: Via) -> std::io::Result<std::net::UdpSocket> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:68")?;
    sock.set_broadcast(true)?;
    match via {
        Via::Name(name) => sys::bind_to_device(sock.as_raw_fd(), name)?,
        Via::Index(index) => sys::bind_to_ifindex(sock.as_raw_fd(), index)?,
    }
    sock.set_read_timeout(Some(DHCP_REPLY_WAIT))?;
    Ok(sock)
}

pub(crate) fn new_xid(mac: [u8; 6], attempt: u32) -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    nanos ^ u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ attempt
}

/// The first reply for `xid` that is `kind` or a NAK, before `deadline`;
/// past it, one that has arrived already.
pub(crate) fn await_reply(sock: &std::net::UdpSocket, xid: u32, mac: [u8; 6], kind: u8, deadline: Instant) -> Option<dhcp::Lease> {
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // (A socket a past call left non-blocking blocks again here.)
        let waits = if left.is_zero() {
            sock.set_nonblocking(true)
        } else {
            sock.set_nonblocking(false).and_then(|()| sock.set_read_timeout(Some(left)))
        };
        waits.ok()?;
        // A timeout, or nothing more queued.
        let n = sock.recv(&mut buf).ok()?;
        match dhcp::parse_reply(&buf[..n], xid, mac) {
            Some(l) if l.message_type == kind || l.message_type == dhcp::NAK => return Some(l),
            _ => {}
        }
    }
}

pub(crate) fn dhcp_once(iface: &str, mac: [u8; 6], attempt: u32) -> Result<dhcp::Lease, InitError> {
    let sock = dhcp_socket(Via::Name(iface)).with_context(|| format!("opening UDP port 68 on {iface}"))?;
    let xid = new_xid(mac, attempt);
    let to = "255.255.255.255:67";
    let wait_for = |kind: u8| -> Result<dhcp::Lease, InitError> {
        match await_reply(&sock, xid, mac, kind, Instant::now() + DHCP_REPLY_WAIT) {
            Some(l) if l.message_type == dhcp::NAK => Err(InitError::new("the server said NAK")),
            Some(l) => Ok(l),
            None => Err(InitError::new(format!("no {} within {DHCP_REPLY_WAIT:?}", if kind == dhcp::OFFER { "OFFER" } else { "ACK" }))),
        }
    };
    sock.send_to(&dhcp::discover(xid, mac), to).context("sending DISCOVER")?;
    let offer = wait_for(dhcp::OFFER)?;
    sock.send_to(&dhcp::request(xid, mac, &offer), to).context("sending REQUEST")?;
    wait_for(dhcp::ACK)
}

/// Backoff between attempts to reach the server: doubles up to this.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// An ACK for `xid`: a DISCOVER turned into a reply.
    fn ack(xid: u32) -> Vec<u8> {
        let mut m = dhcp::discover(xid, MAC);
        m[0] = 2; // BOOTREPLY
        m[242] = dhcp::ACK; // option 53's value
        m
    }

    /// The deadline is kept, past it only what has arrived is read, and a
    /// call after one that ended past its deadline waits again (the lease
    /// keeper sends up to three times on one socket).
    #[test]
    fn await_reply_waits_until_its_deadline_and_no_longer() {
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = client.local_addr().unwrap();
        // Past the deadline: a queued reply is still read, then nothing.
        server.send_to(&ack(7), to).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(await_reply(&client, 7, MAC, dhcp::ACK, past).map(|l| l.message_type), Some(dhcp::ACK));
        let t = Instant::now();
        assert!(await_reply(&client, 7, MAC, dhcp::ACK, past).is_none());
        assert!(t.elapsed() < Duration::from_millis(100), "waited past its deadline");
        // Another exchange's reply is skipped; the deadline ends the wait.
        server.send_to(&ack(8), to).unwrap();
        let t = Instant::now();
        assert!(await_reply(&client, 7, MAC, dhcp::ACK, t + Duration::from_millis(150)).is_none());
        assert!((Duration::from_millis(140)..Duration::from_secs(2)).contains(&t.elapsed()), "{:?}", t.elapsed());
        // After a call that ended past its deadline, a reply that comes
        // 100 ms later within the next deadline is read.
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            server.send_to(&ack(9), to).unwrap();
        });
        assert_eq!(
            await_reply(&client, 9, MAC, dhcp::ACK, Instant::now() + Duration::from_secs(2)).map(|l| l.message_type),
            Some(dhcp::ACK)
        );
        late.join().unwrap();
    }

    /// An INFORM's ACK gives its NTP servers; a NAK and silence give
    /// nothing, each said as what it is.
    #[test]
    fn informed_tells_a_nak_from_silence() {
        let server = std::net::Ipv4Addr::new(10, 99, 0, 1);
        let mut ack = dhcp::Lease::bare(dhcp::ACK, std::net::Ipv4Addr::UNSPECIFIED);
        ack.ntp = vec![std::net::Ipv4Addr::new(192, 0, 2, 123)];
        assert_eq!(informed(Some(ack), server).unwrap().ntp, vec![std::net::Ipv4Addr::new(192, 0, 2, 123)]);
        let nak = informed(Some(dhcp::Lease::bare(dhcp::NAK, std::net::Ipv4Addr::UNSPECIFIED)), server).unwrap_err().to_string();
        assert_eq!(nak, "10.99.0.1 answered the DHCPINFORM with a NAK");
        let silence = informed(None, server).unwrap_err().to_string();
        assert_eq!(silence, "no answer to DHCPINFORM from 10.99.0.1 within 250ms");
    }
}
