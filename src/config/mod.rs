//! Configuration: TOML parsed into serde "wire" structs (`deny_unknown_fields`),
//! then validated into a typed [`Config`]. Runtime code never re-validates.
//! Every error names the file, the key and how to fix it.

pub mod summary;
mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::ipxe::{BootSpec, ScriptParams};
use crate::mac::Mac;
use crate::storage::registry::{ClientRule, ImageSpec, OverlayPolicy};

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub state_dir: PathBuf,
    /// `None` when the NBD service is disabled.
    pub nbd_listen: Option<Vec<SocketAddr>>,
    /// Client overlays open only from the address the client booted from
    /// (meaningful with PXE, which records that address).
    pub require_boot_address: bool,
    pub images: Vec<ImageSpec>,
    pub clients: BTreeMap<Mac, ClientRule>,
    /// What a MAC without a `[clients]` entry gets; `None` = refused.
    pub unknown: Option<ClientRule>,
    /// Image served under the empty export name.
    pub default_image: Option<String>,
    /// The PXE side, when `[pxe]` is configured.
    pub pxe: Option<PxeConfig>,
}

/// What the PXE services (TFTP now; DHCP and HTTP next) serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeConfig {
    pub boot_dir: PathBuf,
    pub script: ScriptParams,
    /// Kernel, initrd and arguments per image that has them.
    pub boot: BTreeMap<String, BootSpec>,
    /// `None` when TFTP is disabled.
    pub tftp_listen: Option<SocketAddr>,
    /// Per-client block size caps (some UEFI TFTP clients need them).
    pub tftp_blksize_caps: Vec<crate::tftp::BlksizeCap>,
    /// `None` when DHCP is off.
    pub dhcp: Option<crate::dhcp::DhcpConfig>,
    /// Interface to send IPv6 router advertisements (lifetime 0) on.
    pub ra_interface: Option<String>,
    /// `None` when HTTP is disabled.
    pub http_listen: Option<SocketAddr>,
}

impl PxeConfig {
    /// The images' kernels and initrds that are not in the boot directory,
    /// each a sentence naming its key: such an image's clients fetch their
    /// script, then fail to fetch the kernel.
    pub fn missing_image_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (image, b) in &self.boot {
            for (key, file) in [("kernel", &b.kernel), ("initrd", &b.initrd)] {
                if let Err(why) = crate::bootfiles::servable(&self.boot_dir, file) {
                    out.push(format!(
                        "images.{image}.{key}: {file} is not in {} ({why}): this image's clients will stop at their script's {key} fetch",
                        self.boot_dir.display()
                    ));
                }
            }
        }
        out
    }

    /// The firmware boot files DHCP offers that the boot directory lacks,
    /// each with where it comes from. Only firmware of that kind that does
    /// not run iPXE yet fetches one.
    pub fn missing_firmware_files(&self) -> Vec<String> {
        let Some(d) = &self.dhcp else { return Vec::new() };
        [&d.files.bios, &d.files.uefi_x64, &d.files.uefi_arm64]
            .into_iter()
            .filter(|f| crate::bootfiles::servable(&self.boot_dir, f).is_err())
            .map(|f| format!("{f} ({})", crate::dhcp::firmware_source(f, &d.files)))
            .collect()
    }
}

/// HTTP's well-known port.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:80";

/// TFTP's well-known port.
pub const DEFAULT_TFTP_LISTEN: &str = "0.0.0.0:69";

/// A configuration error: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `clients."52:54:00:12:34:56".image`.
    pub key: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}; {}", self.file.display(), self.problem, self.fix)
        } else {
            write!(f, "{}: `{}`: {}; {}", self.file.display(), self.key, self.problem, self.fix)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The port NBD clients expect.
pub const DEFAULT_NBD_LISTEN: &str = "0.0.0.0:10809";

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            problem: format!("cannot read the file ({e})"),
            fix: "check the path given to --config".into(),
        })?;
        Config::parse(&text, file)
    }

    /// Parse and validate TOML text; relative paths in it are resolved
    /// against the directory of `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: wire::Root = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            problem: e.message().to_string() + &e.span().map(|s| format!(" (at {})", line_col(text, s.start))).unwrap_or_default(),
            fix: "see config/pxeroot.example.toml for every key and its form".into(),
        })?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        raw.validate(file, &dir)
    }
}

