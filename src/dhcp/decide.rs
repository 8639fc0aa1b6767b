//! The proxy DHCP decision, as a pure function: a decoded request, the port
//! it arrived on and what the daemon knows go in; a reply (or none) and a
//! boot event come out. No sockets, no clock.
//!
//! Facts from `../shared/reference/pxe-dhcp.md`: answer only PXE clients
//! (option 60 `PXEClient...`), never hand out addresses (yiaddr 0, no lease
//! options), echo option 97, put the boot file in `siaddr` + `file` and in
//! options 66/67, option 43 sub-option 6 = 8 (no further discovery). A client
//! that already runs iPXE (option 77 `iPXE` or option 175) gets its script,
//! so it never loads iPXE again.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};

use crate::mac::Mac;

/// Option 43 sub-option 6 (PXE_DISCOVERY_CONTROL) = 8: boot the file named
/// in this reply, no boot server discovery, no menu.
const PXE_DISCOVERY_CONTROL_BOOT_FILE: [u8; 4] = [6, 1, 8, 255];
/// iPXE's encapsulated options.
const OPT_IPXE_ENCAP: u8 = 175;
/// Longest file name the BOOTP `file` field holds (128 bytes with its NUL).
pub const MAX_BOOT_FILE: usize = 127;

/// Which port a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67: answer DISCOVER with a proxy OFFER.
    Dhcp,
    /// 4011: answer REQUEST with an ACK carrying the boot file.
    Pxe,
}

/// The client's firmware, from option 93.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Bios,
    UefiX64,
    UefiArm64,
}

impl Arch {
    fn from_option93(code: u16) -> Option<Arch> {
        match code {
            0 => Some(Arch::Bios),
            // 9 is EBC by the RFC, but many x64 firmwares send it; 16 and
            // 19 are the x64 and ARM64 UEFI HTTP boot clients.
            7 | 9 | 16 => Some(Arch::UefiX64),
            11 | 19 => Some(Arch::UefiArm64),
            _ => None,
        }
    }
}

/// Boot file names per architecture (inside the boot directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub bios: String,
    pub uefi_x64: String,
    pub uefi_arm64: String,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles { bios: "undionly.kpxe".into(), uefi_x64: "ipxe.efi".into(), uefi_arm64: "ipxe-arm64.efi".into() }
    }
}

/// How UEFI firmware is answered (pxe-dhcp.md): (a) everything in the offer,
/// or (b) a bare offer, then the boot file in an ACK on port 4011.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UefiStrategy {
    InOffer,
    Via4011,
}

/// What the decision needs from the daemon.
pub struct Context<'a> {
    pub server: Ipv4Addr,
    pub files: &'a BootFiles,
    pub uefi: UefiStrategy,
    /// Whether this MAC may boot (configured, or unknown clients boot).
    pub may_boot: &'a dyn Fn(Mac) -> bool,
    /// The script URL for a client already running iPXE.
    pub script_url: &'a dyn Fn(Mac) -> String,
    /// `http://server:port` when HTTP is served: UEFI HTTP boot clients
    /// (option 60 `HTTPClient`) are answered then, with a URL.
    pub http_base: Option<&'a str>,
    /// UEFI strategy per vendor class prefix (option 60), longest match
    /// first; `uefi` otherwise.
    pub uefi_by_class: &'a [(String, UefiStrategy)],
    /// Whether a MAC is still using its address (its root is attached over
    /// NBD), whatever its lease says.
    pub in_use: &'a dyn Fn(Mac) -> bool,
}

/// Which kind of boot client a request comes from, by option 60.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientClass {
    Pxe,
    Http,
}

/// What a request was, for the boot timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub mac: Mac,
    pub kind: MessageType,
    pub arch: Option<u16>,
    pub ipxe: bool,
    /// The boot file offered, if any.
    pub offered: Option<String>,
    /// Full mode: a PXE client that got an address but no boot file, and why.
    pub not_booted: Option<Ignored>,
}

impl Seen {
    /// A request of `kind` from `mac`, nothing known or offered yet.
    fn new(mac: Mac, kind: MessageType) -> Seen {
        Seen { mac, kind, arch: None, ipxe: false, offered: None, not_booted: None }
    }
}

