//! `pxeroot initramfs` judged by cpio(1), zstd(1) and lz4(1): the archive lists and
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
    build_with(out, &["--compress", compress])
}

fn build_with(out: &Path, args: &[&str]) -> String {
    stdout(&mut initramfs_command(&kernel_modules(), out, args))
}

/// `pxeroot initramfs` from the module tree `modules` into `out`, with
/// `args`, and the static pxeroot-init; with no firmware unless `args`
/// names a firmware directory (the host's /lib/firmware varies).
fn initramfs_command(modules: &Path, out: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(["initramfs", "--kernel-modules"]).arg(modules).arg("-o").arg(out).args(args).arg("--init").arg(init_binary());
    if !args.contains(&"--firmware-dir") {
        c.arg("--firmware-dir").arg(out.with_extension("no-firmware"));
    }
    c
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
    for needle in [
        "init",
        "dev/console",
        "dev/nbd0",
        "etc/pxeroot/modules",
        "/kernel/drivers/block/nbd.ko",
        "/kernel/fs/ext4/ext4.ko",
        "/kernel/drivers/net/virtio_net.ko",
    ] {
        assert!(list.lines().any(|l| l.ends_with(needle) || l == needle), "{needle} missing:\n{list}");
    }
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("cpio").args(["-idm", "--quiet", "--no-absolute-filenames", "-F"]).arg(&raw).current_dir(&x).stderr(Stdio::null()));
    assert_eq!(std::fs::read(x.join("init")).unwrap(), std::fs::read(init_binary()).unwrap(), "/init differs from pxeroot-init");
    let order = std::fs::read_to_string(x.join("etc/pxeroot/modules")).unwrap();
    let groups = modlist::parse(&order).unwrap();
    let modules = kernel_modules();
    for m in groups.iter().flat_map(|g| &g.modules) {
        let inside = x.join(m.path.trim_start_matches('/'));
        let rel = m.path.splitn(5, '/').nth(4).expect("path under /lib/modules/<release>/");
        assert_eq!(std::fs::read(&inside).unwrap(), std::fs::read(modules.join(rel)).unwrap(), "{} differs", m.path);
    }
    // The root's modules always load, each with its dependencies in a
    // group of its own (pxeroot-init loads such groups side by side), nbd
    // with one device; each NIC driver's group loads when a device matches
    // its aliases.
    let pos = |g: &modlist::Group, m: &str| {
        g.modules.iter().position(|x| x.path.ends_with(&format!("/{m}.ko"))).unwrap_or_else(|| panic!("{m} missing:\n{order}"))
    };
    let (always, drivers): (Vec<_>, Vec<_>) = groups.iter().partition(|g| g.when.is_empty());
    fn group_in<'a>(list: &[&'a modlist::Group], m: &str) -> &'a modlist::Group {
        list.iter()
            .find(|g| g.modules.last().is_some_and(|x| x.path.ends_with(&format!("/{m}.ko"))))
            .unwrap_or_else(|| panic!("no group ends with {m}: {list:?}"))
    }
    let (nbd, ext4) = (group_in(&always, "nbd"), group_in(&always, "ext4"));
    assert_eq!(always.len(), 2, "one always group per root module:\n{order}");
    assert_eq!(nbd.modules.len(), 1, "{order}");
    assert_eq!(nbd.modules[0].params, ["nbds_max=1"]);
    assert!(pos(ext4, "crc32c_generic") < pos(ext4, "jbd2") && pos(ext4, "jbd2") < pos(ext4, "ext4"), "soft dependency order:\n{order}");
    let group_of = |m: &str| group_in(&drivers, m);
    // virtio-net on PCI: the net driver loads before its PCI transport, in
    // one group that a virtio network device (transitional or modern)
    // wants and other virtio devices (a disk, a balloon) do not.
    let vpci = group_of("virtio_pci");
    for (alias, want) in [
        ("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", true),
        ("pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00", true),
        ("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", false),
        ("pci:v00001AF4d00001002sv00001AF4sd00000005bc00scFFi00", false),
    ] {
        assert_eq!(modlist::wanted(vpci, &[alias.into()]), want, "{alias}: {:?}", vpci.when);
    }
    assert!(pos(vpci, "virtio") < pos(vpci, "virtio_pci") && pos(vpci, "virtio_ring") < pos(vpci, "virtio_pci"), "{order}");
    assert!(pos(vpci, "failover") < pos(vpci, "virtio_net") && pos(vpci, "virtio_net") < pos(vpci, "virtio_pci"), "{order}");
    let vnet = group_of("virtio_net");
    assert!(modlist::wanted(vnet, &["virtio:d00000001v00001AF4".into()]) && !modlist::wanted(vnet, &["virtio:d00000002v00001AF4".into()]));
    assert!(pos(vnet, "failover") < pos(vnet, "net_failover") && pos(vnet, "net_failover") < pos(vnet, "virtio_net"), "{order}");
    assert!(modlist::wanted(group_of("e1000"), &["pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00".into()]));

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
    // The default for this kernel (its config beside the tree has
    // CONFIG_RD_ZSTD=y) is zstd: the same bytes.
    let auto = d.path().join("auto.img");
    let areport = build_with(&auto, &[]);
    assert!(areport.trim_end().ends_with(", zstd)"), "{areport}");
    assert_eq!(std::fs::read(&auto).unwrap(), std::fs::read(&z).unwrap());
    // LZ4's legacy frame, as lz4(1) reads it: the same archive.
    require("lz4");
    let l = d.path().join("a.lz4");
    let lreport = build(&l, "lz4");
    assert_eq!(std::fs::read(&l).unwrap()[..4], [0x02, 0x21, 0x4c, 0x18], "not LZ4's legacy frame");
    let unl = run(Command::new("lz4").args(["-d", "-c", "-q"]).arg(&l)).stdout;
    assert!(unl == std::fs::read(&raw).unwrap(), "lz4 -d gives another archive");
    eprintln!("{}", lreport.lines().last().unwrap_or_default());
}

