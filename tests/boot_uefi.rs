//! UEFI and ARM64 clients: OVMF's own PXE (in the offer, or via port
//! 4011), OVMF's HTTP boot (a boot entry's URI, or the URL from pxeroot's
//! offer), and AAVMF running the ARM64 boot file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::boot::*;
use common::netns::{lan_and_server, site_dnsmasq, Netns, Proc, SERVER_IP};
use common::qemu::{Booted, Client, Firmware, AAVMF_CODE, AAVMF_VARS, OVMF_CODE, OVMF_VARS};
use common::*;

/// A UEFI client's world: the test root, a boot directory with Debian's
/// ipxe.efi, pxeroot (in full mode, or with `proxy` as its `[dhcp]` keys
/// beside the site's dnsmasq), and `vars`, the variable store of OVMF (on
/// q35, `qemu::Firmware::Ovmf`). The NIC goes with `romfile=` (empty), so
/// OVMF's own network boot runs, not the NIC's iPXE ROM (boot-chain.md).
struct UefiWorld {
    // Fields drop in order: the daemons before their namespaces.
    _server: Server,
    _site: Option<Proc>,
    lan: Netns,
    _srv: Netns,
    log_path: PathBuf,
    /// OVMF's variable store for this client.
    vars: PathBuf,
}

fn uefi_setup(d: &Path, tag: &str, vars: &Path, proxy: Option<&str>) -> UefiWorld {
    let ipxe_efi = Path::new("/usr/lib/ipxe/ipxe.efi");
    for p in [Path::new(OVMF_CODE), Path::new(OVMF_VARS), ipxe_efi] {
        assert!(p.exists(), "{} missing: run tests/run-all (it installs ovmf and ipxe)", p.display());
    }
    let img = root_image(d);
    let boot = boot_dir(d);
    std::fs::copy(ipxe_efi, boot.join("ipxe.efi")).unwrap();
    let (lan, srv) = lan_and_server(tag);
    let ((server, log_path), site) = match proxy {
        None => (start_full_mode(d, &srv, &img, &the_client()), None),
        Some(dhcp) => (serve(d, &srv, &img, "", dhcp, &the_client()), Some(site_dnsmasq(&lan, d))),
    };
    UefiWorld { _server: server, _site: site, lan, _srv: srv, log_path, vars: vars.to_path_buf() }
}

/// OVMF's own PXE from a fresh variable store, to the root's marker.
/// OVMF under load has been seen to give up on an attempt that pxeroot
/// answered: "PXE-E21: Remote boot cancelled" (EDK2's EFI_ABORTED, as for a
/// keystroke) before any DHCP exchange, and "PXE-E16: No valid offer
/// received" a minute after one DISCOVER that pxeroot answered at once.
/// E16 is EDK2's EFI_NO_RESPONSE: its DHCP timed out although an offer was
/// received (with no server at all it says PXE-E18), and in between it
/// neither chose the offer nor sent its DISCOVER again. Seen once in CI and
/// once in about 50 runs beside three busy loops and a compile on two
/// cores. Such an attempt ends at once and is retried once: a pxeroot that
/// offers something OVMF rejects fails both, one that never answers ends
/// in PXE-E18.
fn uefi_pxe_boot(world: &UefiWorld, my_vars: &Path) -> (String, bool, String) {
    const GAVE_UP: [&str; 2] = ["PXE-E21", "PXE-E16"];
    let mut console = String::new();
    let mut exited = false;
    for _attempt in 0..2 {
        std::fs::copy(OVMF_VARS, my_vars).unwrap();
        let Booted { lines, exited: ex, .. } = Client::new(&world.lan)
            .firmware(Firmware::Ovmf { vars: world.vars.clone() })
            .nic("virtio-net-pci,romfile=")
            .beside(&world.log_path)
            .run(|l| l.contains("FATAL") || GAVE_UP.iter().any(|e| l.contains(e)));
        console = lines.join("\n");
        exited = ex;
        let Some(code) = GAVE_UP.iter().find(|e| console.contains(*e)) else { break };
        let log = std::fs::read_to_string(&world.log_path).unwrap_or_default();
        let answered = log.lines().filter(|l| l.contains("request=Discover") && l.contains("client answered")).count();
        eprintln!("OVMF gave up its PXE attempt ({code}; pxeroot has answered {answered} DISCOVERs so far); retrying once:\n{console}");
    }
    (console, exited, std::fs::read_to_string(&world.log_path).unwrap_or_default())
}