/// Default lease time in full-DHCP mode.
pub const DEFAULT_LEASE_SECONDS: u64 = 3600;

type ErrFn<'a> = dyn Fn(&str, String, &str) -> ConfigError + 'a;

/// One pool from its keys; `key` names a key (`start`, `end`, `netmask`,
/// `router`, `dns`, `domain`, `search`, `ntp`, `mtu`) as the file spells it,
/// for errors.
fn pool(p: &wire::Pool, key: &dyn Fn(&str) -> String, err: &ErrFn) -> Result<crate::dhcp::full::Pool, ConfigError> {
    let ip = |name: &str, v: &Option<String>, needed: bool| -> Result<Option<std::net::Ipv4Addr>, ConfigError> {
        match v {
            Some(t) => {
                t.parse().map(Some).map_err(|_| err(&key(name), format!("{t:?} is not an IPv4 address"), "write it as \"10.0.0.100\""))
            }
            None if needed => Err(err(&key(name), "is required in full mode".into(), "give the first and last address of the pool")),
            None => Ok(None),
        }
    };
    let first = ip("start", &p.start, true)?.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    let last = ip("end", &p.end, true)?.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    if u32::from(first) > u32::from(last) {
        return Err(err(&key("end"), format!("{last} is below the pool's first address {first}"), "swap them"));
    }
    let netmask = ip("netmask", &p.netmask, false)?.unwrap_or(std::net::Ipv4Addr::new(255, 255, 255, 0));
    let mask = u32::from(netmask);
    if mask.leading_ones() + mask.trailing_zeros() != 32 {
        return Err(err(&key("netmask"), format!("{netmask} is not a netmask"), "write it as \"255.255.255.0\""));
    }
    if u32::from(first) & mask != u32::from(last) & mask {
        return Err(err(&key("end"), format!("{first}-{last} spans more than one {netmask} subnet"), "keep a pool inside its subnet"));
    }
    let router = ip("router", &p.router, false)?;
    let servers = |name: &str, list: &Option<Vec<String>>| -> Result<Vec<std::net::Ipv4Addr>, ConfigError> {
        let mut out = Vec::new();
        for (i, t) in list.iter().flatten().enumerate() {
            out.push(t.parse().map_err(|_| {
                err(&format!("{}[{i}]", key(name)), format!("{t:?} is not an IPv4 address"), "list the servers as addresses")
            })?);
        }
        Ok(out)
    };
    let dns = servers("dns", &p.dns)?;
    let ntp = servers("ntp", &p.ntp)?;
    let domain_name = |key: &str, d: &str| {
        let name = d.trim_end_matches('.');
        match boot_limits::is_domain_name(name) {
            true => Ok(name.to_ascii_lowercase()),
            false => {
                Err(err(key, format!("{d:?} is not a domain name"), "give a DNS domain, e.g. \"lab.example\" (letters, digits, '-', dots)"))
            }
        }
    };
    let domain = p.domain.as_deref().map(|d| domain_name(&key("domain"), d)).transpose()?;
    let search = p.search.as_deref().unwrap_or_default();
    if search.len() > boot_limits::MAX_SEARCH_DOMAINS {
        return Err(err(
            &key("search"),
            format!("lists {} domains", search.len()),
            &format!("list at most {} (what a resolv.conf searches)", boot_limits::MAX_SEARCH_DOMAINS),
        ));
    }
    let search = search.iter().enumerate().map(|(i, d)| domain_name(&format!("{}[{i}]", key("search")), d)).collect::<Result<_, _>>()?;
    let mtu = match p.mtu {
        None => None,
        Some(m) => Some(u16::try_from(m).ok().filter(|&m| m >= crate::dhcp::full::MIN_MTU).ok_or_else(|| {
            err(&key("mtu"), format!("{m} is not an MTU"), "give the segment's MTU, 68 to 65535 (9000 for jumbo frames)")
        })?),
    };
    let network = crate::dhcp::full::Network { netmask, router, dns, domain, search, ntp, mtu };
    Ok(crate::dhcp::full::Pool { network, range: (first, last), reservations: BTreeMap::new(), names: BTreeMap::new() })
}

