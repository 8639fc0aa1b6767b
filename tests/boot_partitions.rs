//! Roots on partitioned disks, booted directly: a GPT or MBR (logical)
//! partition named by `pxeroot.partition`, root=PARTUUID=, UUID=, LABEL=
//! or the Discoverable Partitions root type; a whole-disk btrfs found by
//! its superblock; a wrong setting explained on the console.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::boot::*;
use common::netns::{Netns, SERVER_IP};
use common::qemu::{Booted, Client};
use common::*;

/// Where the root filesystem starts in the partitioned test disk.
const ROOT_PARTITION_OFFSET: u64 = 10 << 20;

/// GPT partition types the tests use.
const LINUX_DATA_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

const DPS_ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// A disk image with a partition table, as distribution images come: GPT,
/// partition 1 a small EFI system partition (empty), partition 2 the test
/// root from 10 MiB on.
fn partitioned_disk(dir: &Path) -> PathBuf {
    let root = root_image(dir);
    gpt_disk(dir, &[(LINUX_DATA_TYPE, None, &root)])
}

/// A GPT disk: partition 1 a small EFI system partition (empty), then one
/// partition per `(type, unique GUID, filesystem image)` in `roots` (all
/// images the same size), partition 2 from ROOT_PARTITION_OFFSET on, each
/// next one after the last.
fn gpt_disk(dir: &Path, roots: &[(&str, Option<&str>, &Path)]) -> PathBuf {
    let size = std::fs::metadata(roots[0].2).unwrap().len();
    let span = size + (1 << 20);
    let mut table = "label: gpt\nstart=2048, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n".to_string();
    let mut images = Vec::new();
    for (i, (kind, uuid, image)) in roots.iter().enumerate() {
        let start = ROOT_PARTITION_OFFSET + span * i as u64;
        table += &format!("start={}, size={}, type={kind}", start / 512, size / 512);
        if let Some(u) = uuid {
            table += &format!(", uuid={u}");
        }
        table.push('\n');
        images.push((start, *image));
    }
    sfdisk_disk(&dir.join("disk.img"), ROOT_PARTITION_OFFSET + span * roots.len() as u64, &table, &images)
}

/// A disk image of `len` bytes partitioned by sfdisk's `script`, with each
/// `(offset, image)` written in at its offset.
fn sfdisk_disk(disk: &Path, len: u64, script: &str, images: &[(u64, &Path)]) -> PathBuf {
    use std::io::{Seek, SeekFrom, Write};
    require("sfdisk");
    std::fs::File::create(disk).unwrap().set_len(len).unwrap();
    let mut sfdisk = Command::new("sfdisk").args(["-q"]).arg(disk).stdin(Stdio::piped()).spawn().unwrap();
    sfdisk.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");
    let mut f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    for (offset, image) in images {
        f.seek(SeekFrom::Start(*offset)).unwrap();
        f.write_all(&std::fs::read(image).unwrap()).unwrap();
    }
    disk.to_path_buf()
}

/// A base with a partition table: `pxeroot.partition=2` boots the root on
/// its second partition, and its writes land there in the overlay. Without
/// the setting, or with one the disk does not have, pxeroot-init says which
/// partitions there are and what to set.
#[test]
fn test_root_on_a_partition_boots_and_a_wrong_setting_is_explained() {
    let d = tempfile::tempdir().unwrap();
    let disk = partitioned_disk(d.path());
    let base_sum = sha256(&disk);
    let initrd = initramfs(d.path());
    let kernel = kernel_dir().join("vmlinuz");
    let ns = Netns::new("part");
    let state = d.path().join("state");
    let server = start_server(&ns, &disk, &state, &d.path().join("pxeroot.log"));
    let fatal = |extra: &str| {
        let Booted { lines, .. } = Client::new(&ns)
            .kernel(&kernel, &initrd, &format!("{} {extra}", cmdline(SERVER_IP, MAC, "netlink")))
            .beside(&d.path().join("pxeroot.log"))
            .run(|l| l.contains("FATAL"));
        let console = lines.join("\n");
        assert!(console.contains("FATAL") && !console.contains("Kernel panic"), "{console}");
        console
    };
    let none = fatal("");
    assert!(
        none.contains("/dev/nbd0 holds a partition table (partitions 1, 2)") && none.contains("pxeroot.partition=N"),
        "no hint about the partitions:\n{none}"
    );
    let wrong = fatal("pxeroot.partition=3");
    assert!(wrong.contains("/dev/nbd0 has no partition 3; it has 1, 2"), "{wrong}");

    // The failures above attached over netlink; this boot attaches with the
    // ioctls, whose keeper holds the disk open while the table is re-read.
    let Booted { lines, exited, .. } = Client::new(&ns)
        .kernel(&kernel, &initrd, &format!("{} pxeroot.partition=2", cmdline(SERVER_IP, MAC, "ioctl")))
        .beside(&d.path().join("pxeroot.log"))
        .run(|l| l.contains("FATAL"));
    let console = lines.join("\n");
    assert!(console.contains("find partition 2 (/dev/nbd0p2): ok") && console.contains("mount /dev/nbd0p2 (ext4)"), "{console}");
    assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "{console}");
    drop(server);
    let marker = Flat::of(d.path(), &state.join(format!("{STEM}.qcow2"))).cat_at(ROOT_PARTITION_OFFSET, "/marker");
    assert!(marker.contains("written by the diskless client"), "{marker}");
    assert_eq!(sha256(&disk), base_sum, "the base image changed");
}

