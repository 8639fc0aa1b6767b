//! The full-DHCP decision, as a pure function: addresses from a pool's
//! lease table for every client, the pool's network options, and (the step
//! shared with proxy mode, `decide::boot_step`) boot information for PXE
//! clients that may boot. No sockets, no clock: `now` comes in.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

use super::decide::{boot_step, client_class, client_mac, reply_to, BootReply, Context, Ignored, Seen};
use super::leases::LeaseTable;
use crate::mac::Mac;

/// Full-DHCP mode's network parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Option 15: the clients' DNS domain.
    pub domain: Option<String>,
    /// Option 119: their search domains (RFC 3397), validated names.
    pub search: Vec<String>,
    /// Option 42: NTP servers.
    pub ntp: Vec<Ipv4Addr>,
    /// Option 26: the segment's MTU, when it is not Ethernet's 1500.
    pub mtu: Option<u16>,
}

pub use boot_limits::MIN_MTU;

/// One full-mode pool: a subnet's addresses (`range`, inclusive), its
/// network parameters, and the addresses reserved on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub network: Network,
    pub range: (Ipv4Addr, Ipv4Addr),
    pub reservations: std::collections::BTreeMap<Mac, Ipv4Addr>,
    /// Option 12: the names of the clients that have one (`hostname` in
    /// their `[clients]` table), the same in every pool.
    pub names: std::collections::BTreeMap<Mac, String>,
}

impl Pool {
    /// Whether `addr` is on this pool's subnet.
    pub fn on_subnet(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::from(self.network.netmask);
        u32::from(addr) & mask == u32::from(self.range.0) & mask
    }
}

/// A pool as the DHCP service runs it: its network parameters and the
/// lease table of its range (which holds its reservations and names).
#[derive(Debug)]
pub struct ServedPool {
    pub network: Network,
    pub leases: LeaseTable,
}

impl ServedPool {
    /// `pool`'s table, empty, leasing for `lease_secs`.
    pub fn new(pool: &Pool, lease_secs: u64) -> ServedPool {
        let mut leases = LeaseTable::new(pool.range.0, pool.range.1, lease_secs, pool.reservations.clone());
        leases.set_names(pool.names.clone());
        ServedPool { network: pool.network.clone(), leases }
    }

    /// Whether `addr` is on this pool's subnet.
    pub fn on_subnet(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::from(self.network.netmask);
        u32::from(addr) & mask == u32::from(self.leases.first()) & mask
    }
}

/// The pool a request draws from: behind a relay, the one on the relay's
/// subnet (its giaddr); from a client that has its address (a renewal,
/// an INFORM), sent unicast and routed from a relayed segment, the one on
/// that address's subnet (RFC 2131, 4.3.2 and 4.3.5); else the first,
/// pxeroot's own segment.
pub fn pick_pool(pools: &[ServedPool], req: &Message) -> Result<usize, Ignored> {
    let giaddr = req.giaddr();
    if giaddr.is_unspecified() {
        let own = |addr: Ipv4Addr| pools.iter().position(|p| p.on_subnet(addr));
        return match (pools.is_empty(), req.ciaddr()) {
            (true, _) => Err(Ignored::OtherSubnet(giaddr)),
            (false, ciaddr) if !ciaddr.is_unspecified() => Ok(own(ciaddr).unwrap_or(0)),
            (false, _) => Ok(0),
        };
    }
    pools.iter().position(|p| p.on_subnet(giaddr)).ok_or(Ignored::OtherSubnet(giaddr))
}

/// [`decide_full`] with the pool [`pick_pool`] chooses.
pub fn decide_full_pools(req: &Message, ctx: &Context, pools: &mut [ServedPool], now: u64) -> Result<Option<(Message, Seen)>, Ignored> {
    let i = pick_pool(pools, req)?;
    let ServedPool { network, leases } = &mut pools[i];
    decide_full(req, ctx, network, leases, now)
}

