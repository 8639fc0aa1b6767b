//! What pxeroot-init leaves in the root's `/run` for the root's udev,
//! systemd-networkd and ifupdown units, so that they keep the boot
//! interface as it is: the root filesystem reaches its disk through it.
//! Pure: the caller mounts the tmpfs and writes the files.
//! NetworkManager gets a drop-in that leaves the interface unmanaged
//! (below), and the root's resolvers the boot network's DNS servers.
//!
//! Without them, a stock systemd root cuts itself off (seen in QEMU with
//! Debian 12's systemd 252):
//! - udev renames the interface to its predictable name (`eth0` to
//!   `ens2`); the kernel refuses while the interface is up, and networkd
//!   then waits for the rename forever: `systemd-networkd-wait-online`
//!   fails after 2 minutes and the interface is never configured;
//! - with the rename out of the way (`net.ifnames=0`), a `.network` that
//!   matches the interface with `DHCP=yes` and the default
//!   `KeepConfiguration=no` removes the address pxeroot-init set before
//!   asking for a lease. networkd then needs a page of the root, which is
//!   behind that address: the machine hangs.
//!
//! Likewise ifupdown takes interfaces down at shutdown, before the root is
//! read-only: its units get drop-ins that take none down.
//!
//! The `.link` keeps the kernel's name (and gives the predictable names as
//! alternative names, which `.network` files' `Name=` also match); the
//! `.network` sorts before the root's own files, so it is the one
//! networkd applies to the boot interface: keep the configuration, and ask
//! for the same lease when the address came from DHCP (networkd then
//! brings the lease's DNS and NTP servers to the root); a static address
//! (`ip=` with autoconfiguration off) gets no dynamic configuration, and
//! the boot's DNS and NTP servers on the link.
//!
//! The DNS servers and search domains (DHCP options 6, and 119 or else
//! 15, from iPXE's script or pxeroot-init's own lease) also go to systemd-resolved as global
//! servers, to NetworkManager as its global DNS (it has no connection on
//! the unmanaged NIC to bring them), and to `/run/pxeroot/resolv.conf`
//! for a root that links `/etc/resolv.conf` there; the NTP servers
//! (option 42) to systemd-timesyncd and chrony.

use std::fmt::Write;
use std::net::Ipv4Addr;

/// The directory under the root's `/run` that udev and networkd read.
pub const DIR: &str = "systemd/network";
/// The files' name, without the suffix: `00` sorts before the root's own
/// files (networkd and udev apply the first file that matches).
pub const STEM: &str = "00-pxeroot-boot-nic";
/// The drop-in's name in the ifupdown units' `.d` directories under the
/// root's `/run/systemd/system`.
pub const DROP_IN: &str = "50-pxeroot-boot-nic.conf";
/// NetworkManager's drop-in under the root's `/run` (it reads
/// `/run/NetworkManager/conf.d` between `/usr/lib`'s and `/etc`'s).
pub const NM_CONF: &str = "NetworkManager/conf.d/50-pxeroot-boot-nic.conf";
/// chrony's sources under the root's `/run`.
pub const CHRONY_SOURCES: &str = "chrony-dhcp/pxeroot-boot-nic.sources";
/// A resolv.conf for roots that link `/etc/resolv.conf` to
/// `../run/pxeroot/resolv.conf`.
pub const RESOLV_CONF: &str = "pxeroot/resolv.conf";
/// The tmpfs options systemd itself mounts `/run` with (systemd keeps a
/// `/run` it finds mounted, as initramfs-tools and dracut hand it over).
pub const RUN_OPTIONS: &str = "mode=0755,size=20%,nr_inodes=800k";
/// The root's directories that say it runs systemd's udev or networkd.
pub const SYSTEMD_DIRS: [&str; 2] = ["usr/lib/systemd", "lib/systemd"];

/// What the boot's network names for its clients, validated by `dhcp`:
/// DNS servers, domain and search list (options 6, 15 and 119, or `ip=`'s
/// DNS fields) and NTP servers (option 42).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetServices {
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub ntp: Vec<Ipv4Addr>,
}

/// The interface the root is reached through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootNic {
    pub name: String,
    pub mac: [u8; 6],
    /// The address, when it came from a DHCP lease (the root's networkd
    /// then keeps it renewed); `None` for a static address.
    pub leased: Option<Ipv4Addr>,
    pub services: NetServices,
}

impl BootNic {
    fn mac_text(&self) -> String {
        crate::mac_text(&self.mac)
    }

