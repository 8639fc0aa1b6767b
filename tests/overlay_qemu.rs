//! Overlays judged by qemu-img: check, info --backing-chain, map, compare,
//! commit, and qemu's image locks; persistence policies across restarts;
//! refusal of a changed base.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const MAC: &str = "52:54:00:00:00:01";
const STEM: &str = "52-54-00-00-00-01";
const SIZE: usize = 16 << 20;

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let out = stdout(c.arg(uri));
    assert!(!out.contains("failed"), "{out}");
    out
}

fn check(overlay: &Path) -> String {
    stdout(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(overlay))
}

#[test]
fn test_overlay_clean_after_stop_and_qemu_img_tools_agree() {
    require("qemu-img");
    require("qemu-io");
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.img");
    make_raw_base(&base, SIZE, 3);
    let state = d.path().join("state");
    let s = Server::adhoc(&base, &state, &[]);
    let uri = s.uri(MAC);
    qemu_io(
        &uri,
        &[
            "write -P 0x5a 0 65536",
            "write -P 0x6b 1000000 300000",
            "write -z 4194304 131072",
            "write -z -u 8388608 131072",
            "write -P 0x7c 16711680 65536",
        ],
    );
    let overlay = state.join(format!("{STEM}.qcow2"));

    // While live: qemu's locks make qemu-img refuse to open it for writing.
    let out = Command::new("qemu-img").args(["commit", "-f", "qcow2"]).arg(&overlay).output().unwrap();
    assert!(!out.status.success(), "qemu-img commit must refuse a live overlay");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lock"), "{err}");
    // ... but a forced-share read works.
    run(Command::new("qemu-img").args(["info", "-U"]).arg(&overlay));

    assert_eq!(s.stop(), 0);
    let c = check(&overlay);
    assert!(c.contains("No errors were found"), "{c}");
    assert!(!c.contains("leaked"), "{c}");

    let info = stdout(Command::new("qemu-img").args(["info", "--backing-chain"]).arg(&overlay));
    assert!(info.contains(&format!("backing file: {}", base.display())), "{info}");
    assert!(info.contains("backing file format: raw"), "{info}");
    assert!(info.contains("compat: 1.1"), "{info}");

    // Map: the written ranges are in the overlay (depth 0), the rest in the base.
    let map = stdout(Command::new("qemu-img").args(["map", "--output=json"]).arg(&overlay));
    assert!(map.contains("\"start\": 0, \"length\": 65536, \"depth\": 0"), "{map}");
    assert!(map.contains("\"depth\": 1"), "{map}");
    // NO_HOLE zeroing keeps clusters allocated (zero, present at depth 0);
    // unmap zeroing leaves zero clusters without data.
    assert!(
        map.contains("\"start\": 4194304, \"length\": 131072, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false"),
        "{map}"
    );
    assert!(
        map.contains("\"start\": 8388608, \"length\": 131072, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false"),
        "{map}"
    );

    // qemu-io reading the file directly sees what the client wrote.
    let out = stdout(
        Command::new("qemu-io")
            .args([
                "-f",
                "qcow2",
                "-r",
                "-c",
                "read -P 0x5a 0 65536",
                "-c",
                "read -P 0x6b 1000000 300000",
                "-c",
                "read -P 0 4194304 131072",
                "-c",
                "read -P 0x7c 16711680 65536",
            ])
            .arg(&overlay),
    );
    assert!(!out.contains("failed"), "{out}");

    // compare: the overlay differs from the base; commit folds it into a
    // copy of the base, which then equals the overlay.
    let cmp = Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "qcow2"]).arg(&base).arg(&overlay).output().unwrap();
    assert_eq!(cmp.status.code(), Some(1), "images should differ");
    let flat = d.path().join("flat.img");
    run(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&overlay).arg(&flat));
    run(Command::new("qemu-img").args(["commit", "-f", "qcow2"]).arg(&overlay));
    let cmp = stdout(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&base).arg(&flat));
    assert!(cmp.contains("identical"), "{cmp}");
}

