//! The kernel command line, parsed into pxeroot-init's settings. Pure: the
//! caller reads `/proc/cmdline`.
//!
//! Keys (unknown ones are the kernel's or the real init's business):
//! - `pxeroot.server=IP[:PORT]` (required), `pxeroot.export=NAME` (default:
//!   the MAC of the boot interface), `pxeroot.attach=netlink|ioctl`
//!   (default netlink: the ioctl attach loses the root's last writes under
//!   systemd's shutdown),
//!   `pxeroot.timeout=SECONDS` (NBD request timeout),
//!   `pxeroot.reconnect=SECONDS` (netlink: how long I/O waits for a
//!   reconnect), `pxeroot.partition=N` (the root is partition N of the
//!   disk, 1 to [`MAX_PARTITION`]; default: the whole disk), `pxeroot.debug`,
//!   `pxeroot.lease=SERVER,SECONDS[,T1[,T2]]` (the DHCP lease behind `ip=`,
//!   as iPXE's script passes it: decimal or `0x` hex, empty fields unknown;
//!   pxeroot-init keeps it renewed), `pxeroot.mtu=N` (the segment's MTU,
//!   DHCP option 26 as iPXE passes it; empty: the NIC's default),
//!   `pxeroot.handoff=0|1` (default 1: leave the root's udev,
//!   systemd-networkd and ifupdown units the files in `/run` that keep the boot
//!   interface as it is), `pxeroot.dns=HEX` and `pxeroot.domain=HEX` (DHCP
//!   options 6 and 15 as iPXE's `:hexraw` format prints them, for the
//!   root's resolver; a value that is not hex, or a domain that is not a
//!   plain DNS name, is dropped),
//!   `pxeroot.search=HEX` (option 119, likewise: the root's search
//!   domains, RFC 3397's encoding),
//!   `pxeroot.hostname=HEX` (option 12, likewise: the kernel's hostname),
//!   `pxeroot.ntp=HEX` (option 42, likewise: the root's NTP servers);
//! - `ip=CLIENT:SERVER:GATEWAY:NETMASK:HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1` as the kernel
//!   and iPXE write it (`ip=dhcp` or absent: DHCP on the boot interface);
//! - `BOOTIF=01-52-54-00-12-34-56` (pxelinux/iPXE form) picks the interface;
//! - `root=PARTUUID=` (a GPT partition's unique GUID, or an MBR disk's
//!   `SSSSSSSS-NN`), `root=UUID=` or `root=LABEL=` (the filesystem's, on a
//!   partition or the whole disk) pick the root when `pxeroot.partition`
//!   does not; other `root=`
//!   forms are ignored (the root is then the whole NBD device, or the GPT
//!   partition of the Discoverable Partitions root type), `rootfstype=` (default:
//!   the type the root's superblock names, else ext4), `rootflags=`, `ro`/`rw` (default rw), `init=` (default /sbin/init).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::dhcp::{self, MIN_MTU};

pub use boot_limits::MAX_PARTITION;

/// NBD's IANA port.
pub const DEFAULT_PORT: u16 = 10809;
/// Seconds the kernel waits on one NBD request before it considers the
/// connection dead (and, in netlink mode, waits for a reconnect).
pub const DEFAULT_TIMEOUT: u64 = 30;
/// Seconds the kernel keeps I/O waiting for a dead connection to be
/// replaced (netlink mode): how long a pxeroot restart may take.
pub const DEFAULT_RECONNECT: u64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    Ioctl,
    Netlink,
}

/// Static addressing from `ip=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticIp {
    pub client: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub prefix: u8,
    pub device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetConfig {
    Static(StaticIp),
    Dhcp { device: Option<String> },
}

/// `root=` forms pxeroot-init resolves on the NBD disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootRef {
    /// A GPT partition's unique GUID, lowercase.
    PartUuid(String),
    /// A filesystem's UUID, lowercase.
    Uuid(String),
    /// A filesystem's label.
    Label(String),
}