/// `--compress auto` reads the kernel's config where its package left it
/// (`<root>/boot/config-<release>`): a kernel without CONFIG_RD_ZSTD gets
/// gzip, and an explicit zstd is refused, naming the file and the key.
#[test]
fn test_initramfs_compression_follows_the_kernels_config() {
    require("gzip");
    require("cpio");
    let d = tempfile::tempdir().unwrap();
    let real = std::fs::canonicalize(kernel_modules()).unwrap();
    let release = real.file_name().unwrap().to_str().unwrap().to_string();
    let tree = d.path().join("root/lib/modules").join(&release);
    std::fs::create_dir_all(&tree).unwrap();
    for e in std::fs::read_dir(&real).unwrap() {
        let e = e.unwrap();
        std::os::unix::fs::symlink(e.path(), tree.join(e.file_name())).unwrap();
    }
    let config = d.path().join("root/boot").join(format!("config-{release}"));
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "CONFIG_RD_GZIP=y\nCONFIG_RD_LZ4=y\n# CONFIG_RD_ZSTD is not set\n").unwrap();
    let out = d.path().join("i.img");
    let build = |extra: &[&str]| initramfs_command(&tree, &out, &[&["--nics", "virtio"], extra].concat()).output().unwrap();
    let auto = build(&[]);
    let report = String::from_utf8_lossy(&auto.stdout);
    assert!(auto.status.success() && report.trim_end().ends_with(", gzip)"), "{report}");
    let list = stdout(Command::new("sh").arg("-c").arg(format!("gzip -dc {} | cpio -t --quiet", out.display())));
    assert!(list.lines().any(|l| l.ends_with("/kernel/fs/ext4/ext4.ko")), "{list}");
    let refused = build(&["--compress", "zstd"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "zstd was not refused");
    assert!(err.contains(&config.display().to_string()) && err.contains("CONFIG_RD_ZSTD=y") && err.contains("--compress auto"), "{err}");
}

