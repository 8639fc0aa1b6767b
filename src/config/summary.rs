//! `pxeroot check-config`'s summary: what a valid configuration sets up,
//! in lines a person reads before starting the daemon.

use std::path::Path;

use super::Config;

/// What `pxeroot check-config` prints for a valid `c` read from `file`:
/// one line per thing it sets up, warnings about missing boot files.
pub fn summary(file: &Path, c: &Config) -> Vec<String> {
    let mut out = vec![format!("{}: OK", file.display())];
    out.push(format!("  state directory: {}", c.state_dir.display()));
    match &c.nbd_listen {
        Some(l) => out.push(format!("  nbd: listening on {}", l.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "))),
        None => out.push("  nbd: disabled".into()),
    }
    for i in &c.images {
        out.push(format!("  image {}: {}", i.name, i.path.display()));
    }
    for (mac, r) in &c.clients {
        out.push(format!("  client {mac}: image {} ({:?})", r.image, r.policy));
    }
    match &c.unknown {
        Some(r) => out.push(format!("  unknown clients: boot image {} ({:?})", r.image, r.policy)),
        None => out.push("  unknown clients: refused".into()),
    }
    match &c.pxe {
        Some(p) => {
            out.push(format!("  pxe: server {}, boot files from {}, attach {}", p.script.server, p.boot_dir.display(), p.script.attach));
            for (image, b) in &p.boot {
                out.push(format!("  boot {image}: kernel {} initrd {}", b.kernel, b.initrd));
            }
            match p.tftp_listen {
                Some(a) => out.push(format!("  tftp: listening on {a}")),
                None => out.push("  tftp: disabled".into()),
            }
            match p.http_listen {
                Some(a) => out.push(format!("  http: listening on {a}")),
                None => out.push("  http: disabled".into()),
            }
            out.push(format!("  scripts fetch kernel and initrd from {}", p.script.files_base));
            for missing in p.missing_image_files() {
                out.push(format!("  warning: {missing}"));
            }
            let firmware = p.missing_firmware_files();
            if !firmware.is_empty() {
                out.push(format!("  not in the boot directory (only firmware without iPXE fetches them): {}", firmware.join("; ")));
            }
            match &p.dhcp {
                Some(d) => {
                    let mode = match &d.mode {
                        crate::dhcp::Mode::Proxy => "proxy".to_string(),
                        crate::dhcp::Mode::Full { pools, .. } => format!(
                            "full, pools {}",
                            pools
                                .iter()
                                .map(|p| format!("{}-{}/{}", p.range.0, p.range.1, p.network.netmask))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    out.push(format!(
                        "  dhcp: {mode} on {}, UEFI {:?}, files {:?}",
                        d.interface.as_deref().unwrap_or("all interfaces"),
                        d.uefi,
                        d.files
                    ))
                }
                None => out.push("  dhcp: off".into()),
            }
        }
        None => out.push("  pxe: not configured (NBD only)".into()),
    }
    out
}
