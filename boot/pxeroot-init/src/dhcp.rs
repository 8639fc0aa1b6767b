//! A minimal DHCPv4 client codec (RFC 2131/2132), sans-IO: build DISCOVER,
//! REQUEST, the renewing REQUEST and INFORM, parse OFFER, ACK and NAK. Only what a
//! diskless client needs: an address, a netmask, a router, the lease's
//! times to keep it, and the DNS servers, domain and search list to hand
//! to the root. The socket loops are in `main.rs` and `lease.rs`.
//!
//! Not dhcproto: it pulls in a DNS library, and every KB of the static init
//! is TFTP time in a boot storm; this codec is about 300 lines.

use std::net::Ipv4Addr;

const OP_BOOTREQUEST: u8 = 1;
const OP_BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Fixed part of a BOOTP message, before the magic cookie.
const FIXED_LEN: usize = 236;
/// Ask the server to broadcast its reply: we have no address yet.
const FLAG_BROADCAST: u16 = 0x8000;
/// A lease time that never ends (RFC 2132, 9.2).
pub const INFINITE: u32 = u32::MAX;
pub use boot_limits::{MAX_SEARCH_DOMAINS, MIN_MTU};
/// The longest DNS name in wire form (RFC 1035, 2.3.4): decoding a name of
/// option 119 stops there.
const MAX_WIRE_NAME: usize = 255;
/// RFC 1035, 4.1.4: a length octet with both top bits set starts a
/// pointer (its low 14 bits are an offset); other values with any top bit
/// set are no label RFC 3397 allows.
const POINTER: u8 = 0xc0;

pub const OPT_SUBNET_MASK: u8 = 1;
pub const OPT_ROUTER: u8 = 3;
pub const OPT_DNS_SERVERS: u8 = 6;
pub const OPT_HOSTNAME: u8 = 12;
pub const OPT_DOMAIN_NAME: u8 = 15;
pub const OPT_NTP_SERVERS: u8 = 42;
pub const OPT_DOMAIN_SEARCH: u8 = 119;
pub const OPT_MTU: u8 = 26;
pub const OPT_REQUESTED_IP: u8 = 50;
pub const OPT_MESSAGE_TYPE: u8 = 53;
pub const OPT_SERVER_ID: u8 = 54;
pub const OPT_PARAM_LIST: u8 = 55;
pub const OPT_MAX_SIZE: u8 = 57;
pub const OPT_LEASE_TIME: u8 = 51;
pub const OPT_RENEWAL_TIME: u8 = 58;
pub const OPT_REBINDING_TIME: u8 = 59;
pub const OPT_CLIENT_ID: u8 = 61;
pub const OPT_END: u8 = 255;
pub const OPT_PAD: u8 = 0;

/// DNS servers kept from option 6: the most a resolv.conf uses (glibc's
/// and musl's MAXNS).
pub const MAX_DNS_SERVERS: usize = 3;
/// NTP servers kept from option 42: chrony and timesyncd poll each, and a
/// site names a few.
pub const MAX_NTP_SERVERS: usize = 4;

pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;
pub const INFORM: u8 = 8;

/// What a server offered or acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub message_type: u8,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    /// Option 26, the segment's MTU.
    pub mtu: Option<u16>,
    /// Options 51, 58 and 59 (T1, T2), in seconds.
    pub lease_secs: Option<u32>,
    pub renew_secs: Option<u32>,
    pub rebind_secs: Option<u32>,
    /// Option 6 (at most [`MAX_DNS_SERVERS`]) and option 15.
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    /// Option 119, the search domains (at most [`MAX_SEARCH_DOMAINS`]).
    pub search: Vec<String>,
    /// Option 12, the client's name.
    pub hostname: Option<String>,
    /// Option 42 (at most [`MAX_NTP_SERVERS`]).
    pub ntp: Vec<Ipv4Addr>,
}

