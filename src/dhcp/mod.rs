//! Proxy DHCP: the socket shell around [`decide::decide`]. Listens on UDP 67
//! (DISCOVER -> proxy OFFER) and 4011 (REQUEST -> ACK) beside the site's
//! own DHCP server. Malformed packets are dropped with a debug log; a flood
//! from one MAC is rate-limited without starving others.

pub mod decide;
pub mod full;
pub mod leases;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::mac::Mac;
use crate::storage::registry::Registry;
use decide::{BootFiles, Context, Port, UefiStrategy};

/// Largest DHCP packet we read (an Ethernet MTU; RFC 2131 minimum is 576).
pub const MAX_PACKET: usize = 1500;
/// Replies per MAC per [`RATE_WINDOW`]: firmware retries a few times a minute.
pub const MAX_REPLIES_PER_MAC: u32 = 10;
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// MACs the rate limiter remembers; older entries are dropped past this.
pub const MAX_TRACKED_MACS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(transparent)]
    Bind(#[from] crate::listen::BindError),
}

/// Proxy beside another DHCP server, or the only DHCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Proxy,
    Full {
        /// The first serves pxeroot's own segment (requests not relayed)
        /// and its subnet's relay; each other one a relayed segment.
        pools: Vec<full::Pool>,
        lease_secs: u64,
        /// Where leases are kept across restarts (every pool's).
        leases_file: std::path::PathBuf,
    },
}

/// What the DHCP service needs from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    pub mode: Mode,
    pub server: Ipv4Addr,
    pub interface: Option<String>,
    pub files: BootFiles,
    pub uefi: UefiStrategy,
    /// Per vendor-class-prefix override of `uefi`.
    pub uefi_by_class: Vec<(String, UefiStrategy)>,
    /// `http://server:port` when HTTP is served (answers UEFI HTTP boot).
    pub http_base: Option<String>,
    /// Ports, 67 and 4011 unless a test moves them.
    pub dhcp_port: u16,
    pub pxe_port: u16,
    /// Where the offered firmware boot files should be (pxe.boot_dir).
    pub boot_dir: std::path::PathBuf,
}

/// Per-MAC rate limiting, pure: time comes in as an argument.
#[derive(Debug, Default)]
pub struct RateLimiter {
    seen: HashMap<Mac, (Instant, u32)>,
}

impl RateLimiter {
    /// Whether a reply to `mac` may go out at `now`.
    pub fn allow(&mut self, mac: Mac, now: Instant) -> bool {
        if self.seen.len() >= MAX_TRACKED_MACS && !self.seen.contains_key(&mac) {
            self.seen.retain(|_, (start, _)| now.duration_since(*start) < RATE_WINDOW);
        }
        let e = self.seen.entry(mac).or_insert((now, 0));
        if now.duration_since(e.0) >= RATE_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= MAX_REPLIES_PER_MAC
    }
}

/// What else to do when a port cannot be had (the fix's last words): 67
/// beside a DHCP server on the same host, and 4011.
const DHCP_SHARED_PORT_FIX: &str = "a DHCP server on this host shares port 67 with pxeroot only if it allows it \
     (SO_REUSEADDR): dnsmasq does with bind-interfaces or bind-dynamic; or run pxeroot on another host of the segment, \
     or set dhcp.mode = \"off\"";
const PXE_PORT_FIX: &str = "another proxy DHCP server (dnsmasq's pxe-service, WDS) may hold it: stop it, or set dhcp.mode = \"off\"";

fn socket(port: u16, interface: Option<&str>, elsewhere: &str) -> Result<UdpSocket, DhcpError> {
    let err = |error: std::io::Error| {
        let at = format!("UDP {port}{}", interface.map(|i| format!(" on {i}")).unwrap_or_default());
        DhcpError::from(crate::listen::BindError::new("DHCP", at, port, error, elsewhere))
    };
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    if let Some(i) = interface {
        s.bind_device(Some(i.as_bytes())).map_err(err)?;
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into()).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// Full mode's pools, each with its lease table, in the config's order:
/// shared by the DHCP service and a reload (which replaces their
/// reservations and names).
pub type Leases = Arc<std::sync::Mutex<Vec<full::ServedPool>>>;

/// Full mode's pools with the leases kept in their file, each pool taking
/// the leases on its subnet; `None` in proxy mode.
pub fn open_leases(cfg: &DhcpConfig) -> Option<Leases> {
    let Mode::Full { pools, lease_secs, leases_file } = &cfg.mode else { return None };
    let text = match std::fs::read_to_string(leases_file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            warn!(file = %leases_file.display(), error = %e, "DHCP lease file unreadable");
            None
        }
    };
    let mut served = Vec::new();
    for pool in pools {
        let mut s = full::ServedPool::new(pool, *lease_secs);
        if let Some(text) = &text {
            match s.leases.load(text) {
                Ok(()) => s.leases.retain_subnet(pool.network.netmask),
                Err(e) => warn!(file = %leases_file.display(), error = %e, "DHCP lease file ignored"),
            }
        }
        served.push(s);
    }
    if text.is_some() {
        info!(file = %leases_file.display(), "DHCP leases loaded");
    }
    Some(Arc::new(std::sync::Mutex::new(served)))
}

