//! `pxeroot initramfs`: build the initramfs that boots a diskless client:
//! pxeroot-init as `/init`, the device nodes it needs, and the kernel
//! modules for NBD, common NICs and the root filesystem, with their
//! dependencies in load order (`modules.rs`) and the firmware files they
//! name that the build host has, packed as newc cpio (`cpio.rs`) and
//! compressed. Same input, same bytes.

pub mod command;
pub mod compress;
pub mod cpio;
pub mod modules;

use std::path::{Path, PathBuf};

use compress::CompressError;
pub use compress::Compression;
use cpio::Entry;
use modules::{ModuleError, ModuleTree};

/// Always included: the root filesystem and the root device, in the order
/// their groups go in the list, `--modules` between them. On a two-CPU
/// client one thread loads these groups in order beside the NIC drivers:
/// the filesystem, the longest load, first; nbd is needed only once the
/// network is up and the handshake done, later than the filesystem's load
/// began.
pub const FILESYSTEM_MODULE: &str = "ext4";
pub const ROOT_DEVICE_MODULE: &str = "nbd";
/// The NIC drivers `--nics` chooses from: QEMU's and common hardware's.
/// Each is included where the kernel has it; by default those of
/// [`Nic::DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Nic {
    /// virtio-net, with virtio's PCI transport.
    Virtio,
    /// Intel 8254x (QEMU's e1000).
    E1000,
    /// Intel 82574 and the desktop I21x family (QEMU's e1000e).
    E1000e,
    /// Intel 82575/82576/I350/I210 server NICs.
    Igb,
    /// Realtek 8111/8168/8125: most cheap desktops and thin clients.
    R8169,
    /// Intel I225/I226 2.5 GbE: recent mini PCs (not in the default set).
    Igc,
    /// Broadcom NetXtreme (tg3): many office desktops (not in the default set).
    Tg3,
}

/// Modaliases of virtio network devices on PCI (virtio 1.2, 4.1.2): a
/// transitional device is 1af4:1000 with subsystem device 1 (network), a
/// modern one 1af4:1041 (0x1040 + device type 1).
pub const VIRTIO_NET_PCI: &[&str] = &["pci:v00001AF4d00001000sv*sd00000001bc*sc*i*", "pci:v00001AF4d00001041sv*sd*bc*sc*i*"];

/// One driver group of a NIC: its modules (each after its dependencies, in
/// this order) and what makes it load.
struct NicGroup {
    modules: &'static [&'static str],
    /// `None`: the last module's own aliases.
    when: Option<&'static [&'static str]>,
}

impl Nic {
    /// The default set. igc and tg3 are left out: they would take the
    /// default initramfs past 1.5 MB (zstd), and `--nics` adds them.
    pub const DEFAULT: &'static [Nic] = &[Nic::Virtio, Nic::E1000, Nic::E1000e, Nic::Igb, Nic::R8169];

    /// The driver groups that bring this NIC up.
    fn groups(self) -> &'static [NicGroup] {
        match self {
            // virtio_net loads before its PCI transport: virtio_pci's probe
            // then finds the driver and brings the NIC up in the same call,
            // and the small net modules load while nothing else holds the
            // module loader's locks. After virtio_pci, beside ext4's load,
            // failover.ko waited 84 ms for them (two vCPUs, TCG). The
            // second group is for virtio-net on another transport.
            Nic::Virtio => &[
                NicGroup { modules: &["virtio_net", "virtio_pci"], when: Some(VIRTIO_NET_PCI) },
                NicGroup { modules: &["virtio_net"], when: None },
            ],
            Nic::E1000 => &[NicGroup { modules: &["e1000"], when: None }],
            Nic::E1000e => &[NicGroup { modules: &["e1000e"], when: None }],
            Nic::Igb => &[NicGroup { modules: &["igb"], when: None }],
            Nic::R8169 => &[NicGroup { modules: &["r8169"], when: None }],
            Nic::Igc => &[NicGroup { modules: &["igc"], when: None }],
            Nic::Tg3 => &[NicGroup { modules: &["tg3"], when: None }],
        }
    }
}

