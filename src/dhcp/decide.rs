//! The proxy DHCP decision, as a pure function: a decoded request, the port
//! it arrived on and what the daemon knows go in; a reply (or none) and a
//! boot event come out. No sockets, no clock. Full mode (`full.rs`) runs
//! its own first steps (the lease), then the same boot step.
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
pub(super) const OPT_IPXE_ENCAP: u8 = 175;
/// iPXE's option 175 with sub-option 176 (no-pxedhcp) = 1: do not wait for
/// proxy offers, this server's offer says everything.
pub(super) const IPXE_NO_PXEDHCP: [u8; 3] = [176, 1, 1];
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

impl BootFiles {
    /// The file firmware of `arch` is offered (before it runs iPXE).
    pub fn for_arch(&self, arch: Arch) -> &str {
        match arch {
            Arch::Bios => &self.bios,
            Arch::UefiX64 => &self.uefi_x64,
            Arch::UefiArm64 => &self.uefi_arm64,
        }
    }
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles { bios: "undionly.kpxe".into(), uefi_x64: "ipxe.efi".into(), uefi_arm64: "ipxe-arm64.efi".into() }
    }
}

/// How UEFI firmware is answered (pxe-dhcp.md): (a) everything in the offer,
/// or (b) a bare offer, then the boot file in an ACK on port 4011
/// (`dhcp.uefi`: "in-offer", "via-4011").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum UefiStrategy {
    #[default]
    #[serde(rename = "in-offer")]
    InOffer,
    #[serde(rename = "via-4011")]
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
pub(super) enum ClientClass {
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
    pub(super) fn new(mac: Mac, kind: MessageType) -> Seen {
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
pub(super) fn client_mac(req: &Message) -> Result<Mac, Ignored> {
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
pub(super) fn client_class(req: &Message, ctx: &Context) -> Option<ClientClass> {
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
    let file = if ipxe { (ctx.script_url)(mac) } else { ctx.files.for_arch(arch).to_string() };
    Ok(Boot { file, arch: arch_code, arch_kind: arch, ipxe })
}

/// A reply skeleton for `req`: same xid, chaddr, flags and giaddr. A reply
/// that gives no address to a client without one (a proxy offer, a NAK)
/// also sets the broadcast flag: a relay agent unicasts a reply to its
/// yiaddr unless the flag is set (RFC 2131, 4.1), and 0.0.0.0 reaches
/// nobody, so the client behind a relay would never see it.
pub(super) fn reply_to(req: &Message, kind: MessageType, server: Ipv4Addr, yiaddr: Ipv4Addr) -> Message {
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
/// The URL a UEFI HTTP boot client is given for `file`: itself when it is
/// a URL (an iPXE script's), else under pxeroot's HTTP base.
pub fn http_boot_url(http_base: &str, file: &str) -> String {
    if file.contains("://") {
        file.to_string()
    } else {
        format!("{http_base}/{file}")
    }
}

fn add_http_boot(r: &mut Message, ctx: &Context, file: String) -> String {
    let url = http_boot_url(ctx.http_base.unwrap_or_default(), &file);
    let name = boot_file_name(&url);
    r.opts_mut().insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    r.opts_mut().insert(DhcpOption::BootfileName(name.as_bytes().to_vec()));
    r.set_fname_str(&name);
    name
}

/// What makes a reply a PXE server's: option 60 `PXEClient` and the
/// client's own option 97 echoed (a bare offer carries only these).
fn add_pxe_identity(r: &mut Message, req: &Message) {
    let o = r.opts_mut();
    o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    if let Some(DhcpOption::ClientMachineIdentifier(id)) = req.opts().get(OptionCode::ClientMachineIdentifier) {
        o.insert(DhcpOption::ClientMachineIdentifier(id.clone()));
    }
}

/// Put the boot information into a reply: `file`, options 60, 97, 66, 67, 43.
fn add_boot(r: &mut Message, req: &Message, server: Ipv4Addr, file: &str) -> String {
    let name = boot_file_name(file);
    add_pxe_identity(r, req);
    let o = r.opts_mut();
    o.insert(DhcpOption::TFTPServerName(server.to_string().into_bytes()));
    o.insert(DhcpOption::BootfileName(name.as_bytes().to_vec()));
    o.insert(DhcpOption::VendorExtensions(PXE_DISCOVERY_CONTROL_BOOT_FILE.to_vec()));
    r.set_fname_str(&name);
    name
}

/// Which reply the shared boot step is adding to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BootReply {
    /// A proxy OFFER on port 67: UEFI firmware may get it bare (strategy b).
    ProxyOffer,
    /// A proxy ACK on port 4011.
    ProxyAck,
    /// A full-mode OFFER or ACK: it carries an address too, so iPXE is told
    /// not to wait for proxy offers.
    Full,
}

/// The step both modes share, last in each one's pipeline: for a PXE or
/// UEFI HTTP boot client (`class`) that may boot, its boot file (iPXE: its
/// script's URL) and the options that carry it, recorded in `seen`. `Err`:
/// the client may not boot, and why.
pub(super) fn boot_step(
    r: &mut Message,
    req: &Message,
    ctx: &Context,
    class: ClientClass,
    reply: BootReply,
    seen: &mut Seen,
) -> Result<(), Ignored> {
    let Boot { file, arch, arch_kind, ipxe } = boot_for(req, seen.mac, ctx)?;
    (seen.arch, seen.ipxe) = (arch, ipxe);
    let bare = reply == BootReply::ProxyOffer && !ipxe && arch_kind != Arch::Bios && uefi_strategy(req, ctx) == UefiStrategy::Via4011;
    seen.offered = match class {
        ClientClass::Http => Some(add_http_boot(r, ctx, file)),
        // Strategy (b): UEFI firmware gets a bare offer and the file on 4011.
        ClientClass::Pxe if bare => {
            add_pxe_identity(r, req);
            None
        }
        ClientClass::Pxe => {
            let name = add_boot(r, req, ctx.server, &file);
            if reply == BootReply::Full {
                r.opts_mut().insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
                    OptionCode::Unknown(OPT_IPXE_ENCAP),
                    IPXE_NO_PXEDHCP.to_vec(),
                )));
            }
            Some(name)
        }
    };
    Ok(())
}