/// Why a request gets no answer, or (full mode) an address but no boot
/// file. The last two are PXE clients a person wants told about, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("not a BOOTREQUEST")]
    NotBootRequest,
    #[error("not an Ethernet client")]
    NotEthernet,
    #[error("not PXE firmware (option 60)")]
    NotPxe,
    #[error("not a message this mode answers")]
    WrongMessage,
    /// Full mode: relayed from a subnet (the relay's giaddr) that no pool
    /// is on; an address from a pool would be useless there.
    #[error("relayed from {0}, a subnet no pool is on")]
    OtherSubnet(Ipv4Addr),
    #[error(
        "PXE client {mac} has client architecture {code} (option 93), for which pxeroot has no boot file: \
         BIOS (0), UEFI x64 (7, 9, HTTP 16) and ARM64 (11, HTTP 19) are served"
    )]
    UnknownArch { mac: Mac, code: u16 },
    #[error("PXE client {0} is not in the config: add a [clients.\"{0}\"] table, or set unknown_clients.action = \"boot\"")]
    NotAllowed(Mac),
}

impl Ignored {
    /// The client this is about, when a person should hear of it: PXE
    /// firmware that asked to boot and will not.
    pub fn refused_client(&self) -> Option<Mac> {
        match self {
            Ignored::UnknownArch { mac, .. } | Ignored::NotAllowed(mac) => Some(*mac),
            _ => None,
        }
    }
}

/// The client's MAC, if the request is an Ethernet BOOTREQUEST.
fn client_mac(req: &Message) -> Result<Mac, Ignored> {
    if req.opcode() != Opcode::BootRequest {
        return Err(Ignored::NotBootRequest);
    }
    match req.chaddr().get(..6).and_then(|c| <[u8; 6]>::try_from(c).ok()) {
        Some(m) => Ok(Mac(m)),
        None => Err(Ignored::NotEthernet),
    }
}

fn vendor_class(req: &Message) -> &[u8] {
    match req.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) => c,
        _ => &[],
    }
}

/// PXE firmware, or (when HTTP is served) a UEFI HTTP boot client.
fn client_class(req: &Message, ctx: &Context) -> Option<ClientClass> {
    let c = vendor_class(req);
    if c.starts_with(b"PXEClient") {
        Some(ClientClass::Pxe)
    } else if c.starts_with(b"HTTPClient") && ctx.http_base.is_some() {
        Some(ClientClass::Http)
    } else {
        None
    }
}

/// The UEFI strategy for this request's vendor class.
fn uefi_strategy(req: &Message, ctx: &Context) -> UefiStrategy {
    let c = vendor_class(req);
    ctx.uefi_by_class
        .iter()
        .filter(|(prefix, _)| c.starts_with(prefix.as_bytes()))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or(ctx.uefi, |(_, s)| *s)
}

/// What to boot, for a PXE client that may boot: the file name (a script
/// URL for iPXE), plus what the timeline records.
struct Boot {
    file: String,
    arch: Option<u16>,
    arch_kind: Arch,
    ipxe: bool,
}

fn boot_for(req: &Message, mac: Mac, ctx: &Context) -> Result<Boot, Ignored> {
    let opts = req.opts();
    let arch_code = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    };
    // No option 93: a legacy BIOS ROM.
    let arch = match arch_code {
        None => Arch::Bios,
        Some(code) => Arch::from_option93(code).ok_or(Ignored::UnknownArch { mac, code })?,
    };
    let ipxe = matches!(opts.get(OptionCode::UserClass), Some(DhcpOption::UserClass(u)) if u == b"iPXE")
        || opts.get(OptionCode::Unknown(OPT_IPXE_ENCAP)).is_some();
    if !(ctx.may_boot)(mac) {
        return Err(Ignored::NotAllowed(mac));
    }
    let file = if ipxe {
        (ctx.script_url)(mac)
    } else {
        match arch {
            Arch::Bios => ctx.files.bios.clone(),
            Arch::UefiX64 => ctx.files.uefi_x64.clone(),
            Arch::UefiArm64 => ctx.files.uefi_arm64.clone(),
        }
    };
    Ok(Boot { file, arch: arch_code, arch_kind: arch, ipxe })
}

