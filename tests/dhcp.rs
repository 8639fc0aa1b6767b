//! DHCP in network namespaces, with real firmware packets (the fixtures):
//! beside dnsmasq as the site's DHCP server, a PXE DISCOVER gets both
//! offers, and pxeroot's names the right file for BIOS, UEFI x64 and iPXE;
//! garbage does not disturb it. In full mode, two clients get different
//! addresses and a restarted daemon remembers the leases.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::netns::{client_on, dnsmasq_dhcp, lan_and_server, site_dnsmasq, Netns, SERVER_IP};
use common::*;

/// DHCP payloads sent to port 67 in a fixture.
fn fixture_discovers(name: &str) -> Vec<Vec<u8>> {
    common::pcap::fixture_payloads(name).into_iter().filter(|(port, _)| *port == 67).map(|(_, p)| p).collect()
}

/// Remove DHCP option `code` from a raw packet (to turn iPXE's DISCOVER into
/// a plain PXE ROM's).
fn strip_option(p: &[u8], code: u8) -> Vec<u8> {
    let mut out = p[..240].to_vec();
    let mut i = 240;
    while i < p.len() && p[i] != 255 {
        if p[i] == 0 {
            i += 1;
            continue;
        }
        let len = p[i + 1] as usize;
        if p[i] != code {
            out.extend_from_slice(&p[i..i + 2 + len]);
        }
        i += 2 + len;
    }
    out.push(255);
    out.resize(out.len().max(300), 0);
    out
}

fn with_mac(p: &[u8], last: u8) -> Vec<u8> {
    let mut p = p.to_vec();
    p[33] = last;
    p
}

#[derive(Debug)]
struct Reply {
    server: String,
    yiaddr: String,
    file: String,
    kind: u8,
    /// Option 12, empty when absent.
    hostname: String,
}

fn probe(ns: &Netns, dir: &Path, packet: &[u8], garbage: bool) -> Vec<Reply> {
    require("python3");
    // The probe's interface does not have the packet's MAC: ask for
    // broadcast replies, or a server unicasting to that MAC is never heard.
    let mut packet = packet.to_vec();
    packet[10] |= 0x80;
    let f = dir.join(format!("packet-{}", std::process::id()));
    std::fs::write(&f, &packet).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/dhcp_probe.py");
    let mut c = ns.command(Path::new("python3"));
    c.args([script, "vcli0"]).arg(&f).arg("3");
    if garbage {
        c.arg("garbage-first");
    }
    let out = stdout(&mut c);
    out.lines()
        .filter_map(|l| {
            let field = |k: &str| {
                l.split(&format!("\"{k}\": ")).nth(1).map(|r| r.split([',', '}']).next().unwrap_or("").trim().trim_matches('"').to_string())
            };
            Some(Reply {
                server: field("server")?,
                yiaddr: field("yiaddr")?,
                file: field("file")?,
                kind: field("type")?.parse().ok()?,
                hostname: field("hostname")?,
            })
        })
        .collect()
}

fn config(dir: &Path, dhcp: &str) -> PathBuf {
    make_raw_base(&dir.join("base.img"), 1 << 20, 1);
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let cfg = dir.join("pxeroot.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"state\"\n[nbd]\nlisten = [\"{SERVER_IP}:10809\"]\n[pxe]\nserver_address = \"{SERVER_IP}\"\nboot_dir = \"boot\"\n\
             [http]\nenabled = false\n[dhcp]\ninterface = \"vsrv0\"\n{dhcp}\n[images.root]\npath = \"base.img\"\n\
             [unknown_clients]\naction = \"boot\"\nimage = \"root\"\n"
        ),
    )
    .unwrap();
    cfg
}

/// `pxeroot serve` in `srv`, its log beside the config, ready once NBD listens.
fn start(srv: &Netns, cfg: &Path) -> Server {
    Server::in_netns(srv, &["serve".into(), "--config".into(), cfg.display().to_string()], SERVER_IP, 10809, &cfg.with_extension("log"))
}

