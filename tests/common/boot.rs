//! What the boot tests share: the guest kernel and the static init, the
//! test root images and initramfs, the kernel command line, the server in
//! its namespace (`pxeroot nbd`, or `pxeroot serve` with a config), and
//! the site's DHCP servers' helpers. The QEMU client is `qemu.rs`'s.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::netns::{dnsmasq_dhcp_with, Netns, Proc, SERVER_IP};
use super::{bin, require, run, stdout, Server};

pub const MAC: &str = super::qemu::CLIENT_MAC;

pub const STEM: &str = "52-54-00-b0-07-01";

pub const CLIENT_IP: &str = "10.99.0.2";

pub fn kernel_dir() -> PathBuf {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/guest-kernel"));
    assert!(d.join("ready").exists(), "no guest kernel in {}: run tests/run-all, which fetches it", d.display());
    d
}

pub fn init_binary() -> PathBuf {
    let out = stdout(&mut Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/boot/pxeroot-init/build-static")));
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(out.trim())
}

/// The root image from `images/build-test-root`: busybox-static and an
/// init that prints a marker, writes /marker, sends DISC and powers off.
pub fn root_image(dir: &Path) -> PathBuf {
    build_root(dir, None)
}

/// The same image with another /sbin/init.
pub fn root_image_with(dir: &Path, init: &str) -> PathBuf {
    let script = dir.join("init.sh");
    std::fs::write(&script, init).unwrap();
    build_root(dir, Some(&script))
}

pub fn build_root(dir: &Path, init: Option<&Path>) -> PathBuf {
    require("busybox");
    let img = dir.join("root.img");
    let mut c = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/images/build-test-root"));
    c.arg(&img).arg(init_binary());
    if let Some(i) = init {
        c.arg(i);
    }
    run(&mut c);
    img
}

pub fn initramfs(dir: &Path) -> PathBuf {
    initramfs_compressed(dir, "auto")
}

/// `pxeroot initramfs` from the guest kernel's modules into `out`, with
/// `args`, and the static pxeroot-init.
pub fn initramfs_command(out: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(["initramfs", "--kernel-modules"]).arg(kernel_dir().join("modules")).arg("-o").arg(out).args(args);
    c.arg("--init").arg(init_binary());
    c
}

/// The default initramfs, compressed as `compress` (`--compress`).
pub fn initramfs_compressed(dir: &Path, compress: &str) -> PathBuf {
    let out = dir.join("initrd.img");
    let report = stdout(&mut initramfs_command(&out, &["--compress", compress]));
    let size_line = report.lines().last().unwrap_or_default().to_string();
    eprintln!("{size_line}");
    out
}

/// A client's overlay (its qcow2) copied out as a raw disk, `flat.img` in
/// a test's directory: its filesystem read with debugfs, never mounted.
pub struct Flat(pub PathBuf);

impl Flat {
    pub fn of(dir: &Path, overlay: &Path) -> Flat {
        let flat = dir.join("flat.img");
        run(Command::new("qemu-img").args(["convert", "-U", "-O", "raw"]).arg(overlay).arg(&flat));
        Flat(flat)
    }

    /// `file` of the ext4 filesystem that is the whole disk.
    pub fn cat(&self, file: &str) -> String {
        stdout(Command::new("debugfs").args(["-R", &format!("cat {file}")]).arg(&self.0))
    }

    /// `file` of the ext4 filesystem at byte `offset` (a partition).
    pub fn cat_at(&self, offset: u64, file: &str) -> String {
        stdout(Command::new("debugfs").args(["-R", &format!("cat {file}")]).arg(format!("{}?offset={offset}", self.0.display())))
    }
}

/// `/marker` in the filesystem of `overlay` (a client's qcow2).
pub fn overlay_marker(dir: &Path, overlay: &Path) -> String {
    Flat::of(dir, overlay).cat("/marker")
}

pub fn cmdline(server: &str, export: &str, attach: &str) -> String {
    format!(
        "console=ttyS0 panic=-1 loglevel=4 pxeroot.server={server} pxeroot.export={export} pxeroot.attach={attach} \
         ip={CLIENT_IP}::{SERVER_IP}:255.255.255.0:::off BOOTIF=01-{}",
        MAC.replace(':', "-")
    )
}

/// dnsmasq as the segment's DHCP server in `ns` on `interface` (leases of
/// `lease`, `more` arguments), logging each exchange to the returned path.
pub fn logged_dnsmasq(ns: &Netns, interface: &str, dir: &Path, lease: &str, more: &[&str]) -> (Proc, PathBuf) {
    let log = dir.join("dnsmasq.log");
    let mut extra = vec!["--log-dhcp".to_string(), format!("--log-facility={}", log.display())];
    extra.extend(more.iter().map(|m| m.to_string()));
    (dnsmasq_dhcp_with(ns, interface, dir, true, lease, &extra), log)
}

/// The ACKs to REQUESTs (leases granted or renewed) for the test's MAC in
/// `logged_dnsmasq`'s log, in order; not those answering pxeroot-init's
/// DHCPINFORM (`--log-dhcp` starts each line of an exchange with its xid).
pub fn dnsmasq_acks(log: &Path, interface: &str) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let xid = |l: &str, what: &str| {
        l.split(&format!(" {what}({interface}) ")).next().and_then(|head| head.rsplit(' ').next()).map(str::to_string)
    };
    let informs: Vec<String> =
        text.lines().filter(|l| l.contains(&format!(" DHCPINFORM({interface}) "))).filter_map(|l| xid(l, "DHCPINFORM")).collect();
    text.lines()
        .filter(|l| l.contains(&format!(" DHCPACK({interface}) ")) && l.contains(MAC))
        .filter(|l| xid(l, "DHCPACK").is_none_or(|x| !informs.contains(&x)))
        .map(str::to_string)
        .collect()
}

