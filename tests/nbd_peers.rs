//! The NBD server judged by real peers: qemu-io, qemu-img, nbdinfo, nbdcopy.

mod common;

use std::process::Command;

use common::*;

const MAC_A: &str = "52:54:00:12:34:56";
const MAC_A_DASH: &str = "52-54-00-12-34-56";
const MAC_B: &str = "52:54:00:ab:cd:ef";
const SIZE: usize = 32 << 20;

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.img");
    make_raw_base(&base, SIZE, 7);
    let state = dir.path().join("state");
    (dir, base, state)
}

#[test]
fn test_qemu_io_patterns_over_nbd_read_back() {
    require("qemu-io");
    let (_d, base, state) = setup();
    let s = Server::adhoc(&base, &state, &[]);
    let uri = s.uri(MAC_A);
    // Aligned, unaligned, cluster-crossing, and a whole-cluster write; then
    // zeroes and discard; everything read back with the pattern checker.
    let out = stdout(
        Command::new("qemu-io")
            .args(["-f", "raw"])
            .args([
                "-c",
                "write -P 0x11 0 4096",
                "-c",
                "write -P 0x22 65000 1000",
                "-c",
                "write -P 0x33 131072 65536",
                "-c",
                "write -P 0x44 300001 200000",
                "-c",
                "write -z 1048576 131072",
                "-c",
                "write -z 1114112 1000",
                "-c",
                "discard 2097152 65536",
                "-c",
                "read -P 0x11 0 4096",
                "-c",
                "read -P 0x22 65000 1000",
                "-c",
                "read -P 0x33 131072 65536",
                "-c",
                "read -P 0x44 300001 200000",
                "-c",
                "read -P 0 1048576 131072",
                "-c",
                "read -P 0 2097152 65536",
                "-c",
                "flush",
            ])
            .arg(&uri),
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // Bytes around the writes still come from the base.
    let b = std::fs::read(&base).unwrap();
    let out = stdout(Command::new("qemu-io").args(["-f", "raw", "-r", "-c", "read -v 4096 16"]).arg(&uri));
    let expect: String = b[4096..4112].iter().map(|x| format!("{x:02x} ")).collect();
    assert!(out.replace('\n', " ").contains(expect.trim_end()), "{out} vs {expect}");
    // A second connection (same overlay) sees the data, through a restart too.
    drop(s);
    let s = Server::adhoc(&base, &state, &[]);
    let out = stdout(
        Command::new("qemu-io")
            .args(["-f", "raw", "-r", "-c", "read -P 0x44 300001 200000", "-c", "read -P 0x33 131072 65536"])
            .arg(s.uri(MAC_A_DASH)),
    );
    assert!(!out.contains("failed"), "{out}");
    // After the discard's hole punch the overlay is still clean.
    assert_eq!(s.stop(), 0);
    let c = stdout(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(state.join(format!("{MAC_A_DASH}.qcow2"))));
    assert!(c.contains("No errors were found") && !c.contains("leaked"), "{c}");
}

#[test]
fn test_nbdinfo_list_and_per_export() {
    require("nbdinfo");
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    make_raw_base(&base, SIZE, 1);
    let port = free_port();
    let cfg = dir.path().join("pxeroot.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
state_dir = "state"
[nbd]
listen = ["127.0.0.1:{port}"]
[images.debian]
path = "base.img"
description = "test base"
[clients."{MAC_A}"]
image = "debian"
"#
        ),
    )
    .unwrap();
    let s = Server::with_config(&cfg, port, dir.path());
    let list = stdout(Command::new("nbdinfo").args(["--list", &format!("nbd://127.0.0.1:{port}")]));
    assert!(list.contains("export=\"debian\""), "{list}");
    assert!(list.contains(&format!("export=\"{MAC_A}\"")), "{list}");
    let ro = stdout(Command::new("nbdinfo").arg(s.uri("debian")));
    assert!(ro.contains("is_read_only: true") && ro.contains(&format!("export-size: {SIZE}")), "{ro}");
    let rw = stdout(Command::new("nbdinfo").arg(s.uri(MAC_A)));
    for needle in [
        "is_read_only: false",
        "can_multi_conn: true",
        "can_flush: true",
        "can_fua: true",
        "can_trim: true",
        "can_zero: true",
        "base:allocation",
    ] {
        assert!(rw.contains(needle), "missing {needle}: {rw}");
    }
    // An unconfigured MAC is refused by policy, an unknown name is unknown.
    // (libnbd shows the server's message in its debug log.)
    let out = Command::new("nbdinfo").env("LIBNBD_DEBUG", "1").arg(s.uri(MAC_B)).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server error message: client 52:54:00:ab:cd:ef is not configured"), "{err}");
    let out = Command::new("nbdinfo").arg(s.uri("nosuch")).output().unwrap();
    assert!(!out.status.success());
    // The empty export name reads the only image.
    let empty = stdout(Command::new("nbdinfo").arg(format!("nbd://127.0.0.1:{port}")));
    assert!(empty.contains("is_read_only: true"), "{empty}");
}