/// `--nics` carries only the chosen NIC drivers, each still in a group of
/// its own; the root's modules are there whatever the choice.
#[test]
fn test_initramfs_nics_chooses_the_drivers() {
    require("cpio");
    let d = tempfile::tempdir().unwrap();
    let all = d.path().join("all.cpio");
    build(&all, "none");
    let some = d.path().join("some.cpio");
    let report = build_with(&some, &["--compress", "none", "--nics", "virtio,e1000"]);
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("cpio").args(["-idm", "--quiet", "--no-absolute-filenames", "-F"]).arg(&some).current_dir(&x).stderr(Stdio::null()));
    let groups = modlist::parse(&std::fs::read_to_string(x.join("etc/pxeroot/modules")).unwrap()).unwrap();
    let last: Vec<&str> =
        groups.iter().map(|g| g.modules.last().unwrap().path.rsplit('/').next().unwrap().trim_end_matches(".ko")).collect();
    assert_eq!(last, ["ext4", "nbd", "virtio_pci", "virtio_net", "e1000"], "{report}");
    assert!(!report.contains("e1000e") && !report.contains("r8169") && !report.contains("igb"), "{report}");
    let (a, s) = (std::fs::metadata(&all).unwrap().len(), std::fs::metadata(&some).unwrap().len());
    eprintln!("initramfs cpio: all NICs {a} bytes, virtio + e1000 {s} bytes");
    assert!(s < a * 3 / 4, "{s} vs {a}");

    // igc and tg3 only when asked for (not in the default set), each in a
    // group of its own that loads by its device's aliases, tg3's after its
    // hard dependency libphy.
    let report = build(&all, "none");
    assert!(!report.contains("module igc") && !report.contains("module tg3"), "{report}");
    let chosen = d.path().join("chosen.cpio");
    build_with(&chosen, &["--compress", "none", "--nics", "igc,tg3"]);
    let y = d.path().join("y");
    std::fs::create_dir(&y).unwrap();
    run(Command::new("cpio").args(["-idm", "--quiet", "--no-absolute-filenames", "-F"]).arg(&chosen).current_dir(&y).stderr(Stdio::null()));
    let groups = modlist::parse(&std::fs::read_to_string(y.join("etc/pxeroot/modules")).unwrap()).unwrap();
    let names = |g: &modlist::Group| -> Vec<String> {
        g.modules.iter().map(|m| m.path.rsplit('/').next().unwrap().trim_end_matches(".ko").to_string()).collect()
    };
    let nic: Vec<Vec<String>> = groups.iter().filter(|g| !g.when.is_empty()).map(names).collect();
    assert_eq!(nic, [vec!["igc".to_string()], vec!["libphy".to_string(), "tg3".to_string()]], "{groups:?}");
    assert!(groups.iter().filter(|g| !g.when.is_empty()).all(|g| g.when.iter().any(|a| a.starts_with("pci:v0000"))), "{groups:?}");
}

/// The NIC drivers' firmware files that the firmware directory has go in
/// where the kernel looks (as found: plain or compressed); a driver whose
/// firmware is not there at all is named, with the package that has it.
#[test]
fn test_initramfs_carries_the_drivers_firmware() {
    require("cpio");
    let d = tempfile::tempdir().unwrap();
    let fw = d.path().join("firmware");
    std::fs::create_dir_all(fw.join("rtl_nic")).unwrap();
    std::fs::create_dir_all(fw.join("tigon")).unwrap();
    std::fs::write(fw.join("rtl_nic/rtl8125b-2.fw"), b"realtek patch").unwrap();
    std::fs::write(fw.join("tigon/tg3_tso.bin.zst"), b"zstd bytes").unwrap();
    std::fs::write(fw.join("unrelated.bin"), b"not named by any module").unwrap();
    let out = d.path().join("fw.cpio");
    let dir = fw.to_str().unwrap();
    let report = build_with(&out, &["--compress", "none", "--nics", "virtio,r8169,tg3", "--firmware-dir", dir]);
    assert!(report.contains("firmware rtl_nic/rtl8125b-2.fw") && report.contains("firmware tigon/tg3_tso.bin.zst"), "{report}");
    assert!(!report.contains("none under"), "{report}");
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("cpio").args(["-idm", "--quiet", "--no-absolute-filenames", "-F"]).arg(&out).current_dir(&x).stderr(Stdio::null()));
    assert_eq!(std::fs::read(x.join("lib/firmware/rtl_nic/rtl8125b-2.fw")).unwrap(), b"realtek patch");
    assert_eq!(std::fs::read(x.join("lib/firmware/tigon/tg3_tso.bin.zst")).unwrap(), b"zstd bytes");
    assert!(!x.join("lib/firmware/unrelated.bin").exists());
    // None there: said, and the build goes on.
    let report = build_with(&d.path().join("none.cpio"), &["--compress", "none", "--nics", "virtio,r8169"]);
    assert!(
        report.contains("(r8169 names ") && report.contains(" firmware files, none under ") && report.contains("install firmware-realtek"),
        "{report}"
    );
    assert!(!report.contains("  firmware "), "{report}");
}