pub fn start_server(ns: &Netns, img: &Path, state: &Path, log: &Path) -> Server {
    let args = [
        "nbd",
        "--base",
        &img.display().to_string(),
        "--state-dir",
        &state.display().to_string(),
        "--listen",
        &format!("{SERVER_IP}:10809"),
    ]
    .map(String::from);
    // Listening before the guest (or the monitor) needs it.
    Server::in_netns(ns, &args, SERVER_IP, 10809, log)
}

/// The boot directory of the PXE tests: the guest kernel and a fresh initramfs.
pub fn boot_dir(dir: &Path) -> PathBuf {
    boot_dir_compressed(dir, "auto")
}

/// `boot_dir` with the initramfs compressed as `compress`.
pub fn boot_dir_compressed(dir: &Path, compress: &str) -> PathBuf {
    let boot = dir.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::copy(kernel_dir().join("vmlinuz"), boot.join("vmlinuz")).unwrap();
    std::fs::copy(initramfs_compressed(dir, compress), boot.join("initrd.img")).unwrap();
    boot
}

/// Start pxeroot in `ns` serving `img` as the image `root`: `[pxe]` at
/// SERVER_IP plus the keys in `pxe`, `[dhcp]` on vsrv0 with the keys in
/// `dhcp`, then `clients`, the TOML of the client tables. Returns the
/// process and its log's path.
pub fn serve(dir: &Path, ns: &Netns, img: &Path, pxe: &str, dhcp: &str, clients: &str) -> (Server, PathBuf) {
    let cfg = dir.join("pxeroot.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"state\"\n[nbd]\nlisten = [\"{SERVER_IP}:10809\"]\n[pxe]\nserver_address = \"{SERVER_IP}\"\nboot_dir = \"boot\"\n{pxe}\
             [dhcp]\ninterface = \"vsrv0\"\n{dhcp}[images.root]\npath = \"{}\"\nkernel = \"vmlinuz\"\ninitrd = \"initrd.img\"\n\
             cmdline = \"console=ttyS0 panic=-1 loglevel=4\"\n{clients}",
            img.display()
        ),
    )
    .unwrap();
    let log_path = dir.join("pxeroot.log");
    let _ = std::fs::remove_file(&log_path);
    let server = Server::in_netns(ns, &["serve".into(), "--config".into(), cfg.display().to_string()], SERVER_IP, 10809, &log_path);
    (server, log_path)
}

/// The one client's table.
pub fn the_client() -> String {
    format!("[clients.\"{MAC}\"]\nimage = \"root\"\n")
}

/// Proxy DHCP beside the site's server, router advertisements on (no
/// IPv6 router on the test LAN).
pub const PROXY_DHCP: &str = "mode = \"proxy\"\nipv6_router_advertisements = true\n";

/// Start pxeroot in `srv` as the only DHCP server of the test LAN (full
/// mode, router advertisements on) serving `img`; `clients` is the TOML of
/// the client tables. Returns the process and its log's path.
pub fn start_full_mode(dir: &Path, srv: &Netns, img: &Path, clients: &str) -> (Server, PathBuf) {
    start_full_mode_with(dir, srv, img, clients, "")
}

/// `start_full_mode` with more `[dhcp]` keys.
pub fn start_full_mode_with(dir: &Path, srv: &Netns, img: &Path, clients: &str, more: &str) -> (Server, PathBuf) {
    let dhcp = format!(
        "mode = \"full\"\nipv6_router_advertisements = true\npool_start = \"10.99.0.100\"\npool_end = \"10.99.0.110\"\n\
         netmask = \"255.255.255.0\"\n{more}"
    );
    serve(dir, srv, img, "", &dhcp, clients)
}

/// A site DHCP server's binary that tests/setup-host.sh unpacks under
/// target/PACKAGE.
pub fn unpacked(package: &str, binary: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(package).join("usr/sbin").join(binary);
    assert!(path.exists(), "{} missing: run tests/run-all (it unpacks {package})", path.display());
    path
}

/// dnsmasq arguments for DNS servers, a domain, search domains and an NTP
/// server (options 6, 15, 119 and 42, addresses from TEST-NET-1: nothing
/// is ever asked) and the test client's name, lab-07 (option 12).
pub fn site_dns_options() -> Vec<String> {
    vec![
        "--dhcp-option=option:dns-server,192.0.2.53,192.0.2.54".into(),
        "--domain=lab.example".into(),
        "--dhcp-option=option:domain-search,lab.example,corp.example".into(),
        "--dhcp-option=option:ntp-server,192.0.2.123".into(),
        format!("--dhcp-host={MAC},lab-07"),
    ]
}
