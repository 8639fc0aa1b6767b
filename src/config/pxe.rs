//! `[pxe]` with `[tftp]`, `[http]` and `[dhcp]` beside it: where clients
//! reach the server, the boot directory, each image's boot files, the
//! services' listen addresses, and how scripts fetch kernel and initrd.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use super::{dhcp, wire, ConfigError, Cx, PxeConfig, DEFAULT_HTTP_LISTEN, DEFAULT_TFTP_LISTEN};
use crate::ipxe::{BootSpec, ScriptParams};

/// The sections `[pxe]` validates with, and what it needs from the rest.
pub(super) struct Sections<'a> {
    pub(super) tftp: Option<wire::Tftp>,
    pub(super) http: Option<wire::Http>,
    pub(super) dhcp: Option<wire::Dhcp>,
    pub(super) images: &'a BTreeMap<String, wire::Image>,
    pub(super) clients: &'a BTreeMap<String, wire::Client>,
    pub(super) state_dir: &'a Path,
    /// The NBD port the scripts name.
    pub(super) nbd_port: u16,
}

/// `[pxe]` and the services it runs.
pub(super) fn pxe(cx: &Cx, p: wire::Pxe, s: Sections) -> Result<PxeConfig, ConfigError> {
    let server = p.server_address.parse().map_err(|_| {
        cx.err(
            "pxe.server_address",
            format!("{:?} is not an IPv4 address", p.server_address),
            "give the address clients reach this server at, e.g. \"10.0.0.1\"",
        )
    })?;
    let boot_dir = cx.resolve(&p.boot_dir);
    if !boot_dir.is_dir() {
        return Err(cx.err(
            "pxe.boot_dir",
            format!("{} is not a directory", boot_dir.display()),
            "point it at the directory holding kernels, initrds and iPXE binaries",
        ));
    }
    let boot = boot_specs(cx, s.images)?;
    let tftp_listen = cx.listen(s.tftp.as_ref().map(|t| (t.enabled, t.listen.as_deref())), DEFAULT_TFTP_LISTEN, "tftp.listen")?;
    let tftp_blksize_caps = blksize_caps(cx, s.tftp.as_ref().and_then(|t| t.blksize_caps.as_ref()))?;
    let http_listen = cx.listen(s.http.as_ref().map(|h| (h.enabled, h.listen.as_deref())), DEFAULT_HTTP_LISTEN, "http.listen")?;
    let files_base = files_base(cx, p.boot_files_over, server, http_listen, tftp_listen)?;
    let (dhcp, ra_interface) = match &s.dhcp {
        None => (None, None),
        Some(d) => {
            let around = dhcp::Around { server, boot_dir: &boot_dir, state_dir: s.state_dir, clients: s.clients, http_listen };
            dhcp::dhcp(cx, d, &around)?
        }
    };
    Ok(PxeConfig {
        script: ScriptParams { server, nbd_port: s.nbd_port, attach: p.attach.unwrap_or_default(), files_base },
        boot_dir,
        boot,
        tftp_listen,
        tftp_blksize_caps,
        dhcp,
        ra_interface,
        http_listen,
    })
}

/// Each image's kernel, initrd, command line and partition: both files or
/// neither (an image without them is served over NBD only).
fn boot_specs(cx: &Cx, images: &BTreeMap<String, wire::Image>) -> Result<BTreeMap<String, BootSpec>, ConfigError> {
    let mut boot = BTreeMap::new();
    for (name, image) in images {
        match (&image.kernel, &image.initrd) {
            (Some(k), Some(i)) => {
                let cmdline = image.cmdline.clone().unwrap_or_default();
                boot.insert(name.clone(), BootSpec { kernel: k.clone(), initrd: i.clone(), cmdline, partition: image.partition });
            }
            (None, None) => {}
            _ => {
                return Err(cx.err(
                    &format!("images.{name}"),
                    "has only one of kernel and initrd".into(),
                    "give both (paths inside pxe.boot_dir), or neither",
                ))
            }
        }
    }
    Ok(boot)
}

/// Where scripts fetch kernel and initrd: HTTP when it is served, unless
/// `boot_files_over` says TFTP.
fn files_base(
    cx: &Cx,
    over: Option<wire::Transport>,
    server: std::net::Ipv4Addr,
    http: Option<SocketAddr>,
    tftp: Option<SocketAddr>,
) -> Result<String, ConfigError> {
    use wire::Transport::{Http, Tftp};
    match (over, http, tftp) {
        (None | Some(Http), Some(h), _) => Ok(format!("http://{server}:{}", h.port())),
        (Some(Http), None, _) => {
            Err(cx.err("pxe.boot_files_over", "is \"http\" but HTTP is disabled".into(), "enable [http], or use \"tftp\""))
        }
        (None | Some(Tftp), _, Some(_)) => Ok(format!("tftp://{server}")),
        (Some(Tftp), _, None) => {
            Err(cx.err("pxe.boot_files_over", "is \"tftp\" but TFTP is disabled".into(), "enable [tftp], or use \"http\""))
        }
        (None, None, None) => Err(cx.err("pxe", "serves boot files over neither HTTP nor TFTP".into(), "enable [http] or [tftp]")),
    }
}

/// `[tftp.blksize_caps]`: a block size cap per client address or prefix.
fn blksize_caps(cx: &Cx, caps: Option<&BTreeMap<String, u16>>) -> Result<Vec<crate::tftp::BlksizeCap>, ConfigError> {
    let mut out = Vec::new();
    for (net, &blksize) in caps.into_iter().flatten() {
        let key = format!("tftp.blksize_caps.\"{net}\"");
        let (a, p) = net.split_once('/').unwrap_or((net, "32"));
        let network = a
            .parse()
            .map_err(|_| cx.err(&key, format!("{net:?} is not an IPv4 address or prefix"), "write \"10.0.0.7\" or \"10.0.0.0/24\""))?;
        let prefix = p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| cx.err(&key, format!("{net:?} has a bad prefix length"), "use /0 to /32"))?;
        if !(crate::tftp::packet::MIN_BLKSIZE..=crate::tftp::MAX_BLOCK_SIZE).contains(&blksize) {
            return Err(cx.err(
                &key,
                format!("{blksize} is not a usable block size"),
                "use 8 to 1468 (1024 and 1432 are common for picky UEFI clients)",
            ));
        }
        out.push(crate::tftp::BlksizeCap { network, prefix, blksize });
    }
    Ok(out)
}