/// Parameters the list gives a module; `module.param=value` on the kernel
/// command line overrides them at boot. nbd: one device (the root), not
/// the default 16, which cost 30 ms of a TCG boot to register; netlink
/// attaches add devices on demand, and `nbd.nbds_max=N` restores more.
pub const MODULE_PARAMS: &[(&str, &str)] = &[("nbd", "nbds_max=1")];
pub use modlist::PATH as MODULE_LIST;
/// The kernel looks for firmware here (and under `updates/`), on the root
/// it has when a driver asks: the initramfs while pxeroot-init brings the
/// NIC up.
const FIRMWARE_ROOT: &str = "/lib/firmware";
/// Forms a firmware file may take on the build host, in the order tried:
/// as named, or compressed as the kernel's firmware loader reads it
/// (CONFIG_FW_LOADER_COMPRESS; Debian 12's kernel has both).
const FIRMWARE_FORMS: &[&str] = &["", ".zst", ".xz"];

/// Whether a firmware name from a module's `.modinfo` stays inside the
/// firmware directory: relative, no `..`, no empty parts.
fn firmware_name_ok(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('/') && name.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
}

/// What [`add_firmware`] did: the files that went in (path under the
/// firmware root, bytes) and the modules of which none was found (with how
/// many they name).
struct FirmwareAdded {
    included: Vec<(String, u64)>,
    missing: Vec<(String, usize)>,
}

