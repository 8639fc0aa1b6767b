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

/// Over `MAX_CONNECTIONS` a client gets 503 with Retry-After (not a reset,
/// not a wait in the backlog), the refusals are logged once per burst, and
/// once connections close the next one is served.
#[test]
fn test_http_over_the_connection_limit_gets_503() {
    require("curl");
    let s = setup();
    let port: u16 = s.base.rsplit(':').next().unwrap().parse().unwrap();
    let held: Vec<std::net::TcpStream> =
        (0..pxeroot::http::MAX_CONNECTIONS).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    // The daemon accepts them all before it sees curl's connection.
    let (mut code, mut headers) = (0, String::new());
    let deadline = Instant::now() + Duration::from_secs(5);
    while code != 503 && Instant::now() < deadline {
        let o = Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null", "--max-time", "5", "-w", "%{http_code}"])
            .arg(format!("{}/debian/vmlinuz", s.base))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        code = out.lines().last().unwrap_or("").trim().parse().unwrap_or(0);
        headers = out;
    }
    assert_eq!(code, 503, "{headers}\n{}", s.server.log_text());
    assert!(headers.to_ascii_lowercase().contains("retry-after: 1"), "{headers}");
    let o = Command::new("curl").args(["-s", "--max-time", "5"]).arg(format!("{}/debian/vmlinuz", s.base)).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "too many connections, try again\n");
    let refusals = s.server.log_text().matches("HTTP refused").count();
    assert_eq!(refusals, 1, "one line per burst:\n{}", s.server.log_text());
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, body) = get(&s, "/debian/initrd.zst", &[]);
        if code == 200 {
            assert_eq!(body, std::fs::read(s.boot.join("debian/initrd.zst")).unwrap());
            break;
        }
        assert!(Instant::now() < deadline, "still refused after the connections closed: {code}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM during a download: the response under way is finished (not cut),
/// an idle keep-alive connection is closed, and the daemon exits cleanly.
#[test]
fn test_http_shutdown_finishes_the_response_under_way() {
    require("curl");
    let s = setup();
    let port: u16 = s.base.rsplit(':').next().unwrap().parse().unwrap();
    let idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // 48 MiB at 12 MB/s: about four seconds, well inside the drain bound,
    // and more than loopback's socket buffers hold, so the server is still
    // sending when the signal comes.
    std::fs::write(s.boot.join("big.bin"), pattern(9, 48 << 20)).unwrap();
    let mut slow = Command::new("curl")
        .args(["-s", "--limit-rate", "12M", "--max-time", "30", "-o"])
        .arg(&s.out)
        .arg(format!("{}/big.bin", s.base))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let Setup { server, out, boot, _dir, .. } = s;
    let started = Instant::now();
    let code = server.stop();
    assert_eq!(code, 0, "pxeroot's exit code after SIGTERM");
    assert!(started.elapsed() < pxeroot::listen::DRAIN_TIMEOUT + Duration::from_secs(5));
    assert!(slow.wait().unwrap().success(), "the download under way was cut");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(boot.join("big.bin")).unwrap(), "the download differs");
    // The idle connection was closed by the server, not left to time out.
    let mut idle = idle;
    idle.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(std::io::Read::read(&mut idle, &mut buf).unwrap_or(0), 0);
}
