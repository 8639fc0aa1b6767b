//! The overlay registry: the composition of storage's rooms. The
//! [`Catalogue`] says which image and policy a MAC gets (pure lookups),
//! [`Records`] keeps the state directory's small files (base records, boot
//! addresses, in memory once read), [`Sessions`] holds the open overlays
//! and the busy guard. This module opens and closes the overlay files
//! between them.
//!
//! Architecture invariant: an overlay is opened only here, and at most once
//! per MAC; every connection of that MAC shares it (one flush domain, which
//! is what makes CAN_MULTI_CONN true). The last connection to leave closes it
//! after a flush.
//!
//! Each overlay `<state>/<mac>.qcow2` has a sidecar `<mac>.base.toml` that
//! records the base it was made from (path, size, fingerprint): opening it
//! over a base that changed is refused, because the overlay's clusters only
//! make sense on top of the exact bytes they were copied from.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::base::BaseImage;
use super::catalogue::{Catalogue, Image};
use super::overlay::Overlay;
use super::records::{self, RecordError, Records};
use super::sessions::{Joined, Sessions};
use super::{Extent, Result, StorageError};
use crate::mac::Mac;

pub use super::catalogue::{CatalogueError, ClientRule, Clients, ClientsChange, ImageSpec, OverlayPolicy, ResolveError, Target};
pub use super::records::STATE_LOCK_FILE;

/// Why a connection may not open a client's overlay from its address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("client {mac} booted from {booted_from}; its overlay is not opened for {peer} (nbd.require_boot_address = false allows any address)")]
    BootedElsewhere { mac: Mac, booted_from: IpAddr, peer: IpAddr },
    #[error(
        "client {mac} has not booted through this server yet, so no address may open its overlay \
         (nbd.require_boot_address = false allows any address)"
    )]
    NeverBooted { mac: Mac },
}

