//! The binary's edges: check-config messages, graceful shutdown on SIGTERM
//! (in-flight work finished, overlays flushed, exit 0), and a shutdown that
//! does not wait forever on a peer that stopped reading.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MAC: &str = "52:54:00:00:0a:01";

/// A config serving image `image` (the file `path`) over NBD on `port` and
/// TFTP on `tftp`, HTTP off, the fixture's kernel and initrd as its boot
/// files, then `extra`.
fn tftp_config(port: u16, tftp: u16, image: &str, path: &str, extra: &str) -> String {
    format!(
        "state_dir = \"state\"\n[nbd]\nlisten = [\"127.0.0.1:{port}\"]\n[pxe]\nserver_address = \"127.0.0.1\"\nboot_dir = \"boot\"\n\
         [tftp]\nlisten = \"127.0.0.1:{tftp}\"\n[http]\nenabled = false\n[images.{image}]\npath = \"{path}\"\n\
         kernel = \"debian/vmlinuz\"\ninitrd = \"debian/initrd.zst\"\n{extra}"
    )
}

#[test]
fn test_check_config_ok_and_errors_name_file_key_fix() {
    let d = tempfile::tempdir().unwrap();
    make_raw_base(&d.path().join("base.img"), 1 << 20, 1);
    let cfg = d.path().join("pxeroot.toml");
    let good = format!("state_dir = \"state\"\n[images.debian]\npath = \"base.img\"\n[clients.\"{MAC}\"]\nimage = \"debian\"\n");
    std::fs::write(&cfg, &good).unwrap();
    let out = stdout(Command::new(bin()).args(["check-config", "--config"]).arg(&cfg));
    assert!(out.contains("OK") && out.contains("client 52:54:00:00:0a:01: image debian"), "{out}");

    std::fs::write(&cfg, good.replace("image = \"debian\"", "image = \"ubuntu\"")).unwrap();
    let out = Command::new(bin()).args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&cfg.display().to_string()), "{err}");
    assert!(err.contains("clients.\"52:54:00:00:0a:01\".image"), "{err}");
    assert!(err.contains("use one of: debian"), "{err}");

    std::fs::write(&cfg, good.replace("state_dir", "state_dri")).unwrap();
    let out = Command::new(bin()).args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("state_dri") && err.contains("line 1"), "{err}");

    // The shipped example is valid once its image exists.
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/pxeroot.example.toml")).unwrap();
    std::fs::create_dir_all(d.path().join("srv/boot")).unwrap();
    let example = example
        .replace("/srv/pxeroot/images/", &format!("{}/srv/", d.path().display()))
        .replace("/srv/pxeroot/boot", &format!("{}/srv/boot", d.path().display()));
    for line in example.lines().filter(|l| l.starts_with("path = ")) {
        let p = line.trim_start_matches("path = ").trim_matches('"');
        make_raw_base(std::path::Path::new(p), 1 << 20, 2);
    }
    std::fs::write(&cfg, example).unwrap();
    run(Command::new(bin()).args(["check-config", "--config"]).arg(&cfg));
}

#[test]
fn test_sigterm_finishes_flushes_and_exits_zero_sighup_does_neither() {
    require("qemu-img");
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.img");
    make_raw_base(&base, 8 << 20, 1);
    let state = d.path().join("state");
    let s = Server::adhoc(&base, &state, &[]);
    let mut c = Client::connect(s.port, MAC).unwrap();
    // Writes acknowledged but never flushed by the client, then it idles.
    for i in 0..20u64 {
        assert_eq!(c.write(i * 70_000, &pattern(i, 5000)), 0);
    }
    // A hangup neither stops the daemon nor drops the session.
    let pid = nix::unistd::Pid::from_raw(s.child.as_ref().map(|c| c.id()).unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.read(0, 5000).1, pattern(0, 5000), "the session did not survive SIGHUP");
    assert!(s.log_text().contains("SIGHUP ignored: `pxeroot nbd` has no configuration file to reload"), "{}", s.log_text());
    let t = Instant::now();
    assert_eq!(s.stop(), 0);
    assert!(t.elapsed() < Duration::from_secs(5), "an idle client must not delay shutdown");
    let out = stdout(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(state.join("52-54-00-00-0a-01.qcow2")));
    assert!(out.contains("No errors were found") && !out.contains("leaked"), "{out}");
    let s = Server::adhoc(&base, &state, &[]);
    let mut c = Client::connect(s.port, MAC).unwrap();
    for i in 0..20u64 {
        assert!(c.read(i * 70_000, 5000).1 == pattern(i, 5000), "write {i} lost at shutdown");
    }
}

