//! Whole PXE boots: a BIOS client's iPXE ROM beside the site's DHCP server
//! (dnsmasq, Kea, ISC dhcpd) or with pxeroot as the only one (full mode),
//! through a relay and a router, the lease kept while the root runs, the
//! e1000e NIC, persistent and ephemeral overlays, three clients at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::boot::*;
use common::netns::{dnsmasq_dhcp_with, lan_and_server, routed_site, Netns, Proc, ROUTED_GATEWAY, SITE_RANGE};
use common::qemu::{Booted, Client};
use common::*;

/// Says it runs, then ticks every second until QEMU is stopped: a root
/// that stays up while a test watches something else (the lease keeper).
const TICK_INIT: &str = "#!/bin/busybox sh\necho PXEROOT-MARKER root init running\nwhile true; do /bin/busybox sleep 1; echo tick; done\n";

#[test]
fn test_pxe_boot_ipxe_rom_proxy_dhcp_beside_dnsmasq() {
    require("dnsmasq");
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    boot_dir(d.path());
    let (lan, srv) = lan_and_server("pxe");
    let (_server, log_path) = serve(d.path(), &srv, &img, "attach = \"ioctl\"\n", PROXY_DHCP, &the_client());
    // The site's server names DNS servers, a domain and search domains
    // (options 6, 15 and 119).
    let _dnsmasq = dnsmasq_dhcp_with(&lan, "br0", d.path(), true, "1h", &site_dns_options());
    let t = Instant::now();
    let Booted { lines, exited, .. } = Client::new(&lan).network().beside(&log_path).run(|l| l.contains("FATAL"));
    let console = lines.join("\n");
    eprintln!("{console}");
    let server_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "no boot:\n{console}\n--- pxeroot log:\n{server_log}");
    eprintln!("PXE boot, QEMU start to power-off: {:.1} s", t.elapsed().as_secs_f64());
    // The router advertisement ends iPXE's IPv6 autoconfiguration wait
    // (about 16 s without it).
    let at = |needle: &str| lines.iter().find(|l| l.contains(needle)).and_then(|l| l[1..7].trim().parse::<f64>().ok());
    let configured = at("Configuring (net0").expect("iPXE configured");
    let started = at("Press Ctrl-B for the iPXE command line").expect("iPXE started");
    assert!(
        configured - started < 6.0,
        "iPXE's network configuration took {:.1} s: the RA did not end the IPv6 wait",
        configured - started
    );
    for event in ["DHCP: client answered", "new boot", "TFTP transfer finished", "NBD session opened"] {
        assert!(server_log.contains(event), "no {event:?} in the server log:\n{server_log}");
    }
    // This config attaches with the ioctls: the server says what that costs.
    assert!(server_log.contains("pxe.attach = \"ioctl\": a systemd root loses its last writes"), "{server_log}");
    let marker = overlay_marker(d.path(), &d.path().join("state").join(format!("{STEM}.qcow2")));
    assert!(marker.contains("written by the diskless client"), "{marker}");
    // The site server's DNS servers, domain and search list (dnsmasq's
    // RFC 3397 encoding) went through iPXE's script (`:hexraw`, from the
    // site server's block, not the proxy's) to pxeroot-init.
    assert!(
        console.contains("eth0: DNS 192.0.2.53 192.0.2.54, domain lab.example, search lab.example corp.example (for the root)"),
        "{console}"
    );
    assert!(console.contains("] hostname lab-07"), "the site server's name for the client:\n{console}");
    // iPXE asks for no option 42, and dnsmasq sends only what is asked
    // for: no NTP server reaches the script. pxeroot-init asked dnsmasq
    // with a DHCPINFORM from the address iPXE leased (docs/roots.md, "NTP").
    assert!(console.contains("eth0: NTP 192.0.2.123 (for the root)"), "dnsmasq's answer to the INFORM:\n{console}");
}

