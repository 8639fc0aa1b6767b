//! HTTP judged by curl: whole files and ranges match, HEAD gives the length,
//! the client's script is generated, traversal attempts get 403/404 and
//! nothing outside the boot directory is read, no redirects, GET/HEAD only.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MAC: &str = "52:54:00:7f:00:02";

struct Setup {
    _dir: tempfile::TempDir,
    server: Server,
    base: String,
    boot: std::path::PathBuf,
    out: std::path::PathBuf,
    cfg: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let boot = boot_files_fixture(d);
    let (nbd_port, http_port) = (free_port(), free_port());
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
enabled = false
[http]
listen = "127.0.0.1:{http_port}"
[images.debian]
path = "base.img"
kernel = "debian/vmlinuz"
initrd = "debian/initrd.zst"
[clients."{MAC}"]
image = "debian"
"#
        ),
    )
    .unwrap();
    let server = Server::with_config(&cfg, nbd_port, d);
    let base = format!("http://127.0.0.1:{http_port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
        assert!(Instant::now() < deadline, "HTTP never listened:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = d.join("out");
    Setup { _dir: dir, server, base, out, boot, cfg }
}

/// curl a path as-is; returns (status code, body).
fn get(s: &Setup, path: &str, extra: &[&str]) -> (u16, Vec<u8>) {
    let _ = std::fs::remove_file(&s.out);
    let o = Command::new("curl")
        .args(["-s", "--path-as-is", "--max-time", "20", "-o"])
        .arg(&s.out)
        .args(["-w", "%{http_code}"])
        .args(extra)
        .arg(format!("{}{path}", s.base))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0);
    (code, std::fs::read(&s.out).unwrap_or_default())
}

#[test]
fn test_http_whole_files_ranges_and_head() {
    require("curl");
    let s = setup();
    let kernel = std::fs::read(s.boot.join("debian/vmlinuz")).unwrap();
    let (code, body) = get(&s, "/debian/vmlinuz", &[]);
    assert_eq!(code, 200);
    assert!(body == kernel, "whole file differs");
    for (range, a, b) in
        [("0-99", 0usize, 100usize), ("8388000-", 8388000, 8 << 20), ("-1000", (8 << 20) - 1000, 8 << 20), ("4096-8191", 4096, 8192)]
    {
        let (code, body) = get(&s, "/debian/vmlinuz", &["-r", range]);
        assert_eq!(code, 206, "range {range}");
        assert!(body == kernel[a..b], "range {range} differs");
    }
    let (code, _) = get(&s, "/debian/vmlinuz", &["-r", "99999999-"]);
    assert_eq!(code, 416);
    let head = Command::new("curl").args(["-s", "-I"]).arg(format!("{}/debian/initrd.zst", s.base)).output().unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(head.contains("content-length: 1048576") && head.contains("accept-ranges: bytes"), "{head}");
    let (code, _) = get(&s, "/debian/vmlinuz", &["-X", "POST"]);
    assert_eq!(code, 405);
    assert!(s.server.log_text().contains("HTTP transfer finished"));
}

#[test]
fn test_http_script_and_refusals() {
    require("curl");
    let s = setup();
    let (code, body) = get(&s, "/pxeroot/52-54-00-7f-00-02.ipxe", &[]);
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(&format!("kernel {}/debian/vmlinuz initrd=initrd.zst", s.base)), "{text}");
    assert!(text.contains(&format!("initrd {}/debian/initrd.zst", s.base)), "{text}");
    assert_eq!(get(&s, "/pxeroot/52-54-00-00-00-99.ipxe", &[]).0, 404);
    for path in
        ["/../secret.txt", "/%2e%2e/secret.txt", "/debian/..%2f..%2fsecret.txt", "/..%5csecret.txt", "/escape/etc/passwd", "/escape/tmp"]
    {
        let (code, body) = get(&s, path, &[]);
        assert!(code == 403 || code == 404, "{path}: {code}");
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("SECRET") && !body.contains("root:"), "{path} leaked");
    }
    assert!(s.server.log_text().contains("HTTP request refused"));
    // Never a redirect, even for a directory.
    let (code, _) = get(&s, "/debian", &[]);
    assert_eq!(code, 404);
}

/// A reload (SIGHUP) applies an image's new kernel arguments and initrd to
/// the next script fetched, with no restart and nothing named as waiting
/// for one; an initrd the boot directory lacks is named.
#[test]
fn test_reload_changes_the_next_script() {
    require("curl");
    let s = setup();
    let script = || String::from_utf8_lossy(&get(&s, "/pxeroot/52-54-00-7f-00-02.ipxe", &[]).1).into_owned();
    assert!(!script().contains("pxeroot-debug-flag"));
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(
        &s.cfg,
        text.replace(
            "initrd = \"debian/initrd.zst\"\n",
            "initrd = \"debian/initrd.new\"\ncmdline = \"console=ttyS0 pxeroot-debug-flag\"\n",
        ),
    )
    .unwrap();
    let pid = nix::unistd::Pid::from_raw(s.server.child.as_ref().map(|c| c.id()).unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.server.log_text().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", s.server.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = script();
    assert!(text.contains("initrd=initrd.new console=ttyS0 pxeroot-debug-flag "), "{text}");
    assert!(text.contains(&format!("initrd {}/debian/initrd.new", s.base)), "{text}");
    let log = s.server.log_text();
    assert!(log.contains("images.debian.initrd: debian/initrd.new is not in"), "{log}");
    assert!(!log.contains("applied only at the next restart"), "{log}");
}
