//! pxeroot-init in a real kernel, booted directly: QEMU (TCG) starts the
//! Debian kernel with `-kernel`/`-initrd` from `pxeroot initramfs`, on a
//! tap in a network namespace the test creates, where pxeroot serves an
//! ext4 root image whose /sbin/init prints a marker, writes /marker and
//! powers off; the marker must then be in that MAC's overlay. Also: the
//! modules the kernel refuses, the NIC driver fallback, a wrong server or
//! export (clear messages and retries, never a kernel panic), a daemon
//! restart and a pulled cable under netlink, pxeroot-init's own DHCP.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::boot::*;
use common::netns::{Netns, Proc, SERVER_IP};
use common::qemu::{Booted, Client};
use common::*;

/// Writes, syncs, drops caches and reads back, 40 times, then powers off.
const LOOP_INIT: &str = "#!/bin/busybox sh\n\
    i=0\n\
    while [ $i -lt 40 ]; do\n\
      i=$((i+1))\n\
      echo \"data $i\" > /data-$i || echo \"WRITE-ERROR $i\"\n\
      /bin/busybox sync || echo \"SYNC-ERROR $i\"\n\
      echo 3 > /proc/sys/vm/drop_caches\n\
      [ \"$(/bin/busybox cat /data-$i)\" = \"data $i\" ] || echo \"READ-ERROR $i\"\n\
      echo \"LOOP $i ok\"\n\
      /bin/busybox usleep 200000\n\
    done\n\
    /bin/busybox dmesg | /bin/busybox grep 'pxeroot-' | /bin/busybox sed 's/^/DMESG /'\n\
    echo PXEROOT-MARKER-DONE\n\
    /bin/busybox poweroff -f\n";

#[test]
fn test_boot_ioctl_root_on_nbd_marker_lands_in_overlay() {
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    let initrd = initramfs(d.path());
    let kernel = kernel_dir().join("vmlinuz");
    let ns = Netns::new("ioctl");
    let state = d.path().join("state");
    let server = start_server(&ns, &img, &state, &d.path().join("pxeroot.log"));
    let t = Instant::now();
    // A lease from a server that answers no DHCPINFORM (only `pxeroot
    // nbd` runs): asking for NTP servers costs a bounded wait, said.
    let line = format!("{} pxeroot.lease={SERVER_IP},3600", cmdline(SERVER_IP, MAC, "ioctl"));
    let Booted { lines, exited, .. } =
        Client::new(&ns).kernel(&kernel, &initrd, &line).beside(&d.path().join("pxeroot.log")).run(|l| l.contains("FATAL"));
    let console = lines.join("\n");
    eprintln!("{console}");
    if console.contains("FATAL") {
        panic!("boot failed; pxeroot log:\n{}", std::fs::read_to_string(d.path().join("pxeroot.log")).unwrap_or_default());
    }
    assert!(console.contains("PXEROOT-MARKER root init running"), "root init never ran:\n{console}");
    assert!(console.contains("PXEROOT-MARKER-DONE"));
    assert!(exited, "the guest did not power off");
    assert!(!console.contains("Kernel panic"), "{console}");
    for step in [
        "load NIC drivers: ok",
        "load the root's modules: ok",
        "NBD connect to",
        "attach /dev/nbd0 (ioctl): ok",
        "mount /dev/nbd0 (ext4)",
        "prefer pxeroot.attach=netlink",
        "eth0: no answer to DHCPINFORM from 10.99.0.1 within 250ms: the root gets no NTP servers from DHCP",
    ] {
        assert!(console.contains(step), "missing step {step:?}:\n{console}");
    }
    // Only virtio-net is there: the e1000, e1000e, igb and r8169 groups stay unloaded.
    let skipped = console
        .split(" driver groups without a device skipped")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.trim().parse::<u32>().ok());
    assert_eq!(skipped, Some(4), "{console}");
    eprintln!("QEMU start to power-off: {:.1} s", t.elapsed().as_secs_f64());
    assert!(console.contains("pxeroot-disconnect: /dev/nbd0 disconnected"), "{console}");
    assert!(!console.contains("I/O error") && !console.contains("EXT4-fs error"), "I/O after the disconnect:\n{console}");
    drop(server);
    let log = std::fs::read_to_string(d.path().join("pxeroot.log")).unwrap_or_default();
    assert!(log.contains("client sent DISC"), "the server never saw DISC:\n{log}");
    // The marker written by the guest is in its overlay.
    let marker = overlay_marker(d.path(), &state.join(format!("{STEM}.qcow2")));
    assert!(marker.contains("written by the diskless client"), "{marker}");
    // ... and not in the base.
    let base_marker = Command::new("debugfs").args(["-R", "cat /marker"]).arg(&img).output().unwrap();
    assert!(!String::from_utf8_lossy(&base_marker.stdout).contains("written"), "the base was written");
}