/// Every pool's leases, for the file.
fn leases_text(pools: &[full::ServedPool]) -> String {
    pools.iter().map(|p| p.leases.save()).collect()
}

/// Serve DHCP until `shutdown`; `leases` from [`open_leases`].
pub async fn serve(cfg: DhcpConfig, leases: Option<Leases>, registry: Arc<Registry>, shutdown: CancellationToken) -> Result<(), DhcpError> {
    let dhcp = socket(cfg.dhcp_port, cfg.interface.as_deref(), DHCP_SHARED_PORT_FIX)?;
    let pxe = socket(cfg.pxe_port, cfg.interface.as_deref(), PXE_PORT_FIX)?;
    let mode = if matches!(cfg.mode, Mode::Full { .. }) { "full" } else { "proxy" };
    info!(server = %cfg.server, interface = ?cfg.interface, "{mode} DHCP listening on UDP {} and {}", cfg.dhcp_port, cfg.pxe_port);
    if let Mode::Full { pools, .. } = &cfg.mode {
        for (i, pool) in pools.iter().enumerate() {
            let serves = if i == 0 { "this segment and relays from its subnet" } else { "relays from its subnet" };
            info!(first = %pool.range.0, last = %pool.range.1, netmask = %pool.network.netmask, "full DHCP: handing out addresses to {serves}");
        }
    }
    let cfg = Arc::new(cfg);
    let limiter = Arc::new(std::sync::Mutex::new(RateLimiter::default()));
    let a = tokio::spawn(listen(dhcp, Port::Dhcp, cfg.clone(), registry.clone(), limiter.clone(), leases.clone(), shutdown.clone()));
    let b = tokio::spawn(listen(pxe, Port::Pxe, cfg, registry, limiter, None, shutdown));
    let _ = tokio::join!(a, b);
    Ok(())
}

/// Write the lease table. Not synced: it changes with every lease, and a
/// host crash that loses the last change costs a client its old address at
/// worst (it asks for it again, and gets it if it is free).
fn save_leases(path: &std::path::Path, text: &str) {
    if let Err(e) = crate::statefile::replace(path, text.as_bytes(), crate::statefile::Durability::Cached) {
        warn!(file = %path.display(), error = %e, "saving DHCP leases failed");
    }
}

