//! The composition root: what `pxeroot serve` and `pxeroot nbd` run.
//! [`Daemon::from_config`] opens the registry and binds nothing yet; it
//! returns every enabled service as a future that takes the one shutdown
//! token. [`Daemon::run`] runs them in one `JoinSet` until a signal, or until
//! one fails; then every service stops accepting and drains its admitted
//! work the same way (`listen::Admission`, bounded by
//! `listen::DRAIN_TIMEOUT`), and NBD flushes every overlay last.
//!
//! The signal handlers are installed before the first port is bound, so a
//! SIGTERM that arrives as soon as a port answers still stops the daemon
//! cleanly (overlays flushed). Modelled on mini-redis's `server.rs`: one
//! place wires, one place stops.

mod preflight;
mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, PxeConfig};
use crate::storage::registry::{ClientRule, ImageSpec, OverlayPolicy, Registry};
use crate::storage::StorageError;
use reload::Reload;

/// What keeps the daemon from starting or ends it with a failure.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the configured images")]
    Images(#[source] StorageError),
    #[error("cannot serve {path}")]
    BootDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the export name {0:?} looks like a MAC address; pass --name with another name")]
    ExportNameIsMac(String),
    #[error("no service is enabled in the configuration")]
    NoService,
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the {service} service failed")]
    Service {
        service: &'static str,
        #[source]
        source: ServiceError,
    },
    #[error("the {service} service's task panicked")]
    Panicked { service: &'static str },
}

/// Why one service stopped before the shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Nbd(#[from] crate::nbd::NbdError),
    #[error(transparent)]
    Tftp(#[from] crate::tftp::TftpError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error(transparent)]
    Dhcp(#[from] crate::dhcp::DhcpError),
    #[error(transparent)]
    Ra(#[from] crate::ra::RaError),
}

type Running = Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send>>;

/// One service, ready to run: its name (for the log) and its future.
struct Service {
    name: &'static str,
    run: Running,
}

/// Every enabled service, wired, with the one shutdown token they share.
pub struct Daemon {
    registry: Arc<Registry>,
    services: Vec<Service>,
    reload: Option<Reload>,
    signals: Signals,
    shutdown: CancellationToken,
}

impl Daemon {
    /// `pxeroot serve`: the services `config` (read from `file`) enables.
    /// Needs a runtime (the NBD listeners are bound here, the others as
    /// their services start).
    pub async fn from_config(file: &Path, config: Config) -> Result<Daemon, DaemonError> {
        preflight::warn_attach(file, &config);
        let running = config.clone();
        let mut registry = Registry::new(config.state_dir, config.images, config.clients, config.unknown, config.default_image)
            .map_err(DaemonError::Images)?;
        if let Some(pxe) = &config.pxe {
            preflight::warn_boot_files(file, &registry, pxe);
            if pxe.tftp_listen.is_some() || pxe.http_listen.is_some() {
                registry = registry.with_boot_events(config.require_boot_address);
            }
        }
        Daemon::build(registry, config.nbd_listen, config.pxe, Some((file.to_path_buf(), running))).await
    }

    /// `pxeroot nbd`: one base under `name`, an overlay per MAC-shaped
    /// export name, on `listen`.
    pub async fn single_image(
        base: &Path,
        state_dir: PathBuf,
        listen: SocketAddr,
        policy: OverlayPolicy,
        name: Option<String>,
    ) -> Result<Daemon, DaemonError> {
        let name = name.unwrap_or_else(|| base.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "base".into()));
        if name.parse::<crate::mac::Mac>().is_ok() {
            return Err(DaemonError::ExportNameIsMac(name));
        }
        let image = ImageSpec { name: name.clone(), path: base.to_path_buf(), description: format!("{}", base.display()) };
        let rule = ClientRule { image: name.clone(), policy };
        let registry = Registry::new(state_dir, vec![image], Default::default(), Some(rule), Some(name)).map_err(DaemonError::Images)?;
        Daemon::build(registry, Some(vec![listen]), None, None).await
    }

    /// Wire the services around one registry. `reloadable`: the file a
    /// SIGHUP re-reads, and the configuration running now.
    async fn build(
        registry: Registry,
        nbd_listen: Option<Vec<SocketAddr>>,
        pxe: Option<PxeConfig>,
        reloadable: Option<(PathBuf, Config)>,
    ) -> Result<Daemon, DaemonError> {
        let signals = Signals::install()?;
        let shutdown = CancellationToken::new();
        let registry = Arc::new(registry);
        let mut services = Vec::new();
        let mut add = |name: &'static str, run: Running| services.push(Service { name, run });
        if let Some(addrs) = nbd_listen {
            let listeners = crate::nbd::bind(&addrs).await.map_err(|e| DaemonError::Service { service: "NBD", source: e.into() })?;
            let (r, s) = (registry.clone(), shutdown.clone());
            add(
                "NBD",
                Box::pin(async move {
                    crate::nbd::serve(listeners, r, s).await;
                    Ok(())
                }),
            );
        }
        let (mut resolver, mut leases) = (None, None);
        if let Some(p) = pxe {
            let r = Arc::new(
                crate::bootfiles::Resolver::new(&p.boot_dir, registry.clone(), p.script, p.boot)
                    .map_err(|source| DaemonError::BootDir { path: p.boot_dir.clone(), source })?,
            );
            resolver = Some(r.clone());
            if let Some(addr) = p.tftp_listen {
                let (s, r, caps) = (shutdown.clone(), r.clone(), Arc::new(p.tftp_blksize_caps));
                add("TFTP", Box::pin(async move { Ok(crate::tftp::serve(addr, r, caps, s).await?) }));
            }
            if let Some(addr) = p.http_listen {
                let (s, r) = (shutdown.clone(), r.clone());
                add("HTTP", Box::pin(async move { Ok(crate::http::serve(addr, r, s).await?) }));
            }
            if let Some(i) = p.ra_interface {
                let s = shutdown.clone();
                add("router advertisement", Box::pin(async move { Ok(crate::ra::serve(i, s).await?) }));
            }
            if let Some(d) = p.dhcp {
                leases = crate::dhcp::open_leases(&d);
                let (l, r, s) = (leases.clone(), registry.clone(), shutdown.clone());
                add("DHCP", Box::pin(async move { Ok(crate::dhcp::serve(d, l, r, s).await?) }));
            }
        }
        if services.is_empty() {
            return Err(DaemonError::NoService);
        }
        let reload = reloadable.map(|(file, running)| Reload { file, running, leases, resolver });
        Ok(Daemon { registry, services, reload, signals, shutdown })
    }

    /// Run every service until SIGTERM or SIGINT, or until one fails; then
    /// stop them all and wait for each to drain. SIGHUP reloads.
    pub async fn run(self) -> Result<(), DaemonError> {
        let Daemon { registry, services, reload, mut signals, shutdown } = self;
        let mut set = JoinSet::new();
        let mut names = std::collections::HashMap::new();
        for Service { name, run } in services {
            names.insert(set.spawn(run).id(), name);
        }
        let ended = |done: Result<(tokio::task::Id, Result<(), ServiceError>), tokio::task::JoinError>| {
            let (id, result) = match done {
                Ok((id, r)) => (id, r.map_err(Some)),
                // Tasks are never aborted: a JoinError is a panic.
                Err(e) => (e.id(), Err(None)),
            };
            let service = names.get(&id).copied().unwrap_or("unnamed");
            match result {
                Ok(()) => Ok(()),
                Err(Some(source)) => Err(DaemonError::Service { service, source }),
                Err(None) => Err(DaemonError::Panicked { service }),
            }
        };
        let failed = tokio::select! {
            () = signals.until_stopped(&registry, reload.as_ref()) => None,
            Some(done) = set.join_next_with_id() => Some(done),
        };
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        shutdown.cancel();
        let mut first_failure = failed.and_then(|done| ended(done).err());
        while let Some(done) = set.join_next_with_id().await {
            if let Err(e) = ended(done) {
                tracing::error!(error = %crate::nbd::format_chain(&e), "service failed");
                first_failure.get_or_insert(e);
            }
        }
        match first_failure {
            Some(e) => Err(e),
            None => {
                tracing::info!("stopped");
                Ok(())
            }
        }
    }
}

/// The signals the daemon answers, installed before any port is opened:
/// a SIGTERM that comes as soon as a port answers (a test, systemd) must
/// find the handler, not the default action that kills without a flush.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    /// A hangup must not end the daemon without its shutdown, as the
    /// default action does: it means "reload" to daemons.
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &'static str| signal(kind).map_err(|source| DaemonError::Signal { signal: name, source });
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Until SIGTERM or SIGINT; a SIGHUP reloads the configuration file
    /// (`serve`) or is said to do nothing (`nbd`, which has none).
    async fn until_stopped(&mut self, registry: &Registry, reload: Option<&Reload>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => match reload {
                    Some(r) => r.apply(registry),
                    None => tracing::warn!("SIGHUP ignored: `pxeroot nbd` has no configuration file to reload"),
                },
            }
        }
    }
}

/// Build a runtime and run `daemon` (built inside it) to its end.
pub fn run_blocking<F>(build: F) -> Result<(), DaemonError>
where
    F: Future<Output = Result<Daemon, DaemonError>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(DaemonError::Runtime)?;
    rt.block_on(async move { build.await?.run().await })
}
