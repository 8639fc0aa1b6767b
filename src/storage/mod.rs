//! Storage: read-only base images (raw, qcow2 with a bounded backing chain),
//! the qcow2 overlay engine, and the per-MAC overlay registry (its rooms:
//! the catalogue, the records, the sessions).
//!
//! Storage never sees a socket: the NBD shell hands it offsets, lengths and
//! buffers that it has already validated against the export's size.

pub mod base;
pub mod catalogue;
mod mapped;
pub mod overlay;
pub mod qcow2;
pub mod records;
pub mod registry;
pub mod sessions;
mod sys;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub use base::BaseImage;
pub use overlay::Overlay;
pub use registry::{OverlayPolicy, Registry};

/// One extent of block status, as storage sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Reads as zeros.
    pub zero: bool,
    /// Not allocated in the image that answered (a "hole").
    pub hole: bool,
}

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a usable image")]
    Format {
        path: PathBuf,
        #[source]
        source: qcow2::FormatError,
    },
    #[error("{op} of {path} at byte {offset} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("no space left for {path}")]
    NoSpace { path: PathBuf },
    #[error("backing chain of {path} is deeper than {max} images")]
    BackingTooDeep { path: PathBuf, max: usize },
    #[error("{path} is dirty or marked corrupt; run `qemu-img check -r all {path}` first", path = path.display())]
    Unclean { path: PathBuf },
    #[error("overlay {path} cannot be used: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("overlay {overlay} belongs to another base: {reason}; delete it (its data is lost) or point the client back at its old image")]
    BaseChanged { overlay: PathBuf, reason: String },
    #[error("{path} is in use by another process (qemu-style lock held)")]
    Locked { path: PathBuf },
    #[error(
        "state directory {dir} is in use by another pxeroot{}: stop it, or give this one another state directory",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        dir = dir.display()
    )]
    StateDirInUse { dir: PathBuf, pid: Option<u32> },
    #[error("compressed cluster at byte {offset} of {path} does not decompress")]
    Decompress { path: PathBuf, offset: u64 },
    #[error("overlay {path} is full: its refcount table covers {max_clusters} clusters")]
    OverlayFull { path: PathBuf, max_clusters: u64 },
    #[error("fast zero is not possible for a range that is not cluster aligned")]
    FastZeroUnsupported,
}

impl StorageError {
    /// Wrap an I/O error, telling a full disk apart from everything else.
    pub(crate) fn io(op: &'static str, path: &std::path::Path, offset: u64, source: io::Error) -> StorageError {
        match source.raw_os_error() {
            Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT => StorageError::NoSpace { path: path.to_path_buf() },
            _ => StorageError::Io { op, path: path.to_path_buf(), offset, source },
        }
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;
