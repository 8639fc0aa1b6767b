//! Open overlays: one per MAC however many connections it has, and the
//! busy guard. A MAC is *busy* while its overlay file is being opened (by a
//! first connection), discarded (a new ephemeral boot) or closed (by the
//! last connection): its file is in flux, so the next attach or new boot
//! of that MAC waits, while other MACs' files open and close in parallel
//! outside the lock. The file work itself is the registry's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::overlay::Overlay;
use crate::mac::Mac;

struct Slot {
    overlay: Arc<Overlay>,
    connections: usize,
}

#[derive(Default)]
struct Open {
    slots: HashMap<Mac, Slot>,
    busy: HashSet<Mac>,
}

/// Every open overlay, and the busy MACs.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<Open>,
    /// Signalled when a MAC stops being busy.
    idle: Condvar,
}

/// A MAC marked busy, unmarked when this is dropped (also by a panic or an
/// error): a MAC can never stay busy for good.
pub struct Busy<'a> {
    sessions: &'a Sessions,
    mac: Mac,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.sessions.lock().busy.remove(&self.mac);
        self.sessions.idle.notify_all();
    }
}

/// What a new connection of a MAC finds.
pub enum Joined<'a> {
    /// The overlay is open: this connection shares it (counted).
    Open(Arc<Overlay>),
    /// None is: the MAC is busy until the caller opens the file and
    /// [`Sessions::publish`]es it, or gives up (drops the guard).
    Opening(Busy<'a>),
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock, once `mac` is not busy.
    fn lock_idle(&self, mac: Mac) -> MutexGuard<'_, Open> {
        let mut open = self.lock();
        while open.busy.contains(&mac) {
            open = self.idle.wait(open).unwrap_or_else(|p| p.into_inner());
        }
        open
    }

    /// Mark `mac` busy and let go of the lock.
    fn mark_busy(&self, mut open: MutexGuard<'_, Open>, mac: Mac) -> Busy<'_> {
        open.busy.insert(mac);
        Busy { sessions: self, mac }
    }

    /// A new connection of `mac`, once it is not busy.
    pub fn join(&self, mac: Mac) -> Joined<'_> {
        let mut open = self.lock_idle(mac);
        if let Some(slot) = open.slots.get_mut(&mac) {
            slot.connections += 1;
            return Joined::Open(slot.overlay.clone());
        }
        Joined::Opening(self.mark_busy(open, mac))
    }

    /// The overlay a [`Joined::Opening`] connection opened, with that
    /// connection counted; published before the MAC stops being busy, so
    /// waiters wake to find it.
    pub fn publish(&self, busy: Busy<'_>, overlay: Arc<Overlay>) {
        self.lock().slots.insert(busy.mac, Slot { overlay, connections: 1 });
        drop(busy);
    }

    /// A connection let go of `overlay`. The last one gets the MAC busy
    /// (its slot removed) to flush and close the file before any new
    /// connection opens it; an overlay orphaned by [`Sessions::reset`] is
    /// not counted here.
    pub fn leave(&self, mac: Mac, overlay: &Arc<Overlay>) -> Option<Busy<'_>> {
        let mut open = self.lock();
        match open.slots.get_mut(&mac) {
            Some(slot) if !Arc::ptr_eq(&slot.overlay, overlay) => None,
            Some(slot) if slot.connections > 1 => {
                slot.connections -= 1;
                None
            }
            Some(_) => {
                open.slots.remove(&mac);
                Some(self.mark_busy(open, mac))
            }
            None => None,
        }
    }

    /// A new boot of `mac`: once it is not busy, forget its open overlay
    /// (connections of the previous boot keep it, orphaned: true when there
    /// was one) and mark it busy while the caller discards the files.
    pub fn reset(&self, mac: Mac) -> (Busy<'_>, bool) {
        let mut open = self.lock_idle(mac);
        let orphaned = open.slots.remove(&mac).is_some();
        (self.mark_busy(open, mac), orphaned)
    }

    /// Whether `mac` has a connection open (its root is attached).
    pub fn is_attached(&self, mac: Mac) -> bool {
        self.lock().slots.contains_key(&mac)
    }

    /// Every open overlay (for the flush at shutdown).
    pub fn overlays(&self) -> Vec<(Mac, Arc<Overlay>)> {
        self.lock().slots.iter().map(|(m, s)| (*m, s.overlay.clone())).collect()
    }
}