#[test]
fn test_restart_persistent_keeps_data_ephemeral_does_not() {
    require("qemu-io");
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.img");
    make_raw_base(&base, SIZE, 4);
    for (policy, kept) in [("persistent", true), ("ephemeral", false)] {
        let state = d.path().join(policy);
        let s = Server::adhoc(&base, &state, &["--policy", policy]);
        qemu_io(&s.uri(MAC), &["write -P 0x42 65536 65536"]);
        // Same daemon, a new session: ephemeral already resets here (all
        // connections had closed: that is a new boot until PXE tells us).
        let again = Command::new("qemu-io").args(["-f", "raw", "-r", "-c", "read -P 0x42 65536 65536"]).arg(s.uri(MAC)).output().unwrap();
        let same_session_kept = !String::from_utf8_lossy(&again.stdout).contains("failed");
        assert_eq!(same_session_kept, kept, "{policy}: after reconnect");
        qemu_io(&s.uri(MAC), &["write -P 0x43 131072 4096"]);
        assert_eq!(s.stop(), 0);
        let s = Server::adhoc(&base, &state, &["--policy", policy]);
        let out = Command::new("qemu-io").args(["-f", "raw", "-r", "-c", "read -P 0x43 131072 4096"]).arg(s.uri(MAC)).output().unwrap();
        let has = !String::from_utf8_lossy(&out.stdout).contains("failed");
        assert_eq!(has, kept, "{policy}: after daemon restart: {}", String::from_utf8_lossy(&out.stdout));
        if !kept {
            // Fresh overlay reads exactly the base.
            let b = std::fs::read(&base).unwrap();
            let mut c = Client::connect(s.port, MAC).unwrap();
            let (_, data) = c.read(131072, 4096);
            assert_eq!(&data[..], &b[131072..131072 + 4096]);
        }
    }
}

#[test]
fn test_changed_base_is_refused_with_clear_error() {
    require("qemu-io");
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.img");
    make_raw_base(&base, SIZE, 5);
    let state = d.path().join("state");
    let s = Server::adhoc(&base, &state, &[]);
    qemu_io(&s.uri(MAC), &["write -P 1 0 4096"]);
    assert_eq!(s.stop(), 0);
    // Rebuild the base with other content (same size, same path).
    make_raw_base(&base, SIZE, 6);
    let s = Server::adhoc(&base, &state, &[]);
    let refused = Client::connect(s.port, MAC).expect_err("must refuse");
    assert!(refused.message.contains("belongs to another base"), "{}", refused.message);
    assert!(s.log_text().contains("belongs to another base"));
    // Other clients are unaffected.
    Client::connect(s.port, "52:54:00:00:00:02").expect("other client");
}

