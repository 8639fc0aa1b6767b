//! The root: find its partition, mount it, hand the boot NIC's settings to
//! the root's network services (a tmpfs on its /run), free the initramfs
//! and switch root to the real init.

use std::fmt::Display;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::boot::NEWROOT;
use crate::cmdline::{RootRef, Settings};
use crate::console::Console;
use crate::error::{Context, InitError};
use crate::{handoff, sys};

/// The root filesystem's device: the NBD disk, or one of its partitions.
pub(crate) fn root_device(partition: Option<u32>) -> String {
    match partition {
        Some(n) => format!("/dev/nbd0p{n}"),
        None => "/dev/nbd0".to_string(),
    }
}

/// Without `pxeroot.partition`: the partition (or, `None`, the whole disk)
/// that `root=PARTUUID=`, `root=UUID=` or `root=LABEL=` names; without
/// those, the GPT partition of the Discoverable Partitions root type, else
/// the whole disk.
pub(crate) fn find_root_partition(con: &Console, s: &Settings) -> Result<Option<u32>, InitError> {
    use std::os::unix::fs::FileExt;
    let disk = std::fs::File::open("/dev/nbd0").context("opening /dev/nbd0")?;
    let table = gpt::read(|buf, off| disk.read_exact_at(buf, off)).context("reading /dev/nbd0's partition table")?;
    let parts = table.context("/dev/nbd0")?.unwrap_or_default();
    let by = |p: &gpt::Partition, why: &dyn Display| {
        con.say(format_args!("root: partition {}, {why}", p.number));
        Ok(Some(p.number))
    };
    match &s.root {
        None => match gpt::pick_root(&parts, None) {
            Some(p) => by(p, &format_args!("the GPT partition of the root type {}", gpt::ROOT_TYPE)),
            None => Ok(None),
        },
        Some(RootRef::PartUuid(id)) => match gpt::pick_root(&parts, Some(id)) {
            Some(p) => by(p, &format_args!("root=PARTUUID={id}")),
            None if parts.is_empty() => Err(InitError::new(format!(
                "root=PARTUUID={id}: /dev/nbd0 has no partition table (drop root= for a disk that is one filesystem)"
            ))),
            None => {
                let have: Vec<String> = parts.iter().map(|p| format!("{} {}", p.number, p.partuuid())).collect();
                Err(InitError::new(format!(
                    "root=PARTUUID={id}: no partition of /dev/nbd0 has that PARTUUID; its {} table has {}",
                    parts[0].table(),
                    have.join(", ")
                )))
            }
        },
        Some(wanted) => {
            // The whole disk (one filesystem), then each partition.
            let candidates = std::iter::once((None, 0)).chain(parts.iter().map(|p| (Some(p.number), p.start)));
            let mut found = Vec::new();
            for (number, start) in candidates {
                let mut head = vec![0u8; gpt::fsid::SUPERBLOCK_BYTES];
                // A partition too small for every superblock offset read
                // here holds none of these filesystems.
                if disk.read_exact_at(&mut head, start).is_err() {
                    continue;
                }
                let Some(fs) = gpt::fsid::identify(&head) else { continue };
                let place = number.map_or("the whole disk".to_string(), |n| format!("partition {n}"));
                let hit = match wanted {
                    RootRef::Uuid(u) => fs.uuid == *u,
                    RootRef::Label(l) => fs.label == *l,
                    RootRef::PartUuid(_) => false,
                };
                if hit {
                    con.say(format_args!("root: {place}, {wanted} ({})", fs.kind));
                    return Ok(number);
                }
                found.push(format!("{place}: {} UUID={} LABEL={:?}", fs.kind, fs.uuid, fs.label));
            }
            let found = if found.is_empty() { "no ext2/3/4, XFS or btrfs filesystem".to_string() } else { found.join("; ") };
            Err(InitError::new(format!("{wanted}: no filesystem on /dev/nbd0 has it; found {found}")))
        }
    }
}

/// The partitions the kernel found on /dev/nbd0, by number.
pub(crate) fn partitions() -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_dir("/sys/block/nbd0")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("nbd0p")?.parse().ok()).collect())
        .unwrap_or_default();
    found.sort_unstable();
    found
}

