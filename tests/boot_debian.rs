//! Debian roots (images/build-debian-root: debootstrap, systemd) booted from
//! pxeroot: systemd-networkd, ifupdown and NetworkManager roots keep the
//! boot NIC, shut down cleanly (DISC after the read-only remount) and
//! boot again.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::boot::*;
use common::netns::{Netns, SERVER_IP};
use common::qemu::{Booted, Client};
use common::*;

/// A real distribution as the base: a Debian root from
/// images/build-debian-root (debootstrap, systemd, the guest kernel's
/// modules) boots from pxeroot to multi-user, writes a file and powers off; systemd's shutdown remounts
/// the root read-only and its system-shutdown hook sends DISC, so the
/// overlay holds a clean filesystem. The same MAC boots it again and finds
/// the file.
///
/// The root runs systemd-networkd with a stock `.network` (DHCP on every
/// `en*`/`eth*` interface, KeepConfiguration left at its default), which
/// without pxeroot-init's files in /run renames nothing (the NIC is up)
/// but waits for the rename 2 minutes, or, with the rename out of the way,
/// drops the address and hangs the root. Here the NIC keeps its name and
/// address, networkd configures it from pxeroot-init's file: the first
/// boot with a static address, the second with pxeroot-init's DHCP, whose
/// lease networkd takes over from the same server.
#[test]
fn test_debian_systemd_root_boots_shuts_down_cleanly_and_boots_again() {
    require("debootstrap");
    let d = tempfile::tempdir().unwrap();
    let networkd = format!("systemctl enable systemd-networkd && printf '{STOCK_NETWORK}' > /etc/systemd/network/50-stock.network");
    // resolv.conf from the boot's DNS servers (docs/roots.md, "DNS").
    let resolv = "ln -sf ../run/pxeroot/resolv.conf /etc/resolv.conf";
    let img = debian_root(d.path(), &["echo pxeroot-test > /etc/pxeroot-run-test", &networkd, resolv]);
    // --run ran in the tree.
    assert_eq!(stdout(Command::new("debugfs").args(["-R", "cat /etc/pxeroot-run-test"]).arg(&img)).trim(), "pxeroot-test");
    let base_sum = sha256(&img);
    let initrd = initramfs(d.path());
    let ns = Netns::new("deb");
    let state = d.path().join("state");
    let log_path = d.path().join("pxeroot.log");
    let server = start_server(&ns, &img, &state, &log_path);
    let boot_once = |cmd: &str| {
        let console = boot_debian(&ns, &initrd, cmd, &log_path);
        // networkd configured the boot NIC from pxeroot-init's file, before
        // network-online.target.
        let netif =
            "PXEROOT-NETIF /run/systemd/netif/links/2 ADMIN_STATE=configured NETWORK_FILE=/run/systemd/network/00-pxeroot-boot-nic.network";
        assert!(console.contains(netif), "networkd did not configure eth0 from pxeroot-init's file:\n{console}");
        console
    };
    // ip='s DNS0 field: networkd gets it for the link (no DHCP to bring one).
    let first = boot_once(&cmdline(SERVER_IP, MAC, "netlink").replace(":::off ", ":::off:192.0.2.53 "));
    assert!(!first.contains("PXEROOT-NETIF /run/systemd/netif/leases/"), "a static address got a DHCP lease:\n{first}");
    assert!(first.contains("NETWORK_FILE=/run/systemd/network/00-pxeroot-boot-nic.network DNS=192.0.2.53"), "{first}");
    assert!(first.contains("PXEROOT-RESOLV nameserver 192.0.2.53"), "/run/pxeroot/resolv.conf:\n{first}");
    assert!(!first.contains("PXEROOT-FOUND-MARKER"), "a fresh overlay already had /marker:\n{first}");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains("client sent DISC"), "systemd's shutdown hook did not send DISC:\n{log}");
    assert_eq!(clean_ext4_marker(d.path(), &state.join(format!("{STEM}.qcow2"))), "written by systemd");
    // Netlink again: an ioctl-attached root does not survive systemd's
    // shutdown (docs/roots.md), which this test showed. No ip=: pxeroot-init
    // asks the segment's DHCP server for the address.
    let (dnsmasq, dnsmasq_log) = logged_dnsmasq(&ns, "tap0", d.path(), "1h", &[]);
    let second = boot_once(&dhcp_cmdline());
    drop(dnsmasq);
    assert!(second.contains("PXEROOT-FOUND-MARKER written by systemd"), "the second boot lost /marker:\n{second}");
    // networkd holds the lease pxeroot-init got, from the same server.
    let address = leased_address(&second);
    assert!(second.contains(&format!("PXEROOT-NETIF /run/systemd/netif/leases/2 ADDRESS={address}")), "{second}");
    let acks = dnsmasq_acks(&dnsmasq_log, "tap0").iter().filter(|l| l.contains(&format!(" {address} "))).count();
    assert!(acks >= 2, "no ACK for networkd after pxeroot-init's ({acks}):\n{}", std::fs::read_to_string(&dnsmasq_log).unwrap_or_default());
    drop(server);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(log.matches("client sent DISC").count(), 2, "the second boot's shutdown sent no DISC:\n{log}");
    assert_eq!(sha256(&img), base_sum, "the base image changed");
}