    /// Every file to write, its path relative to the root's `/run`.
    pub fn files(&self) -> Vec<(String, String)> {
        let mut files = vec![
            (format!("{DIR}/{STEM}.link"), self.link_file()),
            (format!("{DIR}/{STEM}.network"), self.network_file()),
            (format!("systemd/system/networking.service.d/{DROP_IN}"), NO_IFDOWN.to_string()),
            (format!("systemd/system/ifup@{}.service.d/{DROP_IN}", self.name), NO_IFDOWN.to_string()),
            (NM_CONF.to_string(), self.network_manager_file()),
        ];
        if !self.services.dns.is_empty() {
            files.push((format!("systemd/resolved.conf.d/{DROP_IN}"), self.services.resolved_file()));
            files.push((RESOLV_CONF.to_string(), self.services.resolv_conf()));
        }
        if !self.services.ntp.is_empty() {
            files.push((format!("systemd/timesyncd.conf.d/{DROP_IN}"), self.services.timesyncd_file()));
            files.push((CHRONY_SOURCES.to_string(), self.services.chrony_sources()));
        }
        files
    }

    /// `STEM.link`: udev keeps the interface's name.
    pub fn link_file(&self) -> String {
        format!(
            "# Written by pxeroot-init: the root filesystem is on NBD through this\n\
             # interface. It is up, so a rename would fail and leave networkd waiting:\n\
             # it keeps its name, and gets the predictable ones as alternative names.\n\
             [Match]\n\
             MACAddress={mac}\n\
             OriginalName={name}\n\
             \n\
             [Link]\n\
             NamePolicy=\n\
             Name={name}\n\
             AlternativeNamesPolicy=database onboard slot path\n\
             MACAddressPolicy=none\n",
            mac = self.mac_text(),
            name = self.name
        )
    }

    /// `STEM.network`: networkd keeps the address and routes.
    pub fn network_file(&self) -> String {
        let mut f = format!(
            "# Written by pxeroot-init: the root filesystem is on NBD through this\n\
             # interface. Dropping its address (networkd's default) cuts the root off.\n\
             # To configure it yourself, boot with pxeroot.handoff=0 and set\n\
             # KeepConfiguration=yes in your own .network file.\n\
             [Match]\n\
             Name={name}\n\
             MACAddress={mac}\n\
             \n\
             [Network]\n\
             KeepConfiguration=yes\n",
            mac = self.mac_text(),
            name = self.name
        );
        match self.leased {
            // The client identifier iPXE and pxeroot-init send (type 1 and
            // the MAC), so the server sees the same client and its lease.
            Some(address) => {
                let _ = write!(f, "DHCP=yes\n\n[DHCPv4]\nClientIdentifier=mac\nRequestAddress={address}\n");
            }
            // `ip=` with autoconfiguration off: none for IPv6 either. With
            // router advertisements as its only dynamic source, networkd
            // holds the interface "configuring" until its solicitations
            // time out, and network-online.target 12 s with it.
            None => {
                f.push_str("IPv6AcceptRA=no\n");
                // Nothing dynamic: the boot's DNS servers for this link.
                for server in &self.services.dns {
                    let _ = writeln!(f, "DNS={server}");
                }
                if !self.services.searches().is_empty() {
                    let _ = writeln!(f, "Domains={}", self.services.searches().join(" "));
                }
                for server in &self.services.ntp {
                    let _ = writeln!(f, "NTP={server}");
                }
            }
        }
        f
    }

    /// [`NM_CONF`]: NetworkManager leaves the boot NIC unmanaged, and
    /// takes the boot network's DNS servers as its global ones. On its own
    /// NetworkManager 1.42 takes the NIC's configuration as external and
    /// leaves it, but a user's "disconnect" (`nmcli device disconnect`, a
    /// desktop's network menu) then flushes its address and the root is
    /// cut off (both seen in QEMU with Debian 12); an unmanaged device
    /// cannot be disconnected. No connection of NetworkManager's own
    /// brings the DNS servers, hence the global ones.
    pub fn network_manager_file(&self) -> String {
        let mut f = format!(
            "# Written by pxeroot-init: the root filesystem is on NBD through {name}; taking\n\
             # it down cuts the root off. To manage it anyway, boot with pxeroot.handoff=0.\n\
             [keyfile]\n\
             unmanaged-devices+=mac:{mac}\n",
            name = self.name,
            mac = self.mac_text()
        );
        let r = &self.services;
        if !r.dns.is_empty() && !r.searches().is_empty() {
            let _ = write!(f, "\n[global-dns]\nsearches={}\n", r.searches().join(","));
        }
        if !r.dns.is_empty() {
            let _ = write!(f, "\n[global-dns-domain-*]\nservers={}\n", joined(&r.dns, ","));
        }
        f
    }
}

