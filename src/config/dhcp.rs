//! `[dhcp]`: off, proxy beside the site's server, or full (the only server,
//! with pools and reservations), the firmware boot files, how UEFI is
//! answered, and IPv6 router advertisements.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{wire, ConfigError, Cx};
use crate::dhcp::decide::BootFiles;
use crate::dhcp::full::{Network, Pool};
use crate::dhcp::{DhcpConfig, Mode};
use crate::mac::Mac;

/// Default lease time in full-DHCP mode.
pub const DEFAULT_LEASE_SECONDS: u64 = 3600;

/// What `[dhcp]` needs from the other sections.
pub(super) struct Around<'a> {
    pub(super) server: Ipv4Addr,
    pub(super) boot_dir: &'a Path,
    pub(super) state_dir: &'a Path,
    pub(super) clients: &'a BTreeMap<String, wire::Client>,
    pub(super) http_listen: Option<SocketAddr>,
}

/// The DHCP service's configuration (`None`: off), and the interface for
/// router advertisements.
pub(super) fn dhcp(cx: &Cx, d: &wire::Dhcp, around: &Around) -> Result<(Option<DhcpConfig>, Option<String>), ConfigError> {
    let ra_interface = match d.ipv6_router_advertisements {
        Some(true) => Some(d.interface.clone().ok_or_else(|| {
            cx.err("dhcp.ipv6_router_advertisements", "needs an interface".into(), "set dhcp.interface to the boot network's interface")
        })?),
        _ => None,
    };
    let mode = match d.mode.unwrap_or_default() {
        wire::DhcpMode::Off => return Ok((None, ra_interface)),
        wire::DhcpMode::Proxy => Mode::Proxy,
        wire::DhcpMode::Full => full_mode(cx, d, around.clients, around.state_dir)?,
    };
    let defaults = BootFiles::default();
    let config = DhcpConfig {
        mode,
        server: around.server,
        interface: d.interface.clone(),
        files: BootFiles {
            bios: d.bios_file.clone().unwrap_or(defaults.bios),
            uefi_x64: d.uefi_x64_file.clone().unwrap_or(defaults.uefi_x64),
            uefi_arm64: d.uefi_arm64_file.clone().unwrap_or(defaults.uefi_arm64),
        },
        uefi: d.uefi.unwrap_or_default(),
        uefi_by_class: d.uefi_by_class.iter().flatten().map(|(class, s)| (class.clone(), *s)).collect(),
        http_base: around.http_listen.map(|h| format!("http://{}:{}", around.server, h.port())),
        dhcp_port: 67,
        pxe_port: 4011,
        boot_dir: PathBuf::from(around.boot_dir),
    };
    Ok((Some(config), ra_interface))
}