#[test]
fn test_nbdcopy_round_trip_and_compare_untouched() {
    require("nbdcopy");
    require("qemu-img");
    let (d, base, state) = setup();
    let s = Server::adhoc(&base, &state, &[]);
    // Untouched client export is identical to the base.
    let out = stdout(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&base).arg(s.uri(MAC_A)));
    assert!(out.contains("Images are identical"), "{out}");
    // Copy a different image in, read it back out: identical.
    let other = d.path().join("other.img");
    make_raw_base(&other, SIZE, 99);
    run(Command::new("nbdcopy").arg(&other).arg(s.uri(MAC_A)));
    let back = d.path().join("back.img");
    run(Command::new("nbdcopy").arg(s.uri(MAC_A)).arg(&back));
    assert_eq!(sha256(&other), sha256(&back));
    let out = stdout(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&other).arg(s.uri(MAC_A)));
    assert!(out.contains("Images are identical"), "{out}");
}

#[test]
fn test_two_macs_isolated_and_base_never_changes() {
    require("qemu-io");
    let (_d, base, state) = setup();
    let before = sha256(&base);
    let s = Server::adhoc(&base, &state, &[]);
    run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0xaa 0 1048576"]).arg(s.uri(MAC_A)));
    run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0xbb 0 1048576"]).arg(s.uri(MAC_B)));
    let a = stdout(Command::new("qemu-io").args(["-f", "raw", "-r", "-c", "read -P 0xaa 0 1048576"]).arg(s.uri(MAC_A)));
    let b = stdout(Command::new("qemu-io").args(["-f", "raw", "-r", "-c", "read -P 0xbb 0 1048576"]).arg(s.uri(MAC_B)));
    assert!(!a.contains("failed") && !b.contains("failed"), "{a}{b}");
    // The read-only base export refuses writes.
    let out = Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 1 0 512"]).arg(s.uri("base")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() || text.contains("ermission") || text.contains("read-only") || text.contains("failed"), "{text}");
    assert_eq!(s.stop(), 0);
    assert_eq!(before, sha256(&base), "the base image changed");
}

#[test]
fn test_concurrent_writes_into_one_new_cluster_all_land() {
    let (_d, base, state) = setup();
    let s = Server::adhoc(&base, &state, &[]);
    let mut c = Client::connect(s.port, MAC_A).expect("connect");
    // 16 pipelined 4 KiB writes into the same fresh 64 KiB cluster, on two
    // connections at once, then read the cluster back.
    let mut c2 = Client::connect(s.port, MAC_A).expect("connect");
    for i in 0..16u64 {
        let cl = if i % 2 == 0 { &mut c } else { &mut c2 };
        cl.send(nbd_wire::Command::Write, 0, (1 << 20) + i * 4096, 4096, &vec![i as u8 + 1; 4096]).unwrap();
    }
    for _ in 0..8 {
        assert_eq!(c.recv(0).unwrap().1, 0);
        assert_eq!(c2.recv(0).unwrap().1, 0);
    }
    let (e, data) = c.read(1 << 20, 65536);
    assert_eq!(e, 0);
    for i in 0..16usize {
        assert!(data[i * 4096..(i + 1) * 4096].iter().all(|&b| b == i as u8 + 1), "piece {i} lost");
    }
}