#[test]
fn test_shutdown_does_not_wait_forever_on_a_peer_that_stopped_reading() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.img");
    make_raw_base(&base, 64 << 20, 1);
    let s = Server::adhoc(&base, &d.path().join("state"), &[]);
    let mut c = Client::connect(s.port, MAC).unwrap();
    // Ask for 64 MiB of reads and never read the replies.
    for i in 0..2u64 {
        c.send(nbd_wire::Command::Read, 0, i * (32 << 20), 32 << 20, &[]).unwrap();
    }
    c.stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(s.stop(), 0);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    drop(c);
}

/// `pxeroot serve` warns at start about an image whose clients would stop
/// at boot: a GPT or MBR disk (sfdisk's) whose root partition nothing
/// names. Not when `partition` or `root=PARTUUID=` names it, or a GPT
/// partition has the Discoverable Partitions root type (pxeroot-init takes
/// that one).
#[test]
fn test_serve_warns_about_a_partitioned_image_whose_root_partition_nothing_names() {
    require("sfdisk");
    const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    const DPS_ROOT: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
    const MBR: &str = "mbr";
    let cases = [
        (LINUX_DATA, "", true),
        (LINUX_DATA, "partition = 2\n", false),
        (LINUX_DATA, "cmdline = \"console=ttyS0 root=PARTUUID=6b2c1a4e-0d5f-4c7a-9e21-3f8b5c6d7e01\"\n", false),
        (DPS_ROOT, "", false),
        (MBR, "", true),
        (MBR, "cmdline = \"console=ttyS0 root=PARTUUID=1234abcd-02\"\n", false),
    ];
    for (root_type, extra, warns) in cases {
        let d = tempfile::tempdir().unwrap();
        boot_files_fixture(d.path());
        let disk = d.path().join("disk.img");
        std::fs::File::create(&disk).unwrap().set_len(20 << 20).unwrap();
        let mut sfdisk = Command::new("sfdisk").args(["-q"]).arg(&disk).stdin(std::process::Stdio::piped()).spawn().unwrap();
        let table = if root_type == MBR {
            "label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=8192, type=ef\nstart=10240, size=20480, type=83\n".to_string()
        } else {
            format!(
                "label: gpt\nstart=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n\
                 start=10240, size=20480, type={root_type}, uuid=6b2c1a4e-0d5f-4c7a-9e21-3f8b5c6d7e01\n"
            )
        };
        sfdisk.stdin.take().unwrap().write_all(table.as_bytes()).unwrap();
        assert!(sfdisk.wait().unwrap().success());
        let (port, tftp) = (free_port(), free_port());
        let cfg = d.path().join("pxeroot.toml");
        std::fs::write(&cfg, tftp_config(port, tftp, "cloud", "disk.img", extra)).unwrap();
        let server = Server::with_config(&cfg, port, d.path());
        let log = server.log_text();
        let table = if root_type == MBR { "MBR" } else { "GPT" };
        let warned = log.contains(&format!("images.cloud is a {table} disk and nothing names its root partition"));
        assert_eq!(warned, warns, "{root_type} {extra:?}:\n{log}");
        if warns {
            assert!(log.contains("partitions=1, 2") && log.contains("set `partition = N`"), "{log}");
            assert_eq!(log.contains("GPT root type"), table == "GPT", "{log}");
        }
        assert_eq!(server.stop(), 0);
    }
}