#[test]
fn test_proxy_beside_dnsmasq_offers_the_right_file_per_firmware() {
    require("dnsmasq");
    let d = tempfile::tempdir().unwrap();
    let (lan, srv) = lan_and_server("dhcp");
    let cli = client_on(&lan, "dhcpc");
    let cfg = config(d.path(), "mode = \"proxy\"");
    // As many set it up: the distribution's file linked into the boot
    // directory. TFTP refuses it (it leads outside); the offer says so.
    std::os::unix::fs::symlink("/usr/lib/ipxe/ipxe.efi", d.path().join("boot/ipxe.efi")).unwrap();
    let _pxeroot = start(&srv, &cfg);
    let _dnsmasq = site_dnsmasq(&lan, d.path());
    std::thread::sleep(Duration::from_millis(300));
    let ipxe = fixture_discovers("bios-ipxe-rom.pcap").remove(0);
    let bios = strip_option(&strip_option(&ipxe, 77), 175);
    let uefi = fixture_discovers("ovmf-full-chain.pcap").remove(0);
    for (what, packet, file, garbage) in [
        ("iPXE ROM", with_mac(&ipxe, 0x11), "tftp://10.99.0.1/pxeroot/52-54-00-aa-00-11.ipxe", true),
        ("BIOS PXE", with_mac(&bios, 0x12), "undionly.kpxe", false),
        ("UEFI x64 PXE", uefi, "ipxe.efi", false),
    ] {
        let replies = probe(&cli, d.path(), &packet, garbage);
        let site =
            replies.iter().find(|r| r.server == "10.99.0.254").unwrap_or_else(|| panic!("{what}: no offer from dnsmasq: {replies:?}"));
        assert!(site.yiaddr.starts_with("10.99.0."), "{what}: {site:?}");
        let ours = replies.iter().find(|r| r.server == SERVER_IP).unwrap_or_else(|| panic!("{what}: no proxy offer: {replies:?}"));
        assert_eq!(ours.kind, 2, "{what}: not an OFFER");
        assert_eq!(ours.yiaddr, "0.0.0.0", "{what}: a proxy must not hand out addresses");
        assert_eq!(ours.file, file, "{what}");
    }
    // Each firmware file offered is named as missing (not there, or a link
    // out of the boot directory), with where it comes from; the iPXE
    // script is not a file.
    let log = std::fs::read_to_string(cfg.with_extension("log")).unwrap();
    let missing: Vec<&str> = log.lines().filter(|l| l.contains("offered a boot file that is not in the boot directory")).collect();
    assert_eq!(missing.len(), 2, "{log}");
    assert!(missing[0].contains("file=\"undionly.kpxe\"") && missing[0].contains("/usr/lib/ipxe/undionly.kpxe"), "{log}");
    assert!(missing[0].contains("not found"), "{log}");
    assert!(missing[1].contains("file=\"ipxe.efi\"") && missing[1].contains("leads outside the boot directory"), "{log}");
}