#[test]
fn test_ext4_base_from_mkbase_served_intact_through_an_overlay() {
    require("mkfs.ext4");
    require("nbdcopy");
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("root");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/motd"), "served by pxeroot\n").unwrap();
    let base = d.path().join("root.qcow2");
    run(Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/images/mkbase")).arg(&tree).arg(&base).args(["32M", "qcow2"]));
    let s = Server::adhoc(&base, &d.path().join("state"), &[]);
    let copy = d.path().join("copy.img");
    run(Command::new("nbdcopy").arg(s.uri(MAC_A)).arg(&copy));
    run(Command::new("e2fsck").args(["-fn"]).arg(&copy));
    let motd = stdout(Command::new("debugfs").args(["-R", "cat /etc/motd"]).arg(&copy));
    assert!(motd.contains("served by pxeroot"), "{motd}");
}

#[test]
fn test_fio_nbd_engine_verifies_its_writes() {
    require("fio");
    let (_d, base, state) = setup();
    let s = Server::adhoc(&base, &state, &[]);
    // Mixed block sizes at depth 16: partial clusters, racing allocations,
    // then fio reads everything back and checks its checksums.
    let out = stdout(Command::new("fio").args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", s.uri(MAC_A)),
        "--rw=randwrite",
        "--bsrange=512-64k",
        "--iodepth=16",
        "--size=16m",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--randrepeat=0",
    ]));
    assert!(!out.contains("verify: bad"), "{out}");
    // The overlay is still clean after fio's writes.
    assert_eq!(s.stop(), 0);
    let c = stdout(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(state.join(format!("{MAC_A_DASH}.qcow2"))));
    assert!(c.contains("No errors were found"), "{c}");
}

/// `pxeroot nbd` on a slow disk: every fsync/fdatasync it makes sleeps
/// `sync_ms` first (tests/tools/slowsync.c, built into `dir`, preloaded).
fn slow_disk_server(dir: &std::path::Path, base: &std::path::Path, state: &std::path::Path, sync_ms: &str) -> Server {
    require("cc");
    let shim = dir.join("slowsync.so");
    run(Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/slowsync.c"))
        .arg("-ldl"));
    Server::adhoc_with_env(base, state, &[], &[("LD_PRELOAD", &shim.display().to_string()), ("SLOW_SYNC_MS", sync_ms)])
}

/// New overlays are made in parallel: each is several syncs (its base
/// record and the file, each with its directory), and with every sync
/// slowed to 100 ms, four clients attaching at once must not wait for one
/// another's (one at a time, the last would wait 1.6 s).
#[test]
fn test_overlays_of_different_clients_open_in_parallel() {
    require("nbdinfo");
    let (d, base, state) = setup();
    let s = slow_disk_server(d.path(), &base, &state, "100");
    let t = std::time::Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            Command::new("nbdinfo")
                .arg("--size")
                .arg(s.uri(&format!("52:54:00:00:01:0{i}")))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start nbdinfo")
        })
        .collect();
    for c in clients {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == SIZE.to_string());
    }
    let took = t.elapsed().as_secs_f64();
    eprintln!("four new overlays with 100 ms syncs: {took:.2} s");
    assert!(took < 1.2, "overlays were made one at a time: {took:.2} s");
    for i in 0..4 {
        assert!(state.join(format!("52-54-00-00-01-0{i}.qcow2")).exists());
    }
}

