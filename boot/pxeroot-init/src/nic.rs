//! The boot NIC: find it (ip=, BOOTIF, the first), bring it up with its
//! address (static from iPXE's script, or leased here), its MTU and the
//! machine's hostname, and wait for carrier.

use std::time::{Duration, Instant};

use crate::cmdline::{self, NetConfig, Settings};
use crate::console::Console;
use crate::dhcpio::{dhcp_with_retry, Inform, Leased};
use crate::error::{Context, InitError};
use crate::{handoff, lease, sys};
use pxeroot_init::mac_text;

/// How often to report that the interface or its carrier is still missing
/// (the wait itself goes on: a cable may be plugged in late).
pub(crate) const CARRIER_WAIT: Duration = Duration::from_secs(10);

/// A carrier slower than this is reported with its time (autonegotiation:
/// QEMU's e1000e takes 2.5 s after Linux resets its PHY, real NICs 1-3 s).
pub(crate) const SLOW_CARRIER: Duration = Duration::from_millis(500);

/// Network interfaces other than lo, sorted.
pub(crate) fn interfaces() -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> =
        std::fs::read_dir("/sys/class/net")?.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n != "lo").collect();
    names.sort();
    Ok(names)
}

pub(crate) fn read_mac(iface: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

/// The boot interface: its kernel name and MAC.
#[derive(Debug, Clone)]
pub(crate) struct Nic {
    pub(crate) name: String,
    pub(crate) mac: [u8; 6],
}

/// What bringing the boot interface up gave.
pub(crate) struct Configured {
    /// When its link came up (a switch port's STP delay counts from here).
    pub(crate) link_up: Instant,
    /// The DHCP lease to keep: none for a static address without
    /// `pxeroot.lease`, or an infinite lease.
    pub(crate) held: Option<lease::Held>,
    /// The DNS and NTP servers, domain and search list for the root.
    pub(crate) services: handoff::NetServices,
    /// The DHCPINFORM sent for what iPXE's lease lacks, its answer read later.
    pub(crate) inform: Option<Inform>,
}

/// The interface named by `ip=`, else the one whose MAC is `BOOTIF`, else
/// the first that is not loopback.
pub(crate) fn find_interface(con: &Console, s: &Settings) -> Result<Nic, InitError> {
    let wanted = match &s.net {
        NetConfig::Static(st) => st.device.clone(),
        NetConfig::Dhcp { device } => device.clone(),
    };
    // NIC drivers probe asynchronously after their module loads: wait.
    let mut deadline = Instant::now() + CARRIER_WAIT;
    loop {
        let names = interfaces().context("listing /sys/class/net")?;
        let pick = names.into_iter().find_map(|n| {
            let mac = read_mac(&n)?;
            let ok = match (&wanted, s.bootif) {
                (Some(w), _) => *w == n,
                (None, Some(b)) => b == mac,
                (None, None) => true,
            };
            ok.then_some(Nic { name: n, mac })
        });
        if let Some(p) = pick {
            return Ok(p);
        }
        if Instant::now() > deadline {
            // Keep waiting (a NIC may probe late), but say why every so often.
            con.say(format_args!(
                "no network interface matches yet (wanted {:?}, BOOTIF {:?}); still waiting: check that the NIC's driver is in the initramfs",
                wanted,
                s.bootif.map(|m| mac_text(&m))
            ));
            deadline = Instant::now() + CARRIER_WAIT;
        }
        std::thread::sleep(INTERFACE_POLL);
    }
}

/// Bring the interface up with its address, MTU and the machine's hostname.
pub(crate) fn configure_net(con: &Console, s: &Settings, iface: &str, mac: [u8; 6]) -> Result<Configured, InitError> {
    sys::link_up("lo").context("bringing up lo")?;
    sys::link_up(iface).with_context(|| format!("bringing up {iface}"))?;
    let given = handoff::NetServices { dns: s.dns.clone(), domain: s.domain.clone(), search: s.search.clone(), ntp: s.ntp.clone() };
    let (st, link_up, held, services, hostname, asked) = match &s.net {
        NetConfig::Static(st) => {
            // The address and route need no carrier: set them while the
            // link comes up. iPXE's lease was granted before the kernel
            // started: count it from boot (time 0).
            set_address(iface, st)?;
            set_mtu(con, iface, s.mtu, "pxeroot.mtu");
            let held = s.lease.and_then(|h| lease::Held::new(st.client, h.server, 0, h.secs?, h.t1, h.t2));
            let up = wait_for_carrier(con, iface);
            // iPXE asks for no NTP servers (option 42): ask the server
            // that leased the address, as the address's owner.
            let asked = match (s.lease.and_then(|h| h.server), s.ntp.is_empty()) {
                (Some(server), true) => Inform::send(iface, mac, st.client, server)
                    .map_err(|e| con.say(format_args!("{iface}: no DHCPINFORM to {server}: {e}; the root gets no NTP servers from DHCP")))
                    .ok(),
                _ => None,
            };
            (st.clone(), up, held, given, s.hostname.clone(), asked)
        }
        NetConfig::Dhcp { .. } => {
            let up = wait_for_carrier(con, iface);
            let Leased { lease: l, sent } = dhcp_with_retry(con, iface, mac);
            let st = cmdline::StaticIp { client: l.address, gateway: l.router, prefix: l.prefix, device: None };
            set_address(iface, &st)?;
            set_mtu(con, iface, l.mtu, "DHCP option 26");
            let held = l.lease_secs.and_then(|secs| lease::Held::new(l.address, l.server_id, sent, secs, l.renew_secs, l.rebind_secs));
            // The lease's own, where it has them.
            let services = handoff::NetServices::from_reply(&l).or(given);
            (st, up, held, services, l.hostname.or_else(|| s.hostname.clone()), None)
        }
    };
    if let Some(name) = hostname {
        set_hostname(con, &name);
    }
    con.say(format_args!("{iface}: {}/{} gateway {:?}", st.client, st.prefix, st.gateway));
    Ok(Configured { link_up, held, services, inform: asked })
}

/// The root's DNS and NTP servers, on the console.
pub(crate) fn say_services(con: &Console, iface: &str, services: &handoff::NetServices) {
    if !services.dns.is_empty() {
        let domain = services.domain.as_deref().map(|d| format!(", domain {d}")).unwrap_or_default();
        let search = match services.search.is_empty() {
            true => String::new(),
            false => format!(", search {}", services.search.join(" ")),
        };
        con.say(format_args!("{iface}: DNS {}{domain}{search} (for the root)", handoff::joined(&services.dns, " ")));
    }
    if !services.ntp.is_empty() {
        con.say(format_args!("{iface}: NTP {} (for the root)", handoff::joined(&services.ntp, " ")));
    }
}

/// The kernel's hostname, from DHCP option 12 (validated by
/// `dhcp::host_name`): a root without a static one (an empty
/// `/etc/hostname`) keeps it, so every client of one base has its own.
pub(crate) fn set_hostname(con: &Console, name: &str) {
    match std::fs::write("/proc/sys/kernel/hostname", name) {
        Ok(()) => con.say(format_args!("hostname {name}")),
        Err(e) => con.say(format_args!("cannot set the hostname {name}: {e}; going on without")),
    }
}

/// The segment's MTU, when it names one (`from`). A NIC that cannot take it
/// keeps its default, which still works where the segment's MTU is larger.
pub(crate) fn set_mtu(con: &Console, iface: &str, mtu: Option<u16>, from: &str) {
    let Some(m) = mtu else { return };
    match sys::set_mtu(iface, m) {
        Ok(()) => con.say(format_args!("{iface}: MTU {m} ({from})")),
        Err(e) => con.say(format_args!("{iface}: cannot set MTU {m} ({from}): {e}; going on with the NIC's default")),
    }
}

pub(crate) fn set_address(iface: &str, st: &cmdline::StaticIp) -> Result<(), InitError> {
    sys::set_address(iface, st.client, st.prefix).with_context(|| format!("setting {}/{} on {iface}", st.client, st.prefix))?;
    if let Some(gw) = st.gateway {
        sys::add_default_route(gw).with_context(|| format!("adding the default route via {gw}"))?;
    }
    Ok(())
}

/// How often `find_interface` lists the interfaces while a NIC probes.
pub(crate) const INTERFACE_POLL: Duration = Duration::from_millis(5);

/// How often `wait_for_carrier` looks: a virtio or e1000 link is up a few
/// milliseconds after the interface (a 20 ms step cost a TCG boot 20 ms).
pub(crate) const CARRIER_POLL: Duration = Duration::from_millis(2);

/// Wait for carrier, so the first packet is not dropped (a lost TCP SYN
/// costs a second); say so every `CARRIER_WAIT` while there is none.
/// When the carrier came.
pub(crate) fn wait_for_carrier(con: &Console, iface: &str) -> Instant {
    let started = Instant::now();
    let mut deadline = started + CARRIER_WAIT;
    while std::fs::read_to_string(format!("/sys/class/net/{iface}/carrier")).map(|c| c.trim() != "1").unwrap_or(true) {
        if Instant::now() > deadline {
            con.say(format_args!("{iface} has no carrier yet: is the cable (or tap) connected? still waiting"));
            deadline = Instant::now() + CARRIER_WAIT;
        }
        std::thread::sleep(CARRIER_POLL);
    }
    if started.elapsed() > SLOW_CARRIER {
        con.say(format_args!("{iface}: link up after {:.2} s (the NIC's autonegotiation)", started.elapsed().as_secs_f64()));
    }
    Instant::now()
}