async fn listen(
    sock: UdpSocket,
    port: Port,
    cfg: Arc<DhcpConfig>,
    registry: Arc<Registry>,
    limiter: Arc<std::sync::Mutex<RateLimiter>>,
    leases: Option<Leases>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_PACKET];
    let may_boot = |m: Mac| registry.image_of(m).is_some();
    let in_use = |m: Mac| registry.is_attached(m);
    let script_url = |m: Mac| crate::bootfiles::script_url(cfg.server, m);
    loop {
        let (n, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "DHCP receive failed");
                    continue;
                }
            },
        };
        let req = match dhcproto::v4::Message::decode(&mut Decoder::new(&buf[..n])) {
            Ok(m) => m,
            Err(e) => {
                debug!(%from, bytes = n, error = %e, "malformed DHCP packet dropped");
                continue;
            }
        };
        let decided = {
            let ctx = Context {
                server: cfg.server,
                files: &cfg.files,
                uefi: cfg.uefi,
                may_boot: &may_boot,
                script_url: &script_url,
                http_base: cfg.http_base.as_deref(),
                uefi_by_class: &cfg.uefi_by_class,
                in_use: &in_use,
            };
            match (&leases, &cfg.mode) {
                (Some(served), Mode::Full { leases_file, .. }) => {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                    let mut pools = served.lock().unwrap_or_else(|p| p.into_inner());
                    let generation = |p: &[full::ServedPool]| p.iter().map(|p| p.leases.generation()).sum::<u64>();
                    let before = generation(&pools);
                    let r = full::decide_full_pools(&req, &ctx, &mut pools, now);
                    if generation(&pools) != before {
                        save_leases(leases_file, &leases_text(&pools));
                    }
                    match r {
                        Ok(Some(x)) => Ok(x),
                        Ok(None) => continue,
                        Err(e) => Err(e),
                    }
                }
                _ => decide::decide(&req, port, &ctx),
            }
        };
        let (reply, seen) = match decided {
            Ok(x) => x,
            Err(why) => {
                // PXE firmware we will not boot is worth a line (once per
                // MAC within the reply rate limit); the rest is traffic.
                match why.refused_client() {
                    Some(mac) if limiter.lock().map(|mut l| l.allow(mac, Instant::now())).unwrap_or(true) => {
                        info!(%mac, "not booted: {why}")
                    }
                    _ => debug!(%from, ?why, "DHCP request not answered"),
                }
                continue;
            }
        };
        let allowed = limiter.lock().map(|mut l| l.allow(seen.mac, Instant::now())).unwrap_or(true);
        if !allowed {
            debug!(mac = %seen.mac, "DHCP reply rate-limited");
            continue;
        }
        let to = decide::destination(&req, &reply, port, from);
        let mut out = Vec::with_capacity(512);
        if let Err(e) = reply.encode(&mut Encoder::new(&mut out)) {
            warn!(error = %e, "encoding a DHCP reply failed");
            continue;
        }
        match sock.send_to(&out, to).await {
            Ok(_) => {
                warn_if_missing(&cfg, &seen, port);
                let relay = (!req.giaddr().is_unspecified()).then(|| req.giaddr());
                info!(mac = %seen.mac, request = ?seen.kind, relay = ?relay, reply = %reply.opts().msg_type().map_or_else(|| "?".to_string(), |k| format!("{k:?}")), address = %reply.yiaddr(), arch = ?seen.arch, ipxe = seen.ipxe, offered = ?seen.offered, not_booted = seen.not_booted.as_ref().map(tracing::field::display), "DHCP: client answered")
            }
            Err(e) => warn!(mac = %seen.mac, %to, error = %e, "sending the DHCP reply failed"),
        }
    }
}

/// Offering firmware a boot file the boot directory does not serve (not
/// there, or a symlink leading out of it) makes its TFTP fetch fail, and
/// the firmware says little more than "not found": say so here, with where
/// the file usually comes from; once per boot attempt (the offer, or the
/// ACK on port 4011; not full mode's ACK).
fn warn_if_missing(cfg: &DhcpConfig, seen: &decide::Seen, port: Port) {
    let Some(file) = seen.offered.as_deref() else { return };
    let repeat = seen.kind == dhcproto::v4::MessageType::Request && port == Port::Dhcp;
    if repeat || file.contains("://") {
        return;
    }
    if let Err(why) = crate::bootfiles::servable(&cfg.boot_dir, file) {
        warn!(mac = %seen.mac, file, boot_dir = %cfg.boot_dir.display(), "offered a boot file that is not in the boot directory ({why}): the firmware's fetch will fail; {}", firmware_source(file, &cfg.files));
    }
}

/// Where a firmware boot file comes from.
pub fn firmware_source(file: &str, files: &BootFiles) -> &'static str {
    if file == files.bios {
        "for BIOS firmware: Debian's ipxe package has /usr/lib/ipxe/undionly.kpxe"
    } else if file == files.uefi_x64 {
        "for UEFI x64 firmware: Debian's ipxe package has /usr/lib/ipxe/ipxe.efi"
    } else if file == files.uefi_arm64 {
        "for ARM64 UEFI firmware: iPXE's bin-arm64-efi/ipxe.efi (no Debian 12 package has it)"
    } else {
        "copy it there, or change dhcp.*_file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rate_limiter_per_mac_window() {
        let mut l = RateLimiter::default();
        let t = Instant::now();
        let a = Mac([1, 2, 3, 4, 5, 6]);
        let b = Mac([1, 2, 3, 4, 5, 7]);
        for _ in 0..MAX_REPLIES_PER_MAC {
            assert!(l.allow(a, t));
        }
        assert!(!l.allow(a, t), "flood not limited");
        assert!(l.allow(b, t), "another MAC starved");
        assert!(l.allow(a, t + RATE_WINDOW), "window did not reset");
    }
}