/// Addresses as the configuration files and the console list them.
pub fn joined(list: &[Ipv4Addr], sep: &str) -> String {
    list.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(sep)
}

impl NetServices {
    /// What a DHCP server's answer names.
    pub fn from_reply(l: &crate::dhcp::Lease) -> NetServices {
        NetServices { dns: l.dns.clone(), domain: l.domain.clone(), search: l.search.clone(), ntp: l.ntp.clone() }
    }

    /// Each of these that is set, else `other`'s: `lease.or(cmdline)`
    /// where pxeroot-init leased the address itself, `cmdline.or(inform)`
    /// where iPXE did and an INFORM filled the gaps.
    pub fn or(self, other: NetServices) -> NetServices {
        fn list<T>(a: Vec<T>, b: Vec<T>) -> Vec<T> {
            if a.is_empty() {
                b
            } else {
                a
            }
        }
        NetServices {
            dns: list(self.dns, other.dns),
            domain: self.domain.or(other.domain),
            search: list(self.search, other.search),
            ntp: list(self.ntp, other.ntp),
        }
    }

    /// The search domains: option 119's list, else option 15's domain
    /// (what dhclient writes to resolv.conf).
    pub fn searches(&self) -> &[String] {
        match self.search.is_empty() {
            true => self.domain.as_slice(),
            false => &self.search,
        }
    }

    /// `systemd/resolved.conf.d/DROP_IN`: systemd-resolved's global
    /// servers, for roots where no link manager tells it of the boot
    /// network's (NetworkManager leaves the boot NIC alone, ifupdown with
    /// a static stanza).
    pub fn resolved_file(&self) -> String {
        let mut f = String::from("# Written by pxeroot-init: the DNS servers of the network the machine booted from.\n[Resolve]\n");
        let _ = writeln!(f, "DNS={}", joined(&self.dns, " "));
        if !self.searches().is_empty() {
            let _ = writeln!(f, "Domains={}", self.searches().join(" "));
        }
        f
    }

    /// `systemd/timesyncd.conf.d/DROP_IN`: systemd-timesyncd's servers,
    /// for roots where no link manager tells it of the boot network's.
    pub fn timesyncd_file(&self) -> String {
        format!(
            "# Written by pxeroot-init: the NTP servers of the network the machine booted from.\n[Time]\nNTP={}\n",
            joined(&self.ntp, " ")
        )
    }

    /// [`CHRONY_SOURCES`]: chrony's, in the directory Debian's chrony.conf
    /// reads (`sourcedir /run/chrony-dhcp`, where its DHCP hooks write).
    pub fn chrony_sources(&self) -> String {
        let mut f = String::from("# Written by pxeroot-init: the NTP servers of the network the machine booted from.\n");
        for server in &self.ntp {
            let _ = writeln!(f, "server {server} iburst");
        }
        f
    }

    /// [`RESOLV_CONF`]: for a root whose `/etc/resolv.conf` links to it.
    pub fn resolv_conf(&self) -> String {
        let mut f = String::from("# Written by pxeroot-init: the DNS servers of the network the machine booted from.\n");
        if !self.searches().is_empty() {
            let _ = writeln!(f, "search {}", self.searches().join(" "));
        }
        for server in &self.dns {
            let _ = writeln!(f, "nameserver {server}");
        }
        f
    }
}

