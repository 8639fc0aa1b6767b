//! The one boot-file resolver behind TFTP (and, later, HTTP): a requested
//! name becomes either a file inside the boot directory or a generated
//! per-client iPXE script. Nothing outside the boot directory is ever
//! opened: `..`, absolute paths, backslash tricks and symlinks that lead out
//! are refused.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use std::collections::BTreeMap;

use crate::ipxe::{self, BootSpec, ScriptParams};
use crate::mac::Mac;
use crate::storage::registry::Registry;

/// Directory prefix under which per-client scripts are served:
/// `pxeroot/52-54-00-12-34-56.ipxe`.
pub const SCRIPT_DIR: &str = "pxeroot";
pub const SCRIPT_EXT: &str = ".ipxe";

/// Where a client already running iPXE fetches its script (what DHCP
/// offers it as its boot file).
pub fn script_url(server: std::net::Ipv4Addr, mac: Mac) -> String {
    format!("tftp://{server}/{SCRIPT_DIR}/{}{SCRIPT_EXT}", mac.file_stem())
}
/// Longest request path we consider (TFTP file names are short; this bounds
/// the work on hostile input).
pub const MAX_PATH_LEN: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("path {path:?} is refused: {reason}")]
    Refused { path: String, reason: &'static str },
    #[error("{path:?} not found")]
    NotFound { path: String },
}

/// What a name resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum BootFile {
    /// A file inside the boot directory (canonical path).
    File(PathBuf),
    /// A generated script for this client.
    Script { mac: Mac, text: String },
}

/// Clean a requested name into a relative path with no `..`: the pure half
/// of the traversal rules. Backslashes count as separators and a leading
/// separator is ignored, as PXE clients send both.
pub fn clean(raw: &str) -> Result<PathBuf, ResolveError> {
    let refuse = |reason| ResolveError::Refused { path: raw.chars().take(MAX_PATH_LEN).collect(), reason };
    if raw.len() > MAX_PATH_LEN {
        return Err(refuse("too long"));
    }
    if raw.contains('\0') {
        return Err(refuse("contains NUL"));
    }
    let unified = raw.replace('\\', "/");
    let mut out = PathBuf::new();
    for c in Path::new(unified.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("contains ..")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("is absolute")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(refuse("is empty"));
    }
    Ok(out)
}

/// The file `raw` names inside the canonical boot directory `root`, by the
/// rules a client's request meets: cleaned, then every symlink followed,
/// and the result must still be a regular file inside `root`.
fn locate(root: &Path, raw: &str) -> Result<PathBuf, ResolveError> {
    let rel = clean(raw)?;
    let not_found = || ResolveError::NotFound { path: raw.to_string() };
    // Canonicalising follows symlinks: the result must still be inside.
    let full = root.join(&rel).canonicalize().map_err(|_| not_found())?;
    if !full.starts_with(root) {
        return Err(ResolveError::Refused { path: raw.to_string(), reason: "leads outside the boot directory" });
    }
    if !full.is_file() {
        return Err(not_found());
    }
    Ok(full)
}

/// Whether a client asking for `raw` would get a file from the boot
/// directory `root` (the checks that name missing or refused boot files).
pub fn servable(root: &Path, raw: &str) -> Result<PathBuf, ResolveError> {
    let root = root.canonicalize().map_err(|_| ResolveError::NotFound { path: raw.to_string() })?;
    locate(&root, raw)
}

/// Serves the boot directory and the scripts.
pub struct Resolver {
    root: PathBuf,
    registry: Arc<Registry>,
    params: ScriptParams,
    /// Kernel, initrd and arguments per image name; a reload replaces it.
    boot: std::sync::RwLock<BTreeMap<String, BootSpec>>,
}

impl Resolver {
    /// `root` must exist; it is canonicalised once here.
    pub fn new(root: &Path, registry: Arc<Registry>, params: ScriptParams, boot: BTreeMap<String, BootSpec>) -> std::io::Result<Resolver> {
        Ok(Resolver { root: root.canonicalize()?, registry, params, boot: std::sync::RwLock::new(boot) })
    }

    /// Replace the images' kernels, initrds and arguments (a reload): the
    /// next script fetched is rendered with them.
    pub fn set_boot(&self, boot: BTreeMap<String, BootSpec>) {
        *self.boot.write().unwrap_or_else(|e| e.into_inner()) = boot;
    }

    /// A client fetched its boot script (over TFTP or HTTP, `via`): its new
    /// boot starts here, which resets an ephemeral overlay and binds the
    /// overlay to the address it boots from.
    pub fn start_boot(&self, mac: Mac, client: SocketAddr, via: &str) {
        tracing::info!(%mac, %client, "boot script requested over {via}: new boot");
        match self.registry.new_boot(mac, client.ip()) {
            Ok(true) => tracing::info!(%mac, "ephemeral overlay reset for the new boot"),
            Ok(false) => {}
            Err(e) => tracing::warn!(%mac, error = %e, "resetting the ephemeral overlay failed"),
        }
    }

    pub fn resolve(&self, raw: &str) -> Result<BootFile, ResolveError> {
        let rel = clean(raw)?;
        let text = rel.to_string_lossy();
        if let Some(name) = text.strip_prefix(&format!("{SCRIPT_DIR}/")).and_then(|n| n.strip_suffix(SCRIPT_EXT)) {
            return self.script(name, raw);
        }
        locate(&self.root, raw).map(BootFile::File)
    }

    fn script(&self, name: &str, raw: &str) -> Result<BootFile, ResolveError> {
        let not_found = || ResolveError::NotFound { path: raw.to_string() };
        let mac: Mac = name.parse().map_err(|_| not_found())?;
        // A client the configuration boots (its own entry, or unknown_clients).
        let image = self.registry.image_of(mac).ok_or_else(not_found)?;
        // A poisoned lock: a writer panicked, and it only ever writes whole maps.
        let boot = self.boot.read().unwrap_or_else(|e| e.into_inner());
        let spec = boot.get(&image).ok_or_else(not_found)?;
        Ok(BootFile::Script { mac, text: ipxe::render(&self.params, mac, spec) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_clean_refuses_traversal_and_absolute_forms() {
        for bad in ["../etc/passwd", "a/../../b", "..\\..\\etc\\passwd", "pxeroot/../../x", "", "/", "a\0b"] {
            assert!(clean(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(clean("/undionly.kpxe").unwrap(), PathBuf::from("undionly.kpxe"));
        assert_eq!(clean("\\efi\\ipxe.efi").unwrap(), PathBuf::from("efi/ipxe.efi"));
        assert_eq!(clean("./a/./b").unwrap(), PathBuf::from("a/b"));
    }
}
