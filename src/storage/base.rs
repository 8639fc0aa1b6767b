//! Read-only base images: raw files, and qcow2 v2/v3 images (compressed and
//! zero clusters, a backing chain of bounded depth).
//!
//! Architecture invariant: a base is opened with `O_RDONLY` and nothing in
//! pxeroot ever writes it. Reads are positional (`pread`), so any number of
//! requests read one base at once and all clients share its page cache.
//!
//! The design card's `qcow` crate reads through `&mut` a `Read + Seek`
//! cursor, which serialises every read of an image behind one lock; the hot
//! path needs concurrent positional reads, so qcow2 is parsed here (see
//! ARCHITECTURE.md).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::mapped::{ClusterCache, MappedImage};
use super::qcow2::{self, ClusterMap, FormatError, Header};
use super::{sys, Extent, Result, StorageError};

/// Longest backing chain we follow (qemu has no fixed limit; a root image
/// with more than a handful of layers is a mistake we report).
pub const MAX_BACKING_DEPTH: usize = 16;

#[derive(Debug)]
pub struct BaseImage {
    path: PathBuf,
    file: File,
    size: u64,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Raw,
    Qcow2(Box<Qcow2Base>),
}

impl Qcow2Base {
    /// What one map covers: a cluster, or with extended L2 a subcluster.
    fn map_bits(&self) -> u32 {
        if self.header.extended_l2() {
            self.header.cluster_bits - qcow2::SUBCLUSTER_SHIFT
        } else {
            self.header.cluster_bits
        }
    }
}

#[derive(Debug)]
struct Qcow2Base {
    header: Header,
    l1: Vec<u64>,
    /// L2 tables, each read from disk on first use and kept.
    l2: Vec<OnceLock<Box<[u64]>>>,
    backing: Option<BaseImage>,
    /// Decompressed clusters, shared by every reader of this image.
    decompressed: ClusterCache,
}