impl std::fmt::Display for RootRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootRef::PartUuid(id) => write!(f, "root=PARTUUID={id}"),
            RootRef::Uuid(id) => write!(f, "root=UUID={id}"),
            RootRef::Label(l) => write!(f, "root=LABEL={l}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub server: SocketAddrV4,
    pub export: Option<String>,
    pub attach: Attach,
    pub timeout: u64,
    pub reconnect: u64,
    pub debug: bool,
    /// The root filesystem's partition of /dev/nbd0; `None`: the whole disk.
    pub partition: Option<u32>,
    /// `root=PARTUUID=`, `UUID=` or `LABEL=`: which partition (or whole
    /// disk) holds the root.
    pub root: Option<RootRef>,
    pub net: NetConfig,
    pub bootif: Option<[u8; 6]>,
    /// `rootfstype=`; `None`: the type the root's superblock names
    /// (ext2/3/4, XFS, btrfs), else ext4.
    pub fstype: Option<String>,
    pub rootflags: String,
    pub read_only: bool,
    pub init: String,
    /// `pxeroot.lease=`: present when the command line carries one, even
    /// with its fields empty (iPXE had no lease to tell of).
    pub lease: Option<LeaseHint>,
    /// `pxeroot.mtu=`: the MTU to give the boot interface.
    pub mtu: Option<u16>,
    /// `pxeroot.handoff=`: write the files in the root's `/run` that keep
    /// the boot interface as it is (handoff.rs).
    pub handoff: bool,
    /// `pxeroot.dns=`, else `ip=`'s DNS fields; with DHCP, the lease's.
    pub dns: Vec<Ipv4Addr>,
    /// `pxeroot.domain=`; with DHCP, the lease's.
    pub domain: Option<String>,
    /// `pxeroot.search=`; with DHCP, the lease's.
    pub search: Vec<String>,
    /// `pxeroot.hostname=`, else `ip=`'s HOSTNAME field; with DHCP, the
    /// lease's.
    pub hostname: Option<String>,
    /// `pxeroot.ntp=`; with DHCP, the lease's.
    pub ntp: Vec<Ipv4Addr>,
}

/// The DHCP lease `ip=` came from, as `pxeroot.lease=` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseHint {
    /// The server that granted it (option 54).
    pub server: Option<Ipv4Addr>,
    /// Options 51, 58 (T1) and 59 (T2), in seconds.
    pub secs: Option<u32>,
    pub t1: Option<u32>,
    pub t2: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdlineError {
    pub key: &'static str,
    pub value: String,
    pub want: &'static str,
}

impl std::error::Error for CmdlineError {}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel command line: {}={:?} is not valid: {}", self.key, self.value, self.want)
    }
}

fn err(key: &'static str, value: &str, want: &'static str) -> CmdlineError {
    CmdlineError { key, value: value.to_string(), want }
}

fn parse_server(v: &str) -> Result<SocketAddrV4, CmdlineError> {
    let want = "IP or IP:PORT, e.g. 10.0.0.1:10809";
    if let Ok(a) = v.parse::<SocketAddrV4>() {
        return Ok(a);
    }
    v.parse::<Ipv4Addr>().map(|ip| SocketAddrV4::new(ip, DEFAULT_PORT)).map_err(|_| err("pxeroot.server", v, want))
}

fn netmask_prefix(v: &str) -> Option<u8> {
    if let Ok(p) = v.parse::<u8>() {
        return (p <= 32).then_some(p);
    }
    let m = u32::from(v.parse::<Ipv4Addr>().ok()?);
    // A netmask is ones then zeros.
    (m.leading_ones() + m.trailing_zeros() == 32).then_some(m.leading_ones() as u8)
}

/// What `ip=` says besides the network configuration: the `HOSTNAME`,
/// `DNS0` and `DNS1` fields.
#[derive(Debug, Default)]
struct IpExtras {
    hostname: Option<String>,
    dns: Vec<Ipv4Addr>,
}

