//! The initramfs's compression: which formats the target kernel unpacks
//! (its config when the module tree's package left one, else its version),
//! the choice among them, and the encoders. Choosing is a pure function.

use std::path::{Path, PathBuf};

/// zstd level: the kernel unpacks any level at the same speed.
const ZSTD_LEVEL: i32 = 19;
/// LZ4 HC level: the highest; the kernel unpacks any level at the same speed.
const LZ4_LEVEL: i32 = 12;
/// The magic of LZ4's legacy frame, the one LZ4 format the kernel's
/// initramfs unpacker reads (lib/decompress_unlz4.c, `lz4 -l`).
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Input bytes per legacy-frame block: the kernel decompresses each into a
/// buffer of this size (LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE).
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// The first Linux that unpacks a zstd initramfs (CONFIG_RD_ZSTD).
const ZSTD_FIRST: (u32, u32) = (5, 9);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// zstd when the kernel reads it (Linux 5.9 or later, and
    /// CONFIG_RD_ZSTD where the kernel's config is found), else gzip.
    Auto,
    /// LZ4's legacy frame, as `lz4 -l -12`: under TCG the kernel unpacks
    /// it in half zstd's time, from a file 1.5 times the size. Kernels
    /// before 5.14 (commit 2c484419efc0) report "Initramfs unpacking
    /// failed: Decoding failed" at the zero padding iPXE puts after an
    /// initrd, once they have unpacked it all.
    Lz4,
    /// zstd -19: the smallest file.
    Zstd,
    /// gzip -9: every kernel reads it.
    Gzip,
    /// An uncompressed cpio archive.
    None,
}

impl Compression {
    fn config_key(self) -> Option<&'static str> {
        match self {
            Compression::Lz4 => Some("CONFIG_RD_LZ4"),
            Compression::Zstd => Some("CONFIG_RD_ZSTD"),
            Compression::Gzip => Some("CONFIG_RD_GZIP"),
            Compression::Auto | Compression::None => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Auto => "auto",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error(
        "the kernel cannot unpack a {} initramfs: {config} has no `{key}=y`; use --compress auto",
        wanted.name()
    )]
    Unsupported { wanted: Compression, config: PathBuf, key: &'static str },
    #[error("the kernel's config {config} enables none of CONFIG_RD_LZ4, CONFIG_RD_ZSTD, CONFIG_RD_GZIP: it unpacks no compressed initramfs; use --compress none")]
    NoneSupported { config: PathBuf },
    #[error("compressing the archive ({}) failed", wanted.name())]
    Encode {
        wanted: Compression,
        #[source]
        source: std::io::Error,
    },
}

/// What is known of the kernel the modules belong to.
pub struct Kernel {
    /// "X.Y" from the release's start, if it has one.
    pub version: Option<(u32, u32)>,
    /// Its build config (path, text), if one was found beside the modules.
    pub config: Option<(PathBuf, String)>,
}

impl Kernel {
    /// From the module tree `dir`, `/lib/modules/<release>` (symlinks
    /// resolved): the version in `release`, and the config a kernel package
    /// installs as `<root>/boot/config-<release>`, or the one a build tree
    /// keeps (`build/.config`).
    pub fn of(dir: &Path, release: &str) -> Kernel {
        let mut candidates = vec![dir.join("build/.config")];
        if let Some(root) = dir.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.insert(0, root.join(format!("boot/config-{release}")));
        }
        let config = candidates.into_iter().find_map(|p| Some((p.clone(), std::fs::read_to_string(&p).ok()?)));
        Kernel { version: version_of(release), config }
    }

    fn enables(&self, key: &str) -> Option<bool> {
        let (_, text) = self.config.as_ref()?;
        Some(text.lines().any(|l| l.strip_prefix(key).is_some_and(|rest| rest == "=y")))
    }
}