#[test]
fn test_full_mode_two_clients_and_leases_survive_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let (lan, srv) = lan_and_server("fdhcp");
    let cli = client_on(&lan, "fdhcpc");
    let cfg = config(d.path(), "mode = \"full\"\npool_start = \"10.99.0.100\"\npool_end = \"10.99.0.120\"\nrouter = \"10.99.0.254\"");
    let ipxe = fixture_discovers("bios-ipxe-rom.pcap").remove(0);
    let request = |p: &[u8], ip: &str| {
        // DISCOVER -> REQUEST for `ip` (option 53 = 3, option 50 appended).
        let mut r = strip_option(p, 255);
        r.truncate(r.iter().rposition(|&b| b == 255).unwrap_or(r.len()));
        let i = r[240..].windows(3).position(|w| w == [53, 1, 1]).expect("option 53") + 240;
        r[i + 2] = 3;
        r.extend_from_slice(&[50, 4]);
        r.extend(ip.split('.').map(|o| o.parse::<u8>().unwrap()));
        r.push(255);
        r.resize(r.len().max(300), 0);
        r
    };
    let server = start(&srv, &cfg);
    let mut got = Vec::new();
    for last in [0x21u8, 0x22] {
        let disc = with_mac(&ipxe, last);
        let offer = probe(&cli, d.path(), &disc, false).into_iter().find(|r| r.server == SERVER_IP).expect("offer");
        let ack = probe(&cli, d.path(), &request(&disc, &offer.yiaddr), false).into_iter().find(|r| r.server == SERVER_IP).expect("ack");
        assert_eq!(ack.kind, 5, "not an ACK: {ack:?}");
        got.push(ack.yiaddr);
    }
    assert_ne!(got[0], got[1], "two clients, one address");
    drop(server);
    let server = start(&srv, &cfg);
    let again =
        probe(&cli, d.path(), &with_mac(&ipxe, 0x21), false).into_iter().find(|r| r.server == SERVER_IP).expect("offer after restart");
    assert_eq!(again.yiaddr, got[0], "the lease was forgotten across a restart");
    let leases = std::fs::read_to_string(d.path().join("state/dhcp-leases.txt")).unwrap();
    assert!(leases.contains("52:54:00:aa:00:21") && leases.contains("52:54:00:aa:00:22"), "{leases}");

    assert!(again.hostname.is_empty(), "a client without a name got one: {again:?}");
    // A reservation and a name added to the file take effect at a reload
    // (SIGHUP).
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap()
            + "[clients.\"52:54:00:aa:00:23\"]\nimage = \"root\"\naddress = \"10.99.0.115\"\nhostname = \"lab-23\"\n",
    )
    .unwrap();
    nix::sys::signal::kill(server.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let log = cfg.with_extension("log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("configuration reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    let reserved =
        probe(&cli, d.path(), &with_mac(&ipxe, 0x23), false).into_iter().find(|r| r.server == SERVER_IP).expect("offer after reload");
    assert_eq!(reserved.yiaddr, "10.99.0.115", "the reservation did not apply at the reload");
    assert_eq!(reserved.hostname, "lab-23", "the client's name did not apply at the reload");
    assert!(!std::fs::read_to_string(&log).unwrap().contains("applied only at the next restart"));
}

/// pxeroot's proxy on the host of the site's DHCP server (dnsmasq on the
/// same interface): a server that holds port 67 alone stops pxeroot with
/// the fix; one that shares it (dnsmasq's bind-interfaces) leaves it to a
/// client to get both answers: dnsmasq's address and pxeroot's boot file.
#[test]
fn test_proxy_on_the_dhcp_servers_own_host() {
    require("dnsmasq");
    let d = tempfile::tempdir().unwrap();
    let (lan, srv) = lan_and_server("same");
    let cli = client_on(&lan, "samec");
    let cfg = config(d.path(), "mode = \"proxy\"");
    let site = |shares: bool| {
        let p = dnsmasq_dhcp(&srv, "vsrv0", d.path(), shares);
        std::thread::sleep(Duration::from_millis(300));
        p
    };

    let alone = site(false);
    let out = output_within(srv.command(&bin()).args(["serve", "--config"]).arg(&cfg).env("NO_COLOR", "1"), Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen for DHCP on UDP 67 on vsrv0: Address already in use"), "{err}");
    assert!(err.contains("dnsmasq does with bind-interfaces"), "{err}");
    drop(alone);

    let _site = site(true);
    let _pxeroot = start(&srv, &cfg);
    let ipxe = with_mac(&fixture_discovers("bios-ipxe-rom.pcap").remove(0), 0x21);
    let replies = probe(&cli, d.path(), &ipxe, false);
    assert!(replies.iter().any(|r| r.kind == 2 && r.yiaddr.starts_with("10.99.0.")), "no address from dnsmasq: {replies:?}");
    let ours = replies.iter().find(|r| r.yiaddr == "0.0.0.0").unwrap_or_else(|| panic!("no proxy offer: {replies:?}"));
    assert_eq!((ours.kind, ours.file.as_str()), (2, "tftp://10.99.0.1/pxeroot/52-54-00-aa-00-21.ipxe"));
}
