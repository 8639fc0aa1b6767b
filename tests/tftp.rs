//! TFTP judged by curl and atftp: files arrive intact with default and large
//! block sizes and with windowsize; per-client iPXE scripts are generated;
//! traversal attempts and write requests are refused and nothing outside the
//! boot directory is read.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MAC: &str = "52:54:00:7f:00:01";

struct Setup {
    _dir: tempfile::TempDir,
    server: Server,
    nbd_port: u16,
    cfg: std::path::PathBuf,
    tftp_port: u16,
    boot: std::path::PathBuf,
    out: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let boot = boot_files_fixture(d);
    std::fs::write(boot.join("small.bin"), pattern(1, 1000)).unwrap();
    let nbd_port = free_port();
    let tftp_port = free_port();
    let cfg = d.join("pxeroot.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"state_dir = "state"
[nbd]
listen = ["127.0.0.1:{nbd_port}"]
[pxe]
server_address = "127.0.0.1"
boot_dir = "boot"
[tftp]
listen = "127.0.0.1:{tftp_port}"
[tftp.blksize_caps]
"127.0.0.2" = 1024
[http]
enabled = false
[images.debian]
path = "base.img"
kernel = "debian/vmlinuz"
initrd = "debian/initrd.zst"
cmdline = "console=ttyS0"
partition = 2
[clients."{MAC}"]
image = "debian"
"#
        ),
    )
    .unwrap();
    let server = Server::with_config(&cfg, nbd_port, d);
    let out = d.join("out");
    let s = Setup { _dir: dir, server, nbd_port, cfg, tftp_port, boot, out };
    // TFTP binds right after NBD: wait until it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !curl(&s, "small.bin", &[]).status.success() {
        assert!(Instant::now() < deadline, "TFTP never answered:\n{}", s.server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

fn curl(s: &Setup, name: &str, extra: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-s", "--path-as-is", "--max-time", "20", "-o"])
        .arg(&s.out)
        .args(extra)
        .arg(format!("tftp://127.0.0.1:{}/{name}", s.tftp_port))
        .output()
        .unwrap()
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn test_tftp_files_intact_with_curl_and_atftp() {
    require("curl");
    require("atftp");
    let s = setup();
    for blksize in ["512", "1468"] {
        let o = curl(&s, "debian/vmlinuz", &["--tftp-blksize", blksize]);
        assert!(o.status.success(), "curl blksize {blksize}: {o:?}");
        assert!(same(&s.out, &s.boot.join("debian/vmlinuz")), "blksize {blksize}: content differs");
    }
    // atftp negotiates windowsize (RFC 7440) and blksize.
    let local = s.out.with_extension("atftp");
    let o = Command::new("atftp")
        .args(["--option", "blksize 1468", "--option", "windowsize 16", "-g", "-r", "debian/initrd.zst", "-l"])
        .arg(&local)
        .args(["127.0.0.1", &s.tftp_port.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "atftp: {o:?}");
    assert!(same(&local, &s.boot.join("debian/initrd.zst")));
    assert!(s.server.log_text().contains("TFTP transfer finished"), "no transfer log line");
}

#[test]
fn test_tftp_serves_the_client_script() {
    require("curl");
    let s = setup();
    for name in ["pxeroot/52-54-00-7f-00-01.ipxe", "pxeroot/52:54:00:7F:00:01.ipxe"] {
        let o = curl(&s, name, &[]);
        assert!(o.status.success(), "{name}: {o:?}");
        let text = std::fs::read_to_string(&s.out).unwrap();
        assert!(text.starts_with("#!ipxe"), "{text}");
        assert!(text.contains("kernel tftp://127.0.0.1/debian/vmlinuz initrd=initrd.zst console=ttyS0 "), "{text}");
        assert!(text.contains(&format!("pxeroot.export={MAC}")), "{text}");
        // The image's root partition reaches pxeroot-init.
        assert!(text.contains(" pxeroot.partition=2 pxeroot.dns="), "{text}");
        assert!(text.contains("initrd tftp://127.0.0.1/debian/initrd.zst"), "{text}");
    }
    // A MAC that is not configured (unknown clients refused): not found.
    assert!(!curl(&s, "pxeroot/52-54-00-00-00-99.ipxe", &[]).status.success());
}

#[test]
fn test_tftp_refuses_traversal_and_writes() {
    require("curl");
    let s = setup();
    for name in
        ["../secret.txt", "..%5Csecret.txt", "debian/../../secret.txt", "escape/etc/passwd", "escape/tmp", "%2Fetc%2Fpasswd", "/etc/passwd"]
    {
        let _ = std::fs::remove_file(&s.out);
        let o = curl(&s, name, &[]);
        let got = std::fs::read_to_string(&s.out).unwrap_or_default();
        assert!(!o.status.success(), "{name} was served: {got:?}");
        assert!(!got.contains("SECRET") && !got.contains("root:"), "{name} leaked content");
    }
    assert!(s.server.log_text().contains("TFTP request refused"));
    // Write requests are refused and nothing appears in the boot directory.
    let up = s.out.with_extension("up");
    std::fs::write(&up, "x").unwrap();
    let o = Command::new("curl")
        .args(["-s", "--max-time", "10", "-T"])
        .arg(&up)
        .arg(format!("tftp://127.0.0.1:{}/new.bin", s.tftp_port))
        .output()
        .unwrap();
    assert!(!o.status.success(), "upload accepted");
    assert!(!s.boot.join("new.bin").exists());
}

#[test]
fn test_overlay_opens_only_from_the_address_the_client_booted_from() {
    require("curl");
    let s = setup();
    let policy = nbd_wire::consts::REP_ERR_POLICY;
    // Not booted yet: refused, with a message saying why.
    let e = Client::connect(s.nbd_port, MAC).expect_err("must refuse before a boot");
    assert_eq!(e.reply_type, policy);
    assert!(e.message.contains("has not booted through this server"), "{}", e.message);
    // The script fetch from 127.0.0.1 is the boot: that address may connect.
    assert!(curl(&s, "pxeroot/52-54-00-7f-00-01.ipxe", &[]).status.success());
    Client::connect(s.nbd_port, MAC).expect("the booting address is allowed");
    let e =
        Client::connect_from(s.nbd_port, MAC, Some(std::net::Ipv4Addr::new(127, 0, 0, 2))).expect_err("another address must be refused");
    assert!(e.message.contains("booted from 127.0.0.1") && e.message.contains("127.0.0.2"), "{}", e.message);
    // The read-only base export is not bound to anyone.
    Client::connect_from(s.nbd_port, "debian", Some(std::net::Ipv4Addr::new(127, 0, 0, 2))).expect("base export");
    // After a daemon restart the recorded address still holds (a netlink
    // client reconnecting mid-boot must get back in).
    let Setup { _dir, server, nbd_port, cfg, .. } = s;
    assert_eq!(server.stop(), 0);
    let _server = Server::with_config(&cfg, nbd_port, cfg.parent().unwrap());
    Client::connect(nbd_port, MAC).expect("allowed after restart");
    // The switch relaxes it.
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[nbd]\n", "[nbd]\nrequire_boot_address = false\n");
    std::fs::write(&cfg, text).unwrap();
    drop(_server);
    let _server = Server::with_config(&cfg, nbd_port, cfg.parent().unwrap());
    Client::connect_from(nbd_port, MAC, Some(std::net::Ipv4Addr::new(127, 0, 0, 3))).expect("relaxed");
}

#[test]
fn test_ephemeral_overlay_kept_across_reconnect_reset_by_next_boot() {
    require("curl");
    let s = setup();
    let Setup { _dir, server, nbd_port, cfg, tftp_port, boot, out } = s;
    assert_eq!(server.stop(), 0);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("image = \"debian\"\n", "image = \"debian\"\npolicy = \"ephemeral\"\n");
    std::fs::write(&cfg, text).unwrap();
    let server = Server::with_config(&cfg, nbd_port, cfg.parent().unwrap());
    let s = Setup { _dir, server, nbd_port, cfg, tftp_port, boot, out };
    let fetch = |s: &Setup| assert!(curl(s, "pxeroot/52-54-00-7f-00-01.ipxe", &[]).status.success());
    fetch(&s); // boot 1
    let mut c = Client::connect(s.nbd_port, MAC).unwrap();
    assert_eq!(c.write(0, &[0xee; 4096]), 0);
    c.disconnect();
    // A reconnect within the same boot (netlink after a network blip) keeps it.
    let mut c = Client::connect(s.nbd_port, MAC).unwrap();
    assert_eq!(c.read(0, 4096).1, vec![0xee; 4096], "ephemeral overlay lost on reconnect");
    c.disconnect();
    std::thread::sleep(Duration::from_millis(200));
    fetch(&s); // boot 2
    let mut c = Client::connect(s.nbd_port, MAC).unwrap();
    assert_ne!(c.read(0, 4096).1, vec![0xee; 4096], "ephemeral overlay survived a new boot");
    assert!(s.server.log_text().contains("ephemeral overlay reset for the new boot"));
    // A machine reset without DISC: its old connection is still open when
    // the next boot fetches its script. The new boot still starts clean,
    // and the stale connection neither breaks nor leaks into it.
    assert_eq!(c.write(0, &[0xdd; 4096]), 0);
    fetch(&s); // boot 3, with boot 2's connection still open
    let mut fresh = Client::connect(s.nbd_port, MAC).unwrap();
    assert_ne!(fresh.read(0, 4096).1, vec![0xdd; 4096], "the previous boot's writes leaked into the new boot");
    assert_eq!(c.write(8192, &[0xcc; 512]), 0, "the stale connection broke");
    assert_ne!(fresh.read(8192, 512).1, vec![0xcc; 512], "a stale connection's write reached the new overlay");
    assert!(s.server.log_text().contains("their overlay is orphaned"));
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    // The new overlay is still served after the stale connection went away.
    assert_eq!(fresh.write(0, &[0xab; 512]), 0);
    let mut again = Client::connect(s.nbd_port, MAC).unwrap();
    assert_eq!(again.read(0, 512).1, vec![0xab; 512]);
}

#[test]
fn test_tftp_per_client_blksize_cap() {
    require("curl");
    let s = setup();
    // Both ask for 1468: 127.0.0.2 is capped at 1024, 127.0.0.1 is not.
    for (src, want) in [("127.0.0.2", "blksize=1024"), ("127.0.0.1", "blksize=1468")] {
        let o = curl(&s, "debian/initrd.zst", &["--tftp-blksize", "1468", "--interface", src]);
        assert!(o.status.success(), "{src}: {o:?}");
        assert!(same(&s.out, &s.boot.join("debian/initrd.zst")), "{src}: content differs");
        std::thread::sleep(Duration::from_millis(100));
        let log = s.server.log_text();
        let line = log
            .lines()
            .rfind(|l| l.contains("TFTP transfer finished") && l.contains(&format!("client={src}:")))
            .unwrap_or_default()
            .to_string();
        assert!(line.contains(want), "{src}: {line}");
    }
}

/// Over `MAX_TRANSFERS` a read request gets an error packet saying the
/// server is busy, logged once per burst; when the stalled transfers give
/// up, the next request is served.
#[test]
fn test_tftp_over_the_transfer_limit_is_told_busy() {
    require("curl");
    let s = setup();
    let rrq = |name: &str| {
        let mut p = vec![0, 1];
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(b"\0octet\0");
        p
    };
    // Transfers that never ACK: each holds its slot until it gives up.
    let stalled: Vec<std::net::UdpSocket> = (0..pxeroot::tftp::MAX_TRANSFERS)
        .map(|_| {
            let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            u.send_to(&rrq("small.bin"), ("127.0.0.1", s.tftp_port)).unwrap();
            u
        })
        .collect();
    // Each answers with its first DATA block once it is admitted.
    for u in &stalled {
        u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1600];
        let n = u.recv(&mut b).expect("an admitted transfer sends its first block");
        assert_eq!(&b[..2], &[0, 3], "not DATA: {:?}", &b[..n.min(40)]);
    }
    let over = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    over.send_to(&rrq("small.bin"), ("127.0.0.1", s.tftp_port)).unwrap();
    let mut b = [0u8; 1600];
    let n = over.recv(&mut b).unwrap();
    assert_eq!(&b[..2], &[0, 5], "not ERROR: {:?}", &b[..n]);
    assert_eq!(&b[4..n - 1], pxeroot::tftp::BUSY_MESSAGE.as_bytes());
    assert!(!curl(&s, "small.bin", &[]).status.success(), "served over the limit");
    assert_eq!(s.server.log_text().matches("TFTP refused").count(), 1, "one line per burst:\n{}", s.server.log_text());
    // The stalled transfers give up after their retransmissions; then
    // there is room again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !curl(&s, "small.bin", &[]).status.success() {
        assert!(Instant::now() < deadline, "never served again:\n{}", s.server.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(same(&s.out, &s.boot.join("small.bin")));
    drop(stalled);
}
