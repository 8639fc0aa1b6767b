//! A full disk under the state directory: the client gets ENOSPC, the
//! overlay stays consistent (qemu-img check), acknowledged data stays, and
//! the daemon goes on serving.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MAC: &str = "52:54:00:00:0f:01";

/// A small tmpfs mounted for the test and unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "pxeroot-test"]).arg(at));
        SmallFs(at.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn test_full_disk_gives_enospc_and_keeps_overlay_consistent() {
    assert!(nix::unistd::geteuid().is_root(), "this test mounts a small tmpfs: run the suite as root (CI does)");
    require("qemu-img");
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.img");
    make_raw_base(&base, 64 << 20, 12);
    let fs = SmallFs::mount(&d.path().join("small"), "4m");
    let state = fs.0.join("state");
    let s = Server::adhoc(&base, &state, &[]);
    let mut c = Client::connect(s.port, MAC).unwrap();
    // Fill the disk with partial-cluster writes (each allocates a cluster).
    let mut acked = Vec::new();
    let mut enospc = None;
    for i in 0..512u64 {
        let off = i * 65536 + 512;
        let e = c.write(off, &pattern(i, 4096));
        match e {
            0 => acked.push(i),
            28 => {
                enospc = Some(i);
                break;
            }
            other => panic!("write {i}: error {other}, want 0 or ENOSPC"),
        }
    }
    let full_at = enospc.expect("the 4 MiB filesystem never filled up");
    assert!(acked.len() > 10, "too few writes before ENOSPC");
    // Later writes to allocated clusters still work; flush works.
    assert_eq!(c.write(512, &pattern(0, 4096)), 0);
    assert_eq!(c.flush(), 0);
    for &i in &acked {
        let (e, data) = c.read(i * 65536 + 512, 4096);
        assert_eq!(e, 0);
        assert!(data == pattern(i, 4096), "write {i} lost");
    }
    // Other clients are still served (reads of the base need no space).
    let mut ro = Client::connect(s.port, "base").unwrap();
    assert_eq!(ro.read(0, 4096).0, 0);
    c.disconnect();
    assert_eq!(s.stop(), 0);
    let out = stdout(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(state.join("52-54-00-00-0f-01.qcow2")));
    assert!(out.contains("No errors were found"), "{out}");
    eprintln!("disk full after {full_at} cluster allocations");
}