/// Kea's DHCPv4 server, the successor of ISC dhcpd, as the site's server
/// on `interface` of `ns`: `SITE_RANGE`, the LAN's router, a DNS server,
/// a domain and an NTP server (TEST-NET-1: nothing is asked). Returns the
/// process and its log (packets at debug level).
fn kea_dhcp4(ns: &Netns, interface: &str, dir: &Path) -> (Proc, PathBuf) {
    let log = dir.join("kea.log");
    let config = dir.join("kea-dhcp4.json");
    let (first, last) = SITE_RANGE;
    let text = format!(
        r#"{{"Dhcp4": {{
  "interfaces-config": {{"interfaces": ["{interface}"], "dhcp-socket-type": "raw"}},
  "lease-database": {{"type": "memfile", "persist": false}},
  "valid-lifetime": 3600,
  "subnet4": [{{"id": 1, "subnet": "10.99.0.0/24", "pools": [{{"pool": "{first} - {last}"}}],
    "option-data": [{{"name": "routers", "data": "10.99.0.254"}}, {{"name": "domain-name-servers", "data": "192.0.2.53"}},
                    {{"name": "domain-name", "data": "lab.example"}}, {{"name": "ntp-servers", "data": "192.0.2.123"}}]}}],
  "loggers": [{{"name": "kea-dhcp4", "output_options": [{{"output": "{}"}}], "severity": "DEBUG", "debuglevel": 50}}]
}}}}"#,
        log.display()
    );
    std::fs::write(&config, text).unwrap();
    let mut c = ns.command(&unpacked("kea-dhcp4-server", "kea-dhcp4"));
    c.arg("-c").arg(&config).env("KEA_PIDFILE_DIR", dir).env("KEA_LOCKFILE_DIR", dir).stdout(Stdio::null()).stderr(Stdio::null());
    (Proc(c.spawn().expect("start kea-dhcp4")), log)
}

/// ISC dhcpd, still the site server of many networks, the same way.
fn isc_dhcpd(ns: &Netns, interface: &str, dir: &Path) -> (Proc, PathBuf) {
    let log = dir.join("dhcpd.log");
    let (config, leases) = (dir.join("dhcpd.conf"), dir.join("dhcpd.leases"));
    let (first, last) = SITE_RANGE;
    let text = format!(
        "default-lease-time 3600;\nmax-lease-time 3600;\nauthoritative;\n\
         subnet 10.99.0.0 netmask 255.255.255.0 {{\n  range {first} {last};\n  option routers 10.99.0.254;\n\
         option domain-name-servers 192.0.2.53;\n  option domain-name \"lab.example\";\n  option ntp-servers 192.0.2.123;\n}}\n"
    );
    std::fs::write(&config, text).unwrap();
    std::fs::write(&leases, "").unwrap();
    let mut c = ns.command(&unpacked("isc-dhcp-server", "dhcpd"));
    c.args(["-f", "-d", "-4", "-cf"]).arg(&config).arg("-lf").arg(&leases).arg("-pf").arg(dir.join("dhcpd.pid")).arg(interface);
    c.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    (Proc(c.spawn().expect("start dhcpd")), log)
}

/// pxeroot in proxy mode beside `site` as the site's server: iPXE takes
/// its address from the site's server and its script from pxeroot; the
/// site's server sends only the options asked for, so the NTP server
/// reaches the root through pxeroot-init's DHCPINFORM, which it answers.
fn proxy_boot_beside(tag: &str, site: fn(&Netns, &str, &Path) -> (Proc, PathBuf)) {
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    boot_dir(d.path());
    let (lan, srv) = lan_and_server(tag);
    let (_server, log_path) = serve(d.path(), &srv, &img, "", PROXY_DHCP, &the_client());
    let (_site, site_log) = site(&lan, "br0", d.path());
    let Booted { lines, exited, .. } = Client::new(&lan).network().beside(&log_path).run(|l| l.contains("FATAL"));
    let console = lines.join("\n");
    let server_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let site = std::fs::read_to_string(&site_log).unwrap_or_default();
    assert!(
        console.contains("PXEROOT-MARKER-DONE") && exited,
        "no boot:\n{console}\n--- pxeroot log:\n{server_log}\n--- site log:\n{site}"
    );
    // The address is from the site server's range, the boot pxeroot's.
    let leased = console.split("net0: ").skip(1).find_map(|r| r.split('/').next()?.parse::<std::net::Ipv4Addr>().ok());
    let range = SITE_RANGE.0.parse::<std::net::Ipv4Addr>().unwrap()..=SITE_RANGE.1.parse().unwrap();
    assert!(leased.is_some_and(|a| range.contains(&a)), "not an address of the site's range:\n{console}");
    assert!(server_log.contains("reply=Offer") && server_log.contains("boot script requested"), "{server_log}");
    assert!(console.contains("eth0: DNS 192.0.2.53, domain lab.example (for the root)"), "{console}");
    assert!(console.contains("eth0: NTP 192.0.2.123 (for the root)"), "the answer to the INFORM:\n{console}\n--- site log:\n{site}");
    assert!(site.contains("DHCPINFORM"), "{site}");
}