/// `ip=`: the network configuration and the extra fields.
fn parse_ip(v: &str) -> Result<(NetConfig, IpExtras), CmdlineError> {
    let want = "dhcp, or CLIENT:SERVER:GATEWAY:NETMASK:HOSTNAME:DEVICE:off[:DNS0[:DNS1]]";
    if matches!(v, "dhcp" | "on" | "any" | "bootp") {
        return Ok((NetConfig::Dhcp { device: None }, IpExtras::default()));
    }
    let f: Vec<&str> = v.split(':').collect();
    let field = |i: usize| f.get(i).copied().unwrap_or("");
    let mut extras = IpExtras { hostname: dhcp::host_name(field(4).as_bytes()), dns: Vec::new() };
    for i in [7, 8] {
        if !field(i).is_empty() {
            extras.dns.push(field(i).parse().map_err(|_| err("ip", v, "DNS0 and DNS1 as IPv4 addresses"))?);
        }
    }
    let device = Some(field(5).to_string()).filter(|d| !d.is_empty());
    if field(0).is_empty() || matches!(field(6), "dhcp" | "on" | "any") {
        return Ok((NetConfig::Dhcp { device }, extras));
    }
    let client = field(0).parse().map_err(|_| err("ip", v, want))?;
    let gateway = match field(2) {
        "" => None,
        g => Some(g.parse().map_err(|_| err("ip", v, want))?),
    };
    let prefix = match field(3) {
        "" => 24,
        m => netmask_prefix(m).ok_or_else(|| err("ip", v, "a netmask such as 255.255.255.0"))?,
    };
    Ok((NetConfig::Static(StaticIp { client, gateway, prefix, device }), extras))
}

/// Bytes as iPXE prints a setting in hex: two digits each, with `:` or
/// `-` between them (`:hex`, `:hexhyp`) or nothing (`:hexraw`). Anything
/// else (a value cut short with the command line) is no bytes: these keys
/// name what the root is told, never what boots it.
fn parse_hex(v: &str) -> Vec<u8> {
    let digits: Vec<u8> = v.bytes().filter(|&b| b != b':' && b != b'-').collect();
    if !digits.len().is_multiple_of(2) {
        return Vec::new();
    }
    let bytes: Option<Vec<u8>> =
        digits.chunks_exact(2).map(|pair| std::str::from_utf8(pair).ok().and_then(|t| u8::from_str_radix(t, 16).ok())).collect();
    bytes.unwrap_or_default()
}

/// A number as iPXE formats integer settings (`0x` hex) or decimal.
fn ipxe_number(n: &str) -> Option<u32> {
    match n.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => n.parse().ok(),
    }
}

/// `SERVER,SECONDS[,T1[,T2]]`; each number decimal or `0x` hex (iPXE's
/// `:uint32` format), any field empty.
fn parse_lease(v: &str) -> Result<LeaseHint, CmdlineError> {
    let want = "SERVER,SECONDS[,T1[,T2]] (an IPv4 address and decimal or 0x-hex seconds; empty fields allowed)";
    let bad = || err("pxeroot.lease", v, want);
    let mut fields = v.split(',');
    let server = match fields.next().unwrap_or("") {
        "" => None,
        s => Some(s.parse().map_err(|_| bad())?),
    };
    let mut number = || -> Result<Option<u32>, CmdlineError> {
        match fields.next().unwrap_or("") {
            "" => Ok(None),
            n => ipxe_number(n).map(Some).ok_or_else(bad),
        }
    };
    let hint = LeaseHint { server, secs: number()?, t1: number()?, t2: number()? };
    if fields.next().is_some() {
        return Err(bad());
    }
    Ok(hint)
}

/// `BOOTIF=01-52-54-00-12-34-56` (the leading 01 is the ARP hardware type).
fn parse_bootif(v: &str) -> Result<[u8; 6], CmdlineError> {
    let want = "01-aa-bb-cc-dd-ee-ff";
    let parts: Vec<&str> = v.split(['-', ':']).collect();
    let bytes = match parts.len() {
        7 if parts[0] == "01" => &parts[1..],
        6 => &parts[..],
        _ => return Err(err("BOOTIF", v, want)),
    };
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(bytes) {
        *m = u8::from_str_radix(p, 16).map_err(|_| err("BOOTIF", v, want))?;
    }
    Ok(mac)
}