/// A reply skeleton for `req`: same xid, chaddr, flags and giaddr. A reply
/// that gives no address to a client without one (a proxy offer, a NAK)
/// also sets the broadcast flag: a relay agent unicasts a reply to its
/// yiaddr unless the flag is set (RFC 2131, 4.1), and 0.0.0.0 reaches
/// nobody, so the client behind a relay would never see it.
fn reply_to(req: &Message, kind: MessageType, server: Ipv4Addr, yiaddr: Ipv4Addr) -> Message {
    let broadcast = req.flags().broadcast() || (yiaddr.is_unspecified() && req.ciaddr().is_unspecified());
    let mut r = Message::default();
    r.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_xid(req.xid())
        .set_flags(if broadcast { Flags::default().set_broadcast() } else { Flags::default() })
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr())
        .set_yiaddr(yiaddr)
        .set_siaddr(server);
    r.opts_mut().insert(DhcpOption::MessageType(kind));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    r
}

/// Where `reply` to `req` (which came from `from` on `port`) goes (RFC
/// 2131, 4.1): through the relay when there is one; to port 4011's asker
/// as it asked; a client that has an address (ciaddr: renewing its lease)
/// gets its OFFER or ACK unicast; the rest, and every NAK, is broadcast.
pub fn destination(req: &Message, reply: &Message, port: Port, from: SocketAddr) -> SocketAddr {
    let to = |ip: Ipv4Addr, port: u16| SocketAddr::V4(SocketAddrV4::new(ip, port));
    match port {
        Port::Pxe => from,
        Port::Dhcp if !req.giaddr().is_unspecified() => to(req.giaddr(), 67),
        Port::Dhcp if !req.ciaddr().is_unspecified() && reply.opts().msg_type() != Some(MessageType::Nak) => to(req.ciaddr(), 68),
        Port::Dhcp => to(Ipv4Addr::BROADCAST, 68),
    }
}