/// "6.1.0-56-amd64" -> (6, 1).
fn version_of(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The compression to use for `wanted` on `kernel`: `Auto` picks; an
/// explicit choice is kept unless the kernel's config rules it out.
pub fn choose(wanted: Compression, kernel: &Kernel) -> Result<Compression, CompressError> {
    if wanted != Compression::Auto {
        return match (wanted.config_key(), &kernel.config) {
            (Some(key), Some((config, _))) if kernel.enables(key) == Some(false) => {
                Err(CompressError::Unsupported { wanted, config: config.clone(), key })
            }
            _ => Ok(wanted),
        };
    }
    // Unknown versions are taken as recent.
    let at_least = |v: (u32, u32)| kernel.version.is_none_or(|k| k >= v);
    let candidates = [(Compression::Zstd, at_least(ZSTD_FIRST)), (Compression::Gzip, true)];
    for (c, recent_enough) in candidates {
        if recent_enough && c.config_key().is_none_or(|key| kernel.enables(key) != Some(false)) {
            return Ok(c);
        }
    }
    match &kernel.config {
        Some((config, _)) => Err(CompressError::NoneSupported { config: config.clone() }),
        None => Ok(Compression::Gzip),
    }
}

/// `archive` compressed as `how` (not `Auto`: [`choose`] first).
pub fn compress(archive: &[u8], how: Compression) -> Result<Vec<u8>, CompressError> {
    let encode = |source| CompressError::Encode { wanted: how, source };
    match how {
        Compression::None | Compression::Auto => Ok(archive.to_vec()),
        Compression::Lz4 => lz4_legacy(archive).map_err(encode),
        Compression::Zstd => zstd::stream::encode_all(archive, ZSTD_LEVEL).map_err(encode),
        Compression::Gzip => {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(archive).map_err(encode)?;
            e.finish().map_err(encode)
        }
    }
}

/// `data` as LZ4's legacy frame: the magic, then per block of at most
/// [`LZ4_LEGACY_BLOCK`] input bytes its compressed size (32-bit little
/// endian) and the LZ4 block.
fn lz4_legacy(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
    for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
        let block = lz4::block::compress(chunk, Some(lz4::block::CompressionMode::HIGHCOMPRESSION(LZ4_LEVEL)), false)?;
        let len = u32::try_from(block.len()).map_err(|_| std::io::Error::other("an LZ4 block larger than 4 GiB"))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&block);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(release: &str, config: Option<&str>) -> Kernel {
        Kernel { version: version_of(release), config: config.map(|c| (PathBuf::from("/boot/config-x"), c.to_string())) }
    }

    #[test]
    fn test_auto_picks_by_version_without_a_config() {
        assert_eq!(version_of("6.1.0-56-amd64"), Some((6, 1)));
        assert_eq!(version_of("5.14.0-427.el9.x86_64"), Some((5, 14)));
        assert_eq!(version_of("custom"), None);
        let pick = |r| choose(Compression::Auto, &kernel(r, None)).unwrap();
        assert_eq!(pick("6.1.0-56-amd64"), Compression::Zstd);
        assert_eq!(pick("5.9.0-1-amd64"), Compression::Zstd);
        assert_eq!(pick("5.4.0-150-generic"), Compression::Gzip);
        assert_eq!(pick("4.18.0-553.el8_10.x86_64"), Compression::Gzip);
        assert_eq!(pick("custom"), Compression::Zstd);
    }

    #[test]
    fn test_auto_follows_the_config() {
        let all = "CONFIG_RD_GZIP=y\nCONFIG_RD_LZ4=y\nCONFIG_RD_ZSTD=y\n";
        assert_eq!(choose(Compression::Auto, &kernel("6.1.0", Some(all))).unwrap(), Compression::Zstd);
        // CONFIG_RD_ZSTDX is another key, not CONFIG_RD_ZSTD.
        let gzip_only = "CONFIG_RD_GZIP=y\n# CONFIG_RD_ZSTD is not set\nCONFIG_RD_ZSTDX=y\n";
        assert_eq!(choose(Compression::Auto, &kernel("6.1.0", Some(gzip_only))).unwrap(), Compression::Gzip);
        let err = choose(Compression::Auto, &kernel("6.1.0", Some("CONFIG_RD_XZ=y\n"))).unwrap_err().to_string();
        assert!(err.contains("/boot/config-x") && err.contains("--compress none"), "{err}");
    }

    #[test]
    fn test_an_explicit_choice_the_config_rules_out_is_refused() {
        let k = kernel("6.1.0", Some("CONFIG_RD_GZIP=y\nCONFIG_RD_ZSTD=y\n"));
        assert_eq!(choose(Compression::Zstd, &k).unwrap(), Compression::Zstd);
        assert_eq!(choose(Compression::None, &k).unwrap(), Compression::None);
        let err = choose(Compression::Lz4, &k).unwrap_err().to_string();
        assert!(err.contains("lz4") && err.contains("CONFIG_RD_LZ4=y") && err.contains("/boot/config-x"), "{err}");
        // Without a config an explicit choice is the user's.
        assert_eq!(choose(Compression::Zstd, &kernel("4.19.0", None)).unwrap(), Compression::Zstd);
    }

    #[test]
    fn test_lz4_legacy_frame_blocks_and_round_trip() {
        // Two blocks: the first holds exactly LZ4_LEGACY_BLOCK input bytes.
        let data: Vec<u8> = (0..LZ4_LEGACY_BLOCK + 1000).map(|i| (i % 251) as u8 ^ (i / 4096) as u8).collect();
        let out = compress(&data, Compression::Lz4).unwrap();
        assert_eq!(out[..4], LZ4_LEGACY_MAGIC.to_le_bytes());
        let mut at = 4;
        let mut back = Vec::new();
        while at < out.len() {
            let len = u32::from_le_bytes(out[at..at + 4].try_into().unwrap()) as usize;
            let block = &out[at + 4..at + 4 + len];
            back.extend(lz4::block::decompress(block, Some(LZ4_LEGACY_BLOCK as i32)).unwrap());
            at += 4 + len;
        }
        assert_eq!(at, out.len());
        assert_eq!(back.len(), data.len());
        assert!(back == data);
    }
}