impl Lease {
    /// A reply of `message_type` giving `address` (a /24 until option 1
    /// says otherwise) and nothing else.
    pub fn bare(message_type: u8, address: Ipv4Addr) -> Lease {
        Lease {
            message_type,
            address,
            prefix: 24,
            router: None,
            server_id: None,
            mtu: None,
            lease_secs: None,
            renew_secs: None,
            rebind_secs: None,
            dns: Vec::new(),
            domain: None,
            search: Vec::new(),
            hostname: None,
            ntp: Vec::new(),
        }
    }
}

/// A BOOTREQUEST from `ciaddr` (unspecified: no address yet, so the
/// server is asked to broadcast its reply).
fn message(xid: u32, mac: [u8; 6], ciaddr: Ipv4Addr, kind: u8, extra: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut m = vec![0u8; FIXED_LEN];
    m[0] = OP_BOOTREQUEST;
    m[1] = HTYPE_ETHERNET;
    m[2] = 6;
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    if ciaddr.is_unspecified() {
        m[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
    }
    m[12..16].copy_from_slice(&ciaddr.octets());
    m[28..34].copy_from_slice(&mac);
    m.extend_from_slice(&MAGIC);
    let mut client_id = vec![HTYPE_ETHERNET];
    client_id.extend_from_slice(&mac);
    let mut opts: Vec<(u8, Vec<u8>)> = vec![
        (OPT_MESSAGE_TYPE, vec![kind]),
        (OPT_CLIENT_ID, client_id),
        (OPT_MAX_SIZE, 1500u16.to_be_bytes().to_vec()),
        (
            OPT_PARAM_LIST,
            vec![
                OPT_SUBNET_MASK,
                OPT_ROUTER,
                OPT_DNS_SERVERS,
                OPT_HOSTNAME,
                OPT_DOMAIN_NAME,
                OPT_DOMAIN_SEARCH,
                OPT_NTP_SERVERS,
                OPT_MTU,
                OPT_LEASE_TIME,
                OPT_RENEWAL_TIME,
                OPT_REBINDING_TIME,
            ],
        ),
    ];
    opts.extend(extra.iter().cloned());
    for (code, data) in opts {
        m.push(code);
        m.push(data.len() as u8);
        m.extend_from_slice(&data);
    }
    m.push(OPT_END);
    // Some servers ignore BOOTP messages shorter than 300 bytes.
    m.resize(m.len().max(300), 0);
    m
}

pub fn discover(xid: u32, mac: [u8; 6]) -> Vec<u8> {
    message(xid, mac, Ipv4Addr::UNSPECIFIED, DISCOVER, &[])
}

/// REQUEST the offered address from the server that offered it.
pub fn request(xid: u32, mac: [u8; 6], offer: &Lease) -> Vec<u8> {
    let mut extra = vec![(OPT_REQUESTED_IP, offer.address.octets().to_vec())];
    if let Some(s) = offer.server_id {
        extra.push((OPT_SERVER_ID, s.octets().to_vec()));
    }
    message(xid, mac, Ipv4Addr::UNSPECIFIED, REQUEST, &extra)
}

/// The REQUEST that extends the lease of `address` (RFC 2131, 4.3.2, the
/// RENEWING and REBINDING states): from the address, with no requested
/// address or server identifier; sent to the server that granted the
/// lease (renewing) or broadcast to any server (rebinding).
pub fn renew(xid: u32, mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    message(xid, mac, address, REQUEST, &[])
}

/// DHCPINFORM (RFC 2131, 3.4 and 4.4.3): a client whose address came from
/// elsewhere (iPXE's lease) asks for the rest of its configuration, the
/// options of the parameter list that iPXE never asks for (42). From the
/// address, no requested address, lease time or server identifier; the
/// server answers with an ACK sent to the address.
pub fn inform(xid: u32, mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    message(xid, mac, address, INFORM, &[])
}

fn ip(data: &[u8]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::new(*data.first()?, *data.get(1)?, *data.get(2)?, *data.get(3)?))
}