/// `name` cut to at most MAX_BOOT_FILE bytes, at a character boundary.
fn boot_file_name(name: &str) -> String {
    let mut end = name.len().min(MAX_BOOT_FILE);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// UEFI HTTP boot: option 60 `HTTPClient` and a URL as the file (a name
/// without a scheme is under pxeroot's HTTP base).
fn add_http_boot(r: &mut Message, ctx: &Context, file: String) -> String {
    let url = if file.contains("://") { file } else { format!("{}/{}", ctx.http_base.unwrap_or_default(), file) };
    let name = boot_file_name(&url);
    r.opts_mut().insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    r.opts_mut().insert(DhcpOption::BootfileName(name.as_bytes().to_vec()));
    r.set_fname_str(&name);
    name
}

/// Put the boot information into a reply: `file`, options 60, 97, 66, 67, 43.
fn add_boot(r: &mut Message, req: &Message, server: Ipv4Addr, file: &str) -> String {
    let name = boot_file_name(file);
    let o = r.opts_mut();
    o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    if let Some(DhcpOption::ClientMachineIdentifier(id)) = req.opts().get(OptionCode::ClientMachineIdentifier) {
        o.insert(DhcpOption::ClientMachineIdentifier(id.clone()));
    }
    o.insert(DhcpOption::TFTPServerName(server.to_string().into_bytes()));
    o.insert(DhcpOption::BootfileName(name.as_bytes().to_vec()));
    o.insert(DhcpOption::VendorExtensions(PXE_DISCOVERY_CONTROL_BOOT_FILE.to_vec()));
    r.set_fname_str(&name);
    name
}

/// Decide the proxy reply to `req`, which arrived on `port`.
pub fn decide(req: &Message, port: Port, ctx: &Context) -> Result<(Message, Seen), Ignored> {
    let mac = client_mac(req)?;
    let class = client_class(req, ctx).ok_or(Ignored::NotPxe)?;
    let kind = req.opts().msg_type().ok_or(Ignored::WrongMessage)?;
    let reply_kind = match (port, kind) {
        (Port::Dhcp, MessageType::Discover) => MessageType::Offer,
        (Port::Pxe, MessageType::Request) => MessageType::Ack,
        _ => return Err(Ignored::WrongMessage),
    };
    let Boot { file, arch: arch_code, arch_kind: arch, ipxe } = boot_for(req, mac, ctx)?;
    if class == ClientClass::Http {
        let mut r = reply_to(req, reply_kind, ctx.server, Ipv4Addr::UNSPECIFIED);
        let name = add_http_boot(&mut r, ctx, file);
        return Ok((r, Seen { arch: arch_code, ipxe, offered: Some(name), ..Seen::new(mac, kind) }));
    }
    // Strategy (b): UEFI firmware gets a bare offer and the file on 4011.
    let bare = reply_kind == MessageType::Offer && !ipxe && arch != Arch::Bios && uefi_strategy(req, ctx) == UefiStrategy::Via4011;

    let mut r = reply_to(req, reply_kind, ctx.server, Ipv4Addr::UNSPECIFIED);
    let offered = if bare {
        r.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        if let Some(DhcpOption::ClientMachineIdentifier(id)) = req.opts().get(OptionCode::ClientMachineIdentifier) {
            r.opts_mut().insert(DhcpOption::ClientMachineIdentifier(id.clone()));
        }
        None
    } else {
        Some(add_boot(&mut r, req, ctx.server, &file))
    };
    Ok((r, Seen { arch: arch_code, ipxe, offered, ..Seen::new(mac, kind) }))
}

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

pub use nbd_wire::limits::MIN_MTU;

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

/// The pool a request draws from: behind a relay, the one on the relay's
/// subnet (its giaddr); from a client that has its address (a renewal,
/// an INFORM), sent unicast and routed from a relayed segment, the one on
/// that address's subnet (RFC 2131, 4.3.2 and 4.3.5); else the first,
/// pxeroot's own segment.
pub fn pick_pool(pools: &[Pool], req: &Message) -> Result<usize, Ignored> {
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

/// [`decide_full`] with the pool [`pick_pool`] chooses (`tables[i]` is
/// `pools[i]`'s lease table).
pub fn decide_full_pools(
    req: &Message,
    ctx: &Context,
    pools: &[Pool],
    tables: &mut [super::leases::LeaseTable],
    now: u64,
) -> Result<Option<(Message, Seen)>, Ignored> {
    let i = pick_pool(pools, req)?;
    let table = tables.get_mut(i).ok_or(Ignored::OtherSubnet(req.giaddr()))?;
    decide_full(req, ctx, &pools[i].network, table, now)
}

/// iPXE's option 175 with sub-option 176 (no-pxedhcp) = 1: do not wait for
/// proxy offers, this server's offer says everything.
const IPXE_NO_PXEDHCP: [u8; 3] = [176, 1, 1];

/// Decide a full-DHCP reply: addresses for every client (from `leases`, at
/// `now` seconds), boot information for PXE clients that may boot, the
/// pool's options to an INFORM. `Ok(None)` for messages that need no reply
/// (DECLINE, RELEASE, another server's REQUEST, an INFORM without ciaddr).
pub fn decide_full(
    req: &Message,
    ctx: &Context,
    net: &Network,
    leases: &mut super::leases::LeaseTable,
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
    if inform {
        // Its boot went by long ago.
        return Ok(Some((r, seen)));
    }
    let class = client_class(req, ctx);
    let boot = class.map(|_| boot_for(req, mac, ctx));
    if let Some(Err(why)) = &boot {
        seen.not_booted = Some(why.clone());
    }
    if let (Some(class), Some(Ok(boot))) = (class, boot) {
        seen.arch = boot.arch;
        seen.ipxe = boot.ipxe;
        if class == ClientClass::Http {
            seen.offered = Some(add_http_boot(&mut r, ctx, boot.file));
        } else {
            seen.offered = Some(add_boot(&mut r, req, ctx.server, &boot.file));
            r.opts_mut().insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
                OptionCode::Unknown(OPT_IPXE_ENCAP),
                IPXE_NO_PXEDHCP.to_vec(),
            )));
        }
    }
    Ok(Some((r, seen)))
}