/// A port another program holds: `serve` exits 1 at once, naming the
/// service, the address, the reason and the fix; for TFTP, HTTP and NBD
/// alike. (A service that failed at start used to end in a panic,
/// "JoinHandle polled after completion", when the others were stopped.)
#[test]
fn test_serve_names_a_port_in_use_and_the_fix_then_exits() {
    let d = tempfile::tempdir().unwrap();
    boot_files_fixture(d.path());
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (held_udp, held_tcp) = (udp.local_addr().unwrap().port(), tcp.local_addr().unwrap().port());
    let cases = [
        ("TFTP", free_port(), held_udp, "enabled = false".to_string(), "tftp.enabled = false"),
        ("HTTP", free_port(), free_port(), format!("listen = \"127.0.0.1:{held_tcp}\""), "http.enabled = false"),
        ("NBD", held_tcp, free_port(), "enabled = false".to_string(), "set nbd.listen"),
    ];
    for (service, nbd, tftp, http, fix) in cases {
        let cfg = d.path().join("pxeroot.toml");
        std::fs::write(
            &cfg,
            format!(
                "state_dir = \"state\"\n[nbd]\nlisten = [\"127.0.0.1:{nbd}\"]\n[pxe]\nserver_address = \"127.0.0.1\"\nboot_dir = \"boot\"\n\
                 [tftp]\nlisten = \"127.0.0.1:{tftp}\"\n[http]\n{http}\n[images.root]\npath = \"base.img\"\n\
                 kernel = \"debian/vmlinuz\"\ninitrd = \"debian/initrd.zst\"\n"
            ),
        )
        .unwrap();
        let out = output_within(Command::new(bin()).args(["serve", "--config"]).arg(&cfg).env("NO_COLOR", "1"), Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{service}:\n{err}");
        assert!(!err.contains("panicked"), "{service}:\n{err}");
        let port = if service == "TFTP" { held_udp } else { held_tcp };
        assert!(err.contains(&format!("127.0.0.1:{port}: Address already in use")), "{service}:\n{err}");
        assert!(err.contains(&format!("another program holds port {port}")) && err.contains(fix), "{service}:\n{err}");
    }
}

/// One state directory, one daemon: a second pxeroot on it (another port)
/// refuses to start and names the first one's process; once the first
/// has stopped, even killed, the directory is free again.
#[test]
fn test_a_second_daemon_on_the_same_state_directory_refuses_to_start() {
    let d = tempfile::tempdir().unwrap();
    let (base, state) = (d.path().join("base.img"), d.path().join("state"));
    make_raw_base(&base, 1 << 20, 1);
    let first = Server::adhoc(&base, &state, &[]);
    let first_pid = first.child.as_ref().map(|c| c.id()).unwrap();
    let second = |port: u16| {
        output_within(
            Command::new(bin())
                .args(["nbd", "--base"])
                .arg(&base)
                .arg("--state-dir")
                .arg(&state)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .env("NO_COLOR", "1"),
            Duration::from_secs(20),
        )
    };
    let out = second(free_port());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("state directory {} is in use by another pxeroot (pid {first_pid})", state.display())), "{err}");
    first.kill9();
    let again = Server::adhoc(&base, &state, &[]);
    assert_eq!(again.stop(), 0);
}

