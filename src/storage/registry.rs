//! The overlay registry: which export names exist, and one open overlay per
//! client MAC however many connections that client has.
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

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::base::BaseImage;
use super::overlay::Overlay;
use super::{Extent, Result, StorageError};
use crate::mac::Mac;
use crate::statefile::{self, Durability};

/// What happens to a client's overlay between boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OverlayPolicy {
    /// Kept across reboots and daemon restarts.
    Persistent,
    /// Thrown away when the client starts a new boot.
    Ephemeral,
}

/// A base image as the registry serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub name: String,
    pub path: PathBuf,
    pub description: String,
}

/// Which image a client boots and what happens to its overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRule {
    pub image: String,
    pub policy: OverlayPolicy,
}

/// What an export name refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A read-only export of a base image.
    Image(String),
    /// A client's overlay.
    Client(Mac),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("no export named {name:?}: use an image name or a client MAC")]
    Unknown { name: String },
    #[error("client {mac} is not configured and unknown clients are refused")]
    UnknownClient { mac: Mac },
}

struct Image {
    base: Arc<BaseImage>,
    fingerprint: BaseRecord,
    description: String,
}

/// The sidecar: which base an overlay belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaseRecord {
    path: PathBuf,
    size: u64,
    /// xxh3-128 over the size and sampled content, hex.
    fingerprint: String,
}

struct Slot {
    overlay: Arc<Overlay>,
    connections: usize,
}

/// Who may boot what: the configured clients, and the rule for the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clients {
    pub by_mac: BTreeMap<Mac, ClientRule>,
    /// What a MAC without an entry gets; `None`: refused.
    pub unknown: Option<ClientRule>,
}

/// What [`Registry::set_clients`] changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientsChange {
    pub added: Vec<Mac>,
    pub removed: Vec<Mac>,
    /// Another image or policy.
    pub changed: Vec<Mac>,
    pub unknown_changed: bool,
    /// Clients whose image changed while they have an overlay of the old
    /// one: it is refused until it is deleted (or the image changed back).
    pub stale_overlays: Vec<(Mac, PathBuf)>,
}

/// In the state directory: held (flock) by the pxeroot that uses it, and
/// holding that process's ID for the message another one gets.
pub const STATE_LOCK_FILE: &str = "pxeroot.lock";

pub struct Registry {
    state_dir: PathBuf,
    /// Two daemons on one state directory would reset and rewrite each
    /// other's overlays, sidecars and leases: the second one refuses to start.
    _state_lock: nix::fcntl::Flock<std::fs::File>,
    images: BTreeMap<String, Image>,
    /// Swapped whole by [`Registry::set_clients`] (a reload).
    clients: std::sync::RwLock<Clients>,
    /// The image served under the empty export name.
    default_image: Option<String>,
    /// Ephemeral overlays are reset when a session starts with no other
    /// connection of that MAC open. The PXE side will own this decision
    /// (a DHCP DISCOVER is the real start of a boot) and turn this off.
    reset_on_new_session: bool,
    /// When set, a client's overlay opens only for connections from the
    /// address it last booted from (recorded by `new_boot`).
    require_boot_address: bool,
    open: Mutex<Open>,
    /// Signalled when a MAC stops being busy (its overlay opened or closed).
    idle: Condvar,
}

/// Open overlays, and the MACs whose overlay file is being opened (by a
/// first connection) or closed (by the last one) right now: a busy MAC's
/// file is in flux, so `attach` and `new_boot` wait for it, while other
/// MACs' overlays open and close in parallel, outside the lock.
#[derive(Default)]
struct Open {
    slots: HashMap<Mac, Slot>,
    busy: std::collections::HashSet<Mac>,
}

/// A MAC marked busy while its overlay file opens, closes or is discarded,
/// unmarked when this is dropped (also by a panic or an error): a MAC can never stay
/// busy for good.
struct Busy<'a> {
    registry: &'a Registry,
    mac: Mac,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.registry.lock_open().busy.remove(&self.mac);
        self.registry.idle.notify_all();
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("state_dir", &self.state_dir).finish_non_exhaustive()
    }
}