/// A soft dependency that a built-in module provides needs no module:
/// btrfs's on `sha256` (the kernel has sha256_generic built in) must not
/// pull in sha256_ssse3, which fails with ENODEV on a CPU without SSSE3
/// (QEMU's default one) and would stop the boot. Its other soft
/// dependencies resolve to generic modules.
#[test]
fn test_initramfs_soft_dependencies_built_in_need_no_module() {
    let d = tempfile::tempdir().unwrap();
    let report = build_with(&d.path().join("b.cpio"), &["--compress", "none", "--modules", "btrfs", "--nics", "virtio"]);
    assert!(report.contains("module btrfs"), "{report}");
    assert!(report.contains("module blake2b_generic") && report.contains("module xxhash_generic"), "{report}");
    assert!(!report.contains("sha256"), "{report}");
}

#[test]
fn test_initramfs_errors_are_clear() {
    let d = tempfile::tempdir().unwrap();
    // `pxeroot initramfs` with these arguments must fail: its stderr.
    let fails = |modules: &Path, extra: &[&str]| -> String {
        let out = initramfs_command(modules, &d.path().join("x"), extra).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{err}");
        err
    };
    // Not a module tree.
    let err = fails(d.path(), &[]);
    assert!(err.contains("cannot read") && err.contains("kernel"), "{err}");
    // An extra module that does not exist.
    let err = fails(&kernel_modules(), &["--modules", "no_such_module"]);
    assert!(err.contains("no_such_module"), "{err}");
    // A NIC it does not know: the error lists the ones it does.
    let err = fails(&kernel_modules(), &["--nics", "virtio,tulip"]);
    assert!(err.contains("tulip") && err.contains("e1000e"), "{err}");
}

/// A tree shaped like a distribution's: compressed modules (.ko.xz,
/// .ko.zst), modules.dep and modules.softdep present.
#[test]
fn test_initramfs_from_compressed_tree_with_modules_dep() {
    require("xz");
    require("zstd");
    require("cpio");
    let d = tempfile::tempdir().unwrap();
    let src = kernel_modules();
    let tree = d.path().join("6.1.0-test");
    let mods = [
        ("kernel/drivers/block/nbd.ko", "xz"),
        ("kernel/fs/ext4/ext4.ko", "zst"),
        ("kernel/fs/jbd2/jbd2.ko", "xz"),
        ("kernel/fs/mbcache.ko", "zst"),
        ("kernel/lib/crc16.ko", "xz"),
        ("kernel/crypto/crc32c_generic.ko", "xz"),
        ("kernel/drivers/net/ethernet/intel/e1000/e1000.ko", "zst"),
    ];
    for (rel, comp) in mods {
        let dst = tree.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src.join(rel), &dst).unwrap();
        match comp {
            "xz" => run(Command::new("xz").args(["-q", "--check=crc32"]).arg(&dst)),
            _ => run(Command::new("zstd").args(["-q", "--rm"]).arg(&dst)),
        };
    }
    std::fs::write(
        tree.join("modules.dep"),
        "kernel/drivers/block/nbd.ko.xz:\nkernel/fs/ext4/ext4.ko.zst: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.zst kernel/lib/crc16.ko.xz\n\
         kernel/fs/jbd2/jbd2.ko.xz:\nkernel/fs/mbcache.ko.zst:\nkernel/lib/crc16.ko.xz:\nkernel/crypto/crc32c_generic.ko.xz:\nkernel/drivers/net/ethernet/intel/e1000/e1000.ko.zst:\n",
    )
    .unwrap();
    std::fs::write(tree.join("modules.softdep"), "# Soft dependencies\nsoftdep ext4 pre: crc32c_generic\n").unwrap();
    let out = d.path().join("i.cpio");
    let report = stdout(&mut initramfs_command(&tree, &out, &["--compress", "none"]));
    assert!(report.contains("(no virtio_net in this kernel: skipped)"), "{report}");
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("cpio").args(["-idm", "--quiet", "--no-absolute-filenames", "-F"]).arg(&out).current_dir(&x).stderr(Stdio::null()));
    let order = std::fs::read_to_string(x.join("etc/pxeroot/modules")).unwrap();
    let groups = modlist::parse(&order).unwrap();
    let names: Vec<&str> = groups.iter().flat_map(|g| &g.modules).map(|m| m.path.rsplit('/').next().unwrap_or_default()).collect();
    assert_eq!(names, ["jbd2.ko", "mbcache.ko", "crc16.ko", "crc32c_generic.ko", "ext4.ko", "nbd.ko", "e1000.ko"], "{order}");
    // Stored decompressed, byte-identical to the kernel's originals.
    for (rel, _) in mods {
        let inside = x.join("lib/modules/6.1.0-test").join(rel);
        assert_eq!(std::fs::read(&inside).unwrap(), std::fs::read(src.join(rel)).unwrap(), "{rel}");
    }
}