#[test]
fn test_uefi_client_native_pxe_loads_ipxe_efi_then_boots() {
    let d = tempfile::tempdir().unwrap();
    let my_vars = d.path().join("vars.fd");
    let world = uefi_setup(d.path(), "uefi", &my_vars, None);
    let (console, exited, server_log) = uefi_pxe_boot(&world, &my_vars);
    assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "UEFI boot failed:\n{console}\n--- pxeroot log:\n{server_log}");
    assert!(
        server_log.contains("offered=Some(\"ipxe.efi\")") && server_log.contains("arch=Some(7)"),
        "OVMF was not offered ipxe.efi:\n{server_log}"
    );
    assert!(server_log.contains("file=ipxe.efi"), "ipxe.efi was not sent over TFTP:\n{server_log}");
    assert!(server_log.contains("boot script requested"), "{server_log}");
    // Debian's ipxe.efi, like the ROM, passes its lease on to be kept.
    assert!(console.contains("DHCP lease of 10.99.0.") && console.contains("@pxeroot-dhcp renews it"), "{console}");
}

/// The x64 UEFI chain as most sites run it: pxeroot as a proxy beside the
/// site's DHCP server (dnsmasq), the boot file through the port 4011
/// exchange. OVMF takes its address from dnsmasq, a bare offer from
/// pxeroot, and ipxe.efi from pxeroot's ACK on port 4011; ipxe.efi then
/// takes its address from dnsmasq again and its script from pxeroot's
/// proxy offer, and boots the root.
#[test]
fn test_uefi_client_beside_dnsmasq_gets_ipxe_efi_via_port_4011_then_boots() {
    require("dnsmasq");
    let d = tempfile::tempdir().unwrap();
    let my_vars = d.path().join("vars.fd");
    let world = uefi_setup(d.path(), "u4011", &my_vars, Some(&format!("{PROXY_DHCP}uefi = \"via-4011\"\n")));
    let (console, exited, server_log) = uefi_pxe_boot(&world, &my_vars);
    assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "UEFI boot failed:\n{console}\n--- pxeroot log:\n{server_log}");
    let answered =
        |needles: &[&str]| server_log.lines().any(|l| l.contains("DHCP: client answered") && needles.iter().all(|n| l.contains(n)));
    assert!(answered(&["request=Discover", "arch=Some(7)", "ipxe=false", "offered=None"]), "no bare offer:\n{server_log}");
    assert!(answered(&["request=Request", "reply=Ack", "offered=Some(\"ipxe.efi\")"]), "no ipxe.efi in the 4011 ACK:\n{server_log}");
    assert!(answered(&["ipxe=true", "offered=Some(\"tftp://10.99.0.1/pxeroot/"]), "iPXE got no script:\n{server_log}");
    // iPXE's address came from the site's server (its range is .50-.99):
    // a proxy hands out none.
    let host = console.split("net0: 10.99.0.").nth(1).and_then(|r| r.split('/').next()).and_then(|h| h.parse::<u8>().ok());
    assert!(host.is_some_and(|h| (50..=99).contains(&h)), "not an address from dnsmasq ({host:?}):\n{console}");
    assert!(server_log.contains("boot script requested"), "{server_log}");
}

