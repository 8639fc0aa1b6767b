//! The state directory's small files about clients, and its lock: each
//! overlay's base record (`<mac>.base.toml`: the base it was made over),
//! each client's boot address (`<mac>.boot-address`: where it last booted
//! from), and `pxeroot.lock`. Boot addresses are read once at start and
//! kept in memory, so the NBD handshake's access check does no I/O.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::base::BaseImage;
use super::StorageError;
use crate::mac::Mac;
use crate::statefile::{self, Durability};

/// In the state directory: held (flock) by the pxeroot that uses it, and
/// holding that process's ID for the message another one gets.
pub const STATE_LOCK_FILE: &str = "pxeroot.lock";
const BOOT_ADDRESS_EXT: &str = "boot-address";

/// A record that could not be read, written or removed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RecordError + 'a {
    move |source| RecordError::Io { op, path: path.to_path_buf(), source }
}

/// The sidecar: which base an overlay belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseRecord {
    pub path: PathBuf,
    pub size: u64,
    /// xxh3-128 over the size and sampled content, hex.
    pub fingerprint: String,
}

/// Bytes sampled for a base's fingerprint: the first and last MiB and 62
/// slices of 64 KiB spread over the rest. Reading a whole multi-GiB base at
/// every start would be too slow; a different image build changes these.
const FINGERPRINT_EDGE: u64 = 1 << 20;
const FINGERPRINT_SAMPLES: u64 = 62;
const FINGERPRINT_SAMPLE: u64 = 64 << 10;

/// The record an overlay made over `base` carries.
pub fn fingerprint(base: &BaseImage) -> Result<BaseRecord, StorageError> {
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
pub fn lock_state_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, StorageError> {
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

/// The state directory's per-client files.
pub struct Records {
    state_dir: PathBuf,
    /// Each client's last boot address: the files read at start, then
    /// every `record_boot`.
    boot_addresses: RwLock<HashMap<Mac, IpAddr>>,
}

impl Records {
    /// Read every client's boot address from `state_dir` (a file that does
    /// not parse is skipped: that client boots again to pass the check).
    pub fn open(state_dir: PathBuf) -> Records {
        let mut boot_addresses = HashMap::new();
        for entry in std::fs::read_dir(&state_dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(BOOT_ADDRESS_EXT) {
                continue;
            }
            let mac = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<Mac>().ok());
            let address = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<IpAddr>().ok());
            match (mac, address) {
                (Some(mac), Some(address)) => {
                    boot_addresses.insert(mac, address);
                }
                _ => tracing::warn!(file = %path.display(), "unreadable boot address record skipped"),
            }
        }
        Records { state_dir, boot_addresses: RwLock::new(boot_addresses) }
    }

    pub fn overlay_path(&self, mac: Mac) -> PathBuf {
        self.state_dir.join(format!("{}.qcow2", mac.file_stem()))
    }

    fn base_record_path(&self, mac: Mac) -> PathBuf {
        self.state_dir.join(format!("{}.base.toml", mac.file_stem()))
    }

    fn boot_address_path(&self, mac: Mac) -> PathBuf {
        self.state_dir.join(format!("{}.{BOOT_ADDRESS_EXT}", mac.file_stem()))
    }

    /// Where `mac` last booted from, if it ever booted through this server.
    pub fn booted_from(&self, mac: Mac) -> Option<IpAddr> {
        self.boot_addresses.read().unwrap_or_else(|e| e.into_inner()).get(&mac).copied()
    }

    /// `mac` booted from `address`: synced (after a host crash, a restarted
    /// daemon must still let that client's netlink reconnects in), then kept.
    pub fn record_boot(&self, mac: Mac, address: IpAddr) -> Result<(), RecordError> {
        let path = self.boot_address_path(mac);
        statefile::replace(&path, format!("{address}\n").as_bytes(), Durability::Synced).map_err(io_err("recording", &path))?;
        self.boot_addresses.write().unwrap_or_else(|e| e.into_inner()).insert(mac, address);
        Ok(())
    }

    /// The base record of `mac`'s overlay.
    pub fn read_base(&self, mac: Mac) -> Result<BaseRecord, RecordError> {
        let path = self.base_record_path(mac);
        let text = std::fs::read_to_string(&path).map_err(io_err("reading", &path))?;
        toml::from_str(&text).map_err(|e| RecordError::Malformed { path, reason: e.to_string() })
    }

    /// Write the base record of an overlay about to be made (it goes first:
    /// an overlay never exists without one).
    pub fn write_base(&self, mac: Mac, record: &BaseRecord) -> Result<(), RecordError> {
        let path = self.base_record_path(mac);
        let text = toml::to_string(record).map_err(|e| RecordError::Malformed { path: path.clone(), reason: e.to_string() })?;
        statefile::replace(&path, text.as_bytes(), Durability::Synced).map_err(io_err("writing", &path))
    }

    /// Delete a client's overlay and its base record (an ephemeral reset).
    pub fn discard(&self, mac: Mac) -> Result<(), RecordError> {
        let path = self.overlay_path(mac);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(%mac, overlay = %path.display(), "ephemeral overlay discarded"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &path)(e)),
        }
        let record = self.base_record_path(mac);
        match std::fs::remove_file(&record) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &record)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot address recorded is kept in memory and on disk, and a later
    /// `Records` (a restart) reads it back; a malformed file is skipped.
    #[test]
    fn test_boot_addresses_survive_a_restart_and_live_in_memory() {
        let d = tempfile::tempdir().unwrap();
        let mac: Mac = "52:54:00:00:00:0a".parse().unwrap();
        let r = Records::open(d.path().to_path_buf());
        assert_eq!(r.booted_from(mac), None);
        r.record_boot(mac, "10.0.0.7".parse().unwrap()).unwrap();
        std::fs::write(d.path().join("52-54-00-00-00-0b.boot-address"), "not an address\n").unwrap();
        let again = Records::open(d.path().to_path_buf());
        assert_eq!(again.booted_from(mac), Some("10.0.0.7".parse().unwrap()));
        assert_eq!(again.booted_from("52:54:00:00:00:0b".parse().unwrap()), None);
        // The check reads memory: the file's removal does not change it.
        std::fs::remove_file(d.path().join("52-54-00-00-00-0a.boot-address")).unwrap();
        assert_eq!(again.booted_from(mac), Some("10.0.0.7".parse().unwrap()));
    }
}