/// A Debian root with ifupdown and isc-dhcp-client bringing the boot NIC
/// up (`allow-hotplug eth0`, `iface eth0 inet dhcp`), as a Debian server
/// install has it. dhclient gets a lease of its own; at shutdown, without pxeroot-init's drop-ins, `ifdown` released
/// it and flushed the address before systemd remounted the root read-only,
/// and the shutdown hung on the root's I/O (by hand: the NBD monitor found
/// the network unreachable for 5 minutes). Here the NIC stays up: DISC,
/// power off, a clean filesystem.
#[test]
fn test_debian_ifupdown_root_keeps_the_boot_nic_through_shutdown() {
    require("debootstrap");
    let d = tempfile::tempdir().unwrap();
    let interfaces =
        "printf 'auto lo\\niface lo inet loopback\\n\\nallow-hotplug eth0\\niface eth0 inet dhcp\\n' > /etc/network/interfaces";
    let img = debian_root_with(d.path(), "ifupdown,isc-dhcp-client", &[interfaces]);
    let initrd = initramfs(d.path());
    let ns = Netns::new("ifup");
    let state = d.path().join("state");
    let log_path = d.path().join("pxeroot.log");
    let server = start_server(&ns, &img, &state, &log_path);
    let (dnsmasq, dnsmasq_log) = logged_dnsmasq(&ns, "tap0", d.path(), "1h", &[]);
    let console = boot_debian(&ns, &initrd, &dhcp_cmdline(), &log_path);
    drop(dnsmasq);
    // pxeroot-init's DHCP, then dhclient's. dhclient sends no client
    // identifier, so dnsmasq takes it for another client and leases it a
    // second address (docs/roots.md); the root stays on the first.
    let address = leased_address(&console);
    let acks = dnsmasq_acks(&dnsmasq_log, "tap0");
    assert!(acks.len() >= 2 && acks[0].contains(&format!(" {address} ")), "no ACK for dhclient after pxeroot-init's:\n{acks:?}");
    drop(server);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains("client sent DISC"), "the shutdown sent no DISC (the NIC went down first?):\n{log}");
    assert_eq!(clean_ext4_marker(d.path(), &state.join(format!("{STEM}.qcow2"))), "written by systemd");
}