/// Decide a full-DHCP reply: addresses for every client (from `leases`, at
/// `now` seconds), boot information for PXE clients that may boot, the
/// pool's options to an INFORM. The pipeline: the client, the subnet, the
/// lease decision, a reply with the address, the pool's network options,
/// the boot step shared with proxy mode. `Ok(None)` for messages that need no reply
/// (DECLINE, RELEASE, another server's REQUEST, an INFORM without ciaddr).
pub fn decide_full(
    req: &Message,
    ctx: &Context,
    net: &Network,
    leases: &mut LeaseTable,
    now: u64,
) -> Result<Option<(Message, Seen)>, Ignored> {
    let mac = client_mac(req)?;
    let kind = req.opts().msg_type().ok_or(Ignored::WrongMessage)?;
    // Behind a relay, the client is on the relay's subnet: serve it only
    // if the pool is on that subnet too.
    let relay = u32::from(req.giaddr());
    let mask = u32::from(net.netmask);
    if relay != 0 && relay & mask != u32::from(leases.first()) & mask {
        return Err(Ignored::OtherSubnet(req.giaddr()));
    }
    let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let for_us = match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s == ctx.server,
        _ => true,
    };
    let (reply_kind, address) = match kind {
        MessageType::Discover => match leases.offer_with(mac, now, ctx.in_use) {
            Ok(ip) => (MessageType::Offer, ip),
            Err(_) => return Err(Ignored::WrongMessage),
        },
        MessageType::Request if for_us => {
            let ip = requested.unwrap_or(req.ciaddr());
            let taken = leases.owner(ip).is_some_and(|o| o != mac && (ctx.in_use)(o));
            match if taken { Err(super::leases::LeaseError::NotYours { mac, address: ip }) } else { leases.request(mac, ip, now) } {
                Ok(_) => (MessageType::Ack, ip),
                Err(_) => {
                    let nak = reply_to(req, MessageType::Nak, ctx.server, Ipv4Addr::UNSPECIFIED);
                    return Ok(Some((nak, Seen::new(mac, kind))));
                }
            }
        }
        MessageType::Decline => {
            if let Some(ip) = requested {
                leases.decline(mac, ip, now);
            }
            return Ok(None);
        }
        MessageType::Release => {
            leases.release(mac, req.ciaddr());
            return Ok(None);
        }
        // RFC 2131, 4.3.5: a client that has its address (pxeroot-init
        // with iPXE's lease, asking for the NTP servers iPXE never asks
        // for) wants the rest of its configuration: an ACK sent to that
        // address, with no address or lease time in it.
        MessageType::Inform if !req.ciaddr().is_unspecified() => (MessageType::Ack, Ipv4Addr::UNSPECIFIED),
        _ => return Ok(None),
    };
    let inform = kind == MessageType::Inform;
    let mut r = reply_to(req, reply_kind, ctx.server, address);
    if inform {
        r.set_ciaddr(req.ciaddr());
    }
    let o = r.opts_mut();
    // T1 and T2 at RFC 2131's defaults (4.4.5), said outright as dnsmasq
    // and Kea do: some clients renew only when told when. An INFORM's ACK
    // leases nothing.
    let secs = u32::try_from(leases.lease_secs()).unwrap_or(u32::MAX);
    if !inform {
        o.insert(DhcpOption::AddressLeaseTime(secs));
        if secs != u32::MAX {
            // (u32::MAX is an infinite lease: nothing to renew.)
            o.insert(DhcpOption::Renewal(secs / 2));
            o.insert(DhcpOption::Rebinding((u64::from(secs) * 7 / 8) as u32));
        }
    }
    o.insert(DhcpOption::SubnetMask(net.netmask));
    if let Some(gw) = net.router {
        o.insert(DhcpOption::Router(vec![gw]));
    }
    if !net.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(net.dns.clone()));
    }
    if let Some(d) = &net.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    if !net.search.is_empty() {
        // (The config let only plain DNS names through: each parses.)
        o.insert(DhcpOption::DomainSearch(net.search.iter().filter_map(|n| dhcproto::Name::from_ascii(n).ok()).collect()));
    }
    if !net.ntp.is_empty() {
        o.insert(DhcpOption::NtpServers(net.ntp.clone()));
    }
    if let Some(name) = leases.name(mac) {
        o.insert(DhcpOption::Hostname(name.to_string()));
    }
    if let Some(m) = net.mtu {
        o.insert(DhcpOption::InterfaceMtu(m));
    }
    let mut seen = Seen::new(mac, kind);
    // An INFORM's boot went by long ago; every other client that boots
    // gets the boot step, and one that may not is told why in the log.
    if let (false, Some(class)) = (inform, client_class(req, ctx)) {
        if let Err(why) = boot_step(&mut r, req, ctx, class, BootReply::Full, &mut seen) {
            seen.not_booted = Some(why);
        }
    }
    Ok(Some((r, seen)))
}