/// An AArch64 EFI application that prints "PXEROOT-EFI-MARKER aarch64"
/// and powers the machine off (tests/fixtures/efi-marker).
fn efi_marker() -> PathBuf {
    let out = stdout(&mut Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/efi-marker/build")));
    PathBuf::from(out.trim())
}

/// An ARM64 UEFI client (AAVMF's own PXE: option 93 is 11) beside the
/// site's DHCP server: pxeroot's proxy answer names the ARM64 boot file,
/// in its offer (`in-offer`) or in the ACK to the firmware's request on
/// port 4011 (`via-4011`). The firmware fetches the file over TFTP and
/// runs it: an AArch64 EFI application that prints a marker, where the
/// x64 file would not even load.
#[test]
fn test_arm64_uefi_pxe_beside_dnsmasq_runs_the_arm64_boot_file() {
    require("dnsmasq");
    require("qemu-system-aarch64");
    for p in [AAVMF_CODE, AAVMF_VARS] {
        assert!(Path::new(p).exists(), "{p} missing: run tests/run-all (it installs qemu-efi-aarch64)");
    }
    let marker = efi_marker();
    for (uefi, tag) in [("in-offer", "a64o"), ("via-4011", "a64v")] {
        let d = tempfile::tempdir().unwrap();
        let boot = d.path().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::copy(&marker, boot.join("ipxe-arm64.efi")).unwrap();
        // The root image and the Linux boot files: configured, never reached.
        let img = d.path().join("root.img");
        make_raw_base(&img, 1 << 20, 1);
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::write(boot.join(f), b"").unwrap();
        }
        let (lan, srv) = lan_and_server(tag);
        let (_server, log_path) = serve(d.path(), &srv, &img, "", &format!("{PROXY_DHCP}uefi = \"{uefi}\"\n"), &the_client());
        let _dnsmasq = site_dnsmasq(&lan, d.path());
        let vars = d.path().join("vars.fd");
        std::fs::copy(AAVMF_VARS, &vars).unwrap();
        // No option ROM: the firmware's own PXE, not iPXE.
        let Booted { lines, exited, .. } = Client::new(&lan)
            .firmware(Firmware::Aavmf { vars })
            .nic("virtio-net-pci,romfile=")
            .beside(&log_path)
            .run(|l| l.contains("PXE-E") || l.contains("Start PXE over IPv6"));
        let console = lines.join("\n");
        let server_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            console.contains("PXEROOT-EFI-MARKER aarch64") && exited,
            "{uefi}: the ARM64 boot file did not run:\n{console}\n--- pxeroot log:\n{server_log}"
        );
        assert!(console.contains("NBP filename is ipxe-arm64.efi"), "{console}");
        assert!(
            server_log.contains("arch=Some(11)") && server_log.contains("offered=Some(\"ipxe-arm64.efi\")"),
            "{uefi}: no ARM64 answer:\n{server_log}"
        );
        let answered = |request: &str, offered: &str| {
            server_log.lines().any(|l| l.contains("DHCP: client answered") && l.contains(request) && l.contains(offered))
        };
        let file = "offered=Some(\"ipxe-arm64.efi\")";
        match uefi {
            "in-offer" => assert!(answered("request=Discover", file), "the offer did not name the file:\n{server_log}"),
            _ => assert!(
                answered("request=Discover", "offered=None") && answered("request=Request", file),
                "not a bare offer, then the file in the ACK on port 4011:\n{server_log}"
            ),
        }
        assert!(server_log.contains("TFTP transfer finished") && server_log.contains("file=ipxe-arm64.efi"), "{server_log}");
        // EDK2 asks for the file's size first and ends that transfer at the
        // OACK: a probe, said as one, not a failed transfer.
        assert!(server_log.contains("a size probe") && !server_log.contains("abandoned"), "{server_log}");
        assert!(!server_log.contains("not in the boot directory"), "{server_log}");
    }
}

