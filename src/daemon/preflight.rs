//! Checks at start that only warn: what would stop clients later, said
//! before the first one boots.

use std::path::Path;

use crate::config::{Config, PxeConfig};
use crate::ipxe::Attach;
use crate::storage::registry::Registry;

/// `attach = "ioctl"` costs a systemd root its last writes at shutdown.
pub(super) fn warn_attach(file: &Path, c: &Config) {
    if c.pxe.as_ref().is_some_and(|p| p.script.attach == Attach::Ioctl) {
        tracing::warn!(
            config = %file.display(),
            "pxe.attach = \"ioctl\": a systemd root loses its last writes at shutdown (systemd stops every process, \
             which drops an NBD_DO_IT connection); use \"netlink\" unless the clients' kernel lacks NBD netlink"
        );
    }
}

/// Images' kernels and initrds missing from the boot directory, and
/// partitioned images whose root partition nothing names.
pub(super) fn warn_boot_files(file: &Path, registry: &Registry, pxe: &PxeConfig) {
    warn_unnamed_root_partitions(file, registry, pxe);
    for missing in pxe.missing_image_files() {
        tracing::warn!(config = %file.display(), "{missing}");
    }
}

/// Warn about images whose clients would stop at boot: a partitioned disk
/// (GPT or MBR) whose root partition nothing names (no `partition`, no
/// `root=PARTUUID=`, `UUID=` or `LABEL=` in the cmdline, no GPT partition
/// of the Discoverable Partitions root type, which pxeroot-init would take
/// by itself).
fn warn_unnamed_root_partitions(file: &Path, registry: &Registry, pxe: &PxeConfig) {
    for (name, boot) in &pxe.boot {
        let names_root = |w: &str| ["root=PARTUUID=", "root=UUID=", "root=LABEL="].iter().any(|p| w.starts_with(p));
        if boot.partition.is_some() || boot.cmdline.split_whitespace().any(names_root) {
            continue;
        }
        let Some(base) = registry.base(name) else { continue };
        match base.partitions() {
            Ok(Some(parts)) if !parts.is_empty() && gpt::pick_root(&parts, None).is_none() => {
                let list: Vec<String> = parts.iter().map(|p| p.number.to_string()).collect();
                let table = parts[0].table();
                let or_type = if matches!(parts[0].scheme, gpt::Scheme::Gpt { .. }) {
                    format!(", or give the root partition the GPT root type {}", gpt::ROOT_TYPE)
                } else {
                    String::new()
                };
                tracing::warn!(
                    config = %file.display(),
                    image = %name,
                    partitions = %list.join(", "),
                    "images.{name} is a {table} disk and nothing names its root partition: its clients will stop at boot; \
                     set `partition = N` (the root filesystem's; `fdisk -l` lists them), or root=PARTUUID=/UUID=/LABEL= in its cmdline{or_type}"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(image = %name, error = %e, "reading the image's partition table failed"),
        }
    }
}