/// ifupdown's units take interfaces down when they stop, at shutdown:
/// `networking.service` every `auto` one (`ifdown -a`), `ifup@IFACE.service`
/// an `allow-hotplug` one. dhclient then releases the lease and flushes
/// the address while the root is still mounted read-write, and the shutdown
/// hangs on the root's I/O (seen in QEMU with Debian 12's ifupdown). Their
/// `ExecStop` is cleared, not narrowed to spare the boot NIC: a stanza may
/// name it by its predictable name (an alternative name here, which `ip`
/// accepts), which pxeroot-init does not know. A machine that powers off
/// needs no interface taken down.
const NO_IFDOWN: &str = "# Written by pxeroot-init: the root filesystem is on NBD through the boot NIC.\n\
     [Service]\n\
     ExecStop=\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(leased: Option<Ipv4Addr>) -> BootNic {
        BootNic { name: "eth0".into(), mac: [0x52, 0x54, 0, 0xab, 0, 0x0f], leased, services: NetServices::default() }
    }

    fn section<'a>(file: &'a str, name: &str) -> Vec<&'a str> {
        let head = format!("[{name}]");
        file.lines().skip_while(|l| *l != head).skip(1).take_while(|l| !l.starts_with('[')).filter(|l| !l.is_empty()).collect()
    }

    #[test]
    fn the_link_keeps_the_kernel_name_for_this_mac_only() {
        let f = nic(None).link_file();
        assert_eq!(section(&f, "Match"), ["MACAddress=52:54:00:ab:00:0f", "OriginalName=eth0"]);
        let link = section(&f, "Link");
        // An empty NamePolicy= leaves Name=: no policy may pick another name.
        assert_eq!(&link[..2], ["NamePolicy=", "Name=eth0"]);
        assert!(link.contains(&"AlternativeNamesPolicy=database onboard slot path"), "{f}");
    }

    #[test]
    fn a_static_address_is_kept_and_nothing_dynamic_is_started() {
        let f = nic(None).network_file();
        assert_eq!(section(&f, "Match"), ["Name=eth0", "MACAddress=52:54:00:ab:00:0f"]);
        assert_eq!(section(&f, "Network"), ["KeepConfiguration=yes", "IPv6AcceptRA=no"]);
        assert!(section(&f, "DHCPv4").is_empty(), "{f}");
    }

    #[test]
    fn a_leased_address_is_kept_and_its_lease_asked_for_again() {
        let f = nic(Some(Ipv4Addr::new(10, 99, 0, 100))).network_file();
        assert_eq!(section(&f, "Network"), ["KeepConfiguration=yes", "DHCP=yes"]);
        assert_eq!(section(&f, "DHCPv4"), ["ClientIdentifier=mac", "RequestAddress=10.99.0.100"]);
    }

    fn with_dns(leased: Option<Ipv4Addr>) -> BootNic {
        let services = NetServices {
            dns: vec![Ipv4Addr::new(10, 99, 0, 53), Ipv4Addr::new(10, 99, 0, 54)],
            domain: Some("lab.example".into()),
            search: vec![],
            ntp: vec![],
        };
        BootNic { services, ..nic(leased) }
    }

    #[test]
    fn a_static_address_gets_the_boots_dns_servers_on_its_link() {
        let f = with_dns(None).network_file();
        assert_eq!(
            section(&f, "Network"),
            ["KeepConfiguration=yes", "IPv6AcceptRA=no", "DNS=10.99.0.53", "DNS=10.99.0.54", "Domains=lab.example"]
        );
        // A leased address: networkd's own DHCP brings the lease's.
        let f = with_dns(Some(Ipv4Addr::new(10, 99, 0, 100))).network_file();
        assert!(!f.contains("DNS=") && !f.contains("Domains="), "{f}");
    }

    #[test]
    fn the_dns_servers_reach_resolved_network_manager_and_a_plain_resolv_conf() {
        let paths = |n: BootNic| n.files().into_iter().map(|(p, _)| p).collect::<Vec<_>>();
        assert!(!paths(nic(None)).iter().any(|p| p.contains("resolv")), "no DNS servers known: no resolver files");
        let files = with_dns(Some(Ipv4Addr::new(10, 99, 0, 100))).files();
        let find = |path: &str| files.iter().find(|(p, _)| p == path).map(|(_, t)| t.clone()).unwrap();
        let resolved = find("systemd/resolved.conf.d/50-pxeroot-boot-nic.conf");
        assert_eq!(section(&resolved, "Resolve"), ["DNS=10.99.0.53 10.99.0.54", "Domains=lab.example"]);
        let nm = find(NM_CONF);
        assert_eq!(section(&nm, "keyfile"), ["unmanaged-devices+=mac:52:54:00:ab:00:0f"]);
        assert_eq!(section(&nm, "global-dns"), ["searches=lab.example"]);
        assert_eq!(section(&nm, "global-dns-domain-*"), ["servers=10.99.0.53,10.99.0.54"]);
        let resolv = find(RESOLV_CONF);
        assert_eq!(
            resolv.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>(),
            ["search lab.example", "nameserver 10.99.0.53", "nameserver 10.99.0.54"]
        );
        // Without a domain, no search domain anywhere; without servers,
        // NetworkManager keeps its own DNS and only leaves the NIC alone.
        let bare = BootNic { services: NetServices { domain: None, ..with_dns(None).services }, ..nic(None) };
        let nm = bare.network_manager_file();
        assert!(section(&nm, "global-dns").is_empty() && !section(&nm, "global-dns-domain-*").is_empty(), "{nm}");
        assert!(!bare.services.resolved_file().contains("Domains=") && !bare.services.resolv_conf().contains("search"));
        let nm = nic(None).network_manager_file();
        assert_eq!(nm.lines().filter(|l| l.starts_with('[')).collect::<Vec<_>>(), ["[keyfile]"], "{nm}");
    }

    #[test]
    fn the_search_list_replaces_the_domain_as_search_domains_everywhere() {
        let search = vec!["eng.lab.example".to_string(), "lab.example".to_string()];
        let n = BootNic { services: NetServices { search, ..with_dns(None).services }, ..nic(None) };
        assert!(n.network_file().lines().any(|l| l == "Domains=eng.lab.example lab.example"), "{}", n.network_file());
        assert_eq!(section(&n.services.resolved_file(), "Resolve")[1], "Domains=eng.lab.example lab.example");
        assert_eq!(section(&n.network_manager_file(), "global-dns"), ["searches=eng.lab.example,lab.example"]);
        assert!(n.services.resolv_conf().lines().any(|l| l == "search eng.lab.example lab.example"));
    }

    #[test]
    fn each_service_comes_from_the_first_source_that_names_it() {
        let ip = |d| Ipv4Addr::new(10, 0, 0, d);
        let ipxe = NetServices { dns: vec![ip(53)], domain: Some("lab.example".into()), ..NetServices::default() };
        let inform = NetServices {
            dns: vec![ip(54)],
            domain: Some("other.example".into()),
            search: vec!["corp.example".into()],
            ntp: vec![ip(123)],
        };
        let both = ipxe.clone().or(inform.clone());
        assert_eq!(
            both,
            NetServices { dns: vec![ip(53)], domain: Some("lab.example".into()), search: vec!["corp.example".into()], ntp: vec![ip(123)] }
        );
        assert_eq!(NetServices::default().or(inform.clone()), inform);
        assert_eq!(ipxe.clone().or(NetServices::default()), ipxe);
    }

    #[test]
    fn the_ntp_servers_reach_networkd_timesyncd_and_chrony() {
        let ntp = vec![Ipv4Addr::new(10, 99, 0, 123), Ipv4Addr::new(10, 99, 0, 124)];
        let n = BootNic { services: NetServices { ntp, ..NetServices::default() }, ..nic(None) };
        let f = n.network_file();
        assert_eq!(section(&f, "Network"), ["KeepConfiguration=yes", "IPv6AcceptRA=no", "NTP=10.99.0.123", "NTP=10.99.0.124"]);
        let files = n.files();
        let find = |path: &str| files.iter().find(|(p, _)| p == path).map(|(_, t)| t.clone()).unwrap();
        assert_eq!(section(&find("systemd/timesyncd.conf.d/50-pxeroot-boot-nic.conf"), "Time"), ["NTP=10.99.0.123 10.99.0.124"]);
        let chrony = find(CHRONY_SOURCES);
        assert_eq!(
            chrony.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>(),
            ["server 10.99.0.123 iburst", "server 10.99.0.124 iburst"]
        );
        assert!(!nic(None).files().iter().any(|(p, _)| p.contains("timesyncd") || p.contains("chrony")), "no NTP servers: no files");
    }

    #[test]
    fn ifupdown_never_takes_the_boot_nic_down() {
        let files = nic(None).files();
        let find = |path: &str| files.iter().find(|(p, _)| p == path).map(|(_, t)| t.clone()).unwrap();
        // An empty ExecStop= clears the unit's list (a drop-in adds to it
        // otherwise).
        for unit in ["networking.service", "ifup@eth0.service"] {
            let dropin = find(&format!("systemd/system/{unit}.d/50-pxeroot-boot-nic.conf"));
            assert_eq!(section(&dropin, "Service"), ["ExecStop="], "{unit}");
        }
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(&paths[..2], ["systemd/network/00-pxeroot-boot-nic.link", "systemd/network/00-pxeroot-boot-nic.network"]);
    }

    #[test]
    fn the_files_sort_before_the_roots_own() {
        for theirs in ["10-netplan-all-en.network", "50-cloud-init.network", "80-dhcp.network", "99-default.link"] {
            assert!(format!("{STEM}.network").as_str() < theirs && format!("{STEM}.link").as_str() < theirs, "{theirs}");
        }
    }
}
