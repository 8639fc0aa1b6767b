//! Small state files (an overlay's base record, a client's boot address,
//! the DHCP leases): written whole to `NAME.tmp` beside the target, then
//! renamed over it, so a reader, a killed daemon or a crashed host finds the
//! old file or the new one, never half of one.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk before `replace` returns (file and directory entry synced):
    /// for records a restarted daemon must find after the host crashed.
    Synced,
    /// In the page cache: a killed daemon loses nothing, a crashed host may
    /// lose the last update. For state that is rebuilt anyway (DHCP leases,
    /// which clients request again) and written too often to sync.
    Cached,
}

/// Where `replace` writes before the rename: `NAME.tmp` in the same directory.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replace `path` with `bytes` atomically, as durable as `durability` says.
pub fn replace(path: &Path, bytes: &[u8], durability: Durability) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    if durability == Durability::Synced {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    if durability == Durability::Synced {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.base.toml");
        for (text, how) in [("one\n", Durability::Synced), ("two, longer\n", Durability::Cached), ("3\n", Durability::Synced)] {
            replace(&p, text.as_bytes(), how).unwrap();
            assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        }
        assert_eq!(tmp_path(&p), d.path().join("a.base.toml.tmp"));
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["a.base.toml"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("leases");
        replace(&p, b"old\n", Durability::Synced).unwrap();
        // The temporary file's place is taken by a directory: the write fails.
        std::fs::create_dir(tmp_path(&p)).unwrap();
        assert!(replace(&p, b"new\n", Durability::Synced).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old\n");
    }
}
