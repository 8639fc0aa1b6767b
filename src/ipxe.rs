//! Per-client iPXE scripts, rendered as a pure function of the server's
//! parameters, the client's MAC and its image's boot files.
//!
//! The kernel command line carries what pxeroot-init needs: the server and
//! NBD port, the export (the MAC), the attach mode, and the client's own
//! address from iPXE's variables (`ip=${ip}::${gateway}:${netmask}:::off`),
//! so the initramfs needs no second DHCP exchange, and the lease it came
//! with ([`LEASE_ARG`]) so pxeroot-init keeps it renewed. Kernel and initrd come
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
    /// How pxeroot-init hands the connection to the kernel.
    pub attach: Attach,
    /// Where kernel and initrd are fetched from: `http://server:port` or
    /// `tftp://server`.
    pub files_base: String,
}

/// How pxeroot-init attaches `/dev/nbd0` (`pxeroot.attach=`, `pxe.attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    /// NBD's netlink interface: the kernel reconnects through the monitor.
    #[default]
    Netlink,
    /// NBD_DO_IT in a keeper process (kernels without NBD netlink).
    Ioctl,
}

impl std::fmt::Display for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attach::Netlink => "netlink",
            Attach::Ioctl => "ioctl",
        })
    }
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

/// `pxeroot.lease=SERVER,SECONDS,T1,T2` from the DHCP block of the
/// interface iPXE booted through (`netX.dhcp`, not the proxy's): options
/// 54, 51, 58 and 59. iPXE formats `uint32` settings in hex and leaves
/// missing ones empty; pxeroot-init reads both.
pub const LEASE_ARG: &str = "pxeroot.lease=${netX.dhcp/dhcp-server},${netX.dhcp/51:uint32},${netX.dhcp/58:uint32},${netX.dhcp/59:uint32}";
/// `pxeroot.mtu=`: the segment's MTU (option 26) when the DHCP server
/// names one, so the kernel uses what iPXE did.
pub const MTU_ARG: &str = "pxeroot.mtu=${netX.dhcp/26:uint16}";

/// `pxeroot.dns=`, `pxeroot.domain=`, `pxeroot.search=`,
/// `pxeroot.hostname=` and `pxeroot.ntp=`: options 6, 15, 119, 12 and 42
/// of the same DHCP block, as raw hex (every server, not only `${dns}`'s
/// first; no byte of a name can split the command line; option 119 in its
/// wire form, which pxeroot-init decodes), for the root's resolver and
/// clock and the kernel's hostname (pxeroot-init validates them).
pub const NAME_ARGS: &str = "pxeroot.dns=${netX.dhcp/6:hexraw} pxeroot.domain=${netX.dhcp/15:hexraw} \
                             pxeroot.search=${netX.dhcp/119:hexraw} pxeroot.hostname=${netX.dhcp/12:hexraw} \
                             pxeroot.ntp=${netX.dhcp/42:hexraw}";

/// Seconds between a failed fetch of the boot files and the next try.
pub const RETRY_SECONDS: u32 = 5;

/// The script: fetch kernel and initrd, boot. A fetch that fails (the
/// server restarting, a file not there yet) is retried every
/// [`RETRY_SECONDS`] instead of ending the script: a diskless machine has
/// nothing else to boot, and firmware that falls through to "no bootable
/// device" stays there until someone power-cycles it. Ctrl-C during the
/// wait opens iPXE's shell.
pub fn render(p: &ScriptParams, mac: Mac, boot: &BootSpec) -> String {
    let base = p.files_base.trim_end_matches('/');
    let initrd_name = boot.initrd.rsplit('/').next().unwrap_or(&boot.initrd);
    let mut s = String::from("#!ipxe\n");
    let _ = writeln!(s, "# pxeroot: boot script for {mac}");
    s.push_str(":pxeroot_fetch\n");
    let _ = write!(
        s,
        "kernel {base}/{} initrd={initrd_name} {} pxeroot.server={}:{} pxeroot.export={mac} pxeroot.attach={} \
         ip=${{ip}}::${{gateway}}:${{netmask}}:::off BOOTIF=01-${{mac:hexhyp}} {LEASE_ARG} {MTU_ARG}",
        boot.kernel.trim_start_matches('/'),
        boot.cmdline,
        p.server,
        p.nbd_port,
        p.attach,
    );
    if let Some(n) = boot.partition {
        let _ = write!(s, " pxeroot.partition={n}");
    }
    // Last: the only part whose length a DHCP server sets (up to 255
    // bytes, 510 hex digits, per option), so a kernel that cuts a long
    // command line (2048 bytes on x86) cuts only these.
    let _ = writeln!(s, " {NAME_ARGS} || goto pxeroot_retry");
    let _ = writeln!(s, "initrd {base}/{} || goto pxeroot_retry", boot.initrd.trim_start_matches('/'));
    s.push_str("boot || goto pxeroot_retry\n");
    // The images of the failed try go; the running script stays (iPXE
    // holds it while it executes).
    let _ = write!(
        s,
        ":pxeroot_retry\n\
         echo pxeroot: fetching the boot files failed: retrying in {RETRY_SECONDS} s (Ctrl-C: iPXE shell)\n\
         imgfree\n\
         sleep {RETRY_SECONDS} || shell\n\
         goto pxeroot_fetch\n"
    );
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
            attach: Attach::Netlink,
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
        assert!(s.contains(" pxeroot.lease=${netX.dhcp/dhcp-server},${netX.dhcp/51:uint32},"), "{s}");
        assert!(s.contains(":uint32} pxeroot.mtu=${netX.dhcp/26:uint16} pxeroot.dns=${netX.dhcp/6:hexraw} "), "{s}");
        assert!(
            s.contains(" pxeroot.domain=${netX.dhcp/15:hexraw} pxeroot.search=${netX.dhcp/119:hexraw} pxeroot.hostname=${netX.dhcp/12:hexraw} pxeroot.ntp=${netX.dhcp/42:hexraw} || goto pxeroot_retry\n"),
            "{s}"
        );
        assert!(s.contains("\ninitrd tftp://10.0.0.1/debian/initrd.zst || goto pxeroot_retry\nboot || goto pxeroot_retry\n"), "{s}");
        assert!(s.contains(":pxeroot_retry\n") && s.contains("sleep 5 || shell\ngoto pxeroot_fetch\n"), "{s}");
        assert!(!s.contains("pxeroot.partition"));
        let s = render(&p, "52:54:00:12:34:56".parse().unwrap(), &BootSpec { partition: Some(14), ..b });
        assert!(s.contains(":uint16} pxeroot.partition=14 pxeroot.dns="), "{s}");
    }
}