/// Bytes sampled for a base's fingerprint: the first and last MiB and 62
/// slices of 64 KiB spread over the rest. Reading a whole multi-GiB base at
/// every start would be too slow; a different image build changes these.
const FINGERPRINT_EDGE: u64 = 1 << 20;
const FINGERPRINT_SAMPLES: u64 = 62;
const FINGERPRINT_SAMPLE: u64 = 64 << 10;

fn fingerprint(base: &BaseImage) -> Result<BaseRecord> {
    let file = base.file();
    let path = base.path();
    let len = file.metadata().map_err(|e| StorageError::io("stat", path, 0, e))?.len();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&len.to_le_bytes());
    let mut ranges = vec![(0, FINGERPRINT_EDGE.min(len))];
    for i in 1..=FINGERPRINT_SAMPLES {
        ranges.push((len / (FINGERPRINT_SAMPLES + 1) * i, FINGERPRINT_SAMPLE));
    }
    ranges.push((len.saturating_sub(FINGERPRINT_EDGE), FINGERPRINT_EDGE));
    let mut buf = vec![0u8; FINGERPRINT_EDGE as usize];
    for (off, n) in ranges {
        let n = n.min(len.saturating_sub(off)) as usize;
        file.read_exact_at(&mut buf[..n], off).map_err(|e| StorageError::io("fingerprint", path, off, e))?;
        h.update(&buf[..n]);
    }
    Ok(BaseRecord { path: path.to_path_buf(), size: base.size(), fingerprint: format!("{:032x}", h.digest128()) })
}