/// Each included module's firmware files that `dir` has, in the archive at
/// [`FIRMWARE_ROOT`].
fn add_firmware(
    tree: &mut ModuleTree,
    modules: &[(String, u64)],
    dir: &Path,
    files: &mut Vec<Entry>,
    dirs: &mut std::collections::BTreeSet<String>,
) -> Result<FirmwareAdded, InitramfsError> {
    let mut found = std::collections::BTreeMap::new();
    let mut missing = Vec::new();
    for (m, _) in modules {
        let names: Vec<String> = tree.firmware(m)?.into_iter().filter(|n| firmware_name_ok(n)).collect();
        let mut any = false;
        for name in &names {
            for form in FIRMWARE_FORMS {
                let rel = format!("{name}{form}");
                let path = dir.join(&rel);
                match std::fs::read(&path) {
                    Ok(data) => {
                        found.insert(rel, data);
                        any = true;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(InitramfsError::Firmware { path, source }),
                }
            }
        }
        if !names.is_empty() && !any {
            missing.push((m.clone(), names.len()));
        }
    }
    let mut report = Vec::new();
    for (rel, data) in found {
        let path = format!("{FIRMWARE_ROOT}/{rel}");
        add_parents(&path, dirs);
        report.push((rel, data.len() as u64));
        files.push(Entry::File { path, mode: 0o644, data });
    }
    Ok(FirmwareAdded { included: report, missing })
}

/// Every directory above `path` (not `/`), for the archive's directory entries.
fn add_parents(path: &str, dirs: &mut std::collections::BTreeSet<String>) {
    let mut d = Path::new(path).parent();
    while let Some(p) = d.filter(|p| *p != Path::new("/")) {
        dirs.insert(p.to_string_lossy().into_owned());
        d = p.parent();
    }
}

/// The Debian package with a module's firmware, for the build's note.
pub fn firmware_package(module: &str) -> &'static str {
    match module {
        "r8169" => "firmware-realtek",
        "tg3" => "firmware-misc-nonfree",
        _ => "its vendor's firmware package",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error("cannot read the pxeroot-init binary {path}; build it with boot/pxeroot-init/build-static")]
    Init {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the firmware file {path}")]
    Firmware {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Compress(#[from] CompressError),
    #[error("no pxeroot-init binary found: run boot/pxeroot-init/build-static, or pass --init")]
    NoInit,
}

pub struct Options {
    pub modules_dir: PathBuf,
    /// Where the modules' firmware files are looked for (`/lib/firmware`);
    /// a directory that is not there holds none.
    pub firmware_dir: PathBuf,
    pub output: PathBuf,
    /// Modules wanted in addition to the defaults (e.g. xfs).
    pub extra_modules: Vec<String>,
    /// The NIC drivers to carry; empty: `Nic::DEFAULT`. A fleet of one
    /// NIC boots from a smaller initramfs that unpacks faster.
    pub nics: Vec<Nic>,
    pub compression: Compression,
    pub init: PathBuf,
}

/// What went in, for the report.
pub struct Report {
    /// The compression used (`Auto` resolved).
    pub compression: Compression,
    pub modules: Vec<(String, u64)>,
    pub skipped: Vec<String>,
    /// Firmware files included (path under /lib/firmware, bytes).
    pub firmware: Vec<(String, u64)>,
    /// Modules that name firmware files of which the firmware directory
    /// has none, with how many they name.
    pub firmware_missing: Vec<(String, usize)>,
    pub init_size: u64,
    pub cpio_size: u64,
    pub output_size: u64,
}

/// The kernel release a module tree is for: its directory's name (taken
/// through symlinks by the caller: `target/guest-kernel/modules` ->
/// .../lib/modules/6.1.0-56-amd64).
fn release_of(dir: &Path) -> String {
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "unknown".into())
}

pub fn build(opts: &Options) -> Result<Report, InitramfsError> {
    let real_dir = std::fs::canonicalize(&opts.modules_dir).unwrap_or_else(|_| opts.modules_dir.clone());
    let release = release_of(&real_dir);
    let compression = compress::choose(opts.compression, &compress::Kernel::of(&real_dir, &release))?;
    let init = std::fs::read(&opts.init).map_err(|source| InitramfsError::Init { path: opts.init.clone(), source })?;
    let mut tree = ModuleTree::open(&opts.modules_dir)?;
    let mut wanted = Vec::new();
    let mut skipped = Vec::new();
    let required = std::iter::once(FILESYSTEM_MODULE.to_string())
        .chain(opts.extra_modules.iter().cloned())
        .chain(std::iter::once(ROOT_DEVICE_MODULE.to_string()));
    for m in required {
        if let Some(r) = tree.resolve(&m)? {
            wanted.push(r);
        }
    }
    // One group per wanted module that always loads, each its dependencies
    // first (pxeroot-init loads these groups side by side on a machine with
    // several CPUs), then one per NIC driver that loads only when a device
    // matches the driver's aliases.
    // Per group: its patterns, its load order, and the modules of that
    // order it needs (the rest came in through soft dependencies only).
    let mut plan: Vec<(Vec<String>, Vec<String>, std::collections::BTreeSet<String>)> = Vec::new();
    for r in &wanted {
        let roots = std::slice::from_ref(r);
        plan.push((Vec::new(), modules::order(roots, &mut tree)?, modules::required(roots, &mut tree)?));
    }
    let nics = if opts.nics.is_empty() { Nic::DEFAULT } else { &opts.nics[..] };
    for g in nics.iter().flat_map(|n| n.groups()) {
        // Built-in modules need no file; a group missing a module is left
        // out whole.
        let (mut found, mut missing) = (Vec::new(), false);
        for m in g.modules {
            match tree.resolve(m) {
                Ok(Some(r)) => found.push(r),
                Ok(None) => {}
                Err(_) => {
                    missing = true;
                    if !skipped.iter().any(|s| s == m) {
                        skipped.push(m.to_string());
                    }
                }
            }
        }
        let Some(last) = found.last().filter(|_| !missing) else { continue };
        let when = match g.when {
            Some(w) => w.iter().map(|s| s.to_string()).collect(),
            None => tree.aliases(last)?,
        };
        plan.push((when, modules::order(&found, &mut tree)?, modules::required(&found, &mut tree)?));
    }

    let mut entries = vec![
        Entry::Dir { path: "/dev".into(), mode: 0o755 },
        Entry::Node { path: "/dev/console".into(), kind: cpio::S_IFCHR, mode: 0o600, major: 5, minor: 1 },
        Entry::Node { path: "/dev/null".into(), kind: cpio::S_IFCHR, mode: 0o666, major: 1, minor: 3 },
        Entry::Node { path: "/dev/nbd0".into(), kind: cpio::S_IFBLK, mode: 0o600, major: 43, minor: 0 },
        Entry::Dir { path: "/proc".into(), mode: 0o555 },
        Entry::Dir { path: "/sys".into(), mode: 0o555 },
        Entry::Dir { path: "/newroot".into(), mode: 0o755 },
        Entry::Dir { path: "/etc".into(), mode: 0o755 },
        Entry::Dir { path: "/etc/pxeroot".into(), mode: 0o755 },
        Entry::File { path: "/init".into(), mode: 0o755, data: init.clone() },
    ];
    let mut dirs = std::collections::BTreeSet::new();
    let mut groups = Vec::new();
    let mut report_modules = Vec::new();
    let mut files = Vec::new();
    let mut paths = std::collections::HashMap::new();
    for (when, order, required) in plan {
        let mut group = modlist::Group { when, modules: Vec::new() };
        for m in &order {
            let Some(rel) = tree.file(m).map(Path::to_path_buf) else { continue };
            if !paths.contains_key(m) {
                let data = modules::read_module(&opts.modules_dir.join(&rel))?;
                // Stored uncompressed: the archive as a whole is compressed,
                // and finit_module then needs no decompressor in the kernel.
                let rel = rel.to_string_lossy();
                let rel_ko = modlist::MODULE_SUFFIXES
                    .iter()
                    .find_map(|ext| rel.strip_suffix(ext))
                    .map_or(rel.to_string(), |stem| format!("{stem}.ko"));
                let path = format!("/lib/modules/{release}/{rel_ko}");
                add_parents(&path, &mut dirs);
                report_modules.push((m.clone(), data.len() as u64));
                files.push(Entry::File { path: path.clone(), mode: 0o644, data });
                paths.insert(m.clone(), path);
            }
            let params = MODULE_PARAMS.iter().filter(|(name, _)| name == m).map(|(_, p)| p.to_string()).collect();
            group.modules.push(modlist::Module { path: paths[m].clone(), params, optional: !required.contains(m) });
        }
        if !group.modules.is_empty() {
            groups.push(group);
        }
    }
    let FirmwareAdded { included: firmware, missing: firmware_missing } =
        add_firmware(&mut tree, &report_modules, &opts.firmware_dir, &mut files, &mut dirs)?;
    // Directories first, parents before children (BTreeSet order does that).
    entries.extend(dirs.into_iter().map(|path| Entry::Dir { path, mode: 0o755 }));
    entries.extend(files);
    entries.push(Entry::File { path: MODULE_LIST.into(), mode: 0o644, data: modlist::render(&groups).into_bytes() });
    let archive = cpio::write(&entries);
    let out = compress::compress(&archive, compression)?;
    std::fs::write(&opts.output, &out).map_err(|source| InitramfsError::Write { path: opts.output.clone(), source })?;
    Ok(Report {
        compression,
        modules: report_modules,
        skipped,
        firmware,
        firmware_missing,
        init_size: init.len() as u64,
        cpio_size: archive.len() as u64,
        output_size: out.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_firmware_names_stay_in_the_firmware_directory() {
        for ok in ["rtl_nic/rtl8125b-2.fw", "tigon/tg3.bin", "a.fw"] {
            assert!(firmware_name_ok(ok), "{ok}");
        }
        for bad in ["", "/etc/shadow", "../etc/shadow", "rtl_nic/../../x", "a//b", "./a", "a/"] {
            assert!(!firmware_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn test_parents_up_to_the_root() {
        let mut dirs = std::collections::BTreeSet::new();
        add_parents("/lib/firmware/rtl_nic/a.fw", &mut dirs);
        assert_eq!(dirs.into_iter().collect::<Vec<_>>(), ["/lib", "/lib/firmware", "/lib/firmware/rtl_nic"]);
    }
}