#[cfg(test)]
mod tests {
    use super::super::decide::tests::{ctx, fixture, opt_bytes};
    use super::super::decide::{destination, BootFiles, Port, UefiStrategy, IPXE_NO_PXEDHCP};
    use super::*;
    use crate::dhcp::leases::LeaseTable;
    use dhcproto::v4::Opcode;
    use std::net::SocketAddr;

    /// A /24 with `router` and no other parameters.
    fn lan(router: Option<Ipv4Addr>) -> Network {
        Network { netmask: Ipv4Addr::new(255, 255, 255, 0), router, dns: vec![], domain: None, search: vec![], ntp: vec![], mtu: None }
    }
    use std::collections::BTreeMap;

    fn discover(mac: [u8; 6], pxe: bool) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest).set_xid(7).set_chaddr(&mac);
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
        if pxe {
            m.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()));
            m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        m
    }

    #[test]
    fn test_full_mode_offers_addresses_and_boot_info() {
        let files = BootFiles::default();
        let url = |m: Mac| format!("tftp://10.0.0.1/pxeroot/{}.ipxe", m.file_stem());
        let ctx = Context {
            server: Ipv4Addr::new(10, 0, 0, 1),
            files: &files,
            uefi: UefiStrategy::InOffer,
            may_boot: &|_| true,
            script_url: &url,
            http_base: None,
            uefi_by_class: &[],
            in_use: &|_| false,
        };
        let net = lan(Some(Ipv4Addr::new(10, 0, 0, 254)));
        let mut leases = LeaseTable::new(Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 200), 3600, BTreeMap::new());
        let (offer, seen) = decide_full(&discover([0x52, 0x54, 0, 0, 0, 1], true), &ctx, &net, &mut leases, 0).unwrap().unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(seen.offered.as_deref(), Some("tftp://10.0.0.1/pxeroot/52-54-00-00-00-01.ipxe"));
        assert!(matches!(offer.opts().get(OptionCode::Unknown(175)), Some(DhcpOption::Unknown(u)) if u.data() == IPXE_NO_PXEDHCP));
        let (other, seen) = decide_full(&discover([0x52, 0x54, 0, 0, 0, 2], false), &ctx, &net, &mut leases, 0).unwrap().unwrap();
        assert_ne!(other.yiaddr(), offer.yiaddr());
        assert_eq!(seen.offered, None, "a non-PXE client gets an address only");
        // REQUEST the offered address: ACK; someone else's: NAK.
        let mut req = discover([0x52, 0x54, 0, 0, 0, 1], true);
        req.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        let (ack, _) = decide_full(&req, &ctx, &net, &mut leases, 1).unwrap().unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        let times: Vec<_> = [OptionCode::AddressLeaseTime, OptionCode::Renewal, OptionCode::Rebinding]
            .iter()
            .map(|c| ack.opts().get(*c).cloned())
            .collect();
        assert_eq!(times, [Some(DhcpOption::AddressLeaseTime(3600)), Some(DhcpOption::Renewal(1800)), Some(DhcpOption::Rebinding(3150))]);
        let mut steal = discover([0x52, 0x54, 0, 0, 0, 3], false);
        steal.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
        steal.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        let (nak, _) = decide_full(&steal, &ctx, &net, &mut leases, 1).unwrap().unwrap();
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert!(nak.flags().broadcast(), "a NAK through a relay must be broadcast");
        // Renewing (RFC 2131 4.3.2): from the address, neither option 50
        // nor 54; the lease runs on from the REQUEST, the ACK goes to the
        // address itself, a NAK to everyone.
        let mut renew = discover([0x52, 0x54, 0, 0, 0, 1], false);
        renew.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
        renew.set_ciaddr(offer.yiaddr());
        let (ack, _) = decide_full(&renew, &ctx, &net, &mut leases, 1800).unwrap().unwrap();
        assert_eq!((ack.opts().msg_type(), ack.yiaddr()), (Some(MessageType::Ack), offer.yiaddr()));
        assert!(!ack.flags().broadcast());
        assert!(leases.save().contains(&format!("{} 52:54:00:00:00:01 5400 bound", offer.yiaddr())), "{}", leases.save());
        let from = "10.0.0.100:68".parse().unwrap();
        assert_eq!(destination(&renew, &ack, Port::Dhcp, from), "10.0.0.100:68".parse().unwrap());
        assert_eq!(destination(&renew, &nak, Port::Dhcp, from), "255.255.255.255:68".parse().unwrap());
        assert_eq!(destination(&req, &ack, Port::Dhcp, from), "255.255.255.255:68".parse().unwrap(), "no address yet");
        assert_eq!(destination(&req, &ack, Port::Pxe, from), from);
        let relayed = renew.clone().set_giaddr(Ipv4Addr::new(10, 0, 5, 1)).clone();
        assert_eq!(destination(&relayed, &ack, Port::Dhcp, from), "10.0.5.1:67".parse().unwrap());
        let mut stolen = steal.clone();
        stolen.set_ciaddr(offer.yiaddr()).opts_mut().remove(OptionCode::RequestedIpAddress);
        let (nak, _) = decide_full(&stolen, &ctx, &net, &mut leases, 1800).unwrap().unwrap();
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak), "renewing another client's address");
        // The segment's MTU, when the pool names one (option 26).
        assert_eq!(ack.opts().get(OptionCode::InterfaceMtu), None);
        let jumbo = Network { mtu: Some(9000), ..net.clone() };
        let (offer, _) = decide_full(&discover([0x52, 0x54, 0, 0, 0, 4], true), &ctx, &jumbo, &mut leases, 1900).unwrap().unwrap();
        assert_eq!(offer.opts().get(OptionCode::InterfaceMtu), Some(&DhcpOption::InterfaceMtu(9000)));
        // DNS servers and domain (options 6 and 15), when the pool names them.
        assert_eq!((ack.opts().get(OptionCode::DomainNameServer), ack.opts().get(OptionCode::DomainName)), (None, None));
        let named = Network {
            dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
            domain: Some("lab.example".into()),
            search: vec!["eng.lab.example".into(), "lab.example".into()],
            ntp: vec![Ipv4Addr::new(10, 0, 0, 123)],
            ..net.clone()
        };
        leases.set_names(BTreeMap::from([(Mac([0x52, 0x54, 0, 0, 0, 5]), "pc-5".to_string())]));
        let (offer, _) = decide_full(&discover([0x52, 0x54, 0, 0, 0, 5], true), &ctx, &named, &mut leases, 1900).unwrap().unwrap();
        assert_eq!(offer.opts().get(OptionCode::DomainNameServer), Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 0, 53)])));
        assert_eq!(offer.opts().get(OptionCode::DomainName), Some(&DhcpOption::DomainName("lab.example".into())));
        assert_eq!(offer.opts().get(OptionCode::NtpServers), Some(&DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 0, 0, 123)])));
        // Option 119 in RFC 1035's wire form, the second name a pointer
        // into the first (what pxeroot-init's decoder and iPXE read).
        let wire = dhcproto::Encodable::to_vec(&offer).unwrap();
        let mut at = 240;
        while wire[at] != u8::from(OptionCode::DomainSearch) {
            at += 2 + usize::from(wire[at + 1]);
        }
        assert_eq!(&wire[at + 2..at + 2 + usize::from(wire[at + 1])], b"\x03eng\x03lab\x07example\x00\xc0\x04");
        assert_eq!(ack.opts().get(OptionCode::DomainSearch), None, "the pool without a search list");
        assert_eq!(offer.opts().get(OptionCode::Hostname), Some(&DhcpOption::Hostname("pc-5".into())), "its name");
        let (other, _) = decide_full(&discover([0x52, 0x54, 0, 0, 0, 6], true), &ctx, &named, &mut leases, 1900).unwrap().unwrap();
        assert_eq!(other.opts().get(OptionCode::Hostname), None, "a client without a name");
        // INFORM (RFC 2131, 4.3.5), as pxeroot-init sends it from the
        // address iPXE leased: an ACK to that address with the pool's
        // options, no address, no lease time, no boot file; the leases
        // stay as they were.
        let before = leases.save();
        let mut inform = discover([0x52, 0x54, 0, 0, 0, 5], true);
        inform.opts_mut().insert(DhcpOption::MessageType(MessageType::Inform));
        inform.set_ciaddr(offer.yiaddr());
        let (ack, seen) = decide_full(&inform, &ctx, &named, &mut leases, 1950).unwrap().unwrap();
        assert_eq!((ack.opts().msg_type(), ack.yiaddr(), ack.ciaddr()), (Some(MessageType::Ack), Ipv4Addr::UNSPECIFIED, offer.yiaddr()));
        assert_eq!(ack.opts().get(OptionCode::NtpServers), Some(&DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 0, 0, 123)])));
        assert_eq!(ack.opts().get(OptionCode::DomainName), Some(&DhcpOption::DomainName("lab.example".into())));
        for code in [OptionCode::AddressLeaseTime, OptionCode::Renewal, OptionCode::Rebinding, OptionCode::BootfileName] {
            assert_eq!(ack.opts().get(code), None, "{code:?} in an INFORM's ACK");
        }
        assert_eq!(seen.offered, None);
        assert!(!ack.flags().broadcast());
        assert_eq!(destination(&inform, &ack, Port::Dhcp, "10.0.0.100:68".parse().unwrap()), SocketAddr::new(offer.yiaddr().into(), 68));
        assert_eq!(leases.save(), before, "an INFORM leases nothing");
        inform.set_ciaddr(Ipv4Addr::UNSPECIFIED);
        assert_eq!(decide_full(&inform, &ctx, &named, &mut leases, 1950).unwrap(), None, "an INFORM from no address");
    }

    /// Full mode answers a UEFI HTTP boot client with an address and the
    /// URL, as proxy mode does, when pxeroot serves HTTP.
    #[test]
    fn test_full_mode_gives_http_boot_clients_a_url() {
        let files = BootFiles::default();
        let url = |_m: Mac| String::new();
        let mut c = ctx(&files, UefiStrategy::InOffer, &|_| true, &url);
        let net = lan(None);
        let mut leases = LeaseTable::new(Ipv4Addr::new(10, 99, 0, 100), Ipv4Addr::new(10, 99, 0, 200), 3600, BTreeMap::new());
        let mut req = fixture("ovmf-full-chain.pcap").into_iter().find(|m| m.opts().msg_type() == Some(MessageType::Discover)).unwrap();
        req.opts_mut().insert(DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016:UNDI:003001".to_vec()));
        req.opts_mut().insert(DhcpOption::ClientSystemArchitecture(dhcproto::v4::Architecture::Unknown(16)));
        let (offer, seen) = decide_full(&req, &c, &net, &mut leases, 0).unwrap().unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 99, 0, 100));
        assert_eq!(opt_bytes(&offer, OptionCode::ClassIdentifier).unwrap(), b"HTTPClient");
        assert_eq!(seen.offered.as_deref(), Some("http://10.99.0.1:80/ipxe.efi"));
        assert_eq!(seen.arch, Some(16));
        // Without HTTP served: an address only.
        c.http_base = None;
        let (offer, seen) = decide_full(&req, &c, &net, &mut leases, 0).unwrap().unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 99, 0, 100));
        assert_eq!(seen.offered, None);
    }

    /// Behind a relay on the pool's subnet: served, the reply for the
    /// relay; from another subnet: ignored.
    #[test]
    fn test_full_mode_serves_a_relayed_subnet_only_if_the_pool_is_on_it() {
        let files = BootFiles::default();
        let url = |_m: Mac| String::new();
        let c = ctx(&files, UefiStrategy::InOffer, &|_| true, &url);
        let net = lan(Some(Ipv4Addr::new(10, 98, 0, 1)));
        let mut leases = LeaseTable::new(Ipv4Addr::new(10, 98, 0, 100), Ipv4Addr::new(10, 98, 0, 200), 3600, BTreeMap::new());
        let mut req = discover([0x52, 0x54, 0, 0, 0, 1], true);
        req.set_giaddr(Ipv4Addr::new(10, 98, 0, 1));
        let (offer, _) = decide_full(&req, &c, &net, &mut leases, 0).unwrap().unwrap();
        assert_eq!((offer.yiaddr(), offer.giaddr()), (Ipv4Addr::new(10, 98, 0, 100), Ipv4Addr::new(10, 98, 0, 1)));
        req.set_giaddr(Ipv4Addr::new(10, 97, 0, 1));
        assert_eq!(decide_full(&req, &c, &net, &mut leases, 0).unwrap_err(), Ignored::OtherSubnet(Ipv4Addr::new(10, 97, 0, 1)));
    }

    /// Two pools: a request not relayed draws from the first; a relayed one
    /// from the pool on the relay's subnet, with that pool's router; a
    /// relay on no pool's subnet is not answered; a routed renewal or
    /// INFORM from the pool on its address's subnet.
    #[test]
    fn test_full_mode_pools_by_relay() {
        let files = BootFiles::default();
        let url = |_m: Mac| String::new();
        let c = ctx(&files, UefiStrategy::InOffer, &|_| true, &url);
        let pool = |net: [u8; 3], router: u8| Pool {
            network: lan(Some(Ipv4Addr::new(net[0], net[1], net[2], router))),
            range: (Ipv4Addr::new(net[0], net[1], net[2], 100), Ipv4Addr::new(net[0], net[1], net[2], 200)),
            reservations: BTreeMap::new(),
            names: BTreeMap::new(),
        };
        let mut pools = [pool([10, 99, 0], 254), pool([10, 98, 0], 1)].map(|p| ServedPool::new(&p, 3600));
        let mut req = discover([0x52, 0x54, 0, 0, 0, 1], true);
        let (offer, _) = decide_full_pools(&req, &c, &mut pools, 0).unwrap().unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 99, 0, 100));
        req.set_giaddr(Ipv4Addr::new(10, 98, 0, 1));
        let (offer, _) = decide_full_pools(&req, &c, &mut pools, 0).unwrap().unwrap();
        assert_eq!((offer.yiaddr(), offer.giaddr()), (Ipv4Addr::new(10, 98, 0, 100), Ipv4Addr::new(10, 98, 0, 1)));
        assert!(matches!(offer.opts().get(OptionCode::Router), Some(DhcpOption::Router(r)) if r == &[Ipv4Addr::new(10, 98, 0, 1)]));
        req.set_giaddr(Ipv4Addr::new(10, 97, 0, 1));
        assert_eq!(decide_full_pools(&req, &c, &mut pools, 0).unwrap_err(), Ignored::OtherSubnet(Ipv4Addr::new(10, 97, 0, 1)));
        req.set_giaddr(Ipv4Addr::new(10, 99, 0, 7));
        assert_eq!(pick_pool(&pools, &req), Ok(0), "a relay on the first pool's subnet");
        // A relayed client renews or INFORMs unicast, routed, from its
        // address (no giaddr): its own pool answers, with its own router.
        let mut renew = discover([0x52, 0x54, 0, 0, 0, 1], false);
        renew.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
        renew.set_ciaddr(Ipv4Addr::new(10, 98, 0, 100));
        let (ack, _) = decide_full_pools(&renew, &c, &mut pools, 10).unwrap().unwrap();
        assert_eq!((ack.opts().msg_type(), ack.yiaddr()), (Some(MessageType::Ack), Ipv4Addr::new(10, 98, 0, 100)));
        renew.opts_mut().insert(DhcpOption::MessageType(MessageType::Inform));
        let (ack, _) = decide_full_pools(&renew, &c, &mut pools, 10).unwrap().unwrap();
        assert!(matches!(ack.opts().get(OptionCode::Router), Some(DhcpOption::Router(r)) if r == &[Ipv4Addr::new(10, 98, 0, 1)]));
        renew.set_ciaddr(Ipv4Addr::new(10, 99, 0, 100));
        assert_eq!(pick_pool(&pools, &renew), Ok(0));
        renew.set_ciaddr(Ipv4Addr::new(192, 0, 2, 9));
        assert_eq!(pick_pool(&pools, &renew), Ok(0), "an address on no pool's subnet: this segment's");
    }

    /// A PXE client that may not boot gets its address, no boot file, and
    /// the reason with its fix, for the log; a non-PXE client no reason.
    #[test]
    fn test_full_mode_says_why_a_pxe_client_gets_no_boot_file() {
        let files = BootFiles::default();
        let url = |_m: Mac| String::new();
        let c = ctx(&files, UefiStrategy::InOffer, &|_| false, &url);
        let net = lan(None);
        let mut leases = LeaseTable::new(Ipv4Addr::new(10, 99, 0, 100), Ipv4Addr::new(10, 99, 0, 200), 3600, BTreeMap::new());
        let mac = [0x52, 0x54, 0, 0, 0, 9];
        let (offer, seen) = decide_full(&discover(mac, true), &c, &net, &mut leases, 0).unwrap().unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 99, 0, 100));
        assert!(offer.opts().get(OptionCode::BootfileName).is_none() && offer.fname().unwrap_or_default().is_empty());
        assert_eq!(seen.not_booted, Some(Ignored::NotAllowed(Mac(mac))));
        let why = seen.not_booted.unwrap().to_string();
        assert!(why.contains("[clients.\"52:54:00:00:00:09\"]") && why.contains("unknown_clients.action"), "{why}");
        let (_, seen) = decide_full(&discover([0x52, 0x54, 0, 0, 0, 8], false), &c, &net, &mut leases, 0).unwrap().unwrap();
        assert_eq!(seen.not_booted, None);
        // An architecture without a boot file, named with what is served.
        let c = ctx(&files, UefiStrategy::InOffer, &|_| true, &url);
        let mut arm32 = discover(mac, true);
        arm32.opts_mut().remove(OptionCode::UserClass);
        arm32.opts_mut().insert(DhcpOption::ClientSystemArchitecture(dhcproto::v4::Architecture::Unknown(10)));
        let (_, seen) = decide_full(&arm32, &c, &net, &mut leases, 0).unwrap().unwrap();
        assert_eq!(seen.not_booted, Some(Ignored::UnknownArch { mac: Mac(mac), code: 10 }));
        assert!(seen.not_booted.unwrap().to_string().contains("ARM64 (11"));
    }
}
