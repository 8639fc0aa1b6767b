//! Per-client iPXE scripts, rendered as a pure function of the server's
//! parameters, the client's MAC and its image's boot files.
//!
//! The kernel command line carries what pxeroot-init needs: the server and
//! NBD port, the export (the MAC), the attach mode, and the client's own
//! address from iPXE's variables (`ip=${ip}::${gateway}:${netmask}:::off`),
//! so the initramfs needs no second DHCP exchange. Kernel and initrd come
//! over HTTP when it is enabled (several times faster than iPXE's lock-step
//! TFTP), else over TFTP.

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::mac::Mac;

/// Server-wide script parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptParams {
    /// The address clients reach pxeroot at (TFTP and NBD).
    pub server: Ipv4Addr,
    pub nbd_port: u16,
    /// `ioctl` or `netlink`.
    pub attach: String,
    /// Where kernel and initrd are fetched from: `http://server:port` or
    /// `tftp://server`.
    pub files_base: String,
}

/// An image's boot files (paths inside the boot directory) and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSpec {
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    /// The root filesystem's partition of the image (`pxeroot.partition`).
    pub partition: Option<u32>,
}

pub fn render(p: &ScriptParams, mac: Mac, boot: &BootSpec) -> String {
    let base = p.files_base.trim_end_matches('/');
    let initrd_name = boot.initrd.rsplit('/').next().unwrap_or(&boot.initrd);
    let mut s = String::from("#!ipxe\n");
    let _ = writeln!(s, "# pxeroot: boot script for {mac}");
    let _ = write!(
        s,
        "kernel {base}/{} initrd={initrd_name} {} pxeroot.server={}:{} pxeroot.export={mac} pxeroot.attach={} \
         ip=${{ip}}::${{gateway}}:${{netmask}}:::off BOOTIF=01-${{mac:hexhyp}}",
        boot.kernel.trim_start_matches('/'),
        boot.cmdline,
        p.server,
        p.nbd_port,
        p.attach,
    );
    if let Some(n) = boot.partition {
        let _ = write!(s, " pxeroot.partition={n}");
    }
    s.push('\n');
    let _ = writeln!(s, "initrd {base}/{}", boot.initrd.trim_start_matches('/'));
    s.push_str("boot\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_render_script_carries_what_init_needs() {
        let p = ScriptParams {
            server: Ipv4Addr::new(10, 0, 0, 1),
            nbd_port: 10809,
            attach: "netlink".into(),
            files_base: "tftp://10.0.0.1".into(),
        };
        let b = BootSpec {
            kernel: "debian/vmlinuz".into(),
            initrd: "/debian/initrd.zst".into(),
            cmdline: "console=ttyS0 quiet".into(),
            partition: None,
        };
        let s = render(&p, "52:54:00:12:34:56".parse().unwrap(), &b);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel tftp://10.0.0.1/debian/vmlinuz initrd=initrd.zst console=ttyS0 quiet "));
        assert!(s.contains("pxeroot.server=10.0.0.1:10809 pxeroot.export=52:54:00:12:34:56 pxeroot.attach=netlink"));
        assert!(s.contains("ip=${ip}::${gateway}:${netmask}:::off BOOTIF=01-${mac:hexhyp}"));
        assert!(s.contains("\ninitrd tftp://10.0.0.1/debian/initrd.zst\nboot\n"));
        assert!(!s.contains("pxeroot.partition"));
        let s = render(&p, "52:54:00:12:34:56".parse().unwrap(), &BootSpec { partition: Some(14), ..b });
        assert!(s.contains("BOOTIF=01-${mac:hexhyp} pxeroot.partition=14\ninitrd "), "{s}");
    }
}
