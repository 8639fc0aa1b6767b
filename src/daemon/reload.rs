//! SIGHUP: re-read the configuration file and apply what may change while
//! the daemon runs (the client table, full mode's reservations and names,
//! the images' boot files and arguments); name the rest as waiting for a
//! restart.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::storage::registry::Registry;

/// What a SIGHUP re-reads: the file, against the configuration the daemon
/// started with (what a reload does not apply stays as it was then).
pub(super) struct Reload {
    pub(super) file: PathBuf,
    pub(super) running: Config,
    /// Full mode's lease table, whose reservations follow the clients'
    /// `address` keys.
    pub(super) leases: Option<crate::dhcp::Leases>,
    /// The scripts' renderer, whose images' boot files and arguments follow
    /// the `[images]` tables' kernel, initrd, cmdline and partition.
    pub(super) resolver: Option<Arc<crate::bootfiles::Resolver>>,
}

impl Reload {
    /// Apply what may change without a restart: who boots what
    /// (`[clients]` images, policies and full mode's reserved addresses,
    /// `[unknown_clients]`) and what an image boots (its kernel, initrd,
    /// cmdline and partition). A file that
    /// does not validate, or names an image not opened at start, changes
    /// nothing. Anything else that changed is named as waiting for a restart.
    pub(super) fn apply(&self, registry: &Registry) {
        let new = match Config::load(&self.file) {
            Ok(c) => c,
            Err(e) => return tracing::error!("reload failed, the running configuration stays: {e}"),
        };
        let clients = crate::storage::registry::Clients { by_mac: new.clients.clone(), unknown: new.unknown.clone() };
        let change = match registry.set_clients(clients) {
            Ok(change) => change,
            Err(e) => return tracing::error!(config = %self.file.display(), "reload refused, the running configuration stays: {e}"),
        };
        let macs = |m: &[crate::mac::Mac]| m.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ");
        tracing::info!(
            config = %self.file.display(),
            added = %macs(&change.added),
            removed = %macs(&change.removed),
            changed = %macs(&change.changed),
            unknown_clients_changed = change.unknown_changed,
            "configuration reloaded: clients apply to their next boot (open sessions keep their overlays)"
        );
        // Pools themselves change only at a restart ([dhcp] is named
        // below then); their reservations and client names follow the
        // clients' keys now.
        if let (Some(leases), Some(crate::dhcp::Mode::Full { pools, .. })) =
            (&self.leases, new.pxe.as_ref().and_then(|p| p.dhcp.as_ref()).map(|d| &d.mode))
        {
            let mut served = leases.lock().unwrap_or_else(|e| e.into_inner());
            // Only onto the same pools: a reservation on another pool's
            // table would hand out an address of the wrong subnet.
            if served.len() == pools.len() && served.iter().zip(pools).all(|(s, p)| s.leases.first() == p.range.0) {
                for (s, p) in served.iter_mut().zip(pools) {
                    s.leases.set_reservations(p.reservations.clone());
                    s.leases.set_names(p.names.clone());
                }
            }
        }
        if let (Some(resolver), Some(pxe)) = (&self.resolver, &new.pxe) {
            resolver.set_boot(pxe.boot.clone());
            for missing in pxe.missing_image_files() {
                tracing::warn!(config = %self.file.display(), "{missing}");
            }
        }
        for (mac, overlay) in &change.stale_overlays {
            tracing::warn!(
                %mac,
                overlay = %overlay.display(),
                "client now boots another image: its overlay of the old one is refused until it is deleted (its data is lost) or the image is changed back"
            );
        }
        let later = restart_needed(&self.running, &new);
        if !later.is_empty() {
            tracing::warn!(config = %self.file.display(), "changed, and applied only at the next restart: {}", later.join(", "));
        }
    }
}

/// The parts of the configuration that differ between `old` and `new`
/// other than the client table, by the keys a person edits.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut differ = |changed: bool, what: &'static str| {
        if changed {
            out.push(what);
        }
    };
    differ(old.state_dir != new.state_dir, "state_dir");
    differ(old.nbd_listen != new.nbd_listen || old.require_boot_address != new.require_boot_address, "[nbd]");
    differ(old.images != new.images || old.default_image != new.default_image, "[images]");
    let (a, b) = (old.pxe.as_ref(), new.pxe.as_ref());
    // The images' boot files and arguments (`boot`) a reload applies.
    differ(a.map(|p| (&p.boot_dir, &p.script)) != b.map(|p| (&p.boot_dir, &p.script)), "[pxe]");
    differ(a.map(|p| (p.tftp_listen, &p.tftp_blksize_caps)) != b.map(|p| (p.tftp_listen, &p.tftp_blksize_caps)), "[tftp]");
    differ(a.map(|p| p.http_listen) != b.map(|p| p.http_listen), "[http]");
    // Full mode's reservations and client names come from the clients'
    // `address` and `hostname` keys, and a reload applies them.
    let without_clients = |p: Option<&crate::config::PxeConfig>| {
        let mut d = p.and_then(|p| p.dhcp.clone());
        if let Some(crate::dhcp::Mode::Full { pools, .. }) = d.as_mut().map(|d| &mut d.mode) {
            pools.iter_mut().for_each(|p| {
                p.reservations.clear();
                p.names.clear();
            });
        }
        (d, p.and_then(|p| p.ra_interface.clone()))
    };
    differ(without_clients(a) != without_clients(b), "[dhcp]");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a reload names as waiting for a restart: everything but the
    /// client table (with full mode's reservations) and the images' boot
    /// files and arguments, which it applies.
    #[test]
    fn test_restart_needed_names_all_but_what_a_reload_applies() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.img"), [0u8; 512]).unwrap();
        let file = dir.path().join("pxeroot.toml");
        let base = "state_dir = \"state\"\n[pxe]\nserver_address = \"10.0.0.1\"\nboot_dir = \".\"\n\
                    [dhcp]\nmode = \"full\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.199\"\n\
                    [images.debian]\npath = \"base.img\"\nkernel = \"vmlinuz\"\ninitrd = \"initrd.img\"\n";
        let parse = |text: &str| Config::parse(text, &file).unwrap();
        let old = parse(base);
        let applied = format!(
            "{}[clients.\"52:54:00:00:00:01\"]\nimage = \"debian\"\naddress = \"10.0.0.50\"\n",
            base.replace("initrd = \"initrd.img\"", "initrd = \"initrd.new\"\ncmdline = \"quiet\"")
        );
        assert!(restart_needed(&old, &parse(&applied)).is_empty());
        let later = parse(
            &base
                .replace("pool_end = \"10.0.0.199\"", "pool_end = \"10.0.0.150\"")
                .replace("boot_dir = \".\"", "boot_dir = \".\"\nattach = \"ioctl\""),
        );
        assert_eq!(restart_needed(&old, &later), ["[pxe]", "[dhcp]"]);
        let later = parse(&format!("{base}[tftp]\nlisten = \"0.0.0.0:6969\"\n[images.other]\npath = \"base.img\"\n"));
        assert_eq!(restart_needed(&old, &later), ["[images]", "[tftp]"]);
    }
}