/// Why an export could not be opened for a connection.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The client table changed (a reload) between the name's lookup and the open.
    #[error("client {mac} is not configured")]
    NotConfigured { mac: Mac },
    #[error("image {name:?} is not served")]
    NoImage { name: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the overlay's records")]
    Record(#[from] RecordError),
    /// The blocking task that opened it panicked.
    #[error("the open task failed: {0}")]
    Task(String),
}

pub struct Registry {
    /// Two daemons on one state directory would reset and rewrite each
    /// other's overlays, sidecars and leases: the second one refuses to start.
    _state_lock: nix::fcntl::Flock<std::fs::File>,
    catalogue: Catalogue,
    records: Records,
    sessions: Sessions,
    /// Ephemeral overlays are reset when a session starts with no other
    /// connection of that MAC open, unless the PXE side says when a boot
    /// starts ([`Registry::with_boot_events`]).
    reset_on_new_session: bool,
    /// When set, a client's overlay opens only for connections from the
    /// address it last booted from (recorded by `new_boot`).
    require_boot_address: bool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// Open every base (read-only) and fingerprint it. Errors here are
    /// configuration errors: a missing or unreadable image.
    pub fn new(
        state_dir: PathBuf,
        images: Vec<ImageSpec>,
        clients: BTreeMap<Mac, ClientRule>,
        unknown: Option<ClientRule>,
        default_image: Option<String>,
    ) -> Result<Registry> {
        std::fs::create_dir_all(&state_dir).map_err(|source| StorageError::Open { path: state_dir.clone(), source })?;
        let state_lock = records::lock_state_dir(&state_dir)?;
        let mut opened = BTreeMap::new();
        for spec in images {
            let path = std::path::absolute(&spec.path).unwrap_or(spec.path.clone());
            let base = Arc::new(BaseImage::open(&path)?);
            let fingerprint = records::fingerprint(&base)?;
            tracing::info!(image = %spec.name, path = %path.display(), format = base.format().name(), size = base.size(), "base image opened read-only");
            opened.insert(spec.name, Image { base, fingerprint, description: spec.description });
        }
        Ok(Registry {
            _state_lock: state_lock,
            catalogue: Catalogue::new(opened, Clients { by_mac: clients, unknown }, default_image),
            records: Records::open(state_dir),
            sessions: Sessions::default(),
            reset_on_new_session: true,
            require_boot_address: false,
        })
    }

    /// From now on a boot starts only when [`Registry::new_boot`] says so
    /// (the PXE side calls it when a client fetches its boot script), not
    /// whenever a session starts with no other connection open. This keeps
    /// an ephemeral overlay across an NBD reconnect within one boot.
    pub fn with_boot_events(mut self, require_boot_address: bool) -> Registry {
        self.reset_on_new_session = false;
        self.require_boot_address = require_boot_address;
        self
    }

    /// Who boots what: pure lookups.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The base of image `name`, for checks at start.
    pub fn base(&self, name: &str) -> Option<&BaseImage> {
        self.catalogue.base(name)
    }

    /// Map an export name to what it serves.
    pub fn resolve(&self, name: &str) -> std::result::Result<Target, ResolveError> {
        self.catalogue.resolve(name)
    }

    /// The image a client boots (configured, or the unknown-client default).
    pub fn image_of(&self, mac: Mac) -> Option<String> {
        self.catalogue.image_of(mac)
    }

    /// Whether `mac` has an NBD connection open (its root is attached).
    pub fn is_attached(&self, mac: Mac) -> bool {
        self.sessions.is_attached(mac)
    }

    /// Whether `peer` may open `mac`'s overlay: with boot addresses
    /// required, only from the address that client last booted from (read
    /// from memory: recorded at each boot, and at start from the state
    /// directory, so a reconnect after a restart still passes).
    pub fn check_access(&self, mac: Mac, peer: IpAddr) -> std::result::Result<(), AccessError> {
        if !self.require_boot_address {
            return Ok(());
        }
        match self.records.booted_from(mac) {
            Some(a) if a == peer => Ok(()),
            Some(booted_from) => Err(AccessError::BootedElsewhere { mac, booted_from, peer }),
            None => Err(AccessError::NeverBooted { mac }),
        }
    }

    /// Replace who may boot what (a configuration reload); see
    /// [`Catalogue::set_clients`]. New connections follow the new table;
    /// open ones keep their overlays.
    pub fn set_clients(&self, new: Clients) -> std::result::Result<ClientsChange, CatalogueError> {
        self.catalogue.set_clients(new, |mac| Some(self.records.overlay_path(mac)).filter(|p| p.exists()))
    }

    pub fn overlay_path(&self, mac: Mac) -> PathBuf {
        self.records.overlay_path(mac)
    }

    /// Open what `target` serves for one connection.
    pub fn open(self: &Arc<Self>, target: &Target) -> std::result::Result<Disk, OpenError> {
        match target {
            Target::Image(name) => match self.catalogue.image(name) {
                Some(i) => Ok(Disk::Base(i.base.clone())),
                None => Err(OpenError::NoImage { name: name.clone() }),
            },
            Target::Client(mac) => Ok(Disk::Overlay(self.attach(*mac)?)),
        }
    }

    fn attach(self: &Arc<Self>, mac: Mac) -> std::result::Result<OverlayHandle, OpenError> {
        let busy = match self.sessions.join(mac) {
            Joined::Open(overlay) => return Ok(OverlayHandle { registry: self.clone(), mac, overlay: Some(overlay) }),
            Joined::Opening(busy) => busy,
        };
        let rule = self.catalogue.rule(mac).ok_or(OpenError::NotConfigured { mac })?;
        // The file work (a new overlay is several syncs) happens while only
        // this MAC is busy, not under the sessions' lock.
        if rule.policy == OverlayPolicy::Ephemeral && self.reset_on_new_session {
            self.records.discard(mac)?;
        }
        let overlay = Arc::new(self.open_or_create(mac, &rule)?);
        self.sessions.publish(busy, overlay.clone());
        Ok(OverlayHandle { registry: self.clone(), mac, overlay: Some(overlay) })
    }

    fn open_or_create(&self, mac: Mac, rule: &ClientRule) -> std::result::Result<Overlay, OpenError> {
        let image = self.catalogue.image(&rule.image).ok_or_else(|| OpenError::NoImage { name: rule.image.clone() })?;
        let path = self.records.overlay_path(mac);
        if path.exists() {
            let changed = |reason: String| StorageError::BaseChanged { overlay: path.clone(), reason };
            let record = self.records.read_base(mac).map_err(|e| match e {
                RecordError::Io { path, source, .. } => changed(format!("its base record {} cannot be read ({source})", path.display())),
                RecordError::Malformed { path, reason } => changed(format!("its base record {} is malformed ({reason})", path.display())),
            })?;
            if record != image.fingerprint {
                return Err(changed(format!(
                    "it was made from {} ({} bytes, fingerprint {}), the base is now {} ({} bytes, fingerprint {})",
                    record.path.display(),
                    record.size,
                    record.fingerprint,
                    image.fingerprint.path.display(),
                    image.fingerprint.size,
                    image.fingerprint.fingerprint
                ))
                .into());
            }
            let overlay = Overlay::open(&path, image.base.clone())?;
            tracing::info!(%mac, overlay = %path.display(), "overlay opened");
            return Ok(overlay);
        }
        // The record goes first: an overlay never exists without one.
        self.records.write_base(mac, &image.fingerprint)?;
        let overlay = Overlay::create(&path, image.base.clone())?;
        tracing::info!(%mac, image = %rule.image, policy = ?rule.policy, overlay = %path.display(), "overlay created");
        Ok(overlay)
    }

    /// The hook for "this MAC started a new boot", from `address`: records
    /// the address (see `check_access`) and resets an ephemeral overlay when
    /// none of that client's connections is open. Returns whether it was reset.
    pub fn new_boot(&self, mac: Mac, address: IpAddr) -> std::result::Result<bool, RecordError> {
        self.records.record_boot(mac, address)?;
        let ephemeral = matches!(self.catalogue.rule(mac), Some(r) if r.policy == OverlayPolicy::Ephemeral);
        if !ephemeral {
            return Ok(false);
        }
        // Its first connection may be opening it, or its last one flushing
        // it, right now: `reset` waits that out, then holds the MAC busy
        // while the files go, so the new boot's first connection cannot
        // open the old overlay in between.
        let (_busy, orphaned) = self.sessions.reset(mac);
        if orphaned {
            // Connections of the previous boot are still open (a machine
            // reset without DISC leaves them until TCP keepalive gives up).
            // They keep the old overlay, now unlinked; this boot gets a new one.
            tracing::warn!(%mac, "new boot while connections of the previous boot are still open: their overlay is orphaned");
        }
        self.records.discard(mac)?;
        Ok(true)
    }

    /// A connection let go of `overlay`. The last one flushes and closes it
    /// while the MAC is busy, so no new connection opens the file before
    /// this one has closed it.
    fn detach(&self, mac: Mac, overlay: Arc<Overlay>) {
        let Some(busy) = self.sessions.leave(mac, &overlay) else { return };
        match overlay.flush() {
            Ok(()) => tracing::info!(%mac, "last connection closed, overlay flushed and closed"),
            Err(e) => tracing::error!(%mac, error = %e, "flushing overlay on close failed"),
        }
        // The file closes with its last reference; only then is the MAC idle.
        drop(overlay);
        drop(busy);
    }

    /// Flush every open overlay (at shutdown).
    pub fn flush_all(&self) -> Vec<(Mac, StorageError)> {
        self.sessions.overlays().into_iter().filter_map(|(m, o)| o.flush().err().map(|e| (m, e))).collect()
    }
}

/// One connection's hold on a client's overlay.
#[derive(Debug)]
pub struct OverlayHandle {
    registry: Arc<Registry>,
    mac: Mac,
    /// Always `Some` until `drop` hands it back to the registry.
    overlay: Option<Arc<Overlay>>,
}

impl OverlayHandle {
    fn overlay(&self) -> &Overlay {
        self.overlay.as_deref().expect("an attached handle holds its overlay until dropped")
    }
}

impl Drop for OverlayHandle {
    fn drop(&mut self) {
        if let Some(o) = self.overlay.take() {
            self.registry.detach(self.mac, o);
        }
    }
}

/// What one NBD connection reads and writes.
#[derive(Debug)]
pub enum Disk {
    Base(Arc<BaseImage>),
    Overlay(OverlayHandle),
}

impl Disk {
    pub fn size(&self) -> u64 {
        match self {
            Disk::Base(b) => b.size(),
            Disk::Overlay(h) => h.overlay().size(),
        }
    }

    pub fn read_only(&self) -> bool {
        matches!(self, Disk::Base(_))
    }

    pub fn read(&self, buf: &mut [u8], off: u64) -> Result<()> {
        match self {
            Disk::Base(b) => b.read_at(buf, off),
            Disk::Overlay(h) => h.overlay().read(buf, off),
        }
    }

    pub fn extents(&self, off: u64, len: u64) -> Result<Vec<Extent>> {
        match self {
            Disk::Base(b) => b.extents(off, len),
            Disk::Overlay(h) => h.overlay().extents(off, len),
        }
    }

    /// The overlay for writes; `None` on a read-only export (the NBD shell
    /// refuses writes to those before they get here).
    pub fn writable(&self) -> Option<&Overlay> {
        match self {
            Disk::Base(_) => None,
            Disk::Overlay(h) => Some(h.overlay()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(image: &str, policy: OverlayPolicy) -> ClientRule {
        ClientRule { image: image.into(), policy }
    }

    /// A reload's client table: what changed, the overlays a new image
    /// makes stale, and a table naming an image not opened, refused whole.
    #[test]
    fn test_set_clients_reports_changes_and_refuses_unknown_images() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.img"), vec![0u8; 65536]).unwrap();
        let images =
            ["debian", "other"].map(|n| ImageSpec { name: n.into(), path: d.path().join("a.img"), description: n.into() }).to_vec();
        let (a, b, c): (Mac, Mac, Mac) =
            ("52:54:00:00:00:0a".parse().unwrap(), "52:54:00:00:00:0b".parse().unwrap(), "52:54:00:00:00:0c".parse().unwrap());
        let start = BTreeMap::from([(a, rule("debian", OverlayPolicy::Persistent)), (b, rule("debian", OverlayPolicy::Persistent))]);
        let r = Registry::new(d.path().join("state"), images, start, None, None).unwrap();
        std::fs::write(r.overlay_path(a), b"").unwrap();
        let change = r
            .set_clients(Clients {
                by_mac: BTreeMap::from([(a, rule("other", OverlayPolicy::Persistent)), (c, rule("debian", OverlayPolicy::Ephemeral))]),
                unknown: Some(rule("debian", OverlayPolicy::Ephemeral)),
            })
            .unwrap();
        assert_eq!((change.added, change.removed, change.changed.clone()), (vec![c], vec![b], vec![a]));
        assert!(change.unknown_changed);
        assert_eq!(change.stale_overlays, vec![(a, r.overlay_path(a))]);
        assert_eq!(r.image_of(a).as_deref(), Some("other"));
        // b is gone from the table, but unknown clients now boot debian.
        assert_eq!(r.image_of(b).as_deref(), Some("debian"));
        let err = r.set_clients(Clients { by_mac: BTreeMap::from([(b, rule("ubuntu", OverlayPolicy::Persistent))]), unknown: None });
        assert!(err.unwrap_err().to_string().contains("clients.\"52:54:00:00:00:0b\" names image \"ubuntu\""));
        assert_eq!(r.image_of(a).as_deref(), Some("other"), "a refused table changed something");
        // b booted as an unknown client (debian) and has an overlay: given
        // its own entry with another image, that overlay is stale too.
        std::fs::write(r.overlay_path(b), b"").unwrap();
        let change =
            r.set_clients(Clients { by_mac: BTreeMap::from([(b, rule("other", OverlayPolicy::Persistent))]), unknown: None }).unwrap();
        assert_eq!((change.added, change.stale_overlays), (vec![b], vec![(b, r.overlay_path(b))]));
    }
}
