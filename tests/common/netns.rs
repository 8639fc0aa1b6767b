//! Test network namespaces and processes that are cleaned up on drop, even
//! when a test fails: nothing a test starts outlives it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::run;

/// The boot server's address in every test topology.
pub const SERVER_IP: &str = "10.99.0.1";

/// The addresses the site's DHCP server hands out on the LAN of
/// `lan_and_server` (dnsmasq, Kea, ISC dhcpd).
pub const SITE_RANGE: (&str, &str) = ("10.99.0.50", "10.99.0.99");

/// A network namespace with one tap (the client's cable) at SERVER_IP;
/// deleted, with everything in it, when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        assert!(nix::unistd::geteuid().is_root(), "boot tests need root for namespaces and taps (CI runs as root)");
        let name = format!("pxrt-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ns.exec(&["ip", "addr", "add", &format!("{SERVER_IP}/24"), "dev", "tap0"]);
        ns.exec(&["ip", "link", "set", "tap0", "up"]);
        ns
    }

    pub fn exec(&self, args: &[&str]) {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(args));
    }

    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside, then remove the namespace.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The reference topology: a "LAN" namespace with a bridge, the client's
/// tap and the site's DHCP server (dnsmasq); pxeroot in its own namespace,
/// joined to the bridge by veth. No default route: nothing leaves.
pub fn lan_and_server(tag: &str) -> (Netns, Netns) {
    let lan = Netns::new(&format!("{tag}l"));
    let srv = Netns::new(&format!("{tag}s"));
    // Re-plumb: in the LAN namespace the tap joins a bridge that holds the
    // site DHCP server's address; the server namespace gets a veth.
    lan.exec(&["ip", "addr", "flush", "dev", "tap0"]);
    lan.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    lan.exec(&["ip", "link", "set", "tap0", "master", "br0"]);
    lan.exec(&["ip", "addr", "add", "10.99.0.254/24", "dev", "br0"]);
    lan.exec(&["ip", "link", "set", "br0", "up"]);
    srv.exec(&["ip", "link", "del", "tap0"]);
    lan.exec(&["ip", "link", "add", "vlan0", "type", "veth", "peer", "name", "vsrv0", "netns", &srv.name]);
    lan.exec(&["ip", "link", "set", "vlan0", "master", "br0"]);
    lan.exec(&["ip", "link", "set", "vlan0", "up"]);
    srv.exec(&["ip", "addr", "add", &format!("{SERVER_IP}/24"), "dev", "vsrv0"]);
    srv.exec(&["ip", "link", "set", "vsrv0", "up"]);
    (lan, srv)
}

/// A client host on the LAN of `lan_and_server`: its own namespace, joined
/// to the bridge by veth `vcli0`, without an address (as firmware starts).
pub fn client_on(lan: &Netns, tag: &str) -> Netns {
    let cli = Netns::new(tag);
    cli.exec(&["ip", "link", "del", "tap0"]);
    lan.exec(&["ip", "link", "add", "vclil", "type", "veth", "peer", "name", "vcli0", "netns", &cli.name]);
    lan.exec(&["ip", "link", "set", "vclil", "master", "br0"]);
    lan.exec(&["ip", "link", "set", "vclil", "up"]);
    cli.exec(&["ip", "link", "set", "vcli0", "up"]);
    cli
}

/// The site's DHCP server on the LAN bridge of `lan_and_server`: dnsmasq,
/// addresses only (10.99.0.50-99), no boot information; its files in `dir`.
pub fn site_dnsmasq(lan: &Netns, dir: &Path) -> Proc {
    dnsmasq_dhcp(lan, "br0", dir, true)
}

/// dnsmasq as a DHCP server only (10.99.0.50-99) on `interface` in `ns`;
/// with `bind_interfaces` it lets another program share port 67.
pub fn dnsmasq_dhcp(ns: &Netns, interface: &str, dir: &Path, bind_interfaces: bool) -> Proc {
    dnsmasq_dhcp_with(ns, interface, dir, bind_interfaces, "1h", &[])
}

/// `dnsmasq_dhcp` with leases of `lease` (dnsmasq's form: 2m at least) and
/// more dnsmasq arguments.
pub fn dnsmasq_dhcp_with(ns: &Netns, interface: &str, dir: &Path, bind_interfaces: bool, lease: &str, extra: &[String]) -> Proc {
    let mut c = ns.command(Path::new("dnsmasq"));
    c.args(["--no-daemon", "--port=0", "--no-ping", "--dhcp-authoritative"])
        .arg(format!("--interface={interface}"))
        .arg(format!("--dhcp-range={},{},255.255.255.0,{lease}", SITE_RANGE.0, SITE_RANGE.1))
        .args(extra)
        .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .stderr(Stdio::null());
    if bind_interfaces {
        c.arg("--bind-interfaces");
    }
    Proc(c.spawn().expect("start dnsmasq"))
}