fn full_dhcp_mode(
    d: &wire::Dhcp,
    clients: &BTreeMap<String, wire::Client>,
    state_dir: &Path,
    err: &ErrFn,
) -> Result<crate::dhcp::Mode, ConfigError> {
    // `[dhcp]`'s own pool keys, as a `[[dhcp.pools]]` table would have them.
    let own = wire::Pool {
        start: d.pool_start.clone(),
        end: d.pool_end.clone(),
        netmask: d.netmask.clone(),
        router: d.router.clone(),
        dns: d.dns.clone(),
        domain: d.domain.clone(),
        search: d.search.clone(),
        ntp: d.ntp.clone(),
        mtu: d.mtu,
    };
    let own_key = |name: &str| match name {
        "start" | "end" => format!("dhcp.pool_{name}"),
        other => format!("dhcp.{other}"),
    };
    let mut pools = vec![pool(&own, &own_key, err)?];
    for (i, p) in d.pools.iter().flatten().enumerate() {
        let k = |name: &str| format!("dhcp.pools[{i}].{name}");
        let new = pool(p, &k, err)?;
        // A relay's giaddr picks the pool: one pool per subnet.
        if let Some(other) = pools.iter().position(|o| o.on_subnet(new.range.0) || new.on_subnet(o.range.0)) {
            let other = if other == 0 { "dhcp.pool_start".to_string() } else { format!("dhcp.pools[{}]", other - 1) };
            return Err(err(&k("start"), format!("is on the subnet of {other}'s pool"), "give each subnet one pool"));
        }
        pools.push(new);
    }
    for (mac_text, c) in clients {
        if let (Ok(mac), Some(a)) = (mac_text.parse::<Mac>(), &c.address) {
            let key = format!("clients.\"{mac_text}\".address");
            let addr: std::net::Ipv4Addr =
                a.parse().map_err(|_| err(&key, format!("{a:?} is not an IPv4 address"), "write it as \"10.0.0.50\""))?;
            let Some(p) = pools.iter_mut().find(|p| p.on_subnet(addr)) else {
                return Err(err(&key, format!("{addr} is on no pool's subnet"), "reserve an address on the client's segment"));
            };
            p.reservations.insert(mac, addr);
        }
        if let (Ok(mac), Some(name)) = (mac_text.parse::<Mac>(), &c.hostname) {
            if !boot_limits::is_host_name(name) {
                return Err(err(
                    &format!("clients.\"{mac_text}\".hostname"),
                    format!("{name:?} is not a host name"),
                    &format!(
                        "give a name of letters, digits and '-' (dots for a domain), at most {} characters",
                        boot_limits::MAX_HOSTNAME_LEN
                    ),
                ));
            }
            for p in pools.iter_mut() {
                p.names.insert(mac, name.to_ascii_lowercase());
            }
        }
    }
    Ok(crate::dhcp::Mode::Full {
        pools,
        lease_secs: d.lease_seconds.unwrap_or(DEFAULT_LEASE_SECONDS).max(60),
        leases_file: state_dir.join("dhcp-leases.txt"),
    })
}

fn line_col(text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {col}")
}

