//! The subcommands' bodies: each builds what it needs and runs it. `main.rs`
//! only parses arguments and calls one of these.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::future::Future;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::nbd;
use crate::storage::registry::{ClientRule, ImageSpec, OverlayPolicy, Registry};

/// `pxeroot check-config`: validate and summarise.
pub fn check_config(file: &Path) -> Result<()> {
    let c = Config::load(file)?;
    println!("{}: OK", file.display());
    println!("  state directory: {}", c.state_dir.display());
    match &c.nbd_listen {
        Some(l) => println!("  nbd: listening on {}", l.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")),
        None => println!("  nbd: disabled"),
    }
    for i in &c.images {
        println!("  image {}: {}", i.name, i.path.display());
    }
    for (mac, r) in &c.clients {
        println!("  client {mac}: image {} ({:?})", r.image, r.policy);
    }
    match &c.unknown {
        Some(r) => println!("  unknown clients: boot image {} ({:?})", r.image, r.policy),
        None => println!("  unknown clients: refused"),
    }
    match &c.pxe {
        Some(p) => {
            println!("  pxe: server {}, boot files from {}, attach {}", p.script.server, p.boot_dir.display(), p.script.attach);
            for (image, b) in &p.boot {
                println!("  boot {image}: kernel {} initrd {}", b.kernel, b.initrd);
            }
            match p.tftp_listen {
                Some(a) => println!("  tftp: listening on {a}"),
                None => println!("  tftp: disabled"),
            }
            match p.http_listen {
                Some(a) => println!("  http: listening on {a}"),
                None => println!("  http: disabled"),
            }
            println!("  scripts fetch kernel and initrd from {}", p.script.files_base);
            for missing in p.missing_image_files() {
                println!("  warning: {missing}");
            }
            let firmware = p.missing_firmware_files();
            if !firmware.is_empty() {
                println!("  not in the boot directory (only firmware without iPXE fetches them): {}", firmware.join("; "));
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
                    println!(
                        "  dhcp: {mode} on {}, UEFI {:?}, files {:?}",
                        d.interface.as_deref().unwrap_or("all interfaces"),
                        d.uefi,
                        d.files
                    )
                }
                None => println!("  dhcp: off"),
            }
        }
        None => println!("  pxe: not configured (NBD only)"),
    }
    Ok(())
}

/// `pxeroot serve`: every service the config enables, in one runtime.
pub fn serve(file: &Path) -> Result<()> {
    let c = Config::load(file)?;
    if c.pxe.as_ref().is_some_and(|p| p.script.attach == "ioctl") {
        tracing::warn!(
            config = %file.display(),
            "pxe.attach = \"ioctl\": a systemd root loses its last writes at shutdown (systemd stops every process, \
             which drops an NBD_DO_IT connection); use \"netlink\" unless the clients' kernel lacks NBD netlink"
        );
    }
    let listen = c.nbd_listen.clone();
    let running = c.clone();
    let mut registry =
        Registry::new(c.state_dir, c.images, c.clients, c.unknown, c.default_image).context("cannot open the configured images")?;
    if let Some(pxe) = &c.pxe {
        warn_unnamed_root_partitions(file, &registry, pxe);
        for missing in pxe.missing_image_files() {
            tracing::warn!(config = %file.display(), "{missing}");
        }
    }
    if c.pxe.as_ref().is_some_and(|p| p.tftp_listen.is_some() || p.http_listen.is_some()) {
        registry = registry.with_boot_events(c.require_boot_address);
    }
    run(registry, listen, c.pxe, Some(Reload { file: file.to_path_buf(), running, leases: None, resolver: None }))
}

/// What a SIGHUP re-reads: the file, against the configuration the daemon
/// started with (what a reload does not apply stays as it was then).
struct Reload {
    file: PathBuf,
    running: Config,
    /// Full mode's lease table, whose reservations follow the clients'
    /// `address` keys.
    leases: Option<crate::dhcp::Leases>,
    /// The scripts' renderer, whose images' boot files and arguments follow
    /// the `[images]` tables' kernel, initrd, cmdline and partition.
    resolver: Option<Arc<crate::bootfiles::Resolver>>,
}