/// A routed site: the client's segment (10.98.0.0/24 on bridge br0 with
/// the client's tap0) sits behind a router namespace that relays DHCP,
/// as `ip helper-address` does, to the site's DHCP server (10.96.0.1, on a
/// segment of its own) and to the boot server (SERVER_IP, its own segment
/// too), and routes between the three. The router also sends IPv6 router
/// advertisements on the client segment, as a site router does (iPXE
/// otherwise waits for IPv6 autoconfiguration). Without `with_site_dhcp`
/// the relay forwards to the boot server only (pxeroot in full mode). The
/// relay and the site's server run until their `Proc`s drop.
pub struct RoutedSite {
    // Fields drop in order: the daemons before their namespaces.
    pub relay: Proc,
    pub site_dhcp: Option<Proc>,
    pub router: Netns,
    pub server: Netns,
    pub site: Netns,
}

/// The client segment's router address (the relay's giaddr).
pub const ROUTED_GATEWAY: &str = "10.98.0.1";
const SITE_DHCP_IP: &str = "10.96.0.1";

pub fn routed_site(tag: &str, dir: &Path, with_site_dhcp: bool) -> RoutedSite {
    let router = Netns::new(&format!("{tag}r"));
    let server = Netns::new(&format!("{tag}s"));
    let site = Netns::new(&format!("{tag}d"));
    router.exec(&["ip", "addr", "flush", "dev", "tap0"]);
    router.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    router.exec(&["ip", "link", "set", "tap0", "master", "br0"]);
    router.exec(&["ip", "addr", "add", &format!("{ROUTED_GATEWAY}/24"), "dev", "br0"]);
    router.exec(&["ip", "-6", "addr", "add", "fd98::1/64", "dev", "br0", "nodad"]);
    router.exec(&["ip", "link", "set", "br0", "up"]);
    for (ns, peer, inner, outer) in
        [(&server, "vsrv0", format!("{SERVER_IP}/24"), "10.99.0.254"), (&site, "vsite0", format!("{SITE_DHCP_IP}/24"), "10.96.0.254")]
    {
        ns.exec(&["ip", "link", "del", "tap0"]);
        let here = format!("r{peer}");
        router.exec(&["ip", "link", "add", &here, "type", "veth", "peer", "name", peer, "netns", &ns.name]);
        router.exec(&["ip", "addr", "add", &format!("{outer}/24"), "dev", &here]);
        router.exec(&["ip", "link", "set", &here, "up"]);
        ns.exec(&["ip", "addr", "add", &inner, "dev", peer]);
        ns.exec(&["ip", "link", "set", peer, "up"]);
        ns.exec(&["ip", "route", "add", "default", "via", outer]);
    }
    router.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    let site_dhcp = with_site_dhcp.then(|| {
        Proc(
            site.command(Path::new("dnsmasq"))
                .args(["--no-daemon", "--port=0", "--interface=vsite0", "--bind-interfaces", "--no-ping", "--dhcp-authoritative"])
                .args(["--dhcp-range=10.98.0.50,10.98.0.99,255.255.255.0,1h", &format!("--dhcp-option=3,{ROUTED_GATEWAY}")])
                .arg(format!("--dhcp-leasefile={}", dir.join("site-leases").display()))
                .arg(format!("--pid-file={}", dir.join("site-dnsmasq.pid").display()))
                .arg("--log-dhcp")
                .arg(format!("--log-facility={}", dir.join("site-dnsmasq.log").display()))
                .stderr(Stdio::null())
                .spawn()
                .expect("start the site's dnsmasq"),
        )
    });
    let mut relay_to = vec![format!("--dhcp-relay={ROUTED_GATEWAY},{SERVER_IP}")];
    if with_site_dhcp {
        relay_to.push(format!("--dhcp-relay={ROUTED_GATEWAY},{SITE_DHCP_IP}"));
    }
    let relay = Proc(
        router
            .command(Path::new("dnsmasq"))
            .args(["--no-daemon", "--port=0"])
            .args(&relay_to)
            .args(["--enable-ra", "--dhcp-range=fd98::,ra-only,64"])
            .arg(format!("--pid-file={}", dir.join("relay.pid").display()))
            .arg(format!("--log-facility={}", dir.join("relay.log").display()))
            .stderr(Stdio::null())
            .spawn()
            .expect("start the relay"),
    );
    RoutedSite { relay, site_dhcp, router, server, site }
}
