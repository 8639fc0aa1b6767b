//! Keeping the DHCP lease of the address the root is reached through, sans-IO
//! (RFC 2131, 4.4.5): when to renew (unicast to the server that granted the
//! lease, from T1), when to rebind (broadcast to any server, from T2), and
//! what a reply means. A diskless client cannot give its address up when
//! the lease ends (the root's connection is bound to it), and an expired
//! lease lets the DHCP server hand the address to another machine, or a
//! switch's DHCP snooping drop the client's traffic. The process that
//! does the I/O, `@pxeroot-dhcp`, is in `main.rs`.
//!
//! Times are whole seconds on the boot clock (CLOCK_BOOTTIME): the lease
//! iPXE got is counted from the kernel's start, a little after the server
//! granted it, which T1's margin (half the lease) absorbs.

use std::net::Ipv4Addr;

use crate::dhcp;

/// RFC 2131, 4.4.5: after an unanswered REQUEST, wait half the time left
/// until T2 (renewing) or the lease's end (rebinding), but at least this.
pub const MIN_RETRY_SECS: u64 = 60;

/// A lease being kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub address: Ipv4Addr,
    /// The server that granted it (option 54); unknown: rebind only.
    pub server: Option<Ipv4Addr>,
    /// When it was granted (the REQUEST's time, RFC 2131 4.4.5).
    pub granted: u64,
    pub secs: u32,
    /// T1 and T2, seconds after `granted`.
    pub t1: u32,
    pub t2: u32,
}

impl Held {
    /// A lease of `secs` granted at `granted`, with the server's T1 and T2
    /// when they make sense (0 < T1 < T2 < lease), else RFC 2131's defaults
    /// (half and seven eighths of the lease). `None` for an infinite or
    /// empty lease: nothing to keep.
    pub fn new(address: Ipv4Addr, server: Option<Ipv4Addr>, granted: u64, secs: u32, t1: Option<u32>, t2: Option<u32>) -> Option<Held> {
        if secs == dhcp::INFINITE || secs == 0 {
            return None;
        }
        let (d1, d2) = (secs / 2, (u64::from(secs) * 7 / 8) as u32);
        let (t1, t2) = match (t1, t2) {
            (Some(a), Some(b)) if 0 < a && a < b && b < secs => (a, b),
            (Some(a), None) if 0 < a && a < d2 => (a, d2),
            (None, Some(b)) if d1 < b && b < secs => (d1, b),
            _ => (d1, d2),
        };
        Some(Held { address, server, granted, secs, t1, t2 })
    }

    pub fn renew_at(&self) -> u64 {
        self.granted + u64::from(self.t1)
    }

    pub fn rebind_at(&self) -> u64 {
        self.granted + u64::from(self.t2)
    }

    pub fn ends_at(&self) -> u64 {
        self.granted + u64::from(self.secs)
    }
}

/// How to ask for more time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// RENEWING: unicast to the server that granted the lease.
    Renew(Ipv4Addr),
    /// REBINDING: broadcast to any server.
    Rebind,
}

/// When to ask next, and how, given the last unanswered attempt since the
/// lease was granted (`None`: there was none). Past its end the lease is
/// still asked for, every [`MIN_RETRY_SECS`]: the address stays in use.
pub fn next(held: &Held, last_try: Option<u64>) -> (u64, Ask) {
    let (t1, t2, end) = (held.renew_at(), held.rebind_at(), held.ends_at());
    let when = match last_try {
        None => t1,
        Some(last) if last < t2 => (last + ((t2 - last) / 2).max(MIN_RETRY_SECS)).min(t2),
        Some(last) if last < end => (last + ((end - last) / 2).max(MIN_RETRY_SECS)).min(end),
        Some(last) => last + MIN_RETRY_SECS,
    };
    let ask = match held.server {
        Some(s) if when < t2 => Ask::Renew(s),
        _ => Ask::Rebind,
    };
    (when, ask)
}

/// Why a reply did not extend the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// DHCPNAK: the server says the address is not this client's.
    Nak { server: Option<Ipv4Addr> },
    /// An ACK for another address, or with no lease time.
    Odd(String),
}

/// The lease after `reply` to a REQUEST sent at `sent`: `Ok(None)` when the
/// server made it infinite (nothing more to keep).
pub fn answered(held: &Held, reply: &dhcp::Lease, sent: u64) -> Result<Option<Held>, Refused> {
    match reply.message_type {
        dhcp::ACK if reply.address != held.address => {
            Err(Refused::Odd(format!("an ACK for {} instead of {}", reply.address, held.address)))
        }
        dhcp::ACK => match reply.lease_secs {
            Some(dhcp::INFINITE) => Ok(None),
            Some(secs) => Ok(Held::new(held.address, reply.server_id.or(held.server), sent, secs, reply.renew_secs, reply.rebind_secs)),
            None => Err(Refused::Odd("an ACK without a lease time".into())),
        },
        dhcp::NAK => Err(Refused::Nak { server: reply.server_id }),
        other => Err(Refused::Odd(format!("a DHCP message of type {other}"))),
    }
}

/// What the lease keeper is started with: `IFINDEX MAC ADDRESS SERVER|-
/// GRANTED SECS T1 T2 DEBUG(0|1)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperArgs {
    /// The boot interface, by index: the root's udev may rename it.
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub held: Held,
    pub debug: bool,
}