impl Reload {
    /// Apply what may change without a restart: who boots what
    /// (`[clients]` images, policies and full mode's reserved addresses,
    /// `[unknown_clients]`) and what an image boots (its kernel, initrd,
    /// cmdline and partition). A file that
    /// does not validate, or names an image not opened at start, changes
    /// nothing. Anything else that changed is named as waiting for a restart.
    fn apply(&self, registry: &Registry) {
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
            let mut tables = leases.lock().unwrap_or_else(|e| e.into_inner());
            // Only onto the same pools: a reservation on another pool's
            // table would hand out an address of the wrong subnet.
            if tables.len() == pools.len() && tables.iter().zip(pools).all(|(t, p)| t.first() == p.range.0) {
                for (t, p) in tables.iter_mut().zip(pools) {
                    t.set_reservations(p.reservations.clone());
                    t.set_names(p.names.clone());
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

/// Warn about images whose clients would stop at boot: a partitioned disk
/// (GPT or MBR) whose root partition nothing names (no `partition`, no
/// `root=PARTUUID=`, `UUID=` or `LABEL=` in the cmdline, no GPT partition
/// of the Discoverable Partitions root type, which pxeroot-init would take
/// by itself).
fn warn_unnamed_root_partitions(file: &Path, registry: &Registry, pxe: &crate::config::PxeConfig) {
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

/// `pxeroot nbd`: one base, one overlay per MAC-shaped export name.
pub fn adhoc_nbd(base: &Path, state_dir: PathBuf, listen: SocketAddr, policy: OverlayPolicy, name: Option<String>) -> Result<()> {
    let name = name.unwrap_or_else(|| base.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "base".into()));
    if name.parse::<crate::mac::Mac>().is_ok() {
        anyhow::bail!("the export name {name:?} looks like a MAC address; pass --name with another name");
    }
    let image = ImageSpec { name: name.clone(), path: base.to_path_buf(), description: format!("{}", base.display()) };
    let rule = ClientRule { image: name.clone(), policy };
    let registry = Registry::new(state_dir, vec![image], BTreeMap::new(), Some(rule), Some(name))
        .with_context(|| format!("cannot serve {}", base.display()))?;
    run(registry, Some(vec![listen]), None, None)
}

fn run(
    registry: Registry,
    nbd_listen: Option<Vec<SocketAddr>>,
    pxe: Option<crate::config::PxeConfig>,
    mut reload: Option<Reload>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let registry = Arc::new(registry);
        let mut services: Vec<tokio::task::JoinHandle<Result<()>>> = Vec::new();
        if let Some(addrs) = nbd_listen {
            let listeners = nbd::bind(&addrs).await?;
            let (r, s) = (registry.clone(), shutdown.clone());
            services.push(tokio::spawn(async move {
                nbd::serve(listeners, r, s).await;
                Ok(())
            }));
        }
        if let Some(p) = pxe {
            let resolver = Arc::new(
                crate::bootfiles::Resolver::new(&p.boot_dir, registry.clone(), p.script, p.boot)
                    .with_context(|| format!("cannot serve {}", p.boot_dir.display()))?,
            );
            if let Some(r) = reload.as_mut() {
                r.resolver = Some(resolver.clone());
            }
            if let Some(addr) = p.tftp_listen {
                let (s, r) = (shutdown.clone(), resolver.clone());
                let caps = Arc::new(p.tftp_blksize_caps.clone());
                services.push(tokio::spawn(async move { crate::tftp::serve(addr, r, caps, s).await.map_err(anyhow::Error::from) }));
            }
            if let Some(addr) = p.http_listen {
                let (s, r) = (shutdown.clone(), resolver.clone());
                services.push(tokio::spawn(async move { crate::http::serve(addr, r, s).await.map_err(anyhow::Error::from) }));
            }
            if let Some(i) = p.ra_interface {
                let s = shutdown.clone();
                services.push(tokio::spawn(async move { crate::ra::serve(i, s).await.map_err(anyhow::Error::from) }));
            }
            if let Some(d) = p.dhcp {
                let leases = crate::dhcp::open_leases(&d);
                if let Some(r) = reload.as_mut() {
                    r.leases = leases.clone();
                }
                let (r, s) = (registry.clone(), shutdown.clone());
                services.push(tokio::spawn(async move { crate::dhcp::serve(d, leases, r, s).await.map_err(anyhow::Error::from) }));
            }
        }
        if services.is_empty() {
            anyhow::bail!("no service is enabled in the configuration");
        }
        // Run until a signal, or until a service fails (then stop the rest).
        let failed = tokio::select! {
            r = wait_for_signal(&registry, reload.as_ref()) => { r?; None }
            r = futures_lite::future::poll_fn(|cx| {
                for (i, s) in services.iter_mut().enumerate() {
                    if let std::task::Poll::Ready(r) = std::pin::Pin::new(s).poll(cx) {
                        return std::task::Poll::Ready((i, r));
                    }
                }
                std::task::Poll::Pending
            }) => Some(r),
        };
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        shutdown.cancel();
        // The failed service's handle is spent: awaiting it again panics.
        let spent = failed.as_ref().map(|(i, _)| *i);
        for (i, s) in services.into_iter().enumerate() {
            if Some(i) == spent {
                continue;
            }
            if let Ok(Err(e)) = s.await {
                tracing::error!(error = %format!("{e:#}"), "service failed");
            }
        }
        if let Some((_, r)) = failed {
            r.context("a service task panicked")?.context("a service failed")?;
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// Until SIGTERM or SIGINT; a SIGHUP reloads the configuration file
/// (`serve`) or is said to do nothing (`nbd`, which has none).
async fn wait_for_signal(registry: &Registry, reload: Option<&Reload>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    // A hangup must not end the daemon without its shutdown, as the
    // default action does: it means "reload" to daemons.
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match reload {
                Some(r) => r.apply(registry),
                None => tracing::warn!("SIGHUP ignored: `pxeroot nbd` has no configuration file to reload"),
            },
        }
    }
}

/// Where `boot/pxeroot-init/build-static` leaves the static init, relative
/// to the workspace (musl first: it is the smaller build).
const INIT_CANDIDATES: &[&str] =
    &["target/x86_64-unknown-linux-musl/init/pxeroot-init", "target/x86_64-unknown-linux-gnu/init/pxeroot-init"];

/// `pxeroot initramfs`.
pub fn initramfs(
    modules_dir: PathBuf,
    output: PathBuf,
    extra_modules: Vec<String>,
    nics: Vec<crate::initramfs::Nic>,
    compression: crate::initramfs::Compression,
    init: Option<PathBuf>,
    firmware_dir: PathBuf,
) -> Result<()> {
    use crate::initramfs::{build, Options};
    let init = match init {
        Some(p) => p,
        None => {
            // Next to this binary's target directory, or the current directory.
            let exe_root = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()));
            let roots: Vec<PathBuf> = exe_root.into_iter().chain(std::iter::once(PathBuf::from("."))).collect();
            roots
                .iter()
                .flat_map(|r| INIT_CANDIDATES.iter().map(move |c| r.join(c)))
                .find(|p| p.is_file())
                .context("no pxeroot-init binary found: run boot/pxeroot-init/build-static, or pass --init")?
        }
    };
    println!("building {} from {} (init: {})", output.display(), modules_dir.display(), init.display());
    let r =
        build(&Options { modules_dir, firmware_dir: firmware_dir.clone(), output: output.clone(), extra_modules, nics, compression, init })
            .context("building the initramfs failed")?;
    for (m, size) in &r.modules {
        println!("  module {m:<24} {size:>9} bytes");
    }
    for (f, size) in &r.firmware {
        println!("  firmware {f:<22} {size:>9} bytes");
    }
    for (m, n) in &r.firmware_missing {
        println!(
            "  ({m} names {n} firmware files, none under {}: most of its NICs come up without, those that need one do not; install {})",
            firmware_dir.display(),
            crate::initramfs::firmware_package(m)
        );
    }
    for m in &r.skipped {
        println!("  (no {m} in this kernel: skipped)");
    }
    println!(
        "{}: {} modules, init {} bytes, cpio {} bytes, written {} bytes ({:.2} MB, {})",
        output.display(),
        r.modules.len(),
        r.init_size,
        r.cpio_size,
        r.output_size,
        r.output_size as f64 / 1e6,
        r.compression.name()
    );
    Ok(())
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