#[test]
fn test_pxe_boot_proxy_beside_kea_and_its_ntp_server_by_inform() {
    proxy_boot_beside("kea", kea_dhcp4);
}

#[test]
fn test_pxe_boot_proxy_beside_isc_dhcpd_and_its_ntp_server_by_inform() {
    proxy_boot_beside("iscd", isc_dhcpd);
}

/// A diskless client outlives its DHCP lease only if something renews it:
/// the site's dnsmasq (T1 of 12 s, the shortest lease it grants, 2 min)
/// sees pxeroot-init's keeper renew the address iPXE got, unicast, while
/// the root runs; the boot says when it will. The segment's MTU (option
/// 26) reaches the kernel the same way.
#[test]
fn test_the_dhcp_lease_is_renewed_while_the_root_runs() {
    require("dnsmasq");
    let d = tempfile::tempdir().unwrap();
    let img = root_image_with(d.path(), TICK_INIT);
    boot_dir(d.path());
    let (lan, srv) = lan_and_server("lease");
    let (_server, log_path) = serve(d.path(), &srv, &img, "", PROXY_DHCP, &the_client());
    let more = ["--dhcp-option=option:T1,12", "--dhcp-option=option:mtu,1400"];
    let (_dnsmasq, dnsmasq_log) = logged_dnsmasq(&lan, "br0", d.path(), "2m", &more);
    let acks = || dnsmasq_acks(&dnsmasq_log, "br0").len();
    let t = Instant::now();
    let Booted { lines, .. } = Client::new(&lan)
        .network()
        .beside(&log_path)
        .run(|l| l.contains("FATAL") || l.contains("pxeroot-dhcp:") || acks() >= 2 || t.elapsed() > Duration::from_secs(90));
    let console = lines.join("\n");
    let log = std::fs::read_to_string(&dnsmasq_log).unwrap_or_default();
    let server_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(console.contains("PXEROOT-MARKER root init running"), "no boot:\n{console}\n--- pxeroot log:\n{server_log}");
    let said = lines.iter().find(|l| l.contains("DHCP lease of 10.99.0.")).unwrap_or_else(|| panic!("no lease line:\n{console}"));
    assert!(said.contains("from 10.99.0.254: 120 s; @pxeroot-dhcp renews it 12 s after boot"), "{said}");
    assert!(console.contains("eth0: MTU 1400 (pxeroot.mtu)"), "{console}");
    assert_eq!(acks(), 2, "iPXE's ACK, then the keeper's renewal:\n{log}\n--- console:\n{console}");
    assert!(!console.contains("pxeroot-dhcp:"), "the keeper complained:\n{console}");
    // The renewal came from the address, not from a new DISCOVER.
    let discovers = log.lines().filter(|l| l.contains("DHCPDISCOVER(br0)") && l.contains(MAC)).count();
    assert_eq!(discovers, 1, "{log}");
    let renew = log.lines().filter(|l| l.contains("DHCPREQUEST(br0)") && l.contains(MAC)).nth(1).unwrap_or_default();
    assert!(renew.contains("10.99.0."), "{log}");
    // Beside them, the DHCPINFORM for what iPXE did not ask (not counted
    // above: it leases nothing).
    assert!(log.lines().any(|l| l.contains("DHCPINFORM(br0) 10.99.0.") && l.contains(MAC)), "{log}");
}