impl wire::Root {
    fn validate(self, file: &Path, dir: &Path) -> Result<Config, ConfigError> {
        let err = |key: &str, problem: String, fix: &str| ConfigError {
            file: file.to_path_buf(),
            key: key.to_string(),
            problem,
            fix: fix.to_string(),
        };
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { dir.join(p) };
        // A service's listen address: `None` when its section says
        // `enabled = false`, else `listen` or the default.
        let service_listen = |section: Option<(bool, Option<&str>)>, default: &str, key: &str| -> Result<Option<SocketAddr>, ConfigError> {
            match section {
                Some((false, _)) => Ok(None),
                section => {
                    let text = section.and_then(|(_, l)| l).unwrap_or(default);
                    let addr = text
                        .parse()
                        .map_err(|_| err(key, format!("{text:?} is not an address:port"), &format!("write it as \"{default}\"")))?;
                    Ok(Some(addr))
                }
            }
        };

        let state_dir = resolve(&self.state_dir);
        let require_boot_address = self.nbd.as_ref().and_then(|n| n.require_boot_address).unwrap_or(true);

        let nbd_listen = match self.nbd {
            Some(wire::Nbd { enabled: false, .. }) => None,
            nbd => {
                let listen = nbd.and_then(|n| n.listen).unwrap_or_else(|| vec![DEFAULT_NBD_LISTEN.to_string()]);
                if listen.is_empty() {
                    return Err(err(
                        "nbd.listen",
                        "is empty".into(),
                        "give at least one address such as \"0.0.0.0:10809\", or set nbd.enabled = false",
                    ));
                }
                let mut addrs = Vec::new();
                for (i, a) in listen.iter().enumerate() {
                    addrs.push(a.parse::<SocketAddr>().map_err(|_| {
                        err(
                            &format!("nbd.listen[{i}]"),
                            format!("{a:?} is not an address:port"),
                            "write it as \"0.0.0.0:10809\" or \"[::]:10809\"",
                        )
                    })?);
                }
                Some(addrs)
            }
        };

        if self.images.is_empty() {
            return Err(err("images", "no image is configured".into(), "add an [images.NAME] table with path = \"/path/to/base.img\""));
        }
        let mut images = Vec::new();
        for (name, image) in &self.images {
            let key = format!("images.{name}");
            if name.is_empty() || name.parse::<Mac>().is_ok() {
                return Err(err(
                    &key,
                    "an image name must not be empty or look like a MAC address".into(),
                    "rename the image (export names that look like MACs are client overlays)",
                ));
            }
            let path = resolve(&image.path);
            if !path.is_file() {
                return Err(err(
                    &format!("{key}.path"),
                    format!("{} is not a readable file", path.display()),
                    "point it at a raw or qcow2 base image",
                ));
            }
            if let Some(n) = image.partition {
                if !(1..=boot_limits::MAX_PARTITION).contains(&n) {
                    return Err(err(
                        &format!("{key}.partition"),
                        format!("{n} is not a partition number"),
                        &format!(
                            "give the root filesystem's partition, 1 to {} (`fdisk -l` on the image lists them), \
                             or leave it out for an image that is one filesystem",
                            boot_limits::MAX_PARTITION
                        ),
                    ));
                }
            }
            images.push(ImageSpec { name: name.clone(), path, description: image.description.clone().unwrap_or_default() });
        }
        let known = |image: &str| self.images.contains_key(image);
        let image_names = || self.images.keys().cloned().collect::<Vec<_>>().join(", ");

        let mut clients = BTreeMap::new();
        for (mac_text, client) in &self.clients {
            let key = format!("clients.\"{mac_text}\"");
            let mac: Mac = mac_text
                .parse()
                .map_err(|e: crate::mac::MacParseError| err(&key, e.to_string(), "use the client's MAC address as the table name"))?;
            if !known(&client.image) {
                return Err(err(
                    &format!("{key}.image"),
                    format!("image {:?} is not configured", client.image),
                    &format!("use one of: {}", image_names()),
                ));
            }
            let rule = ClientRule { image: client.image.clone(), policy: client.policy.unwrap_or(OverlayPolicy::Persistent) };
            if clients.insert(mac, rule).is_some() {
                return Err(err(&key, format!("client {mac} is configured twice (in another spelling)"), "keep one entry per MAC"));
            }
        }

        let unknown = match self.unknown_clients {
            None => None,
            Some(u) => match u.action {
                wire::UnknownAction::Refuse => {
                    if u.image.is_some() {
                        return Err(err(
                            "unknown_clients.image",
                            "is set but action is \"refuse\"".into(),
                            "remove it, or set action = \"boot\"",
                        ));
                    }
                    None
                }
                wire::UnknownAction::Boot => {
                    let image = u.image.ok_or_else(|| {
                        err(
                            "unknown_clients.image",
                            "is missing".into(),
                            &format!("action = \"boot\" needs the image to boot: one of {}", image_names()),
                        )
                    })?;
                    if !known(&image) {
                        return Err(err(
                            "unknown_clients.image",
                            format!("image {image:?} is not configured"),
                            &format!("use one of: {}", image_names()),
                        ));
                    }
                    Some(ClientRule { image, policy: u.policy.unwrap_or(OverlayPolicy::Ephemeral) })
                }
            },
        };

        let default_image = match self.default_export {
            Some(name) if !known(&name) => {
                return Err(err("default_export", format!("image {name:?} is not configured"), &format!("use one of: {}", image_names())))
            }
            Some(name) => Some(name),
            None if self.images.len() == 1 => self.images.keys().next().cloned(),
            None => None,
        };

        let pxe = match self.pxe {
            None => {
                let stray = [("tftp", self.tftp.is_some()), ("dhcp", self.dhcp.is_some()), ("http", self.http.is_some())];
                if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                    return Err(err(key, "is set but [pxe] is missing".into(), "add [pxe] with server_address and boot_dir"));
                }
                None
            }
            Some(p) => {
                let server = p.server_address.parse().map_err(|_| {
                    err(
                        "pxe.server_address",
                        format!("{:?} is not an IPv4 address", p.server_address),
                        "give the address clients reach this server at, e.g. \"10.0.0.1\"",
                    )
                })?;
                let boot_dir = resolve(&p.boot_dir);
                if !boot_dir.is_dir() {
                    return Err(err(
                        "pxe.boot_dir",
                        format!("{} is not a directory", boot_dir.display()),
                        "point it at the directory holding kernels, initrds and iPXE binaries",
                    ));
                }
                let attach = p.attach.unwrap_or_default();
                let nbd_port = nbd_listen.as_ref().and_then(|l| l.first()).map_or(nbd_wire::consts::DEFAULT_PORT, |a| a.port());
                let mut boot = BTreeMap::new();
                for (name, image) in &self.images {
                    match (&image.kernel, &image.initrd) {
                        (Some(k), Some(i)) => {
                            boot.insert(
                                name.clone(),
                                BootSpec {
                                    kernel: k.clone(),
                                    initrd: i.clone(),
                                    cmdline: image.cmdline.clone().unwrap_or_default(),
                                    partition: image.partition,
                                },
                            );
                        }
                        (None, None) => {}
                        _ => {
                            return Err(err(
                                &format!("images.{name}"),
                                "has only one of kernel and initrd".into(),
                                "give both (paths inside pxe.boot_dir), or neither",
                            ))
                        }
                    }
                }
                let tftp_listen =
                    service_listen(self.tftp.as_ref().map(|t| (t.enabled, t.listen.as_deref())), DEFAULT_TFTP_LISTEN, "tftp.listen")?;
                let dhcp = match &self.dhcp {
                    None => None,
                    Some(d) => {
                        let mode = match d.mode.as_deref().unwrap_or("proxy") {
                            "off" => None,
                            "proxy" => Some(crate::dhcp::Mode::Proxy),
                            "full" => Some(full_dhcp_mode(d, &self.clients, &state_dir, &err)?),
                            other => {
                                return Err(err("dhcp.mode", format!("{other:?} is not a DHCP mode"), "use \"proxy\", \"full\" or \"off\""))
                            }
                        };
                        match mode {
                            None => None,
                            Some(mode) => {
                                let strategy = |key: &str, v: &str| match v {
                                    "in-offer" => Ok(crate::dhcp::decide::UefiStrategy::InOffer),
                                    "via-4011" => Ok(crate::dhcp::decide::UefiStrategy::Via4011),
                                    other => Err(err(key, format!("{other:?} is not a UEFI strategy"), "use \"in-offer\" or \"via-4011\"")),
                                };
                                let uefi = strategy("dhcp.uefi", d.uefi.as_deref().unwrap_or("in-offer"))?;
                                let mut uefi_by_class = Vec::new();
                                for (class, v) in d.uefi_by_class.iter().flatten() {
                                    uefi_by_class.push((class.clone(), strategy(&format!("dhcp.uefi_by_class.\"{class}\""), v)?));
                                }
                                let defaults = crate::dhcp::decide::BootFiles::default();
                                Some(crate::dhcp::DhcpConfig {
                                    mode,
                                    server,
                                    interface: d.interface.clone(),
                                    files: crate::dhcp::decide::BootFiles {
                                        bios: d.bios_file.clone().unwrap_or(defaults.bios),
                                        uefi_x64: d.uefi_x64_file.clone().unwrap_or(defaults.uefi_x64),
                                        uefi_arm64: d.uefi_arm64_file.clone().unwrap_or(defaults.uefi_arm64),
                                    },
                                    uefi,
                                    uefi_by_class,
                                    http_base: None,
                                    dhcp_port: 67,
                                    pxe_port: 4011,
                                    boot_dir: boot_dir.clone(),
                                })
                            }
                        }
                    }
                };
                let ra_interface = match &self.dhcp {
                    Some(d) if d.ipv6_router_advertisements == Some(true) => Some(d.interface.clone().ok_or_else(|| {
                        err(
                            "dhcp.ipv6_router_advertisements",
                            "needs an interface".into(),
                            "set dhcp.interface to the boot network's interface",
                        )
                    })?),
                    _ => None,
                };
                let http_listen =
                    service_listen(self.http.as_ref().map(|h| (h.enabled, h.listen.as_deref())), DEFAULT_HTTP_LISTEN, "http.listen")?;
                let files_base = match (p.boot_files_over.as_deref(), http_listen, tftp_listen) {
                    (None | Some("http"), Some(h), _) => format!("http://{server}:{}", h.port()),
                    (Some("http"), None, _) => {
                        return Err(err("pxe.boot_files_over", "is \"http\" but HTTP is disabled".into(), "enable [http], or use \"tftp\""))
                    }
                    (None | Some("tftp"), _, Some(_)) => format!("tftp://{server}"),
                    (Some("tftp"), _, None) => {
                        return Err(err("pxe.boot_files_over", "is \"tftp\" but TFTP is disabled".into(), "enable [tftp], or use \"http\""))
                    }
                    (None, None, None) => {
                        return Err(err("pxe", "serves boot files over neither HTTP nor TFTP".into(), "enable [http] or [tftp]"))
                    }
                    (Some(other), _, _) => {
                        return Err(err("pxe.boot_files_over", format!("{other:?} is not a transport"), "use \"http\" or \"tftp\""))
                    }
                };
                let mut tftp_blksize_caps = Vec::new();
                for (net, &blksize) in self.tftp.as_ref().and_then(|t| t.blksize_caps.as_ref()).into_iter().flatten() {
                    let key = format!("tftp.blksize_caps.\"{net}\"");
                    let (a, p) = net.split_once('/').unwrap_or((net, "32"));
                    let network = a.parse().map_err(|_| {
                        err(&key, format!("{net:?} is not an IPv4 address or prefix"), "write \"10.0.0.7\" or \"10.0.0.0/24\"")
                    })?;
                    let prefix = p
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= 32)
                        .ok_or_else(|| err(&key, format!("{net:?} has a bad prefix length"), "use /0 to /32"))?;
                    if !(crate::tftp::packet::MIN_BLKSIZE..=crate::tftp::MAX_BLOCK_SIZE).contains(&blksize) {
                        return Err(err(
                            &key,
                            format!("{blksize} is not a usable block size"),
                            "use 8 to 1468 (1024 and 1432 are common for picky UEFI clients)",
                        ));
                    }
                    tftp_blksize_caps.push(crate::tftp::BlksizeCap { network, prefix, blksize });
                }
                let dhcp = dhcp.map(|mut d| {
                    d.http_base = http_listen.map(|h| format!("http://{server}:{}", h.port()));
                    d
                });
                Some(PxeConfig {
                    boot_dir,
                    script: ScriptParams { server, nbd_port, attach, files_base },
                    boot,
                    tftp_listen,
                    tftp_blksize_caps,
                    dhcp,
                    ra_interface,
                    http_listen,
                })
            }
        };

        Ok(Config { state_dir, nbd_listen, require_boot_address, images, clients, unknown, default_image, pxe })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_base(body: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.img"), [0u8; 512]).unwrap();
        let file = dir.path().join("pxeroot.toml");
        let r = Config::parse(body, &file);
        (dir, r)
    }

    const GOOD: &str = r#"