pub(crate) fn list(numbers: &[u32]) -> String {
    numbers.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// Have the kernel read /dev/nbd0's partition table, then wait for
/// partition `n`'s device node.
pub(crate) fn wait_for_partition(n: u32) -> Result<(), InitError> {
    let disk = std::fs::File::open("/dev/nbd0").context("opening /dev/nbd0")?;
    sys::ioctl_arg(disk.as_raw_fd(), sys::BLKRRPART, 0).context("reading /dev/nbd0's partition table")?;
    let node = PathBuf::from(format!("/dev/nbd0p{n}"));
    let deadline = Instant::now() + PARTITION_WAIT;
    while !node.exists() {
        if Instant::now() > deadline {
            let found = partitions();
            return Err(if found.is_empty() {
                InitError::new("/dev/nbd0 has no partition table the kernel reads: for an image that is one filesystem, leave the image's `partition` (pxeroot.partition) unset")
            } else {
                InitError::new(format!(
                    "/dev/nbd0 has no partition {n}; it has {}: set the image's `partition` to the root's",
                    list(&found)
                ))
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// How long the root's partition may take to appear once the kernel reads
/// the partition table (milliseconds under TCG).
pub(crate) const PARTITION_WAIT: Duration = Duration::from_secs(5);

/// The root's filesystem type when `rootfstype=` names none and its
/// superblock does not either.
pub(crate) const DEFAULT_FSTYPE: &str = "ext4";

/// Bytes read first when probing the root's superblock: ext2/3/4's (at
/// 1 KiB) and XFS's (at 0) are in them, and the mount reads the same page.
pub(crate) const FIRST_PROBE: usize = 4096;

/// The filesystem type `device`'s superblock names (ext2/3/4 as "ext4",
/// "xfs", "btrfs"), as the kernel would find by trying each: the first
/// page, then, for btrfs, up to its superblock at 64 KiB.
pub(crate) fn root_fstype(device: &str) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let dev = std::fs::File::open(device).ok()?;
    let mut head = vec![0u8; gpt::fsid::SUPERBLOCK_BYTES];
    dev.read_exact_at(&mut head[..FIRST_PROBE], 0).ok()?;
    let found = gpt::fsid::identify(&head[..FIRST_PROBE]).or_else(|| {
        dev.read_exact_at(&mut head[FIRST_PROBE..], FIRST_PROBE as u64).ok()?;
        gpt::fsid::identify(&head)
    });
    found.map(|fs| fs.kind.to_string())
}

pub(crate) fn mount_root(s: &Settings, fstype: &str, partition: Option<u32>, device: &str) -> Result<(), InitError> {
    std::fs::create_dir_all(NEWROOT).with_context(|| format!("mkdir {NEWROOT}"))?;
    let flags = if s.read_only { sys::MS_RDONLY } else { 0 };
    sys::mount(device, NEWROOT, fstype, flags, &s.rootflags).map_err(|e| {
        // Opening the disk for the mount had the kernel read its partition
        // table: a disk image with partitions needs one named.
        let found = if partition.is_none() { partitions() } else { Vec::new() };
        InitError::new(if found.is_empty() {
            format!(
                "{e} (the kernel's message above, if any, says why; is the {fstype} module in the initramfs \
                 (pxeroot initramfs --modules), and the image a {fstype} filesystem?)"
            )
        } else {
            format!(
                "{e}: /dev/nbd0 holds a partition table (partitions {}), so the root is on one of them: \
                 set the image's `partition` in pxeroot's config (pxeroot.partition=N on the kernel command line), \
                 or root=PARTUUID=|UUID=|LABEL=, or give the root partition the GPT root type {}",
                list(&found),
                gpt::ROOT_TYPE
            )
        })
    })
}

/// Leave the root's udev, systemd-networkd and ifupdown units the files
/// that keep the boot interface as it is (handoff.rs), in a `/run` mounted as systemd mounts
/// it: never on the root filesystem. Only for a root with systemd and a
/// `/run` to mount on; a failure is said and the boot goes on.
pub(crate) fn hand_off_network(con: &Console, nic: &handoff::BootNic) {
    let run = format!("{NEWROOT}/run");
    if !Path::new(&run).is_dir() || !handoff::SYSTEMD_DIRS.iter().any(|d| Path::new(NEWROOT).join(d).is_dir()) {
        return;
    }
    let what =
        format!("hand {} to the root's udev, networkd, ifupdown and NetworkManager (/run/{}/{}.*)", nic.name, handoff::DIR, handoff::STEM);
    let done = con.step(&what, || -> Result<(), InitError> {
        sys::mount("tmpfs", &run, "tmpfs", sys::MS_NOSUID | sys::MS_NODEV | sys::MS_STRICTATIME, handoff::RUN_OPTIONS)
            .with_context(|| format!("mounting a tmpfs on {run}"))?;
        for (file, text) in nic.files() {
            let path = Path::new(&run).join(file);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
            }
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    });
    if let Err(e) = done {
        con.say(format_args!(
            "{e}: the root's own network configuration applies to {}, and must keep its address (KeepConfiguration=yes)",
            nic.name
        ));
    }
}

/// Delete the initramfs's files (they would pin memory forever), staying on
/// its own filesystem.
pub(crate) fn free_initramfs(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if !sys::same_device(&p, dev) {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                free_initramfs(&p, dev);
                let _ = std::fs::remove_dir(&p);
            }
            _ => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

pub(crate) fn switch_root(s: &Settings) -> String {
    use std::os::unix::fs::MetadataExt;
    for dir in ["/proc", "/sys", "/dev"] {
        let target = format!("{NEWROOT}{dir}");
        if let Err(e) = sys::mount(dir, &target, "", sys::MS_MOVE, "") {
            return format!("moving {dir} into the new root: {e} (does the root image have {dir}?)");
        }
    }
    let dev = match std::fs::metadata("/") {
        Ok(m) => m.dev(),
        Err(e) => return format!("stat /: {e}"),
    };
    free_initramfs(Path::new("/"), dev);
    if let Err(e) = std::env::set_current_dir(NEWROOT) {
        return format!("chdir {NEWROOT}: {e}");
    }
    if let Err(e) = sys::mount(".", "/", "", sys::MS_MOVE, "") {
        return format!("moving the new root onto /: {e}");
    }
    if let Err(e) = std::os::unix::fs::chroot(".") {
        return format!("chroot: {e}");
    }
    if let Err(e) = std::env::set_current_dir("/") {
        return format!("chdir /: {e}");
    }
    sys::sync();
    let err = std::process::Command::new(&s.init).exec();
    format!("exec {}: {err} (does the root image have it?)", s.init)
}