/// The keeper's failure said where an operator looks: the client's
/// reserved address moves to another machine (a reload) while it runs, so
/// pxeroot (full mode, 60 s leases) NAKs its renewal; the console says
/// so, with the fix, and the root goes on.
#[test]
fn test_a_refused_renewal_is_said_with_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let img = root_image_with(d.path(), TICK_INIT);
    boot_dir(d.path());
    let (lan, srv) = lan_and_server("nak");
    let dhcp = "mode = \"full\"\nipv6_router_advertisements = true\npool_start = \"10.99.0.100\"\npool_end = \"10.99.0.110\"\n\
                lease_seconds = 60\n";
    let mine = format!("[clients.\"{MAC}\"]\nimage = \"root\"\naddress = \"10.99.0.42\"\n");
    let (server, log_path) = serve(d.path(), &srv, &img, "", dhcp, &mine);
    let cfg = d.path().join("pxeroot.toml");
    let (mut moved, mut refused) = (false, false);
    let t = Instant::now();
    let Booted { lines, .. } = Client::new(&lan).network().beside(&log_path).run(|l| {
        if l.contains("PXEROOT-MARKER root init running") && !moved {
            // Give 10.99.0.42 to another machine; this one gets .43 next time.
            let text = std::fs::read_to_string(&cfg).unwrap().replace(
                &mine,
                &format!(
                    "{}[clients.\"52:54:00:00:00:99\"]\nimage = \"root\"\naddress = \"10.99.0.42\"\n",
                    mine.replace("10.99.0.42", "10.99.0.43")
                ),
            );
            std::fs::write(&cfg, text).unwrap();
            nix::sys::signal::kill(server.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
            moved = true;
        }
        // Up to the root's next line after the keeper's.
        let ticked = refused && l.contains("tick");
        refused |= l.contains("pxeroot-dhcp:");
        l.contains("FATAL") || ticked || t.elapsed() > Duration::from_secs(90)
    });
    let console = lines.join("\n");
    let server_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(moved, "no boot:\n{console}\n--- pxeroot log:\n{server_log}");
    assert!(server_log.contains("configuration reloaded"), "{server_log}");
    let said = lines.iter().find(|l| l.contains("pxeroot-dhcp:")).unwrap_or_else(|| panic!("the keeper said nothing:\n{console}"));
    assert!(
        said.contains("10.99.0.1 refused (NAK) to extend the lease of 10.99.0.42")
            && said.contains(&format!("reserve 10.99.0.42 for {MAC} on the DHCP server"))
            && said.contains("the lease ends in "),
        "{said}"
    );
    assert!(lines.last().is_some_and(|l| l.contains("tick")), "the root stopped:\n{console}");
}

/// One PXE boot of the client behind the router of `routed_site` (with the
/// site's DHCP server or without), pxeroot serving with `dhcp` as its
/// `[dhcp]` table. Returns the console, whether the guest powered off, and
/// pxeroot's log; the site and the server are gone when it returns.
fn relayed_boot(dir: &Path, tag: &str, with_site_dhcp: bool, dhcp: &str) -> (String, bool, String) {
    require("dnsmasq");
    let img = root_image(dir);
    boot_dir(dir);
    let net = routed_site(tag, dir, with_site_dhcp);
    let (server, log_path) = serve(dir, &net.server, &img, "", dhcp, &the_client());
    let Booted { lines, exited, .. } =
        Client::new(&net.router).network().beside(&log_path).run(|l| l.contains("FATAL") || l.contains("No bootable device"));
    drop(server);
    let console = lines.join("\n");
    eprintln!("{console}");
    (console, exited, std::fs::read_to_string(&log_path).unwrap_or_default())
}