/// The fixture reader the integration tests use too.
#[cfg(test)]
#[path = "../../tests/common/pcap.rs"]
mod pcap;

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::{Decodable, Decoder};

    pub(super) fn fixture(name: &str) -> Vec<Message> {
        pcap::fixture_payloads(name).iter().filter_map(|(_, p)| Message::decode(&mut Decoder::new(p)).ok()).collect()
    }

    pub(super) fn ctx<'a>(
        files: &'a BootFiles,
        uefi: UefiStrategy,
        may: &'a dyn Fn(Mac) -> bool,
        url: &'a dyn Fn(Mac) -> String,
    ) -> Context<'a> {
        Context {
            server: Ipv4Addr::new(10, 99, 0, 1),
            files,
            uefi,
            may_boot: may,
            script_url: url,
            http_base: Some("http://10.99.0.1:80"),
            uefi_by_class: &[],
            in_use: &|_| false,
        }
    }

    pub(super) fn opt_bytes(m: &Message, code: OptionCode) -> Option<Vec<u8>> {
        match m.opts().get(code)? {
            DhcpOption::BootfileName(b)
            | DhcpOption::ClassIdentifier(b)
            | DhcpOption::VendorExtensions(b)
            | DhcpOption::ClientMachineIdentifier(b) => Some(b.clone()),
            _ => None,
        }
    }

    #[test]
    fn test_bios_ipxe_rom_discover_gets_its_script() {
        let files = BootFiles::default();
        let url = |m: Mac| format!("tftp://10.99.0.1/pxeroot/{}.ipxe", m.file_stem());
        let reqs = fixture("bios-ipxe-rom.pcap");
        assert!(!reqs.is_empty());
        for req in reqs {
            let (r, seen) = decide(&req, Port::Dhcp, &ctx(&files, UefiStrategy::InOffer, &|_| true, &url)).unwrap();
            assert_eq!(seen.mac.to_string(), "52:54:00:aa:00:01");
            assert!(seen.ipxe && seen.arch == Some(0));
            assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
            assert_eq!(r.xid(), req.xid());
            assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED, "a proxy never hands out addresses");
            assert_eq!(r.siaddr(), Ipv4Addr::new(10, 99, 0, 1));
            assert_eq!(opt_bytes(&r, OptionCode::ClassIdentifier).unwrap(), b"PXEClient");
            assert_eq!(opt_bytes(&r, OptionCode::BootfileName).unwrap(), b"tftp://10.99.0.1/pxeroot/52-54-00-aa-00-01.ipxe");
            assert!(r.opts().get(OptionCode::SubnetMask).is_none() && r.opts().get(OptionCode::AddressLeaseTime).is_none());
            assert_eq!(
                opt_bytes(&r, OptionCode::ClientMachineIdentifier),
                opt_bytes(&req, OptionCode::ClientMachineIdentifier),
                "option 97 echoed"
            );
        }
    }

    #[test]
    fn test_ovmf_native_pxe_gets_ipxe_efi_and_rom_gets_script() {
        let files = BootFiles::default();
        let url = |_m: Mac| "tftp://10.99.0.1/pxeroot/x.ipxe".to_string();
        let mut native = 0;
        let mut rom = 0;
        for req in fixture("ovmf-virtio.pcap") {
            let (r, seen) = decide(&req, Port::Dhcp, &ctx(&files, UefiStrategy::InOffer, &|_| true, &url)).unwrap();
            assert_eq!(seen.arch, Some(7));
            let file = opt_bytes(&r, OptionCode::BootfileName).unwrap();
            if seen.ipxe {
                rom += 1;
                assert_eq!(file, b"tftp://10.99.0.1/pxeroot/x.ipxe");
            } else {
                native += 1;
                assert_eq!(file, b"ipxe.efi");
                assert_eq!(opt_bytes(&r, OptionCode::VendorExtensions).unwrap(), PXE_DISCOVERY_CONTROL_BOOT_FILE);
                assert!(r.flags().broadcast(), "broadcast flag kept");
            }
        }
        assert!(native > 0 && rom > 0, "native {native} rom {rom}");
    }

    #[test]
    fn test_uefi_via_4011_bare_offer_then_ack() {
        let files = BootFiles::default();
        let url = |_m: Mac| String::new();
        let c = ctx(&files, UefiStrategy::Via4011, &|_| true, &url);
        let req = fixture("ovmf-full-chain.pcap").into_iter().find(|m| m.opts().msg_type() == Some(MessageType::Discover)).unwrap();
        let (offer, seen) = decide(&req, Port::Dhcp, &c).unwrap();
        assert_eq!(seen.offered, None);
        assert!(offer.opts().get(OptionCode::BootfileName).is_none());
        let mut request = req.clone();
        request.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
        let (ack, seen) = decide(&request, Port::Pxe, &c).unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(seen.offered.as_deref(), Some("ipxe.efi"));
        // A DISCOVER on 4011, or a REQUEST on 67, is not ours.
        assert_eq!(decide(&req, Port::Pxe, &c).unwrap_err(), Ignored::WrongMessage);
        assert_eq!(decide(&request, Port::Dhcp, &c).unwrap_err(), Ignored::WrongMessage);
    }

    /// Behind a relay: the offer goes back with the relay's giaddr and the
    /// broadcast flag, or the relay would unicast it to 0.0.0.0; a client
    /// that has its address (a REQUEST on 4011) gets a plain unicast reply.
    #[test]
    fn test_relayed_discover_gets_a_broadcast_offer() {
        let files = BootFiles::default();
        let url = |_m: Mac| "tftp://10.99.0.1/pxeroot/x.ipxe".to_string();
        let c = ctx(&files, UefiStrategy::InOffer, &|_| true, &url);
        let mut req = fixture("bios-ipxe-rom.pcap").remove(0);
        let relay = Ipv4Addr::new(10, 98, 0, 1);
        req.set_giaddr(relay).set_flags(Flags::default());
        let (offer, _) = decide(&req, Port::Dhcp, &c).unwrap();
        assert_eq!(offer.giaddr(), relay);
        assert!(offer.flags().broadcast(), "a relayed proxy offer without the broadcast flag reaches nobody");
        let mut request = req.clone();
        request.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
        request.set_giaddr(Ipv4Addr::UNSPECIFIED).set_ciaddr(Ipv4Addr::new(10, 98, 0, 58));
        let (ack, _) = decide(&request, Port::Pxe, &c).unwrap();
        assert!(!ack.flags().broadcast(), "a client with an address gets a unicast reply");
    }

    #[test]
    fn test_uefi_http_boot_client_gets_a_url() {
        let files = BootFiles::default();
        let url = |_m: Mac| String::new();
        let mut req = fixture("ovmf-full-chain.pcap").into_iter().find(|m| m.opts().msg_type() == Some(MessageType::Discover)).unwrap();
        req.opts_mut().insert(DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016:UNDI:003001".to_vec()));
        req.opts_mut().insert(DhcpOption::ClientSystemArchitecture(dhcproto::v4::Architecture::Unknown(16)));
        let (r, seen) = decide(&req, Port::Dhcp, &ctx(&files, UefiStrategy::InOffer, &|_| true, &url)).unwrap();
        assert_eq!(opt_bytes(&r, OptionCode::ClassIdentifier).unwrap(), b"HTTPClient");
        assert_eq!(seen.offered.as_deref(), Some("http://10.99.0.1:80/ipxe.efi"));
        // Without HTTP served, HTTP boot clients are not answered.
        let mut c = ctx(&files, UefiStrategy::InOffer, &|_| true, &url);
        c.http_base = None;
        assert_eq!(decide(&req, Port::Dhcp, &c).unwrap_err(), Ignored::NotPxe);
    }

    #[test]
    fn test_uefi_strategy_per_vendor_class() {
        let files = BootFiles::default();
        let url = |_m: Mac| String::new();
        let req = fixture("ovmf-full-chain.pcap").into_iter().find(|m| m.opts().msg_type() == Some(MessageType::Discover)).unwrap();
        let by_class = vec![("PXEClient:Arch:00007".to_string(), UefiStrategy::Via4011)];
        let mut c = ctx(&files, UefiStrategy::InOffer, &|_| true, &url);
        c.uefi_by_class = &by_class;
        let (offer, _) = decide(&req, Port::Dhcp, &c).unwrap();
        assert!(offer.opts().get(OptionCode::BootfileName).is_none(), "class override to via-4011 ignored");
    }

    #[test]
    fn test_ignores_non_pxe_and_unknown_macs() {
        let files = BootFiles::default();
        let url = |_m: Mac| String::new();
        let req = fixture("bios-ipxe-rom.pcap").remove(0);
        let c = ctx(&files, UefiStrategy::InOffer, &|_| false, &url);
        assert!(matches!(decide(&req, Port::Dhcp, &c), Err(Ignored::NotAllowed(_))));
        let mut plain = req.clone();
        plain.opts_mut().insert(DhcpOption::ClassIdentifier(b"MSFT 5.0".to_vec()));
        let c = ctx(&files, UefiStrategy::InOffer, &|_| true, &url);
        assert_eq!(decide(&plain, Port::Dhcp, &c).unwrap_err(), Ignored::NotPxe);
        let mut arch = req.clone();
        arch.opts_mut().insert(DhcpOption::ClientSystemArchitecture(dhcproto::v4::Architecture::Unknown(25)));
        assert!(matches!(decide(&arch, Port::Dhcp, &c), Err(Ignored::UnknownArch { code: 25, .. })));
    }
}