/// A Debian root with NetworkManager, as a desktop or thin client has it.
/// On its own, NetworkManager 1.42 takes the boot NIC's configuration as
/// external and leaves it, but a user's "disconnect" then flushes the
/// address and the root is cut off; and it brings no DNS servers for a
/// NIC it did not configure (both seen in QEMU). pxeroot-init's drop-in
/// leaves the NIC unmanaged (the disconnect is refused, the root reads on)
/// and gives NetworkManager the DNS servers and domain of pxeroot-init's
/// lease as its global DNS, which it writes to resolv.conf.
#[test]
fn test_debian_networkmanager_root_cannot_drop_the_boot_nic_and_resolves_with_the_boots_dns() {
    require("debootstrap");
    let d = tempfile::tempdir().unwrap();
    let network_manager = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                           network-manager systemd-timesyncd >/dev/null";
    // A unit that disconnects the boot NIC as a user would, then reads the
    // root with its page cache dropped; the kernel's log carries the outcome.
    let disconnect = r#"cat > /usr/local/sbin/pxeroot-nm-disconnect <<'END'
#!/bin/sh
out=$(nmcli device disconnect eth0 2>&1 | tr '\n' ' ')
echo "<3>PXEROOT-NM-DISCONNECT $out" > /dev/kmsg
sleep 2
echo 3 > /proc/sys/vm/drop_caches
if timeout 60 md5sum /usr/sbin/NetworkManager > /dev/null; then r=ok; else r=failed; fi
echo "<3>PXEROOT-NM-READ $r" > /dev/kmsg
END
chmod 755 /usr/local/sbin/pxeroot-nm-disconnect
cat > /etc/systemd/system/pxeroot-nm-disconnect.service <<'END'
[Unit]
After=NetworkManager.service NetworkManager-wait-online.service
Before=pxeroot-marker.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pxeroot-nm-disconnect
[Install]
WantedBy=multi-user.target
END
systemctl enable pxeroot-nm-disconnect.service"#;
    let img = debian_root(d.path(), &[network_manager, disconnect]);
    let initrd = initramfs(d.path());
    let ns = Netns::new("nm");
    let state = d.path().join("state");
    let log_path = d.path().join("pxeroot.log");
    let server = start_server(&ns, &img, &state, &log_path);
    let dns = site_dns_options();
    let (dnsmasq, _) = logged_dnsmasq(&ns, "tap0", d.path(), "1h", &dns.iter().map(String::as_str).collect::<Vec<_>>());
    let console = boot_debian(&ns, &initrd, &dhcp_cmdline(), &log_path);
    drop(dnsmasq);
    // pxeroot-init's own DHCP took options 6, 15 and 119 from dnsmasq.
    assert!(
        console.contains("eth0: DNS 192.0.2.53 192.0.2.54, domain lab.example, search lab.example corp.example (for the root)"),
        "{console}"
    );
    assert!(console.contains("PXEROOT-NM eth0:ethernet:unmanaged:"), "NetworkManager manages the boot NIC:\n{console}");
    let disconnect = console.lines().find(|l| l.contains("PXEROOT-NM-DISCONNECT")).unwrap_or_default();
    assert!(disconnect.contains("not active") || disconnect.contains("not managed"), "{console}");
    assert!(console.contains("PXEROOT-NM-READ ok"), "the root stopped answering after the disconnect:\n{console}");
    // The base has no static hostname: systemd kept the DHCP name
    // pxeroot-init set.
    assert!(console.contains("PXEROOT-HOSTNAME lab-07"), "{console}");
    // systemd-timesyncd took the lease's NTP server from pxeroot-init's
    // drop-in (nothing else tells it: NetworkManager runs no DHCP here).
    assert!(console.contains("PXEROOT-NTP 192.0.2.123"), "{console}");
    for line in
        ["PXEROOT-RESOLV search lab.example corp.example", "PXEROOT-RESOLV nameserver 192.0.2.53", "PXEROOT-RESOLV nameserver 192.0.2.54"]
    {
        assert!(console.contains(line), "no {line:?}: NetworkManager did not take the boot's DNS:\n{console}");
    }
    drop(server);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains("client sent DISC"), "the shutdown sent no DISC:\n{log}");
    assert_eq!(clean_ext4_marker(d.path(), &state.join(format!("{STEM}.qcow2"))), "written by systemd");
}

/// images/build-debian-root's root in `dir`, with images/debian-test's
/// units (they print markers and power off), the guest kernel's modules
/// and `runs` run in the tree.
fn debian_root(dir: &Path, runs: &[&str]) -> PathBuf {
    debian_root_with(dir, "", runs)
}