#[test]
fn test_qcow2_bases_compressed_zero_and_backing_chain() {
    require("qemu-img");
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    // A raw image with data, zero runs and repeated text (compresses).
    let mut raw = pattern(8, SIZE);
    raw[1 << 20..3 << 20].fill(0);
    // Each 64 KiB cluster of it differs from the others.
    for (i, b) in raw[5 << 20..6 << 20].iter_mut().enumerate() {
        *b = b"pxeroot "[i % 8].wrapping_add((i >> 16) as u8);
    }
    std::fs::write(p("src.raw"), &raw).unwrap();
    // qcow2 v3 compressed (deflate), v3 zstd, v2, and a two-level chain
    // whose top layer holds zero clusters and new data.
    run(Command::new("qemu-img").args(["convert", "-c", "-O", "qcow2"]).arg(p("src.raw")).arg(p("deflate.qcow2")));
    run(Command::new("qemu-img")
        .args(["convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd"])
        .arg(p("src.raw"))
        .arg(p("zstd.qcow2")));
    run(Command::new("qemu-img").args(["convert", "-O", "qcow2", "-o", "compat=0.10"]).arg(p("src.raw")).arg(p("v2.qcow2")));
    run(Command::new("qemu-img").args(["create", "-f", "qcow2", "-F", "qcow2", "-b", "deflate.qcow2"]).arg(p("top.qcow2")));
    run(Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -z 0 131072", "-c", "write -P 0x99 6291456 100000"]).arg(p("top.qcow2")));
    // Extended L2 entries (32 subclusters of 2 KiB per 64 KiB cluster):
    // compressed whole, and over a raw backing file with allocated, zero
    // and backing subclusters side by side in one cluster.
    run(Command::new("qemu-img").args(["convert", "-c", "-O", "qcow2", "-o", "extended_l2=on"]).arg(p("src.raw")).arg(p("extl2c.qcow2")));
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-o", "extended_l2=on", "-F", "raw", "-b", "src.raw"])
        .arg(p("extl2.qcow2")));
    let extl2_writes: [(u64, u64, Option<u8>); 4] =
        [(4096, 4096, Some(0x5a)), (69632, 8192, None), (4194304 + 2048, 2048, Some(0x77)), (7340032 + 1000, 200000, Some(0x33))];
    let mut io = Command::new("qemu-io");
    io.args(["-f", "qcow2"]);
    for (off, len, fill) in extl2_writes {
        io.arg("-c").arg(match fill {
            Some(b) => format!("write -P {b} {off} {len}"),
            None => format!("write -z {off} {len}"),
        });
    }
    run(io.arg(p("extl2.qcow2")));
    let map = stdout(Command::new("qemu-img").args(["map", "--output=json"]).arg(p("extl2.qcow2")));
    assert!(map.contains("\"zero\": true, \"data\": false"), "no zero subclusters to read: {map}");
    for img in ["deflate.qcow2", "zstd.qcow2", "v2.qcow2", "top.qcow2", "extl2c.qcow2", "extl2.qcow2"] {
        let s = Server::adhoc(&p(img), &p(&format!("state-{img}")), &["--name", "base"]);
        // The read-only export of the base equals what qemu reads from it.
        let out = stdout(Command::new("qemu-img").args(["compare", "-f", "qcow2", "-F", "raw"]).arg(p(img)).arg(s.uri("base")));
        assert!(out.contains("identical"), "{img}: {out}");
        // So does an untouched client overlay over it.
        let out = stdout(Command::new("qemu-img").args(["compare", "-f", "qcow2", "-F", "raw"]).arg(p(img)).arg(s.uri(MAC)));
        assert!(out.contains("identical"), "{img} overlay: {out}");
        // Small reads, each cluster read many times in pieces and out of
        // order (a compressed base's clusters come from the cache after the
        // first), read back what the raw source holds.
        if img != "v2.qcow2" {
            let mut want = raw.clone();
            if img == "top.qcow2" {
                want[..131072].fill(0);
                want[6291456..6391456].fill(0x99);
            }
            if img == "extl2.qcow2" {
                for (off, len, fill) in extl2_writes {
                    want[off as usize..(off + len) as usize].fill(fill.unwrap_or(0));
                }
                // Block status at subcluster grain: the 8 KiB of zero
                // subclusters between data read from the raw backing file.
                require("nbdinfo");
                let map = stdout(Command::new("nbdinfo").arg("--map").arg(s.uri("base")));
                let row = |l: &str| l.split_whitespace().take(2).map(|w| w.parse::<u64>().unwrap_or(u64::MAX)).collect::<Vec<_>>();
                assert!(map.lines().any(|l| row(l) == [69632, 8192] && l.contains("hole,zero")), "{map}");
                let total: u64 = map.lines().map(|l| row(l)[1]).sum();
                assert_eq!(total, SIZE as u64, "{map}");
            }
            let mut c = Client::connect(s.port, "base").unwrap();
            for i in 0..400u64 {
                let off = ((i * 7919 * 4096) % (8 << 20) + (i % 3) * 1000) as usize;
                let (e, got) = c.read(off as u64, 4096);
                assert_eq!(e, 0);
                assert!(got == want[off..off + 4096], "{img}: bytes at {off} differ from the source");
            }
            c.disconnect();
        }
        // A partial write into a compressed cluster keeps its neighbours.
        let mut c = Client::connect(s.port, MAC).unwrap();
        assert_eq!(c.write((5 << 20) + 100, b"XYZ"), 0);
        let (_, back) = c.read(5 << 20, 4096);
        assert_eq!(&back[..100], &raw[5 << 20..(5 << 20) + 100]);
        assert_eq!(&back[100..103], b"XYZ");
        assert_eq!(&back[103..], &raw[(5 << 20) + 103..(5 << 20) + 4096]);
        c.disconnect();
        assert_eq!(s.stop(), 0);
        let c = check(&p(&format!("state-{img}")).join(format!("{STEM}.qcow2")));
        assert!(c.contains("No errors"), "{c}");
    }
}