/// A list of servers (options 6 and 42): addresses, four octets each; a
/// trailing partial one, `0.0.0.0` and broadcast are dropped, and no more
/// than `most` kept.
pub fn servers(data: &[u8], most: usize) -> Vec<Ipv4Addr> {
    data.chunks_exact(4).filter_map(ip).filter(|a| !a.is_unspecified() && !a.is_broadcast()).take(most).collect()
}

/// Option 12's payload, when it is a name the kernel takes as its
/// hostname ([`boot_limits::is_host_name`]; a trailing NUL or dot is
/// dropped).
pub fn host_name(data: &[u8]) -> Option<String> {
    domain_name(data).filter(|n| boot_limits::is_host_name(n))
}

/// Option 15's payload, when it is a plain DNS name
/// ([`boot_limits::is_domain_name`]; a trailing NUL or dot, which
/// some servers send, is dropped). Anything else is refused: the name is
/// written into the root's configuration files.
pub fn domain_name(data: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?.trim_end_matches('\0').trim_end_matches('.');
    boot_limits::is_domain_name(text).then(|| text.to_ascii_lowercase())
}

/// Option 119's payload (RFC 3397): DNS names in wire form, each of which
/// may end in a pointer to an earlier offset of the payload (RFC 1035,
/// 4.1.4; the offset counts from the start of all the message's 119
/// options joined, RFC 3396). Names that are not plain DNS names
/// ([`boot_limits::is_domain_name`]) and repeats are dropped;
/// decoding stops at the first malformed name, and after
/// [`MAX_SEARCH_DOMAINS`].
pub fn search_list(data: &[u8]) -> Vec<String> {
    let mut list: Vec<String> = Vec::new();
    let mut at = 0;
    while at < data.len() && list.len() < MAX_SEARCH_DOMAINS {
        let Some((name, next)) = wire_name(data, at) else { break };
        let name = name.to_ascii_lowercase();
        if boot_limits::is_domain_name(&name) && !list.contains(&name) {
            list.push(name);
        }
        at = next;
    }
    list
}

/// The name in wire form at `start`, as text, and the offset after it.
/// A pointer must point below every offset the name has read so far, so
/// every name ends.
fn wire_name(data: &[u8], start: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let (mut at, mut floor, mut next) = (start, start, None);
    loop {
        match *data.get(at)? {
            0 => return Some((name, next.unwrap_or(at + 1))),
            len if len & POINTER == POINTER => {
                let to = usize::from(len & !POINTER) << 8 | usize::from(*data.get(at + 1)?);
                if to >= floor {
                    return None;
                }
                next.get_or_insert(at + 2);
                (at, floor) = (to, to);
            }
            len if len & POINTER != 0 => return None,
            len => {
                let label = std::str::from_utf8(data.get(at + 1..at + 1 + usize::from(len))?).ok()?;
                if name.len() + label.len() + 2 > MAX_WIRE_NAME {
                    return None;
                }
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(label);
                at += 1 + usize::from(len);
            }
        }
    }
}