impl KeeperArgs {
    pub fn to_args(&self) -> Vec<String> {
        let h = &self.held;
        let mac = self.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let server = h.server.map_or("-".to_string(), |s| s.to_string());
        [self.ifindex.to_string(), mac, h.address.to_string(), server]
            .into_iter()
            .chain([h.granted, u64::from(h.secs), u64::from(h.t1), u64::from(h.t2), u64::from(self.debug)].map(|n| n.to_string()))
            .collect()
    }

    pub fn parse(args: &[String]) -> Option<KeeperArgs> {
        let [ifindex, mac, address, server, granted, secs, t1, t2, debug] = args else { return None };
        let mut m = [0u8; 6];
        let mut parts = mac.split(':');
        for b in m.iter_mut() {
            *b = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        let server = if server == "-" { None } else { Some(server.parse().ok()?) };
        let held = Held {
            address: address.parse().ok()?,
            server,
            granted: granted.parse().ok()?,
            secs: secs.parse().ok()?,
            t1: t1.parse().ok()?,
            t2: t2.parse().ok()?,
        };
        Some(KeeperArgs { ifindex: ifindex.parse().ok()?, mac: m, held, debug: debug == "1" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 7);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn held() -> Held {
        Held::new(ADDR, Some(SERVER), 100, 3600, None, None).unwrap()
    }

    fn ack(secs: Option<u32>) -> dhcp::Lease {
        dhcp::Lease { server_id: Some(SERVER), lease_secs: secs, ..dhcp::Lease::bare(dhcp::ACK, ADDR) }
    }

    #[test]
    fn test_defaults_and_the_servers_times() {
        let h = held();
        assert_eq!((h.t1, h.t2), (1800, 3150), "RFC 2131 defaults: 0.5 and 0.875 of the lease");
        let given = Held::new(ADDR, None, 0, 120, Some(15), Some(100)).unwrap();
        assert_eq!((given.t1, given.t2), (15, 100));
        // Times that make no sense fall back to the defaults.
        for (t1, t2) in [(Some(0), None), (Some(200), None), (Some(90), Some(60)), (None, Some(120)), (None, Some(30))] {
            let h = Held::new(ADDR, None, 0, 120, t1, t2).unwrap();
            assert!(0 < h.t1 && h.t1 < h.t2 && h.t2 < 120, "{t1:?} {t2:?}: {h:?}");
        }
        assert_eq!(Held::new(ADDR, None, 0, 120, Some(15), None).unwrap().t2, 105);
        assert!(Held::new(ADDR, None, 0, dhcp::INFINITE, None, None).is_none(), "an infinite lease needs no keeping");
        assert!(Held::new(ADDR, None, 0, 0, None, None).is_none());
    }

    #[test]
    fn test_renews_at_t1_then_retries_by_halves_then_rebinds() {
        let h = held(); // granted at 100: T1 1900, T2 3250, end 3700
        assert_eq!(next(&h, None), (1900, Ask::Renew(SERVER)));
        // Unanswered at T1: half the time to T2.
        assert_eq!(next(&h, Some(1900)), (2575, Ask::Renew(SERVER)));
        // Close to T2, the 60 s floor, then T2 itself (rebinding).
        assert_eq!(next(&h, Some(3150)), (3210, Ask::Renew(SERVER)));
        assert_eq!(next(&h, Some(3200)), (3250, Ask::Rebind));
        assert_eq!(next(&h, Some(3250)), (3475, Ask::Rebind));
        assert_eq!(next(&h, Some(3650)), (3700, Ask::Rebind));
        // Past the end: every minute, for as long as it takes.
        assert_eq!(next(&h, Some(3700)), (3760, Ask::Rebind));
        assert_eq!(next(&h, Some(9000)), (9060, Ask::Rebind));
        // No known server: rebinding only.
        let anon = Held { server: None, ..h };
        assert_eq!(next(&anon, None), (1900, Ask::Rebind));
    }

    #[test]
    fn test_answers() {
        let h = held();
        let renewed = answered(&h, &ack(Some(600)), 2000).unwrap().unwrap();
        assert_eq!((renewed.granted, renewed.secs, renewed.renew_at(), renewed.server), (2000, 600, 2300, Some(SERVER)));
        assert_eq!(answered(&h, &ack(Some(dhcp::INFINITE)), 2000), Ok(None));
        assert!(matches!(answered(&h, &ack(None), 2000), Err(Refused::Odd(_))));
        let other = dhcp::Lease { address: Ipv4Addr::new(10, 0, 0, 8), ..ack(Some(600)) };
        assert!(matches!(answered(&h, &other, 2000), Err(Refused::Odd(m)) if m.contains("10.0.0.8")));
        let nak = dhcp::Lease { message_type: dhcp::NAK, ..ack(None) };
        assert_eq!(answered(&h, &nak, 2000), Err(Refused::Nak { server: Some(SERVER) }));
        // A rebinding answered by another server: that one renews next.
        let elsewhere = dhcp::Lease { server_id: Some(Ipv4Addr::new(10, 0, 0, 3)), ..ack(Some(600)) };
        assert_eq!(answered(&h, &elsewhere, 3300).unwrap().unwrap().server, Some(Ipv4Addr::new(10, 0, 0, 3)));
    }

    #[test]
    fn test_keeper_args_round_trip() {
        for server in [Some(SERVER), None] {
            let k = KeeperArgs { ifindex: 2, mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56], held: Held { server, ..held() }, debug: true };
            assert_eq!(KeeperArgs::parse(&k.to_args()), Some(k));
        }
        assert_eq!(KeeperArgs::parse(&["eth0".to_string()]), None);
    }
}