/// Decide the proxy reply to `req`, which arrived on `port`. The pipeline:
/// the client (an Ethernet BOOTREQUEST from PXE or HTTP boot firmware),
/// the message this port answers, a reply with no address, the boot step.
pub fn decide(req: &Message, port: Port, ctx: &Context) -> Result<(Message, Seen), Ignored> {
    let mac = client_mac(req)?;
    let class = client_class(req, ctx).ok_or(Ignored::NotPxe)?;
    let kind = req.opts().msg_type().ok_or(Ignored::WrongMessage)?;
    let (reply_kind, boot) = match (port, kind) {
        (Port::Dhcp, MessageType::Discover) => (MessageType::Offer, BootReply::ProxyOffer),
        (Port::Pxe, MessageType::Request) => (MessageType::Ack, BootReply::ProxyAck),
        _ => return Err(Ignored::WrongMessage),
    };
    let mut r = reply_to(req, reply_kind, ctx.server, Ipv4Addr::UNSPECIFIED);
    let mut seen = Seen::new(mac, kind);
    boot_step(&mut r, req, ctx, class, boot, &mut seen)?;
    Ok((r, seen))
}

/// The fixture reader the integration tests use too.
#[cfg(test)]
#[path = "../../tests/common/pcap.rs"]
mod pcap;

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use dhcproto::{Decodable, Decoder};

    pub(in crate::dhcp) fn fixture(name: &str) -> Vec<Message> {
        pcap::fixture_payloads(name).iter().filter_map(|(_, p)| Message::decode(&mut Decoder::new(p)).ok()).collect()
    }

    pub(in crate::dhcp) fn ctx<'a>(
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

    pub(in crate::dhcp) fn opt_bytes(m: &Message, code: OptionCode) -> Option<Vec<u8>> {
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

    #[test]
    fn test_boot_file_names_are_cut_at_a_character_boundary() {
        let long = format!("{}é", "a".repeat(MAX_BOOT_FILE - 1));
        assert_eq!(boot_file_name(&long), "a".repeat(MAX_BOOT_FILE - 1));
        assert_eq!(boot_file_name("ipxe.efi"), "ipxe.efi");
    }
}