#[test]
fn test_boot_wrong_server_or_export_retries_without_panic() {
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    let initrd = initramfs(d.path());
    let kernel = kernel_dir().join("vmlinuz");
    let ns = Netns::new("wrong");
    // Nothing listens on this port: connection refused, retried.
    let Booted { lines, .. } =
        Client::new(&ns).kernel(&kernel, &initrd, &cmdline(&format!("{SERVER_IP}:10999"), MAC, "ioctl")).run(|l| l.contains("(attempt 3)"));
    let console = lines.join("\n");
    assert!(console.contains("NBD connect to 10.99.0.1:10999 export 52:54:00:b0:07:01 failed (attempt 1)"), "{console}");
    assert!(console.contains("retrying in"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
    // Refused is an answer: no word about the switch.
    assert!(!console.contains("portfast"), "{console}");

    // An address nobody has (no ARP answer), seconds after link-up: as
    // behind a switch port still in STP's listening state, the console
    // says so.
    let Booted { lines, .. } =
        Client::new(&ns).kernel(&kernel, &initrd, &cmdline("10.99.0.77", MAC, "ioctl")).run(|l| l.contains("(attempt 1)"));
    let console = lines.join("\n");
    assert!(
        console.contains("NBD connect to 10.99.0.77:10809 export 52:54:00:b0:07:01 failed (attempt 1)")
            && console.contains("a switch port that is not an edge (portfast) port forwards nothing for about 30 s"),
        "{console}"
    );

    // A server that refuses this export: its message reaches the console.
    let cfg = d.path().join("pxeroot.toml");
    std::fs::write(
        &cfg,
        format!("state_dir = \"state\"\n[nbd]\nlisten = [\"{SERVER_IP}:10809\"]\n[images.root]\npath = \"{}\"\n", img.display()),
    )
    .unwrap();
    let log = d.path().join("pxeroot.log");
    let _server = Server::in_netns(&ns, &["serve".into(), "--config".into(), cfg.display().to_string()], SERVER_IP, 10809, &log);
    let Booted { lines, .. } =
        Client::new(&ns).beside(&log).kernel(&kernel, &initrd, &cmdline(SERVER_IP, MAC, "ioctl")).run(|l| l.contains("(attempt 2)"));
    let console = lines.join("\n");
    assert!(console.contains("server refused by policy: client 52:54:00:b0:07:01 is not configured"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
}

/// A driver group whose aliases miss the machine's NIC (here: e1000's,
/// rewritten by an archive appended to the initramfs, which the kernel
/// unpacks over the first) must cost time, not the boot: with no network
/// interface after the matching groups, pxeroot-init loads the skipped ones.
#[test]
fn test_boot_loads_skipped_driver_groups_when_no_interface_appears() {
    require("cpio");
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    let raw = d.path().join("initrd.cpio");
    run(initramfs_command(&raw, &["--compress", "none"]).stdout(Stdio::null()));
    let list = stdout(Command::new("cpio").args(["-i", "--quiet", "--to-stdout", "-F"]).arg(&raw).arg("etc/pxeroot/modules"));
    let mut lines: Vec<String> = list.lines().map(String::from).collect();
    let e1000 = lines.iter().position(|l| l.ends_with("/e1000.ko")).expect("e1000 in the module list");
    let header = (0..e1000).rev().find(|&i| lines[i].starts_with("group ")).expect("e1000's group");
    lines[header] = "group pci:v0000FFFFd0000FFFFsv*sd*bc*sc*i*".into();
    let over = d.path().join("over");
    std::fs::create_dir_all(over.join("etc/pxeroot")).unwrap();
    std::fs::write(over.join("etc/pxeroot/modules"), lines.join("\n") + "\n").unwrap();
    let mut cpio = Command::new("cpio");
    cpio.args(["-o", "-H", "newc", "--quiet", "-R", "0:0"]).current_dir(&over).stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cpio.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"etc\netc/pxeroot\netc/pxeroot/modules\n").unwrap();
    let appended = child.wait_with_output().unwrap();
    assert!(appended.status.success());
    let initrd = d.path().join("initrd-over.cpio");
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes.extend_from_slice(&appended.stdout);
    std::fs::write(&initrd, bytes).unwrap();

    let ns = Netns::new("fallbk");
    let _server = start_server(&ns, &img, &d.path().join("state"), &d.path().join("pxeroot.log"));
    let Booted { lines, exited, .. } = Client::new(&ns)
        .nic("e1000")
        .kernel(&kernel_dir().join("vmlinuz"), &initrd, &cmdline(SERVER_IP, MAC, "netlink"))
        .beside(&d.path().join("pxeroot.log"))
        .run(|l| l.contains("FATAL"));
    let console = lines.join("\n");
    eprintln!("{console}");
    // No virtio device and e1000's aliases miss: all six groups were skipped, then loaded.
    assert!(console.contains("no network interface from the driver groups that matched a device: loaded the 6 others too"), "{console}");
    assert!(console.contains("PXEROOT-MARKER root init running"), "root init never ran:\n{console}");
    assert!(exited && !console.contains("Kernel panic"), "{console}");
}

/// No `ip=`: pxeroot-init asks the segment's DHCP server. The client has
/// two CPUs, so the root's modules load beside the NIC drivers (the
/// debug lines time each module), and a modern-only virtio-net device
/// (PCI 1af4:1041, no legacy interface), which its driver group names.
#[test]
fn test_boot_without_ip_uses_dhcp_on_two_cpus() {
    require("dnsmasq");
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    let initrd = initramfs(d.path());
    let kernel = kernel_dir().join("vmlinuz");
    let ns = Netns::new("dhcp");
    let state = d.path().join("state");
    let _server = start_server(&ns, &img, &state, &d.path().join("pxeroot.log"));
    // The segment's DHCP server: dnsmasq, DHCP only (port=0: no DNS).
    let _dnsmasq = Proc(
        ns.command(Path::new("dnsmasq"))
            .args(["--no-daemon", "--port=0", "--interface=tap0", "--bind-interfaces", "--no-ping", "--dhcp-authoritative"])
            .args(["--dhcp-range=10.99.0.50,10.99.0.99,255.255.255.0,1h", "--dhcp-option=3,10.99.0.1", "--dhcp-option=26,1450"])
            .arg(format!("--dhcp-leasefile={}", d.path().join("leases").display()))
            .arg(format!("--pid-file={}", d.path().join("dnsmasq.pid").display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cmd = format!("console=ttyS0 panic=-1 loglevel=4 pxeroot.server={SERVER_IP} pxeroot.debug BOOTIF=01-{}", MAC.replace(':', "-"));
    let nic = "virtio-net-pci,disable-legacy=on";
    let Booted { lines, exited, .. } =
        Client::new(&ns).smp(2).nic(nic).kernel(&kernel, &initrd, &cmd).beside(&d.path().join("pxeroot.log")).run(|l| l.contains("FATAL"));
    let console = lines.join("\n");
    eprintln!("{console}");
    // The filesystem's modules, the first of the root's, loaded while the
    // NIC drivers were still loading (with one CPU they load after them).
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?}:\n{console}"));
    assert!(at("/jbd2.ko: ") < at("load NIC drivers: ok"), "the root's modules waited for the drivers:\n{console}");
    assert!(at("/virtio_net.ko: ") < at("/virtio_pci.ko: ") && at("/virtio_pci.ko: ") < at("load NIC drivers: ok"), "{console}");
    assert!(!console.contains("no network interface from the driver groups"), "the modern device's group did not match:\n{console}");
    assert!(console.contains("DHCP on eth0: 10.99.0."), "{console}");
    assert!(console.contains("gateway Some(10.99.0.1)"), "{console}");
    // Its lease (dnsmasq's T1: half of 1 h) is kept from the DHCP's time.
    assert!(console.contains("from 10.99.0.1: 3600 s; @pxeroot-dhcp renews it 180"), "{console}");
    assert!(console.contains("eth0: MTU 1450 (DHCP option 26)"), "{console}");
    // Export defaulted to the boot interface's MAC.
    assert!(console.contains("export 52:54:00:b0:07:01: ok"), "{console}");
    assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "{console}");
}

/// The default initramfs unpacked into `dir`/x, changed by `edit`, and
/// packed again as an uncompressed cpio in `dir`.
fn edited_initramfs(dir: &Path, edit: impl FnOnce(&Path)) -> PathBuf {
    use std::io::Write;
    require("cpio");
    let good = initramfs(dir);
    let x = dir.join("x");
    std::fs::create_dir(&x).unwrap();
    let archive = run(Command::new("zstd").args(["-d", "-c"]).arg(&good)).stdout;
    let mut cpio = Command::new("cpio").args(["-idm", "--quiet"]).current_dir(&x).stdin(Stdio::piped()).spawn().unwrap();
    cpio.stdin.take().unwrap().write_all(&archive).unwrap();
    assert!(cpio.wait().unwrap().success());
    edit(&x);
    let out = dir.join("edited.cpio");
    run(Command::new("sh").arg("-c").arg(format!("find . | cpio -o -H newc --quiet > {}", out.display())).current_dir(&x));
    std::fs::remove_dir_all(&x).unwrap();
    out
}

/// Cut module `file` under `x` to 4 KiB, which the kernel refuses (ENOEXEC),
/// as it refuses a module built for a CPU feature the machine lacks
/// (ENODEV); its path in the initramfs.
fn truncate_module(x: &Path, file: &str) -> String {
    let found = stdout(Command::new("find").arg(x).args(["-name", file]));
    let module = Path::new(found.trim());
    std::fs::OpenOptions::new().write(true).open(module).unwrap().set_len(4096).unwrap();
    format!("/{}", module.strip_prefix(x).unwrap().display())
}

/// A module in the list marked optional (`?`, what the builder writes for
/// a module only soft dependencies brought in, as ext4's crc32c_generic)
/// that the kernel refuses is named and skipped, as modprobe skips a soft
/// dependency: the rest of its group loads and the root boots. (ext4 on
/// 6.1 cannot mount without crc32c whatever its features, so the refused
/// module here is an extra one.)
#[test]
fn test_an_optional_module_the_kernel_refuses_is_skipped() {
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    let bad = edited_initramfs(d.path(), |x| {
        let list_path = x.join("etc/pxeroot/modules");
        let list = std::fs::read_to_string(&list_path).unwrap();
        assert!(list.lines().any(|l| l.starts_with('?') && l.ends_with("/crc32c_generic.ko")), "crc32c not optional:\n{list}");
        // A copy of crc16.ko, refused, listed as optional before ext4.
        let crc16 = stdout(Command::new("find").arg(x).args(["-name", "crc16.ko"]));
        std::fs::copy(crc16.trim(), Path::new(crc16.trim()).with_file_name("refused_extra.ko")).unwrap();
        let path = truncate_module(x, "refused_extra.ko");
        let edited: String =
            list.lines().map(|l| if l.ends_with("/ext4.ko") { format!("?{path}\n{l}\n") } else { format!("{l}\n") }).collect();
        assert_ne!(edited, list);
        std::fs::write(&list_path, edited).unwrap();
    });
    let ns = Netns::new("optmod");
    let _server = start_server(&ns, &img, &d.path().join("state"), &d.path().join("pxeroot.log"));
    for cpus in [1, 2] {
        let Booted { lines, exited, .. } = Client::new(&ns)
            .smp(cpus)
            .kernel(&kernel_dir().join("vmlinuz"), &bad, &cmdline(SERVER_IP, MAC, "netlink"))
            .beside(&d.path().join("pxeroot.log"))
            .run(|l| l.contains("FATAL"));
        let console = lines.join("\n");
        let what = format!("{cpus} CPU(s)");
        assert!(console.contains("/refused_extra.ko: Exec format error") && console.contains("going on without it"), "{what}:\n{console}");
        assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "{what}:\n{console}");
    }
}

/// A module the kernel refuses (a truncated jbd2.ko) stops the boot with
/// the module's name and the kernel's error, on one CPU and on two (where
/// the filesystem's modules load on a thread of their own): no kernel
/// panic, no hang. Also with no DHCP server, where the network would retry
/// forever: the failure is reported at once, not after the network.
#[test]
fn test_a_module_the_kernel_refuses_is_named_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let img = root_image(d.path());
    let bad = edited_initramfs(d.path(), |x| {
        truncate_module(x, "jbd2.ko");
    });
    let kernel = kernel_dir().join("vmlinuz");
    let ns = Netns::new("badmod");
    let _server = start_server(&ns, &img, &d.path().join("state"), &d.path().join("pxeroot.log"));
    let no_dhcp = format!("console=ttyS0 panic=-1 loglevel=4 pxeroot.server={SERVER_IP} BOOTIF=01-{}", MAC.replace(':', "-"));
    for (cpus, cmd) in
        [(1, cmdline(SERVER_IP, MAC, "netlink")), (2, cmdline(SERVER_IP, MAC, "netlink")), (1, no_dhcp.clone()), (2, no_dhcp)]
    {
        let Booted { lines, .. } =
            Client::new(&ns).smp(cpus).kernel(&kernel, &bad, &cmd).beside(&d.path().join("pxeroot.log")).run(|l| l.contains("FATAL"));
        let console = lines.join("\n");
        let what = format!("{cpus} CPU(s), {cmd}");
        assert!(
            console.contains("FATAL: load the root's modules failed: loading module") && console.contains("/jbd2.ko: Exec format error"),
            "{what}:\n{console}"
        );
        assert!(!console.contains("Kernel panic"), "{what}:\n{console}");
        // Reported within the first DHCP exchange's wait, not after it.
        assert!(!console.contains("DHCP on eth0 failed"), "{what}:\n{console}");
    }
}

/// A LOOP_INIT root, its initramfs and kernel, and a namespace `tag` for
/// `pxeroot nbd` (state and log in the temporary directory).
struct LoopWorld {
    d: tempfile::TempDir,
    img: PathBuf,
    initrd: PathBuf,
    kernel: PathBuf,
    ns: Netns,
    state: PathBuf,
    log: PathBuf,
}

fn loop_world(tag: &str) -> LoopWorld {
    let d = tempfile::tempdir().unwrap();
    let img = root_image_with(d.path(), LOOP_INIT);
    let initrd = initramfs(d.path());
    let (state, log) = (d.path().join("state"), d.path().join("pxeroot.log"));
    LoopWorld { img, initrd, kernel: kernel_dir().join("vmlinuz"), ns: Netns::new(tag), state, log, d }
}

#[test]
fn test_boot_netlink_survives_a_daemon_restart_mid_io() {
    let LoopWorld { d, img, initrd, kernel, ns, state, log } = loop_world("netlink");
    let mut server = Some(start_server(&ns, &img, &state, &log));
    let mut restarted = false;
    let Booted { lines, exited, .. } =
        Client::new(&ns).kernel(&kernel, &initrd, &cmdline(SERVER_IP, MAC, "netlink")).beside(&log).run(|l| {
            if l.contains("LOOP 8 ok") && !restarted {
                // Restart the daemon while the guest is in its write/read loop.
                if let Some(p) = server.take() {
                    p.stop();
                }
                std::thread::sleep(Duration::from_millis(1500));
                server = Some(start_server(&ns, &img, &state, &log));
                restarted = true;
            }
            l.contains("FATAL")
        });
    let console = lines.join("\n");
    eprintln!("{console}");
    assert!(restarted, "the loop never reached the restart point:\n{console}");
    assert!(console.contains("attach /dev/nbd0 (netlink): ok"), "{console}");
    drop(server);
    assert_the_loop_survived(d.path(), &state, &lines, exited);
}

/// After a LOOP_INIT boot whose NBD connection died mid-loop: the monitor reconnected, said so in the kernel log too, the
/// loop went on without an error, and every file it wrote is in the
/// client's overlay in `state`.
fn assert_the_loop_survived(dir: &Path, state: &Path, lines: &[String], exited: bool) {
    let console = lines.join("\n");
    assert!(console.contains("reconnected to 10.99.0.1:10809"), "the monitor did not reconnect:\n{console}");
    // The monitor's lines are in the kernel log too (dmesg, the journal).
    assert!(
        lines.iter().any(|l| l.contains("DMESG") && l.contains("pxeroot-nbd: nbd0: reconnected to 10.99.0.1:10809")),
        "not in the kernel log:\n{console}"
    );
    assert!(console.contains("LOOP 40 ok") && console.contains("PXEROOT-MARKER-DONE"), "{console}");
    for bad in ["ERROR", "I/O error", "EXT4-fs error", "Kernel panic"] {
        assert!(!console.contains(bad), "{bad} on the console:\n{console}");
    }
    assert!(exited, "the guest did not power off");
    let flat = Flat::of(dir, &state.join(format!("{STEM}.qcow2")));
    for i in [1, 8, 9, 40] {
        let data = flat.cat(&format!("/data-{i}"));
        assert!(data.contains(&format!("data {i}")), "/data-{i} missing from the overlay: {data}");
    }
}

/// A pulled cable (QEMU's link off for 12 s, longer than the NBD request
/// timeout of 5 s) while the root writes: the kernel declares the
/// connection dead, the monitor keeps reconnecting until the link is back,
/// the server takes the new connection while the old one is still open on
/// its side (it never saw it close), and nothing is lost.
#[test]
fn test_boot_netlink_survives_a_pulled_cable_mid_io() {
    let LoopWorld { d, img, initrd, kernel, ns, state, log } = loop_world("cable");
    let server = start_server(&ns, &img, &state, &log);
    let monitor = d.path().join("qemu-monitor.sock");
    let set_link = |monitor: &Path, up: bool| {
        use std::io::Write;
        let mut m = std::os::unix::net::UnixStream::connect(monitor).expect("QEMU's monitor");
        m.write_all(format!("set_link n0 {}\n", if up { "on" } else { "off" }).as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut pulled = None;
    let cmd = format!("{} pxeroot.timeout=5", cmdline(SERVER_IP, MAC, "netlink"));
    let qemu_monitor = format!("unix:{},server=on,wait=off", monitor.display());
    let Booted { lines, exited, .. } =
        Client::new(&ns).args(&["-monitor", &qemu_monitor]).kernel(&kernel, &initrd, &cmd).beside(&log).run(|l| {
            if l.contains("LOOP 8 ok") && pulled.is_none() {
                set_link(&monitor, false);
                // The guest is silent while its I/O waits: plug it back in
                // from another thread.
                let m = monitor.clone();
                pulled = Some(std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(12));
                    set_link(&m, true);
                }));
            }
            l.contains("FATAL")
        });
    let console = lines.join("\n");
    eprintln!("{console}");
    assert!(pulled.is_some_and(|t| t.join().is_ok()), "the loop never reached the point to pull the cable:\n{console}");
    assert!(console.contains("connection to 10.99.0.1:10809 lost"), "the kernel never gave the connection up:\n{console}");
    drop(server);
    assert_the_loop_survived(d.path(), &state, &lines, exited);
}