/// An image whose initrd is not in the boot directory: check-config and
/// serve both say so with the key (its clients would stop at the fetch);
/// check-config also lists the firmware files DHCP would offer but lacks.
#[test]
fn test_missing_boot_files_are_named_at_check_and_start() {
    let d = tempfile::tempdir().unwrap();
    boot_files_fixture(d.path());
    let port = free_port();
    let cfg = d.path().join("pxeroot.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"state\"\n[nbd]\nlisten = [\"127.0.0.1:{port}\"]\n[pxe]\nserver_address = \"127.0.0.1\"\nboot_dir = \"boot\"\n\
             [tftp]\nlisten = \"127.0.0.1:{}\"\n[http]\nenabled = false\n[images.root]\npath = \"base.img\"\n\
             kernel = \"debian/vmlinuz\"\ninitrd = \"debian/initrd.img\"\n",
            free_port()
        ),
    )
    .unwrap();
    let expected = format!("images.root.initrd: debian/initrd.img is not in {}", d.path().join("boot").display());
    let out = stdout(Command::new(bin()).args(["check-config", "--config"]).arg(&cfg));
    assert!(out.contains(&format!("warning: {expected}")) && !out.contains("images.root.kernel"), "{out}");
    assert!(!out.contains("only firmware without iPXE"), "no DHCP, no firmware files:\n{out}");
    let server = Server::with_config(&cfg, port, d.path());
    assert!(server.log_text().contains(&expected), "{}", server.log_text());
    assert_eq!(server.stop(), 0);

    // With DHCP on (check-config only: nothing listens), the firmware files too.
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + "[dhcp]\nmode = \"proxy\"\ninterface = \"lo\"\n").unwrap();
    let out = stdout(Command::new(bin()).args(["check-config", "--config"]).arg(&cfg));
    assert!(out.contains("undionly.kpxe (for BIOS firmware: Debian's ipxe package has /usr/lib/ipxe/undionly.kpxe)"), "{out}");
    assert!(out.contains("ipxe-arm64.efi (for ARM64 UEFI firmware"), "{out}");
}

