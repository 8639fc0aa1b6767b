//! `pxeroot initramfs` judged by cpio(1) and zstd(1): the archive lists and
//! unpacks byte-identically, the same input gives the same bytes, modules
//! come in dependency order (soft dependencies included), and the sizes are
//! printed for BENCHMARKS.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

fn kernel_modules() -> PathBuf {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/guest-kernel"));
    assert!(d.join("ready").exists(), "no guest kernel in {}: run tests/run-all, which fetches it", d.display());
    d.join("modules")
}

fn init_binary() -> PathBuf {
    let out = stdout(&mut Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/boot/pxeroot-init/build-static")));
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(out.trim())
}

fn build(out: &Path, compress: &str) -> String {
    stdout(Command::new(bin()).args(["initramfs", "--kernel-modules"]).arg(kernel_modules()).arg("-o").arg(out).args(["--compress", compress]).arg("--init").arg(init_binary()))
}

#[test]
fn test_initramfs_lists_unpacks_identically_and_is_reproducible() {
    require("cpio");
    require("zstd");
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("a.cpio");
    let report = build(&raw, "none");
    build(&d.path().join("b.cpio"), "none");
    assert_eq!(std::fs::read(&raw).unwrap(), std::fs::read(d.path().join("b.cpio")).unwrap(), "same input, different bytes");

    let list = stdout(Command::new("cpio").args(["-t", "--quiet", "-F"]).arg(&raw));
    for needle in ["init", "dev/console", "dev/nbd0", "etc/pxeroot/modules", "/kernel/drivers/block/nbd.ko", "/kernel/fs/ext4/ext4.ko", "/kernel/drivers/net/virtio_net.ko"] {
        assert!(list.lines().any(|l| l.ends_with(needle) || l == needle), "{needle} missing:\n{list}");
    }
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("cpio").args(["-idm", "--quiet", "--no-absolute-filenames", "-F"]).arg(&raw).current_dir(&x).stderr(Stdio::null()));
    assert_eq!(std::fs::read(x.join("init")).unwrap(), std::fs::read(init_binary()).unwrap(), "/init differs from pxeroot-init");
    let order = std::fs::read_to_string(x.join("etc/pxeroot/modules")).unwrap();
    let modules = kernel_modules();
    for line in order.lines() {
        let inside = x.join(line.trim_start_matches('/'));
        let rel = line.splitn(5, '/').nth(4).expect("path under /lib/modules/<release>/");
        assert_eq!(std::fs::read(&inside).unwrap(), std::fs::read(modules.join(rel)).unwrap(), "{line} differs");
    }
    let pos = |m: &str| order.lines().position(|l| l.ends_with(&format!("/{m}.ko"))).unwrap_or_else(|| panic!("{m} missing:\n{order}"));
    assert!(pos("crc32c_generic") < pos("jbd2") && pos("jbd2") < pos("ext4"), "soft dependency order:\n{order}");
    assert!(pos("virtio") < pos("virtio_pci") && pos("virtio_ring") < pos("virtio_net") && pos("failover") < pos("net_failover"), "{order}");

    // zstd: the same archive, compressed; sizes within the target.
    let z = d.path().join("a.zst");
    let zreport = build(&z, "zstd");
    let unz = d.path().join("unz.cpio");
    run(Command::new("zstd").args(["-d", "-q", "-f", "-o"]).arg(&unz).arg(&z));
    assert_eq!(std::fs::read(&unz).unwrap(), std::fs::read(&raw).unwrap());
    let init_size = std::fs::metadata(init_binary()).unwrap().len();
    let zsize = std::fs::metadata(&z).unwrap().len();
    eprintln!("pxeroot-init static binary: {init_size} bytes; default initramfs (zstd -19): {zsize} bytes");
    eprintln!("{}", zreport.lines().last().unwrap_or_default());
    assert!(zsize <= 1_500_000, "initramfs is {zsize} bytes, over the 1.5 MB target");
    assert!(report.contains("module nbd"), "{report}");
}

#[test]
fn test_initramfs_errors_are_clear() {
    let d = tempfile::tempdir().unwrap();
    // Not a module tree.
    let out = Command::new(bin()).args(["initramfs", "--kernel-modules"]).arg(d.path()).arg("-o").arg(d.path().join("x")).arg("--init").arg(init_binary()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read") && err.contains("kernel"), "{err}");
    // An extra module that does not exist.
    let out = Command::new(bin()).args(["initramfs", "--kernel-modules"]).arg(kernel_modules()).arg("-o").arg(d.path().join("x")).args(["--modules", "no_such_module"]).arg("--init").arg(init_binary()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no_such_module"), "{err}");
}