/// `debian_root` with more packages (`--include`, comma-separated).
fn debian_root_with(dir: &Path, include: &str, runs: &[&str]) -> PathBuf {
    let add = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/images/debian-test"));
    let img = dir.join("debian.img");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debootstrap-cache");
    let mut c = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/images/build-debian-root"));
    c.arg(&img).arg(init_binary()).args(["--size", "2G", "--add"]).arg(add).arg("--modules").arg(kernel_dir().join("modules"));
    if !include.is_empty() {
        c.args(["--include", include]);
    }
    for r in runs {
        c.args(["--run", r]);
    }
    run(c.arg("--cache-dir").arg(&cache));
    img
}

/// Boot a root from `debian_root` with `cmd` and check what every such boot
/// must show: systemd up, the marker, no failed unit, no I/O error, power
/// off, and the boot NIC handed over under the kernel's name. The console.
fn boot_debian(ns: &Netns, initrd: &Path, cmd: &str, log_path: &Path) -> String {
    let Booted { lines, exited, .. } = Client::new(ns).kernel(&kernel_dir().join("vmlinuz"), initrd, cmd).run(|l| l.contains("FATAL"));
    let console = lines.join("\n");
    eprintln!("{console}");
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(console.contains("PXEROOT-MARKER systemd started"), "systemd never started:\n{console}\n{log}");
    assert!(console.contains("PXEROOT-MARKER systemd root up") && console.contains("PXEROOT-MARKER-DONE"), "{console}");
    assert!(console.contains("reboot: Power down") && exited, "the guest did not power off:\n{console}");
    // systemd marks a failed unit "FAILED"; the root, its remount and
    // the shutdown must all have worked.
    assert!(!console.contains("FAILED") && !console.contains("Kernel panic"), "{console}");
    assert!(!console.contains("I/O error") && !console.contains("EXT4-fs error"), "{console}");
    // The root carries the kernel's modules (--modules): systemd finds
    // the ones it asks for.
    assert!(!console.contains("Failed to find module"), "{console}");
    assert!(
        console.contains(
            "hand eth0 to the root's udev, networkd, ifupdown and NetworkManager (/run/systemd/network/00-pxeroot-boot-nic.*): ok"
        ),
        "{console}"
    );
    // Not renamed (udev's rename of an up NIC fails and stalls networkd).
    assert!(console.contains("PXEROOT-NICS /sys/class/net/eth0 /sys/class/net/lo"), "{console}");
    console
}

/// The kernel command line for a DHCP boot: no `ip=`.
fn dhcp_cmdline() -> String {
    format!("console=ttyS0 panic=-1 loglevel=4 pxeroot.server={SERVER_IP} BOOTIF=01-{}", MAC.replace(':', "-"))
}

/// The address pxeroot-init's DHCP got, from its console line.
fn leased_address(console: &str) -> String {
    let found = console.split("DHCP on eth0: ").nth(1).and_then(|r| r.split(' ').next());
    found.unwrap_or_else(|| panic!("no DHCP:\n{console}")).to_string()
}

/// The overlay holds a clean ext4 (remounted read-only before the DISC, no
/// journal to replay, nothing for e2fsck to fix): its /marker.
fn clean_ext4_marker(dir: &Path, overlay: &Path) -> String {
    run(Command::new("qemu-img").args(["check", "-U"]).arg(overlay));
    let flat = Flat::of(dir, overlay);
    let marker = flat.cat("/marker");
    let flat = flat.0;
    let header = stdout(Command::new("dumpe2fs").arg("-h").arg(&flat));
    assert!(header.contains("Filesystem state:         clean") && !header.contains("needs_recovery"), "{header}");
    run(Command::new("e2fsck").args(["-fn"]).arg(&flat));
    marker.trim().to_string()
}

/// A distribution's stock systemd-networkd file (printf's text): DHCP on
/// every Ethernet interface, KeepConfiguration= at its default (no).
const STOCK_NETWORK: &str = "[Match]\\nName=en* eth*\\n\\n[Network]\\nDHCP=yes\\n";