/// With no `partition` set, pxeroot-init finds the root on a GPT disk by
/// itself: the partition of the Discoverable Partitions root type (as
/// systemd's gpt-auto does), or the one `root=PARTUUID=`, `root=UUID=` or
/// `root=LABEL=` names; a PARTUUID or label the disk lacks stops the boot
/// with what the disk has.
#[test]
fn test_root_partition_found_by_gpt_type_partuuid_uuid_or_label() {
    const DPS_ROOT: &str = "6b2c1a4e-0d5f-4c7a-9e21-3f8b5c6d7e01";
    const OTHER: &str = "6b2c1a4e-0d5f-4c7a-9e21-3f8b5c6d7e02";
    const FS_UUID: &str = "0b1c2d3e-aaaa-4bbb-8ccc-000000000042";
    let d = tempfile::tempdir().unwrap();
    let root = root_image(d.path());
    // Partition 3: the same root with its own filesystem UUID and label.
    let tuned = d.path().join("tuned.img");
    std::fs::copy(&root, &tuned).unwrap();
    run(Command::new("tune2fs").args(["-U", FS_UUID, "-L", "pxroot-test"]).arg(&tuned));
    let disk = gpt_disk(d.path(), &[(DPS_ROOT_X86_64_TYPE, Some(DPS_ROOT), &root), (LINUX_DATA_TYPE, Some(OTHER), &tuned)]);
    let initrd = initramfs(d.path());
    let kernel = kernel_dir().join("vmlinuz");
    let ns = Netns::new("dps");
    let state = d.path().join("state");
    let _server = start_server(&ns, &disk, &state, &d.path().join("pxeroot.log"));
    let boot_with_cmdline = |extra: &str| {
        let Booted { lines, exited, .. } = Client::new(&ns)
            .kernel(&kernel, &initrd, &format!("{} {extra}", cmdline(SERVER_IP, MAC, "netlink")))
            .beside(&d.path().join("pxeroot.log"))
            .run(|l| l.contains("FATAL"));
        (lines.join("\n"), exited)
    };
    let booted = |extra: &str, says: &str, partition: u32| {
        let (console, exited) = boot_with_cmdline(extra);
        assert!(console.contains(says), "{extra:?}: no {says:?}:\n{console}");
        assert!(
            console.contains(&format!("mount /dev/nbd0p{partition} (ext4)")) && console.contains("PXEROOT-MARKER-DONE") && exited,
            "{extra:?}:\n{console}"
        );
    };
    booted("", "root: partition 2, the GPT partition of the root type 4f68bce3-e8cd-4db1-96e7-fbcaf984b709", 2);
    booted(&format!("root=PARTUUID={}", OTHER.to_uppercase()), &format!("root: partition 3, root=PARTUUID={OTHER}"), 3);
    booted(&format!("root=UUID={FS_UUID}"), &format!("root: partition 3, root=UUID={FS_UUID} (ext4)"), 3);
    booted("root=LABEL=pxroot-test", "root: partition 3, root=LABEL=pxroot-test (ext4)", 3);
    let (missing, _) = boot_with_cmdline("root=PARTUUID=00000000-0000-0000-0000-000000000001");
    assert!(
        missing.contains("no partition of /dev/nbd0 has that PARTUUID; its GPT table has")
            && missing.contains(&format!("2 {DPS_ROOT}"))
            && missing.contains(&format!("3 {OTHER}")),
        "{missing}"
    );
    let (no_label, _) = boot_with_cmdline("root=LABEL=nowhere");
    assert!(
        no_label.contains("root=LABEL=nowhere: no filesystem on /dev/nbd0 has it")
            && no_label.contains(&format!("partition 3: ext4 UUID={FS_UUID} LABEL=\"pxroot-test\"")),
        "{no_label}"
    );
    assert!(!missing.contains("Kernel panic") && !no_label.contains("Kernel panic"));
}