/// Parse a reply meant for us (`xid`, `mac`); `None` for anything else.
pub fn parse_reply(buf: &[u8], xid: u32, mac: [u8; 6]) -> Option<Lease> {
    if buf.len() < FIXED_LEN + 4 || buf[0] != OP_BOOTREPLY || buf[4..8] != xid.to_be_bytes() || buf[28..34] != mac {
        return None;
    }
    if buf[FIXED_LEN..FIXED_LEN + 4] != MAGIC {
        return None;
    }
    let mut lease = Lease::bare(0, ip(&buf[16..20])?);
    // Option 119 may come in several pieces (RFC 3396), joined in order.
    let mut search = Vec::new();
    let secs = |data: &[u8]| Some(u32::from_be_bytes(data.get(..4)?.try_into().ok()?));
    let mut at = FIXED_LEN + 4;
    while at < buf.len() {
        let code = buf[at];
        if code == OPT_END {
            break;
        }
        if code == OPT_PAD {
            at += 1;
            continue;
        }
        let len = *buf.get(at + 1)? as usize;
        let data = buf.get(at + 2..at + 2 + len)?;
        match code {
            OPT_MESSAGE_TYPE => lease.message_type = *data.first()?,
            OPT_SUBNET_MASK => {
                let m = u32::from(ip(data)?);
                if m.leading_ones() + m.trailing_zeros() == 32 {
                    lease.prefix = m.leading_ones() as u8;
                }
            }
            OPT_ROUTER => lease.router = ip(data),
            OPT_DNS_SERVERS => lease.dns = servers(data, MAX_DNS_SERVERS),
            OPT_NTP_SERVERS => lease.ntp = servers(data, MAX_NTP_SERVERS),
            OPT_DOMAIN_NAME => lease.domain = domain_name(data),
            OPT_DOMAIN_SEARCH => search.extend_from_slice(data),
            OPT_HOSTNAME => lease.hostname = host_name(data),
            OPT_SERVER_ID => lease.server_id = ip(data),
            OPT_MTU => lease.mtu = data.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])).filter(|&m| m >= MIN_MTU),
            OPT_LEASE_TIME => lease.lease_secs = secs(data),
            OPT_RENEWAL_TIME => lease.renew_secs = secs(data),
            OPT_REBINDING_TIME => lease.rebind_secs = secs(data),
            _ => {}
        }
        at += 2 + len;
    }
    lease.search = search_list(&search);
    (lease.message_type != 0).then_some(lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn reply(kind: u8, xid: u32) -> Vec<u8> {
        let mut m = discover(xid, MAC);
        m[0] = OP_BOOTREPLY;
        m[16..20].copy_from_slice(&[10, 0, 0, 7]);
        m.truncate(FIXED_LEN + 4);
        for (c, d) in [
            (OPT_MESSAGE_TYPE, vec![kind]),
            (OPT_SUBNET_MASK, vec![255, 255, 0, 0]),
            (OPT_ROUTER, vec![10, 0, 0, 1]),
            (OPT_SERVER_ID, vec![10, 0, 0, 2]),
            (OPT_LEASE_TIME, 3600u32.to_be_bytes().to_vec()),
            (OPT_RENEWAL_TIME, 1800u32.to_be_bytes().to_vec()),
            (OPT_MTU, 1400u16.to_be_bytes().to_vec()),
            (OPT_DNS_SERVERS, vec![10, 0, 0, 53, 0, 0, 0, 0, 10, 0, 0, 54]),
            (OPT_DOMAIN_NAME, b"Lab.Example\0".to_vec()),
            (OPT_HOSTNAME, b"pc-042".to_vec()),
            (OPT_NTP_SERVERS, vec![10, 0, 0, 123]),
            // RFC 3397's example: two names, the second ending in a
            // pointer into the first, split over three options (RFC 3396).
            (OPT_DOMAIN_SEARCH, b"\x03eng\x05appl".to_vec()),
            (OPT_DOMAIN_SEARCH, b"e\x03com\x00\x09ma".to_vec()),
            (OPT_DOMAIN_SEARCH, b"rketing\xc0\x04".to_vec()),
        ] {
            m.push(c);
            m.push(d.len() as u8);
            m.extend_from_slice(&d);
        }
        m.push(OPT_END);
        m
    }

    #[test]
    fn test_discover_layout() {
        let d = discover(0xdeadbeef, MAC);
        assert_eq!((d[0], d[1], d[2]), (1, 1, 6));
        assert_eq!(&d[4..8], &0xdeadbeefu32.to_be_bytes());
        assert_eq!(&d[28..34], &MAC);
        assert_eq!(&d[236..240], &MAGIC);
        assert_eq!(&d[240..243], &[OPT_MESSAGE_TYPE, 1, DISCOVER]);
        assert!(d.len() >= 300);
    }

    #[test]
    fn test_parse_offer_and_ignore_others() {
        let r = reply(OFFER, 9);
        let l = parse_reply(&r, 9, MAC).unwrap();
        assert_eq!(
            l,
            Lease {
                message_type: OFFER,
                address: Ipv4Addr::new(10, 0, 0, 7),
                prefix: 16,
                router: Some(Ipv4Addr::new(10, 0, 0, 1)),
                server_id: Some(Ipv4Addr::new(10, 0, 0, 2)),
                mtu: Some(1400),
                lease_secs: Some(3600),
                renew_secs: Some(1800),
                rebind_secs: None,
                dns: vec![Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(10, 0, 0, 54)],
                domain: Some("lab.example".into()),
                search: vec!["eng.apple.com".into(), "marketing.apple.com".into()],
                hostname: Some("pc-042".into()),
                ntp: vec![Ipv4Addr::new(10, 0, 0, 123)],
            }
        );
        assert!(parse_reply(&r, 10, MAC).is_none(), "other xid");
        assert!(parse_reply(&r, 9, [0; 6]).is_none(), "other client");
        assert!(parse_reply(&r[..100], 9, MAC).is_none(), "truncated");
        let req = request(9, MAC, &l);
        assert!(req.windows(6).any(|w| w == [OPT_REQUESTED_IP, 4, 10, 0, 0, 7]));
    }

    #[test]
    fn the_search_list_follows_pointers_backwards_only_and_keeps_plain_names() {
        let list = |data: &[u8]| search_list(data);
        assert_eq!(list(b"\x03lab\x07example\x00\x04corp\xc0\x04"), ["lab.example", "corp.example"]);
        // A pointer to itself, forward, or into a loop ends the list.
        assert_eq!(list(b"\x03lab\x00\x01a\xc0\x05"), ["lab"]);
        assert_eq!(list(b"\x01a\xc0\x06\x00\x01b\x00"), Vec::<String>::new());
        assert_eq!(list(b"\x01a\x00\x01b\xc0\x03"), ["a"], "b.b.b... loops");
        // Truncated names, reserved label types and bad text end it too.
        for bad in [&b"\x05lab"[..], b"\x03lab", b"\x03lab\xc0", b"\x43lab\x00", b"\x02\xff\xfe\x00"] {
            assert_eq!(list(bad), Vec::<String>::new(), "{bad:?}");
        }
        // Names that could not go into a file are skipped, repeats dropped,
        // case folded; the root name (a lone 0) is no search domain.
        assert_eq!(list(b"\x00\x03l b\x00\x03LAB\x00\x03lab\x00\x01x\x00"), ["lab", "x"]);
        let many: Vec<u8> = (b'a'..=b'z').flat_map(|c| [1, c, 0]).collect();
        assert_eq!(list(&many).len(), MAX_SEARCH_DOMAINS);
        // Each name one label longer than the last, through a pointer to
        // it: the fourth (255 characters) is longer than DNS allows.
        let label = [&[63u8][..], &[b'a'; 63]].concat();
        let mut long = [&label[..], &[0]].concat();
        let mut last = 0u8;
        for _ in 0..3 {
            let at = long.len() as u8;
            long.extend([&label[..], &[0xc0, last]].concat());
            last = at;
        }
        let a = "a".repeat(63);
        assert_eq!(list(&long), [a.clone(), format!("{a}.{a}"), format!("{a}.{a}.{a}")]);
    }

    #[test]
    fn test_renewing_request_is_from_the_address_and_names_no_server() {
        let r = renew(5, MAC, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(&r[12..16], &[10, 0, 0, 7], "ciaddr");
        assert_eq!(&r[10..12], &[0, 0], "no broadcast flag: the client has an address");
        assert_eq!(&r[240..243], &[OPT_MESSAGE_TYPE, 1, REQUEST]);
        let has = |code: u8| {
            let mut at = 240;
            while at + 1 < r.len() && r[at] != OPT_END {
                if r[at] == code {
                    return true;
                }
                at += 2 + r[at + 1] as usize;
            }
            false
        };
        assert!(!has(OPT_REQUESTED_IP) && !has(OPT_SERVER_ID), "RFC 2131 4.3.2: neither in RENEWING/REBINDING");
        assert!(has(OPT_PARAM_LIST) && has(OPT_CLIENT_ID));
        let d = discover(5, MAC);
        assert_eq!((&d[10..12], &d[12..16]), (&[0x80, 0][..], &[0, 0, 0, 0][..]), "no address yet: broadcast reply");
    }

    /// The options of a message `build` made, by code.
    fn options(m: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut at = FIXED_LEN + 4;
        let mut out = Vec::new();
        while at + 1 < m.len() && m[at] != OPT_END {
            out.push((m[at], m[at + 2..at + 2 + m[at + 1] as usize].to_vec()));
            at += 2 + m[at + 1] as usize;
        }
        out
    }

    #[test]
    fn the_inform_comes_from_the_address_asks_for_ntp_and_its_ack_is_read() {
        let m = inform(6, MAC, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!((&m[10..12], &m[12..16], &m[16..20]), (&[0, 0][..], &[10, 0, 0, 7][..], &[0, 0, 0, 0][..]), "flags, ciaddr, yiaddr");
        let opts = options(&m);
        assert_eq!(opts[0], (OPT_MESSAGE_TYPE, vec![INFORM]));
        let codes: Vec<u8> = opts.iter().map(|o| o.0).collect();
        // RFC 2131, table 5: an INFORM names no address, lease or server.
        for code in [OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_SERVER_ID] {
            assert!(!codes.contains(&code), "option {code} in an INFORM");
        }
        let asked = &opts.iter().find(|o| o.0 == OPT_PARAM_LIST).unwrap().1;
        assert!(asked.contains(&OPT_NTP_SERVERS) && asked.contains(&OPT_DNS_SERVERS), "{asked:?}");
        // The ACK to an INFORM gives no address (yiaddr 0) and no lease.
        let mut ack = reply(ACK, 6);
        ack[16..20].copy_from_slice(&[0, 0, 0, 0]);
        let l = parse_reply(&ack, 6, MAC).unwrap();
        assert_eq!((l.message_type, l.address, l.ntp.as_slice()), (ACK, Ipv4Addr::UNSPECIFIED, &[Ipv4Addr::new(10, 0, 0, 123)][..]));
    }

    #[test]
    fn test_dns_options_keep_only_what_a_resolver_can_use() {
        let many: Vec<u8> = (1..=5u8).flat_map(|i| [10, 0, 0, i]).chain([9, 9]).collect();
        assert_eq!(servers(&many, MAX_DNS_SERVERS).len(), MAX_DNS_SERVERS);
        assert_eq!(servers(&[255, 255, 255, 255, 0, 0, 0, 0, 1], MAX_NTP_SERVERS), Vec::<Ipv4Addr>::new());
        assert_eq!(domain_name(b"lab.example."), Some("lab.example".into()));
        assert_eq!(domain_name(b"my_site.lan"), Some("my_site.lan".into()));
        for bad in [&b"lab example"[..], b"lab\nDNS=6.6.6.6", b"a..b", b"", b"\0", b"caf\xc3\xa9.lan", &[b'a'; 254][..]] {
            assert_eq!(domain_name(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(domain_name(&[b'a'; 64]), None, "a label is at most 63 octets");
        assert_eq!(host_name(b"pc-042.lab.example"), Some("pc-042.lab.example".into()));
        let long = [&[b'a'; 60][..], b".", &[b'b'; 10][..]].concat();
        assert_eq!((domain_name(&long).is_some(), host_name(&long)), (true, None), "the kernel keeps 64 characters");
    }

    #[test]
    fn test_parse_truncated_option_is_rejected() {
        let mut r = reply(ACK, 3);
        r.pop(); // END
        r.push(OPT_ROUTER);
        r.push(200); // longer than what follows
        assert!(parse_reply(&r, 3, MAC).is_none());
    }
}