/// Take the state directory's lock, or say which process holds it.
fn lock_state_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::{Seek, Write};
    let path = dir.join(STATE_LOCK_FILE);
    let open_err = |source| StorageError::Open { path: path.clone(), source };
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(open_err)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let pid = format!("{}\n", std::process::id());
            lock.set_len(0).and_then(|_| lock.rewind()).and_then(|_| lock.write_all(pid.as_bytes())).map_err(open_err)?;
            Ok(lock)
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok());
            Err(StorageError::StateDirInUse { dir: dir.to_path_buf(), pid })
        }
        Err((_, e)) => Err(open_err(e.into())),
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
        let state_lock = lock_state_dir(&state_dir)?;
        let mut opened = BTreeMap::new();
        for spec in images {
            let path = std::path::absolute(&spec.path).unwrap_or(spec.path.clone());
            let base = Arc::new(BaseImage::open(&path)?);
            let fingerprint = fingerprint(&base)?;
            tracing::info!(image = %spec.name, path = %path.display(), format = base.format().name(), size = base.size(), "base image opened read-only");
            opened.insert(spec.name, Image { base, fingerprint, description: spec.description });
        }
        Ok(Registry {
            state_dir,
            _state_lock: state_lock,
            images: opened,
            clients: std::sync::RwLock::new(Clients { by_mac: clients, unknown }),
            default_image,
            reset_on_new_session: true,
            require_boot_address: false,
            open: Mutex::new(Open::default()),
            idle: Condvar::new(),
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

    fn boot_address_path(&self, mac: Mac) -> PathBuf {
        self.state_dir.join(format!("{}.boot-address", mac.file_stem()))
    }

    /// Whether `peer` may open `mac`'s overlay: with boot addresses
    /// required, only from the address that client last booted from (kept
    /// in the state directory, so a reconnect after a restart still passes).
    /// The base of image `name`, for checks at start.
    pub fn base(&self, name: &str) -> Option<&BaseImage> {
        self.images.get(name).map(|i| &*i.base)
    }

    pub fn check_access(&self, mac: Mac, peer: std::net::IpAddr) -> std::result::Result<(), String> {
        if !self.require_boot_address {
            return Ok(());
        }
        let recorded = std::fs::read_to_string(self.boot_address_path(mac)).ok().and_then(|t| t.trim().parse::<std::net::IpAddr>().ok());
        match recorded {
            Some(a) if a == peer => Ok(()),
            Some(a) => Err(format!(
                "client {mac} booted from {a}; its overlay is not opened for {peer} (nbd.require_boot_address = false allows any address)"
            )),
            None => Err(format!(
                "client {mac} has not booted through this server yet, so no address may open its overlay \
                 (nbd.require_boot_address = false allows any address)"
            )),
        }
    }

    /// Map an export name to what it serves.
    pub fn resolve(&self, name: &str) -> std::result::Result<Target, ResolveError> {
        if name.is_empty() {
            if let Some(image) = &self.default_image {
                return Ok(Target::Image(image.clone()));
            }
        }
        if self.images.contains_key(name) {
            return Ok(Target::Image(name.to_string()));
        }
        match name.parse::<Mac>() {
            Ok(mac) if self.rule(mac).is_some() => Ok(Target::Client(mac)),
            Ok(mac) => Err(ResolveError::UnknownClient { mac }),
            Err(_) => Err(ResolveError::Unknown { name: name.to_string() }),
        }
    }

    /// Whether `mac` has an NBD connection open (its root is attached).
    pub fn is_attached(&self, mac: Mac) -> bool {
        self.lock_open().slots.contains_key(&mac)
    }

    /// The image a client boots (configured, or the unknown-client default).
    pub fn image_of(&self, mac: Mac) -> Option<String> {
        self.rule(mac).map(|r| r.image.clone())
    }

    fn rule(&self, mac: Mac) -> Option<ClientRule> {
        let clients = self.read_clients();
        clients.by_mac.get(&mac).or(clients.unknown.as_ref()).cloned()
    }

    fn read_clients(&self) -> std::sync::RwLockReadGuard<'_, Clients> {
        // A poisoned lock only means a reader panicked: the table is whole
        // (it is only ever replaced whole).
        self.clients.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace who may boot what (a configuration reload). Every rule must
    /// name an image this registry serves (images are opened at start
    /// only); else nothing changes and the error names the clients. New
    /// connections follow the new table; open ones keep their overlays.
    pub fn set_clients(&self, new: Clients) -> std::result::Result<ClientsChange, String> {
        let unknown_image: Vec<String> = new
            .by_mac
            .iter()
            .map(|(mac, r)| (format!("clients.\"{mac}\""), r))
            .chain(new.unknown.iter().map(|r| ("unknown_clients".to_string(), r)))
            .filter(|(_, r)| !self.images.contains_key(&r.image))
            .map(|(key, r)| format!("{key} names image {:?}", r.image))
            .collect();
        if !unknown_image.is_empty() {
            return Err(format!("{}, which this daemon did not open at start (a new image needs a restart)", unknown_image.join(", ")));
        }
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        let mut change = ClientsChange { unknown_changed: clients.unknown != new.unknown, ..ClientsChange::default() };
        for (mac, rule) in &new.by_mac {
            match clients.by_mac.get(mac) {
                None => change.added.push(*mac),
                Some(old) if old != rule => change.changed.push(*mac),
                Some(_) => {}
            }
            // Its overlay was made over the image it booted until now (its
            // own entry's, or unknown clients').
            let before = clients.by_mac.get(mac).or(clients.unknown.as_ref());
            if before.is_some_and(|old| old.image != rule.image) && self.overlay_path(*mac).exists() {
                change.stale_overlays.push((*mac, self.overlay_path(*mac)));
            }
        }
        change.removed = clients.by_mac.keys().filter(|m| !new.by_mac.contains_key(m)).copied().collect();
        *clients = new;
        Ok(change)
    }

    /// Export names and descriptions a client may open: every image, and
    /// every configured client.
    pub fn list(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> =
            self.images.iter().map(|(n, i)| (n.clone(), format!("{} (read-only)", i.description))).collect();
        for (mac, rule) in &self.read_clients().by_mac {
            out.push((mac.to_string(), format!("overlay of {} for {mac} ({:?})", rule.image, rule.policy)));
        }
        out
    }

    /// Size of what `target` serves, without opening an overlay.
    pub fn size(&self, target: &Target) -> Option<u64> {
        let image = match target {
            Target::Image(n) => n,
            Target::Client(mac) => &self.rule(*mac)?.image,
        };
        self.images.get(image.as_str()).map(|i| i.base.size())
    }

    pub fn description(&self, target: &Target) -> String {
        match target {
            Target::Image(n) => self.images.get(n).map(|i| i.description.clone()).unwrap_or_default(),
            Target::Client(mac) => match self.rule(*mac) {
                Some(r) => format!("overlay of {} for {mac}", r.image),
                None => String::new(),
            },
        }
    }

    /// Open what `target` serves for one connection.
    pub fn open(self: &Arc<Self>, target: &Target) -> Result<Disk> {
        match target {
            Target::Image(name) => match self.images.get(name) {
                Some(i) => Ok(Disk::Base(i.base.clone())),
                None => Err(StorageError::Corrupt { path: name.into(), reason: "image vanished from the registry".into() }),
            },
            Target::Client(mac) => Ok(Disk::Overlay(self.attach(*mac)?)),
        }
    }

    pub fn overlay_path(&self, mac: Mac) -> PathBuf {
        self.state_dir.join(format!("{}.qcow2", mac.file_stem()))
    }

    fn record_path(&self, mac: Mac) -> PathBuf {
        self.state_dir.join(format!("{}.base.toml", mac.file_stem()))
    }

    fn lock_open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock, once `mac` is not busy.
    fn lock_idle(&self, mac: Mac) -> MutexGuard<'_, Open> {
        let mut open = self.lock_open();
        while open.busy.contains(&mac) {
            open = self.idle.wait(open).unwrap_or_else(|p| p.into_inner());
        }
        open
    }

    /// Mark `mac` busy and let go of the lock: the file work that follows
    /// runs outside it, and the mark goes when the returned guard does.
    fn mark_busy<'a>(&'a self, mut open: MutexGuard<'_, Open>, mac: Mac) -> Busy<'a> {
        open.busy.insert(mac);
        Busy { registry: self, mac }
    }

    fn attach(self: &Arc<Self>, mac: Mac) -> Result<OverlayHandle> {
        let mut open = self.lock_idle(mac);
        if let Some(slot) = open.slots.get_mut(&mac) {
            slot.connections += 1;
            return Ok(OverlayHandle { registry: self.clone(), mac, overlay: Some(slot.overlay.clone()) });
        }
        let rule = self
            .rule(mac)
            .ok_or_else(|| StorageError::Corrupt { path: self.overlay_path(mac), reason: "client is not configured".into() })?;
        // The file work (a new overlay is several syncs) happens outside the
        // lock: only this MAC waits for it, not every other client's attach.
        let busy = self.mark_busy(open, mac);
        if rule.policy == OverlayPolicy::Ephemeral && self.reset_on_new_session {
            self.discard(mac)?;
        }
        let overlay = Arc::new(self.open_or_create(mac, &rule)?);
        // Published before the MAC stops being busy (Busy's drop): waiters
        // wake to find the slot.
        self.lock_open().slots.insert(mac, Slot { overlay: overlay.clone(), connections: 1 });
        drop(busy);
        Ok(OverlayHandle { registry: self.clone(), mac, overlay: Some(overlay) })
    }

    fn open_or_create(&self, mac: Mac, rule: &ClientRule) -> Result<Overlay> {
        let image = self.images.get(&rule.image).ok_or_else(|| StorageError::Corrupt {
            path: self.overlay_path(mac),
            reason: format!("image {:?} is not configured", rule.image),
        })?;
        let path = self.overlay_path(mac);
        let record_path = self.record_path(mac);
        if path.exists() {
            let changed = |reason: String| StorageError::BaseChanged { overlay: path.clone(), reason };
            let text = std::fs::read_to_string(&record_path)
                .map_err(|e| changed(format!("its base record {} cannot be read ({e})", record_path.display())))?;
            let record: BaseRecord =
                toml::from_str(&text).map_err(|e| changed(format!("its base record {} is malformed ({e})", record_path.display())))?;
            if record != image.fingerprint {
                return Err(changed(format!(
                    "it was made from {} ({} bytes, fingerprint {}), the base is now {} ({} bytes, fingerprint {})",
                    record.path.display(),
                    record.size,
                    record.fingerprint,
                    image.fingerprint.path.display(),
                    image.fingerprint.size,
                    image.fingerprint.fingerprint
                )));
            }
            let overlay = Overlay::open(&path, image.base.clone())?;
            tracing::info!(%mac, overlay = %path.display(), "overlay opened");
            return Ok(overlay);
        }
        // The record goes first: an overlay never exists without one.
        let text =
            toml::to_string(&image.fingerprint).map_err(|e| StorageError::Corrupt { path: record_path.clone(), reason: e.to_string() })?;
        statefile::replace(&record_path, text.as_bytes(), Durability::Synced)
            .map_err(|e| StorageError::io("write base record", &record_path, 0, e))?;
        let overlay = Overlay::create(&path, image.base.clone())?;
        tracing::info!(%mac, image = %rule.image, policy = ?rule.policy, overlay = %path.display(), "overlay created");
        Ok(overlay)
    }

    /// Delete a client's overlay and its record (ephemeral reset).
    fn discard(&self, mac: Mac) -> Result<()> {
        let path = self.overlay_path(mac);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(%mac, overlay = %path.display(), "ephemeral overlay discarded"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove overlay", &path, 0, e)),
        }
        let record = self.record_path(mac);
        match std::fs::remove_file(&record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io("remove base record", &record, 0, e)),
            _ => Ok(()),
        }
    }

    /// The hook for "this MAC started a new boot", from `address`: records
    /// the address (see `check_access`) and resets an ephemeral overlay when
    /// none of that client's connections is open. Returns whether it was reset.
    pub fn new_boot(&self, mac: Mac, address: std::net::IpAddr) -> Result<bool> {
        // Synced: after a host crash, a restarted daemon must still let
        // this client's netlink reconnects in.
        let path = self.boot_address_path(mac);
        statefile::replace(&path, format!("{address}\n").as_bytes(), Durability::Synced)
            .map_err(|e| StorageError::io("record boot address", &path, 0, e))?;
        let ephemeral = matches!(self.rule(mac), Some(r) if r.policy == OverlayPolicy::Ephemeral);
        if !ephemeral {
            return Ok(false);
        }
        // Its first connection may be opening it, or its last one flushing
        // it, right now: wait that out.
        let mut open = self.lock_idle(mac);
        if open.slots.remove(&mac).is_some() {
            // Connections of the previous boot are still open (a machine
            // reset without DISC leaves them until TCP keepalive gives up).
            // They keep the old overlay, now unlinked; this boot gets a new one.
            tracing::warn!(%mac, "new boot while connections of the previous boot are still open: their overlay is orphaned");
        }
        // Busy while the files go, so the new boot's first connection
        // cannot open the old overlay in between.
        let _busy = self.mark_busy(open, mac);
        self.discard(mac)?;
        Ok(true)
    }

    /// A connection let go of `overlay`. The last one flushes and closes it
    /// while the MAC is marked busy, so no new connection opens the file
    /// before this one has closed it.
    fn detach(&self, mac: Mac, overlay: Arc<Overlay>) {
        let (slot, busy) = {
            let mut open = self.lock_open();
            match open.slots.get_mut(&mac) {
                // An overlay orphaned by `new_boot`: not this slot's to count.
                Some(slot) if !Arc::ptr_eq(&slot.overlay, &overlay) => return,
                Some(slot) if slot.connections > 1 => {
                    slot.connections -= 1;
                    return;
                }
                Some(_) => {
                    let slot = open.slots.remove(&mac);
                    (slot, self.mark_busy(open, mac))
                }
                None => return,
            }
        };
        match overlay.flush() {
            Ok(()) => tracing::info!(%mac, "last connection closed, overlay flushed and closed"),
            Err(e) => tracing::error!(%mac, error = %e, "flushing overlay on close failed"),
        }
        // The file closes with its last reference; only then is the MAC idle.
        drop(overlay);
        drop(slot);
        drop(busy);
    }

    /// Flush every open overlay (at shutdown).
    pub fn flush_all(&self) -> Vec<(Mac, StorageError)> {
        let overlays: Vec<(Mac, Arc<Overlay>)> = {
            let open = self.lock_open();
            open.slots.iter().map(|(m, s)| (*m, s.overlay.clone())).collect()
        };
        overlays.into_iter().filter_map(|(m, o)| o.flush().err().map(|e| (m, e))).collect()
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
        assert!(err.unwrap_err().contains("clients.\"52:54:00:00:00:0b\" names image \"ubuntu\""));
        assert_eq!(r.image_of(a).as_deref(), Some("other"), "a refused table changed something");
        // b booted as an unknown client (debian) and has an overlay: given
        // its own entry with another image, that overlay is stale too.
        std::fs::write(r.overlay_path(b), b"").unwrap();
        let change =
            r.set_clients(Clients { by_mac: BTreeMap::from([(b, rule("other", OverlayPolicy::Persistent))]), unknown: None }).unwrap();
        assert_eq!((change.added, change.stale_overlays), (vec![b], vec![(b, r.overlay_path(b))]));
    }
}