/// A FLUSH waits for the disk on the blocking pool, not on a runtime
/// worker: with every sync slowed to 50 ms (tests/tools/slowsync.c), two
/// clients that flush after every write leave a third client's reads
/// unhindered. Flushing inline, the bystander got under 100 reads/s.
#[test]
fn test_slow_flushes_do_not_stall_other_clients() {
    require("fio");
    let (d, base, state) = setup();
    let s = slow_disk_server(d.path(), &base, &state, "50");
    let fio = |mac: &str, rw: &str, secs: u32, extra: &[&str]| {
        let mut c = Command::new("fio");
        c.args([
            "--name=job",
            "--ioengine=nbd",
            &format!("--uri={}", s.uri(mac)),
            &format!("--rw={rw}"),
            "--bs=4k",
            "--iodepth=1",
            "--size=8m",
            &format!("--runtime={secs}"),
            "--time_based",
            "--output-format=json",
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
        c.spawn().expect("start fio")
    };
    let flushers: Vec<_> = [MAC_A, MAC_B].iter().map(|m| fio(m, "randwrite", 6, &["--fsync=1"])).collect();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let probe = fio("52:54:00:00:00:0c", "randread", 3, &[]).wait_with_output().unwrap();
    let flushed: Vec<_> = flushers.into_iter().map(|f| f.wait_with_output().unwrap()).collect();
    let iops = |out: &[u8], side: &str| -> f64 {
        let text = String::from_utf8_lossy(out);
        let json = &text[text.find('{').unwrap_or_else(|| panic!("no fio JSON:\n{text}"))..];
        let key = format!("\"{side}\" : {{");
        let at = json.find(&key).unwrap_or_else(|| panic!("no {side} in:\n{json}"));
        let rest = &json[at..];
        let v = &rest[rest.find("\"iops\" : ").expect("iops") + 9..];
        v[..v.find(',').expect("iops value")].trim().parse().expect("iops number")
    };
    let reads = iops(&probe.stdout, "read");
    let writes: Vec<f64> = flushed.iter().map(|f| iops(&f.stdout, "write")).collect();
    eprintln!("bystander {reads:.0} reads/s while two clients flushed ({writes:?} write+flush/s) on a 50 ms-sync disk");
    assert!(writes.iter().all(|&w| w > 1.0), "the flushing clients made no progress: {writes:?}");
    assert!(reads > 1000.0, "a third client's reads stalled behind the flushes: {reads:.0}/s");
}

#[test]
fn test_block_status_seen_by_nbdinfo_map() {
    require("nbdinfo");
    require("qemu-io");
    let (_d, base, state) = setup();
    let s = Server::adhoc(&base, &state, &[]);
    run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 1 0 65536", "-c", "write -z -u 1048576 1048576"]).arg(s.uri(MAC_A)));
    let map = stdout(Command::new("nbdinfo").arg("--map").arg(s.uri(MAC_A)));
    // Written data, then base data, then an unmapped zero range (hole,zero).
    let lines: Vec<&str> = map.lines().collect();
    assert!(lines.iter().any(|l| l.trim_start().starts_with("1048576") && l.contains("1048576") && l.contains("hole,zero")), "{map}");
    assert!(lines.iter().any(|l| l.trim_start().starts_with("0") && l.contains("data")), "{map}");
    // REQ_ONE-style total coverage: extents add up to the export size.
    let total: u64 = lines.iter().filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).sum();
    assert_eq!(total, SIZE as u64, "{map}");
}

#[test]
fn test_many_clients_at_once_each_sees_only_its_own_data() {
    require("qemu-io");
    let (_d, base, state) = setup();
    let s = Server::adhoc(&base, &state, &[]);
    let handles: Vec<_> = (0..8u8)
        .map(|i| {
            let uri = s.uri(&format!("52:54:00:00:01:{i:02x}"));
            std::thread::spawn(move || {
                let p = format!("{}", 0x10 + i);
                let out = stdout(
                    Command::new("qemu-io")
                        .args(["-f", "raw"])
                        .args([
                            "-c",
                            &format!("write -P {p} 0 2M"),
                            "-c",
                            &format!("write -P {p} 5000000 777777"),
                            "-c",
                            &format!("read -P {p} 0 2M"),
                            "-c",
                            &format!("read -P {p} 5000000 777777"),
                        ])
                        .arg(&uri),
                );
                assert!(!out.contains("failed"), "client {i}: {out}");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    for i in 0..8u8 {
        let out = stdout(
            Command::new("qemu-io")
                .args(["-f", "raw", "-r", "-c", &format!("read -P {} 0 2M", 0x10 + i)])
                .arg(s.uri(&format!("52:54:00:00:01:{i:02x}"))),
        );
        assert!(!out.contains("failed"), "client {i} after all: {out}");
    }
}

#[test]
fn test_cache_and_zero_length_requests_succeed() {
    let (_d, base, state) = setup();
    let s = Server::adhoc(&base, &state, &[]);
    let mut c = Client::connect(s.port, MAC_A).unwrap();
    assert_ne!(c.flags & nbd_wire::consts::TFLAG_SEND_CACHE, 0);
    c.send(nbd_wire::Command::Cache, 0, 0, 8 << 20, &[]).unwrap();
    assert_eq!(c.recv(0).unwrap().1, 0);
    c.send(nbd_wire::Command::WriteZeroes, 0, 4096, 0, &[]).unwrap();
    assert_eq!(c.recv(0).unwrap().1, 0);
    c.send(nbd_wire::Command::Write, nbd_wire::consts::CMD_FLAG_FUA, 0, 512, &[3u8; 512]).unwrap();
    assert_eq!(c.recv(0).unwrap().1, 0);
    assert_eq!(c.read(0, 512), (0, vec![3u8; 512]));
}

#[test]
fn test_session_summary_counts_what_the_client_asked() {
    require("qemu-io");
    let (_d, base, state) = setup();
    let s = Server::adhoc(&base, &state, &[]);
    let out = stdout(
        Command::new("qemu-io")
            .args(["-f", "raw"])
            .args(["-c", "write -P 0x5a 0 65536", "-c", "read -P 0x5a 0 4096", "-c", "read 65536 8192", "-c", "flush"])
            .arg(s.uri(MAC_A)),
    );
    assert!(!out.contains("failed"), "{out}");
    // A read past the end (qemu-io would not send one) is refused, and
    // counted as such.
    let size = std::fs::metadata(&base).unwrap().len();
    let mut c = Client::connect(s.port, MAC_A).unwrap();
    assert_ne!(c.read(size, 512).0, 0);
    c.disconnect();
    let log_path = s.log.clone();
    assert_eq!(s.stop(), 0);
    let log = std::fs::read_to_string(log_path).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("NBD session closed")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    // The two sessions may close in either order in the log: qemu-io's is
    // the one with the write.
    let (first, second) = if lines[0].contains("writes=1 ") { (lines[0], lines[1]) } else { (lines[1], lines[0]) };
    for field in ["reads=2 ", "read_bytes=12288 ", "writes=1 ", "written_bytes=65536 ", "refused=0"] {
        assert!(first.contains(field), "{field} missing from the summary: {first}");
    }
    assert!(!first.contains("flushes=0 "), "the flush was not counted: {first}");
    assert!(second.contains("reads=0 ") && second.contains("refused=1"), "{second}");
}

/// The overlay's disk usage in bytes (allocated blocks, not its length).
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn test_write_zeroes_gives_blocks_back_unless_no_hole() {
    require("qemu-io");
    let (_d, base, state) = setup();
    let s = Server::adhoc(&base, &state, &[]);
    let overlay = state.join(format!("{MAC_A_DASH}.qcow2"));
    let io = |cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        let out = stdout(c.arg(s.uri(MAC_A)));
        assert!(!out.contains("failed") && !out.contains("error"), "{out}");
    };
    io(&["write -P 0x77 0 2M", "flush"]);
    let full = allocated(&overlay);
    // qemu-io's -u (may unmap) leaves NBD's NO_HOLE flag off: the blocks go.
    io(&["write -z -u 0 1M", "flush"]);
    let after_unmap = allocated(&overlay);
    assert!(after_unmap + (1 << 20) <= full, "blocks kept: {full} -> {after_unmap}");
    // Without -u, qemu sends NO_HOLE: the zeros keep their blocks.
    io(&["write -z 1M 1M", "flush"]);
    assert_eq!(allocated(&overlay), after_unmap, "NO_HOLE zeroing freed blocks");
    io(&["read -P 0 0 2M", "write -P 0x55 4096 4096", "read -P 0x55 4096 4096", "read -P 0 8192 1040384"]);
    assert_eq!(s.stop(), 0);
    let c = stdout(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(&overlay));
    assert!(c.contains("No errors were found") && !c.contains("leaked"), "{c}");
}