/// A routed site: the client's segment is behind a router that relays
/// DHCP (dnsmasq as the relay agent, `ip helper-address` style) to the
/// site's DHCP server and to pxeroot in proxy mode, each on a segment of
/// its own. QEMU's iPXE gets its address from the site's server and its
/// boot file from pxeroot's relayed proxy offer, then fetches the script,
/// kernel and initramfs and attaches its root across the router.
#[test]
fn test_pxe_boot_through_a_dhcp_relay_and_a_router() {
    let d = tempfile::tempdir().unwrap();
    let (console, exited, server_log) = relayed_boot(d.path(), "relay", true, "mode = \"proxy\"\n");
    let site_log = std::fs::read_to_string(d.path().join("site-dnsmasq.log")).unwrap_or_default();
    assert!(
        console.contains("PXEROOT-MARKER-DONE") && exited,
        "no boot:\n{console}\n--- pxeroot log:\n{server_log}\n--- site DHCP log:\n{site_log}"
    );
    // The address came from the site's server, through the relay, on the
    // client's own subnet, and pxeroot-init routed to the boot server.
    assert!(site_log.contains("DHCPACK(vsite0) 10.98.0."), "{site_log}");
    assert!(console.contains(&format!("gateway Some({ROUTED_GATEWAY})")), "{console}");
    // pxeroot answered the relayed DISCOVER (its reply went back to the
    // relay's giaddr) and served the boot.
    assert!(server_log.contains(&format!("relay=Some({ROUTED_GATEWAY})")), "{server_log}");
    for event in ["new boot", "NBD session opened", "client sent DISC"] {
        assert!(server_log.contains(event), "no {event:?} in the server log:\n{server_log}");
    }
    // pxeroot-init's DHCPINFORM went to the site's server through the
    // router, and was answered.
    assert!(site_log.contains("DHCPINFORM(vsite0) 10.98.0."), "{site_log}");
    assert!(!console.contains("no answer to DHCPINFORM"), "{console}");
    let marker = overlay_marker(d.path(), &d.path().join("state").join(format!("{STEM}.qcow2")));
    assert!(marker.contains("written by the diskless client"), "{marker}");
}

/// Full mode behind a relay: pxeroot is the only DHCP server, on another
/// subnet; its pool is the client segment's, so it answers the relayed
/// requests with an address there and the segment's router.
#[test]
fn test_full_mode_serves_a_routed_segment_through_a_relay() {
    let d = tempfile::tempdir().unwrap();
    // The first pool is pxeroot's own segment; the client's segment, behind
    // the relay, has a pool of its own.
    let dhcp = format!(
        "mode = \"full\"\npool_start = \"10.99.0.100\"\npool_end = \"10.99.0.110\"\n\
         [[dhcp.pools]]\nstart = \"10.98.0.100\"\nend = \"10.98.0.110\"\nnetmask = \"255.255.255.0\"\nrouter = \"{ROUTED_GATEWAY}\"\n"
    );
    let (console, exited, server_log) = relayed_boot(d.path(), "frelay", false, &dhcp);
    assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "no boot:\n{console}\n--- pxeroot log:\n{server_log}");
    assert!(console.contains("net0: 10.98.0.100/255.255.255.0 gw 10.98.0.1"), "{console}");
    assert!(server_log.contains(&format!("relay=Some({ROUTED_GATEWAY})")) && server_log.contains("reply=Ack"), "{server_log}");
    // The DHCPINFORM came routed, not relayed: the pool on its address's
    // subnet answered it.
    assert!(server_log.contains("request=Inform relay=None reply=Ack"), "{server_log}");
    assert!(!console.contains("no answer to DHCPINFORM"), "{console}");
}

/// A boot file that is not there yet (a kernel being installed, a server
/// restarting): iPXE's script says so, retries every few seconds, and the
/// client boots once the file is there, instead of falling through to "no
/// bootable device" for good. pxeroot named the missing file at start.
#[test]
fn test_the_boot_script_retries_a_boot_file_until_it_is_there() {
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    let boot = boot_dir(d.path());
    let initrd = d.path().join("initrd.later");
    std::fs::rename(boot.join("initrd.img"), &initrd).unwrap();
    let (lan, srv) = lan_and_server("retry");
    let (_server, log_path) = start_full_mode(d.path(), &srv, &img, &the_client());
    let mut retries = 0;
    let Booted { lines, exited, .. } = Client::new(&lan).network().beside(&log_path).run(|l| {
        if l.contains("pxeroot: fetching the boot files failed: retrying in 5 s") {
            retries += 1;
            if retries == 2 {
                std::fs::rename(&initrd, boot.join("initrd.img")).unwrap();
            }
        }
        l.contains("FATAL") || l.contains("No bootable device")
    });
    let console = lines.join("\n");
    let server_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        console.contains("PXEROOT-MARKER-DONE") && exited,
        "no boot after the file appeared:\n{console}\n--- pxeroot log:\n{server_log}"
    );
    assert_eq!(retries, 2, "{console}");
    // iPXE waited between the tries: it does not hammer the server.
    let tries: Vec<f64> = lines
        .iter()
        .filter(|l| l.contains("pxeroot: fetching the boot files failed"))
        .filter_map(|l| l[1..7].trim().parse().ok())
        .collect();
    assert!(tries.len() == 2 && tries[1] - tries[0] >= 4.5, "tries at {tries:?}:\n{console}");
    assert!(server_log.contains("images.root.initrd: initrd.img is not in"), "{server_log}");
}