state_dir = "state"
[nbd]
listen = ["127.0.0.1:10809"]
[images.debian]
path = "base.img"
description = "Debian 12"
[clients."52-54-00-12-34-56"]
image = "debian"
policy = "ephemeral"
[unknown_clients]
action = "boot"
image = "debian"
"#;

    #[test]
    fn test_config_good_file_validates() {
        let (dir, r) = with_base(GOOD);
        let c = r.unwrap();
        assert_eq!(c.state_dir, dir.path().join("state"));
        assert_eq!(c.images[0].path, dir.path().join("base.img"));
        let mac: Mac = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(c.clients[&mac].policy, OverlayPolicy::Ephemeral);
        assert_eq!(c.unknown.unwrap().policy, OverlayPolicy::Ephemeral);
        assert_eq!(c.default_image.as_deref(), Some("debian"));
    }

    #[test]
    fn test_config_unknown_key_names_it() {
        let (_d, r) = with_base(&GOOD.replace("description", "descripton"));
        let e = r.unwrap_err();
        assert!(e.problem.contains("descripton"), "{e}");
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn test_config_bad_values_name_key_and_fix() {
        let cases = [
            (GOOD.replace("52-54-00-12-34-56", "52-54-00-12-34"), "clients.\"52-54-00-12-34\""),
            (GOOD.replace("image = \"debian\"\npolicy", "image = \"ubuntu\"\npolicy"), "clients.\"52-54-00-12-34-56\".image"),
            (GOOD.replace("127.0.0.1:10809", "localhost"), "nbd.listen[0]"),
            (GOOD.replace("path = \"base.img\"", "path = \"missing.img\""), "images.debian.path"),
            (GOOD.replace("description", "partition = 0\ndescription"), "images.debian.partition"),
            (GOOD.replace("description", "partition = 129\ndescription"), "images.debian.partition"),
            (GOOD.replace("action = \"boot\"\nimage = \"debian\"", "action = \"boot\""), "unknown_clients.image"),
        ];
        for (text, key) in cases {
            let (_d, r) = with_base(&text);
            let e = r.unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(!e.fix.is_empty());
        }
    }

    /// Full mode's pools: the `[dhcp]` one first, then `[[dhcp.pools]]`,
    /// reservations on the pool of their subnet; one pool per subnet, a
    /// pool inside its subnet, a reservation on some pool's subnet.
    #[test]
    fn test_config_full_mode_pools() {
        let full = |extra: &str| {
            format!(
                "{GOOD}[pxe]\nserver_address = \"10.0.0.1\"\nboot_dir = \".\"\n[dhcp]\nmode = \"full\"\n\
                 pool_start = \"10.0.0.100\"\npool_end = \"10.0.0.199\"\n{extra}"
            )
        };
        let relayed =
            "[[dhcp.pools]]\nstart = \"10.0.8.100\"\nend = \"10.0.8.199\"\nrouter = \"10.0.8.1\"\nmtu = 9000\ndomain = \"Lab.Example.\"\n\
             search = [\"Eng.Lab.Example\", \"lab.example.\"]\n";
        let text =
            full(relayed).replace("policy = \"ephemeral\"", "policy = \"ephemeral\"\naddress = \"10.0.8.50\"\nhostname = \"Lab-07\"");
        let c = with_base(&text).1.unwrap();
        let Some(crate::dhcp::Mode::Full { pools, .. }) = c.pxe.and_then(|p| p.dhcp).map(|d| d.mode) else { panic!("not full mode") };
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[1].range, ("10.0.8.100".parse().unwrap(), "10.0.8.199".parse().unwrap()));
        assert_eq!(pools[1].network.router, Some("10.0.8.1".parse().unwrap()));
        assert_eq!((pools[0].network.mtu, pools[1].network.mtu), (None, Some(9000)));
        assert_eq!((pools[0].network.domain.as_deref(), pools[1].network.domain.as_deref()), (None, Some("lab.example")));
        assert_eq!(
            (pools[0].network.search.len(), &pools[1].network.search[..]),
            (0, &["eng.lab.example".to_string(), "lab.example".into()][..])
        );
        let mac: Mac = "52:54:00:12:34:56".parse().unwrap();
        assert!(pools[0].reservations.is_empty());
        assert_eq!(pools[1].reservations[&mac], "10.0.8.50".parse::<std::net::Ipv4Addr>().unwrap());
        // A client's name, whichever pool its request comes through.
        assert!(pools.iter().all(|p| p.names.get(&mac).map(String::as_str) == Some("lab-07")));

        let cases = [
            (full("[[dhcp.pools]]\nstart = \"10.0.0.20\"\nend = \"10.0.0.30\"\n"), "dhcp.pools[0].start", "subnet of dhcp.pool_start"),
            (full("[[dhcp.pools]]\nstart = \"10.0.8.100\"\nend = \"10.0.9.10\"\n"), "dhcp.pools[0].end", "spans more than one"),
            (full("[[dhcp.pools]]\nend = \"10.0.8.10\"\n"), "dhcp.pools[0].start", "required"),
            (full("netmask = \"255.0.255.0\"\n"), "dhcp.netmask", "not a netmask"),
            (full("mtu = 67\n"), "dhcp.mtu", "not an MTU"),
            (full("domain = \"lab example\"\n"), "dhcp.domain", "not a domain name"),
            (full("ntp = [\"10.0.0.1\", \"ntp.lab\"]\n"), "dhcp.ntp[1]", "not an IPv4 address"),
            (full("search = [\"lab.example\", \"lab example\"]\n"), "dhcp.search[1]", "not a domain name"),
            (full("search = [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\"]\n"), "dhcp.search", "lists 7 domains"),
            (
                full("").replace("policy = \"ephemeral\"", "policy = \"ephemeral\"\nhostname = \"lab 07\""),
                "clients.\"52-54-00-12-34-56\".hostname",
                "not a host name",
            ),
            (
                full("[[dhcp.pools]]\nstart = \"10.0.8.100\"\nend = \"10.0.8.199\"\ndomain = \"a..b\"\n"),
                "dhcp.pools[0].domain",
                "not a domain",
            ),
            (full("[[dhcp.pools]]\nstart = \"10.0.8.100\"\nend = \"10.0.8.199\"\nmtu = 70000\n"), "dhcp.pools[0].mtu", "not an MTU"),
            (
                full(relayed).replace("policy = \"ephemeral\"", "policy = \"ephemeral\"\naddress = \"10.0.9.50\""),
                "clients.\"52-54-00-12-34-56\".address",
                "on no pool's subnet",
            ),
        ];
        for (text, key, problem) in cases {
            let e = with_base(&text).1.unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.problem.contains(problem) && !e.fix.is_empty(), "{e}");
        }
    }

    #[test]
    fn test_config_service_listen_default_disabled_and_bad() {
        let pxe = format!("{GOOD}[pxe]\nserver_address = \"10.0.0.1\"\nboot_dir = \".\"\n");
        let c = with_base(&pxe).1.unwrap();
        let p = c.pxe.unwrap();
        assert_eq!(p.tftp_listen, Some(DEFAULT_TFTP_LISTEN.parse().unwrap()));
        assert_eq!(p.http_listen, Some(DEFAULT_HTTP_LISTEN.parse().unwrap()));
        let c = with_base(&format!("{pxe}[tftp]\nenabled = false\n[http]\nlisten = \"127.0.0.1:8080\"\n")).1.unwrap();
        let p = c.pxe.unwrap();
        assert_eq!((p.tftp_listen, p.http_listen), (None, Some("127.0.0.1:8080".parse().unwrap())));
        for (section, key, default) in [("tftp", "tftp.listen", DEFAULT_TFTP_LISTEN), ("http", "http.listen", DEFAULT_HTTP_LISTEN)] {
            let e = with_base(&format!("{pxe}[{section}]\nlisten = \"nowhere\"\n")).1.unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.problem.contains("nowhere") && e.fix.contains(default), "{e}");
        }
    }

    #[test]
    fn test_config_bad_policy_is_a_parse_error() {
        let (_d, r) = with_base(&GOOD.replace("\"ephemeral\"", "\"sometimes\""));
        assert!(r.unwrap_err().problem.contains("sometimes"));
    }
}