/// One pool from its keys; `key` names a key (`start`, `end`, `netmask`,
/// `router`, `dns`, `domain`, `search`, `ntp`, `mtu`) as the file spells it,
/// for errors.
fn pool(cx: &Cx, p: &wire::Pool, key: &dyn Fn(&str) -> String) -> Result<Pool, ConfigError> {
    let ip = |name: &str, v: &Option<String>, needed: bool| -> Result<Option<std::net::Ipv4Addr>, ConfigError> {
        match v {
            Some(t) => {
                t.parse().map(Some).map_err(|_| cx.err(&key(name), format!("{t:?} is not an IPv4 address"), "write it as \"10.0.0.100\""))
            }
            None if needed => Err(cx.err(&key(name), "is required in full mode".into(), "give the first and last address of the pool")),
            None => Ok(None),
        }
    };
    let first = ip("start", &p.start, true)?.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    let last = ip("end", &p.end, true)?.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    if u32::from(first) > u32::from(last) {
        return Err(cx.err(&key("end"), format!("{last} is below the pool's first address {first}"), "swap them"));
    }
    let netmask = ip("netmask", &p.netmask, false)?.unwrap_or(std::net::Ipv4Addr::new(255, 255, 255, 0));
    let mask = u32::from(netmask);
    if mask.leading_ones() + mask.trailing_zeros() != 32 {
        return Err(cx.err(&key("netmask"), format!("{netmask} is not a netmask"), "write it as \"255.255.255.0\""));
    }
    if u32::from(first) & mask != u32::from(last) & mask {
        return Err(cx.err(&key("end"), format!("{first}-{last} spans more than one {netmask} subnet"), "keep a pool inside its subnet"));
    }
    let router = ip("router", &p.router, false)?;
    let servers = |name: &str, list: &Option<Vec<String>>| -> Result<Vec<std::net::Ipv4Addr>, ConfigError> {
        let mut out = Vec::new();
        for (i, t) in list.iter().flatten().enumerate() {
            out.push(t.parse().map_err(|_| {
                cx.err(&format!("{}[{i}]", key(name)), format!("{t:?} is not an IPv4 address"), "list the servers as addresses")
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
            false => Err(cx.err(
                key,
                format!("{d:?} is not a domain name"),
                "give a DNS domain, e.g. \"lab.example\" (letters, digits, '-', dots)",
            )),
        }
    };
    let domain = p.domain.as_deref().map(|d| domain_name(&key("domain"), d)).transpose()?;
    let search = p.search.as_deref().unwrap_or_default();
    if search.len() > boot_limits::MAX_SEARCH_DOMAINS {
        return Err(cx.err(
            &key("search"),
            format!("lists {} domains", search.len()),
            &format!("list at most {} (what a resolv.conf searches)", boot_limits::MAX_SEARCH_DOMAINS),
        ));
    }
    let search = search.iter().enumerate().map(|(i, d)| domain_name(&format!("{}[{i}]", key("search")), d)).collect::<Result<_, _>>()?;
    let mtu = match p.mtu {
        None => None,
        Some(m) => Some(u16::try_from(m).ok().filter(|&m| m >= crate::dhcp::full::MIN_MTU).ok_or_else(|| {
            cx.err(&key("mtu"), format!("{m} is not an MTU"), "give the segment's MTU, 68 to 65535 (9000 for jumbo frames)")
        })?),
    };
    let network = Network { netmask, router, dns, domain, search, ntp, mtu };
    Ok(Pool { network, range: (first, last), reservations: BTreeMap::new(), names: BTreeMap::new() })
}

/// Full mode: `[dhcp]`'s own pool first, then `[[dhcp.pools]]` (one per
/// subnet), each with its reservations and the clients' names.
fn full_mode(cx: &Cx, d: &wire::Dhcp, clients: &BTreeMap<String, wire::Client>, state_dir: &Path) -> Result<Mode, ConfigError> {
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
    let mut pools = vec![pool(cx, &own, &own_key)?];
    for (i, p) in d.pools.iter().flatten().enumerate() {
        let k = |name: &str| format!("dhcp.pools[{i}].{name}");
        let new = pool(cx, p, &k)?;
        // A relay's giaddr picks the pool: one pool per subnet.
        if let Some(other) = pools.iter().position(|o| o.on_subnet(new.range.0) || new.on_subnet(o.range.0)) {
            let other = if other == 0 { "dhcp.pool_start".to_string() } else { format!("dhcp.pools[{}]", other - 1) };
            return Err(cx.err(&k("start"), format!("is on the subnet of {other}'s pool"), "give each subnet one pool"));
        }
        pools.push(new);
    }
    for (mac_text, c) in clients {
        if let (Ok(mac), Some(a)) = (mac_text.parse::<Mac>(), &c.address) {
            let key = format!("clients.\"{mac_text}\".address");
            let addr: std::net::Ipv4Addr =
                a.parse().map_err(|_| cx.err(&key, format!("{a:?} is not an IPv4 address"), "write it as \"10.0.0.50\""))?;
            let Some(p) = pools.iter_mut().find(|p| p.on_subnet(addr)) else {
                return Err(cx.err(&key, format!("{addr} is on no pool's subnet"), "reserve an address on the client's segment"));
            };
            p.reservations.insert(mac, addr);
        }
        if let (Ok(mac), Some(name)) = (mac_text.parse::<Mac>(), &c.hostname) {
            if !boot_limits::is_host_name(name) {
                return Err(cx.err(
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
    Ok(Mode::Full {
        pools,
        lease_secs: d.lease_seconds.unwrap_or(DEFAULT_LEASE_SECONDS).max(60),
        leases_file: state_dir.join("dhcp-leases.txt"),
    })
}
