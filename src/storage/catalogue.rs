//! The catalogue: which images exist and which image and policy a MAC
//! gets. Pure lookups in memory (the bases are opened before it is built);
//! the client table is swapped whole by a reload.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};

use super::base::BaseImage;
use super::records::BaseRecord;
use crate::mac::Mac;

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

/// A client table the catalogue cannot take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogueError {
    /// Images are opened at start only.
    #[error("{}, which this daemon did not open at start (a new image needs a restart)", keys.join(", "))]
    ImagesNotOpened {
        /// `clients."MAC" names image "x"`, one per offending rule.
        keys: Vec<String>,
    },
}

/// An opened base and what the catalogue says about it.
pub(super) struct Image {
    pub(super) base: Arc<BaseImage>,
    /// What an overlay made over it records (checked at each open).
    pub(super) fingerprint: BaseRecord,
    pub(super) description: String,
}

/// Who may boot what: the configured clients, and the rule for the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clients {
    pub by_mac: BTreeMap<Mac, ClientRule>,
    /// What a MAC without an entry gets; `None`: refused.
    pub unknown: Option<ClientRule>,
}

/// What [`Catalogue::set_clients`] changed, for the log.
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

/// The images (fixed at start) and the client table (swapped by reloads).
pub struct Catalogue {
    images: BTreeMap<String, Image>,
    clients: RwLock<Clients>,
    /// The image served under the empty export name.
    default_image: Option<String>,
}

impl Catalogue {
    pub(super) fn new(images: BTreeMap<String, Image>, clients: Clients, default_image: Option<String>) -> Catalogue {
        Catalogue { images, clients: RwLock::new(clients), default_image }
    }

    pub(super) fn image(&self, name: &str) -> Option<&Image> {
        self.images.get(name)
    }

    /// The base of image `name`, for checks at start.
    pub fn base(&self, name: &str) -> Option<&BaseImage> {
        self.images.get(name).map(|i| &*i.base)
    }

    /// Map an export name to what it serves.
    pub fn resolve(&self, name: &str) -> Result<Target, ResolveError> {
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

    /// The rule for `mac`: its own entry, else unknown clients'.
    pub fn rule(&self, mac: Mac) -> Option<ClientRule> {
        let clients = self.read_clients();
        clients.by_mac.get(&mac).or(clients.unknown.as_ref()).cloned()
    }

    /// The image a client boots (configured, or the unknown-client default).
    pub fn image_of(&self, mac: Mac) -> Option<String> {
        self.rule(mac).map(|r| r.image)
    }

    fn read_clients(&self) -> RwLockReadGuard<'_, Clients> {
        // A poisoned lock only means a reader panicked: the table is whole
        // (it is only ever replaced whole).
        self.clients.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace who may boot what (a configuration reload). Every rule must
    /// name an image opened at start; else nothing changes and the error
    /// names the rules. `has_overlay` says which MACs have an overlay file
    /// (asked before the swap, for the stale ones).
    pub fn set_clients(&self, new: Clients, has_overlay: impl Fn(Mac) -> Option<PathBuf>) -> Result<ClientsChange, CatalogueError> {
        let keys: Vec<String> = new
            .by_mac
            .iter()
            .map(|(mac, r)| (format!("clients.\"{mac}\""), r))
            .chain(new.unknown.iter().map(|r| ("unknown_clients".to_string(), r)))
            .filter(|(_, r)| !self.images.contains_key(&r.image))
            .map(|(key, r)| format!("{key} names image {:?}", r.image))
            .collect();
        if !keys.is_empty() {
            return Err(CatalogueError::ImagesNotOpened { keys });
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
            if before.is_some_and(|old| old.image != rule.image) {
                if let Some(path) = has_overlay(*mac) {
                    change.stale_overlays.push((*mac, path));
                }
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
            Target::Image(n) => n.clone(),
            Target::Client(mac) => self.rule(*mac)?.image,
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
}