/// OVMF's HTTP boot to the root's marker, `vars` writing a fresh variable
/// store before each attempt. OVMF under load (two TCG guests on two
/// cores, in CI; about one run in 13 here) has been seen to give up its
/// HTTP boot a minute after it started ("Could not retrieve NBP file size
/// from HTTP server", "Server response timeout") and fall back to its PXE
/// entry: that attempt stops there and is retried once, its console and
/// pxeroot's log printed. Returns the console, whether QEMU exited, and
/// pxeroot's log.
fn uefi_http_boot(world: &UefiWorld, vars: impl Fn()) -> (String, bool, String) {
    let gave_up = |l: &str| l.contains("Could not retrieve NBP file size");
    let (mut console, mut exited) = (String::new(), false);
    for attempt in 0..2 {
        vars();
        let Booted { lines, exited: ex, .. } = Client::new(&world.lan)
            .firmware(Firmware::Ovmf { vars: world.vars.clone() })
            .nic("virtio-net-pci,romfile=")
            .beside(&world.log_path)
            .run(|l| l.contains("FATAL") || gave_up(l));
        (console, exited) = (lines.join("\n"), ex);
        if attempt == 0 && lines.iter().any(|l| gave_up(l)) {
            let log = std::fs::read_to_string(&world.log_path).unwrap_or_default();
            eprintln!("OVMF gave up its HTTP boot; retrying once. Its console:\n{console}\n--- pxeroot log:\n{log}");
            continue;
        }
        break;
    }
    let server_log = std::fs::read_to_string(&world.log_path).unwrap_or_default();
    assert!(console.contains("Start HTTP Boot over IPv4"), "OVMF did not start HTTP boot:\n{console}");
    assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "UEFI HTTP boot failed:\n{console}\n--- pxeroot log:\n{server_log}");
    assert!(server_log.contains("HTTP transfer finished") && server_log.contains("file=/ipxe.efi"), "{console}\n{server_log}");
    assert!(server_log.contains("boot script requested"), "{server_log}");
    (console, exited, server_log)
}

/// UEFI HTTP boot: a boot entry holding a URI (as `virt-fw-vars
/// --set-boot-uri` writes it, tests/setup-host.sh installs it) has OVMF's
/// own HTTP client fetch ipxe.efi from pxeroot's HTTP server after a DHCP
/// exchange with pxeroot; iPXE then boots the client as usual.
#[test]
fn test_uefi_http_boot_fetches_ipxe_efi_from_pxeroot_over_http() {
    let tool = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/virt-fw-vars"));
    assert!(tool.exists(), "{} missing: run tests/run-all (it installs virt-firmware)", tool.display());
    let d = tempfile::tempdir().unwrap();
    let my_vars = d.path().join("vars.fd");
    let world = uefi_setup(d.path(), "uhttp", &my_vars, None);
    uefi_http_boot(&world, || {
        run(Command::new(tool)
            .args(["--input", OVMF_VARS, "--output"])
            .arg(&my_vars)
            .args(["--set-boot-uri", &format!("http://{SERVER_IP}/ipxe.efi")]));
    });
}

/// UEFI HTTP boot with the URL from DHCP: the boot entry holds an empty
/// URI, as OVMF's own "UEFI HTTPv4" entries do, so OVMF's HTTP boot driver
/// sends a DHCP DISCOVER with vendor class `HTTPClient` and boots the URL
/// in pxeroot's offer.
#[test]
fn test_uefi_http_boot_takes_the_url_from_pxeroots_offer() {
    let python = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python3"));
    assert!(python.exists(), "{} missing: run tests/run-all (it installs virt-firmware)", python.display());
    let d = tempfile::tempdir().unwrap();
    let my_vars = d.path().join("vars.fd");
    let world = uefi_setup(d.path(), "uoffer", &my_vars, None);
    let (_, _, server_log) = uefi_http_boot(&world, || {
        run(Command::new(python).arg("-c").arg(EMPTY_URI_BOOT_ENTRY).arg(OVMF_VARS).arg(&my_vars));
    });
    // The URL came from pxeroot's offer to an HTTPClient DISCOVER.
    assert!(server_log.contains(&format!("offered=Some(\"http://{SERVER_IP}")), "no HTTP URL offered:\n{server_log}");
    assert!(server_log.contains("arch=Some(16)"), "{server_log}");
}

/// virt-firmware's library (tests/setup-host.sh installs it): copy the
/// varstore argv[1] to argv[2] with a BootNext entry whose device path is
/// an empty URI node.
const EMPTY_URI_BOOT_ENTRY: &str = "import sys
from virt.firmware.efi import devpath
from virt.firmware.varstore import autodetect
store = autodetect.open_varstore(sys.argv[1])
vl = store.get_varlist()
vl.set_boot_entry(0x99, 'HTTP boot, URL from DHCP', devpath.DevicePath.uri(''))
vl.set_boot_next(0x99)
store.write_varstore(sys.argv[2], vl)
";