#[cfg(test)]
mod full_tests {
    use super::tests::{ctx, fixture, opt_bytes};
    use super::*;
    use crate::dhcp::leases::LeaseTable;

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
        let pools = [pool([10, 99, 0], 254), pool([10, 98, 0], 1)];
        let mut tables: Vec<LeaseTable> =
            pools.iter().map(|p| LeaseTable::new(p.range.0, p.range.1, 3600, p.reservations.clone())).collect();
        let mut req = discover([0x52, 0x54, 0, 0, 0, 1], true);
        let (offer, _) = decide_full_pools(&req, &c, &pools, &mut tables, 0).unwrap().unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 99, 0, 100));
        req.set_giaddr(Ipv4Addr::new(10, 98, 0, 1));
        let (offer, _) = decide_full_pools(&req, &c, &pools, &mut tables, 0).unwrap().unwrap();
        assert_eq!((offer.yiaddr(), offer.giaddr()), (Ipv4Addr::new(10, 98, 0, 100), Ipv4Addr::new(10, 98, 0, 1)));
        assert!(matches!(offer.opts().get(OptionCode::Router), Some(DhcpOption::Router(r)) if r == &[Ipv4Addr::new(10, 98, 0, 1)]));
        req.set_giaddr(Ipv4Addr::new(10, 97, 0, 1));
        assert_eq!(decide_full_pools(&req, &c, &pools, &mut tables, 0).unwrap_err(), Ignored::OtherSubnet(Ipv4Addr::new(10, 97, 0, 1)));
        req.set_giaddr(Ipv4Addr::new(10, 99, 0, 7));
        assert_eq!(pick_pool(&pools, &req), Ok(0), "a relay on the first pool's subnet");
        // A relayed client renews or INFORMs unicast, routed, from its
        // address (no giaddr): its own pool answers, with its own router.
        let mut renew = discover([0x52, 0x54, 0, 0, 0, 1], false);
        renew.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
        renew.set_ciaddr(Ipv4Addr::new(10, 98, 0, 100));
        let (ack, _) = decide_full_pools(&renew, &c, &pools, &mut tables, 10).unwrap().unwrap();
        assert_eq!((ack.opts().msg_type(), ack.yiaddr()), (Some(MessageType::Ack), Ipv4Addr::new(10, 98, 0, 100)));
        renew.opts_mut().insert(DhcpOption::MessageType(MessageType::Inform));
        let (ack, _) = decide_full_pools(&renew, &c, &pools, &mut tables, 10).unwrap().unwrap();
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

    #[test]
    fn test_boot_file_names_are_cut_at_a_character_boundary() {
        let long = format!("{}é", "a".repeat(MAX_BOOT_FILE - 1));
        assert_eq!(boot_file_name(&long), "a".repeat(MAX_BOOT_FILE - 1));
        assert_eq!(boot_file_name("ipxe.efi"), "ipxe.efi");
    }
}