pub fn parse(cmdline: &str) -> Result<Settings, CmdlineError> {
    let mut server = None;
    let mut ip_extras = IpExtras::default();
    let mut s = Settings {
        server: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DEFAULT_PORT),
        export: None,
        attach: Attach::Netlink,
        timeout: DEFAULT_TIMEOUT,
        reconnect: DEFAULT_RECONNECT,
        debug: false,
        partition: None,
        root: None,
        net: NetConfig::Dhcp { device: None },
        bootif: None,
        fstype: None,
        rootflags: String::new(),
        read_only: false,
        init: "/sbin/init".into(),
        lease: None,
        mtu: None,
        handoff: true,
        dns: Vec::new(),
        domain: None,
        search: Vec::new(),
        hostname: None,
        ntp: Vec::new(),
    };
    for word in cmdline.split_whitespace() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        match key {
            "pxeroot.server" => server = Some(parse_server(value)?),
            "pxeroot.export" => s.export = Some(value.to_string()),
            "pxeroot.attach" => {
                s.attach = match value {
                    "ioctl" => Attach::Ioctl,
                    "netlink" => Attach::Netlink,
                    _ => return Err(err("pxeroot.attach", value, "ioctl or netlink")),
                }
            }
            "pxeroot.timeout" => {
                s.timeout = value.parse().ok().filter(|&t| t > 0).ok_or_else(|| err("pxeroot.timeout", value, "seconds, > 0"))?
            }
            "pxeroot.reconnect" => {
                s.reconnect = value.parse().ok().filter(|&t| t > 0).ok_or_else(|| err("pxeroot.reconnect", value, "seconds, > 0"))?
            }
            "pxeroot.debug" => s.debug = true,
            "pxeroot.handoff" => {
                s.handoff = match value {
                    "1" | "yes" | "" => true,
                    "0" | "no" => false,
                    _ => return Err(err("pxeroot.handoff", value, "1 (the default) or 0")),
                }
            }
            "pxeroot.lease" => s.lease = Some(parse_lease(value)?),
            "pxeroot.dns" => s.dns = dhcp::servers(&parse_hex(value), dhcp::MAX_DNS_SERVERS),
            "pxeroot.ntp" => s.ntp = dhcp::servers(&parse_hex(value), dhcp::MAX_NTP_SERVERS),
            "pxeroot.domain" => s.domain = dhcp::domain_name(&parse_hex(value)),
            "pxeroot.search" => s.search = dhcp::search_list(&parse_hex(value)),
            "pxeroot.hostname" => s.hostname = dhcp::host_name(&parse_hex(value)),
            "pxeroot.mtu" if value.is_empty() => s.mtu = None,
            "pxeroot.mtu" => {
                s.mtu = Some(
                    ipxe_number(value)
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|&n| n >= MIN_MTU)
                        .ok_or_else(|| err("pxeroot.mtu", value, "an MTU, 68 to 65535 (decimal or 0x hex)"))?,
                )
            }
            "pxeroot.partition" => {
                s.partition = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PARTITION).contains(n))
                        .ok_or_else(|| err("pxeroot.partition", value, "a partition number, 1 to 128"))?,
                )
            }
            "root" => {
                // A GUID's text form, or (PARTUUID only) an MBR disk's
                // signature and partition number, "SSSSSSSS-NN" in hex.
                let mbr = |id: &str| {
                    id.len() == 11 && id.bytes().enumerate().all(|(i, b)| if i == 8 { b == b'-' } else { b.is_ascii_hexdigit() })
                };
                let uuid = |id: &str| {
                    id.len() == 36
                        && id
                            .bytes()
                            .enumerate()
                            .all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() })
                };
                if let Some(id) = value.strip_prefix("PARTUUID=") {
                    if !uuid(id) && !mbr(id) {
                        return Err(err(
                            "root",
                            value,
                            "PARTUUID= and a GPT partition's GUID (8-4-4-4-12 hex digits) or an MBR disk's signature and partition number (SSSSSSSS-NN)",
                        ));
                    }
                    s.root = Some(RootRef::PartUuid(id.to_ascii_lowercase()));
                } else if let Some(id) = value.strip_prefix("UUID=") {
                    if !uuid(id) {
                        return Err(err("root", value, "UUID= and the filesystem's UUID, 8-4-4-4-12 hex digits (blkid prints it)"));
                    }
                    s.root = Some(RootRef::Uuid(id.to_ascii_lowercase()));
                } else if let Some(label) = value.strip_prefix("LABEL=") {
                    if label.is_empty() {
                        return Err(err("root", value, "LABEL= and the filesystem's label"));
                    }
                    s.root = Some(RootRef::Label(label.to_string()));
                }
            }
            "ip" => (s.net, ip_extras) = parse_ip(value)?,
            "BOOTIF" => s.bootif = Some(parse_bootif(value)?),
            "rootfstype" => s.fstype = Some(value.to_string()),
            "rootflags" => s.rootflags = value.to_string(),
            "ro" => s.read_only = true,
            "rw" => s.read_only = false,
            "init" => s.init = value.to_string(),
            _ => {}
        }
    }
    s.server = server.ok_or_else(|| err("pxeroot.server", "", "required: the pxeroot server's IP[:PORT]"))?;
    if s.dns.is_empty() {
        s.dns = ip_extras.dns;
    }
    s.hostname = s.hostname.or(ip_extras.hostname);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_dns_from_ipxe_hex_or_the_kernels_ip_fields() {
        let base = "pxeroot.server=1.2.3.4 ip=10.0.0.7::10.0.0.1:255.255.255.0:::off:10.0.0.53:10.0.0.54";
        let s = parse(base).unwrap();
        assert_eq!(s.dns, vec![Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(10, 0, 0, 54)], "ip='s DNS0 and DNS1");
        assert_eq!(s.domain, None);
        let s = parse(&format!("{base} pxeroot.dns=0a000001:0a-00-00-02 pxeroot.domain=6c61622e6c616e")).unwrap();
        assert_eq!(s.dns, vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)], "pxeroot.dns wins");
        assert_eq!(s.domain.as_deref(), Some("lab.lan"));
        assert_eq!(parse(&format!("{base} pxeroot.ntp=0a00007b")).unwrap().ntp, vec![Ipv4Addr::new(10, 0, 0, 123)]);
        // dnsmasq's option 119 for lab.example and corp.example, as iPXE prints it.
        let s = parse(&format!("{base} pxeroot.search=036c6162076578616d706c650004636f7270c004")).unwrap();
        assert_eq!(s.search, ["lab.example", "corp.example"]);
        assert_eq!(parse(&format!("{base} pxeroot.search=036c61")).unwrap().search, Vec::<String>::new(), "cut short");
        let s = parse("pxeroot.server=1.2.3.4 ip=10.0.0.7::10.0.0.1:255.255.255.0:::off pxeroot.dns= pxeroot.domain=").unwrap();
        assert_eq!((s.dns, s.domain), (vec![], None), "iPXE prints an absent option as nothing");
        // "lab.lan\nDNS=...": not a DNS name, dropped rather than written into the root's files.
        assert_eq!(parse("pxeroot.server=1.2.3.4 pxeroot.domain=6c61622e6c616e0a444e533d").unwrap().domain, None);
        // Not hex (a command line cut short): nothing, and the boot goes on.
        for bad in ["pxeroot.dns=0a00001", "pxeroot.dns=zz000001", "pxeroot.domain=6c6"] {
            let s = parse(&format!("pxeroot.server=1.2.3.4 {bad}")).unwrap();
            assert_eq!((s.dns, s.domain), (vec![], None), "{bad}");
        }
        assert_eq!(parse("pxeroot.server=1.2.3.4 ip=10.0.0.7::::::off:dns").unwrap_err().key, "ip");
    }

    #[test]
    fn test_hostname_from_ipxe_hex_or_the_kernels_ip_field() {
        let host = |args: &str| parse(&format!("pxeroot.server=1.2.3.4 {args}")).unwrap().hostname;
        assert_eq!(host("ip=10.0.0.7::10.0.0.1:24:pc-7::off"), Some("pc-7".into()));
        assert_eq!(host("ip=10.0.0.7::10.0.0.1:24:pc-7::off pxeroot.hostname=70632d3432"), Some("pc-42".into()), "pxeroot.hostname wins");
        assert_eq!(host("ip=:::::eth0:dhcp pxeroot.hostname="), None);
        assert_eq!(host("pxeroot.hostname=70632034320a"), None, "\"pc 42\\n\" is no hostname: dropped");
        assert_eq!(host("pxeroot.hostname=7"), None);
    }

    #[test]
    fn test_root_by_partuuid_uuid_or_label_and_other_forms_ignored() {
        let root = |arg: &str| parse(&format!("pxeroot.server=1.2.3.4 {arg}")).unwrap().root;
        assert_eq!(
            root("root=PARTUUID=4F68BCE3-e8cd-4db1-96e7-fbcaf984b709"),
            Some(RootRef::PartUuid("4f68bce3-e8cd-4db1-96e7-fbcaf984b709".into()))
        );
        assert_eq!(
            root("root=UUID=0B1C2D3E-aaaa-bbbb-cccc-000000000000"),
            Some(RootRef::Uuid("0b1c2d3e-aaaa-bbbb-cccc-000000000000".into()))
        );
        assert_eq!(root("root=LABEL=cloudimg-rootfs"), Some(RootRef::Label("cloudimg-rootfs".into())));
        assert_eq!(root("root=PARTUUID=1234ABCD-05"), Some(RootRef::PartUuid("1234abcd-05".into())));
        assert_eq!(root("root=/dev/sda1"), None);
        for bad in [
            "PARTUUID=1234abcd-1",
            "PARTUUID=1234abcd_01",
            "UUID=1234abcd-01",
            "PARTUUID=4f68bce3e8cd4db196e7fbcaf984b709",
            "PARTUUID=zf68bce3-e8cd-4db1-96e7-fbcaf984b709",
            "UUID=0b1c",
            "LABEL=",
        ] {
            assert_eq!(parse(&format!("pxeroot.server=1.2.3.4 root={bad}")).unwrap_err().key, "root", "{bad}");
        }
    }

    #[test]
    fn test_partition_is_a_number_in_range() {
        assert_eq!(parse("pxeroot.server=1.2.3.4").unwrap().partition, None);
        assert_eq!(parse("pxeroot.server=1.2.3.4 pxeroot.partition=1").unwrap().partition, Some(1));
        assert_eq!(parse("pxeroot.server=1.2.3.4 pxeroot.partition=128").unwrap().partition, Some(MAX_PARTITION));
        for bad in ["0", "129", "-1", "p1", ""] {
            let e = parse(&format!("pxeroot.server=1.2.3.4 pxeroot.partition={bad}")).unwrap_err();
            assert_eq!(e.key, "pxeroot.partition", "{bad}");
            assert!(e.to_string().contains(&format!("1 to {MAX_PARTITION}")), "{e}");
        }
    }

    #[test]
    fn test_parse_full_ipxe_style_cmdline() {
        let s = parse(
            "console=ttyS0 BOOT_IMAGE=vmlinuz pxeroot.server=10.0.0.1:10900 pxeroot.export=52:54:00:12:34:56 \
                       pxeroot.attach=netlink ip=10.0.0.2::10.0.0.254:255.255.255.0::eth0:off BOOTIF=01-52-54-00-12-34-56 \
                       rootfstype=xfs rootflags=noatime ro init=/bin/sh pxeroot.timeout=5 pxeroot.debug",
        )
        .unwrap();
        assert_eq!(s.server, "10.0.0.1:10900".parse().unwrap());
        assert_eq!(s.export.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(s.attach, Attach::Netlink);
        assert_eq!(
            s.net,
            NetConfig::Static(StaticIp {
                client: "10.0.0.2".parse().unwrap(),
                gateway: Some("10.0.0.254".parse().unwrap()),
                prefix: 24,
                device: Some("eth0".into())
            })
        );
        assert_eq!(s.bootif, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!((s.fstype.as_deref(), s.rootflags.as_str(), s.read_only, s.init.as_str()), (Some("xfs"), "noatime", true, "/bin/sh"));
        assert_eq!((s.timeout, s.debug), (5, true));
    }

    #[test]
    fn test_parse_defaults_and_dhcp() {
        let s = parse("quiet pxeroot.server=192.168.1.5").unwrap();
        assert_eq!(s.server.port(), DEFAULT_PORT);
        assert_eq!(s.net, NetConfig::Dhcp { device: None });
        assert_eq!((s.attach, s.fstype.as_deref(), s.init.as_str()), (Attach::Netlink, None, "/sbin/init"));
        assert_eq!(parse("pxeroot.server=1.2.3.4 ip=dhcp").unwrap().net, NetConfig::Dhcp { device: None });
        assert_eq!(parse("pxeroot.server=1.2.3.4 ip=:::::eth1:dhcp").unwrap().net, NetConfig::Dhcp { device: Some("eth1".into()) });
    }

    #[test]
    fn test_parse_errors_name_the_key() {
        for (line, key) in [
            ("console=ttyS0", "pxeroot.server"),
            ("pxeroot.server=10.0.0", "pxeroot.server"),
            ("pxeroot.server=1.2.3.4 pxeroot.attach=nfs", "pxeroot.attach"),
            ("pxeroot.server=1.2.3.4 ip=10.0.0.2::1.1.1.1:255.0.255.0::eth0:off", "ip"),
            ("pxeroot.server=1.2.3.4 BOOTIF=01-52-54", "BOOTIF"),
            ("pxeroot.server=1.2.3.4 pxeroot.timeout=0", "pxeroot.timeout"),
        ] {
            assert_eq!(parse(line).unwrap_err().key, key, "{line}");
        }
    }

    #[test]
    fn test_lease_as_ipxe_writes_it() {
        let lease = |v: &str| parse(&format!("pxeroot.server=1.2.3.4 pxeroot.lease={v}")).map(|s| s.lease.unwrap());
        let server = Some(Ipv4Addr::new(10, 0, 0, 254));
        assert_eq!(lease("10.0.0.254,0xe10,0x708,0xc4e").unwrap(), LeaseHint { server, secs: Some(3600), t1: Some(1800), t2: Some(3150) });
        assert_eq!(lease("10.0.0.254,86400").unwrap(), LeaseHint { server, secs: Some(86400), t1: None, t2: None });
        // iPXE leaves a setting it does not have empty.
        assert_eq!(lease(",,,").unwrap(), LeaseHint { server: None, secs: None, t1: None, t2: None });
        assert_eq!(lease("").unwrap(), LeaseHint { server: None, secs: None, t1: None, t2: None });
        assert_eq!(lease("10.0.0.254,0xffffffff").unwrap().secs, Some(u32::MAX));
        for bad in ["10.0.0,60", "10.0.0.254,sixty", "10.0.0.254,0x", "10.0.0.254,60,1,2,3", "10.0.0.254,-1"] {
            assert_eq!(lease(bad).unwrap_err().key, "pxeroot.lease", "{bad}");
        }
        assert_eq!(parse("pxeroot.server=1.2.3.4").unwrap().lease, None);
    }

    #[test]
    fn test_mtu_as_ipxe_writes_it() {
        let mtu = |v: &str| parse(&format!("pxeroot.server=1.2.3.4 pxeroot.mtu={v}")).map(|s| s.mtu);
        assert_eq!(mtu("0x578").unwrap(), Some(1400));
        assert_eq!(mtu("9000").unwrap(), Some(9000));
        assert_eq!(mtu("").unwrap(), None, "iPXE had no option 26");
        assert_eq!(mtu("68").unwrap(), Some(MIN_MTU));
        for bad in ["67", "0x10000", "big", "-1"] {
            assert_eq!(mtu(bad).unwrap_err().key, "pxeroot.mtu", "{bad}");
        }
    }

    #[test]
    fn test_handoff_is_on_unless_turned_off() {
        let handoff = |v: &str| parse(&format!("pxeroot.server=1.2.3.4 {v}")).map(|s| s.handoff);
        assert!(handoff("").unwrap());
        assert!(handoff("pxeroot.handoff=1").unwrap());
        assert!(!handoff("pxeroot.handoff=0").unwrap());
        assert!(!handoff("pxeroot.handoff=no").unwrap());
        assert_eq!(handoff("pxeroot.handoff=off!").unwrap_err().key, "pxeroot.handoff");
    }

    #[test]
    fn test_netmask_forms() {
        assert_eq!(netmask_prefix("255.255.0.0"), Some(16));
        assert_eq!(netmask_prefix("20"), Some(20));
        assert_eq!(netmask_prefix("255.0.255.0"), None);
    }
}