/// Which format a base file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl BaseImage {
    /// Open `path` read-only, probing its format by magic, and take qemu's
    /// "read, and nobody may write" locks on it.
    pub fn open(path: &Path) -> Result<BaseImage> {
        Self::open_depth(path, None, 0)
    }

    fn open_depth(path: &Path, format: Option<&str>, depth: usize) -> Result<BaseImage> {
        if depth > MAX_BACKING_DEPTH {
            return Err(StorageError::BackingTooDeep { path: path.to_path_buf(), max: MAX_BACKING_DEPTH });
        }
        let file = File::open(path).map_err(|source| StorageError::Open { path: path.to_path_buf(), source })?;
        let len = file.metadata().map_err(|source| StorageError::Open { path: path.to_path_buf(), source })?.len();
        sys::lock_shared_read(&file).map_err(|_| StorageError::Locked { path: path.to_path_buf() })?;
        let mut magic = [0u8; 4];
        let is_qcow2 = match format {
            Some("raw") => false,
            Some("qcow2") => true,
            _ => file.read_exact_at(&mut magic, 0).is_ok() && u32::from_be_bytes(magic) == qcow2::MAGIC,
        };
        if !is_qcow2 {
            return Ok(BaseImage { path: path.to_path_buf(), file, size: len, kind: Kind::Raw });
        }
        let fmt = |source: FormatError| StorageError::Format { path: path.to_path_buf(), source };
        let mut first = vec![0u8; (len.min(1 << qcow2::MAX_CLUSTER_BITS)) as usize];
        file.read_exact_at(&mut first, 0).map_err(|e| StorageError::io("read header", path, 0, e))?;
        let header = Header::parse(&first).map_err(fmt)?;
        if header.incompatible & (qcow2::INCOMPAT_DIRTY | qcow2::INCOMPAT_CORRUPT) != 0 {
            return Err(StorageError::Unclean { path: path.to_path_buf() });
        }
        let l1_count = header.l1_entries() as usize;
        let mut raw = vec![0u8; l1_count * 8];
        file.read_exact_at(&mut raw, header.l1_table_offset).map_err(|e| StorageError::io("read L1", path, header.l1_table_offset, e))?;
        let l1: Vec<u64> = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default())).collect();
        let backing = match header.backing_name(&first).map_err(fmt)? {
            Some(name) => {
                let resolved = resolve_backing(path, &name);
                Some(BaseImage::open_depth(&resolved, header.backing_format.as_deref(), depth + 1)?)
            }
            None => None,
        };
        let l2 = (0..l1_count).map(|_| OnceLock::new()).collect();
        Ok(BaseImage {
            path: path.to_path_buf(),
            file,
            size: header.size,
            kind: Kind::Qcow2(Box::new(Qcow2Base { header, l1, l2, backing, decompressed: ClusterCache::default() })),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        match self.kind {
            Kind::Raw => Format::Raw,
            Kind::Qcow2(_) => Format::Qcow2,
        }
    }

    /// The open file, for fingerprinting.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Read `buf.len()` bytes at `off`; the range must lie inside the image.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        match &self.kind {
            Kind::Raw => self.file.read_exact_at(buf, off).map_err(|e| StorageError::io("read", &self.path, off, e)),
            Kind::Qcow2(q) => {
                let maps = self.maps(q, off, buf.len() as u64)?;
                self.mapped(q).read(&maps, buf, off)
            }
        }
    }

    /// The partitions of the GPT or MBR table on this image (as the clients
    /// see the disk), or `None` when it has none (one filesystem).
    pub fn partitions(&self) -> Result<Option<Vec<gpt::Partition>>> {
        Ok(gpt::read(|buf, off| self.read_beyond_end_as_zero(buf, off))?.ok().flatten())
    }

    /// Like `read_at`, but bytes past the end of the image read as zeros (a
    /// backing file may be shorter than the image above it).
    pub fn read_beyond_end_as_zero(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let inside = self.size.saturating_sub(off).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(inside);
        if !head.is_empty() {
            self.read_at(head, off)?;
        }
        tail.fill(0);
        Ok(())
    }

    /// Block status for `[off, off + len)`; past the end reads as a hole.
    pub fn extents(&self, off: u64, len: u64) -> Result<Vec<Extent>> {
        let inside = self.size.saturating_sub(off).min(len);
        let mut out = match &self.kind {
            Kind::Raw => vec![Extent { len: inside, zero: false, hole: false }],
            Kind::Qcow2(q) => {
                let maps = self.maps(q, off, inside)?;
                self.mapped(q).extents(&maps, off, inside)?
            }
        };
        super::mapped::push_extent(&mut out, Extent { len: len - inside, zero: true, hole: true });
        Ok(out)
    }

    fn mapped<'a>(&'a self, q: &'a Qcow2Base) -> MappedImage<'a> {
        MappedImage {
            path: &self.path,
            file: &self.file,
            cluster_bits: q.header.cluster_bits,
            map_bits: q.map_bits(),
            compression: q.header.compression,
            backing: q.backing.as_ref(),
            cache: Some(&q.decompressed),
        }
    }

    /// Maps for every cluster (subcluster, with extended L2 entries) that
    /// `[off, off + len)` touches.
    fn maps(&self, q: &Qcow2Base, off: u64, len: u64) -> Result<Vec<ClusterMap>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let bits = q.header.cluster_bits;
        let unit = q.map_bits();
        let (first, last) = (off >> unit, (off + len - 1) >> unit);
        let per_l2 = q.header.l2_entries();
        let extended = q.header.extended_l2();
        let format = |source| StorageError::Format { path: self.path.clone(), source };
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        for c in (first >> (bits - unit))..=(last >> (bits - unit)) {
            let l1i = (c / per_l2) as usize;
            // The entry's words: one, or two with extended L2 (the
            // standard entry, then the subcluster bitmap).
            let (entry, bitmap) = match q.l1.get(l1i) {
                Some(&e) if e & qcow2::OFFSET_MASK != 0 => {
                    let table = self.l2_table(q, l1i, e & qcow2::OFFSET_MASK)?;
                    let i = (c % per_l2) as usize;
                    if extended {
                        (table[2 * i], table[2 * i + 1])
                    } else {
                        (table[i], 0)
                    }
                }
                _ => (0, 0),
            };
            if extended {
                let subs = qcow2::decode_extended_l2(entry, bitmap, bits).map_err(format)?;
                let base = c << (bits - unit);
                out.extend((0..subs.len() as u64).filter(|s| (first..=last).contains(&(base + s))).map(|s| subs[s as usize]));
            } else {
                out.push(qcow2::decode_l2(entry, bits, q.header.version).map_err(format)?);
            }
        }
        Ok(out)
    }

    fn l2_table<'a>(&self, q: &'a Qcow2Base, l1i: usize, at: u64) -> Result<&'a [u64]> {
        if let Some(t) = q.l2[l1i].get() {
            return Ok(t);
        }
        let mut raw = vec![0u8; q.header.cluster_size() as usize];
        self.file.read_exact_at(&mut raw, at).map_err(|e| StorageError::io("read L2", &self.path, at, e))?;
        let table: Box<[u64]> = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default())).collect();
        Ok(q.l2[l1i].get_or_init(|| table))
    }
}

/// A relative backing name is relative to the directory of the image naming it.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(p)
    }
}