/// An MBR disk as older images come: partition 1 a small FAT-typed
/// primary (empty), partition 2 an extended one, and the root in logical
/// partition 5 (its extended boot record just before it). The disk
/// signature is `signature`.
fn mbr_disk(dir: &Path, root: &Path, signature: u32) -> PathBuf {
    let size = std::fs::metadata(root).unwrap().len();
    let (ext, logical) = (ROOT_PARTITION_OFFSET / 512 - 2048, ROOT_PARTITION_OFFSET / 512);
    let table = format!(
        "label: dos\nlabel-id: 0x{signature:08x}\nstart=2048, size=16384, type=c\n\
         start={ext}, size={}, type=5\nstart={logical}, size={}, type=83\n",
        size / 512 + 2048,
        size / 512
    );
    sfdisk_disk(&dir.join("mbr.img"), ROOT_PARTITION_OFFSET + size + (1 << 20), &table, &[(ROOT_PARTITION_OFFSET, root)])
}

/// On an MBR disk pxeroot-init finds the root in a logical partition by
/// the kernel's MBR PARTUUID (signature and number) or by the filesystem's
/// label, and a PARTUUID the disk lacks is explained with the disk's.
#[test]
fn test_root_on_an_mbr_logical_partition_found_by_partuuid_or_label() {
    let d = tempfile::tempdir().unwrap();
    let root = root_image(d.path());
    run(Command::new("tune2fs").args(["-L", "mbr-root"]).arg(&root));
    let disk = mbr_disk(d.path(), &root, 0x5eed_0042);
    let initrd = initramfs(d.path());
    let kernel = kernel_dir().join("vmlinuz");
    let ns = Netns::new("mbr");
    let _server = start_server(&ns, &disk, &d.path().join("state"), &d.path().join("pxeroot.log"));
    let boot_cmd = |extra: &str| {
        let Booted { lines, exited, .. } = Client::new(&ns)
            .kernel(&kernel, &initrd, &format!("{} {extra}", cmdline(SERVER_IP, MAC, "netlink")))
            .beside(&d.path().join("pxeroot.log"))
            .run(|l| l.contains("FATAL"));
        (lines.join("\n"), exited)
    };
    for (extra, says) in [
        ("root=PARTUUID=5EED0042-05", "root: partition 5, root=PARTUUID=5eed0042-05"),
        ("root=LABEL=mbr-root", "root: partition 5, root=LABEL=mbr-root (ext4)"),
    ] {
        let (console, exited) = boot_cmd(extra);
        assert!(console.contains(says), "{extra}: no {says:?}:\n{console}");
        assert!(console.contains("mount /dev/nbd0p5 (ext4)") && console.contains("PXEROOT-MARKER-DONE") && exited, "{extra}:\n{console}");
    }
    let (missing, _) = boot_cmd("root=PARTUUID=5eed0042-06");
    assert!(missing.contains("no partition of /dev/nbd0 has that PARTUUID; its MBR table has 1 5eed0042-01, 5 5eed0042-05"), "{missing}");
    assert!(!missing.contains("Kernel panic"), "{missing}");
}

/// A btrfs root with no `rootfstype=`: pxeroot-init reads the type from
/// the root's superblock (btrfs's, at 64 KiB) and mounts it, with btrfs in
/// the initramfs (`--modules btrfs`). The image is the test root's tree
/// (copied out of its ext4 image with debugfs, no mount) packed by
/// mkfs.btrfs.
#[test]
fn test_btrfs_root_mounts_by_its_superblock_without_rootfstype() {
    require("mkfs.btrfs");
    require("debugfs");
    let d = tempfile::tempdir().unwrap();
    let ext4 = root_image(d.path());
    let tree = d.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    run(Command::new("debugfs").arg("-R").arg(format!("rdump / {}", tree.display())).arg(&ext4).stderr(Stdio::null()));
    let img = d.path().join("btrfs.img");
    std::fs::File::create(&img).unwrap().set_len(128 << 20).unwrap();
    run(Command::new("mkfs.btrfs").args(["-q", "-L", "btrfs-root", "--rootdir"]).arg(&tree).arg(&img));
    let initrd = d.path().join("initrd-btrfs.zst");
    run(initramfs_command(&initrd, &["--modules", "btrfs", "--nics", "virtio"]).stdout(Stdio::null()));
    let ns = Netns::new("btrfs");
    let _server = start_server(&ns, &img, &d.path().join("state"), &d.path().join("pxeroot.log"));
    let Booted { lines, exited, .. } = Client::new(&ns)
        .kernel(&kernel_dir().join("vmlinuz"), &initrd, &cmdline(SERVER_IP, MAC, "netlink"))
        .beside(&d.path().join("pxeroot.log"))
        .run(|l| l.contains("FATAL"));
    let console = lines.join("\n");
    assert!(console.contains("mount /dev/nbd0 (btrfs) on /newroot: ok"), "{console}");
    assert!(console.contains("PXEROOT-MARKER-DONE") && exited, "{console}");
}