#[test]
fn test_pxe_boot_full_dhcp_mode_without_another_server() {
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    // An LZ4 initramfs (`--compress lz4`), which iPXE pads with zeros.
    boot_dir_compressed(d.path(), "lz4");
    let (lan, srv) = lan_and_server("full");
    // A segment of MTU 1400 (option 26).
    let clients = format!("[clients.\"{MAC}\"]\nimage = \"root\"\naddress = \"10.99.0.42\"\nhostname = \"lab-42\"\n");
    let (_server, log_path) = start_full_mode_with(
        d.path(),
        &srv,
        &img,
        &clients,
        "mtu = 1400\ndns = [\"192.0.2.53\"]\ndomain = \"lab.example\"\nsearch = [\"eng.lab.example\", \"lab.example\"]\n\
         ntp = [\"192.0.2.123\"]\n",
    );
    let Booted { lines, exited, .. } = Client::new(&lan).network().beside(&log_path).run(|l| l.contains("FATAL"));
    let console = lines.join("\n");
    let server_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "no boot:\n{console}\n--- pxeroot log:\n{server_log}");
    assert!(!console.contains("Initramfs unpacking failed"), "{console}");
    // The reservation was honoured, and the lease is on disk for a restart.
    assert!(console.contains("net0: 10.99.0.42/255.255.255.0"), "{console}");
    assert!(console.contains("pxeroot-init") && console.contains("10.99.0.42"), "{console}");
    // The pool's MTU went through iPXE and the script to the kernel.
    assert!(console.contains("eth0: MTU 1400 (pxeroot.mtu)"), "{console}");
    // So did its DNS server, domain, search list and NTP server (options
    // 6, 15, 119 and 42) and the client's name (option 12).
    assert!(console.contains("eth0: DNS 192.0.2.53, domain lab.example, search eng.lab.example lab.example (for the root)"), "{console}");
    assert!(console.contains("eth0: NTP 192.0.2.123 (for the root)"), "{console}");
    assert!(console.contains("] hostname lab-42"), "{console}");
    let leases = std::fs::read_to_string(d.path().join("state/dhcp-leases.txt")).unwrap_or_default();
    assert!(leases.contains(&format!("10.99.0.42 {MAC}")) && leases.contains("bound"), "{leases}");
}

/// PXE-boot the same MAC twice with `policy`; returns both consoles. The
/// second boot uses an e1000 NIC (its iPXE ROM and Linux driver).
fn boot_twice(tag: &str, policy: &str) -> (String, String) {
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    boot_dir(d.path());
    let (lan, srv) = lan_and_server(tag);
    let (_server, log_path) =
        start_full_mode(d.path(), &srv, &img, &format!("[clients.\"{MAC}\"]\nimage = \"root\"\npolicy = \"{policy}\"\n"));
    let mut consoles = Vec::new();
    for nic in ["virtio-net-pci", "e1000"] {
        let Booted { lines, exited, .. } = Client::new(&lan).network().nic(nic).beside(&log_path).run(|l| l.contains("FATAL"));
        let console = lines.join("\n");
        assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "{policy} boot with {nic} failed:\n{console}");
        consoles.push(console);
    }
    (consoles.remove(0), consoles.remove(0))
}