/// SIGHUP reloads who boots what, with no restart: a client added to the
/// file may open its overlay, one removed may not, and an open session
/// goes on. A file that does not validate, or that names an image the
/// daemon did not open, changes nothing; other changed keys are named as
/// waiting for a restart.
#[test]
fn test_sighup_reloads_the_client_table_and_names_what_needs_a_restart() {
    let d = tempfile::tempdir().unwrap();
    make_raw_base(&d.path().join("base.img"), 1 << 20, 1);
    let port = free_port();
    let cfg = d.path().join("pxeroot.toml");
    let (a, b) = (MAC, "52:54:00:00:0a:02");
    let write = |clients: &str, extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "state_dir = \"state\"\n[nbd]\nlisten = [\"127.0.0.1:{port}\"]\n{extra}[images.debian]\npath = \"base.img\"\n{clients}"
            ),
        )
        .unwrap()
    };
    let client = |mac: &str| format!("[clients.\"{mac}\"]\nimage = \"debian\"\n");
    write(&client(a), "");
    let s = Server::with_config(&cfg, port, d.path());
    let pid = nix::unistd::Pid::from_raw(s.child.as_ref().map(|c| c.id()).unwrap() as i32);
    let reloads = |n: usize, what: &str| {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.log_text().matches(what).count() < n {
            assert!(Instant::now() < deadline, "no {what:?} after SIGHUP:\n{}", s.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(Client::connect(port, b).is_err(), "an unconfigured client was let in");
    let mut session = Client::connect(port, a).unwrap();
    assert_eq!(session.write(0, &pattern(7, 4096)), 0);

    write(&(client(a) + &client(b)), "");
    reloads(1, "configuration reloaded");
    assert!(s.log_text().contains(&format!("added={b}")), "{}", s.log_text());
    Client::connect(port, b).expect("the added client is refused").disconnect();
    assert_eq!(session.read(0, 4096).1, pattern(7, 4096), "the open session did not survive the reload");

    // Not valid: nothing changes.
    std::fs::write(&cfg, "state_dir = \"state\"\n[nbd]\nlisten = [\"127.0.0.1:1\"]\nbogus = 1\n").unwrap();
    reloads(1, "reload failed, the running configuration stays");
    Client::connect(port, b).expect("a failed reload changed the clients").disconnect();
    // An image the daemon did not open: refused whole.
    write(&(client(a) + "[clients.\"52:54:00:00:0a:03\"]\nimage = \"ubuntu\"\n"), "");
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + "[images.ubuntu]\npath = \"base.img\"\n").unwrap();
    reloads(1, "reload refused, the running configuration stays");
    assert!(s.log_text().contains("names image \"ubuntu\", which this daemon did not open at start"), "{}", s.log_text());
    Client::connect(port, b).expect("a refused reload changed the clients").disconnect();

    // b removed, and a key that needs a restart changed.
    write(&client(a), "require_boot_address = false\n");
    reloads(2, "configuration reloaded");
    assert!(Client::connect(port, b).is_err(), "a removed client was let in");
    assert!(s.log_text().contains("applied only at the next restart: [nbd]"), "{}", s.log_text());
    assert_eq!(session.read(0, 4096).1, pattern(7, 4096));
    session.disconnect();
    assert_eq!(s.stop(), 0);
}

/// The shipped systemd unit (config/pxeroot.service) passes `systemd-analyze
/// verify` with its paths pointed at this build, without a warning; its
/// reload is the SIGHUP that `serve` reloads on.
#[test]
fn test_the_shipped_systemd_unit_verifies() {
    require("systemd-analyze");
    let d = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/pxeroot.service")).unwrap();
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"), "{unit}");
    let path = d.path().join("pxeroot.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/pxeroot", &bin().display().to_string())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

/// `pxeroot explain` agrees with what the daemon does: a client that booted
/// (its script fetched over TFTP, its overlay written by qemu-io) is
/// explained with its overlay, a base record that matches and the address
/// it booted from; once the base changes, explain and the daemon both
/// refuse it, for the same reason. A MAC nobody configured is refused with
/// the fix; a malformed one is an error.
#[test]
fn test_explain_agrees_with_the_daemon() {
    require("curl");
    require("qemu-io");
    let d = tempfile::tempdir().unwrap();
    boot_files_fixture(d.path());
    let (port, tftp) = (free_port(), free_port());
    let cfg = d.path().join("pxeroot.toml");
    let client = format!("[clients.\"{MAC}\"]\nimage = \"debian\"\n");
    std::fs::write(&cfg, tftp_config(port, tftp, "debian", "base.img", &client)).unwrap();
    let explain = |mac: &str| {
        let out = Command::new(bin()).args(["explain", "--config"]).arg(&cfg).arg(mac).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, before, _) = explain(MAC);
    assert_eq!(code, Some(0));
    assert!(before.contains("overlay: none yet") && before.contains("verdict: it boots"), "{before}");
    assert!(before.contains("kernel tftp://127.0.0.1/debian/vmlinuz"), "the script is printed:\n{before}");

    let server = Server::with_config(&cfg, port, d.path());
    let script = d.path().join("script.ipxe");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Command::new("curl")
        .args(["-s", "-o"])
        .arg(&script)
        .arg(format!("tftp://127.0.0.1:{tftp}/pxeroot/{}.ipxe", MAC.replace(':', "-")))
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "no script over TFTP:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x5a 0 64k"]).arg(server.uri(MAC)));
    assert_eq!(server.stop(), 0);

    let (_, booted, _) = explain(MAC);
    for line in ["overlay: ", "base record: matches the base", "last boot from: 127.0.0.1 (its overlay opens only for that address)"] {
        assert!(booted.contains(line), "no {line:?}:\n{booted}");
    }
    assert!(booted.contains("verdict: it boots"), "{booted}");

    // The base changes under the persistent overlay.
    make_raw_base(&d.path().join("base.img"), 1 << 20, 99);
    let (_, changed, _) = explain(MAC);
    assert!(changed.contains("verdict: refused: its overlay") && changed.contains("belongs to another base"), "{changed}");
    let server = Server::with_config(&cfg, port, d.path());
    let out = Command::new("qemu-io").args(["-f", "raw", "-c", "read 0 4k"]).arg(server.uri(MAC)).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("belongs to another base"), "the daemon served it:\n{err}");
    drop(server);

    let (_, unknown, _) = explain("52:54:00:00:0a:99");
    assert!(
        unknown.contains("verdict: refused: 52:54:00:00:0a:99 is not in the config") && unknown.contains("unknown_clients.action"),
        "{unknown}"
    );
    let (code, _, err) = explain("52:54:00:00:0a");
    assert_eq!(code, Some(1));
    assert!(err.contains("52:54:00:00:0a"), "{err}");
}