/// e1000e, the Intel NIC of many real desktops and QEMU's q35 default:
/// its iPXE ROM boots the client, and pxeroot-init loads the e1000e group
/// (with its hard dependencies) by the device's modalias, no other NIC's.
#[test]
fn test_pxe_boot_with_an_e1000e_nic() {
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    boot_dir(d.path());
    let (lan, srv) = lan_and_server("e1ke");
    let (_server, log_path) = start_full_mode(d.path(), &srv, &img, &the_client());
    let Booted { lines, exited, .. } = Client::new(&lan).network().nic("e1000e").beside(&log_path).run(|l| l.contains("FATAL"));
    let console = lines.join("\n");
    let server_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "no boot:\n{console}\n--- pxeroot log:\n{server_log}");
    eprintln!("{console}");
    assert!(console.contains("using 82574l"), "not iPXE's e1000e ROM:\n{console}");
    // Its link negotiation is slow enough to be said.
    assert!(console.contains("eth0: link up after"), "{console}");
    assert!(console.contains("driver groups without a device skipped") && !console.contains("loaded the"), "{console}");
    // The pool names no NTP server: pxeroot-init asked pxeroot for one
    // with a DHCPINFORM from its address, and pxeroot answered at once.
    assert!(server_log.contains("request=Inform relay=None reply=Ack address=0.0.0.0"), "{server_log}");
    assert!(!console.contains("no answer to DHCPINFORM"), "{console}");
}

#[test]
fn test_second_boot_persistent_keeps_the_file_ephemeral_does_not() {
    let (first, second) = boot_twice("pers", "persistent");
    assert!(!first.contains("PXEROOT-FOUND-MARKER"), "{first}");
    assert!(
        second.contains("PXEROOT-FOUND-MARKER from an earlier boot: written by the diskless client"),
        "persistent overlay lost its file:\n{second}"
    );
    let (_, second) = boot_twice("ephm", "ephemeral");
    assert!(!second.contains("PXEROOT-FOUND-MARKER"), "ephemeral overlay kept its file across a new boot:\n{second}");
}

/// Writes the client's own MAC into /marker, then disconnects and powers off.
const WHO_INIT: &str = "#!/bin/busybox sh\n\
    me=$(/bin/busybox cat /sys/class/net/eth0/address)\n\
    echo \"written by $me\" > /marker\n\
    /bin/busybox sync\n\
    echo PXEROOT-MARKER-DONE\n\
    /bin/busybox mount -o remount,ro /\n\
    /sbin/pxeroot-disconnect poweroff\n";

#[test]
fn test_three_clients_at_once_each_sees_only_its_own_writes() {
    let d = tempfile::tempdir().unwrap();
    let img = root_image_with(d.path(), WHO_INIT);
    let before = sha256(&img);
    boot_dir(d.path());
    let (lan, srv) = lan_and_server("three");
    let macs = ["52:54:00:b0:03:01", "52:54:00:b0:03:02", "52:54:00:b0:03:03"];
    for tap in ["tap1", "tap2"] {
        lan.exec(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
        lan.exec(&["ip", "link", "set", tap, "master", "br0"]);
        lan.exec(&["ip", "link", "set", tap, "up"]);
    }
    let (server, log_path) =
        start_full_mode(d.path(), &srv, &img, "[unknown_clients]\naction = \"boot\"\nimage = \"root\"\npolicy = \"persistent\"\n");
    let t = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = macs
            .iter()
            .zip(["tap0", "tap1", "tap2"])
            .map(|(mac, tap)| {
                let (lan, log_path) = (&lan, &log_path);
                scope.spawn(move || {
                    Client::new(lan).network().nic("virtio-net-pci").mac(mac).tap(tap).beside(log_path).run(|l| l.contains("FATAL"))
                })
            })
            .collect();
        for (h, mac) in handles.into_iter().zip(macs) {
            let Booted { lines, exited, .. } = h.join().expect("qemu thread");
            let console = lines.join("\n");
            assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "{mac} did not boot:\n{console}");
        }
    });
    eprintln!("three clients at once: all powered off after {:.1} s", t.elapsed().as_secs_f64());
    drop(server);
    for mac in macs {
        let marker = overlay_marker(d.path(), &d.path().join("state").join(format!("{}.qcow2", mac.replace(':', "-"))));
        assert!(marker.contains(&format!("written by {mac}")), "{mac}'s overlay holds {marker:?}");
    }
    assert_eq!(sha256(&img), before, "the base image changed");
}
